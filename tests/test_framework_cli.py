"""The command line's contract for user errors: exit code 2, one ``autotune: error: ...`` line on stderr, no traceback;
``--help`` of every subcommand, and ``list``/``show`` on an empty storage.

Most cases call :func:`autotune.cli.main` in-process (capsys); a few run ``python -m autotune`` to prove that no
traceback reaches a user's terminal. Every ``run`` that must fail before any tuning also passes ``--trials 0`` when
the error it tests is checked before the budget: if the error were not detected, the command would stop at
"--trials must be at least 1" instead of starting a study (and the message assertion fails).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autotune import cli
from autotune.tuning import study as study_mod
from autotune.tuning.storage import open_storage
from tests import fault_kernel as fk

REPO = Path(__file__).resolve().parent.parent
INFO_PREFIXES = ("autotune: no CUDA GPU found", "device: ")
"""Lines ``run`` prints on stderr before it can fail: the interpreter notice, the device line."""


def assert_user_error(code: int, err: str, *needles: str) -> str:
    """Exit code 2, exactly one error line (the last), informational lines only otherwise, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("autotune: error:")]
    assert len(errors) == 1, lines
    assert lines[-1] == errors[0], lines
    assert all(line.startswith(INFO_PREFIXES) for line in lines[:-1]), lines
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture()
def paths(tmp_path):
    """A fresh storage URL and table path (never the project's studies/ files)."""
    return {"storage": f"sqlite:///{tmp_path / 's.db'}", "table": str(tmp_path / "t.json"), "tmp": tmp_path}


def run_main(capsys, argv) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_cli(*args: str, env_extra: dict | None = None, timeout: float = 60) -> tuple[int, str, str, float]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "autotune", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env_extra or {})})
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start


def run_args(paths, *extra: str) -> list[str]:
    return ["run", "moe_gemm", "--storage", paths["storage"], "--table", paths["table"], *extra]


# ---------------------------------------------------------------------------------------------------- subprocess


def test_unknown_kernel_subprocess(paths):
    code, out, err, _ = run_cli(*run_args(paths)[:1], "no_such_kernel", "--storage", paths["storage"])
    assert_user_error(code, err, "unknown kernel 'no_such_kernel'", "moe_gemm")
    assert out == ""


@pytest.mark.parametrize("url", ["notaurl", "postgresql://nohost:1/x"])
def test_bad_storage_url_subprocess_fails_fast(paths, url):
    code, out, err, elapsed = run_cli("run", "moe_gemm", "--storage", url, "--table", paths["table"], "--trials", "1",
                                      timeout=30)
    assert_user_error(code, err, "cannot open storage", repr(url))
    assert elapsed < 10, f"bad storage URL took {elapsed:.1f} s to fail"
    assert not Path(paths["table"]).exists()


def test_malformed_shapes_subprocess(paths):
    code, _, err, _ = run_cli(*run_args(paths, "--shapes", "M=1,x", "--trials", "0"))
    assert_user_error(code, err, "--shapes", "'M=1,x'")


# ---------------------------------------------------------------------------------------------------- in-process


@pytest.mark.parametrize("command", [["run", "no_such_kernel"], ["show", "no_such_kernel"],
                                     ["export", "no_such_kernel"]])
def test_unknown_kernel(capsys, paths, command):
    code, _, err = run_main(capsys, [*command, "--storage", paths["storage"]])
    assert_user_error(code, err, "unknown kernel 'no_such_kernel'")


@pytest.mark.parametrize("variants", ["mlp3", "mlp1,bogus", "mlp1,"])
def test_unknown_variant(capsys, paths, variants):
    code, _, err = run_main(capsys, run_args(paths, "--variants", variants, "--trials", "0"))
    assert_user_error(code, err, "has no variant")


@pytest.mark.parametrize("shapes", ["M=1,x", "M", "=3", "M=", "M=-1", "1M=2", "M=1.5", "  ", ";"])
def test_malformed_shapes(capsys, paths, shapes):
    code, _, err = run_main(capsys, run_args(paths, "--shapes", shapes, "--trials", "0"))
    assert_user_error(code, err, "malformed --shapes")


def test_empty_shapes_rejected(capsys, paths):
    code, _, err = run_main(capsys, run_args(paths, "--shapes", "", "--trials", "0"))
    assert_user_error(code, err, "malformed --shapes")


def test_shapes_unknown_dimension(capsys, paths):
    code, _, err = run_main(capsys, run_args(paths, "--shapes", "Q=1", "--trials", "0"))
    assert_user_error(code, err, "--shapes names ['Q']", "hidden")


def test_shapes_rejected_by_kernel(capsys, paths):
    # accepted by the parser, refused by the kernel's model_shapes (K must be a multiple of 32): no study starts
    code, _, err = run_main(capsys, run_args(paths, "--shapes", "hidden=33", "--trials", "1"))
    assert_user_error(code, err, "invalid shape dimensions")
    assert not optuna.get_all_study_names(storage=open_storage(paths["storage"]))


@pytest.mark.parametrize("trials", ["0", "-3"])
def test_trials_must_be_positive(capsys, paths, trials):
    code, _, err = run_main(capsys, run_args(paths, "--trials", trials))
    assert_user_error(code, err, "--trials must be at least 1")


@pytest.mark.parametrize("url", ["notaurl", "postgresql://nohost:1/x", "mysql://nohost:1/x"])
def test_bad_storage_url(capsys, paths, url):
    for argv in (run_args(paths, "--trials", "1")[:2] + ["--storage", url, "--table", paths["table"], "--trials", "1"],
                 ["list", "--storage", url], ["show", "moe_gemm", "--storage", url], ["export", "--storage", url]):
        start = time.monotonic()
        code, _, err = run_main(capsys, argv)
        assert_user_error(code, err, "cannot open storage")
        assert time.monotonic() - start < 10, argv


def test_sqlite_storage_in_unwritable_place(capsys, paths):
    blocker = paths["tmp"] / "file"
    blocker.write_text("x")
    code, _, err = run_main(capsys, ["list", "--storage", f"sqlite:///{blocker}/sub/s.db"])
    assert_user_error(code, err, "cannot open storage")


@pytest.mark.parametrize("text,needle", [("{bad", "not valid JSON"), ('{"BLOCK_M": 16', "not valid JSON"),
                                         ("[1]", "wants a JSON object"), ('"x"', "wants a JSON object"),
                                         ("", "not valid JSON")])
def test_enqueue_invalid_json(capsys, paths, text, needle):
    code, _, err = run_main(capsys, run_args(paths, "--enqueue", text, "--trials", "1"))
    assert_user_error(code, err, "--enqueue", needle)
    assert not Path(paths["table"]).exists()


@pytest.mark.parametrize("config,needle", [({"BLOCK_M": 7}, "BLOCK_M=7 is not one of"),
                                           ({"dequant": "magic"}, "dequant='magic' is not one of"),
                                           ({"no_such_param": 1}, "unknown parameters ['no_such_param']")])
def test_enqueue_config_outside_space(capsys, paths, config, needle):
    # validated against the search space after the workers start, before any study is created
    code, _, err = run_main(capsys, run_args(paths, "--shapes", "M=1", "--variants", "mlp1", "--trials", "1",
                                             "--enqueue", json.dumps(config)))
    assert_user_error(code, err, needle)
    assert not optuna.get_all_study_names(storage=open_storage(paths["storage"]))
    assert not Path(paths["table"]).exists()


def test_unknown_preset(capsys, paths):
    code, _, err = run_main(capsys, run_args(paths, "--preset", "no_such_preset", "--trials", "0"))
    assert_user_error(code, err, "unknown preset 'no_such_preset'")


def test_explicit_preset_honoured_on_cpu(capsys, paths, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_PLUGINS", "tests.fault_kernel")
    preset = fk.write_preset(paths["tmp"] / "p.toml")
    code, _, err = run_main(capsys, ["run", fk.NAME, "--preset", str(preset), "--storage", paths["storage"],
                                     "--trials", "0"])
    assert_user_error(code, err, "--trials must be at least 1")  # i.e. the preset was accepted


@pytest.mark.parametrize("body", ["description = 'x'\n", "[moe_gemm]\nvariants = ['mlp1']\n", "[moe_gemm\n",
                                  "[moe_gemm]\nvariants = ['mlp1']\ntrials = 2\nM = []\n"])
def test_malformed_preset_file(capsys, paths, monkeypatch, body):
    from autotune import defaults

    preset = paths["tmp"] / "bad.toml"
    preset.write_text(body)
    monkeypatch.setattr(defaults, "CPU_PRESET", str(preset))  # see test_unknown_preset: --preset alone is ignored
    code, _, err = run_main(capsys, run_args(paths, "--preset", str(preset), "--trials", "0"))
    assert_user_error(code, err, str(preset))


# ---------------------------------------------------------------------------------------------------- export


def _storage_with_one_study(url: str) -> None:
    storage = open_storage(url)
    key = study_mod.StudyKey.of("moe_gemm", "mlp1", {"M": 1, "N": 128, "K": 64, "E": 4, "top_k": 2},
                                "triton-interpreter", "abc123")
    study = study_mod.create(storage, key, optuna.samplers.RandomSampler(seed=0), device_info={"name": "test"})
    trial = study.ask()
    study_mod.claim(trial, {"BLOCK_M": 16})
    study.tell(trial, 5.0)


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe garbage", b'{"schema": "something else"}',
                                     b'{"schema": "gpt-oss-autotune/config-table", "schema_version": 99, '
                                     b'"devices": {}}', b"[]"])
def test_export_corrupt_table_left_untouched(capsys, paths, content):
    _storage_with_one_study(paths["storage"])
    table = Path(paths["table"])
    table.write_bytes(content)
    before = os.stat(table)
    code, _, err = run_main(capsys, ["export", "--storage", paths["storage"], "--table", str(table)])
    assert_user_error(code, err, str(table))
    assert table.read_bytes() == content
    assert os.stat(table).st_mtime_ns == before.st_mtime_ns
    assert not list(table.parent.glob("t.json.*.tmp")) and not list(table.parent.glob(".t.json*"))


def test_export_corrupt_table_subprocess(paths):
    _storage_with_one_study(paths["storage"])
    table = Path(paths["table"])
    table.write_bytes(b'{"devices": ')
    code, out, err, _ = run_cli("export", "--storage", paths["storage"], "--table", str(table))
    assert_user_error(code, err, "corrupt table")
    assert table.read_bytes() == b'{"devices": '


def test_export_writes_table(capsys, paths):
    _storage_with_one_study(paths["storage"])
    code, out, err = run_main(capsys, ["export", "--storage", paths["storage"], "--table", paths["table"]])
    assert code == 0, err
    assert "1 added" in out
    doc = json.loads(Path(paths["table"]).read_text())
    assert list(doc["devices"]) == ["triton-interpreter"]


# ---------------------------------------------------------------------------------------------------- help, list, show


@pytest.mark.parametrize("command", [[], ["run"], ["list"], ["show"], ["export"]])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as exc:
        cli.main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m autotune")


def test_help_subprocess():
    code, out, err, _ = run_cli("run", "--help")
    assert code == 0 and "--enqueue" in out and "--trial-timeout" in out and err == ""


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["run"], ["run", "moe_gemm", "--trials", "many"],
                                  ["run", "moe_gemm", "--sampler", "nope"]])
def test_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("autotune: error:") and "(see --help)" in err


def test_list_empty_storage(capsys, paths):
    code, out, err = run_main(capsys, ["list", "--storage", paths["storage"]])
    assert code == 0, err
    assert "moe_gemm" in out and "tiny_cpu" in out
    assert "(none)" in out


def test_list_shows_plugin_kernel(capsys, paths, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_PLUGINS", "tests.fault_kernel")
    code, out, err = run_main(capsys, ["list", "--storage", paths["storage"]])
    assert code == 0, err
    assert fk.NAME in out


def test_show_empty_storage(capsys, paths):
    code, out, err = run_main(capsys, ["show", "moe_gemm", "--storage", paths["storage"]])
    assert code == 0, err
    assert "no tuned studies of moe_gemm" in out


def test_show_one_study(capsys, paths):
    _storage_with_one_study(paths["storage"])
    code, out, err = run_main(capsys, ["show", "moe_gemm", "--storage", paths["storage"]])
    assert code == 0, err
    assert "BLOCK_M" in out and "5.0" in out
