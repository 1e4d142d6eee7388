"""Tests of the attention search space (:mod:`search_spaces.attention`) on gpt-oss shapes for GB10, an H100-like
profile and the interpreter: the defaults are feasible, each constraint prunes what it should with a reason naming the
limit, Optuna suggestions give complete configs; and ``run attention`` tunes the tiny preset end to end."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest

from autotune import cli
from autotune.device import GB10, INTERPRETER, DeviceProfile
from kernels.attention import AttentionConfig
from search_spaces import attention as space_mod

H100_LIKE = DeviceProfile(
    key="h100-like-test", name="H100-like (test)", backend="cuda", compute_capability=(9, 0), sm_count=132,
    max_shared_mem_per_block=232_448, l2_bytes=50 * 2**20, peak_gbps=3000.0, peak_bf16_tflops=721.0,
    peaks_source="tests: FACTS.md H100 figures",
)
A100_LIKE = dataclasses.replace(H100_LIKE, key="a100-like-test", name="A100-like (test)", compute_capability=(8, 0))
DEVICES = [GB10, H100_LIKE, INTERPRETER]
CONFIG_KEYS = {f.name for f in dataclasses.fields(AttentionConfig)}


def gpt_oss(seq: int, window: int = 0, batch: int = 1) -> dict[str, int]:
    return dict(batch=batch, seq=seq, heads_q=64, heads_kv=8, head_dim=64, window=window)


def _base(**overrides) -> dict:
    return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2, "SPLIT_KV": 1, "kv_dtype": "act",
            **overrides}


@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.key)
@pytest.mark.parametrize("variant", ["prefill", "decode"])
def test_default_is_feasible_everywhere(variant, device):
    for seq in (1, 7, 128, 512, 2048, 8192, 32768):
        for window in (0, 128):
            shape = gpt_oss(seq, window)
            space = space_mod.space(variant, shape, device)
            config = space.default
            assert set(config) == CONFIG_KEYS
            assert space.check(config, shape, device) is None, (seq, window, config)
            assert space.validate(config) == config
            AttentionConfig(**config)


def test_default_split_fills_the_sms():
    # H100: 8 KV heads · SPLIT_KV >= 2 · 132 SMs where the keys allow (>= 64 per slice); one window block alone.
    split = {seq: space_mod.default_config("decode", gpt_oss(seq), H100_LIKE)["SPLIT_KV"] for seq in (128, 512, 2048, 32768)}
    assert split == {128: 1, 512: 8, 2048: 32, 32768: 64}
    assert space_mod.default_config("decode", gpt_oss(32768, 128), H100_LIKE)["SPLIT_KV"] == 1
    assert space_mod.default_config("decode", gpt_oss(32768, batch=8), GB10)["SPLIT_KV"] == 2  # 48 SMs: 8·8·2 >= 96


def test_split_slice_shorter_than_block_is_pruned():
    shape = gpt_oss(512)
    reason = space_mod.space("decode", shape, H100_LIKE).check(_base(SPLIT_KV=16, BLOCK_N=64), shape, H100_LIKE)
    assert reason is not None and "SPLIT_KV=16" in reason and "32 of 512" in reason and "BLOCK_N=64" in reason
    assert space_mod.split_kv_useful(_base(SPLIT_KV=8, BLOCK_N=64), shape, H100_LIKE) is None


def test_fp8_needs_ada_or_newer():
    shape = gpt_oss(2048)
    reason = space_mod.space("decode", shape, A100_LIKE).check(_base(kv_dtype="fp8"), shape, A100_LIKE)
    assert reason is not None and "8.9" in reason
    params = {p.name: p.choices for p in space_mod.space("decode", shape, A100_LIKE).params}
    assert params["kv_dtype"] == ("act",)
    for device in DEVICES:
        assert space_mod.kv_dtype_supported(_base(kv_dtype="fp8"), shape, device) is None


def test_shared_memory_prunes_on_gb10_with_its_limit():
    # 4 stages × 2 × 256·64·2 + 128·64·2 = 278,528 B: over both limits; 3 stages of 128-key tiles fit H100 only.
    shape = gpt_oss(8192)
    config = _base(BLOCK_M=128, BLOCK_N=256, num_stages=4, num_warps=8)
    assert space_mod.estimated_shared_bytes(config, shape) == 278_528
    assert "101376" in space_mod.fits_shared_memory(config, shape, GB10)
    config = _base(BLOCK_M=128, BLOCK_N=128, num_stages=4, num_warps=8, kv_dtype="act")
    assert space_mod.estimated_shared_bytes(config, shape) == 147_456
    assert "101376" in space_mod.fits_shared_memory(config, shape, GB10)
    assert space_mod.fits_shared_memory(config, shape, H100_LIKE) is None


def test_tiles_and_registers():
    shape = gpt_oss(100, window=0)
    assert "BLOCK_M=256" in space_mod.tile_fits_problem(_base(BLOCK_M=256), shape, H100_LIKE)
    assert "BLOCK_N=256" in space_mod.tile_fits_problem(_base(BLOCK_N=256), gpt_oss(4096, 128), H100_LIKE)
    reason = space_mod.tiles_fit_registers(_base(BLOCK_M=128, BLOCK_N=128, num_warps=2), gpt_oss(8192), H100_LIKE)
    assert reason is not None and "384 fp32 registers" in reason


@pytest.mark.parametrize("variant", ["prefill", "decode"])
def test_optuna_suggestions_are_complete(variant):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shape = gpt_oss(4096)
    space = space_mod.space(variant, shape, H100_LIKE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    splits = set()
    for _ in range(100):
        trial = study.ask()
        config = space.suggest(trial)
        assert set(config) == CONFIG_KEYS
        AttentionConfig(**config)
        splits.add(config["SPLIT_KV"])
        study.tell(trial, 1.0)
    assert splits == ({1} if variant == "prefill" else {1, 2, 4, 8, 16, 32, 64})


def test_run_tiny_preset_end_to_end(tmp_path, capsys):
    # `python -m autotune run attention --preset tiny_cpu` on two of its shapes, into a temporary storage and table.
    table = tmp_path / "t.json"
    code = cli.main(["run", "attention", "--preset", "tiny_cpu", "--shapes", "seq=16 window=8", "--trials", "2",
                     "--storage", f"sqlite:///{tmp_path / 's.db'}", "--table", str(table)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "2 studies" in err and "0 failed" in err
    entries = json.loads(table.read_text())
    text = json.dumps(entries)
    assert '"kernel": "attention"' in text and '"prefill"' in text and '"decode"' in text
