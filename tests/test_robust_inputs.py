"""Hostile and broken input (issue 12): every case ends with exit code 2 and one ``autotune: error:`` line naming the
problem (or is served safely with one warning), never a traceback, a hang or an unbounded read, and leaves the data
it was given as it was."""

from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest
import torch
from safetensors.torch import save_file

from autotune import cli, defaults, registry
from autotune.device import INTERPRETER
from autotune.errors import TableError
from autotune.model.checkpoint import load_checkpoint
from autotune.model.config import CheckpointError, ModelConfig, read_config_json
from autotune.table import ConfigTable, TableEntry, open_table, update_table, validate
from scripts.write_random_checkpoint import write_random_checkpoint

MOE_SHAPE = {"M": 4, "N": 64, "K": 64, "E": 4, "top_k": 2}
"""An mlp1 shape small enough for the interpreter (R = 8 routed rows, BLOCK_M 16 is the only useful tile)."""

TINY = ModelConfig(num_hidden_layers=2, num_experts=4, experts_per_token=2, vocab_size=64, hidden_size=64,
                   intermediate_size=64, head_dim=16, num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
                   initial_context_length=32, rope_scaling_factor=4.0)
ALLOWED_INFO = ("autotune: no CUDA", "autotune: warning:", "autotune: storage folder", "autotune: --gpus")


def one_error(code: int, err: str, *needles: str) -> str:
    """Exit code 2, no traceback, the last stderr line is the error and names every needle; earlier lines only
    information. Returns the error line."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("autotune: error:"), lines
    assert all(line.startswith(ALLOWED_INFO) for line in lines[:-1]), lines
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def cli_run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (SIGALRM in the main thread)."""
    def expired(signum, frame):
        raise AssertionError(f"no answer within {seconds} s: it hangs")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def moe_default() -> dict:
    return registry.get("moe_gemm").default_config("mlp1", MOE_SHAPE, INTERPRETER)


def entry(config: dict, *, shape: dict = MOE_SHAPE, median_us: float = 10.0) -> TableEntry:
    return TableEntry(kernel="moe_gemm", variant="mlp1", shape=shape, config=config, median_us=median_us,
                      default_median_us=20.0, fingerprint={"triton": "x"}, study="s", trial=1,
                      tuned_at="2026-12-02T00:00:00+00:00")


def write_table(path: Path, entries: list[TableEntry], device_key: str = INTERPRETER.key) -> bytes:
    table = ConfigTable(path)
    table.merge(device_key, INTERPRETER.as_dict(), entries)
    table.save()
    return path.read_bytes()


def storage_with_study(tmp_path: Path, config: dict, name: str = "s.log") -> str:
    """A journal storage holding one finished moe_gemm/mlp1 study on the interpreter whose best trial has
    ``config`` (made with Optuna directly: what ``run`` stores, without tuning)."""
    url = f"journal:{tmp_path / name}"
    from autotune.tuning.storage import open_storage

    storage = open_storage(url)
    study = optuna.create_study(storage=storage, study_name="moe_gemm.mlp1.test", direction="minimize")
    for key, value in (("kernel", "moe_gemm"), ("variant", "mlp1"), ("shape", MOE_SHAPE),
                       ("device_key", INTERPRETER.key), ("space_id", "x"), ("device", INTERPRETER.as_dict()),
                       ("fingerprint", {"triton": "x"}), ("dtype", "float16")):
        study.set_user_attr(key, value)
    study.add_trial(optuna.trial.create_trial(value=7.0, user_attrs={"config": json.dumps(config),
                                                                      "source": "default", "median_us": 7.0}))
    return url


# ---------------------------------------------------------------------------------------------- 1. table paths


def test_export_to_dev_full_refuses_without_reading(capsys, tmp_path):
    url = storage_with_study(tmp_path, moe_default())
    with deadline(30):
        code, _, err = cli_run(capsys, "export", "--storage", url, "--table", "/dev/full")
    one_error(code, err, "/dev/full", "character device, not a regular file")


def test_fifo_table_does_not_hang(capsys, tmp_path):
    fifo = tmp_path / "table.json"
    os.mkfifo(fifo)
    with deadline(30):
        with pytest.raises(TableError, match="a FIFO, not a regular file"):
            open_table(fifo, INTERPRETER)
        url = storage_with_study(tmp_path, moe_default())
        code, _, err = cli_run(capsys, "export", "--storage", url, "--table", str(fifo))
    one_error(code, err, str(fifo), "FIFO")


@pytest.fixture
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    write_random_checkpoint(path, TINY, seed=5)
    return path


def test_generate_with_fifo_table_does_not_hang(capsys, tmp_path, tiny_checkpoint):
    fifo = tmp_path / "t.json"
    os.mkfifo(fifo)
    with deadline(120):
        code, _, err = cli_run(capsys, "generate", "--checkpoint", str(tiny_checkpoint), "--prompt-ids", "1 2",
                               "--max-new-tokens", "1", "--table", str(fifo))
    one_error(code, err, str(fifo), "FIFO")


def _run_argv(tmp_path: Path, table: str, *extra: str) -> list[str]:
    return ["run", "moe_gemm", "--storage", f"sqlite:///{tmp_path / 'db' / 's.db'}", "--table", table,
            "--trials", "1", *extra]


def test_run_refuses_a_directory_table_before_tuning(capsys, tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    code, _, err = cli_run(capsys, *_run_argv(tmp_path, str(folder)))
    one_error(code, err, str(folder), "a directory, not a regular file")
    assert not (tmp_path / "db").exists(), "the storage was opened: tuning had started"


def test_run_refuses_a_parent_that_is_a_file(capsys, tmp_path):
    blocker = tmp_path / "notafolder"
    blocker.write_text("x")
    code, _, err = cli_run(capsys, *_run_argv(tmp_path, str(blocker / "configs.json")))
    one_error(code, err, f"{blocker} is a file, not a folder")
    assert blocker.read_text() == "x"
    assert not (tmp_path / "db").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_run_refuses_a_read_only_folder(capsys, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code, _, err = cli_run(capsys, *_run_argv(tmp_path, str(folder / "configs.json")))
    finally:
        folder.chmod(0o700)
    one_error(code, err, "is not writable")


def test_run_refuses_a_corrupt_table_before_tuning(capsys, tmp_path):
    table = tmp_path / "t.json"
    table.write_text("{broken")
    code, _, err = cli_run(capsys, *_run_argv(tmp_path, str(table)))
    one_error(code, err, str(table), "invalid JSON")
    assert table.read_text() == "{broken"
    assert not (tmp_path / "db").exists()


def test_gpus_on_cpu_is_said_to_be_ignored(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    folder = tmp_path / "tables"
    folder.mkdir()
    code, _, err = cli_run(capsys, *_run_argv(tmp_path, str(folder), "--gpus", "0,1"))
    one_error(code, err, "a directory")
    assert "autotune: --gpus 0,1 is ignored: no CUDA GPU here" in err.splitlines()[:3], err


def test_oversized_table_is_refused_unread(capsys, tmp_path):
    table = tmp_path / "big.json"
    with open(table, "wb") as f:  # sparse: no disk used
        f.truncate(defaults.MAX_TABLE_BYTES + 1)
    url = storage_with_study(tmp_path, moe_default())
    code, _, err = cli_run(capsys, "export", "--storage", url, "--table", str(table))
    one_error(code, err, str(table), "larger than the limit of 64.0 MiB")
    assert table.stat().st_size == defaults.MAX_TABLE_BYTES + 1
    with pytest.raises(TableError, match="larger than the limit"):
        ConfigTable.load(table)


def test_huge_integer_in_table_is_a_table_error(tmp_path):
    table = tmp_path / "t.json"
    table.write_text('{"schema": "gpt-oss-autotune/config-table", "schema_version": 1' + "0" * 5000 + "}")
    with pytest.raises(TableError, match="corrupt table"):
        ConfigTable.load(table)


def test_stale_temp_files_are_removed_fresh_ones_kept(tmp_path):
    table = tmp_path / "configs.json"
    stale, fresh, other = (tmp_path / ".configs.json.abc.tmp", tmp_path / ".configs.json.def.tmp",
                           tmp_path / ".other.json.abc.tmp")
    for path in (stale, fresh, other):
        path.write_text("partial")
    old = time.time() - 10 * defaults.STALE_TMP_AGE_S
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    update_table(table, INTERPRETER.key, INTERPRETER.as_dict(), [entry(moe_default())])
    assert not stale.exists()
    assert fresh.exists() and other.exists()
    assert len(ConfigTable.load(table).entries(INTERPRETER.key)) == 1


# ---------------------------------------------------------------------------------------------- 2. table entries

BAD_CONFIGS = {
    "num_warps=1000": ({"num_warps": 1000}, "num_warps=1000 must be a positive power of two"),
    "num_warps=2**40": ({"num_warps": 2**40}, "num_warps=1099511627776 must be <= 32"),
    "BLOCK_M=2**20": ({"BLOCK_M": 2**20}, "BLOCK_M=1048576 must be <= 1024"),
    "GROUP_M=2**62": ({"GROUP_M": 2**62}, "GROUP_M=4611686018427387904 must be <= 1024"),
    "unknown key": ({"BLOCK_Q": 16}, "unknown moe_gemm config keys ['BLOCK_Q']"),
    "string tile": ({"BLOCK_N": "sixteen"}, "BLOCK_N='sixteen' must be a positive power of two"),
    "float tile": ({"BLOCK_N": 64.0}, "BLOCK_N=64.0 must be a positive power of two"),
    "bool warps": ({"num_warps": True}, "num_warps=True must be a positive power of two"),
    "constraint": ({"path": "mma", "BLOCK_M": 256}, "BLOCK_M=256 > 16"),
}


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_invalid_entry_is_skipped_with_one_warning(tmp_path, name):
    change, needle = BAD_CONFIGS[name]
    bad_shape = {**MOE_SHAPE, "M": 8}
    good = entry(moe_default())
    bad = entry({**moe_default(), **change}, shape=bad_shape)
    write_table(tmp_path / "t.json", [good, bad])
    with pytest.warns(RuntimeWarning) as caught:
        table = open_table(tmp_path / "t.json", INTERPRETER)
    skipped = [str(w.message) for w in caught if "is not served" in str(w.message)]
    assert len(skipped) == 1 and bad.key in skipped[0] and needle in skipped[0], skipped
    assert set(table.skipped) == {bad.key} and needle in table.skipped[bad.key]
    answer = table.lookup("moe_gemm", "mlp1", bad_shape)  # served from the valid neighbour, never the bad entry
    assert answer.source == "nearest" and answer.entry.key == good.key and answer.config.as_dict() == moe_default()


def test_nearest_entry_not_offered_at_the_asked_shape_is_passed_over(tmp_path):
    """A decode-only gemv config (tuned at M = 4, few rows per expert) never stands in for a prefill shape, where the
    search space offers the MMA path only: the next nearest entry does, or else the default (seen on the H200,
    2026-12-02: an mlp2 M = 1 gemv entry served to M = 2048 made pp2048 0.09x of default)."""
    prefill = {**MOE_SHAPE, "M": 256}                      # 128 routed rows per expert: gemv not offered
    gemv = moe_default()
    assert gemv["path"] == "gemv"                            # the interpreter's default at MOE_SHAPE
    mma_prefill = registry.get("moe_gemm").default_config("mlp1", prefill, INTERPRETER)
    assert mma_prefill["path"] == "mma"
    mid = {**MOE_SHAPE, "M": 64}
    mma_mid = registry.get("moe_gemm").default_config("mlp1", mid, INTERPRETER)   # offered at M = 64 and above
    write_table(tmp_path / "one.json", [entry(gemv)])
    only_gemv = open_table(tmp_path / "one.json", INTERPRETER)
    answer = only_gemv.lookup("moe_gemm", "mlp1", prefill)
    assert answer.source == "default" and answer.config.path == "mma"
    [(key, problem)] = only_gemv.passed_over.items()
    assert key[0] == entry(gemv).key and "path='gemv' is not one of ['mma']" in problem
    near = only_gemv.lookup("moe_gemm", "mlp1", {**MOE_SHAPE, "M": 2})   # still offered there: it stands in
    assert near.source == "nearest" and near.config.path == "gemv"

    far_shape = {**MOE_SHAPE, "M": 2048}
    write_table(tmp_path / "two.json", [entry(gemv), entry(mma_mid, shape=far_shape)])
    both = open_table(tmp_path / "two.json", INTERPRETER)
    answer = both.lookup("moe_gemm", "mlp1", mid)                      # log2 distance 4 to the gemv, 5 to M=2048
    assert answer.source == "nearest" and answer.entry.shape["M"] == 2048 and answer.config.path == "mma"


def test_validate_names_unknown_kernel_variant_and_shape():
    assert "unknown kernel 'nope'" in validate.config_problem("nope", "x", {}, {})
    assert "has no variant 'mlp3'" in validate.config_problem("moe_gemm", "mlp3", MOE_SHAPE, moe_default())
    assert "invalid shape" in validate.config_problem("moe_gemm", "mlp1", {"M": 4}, moe_default())
    assert validate.config_problem("moe_gemm", "mlp1", MOE_SHAPE, moe_default(), INTERPRETER) is None


def test_generate_serves_around_an_invalid_entry(capsys, tmp_path, tiny_checkpoint):
    """An entry with num_warps 2**40 for the shape generate asks first: one warning naming it, defaults served,
    exit 0 (it used to reach the launch)."""
    shape = {"M": 2, "N": 2 * TINY.intermediate_size, "K": TINY.hidden_size, "E": TINY.num_experts,
             "top_k": TINY.experts_per_token}
    bad = entry({**registry.get("moe_gemm").default_config("mlp1", shape, INTERPRETER), "num_warps": 2**40},
                shape=shape)
    write_table(tmp_path / "t.json", [bad])
    with pytest.warns(RuntimeWarning) as caught:  # on the command line: one "autotune: warning:" line each
        code, out, err = cli_run(capsys, "generate", "--checkpoint", str(tiny_checkpoint), "--prompt-ids", "1 2",
                                 "--max-new-tokens", "1", "--table", str(tmp_path / "t.json"), "--json")
    assert code == 0, err
    assert "Traceback" not in err
    served = [str(w.message) for w in caught if "is not served" in str(w.message)]
    assert len(served) == 1 and bad.key in served[0] and "num_warps=1099511627776 must be <= 32" in served[0]
    assert len(json.loads(out)["generated_ids"]) == 1


def test_export_refuses_an_invalid_new_entry(capsys, tmp_path):
    table = tmp_path / "t.json"
    before = write_table(table, [entry(moe_default(), shape={**MOE_SHAPE, "M": 8})])
    url = storage_with_study(tmp_path, {**moe_default(), "BLOCK_N": "sixteen"})
    code, _, err = cli_run(capsys, "export", "--storage", url, "--table", str(table))
    one_error(code, err, "refusing to export moe_gemm/mlp1/E=4,K=64,M=4,N=64,top_k=2", "BLOCK_N='sixteen'",
              "the file was not changed")
    assert table.read_bytes() == before


def test_export_refuses_to_keep_an_invalid_stored_entry(capsys, tmp_path):
    table = tmp_path / "t.json"
    stored = entry({**moe_default(), "GROUP_M": 2**62}, shape={**MOE_SHAPE, "M": 8})
    before = write_table(table, [stored])
    url = storage_with_study(tmp_path, moe_default())
    code, _, err = cli_run(capsys, "export", "--storage", url, "--table", str(table))
    one_error(code, err, f"stored entry {stored.key}", "GROUP_M=4611686018427387904 must be <= 1024",
              "fix or remove it")
    assert table.read_bytes() == before


def test_export_of_a_valid_study_still_works(capsys, tmp_path):
    table = tmp_path / "t.json"
    url = storage_with_study(tmp_path, moe_default())
    code, out, err = cli_run(capsys, "export", "--storage", url, "--table", str(table))
    assert code == 0, err
    assert "1 added" in out
    [stored] = ConfigTable.load(table).entries(INTERPRETER.key)
    assert stored.config == moe_default()


# ---------------------------------------------------------------------------------------------- 3-5. checkpoints


def _ckpt(tmp_path: Path, config: dict | None = None, tensors: dict | None = None) -> Path:
    """A copy of a tiny checkpoint with an edited config.json and/or tensors."""
    path = tmp_path / "ckpt"
    write_random_checkpoint(path, TINY, seed=2)
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    if tensors is not None:
        [shard] = path.glob("*.safetensors")
        save_file(tensors, str(shard), metadata={"format": "pt"})
    return path


def _load_error(path: Path, *needles: str) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize("field", ["experts_per_token", "sliding_window", "num_hidden_layers", "head_dim"])
def test_missing_required_field_is_named(tmp_path, field):
    data = {k: v for k, v in TINY.to_dict().items() if k != field}
    _load_error(_ckpt(tmp_path, data), f"missing required field {field}")


def test_missing_field_with_documented_default_is_stated(tmp_path):
    data = {k: v for k, v in TINY.to_dict().items() if k not in ("rope_theta", "swiglu_limit")}
    with pytest.warns(UserWarning, match=r"absent field\(s\) take the gpt-oss defaults: swiglu_limit=7.0, "
                                         r"rope_theta=150000.0"):
        config, _ = load_checkpoint(_ckpt(tmp_path, data))
    assert config.rope_theta == 150000.0 and config.swiglu_limit == 7.0


@pytest.mark.parametrize("change, needles", [
    ({"num_hidden_layers": 1_000_000}, ("num_hidden_layers 1000000 is larger than the limit 1024",)),
    ({"num_hidden_layers": 10**9}, ("num_hidden_layers 1000000000 is larger than the limit",)),
    ({"vocab_size": 2**40}, ("vocab_size",)),
    ({"rope_ntk_beta": 0}, ("rope_ntk_beta must be a finite positive number, got 0.0",)),
    ({"rope_ntk_alpha": -1}, ("rope_ntk_alpha must be a finite positive number, got -1.0",)),
    ({"rope_ntk_alpha": 40.0}, ("rope_ntk_alpha 40.0 must be < rope_ntk_beta",)),
    ({"rope_theta": 1}, ("rope_theta must be > 1",)),
    ({"rope_theta": 10**400}, ("rope_theta must be a finite number",)),
    ({"head_dim": 12}, ("head_dim 12 must be a power of two >= 16",)),
    ({"num_key_value_heads": 8}, ("num_key_value_heads 8 > num_attention_heads 4",)),
    ({"experts_per_token": "2"}, ("experts_per_token must be an integer",)),
])
def test_out_of_range_config_is_refused_before_allocating(tmp_path, change, needles):
    path = _ckpt(tmp_path, {**TINY.to_dict(), **change})
    start = time.monotonic()
    _load_error(path, "config.json", *needles)
    assert time.monotonic() - start < 5


def test_config_json_fifo_and_oversize(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with deadline(10), pytest.raises(CheckpointError, match="FIFO"):
        read_config_json(fifo)
    big = tmp_path / "big" / "config.json"
    big.parent.mkdir()
    big.write_text(" " * (defaults.MAX_CONFIG_JSON_BYTES + 1))
    with pytest.raises(CheckpointError, match="larger than the limit"):
        read_config_json(big)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply|config.json"):
        read_config_json(deep)


def test_fewer_layers_in_config_than_in_files_is_refused(tmp_path):
    path = _ckpt(tmp_path, {**TINY.to_dict(), "num_hidden_layers": 1})
    _load_error(path, "block.1.", "belongs to layer 1", "num_hidden_layers 1")


@pytest.mark.parametrize("dtype, code", [(torch.float64, "F64"), (torch.float8_e4m3fn, "F8_E4M3")])
def test_fp64_and_fp8_tensors_are_refused_by_name(tmp_path, dtype, code):
    _, tensors = load_checkpoint(_ckpt(tmp_path / "src"))
    tensors = {n: t.contiguous() for n, t in tensors.items()}
    tensors["block.0.attn.qkv.weight"] = tensors["block.0.attn.qkv.weight"].to(dtype)
    _load_error(_ckpt(tmp_path, tensors=tensors), "block.0.attn.qkv.weight", f"has dtype {code}",
                "expected BF16, F16 or F32")


def test_safetensors_header_length_bounded(tmp_path):
    path = _ckpt(tmp_path)
    [shard] = path.glob("*.safetensors")
    data = bytearray(shard.read_bytes())
    data[:8] = (defaults.MAX_SAFETENSORS_HEADER_BYTES + 1).to_bytes(8, "little")
    shard.write_bytes(bytes(data))
    _load_error(path, "over the limit")
    data[:8] = (len(data)).to_bytes(8, "little")
    shard.write_bytes(bytes(data))
    _load_error(path, "truncated safetensors file")
    shard.write_bytes(b"\x01\x02")
    _load_error(path, "shorter than the 8-byte header length")
    shard.unlink()
    os.mkfifo(shard)
    with deadline(10):
        _load_error(path, "FIFO")


def test_generate_asks_beyond_the_context(capsys, tiny_checkpoint):
    code, _, err = cli_run(capsys, "generate", "--checkpoint", str(tiny_checkpoint), "--prompt-ids", "1",
                           "--max-new-tokens", str(10**12))
    from autotune.model.loading import MAX_POSITIONS

    one_error(code, err, "positions asked for", f"1..{MAX_POSITIONS}")


# ---------------------------------------------------------------------------------------------- 6. storage


def test_storage_in_a_missing_folder_is_said(capsys, tmp_path):
    db = tmp_path / "new" / "deeper" / "s.db"
    code, _, err = cli_run(capsys, "list", "--storage", f"sqlite:///{db}")
    assert code == 0, err
    assert err.splitlines()[0] == f"autotune: storage folder {db.parent} does not exist: creating it for " \
                                  f"sqlite:///{db}", err
    assert db.parent.is_dir()


def test_storage_under_a_file_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("keep")
    code, _, err = cli_run(capsys, "list", "--storage", f"journal:{blocker / 'j.log'}")
    one_error(code, err, f"{blocker} is a file, not a folder")
    assert blocker.read_text() == "keep"
