"""Fuzzing the files a user hands the tool (issue 12): random bytes, truncations and type swaps of a valid table, a
valid ``config.json`` and a valid safetensors header. Every case must end with exit code 0 or 2 (2: one
``autotune: error:`` line, and a table that was refused is unchanged), never a traceback, a hang or more memory than
a fixed bound.

The many field swaps of ``config.json`` go through ``load_model`` (what ``generate`` does with the files) instead of
a whole interpreted generation each; the random byte mutations of it and of the header go through the command line.
The cases run in one child process (``python -m tests.test_robust_fuzz DIR SEED``: one import of torch for all of
them) under ``RLIMIT_AS`` (set by the child before its first case); each case has its own alarm, the child a wall-clock limit, and the parent checks the
child's peak RSS. The seed is fixed so a failure reproduces; the case that failed is named with its mutation.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SEED = 12
CASES = {"table": 40, "config": 12, "header": 24}
"""Random cases per target; ``config.json`` also gets every field × :data:`FIELD_SWAPS` and every deletion."""
CASE_LIMIT_S = 30
"""A case that answers nothing within this is a hang (a valid tiny generate takes about a second here)."""
CHILD_LIMIT_S = 240
ADDRESS_SPACE_BYTES = 8 * 2**30
"""RLIMIT_AS of the child: torch, Triton and Optuna map about 2-3 GiB of address space at import (measured here),
so an allocation that tries to grow without bound fails with MemoryError (a traceback: caught as a failure)."""
PEAK_RSS_BYTES = 2 * 2**30
"""Peak resident memory allowed for the whole fuzz child (its imports take about 0.5 GiB)."""

SWAPS = (None, True, False, 0, -1, 2**63, 10**30, -(10**30), 1.5, 1e308, float("inf"), float("nan"), "", "x",
         "sixteen", [], [1, 2], {}, {"a": 1}, [[[[[[[[[[[]]]]]]]]]]])


FIELD_SWAPS = (None, True, 0, -1, 10**30, 1e308 * 10, float("nan"), "x", [])
"""Values put into each ``config.json`` field in turn (wrong types, zero, negative, huge, non-finite)."""


def _paths(doc, prefix=()):
    """Every (path, value) of a JSON document's containers' members."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        yield (*prefix, key), value
        yield from _paths(value, (*prefix, key))


def _swap(doc, rng: random.Random) -> tuple[object, str]:
    """A deep copy of ``doc`` with one member replaced by a value of another type, or deleted."""
    doc = json.loads(json.dumps(doc))
    paths = [p for p, _ in _paths(doc)]
    path = rng.choice(paths)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if rng.random() < 0.2:
        del parent[path[-1]]
        return doc, f"delete {'/'.join(map(str, path))}"
    value = rng.choice(SWAPS)
    parent[path[-1]] = value
    return doc, f"{'/'.join(map(str, path))} = {value!r}"[:200]


def _byte_mutation(data: bytes, rng: random.Random, *, start: int = 0, end: int | None = None) -> tuple[bytes, str]:
    end = len(data) if end is None else end
    kind = rng.choice(("random", "truncate", "flip", "splice"))
    if kind == "random":
        return rng.randbytes(rng.randrange(0, 4096)), "random bytes"
    if kind == "truncate":
        cut = rng.randrange(0, len(data))
        return data[:cut], f"truncated at {cut}"
    out = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randrange(1, 8)):
            out[rng.randrange(start, end)] = rng.randrange(256)
        return bytes(out), "flipped bytes"
    at = rng.randrange(start, end)
    return bytes(out[:at]) + rng.randbytes(rng.randrange(1, 64)) + bytes(out[at:]), f"spliced at {at}"


def _call(argv: list[str]) -> dict:
    """``cli.main(argv)`` in this process: its code and stderr, or the traceback/hang that escaped it."""
    from autotune import cli

    def expired(signum, frame):
        raise TimeoutError(f"no answer within {CASE_LIMIT_S} s")

    err, out = io.StringIO(), io.StringIO()
    started = time.monotonic()
    signal.signal(signal.SIGALRM, expired)
    signal.alarm(CASE_LIMIT_S)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = cli.main(argv)
        return {"code": code, "err": err.getvalue()[-2000:], "s": time.monotonic() - started}
    except BaseException:  # noqa: BLE001 - anything escaping main is what this test looks for
        return {"code": None, "err": err.getvalue()[-2000:], "traceback": traceback.format_exc()[-3000:]}
    finally:
        signal.alarm(0)


def _load(checkpoint: Path) -> dict:
    """What ``generate`` does with the checkpoint's files, without generating: ``load_model`` (config.json, headers,
    tensors, the RoPE table and the kernel configs), with the CLI's rule: a UserError is exit 2 with its line. Used for
    the many field swaps of config.json, where a valid one would otherwise cost a whole interpreted generation."""
    from autotune.errors import UserError
    from autotune.model import load_model

    started = time.monotonic()
    try:
        load_model(checkpoint, use_table=False, max_positions=3)
    except UserError as exc:
        return {"code": 2, "err": f"autotune: error: {exc}\n", "s": time.monotonic() - started}
    except BaseException:  # noqa: BLE001
        return {"code": None, "err": "", "traceback": traceback.format_exc()[-3000:]}
    return {"code": 0, "err": "", "s": time.monotonic() - started}


def _lookup_all(path: Path) -> str | None:
    """The runtime read of a table: open it and look up every stored shape; None, or what escaped."""
    import warnings

    from autotune.device import INTERPRETER
    from autotune.errors import TableError
    from autotune.table import ConfigTable, open_table

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = open_table(path, INTERPRETER)
            for entry in ConfigTable.load(path).entries(INTERPRETER.key):
                table.lookup(entry.kernel, entry.variant, entry.shape)
    except TableError:
        return None
    except BaseException:  # noqa: BLE001
        return traceback.format_exc()[-3000:]
    return None


def drive(workdir: Path, seed: int) -> list[dict]:
    """Run every case; returns one record per case."""
    import warnings

    warnings.simplefilter("ignore")  # cli.main re-formats warnings; the records keep stderr anyway
    from safetensors.torch import save_file  # noqa: F401 - imported before the cases (timing)

    from scripts.write_random_checkpoint import write_random_checkpoint
    from tests.test_robust_inputs import (
        TINY,
        entry,
        moe_default,
        storage_with_study,
        write_table,
    )

    rng = random.Random(seed)
    records = []
    # tables: export into a mutated table, and the runtime read of it
    url = storage_with_study(workdir, moe_default())
    valid_table = write_table(workdir / "valid.json", [entry(moe_default()),
                                                       entry(moe_default(), shape={"M": 8, "N": 64, "K": 64, "E": 4,
                                                                                   "top_k": 2})])
    doc = json.loads(valid_table)
    for index in range(CASES["table"]):
        if index % 2:
            mutated, how = _swap(doc, rng)
            data = json.dumps(mutated, allow_nan=True).encode()
        else:
            data, how = _byte_mutation(valid_table, rng)
        path = workdir / f"table{index}.json"
        path.write_bytes(data)
        record = {"target": "table", "case": how, **_call(["export", "--storage", url, "--table", str(path)])}
        record["unchanged"] = path.read_bytes() == data
        problem = _lookup_all(path)
        if problem:
            record["lookup_traceback"] = problem
        records.append(record)
    # config.json and the safetensors header: generate one token from a mutated tiny checkpoint
    checkpoint = workdir / "ckpt"
    write_random_checkpoint(checkpoint, TINY, seed=3)
    [shard] = checkpoint.glob("*.safetensors")
    valid_config, valid_shard = (checkpoint / "config.json").read_bytes(), shard.read_bytes()
    config_doc = json.loads(valid_config)
    header_len = int.from_bytes(valid_shard[:8], "little")
    header_doc, body = json.loads(valid_shard[8:8 + header_len]), valid_shard[8 + header_len:]
    argv = ["generate", "--checkpoint", str(checkpoint), "--prompt-ids", "1 2", "--max-new-tokens", "1",
            "--no-table", "--no-cuda-graphs"]
    config_cases = [(f"{field} = {value!r}", {**config_doc, field: value}) for field in config_doc
                    for value in FIELD_SWAPS]  # every field, every swap: the checks are per field
    config_cases += [(f"delete {field}", {k: v for k, v in config_doc.items() if k != field}) for field in config_doc]
    for how, mutated in config_cases:
        (checkpoint / "config.json").write_text(json.dumps(mutated, allow_nan=True))
        records.append({"target": "config.json", "case": how, **_load(checkpoint)})
    for _ in range(CASES["config"]):
        data, how = _byte_mutation(valid_config, rng)
        (checkpoint / "config.json").write_bytes(data)
        records.append({"target": "config.json", "case": how, **_call(argv)})
    (checkpoint / "config.json").write_bytes(valid_config)
    for index in range(CASES["header"]):
        if index % 2:
            mutated, how = _swap(header_doc, rng)
            header = json.dumps(mutated, allow_nan=True).encode()
            data = len(header).to_bytes(8, "little") + header + body
        else:
            data, how = _byte_mutation(valid_shard, rng, start=0, end=8 + header_len)
        shard.write_bytes(data)
        records.append({"target": "safetensors header", "case": how, **_call(argv)})
    shard.write_bytes(valid_shard)
    return records


def test_fuzzed_files_exit_0_or_2(tmp_path):
    start = time.monotonic()
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}
    proc = subprocess.Popen([sys.executable, "-m", "tests.test_robust_fuzz", str(tmp_path), str(SEED)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=CHILD_LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the fuzz child hung past {CHILD_LIMIT_S} s: {err[-3000:]}") from None
    assert proc.returncode == 0, err[-5000:]
    doc = json.loads(out)
    records = doc["records"]
    # the child's own peak, VmHWM of its address space (ru_maxrss would carry pytest's peak over fork + exec, and
    # RUSAGE_CHILDREN here is the largest of every child this pytest process ever had)
    peak_rss = doc["peak_rss_kib"] * 1024
    assert len(records) > sum(CASES.values())
    bad = []
    for record in records:
        where = f"{record['target']} [{record['case']}]"
        if record["code"] not in (0, 2):
            bad.append(f"{where}: exit {record['code']}: {record.get('traceback') or record['err']}")
        elif "Traceback" in record["err"] or record.get("lookup_traceback"):
            bad.append(f"{where}: traceback: {record['err']}{record.get('lookup_traceback', '')}")
        elif record["code"] == 2:
            last = record["err"].strip().splitlines()[-1]
            if not last.startswith("autotune: error:"):
                bad.append(f"{where}: exit 2 without the one-line error: {record['err']}")
            if record["target"] == "table" and not record["unchanged"]:
                bad.append(f"{where}: a refused table was changed")
    assert not bad, "\n".join(bad)
    codes = {target: sorted({r["code"] for r in records if r["target"] == target}) for target in
             ("table", "config.json", "safetensors header")}
    assert all(2 in c for c in codes.values()), codes  # the mutations do reach the checks
    assert peak_rss < PEAK_RSS_BYTES, f"peak RSS {peak_rss / 2**30:.2f} GiB"
    print(f"fuzz: {len(records)} cases, exit codes {codes}, peak RSS {peak_rss / 2**20:.0f} MiB, "
          f"{time.monotonic() - start:.1f} s")


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))  # before any case runs
    fuzz_records = drive(Path(sys.argv[1]), int(sys.argv[2]))
    hwm_kib = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    sys.stdout.write(json.dumps({"records": fuzz_records, "peak_rss_kib": hwm_kib}))
