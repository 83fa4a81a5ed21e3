"""Fidelity to the study: the paper's tuned values (Appendix C), stated here by hand, the ablations as variants,
and the departures page. The crammed BERT and the T5 details are pinned in test_models.py."""

from __future__ import annotations

import pytest

from ntng.errors import UsageError
from ntng.experiments.cells import check_methods, plan_ablations
from ntng.methods import build_method, paper_ablations
from ntng.presets import PRESETS, middle_budget
from ntng.training.variants import describe, parse_variant, variant_name

ABLATIONS = paper_ablations()

PAPER = PRESETS["paper"]


def settings(method, model, preset=PAPER, **options):
    return build_method(method, model, preset, **options).settings()


def test_bert_lion_and_sophia_take_the_papers_tuned_values():
    """Appendix C.5: BERT Lion lr 7e-4, weight decay 0.1. C.6: BERT Sophia lr 4e-4, weight decay 0.015, rho 0.01,
    bs = tokens per batch = 1536 x 128."""
    lion = settings("lion", "bert")
    assert (lion["lr"], lion["weight_decay"]) == (7e-4, 0.1)
    sophia = settings("sophia", "bert")
    assert (sophia["lr"], sophia["weight_decay"], sophia["rho"]) == (4e-4, 0.015, 0.01)
    assert sophia["bs"] == 196_608


def test_t5_sophia_bs_is_5120_always_and_its_lion_is_the_papers():
    """C.6 and the T5 code (step() without bs): 5120 whatever the batch; C.5: T5 Lion lr 7.5e-4, no decay."""
    for preset in ("paper", "smoke", "mini"):
        sophia = settings("sophia", "t5", PRESETS[preset])
        assert sophia["bs"] == 5120 and sophia["lr"] == 1e-3 and sophia["rho"] == 0.01
    lion = settings("lion", "t5")
    assert (lion["lr"], lion["weight_decay"]) == (7.5e-4, 0.0)


def test_t5_layer_dropping_runs_at_its_own_peak_lr():
    """C.2: T5 layer dropping at lr 1e-2 (not the baseline's 2e-2); BERT's stays at the baseline's 1e-3."""
    import torch

    from ntng.models.pretraining import build_model

    assert settings("layer_dropping", "t5")["lr"] == 1e-2
    assert settings("layer_dropping", "bert")["lr"] == 1e-3
    torch.manual_seed(0)
    model = build_model("t5", PRESETS["smoke"], vocab_size=512)
    optimizer = build_method("layer_dropping", "t5", PRESETS["smoke"]).build_optimizer(model)
    assert {group["lr"] for group in optimizer.param_groups} == {1e-2}
    assert settings("layer_dropping", "t5", lr=5e-3)["lr"] == 5e-3
    with pytest.raises(UsageError):
        build_method("layer_dropping", "t5", PAPER, lr=-1.0)


def test_rho_loss_irreducible_model_trains_for_the_middle_budget():
    """The paper: 12 h of its 6/12/24 h budgets; smoke 6 s of 3/6/12 s."""
    assert settings("rho_loss", "bert")["il_budget_s"] == 12 * 3600
    assert settings("rho_loss", "bert", PRESETS["smoke"])["il_budget_s"] == 6.0


# --------------------------------------------------------------------------------------------------- variants


def test_variant_names_round_trip_and_sort_their_settings():
    variant = parse_variant("lion+weight_decay=0.2+lr=3e-4")
    assert variant.method == "lion" and variant.method_options() == {"lr": 0.0003, "weight_decay": 0.2}
    assert variant.name == "lion+lr=0.0003+weight_decay=0.2" == parse_variant(variant.name).name
    flagged = parse_variant("sophia+free_hessian")
    assert flagged.run_flags() == {"free_hessian": True} and flagged.method_options() == {}
    assert variant_name("selective_backprop", {"free_scoring": True}) == "selective_backprop+free_scoring"
    assert describe("rho_loss+free_scoring") == "free scoring" and describe("baseline") == ""
    assert describe("baseline+data_split=rho_main") == "on RHO-LOSS's 80%"  # the split in words, not its key
    assert parse_variant("baseline").name == "baseline" and not parse_variant("baseline").is_variant


@pytest.mark.parametrize("bad", ["", "lion+", "lion+LR=1", "lion+lr", "lion+lr=abc", "lion+lr=1+lr=2",
                                 "lion+lr=nan", "sophia+free_hessian=2"])
def test_bad_variant_names_are_refused(bad):
    with pytest.raises(UsageError):
        parse_variant(bad)


def test_the_ablations_run_at_the_middle_budget_on_bert(tmp_path):
    """Section 5.4 (selective backprop and RHO-LOSS, scoring not charged) and Section 6.1 (Sophia, Hessian passes
    free), at 12 h of the paper's 6/12/24 h; the paper ran them on BERT."""
    assert set(ABLATIONS) == {"selective_backprop+free_scoring", "rho_loss+free_scoring", "sophia+free_hessian"}
    assert middle_budget(PAPER.budgets) == "12h" and middle_budget(("12s", "3s", "6s")) == "6s"
    cells = plan_ablations("smoke", ["bert", "t5"], PRESETS["smoke"].budgets, [0, 1], tmp_path)
    assert {(c.model, c.method, c.budget) for c in cells} == {("bert", a, "6s") for a in ABLATIONS}
    assert len(cells) == 6
    assert cells[0].run_dir == tmp_path / "smoke" / "bert" / cells[0].method / "6s" / "seed0"
    assert check_methods(["sophia+free_hessian", "lion"]) == ["sophia+free_hessian", "lion"]
    with pytest.raises(UsageError):
        check_methods(["nosuch+free_scoring"])


def test_a_variant_resolves_to_its_method_flags_and_run_directory(built_fixture, tmp_path, monkeypatch):
    from ntng.training.spec import resolve

    data_dir, _ = built_fixture
    monkeypatch.chdir(tmp_path)
    spec = resolve("bert", "sophia+free_hessian", "2s", "tiny", data_dir=data_dir)
    assert (spec.method, spec.free_hessian, spec.free_scoring) == ("sophia", True, False)
    assert spec.variant == "sophia+free_hessian"
    assert spec.out_dir == tmp_path.joinpath("results", "tiny", "bert", "sophia+free_hessian", "2s", "seed0").relative_to(tmp_path)
    # the flag given the old way names the same variant
    assert resolve("bert", "selective_backprop", "2s", "tiny", data_dir=data_dir,
                   free_scoring=True).variant == "selective_backprop+free_scoring"
    # "free" is one setting over the kinds of extra work: by kind, the records keep a flag per kind
    by_kind = resolve("bert", "sophia", "2s", "tiny", data_dir=data_dir, free_work=("hessian",))
    assert by_kind.variant == "sophia+free_hessian" and by_kind.free_work == ("hessian",)
    assert by_kind.free_flags() == {"free_scoring": False, "free_hessian": True}
    # the records (config.json's identity, which --resume compares) keep their keys, in their order
    identity = by_kind.identity()
    assert identity == spec.identity() and list(identity)[:12] == [
        "model", "method", "budget_rst_s", "preset", "seed", "rst_table", "free_scoring", "free_hessian", "corpus",
        "method_options", "data_split", "evaluation"]
    assert (identity["free_scoring"], identity["free_hessian"]) == (False, True)
    for kinds, words in ((("optimizer",), "no kind of extra work 'optimizer'"),
                         (("train",), "no kind of extra work 'train'"),
                         (("scoring",), "method sophia does no scoring passes")):
        with pytest.raises(UsageError, match=words):
            resolve("bert", "sophia", "2s", "tiny", data_dir=data_dir, free_work=kinds)
    options = resolve("bert", "lion+lr=0.002", "2s", "tiny", data_dir=data_dir)
    assert options.method_options == {"lr": 0.002} and options.variant == "lion+lr=0.002"
    for bad in ("lion+free_scoring", "baseline+free_hessian", "lion+nosuch=1", "nosuch+free_scoring"):
        with pytest.raises(UsageError):
            resolve("bert", bad, "2s", "tiny", data_dir=data_dir)
    with pytest.raises(UsageError):  # the same option twice, with two values
        resolve("bert", "lion+lr=0.002", "2s", "tiny", data_dir=data_dir, method_options={"lr": 0.003})
    assert not (tmp_path / "results").exists()  # refusals write nothing


def test_a_variant_trains_and_records_itself(built_fixture, tmp_path):
    import json

    import ntng

    data_dir, _ = built_fixture
    summary = ntng.pretrain(model="bert", method="selective_backprop+free_scoring", budget="1s", preset="tiny",
                            out_dir=tmp_path / "run", data_dir=data_dir, log=lambda m: None)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert summary["status"] == "complete" and summary["variant"] == "selective_backprop+free_scoring"
    assert (config["method"], config["variant"], config["free_scoring"]) == (
        "selective_backprop", "selective_backprop+free_scoring", True)
    assert summary["rst_breakdown"]["scoring"] == 0.0 and summary["rst_units"]["scoring"] > 0


# ------------------------------------------------------------------------------------------------- departures


def test_departures_page_lists_each_departure_with_its_figures_computed():
    from ntng.book import departures
    from ntng.training.rst import shipped_table

    text = departures.departures_markdown()
    for item in departures.DEPARTURES:
        assert f"**{item.what}**" in text
    assert "{" not in text  # every quoted figure was filled in
    table = shipped_table("paper", "bert")
    # the paper's table: forward .09285 s against .2253 s forward+backward at 16 layers (its official code)
    assert table.forward_seconds(16) / table.train_seconds(16) == pytest.approx(0.09285 / 0.2253)
    assert f"{0.09285 / 0.2253:.2f}" in text
    for what in ("Sophia", "masking", "T5", "C4"):
        assert what in text


# ------------------------------------------------------------------------------------------------------ the grid


def test_sweep_adds_the_ablations_at_the_middle_budget(built_fixture, tmp_path, monkeypatch):
    from ntng.experiments import executors, grid

    started = []

    def execute(tasks, jobs, on_done):  # record what would run; every cell "completes"
        for k, task in enumerate(tasks):
            started.append((task["model"], task["method"], task["budget"]))
            on_done(k, executors._result(task, "complete", None, 0.0))

    monkeypatch.setattr(grid, "_execute_local", execute)
    rows = grid.sweep(preset="tiny", models=["bert", "t5"], methods=["baseline"], budgets=["1s", "2s", "4s"],
                      seeds=[0], results=tmp_path / "results", data_dir=built_fixture[0], ablations=True,
                      log=lambda m: None)
    ablations = {(m, k, b) for m, k, b in started if "+" in k}
    assert ablations == {("bert", a, "2s") for a in ABLATIONS}
    assert len(rows) == 2 * 3 + 3 and all(r["status"] == "complete" for r in rows)
    assert {r["run_dir"] for r in rows if "+" in r["method"]} == {
        str(tmp_path / "results" / "tiny" / "bert" / a / "2s" / "seed0") for a in ABLATIONS}


def test_a_variant_cell_runs_through_papermill(built_fixture, tmp_path, monkeypatch):
    import json

    from ntng.experiments import grid

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    (row,) = grid.sweep(preset="tiny", models=["bert"], methods=["sophia+free_hessian"], budgets=["2s"], seeds=[0],
                        results=tmp_path / "results", data_dir=built_fixture[0], log=lambda m: None)
    run_dir = tmp_path / "results" / "tiny" / "bert" / "sophia+free_hessian" / "2s" / "seed0"
    assert row["status"] == "complete" and (run_dir / "notebook.ipynb").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["variant"] == "sophia+free_hessian" and summary["method"] == "sophia"
    assert summary["rst_breakdown"]["hessian"] == 0.0 and summary["rst_units"]["hessian"] > 0
