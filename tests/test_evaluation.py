"""The evaluation set (ntng.training.evaluation): which validation windows, the floor on exactly their targets, the loss as a
mean over every target, and a run evaluated otherwise counted stale."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ntng.experiments.cells import stale_settings
from ntng.presets import PRESETS
from ntng.training.evaluation import eval_window_indices, mean_loss, target_floor_losses, unigram_log_probs
from ntng.training.spec import changed_settings, settings_in_force

ROOT = Path(__file__).resolve().parents[1]


def test_the_windows_are_the_whole_split_or_spread_evenly_over_it():
    assert list(eval_window_indices(5, None)) == [0, 1, 2, 3, 4]
    assert list(eval_window_indices(5, 9)) == [0, 1, 2, 3, 4]
    # floor(i * 10 / 4): 0, 2.5, 5, 7.5 -> a window from each quarter, never the first four
    assert list(eval_window_indices(10, 4)) == [0, 2, 5, 7]
    picked = eval_window_indices(1989, 512)
    assert len(set(picked)) == 512 and picked[-1] >= 1989 - 4  # reaches the last source of the split
    with pytest.raises(ValueError):
        eval_window_indices(0, None)


def test_the_bert_floor_is_the_unigram_loss_of_the_masked_targets():
    # ordinary ids 5, 6, 7 (vocab 8): training counts 3, 1, 0 -> add-one p = 4/7, 2/7, 1/7
    log_p, low, high = unigram_log_probs("bert", 8, np.array([[2, 5, 5, 5, 6, 3]]))
    assert (low, high) == (5, 8)
    losses = target_floor_losses("bert", torch.tensor([[5, 6], [7, 5]]), log_p, low, high)
    expected = [[-math.log(4 / 7), -math.log(2 / 7)], [-math.log(1 / 7), -math.log(4 / 7)]]
    assert losses == pytest.approx(np.array(expected))


def test_the_t5_floor_charges_nothing_for_sentinels_and_the_closing_eos():
    # vocab 110: ids 10..109 are the 100 sentinels, 1..9 what a span can hold (0 is pad)
    train_tokens = np.array([[1, 4, 4, 4, 5, 0, 109]])  # counts over ids 1..9: id1 1, id4 3, id5 1 of 5 -> /14
    log_p, low, high = unigram_log_probs("t5", 110, train_tokens)
    assert (low, high) == (1, 10)
    target = torch.tensor([[109, 4, 4, 108, 1, 1]])  # <extra_id_0> 4 4 <extra_id_1> EOS-in-span EOS
    losses = target_floor_losses("t5", target, log_p, low, high)
    p4, p1 = 4 / 14, 2 / 14
    assert losses == pytest.approx(np.array([[0.0, -math.log(p4), -math.log(p4), 0.0, -math.log(p1), 0.0]]))


class MeanLabel(torch.nn.Module):
    """A stand-in model whose loss is the mean of its batch's target ids."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        return {"loss": batch["mlm_labels"].float().mean() + self.weight[0]}


def test_the_loss_is_the_mean_over_every_target_not_over_micro_batches():
    batches = [{"mlm_labels": torch.ones(1, 3, dtype=torch.long)}, {"mlm_labels": torch.full((1, 1), 4)}]
    model = MeanLabel()
    # three targets at 1 and one at 4: 7 / 4, where a mean of the two batch means would say 2.5
    assert mean_loss(model, batches, torch.device("cpu"), None) == pytest.approx(1.75)
    assert model.training


def test_a_run_evaluated_on_another_set_or_precision_is_stale():
    cpu = PRESETS["cpu"]
    now = settings_in_force("bert", "baseline", cpu)
    assert now["evaluation"]["eval_sequences"] is None and now["evaluation"]["precision"] == "float32"
    made_today = {"recipe": now["recipe"], "method_settings": now["method_settings"],
                  "evaluation": {**now["evaluation"], "fingerprint": "abc", "floor": 6.9}, "precision": "float32"}
    assert changed_settings(made_today, now) == []
    in_bf16 = {**made_today, "precision": "bfloat16"}
    assert changed_settings(in_bf16, now) == ["evaluation.precision"]
    on_a_prefix = {**made_today, "evaluation": None, "recipe": {**now["recipe"], "eval_sequences": 512}}
    assert changed_settings(on_a_prefix, now) == [
        "evaluation.eval_points", "evaluation.eval_sequences", "evaluation.mask_seed", "evaluation.selection"]


def test_the_tuning_keeps_the_evaluation_it_chose_by():
    """The committed tuning at cpu was evaluated on the first 512 windows in bf16: stale for a sweep of the
    reference grid, still its own for `ntng tune` (which sweeps with keep_evaluation)."""
    run = ROOT / "results" / "tuning" / "cpu" / "bert" / "baseline+recipe.lr=0.008" / "2m" / "seed0"
    if not (run / "config.json").exists():
        pytest.skip("the committed tuning records are not in this checkout")
    cpu = PRESETS["cpu"]
    assert "evaluation.precision" in stale_settings(run, "bert", "baseline+recipe.lr=0.008", cpu)
    assert stale_settings(run, "bert", "baseline+recipe.lr=0.008", cpu, keep_evaluation=True) == []
