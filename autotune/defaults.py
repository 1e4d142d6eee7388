"""Every default of the command line and the runtime, in one place.

Paths are relative to the project root (the folder holding ``autotune/``, ``studies/``...), so the tool behaves the
same from any working directory of an editable install.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STUDIES_DIR = PROJECT_ROOT / "studies"
PRESETS_DIR = STUDIES_DIR / "presets"

STORAGE = f"sqlite:///{STUDIES_DIR / 'autotune.db'}"
"""Optuna storage URL of studies."""

TABLE = STUDIES_DIR / "tables" / "configs.json"
"""The lookup table: one file, one section per device."""

MAX_TABLE_BYTES = 64 * 2**20
"""Largest table file read (bytes). An entry takes about 1.2 KB as written (``indent=1``), so 64 MiB holds some 50,000
entries, far more than every kernel × shape × device tuned here; a larger file is refused, not read."""

STALE_TMP_AGE_S = 60.0
"""A table write's temp file (``.configs.json.*.tmp``) older than this when the next write takes the lock was left by
a killed writer and is removed (a write takes well under a second)."""

MAX_CONFIG_JSON_BYTES = 2**20
"""Largest ``config.json`` read (bytes); the released gpt-oss ones are under 2 KB."""

MAX_SAFETENSORS_HEADER_BYTES = 100_000_000
"""Largest safetensors header accepted (bytes): the safetensors library's own limit (safetensors 0.8.0 answers a
declared length of 100,000,001 with "header too large", checked here); gpt-oss headers are well under 1 MB."""

GPU_PRESET = "gpt_oss_20b"
CPU_PRESET = "tiny_cpu"
"""Preset used when none is named; without a GPU, ``run`` always uses the CPU preset."""

SAMPLER = "tpe"
SEED = 0
TRIAL_TIMEOUT_S = 60.0
"""Compile + check + time of one config; a hang past it kills the worker."""

GPU_DTYPE = "bfloat16"
CPU_DTYPE = "float16"
"""Activation dtypes: bf16 on GPUs; fp16 under the interpreter, whose bf16 dot is wrong (triton#11584)."""

REP_MS = 40.0
"""Timed milliseconds per trial (do_bench* ``rep``)."""

FINALISTS = 3
FINAL_REP_MS = 150.0
FINAL_ROUNDS = 2
"""The best configs (plus the default) re-timed FINAL_ROUNDS times, interleaved, FINAL_REP_MS each."""

MAX_COMPILE_WORKERS = 8


def compile_workers() -> int:
    """Compile-ahead processes: half the CPU cores (Triton compiles on one core each), at most 8."""
    return max(1, min(MAX_COMPILE_WORKERS, (os.cpu_count() or 2) // 2))


RAY_START_TIMEOUT_S = 180.0
"""``run --ray``: seconds for the actors to be placed and their worker processes to start (each imports torch)."""

RAY_CONNECT_TIMEOUT_S = 5.0
"""``run --ray HOST:PORT``: seconds for the TCP check that something listens there (Ray itself retries a minute)."""

RAY_OBJECT_STORE_BYTES = 100 * 2**20
"""``run --ray local``: object store of the private cluster; Jobs and Results are a few kB each."""

RAY_ANSWER_MARGIN_S = 30.0
RAY_NODE_DEATH_WAIT_S = 5.0
"""``run --ray``: seconds past the trial timeout (plus a worker restart) before an actor's silence counts as its
death; seconds to watch a dead actor's node for leaving the cluster before restarting the actor there."""


MAX_NEW_TOKENS = 32
"""``generate``: tokens generated per prompt."""

TEMPERATURE = 0.0
TOP_P = 1.0
"""``generate``: greedy by default; ``--temperature`` > 0 samples (nucleus ``--top-p``)."""

BENCH_TESTS = "pp512,pp2048,tg32,tg128"
BENCH_RUNS = 5
BENCH_BATCH = "1"
"""``bench-model``: llama-bench tests, timed runs per test (mean ± std over the runs), decode batch sizes."""

EVAL_PROMPTS = 4
EVAL_PROMPT_LEN = 64
EVAL_STEPS = 16
EVAL_TEXT_TOKENS = 1024
"""``eval``: random prompts × tokens each (every position compared), teacher-forced decode steps after them, and
the most tokens of ``--text`` read for perplexity."""
