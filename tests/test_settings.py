"""`--set`: settings from the command line as variants (pretrain), grid axes of variants (sweep), and recipe values
(`recipe.FIELD`) changed for one run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ntng.errors import UsageError
from ntng.methods import build_method
from ntng.training.loop import pretrain
from ntng.training.spec import resolve
from ntng.training.variants import expand_settings, with_settings


def test_settings_join_the_method_as_a_variant():
    assert with_settings("lion", ["lr=3e-4"]) == "lion+lr=0.0003"
    assert with_settings("lion+weight_decay=0.2", ["lr=3e-4"]) == "lion+lr=0.0003+weight_decay=0.2"
    assert with_settings("baseline", ["recipe.lr=2e-3"]) == "baseline+recipe.lr=0.002"
    assert with_settings("sophia", []) == "sophia"
    for bad in (["lr"], ["=1"], ["lr="], ["lr=x"], ["LR=1"]):
        with pytest.raises(UsageError):
            with_settings("lion", bad)
    with pytest.raises(UsageError, match="twice"):
        with_settings("lion+lr=0.001", ["lr=0.002"])
    with pytest.raises(UsageError):  # one setting per --set: a '+' would smuggle in another
        with_settings("lion", ["weight_decay=0.1+lr=0.5"])
    # names give back exactly the values they were made from, and parse again
    assert with_settings("lion", ["lr=0.00012345678"]) == "lion+lr=0.00012345678"
    assert with_settings("baseline", ["recipe.eval_sequences=2e6"]) == "baseline+recipe.eval_sequences=2000000.0"
    assert with_settings("lion", ["lr=1e-20"]) == "lion+lr=1e-20"
    # a flag turned off is no setting: the run is the method itself, in its own directory
    assert with_settings("sophia", ["free_hessian=false"]) == "sophia"


def test_a_sweep_setting_is_a_grid_axis_of_its_method():
    got = expand_settings(["baseline", "lion", "sophia"],
                          ["lion.lr=3e-4,7e-4,2e-3", "baseline.recipe.lr=5e-4,1e-3"])
    assert got == ["baseline+recipe.lr=0.0005", "baseline+recipe.lr=0.001", "lion+lr=0.0003", "lion+lr=0.0007",
                   "lion+lr=0.002", "sophia"]
    two_keys = expand_settings(["lion"], ["lion.lr=1e-3,2e-3", "lion.weight_decay=0,0.1"])
    assert len(two_keys) == 4 and "lion+lr=0.002+weight_decay=0.1" in two_keys
    plugin = expand_settings(["plugin_methods:FreezeEmbeddings"], ["plugin_methods:FreezeEmbeddings.fraction=0.1,0.3"])
    assert plugin == ["plugin_methods:FreezeEmbeddings+fraction=0.1", "plugin_methods:FreezeEmbeddings+fraction=0.3"]
    for bad in (["lr=1e-3"], ["sophia.lr=1e-3"], ["lion.=1"]):
        with pytest.raises(UsageError):
            expand_settings(["baseline", "lion"], bad)


def test_a_recipe_value_changes_the_run_and_names_it(built_fixture, tmp_path):
    data_dir, _ = built_fixture
    spec = resolve("bert", "baseline+recipe.lr=0.002+recipe.grad_clip=1", "1s", "tiny", data_dir=data_dir,
                   out_dir=tmp_path / "run")
    assert spec.preset.bert_recipe.lr == 0.002 and spec.preset.bert_recipe.grad_clip == 1.0
    assert spec.preset.t5_recipe.lr == 2e-2  # only the run's model's recipe
    assert spec.variant == "baseline+recipe.grad_clip=1+recipe.lr=0.002"
    assert spec.identity()["recipe_overrides"] == {"lr": 0.002, "grad_clip": 1}
    # a method's own peak keeps the paper's ratio to the recipe's (Lion: 0.7 of BERT's)
    lion = resolve("bert", "lion+recipe.lr=0.002", "1s", "tiny", data_dir=data_dir, out_dir=tmp_path / "l")
    assert build_method("lion", "bert", lion.preset).settings()["lr"] == pytest.approx(1.4e-3)
    for bad in ("baseline+recipe.nosuch=1", "baseline+recipe.eval_points=0.5", "baseline+recipe.betas=0.9",
                "baseline+recipe.checkpoint_every=0", "baseline+recipe.eval_points=0", "baseline+recipe.lr=-1",
                "baseline+recipe.betas=2,3"):
        with pytest.raises(UsageError):
            resolve("bert", bad, "1s", "tiny", data_dir=data_dir, out_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    summary = pretrain(model="bert", method="baseline+recipe.lr=0.002", budget="1s", preset="tiny",
                       data_dir=data_dir, out_dir=tmp_path / "trained", log=lambda m: None)
    config = json.loads((tmp_path / "trained" / "config.json").read_text())
    assert summary["status"] == "complete" and config["recipe"]["lr"] == 0.002
    assert config["variant"] == "baseline+recipe.lr=0.002"


def test_the_cli_takes_set_and_refuses_bad_keys_with_one_line(built_fixture, tmp_path):
    data_dir, _ = built_fixture
    env = {"NTNG_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    import os

    env["NTNG_PRESETS_FILE"] = os.environ["NTNG_PRESETS_FILE"]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "ntng.cli", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path)

    for args in (["pretrain", "--model", "bert", "--method", "lion", "--set", "nosuch=1", "--budget", "1s",
                  "--preset", "tiny"],
                 ["pretrain", "--model", "bert", "--method", "lion", "--set", "lr", "--budget", "1s",
                  "--preset", "tiny"],
                 ["sweep", "--preset", "tiny", "--methods", "lion", "--set", "lr=1e-3"]):
        proc = cli(*args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("ntng: error:"), args
    assert not (tmp_path / "results").exists()
    proc = cli("pretrain", "--model", "bert", "--method", "lion", "--set", "lr=0.002", "--budget", "1s",
               "--preset", "tiny")
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "results" / "tiny" / "bert" / "lion+lr=0.002" / "1s" / "seed0" /
                         "config.json").read_text())
    assert config["method_settings"]["lr"] == 0.002
    # a method from outside ntng, by module:Class, on the command line
    env["PYTHONPATH"] = str(Path(__file__).parent)
    proc = cli("pretrain", "--model", "bert", "--method", "plugin_methods:FreezeEmbeddings", "--set", "fraction=0.5",
               "--budget", "1s", "--preset", "tiny")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "results" / "tiny" / "bert" / "freeze_embeddings+fraction=0.5" / "1s" / "seed0" /
            "summary.json").is_file()


def test_a_data_split_setting_runs_the_method_on_other_windows(built_fixture, tmp_path):
    """`baseline+data_split=rho_main`: the baseline on the 80% RHO-LOSS trains on, its like-for-like control, with a
    run directory and a row of its own; RHO-LOSS on its own split is no variant."""
    data_dir, _ = built_fixture
    assert with_settings("baseline", ["data_split=rho_main"]) == "baseline+data_split=rho_main"
    assert expand_settings(["baseline"], ["baseline.data_split=full,rho_main"]) == [
        "baseline+data_split=full", "baseline+data_split=rho_main"]
    with pytest.raises(UsageError, match="unknown data split"):
        with_settings("baseline", ["data_split=most"])
    spec = resolve("bert", "baseline+data_split=rho_main", "2s", "tiny", data_dir=data_dir, out_dir=tmp_path / "a")
    assert (spec.data_split, spec.variant) == ("rho_main", "baseline+data_split=rho_main")
    assert resolve("bert", "baseline+data_split=full", "2s", "tiny", data_dir=data_dir,
                   out_dir=tmp_path / "b").variant == "baseline"
    # the old flag names the run the same way, so it cannot overwrite the baseline's directory
    assert resolve("bert", "baseline", "2s", "tiny", data_dir=data_dir, data_split="rho_main",
                   out_dir=tmp_path / "c").variant == "baseline+data_split=rho_main"
    assert resolve("bert", "rho_loss", "2s", "tiny", data_dir=data_dir, out_dir=tmp_path / "d").variant == "rho_loss"
    with pytest.raises(UsageError, match="disagree"):
        resolve("bert", "baseline+data_split=rho_main", "2s", "tiny", data_dir=data_dir, data_split="full",
                out_dir=tmp_path / "e")
    with pytest.raises(UsageError, match="rho_main"):
        resolve("bert", "rho_loss+data_split=full", "2s", "tiny", data_dir=data_dir, out_dir=tmp_path / "f")
