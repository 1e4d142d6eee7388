"""The inference subcommands of the CLI: ``generate`` (and the argument checks shared with ``bench-model``).
Defaults live in :mod:`autotune.defaults`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from autotune.errors import UserError


def parse_prompt_ids(text: str) -> list[int]:
    """``"1 2 3"`` or ``"1,2,3"`` → ``[1, 2, 3]``.

    Raises:
        UserError: empty, or anything but non-negative integers.
    """
    parts = text.replace(",", " ").split()
    if not parts or not all(p.isdigit() for p in parts):
        raise UserError(f"--prompt-ids wants space-separated non-negative integers, got {text!r}")
    return [int(p) for p in parts]


def use_interpreter_without_gpu() -> None:
    """Without a CUDA device, run the Triton kernels in the interpreter (set before any kernel module is imported:
    ``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates) and say so on stderr."""
    from kernels import interpreter_active  # the package init only: no kernel module, no triton

    if not torch.cuda.is_available() and not interpreter_active():
        os.environ["TRITON_INTERPRET"] = "1"
        print("autotune: no CUDA device: the Triton kernels run in the interpreter on the CPU (slow; keep models "
              "tiny)", file=sys.stderr)


def _encode(prompt: str | None, prompt_ids: str | None) -> tuple[list[int], object | None]:
    from autotune.model.tokenizer import ENCODING, load_tokenizer

    tokenizer = load_tokenizer()
    if prompt_ids is not None:
        return parse_prompt_ids(prompt_ids), tokenizer
    if tokenizer is None:
        raise UserError(f"--prompt needs tiktoken's {ENCODING} encoding, which cannot be loaded here (offline?); "
                        "pass --prompt-ids instead")
    ids = tokenizer.encode(prompt, allowed_special="all")
    if not ids:
        raise UserError("--prompt is empty")
    return ids, tokenizer


def cmd_generate(*, checkpoint: str, prompt: str | None, prompt_ids: str | None, max_new_tokens: int,
                 temperature: float, top_p: float, seed: int | None, table: str | None, no_table: bool,
                 kv_dtype: str | None, no_cuda_graphs: bool, as_json: bool) -> int:
    """Generate from a checkpoint; print text (with the tokenizer) or ids, or one JSON object with ``--json``."""
    use_interpreter_without_gpu()
    from autotune.model import generate as run_generation
    from autotune.model import load_model

    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise UserError(f"--temperature must be >= 0 and --top-p in (0, 1], got {temperature} and {top_p}")
    ids, tokenizer = _encode(prompt, prompt_ids)
    model = load_model(checkpoint, table=table, use_table=not no_table,
                       max_positions=len(ids) + max_new_tokens, kv_dtype=kv_dtype)
    bad = [t for t in ids if t >= model.config.vocab_size]
    if bad:
        raise UserError(f"prompt token ids {bad[:5]} are outside the vocabulary (size {model.config.vocab_size})")
    result = run_generation(model, [ids], max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                            seed=seed, cuda_graphs=not no_cuda_graphs)
    generated = result.generated_ids[0]
    text = None
    if tokenizer is not None:
        try:
            text = tokenizer.decode(generated)
        except (KeyError, ValueError):  # random checkpoints can emit ids the encoding does not define
            text = None
    if as_json:
        record = {"prompt_ids": ids, "generated_ids": generated, "text": text,
                  "ttft_s": round(result.prefill_s, 6),
                  "tpot_s": round(result.decode_s / result.decode_steps, 6) if result.decode_steps else None,
                  "kv_dtype": model.kv_dtype, "configs": model.configs.summary(),
                  "device": str(model.device), "cuda_graphs": result.graphs_captured}
        print(json.dumps(record))
    else:
        print(text if text is not None else " ".join(map(str, generated)))
    return 0


def bench_weights(checkpoint: str | None, random: str | None, layers: int | None, seed: int):
    """(config, weights, description) for ``bench-model`` and ``eval``: a checkpoint, or random weights made on the
    device; float tensors in the device's activation dtype (norm scales float32).

    Raises:
        UserError: ``--layers`` with a checkpoint, or out of range; CheckpointError for a bad checkpoint.
    """
    from autotune.model import activation_dtype
    from autotune.model.checkpoint import load_checkpoint
    from autotune.model.config import NAMED_CONFIGS
    from autotune.model.random_weights import random_weights

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = activation_dtype(device)
    if checkpoint is not None:
        if layers is not None:
            raise UserError("--layers applies to --random only")
        config, weights = load_checkpoint(checkpoint, device=device, dtype=dtype)
        return config, weights, f"checkpoint {checkpoint}"
    config = NAMED_CONFIGS[random]
    if layers is not None:
        if not 1 <= layers <= config.num_hidden_layers:
            raise UserError(f"--layers must be in 1..{config.num_hidden_layers}, got {layers}")
        config = config.with_layers(layers)
    weights = {name: (t.to(dtype) if t.is_floating_point() and t.dtype != torch.float32 else t)
               for name, t in random_weights(config, seed=seed, device=device)}
    return config, weights, f"random gpt-oss-{random} weights (seed {seed}), {config.num_hidden_layers} layers"


PROFILE_PREFILL_TOKENS = 512
"""Prefill length ``bench-model --profile`` profiles when the tests hold no pp test (llama-bench's pp512)."""


def profile_prefill_tokens(plan) -> int:
    """Tokens of the prefill ``--profile`` profiles: the longest pp test of ``plan`` ((kind, count, batch)
    triples), else :data:`PROFILE_PREFILL_TOKENS`."""
    return max((n for kind, n, _ in plan if kind == "pp"), default=PROFILE_PREFILL_TOKENS)


def bench_positions(plan, profile: bool) -> int:
    """Positions the RoPE table and KV caches of a bench model must hold: the longest test (a tg test's prompt
    token and generated tokens: count + 2), and with ``profile`` also the profiled prefill."""
    return max([n for _, n, _ in plan] + ([profile_prefill_tokens(plan)] if profile else [])) + 2


def cmd_bench_model(*, checkpoint: str | None, random: str | None, layers: int | None, tests: str, batch: str,
                    runs: int, table: str | None, kv_dtype: str | None, no_cuda_graphs: bool, profile: bool, out: str | None,
                    seed: int) -> int:
    """End-to-end tok/s (llama-bench style), TTFT, TPOT and peak memory, with the table and without it."""
    use_interpreter_without_gpu()
    from autotune.model import bench, build_model

    try:
        tests_asked = bench.parse_tests(tests)
    except ValueError as exc:
        raise UserError(f"--tests: {exc}") from None
    try:
        batches = bench.parse_batches(batch)
    except ValueError as exc:
        raise UserError(f"--batch: {exc}") from None
    # (kind, count, batch): prompt processing at batch 1, generation at every --batch size
    plan = [(kind, count, b) for kind, count in tests_asked for b in (batches if kind == "tg" else [1])]
    if runs < 1:
        raise UserError(f"--runs must be >= 1, got {runs}")
    from autotune.model import bench_record

    if out and bench_record.json_path(out).resolve() == Path(out).resolve():
        raise UserError(f"--out {out}: name the markdown report (e.g. bench.md); its JSON twin goes beside it")
    config, weights, described = bench_weights(checkpoint, random, layers, seed)
    device = weights["embedding.weight"].device
    longest = bench_positions(plan, profile)
    copy_gbps = mm_tflops = None
    if device.type == "cuda":
        from autotune.device.peaks import measure_peaks

        copy_gbps, mm_tflops = measure_peaks()

    models = {}
    for label, use_table in (("table", True), ("no table", False)):
        models[label] = build_model(config, weights, table=table, use_table=use_table, max_positions=longest,
                                    kv_dtype=kv_dtype)

    def run_plan(model, timed_runs: int) -> dict:
        results = {}
        for kind, count, b in plan:
            if kind == "pp":
                results[bench.test_name(kind, count)] = bench.run_prefill_test(model, count, timed_runs, seed=seed)
            else:
                results[bench.test_name(kind, count, b)] = bench.run_decode_test(
                    model, count, timed_runs, cuda_graphs=not no_cuda_graphs, batch=b)
        return results

    # One untimed pass of every test in both settings first: whichever setting ran first would otherwise pay for
    # the process's first cuBLAS heuristics, allocator growth and Triton compiles of shared kernels. Not on the CPU
    # (the interpreter compiles nothing; each test's own warm-up run remains), where it would double the run time.
    if device.type == "cuda":
        for model in models.values():
            run_plan(model, 1)
    settings = {}
    for label, model in models.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        results = run_plan(model, runs)
        settings[label] = (model, results, bench.peak_memory_gib(device))

    lines = _bench_report(plan, settings, described, device, copy_gbps, mm_tflops)
    if profile:
        lines += _profile_report(plan, settings, batches, copy_gbps, mm_tflops, device)
    text = "\n".join(lines)
    print(text)
    if out:
        from autotune import atomic
        from autotune.model import bench_record

        model = settings["table"][0]
        record = bench_record.report_record(
            {label: results for label, (_, results, _) in settings.items()}, described=described,
            device_name=_device_name(device), act_dtype=str(model.act_dtype).removeprefix("torch."),
            kv_dtype=model.kv_dtype)
        atomic.write_text(out, text + "\n")
        atomic.write_text(bench_record.json_path(out), json.dumps(record, indent=1) + "\n")
    return 0


def _profile_report(plan, settings, batches, copy_gbps, mm_tflops, device) -> list[str]:
    """``--profile``: one eager decode step per ``--batch`` size and one prefill, with the table; each decode step
    also without it, compared stage by stage."""
    from autotune.model import bench

    model, results, _ = settings["table"]
    pp = profile_prefill_tokens(plan)
    tg = max((n for k, n, _ in plan if k == "tg"), default=32)
    lines = []
    for b in batches:
        title = f"decode step (batch {b}, context {tg})"
        stages, top = bench.profile_pass(model, decode=True, tokens=b, context=tg)
        lines += bench.format_stage_table(title, stages, top, copy_gbps, mm_tflops)
        result = results.get(bench.test_name("tg", tg, b))
        if result is not None and device.type == "cuda":
            busy = sum(s.gpu_us for s in stages)
            step_us = 1e6 * b / result.mean
            lines += [f"A CUDA-graph decode step takes {step_us:.0f} µs (tg{tg} at batch {b}) against {busy:.0f} µs "
                      f"of kernel time: {max(step_us - busy, 0.0):.0f} µs between kernels "
                      f"({sum(k.calls for k in top)} launches).", ""]
        without, _ = bench.profile_pass(settings["no table"][0], decode=True, tokens=b, context=tg)
        lines += bench.format_stage_comparison(title, stages, without)
    stages, top = bench.profile_pass(model, decode=False, tokens=pp, context=pp)
    return lines + bench.format_stage_table(f"prefill of {pp} tokens", stages, top, copy_gbps, mm_tflops)


def _device_name(device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"


def _bench_report(plan, settings, described, device, copy_gbps, mm_tflops) -> list[str]:
    """Markdown lines: versions, bound, the llama-bench table (with / without the table), TTFT, TPOT, memory."""
    import datetime
    import platform

    import triton

    from autotune.device import nvml_readings
    from autotune.model import bench

    model = settings["table"][0]
    name = _device_name(device)
    driver = nvml_readings.driver_version() if device.type == "cuda" else "-"
    lines = [f"### bench-model: {described}", "",
             f"{datetime.date.today().isoformat()}; {name}; driver {driver}; torch {torch.__version__}; "
             f"triton {triton.__version__}; Python {platform.python_version()}; activations {model.act_dtype}; "
             f"KV cache {model.kv_dtype}", ""]
    per_token = bench.bytes_per_token(model)
    bound = copy_gbps * 1e9 / per_token if copy_gbps else None
    if copy_gbps:
        lines += [f"measured copy {copy_gbps:.0f} GB/s, bf16 matmul {mm_tflops:.0f} TFLOP/s; a batch-1 decode step "
                  f"reads {per_token / 1e9:.3f} GB → bandwidth bound {bound:.0f} tok/s", ""]
    lines += ["| test | with table, tok/s | without table, tok/s | table / no table |", "|---|---|---|---|"]
    for kind, count, b in plan:
        key = bench.test_name(kind, count, b)
        with_t, without = settings["table"][1][key], settings["no table"][1][key]
        lines.append(f"| {key} | {bench.fmt_rate(with_t)} | {bench.fmt_rate(without)} | "
                     f"{with_t.mean / without.mean:.2f}× |")
    pps = [f"pp{n}" for k, n, _ in plan if k == "pp"]
    tgs = [f"tg{n}" for k, n, b in plan if k == "tg" and b == 1]
    for label, key, fmt in (("TTFT (ms)", pps[-1] if pps else None, lambda r: 1e3 * sum(r.seconds) / len(r.seconds)),
                            ("TPOT (ms)", tgs[-1] if tgs else None, lambda r: 1e3 / r.mean)):
        if key:
            values = [fmt(settings[s][1][key]) for s in ("table", "no table")]
            lines.append(f"| {label}, {key} | {values[0]:.2f} | {values[1]:.2f} | |")
    mems = [settings[s][2] for s in ("table", "no table")]
    if mems[0] is not None:
        lines.append(f"| peak GPU memory (GiB) | {mems[0]:.2f} | {mems[1]:.2f} | |")
    if bound and tgs:
        fractions = [settings[s][1][tgs[-1]].mean / bound for s in ("table", "no table")]
        lines.append(f"| {tgs[-1]} ÷ bandwidth bound | {fractions[0]:.2f} | {fractions[1]:.2f} | |")
    sources = {s: settings[s][0].configs.summary() for s in ("table", "no table")}
    stale, served = settings["table"][0].configs.stale_count()
    lines += ["", f"configs served (distinct shapes): with table {sources['table']}, without {sources['no table']}",
              "", f"stale table configs served (tuned under other software): {stale} of {served}"
              + (" (re-tune: `python -m autotune retune`)" if stale else ""),
              "", f"table lookups per decode step (host, memoized): {_lookup_cost_us(model):.1f} µs", ""]
    return lines


def _lookup_cost_us(model, repeats: int = 2000) -> float:
    """Host time of the config lookups of one decode step (:meth:`GptOss.decode_step_configs` on a batch-1 cache filled to
    its capacity less one, capacity up to 129), µs, median of 5 batches of ``repeats`` calls."""
    import statistics
    import time

    capacity = min(129, model.rope.max_positions)
    cache = model.new_cache(1, capacity)
    cache.host_lens = [capacity - 1]
    model.decode_step_configs(cache)  # first lookup of these shapes fills the memo
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            model.decode_step_configs(cache)
        samples.append((time.perf_counter() - start) / repeats * 1e6)
    return statistics.median(samples)
