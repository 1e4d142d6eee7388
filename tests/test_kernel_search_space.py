"""Tests of the MoE GEMM search space (:mod:`search_spaces.moe_gemm`) on gpt-oss shapes, for GB10 and an H100-like
profile: the defaults are feasible, each constraint prunes what it should with a reason naming the limit, and Optuna
suggestions give complete configs."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from autotune.device import GB10, DeviceProfile
from kernels.moe_gemm import MoeGemmConfig, MoeShape
from search_spaces import moe_gemm as space_mod
from search_spaces.moe_gemm import estimated_shared_bytes

H100_LIKE = DeviceProfile(
    key="h100-like-test", name="H100-like (test)", backend="cuda", compute_capability=(9, 0), sm_count=132,
    max_shared_mem_per_block=232_448, l2_bytes=50 * 2**20, peak_gbps=3000.0, peak_bf16_tflops=721.0,
    peaks_source="tests: FACTS.md H100 figures",
)
DEVICES = [GB10, H100_LIKE]
M_VALUES = [2**i for i in range(14)]  # 1, 2, 4, ..., 8192
MODELS = {"20b": 32, "120b": 128}  # E
CONFIG_KEYS = {f.name for f in dataclasses.fields(MoeGemmConfig)}


def gpt_oss_shape(variant: str, m: int, experts: int) -> dict[str, int]:
    return MoeShape.for_variant(variant, M=m, hidden=2880, intermediate=2880, E=experts, top_k=4).as_dict()


def test_shapes_are_the_gpt_oss_ones():
    assert gpt_oss_shape("mlp1", 1, 32) == {"M": 1, "N": 5760, "K": 2880, "E": 32, "top_k": 4}
    assert gpt_oss_shape("mlp2", 8192, 128) == {"M": 8192, "N": 2880, "K": 2880, "E": 128, "top_k": 4}


@pytest.mark.parametrize("device", DEVICES, ids=lambda d: d.key)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("variant", ["mlp1", "mlp2"])
def test_default_is_feasible_everywhere(variant, model, device):
    for m in M_VALUES:
        shape = gpt_oss_shape(variant, m, MODELS[model])
        space = space_mod.space(variant, shape, device)
        config = space.default
        assert set(config) == CONFIG_KEYS
        assert space.check(config, shape, device) is None, (m, config, space.check(config, shape, device))
        MoeGemmConfig(**config)  # raises ValueError if invalid
        assert estimated_shared_bytes(config) <= device.max_shared_mem_per_block
        assert space.validate(config) == config  # every value is one of the choices, inactive ones inactive
        # Launchable as well: mlp1 rejects SPLIT_K > 1 with the fused SwiGLU at launch time.
        assert not (variant == "mlp1" and config["fuse_swiglu"] and config["SPLIT_K"] > 1)


def _base(**overrides) -> dict:
    config = dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=1, num_warps=4, num_stages=3, schedule="grid",
                  programs_per_sm=1, dequant="upcast", fuse_swiglu=True, SPLIT_K=1)
    config.update(overrides)
    return config


def test_shared_memory_prunes_on_gb10_with_its_limit():
    shape = gpt_oss_shape("mlp1", 8192, 32)  # 1024 rows per expert: BLOCK_M=256 is not padding
    config = _base(BLOCK_M=256, BLOCK_N=64, BLOCK_K=256, num_stages=5)
    space = space_mod.space("mlp1", shape, GB10)
    reason = space.check(config, shape, GB10)
    assert reason is not None and "shared memory" in reason and "101376" in reason
    assert str(estimated_shared_bytes(config)) in reason
    reason = space.check(config, shape, H100_LIKE)
    assert reason is not None and "232448" in reason


def test_shared_memory_between_the_two_limits():
    # 4 × (128·128·2 + 128·128/2 + 128·128/32) = 165,888 B: over GB10's 101,376, under H100's 232,448.
    shape = gpt_oss_shape("mlp2", 8192, 32)
    config = _base(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, num_stages=4)
    assert estimated_shared_bytes(config) == 165_888
    assert "101376" in space_mod.space("mlp2", shape, GB10).check(config, shape, GB10)
    assert space_mod.space("mlp2", shape, H100_LIKE).check(config, shape, H100_LIKE) is None


def test_block_m_prunes_padding():
    shape = gpt_oss_shape("mlp1", 1, 32)  # 4 rows on 4 experts: 1 row per expert
    reason = space_mod.block_m_fits_rows(_base(BLOCK_M=64), shape, GB10)
    assert reason is not None and "BLOCK_M=64 > 16" in reason
    assert space_mod.block_m_fits_rows(_base(BLOCK_M=16), shape, GB10) is None
    big = gpt_oss_shape("mlp1", 8192, 32)  # 1024 rows per expert
    assert space_mod.block_m_fits_rows(_base(BLOCK_M=256), big, GB10) is None


def test_tile_prunes_oversized_and_narrow_fused():
    shape = {"M": 16, "N": 64, "K": 64, "E": 4, "top_k": 2}
    reason = space_mod.tile_fits_problem(_base(BLOCK_N=128, BLOCK_K=64), shape, GB10)
    assert reason is not None and "N=64" in reason
    reason = space_mod.tile_fits_problem(_base(BLOCK_N=64, BLOCK_K=128), shape, GB10)
    assert reason is not None and "K=64" in reason
    reason = space_mod.tile_fits_problem(_base(BLOCK_N=16, BLOCK_K=64, fuse_swiglu=True), shape, GB10)
    assert reason is not None and "BLOCK_N >= 32" in reason
    assert space_mod.tile_fits_problem(_base(BLOCK_N=16, BLOCK_K=64, fuse_swiglu=False), shape, GB10) is None
    # Real dims: 5760 rounds up to 8192, so BLOCK_N=256 fits.
    assert space_mod.tile_fits_problem(_base(BLOCK_N=256, BLOCK_K=256), gpt_oss_shape("mlp1", 1, 32), GB10) is None


def test_split_k_prunes():
    small_k = {"M": 1, "N": 2880, "K": 512, "E": 32, "top_k": 4}
    reason = space_mod.split_k_useful(_base(SPLIT_K=8, BLOCK_K=256, fuse_swiglu=False), small_k, GB10)
    assert reason is not None and "SPLIT_K=8 > 2 K steps" in reason
    big = gpt_oss_shape("mlp2", 8192, 32)
    reason = space_mod.split_k_useful(_base(SPLIT_K=2, BLOCK_M=128, BLOCK_N=128), big, GB10)
    assert reason is not None and "48 SMs" in reason
    reason = space_mod.split_k_useful(_base(SPLIT_K=2, BLOCK_M=128, BLOCK_N=128), big, H100_LIKE)
    assert reason is not None and "132 SMs" in reason
    decode = gpt_oss_shape("mlp2", 1, 32)  # 4 row blocks × 45 N tiles = 180 tiles ≥ 96: still pruned on GB10
    assert space_mod.split_k_useful(_base(SPLIT_K=2, BLOCK_N=64), decode, GB10) is not None
    assert space_mod.split_k_useful(_base(SPLIT_K=2, BLOCK_N=256), decode, GB10) is None  # 4 × 12 = 48 tiles
    assert space_mod.split_k_useful(_base(SPLIT_K=1), big, GB10) is None


def test_constraint_order_and_check():
    # check() returns the first failing constraint's reason and None when all pass.
    shape = gpt_oss_shape("mlp1", 1, 32)
    space = space_mod.space("mlp1", shape, GB10)
    assert space.check(_base(BLOCK_M=64), shape, GB10) == space_mod.block_m_fits_rows(_base(BLOCK_M=64), shape, GB10)
    assert space.check(_base(), shape, GB10) is None


@pytest.mark.parametrize("variant", ["mlp1", "mlp2"])
def test_optuna_suggestions_are_complete(variant):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shape = gpt_oss_shape(variant, 64, 32)
    space = space_mod.space(variant, shape, GB10)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_persistent = seen_grid = seen_split = False
    for _ in range(200):
        trial = study.ask()
        config = space.suggest(trial)
        assert set(config) == CONFIG_KEYS
        MoeGemmConfig(**config)  # every suggestion is a constructible config
        if config["schedule"] == "grid":
            assert config["programs_per_sm"] == 1
            assert "programs_per_sm" not in trial.params
            seen_grid = True
        else:
            assert config["programs_per_sm"] in (1, 2, 4)
            assert "programs_per_sm" in trial.params
            seen_persistent = True
        if variant == "mlp1" and config["fuse_swiglu"]:
            assert config["SPLIT_K"] == 1 and "SPLIT_K" not in trial.params
        seen_split |= config["SPLIT_K"] > 1
        assert set(trial.params) == set(space.optuna_params(config))
        study.tell(trial, 1.0)
    assert seen_grid and seen_persistent and seen_split


def test_dequant_supported_prunes_upcast_ptx_off_hopper():
    if not hasattr(space_mod, "dequant_supported"):
        pytest.skip("this search space has no dequant_supported constraint")
    from autotune.device import INTERPRETER

    shape = gpt_oss_shape("mlp1", 16, 32)
    config = _base(dequant="upcast_ptx")
    ampere = dataclasses.replace(H100_LIKE, key="a100-like-test", name="A100-like (test)", compute_capability=(8, 0))
    for device in (INTERPRETER, ampere):
        reason = space_mod.space("mlp1", shape, device).check(config, shape, device)
        assert reason is not None and "upcast_ptx" in reason and "9.0" in reason
    for device in DEVICES:  # sm_121 and sm_90 keep it
        assert space_mod.space("mlp1", shape, device).check(config, shape, device) is None
    assert space_mod.dequant_supported(_base(dequant="upcast"), shape, INTERPRETER) is None


def test_gemv_offered_at_decode_only():
    assert space_mod.gemv_offered(gpt_oss_shape("mlp1", 1, 32))
    assert space_mod.gemv_offered(gpt_oss_shape("mlp1", 64, 32))  # 8 rows per expert: BLOCK_M=16 only
    assert not space_mod.gemv_offered(gpt_oss_shape("mlp1", 128, 32))
    names = {p.name: p.choices for p in space_mod.space("mlp2", gpt_oss_shape("mlp2", 2048, 32), GB10).params}
    assert names["path"] == ("mma",) and 16 not in names["BLOCK_N"] and 512 not in names["BLOCK_K"]


@pytest.mark.parametrize("variant", ["mlp1", "mlp2"])
def test_gemv_suggestions_are_constructible(variant):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shape = gpt_oss_shape(variant, 1, 32)
    space = space_mod.space(variant, shape, H100_LIKE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    paths, schedules = set(), set()
    for _ in range(200):
        trial = study.ask()
        config = space.suggest(trial)
        MoeGemmConfig(**config)
        paths.add((config["path"], config["dequant"]))
        if config["path"] == "gemv":  # the MMA-only tunables are inactive; the dp4a gemv tunes the L2 prefetch
            assert {"GROUP_M", "schedule", "programs_per_sm", "swap_ab"}.isdisjoint(trial.params)
            assert (config["GROUP_M"], config["schedule"], config["swap_ab"]) == (1, "grid", False)
            assert ("l2_prefetch" in trial.params) == (config["dequant"] == "dp4a")
        else:
            schedules.add(config["schedule"])
        if config["dequant"] == "dot_scaled":  # path only chosen with a register decode
            assert "path" not in trial.params and config["path"] == "mma"
        if config["dequant"] == "dp4a":  # a gemv-only decode: it implies the path
            assert "path" not in trial.params and config["path"] == "gemv"
        study.tell(trial, 1.0)
    assert paths == {("mma", "dot_scaled"), ("mma", "upcast"), ("mma", "upcast_ptx"), ("gemv", "upcast"),
                     ("gemv", "upcast_ptx"), ("gemv", "dp4a")}
    # The schedule is offered on the MMA path only: the dp4a gemv's persistent schedule (explicit configs and the
    # benchmark still run it) was slower at every point of the 2026-12-08 H100 sweep.
    assert schedules == {"grid", "persistent"}


def test_gemv_register_and_split_k_limits():
    shape = gpt_oss_shape("mlp1", 1, 32)
    gemv = _base(path="gemv", BLOCK_N=256, BLOCK_K=512, num_warps=4)
    reason = space_mod.gemv_tile_fits_registers(gemv, shape, H100_LIKE)
    assert reason is not None and "1024 registers of decoded weights per thread > 128" in reason
    # dp4a holds about 27 registers per 32-weight group of a row: 32 x 512 over 4 warps (4 rows of one group per
    # thread) needs 108 (kept; 124 in the sm_90 SASS), 64 x 512 needs 216 (pruned; 247 in the SASS)
    dp4a = _base(path="gemv", BLOCK_N=64, BLOCK_K=512, num_warps=4, dequant="dp4a")
    assert "216 registers" in space_mod.gemv_tile_fits_registers(dp4a, shape, H100_LIKE)
    assert space_mod.gemv_tile_fits_registers({**dp4a, "BLOCK_N": 32}, shape, H100_LIKE) is None
    assert space_mod.gemv_tile_fits_registers(_base(path="gemv", BLOCK_N=64, BLOCK_K=256), shape, H100_LIKE) is None
    assert space_mod.gemv_tile_fits_registers(_base(BLOCK_N=256, BLOCK_K=512), shape, H100_LIKE) is None  # mma
    # mlp2 M=1: 4 x 2880/64 = 180 tiles: split-K stays useful for the gemv (< 16 per SM; the MMA rule of 2 waves
    # would allow it too); mlp1 M=2: 8 x 5760/16 = 2880 tiles >= 16 x 48 on GB10: pruned
    mlp2 = gpt_oss_shape("mlp2", 1, 32)
    assert space_mod.split_k_useful(_base(path="gemv", BLOCK_N=64, SPLIT_K=2), mlp2, H100_LIKE) is None
    mlp1 = gpt_oss_shape("mlp1", 2, 32)
    reason = space_mod.split_k_useful(_base(path="gemv", BLOCK_N=16, SPLIT_K=2, fuse_swiglu=False), mlp1, GB10)
    assert reason is not None and "2880 tiles >= 16 programs per SM" in reason
