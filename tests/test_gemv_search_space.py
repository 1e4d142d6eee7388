"""The gemv search space (:mod:`search_spaces.gemv`) at gpt-oss's projection shapes for GB10 and an H100-like
profile, and the whole way of a gemv config: ``python -m autotune run gemv --preset tiny_cpu`` into a table, the
model's :class:`StepConfigs` served from it, and ``project()`` launching with exactly those configs."""

from __future__ import annotations

import dataclasses
import json

import optuna
import pytest

from autotune import cli, registry
from autotune.device import GB10
from autotune.model import generate, load_model
from autotune.tuning import presets
from kernels import gemv as gemv_mod
from kernels.gemv import GemvConfig, GemvShape
from scripts.write_random_checkpoint import write_random_checkpoint
from search_spaces import gemv as space_mod
from tests.test_kernel_search_space import H100_LIKE
from tests.test_model_cli import TINY

DEVICES = [GB10, H100_LIKE]
CONFIG_KEYS = {f.name for f in dataclasses.fields(GemvConfig)}


def _preset_shapes(name: str) -> list[tuple[str, dict[str, int]]]:
    return presets.expand(presets.load(name).kernels["gemv"], registry.get("gemv"))


def test_presets_hold_the_gpt_oss_projections():
    shapes = {(v, s["N"], s["K"]) for v, s in _preset_shapes("gpt_oss_20b")}
    assert shapes == {("qkv", 5120, 2880), ("attn_out", 2880, 4096), ("router", 32, 2880)}
    assert {(v, s["N"]) for v, s in _preset_shapes("gpt_oss_120b") if v == "router"} == {("router", 128)}
    assert {s["M"] for _, s in _preset_shapes("gpt_oss_20b")} == {1, 2, 4}


@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.key)
@pytest.mark.parametrize("preset", ["gpt_oss_20b", "gpt_oss_120b", "tiny_cpu"])
def test_default_is_feasible_everywhere(preset, device):
    for variant, shape in _preset_shapes(preset):
        space = space_mod.space(variant, shape, device)
        assert set(space.default) == CONFIG_KEYS
        assert space.check(space.default, shape, device) is None, (variant, shape, space.default)
        assert space.validate(space.default) == space.default
        GemvConfig(**space.default)


def test_choices_span_the_sweep_at_gpt_oss_widths():
    params = {p.name: p.choices for p in space_mod.space("qkv", {"M": 1, "N": 5120, "K": 2880}, GB10).params}
    assert params["BLOCK_N"] == (1, 2, 4, 8, 16, 32)
    assert params["BLOCK_K"] == (128, 256, 512, 1024)
    assert params["num_warps"] == (1, 2, 4, 8) and params["SPLIT_K"] == (1, 2, 4, 8, 16)
    assert params["num_stages"] == (3,)        # no effect on this kernel's code with Triton 3.9 (search_spaces/gemv.py)
    router = {p.name: p.choices for p in space_mod.space("router", {"M": 1, "N": 4, "K": 64}, GB10).params}
    assert router["BLOCK_N"] == (1, 2, 4) and router["BLOCK_K"] == (16, 32, 64) and router["SPLIT_K"] == (1, 2, 4)


def _base(**overrides) -> dict:
    return {"BLOCK_N": 2, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 3, "SPLIT_K": 1, **overrides}


QKV = {"M": 1, "N": 5120, "K": 2880}


def test_shared_memory_prunes_with_the_device_limit():
    config = _base(BLOCK_N=32, BLOCK_K=1024, num_warps=8)          # the largest: 4 x 32·8·32 = 32,768 B
    assert space_mod.estimated_shared_bytes(config) == 32_768
    assert space_mod.space("qkv", QKV, GB10).check(config, QKV, GB10) is None     # fits GB10's 101,376 B
    small = dataclasses.replace(GB10, max_shared_mem_per_block=16_384, name="small-smem (test)")
    reason = space_mod.fits_shared_memory(config, QKV, small)
    assert "shared memory" in reason and "32768" in reason and "16384" in reason


@pytest.mark.parametrize("config, needle", [
    (_base(BLOCK_N=32, num_warps=4), "256 elements per thread > 128"),
    (_base(BLOCK_N=1, BLOCK_K=128, num_warps=8), "0.5 elements per thread < 1"),
    (_base(BLOCK_K=1024, SPLIT_K=2), None),
])
def test_accumulator_per_thread(config, needle):
    reason = space_mod.space("qkv", QKV, H100_LIKE).check(config, QKV, H100_LIKE)
    assert (reason is None) if needle is None else (needle in reason), reason


def test_tiles_and_split_k_prune_padding():
    router = {"M": 1, "N": 32, "K": 2880}
    space = space_mod.space("router", router, H100_LIKE)
    assert "BLOCK_N=64 > 32" in space_mod.tile_fits_problem(_base(BLOCK_N=64), router, H100_LIKE)
    tiny = {"M": 1, "N": 4, "K": 48}
    assert "BLOCK_K=128 > 64" in space_mod.tile_fits_problem(_base(BLOCK_N=1, BLOCK_K=128), tiny, H100_LIKE)
    # K = 2880 has 3 blocks of 1024: a fourth slice would be empty
    assert "some slices are empty" in space.check(_base(BLOCK_N=1, num_warps=8, SPLIT_K=4), router, H100_LIKE)
    assert space.check(_base(BLOCK_N=1, BLOCK_K=256, num_warps=8, SPLIT_K=8), router, H100_LIKE) is None


@pytest.mark.parametrize("variant, shape", [("qkv", QKV), ("router", {"M": 4, "N": 128, "K": 2880})])
def test_optuna_suggestions_are_complete(variant, shape):
    space = space_mod.space(variant, shape, GB10)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    feasible = 0
    for _ in range(200):
        trial = study.ask()
        config = space.suggest(trial)
        assert set(config) == CONFIG_KEYS
        GemvConfig(**config)
        feasible += space.check(config, shape, GB10) is None
        study.tell(trial, 1.0)
    assert 20 <= feasible < 200   # the constraints prune some, not all


# ---------------------------------------------------------------------------------------------------- end to end


def test_run_tiny_preset_into_a_table_and_the_model_serves_it(tmp_path, capsys, monkeypatch):
    # `python -m autotune run gemv --preset tiny_cpu` at the test model's widths (head_dim 16) and one token
    table = tmp_path / "t.json"
    code = cli.main(["run", "gemv", "--preset", "tiny_cpu", "--shapes", "head_dim=16 M=1", "--trials", "2",
                     "--storage", f"sqlite:///{tmp_path / 's.db'}", "--table", str(table)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "3 studies" in err and "0 failed" in err
    doc = json.loads(table.read_text())
    entries = {e["variant"]: e for e in doc["devices"]["triton-interpreter"]["entries"].values()}
    assert set(entries) == {"qkv", "attn_out", "router"}
    assert entries["qkv"]["shape"] == GemvShape.for_variant(
        "qkv", M=1, hidden=TINY.hidden_size, heads_q=TINY.num_attention_heads, heads_kv=TINY.num_key_value_heads,
        head_dim=TINY.head_dim, E=TINY.num_experts).as_dict()

    checkpoint = tmp_path / "ckpt"
    write_random_checkpoint(checkpoint, TINY, seed=5)
    model = load_model(checkpoint, table=table, max_positions=32)
    decode = model.configs.step("decode", batch=1, tokens=1, context=4)
    for variant in ("qkv", "attn_out", "router"):
        assert getattr(decode, variant) == gemv_mod.config_from_dict(entries[variant]["config"]), variant
    served = {(k, v, s["M"]): r.source for k, v, s, r in model.configs.lookup.served() if k == "gemv"}
    assert served == {("gemv", v, 1): "exact" for v in entries}
    assert model.configs.step("prefill", batch=1, tokens=8, context=8).qkv is None   # > MAX_ROWS: cuBLAS

    launched = []
    import autotune.model.model as model_module

    real_gemv = model_module.gemv

    def spy(x, weight, bias, config, **kwargs):
        launched.append((x.shape[0], config))
        return real_gemv(x, weight, bias, config, **kwargs)

    monkeypatch.setattr(model_module, "gemv", spy)
    generate(model, [[3, 1, 4]], max_new_tokens=2)      # prefill of 3 tokens (nearest: M=1), then decode steps
    prefill = model.configs.step("prefill", batch=1, tokens=3, context=3)
    assert {c for m, c in launched if m == 1} == {decode.qkv, decode.attn_out, decode.router}
    assert {c for m, c in launched if m == 3} == {prefill.qkv, prefill.attn_out, prefill.router}
    assert len(launched) == 3 * TINY.num_hidden_layers * 2   # one prefill and one decode step
    assert any(r.source == "nearest" for k, v, s, r in model.configs.lookup.served() if k == "gemv" and s["M"] == 3)


def test_list_shows_the_gemv_variants(tmp_path, capsys):
    assert cli.main(["list", "--storage", f"sqlite:///{tmp_path / 's.db'}"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["gemv"]]
    assert [row[1] for row in rows] == ["qkv", "attn_out", "router"]
    assert all("SPLIT_K[1," in " ".join(row) for row in rows)
