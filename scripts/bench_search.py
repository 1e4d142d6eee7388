"""Search-efficiency benchmark (issue 8): how fast does each Optuna sampler find the best config of a shape?

Ground truth: an **exhaustive sweep of a reduced search space** per shape (not a long study), measured once by the
project's own worker processes (compile-ahead workers fill Triton's cache while the GPU worker checks and times each
config, exactly as ``autotune run`` does) and cached to ``sweep.json``. The reduced space keeps the parameters that
moved the winners most in the H100/H200 studies and fixes the others at the default config's value (the default
is always inside it):

* ``moe_gemm`` mlp1 (gpt-oss-20b: hidden 2880, expert width 2880, E 32, top-4) at M = 1 (decode), 64 (mid), 2048
  (prefill): BLOCK_N, BLOCK_K in {64, 128, 256}, num_warps {4, 8}, num_stages {2, 3, 4}, dequant {dot_scaled,
  upcast}, BLOCK_M {16, 64, 128} where the shape offers it (only 16 at M = 1 and 64, where the rows per expert
  allow no more; 64 and 128 at M = 2048) plus the default's; GROUP_M, schedule, SPLIT_K, fuse_swiglu at the
  default's value. About 108 configs at M = 1 and 64, 216 at M = 2048, before the constraints.
* ``attention`` prefill, 2048 tokens, full causal (64 query heads, 8 KV heads, head dim 64): every BLOCK_M and
  BLOCK_N the shape offers, num_warps {4, 8}, num_stages {1, 2, 3}; the KV storage dtype at the default's.

The H200 sweep of all four shapes took 135 s of GPU at ``--rep-ms 20`` (2026-12-02, 6 compile-ahead workers). Then,
**without any GPU**, each sampler (``tpe``, ``random``, ``qmc``, ``cmaes``, ``gp`` as
:func:`autotune.tuning.storage.make_sampler` builds them) and the tuner's additions on top of one (``+warm``: the
cross-shape warm start of :mod:`autotune.tuning.warm_start`, here the sweep winners of the other shapes of the same
kernel and variant, projected into this shape's space; ``+moves``: the incumbent moves of
:mod:`autotune.tuning.local_moves`, at most half of ``--budget``; ``tpe+moves`` is what ``autotune run`` does by
default) replays studies over several seeds on the cached sweep: the objective looks the config up. As in ``autotune run``, the default config is trial 0, a pruned or failed config costs no trial (but its
measured seconds), and a repeated config costs nothing. Reported: best-so-far ÷ ground truth (ground-truth µs ÷
best-so-far µs, 1.0 = found the best) against measured trials and against wall seconds (the sum of the cached
per-config seconds, compile + check + time, of the configs a replay visited). Goal (issue 8): >= 0.98 of the ground
truth within 10% of the trials the sweep took.

    python scripts/bench_search.py --out scripts/results/search-h200            # sweep (GPU) + replay
    python scripts/bench_search.py --sweep-only --out DIR                        # only measure (GPU)
    python scripts/bench_search.py --sweep-only --resume --out DIR               # measure the shapes DIR lacks
    python scripts/bench_search.py --replay-only DIR/sweep.json --out DIR        # only replay (any machine)
    python scripts/bench_search.py --cpu-smoke --out /tmp/bs                     # tiny shapes, interpreter

Writes ``sweep.json``, ``replay.json``, ``report.md`` and (with matplotlib) ``curves.png`` into ``--out``; the
presets' budgets are chosen from ``replay.json`` by :func:`autotune.tuning.presets.budget_from_benchmark`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from autotune import atomic, registry  # noqa: E402
from autotune.tuning import local_moves, warm_start
from autotune.tuning import study as study_mod
from autotune.tuning.presets import trials_to_reach
from autotune.tuning.space import Param, SearchSpace, config_hash, enumerate_configs

SAMPLERS = ("tpe", "random", "qmc", "cmaes", "gp", "tpe+warm", "tpe+moves", "tpe+warm+moves", "qmc+moves")
TARGET = 0.98
GOAL_TRIAL_FRACTION = 0.10


@dataclass(frozen=True)
class Case:
    """One shape of the benchmark: kernel, variant, model dimensions for its ``model_shapes``, reduced choices."""

    kernel: str
    variant: str
    dims: dict[str, Any]
    choices: dict[str, tuple]
    label: str


_MOE_20B = {"hidden": 2880, "intermediate": 2880, "E": 32, "top_k": 4}
_MOE_GPU_CHOICES = {"BLOCK_M": (64, 128), "BLOCK_N": (64, 128, 256), "BLOCK_K": (64, 128, 256),
                    "num_warps": (4, 8), "num_stages": (2, 3, 4), "dequant": ("dot_scaled", "upcast")}
_ATTN_GPU = {"seq": [2048], "batch": 1, "heads_q": 64, "heads_kv": 8, "head_dim": 64, "window": 0}
_MOE_DECODE_CHOICES = {"dequant": ("upcast", "upcast_ptx"), "path": None, "BLOCK_N": (16, 32, 64, 128),
                       "BLOCK_K": (128, 256, 512), "num_warps": (2, 4, 8)}
_MOE_MID_CHOICES = {"dequant": None, "path": None, "BLOCK_N": (32, 64, 128), "BLOCK_K": (64, 128, 256),
                    "num_warps": (4, 8)}
GPU_CASES = (
    # decode and mid M: both paths (CUDA-core gemv, tensor-core tiles) and both register decodes; the first record's
    # MMA-tile choices left the default the best of these spaces, which told the samplers apart at no shape
    Case("moe_gemm", "mlp1", {"M": [1], **_MOE_20B}, _MOE_DECODE_CHOICES, "moe_gemm mlp1 M=1 (both paths)"),
    Case("moe_gemm", "mlp1", {"M": [64], **_MOE_20B}, _MOE_MID_CHOICES, "moe_gemm mlp1 M=64 (both paths)"),
    Case("moe_gemm", "mlp1", {"M": [2048], **_MOE_20B}, _MOE_GPU_CHOICES, "moe_gemm mlp1 M=2048"),
    Case("attention", "prefill", _ATTN_GPU, {"BLOCK_M": None, "BLOCK_N": None, "num_warps": (4, 8),
                                             "num_stages": (1, 2, 3)}, "attention prefill seq=2048 W=0"),
)
"""The GPU benchmark; a choice of None keeps every value the real space offers at the shape."""

_MOE_TINY = {"hidden": 64, "intermediate": 64, "E": 4, "top_k": 2}
_MOE_CPU_CHOICES = {"BLOCK_N": (32, 64), "BLOCK_K": (32, 64)}
CPU_CASES = (
    *(Case("moe_gemm", "mlp1", {"M": [m], **_MOE_TINY}, _MOE_CPU_CHOICES, f"moe_gemm mlp1 M={m} (tiny)")
      for m in (1, 4, 16)),
    Case("attention", "prefill", {"seq": [32], "batch": 1, "heads_q": 4, "heads_kv": 2, "head_dim": 32, "window": 0},
         {"BLOCK_N": None}, "attention prefill seq=32 (tiny)"),
)
"""``--cpu-smoke``: the tiny_cpu preset's dimensions, 4 configs per moe shape, under the Triton interpreter."""


def reduced_space(space: SearchSpace, choices: dict[str, tuple | None]) -> SearchSpace:
    """The space with each listed parameter cut to the listed values it offers (None: all) plus the default's value,
    and every other parameter fixed at the default's value (conditions and constraints kept)."""
    params = []
    for param in space.params:
        default = space.default[param.name]
        wanted = choices.get(param.name, ())
        if param.name in choices and wanted is None:
            kept = tuple(param.choices)
        else:
            kept = tuple(c for c in param.choices if c in (wanted or ()) or c == default)
        if not kept:  # the default is inactive here (e.g. SPLIT_K of a fused SwiGLU): keep the first choice
            kept = (param.choices[0],)
        params.append(Param(param.name, kept, when=param.when, inactive=param.inactive, doc=param.doc,
                            implied=param.implied))
    return SearchSpace(params=tuple(params), constraints=space.constraints, default=dict(space.default),
                       coupled=space.coupled)


def case_shape(case: Case) -> dict[str, int]:
    spec = registry.get(case.kernel)
    return spec.kernel.model_shapes(case.variant, **case.dims)[0].as_dict()


# ------------------------------------------------------------------------------------------------------------ sweep


def _measure(job, compilers, evaluators, timeout_s: float):
    """Compile ahead (when there are compile workers), then check and time; returns (Result, seconds)."""
    seconds = 0.0
    if compilers is not None:
        compiler = compilers.get()
        try:
            start = time.monotonic()
            compiler.evaluate(job.with_(compile_only=True), timeout_s)
            seconds += time.monotonic() - start
        finally:
            compilers.put(compiler)
    worker = evaluators.get()
    try:
        start = time.monotonic()
        result = worker.evaluate(job, timeout_s)
        seconds += time.monotonic() - start
    finally:
        evaluators.put(worker)
    return result, seconds


def sweep(cases, *, interpreter: bool, rep_ms: float, compile_workers: int, trial_timeout_s: float,
          log=print, on_case=None, cached: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure every config of every case's reduced space; returns the cache document.

    ``on_case(doc)`` is called after each finished case (the caller saves it: a sweep cut by a time limit keeps the
    shapes it finished). ``cached``: an earlier cache document of the same device, dtype and ``rep_ms``; its cases
    are kept and not measured again (a sweep resumed after a time limit)."""
    import queue

    from autotune import defaults
    from autotune.device import fingerprint as fingerprint_mod
    from autotune.tuning.pool import WorkerPool
    from autotune.tuning.records import Job

    dtype = defaults.CPU_DTYPE if interpreter else defaults.GPU_DTYPE
    doc: dict[str, Any] = {"rep_ms": rep_ms, "dtype": dtype, "cases": []}
    with WorkerPool([0], interpreter=interpreter, compile_workers=compile_workers) as pool:
        device = pool.start()
        doc["device"] = device.as_dict()
        if cached is not None:
            same = (cached.get("device", {}).get("key"), cached.get("dtype"), cached.get("rep_ms")) == \
                (doc["device"].get("key"), dtype, rep_ms)
            if not same:
                raise SystemExit(f"autotune: error: the cached sweep is of another device, dtype or rep_ms "
                                 f"({cached.get('device', {}).get('key')}, {cached.get('dtype')}, "
                                 f"{cached.get('rep_ms')}); remove it or choose another --out")
            doc["cases"] = [c for c in cached.get("cases", []) if c["label"] in {case.label for case in cases}]
            for case_doc in doc["cases"]:
                log(f"{case_doc['label']}: kept from the cached sweep")
        done = {case_doc["label"] for case_doc in doc["cases"]}
        sweep_start, earlier_s = time.monotonic(), (cached or {}).get("sweep_wall_s", 0.0)
        evaluators = queue.Queue()
        for worker in pool.workers:
            evaluators.put(worker)
        compilers = None
        if pool.compilers:
            compilers = queue.Queue()
            for compiler in pool.compilers:
                compilers.put(compiler)
        in_flight = len(pool.workers) + len(pool.compilers)
        for case in (c for c in cases if c.label not in done):
            spec = registry.get(case.kernel)
            shape = case_shape(case)
            space = reduced_space(spec.space(case.variant, shape, device), case.choices)
            configs = list({config_hash(c): c for c in enumerate_configs(space.params, 10**6)}.values())
            records: dict[str, dict[str, Any]] = {}
            jobs = []
            for index, config in enumerate(configs):
                reason = space.check(config, shape, device)
                if reason:
                    records[config_hash(config)] = {"config": config, "kind": "pruned", "reason": reason,
                                                    "seconds": 0.0}
                else:
                    jobs.append(Job(kernel=case.kernel, variant=case.variant, shape=shape, config=config,
                                    dtype=dtype, seed=index, rep_ms=rep_ms))
            start = time.monotonic()
            with ThreadPoolExecutor(max_workers=in_flight) as executor:
                futures = [executor.submit(_measure, job, compilers, evaluators, trial_timeout_s) for job in jobs]
                for job, future in zip(jobs, futures):
                    result, seconds = future.result()
                    records[config_hash(job.config)] = {
                        "config": job.config, "kind": result.kind.value, "median_us": result.median_us,
                        "compile_s": result.compile_s, "seconds": seconds,
                        "error": (result.error or "").splitlines()[0][:300] if result.error else None}
            ok = [r for r in records.values() if r["kind"] == "ok"]
            fingerprint = fingerprint_mod.fingerprint(device, spec.source_hash())
            log(f"{case.label}: {len(configs)} configs, {len(jobs)} run, {len(ok)} measured in "
                f"{time.monotonic() - start:.0f} s")
            doc["cases"].append({
                "label": case.label, "kernel": case.kernel, "variant": case.variant, "shape": shape,
                "choices": {p.name: list(p.choices) for p in space.params}, "default": space.default,
                "fingerprint": fingerprint, "configs": list(records.values())})
            doc["sweep_wall_s"] = earlier_s + time.monotonic() - sweep_start  # (earlier runs of a resumed sweep too)
            if on_case is not None:
                on_case(doc)
    return doc


# ----------------------------------------------------------------------------------------------------------- replay


def _replay_space(case_doc: dict[str, Any]) -> SearchSpace:
    """The reduced space of a cached case, rebuilt from the live parameter definitions (for their conditions)."""
    from autotune.device import INTERPRETER

    spec = registry.get(case_doc["kernel"])
    live = spec.space(case_doc["variant"], case_doc["shape"], INTERPRETER)
    by_name = {p.name: p for p in live.params}
    params = tuple(Param(name, tuple(choices), when=by_name[name].when, inactive=by_name[name].inactive,
                         implied=by_name[name].implied)
                   for name, choices in case_doc["choices"].items())
    pruned = {config_hash(r["config"]): r.get("reason") or "pruned" for r in case_doc["configs"]
              if r["kind"] == "pruned"}

    def cached_constraints(config, shape, device):  # the sweep's verdict: what it pruned, the replay prunes
        return pruned.get(config_hash(config))

    return SearchSpace(params=params, constraints=(cached_constraints,), default=dict(case_doc["default"]),
                       coupled=live.coupled)


def _neighbour_start(doc: dict[str, Any], case_doc: dict[str, Any], space: SearchSpace) -> list[dict[str, Any]]:
    """Warm-start configs of a case: the ground-truth winners of the other cached shapes of its kernel and variant,
    nearest first (at most warm_start.NEIGHBOURS), projected into its space."""
    others = []
    for other in doc["cases"]:
        if other is case_doc or (other["kernel"], other["variant"]) != (case_doc["kernel"], case_doc["variant"]):
            continue
        distance = warm_start.shape_distance(case_doc["shape"], other["shape"])
        best = _ground_truth(other)
        if distance and best is not None:
            others.append((distance, best["config"]))
    others.sort(key=lambda item: item[0])
    out = []
    for _, config in others[: warm_start.NEIGHBOURS]:
        projected = warm_start.project(config, space)
        if projected is not None:
            out.append(projected[0])
    return out


def _ground_truth(case_doc: dict[str, Any]) -> dict[str, Any] | None:
    ok = [r for r in case_doc["configs"] if r["kind"] == "ok" and r["median_us"]]
    return min(ok, key=lambda r: r["median_us"]) if ok else None


def replay_one(doc, case_doc, sampler_name: str, seed: int, max_trials: int,
               budget: int | None = None) -> dict[str, list[float]]:
    """One study on the cached sweep. Returns ``trials`` (best-so-far fraction after each measured trial) and
    ``wall`` (cumulated cached seconds at each measured trial). ``budget``: the study budget whose share the
    incumbent moves may take, as in the tuner (:func:`autotune.tuning.local_moves.move_budget`; default
    ``max_trials``)."""
    from autotune.tuning.storage import make_sampler

    space = _replay_space(case_doc)
    lookup = {config_hash(r["config"]): r for r in case_doc["configs"]}
    truth = _ground_truth(case_doc)["median_us"]
    base, *extras = sampler_name.split("+")
    study = optuna.create_study(direction="minimize", sampler=make_sampler(base, seed, max_trials))
    starts = [space.default] + (_neighbour_start(doc, case_doc, space) if "warm" in extras else [])
    for config in {config_hash(c): c for c in starts}.values():
        study_mod.enqueue(study, space, config, source="start")
    climber = None
    if "moves" in extras:  # the tuner's incumbent moves (autotune.tuning.local_moves), the same limit per budget
        climber = local_moves.IncumbentMoves(space, case_doc["shape"], None,
                                             local_moves.move_budget(budget or max_trials))
    seen: set[str] = set()
    fractions: list[float] = []
    walls: list[float] = []
    wall, best = 0.0, math.inf
    measurable = sum(1 for r in case_doc["configs"] if r["kind"] == "ok")
    for _ in range(20 * max_trials):
        if len(fractions) >= max_trials or len(fractions) >= measurable:
            break
        if climber is not None:
            climber.before_ask(study)
        trial = study.ask()
        config = space.suggest(trial)
        study_mod.claim(trial, config)
        record = lookup[config_hash(config)]
        first = config_hash(config) not in seen
        seen.add(config_hash(config))
        if record["kind"] == "pruned":
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        if first:
            wall += record["seconds"]
        if record["kind"] != "ok":
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, record["median_us"])
        if first:
            best = min(best, record["median_us"])
            fractions.append(truth / best)
            walls.append(wall)
    return {"trials": fractions, "wall": walls}


def replay(doc, samplers, seeds: int, max_trials: int | None, log=print, budget: int | None = None) -> dict[str, Any]:
    """Every sampler × case × seed; returns the replay document (curves and the summary per sampler and case).
    ``budget``: the per-study budget of the moves' share (default: the goal's trial count, 10% of the sweep)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out: dict[str, Any] = {"target": TARGET, "goal_trial_fraction": GOAL_TRIAL_FRACTION, "seeds": seeds,
                           "moves_budget": budget or "goal",
                           "device": doc.get("device", {}), "cases": []}
    for case_doc in doc["cases"]:
        if _ground_truth(case_doc) is None:
            log(f"{case_doc['label']}: no measured config, skipped")
            continue
        sweep_trials = sum(1 for r in case_doc["configs"] if r["kind"] != "pruned")
        limit = max_trials or max(20, math.ceil(0.3 * sweep_trials))
        entry = {"label": case_doc["label"], "kernel": case_doc["kernel"], "variant": case_doc["variant"],
                 "shape": case_doc["shape"], "sweep_trials": sweep_trials,
                 "sweep_seconds": sum(r["seconds"] for r in case_doc["configs"]),
                 "ground_truth_us": _ground_truth(case_doc)["median_us"],
                 "default_us": _default_us(case_doc), "samplers": {}}
        for name in samplers:
            start = time.monotonic()
            goal = max(1, math.floor(GOAL_TRIAL_FRACTION * sweep_trials))
            runs = [replay_one(doc, case_doc, name, seed, limit, budget or goal) for seed in range(seeds)]
            entry["samplers"][name] = {"runs": runs, **_summary(runs, sweep_trials)}
            log(f"{case_doc['label']} {name}: {entry['samplers'][name]['trials_to_target']} trials to {TARGET} "
                f"({time.monotonic() - start:.1f} s)")
        out["cases"].append(entry)
    return out


def _default_us(case_doc) -> float | None:
    digest = config_hash(case_doc["default"])
    return next((r["median_us"] for r in case_doc["configs"] if config_hash(r["config"]) == digest), None)


def trials_to(run: dict[str, list[float]], target: float, axis: str = "trials") -> float | None:
    """Measured trials (or cached wall seconds) at which a replay first reached ``target``; None if it never did."""
    reached = trials_to_reach(run["trials"], target)
    if reached is None or axis == "trials":
        return reached
    return run["wall"][reached - 1]


def _median_or_none(values):
    """Median where every seed reached the target, else None (a budget must work for every seed)."""
    return None if any(v is None for v in values) else statistics.median(values)


def _summary(runs, sweep_trials: int) -> dict[str, Any]:
    at = max(1, math.floor(GOAL_TRIAL_FRACTION * sweep_trials))
    at_goal = [run["trials"][min(at, len(run["trials"])) - 1] for run in runs]
    return {"trials_to_target": _median_or_none([trials_to(r, TARGET) for r in runs]),
            "trials_to_095": _median_or_none([trials_to(r, 0.95) for r in runs]),
            "seconds_to_target": _median_or_none([trials_to(r, TARGET, "wall") for r in runs]),
            "goal_trials": at, "fraction_at_goal_min": min(at_goal), "fraction_at_goal_median": statistics.median(at_goal),
            "goal_met": min(at_goal) >= TARGET}


# ----------------------------------------------------------------------------------------------------------- report


def report_markdown(result: dict[str, Any]) -> str:
    """The markdown report: per case, per sampler, the fraction of the ground truth at a few trial counts, trials
    and cached seconds to reach 0.98, and whether the goal (0.98 within 10% of the sweep's trials) holds."""
    from autotune.tuning.presets import budget_from_benchmark

    lines = [f"# Search efficiency ({result['device'].get('name', '?')}, {result['seeds']} seeds)", "",
             "best-so-far ÷ ground truth (ground truth = exhaustive sweep of the reduced space; min over seeds)", ""]
    for case in result["cases"]:
        longest = max(len(r["trials"]) for data in case["samplers"].values() for r in data["runs"])
        goal = next(iter(case["samplers"].values()))["goal_trials"]
        ticks = sorted({t for t in (1, 5, 10, 20, 40, goal) if t <= longest})
        speed = f", default ÷ best {case['default_us'] / case['ground_truth_us']:.2f}x" if case["default_us"] else ""
        goal_trials = next(iter(case["samplers"].values()))["goal_trials"]
        title = (f"## {case['label']}: sweep {case['sweep_trials']} trials, {case['sweep_seconds']:.0f} s, best "
                 f"{case['ground_truth_us']:.2f} us{speed}")
        header = ("| sampler | " + " | ".join(f"@{t}" for t in ticks)
                  + f" | trials to {TARGET} | s to {TARGET} | goal (>= {TARGET} @ {goal_trials}) |")
        lines += [title, "", header, "|---|" + "---|" * (len(ticks) + 3)]
        for name, data in case["samplers"].items():
            cells = []
            for t in ticks:
                values = [r["trials"][min(t, len(r["trials"])) - 1] for r in data["runs"]]
                cells.append(f"{min(values):.3f}")
            reach = data["trials_to_target"]
            secs = data["seconds_to_target"]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {reach if reach is not None else 'not reached'} | "
                         f"{f'{secs:.0f}' if secs is not None else '-'} | {'yes' if data['goal_met'] else 'no'} |")
        lines.append("")
    for kernel in sorted({c["kernel"] for c in result["cases"]}):
        choice = budget_from_benchmark(result, kernel)
        lines.append(f"- {kernel}: {choice.describe()}")
    lines += ["", ("cmaes: Optuna's CMA-ES models no categorical parameters (all of these are): it samples them "
                   "with its independent sampler (random), so its curve is a second random curve.")]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    """Curves of the median best-so-far fraction per sampler, against trials and against cached seconds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cases = result["cases"]
    fig, axes = plt.subplots(2, len(cases), figsize=(4.5 * len(cases), 7), squeeze=False)
    for col, case in enumerate(cases):
        for name, data in case["samplers"].items():
            length = min(len(r["trials"]) for r in data["runs"])
            median = [statistics.median(r["trials"][i] for r in data["runs"]) for i in range(length)]
            wall = [statistics.median(r["wall"][i] for r in data["runs"]) for i in range(length)]
            axes[0][col].plot(range(1, length + 1), median, label=name)
            axes[1][col].plot(wall, median, label=name)
        axes[0][col].set_title(case["label"], fontsize=9)
        axes[0][col].set_xlabel("measured trials")
        axes[1][col].set_xlabel("cached seconds (compile + check + time)")
        for ax in (axes[0][col], axes[1][col]):
            ax.axhline(TARGET, color="grey", lw=0.5)
            ax.set_ylim(0.5, 1.01)
            ax.set_ylabel("best so far ÷ ground truth")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for sweep.json, replay.json, report.md, curves.png")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--sweep-only", action="store_true", help="measure the sweep, do not replay")
    mode.add_argument("--replay-only", metavar="CACHE", help="replay on this sweep.json (no GPU needed)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny shapes under the Triton interpreter")
    parser.add_argument("--resume", action="store_true",
                        help="keep the shapes already in --out/sweep.json (same device, dtype, rep-ms); measure the rest")
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="replays per sampler and shape (default: %(default)s)")
    parser.add_argument("--max-trials", type=int, help="measured trials per replay (default: 30%% of the sweep, "
                        ">= 20)")
    parser.add_argument("--budget", type=int, help="per-study budget of the '+moves' replays: the incumbent moves "
                        "take at most half of it, as in the tuner (default: the goal's 10%% of the sweep's trials)")
    parser.add_argument("--rep-ms", type=float, help="timed ms per config (default: 20 on a GPU, 1 on the CPU)")
    parser.add_argument("--compile-workers", type=int, help="compile-ahead processes (default: the tuner's)")
    parser.add_argument("--trial-timeout", type=float, default=60.0, help="seconds per config (default: 60)")
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"bench_search: error: {message}", file=sys.stderr)
        return 2

    samplers = tuple(s for s in args.samplers.split(",") if s)
    unknown = [s for s in samplers if s not in SAMPLERS]
    if unknown or not samplers:
        return fail(f"unknown sampler(s) {unknown} (choose from {', '.join(SAMPLERS)})")
    if args.seeds < 1 or (args.max_trials is not None and args.max_trials < 1):
        return fail("--seeds and --max-trials must be at least 1")
    out = Path(args.out)
    if args.replay_only:
        try:
            doc = json.loads(Path(args.replay_only).read_text())
            doc["cases"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return fail(f"cannot read sweep cache {args.replay_only}: {exc}")
    else:
        import torch

        from autotune import defaults

        interpreter = args.cpu_smoke or not torch.cuda.is_available()
        if interpreter and not args.cpu_smoke:
            return fail("no CUDA GPU: use --cpu-smoke, or --replay-only CACHE with a sweep measured on a GPU")
        if interpreter:
            os.environ["TRITON_INTERPRET"] = "1"
        workers = args.compile_workers if args.compile_workers is not None else defaults.compile_workers()
        start = time.monotonic()
        cached = None
        if args.resume and (out / "sweep.json").exists():
            try:
                cached = json.loads((out / "sweep.json").read_text())
            except (OSError, ValueError) as exc:
                return fail(f"cannot read {out / 'sweep.json'} to resume: {exc}")
        doc = sweep(CPU_CASES if args.cpu_smoke else GPU_CASES, interpreter=interpreter, cached=cached,
                    rep_ms=args.rep_ms or (1.0 if interpreter else 20.0), compile_workers=workers,
                    trial_timeout_s=args.trial_timeout,
                    on_case=lambda partial: atomic.write_text(out / "sweep.json", json.dumps(partial, indent=1) + "\n"))
        doc.setdefault("sweep_wall_s", (cached or {}).get("sweep_wall_s", 0.0))
        print(f"sweep: {time.monotonic() - start:.0f} s now, {doc['sweep_wall_s']:.0f} s in all for "
              f"{len(doc['cases'])} shapes")
        atomic.write_text(out / "sweep.json", json.dumps(doc, indent=1) + "\n")
        if args.sweep_only:
            return 0
    if args.budget is not None and args.budget < 1:
        return fail("--budget must be at least 1")
    result = replay(doc, samplers, args.seeds, args.max_trials, budget=args.budget)
    atomic.write_text(out / "replay.json", json.dumps(result, indent=1) + "\n")
    atomic.write_text(out / "report.md", report_markdown(result))
    plotted = plot(result, out / "curves.png")
    print(f"wrote {out / 'report.md'}" + (f" and {out / 'curves.png'}" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
