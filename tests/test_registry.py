"""The open method registry: methods defined outside ntng (tests/plugin_methods.py) found by module:Class and by
entry point, run through the loop and the grid, and refused with one line when they cannot be used."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from ntng.errors import UsageError
from ntng.methods import BUILTINS, find_method, method_names
from ntng.training.loop import pretrain

TESTS = Path(__file__).parent


def test_builtins_and_module_class_are_found():
    import plugin_methods

    assert list(BUILTINS) == ["baseline", "layer_stacking", "layer_dropping", "selective_backprop", "rho_loss",
                              "lion", "sophia", "muon", "warmup_stable_decay", "schedule_free"]
    assert find_method("lion") is BUILTINS["lion"]
    assert find_method("plugin_methods:FreezeEmbeddings") is plugin_methods.FreezeEmbeddings


@pytest.mark.parametrize("spec, words", [
    ("nosuch", "unknown method"), ("nosuch_module_x:Class", "cannot import"),
    ("plugin_methods:Missing", "has no Missing"), ("plugin_methods:NotAMethod", "not a subclass"),
    ("plugin_methods:Nameless", "must set its own `name`"), ("plugin_methods:BadHook", "begin_step"),
    ("plugin_methods:Impostor", "built-in"),
])
def test_unusable_methods_are_refused_with_one_line(spec, words):
    with pytest.raises(UsageError, match=words) as caught:
        find_method(spec)
    assert "\n" not in str(caught.value)


def test_the_cli_refuses_a_bad_spec_with_one_line_and_exit_2(tmp_path):
    env = {"PYTHONPATH": str(TESTS), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    for spec in ("nosuch_module_x:Class", "plugin_methods:NotAMethod", "plugin_methods:BadHook"):
        proc = subprocess.run([sys.executable, "-m", "ntng.cli", "pretrain", "--model", "bert", "--method", spec,
                               "--budget", "1s", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                              env=env, cwd=tmp_path)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("ntng: error:")
        assert not (tmp_path / "run").exists()


def test_a_plugin_trains_under_its_own_name_and_records_what_it_is(built_fixture, tmp_path):
    data_dir, _ = built_fixture
    summary = pretrain(model="bert", method="plugin_methods:FreezeEmbeddings+fraction=0.5", budget="2s",
                       preset="tiny", data_dir=data_dir, out_dir=tmp_path / "run", log=lambda m: None)
    assert summary["status"] == "complete" and summary["method"] == "freeze_embeddings"
    assert summary["variant"] == "freeze_embeddings+fraction=0.5"
    assert 0 < summary["method_stats"]["frozen_steps"] < summary["steps"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["method_spec"] == "plugin_methods:FreezeEmbeddings"
    meta = config["method_meta"]
    assert (meta["label"], meta["family"], meta["component"], meta["action"]) == (
        "frozen embeddings", "warm_start", "model", "restrict")
    assert meta["class"] == "plugin_methods:FreezeEmbeddings"


def test_extra_passes_through_the_helper_are_charged(built_fixture, tmp_path):
    data_dir, _ = built_fixture
    base = pretrain(model="bert", method="baseline", budget="2s", preset="tiny", data_dir=data_dir,
                    out_dir=tmp_path / "base", log=lambda m: None)
    extra = pretrain(model="bert", method="plugin_methods:ExtraForward", budget="2s", preset="tiny",
                     data_dir=data_dir, out_dir=tmp_path / "extra", log=lambda m: None)
    from ntng.training.rst import shipped_table

    table = shipped_table("smoke", "bert")
    assert extra["rst_units"]["scoring"] == extra["steps"]
    assert extra["rst_breakdown"]["scoring"] == pytest.approx(extra["steps"] * table.forward_seconds(4))
    assert extra["steps"] < base["steps"]  # the extra passes were paid for with training steps
    free = pretrain(model="bert", method="plugin_methods:ExtraForward+free_scoring", budget="2s", preset="tiny",
                    data_dir=data_dir, out_dir=tmp_path / "free", log=lambda m: None)
    assert free["rst_breakdown"]["scoring"] == 0.0 and free["steps"] == base["steps"]


def test_a_plugin_found_by_entry_point(monkeypatch):
    import plugin_methods

    point = metadata.EntryPoint(name="freeze", value="plugin_methods:FreezeEmbeddings", group="ntng.methods")
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [point] if group == "ntng.methods" else [])
    assert find_method("freeze") is plugin_methods.FreezeEmbeddings
    assert "freeze" in method_names()


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_plugin_runs_in_the_grid(built_fixture, tmp_path, monkeypatch, executor):
    if executor == "ray":
        pytest.importorskip("ray")
    from ntng.experiments import grid

    monkeypatch.setenv("PYTHONPATH", str(TESTS))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (row,) = grid.sweep(preset="tiny", models=["t5"], methods=["plugin_methods:FreezeEmbeddings"], budgets=["2s"],
                        seeds=[0], executor=executor, results=tmp_path / "results", data_dir=built_fixture[0],
                        log=lambda m: None)
    run_dir = tmp_path / "results" / "tiny" / "t5" / "freeze_embeddings" / "2s" / "seed0"
    assert row["status"] == "complete", row["error"]
    assert (run_dir / "notebook.ipynb").is_file()
    assert json.loads((run_dir / "config.json").read_text())["method_meta"]["family"] == "warm_start"


def test_an_unpriced_optimizer_is_charged_an_estimate_measured_once(built_fixture, tmp_path):
    """Its step costs the table's AdamW step x the ratio of the two steps measured here; the ratio is cached with
    the data, so a second run pays exactly the same."""
    import shutil

    from ntng.training.pricing import cache_path
    from ntng.training.rst import shipped_table

    data_dir = tmp_path / "data"
    shutil.copytree(built_fixture[0], data_dir)  # its own cache of estimates
    first = pretrain(model="bert", method="plugin_methods:PlainSGD", budget="1s", preset="tiny", data_dir=data_dir,
                     out_dir=tmp_path / "one", log=lambda m: None)
    price = first["rst_estimates"]["plain_sgd"]
    table = shipped_table("smoke", "bert")
    assert price["estimate"] is True and price["ratio"] > 0
    assert price["seconds"] == pytest.approx(table.optimizer_seconds("adamw") * price["ratio"])
    assert first["rst_breakdown"]["optimizer"] == pytest.approx(first["steps"] * price["seconds"])
    assert cache_path(data_dir, table.name).is_file()
    second = pretrain(model="bert", method="plugin_methods:PlainSGD", budget="1s", preset="tiny", data_dir=data_dir,
                      out_dir=tmp_path / "two", log=lambda m: None)
    assert second["rst_estimates"]["plain_sgd"] == price
    assert (second["steps"], second["rst_s"]) == (first["steps"], first["rst_s"])
    # a table that prices every optimizer charges none by estimate
    base = pretrain(model="bert", method="lion", budget="1s", preset="tiny", data_dir=data_dir,
                    out_dir=tmp_path / "lion", log=lambda m: None)
    assert "rst_estimates" not in base
