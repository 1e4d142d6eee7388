"""``report KERNEL --plot DIR``: the PNGs are written, valid and non-trivial, from a storage and from a table; user
errors (nothing tuned, matplotlib missing) are one line with exit code 2."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import optuna
import pytest

from autotune import plots
from autotune.device.profile import GB10, INTERPRETER
from autotune.tuning import study as study_mod
from autotune.tuning.storage import open_storage
from tests.test_framework_cli import assert_user_error, run_main

REPO = Path(__file__).resolve().parent.parent
COMMITTED_TABLE = REPO / "studies" / "tables" / "configs.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 10_000
"""A chart with axes, bars and labels at 110 dpi is 30-80 kB here; an empty canvas of that size is ~3-5 kB."""


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert data[12:16] == b"IHDR", path
    return struct.unpack(">II", data[16:24])


def _tuned_storage(url: str, device) -> None:
    """Two mlp1 shapes tuned on ``device``: a default trial and a faster sampled one each, with achieved rates."""
    storage = open_storage(url)
    for M, default_us, best_us in ((1, 40.0, 30.0), (16, 100.0, 125.0)):
        key = study_mod.StudyKey.of("moe_gemm", "mlp1", {"M": M, "N": 128, "K": 64, "E": 4, "top_k": 2},
                                    device.key, "abc123")
        study = study_mod.create(storage, key, optuna.samplers.RandomSampler(seed=0), device_info=device.as_dict())
        for source, us, block in (("default", default_us, 16), ("sampler", best_us, 32)):
            trial = study.ask()
            trial.set_user_attr("source", source)
            study_mod.claim(trial, {"BLOCK_M": block})
            trial.set_user_attr("median_us", us)
            trial.set_user_attr("tflops", 2.0 * M / us)
            trial.set_user_attr("gbps", 50.0 / us * 1e3 / M**0.5)
            study.tell(trial, us)


@pytest.mark.parametrize("device", [GB10, INTERPRETER], ids=["with_ceilings", "interpreter_no_ceilings"])
def test_report_from_storage(tmp_path, capsys, device):
    url = f"sqlite:///{tmp_path / 's.db'}"
    _tuned_storage(url, device)
    code, out, err = run_main(capsys, ["report", "moe_gemm", "--storage", url, "--plot", str(tmp_path / "png")])
    assert code == 0, err
    names = sorted(Path(line).name for line in out.split())
    assert names == [f"moe_gemm.{device.key}.roofline.png", f"moe_gemm.{device.key}.speedup.png"]
    for name in names:
        path = tmp_path / "png" / name
        width, height = png_size(path)
        assert width >= 400 and height >= 300
        assert path.stat().st_size > MIN_PNG_BYTES


def test_frame_from_storage_values(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    _tuned_storage(url, GB10)
    frame = plots.frame_from_storage(open_storage(url), "moe_gemm").sort_values("median_us")
    assert frame.median_us.tolist() == [30.0, 100.0]  # M=16: the default is the best
    assert frame.speedup.tolist() == pytest.approx([40 / 30, 1.0])
    assert frame.peak_gbps.tolist() == [GB10.peak_gbps] * 2
    assert frame.peak_tflops.tolist() == [GB10.peak_bf16_tflops] * 2


def test_report_from_the_committed_table(tmp_path, capsys):
    """The MoE entries of the committed table: two charts (speedup, roofline) per device section that has them."""
    code, out, err = run_main(capsys, ["report", "moe_gemm", "--table", str(COMMITTED_TABLE), "--plot",
                                       str(tmp_path)])
    assert code == 0, err
    paths = [Path(p) for p in out.split()]
    import json

    devices = [key for key, section in json.loads(COMMITTED_TABLE.read_text())["devices"].items()
               if any(name.startswith("moe_gemm/") for name in section["entries"])]
    assert len(paths) == 2 * len(devices) and all(p.stat().st_size > MIN_PNG_BYTES for p in paths)
    frame = plots.frame_from_table(COMMITTED_TABLE, "moe_gemm")
    assert set(frame.variant) == {"mlp1", "mlp2"} and frame.speedup.notna().all()


def test_shape_labels_name_the_dimensions_that_vary():
    shapes = [{"M": 1, "N": 5760}, {"M": 16, "N": 5760}]
    assert plots._shape_labels(shapes) == ["M=1", "M=16"]
    assert plots._shape_labels([{"M": 1, "N": 8}]) == ["M=1 N=8"]


def test_nothing_tuned_is_a_user_error(tmp_path, capsys):
    code, _, err = run_main(capsys, ["report", "moe_gemm", "--storage", f"sqlite:///{tmp_path / 'e.db'}", "--plot",
                                     str(tmp_path / "png")])
    assert_user_error(code, err, "no tuned moe_gemm entries")
    assert not (tmp_path / "png").exists()


def test_missing_matplotlib_is_a_user_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    code, _, err = run_main(capsys, ["report", "moe_gemm", "--table", str(COMMITTED_TABLE), "--plot",
                                     str(tmp_path)])
    assert_user_error(code, err, "need matplotlib", "pip install")
    assert not list(tmp_path.iterdir())


def test_unknown_kernel(tmp_path, capsys):
    code, _, err = run_main(capsys, ["report", "nope", "--table", str(COMMITTED_TABLE), "--plot", str(tmp_path)])
    assert_user_error(code, err, "nope")
