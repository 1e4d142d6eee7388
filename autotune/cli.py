"""Command line: ``python -m autotune {run,list,show,export,retune,report,compare,generate,bench-model,eval}``.
One function per subcommand; defaults come from :mod:`autotune.defaults` only. User errors print one line on stderr and
exit with code 2 (no traceback)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from autotune import defaults
from autotune.errors import ConfigError, UserError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line."""

    def error(self, message: str):  # noqa: D102 - argparse API
        self.exit(2, f"autotune: error: {message} (see --help)\n")


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _parse_enqueue(texts: Sequence[str]) -> tuple[dict, ...]:
    configs = []
    for text in texts:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--enqueue is not valid JSON ({exc.msg} at column {exc.colno}): {text!r}") from exc
        for config in value if isinstance(value, list) else [value]:
            if not isinstance(config, dict):
                raise ConfigError(f"--enqueue wants a JSON object (or a list of them), got {text!r}")
            configs.append(config)
    return tuple(configs)


def _parse_gpus(text: str | None, available: int) -> tuple[int, ...]:
    if text is None:
        return tuple(range(available))
    try:
        gpus = tuple(int(part) for part in text.split(","))
    except ValueError as exc:
        raise UserError(f"--gpus wants comma-separated device indices, got {text!r}") from exc
    bad = [g for g in gpus if not 0 <= g < available]
    if bad:
        raise UserError(f"--gpus {text}: no such device {bad} ({available} visible)")
    return gpus


def cmd_run(*, kernel: str, preset: str | None, shapes: str | None, variants: str | None, trials: int | None,
            timeout: float | None, storage: str, sampler: str, seed: int, enqueue: Sequence[str], table: str,
            no_export: bool, gpus: str | None, trial_timeout: float, finalists: int, dtype: str | None,
            compile_workers: int | None, ray: str | None = None, ray_actors: int | None = None,
            no_warm_start: bool = False, no_moves: bool = False) -> int:
    """Tune a kernel over a preset's shapes; export the winners (over a Ray cluster with ``ray``)."""
    from autotune.tuning import presets
    from autotune import registry
    from autotune.tuning.run import RunRequest, run, summarize
    from autotune.tuning.tuner import TuneSettings

    spec = registry.get(kernel)
    ray_settings = None
    if ray is not None:  # the cluster's GPUs decide GPU or interpreter mode (autotune/tuning/ray_pool.py)
        try:
            from autotune.tuning import ray_pool
        except ImportError as exc:
            raise UserError(f"--ray needs Ray ({exc}): pip install -e '.[ray]'") from exc
        if gpus is not None:
            raise UserError("--gpus picks this machine's devices; with --ray use --ray-actors N")
        ray_settings = ray_pool.RaySettings.parse(ray, ray_actors)
        gpu_count = ray_pool.connect(ray_settings)
    elif ray_actors is not None:
        raise UserError("--ray-actors needs --ray ADDRESS")
    else:
        gpu_count = _gpu_count()
    interpreter = gpu_count == 0
    if interpreter:
        preset = preset or defaults.CPU_PRESET
        print(f"autotune: no CUDA GPU found: running under the Triton interpreter (CPU) with the {preset!r} preset; "
              "results are keyed to the interpreter and never served to a GPU", file=sys.stderr, flush=True)
        if gpus is not None:
            print(f"autotune: --gpus {gpus} is ignored: no CUDA GPU here", file=sys.stderr, flush=True)
    loaded = presets.load(preset or defaults.GPU_PRESET)
    if kernel not in loaded.kernels:
        raise UserError(f"preset {loaded.name!r} has no [{kernel}] table")
    kernel_preset = loaded.kernels[kernel]
    if shapes is not None:
        kernel_preset = presets.with_shapes(kernel_preset, presets.parse_shapes(shapes))
    chosen_variants = tuple(variants.split(",")) if variants else kernel_preset.variants
    for variant in chosen_variants:
        spec.check_variant(variant)
    n_trials = trials if trials is not None else kernel_preset.trials
    if n_trials < 1:
        raise UserError("--trials must be at least 1")
    for flag, value, minimum in (("--timeout", timeout, 1e-9), ("--trial-timeout", trial_timeout, 1e-9),
                                 ("--finalists", finalists, 0), ("--compile-workers", compile_workers, 0)):
        if value is not None and value < minimum:
            raise UserError(f"{flag} must be {'positive' if minimum else 'at least 0'}, got {value}")
    settings = TuneSettings(
        n_trials=n_trials, timeout_s=timeout if timeout is not None else kernel_preset.timeout_s,
        trial_timeout_s=trial_timeout, dtype=dtype or (defaults.CPU_DTYPE if interpreter else defaults.GPU_DTYPE),
        rep_ms=defaults.REP_MS, finalists=finalists, final_rep_ms=defaults.FINAL_REP_MS,
        final_rounds=defaults.FINAL_ROUNDS, seed=seed, incumbent_moves=not no_moves)
    request = RunRequest(kernel=kernel, kernel_preset=kernel_preset, variants=chosen_variants, storage_url=storage,
                         sampler=sampler, enqueue=_parse_enqueue(enqueue), table=None if no_export else Path(table),
                         gpus=_parse_gpus(gpus, gpu_count) if not interpreter and ray is None else (),
                         interpreter=interpreter, ray=ray_settings,
                         compile_workers=defaults.compile_workers() if compile_workers is None else compile_workers,
                         settings=settings, warm_start=not no_warm_start)
    reports = run(request)
    print(summarize(reports))
    return 0


def cmd_list(*, storage: str) -> int:
    """Print the registered kernels, their search spaces, the presets and the studies in the storage."""
    import pandas as pd

    from autotune import device
    from autotune.tuning import presets, report
    from autotune.tuning.storage import open_storage

    opened = open_storage(storage)
    with pd.option_context("display.width", 200, "display.max_colwidth", 120):
        print("kernels:")
        print(report.kernels_frame(device.INTERPRETER if _gpu_count() == 0 else device.detect(0)).to_string(index=False))
        print(f"\npresets: {', '.join(presets.available())}")
        studies = report.studies_frame(opened)
        print(f"\nstudies in {storage}:")
        print(studies.to_string(index=False) if not studies.empty else "(none)")
    return 0


def cmd_show(*, kernel: str, storage: str, device: str | None, table: str | None) -> int:
    """Print the best config per shape (of the storage's studies, or of ``--table``) with its speedup over the
    default, its fraction of the device peak and whether it is fresh under the current software."""
    import pandas as pd

    from autotune import device as device_mod
    from autotune import registry
    from autotune.table import ConfigTable
    from autotune.tuning import report
    from autotune.tuning.storage import open_storage

    registry.get(kernel)
    here = report.freshness_column(device_mod.INTERPRETER if _gpu_count() == 0 else device_mod.detect(0))
    if table is not None:
        frame = report.table_frame(ConfigTable.load(table, missing_ok=False), kernel, device, here)
    else:
        frame = report.show_frame(open_storage(storage), kernel, device, here)
    if frame.empty:
        where = f"entries of {kernel} in table {table}" if table is not None else f"studies of {kernel} in {storage}"
        print(f"no tuned {where}" + (f" for device {device}" if device else ""))
        return 0
    with pd.option_context("display.width", 250, "display.max_colwidth", 200, "display.max_rows", 500):
        print(frame.to_string(index=False))
    return 0


def cmd_export(*, kernel: str | None, storage: str, table: str, device: str | None) -> int:
    """Merge the best configs of the storage's studies into the table file."""
    from autotune import registry
    from autotune.table.export import export
    from autotune.tuning.storage import open_storage

    if kernel:
        registry.get(kernel)
    merges = export(open_storage(storage), Path(table), kernel=kernel, device_key=device)
    if not merges:
        print(f"nothing to export from {storage}")
    for device_key, merge in merges.items():
        print(f"{table} [{device_key}]: {len(merge.added)} added, {len(merge.replaced)} replaced, "
              f"{len(merge.kept)} kept")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and --help)."""
    from autotune.tuning.storage import SAMPLERS

    parser = _Parser(prog="python -m autotune", description="Optuna autotuner for gpt-oss Triton kernels.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def storage_arg(p):
        p.add_argument("--storage", default=defaults.STORAGE, help="Optuna storage URL, or journal:PATH "
                       "(default: %(default)s)")

    def table_args(p):
        p.add_argument("--table", help=f"lookup table to read (default: {defaults.TABLE})")
        p.add_argument("--no-table", action="store_true", help="use the default configs (ignore the table)")
        p.add_argument("--kv-dtype", choices=("act", "fp8"),
                       help="KV cache storage: activation dtype or fp8 e4m3 (default: the table's choice)")
        p.add_argument("--no-cuda-graphs", action="store_true", help="run decode steps eagerly")

    run = sub.add_parser("run", help="tune a kernel over a preset's shapes, then export the table")
    run.add_argument("kernel", help="registered kernel, e.g. moe_gemm")
    run.add_argument("--preset", help=f"preset name in studies/presets or a TOML path (default: "
                     f"{defaults.GPU_PRESET}; {defaults.CPU_PRESET} without a GPU)")
    run.add_argument("--shapes", help='override shape values, e.g. "M=1,16,256"')
    run.add_argument("--variants", help="comma-separated subset of the preset's variants")
    run.add_argument("--trials", type=int, help="measured (completed) trials per study; pruned, failed and repeated "
                     "configs do not count (default: the preset's)")
    run.add_argument("--timeout", type=float, help="seconds per study for new trials (default: the preset's "
                     "timeout_s, else no time limit)")
    storage_arg(run)
    run.add_argument("--sampler", default=defaults.SAMPLER, choices=SAMPLERS, help="Optuna sampler (default: tpe)")
    run.add_argument("--seed", type=int, default=defaults.SEED, help="sampler seed (default: %(default)s)")
    run.add_argument("--enqueue", action="append", default=[], metavar="JSON",
                     help="config(s) to try first, JSON object or list; missing keys take the default's values")
    run.add_argument("--table", default=str(defaults.TABLE), help="table file to export to (default: %(default)s)")
    run.add_argument("--no-export", action="store_true", help="do not export at the end")
    run.add_argument("--gpus", help="comma-separated CUDA device indices, one worker each (default: all)")
    run.add_argument("--ray", metavar="ADDRESS",
                     help="spread the trials over a Ray cluster: local (start one here), auto (this machine's "
                          "`ray start`) or HOST:PORT of `ray start --head`; needs pip install -e '.[ray]'")
    run.add_argument("--ray-actors", type=int, metavar="N",
                     help="with --ray: evaluation actors (default: one per GPU of the cluster; without GPUs, one "
                          "Triton-interpreter actor per node)")
    run.add_argument("--trial-timeout", type=float, default=defaults.TRIAL_TIMEOUT_S,
                     help="seconds for one compile + check + time before the worker is killed (default: %(default)s)")
    run.add_argument("--finalists", type=int, default=defaults.FINALISTS,
                     help="best configs re-timed with the default before export, 0 to skip (default: %(default)s)")
    run.add_argument("--compile-workers", type=int,
                     help="processes compiling configs ahead of the GPU workers (default: half the CPU cores, at "
                          f"most {defaults.MAX_COMPILE_WORKERS}; none without a GPU)")
    run.add_argument("--no-warm-start", action="store_true",
                     help="do not queue the winners of neighbouring shapes and old winners before the sampler")
    run.add_argument("--no-moves", action="store_true",
                     help="do not queue one-parameter moves of the best config so far (up to half the trials) "
                          "before the sampler's own proposals")
    run.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                     help=f"activation dtype (default: {defaults.GPU_DTYPE} on GPUs, {defaults.CPU_DTYPE} on CPU)")

    lst = sub.add_parser("list", help="registered kernels, their search spaces, presets and stored studies")
    storage_arg(lst)

    show = sub.add_parser("show", help="best config per shape, speedup over default, fraction of peak")
    show.add_argument("kernel")
    storage_arg(show)
    show.add_argument("--device", help="only this device key")
    show.add_argument("--table", help="show this table file's entries instead of the storage's studies")

    exp = sub.add_parser("export", help="merge the best configs into the lookup table")
    exp.add_argument("kernel", nargs="?", help="only this kernel")
    storage_arg(exp)
    exp.add_argument("--table", default=str(defaults.TABLE), help="table file (default: %(default)s)")
    exp.add_argument("--device", help="only this device key")

    rt = sub.add_parser("retune", help="re-tune the table entries of this device tuned under other software")
    rt.add_argument("kernel", nargs="*", help="only these kernels (default: all)")
    rt.add_argument("--dry-run", action="store_true", help="list the stale entries and why; tune nothing")
    rt.add_argument("--table", default=str(defaults.TABLE), help="table to check and update (default: %(default)s)")
    storage_arg(rt)
    rt.add_argument("--trials", type=int, help="measured trials per study (default: the preset's)")
    rt.add_argument("--timeout", type=float, help="seconds per study for new trials (default: the preset's)")
    rt.add_argument("--sampler", default=defaults.SAMPLER, choices=SAMPLERS, help="Optuna sampler (default: tpe)")
    rt.add_argument("--seed", type=int, default=defaults.SEED, help="sampler seed (default: %(default)s)")
    rt.add_argument("--gpus", help="comma-separated CUDA device indices, one worker each (default: all)")
    rt.add_argument("--trial-timeout", type=float, default=defaults.TRIAL_TIMEOUT_S,
                    help="seconds for one compile + check + time (default: %(default)s)")
    rt.add_argument("--finalists", type=int, default=defaults.FINALISTS,
                    help="best configs re-timed with the default and the old winner (default: %(default)s)")
    rt.add_argument("--compile-workers", type=int, help="compile-ahead processes (default: as for run)")
    rt.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                    help="activation dtype of entries that do not record theirs (default: as for run)")

    gen = sub.add_parser("generate", help="generate tokens from a gpt-oss checkpoint with the tuned kernels")
    gen.add_argument("--checkpoint", required=True, help="original-layout checkpoint folder (config.json + "
                     "*.safetensors, or a folder with original/)")
    prompt = gen.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (needs tiktoken's o200k_harmony encoding)")
    prompt.add_argument("--prompt-ids", help='prompt token ids, e.g. "1 2 3"')
    gen.add_argument("--max-new-tokens", type=int, default=defaults.MAX_NEW_TOKENS,
                     help="tokens to generate (default: %(default)s)")
    gen.add_argument("--temperature", type=float, default=defaults.TEMPERATURE,
                     help="0 = greedy (default: %(default)s)")
    gen.add_argument("--top-p", type=float, default=defaults.TOP_P, help="nucleus sampling mass (default: "
                     "%(default)s)")
    gen.add_argument("--seed", type=int, help="sampling seed")
    table_args(gen)
    gen.add_argument("--json", dest="as_json", action="store_true",
                     help="print one JSON object (prompt_ids, generated_ids, text, timings)")

    bm = sub.add_parser("bench-model", help="end-to-end tok/s (pp/tg), TTFT, TPOT, memory; table vs no table")
    source = bm.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="original-layout checkpoint folder")
    source.add_argument("--random", choices=("20b", "120b"), help="random weights of this size, made on the device")
    bm.add_argument("--layers", type=int, help="with --random: fewer layers (same widths)")
    bm.add_argument("--tests", default=defaults.BENCH_TESTS, help="llama-bench tests (default: %(default)s)")
    bm.add_argument("--batch", default=defaults.BENCH_BATCH,
                    help="decode batch sizes for the tg tests, e.g. 1,4,16,64 (pp tests run at batch 1; default: "
                         "%(default)s)")
    bm.add_argument("--runs", type=int, default=defaults.BENCH_RUNS, help="timed runs per test (default: %(default)s)")
    bm.add_argument("--table", help=f"lookup table to read (default: {defaults.TABLE})")
    bm.add_argument("--kv-dtype", choices=("act", "fp8"), help="KV cache storage (default: the table's choice)")
    bm.add_argument("--no-cuda-graphs", action="store_true", help="run decode steps eagerly")
    bm.add_argument("--profile", action="store_true",
                    help="per-stage GPU time of a decode step at each --batch (also without the table, compared per "
                         "stage) and of one prefill")
    bm.add_argument("--out", help="also write the markdown report to this file")
    bm.add_argument("--seed", type=int, default=defaults.SEED, help="random weights and prompts (default: "
                    "%(default)s)")
    cmp = sub.add_parser("compare", help="compare two tables, or two bench-model reports (markdown; CSV with --csv)")
    cmp.add_argument("a", metavar="A", help="the old table (JSON) or bench-model report (.md or its .json twin)")
    cmp.add_argument("b", metavar="B", help="the new one, of the same kind")
    cmp.add_argument("--csv", metavar="FILE", help="also write every row as CSV to FILE ('-': CSV on stdout instead "
                     "of the markdown)")
    ev = sub.add_parser("eval", help="accuracy of what is served: top-1 agreement and KL vs an fp32 reference, "
                        "with and without the table (perplexity with --text)")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="original-layout checkpoint folder")
    source.add_argument("--random", choices=("20b", "120b"), help="random weights of this size, made on the device")
    ev.add_argument("--layers", type=int, help="with --random: fewer layers (same widths)")
    ev.add_argument("--prompts", type=int, default=defaults.EVAL_PROMPTS, help="random prompts (default: %(default)s)")
    ev.add_argument("--prompt-len", type=int, default=defaults.EVAL_PROMPT_LEN,
                    help="tokens per prompt (default: %(default)s)")
    ev.add_argument("--steps", type=int, default=defaults.EVAL_STEPS,
                    help="teacher-forced decode steps after the prompts (default: %(default)s)")
    ev.add_argument("--table", help=f"lookup table to read (default: {defaults.TABLE})")
    ev.add_argument("--kv-dtype", choices=("act", "fp8"), help="KV cache storage of the served passes (default: the "
                    "table's choice)")
    ev.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                    help="activations of the served passes (default: bfloat16 on GPUs, float32 on the CPU)")
    ev.add_argument("--text", metavar="FILE", help="also the perplexity of this UTF-8 text (needs the tokenizer)")
    ev.add_argument("--text-tokens", type=int, default=defaults.EVAL_TEXT_TOKENS,
                    help="read at most this many tokens of --text (default: %(default)s)")
    ev.add_argument("--no-cuda-graphs", action="store_true", help="run decode steps eagerly")
    ev.add_argument("--out", help="also write the markdown report to this file (and a JSON twin beside it)")
    ev.add_argument("--seed", type=int, default=defaults.SEED, help="random weights and prompts (default: "
                    "%(default)s)")
    rep = sub.add_parser("report", help="PNG charts of a kernel's tuned shapes: tuned vs default, roofline")
    rep.add_argument("kernel")
    storage_arg(rep)
    rep.add_argument("--table", help="read the entries of this table file instead of the storage")
    rep.add_argument("--device", help="only this device key")
    rep.add_argument("--plot", required=True, metavar="DIR", help="folder to write the PNGs to")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = vars(build_parser().parse_args(argv))
    warnings.formatwarning = lambda message, category, *_args, **_kwargs: f"autotune: warning: {message}\n"
    command = args.pop("command")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from autotune.compare import cmd_compare
    from autotune.model.accuracy import cmd_eval
    from autotune.model.commands import cmd_bench_model, cmd_generate
    from autotune.plots import cmd_report
    from autotune.tuning.retune import cmd_retune

    handlers = {"run": cmd_run, "list": cmd_list, "show": cmd_show, "export": cmd_export, "retune": cmd_retune,
                "report": cmd_report, "compare": cmd_compare, "generate": cmd_generate, "bench-model": cmd_bench_model,
                "eval": cmd_eval}
    from autotune import interrupts

    interrupts.stop_on_sigterm()
    try:
        return handlers[command](**args)
    except UserError as exc:
        print(f"autotune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (interrupts.Terminated)
        print("autotune: interrupted; completed trials are saved, rerun the same command to continue",
              file=sys.stderr)
        return interrupts.exit_code(exc)
