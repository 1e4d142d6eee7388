"""The built-in loop against HF transformers on the same GPU and the same random gpt-oss weights.

HF's ``GptOssForCausalLM`` (eager attention, eager experts, MXFP4 experts dequantized once to bf16, its own
``generate`` with a DynamicCache) against ours (tuned table, CUDA-graph decode), both bf16, batch 1, llama-bench
style: tgN = N greedy tokens after a one-token prompt, ppN = one N-token prompt; mean ± std over --runs runs after a
warm-up. Prints a markdown table with versions.

    python scripts/bench_hf_baseline.py --size 20b --out scripts/results/...md

Needs a CUDA GPU and transformers.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def _hf_rates(hf, vocab: int, tg: int, pp: int, runs: int) -> tuple[list[float], list[float]]:
    """(tg tok/s per run, pp tok/s per run) of the HF model."""
    one = torch.zeros(1, 1, dtype=torch.int64, device="cuda")
    prompt = torch.randint(0, vocab, (1, pp), generator=torch.Generator().manual_seed(0)).cuda()
    tg_rates, pp_rates = [], []
    for run in range(runs + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = hf.generate(one, attention_mask=torch.ones_like(one), max_new_tokens=tg, min_new_tokens=tg,
                          do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        if run:
            # generate's time includes the one-token prompt's forward pass (1 of tg + 1): a slight handicap for HF.
            tg_rates.append((out.shape[1] - 1) / (time.perf_counter() - start))
        torch.cuda.synchronize()
        start = time.perf_counter()
        hf(input_ids=prompt, use_cache=True)
        torch.cuda.synchronize()
        if run:
            pp_rates.append(pp / (time.perf_counter() - start))
    return tg_rates, pp_rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("20b", "120b"), default="20b")
    parser.add_argument("--layers", type=int, help="fewer layers (same widths)")
    parser.add_argument("--tg", type=int, default=32)
    parser.add_argument("--pp", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", help="also write the report here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_hf_baseline: needs a CUDA GPU", file=sys.stderr)
        return 2
    import transformers
    import triton

    from autotune.model import build_model
    from autotune.model.bench import run_decode_test, run_prefill_test
    from autotune.model.config import NAMED_CONFIGS
    from autotune.model.random_weights import random_weights
    from scripts.hf_reference import hf_model

    config = NAMED_CONFIGS[args.size]
    if args.layers:
        config = config.with_layers(args.layers)
    weights = dict(random_weights(config, seed=0, device="cuda"))
    hf = hf_model(config, weights, device="cuda", dtype=torch.bfloat16)
    hf_tg, hf_pp = _hf_rates(hf, config.vocab_size, args.tg, args.pp, args.runs)
    del hf
    gc.collect()
    torch.cuda.empty_cache()

    model = build_model(config, weights, max_positions=max(args.tg, args.pp) + 2)  # KV storage: the table's choice
    ours_tg = run_decode_test(model, args.tg, args.runs).rates
    ours_pp = run_prefill_test(model, args.pp, args.runs).rates

    def fmt(rates: list[float]) -> str:
        return f"{statistics.fmean(rates):.2f} ± {statistics.stdev(rates) if len(rates) > 1 else 0:.2f}"

    lines = [
        f"### built-in loop vs HF transformers: random gpt-oss-{args.size} weights, {config.num_hidden_layers} layers, "
        "bf16, batch 1", "",
        f"{datetime.date.today().isoformat()}; {torch.cuda.get_device_name()}; torch {torch.__version__}; triton "
        f"{triton.__version__}; transformers {transformers.__version__}; Python {platform.python_version()}", "",
        "| test | ours (table, CUDA graphs), tok/s | HF transformers (eager, bf16), tok/s | ours / HF |",
        "|---|---|---|---|",
        f"| tg{args.tg} | {fmt(ours_tg)} | {fmt(hf_tg)} | {statistics.fmean(ours_tg) / statistics.fmean(hf_tg):.1f}× |",
        f"| pp{args.pp} | {fmt(ours_pp)} | {fmt(hf_pp)} | {statistics.fmean(ours_pp) / statistics.fmean(hf_pp):.1f}× |",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
