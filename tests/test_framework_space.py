"""Unit tests of the pieces the tuning loop is built from: search spaces (conditional parameters, validation, config
hashes), the classification of trial failures, and presets/``--shapes`` parsing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import FixedTrial, TrialState

from autotune.tuning import outcomes, presets
from autotune import registry
from autotune.device import INTERPRETER
from autotune.errors import ConfigError, PresetError, ShapeSpecError, UnknownKernelError, UserError
from autotune.tuning.outcomes import Kind, classify, trial_state
from autotune.tuning.space import Param, SearchSpace, config_hash, config_json, space_size
from tests import fault_kernel as fk

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(**overrides) -> SearchSpace:
    """schedule → programs_per_sm (persistent only) → BLOCK; split only when BLOCK == 64."""
    params = (
        Param("schedule", ("grid", "persistent")),
        Param("programs_per_sm", (1, 2, 4), when=lambda c: c["schedule"] == "persistent", inactive=1),
        Param("BLOCK", (16, 32, 64)),
        Param("split", (1, 2), when=lambda c: c["BLOCK"] == 64, inactive=1),
    )
    default = {"schedule": "grid", "programs_per_sm": 1, "BLOCK": 32, "split": 1}
    fields = {"params": params, "constraints": (), "default": default, **overrides}
    return SearchSpace(**fields)


# ---------------------------------------------------------------------------------------------------- suggest


def test_suggest_inactive_param_not_asked():
    config = _space().suggest(FixedTrial({"schedule": "grid", "BLOCK": 16}))  # FixedTrial raises on unknown asks
    assert config == {"schedule": "grid", "programs_per_sm": 1, "BLOCK": 16, "split": 1}


def test_suggest_active_conditional_param():
    trial = FixedTrial({"schedule": "persistent", "programs_per_sm": 4, "BLOCK": 64, "split": 2})
    assert _space().suggest(trial) == {"schedule": "persistent", "programs_per_sm": 4, "BLOCK": 64, "split": 2}


def test_implied_value_of_an_inactive_param():
    # "decode" = "int" exists on path "simd" only: path is not asked then, and every way of completing a config
    # (suggest, validate, enumerate) gives it the implied value instead of the plain inactive one.
    from autotune.tuning.space import enumerate_configs

    params = (Param("decode", ("float", "int", "scaled")),
              Param("path", ("tile", "simd"), when=lambda c: c["decode"] == "float", inactive="tile",
                    implied=(("decode", "int", "simd"),)))
    space = SearchSpace(params=params, constraints=(), default={"decode": "float", "path": "tile"})
    assert space.suggest(FixedTrial({"decode": "int"})) == {"decode": "int", "path": "simd"}
    assert space.suggest(FixedTrial({"decode": "scaled"})) == {"decode": "scaled", "path": "tile"}
    assert space.validate({"decode": "int"}) == {"decode": "int", "path": "simd"}
    assert enumerate_configs(params, 100) == [{"decode": "float", "path": "tile"}, {"decode": "float", "path": "simd"},
                                              {"decode": "int", "path": "simd"}, {"decode": "scaled", "path": "tile"}]
    plain = SearchSpace(params=(params[0], Param("path", ("tile", "simd"), when=params[1].when, inactive="tile")),
                        constraints=(), default=space.default)
    assert plain.signature() != space.signature()  # an edited implication starts new studies


def test_suggest_with_sampler_stores_only_active_params():
    space = _space()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        config = space.suggest(trial)
        assert trial.params == space.optuna_params(config)
        if config["schedule"] == "grid":
            assert "programs_per_sm" not in trial.params and config["programs_per_sm"] == 1
        if config["BLOCK"] != 64:
            assert "split" not in trial.params and config["split"] == 1
        assert space.validate(config) == config  # every suggestion is a valid, complete config
        seen.add(config_hash(config))
        study.tell(trial, 1.0)
    assert len(seen) > 5


def test_enqueued_params_round_trip_through_suggest():
    space = _space()
    config = space.validate({"schedule": "persistent", "programs_per_sm": 2, "BLOCK": 64, "split": 2})
    study = optuna.create_study()
    study.enqueue_trial(space.optuna_params(config))
    assert space.suggest(study.ask()) == config


def test_space_size_is_upper_bound():
    assert space_size(_space().params) == 2 * 3 * 3 * 2


def test_fault_kernel_space_shape_dependent():
    full = fk.space("only", {"M": 64, "faults": 1}, INTERPRETER)
    safe = fk.space("only", {"M": 64, "faults": 0}, INTERPRETER)
    assert full.params[0].choices == fk.MODES
    assert safe.params[0].choices == fk.SAFE_MODES
    assert full.check(full.validate({"mode": "infeasible"}), {"M": 64}, INTERPRETER) == fk.INFEASIBLE_REASON
    assert full.check(full.default, {"M": 64}, INTERPRETER) is None
    with pytest.raises(ConfigError):
        safe.validate({"mode": "hang"})


# ---------------------------------------------------------------------------------------------------- validate


def test_validate_completes_from_default():
    assert _space().validate({}) == _space().default
    assert _space().validate({"BLOCK": 64}) == {"schedule": "grid", "programs_per_sm": 1, "BLOCK": 64, "split": 1}
    assert _space().validate({"schedule": "persistent"})["programs_per_sm"] == 1


def test_validate_sets_inactive_params_to_their_inactive_value():
    # a value given for a parameter that does not apply is replaced (not an error)
    assert _space().validate({"schedule": "grid", "programs_per_sm": 4})["programs_per_sm"] == 1


@pytest.mark.parametrize("config,needle", [({"nope": 1}, "unknown parameters ['nope']"),
                                           ({"BLOCK": 48}, "BLOCK=48 is not one of [16, 32, 64]"),
                                           ({"schedule": "magic"}, "schedule='magic'"),
                                           ({"schedule": "persistent", "programs_per_sm": 3}, "programs_per_sm=3"),
                                           ({"BLOCK": 64, "split": 8}, "split=8"),
                                           ({"BLOCK": "64"}, "BLOCK='64'"),
                                           ({"BLOCK": None}, "BLOCK=None")])
def test_validate_rejects(config, needle):
    with pytest.raises(ConfigError) as exc:
        _space().validate(config)
    assert needle in str(exc.value)
    assert isinstance(exc.value, UserError)  # reaches the user as one line, exit code 2


def test_validate_does_not_mutate_input():
    config = {"BLOCK": 64}
    _space().validate(config)
    assert config == {"BLOCK": 64}


def test_validate_activated_param_with_inactive_default():
    space = _space(params=(Param("schedule", ("grid", "persistent")),
                           Param("programs_per_sm", (1, 2, 4), when=lambda c: c["schedule"] == "persistent",
                                 inactive=None)),
                   default={"schedule": "grid", "programs_per_sm": None})
    assert space.validate({"schedule": "persistent"})["programs_per_sm"] in (1, 2, 4)


@pytest.mark.parametrize("given,expected", [({"BLOCK": 16.0}, 16), ({"schedule": "grid", "programs_per_sm": True}, 1)])
def test_validate_rejects_or_normalizes_equal_values_of_another_type(given, expected):
    space = _space(params=(Param("schedule", ("grid", "persistent")), Param("programs_per_sm", (1, 2, 4)),
                           Param("BLOCK", (16, 32, 64))),
                   default={"schedule": "grid", "programs_per_sm": 2, "BLOCK": 32})
    try:
        config = space.validate(given)
    except ConfigError:
        return
    value = config[next(iter(set(given) - {"schedule"}))]
    assert value == expected and type(value) is type(expected)


# ---------------------------------------------------------------------------------------------------- config hash


def test_config_hash_is_canonical_and_stable():
    config = {"b": 2, "a": "x", "c": True}
    assert config_json(config) == '{"a":"x","b":2,"c":true}'
    assert config_hash(config) == hashlib.sha256(b'{"a":"x","b":2,"c":true}').hexdigest()[:12]
    assert config_hash(dict(reversed(list(config.items())))) == config_hash(config)
    assert len(config_hash(config)) == 12
    assert config_hash({"a": 1}) != config_hash({"a": True}) != config_hash({"a": "1"})
    # pinned: stored studies and tables key on these values
    assert config_hash(fk.default_config("only", {}, None)) == hashlib.sha256(
        b'{"BLOCK":16,"UNROLL":1,"mode":"ok"}').hexdigest()[:12]


def test_config_hash_matches_across_processes(tmp_path):
    import subprocess
    import sys

    code = "from autotune.tuning.space import config_hash; print(config_hash({'z': 1, 'a': [1, 2], 'm': None}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert out.stdout.strip() == config_hash({"a": [1, 2], "m": None, "z": 1})


# ---------------------------------------------------------------------------------------------------- outcomes


def _compilation_error() -> BaseException:
    try:
        fk._frontend_compile({"BLOCK": 16, "UNROLL": 1, "MODE": fk._COMPILE_ERROR})
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError("the broken kernel compiled")


def _out_of_resources() -> BaseException:
    from triton.runtime.errors import OutOfResources

    return OutOfResources(262144, 232448, "shared memory")


def _interpreter_error() -> BaseException:
    from triton.runtime.errors import InterpreterError

    return InterpreterError("NameError(\"name 'x' is not defined\")")


@pytest.mark.parametrize("make,phase,kind", [
    (_compilation_error, "run", Kind.COMPILE_ERROR),
    (_compilation_error, "compile", Kind.COMPILE_ERROR),
    (_out_of_resources, "compile", Kind.OUT_OF_RESOURCES),
    (_out_of_resources, "run", Kind.OUT_OF_RESOURCES),
    (lambda: RuntimeError("triton: out of resources: shared memory"), "run", Kind.OUT_OF_RESOURCES),
    (lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "compile", Kind.OUT_OF_MEMORY),
    (lambda: RuntimeError("CUDA out of memory. Tried to allocate"), "run", Kind.OUT_OF_MEMORY),
    (lambda: RuntimeError(fk.CUDA_ERROR_TEXT), "run", Kind.CUDA_ERROR),
    (lambda: RuntimeError(fk.CUDA_ERROR_TEXT), "config", Kind.CUDA_ERROR),  # sticky errors win over the phase
    (lambda: RuntimeError("cudaErrorLaunchFailure"), "time", Kind.CUDA_ERROR),
    (lambda: type("AcceleratorError", (RuntimeError,), {})("device-side assert"), "run", Kind.CUDA_ERROR),
    (lambda: ValueError("BLOCK_M=7 must be a positive power of two"), "config", Kind.INVALID_CONFIG),
    (lambda: KeyError("BLOCK"), "config", Kind.INVALID_CONFIG),
    (lambda: ValueError("anything"), "compile", Kind.COMPILE_ERROR),
    (lambda: ValueError("shape mismatch"), "run", Kind.RUNTIME_ERROR),
    (lambda: ZeroDivisionError("division by zero"), "time", Kind.RUNTIME_ERROR),
    (_interpreter_error, "run", Kind.RUNTIME_ERROR),  # the interpreter compiles nothing: its errors are runtime
])
def test_classify(make, phase, kind):
    assert classify(make(), phase) is kind


def test_compilation_error_is_genuine():
    """Triton's real front end rejects the broken kernel. In a fresh process: once the interpreter has run kernels in
    this one, its patched ``triton.language`` builtins make the front end fail on something else."""
    import subprocess
    import sys
    from pathlib import Path

    probe = ("import tests.fault_kernel as fk\n"
             "try:\n    fk._frontend_compile({'BLOCK': 16, 'UNROLL': 1, 'MODE': fk._COMPILE_ERROR})\n"
             "except Exception as exc:\n    print(type(exc).__module__, type(exc).__name__)\n    print(exc)\n")
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True, timeout=300)
    first, _, rest = done.stdout.partition("\n")
    assert first == "triton.compiler.errors CompilationError", done.stdout + done.stderr
    assert "this_function_does_not_exist" in rest


@pytest.mark.parametrize("kind", list(Kind))
def test_trial_state(kind):
    expected = {Kind.OK: TrialState.COMPLETE, Kind.PRUNED: TrialState.PRUNED}.get(kind, TrialState.FAIL)
    assert trial_state(kind) == expected


def test_sticky_kinds():
    assert outcomes.STICKY == {Kind.CUDA_ERROR, Kind.TIMEOUT, Kind.WORKER_DIED}


# ---------------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("text,expected", [
    ("M=1,16,256", {"M": [1, 16, 256]}),
    ("M=1,2 E=32", {"M": [1, 2], "E": [32]}),
    ("M=1;top_k=2", {"M": [1], "top_k": [2]}),
    ("  M=0  ", {"M": [0]}),
])
def test_parse_shapes(text, expected):
    assert presets.parse_shapes(text) == expected


@pytest.mark.parametrize("text", ["", "   ", ";", "M", "=3", "M=", "M=1,x", "M=1,,2", "M=-1", "1M=2", "M=1.5",
                                  "M:1", "M=1 E"])
def test_parse_shapes_errors(text):
    with pytest.raises(ShapeSpecError) as exc:
        presets.parse_shapes(text)
    assert "--shapes" in str(exc.value) and "\n" not in str(exc.value)


def test_with_shapes():
    tiny = presets.load("tiny_cpu").kernels["moe_gemm"]
    replaced = presets.with_shapes(tiny, {"M": [2], "E": [8]})
    assert replaced.dims["M"] == [2]  # a list dimension stays a list
    assert replaced.dims["E"] == 8  # a scalar dimension stays a scalar
    assert tiny.dims["M"] == [1, 8]  # the original is not changed
    assert (replaced.variants, replaced.trials, replaced.timeout_s) == (tiny.variants, tiny.trials, tiny.timeout_s)
    with pytest.raises(ShapeSpecError, match=r"\['Q'\]"):
        presets.with_shapes(tiny, {"Q": [1]})


def test_expand_plugin_kernel(tmp_path):
    spec = registry.get(fk.NAME)
    preset = presets.load(str(fk.write_preset(tmp_path / "p.toml", M=(8, 64), faults=0, delay_ms=5)))
    studies = presets.expand(preset.kernels[fk.NAME], spec)
    assert studies == [("only", {"M": 8, "faults": 0, "delay_ms": 5}), ("only", {"M": 64, "faults": 0, "delay_ms": 5})]
    with pytest.raises(ShapeSpecError):
        presets.expand(presets.with_shapes(preset.kernels[fk.NAME], {"M": [0]}), spec)


def test_expand_unknown_variant():
    tiny = presets.load("tiny_cpu").kernels["moe_gemm"]
    bad = presets.KernelPreset("moe_gemm", ("mlp9",), tiny.dims, tiny.trials, tiny.timeout_s)
    with pytest.raises(UnknownKernelError, match="mlp9"):
        presets.expand(bad, registry.get("moe_gemm"))


def test_load_shipped_presets():
    assert {"tiny_cpu", "gpt_oss_20b", "gpt_oss_120b"} <= set(presets.available())
    for name in presets.available():
        preset = presets.load(name)
        assert preset.name == name and "moe_gemm" in preset.kernels
        assert preset.kernels["moe_gemm"].trials >= 1


@pytest.mark.parametrize("body,needle", [
    ("[moe_gemm\n", "cannot read preset"),
    ("description = 'nothing'\n", "no kernel tables"),
    ("[moe_gemm]\ntrials = 2\nM = [1]\n", "variants must be a list"),
    ("[moe_gemm]\nvariants = ['mlp1']\nM = [1]\n", "needs variants and trials"),
    ("[moe_gemm]\nvariants = ['mlp1']\ntrials = 'many'\n", "needs variants and trials"),
    ("[moe_gemm]\nvariants = ['mlp1']\ntrials = 2\nM = []\n", "M must be an integer or a non-empty list"),
    ("[moe_gemm]\nvariants = ['mlp1']\ntrials = 2\nM = [1, 'x']\n", "M must be"),
    ("[moe_gemm]\nvariants = ['mlp1']\ntrials = 2\nhidden = 2.5\n", "hidden must be"),
    (b"\xff\xfe".decode("latin-1"), "cannot read preset"),
])
def test_load_errors(tmp_path, body, needle):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(PresetError) as exc:
        presets.load(str(path))
    assert needle in str(exc.value) and str(path) in str(exc.value)


def test_load_unknown_preset():
    with pytest.raises(PresetError, match="unknown preset 'no_such_preset'.*tiny_cpu"):
        presets.load("no_such_preset")
    with pytest.raises(PresetError, match="unknown preset"):
        presets.load("/nonexistent/dir/p.toml")


def test_load_rejects_string_variants(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[moe_gemm]\nvariants = \"mlp1\"\ntrials = 2\nM = [1]\n")
    with pytest.raises(PresetError):
        presets.load(str(path))


def test_preset_json_roundtrip_of_enqueue_defaults():
    # the fault kernel's default completes any partial --enqueue config
    space = fk.space("only", {"M": 64, "faults": 1}, INTERPRETER)
    for mode in fk.MODES:
        config = space.validate(json.loads(json.dumps({"mode": mode})))
        assert config == {**fk.default_config("only", {}, None), "mode": mode}
