"""The open method registry: methods defined outside ntng (tests/plugin_methods.py) found by module:Class and by
entry point, run through the loop and the grid, and refused with one line when they cannot be used."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from ntng.errors import UsageError
from ntng.methods import BUILTINS, build_method, find_method, method_names
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
    ("plugin_methods:Impostor", "built-in"), ("plugin_methods:UnknownExtraWork", "extra_work"),
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


def test_a_built_in_method_is_its_module_and_one_registry_line(built_fixture, tmp_path, monkeypatch):
    """A new built-in method is one module (plugin_methods.ScaledPeak, with its own per-model defaults, valid range,
    tuning grid and extra work) and one line in the registry; the default grid, the ablations, tuning, a preset's
    override, `--set`, the records and the book's order follow from the registry."""
    import dataclasses

    from plugin_methods import ScaledPeak

    from ntng.book.run_table import method_order
    from ntng.experiments.tuning import plan_tuning
    from ntng.methods import paper_ablations, studied_methods
    from ntng.presets import get_preset
    from ntng.training.spec import resolve

    monkeypatch.setitem(BUILTINS, "scaled_peak", ScaledPeak)  # the one registry line

    assert find_method("scaled_peak") is ScaledPeak and "scaled_peak" in method_names()
    # the paper's grid and ablations: on the models it was studied on, with its extra work made free
    assert studied_methods("bert")[-1] == "scaled_peak" and "scaled_peak" not in studied_methods("t5")
    assert "scaled_peak+free_scoring" in paper_ablations()
    # tuned on equal terms: its own grid, around its own per-model default, on BERT only
    axes = [a for a in plan_tuning("tiny")["axes"] if a["method"] == "scaled_peak"]
    assert [(a["model"], a["key"], a["values"]) for a in axes] == [("bert", "scale", [0.5, 0.25, 1.0])]
    # its defaults are its own, per model; a preset overrides them in one place; --set over both
    data_dir, _ = built_fixture
    run = dict(budget="2s", data_dir=data_dir, out_dir=tmp_path / "unused")
    tiny = get_preset("tiny")
    assert build_method("scaled_peak", "t5", tiny).settings() == {"scale": 0.25}
    tuned = dataclasses.replace(tiny, method_options={"bert": {"scaled_peak": {"scale": 0.75}}})
    assert build_method("scaled_peak", "bert", tuned).settings() == {"scale": 0.75}
    assert build_method("scaled_peak", "t5", tuned).settings() == {"scale": 0.25}  # the preset moved BERT's only
    assert build_method("scaled_peak", "bert", tuned, scale=0.1).settings() == {"scale": 0.1}
    spec = resolve("bert", "scaled_peak+scale=0.1", preset=tuned, **run)
    assert spec.method_options == {"scale": 0.1} and spec.variant == "scaled_peak+scale=0.1"
    with pytest.raises(UsageError, match="scale must be in"):  # its own valid range
        resolve("bert", "scaled_peak+scale=2", preset="tiny", **run)
    # it trains, charged for its scoring passes, and the records say what it is
    summary = pretrain(model="bert", method="scaled_peak", budget="2s", preset="tiny", data_dir=data_dir,
                       out_dir=tmp_path / "run", log=lambda m: None)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert summary["status"] == "complete" and config["method_settings"] == {"scale": 0.5}
    assert config["method_meta"]["family"] == "toy" and summary["rst_breakdown"]["scoring"] > 0
    # it trained at half the baseline's peak: the schedule came near its peak, which the lr never passed
    with open(tmp_path / "run" / "metrics.csv") as fh:
        top = max(float(r["lr"]) for r in csv.DictReader(fh) if r["lr"])
    assert 0.4 * config["recipe"]["lr"] < top <= 0.5 * config["recipe"]["lr"] * (1 + 1e-9)
    # the book orders it after the study's methods, and its variants after it
    assert sorted(["scaled_peak+free_scoring", "scaled_peak", "lion"], key=method_order) == [
        "lion", "scaled_peak", "scaled_peak+free_scoring"]
    assert not (tmp_path / "unused").exists()


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


def test_a_shipped_ratio_is_charged_everywhere_and_nothing_is_measured(tmp_path, monkeypatch):
    """A ratio the package ships for a table prices the step on every host (no measurement, no cache); a shipped
    file that cannot be read is refused in one line rather than skipped for a price measured here."""
    from types import SimpleNamespace

    from ntng.training import pricing
    from ntng.training.rst import shipped_table

    table = shipped_table("smoke", "bert")
    shipped = tmp_path / "shipped" / f"{table.name}.json"
    shipped.parent.mkdir()
    shipped.write_text(json.dumps({"format": 1, "table": table.name, "optimizers": {
        "plain_sgd": {"ratio": 2.5, "of": "adamw", "measured_on": "2026-01-01", "machine": "elsewhere"}}}))
    monkeypatch.setattr(pricing, "shipped_path", lambda name: tmp_path / "shipped" / f"{name}.json")

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured although a ratio is shipped")

    monkeypatch.setattr(pricing, "measure_step_ratio", no_measuring)
    cache = pricing.cache_path(tmp_path / "data", table.name)  # this host's own measurement, 7x: not charged
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"plain_sgd": {"ratio": 7.0, "of": "adamw"}}))
    method = SimpleNamespace(rst_optimizer="plain_sgd")
    price = pricing.estimated_price(table, "plain_sgd", method, "bert", None, tmp_path / "data")
    assert price["seconds"] == pytest.approx(table.optimizer_seconds("adamw") * 2.5)
    assert price["estimate"] is True and price["shipped"] is True and price["machine"] == "elsewhere"
    assert json.loads(cache.read_text()) == {"plain_sgd": {"ratio": 7.0, "of": "adamw"}}
    # an entry's own keys do not override what is computed from it
    shipped.write_text(json.dumps({"table": table.name, "optimizers": {
        "plain_sgd": {"ratio": 2.5, "seconds": 1e-9, "shipped": False}}}))
    price = pricing.estimated_price(table, "plain_sgd", method, "bert", None, tmp_path / "data")
    assert price["seconds"] == pytest.approx(table.optimizer_seconds("adamw") * 2.5) and price["shipped"] is True
    def estimates(entry=None, **doc):
        return json.dumps({"table": table.name, "optimizers": {"plain_sgd": entry}, **doc})

    bad = [(estimates({"ratio": 0}), "finite positive ratio"), (estimates({"ratio": True}), "finite positive ratio"),
           (estimates({"ratio": float("inf")}), "finite positive"), (estimates({"ratio": 2, "of": "sgd"}), "AdamW"),
           (estimates(optimizers=[]), "not the estimates of table"),
           (estimates({"ratio": 2}, table="another"), "not the estimates of table"),
           ("[]", "not the estimates of table"), ("{not json", "cannot be read")]
    for text, words in bad:  # refused, never skipped for a price measured here
        shipped.write_text(text)
        with pytest.raises(UsageError, match=words):
            pricing.estimated_price(table, "plain_sgd", method, "bert", None, tmp_path / "data")


def test_the_shipped_ratios_price_only_steps_their_table_does_not_and_say_where_they_were_measured():
    from importlib import resources

    from ntng.training.rst import shipped_table

    tables = {}
    for path in (Path(str(resources.files("ntng"))) / "tables").glob("*.json"):
        preset, model = path.stem.rsplit("-", 1)
        table = shipped_table(preset, model)
        tables[table.name] = table
    shipped = sorted((Path(str(resources.files("ntng"))) / "tables" / "estimates").glob("*.json"))
    assert shipped, "the package ships no estimates"
    for path in shipped:
        doc = json.loads(path.read_text())
        assert path.stem == doc["table"] and doc["table"] in tables, path.name
        for key, entry in doc["optimizers"].items():
            assert key not in tables[doc["table"]].optimizer  # a table's own price always wins
            assert entry["ratio"] > 0 and entry["of"] == "adamw" and entry["machine"] and entry["measured_on"]
            # the ratio is the quotient of the two wall times it was measured from (at the 3 digits kept)
            assert entry["ratio"] == pytest.approx(entry["measured"]["candidate_s"] / entry["measured"]["adamw_s"],
                                                   rel=0.01)


def test_the_pricing_tool_measures_a_step_and_writes_what_the_runs_then_charge(built_fixture, tmp_path, monkeypatch):
    from ntng.training import pricing
    from ntng.training.rst import shipped_table

    monkeypatch.syspath_prepend(str(TESTS))
    monkeypatch.syspath_prepend(str(TESTS.parent / "tools"))
    import price_optimizers

    out = tmp_path / "estimates"
    prices = price_optimizers.price("tiny", ["bert"], ["plugin_methods:PlainSGD", "lion"], log=lambda m: None)
    table = shipped_table("smoke", "bert")
    assert list(prices) == [table.name] and list(prices[table.name]) == ["plain_sgd"]  # lion: the table prices it
    (path,) = price_optimizers.write(prices, out)
    monkeypatch.setattr(pricing, "shipped_path", lambda name: out / f"{name}.json")
    run = pretrain(model="bert", method="plugin_methods:PlainSGD", budget="1s", preset="tiny",
                   data_dir=built_fixture[0], out_dir=tmp_path / "run", log=lambda m: None)
    charged = run["rst_estimates"]["plain_sgd"]
    assert charged["shipped"] is True and charged["ratio"] == prices[table.name]["plain_sgd"]["ratio"]
    assert run["rst_breakdown"]["optimizer"] == pytest.approx(run["steps"] * charged["seconds"])
    path.write_text("[]")
    with pytest.raises(UsageError, match="not the estimates file"):
        price_optimizers.write(prices, out)


def test_a_resumed_run_pays_the_price_it_started_with(built_fixture, tmp_path, monkeypatch):
    """The price is part of the run: a ratio shipped or re-measured while it was stopped does not change it."""
    from ntng.training import loop, pricing
    from ntng.training.rst import shipped_table
    from ntng.training.spec import resolve

    table = shipped_table("smoke", "bert")

    def ship(ratio):
        (tmp_path / f"{table.name}.json").write_text(json.dumps({"table": table.name, "optimizers": {
            "plain_sgd": {"ratio": ratio, "of": "adamw"}}}))

    monkeypatch.setattr(pricing, "shipped_path", lambda name: tmp_path / f"{name}.json")
    ship(3.0)
    spec = resolve("bert", "plugin_methods:PlainSGD", "1s", "tiny", 0, tmp_path / "run", data_dir=built_fixture[0])
    partial = loop.Trainer(spec, log=lambda m: None).train(stop_after_steps=2)
    assert partial["status"] == "running"
    ship(30.0)
    resumed = pretrain(model="bert", method="plugin_methods:PlainSGD", budget="1s", preset="tiny",
                       data_dir=built_fixture[0], out_dir=tmp_path / "run", resume=True, log=lambda m: None)
    price = resumed["rst_estimates"]["plain_sgd"]
    assert resumed["status"] == "complete" and price["ratio"] == 3.0
    assert resumed["rst_breakdown"]["optimizer"] == pytest.approx(resumed["steps"] * 3.0 * table.optimizer_seconds(
        "adamw"))
