"""`Run.forward`: the one helper through which the loop and every method's extra passes run the model, charged for
the kind of pass before the work."""

from __future__ import annotations

import pytest
import torch

from ntng.data.collate import BertMLMCollator
from ntng.methods.base import Run
from ntng.models.pretraining import build_model
from ntng.presets import PRESETS
from ntng.training.rst import RSTClock, RSTTable

SMOKE = PRESETS["smoke"]
# a table written by hand: train l layers = l seconds, forward l layers = l / 10, so charges read off directly
TABLE = RSTTable(name="by-hand", model="bert", preset="smoke", num_layers=4, train=(1.0, 2.0, 3.0, 4.0),
                 forward=(0.1, 0.2, 0.3, 0.4), optimizer={"adamw": 0.5})


def make_run():
    torch.manual_seed(0)
    model = build_model("bert", SMOKE, vocab_size=512)
    clock = RSTClock(TABLE, budget_s=100.0)
    return Run(model=model, optimizer=None, clock=clock, batches=None, preset=SMOKE, model_name="bert")


def batch():
    ids = torch.randint(5, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[:, -1] = 2, 3
    return BertMLMCollator(512, seed=0)(ids)


def test_each_kind_of_pass_is_charged_its_unit_at_the_depth_that_runs():
    run = make_run()
    out = run.forward(batch(), kind="train")
    assert run.clock.breakdown["train"] == 4.0 and out["loss"].requires_grad
    run.forward(batch(), kind="train", active_layers=[0, 2])
    assert run.clock.breakdown["train"] == 4.0 + 2.0
    scored = run.forward(batch(), kind="scoring")
    assert run.clock.breakdown["scoring"] == pytest.approx(0.4) and not scored["loss"].requires_grad
    run.forward(batch(), kind="hessian")
    assert run.clock.breakdown["hessian"] == 4.0
    assert run.clock.rst_seconds == pytest.approx(4.0 + 2.0 + 0.4 + 4.0)
    assert run.clock.units == {"train": 2, "scoring": 1, "hessian": 1, "optimizer": 0}


def test_a_free_kind_runs_but_costs_nothing_and_a_bad_kind_is_refused():
    run = make_run()
    run.clock = RSTClock(TABLE, budget_s=100.0, free=("scoring",))
    run.forward(batch(), kind="scoring")
    assert run.clock.rst_seconds == 0.0 and run.clock.units["scoring"] == 1
    with pytest.raises(ValueError, match="kind"):
        run.forward(batch(), kind="free_lunch")


def test_the_pass_equals_a_plain_forward():
    run = make_run()
    b = batch()
    with torch.no_grad():
        expected = run.model(b)["per_example_loss"]
        got = run.forward(b, kind="scoring")["per_example_loss"]
    assert torch.equal(expected, got)


def test_a_pass_over_part_of_a_micro_batch_is_charged_its_share():
    run = make_run()
    run.forward(batch(), kind="hessian", share=0.5)
    run.forward(batch(), kind="scoring", share=0.25)
    assert run.clock.breakdown["hessian"] == 2.0 and run.clock.breakdown["scoring"] == pytest.approx(0.1)
    assert run.clock.units["hessian"] == 1
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="share"):
            run.forward(batch(), kind="train", share=bad)
