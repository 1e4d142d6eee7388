"""Staleness end to end on the CPU: the CPU main job (``run moe_gemm`` on the tiny preset, under the interpreter)
followed by ``generate`` on a tiny checkpoint; ``retune`` of a table whose entries carry an older Triton or driver
(only those entries change); ``--dry-run``; ``show`` marking entries; and optuna-dashboard serving the tuned storage
with the objective's name, the study attributes and the note.

One module-scoped main job feeds every test (about a minute of interpreter time in all).
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.request
import warnings
from pathlib import Path

import optuna
import pytest

from autotune import cli, registry
from autotune import device as device_mod
from autotune.device import fingerprint as fingerprint_mod
from autotune.table import ConfigTable
from autotune.table.fitness import entry_problem
from autotune.table.freshness import CurrentFingerprints, check
from autotune.tuning import study as study_mod
from autotune.tuning.storage import open_storage
from scripts.write_random_checkpoint import write_random_checkpoint
from tests.test_model_cli import TINY

DEVICE = device_mod.INTERPRETER_KEY
AGED = {"moe_gemm/mlp1/E=4,K=64,M=1,N=128,top_k=2": {"triton": "3.0.0"},
        "moe_gemm/mlp2/E=4,K=64,M=8,N=64,top_k=2": {"driver": "550.54.15"}}
"""Two of the main job's four entries, made to look tuned under an older Triton and an older driver."""


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """``python -m autotune run moe_gemm`` on the CPU (tiny preset, 2 measured trials per study, a dot_scaled config
    queued so the fp16 tuner can pick it), in-process."""
    tmp = tmp_path_factory.mktemp("main_job")
    paths = {"storage": f"sqlite:///{tmp / 's.db'}", "table": tmp / "configs.json", "tmp": tmp}
    code = cli.main(["run", "moe_gemm", "--storage", paths["storage"], "--table", str(paths["table"]), "--trials", "2",
                     "--finalists", "1", "--enqueue", '{"dequant": "dot_scaled"}'])
    assert code == 0
    return paths


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_ckpt")
    write_random_checkpoint(path, TINY, seed=5)
    return path


def _entries(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text())["devices"][DEVICE]["entries"]


def _aged_table(main_job, name: str, servable: bool = False) -> Path:
    """A copy of the main job's table with the :data:`AGED` fingerprint fields; ``servable``: the aged entries hold
    their shape's default config (which the fp32 CPU loop can launch, whatever the fp16 tuner picked)."""
    path = main_job["tmp"] / name
    doc = json.loads(main_job["table"].read_text())
    for key, fields in AGED.items():
        stored = doc["devices"][DEVICE]["entries"][key]
        stored["fingerprint"].update(fields)
        if servable:
            stored["config"] = registry.get("moe_gemm").default_config(stored["variant"], stored["shape"],
                                                                       device_mod.INTERPRETER)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return path


def _generate(capsys, tiny, *extra: str) -> tuple[list[int], str]:
    code = cli.main(["generate", "--checkpoint", str(tiny), "--prompt-ids", "1 2 3", "--max-new-tokens", "3",
                     "--json", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)["generated_ids"], captured.err


# ---------------------------------------------------------------------------------------------------- the runtime


def test_main_job_then_generate(main_job, tiny, capsys):
    """The main job's table (tuned in fp16) serves the fp32 CPU loop: no entry is stale, and exactly the entries
    the loop cannot launch (dot_scaled) are skipped, each with one warning."""
    entries = _entries(main_job["table"])
    assert len(entries) == 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids, _ = _generate(capsys, tiny, "--table", str(main_job["table"]))
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "tuned under another" in m]
    skipped = sorted(m.split(" entry ")[1].split(" is not served")[0] for m in messages if "is not served" in m)
    assert skipped == sorted(k for k, e in entries.items() if e["config"]["dequant"] == "dot_scaled")
    assert len(ids) == 3 and all(0 <= t < TINY.vocab_size for t in ids)


def test_dot_scaled_entries_fall_back_to_the_default(main_job, tiny, capsys):
    """Entries the fp32 loop cannot launch (``dequant='dot_scaled'``, the crash of issue 11) are not served: one
    warning per entry naming it, the default config instead, the same tokens as without a table."""
    path = main_job["tmp"] / "dot_scaled.json"
    doc = json.loads(main_job["table"].read_text())
    for entry in doc["devices"][DEVICE]["entries"].values():  # the MMA kernel with tl.dot_scaled, fp16-only
        config = entry["config"]
        config.update(path="mma", dequant="dot_scaled", BLOCK_M=max(16, config.get("BLOCK_M", 16)))
    path.write_text(json.dumps(doc))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ids, _ = _generate(capsys, tiny, "--table", str(path))
    skipped = [str(w.message) for w in caught if "is not served" in str(w.message)]
    assert len(skipped) == 4 and all("dot_scaled" in m and "float32" in m for m in skipped), skipped
    reference, _ = _generate(capsys, tiny, "--no-table")
    assert ids == reference


def test_fitness_asks_the_kernel():
    """The dtype rule is the launcher's, the device rules the search space's constraints."""
    table_entry = {"kernel": "moe_gemm", "variant": "mlp1", "shape": {"E": 4, "K": 64, "M": 1, "N": 128, "top_k": 2},
                   "median_us": 1.0, "default_median_us": None, "fingerprint": {}, "study": "s", "trial": 0,
                   "tuned_at": "2026-12-02T00:00:00+00:00", "metrics": {}}
    import torch

    from autotune.table import TableEntry

    spec = registry.get("moe_gemm")
    base = {**spec.default_config("mlp1", table_entry["shape"], device_mod.INTERPRETER), "path": "mma"}  # MMA kernel
    dot = TableEntry(**table_entry, config={**base, "dequant": "dot_scaled"})
    ptx = TableEntry(**table_entry, config={**base, "dequant": "upcast_ptx"})
    assert entry_problem(dot, device_mod.INTERPRETER, torch.float16) is None
    assert "needs bf16 or fp16" in entry_problem(dot, device_mod.INTERPRETER, torch.float32)
    assert "compute capability" in entry_problem(ptx, device_mod.INTERPRETER, torch.bfloat16)
    bad = TableEntry(**table_entry, config={**base, "BLOCK_M": 24})
    assert "power of two" in entry_problem(bad, device_mod.INTERPRETER, torch.float16)


def test_stale_entries_are_served_with_one_warning_per_kernel(main_job):
    from autotune.table.lookup import open_table

    aged = _aged_table(main_job, "aged_runtime.json")
    table = open_table(aged, device_mod.INTERPRETER)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for variant, m in (("mlp1", 1), ("mlp2", 8), ("mlp1", 8)):
            shape = {"E": 4, "K": 64, "M": m, "N": 128 if variant == "mlp1" else 64, "top_k": 2}
            assert table.lookup("moe_gemm", variant, shape).source == "exact"
    stale = [str(w.message) for w in caught if "tuned under another" in str(w.message)]
    assert len(stale) == 1 and "triton" in stale[0] and "python -m autotune retune moe_gemm" in stale[0], stale
    served = table.served()
    assert [bool(table.stale(result.entry)) for *_, result in served] == [True, True, False]


# ---------------------------------------------------------------------------------------------------- retune


def test_show_marks_fresh_and_stale(main_job, capsys):
    aged = _aged_table(main_job, "aged_show.json")
    assert cli.main(["show", "moe_gemm", "--table", str(aged)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "fresh" in lines[0]
    rows = lines[1:]
    assert len(rows) == 4
    assert sum("stale: triton 3.0.0 → " in r for r in rows) == 1
    assert sum("stale: driver 550.54.15 → none" in r for r in rows) == 1
    assert sum(" fresh " in r for r in rows) == 2


def test_dry_run_lists_what_and_why(main_job, capsys):
    aged = _aged_table(main_job, "aged_dry.json")
    before = aged.read_bytes()
    assert cli.main(["retune", "--dry-run", "--table", str(aged), "--storage", main_job["storage"]]) == 0
    out = capsys.readouterr().out
    assert "2 stale entries to re-tune, 2 fresh left alone" in out
    assert "moe_gemm/mlp1/E=4,K=64,M=1,N=128,top_k=2: stale: triton 3.0.0 → " in out
    assert "moe_gemm/mlp2/E=4,K=64,M=8,N=64,top_k=2: stale: driver 550.54.15 → none" in out
    assert out.count("warm start: default, the old winner, 1 neighbour(s)") == 2
    assert aged.read_bytes() == before  # a dry run writes nothing
    names = optuna.get_all_study_names(storage=open_storage(main_job["storage"]))
    assert not [n for n in names if ".f" in n.rsplit(".s", 1)[-1]]  # and creates no study


def test_retune_replaces_exactly_the_stale_entries(main_job, capsys):
    aged = _aged_table(main_job, "aged_retune.json")
    before = _entries(aged)
    code = cli.main(["retune", "moe_gemm", "--table", str(aged), "--storage", main_job["storage"], "--trials", "1",
                     "--finalists", "1"])
    out = capsys.readouterr().out
    assert code == 0
    after = _entries(aged)
    assert set(after) == set(before)
    fresh_keys = set(before) - set(AGED)
    assert {k: after[k] for k in fresh_keys} == {k: before[k] for k in fresh_keys}  # untouched, byte for byte
    current = CurrentFingerprints(device_mod.INTERPRETER)
    storage = open_storage(main_job["storage"])
    for key in AGED:
        new, old = after[key], before[key]
        assert new["fingerprint"] == current("moe_gemm") != old["fingerprint"]
        assert new["study"] != old["study"]
        assert new["study"].endswith(".f" + fingerprint_mod.fingerprint_id(current("moe_gemm")))
        row = next(line for line in out.splitlines() if line.startswith(f"| {key} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[1]) == pytest.approx(old["median_us"], abs=0.01)
        old_now, new_now, ratio = float(cells[2]), float(cells[3]), float(cells[4])
        assert ratio == pytest.approx(old_now / new_now, rel=1e-3) and cells[6] == "replaced"
        study = optuna.load_study(study_name=new["study"], storage=storage)
        warm = [t for t in study.get_trials() if t.user_attrs.get("enqueued_from") == "old_winner"]
        if study_mod.config_hash(old["config"]) != study_mod.config_hash(
                registry.get("moe_gemm").default_config(new["variant"], new["shape"], device_mod.INTERPRETER)):
            assert len(warm) == 1 and json.loads(warm[0].user_attrs["config"]) == old["config"]
        finalists = {study_mod.config_hash(f["config"]): f["median_us"] for f in study.user_attrs["finalists"]}
        assert finalists[study_mod.config_hash(old["config"])] == pytest.approx(old_now, abs=0.01)
        assert study.user_attrs["old_winner"]["stale_fields"] == list(check(
            ConfigTable.load(_aged_table(main_job, "aged_check.json")).get(DEVICE, key), current).changed)
    assert "2 entries re-tuned" in out

    # the same command again: nothing is stale any more, nothing is tuned
    assert cli.main(["retune", "moe_gemm", "--table", str(aged), "--storage", main_job["storage"]]) == 0
    assert "nothing stale to re-tune" in capsys.readouterr().out
    assert _entries(aged) == after


def test_retune_user_errors(main_job, capsys):
    from tests.test_framework_cli import assert_user_error

    missing = main_job["tmp"] / "nope.json"
    code = cli.main(["retune", "--table", str(missing), "--storage", main_job["storage"]])
    assert_user_error(code, capsys.readouterr().err, "no table to re-tune")
    code = cli.main(["retune", "no_such_kernel", "--table", str(main_job["table"])])
    assert_user_error(code, capsys.readouterr().err, "unknown kernel")
    corrupt = main_job["tmp"] / "corrupt.json"
    corrupt.write_text("{")
    code = cli.main(["retune", "--dry-run", "--table", str(corrupt)])
    assert_user_error(code, capsys.readouterr().err, "corrupt table")
    assert corrupt.read_text() == "{"


# ---------------------------------------------------------------------------------------------------- dashboard


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_dashboard_serves_metric_name_attributes_and_note(main_job):
    """optuna-dashboard (its WSGI app, served on 127.0.0.1 on a free port) on the tuned storage: each study's
    objective is named ``median_us``, the study attributes hold the shape, device key and fingerprint, and the note
    says best vs default and where the best came from."""
    pytest.importorskip("optuna_dashboard")
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from optuna_dashboard import wsgi

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args) -> None:  # keep the test output clean
            pass

    copy = main_job["tmp"] / "dashboard.db"
    shutil.copy(main_job["storage"][len("sqlite:///"):], copy)
    server = make_server("127.0.0.1", 0, wsgi(f"sqlite:///{copy}"), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        summaries = _get(f"{base}/api/studies")["study_summaries"]
        names = {s["study_name"] for s in summaries}
        expected = set(optuna.get_all_study_names(storage=f"sqlite:///{copy}"))
        assert names == expected and len(names) >= 4
        table = _entries(main_job["table"])
        for summary in summaries:
            detail = _get(f"{base}/api/studies/{summary['study_id']}")
            attrs = {a["key"]: a["value"] for a in detail["user_attrs"]}
            assert detail["objective_names"] == ["median_us"]
            shape = json.loads(attrs["shape"])
            assert attrs["device_key"] == DEVICE and attrs["kernel"] == "moe_gemm"
            assert set(json.loads(attrs["fingerprint"])) >= set(fingerprint_mod.STALE_FIELDS)
            entry = next(e for e in table.values() if e["shape"] == dict(sorted(shape.items()))
                         and e["variant"] == attrs["variant"])
            note = detail["note"]["body"]
            assert f"on {DEVICE}" in note and "best: **" in note and "default: " in note, note
            if entry["study"] == summary["study_name"]:  # the study behind the table entry: the same numbers
                assert f"**{entry['median_us']:.2f} µs** (trial {entry['trial']}, from " in note, note
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_bench_model_counts_stale_configs(main_job, tiny, tmp_path):
    """bench-model says how many of the configs it served came from stale entries: the aged table's mlp1 M=1 entry
    (older Triton) is what a batch-1 decode step's mlp1 is served from."""
    import re

    aged = _aged_table(main_job, "aged_bench.json", servable=True)
    report = tmp_path / "bench.md"
    assert cli.main(["bench-model", "--checkpoint", str(tiny), "--tests", "tg2", "--runs", "1", "--table", str(aged),
                     "--out", str(report)]) == 0
    match = re.search(r"stale table configs served \(tuned under other software\): (\d+) of (\d+)(.*)",
                      report.read_text())
    assert match, report.read_text()
    stale, served = int(match[1]), int(match[2])
    assert 1 <= stale <= served and "python -m autotune retune" in match[3]
