"""``eval``: do the served configs change the answers? The same prompts through the loop with the table, without it
(the kernels' default configs), and through an fp32 reference pass; agreement of the next-token distributions.

The reference is the same loop in float32 activations with default configs and an fp32 KV cache, over the same
weights upcast exactly to float32 (the MXFP4 experts are shared: they decode exactly in any dtype); on a GPU its
Triton dots run in IEEE fp32 (``TRITON_F32_DEFAULT=ieee`` while the reference compiles and runs; Triton counts that
variable in its cache key, so the served kernels are not affected) and torch's matmuls in fp32 (torch's default,
no TF32). So what separates a served pass from the reference is the activation dtype (bf16 on GPUs) and the configs
(tile shapes change summation order, split-K adds partial sums, fp8 KV rounds the cache).

Passes, all teacher-forced on the reference's tokens so every setting sees the same inputs:

- ``prefill``: B random prompts of T tokens (seeded), every position's next-token distribution;
- ``decode``: then S decode steps (CUDA graphs on GPUs, as served), each fed the reference's greedy token;
- ``text`` (with ``--text FILE`` and the tokenizer): the first ``--text-tokens`` tokens of the file in one prefill,
  every position compared, and the perplexity of the text under each setting, exp(mean −log p(next token)).

Per setting and pass: top-1 agreement (the setting's argmax equals the reference's), mean and max KL(P_ref ‖ P_set)
in nats, computed in float64 (identical logits give exactly 0).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from autotune.errors import UserError

KL_CHUNK_ROWS = 16
"""Rows of logits turned into float64 distributions at once (16 × 201088 × 8 B ≈ 26 MB per array)."""

SETTINGS = ("table", "no table")
"""The served settings, compared against the reference."""


@dataclass
class Tally:
    """Agreement of one setting with the reference over some positions (running sums).

    Attributes:
        positions: next-token distributions compared.
        agree: positions whose argmax equals the reference's.
        kl_sum: sum of KL(P_ref ‖ P_setting), nats.
        kl_max: largest KL of one position, nats.
    """

    positions: int = 0
    agree: int = 0
    kl_sum: float = 0.0
    kl_max: float = 0.0

    def add(self, ref_logits: torch.Tensor, logits: torch.Tensor) -> None:
        """Add positions: ``ref_logits`` and ``logits`` are ``[N, V]`` (any float dtype, same device).

        Raises:
            ValueError: the shapes differ.
        """
        if ref_logits.shape != logits.shape or ref_logits.dim() != 2:
            raise ValueError(f"logits {tuple(logits.shape)} do not match the reference's {tuple(ref_logits.shape)}")
        self.agree += int((ref_logits.argmax(-1) == logits.argmax(-1)).sum())
        for start in range(0, ref_logits.shape[0], KL_CHUNK_ROWS):
            log_p = torch.log_softmax(ref_logits[start:start + KL_CHUNK_ROWS].double(), dim=-1)
            log_q = torch.log_softmax(logits[start:start + KL_CHUNK_ROWS].double(), dim=-1)
            kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # [rows]
            self.kl_sum += float(kl.sum())
            self.kl_max = max(self.kl_max, float(kl.max()))
        self.positions += ref_logits.shape[0]

    @property
    def agreement(self) -> float:
        """Top-1 agreement in [0, 1] (NaN with no positions)."""
        return self.agree / self.positions if self.positions else math.nan

    @property
    def mean_kl(self) -> float:
        """Mean KL(P_ref ‖ P_setting) per position, nats (NaN with no positions)."""
        return self.kl_sum / self.positions if self.positions else math.nan


def negative_log_likelihood(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """Sum of −log p(ids[t+1] | ids[..t]) over a sequence, nats, in float64.

    Args:
        logits: ``[T, V]``, row t the distribution of the token after position t.
        ids: int64 ``[T]``, the sequence.

    Returns:
        The sum over the T − 1 predicted tokens.
    """
    log_q = torch.log_softmax(logits[:-1].double(), dim=-1)
    return float(-log_q.gather(-1, ids[1:, None]).sum())


def perplexity(nll_sum: float, predicted: int) -> float:
    """exp(mean negative log-likelihood): ``predicted`` tokens whose −log p sum to ``nll_sum`` nats."""
    return math.exp(nll_sum / predicted)


@dataclass
class EvalResult:
    """What :func:`evaluate` measured.

    Attributes:
        tallies: setting ("table", "no table") → pass ("prefill", "decode", "text") → :class:`Tally`.
        perplexity: setting, and "reference" → perplexity of the text (empty without text).
        text_tokens: tokens of the text evaluated (0 without text).
        configs: setting → configs served by source (``KernelConfigs.summary``).
    """

    tallies: dict[str, dict[str, Tally]] = field(default_factory=dict)
    perplexity: dict[str, float] = field(default_factory=dict)
    text_tokens: int = 0
    configs: dict[str, dict[str, int]] = field(default_factory=dict)


@contextlib.contextmanager
def ieee_fp32_dots() -> Iterator[None]:
    """Triton dots of float32 operands in IEEE fp32 (not TF32) inside the block (``TRITON_F32_DEFAULT``)."""
    before = os.environ.get("TRITON_F32_DEFAULT")
    os.environ["TRITON_F32_DEFAULT"] = "ieee"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TRITON_F32_DEFAULT", None)
        else:
            os.environ["TRITON_F32_DEFAULT"] = before


def cast_weights(weights: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The weights with every float tensor in ``dtype``, norm scales float32, MXFP4 blocks/scales as they are (the
    same tensors, not copies, wherever nothing changes)."""
    return {name: (t.to(dtype) if t.is_floating_point() and not name.endswith("norm.scale") else t)
            for name, t in weights.items()}


@torch.inference_mode()
def evaluate(served: dict, reference, prompts: torch.Tensor, steps: int, *, text_ids: torch.Tensor | None = None,
             cuda_graphs: bool = True) -> EvalResult:
    """Run the passes of the module docstring and compare each served model with the reference.

    Args:
        served: setting → :class:`autotune.model.model.GptOss` (activation dtype of serving).
        reference: the float32 :class:`GptOss` with default configs.
        prompts: int64 ``[B, T]`` prompt tokens on the models' device.
        steps: teacher-forced decode steps after the prompts (0: prefill only).
        text_ids: int64 ``[L]`` tokens of a text, L ≥ 2, for perplexity (None: no text pass).
        cuda_graphs: decode under CUDA graphs (GPUs only), as served.

    Returns:
        The :class:`EvalResult`.
    """
    from autotune.model.generation import DecodeRunner

    result = EvalResult(tallies={s: {} for s in served})
    batch, length = prompts.shape
    vocab = reference.config.vocab_size
    with ieee_fp32_dots():
        ref_cache = reference.new_cache(batch, length + steps)
        ref_logits = reference.prefill(prompts, ref_cache, all_logits=True)         # [B, T, V]
    caches = {}
    for setting, model in served.items():
        caches[setting] = model.new_cache(batch, length + steps)
        logits = model.prefill(prompts, caches[setting], all_logits=True)
        result.tallies[setting]["prefill"] = Tally()
        result.tallies[setting]["prefill"].add(ref_logits.reshape(-1, vocab), logits.reshape(-1, vocab))
        del logits
    tokens = ref_logits[:, -1].argmax(-1)                                            # [B]
    del ref_logits
    if steps:
        with ieee_fp32_dots():
            ref_runner = DecodeRunner(reference, ref_cache, cuda_graphs=cuda_graphs)
        runners = {s: DecodeRunner(m, caches[s], cuda_graphs=cuda_graphs) for s, m in served.items()}
        for setting in served:
            result.tallies[setting]["decode"] = Tally()
        for _ in range(steps):
            with ieee_fp32_dots():
                ref_step = ref_runner.step(tokens)                                 # [B, V], graph buffer
            for setting, runner in runners.items():
                result.tallies[setting]["decode"].add(ref_step, runner.step(tokens))
            tokens = ref_step.argmax(-1)
    if text_ids is not None:
        result.text_tokens = int(text_ids.numel())
        ids = text_ids[None, :]                                                      # [1, L]
        with ieee_fp32_dots():
            ref_text = reference.prefill(ids, reference.new_cache(1, ids.shape[1]), all_logits=True)[0]  # [L, V]
        predicted = ids.shape[1] - 1
        result.perplexity["reference"] = perplexity(negative_log_likelihood(ref_text, text_ids), predicted)
        for setting, model in served.items():
            logits = model.prefill(ids, model.new_cache(1, ids.shape[1]), all_logits=True)[0]
            result.tallies[setting]["text"] = Tally()
            result.tallies[setting]["text"].add(ref_text, logits)
            result.perplexity[setting] = perplexity(negative_log_likelihood(logits, text_ids), predicted)
            del logits
    result.configs = {s: m.configs.summary() for s, m in served.items()}
    return result


def format_report(result: EvalResult, *, described: str, served_dtype: str, kv_dtype: str, batch: int, length: int,
                  steps: int, device_name: str) -> list[str]:
    """Markdown lines of an :class:`EvalResult`."""
    lines = [f"### eval: {described}", "",
             (f"{device_name}; served activations {served_dtype}, KV cache {kv_dtype}; reference: the same loop in "
              f"float32 with default configs; {batch} prompts × {length} tokens, then {steps} teacher-forced decode "
              "steps"), "",
             "| setting | pass | positions | top-1 agreement | mean KL (nats) | max KL (nats) |",
             "|---|---|---|---|---|---|"]
    for setting, passes in result.tallies.items():
        for name, tally in passes.items():
            lines.append(f"| {setting} | {name} | {tally.positions} | {tally.agreement:.4f} | {tally.mean_kl:.3e} | "
                         f"{tally.kl_max:.3e} |")
    if result.perplexity:
        ref = result.perplexity["reference"]
        lines += ["", f"perplexity of the text ({result.text_tokens} tokens):", "",
                  "| setting | perplexity | ÷ reference |", "|---|---|---|", f"| reference (fp32) | {ref:.4f} | 1 |"]
        lines += [f"| {s} | {result.perplexity[s]:.4f} | {result.perplexity[s] / ref:.5f} |" for s in result.tallies]
    lines += ["", "configs served (distinct shapes): "
              + ", ".join(f"{s} {c}" for s, c in result.configs.items()), ""]
    return lines


def record(result: EvalResult, **context) -> dict:
    """JSON-ready form of an :class:`EvalResult` (``context``: the run's description fields)."""
    return {"schema": "gpt-oss-autotune/eval", "schema_version": 1, **context,
            "passes": {s: {name: {"positions": t.positions, "top1_agreement": t.agreement, "mean_kl": t.mean_kl,
                                  "max_kl": t.kl_max} for name, t in passes.items()}
                       for s, passes in result.tallies.items()},
            "perplexity": result.perplexity, "text_tokens": result.text_tokens, "configs": result.configs}


def _text_ids(path: str, limit: int, vocab: int) -> torch.Tensor:
    """The first ``limit`` tokens of a UTF-8 text file (tiktoken's o200k_harmony encoding).

    Raises:
        UserError: unreadable file, no tokenizer, fewer than 2 tokens, or ids outside the model's vocabulary.
    """
    from autotune.model.tokenizer import ENCODING, load_tokenizer

    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"--text {path}: cannot read as UTF-8 text: {getattr(err, 'strerror', None) or err}") from None
    tokenizer = load_tokenizer()
    if tokenizer is None:
        raise UserError(f"--text needs tiktoken's {ENCODING} encoding, which cannot be loaded here (offline?)")
    ids = tokenizer.encode(text, disallowed_special=())[:limit]
    if len(ids) < 2:
        raise UserError(f"--text {path}: {len(ids)} token(s); perplexity needs at least 2")
    if max(ids) >= vocab:
        raise UserError(f"--text {path}: token id {max(ids)} is outside the model's vocabulary (size {vocab})")
    return torch.tensor(ids, dtype=torch.int64)


def cmd_eval(*, checkpoint: str | None, random: str | None, layers: int | None, prompts: int, prompt_len: int,
             steps: int, table: str | None, kv_dtype: str | None, dtype: str | None, text: str | None,
             text_tokens: int, no_cuda_graphs: bool, out: str | None, seed: int) -> int:
    """``eval``: top-1 agreement and KL of the table and no-table settings against the fp32 reference (and
    perplexity with ``--text``); markdown on stdout, ``--out`` also writes it and a JSON twin."""
    from autotune.model.commands import bench_weights, use_interpreter_without_gpu

    use_interpreter_without_gpu()
    import json

    from autotune import atomic
    from autotune.model import build_model
    from autotune.model.bench_record import json_path

    for flag, value, minimum in (("--prompts", prompts, 1), ("--prompt-len", prompt_len, 1), ("--steps", steps, 0),
                                 ("--text-tokens", text_tokens, 2)):
        if value < minimum:
            raise UserError(f"{flag} must be >= {minimum}, got {value}")
    if out and json_path(out).resolve() == Path(out).resolve():
        raise UserError(f"--out {out}: name the markdown report (e.g. eval.md); its JSON twin goes beside it")
    config, weights, described = bench_weights(checkpoint, random, layers, seed)
    device = weights["embedding.weight"].device
    served_dtype = getattr(torch, dtype) if dtype else weights["embedding.weight"].dtype
    if device.type == "cpu" and served_dtype == torch.bfloat16:
        raise UserError("--dtype bfloat16 cannot run under the Triton interpreter (its bf16 dot is wrong, "
                        "triton#11584); use float16 or float32")
    text_ids = _text_ids(text, text_tokens, config.vocab_size).to(device) if text else None
    positions = max(prompt_len + steps, text_ids.numel() if text_ids is not None else 0)
    served_weights = cast_weights(weights, served_dtype)
    served = {setting: build_model(config, served_weights, table=table, use_table=setting == "table",
                                   max_positions=positions, kv_dtype=kv_dtype) for setting in SETTINGS}
    reference = build_model(config, cast_weights(served_weights, torch.float32), use_table=False,
                            max_positions=positions, kv_dtype="act")
    generator = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(0, config.vocab_size, (prompts, prompt_len), generator=generator).to(device)
    result = evaluate(served, reference, prompt_ids, steps, text_ids=text_ids, cuda_graphs=not no_cuda_graphs)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    kv = served["table"].kv_dtype
    dtype_name = str(served_dtype).removeprefix("torch.")
    lines = format_report(result, described=described, served_dtype=dtype_name, kv_dtype=kv, batch=prompts,
                          length=prompt_len, steps=steps, device_name=device_name)
    text_out = "\n".join(lines)
    print(text_out)
    if out:
        atomic.write_text(out, text_out + "\n")
        doc = record(result, described=described, device=device_name, served_dtype=dtype_name, kv_dtype=kv,
                     prompts=prompts, prompt_len=prompt_len, steps=steps, seed=seed)
        atomic.write_text(json_path(out), json.dumps(doc, indent=1) + "\n")
    return 0
