"""Reliability: a run killed at any moment resumes to the uninterrupted result; bad input never writes a file."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ntng import cli

PRETRAIN = [sys.executable, "-m", "ntng.cli", "pretrain", "--preset", "tiny", "--model", "bert",
            "--method", "baseline", "--budget", "4s"]


def last_step(run_dir: Path) -> int:
    """The step of the last complete metrics row (-1 before the first)."""
    try:
        lines = (run_dir / "metrics.csv").read_text().splitlines()
    except OSError:
        return -1
    steps = [int(line.split(",")[0]) for line in lines[1:] if line.split(",")[0].isdigit()]
    return steps[-1] if steps else -1


def test_a_run_killed_at_random_moments_resumes_to_the_uninterrupted_result(built_fixture, tmp_path):
    data_dir, _ = built_fixture
    env = {**os.environ, "NTNG_DATA_DIR": str(data_dir)}
    subprocess.run([*PRETRAIN, "--out", str(tmp_path / "whole")], env=env, check=True, capture_output=True,
                   timeout=600)
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert whole["status"] == "complete" and whole["steps"] > 10

    rng = random.Random(20231121)
    # kill points: as soon as the run directory appears (before any checkpoint), then at random steps, each a
    # random fraction of a step later (mid-step, mid-evaluation or mid-checkpoint-write)
    targets = [-1, *sorted(rng.sample(range(1, whole["steps"] - 1), 5))]
    run = tmp_path / "killed"
    kills = 0
    for _attempt in range(40):
        resume = (run / "config.json").exists()
        proc = subprocess.Popen([*PRETRAIN, "--out", str(run), *(["--resume"] if resume else [])], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        target = targets[kills] if kills < len(targets) else None
        deadline = time.monotonic() + 600
        while proc.poll() is None and target is not None and time.monotonic() < deadline:
            reached = (run / "config.json").exists() if target < 0 else last_step(run) >= target
            if reached:
                time.sleep(rng.uniform(0.0, 0.15))
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        _, stderr = proc.communicate(timeout=600)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            summary = run / "summary.json"
            if summary.exists():  # never "complete" for a run that is not
                assert json.loads(summary.read_text())["status"] == "running"
            continue
        assert proc.returncode == 0, stderr
        break
    assert kills >= 5, f"only {kills} kills landed"
    resumed = json.loads((run / "summary.json").read_text())
    assert (resumed["status"], resumed["steps"], resumed["rst_s"]) == ("complete", whole["steps"], whole["rst_s"])
    assert resumed["final_val_loss"] == whole["final_val_loss"]  # same machine: the same losses
    assert [e["val_loss"] for e in resumed["evals"]] == [e["val_loss"] for e in whole["evals"]]
    rows = [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert rows == [str(s) for s in range(0, whole["steps"] + 1)]  # every step logged once, in order
    assert not list(run.glob(".*.tmp-*"))  # no half-written file left behind


# --- bad input: generated command lines ---------------------------------------------------------------------

def _table_files() -> dict[str, str]:
    """RST tables for the generator: a missing path, a malformed one and an empty one (outside the cwd)."""
    folder = Path(tempfile.mkdtemp(prefix="ntng-bad-tables-"))
    (folder / "malformed.json").write_text('{"format": 1, "units": {"train": {"1": "fast"}}')
    (folder / "empty.json").write_text("")
    (folder / "list.json").write_text("[1, 2]")
    return {name: str(folder / name) for name in ("malformed.json", "empty.json", "list.json")} | {
        "missing.json": str(folder / "missing.json")}


TABLES = _table_files()
BUDGETS = st.one_of(
    st.sampled_from(["10", "-5m", "1e999h", "0s", "nan s", "infs", "5x", "s", "", "10 m", "1e-9s", "3.5.1m", "-0s"]),
    st.text(max_size=8),
    st.sampled_from(["5s", "2m", "1h"]),  # valid: the run then fails on the missing data directory
)
WORDS = st.one_of(st.text(max_size=10), st.sampled_from(["bert", "t5", "baseline", "rho_loss", "smoke", "0"]))


@st.composite
def pretrain_arguments(draw) -> list[str]:
    args = ["pretrain"]
    options = {
        "--model": st.one_of(st.sampled_from(["bert", "t5", "gpt2", "BERT", ""]), WORDS),
        "--method": st.one_of(st.sampled_from(["baseline", "lion", "rho_loss", "magic", "selective-backprop"]),
                              WORDS),
        "--budget": BUDGETS,
        "--preset": st.sampled_from(["smoke", "mini", "paper", "tiny", "huge", ""]),
        "--seed": st.one_of(st.sampled_from(["0", "-1", "x", "1.5", str(2**70)]), WORDS),
        "--rst-table": st.sampled_from(sorted(TABLES.values())),
        "--out": st.sampled_from(["run", "a-file/run", ""]),
        "--data-split": st.sampled_from(["full", "rho_main", "most"]),
    }
    for flag, values in options.items():
        if draw(st.booleans()) or flag in ("--model", "--method", "--budget"):
            args += [flag, draw(values)]
    args += draw(st.lists(st.sampled_from(["--resume", "--free-scoring", "--free-hessian", "--verbose", "extra"]),
                          max_size=2))
    return args


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(args=["sweep", "\x85"])  # NEL: str.splitlines() breaks there, so the echoed argument must be escaped
@given(args=st.one_of(pretrain_arguments(),
                      st.lists(st.one_of(WORDS, st.sampled_from(["--budget", "--preset", "finetune", "--run",
                                                                 "--task", "sweep", "--jobs", "book"])),
                               max_size=6)))
def test_bad_command_lines_exit_2_with_one_line_and_write_nothing(args):
    with tempfile.TemporaryDirectory() as cwd:
        Path(cwd, "a-file").write_text("not a directory\n")
        before = sorted(Path(cwd).rglob("*"))
        stderr = io.StringIO()
        old_cwd, old_data = os.getcwd(), os.environ.get("NTNG_DATA_DIR")
        os.environ["NTNG_DATA_DIR"] = str(Path(cwd) / "no-data-here")
        try:
            os.chdir(cwd)
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = cli.main(args)
                except SystemExit as exc:  # --help, or argparse giving up
                    code = exc.code
        finally:
            os.chdir(old_cwd)
            if old_data is None:
                os.environ.pop("NTNG_DATA_DIR", None)
            else:
                os.environ["NTNG_DATA_DIR"] = old_data
        if code == 0:  # a help request is the only success a bad command line may have
            assert any(a in ("-h", "--help") or (len(a) > 1 and "--help".startswith(a)) for a in args), args
            return
        lines = stderr.getvalue().splitlines()
        assert code == 2, (args, code, stderr.getvalue())
        assert len(lines) == 1 and lines[0].startswith("ntng: error: "), (args, stderr.getvalue())
        assert sorted(Path(cwd).rglob("*")) == before, args


# --- corrupt records: every reader names the damaged file ----------------------------------------------------

def test_corrupt_records_give_errors_naming_the_file(built_fixture, tmp_path):
    import pytest

    from ntng import read_metrics
    from ntng.errors import RunError, UsageError
    from ntng.training import loop as train
    from ntng.training.records import RunDir
    from ntng.training.spec import resolve

    data_dir, _ = built_fixture
    run = tmp_path / "run"
    train.pretrain(model="bert", method="baseline", budget="1s", preset="tiny", out_dir=run, data_dir=data_dir,
                   log=lambda m: None)
    metrics = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(metrics[:-7])  # cut inside the last row
    with pytest.raises(RunError, match=r"corrupt .*metrics\.csv: truncated"):
        read_metrics(run)
    (run / "metrics.csv").write_text(metrics.replace("step,", "stp,", 1))
    with pytest.raises(RunError, match=r"metrics\.csv: unexpected header"):
        read_metrics(run)
    (run / "metrics.csv").write_text(metrics)
    assert len(read_metrics(run)) > 1

    (run / "summary.json").write_text('{"status": "compl')
    with pytest.raises(RunError, match=r"corrupt .*summary\.json"):
        RunDir(run).read_summary()
    (run / "config.json").write_text("[]")
    with pytest.raises(UsageError, match=r"cannot resume: corrupt .*config\.json"):
        resolve("bert", "baseline", "1s", "tiny", 0, run, resume=True, data_dir=data_dir)
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match=r"corrupt .*checkpoint\.pt"):
        RunDir(run).load_checkpoint()


# --- the grid meets every fault at once ---------------------------------------------------------------------

def test_a_sweep_with_a_failure_a_divergence_and_a_killed_cell_reports_each(built_fixture, tmp_path, monkeypatch,
                                                                            capsys):
    """`faulty`: two BERT blocks (layer stacking needs a multiple of 4: that cell fails) and Lion at lr 1e6 (that
    cell diverges); the baseline's cell is killed with its whole sweep mid-run, then the sweep is run again."""
    from ntng.training.records import RunDir

    from conftest import TINY_PRESET

    data_dir, _ = built_fixture
    presets = tmp_path / "presets.json"
    faulty = {**TINY_PRESET, "name": "faulty", "bert": {"num_layers": 2},
              "bert_recipe": {"eval_sequences": 32, "grad_clip": 0.0}, "method_options": {"bert": {"lion": {"lr": 1e6}}}}
    presets.write_text(json.dumps([TINY_PRESET, faulty]))
    env = {**os.environ, "NTNG_PRESETS_FILE": str(presets), "NTNG_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    results = tmp_path / "results"
    args = ["sweep", "--preset", "faulty", "--models", "bert", "--methods", "baseline", "lion", "layer_stacking",
            "--budgets", "4s", "--results", str(results)]
    baseline = results / "faulty/bert/baseline/4s/seed0"
    proc = subprocess.Popen([sys.executable, "-m", "ntng.cli", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    while last_step(baseline) < 5 or not (baseline / "checkpoint.pt").exists():  # past its first checkpoint
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before it could be killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep, papermill and the kernel together
    proc.wait(timeout=60)
    killed_at = last_step(baseline)
    assert RunDir(baseline).read_summary()["status"] == "running"

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = cli.main(args)
    out, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1 and err.startswith("ntng: error: ")
    status = {line.split()[1]: line.split()[4] for line in out.splitlines() if line.startswith("bert ")}
    assert status == {"baseline": "complete", "lion": "diverged", "layer_stacking": "failed"}, out
    done = RunDir(baseline).read_summary()
    assert done["status"] == "complete" and done["rst_s"] >= done["budget_rst_s"]
    rows = [line.split(",")[0] for line in (baseline / "metrics.csv").read_text().splitlines()[1:]]
    assert rows == [str(s) for s in range(done["steps"] + 1)] and done["steps"] > killed_at  # resumed, whole
    lion = RunDir(results / "faulty/bert/lion/4s/seed0").read_summary()
    assert lion["status"] == "diverged" and "non-finite training loss" in lion["error"]
    stacking = RunDir(results / "faulty/bert/layer_stacking/4s/seed0").read_summary()
    assert stacking["status"] == "failed" and "layer_stacking" in stacking["error"]
