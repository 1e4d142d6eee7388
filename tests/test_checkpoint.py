"""Checkpoint writer, loader and the HF reference model, on tiny random checkpoints (CPU, a few seconds).

Refusals must be one-line :class:`CheckpointError` messages naming the file and/or tensor: the CLI prints them as is.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import safetensors
import torch
from safetensors.torch import save_file

from autotune.model.checkpoint import HF_HINT, load_checkpoint
from autotune.model.config import CheckpointError, ModelConfig
from autotune.model.random_weights import random_mxfp4_std, random_weights
from kernels.mxfp4 import dequantize
from scripts.write_random_checkpoint import write_random_checkpoint

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "write_random_checkpoint.py"

TINY = ModelConfig(num_hidden_layers=3, num_experts=4, experts_per_token=2, vocab_size=128, hidden_size=64,
                   intermediate_size=96, head_dim=16, num_attention_heads=4, num_key_value_heads=2,
                   sliding_window=8, initial_context_length=32, rope_scaling_factor=4.0)
"""I ≠ H so a transposed expert matrix fails the strict HF load instead of passing silently."""

SHARD_BYTES = 60_000
"""Small enough to split TINY (~0.3 MB) into several files, larger than its biggest tensor (mlp1 blocks, 49 KB)."""


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "ckpt"
    write_random_checkpoint(path, TINY, seed=7, shard_bytes=SHARD_BYTES)
    return path


@pytest.fixture(scope="module")
def tiny_weights(tiny_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(tiny_dir)[1]


def _one_line_error(directory: Path, *needles: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(directory)
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def _write_ckpt(path: Path, tensors: dict[str, torch.Tensor], config: ModelConfig | dict = TINY,
                file: str = "model.safetensors") -> Path:
    """A checkpoint directory with ``tensors`` in one file and ``config`` as config.json."""
    path.mkdir(parents=True, exist_ok=True)
    data = config.to_dict() if isinstance(config, ModelConfig) else config
    (path / "config.json").write_text(json.dumps(data))
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(path / file), metadata={"format": "pt"})
    return path


# ------------------------------------------------------------------------------------------------ writer + loader
def test_round_trip_sharded(tiny_dir, tiny_weights):
    shards = sorted(tiny_dir.glob("*.safetensors"))
    assert len(shards) >= 4 and all(p.stat().st_size <= SHARD_BYTES for p in shards)
    assert shards[0].name == f"model--00001-of-{len(shards):05d}.safetensors"
    assert not list(tiny_dir.glob(".*"))  # no partial files left
    config, tensors = load_checkpoint(tiny_dir)
    assert config == TINY
    expected = dict(random_weights(TINY, seed=7))
    assert list(tensors) == list(TINY.tensor_specs())
    for name, (shape, dtype) in TINY.tensor_specs().items():
        assert tensors[name].shape == shape and tensors[name].dtype == dtype, name
        assert torch.equal(tensors[name], expected[name]), name


def test_files_are_standard_safetensors(tiny_dir, tiny_weights):
    for path in tiny_dir.glob("*.safetensors"):
        with safetensors.safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                assert torch.equal(f.get_tensor(name), tiny_weights[name]), name


def test_dtype_conversion_and_original_subfolder(tiny_dir, tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "config.json").write_text(json.dumps({"model_type": "gpt_oss", "num_local_experts": 4}))
    (tmp_path / "repo" / "original").symlink_to(tiny_dir, target_is_directory=True)
    _, tensors = load_checkpoint(tmp_path / "repo", dtype=torch.float32)
    assert tensors["block.0.attn.qkv.weight"].dtype == torch.float32
    assert tensors["norm.scale"].dtype == torch.float32
    assert tensors["block.2.mlp.mlp2_weight.blocks"].dtype == torch.uint8
    _, tensors = load_checkpoint(tiny_dir, dtype=torch.float16)
    assert tensors["embedding.weight"].dtype == torch.float16
    assert tensors["block.1.mlp.norm.scale"].dtype == torch.float32


def test_fp32_stored_floats_accepted_norms_converted(tiny_weights, tmp_path):
    stored = {n: (t.to(torch.float16) if n.endswith("norm.scale") else
                  t.float() if t.is_floating_point() else t) for n, t in tiny_weights.items()}
    _, tensors = load_checkpoint(_write_ckpt(tmp_path / "c", stored))
    assert tensors["norm.scale"].dtype == torch.float32
    assert tensors["block.0.attn.sinks"].dtype == torch.float32  # kept as stored without dtype=


def test_extra_tensor_warns_one_line(tiny_weights, tmp_path):
    path = _write_ckpt(tmp_path / "c", {**tiny_weights, "block.0.attn.rotary_cache": torch.zeros(3)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_checkpoint(path)
    assert len(caught) == 1 and "block.0.attn.rotary_cache" in str(caught[0].message)
    assert "\n" not in str(caught[0].message)


# ------------------------------------------------------------------------------------------------ refusals
def test_missing_tensor(tiny_weights, tmp_path):
    tensors = {n: t for n, t in tiny_weights.items() if n != "block.1.attn.sinks"}
    _one_line_error(_write_ckpt(tmp_path / "c", tensors), "missing tensor block.1.attn.sinks")


def test_wrong_shape(tiny_weights, tmp_path):
    bad = torch.zeros(TINY.qkv_size + 1, TINY.hidden_size, dtype=torch.bfloat16)
    path = _write_ckpt(tmp_path / "c", {**tiny_weights, "block.2.attn.qkv.weight": bad})
    _one_line_error(path, "model.safetensors: block.2.attn.qkv.weight has shape (129, 64), expected (128, 64)")


@pytest.mark.parametrize("name, dtype, needle", [
    ("block.0.mlp.mlp1_weight.blocks", torch.int8, "expected U8"),
    ("block.0.mlp.mlp2_weight.scales", torch.float32, "expected U8"),
    ("block.1.attn.out.bias", torch.int32, "expected a floating-point dtype"),
])
def test_wrong_dtype(tiny_weights, tmp_path, name, dtype, needle):
    path = _write_ckpt(tmp_path / "c", {**tiny_weights, name: tiny_weights[name].to(dtype)})
    _one_line_error(path, name, needle)


def test_tensor_in_two_files(tiny_weights, tmp_path):
    path = _write_ckpt(tmp_path / "c", tiny_weights)
    save_file({"norm.scale": tiny_weights["norm.scale"]}, str(path / "extra.safetensors"))
    _one_line_error(path, "norm.scale", "extra.safetensors", "model.safetensors")


def test_truncated_and_garbage_files(tiny_weights, tmp_path):
    path = _write_ckpt(tmp_path / "c", tiny_weights)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[:-100])
    _one_line_error(path, "model.safetensors", "truncated")
    (path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + data[100:])
    _one_line_error(path, "model.safetensors", "corrupt")
    (path / "model.safetensors").write_bytes(b"\xff" * 8 + data[8:])
    _one_line_error(path, "model.safetensors", "corrupt")
    (path / "model.safetensors").write_bytes(b"abc")
    _one_line_error(path, "model.safetensors")
    (path / "model.safetensors").unlink()
    (path / "model.safetensors").mkdir()  # safe_open raises OSError, not SafetensorError
    _one_line_error(path, "model.safetensors", "cannot read")


def test_all_headers_checked_before_any_data(tiny_dir, tmp_path, monkeypatch):
    """A wrong shape in the last shard fails before get_tensor is called on any shard."""
    import shutil

    import autotune.model.checkpoint as checkpoint

    path = tmp_path / "c"
    shutil.copytree(tiny_dir, path)
    last = sorted(path.glob("*.safetensors"))[-1]
    with safetensors.safe_open(str(last), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    name = next(iter(tensors))
    tensors[name] = torch.zeros(3, dtype=tensors[name].dtype)
    save_file(tensors, str(last))
    reads: list[str] = []

    class Recording:
        def __init__(self, *args, **kwargs):
            self.handle = safetensors.safe_open(*args, **kwargs)

        def __enter__(self):
            self.file = self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def __getattr__(self, attr):
            return getattr(self.file, attr)

        def get_tensor(self, tensor_name):
            reads.append(tensor_name)
            return self.file.get_tensor(tensor_name)

    monkeypatch.setattr(checkpoint, "safe_open", Recording)
    _one_line_error(path, last.name, name, "has shape (3,)")
    assert reads == []
    load_checkpoint(tiny_dir)  # the recorder does see reads on a good checkpoint
    assert len(reads) == len(TINY.tensor_specs())


def test_directory_problems(tiny_weights, tmp_path):
    _one_line_error(tmp_path, "no config.json")
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_dict()))
    _one_line_error(tmp_path, "no *.safetensors")
    (tmp_path / "config.json").write_text("{not json")
    _one_line_error(tmp_path, "config.json")
    (tmp_path / "config.json").write_text(json.dumps({**TINY.to_dict(), "hidden_size": 65}))
    _one_line_error(tmp_path, "config.json", "hidden_size")
    (tmp_path / "config.json").write_text(json.dumps({**TINY.to_dict(), "num_experts": "four"}))
    _one_line_error(tmp_path, "config.json", "num_experts")


def test_hf_layout_refused(tiny_weights, tmp_path):
    hf = _write_ckpt(tmp_path / "index", tiny_weights)
    (hf / "model.safetensors.index.json").write_text("{}")
    _one_line_error(hf, HF_HINT)
    hf_config = {"model_type": "gpt_oss", "num_local_experts": 4, "hidden_size": 64}
    _one_line_error(_write_ckpt(tmp_path / "config", tiny_weights, config=hf_config), HF_HINT)
    names = {"model.embed_tokens.weight": tiny_weights["embedding.weight"],
             "model.layers.0.mlp.experts.gate_up_proj_blocks": tiny_weights["block.0.mlp.mlp1_weight.blocks"]}
    _one_line_error(_write_ckpt(tmp_path / "names", names), HF_HINT)


# ------------------------------------------------------------------------------------------------ weight statistics
def test_mxfp4_std_at_full_width():
    generator = torch.Generator().manual_seed(0)
    for k in (2880, 96):
        blocks, scales = random_mxfp4_std((4, 512, k), 1 / math.sqrt(k), generator=generator)
        std = dequantize(blocks, scales).std().item() * math.sqrt(k)
        assert 0.97 < std < 1.03, (k, std)


# ------------------------------------------------------------------------------------------------ HF reference
from scripts.hf_reference import hf_model_from_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def hf_model(tiny_dir):
    return hf_model_from_checkpoint(tiny_dir)


PROMPT = torch.tensor([[5, 17, 99, 3, 64, 12, 7, 88, 21, 30, 45, 2, 9, 111, 76, 54, 33, 8, 1, 60, 4, 90]])
"""22 tokens: longer than the window (8), so sliding layers drop keys for the later positions."""


@torch.no_grad()
def test_hf_forward_finite_and_window_matters(tiny_dir, hf_model):
    assert hf_model.config._attn_implementation == "eager"
    logits = hf_model(PROMPT).logits  # [1, T, V]
    assert logits.shape == (1, PROMPT.shape[1], TINY.vocab_size) and torch.isfinite(logits).all()
    unwindowed = hf_model_from_checkpoint(tiny_dir, sliding_window=10**6)(PROMPT).logits
    window = TINY.sliding_window
    torch.testing.assert_close(unwindowed[:, :window], logits[:, :window], rtol=1e-5, atol=1e-5)
    assert (unwindowed[:, window:] - logits[:, window:]).abs().amax(-1).min() > 1e-3


@torch.no_grad()
def test_hf_expert_mlp_matches_original_formula(tiny_weights, hf_model):
    """The MoE block against FACTS.md's formula on the original tensors: checks transposes and the interleave."""
    x = torch.randn(5, TINY.hidden_size, generator=torch.Generator().manual_seed(1))
    p = "block.1.mlp."
    w1 = dequantize(tiny_weights[p + "mlp1_weight.blocks"], tiny_weights[p + "mlp1_weight.scales"])  # [E, 2I, H]
    w2 = dequantize(tiny_weights[p + "mlp2_weight.blocks"], tiny_weights[p + "mlp2_weight.scales"])  # [E, H, I]
    logits = x @ tiny_weights[p + "gate.weight"].float().T + tiny_weights[p + "gate.bias"].float()  # [T, E]
    top, experts = logits.topk(TINY.experts_per_token, dim=-1)
    gates = top.softmax(-1)
    ref = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for gate, e in zip(gates[t], experts[t]):
            h = w1[e] @ x[t] + tiny_weights[p + "mlp1_bias"][e].float()  # [2I]
            g, lin = h[::2].clamp(max=TINY.swiglu_limit), h[1::2].clamp(-TINY.swiglu_limit, TINY.swiglu_limit)
            a = g * torch.sigmoid(1.702 * g) * (lin + 1)
            ref[t] += gate * (w2[e] @ a + tiny_weights[p + "mlp2_bias"][e].float())
    out, _ = hf_model.model.layers[1].mlp(x[None])
    torch.testing.assert_close(out[0], ref, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_hf_single_token_attention_matches_original_formula(tiny_weights, hf_model):
    """One token at position 0 (RoPE = the YaRN concentration only): checks the q/k/v split, GQA and the sinks."""
    x = torch.randn(1, 1, TINY.hidden_size, generator=torch.Generator().manual_seed(2))
    p, hq, hkv, d = "block.0.attn.", TINY.num_attention_heads, TINY.num_key_value_heads, TINY.head_dim
    qkv = x[0, 0] @ tiny_weights[p + "qkv.weight"].float().T + tiny_weights[p + "qkv.bias"].float()
    q, k, v = qkv[:hq * d].view(hq, d), qkv[hq * d:(hq + hkv) * d].view(hkv, d), qkv[(hq + hkv) * d:].view(hkv, d)
    concentration = 0.1 * math.log(TINY.rope_scaling_factor) + 1
    kv_head = torch.arange(hq) // (hq // hkv)
    score = (q * k[kv_head]).sum(-1) * concentration**2 / math.sqrt(d)  # [Hq]
    weight = torch.sigmoid(score - tiny_weights[p + "sinks"].float())  # softmax over (score, sink), sink dropped
    ref = (weight[:, None] * v[kv_head]).reshape(-1) @ tiny_weights[p + "out.weight"].float().T \
        + tiny_weights[p + "out.bias"].float()
    attn = hf_model.model.layers[0].self_attn
    position = torch.zeros(1, 1, dtype=torch.long)
    out, _ = attn(x, position_embeddings=hf_model.model.rotary_emb(x, position), attention_mask=None)
    torch.testing.assert_close(out[0, 0], ref, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_random_model_stays_well_scaled_and_routes_everywhere(tmp_path):
    """24 layers: the residual RMS grows slowly (no explosion, no vanishing), logits ≈ N(0, 1), all experts used."""
    config = ModelConfig(**{**TINY.to_dict(), "num_hidden_layers": 24})
    write_random_checkpoint(tmp_path / "deep", config, seed=1)
    model = hf_model_from_checkpoint(tmp_path / "deep")
    out = model(PROMPT, output_hidden_states=True, output_router_logits=True)
    rms = [h.pow(2).mean().sqrt().item() for h in out.hidden_states[:-1]]  # the last one is after the final norm
    assert 0.8 < rms[0] < 1.2 and all(0.5 < r < 10 for r in rms), rms
    assert 0.5 < out.logits.std().item() < 2
    for layer_logits in out.router_logits:  # [T, E] per layer
        used = layer_logits.topk(config.experts_per_token, dim=-1).indices.unique()
        assert len(used) == config.num_experts


# ------------------------------------------------------------------------------------------------ CLI
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def _assert_one_line_exit_2(returncode, stdout: str, stderr: str, needle: str) -> None:
    assert returncode == 2 and stdout == "", (returncode, stdout, stderr)
    assert len(stderr.strip().splitlines()) == 1 and needle in stderr, stderr


@pytest.mark.slow
def test_cli_subprocess_writes_and_refuses(tmp_path):
    (tmp_path / "tiny.json").write_text(json.dumps(TINY.to_dict()))
    out = tmp_path / "out"
    ok = _cli(str(out), "--config", str(tmp_path / "tiny.json"), "--layers", "2", "--seed", "3",
              "--shard-gb", "0.0001")
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.strip().splitlines()) == 1 and str(out) in ok.stdout and " s " in ok.stdout
    config, _ = load_checkpoint(out)
    assert config == TINY.with_layers(2) and len(list(out.glob("*.safetensors"))) > 1
    bad = _cli(str(out), "--size", "20b", "--layers", "1")
    _assert_one_line_exit_2(bad.returncode, bad.stdout, bad.stderr, "not empty")
    bad = _cli(str(tmp_path / "x"))
    _assert_one_line_exit_2(bad.returncode, bad.stdout, bad.stderr, "one of the arguments --size --config")


@pytest.mark.parametrize("args, needle", [
    (("{tmp}/x", "--size", "7b"), "invalid choice"),
    (("{tmp}/x", "--size", "20b", "--layers", "0"), "--layers"),
    (("{tmp}/x", "--size", "20b", "--shard-gb", "-1"), "--shard-gb"),
    (("{tmp}/x", "--config", "{tmp}/missing.json"), "missing.json"),
    (("{tmp}/file/sub", "--size", "20b", "--layers", "1"), "cannot create"),
])
def test_cli_bad_args_exit_2(tmp_path, capsys, args, needle):
    from scripts.write_random_checkpoint import main

    (tmp_path / "file").write_text("")
    try:
        returncode = main([a.format(tmp=tmp_path) for a in args])
    except SystemExit as exc:
        returncode = exc.code
    captured = capsys.readouterr()
    _assert_one_line_exit_2(returncode, captured.out, captured.err, needle)


def test_force_replaces_only_the_checkpoint(tmp_path):
    out = tmp_path / "out"
    write_random_checkpoint(out, TINY, shard_bytes=SHARD_BYTES)
    (out / "notes.txt").write_text("keep me")
    write_random_checkpoint(out, TINY.with_layers(1), force=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "notes.txt"]
    assert load_checkpoint(out)[0].num_hidden_layers == 1


def test_interrupted_write_leaves_no_checkpoint(tmp_path, monkeypatch):
    import scripts.write_random_checkpoint as writer

    def failing_weights(config, **kwargs):
        for count, item in enumerate(random_weights(config, **kwargs)):
            if count == 20:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(writer, "random_weights", failing_weights)
    with pytest.raises(KeyboardInterrupt):
        writer.write_random_checkpoint(tmp_path / "out", TINY, shard_bytes=SHARD_BYTES)
    assert not (tmp_path / "out" / "config.json").exists() and not list((tmp_path / "out").glob(".*"))
    _one_line_error(tmp_path / "out", "no config.json")
