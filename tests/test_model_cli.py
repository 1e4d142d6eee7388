"""``generate`` and ``bench-model`` on a tiny random checkpoint, under the interpreter: outputs, and user errors
(exit code 2, one line, no traceback)."""

from __future__ import annotations

import json

import pytest
import torch

from autotune import cli
from autotune.model import build_model, generate
from autotune.model.checkpoint import load_checkpoint
from autotune.model.config import ModelConfig
from scripts.write_random_checkpoint import write_random_checkpoint
from tests.test_framework_cli import run_cli

TINY = ModelConfig(num_hidden_layers=2, num_experts=4, experts_per_token=2, vocab_size=128, hidden_size=64,
                   intermediate_size=64, head_dim=16, num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                   initial_context_length=32, rope_scaling_factor=4.0)
INFO = ("autotune: no CUDA device", "autotune: warning:")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    write_random_checkpoint(path, TINY, seed=5)
    return path


def _one_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("autotune: error:"), lines
    assert all(line.startswith(INFO) for line in lines[:-1]), lines
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_generate_json_matches_the_api(tiny, capsys):
    code = cli.main(["generate", "--checkpoint", str(tiny), "--prompt-ids", "3 1 4 1 5 9 2", "--max-new-tokens", "4",
                     "--json", "--no-table"])
    out = capsys.readouterr().out
    assert code == 0
    record = json.loads(out)
    assert record["prompt_ids"] == [3, 1, 4, 1, 5, 9, 2]
    config, weights = load_checkpoint(tiny, dtype=torch.float32)
    expected = generate(build_model(config, weights, use_table=False, max_positions=32), [[3, 1, 4, 1, 5, 9, 2]],
                        max_new_tokens=4)
    assert record["generated_ids"] == expected.generated_ids[0]
    assert len(record["generated_ids"]) == 4


def test_generate_sampling_is_seeded(tiny, capsys):
    argv = ["generate", "--checkpoint", str(tiny), "--prompt-ids", "7 8", "--max-new-tokens", "3", "--temperature",
            "1.5", "--top-p", "0.9", "--seed", "11", "--json"]
    runs = []
    for _ in range(2):
        assert cli.main(argv) == 0
        runs.append(json.loads(capsys.readouterr().out)["generated_ids"])
    assert runs[0] == runs[1]


def test_generate_prints_ids_without_a_tokenizer(tiny, capsys, monkeypatch):
    from autotune.model import tokenizer

    monkeypatch.setattr(tokenizer, "load_tokenizer", lambda: None)
    assert cli.main(["generate", "--checkpoint", str(tiny), "--prompt-ids", "1,2,3", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out.split()
    assert len(out) == 2 and all(part.isdigit() for part in out)


@pytest.mark.parametrize("argv, needles", [
    (["--prompt-ids", "1 x 3"], ("--prompt-ids",)),
    (["--prompt-ids", "1 2 500"], ("outside the vocabulary", "128")),
    (["--prompt-ids", "1", "--max-new-tokens", "0"], ("--max-new-tokens",)),
    (["--prompt-ids", "1", "--top-p", "0"], ("--top-p",)),
])
def test_generate_bad_arguments(tiny, capsys, argv, needles):
    code = cli.main(["generate", "--checkpoint", str(tiny), *argv])
    _one_error(code, capsys.readouterr().err, *needles)


def test_generate_text_prompt_without_tokenizer_is_a_user_error(tiny, capsys, monkeypatch):
    from autotune.model import tokenizer

    monkeypatch.setattr(tokenizer, "load_tokenizer", lambda: None)
    code = cli.main(["generate", "--checkpoint", str(tiny), "--prompt", "hello"])
    _one_error(code, capsys.readouterr().err, "--prompt-ids")


def test_generate_broken_checkpoint_subprocess(tiny, tmp_path):
    """A checkpoint missing one tensor: one line naming it, exit 2, from a real ``python -m autotune``."""
    import safetensors.torch

    broken = tmp_path / "broken"
    write_random_checkpoint(broken, TINY, seed=1)
    [shard] = broken.glob("*.safetensors")
    tensors = safetensors.torch.load_file(shard)
    del tensors["block.1.attn.sinks"]
    safetensors.torch.save_file(tensors, shard)
    code, _out, err, _ = run_cli("generate", "--checkpoint", str(broken), "--prompt-ids", "1 2",
                                 env_extra={"TRITON_INTERPRET": "1"})
    _one_error(code, err, "block.1.attn.sinks")


def test_bench_model_table_runs_both_settings(tiny, capsys, tmp_path):
    report = tmp_path / "bench.md"
    code = cli.main(["bench-model", "--checkpoint", str(tiny), "--tests", "pp6,tg3", "--runs", "2", "--out",
                     str(report), "--profile", "--batch", "1,2"])
    assert code == 0
    text = report.read_text()
    for needle in ("| pp6 |", "| tg3 |", "| tg3 B=2 |", "TTFT (ms), pp6", "TPOT (ms), tg3", "with table",
                   "without table", "decode step (batch 1, context 3)", "decode step (batch 2, context 3)",
                   "decode step (batch 2, context 3): with the table ÷ without, per stage", "prefill of 6 tokens",
                   "| moe_mlp1 |", "| attention |"):
        assert needle in text, needle
    comparison = text.split("decode step (batch 2, context 3): with the table ÷ without")[1].split("####")[0]
    assert "| moe_mlp1 |" in comparison and "| total |" in comparison
    row = next(line for line in text.splitlines() if line.startswith("| tg3 |"))
    rate = float(row.split("|")[2].split("±")[0])
    assert rate > 0


def test_bench_model_positions_cover_the_profiled_prefill():
    # tg128 alone with --profile profiles a 512-token prefill: the model must be built for it (H200, 2026-12-04:
    # "KV cache capacity 513 exceeds the RoPE table (130)" before this was counted)
    from autotune.model.commands import bench_positions, profile_prefill_tokens

    tg_only = [("tg", 128, 1)]
    assert profile_prefill_tokens(tg_only) == 512
    assert bench_positions(tg_only, profile=False) == 130
    assert bench_positions(tg_only, profile=True) == 514
    with_pp = [("pp", 2048, 1), ("tg", 128, 4)]
    assert profile_prefill_tokens(with_pp) == 2048
    assert bench_positions(with_pp, profile=True) == bench_positions(with_pp, profile=False) == 2050


def test_bench_model_decode_batches(tiny, tmp_path):
    """--batch decodes B sequences at once: one tg row per batch size, its rate counting every sequence's tokens."""
    report = tmp_path / "bench.md"
    code = cli.main(["bench-model", "--checkpoint", str(tiny), "--tests", "tg2", "--batch", "1,3", "--runs", "1",
                     "--out", str(report)])
    assert code == 0
    text = report.read_text()
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| tg2")}
    assert set(rows) == {"tg2", "tg2 B=3"}, rows
    assert all(float(row.split("|")[2].split("±")[0]) > 0 for row in rows.values())


@pytest.mark.parametrize("argv, needles", [
    (["--batch", "0"], ("--batch",)),
    (["--batch", "two"], ("--batch",)),
    (["--tests", "pp0"], ("--tests",)),
    (["--tests", "xx5"], ("--tests",)),
    (["--runs", "0"], ("--runs",)),
    (["--layers", "2"], ("--layers",)),
])
def test_bench_model_bad_arguments(tiny, capsys, argv, needles):
    code = cli.main(["bench-model", "--checkpoint", str(tiny), *argv])
    _one_error(code, capsys.readouterr().err, *needles)


# ------------------------------------------------------------------------------------------------ profile attribution
class _Range:
    def __init__(self, start, end):
        self.start, self.end = start, end

    def elapsed_us(self):
        return self.end - self.start


class _Event:
    def __init__(self, name, start, end, device=True):
        self.name, self.time_range = name, _Range(start, end)
        self.device_type = torch.autograd.DeviceType.CUDA if device else torch.autograd.DeviceType.CPU


def test_kernels_are_attributed_to_the_stage_range_that_contains_them():
    from autotune.model.bench import kernels_by_stage

    events = [
        _Event("attention", 100, 400),           # GPU-side range: spans gaps, its own length must not count
        _Event("attention", 0, 5000, device=False),  # the CPU-side range of the same stage: ignored
        _Event("attn_kernel", 110, 130), _Event("combine", 300, 305),
        _Event("moe_mlp1", 500, 900), _Event("gemm", 600, 650), _Event("gemm", 880, 900),
        _Event("stray", 950, 960),               # outside every range
    ]
    by_stage, kernels = kernels_by_stage(events)
    assert by_stage["attention"] == 25 and by_stage["moe_mlp1"] == 70 and by_stage["other"] == 10
    assert sum(by_stage.values()) == 105
    assert (kernels["gemm"].calls, kernels["gemm"].gpu_us, kernels["gemm"].stages) == (2, 70, {"moe_mlp1"})
    assert "attention" not in kernels
