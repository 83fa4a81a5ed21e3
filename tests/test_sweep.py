"""The papermill grid (`ntng sweep`): local and Ray executors, skip / resume / fail alone, progress, notebook docs.

Every cell is a real papermill execution of notebooks/pretrain.ipynb at the `tiny` preset (conftest) on the fixture
corpus; the Ray test starts a real local Ray runtime.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_runs import metrics

from ntng import cli
from ntng.errors import UsageError
from ntng.experiments import executors, grid
from ntng.experiments.cells import cell_state, plan_grid, run_order
from ntng.methods import build_method
from ntng.training import loop as train
from ntng.training import progress
from ntng.training.records import RunDir
from ntng.training.spec import changed_settings, resolve, settings_in_force

from conftest import TINY_PRESET

ROOT = Path(__file__).resolve().parents[1]
# methods x seeds, on T5 (the tiny T5 trains 5 s of RST in a few seconds of wall time; BERT is tested below)
GRID = {"preset": "tiny", "models": ["t5"], "methods": ["baseline", "lion"], "budgets": ["5s"], "seeds": [0, 1]}
CELLS = [("baseline", 0), ("baseline", 1), ("lion", 0), ("lion", 1)]


def quiet(message):
    pass


def rows_by_name(rows):
    return {f"{r['model']}/{r['method']}/{r['budget']}/seed{r['seed']}": r for r in rows}


def notebook_text(path: Path) -> str:
    """Every stream and error output of an executed notebook, joined."""
    nb = json.loads(path.read_text())
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")) + "\n".join(out.get("traceback", [])))
    return "\n".join(parts)


@pytest.fixture
def one_thread(monkeypatch):
    """Training in this process and in the cells' kernels on one thread: on a busy machine (or one shared with
    other jobs) a second OpenMP thread mostly waits for the first, and tiny models gain nothing from it."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def local_grid(built_fixture, tmp_path_factory):
    """The 2 x 2 grid (baseline, lion) x seeds (0, 1) at 5 s of RST, run once on the local executor, 2 at a time."""
    data_dir, _ = built_fixture
    results = tmp_path_factory.mktemp("local") / "results"
    lines = []
    rows = grid.sweep(**GRID, jobs=2, results=results, data_dir=data_dir, log=lines.append)
    return results, rows, lines


def test_grid_completes_locally_and_a_second_call_runs_nothing(local_grid, built_fixture, monkeypatch, capsys):
    results, rows, lines = local_grid
    assert [(r["method"], r["seed"]) for r in rows] == CELLS and {r["status"] for r in rows} == {"complete"}
    for row in rows:
        run_dir = results / "tiny" / "t5" / row["method"] / "5s" / f"seed{row['seed']}"
        summary = RunDir(run_dir).read_summary()
        assert summary["status"] == "complete" and 5.0 <= summary["rst_s"] < 6.0
        assert (row["rst_s"], row["wall_s"], row["final_val_loss"]) == (
            summary["rst_s"], summary["wall_s"], summary["final_val_loss"])
        assert row["error"] is None and not row["resumed"] and row["elapsed_s"] > summary["wall_s"]
        for name in ("config.json", "metrics.csv", "checkpoint.pt", "notebook.ipynb"):
            assert (run_dir / name).is_file(), name
        executed = json.loads((run_dir / "notebook.ipynb").read_text())
        injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert injected and f'out_dir = "{run_dir}"' in "".join(injected[0]["source"])
        assert any("image/png" in o.get("data", {}) for c in executed["cells"] for o in c.get("outputs", []))
        text = notebook_text(run_dir / "notebook.ipynb")
        assert text.count("val_loss") >= 10 and "s RST [" not in text  # one line per eval, no bar
        assert not list(run_dir.glob(".notebook-running-*"))
    assert lines[0].startswith("grid of 4 cells at preset tiny") and "0 finished before, 4 to run" in lines[0]
    assert sorted(line.split("]")[0] for line in lines[1:]) == ["[1/4", "[2/4", "[3/4", "[4/4"]

    def must_not_run(*args, **kwargs):
        raise AssertionError("a complete cell was started again")

    monkeypatch.setattr(executors, "run_cell", must_not_run)
    monkeypatch.setenv("NTNG_DATA_DIR", str(built_fixture[0]))
    stamps = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    code = cli.main(["sweep", "--preset", "tiny", "--models", "t5", "--methods", "baseline", "lion",
                     "--budgets", "5s", "--seeds", "0", "1", "--results", str(results)])
    out = capsys.readouterr().out
    assert code == 0
    assert "4 finished before, 0 to run" in out
    assert "4 cells: 0 complete, 4 skipped (already complete), 0 failed, 0 diverged" in out
    table = [line.split() for line in out.splitlines() if line.startswith("t5 ")]
    assert len(table) == 4 and all(line[4] == "skipped" for line in table)
    finals = {(line[1], int(line[3])): float(line[7]) for line in table}
    assert finals == {(r["method"], r["seed"]): round(r["final_val_loss"], 4) for r in rows}
    assert stamps == {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}


def test_a_run_made_before_a_default_changed_is_not_taken_for_the_cell(local_grid, built_fixture, monkeypatch):
    """Tuning moved Lion's peak after the grid ran: its Lion runs are not what the grid would run now, so they are
    reported as failed and kept; the baseline's recipe did not change (the Lion field is Lion's alone)."""
    from dataclasses import replace

    results, rows, _ = local_grid
    tiny = grid.get_preset("tiny")
    halved = build_method("lion", "t5", tiny).settings()["lr"] / 2
    retuned = replace(tiny, method_options={"t5": {"lion": {"lr": halved}}})
    monkeypatch.setattr(grid, "get_preset", lambda name: retuned)
    monkeypatch.setattr(executors, "run_cell", lambda *a, **k: pytest.fail("a finished cell was started again"))
    stamps = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    again = grid.sweep(**GRID, results=results, data_dir=built_fixture[0], log=lambda m: None)
    assert {(r["method"], r["status"]) for r in again} == {("baseline", "skipped"), ("lion", "failed")}
    lion = next(r for r in again if r["method"] == "lion")
    assert "method_settings.lr" in lion["error"] and "move it away" in lion["error"]
    assert stamps == {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}  # nothing rewritten


def test_a_change_concerns_only_the_runs_that_read_it():
    """The baseline's peak moving concerns the runs built on the recipe's optimizer, and the methods' own peaks that
    keep the paper's ratio to it (Sophia's at `cpu`), not a peak the preset tuned (Lion's); a method's own value
    concerns that method alone; checkpointing concerns none."""
    from dataclasses import replace

    from ntng.presets import get_preset

    cpu = get_preset("cpu")
    options = {**cpu.method_options, "bert": {**cpu.method_options["bert"], "sophia": {"rho": 0.01}}}
    moved = replace(cpu, bert_recipe=replace(cpu.bert_recipe, lr=cpu.bert_recipe.lr * 2, checkpoint_every=0.5),
                    method_options=options)

    def changed(method):
        return changed_settings(settings_in_force("bert", method, cpu),
                                settings_in_force("bert", method, moved))

    assert changed("baseline") == changed("layer_stacking") == ["recipe.lr"]
    assert changed("layer_dropping") == ["method_settings.lr"]  # BERT's layer dropping takes the baseline's peak
    assert changed("lion") == [] and changed("lion+lr=0.001") == []
    assert changed("sophia") == ["method_settings.lr", "method_settings.rho"]
    assert changed("sophia+rho=0.01+lr=0.001") == []
    assert changed("baseline+recipe.lr=0.004") == []  # its own peak, whatever the preset's


def test_the_same_grid_on_a_local_ray_runtime(local_grid, built_fixture, tmp_path):
    pytest.importorskip("ray")
    import ray

    data_dir, _ = built_fixture
    _, local_rows, _ = local_grid
    rows = grid.sweep(**GRID, executor="ray", results=tmp_path / "results", data_dir=data_dir, log=quiet)
    assert [r["status"] for r in rows] == ["complete"] * 4
    assert not ray.is_initialized()  # the runtime the sweep started is shut down again
    for row, local in zip(rows, local_rows, strict=True):
        assert (tmp_path / "results" / "tiny" / "t5" / row["method"] / "5s" / f"seed{row['seed']}" /
                "notebook.ipynb").is_file()
        # same cell, same seed, one torch thread in both executors: the same run
        assert (row["rst_s"], row["final_val_loss"]) == (local["rst_s"], local["final_val_loss"])


def test_fine_tuning_follows_pre_training_once(local_grid, built_fixture, monkeypatch, one_thread):
    results, _, _ = local_grid
    cell = {"preset": "tiny", "models": ["t5"], "methods": ["baseline"], "budgets": ["5s"], "seeds": [0],
            "results": results, "data_dir": built_fixture[0], "log": quiet}
    run_dir = results / "tiny" / "t5" / "baseline" / "5s" / "seed0"
    summary_before = (run_dir / "summary.json").read_text()
    (row,) = grid.sweep(**cell, finetune=True)
    assert (row["status"], row["finetune"]) == ("complete", "complete")  # pre-training was complete: only fine-tuned
    assert (run_dir / "summary.json").read_text() == summary_before
    for task in ("spam_ham", "brown_genre", "sotu_party"):
        result = json.loads((run_dir / "finetune" / f"{task}.json").read_text())
        assert result["task"] == task and result["model"] == "t5" and "best_dev_score" in result
    assert "spam_ham" in notebook_text(run_dir / "finetune" / "notebook.ipynb")

    monkeypatch.setattr(executors, "run_cell", lambda *a, **k: pytest.fail("an up-to-date cell was started again"))
    (again,) = grid.sweep(**cell, finetune=True)
    assert (again["status"], again["finetune"]) == ("skipped", "skipped")
    assert "finetune" in grid.format_table([again]).splitlines()[0]


def test_a_new_cell_fine_tunes_in_its_pre_training_kernel(built_fixture, tmp_path, one_thread):
    cell = {"preset": "tiny", "models": ["t5"], "methods": ["baseline"], "budgets": ["5s"], "seeds": [0],
            "results": tmp_path / "results", "data_dir": built_fixture[0], "log": quiet}
    (row,) = grid.sweep(**cell, finetune=True)
    assert (row["status"], row["finetune"]) == ("complete", "complete"), row["error"]
    run_dir = tmp_path / "results" / "tiny" / "t5" / "baseline" / "5s" / "seed0"
    for task in ("spam_ham", "brown_genre", "sotu_party"):
        assert json.loads((run_dir / "finetune" / f"{task}.json").read_text())["task"] == task
    # one kernel did both: the pre-training notebook shows the scores, no second notebook was started
    assert "sotu_party" in notebook_text(run_dir / "notebook.ipynb")
    assert not (run_dir / "finetune" / "notebook.ipynb").exists()
    # nothing on stderr: the book shows executed notebooks, and flags stderr outputs as problems
    stderr = [o for c in json.loads((run_dir / "notebook.ipynb").read_text())["cells"] for o in c.get("outputs", [])
              if o.get("name") == "stderr"]
    assert not stderr, stderr


def test_fine_tuning_only_the_budgets_asked_for(built_fixture, tmp_path, monkeypatch, capsys, one_thread):
    results = tmp_path / "results"
    monkeypatch.setenv("NTNG_DATA_DIR", str(built_fixture[0]))
    code = cli.main(["sweep", "--preset", "tiny", "--models", "t5", "--methods", "baseline", "--budgets", "2s", "4s",
                     "--results", str(results), "--finetune", "4s"])
    assert code == 0, capsys.readouterr()
    root = results / "tiny" / "t5" / "baseline"
    assert not (root / "2s" / "seed0" / "finetune").exists()
    assert (root / "4s" / "seed0" / "finetune" / "spam_ham.json").is_file()
    with pytest.raises(UsageError, match="not in the grid's budgets"):
        grid.sweep(preset="tiny", models=["t5"], methods=["baseline"], budgets=["2s"], results=results,
                   data_dir=built_fixture[0], finetune=["4s"], log=quiet)


def test_fine_tuning_that_fails_in_the_pre_training_kernel_fails_the_cell(built_fixture, tmp_path, one_thread):
    import shutil

    data_dir = tmp_path / "data"
    shutil.copytree(built_fixture[0], data_dir)
    for part in (data_dir / "tasks" / "spam_ham").iterdir():  # the task is there but unreadable: found mid-cell
        shutil.rmtree(part) if part.is_dir() else part.unlink()
    cell = {"preset": "tiny", "models": ["t5"], "methods": ["baseline"], "budgets": ["5s"], "seeds": [0],
            "results": tmp_path / "results", "data_dir": data_dir, "log": quiet}
    (row,) = grid.sweep(**cell, finetune=True)
    assert (row["status"], row["finetune"]) == ("failed", "failed")
    assert row["error"].startswith("fine-tuning failed:"), row["error"]
    run_dir = tmp_path / "results" / "tiny" / "t5" / "baseline" / "5s" / "seed0"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "complete"  # the run itself stands


def test_a_cell_with_an_invalid_parameter_fails_alone(built_fixture, tmp_path, monkeypatch, capsys, one_thread):
    # `tiny2`: two BERT blocks, so layer stacking (which needs a multiple of 4) cannot run; the baseline can
    presets = tmp_path / "presets.json"
    presets.write_text(json.dumps([TINY_PRESET, {**TINY_PRESET, "name": "tiny2", "bert": {"num_layers": 2}}]))
    monkeypatch.setenv("NTNG_PRESETS_FILE", str(presets))
    monkeypatch.setenv("NTNG_DATA_DIR", str(built_fixture[0]))
    results = tmp_path / "results"
    code = cli.main(["sweep", "--preset", "tiny2", "--models", "bert", "--methods", "layer_stacking", "baseline",
                     "--budgets", "2s", "--results", str(results), "--jobs", "2"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.count("\n") == 1 and captured.err.startswith("ntng: error: 1 of 2 cells failed")
    bad, good = results / "tiny2/bert/layer_stacking/2s/seed0", results / "tiny2/bert/baseline/2s/seed0"
    assert RunDir(good).read_summary()["status"] == "complete"
    summary = RunDir(bad).read_summary()
    assert summary["status"] == "failed" and summary["error"].startswith("UsageError: layer_stacking: bert at ")
    assert summary["steps"] == 0 and not (bad / "checkpoint.pt").exists()
    assert "Traceback" in notebook_text(bad / "notebook.ipynb") or "UsageError" in notebook_text(
        bad / "notebook.ipynb")
    assert "1 complete, 0 skipped (already complete), 1 failed" in captured.out
    assert f"failed: bert/layer_stacking/2s/seed0: {summary['error']}" in captured.out
    table = {line.split()[1]: line.split()[4] for line in captured.out.splitlines() if line.startswith("bert ")}
    assert table == {"layer_stacking": "failed", "baseline": "complete"}


def test_a_half_finished_cell_is_resumed_not_restarted(built_fixture, tmp_path, one_thread):
    data_dir, _ = built_fixture
    results = tmp_path / "results"
    run_dir = results / "tiny" / "t5" / "baseline" / "4s" / "seed0"
    spec = resolve("t5", "baseline", "4s", "tiny", 0, run_dir, data_dir=data_dir)
    partial = train.Trainer(spec, log=quiet).train(stop_after_steps=7)  # "killed" after its first checkpoints
    assert partial["status"] == "running" and (run_dir / "checkpoint.pt").exists()
    checkpoint = torch_load_step(run_dir / "checkpoint.pt")
    assert 0 < checkpoint <= 7
    config_before = (run_dir / "config.json").read_text()
    rows_before = metrics(run_dir)[: checkpoint + 1]

    (row,) = grid.sweep(preset="tiny", models=["t5"], methods=["baseline"], budgets=["4s"], seeds=[0],
                        results=results, data_dir=data_dir, log=quiet)
    assert row["status"] == "complete" and row["resumed"]
    assert f"resumed at step {checkpoint}" in notebook_text(run_dir / "notebook.ipynb")
    assert (run_dir / "config.json").read_text() == config_before
    rows_after = metrics(run_dir)
    assert rows_after[: checkpoint + 1] == rows_before  # wall_s included: those steps were not trained again
    assert [int(r["step"]) for r in rows_after] == list(range(row_steps(run_dir) + 1))


def torch_load_step(path: Path) -> int:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["step"]


def row_steps(run_dir: Path) -> int:
    return RunDir(run_dir).read_summary()["steps"]


def test_grid_wide_mistakes_are_refused_before_anything_is_written(built_fixture, tmp_path):
    data_dir, _ = built_fixture
    results = tmp_path / "results"
    cases = [dict(models=["gpt"]), dict(methods=["adam"]), dict(budgets=["10"]), dict(seeds=[-1]),
             dict(seeds=[]), dict(preset="huge"), dict(executor="slurm"), dict(jobs=0),
             dict(ray_address="auto"), dict(data_dir=tmp_path / "no-data")]
    for case in cases:
        options = {"preset": "tiny", "models": ["bert"], "methods": ["baseline"], "budgets": ["1s"],
                   "results": results, "data_dir": data_dir, "log": quiet, **case}
        with pytest.raises(UsageError):
            grid.sweep(**options)
        assert not results.exists(), case


def test_sweep_without_data_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NTNG_DATA_DIR", str(tmp_path / "data"))
    assert cli.main(["sweep", "--methods", "baseline"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("ntng: error: no packed data at")
    assert not list(tmp_path.iterdir())


def test_plan_and_states(tmp_path):
    cells = plan_grid("smoke", ["bert"], ["baseline", "lion"], ["60s", "1m", "90s"], [0, 1], tmp_path)
    assert [c.name for c in cells] == ["bert/baseline/1m/seed0", "bert/baseline/1m/seed1", "bert/baseline/90s/seed0",
                                       "bert/baseline/90s/seed1", "bert/lion/1m/seed0", "bert/lion/1m/seed1",
                                       "bert/lion/90s/seed0", "bert/lion/90s/seed1"]
    assert cells[0].run_dir == tmp_path / "smoke" / "bert" / "baseline" / "1m" / "seed0"
    run_dir = tmp_path / "cell"
    assert cell_state(run_dir) == "fresh"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({"status": "running"}))
    (run_dir / "config.json").write_text("{}")
    assert cell_state(run_dir) == "fresh"  # killed before its first checkpoint: nothing to resume from
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    assert cell_state(run_dir) == "resume"
    (run_dir / "summary.json").write_text(json.dumps({"status": "failed", "error": "boom"}))
    assert cell_state(run_dir) == "resume"
    (run_dir / "summary.json").write_text("{not json")
    assert cell_state(run_dir) == "resume"
    for status in ("complete", "diverged"):
        (run_dir / "summary.json").write_text(json.dumps({"status": status}))
        assert cell_state(run_dir) == status


def test_presets_name_their_seeds_and_ray_requests(tmp_path, monkeypatch):
    from ntng.presets import PRESETS, get_preset

    assert PRESETS["smoke"].seeds == (0,) and PRESETS["smoke"].ray_gpus == 0
    assert PRESETS["paper"].ray_gpus == 1
    presets = tmp_path / "presets.json"
    monkeypatch.setenv("NTNG_PRESETS_FILE", str(presets))
    presets.write_text(json.dumps([{"name": "seeded", "base": "smoke", "seeds": [3, 4], "ray_cpus": 2}]))
    assert get_preset("seeded").seeds == (3, 4) and get_preset("seeded").ray_cpus == 2
    assert PRESETS["smoke"].book_finetune_budgets() == ["12s"] and PRESETS["mini"].book_finetune_budgets() == ["90s", "3m", "6m"]
    # the rule follows a custom preset's own budgets (a list of smoke's budgets would refuse these)
    presets.write_text(json.dumps([{"name": "long", "base": "smoke", "budgets": ["1m", "2m", "4m"]},
                                   {"name": "every", "base": "smoke", "book_finetune": "all"}]))
    assert get_preset("long").book_finetune_budgets() == ["4m"]
    assert get_preset("every").book_finetune_budgets() == ["3s", "6s", "12s"]
    for bad in ({"seeds": [-1]}, {"seeds": []}, {"ray_cpus": 0}, {"ray_gpus": -1}, {"book_finetune": "some"}):
        presets.write_text(json.dumps([{"name": "bad", "base": "smoke", **bad}]))
        with pytest.raises(UsageError, match="bad"):
            get_preset("bad")


def test_the_default_grid_is_the_papers_named_methods_run_on_every_model(built_fixture, tmp_path, monkeypatch):
    planned = []
    monkeypatch.setattr(grid, "_execute_local", lambda tasks, jobs, on_done: planned.extend(
        (t["model"], t["method"]) for t in tasks) or [on_done(k, executors._result(t, "failed", None, 0.0, "not run"))
                                                      for k, t in enumerate(tasks)])
    common = {"preset": "tiny", "budgets": ["5s"], "seeds": [0], "results": tmp_path, "data_dir": built_fixture[0],
              "log": lambda m: None}
    grid.sweep(**common)
    bert = [m for model, m in planned if model == "bert"]
    t5 = [m for model, m in planned if model == "t5"]
    assert sorted(bert) == sorted(["baseline", "layer_stacking", "layer_dropping", "selective_backprop", "rho_loss",
                                   "lion", "sophia"])
    assert sorted(t5) == sorted(["baseline", "layer_stacking", "layer_dropping", "lion", "sophia"])  # Section 4
    planned.clear()
    grid.sweep(**common, models=["t5"], methods=["selective_backprop"])  # asked for by name: it runs on T5
    assert planned == [("t5", "selective_backprop")]


def test_set_without_methods_applies_to_the_default_grid_of_each_model(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(grid, "sweep", lambda **kw: calls.append((kw["models"], kw["methods"])) or [])
    assert cli.main(["sweep", "--preset", "smoke", "--set", "selective_backprop.scale=0.5,1"]) == 0
    bert, t5 = calls
    assert bert[0] == ["bert"] and "selective_backprop+scale=0.5" in bert[1] and "rho_loss" in bert[1]
    assert t5[0] == ["t5"] and not any(m.startswith(("selective_backprop", "rho_loss")) for m in t5[1])
    assert cli.main(["sweep", "--preset", "smoke", "--models", "t5", "--set", "rho_loss.mega_batch_factor=4"]) == 2
    assert "rho_loss" in capsys.readouterr().err  # a setting for no method of the grid is refused


def test_each_models_first_rho_cell_starts_first_and_its_others_last():
    cells = [(model, method, budget) for model in ("bert", "t5") for method in ("baseline", "rho_loss", "lion")
             for budget in ("3s", "6s")]
    tasks = [{"model": m, "method": meth, "budget": b} for m, meth, b in cells]
    order = [cells[k] for k in run_order(tasks)]
    assert order[:2] == [("bert", "rho_loss", "3s"), ("t5", "rho_loss", "3s")]  # they build the IL models
    assert order[-2:] == [("bert", "rho_loss", "6s"), ("t5", "rho_loss", "6s")]  # they reuse them
    assert sorted(order) == sorted(cells)
    assert [c for c in order if c[1] != "rho_loss"] == [c for c in cells if c[1] != "rho_loss"]


def test_progress_is_on_where_a_person_watches(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress.enabled()
    monkeypatch.setenv("CI", "true")
    assert not progress.enabled()
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    assert progress.enabled()
    monkeypatch.delenv("CI")
    monkeypatch.setenv(progress.PROGRESS_ENV, "0")
    assert not progress.enabled()
    monkeypatch.delenv(progress.PROGRESS_ENV)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert not progress.enabled()
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", object())  # inside a Jupyter kernel
    assert progress.enabled()


def test_a_run_shows_a_bar_over_its_rst_budget(built_fixture, tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    summary = train.pretrain(model="t5", method="baseline", budget="2s", preset="tiny", out_dir=tmp_path / "run",
                             data_dir=built_fixture[0], log=print)
    captured = capsys.readouterr()
    assert summary["status"] == "complete"
    assert "t5/baseline 2s:" in captured.err and "100%" in captured.err and "/2 s RST" in captured.err
    assert captured.out.count("val_loss") == len(summary["evals"])  # the eval lines still print, above the bar
    assert "2.0/2 s RST" in captured.err.split("\r")[-1] and "101%" not in captured.err  # ends full, not past it


def test_a_bar_that_is_off_only_logs():
    lines = []
    with progress.Bar(10, "off", log=lines.append, enable=False) as bar:
        bar.advance_to(5)
        bar.postfix("x")
        bar.write("one line")
        assert not bar.active
    assert lines == ["one line"]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb")))
def test_every_notebook_parameter_is_documented(name):
    import papermill

    path = ROOT / "notebooks" / name
    parameters = papermill.inspect_notebook(str(path))
    assert parameters
    for parameter in parameters.values():
        assert parameter["help"].strip(), f"{name}: parameter {parameter['name']} has no comment"
    proc = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    flat = " ".join(proc.stdout.split())
    for parameter in parameters.values():
        assert f"{parameter['name']}: " in proc.stdout and " ".join(parameter["help"].split()) in flat
