"""The command line: help everywhere, one-line errors with exit 2 and nothing written, `ntng data` end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ntng import cli

SUBCOMMANDS = ("data", "calibrate", "pretrain", "finetune", "sweep", "book")


def run_cli(args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NTNG_DATA_DIR": str(cwd / "data")}
    return subprocess.run([sys.executable, "-m", "ntng.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*"))


@pytest.mark.parametrize("command", [(), *[(c,) for c in SUBCOMMANDS]])
def test_help_for_every_subcommand(command, tmp_path):
    proc = run_cli([*command, "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ntng")
    assert not files_under(tmp_path)


BAD_ARGUMENTS = [
    [],
    ["frobnicate"],
    ["pretrain", "--model", "gpt2", "--method", "baseline", "--budget", "10s"],
    ["pretrain", "--model", "bert", "--method", "magic", "--budget", "10s"],
    ["pretrain", "--model", "bert", "--method", "baseline", "--budget", "10"],
    ["pretrain", "--model", "bert", "--method", "baseline", "--budget", "-5m"],
    ["pretrain", "--model", "bert", "--method", "baseline", "--budget", "1e999h"],
    ["pretrain", "--model", "bert", "--method", "baseline", "--budget", "0s"],
    ["pretrain", "--model", "bert", "--method", "baseline", "--budget", "10s", "--preset", "huge"],
    ["pretrain", "--model", "bert", "--method", "baseline", "--budget", "10s", "--seed", "-1"],
    ["pretrain", "--model", "bert", "--method", "baseline", "--budget", "10s", "--rst-table", "missing.json"],
    ["pretrain", "--model", "bert"],
    ["calibrate", "--preset", "smoke"],
    ["sweep", "--jobs", "0"],
    ["sweep", "--budgets", "5x"],
    ["data", "--corpus", "wikipedia"],
    ["data", "--preset", "huge"],
    ["data", "--c4-docs", "many"],
    ["book", "--preset", "nope"],
]


@pytest.mark.parametrize("args", BAD_ARGUMENTS, ids=lambda a: " ".join(a) or "(nothing)")
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(args, tmp_path):
    proc = run_cli(args, tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ntng: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not files_under(tmp_path)


def test_data_command_builds_then_is_a_no_op(fixture_env, capsys):
    assert cli.main(["data", "--data-dir", str(fixture_env), "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "ntng data: built" in out and "characters" in out and "tokens" in out
    assert cli.main(["data", "--data-dir", str(fixture_env), "--preset", "tiny"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_data_dir_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    target = tmp_path / "data"
    target.write_text("not a directory")
    assert cli.main(["data", "--data-dir", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ntng: error: ") and "not a directory" in err and err.count("\n") == 1


def test_runtime_failure_exits_1_with_one_line(fixture_env, capsys, monkeypatch):
    from ntng.data import sources as src

    (fixture_env / "raw" / src.NLP_CORPUS.filename).unlink()
    monkeypatch.setattr("shutil.which", lambda name: None)  # no npm on this machine
    assert cli.main(["data", "--data-dir", str(fixture_env), "--preset", "tiny"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ntng: error: npm is needed") and err.count("\n") == 1


def test_an_unexpected_exception_is_still_one_line(monkeypatch, capsys):
    def boom(args):
        raise KeyError("surprise")

    monkeypatch.setattr(cli, "cmd_data", boom)
    assert cli.main(["data"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ntng: error: unexpected KeyError") and err.count("\n") == 1
