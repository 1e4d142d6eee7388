"""``compare A B``: two tables, two bench-model reports (JSON twin and markdown-only), CSV output, user errors."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from autotune import cli
from autotune.compare import compare
from autotune.model import bench
from autotune.model.bench_record import report_record
from autotune.table import TableEntry
from autotune.table.store import ConfigTable
from tests.test_framework_cli import assert_user_error, run_main

REPO = Path(__file__).resolve().parent.parent
H100_REPORT = REPO / "scripts" / "results" / "2026-11-21-h100-bench-model-20b.md"
DEVICE = "nvidia-h100-80gb-hbm3-sm90"
FP_A = {"gpu_name": "NVIDIA H100", "driver": "570.1", "triton": "3.6.0", "torch": "2.11.0", "kernel_hash": "aa"}


def _entry(M: int, config: dict, median_us: float, fingerprint: dict) -> TableEntry:
    return TableEntry(kernel="moe_gemm", variant="mlp1", shape={"M": M, "N": 5760, "K": 2880, "E": 32, "top_k": 4},
                      config=config, median_us=median_us, default_median_us=2 * median_us, fingerprint=fingerprint,
                      study=f"s{M}", trial=3, tuned_at="2026-12-02T10:00:00+00:00")


@pytest.fixture()
def tables(tmp_path):
    """A: M=1, 2, 16 under Triton 3.6; B: M=2 (same config, same fingerprint, same time), M=16 (new config, 3.9,
    faster), M=64 (new key)."""
    a, b = ConfigTable(tmp_path / "a.json"), ConfigTable(tmp_path / "b.json")
    fp_b = {**FP_A, "triton": "3.9.0"}
    a.merge(DEVICE, {"name": "H100"}, [_entry(1, {"BLOCK_M": 16, "num_warps": 4}, 30.0, FP_A),
                                       _entry(2, {"BLOCK_M": 16, "num_warps": 4}, 40.0, FP_A),
                                       _entry(16, {"BLOCK_M": 16, "num_warps": 4}, 100.0, FP_A)])
    b.merge(DEVICE, {"name": "H100"}, [_entry(2, {"BLOCK_M": 16, "num_warps": 4}, 40.0, FP_A),
                                       _entry(16, {"BLOCK_M": 32, "num_warps": 8}, 80.0, fp_b),
                                       _entry(64, {"BLOCK_M": 64, "num_warps": 8}, 200.0, fp_b)])
    a.save()
    b.save()
    return a.path, b.path


def test_two_tables(tables):
    kind, frame = compare(*tables)
    assert kind == "table"
    rows = {(r.status, r.key.split("/")[2].split(",")[2]): r for r in frame.itertuples()}
    assert set(rows) == {("both", "M=2"), ("both", "M=16"), ("only in A", "M=1"), ("only in B", "M=64")}
    same, changed = rows[("both", "M=2")], rows[("both", "M=16")]
    assert same.config_change == "" and same.fingerprint_change == "" and same.speedup == 1.0
    assert changed.config_change == "BLOCK_M 16→32, num_warps 4→8"
    assert changed.fingerprint_change == "triton 3.6.0→3.9.0"
    assert (changed.median_us_A, changed.median_us_B) == (100.0, 80.0)
    assert changed.speedup == pytest.approx(1.25)
    assert math.isnan(rows[("only in B", "M=64")].speedup)
    assert list(frame.status) == ["both", "both", "only in A", "only in B"]  # shared first, M=2 before M=16
    assert "M=2," in frame.key[0] and "M=16," in frame.key[1]


def test_two_tables_cli_markdown_and_csv(tables, capsys, tmp_path):
    csv_path = tmp_path / "out.csv"
    code, out, err = run_main(capsys, ["compare", str(tables[0]), str(tables[1]), "--csv", str(csv_path)])
    assert code == 0, err
    assert "2 shared entries" in out and "geometric mean 1.118×" in out  # sqrt(1.0 · 1.25)
    row = next(line for line in out.splitlines() if "M=16," in line)
    assert row.split("|")[3:8] == [" BLOCK_M 16→32, num_warps 4→8 ", " 100.00 ", " 80.00 ", " 1.250 ",
                                   " triton 3.6.0→3.9.0 "]
    assert "1 only in A:" in out and "1 only in B:" in out
    frame = pd.read_csv(csv_path)
    assert len(frame) == 4 and set(frame.status) == {"both", "only in A", "only in B"}
    assert frame.loc[frame.key.str.contains("M=16,"), "speedup"].item() == pytest.approx(1.25)
    code, out, err = run_main(capsys, ["compare", str(tables[0]), str(tables[1]), "--csv", "-"])
    assert code == 0, err
    assert pd.read_csv(io.StringIO(out)).equals(frame)


def _bench_json(path: Path, rates: dict[str, tuple[float, float]]) -> Path:
    """A report twin with the given (table, no table) tok/s per test, through bench-model's own record function."""
    results = {"table": {}, "no table": {}}
    for test, (with_t, without) in rates.items():
        results["table"][test] = bench.TestResult(test, 100, [100 / with_t, 100 / with_t])
        results["no table"][test] = bench.TestResult(test, 100, [100 / without])
    record = report_record(results, described="test", device_name="GPU", act_dtype="bfloat16", kv_dtype="act")
    path.write_text(json.dumps(record))
    return path


def test_two_bench_reports_json(tmp_path, capsys):
    a = _bench_json(tmp_path / "a.json", {"pp512": (1000.0, 900.0), "tg32": (300.0, 250.0)})
    b = _bench_json(tmp_path / "b.json", {"pp512": (1100.0, 900.0), "tg32 B=4": (800.0, 700.0)})
    kind, frame = compare(a, b)
    assert kind == "bench-model report"
    shared = frame[frame.status == "both"]
    assert list(zip(shared.test, shared.setting)) == [("pp512", "table"), ("pp512", "no table")]
    assert shared.ratio.tolist() == pytest.approx([1.1, 1.0])
    assert shared.tok_s_A.tolist() == pytest.approx([1000.0, 900.0])
    assert set(frame[frame.status == "only in A"].test) == {"tg32"}
    assert set(frame[frame.status == "only in B"].test) == {"tg32 B=4"}
    code, out, err = run_main(capsys, ["compare", str(a), str(b), "--csv", "-"])
    assert code == 0, err
    assert out.splitlines()[0] == "test,setting,status,tok_s_A,tok_s_B,ratio"


def test_markdown_report_without_twin_is_parsed(tmp_path, capsys):
    """A report written before the JSON twin existed: the llama-bench rows of the committed H100 run."""
    new = _bench_json(tmp_path / "new.json", {"tg128": (400.0, 320.0)})
    md = tmp_path / "new.md"
    md.write_text("### bench-model: test\n")  # its twin new.json is read, not this text
    code, out, err = run_main(capsys, ["compare", str(H100_REPORT), str(md)])
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("| tg128 | table |"))
    assert row == "| tg128 | table | 381.86 | 400.00 | 1.048 |"  # 400 / 381.86
    assert "| tg128 | no table | 316.21 | 320.00 | 1.012 |" in out
    assert new.exists()


def test_bench_model_out_writes_a_twin_that_compare_reads(tmp_path, capsys):
    """One real bench-model run; B is its twin with every rate doubled, so every ratio must read 2."""
    from scripts.write_random_checkpoint import write_random_checkpoint
    from tests.test_model_cli import TINY

    checkpoint = tmp_path / "tiny"
    write_random_checkpoint(checkpoint, TINY, seed=5)
    out = tmp_path / "a.md"
    assert cli.main(["bench-model", "--checkpoint", str(checkpoint), "--tests", "tg2", "--runs", "1",
                     "--out", str(out), "--table", str(tmp_path / "none.json")]) == 0
    twin = json.loads(out.with_suffix(".json").read_text())
    assert set(twin["tests"]) == {"tg2"} and set(twin["tests"]["tg2"]) == {"table", "no table"}
    for result in twin["tests"]["tg2"].values():
        assert result["tok_s_mean"] == pytest.approx(result["tokens"] / result["seconds"][0])
        result["tok_s_mean"] *= 2
    doubled = tmp_path / "b.json"
    doubled.write_text(json.dumps(twin))
    capsys.readouterr()
    code, out_text, err = run_main(capsys, ["compare", str(out), str(doubled), "--csv", "-"])
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out_text))
    assert list(frame.test) == ["tg2", "tg2"] and frame.ratio.tolist() == pytest.approx([2.0, 2.0])


@pytest.mark.parametrize("content, needle", [
    (None, "no such file"),
    (b"\xff\xfe\x00", "not UTF-8"),
    (b'{"schema": "something"}', "neither a gpt-oss-autotune table nor a bench-model report"),
    (b"[1, 2]", "neither"),
    (b"# notes\n\nno table here\n", "no llama-bench table"),
    (b'{"schema": "gpt-oss-autotune/config-table", "schema_version": 1, "devices": []}', "corrupt table"),
    (b'{"schema": "gpt-oss-autotune/bench-model", "schema_version": 7, "tests": {}}', "schema_version 7"),
    (b'{"schema": "gpt-oss-autotune/bench-model", "schema_version": 1, "tests": {"tg2": {"table": {}}}}',
     "tok_s_mean"),
    ((b"| test | with table, tok/s | without table, tok/s | table / no table |\n|---|---|---|---|\n"
     b"| tg32 | fast | 3.0 \xc2\xb1 0.1 | |\n"), "'mean ± std'"),
])
def test_unreadable_inputs(tables, tmp_path, capsys, content, needle):
    bad = tmp_path / "bad.md"
    if content is not None:
        bad.write_bytes(content)
    code, _, err = run_main(capsys, ["compare", str(tables[0]), str(bad)])
    assert_user_error(code, err, needle)


def test_kind_mismatch(tables, capsys):
    code, _, err = run_main(capsys, ["compare", str(tables[0]), str(H100_REPORT)])
    assert_user_error(code, err, "cannot compare a table", "with a bench-model report")


def test_folder_is_an_error(tables, tmp_path, capsys):
    code, _, err = run_main(capsys, ["compare", str(tmp_path), str(tables[1])])
    assert_user_error(code, err, "is a folder")


def test_oversized_input_is_refused(tables, tmp_path, capsys, monkeypatch):
    import autotune.compare as compare_mod

    monkeypatch.setattr(compare_mod, "MAX_INPUT_BYTES", 100)
    code, _, err = run_main(capsys, ["compare", str(tables[0]), str(tables[1])])
    assert_user_error(code, err, "larger than any table or report")


def test_bench_model_out_must_name_the_markdown(tmp_path, capsys):
    code, _, err = run_main(capsys, ["bench-model", "--random", "20b", "--out", str(tmp_path / "bench.json")])
    assert_user_error(code, err, "--out", "JSON twin")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["compare", "report", "eval"])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m autotune {command}")
