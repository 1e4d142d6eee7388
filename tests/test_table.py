"""Tests of the config lookup table (:mod:`autotune.table`): file format, atomic saves, validation, merge, lookup."""

from __future__ import annotations

import json
import multiprocessing
import os
import warnings
from pathlib import Path

import pytest

from autotune import table as table_mod
from autotune.errors import TableError, UserError
from autotune.table import (
    SCHEMA_NAME,
    SCHEMA_VERSION,
    ConfigTable,
    LookupResult,
    MergeReport,
    RuntimeTable,
    TableEntry,
    entry_key,
    shape_key,
    update_table,
)

DEV = "nvidia-h100-80gb-hbm3/sm90"
OTHER_DEV = "triton-interpreter"
FP = {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "triton": "3.4.0", "driver": 570}
SHAPE = {"M": 16, "N": 5760, "K": 2880, "E": 32, "top_k": 4}
KEY = "moe_gemm/mlp1/E=32,K=2880,M=16,N=5760,top_k=4"


def make_entry(**overrides) -> TableEntry:
    fields = dict(
        kernel="moe_gemm",
        variant="mlp1",
        shape=dict(SHAPE),
        config={"BLOCK_M": 16, "BLOCK_N": 128, "num_warps": 4, "EVEN_K": True, "SPLIT": None},
        median_us=12.5,
        default_median_us=20.0,
        fingerprint=dict(FP),
        study="moe_gemm.mlp1.h100",
        trial=17,
        tuned_at="2026-11-21T15:00:00+00:00",
        metrics={"tflops": 101.5, "gbps": 2500.0, "dtype": "mxfp4"},
    )
    fields.update(overrides)
    return TableEntry(**fields)


def with_m(m: int, **overrides) -> TableEntry:
    return make_entry(shape={**SHAPE, "M": m}, config={"BLOCK_M": m}, **overrides)


def write_doc(path: Path, doc: object) -> bytes:
    data = json.dumps(doc, indent=1).encode()
    path.write_bytes(data)
    return data


def valid_doc() -> dict:
    return {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "devices": {DEV: {"device": {"name": "H100"}, "entries": {KEY: make_entry().to_json()}}},
    }


def default_config(kernel, variant, shape):
    return {"BLOCK_M": 64, "default_for": f"{kernel}/{variant}"}


# ------------------------------------------------------------------------------------------------------- keys


def test_shape_key_sorts_dims_by_name():
    assert shape_key(SHAPE) == "E=32,K=2880,M=16,N=5760,top_k=4"
    assert shape_key(dict(reversed(list(SHAPE.items())))) == shape_key(SHAPE)
    assert entry_key("moe_gemm", "mlp1", SHAPE) == KEY
    assert make_entry().key == KEY


@pytest.mark.parametrize(
    "shape, exc",
    [({"M": -1}, ValueError), ({"M": True}, TypeError), ({"M": 1.5}, TypeError), ({"a,b": 1}, ValueError)],
)
def test_shape_key_rejects_bad_shapes(shape, exc):
    with pytest.raises(exc):
        shape_key(shape)


def test_entry_key_rejects_slash_in_names():
    with pytest.raises(ValueError):
        entry_key("moe/gemm", "mlp1", SHAPE)


def test_speedup():
    assert make_entry(median_us=10.0, default_median_us=25.0).speedup == pytest.approx(2.5)
    assert make_entry(default_median_us=None).speedup is None


def test_entry_constructor_validates_and_copies():
    with pytest.raises(ValueError, match="median_us"):
        make_entry(median_us=0.0)
    with pytest.raises(ValueError, match="trial"):
        make_entry(trial="17")
    config = {"BLOCK_M": 16}
    entry = make_entry(config=config)
    config["BLOCK_M"] = 999
    assert entry.config == {"BLOCK_M": 16}


# ------------------------------------------------------------------------------------------------------- save / load


def test_round_trip_save_load(tmp_path):
    path = tmp_path / "sub" / "dir" / "table.json"
    table = ConfigTable(path)
    e1 = make_entry()
    e2 = with_m(64, default_median_us=None, metrics={"nested": {"list": [1, 2.5, "x"]}})
    e3 = make_entry(kernel="attention", variant="decode", shape={"B": 1, "H": 64}, config={"BLOCK": 32})
    table.merge(DEV, {"name": "H100", "sm": 90, "memory_gib": 79.6}, [e1, e2])
    table.merge(OTHER_DEV, {"name": "interpreter"}, [e3])
    table.save()

    loaded = ConfigTable.load(path)
    assert loaded.device_keys() == sorted([DEV, OTHER_DEV])
    assert loaded.entries(DEV) == sorted([e1, e2], key=lambda e: e.key)
    assert loaded.entries(OTHER_DEV) == [e3]
    assert loaded.device_info(DEV) == {"name": "H100", "sm": 90, "memory_gib": 79.6}
    assert loaded.to_json() == table.to_json()
    assert loaded.get(DEV, KEY) == e1

    text = path.read_text()
    assert text.endswith("}\n")
    doc = json.loads(text)
    assert text == json.dumps(doc, indent=1, sort_keys=True) + "\n"
    assert doc["schema"] == SCHEMA_NAME and doc["schema_version"] == SCHEMA_VERSION
    assert set(doc["devices"][DEV]["entries"]) == {e1.key, e2.key}

    # Re-saving an unchanged table is byte-identical (stable diffs).
    loaded.save()
    assert path.read_text() == text
    assert sorted(os.listdir(path.parent)) == ["table.json"]


def test_load_missing(tmp_path):
    path = tmp_path / "nope.json"
    table = ConfigTable.load(path)
    assert table.device_keys() == [] and table.entries(DEV) == [] and table.device_info(DEV) is None
    with pytest.raises(TableError, match="not found") as info:
        ConfigTable.load(path, missing_ok=False)
    assert str(info.value).startswith(str(path))
    assert isinstance(info.value, UserError)


def _save_with_failure(tmp_path, monkeypatch, target: str, exc: BaseException):
    path = tmp_path / "table.json"
    table = ConfigTable(path)
    table.merge(DEV, {"name": "H100"}, [make_entry()])
    table.save()
    original = path.read_bytes()

    table.merge(DEV, {"name": "H100"}, [with_m(128)])

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(target, boom)
    return path, original, table


@pytest.mark.parametrize(
    "target, exc, expected",
    [
        ("os.replace", OSError(28, "No space left on device"), TableError),
        ("os.fsync", OSError(5, "Input/output error"), TableError),
        ("os.replace", KeyboardInterrupt(), KeyboardInterrupt),
    ],
)
def test_save_is_atomic(tmp_path, monkeypatch, target, exc, expected):
    path, original, table = _save_with_failure(tmp_path, monkeypatch, target, exc)
    with pytest.raises(expected) as info:
        table.save()
    if expected is TableError:
        assert str(info.value).startswith(str(path))
    assert path.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["table.json"]  # no temp file left behind


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "table.json"
    table = ConfigTable(path)
    table.merge(DEV, {}, [make_entry()])
    monkeypatch.setattr(os, "replace", lambda *a, **k: (_ for _ in ()).throw(OSError(13, "Permission denied")))
    with pytest.raises(TableError):
        table.save()
    assert os.listdir(tmp_path) == []


def test_save_keeps_file_mode(tmp_path):
    path = tmp_path / "table.json"
    table = ConfigTable(path)
    table.merge(DEV, {}, [make_entry()])
    table.save()
    os.chmod(path, 0o640)
    table.merge(DEV, {}, [with_m(32)])
    table.save()
    assert os.stat(path).st_mode & 0o777 == 0o640


# ------------------------------------------------------------------------------------------------------- bad files


def _assert_table_error(path: Path, *fragments: str) -> TableError:
    with pytest.raises(TableError) as info:
        ConfigTable.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_corrupt_json(tmp_path):
    path = tmp_path / "table.json"
    path.write_text('{\n "schema": "gpt-oss-autotune/config-table",\n "schema_version": 1,,\n}\n')
    _assert_table_error(path, "corrupt table", "invalid JSON", "line 3")


def test_empty_and_truncated_files(tmp_path):
    path = tmp_path / "table.json"
    path.write_text("")
    _assert_table_error(path, "invalid JSON")
    path.write_text(json.dumps(valid_doc(), indent=1)[:200])
    _assert_table_error(path, "invalid JSON")


def test_not_utf8(tmp_path):
    path = tmp_path / "table.json"
    path.write_bytes(b"\xff\xfe{}")
    _assert_table_error(path, "corrupt table")


def test_duplicate_json_keys(tmp_path):
    path = tmp_path / "table.json"
    path.write_text('{"schema": "gpt-oss-autotune/config-table", "schema": "x", "schema_version": 1, "devices": {}}')
    _assert_table_error(path, "duplicate key 'schema'")


@pytest.mark.parametrize(
    "doc, fragment",
    [
        ({"1": {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "num_warps": 4}}, "foreign format"),  # vLLM fused_moe table
        ({"schema": "someone-else/table", "schema_version": 1, "devices": {}}, "foreign format"),
        ([1, 2, 3], "foreign format"),
        ("hello", "foreign format"),
    ],
)
def test_foreign_json(tmp_path, doc, fragment):
    path = tmp_path / "table.json"
    write_doc(path, doc)
    _assert_table_error(path, fragment, "not a gpt-oss-autotune config table")


def test_newer_schema_version(tmp_path):
    path = tmp_path / "table.json"
    doc = valid_doc()
    doc["schema_version"] = SCHEMA_VERSION + 1
    doc["devices"][DEV]["entries"][KEY]["new_field_of_v2"] = 1  # must not be what is reported
    write_doc(path, doc)
    _assert_table_error(path, "newer version", f"schema_version {SCHEMA_VERSION + 1}")


@pytest.mark.parametrize("version", [0, -1, "1", 1.0, True, None])
def test_bad_schema_version(tmp_path, version):
    path = tmp_path / "table.json"
    doc = valid_doc()
    doc["schema_version"] = version
    write_doc(path, doc)
    _assert_table_error(path, "corrupt table", "schema_version")


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d.update(devices=[]), "'devices' must be an object"),
        (lambda d: d.update(devices={DEV: []}), "expected an object"),
        (lambda d: d["devices"][DEV].pop("device"), "'device'"),
        (lambda d: d["devices"][DEV].update(entries=[]), "'entries' must be an object"),
        (lambda d: d["devices"][DEV].update(device="H100"), "'device' must be an object"),
        (lambda d: d.update(extra=1), "unknown top-level field"),
    ],
)
def test_malformed_sections(tmp_path, mutate, fragment):
    path = tmp_path / "table.json"
    doc = valid_doc()
    mutate(doc)
    write_doc(path, doc)
    _assert_table_error(path, "corrupt table", fragment)


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("median_us", "fast", "median_us"),
        ("median_us", -3.0, "median_us"),
        ("median_us", 0, "median_us"),
        ("median_us", True, "median_us"),
        ("default_median_us", "slow", "default_median_us"),
        ("trial", 1.5, "trial"),
        ("trial", "17", "trial"),
        ("kernel", 3, "kernel"),
        ("study", None, "study"),
        ("tuned_at", 20261121, "tuned_at"),
        ("shape", [16, 5760], "shape"),
        ("config", "BLOCK_M=16", "config"),
        ("config", {"BLOCK_M": [16]}, "config"),
        ("fingerprint", {"triton": {"v": 3}}, "fingerprint"),
        ("metrics", [], "metrics"),
    ],
)
def test_entry_with_wrong_types(tmp_path, field, value, fragment):
    path = tmp_path / "table.json"
    doc = valid_doc()
    doc["devices"][DEV]["entries"][KEY][field] = value
    write_doc(path, doc)
    _assert_table_error(path, "corrupt table", KEY, fragment, DEV)


@pytest.mark.parametrize("dim_value", ["16", -16, 16.0, None])
def test_entry_with_bad_shape_values(tmp_path, dim_value):
    path = tmp_path / "table.json"
    doc = valid_doc()
    doc["devices"][DEV]["entries"][KEY]["shape"]["M"] = dim_value
    write_doc(path, doc)
    _assert_table_error(path, "corrupt table", KEY, "shape dimension M")


def test_entry_nan_median(tmp_path):
    path = tmp_path / "table.json"
    text = json.dumps(valid_doc(), indent=1).replace('"median_us": 12.5', '"median_us": NaN')
    assert "NaN" in text
    path.write_text(text)
    _assert_table_error(path, "corrupt table", KEY, "median_us")


def test_entry_missing_and_unknown_fields(tmp_path):
    path = tmp_path / "table.json"
    doc = valid_doc()
    del doc["devices"][DEV]["entries"][KEY]["config"]
    write_doc(path, doc)
    _assert_table_error(path, KEY, "missing field(s) config")

    doc = valid_doc()
    doc["devices"][DEV]["entries"][KEY]["bogus"] = 1
    write_doc(path, doc)
    _assert_table_error(path, KEY, "unknown field(s) bogus")


def test_optional_entry_fields_may_be_absent(tmp_path):
    path = tmp_path / "table.json"
    doc = valid_doc()
    del doc["devices"][DEV]["entries"][KEY]["default_median_us"]
    del doc["devices"][DEV]["entries"][KEY]["metrics"]
    write_doc(path, doc)
    (entry,) = ConfigTable.load(path).entries(DEV)
    assert entry.default_median_us is None and entry.metrics == {} and entry.speedup is None


def test_entry_key_mismatch(tmp_path):
    path = tmp_path / "table.json"
    doc = valid_doc()
    wrong = "moe_gemm/mlp1/E=32,K=2880,M=32,N=5760,top_k=4"
    doc["devices"][DEV]["entries"] = {wrong: make_entry().to_json()}
    write_doc(path, doc)
    _assert_table_error(path, "corrupt table", wrong, KEY, "does not match")


def test_from_json_names_path_and_key():
    bad = make_entry().to_json()
    bad["median_us"] = "x"
    with pytest.raises(TableError) as info:
        TableEntry.from_json(bad, path="/some/table.json")
    assert str(info.value).startswith("/some/table.json: ")
    assert KEY in str(info.value)
    assert TableEntry.from_json(make_entry().to_json(), path=None) == make_entry()


def test_unreadable_path(tmp_path):
    path = tmp_path / "a_directory.json"
    path.mkdir()
    _assert_table_error(path, "cannot read table")


# ------------------------------------------------------------------------------------------------------- merge


def test_merge_rule(tmp_path):
    table = ConfigTable(tmp_path / "t.json")
    slow = with_m(16, median_us=10.0)
    fast_stale = with_m(32, median_us=5.0)
    kept = with_m(64, median_us=7.0)
    first = table.merge(DEV, {"name": "old"}, [slow, fast_stale, kept])
    assert first == MergeReport(added=sorted([slow.key, fast_stale.key, kept.key]), replaced=[], kept=[])

    faster_same_fp = with_m(16, median_us=8.0, trial=99)
    slower_new_fp = with_m(32, median_us=50.0, fingerprint={**FP, "triton": "3.5.0"})
    slower_same_fp = with_m(64, median_us=9.0)
    tie_same_fp = with_m(64, median_us=7.0, trial=1234)
    brand_new = with_m(128)
    report = table.merge(DEV, {"name": "new"}, [faster_same_fp, slower_new_fp, slower_same_fp, tie_same_fp, brand_new])

    assert report.added == [brand_new.key]
    assert report.replaced == sorted([faster_same_fp.key, slower_new_fp.key])
    assert report.kept == [kept.key]
    by_key = {e.key: e for e in table.entries(DEV)}
    assert by_key[slow.key] == faster_same_fp  # same fingerprint, faster wins
    assert by_key[fast_stale.key] == slower_new_fp  # different fingerprint replaces even though slower
    assert by_key[kept.key] is kept  # same fingerprint, slower (and equal) loses
    assert by_key[brand_new.key] == brand_new
    assert table.device_info(DEV) == {"name": "new"}


def test_merge_duplicate_keys_in_one_batch(tmp_path):
    table = ConfigTable(tmp_path / "t.json")
    a, b = with_m(16, median_us=9.0, trial=1), with_m(16, median_us=4.0, trial=2)
    report = table.merge(DEV, {}, [a, b])
    assert report == MergeReport(added=[a.key])
    assert table.entries(DEV) == [b]


def test_merge_only_touches_its_device(tmp_path):
    table = ConfigTable(tmp_path / "t.json")
    table.merge(OTHER_DEV, {"name": "cpu"}, [make_entry(median_us=1.0)])
    report = table.merge(DEV, {"name": "gpu"}, [make_entry(median_us=100.0)])
    assert report.added == [KEY]
    assert table.entries(OTHER_DEV)[0].median_us == 1.0
    assert table.entries(DEV)[0].median_us == 100.0


def test_merge_rejects_non_entries(tmp_path):
    table = ConfigTable(tmp_path / "t.json")
    with pytest.raises(TypeError):
        table.merge(DEV, {}, [make_entry().to_json()])
    assert table.entries(DEV) == []


# ------------------------------------------------------------------------------------------------------- update_table


def test_update_table_creates_and_merges(tmp_path):
    path = tmp_path / "tables" / "h100.json"
    r1 = update_table(path, DEV, {"name": "H100"}, [with_m(16)])
    assert r1.added == [with_m(16).key]
    r2 = update_table(path, DEV, {"name": "H100"}, iter([with_m(16, median_us=1.0), with_m(32)]))
    assert r2.replaced == [with_m(16).key] and r2.added == [with_m(32).key]
    loaded = ConfigTable.load(path)
    assert [e.shape["M"] for e in loaded.entries(DEV)] == [16, 32]
    assert (tmp_path / "tables" / "h100.json.lock").exists()
    assert not [name for name in os.listdir(path.parent) if name.endswith(".tmp")]


@pytest.mark.parametrize(
    "content",
    [
        b'{"schema": "gpt-oss-autotune/config-table", "schema_version": 1, "devices": {',
        json.dumps({"1": {"BLOCK_SIZE_M": 16}}).encode(),
        json.dumps({"schema": SCHEMA_NAME, "schema_version": 99, "devices": {}}).encode(),
    ],
    ids=["corrupt", "foreign", "newer"],
)
def test_update_table_never_overwrites_bad_file(tmp_path, content):
    path = tmp_path / "table.json"
    path.write_bytes(content)
    with pytest.raises(TableError) as info:
        update_table(path, DEV, {"name": "H100"}, [make_entry()])
    assert str(info.value).startswith(str(path))
    assert path.read_bytes() == content
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def _worker(path: str, offset: int, count: int) -> None:
    for i in range(count):
        update_table(path, DEV, {"name": "H100"}, [with_m(offset + i)])


def test_update_table_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / "table.json"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(str(path), 1000 * (i + 1), 8)) for i in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    ms = sorted(e.shape["M"] for e in ConfigTable.load(path).entries(DEV))
    assert ms == sorted(1000 * (i + 1) + j for i in range(3) for j in range(8))


# ------------------------------------------------------------------------------------------------------- lookup


def _runtime(tmp_path, entries, device_key=DEV, default=default_config, bucket_dims=None, other=()):
    path = tmp_path / "table.json"
    table = ConfigTable(path)
    table.merge(DEV, {"name": "H100"}, entries)
    if other:
        table.merge(OTHER_DEV, {"name": "interp"}, other)
    table.save()
    return RuntimeTable.open(path, device_key, default, {"moe_gemm": "M"} if bucket_dims is None else bucket_dims)


def test_lookup_exact(tmp_path):
    entry = make_entry()
    rt = _runtime(tmp_path, [entry, with_m(64)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = rt.lookup("moe_gemm", "mlp1", dict(reversed(list(SHAPE.items()))))
    assert isinstance(result, LookupResult)
    assert result.source == "exact"
    assert result.entry == entry
    assert dict(result.config) == entry.config


@pytest.mark.parametrize(
    "query, expected",
    [
        (4, 8),  # |2-1| == |2-3| -> tie goes to the larger bucket
        (3, 2),  # |log2 3 - 1| = 0.58 < |log2 3 - 3| = 1.42
        (5, 8),
        (1, 2),
        (0, 2),  # max(q, 1)
        (1000, 8),
        (6, 8),  # |log2 6 - 1| = 1.58 > |log2 6 - 3| = 0.42
    ],
)
def test_lookup_nearest_log2(tmp_path, query, expected):
    rt = _runtime(tmp_path, [with_m(2), with_m(8)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = rt.lookup("moe_gemm", "mlp1", {**SHAPE, "M": query})
    assert result.source == "nearest"
    assert result.entry.shape["M"] == expected
    assert result.config["BLOCK_M"] == expected


def test_lookup_nearest_exact_tie_non_power_of_two(tmp_path):
    # 6/3 == 12/6: an exact tie that floats could break either way; it must go to the larger bucket.
    rt = _runtime(tmp_path, [with_m(3), with_m(12)])
    assert rt.lookup("moe_gemm", "mlp1", {**SHAPE, "M": 6}).entry.shape["M"] == 12


def test_nearest_does_not_cross_fixed_dims(tmp_path):
    rt = _runtime(tmp_path, [with_m(2), with_m(8)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        other_n = rt.lookup("moe_gemm", "mlp1", {**SHAPE, "M": 4, "N": 2880})
        other_variant = rt.lookup("moe_gemm", "mlp2", {**SHAPE, "M": 4})
        extra_dim = rt.lookup("moe_gemm", "mlp1", {**SHAPE, "M": 4, "G": 1})
        no_bucket_dim = rt.lookup("moe_gemm", "mlp1", {k: v for k, v in SHAPE.items() if k != "M"})
    for result in (other_n, other_variant, extra_dim, no_bucket_dim):
        assert result.source == "default" and result.entry is None
    assert dict(other_n.config) == {"BLOCK_M": 64, "default_for": "moe_gemm/mlp1"}
    assert len(caught) == 2  # one per (kernel, variant): mlp1 and mlp2


def test_nearest_only_for_bucketed_kernels(tmp_path):
    rt = _runtime(tmp_path, [with_m(2), with_m(8)], bucket_dims={})
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert rt.lookup("moe_gemm", "mlp1", {**SHAPE, "M": 4}).source == "default"
    assert rt.lookup("moe_gemm", "mlp1", {**SHAPE, "M": 8}).source == "exact"


def test_default_warns_once_per_kernel_variant(tmp_path):
    calls = []

    def counting_default(kernel, variant, shape):
        calls.append((kernel, variant, dict(shape)))
        return {"BLOCK_M": 32}

    rt = _runtime(tmp_path, [with_m(16)], default=counting_default)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(50):
            for m in (1, 2, 3, 4):
                assert rt.lookup("attention", "decode", {"B": m, "H": 64}).source == "default"
            assert rt.lookup("attention", "prefill", {"B": 1, "H": 64}).source == "default"
            assert rt.lookup("moe_gemm", "mlp1", SHAPE).source == "exact"
    assert len(caught) == 2
    assert all(issubclass(w.category, RuntimeWarning) for w in caught)
    messages = sorted(str(w.message) for w in caught)
    assert "attention/decode" in messages[0] and "attention/prefill" in messages[1]
    for message in messages:
        assert str(tmp_path / "table.json") in message and DEV in message
    assert all(w.filename == __file__ for w in caught)  # attributed to the caller of lookup()
    # memoized: the default config is computed once per distinct shape
    assert len(calls) == 5


def test_no_table_warns_with_no_table(tmp_path):
    rt = RuntimeTable(None, DEV, default_config, {"moe_gemm": "M"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            result = rt.lookup("moe_gemm", "mlp1", SHAPE)
    assert result.source == "default"
    assert len(caught) == 1
    assert "no table" in str(caught[0].message) and DEV in str(caught[0].message)


def test_missing_table_file(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(TableError):
        RuntimeTable.open(path, DEV, default_config, {}, missing_ok=False)
    rt = RuntimeTable.open(path, DEV, default_config, {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert rt.lookup("moe_gemm", "mlp1", SHAPE).source == "default"
    assert len(caught) == 1 and str(path) in str(caught[0].message)


def test_other_device_entries_never_served(tmp_path):
    # The table only has the interpreter's section, with an exact match and a bucket neighbour: both must be ignored.
    path = tmp_path / "table.json"
    table = ConfigTable(path)
    table.merge(OTHER_DEV, {"name": "interp"}, [make_entry(), with_m(64)])
    table.save()
    rt = RuntimeTable.open(path, DEV, default_config, {"moe_gemm": "M"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exact = rt.lookup("moe_gemm", "mlp1", SHAPE)
        near = rt.lookup("moe_gemm", "mlp1", {**SHAPE, "M": 32})
    assert exact.source == near.source == "default"
    assert exact.entry is None and near.entry is None
    assert len(caught) == 1 and "no section for device" in str(caught[0].message)

    # With both sections present, each device is served its own entries only.
    table.merge(DEV, {"name": "H100"}, [make_entry(config={"BLOCK_M": 128})])
    rt_dev = RuntimeTable(table, DEV, default_config, {"moe_gemm": "M"})
    rt_other = RuntimeTable(table, OTHER_DEV, default_config, {"moe_gemm": "M"})
    assert rt_dev.lookup("moe_gemm", "mlp1", SHAPE).config["BLOCK_M"] == 128
    assert rt_other.lookup("moe_gemm", "mlp1", SHAPE).config["BLOCK_M"] == 16
    assert rt_dev.lookup("moe_gemm", "mlp1", {**SHAPE, "M": 64}).config["BLOCK_M"] == 128  # nearest in own section


def test_lookup_is_memoized_and_read_only(tmp_path):
    rt = _runtime(tmp_path, [make_entry(), with_m(64)])
    first = rt.lookup("moe_gemm", "mlp1", SHAPE)
    assert rt.lookup("moe_gemm", "mlp1", dict(SHAPE)) is first
    near = rt.lookup("moe_gemm", "mlp1", {**SHAPE, "M": 50})
    assert near.source == "nearest" and rt.lookup("moe_gemm", "mlp1", {**SHAPE, "M": 50}) is near
    with pytest.raises(TypeError):
        first.config["BLOCK_M"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        first.source = "default"  # type: ignore[misc]
    # The config served is a copy: even mutating the entry does not change what the cache serves.
    first.entry.config["BLOCK_M"] = 999
    assert rt.lookup("moe_gemm", "mlp1", SHAPE).config["BLOCK_M"] == 16


def test_default_config_result_is_copied(tmp_path):
    shared = {"BLOCK_M": 32}
    rt = RuntimeTable(None, DEV, lambda k, v, s: shared, {})
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        result = rt.lookup("moe_gemm", "mlp1", SHAPE)
    shared["BLOCK_M"] = 1
    assert result.config["BLOCK_M"] == 32


def test_lookup_rejects_bad_shape():
    rt = RuntimeTable(None, DEV, default_config, {})
    with pytest.raises((TypeError, ValueError)):
        rt.lookup("moe_gemm", "mlp1", {"M": -4})


def test_module_exports():
    assert set(table_mod.__all__) >= {"ConfigTable", "RuntimeTable", "TableEntry", "update_table", "shape_key"}
