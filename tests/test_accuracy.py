"""``eval`` (autotune/model/accuracy.py): the agreement and KL arithmetic, then the passes on a tiny random checkpoint
under the interpreter (fp16 served against the fp32 reference), the CLI with a table and a text, user errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from autotune import cli
from autotune.device.profile import INTERPRETER
from autotune.model import build_model
from autotune.model.accuracy import (
    Tally,
    cast_weights,
    evaluate,
    negative_log_likelihood,
    perplexity,
)
from autotune.model.checkpoint import load_checkpoint
from autotune.table import TableEntry
from autotune.table.store import ConfigTable
from kernels.moe_gemm.heuristics import default_config
from scripts.write_random_checkpoint import write_random_checkpoint
from tests.test_model_cli import TINY, _one_error


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_eval")
    write_random_checkpoint(path, TINY, seed=7)
    return path


# ------------------------------------------------------------------------------------------------ arithmetic
def test_tally_identical_logits_agree_with_zero_kl():
    logits = torch.randn(40, 300, generator=torch.Generator().manual_seed(0))
    tally = Tally()
    tally.add(logits, logits.clone())
    assert (tally.positions, tally.agree, tally.kl_sum, tally.kl_max) == (40, 40, 0.0, 0.0)


def test_tally_matches_the_closed_form():
    """Two classes: p = softmax([0, 0]) = (½, ½), q = softmax([0, log 3]) = (¼, ¾): KL = ½ ln 2 + ½ ln(2/3)."""
    ref = torch.tensor([[0.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    test = torch.tensor([[0.0, math.log(3.0)], [0.0, 2.0]], dtype=torch.float64)  # float64: log 3 not rounded
    tally = Tally()
    tally.add(ref, test)
    expected = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    assert tally.kl_max == pytest.approx(expected, rel=1e-12)
    assert tally.mean_kl == pytest.approx(expected / 2, rel=1e-12)
    assert tally.agreement == 0.5  # row 0: the reference's tie goes to index 0, the other's argmax is 1


def test_tally_agreement_counts_argmax_matches():
    ref = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [1.0, 2.0, 0.0]])
    test = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 2.0, 1.0]])
    tally = Tally()
    tally.add(ref, test)
    assert tally.agree == 3 and tally.agreement == 0.75
    with pytest.raises(ValueError):
        tally.add(ref, test[:2])


def test_perplexity_of_uniform_logits_is_the_vocabulary_size():
    ids = torch.tensor([3, 1, 4, 1, 5])
    nll = negative_log_likelihood(torch.zeros(5, 50), ids)
    assert nll == pytest.approx(4 * math.log(50), rel=1e-12)
    assert perplexity(nll, 4) == pytest.approx(50.0, rel=1e-12)
    sure = torch.full((5, 50), -30.0)
    sure[torch.arange(4), ids[1:]] = 30.0  # row t puts its mass on ids[t+1]
    assert perplexity(negative_log_likelihood(sure, ids), 4) == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------ the passes
def test_empty_table_equals_no_table_and_fp16_differs_from_fp32(tiny, tmp_path):
    config, weights = load_checkpoint(tiny, dtype=torch.float32)
    half = cast_weights(weights, torch.float16)
    assert half["block.0.attn.norm.scale"].dtype == torch.float32 and half["embedding.weight"].dtype == torch.float16
    assert half["block.0.mlp.mlp1_weight.blocks"] is weights["block.0.mlp.mlp1_weight.blocks"]
    served = {s: build_model(config, half, table=tmp_path / "absent.json", use_table=s == "table", max_positions=16)
              for s in ("table", "no table")}
    reference = build_model(config, cast_weights(half, torch.float32), use_table=False, max_positions=16,
                            kv_dtype="act")
    prompts = torch.randint(0, config.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1))
    result = evaluate(served, reference, prompts, 2)
    table, no_table = result.tallies["table"], result.tallies["no table"]
    assert set(table) == {"prefill", "decode"}
    assert (table["prefill"].positions, table["decode"].positions) == (10, 4)
    for name in ("prefill", "decode"):
        assert table[name] == no_table[name]  # same configs → bit-identical logits → identical tallies
        assert 0.0 <= table[name].agreement <= 1.0
        # fp16 activations against fp32: small but not zero (a reference that silently ran in fp16 would give 0)
        assert 0.0 < table[name].mean_kl <= table[name].kl_max < 1e-3


def _table_with_a_different_mlp1_tile(path, config) -> None:
    """One interpreter entry for mlp1 (served by nearest M to every mlp1 call) with BLOCK_K halved (a K loop of two
    steps instead of one)."""
    shape = {"M": 1, "N": 2 * config.intermediate_size, "K": config.hidden_size, "E": config.num_experts,
             "top_k": config.experts_per_token}
    tuned = {**default_config("mlp1", shape, INTERPRETER)}
    tuned["BLOCK_K"] = tuned["BLOCK_K"] // 2
    table = ConfigTable(path)
    table.merge(INTERPRETER.key, INTERPRETER.as_dict(), [TableEntry(
        kernel="moe_gemm", variant="mlp1", shape=shape, config=tuned, median_us=1.0, default_median_us=2.0,
        fingerprint={"triton": "test"}, study="test", trial=0, tuned_at="2026-12-02T00:00:00+00:00")])
    table.save()


class _ByteTokenizer:
    """Stands in for tiktoken offline: one token per byte, folded into the tiny vocabulary."""

    def encode(self, text, **_kwargs):
        return [b % TINY.vocab_size for b in text.encode("utf-8")]


def test_cli_with_a_table_and_a_text(tiny, tmp_path, capsys, monkeypatch):
    import autotune.model.tokenizer as tokenizer_mod

    monkeypatch.setattr(tokenizer_mod, "load_tokenizer", lambda: _ByteTokenizer())
    table = tmp_path / "table.json"
    _table_with_a_different_mlp1_tile(table, TINY)
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog " * 3)
    out = tmp_path / "eval.md"
    code = cli.main(["eval", "--checkpoint", str(tiny), "--prompts", "1", "--prompt-len", "4", "--steps", "2",
                     "--dtype", "float16", "--table", str(table), "--text", str(text), "--text-tokens", "12",
                     "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert out.read_text() == printed
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["schema"] == "gpt-oss-autotune/eval" and doc["text_tokens"] == 12
    assert doc["configs"]["table"].get("nearest", 0) + doc["configs"]["table"].get("exact", 0) >= 1
    assert "nearest" not in doc["configs"]["no table"] and "exact" not in doc["configs"]["no table"]
    for setting in ("table", "no table"):
        passes = doc["passes"][setting]
        assert set(passes) == {"prefill", "decode", "text"}
        assert passes["text"]["positions"] == 12 and passes["prefill"]["positions"] == 4
        for values in passes.values():
            assert 0.0 <= values["top1_agreement"] <= 1.0 and values["mean_kl"] >= 0.0
        assert doc["perplexity"][setting] / doc["perplexity"]["reference"] == pytest.approx(1.0, abs=1e-2)
    # the halved BLOCK_K was served (the source counts above) but need not move any fp16 output: not asserted
    assert "| reference (fp32) |" in printed and "| table | text | 12 |" in printed


@pytest.mark.parametrize("argv, needles", [
    (["--prompts", "0"], ("--prompts",)),
    (["--steps", "-1"], ("--steps",)),
    (["--text-tokens", "1"], ("--text-tokens",)),
    (["--dtype", "bfloat16"], ("bfloat16", "interpreter")),
    (["--text", "/nonexistent/file.txt"], ("--text",)),
    (["--out", "x.json"], ("--out",)),
    (["--layers", "1"], ("--layers",)),
])
def test_bad_arguments(tiny, capsys, argv, needles):
    code = cli.main(["eval", "--checkpoint", str(tiny), *argv])
    _one_error(code, capsys.readouterr().err, *needles)


def test_text_without_a_tokenizer(tiny, tmp_path, capsys, monkeypatch):
    import autotune.model.tokenizer as tokenizer_mod

    monkeypatch.setattr(tokenizer_mod, "load_tokenizer", lambda: None)
    text = tmp_path / "t.txt"
    text.write_text("hello")
    code = cli.main(["eval", "--checkpoint", str(tiny), "--text", str(text)])
    _one_error(code, capsys.readouterr().err, "--text needs tiktoken")
