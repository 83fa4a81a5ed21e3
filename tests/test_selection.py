"""Batch selection: selective backprop and RHO-LOSS, their rules, the IL-model pipeline and their runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ntng.data.splits import RHO_HOLDOUT_FRACTION, in_holdout, select_split
from ntng.errors import RunError, UsageError
from ntng.methods import Run, build_method
from ntng.methods.irreducible import IL_MASK_SEED, compute_il_losses, ensure_il_losses, lookup_il_losses
from ntng.methods.rho_loss import select_top_k
from ntng.methods.selective_backprop import (
    default_history,
    keep_probabilities,
    percentile_ranks,
    sample_kept,
)
from ntng.models.pretraining import build_model
from ntng.presets import get_preset
from ntng.training import loop as train
from ntng.training.rst import RSTClock, shipped_table
from ntng.training.spec import resolve


def pretrain(built, tmp_path, name, **kwargs):
    data_dir, _ = built
    options = {"model": "bert", "method": "baseline", "budget": "3s", "preset": "tiny", "seed": 0,
               "out_dir": tmp_path / name, "data_dir": data_dir, "log": lambda m: None, **kwargs}
    return train.pretrain(**options)


# --- a stand-in run whose "model" returns the losses a test chooses ----------------------------------------

class ChosenLossModel(torch.nn.Module):
    """Returns, as each example's loss, the value the batch carries for it (so tests choose the scores)."""

    num_layers = 4

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch, active_layers=None):
        return {"per_example_loss": batch["chosen_loss"]}


class ChosenStream:
    """Micro-batches of `size` examples with consecutive ids and losses drawn by `loss_of(ids)`."""

    def __init__(self, size, loss_of):
        self.size, self.loss_of, self.next_id = size, loss_of, 0

    def next(self):
        ids = torch.arange(self.next_id, self.next_id + self.size)
        self.next_id += self.size
        return {"input_ids": ids[:, None].repeat(1, 3), "example_ids": ids, "chosen_loss": self.loss_of(ids)}


def stand_in_run(size, loss_of, seed=0):
    preset = get_preset("tiny")
    clock = RSTClock(shipped_table("smoke", "bert"), budget_s=1e9)
    return Run(model=ChosenLossModel(), optimizer=None, clock=clock, batches=ChosenStream(size, loss_of),
               preset=preset, model_name="bert", seed=seed)


# --- selective backprop: the rule --------------------------------------------------------------------------

def test_percentile_ranks_hand_computed():
    history = torch.tensor([1.0, 2.0, 3.0, 4.0])
    # 1.0: 0 below, 1 at or below, present -> (0 + 1 + 1) / 8; 4.0: (3 + 4 + 1) / 8; 2.5 (absent): (2 + 2) / 8
    assert percentile_ranks(torch.tensor([1.0, 4.0, 2.5]), history).tolist() == [0.25, 1.0, 0.5]
    # ties share one rank: 1.0 in [1, 1, 2, 2] -> (0 + 2 + 1) / 8
    assert percentile_ranks(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0, 2.0, 2.0])).tolist() == [0.375, 0.875]


def test_keep_probability_is_monotone_in_the_loss_and_falls_with_the_scale():
    percentiles = torch.linspace(0, 1, 101, dtype=torch.float64)
    one, two = keep_probabilities(percentiles, 1.0), keep_probabilities(percentiles, 2.0)
    assert torch.all(one[1:] >= one[:-1]) and torch.all(two[1:] >= two[:-1])
    assert torch.all(two <= one) and one[-1] == 1.0 and one[0] == 0.0
    assert torch.allclose(one, percentiles)


def test_sampling_follows_the_probabilities():
    generator = torch.Generator().manual_seed(0)
    kept = sample_kept(torch.full((20000,), 0.3, dtype=torch.float64), generator)
    assert abs(kept.double().mean().item() - 0.3) < 0.015
    assert not sample_kept(torch.zeros(100, dtype=torch.float64), generator).any()
    assert sample_kept(torch.ones(100, dtype=torch.float64), generator).all()


def test_history_covers_the_papers_number_of_micro_batches():
    assert default_history(128) == 5000 and default_history(16) == 625


def test_keep_rate_at_scale_one_is_half_over_a_long_random_stream():
    method = build_method("selective_backprop", "bert", get_preset("tiny"))
    gen = torch.Generator().manual_seed(1)
    run = stand_in_run(16, lambda ids: torch.rand(len(ids), generator=gen) * 5)
    method.bind(run)
    for _ in range(2000):
        batch = method.next_microbatch(run)
        assert batch["input_ids"].shape[0] == 16  # always a full micro-batch of kept examples
    stats = method.stats()
    assert abs(stats["keep_rate"] - 0.5) <= 0.03, stats
    assert stats["selected_mean_loss"] > stats["scored_mean_loss"]  # it keeps the harder examples
    # every scoring pass was charged at forward-only cost
    assert run.clock.units["scoring"] == stats["scoring_passes"]
    assert run.clock.breakdown["scoring"] == pytest.approx(stats["scoring_passes"] * run.clock.table.forward_seconds(4))


def test_a_larger_scale_keeps_fewer():
    method = build_method("selective_backprop", "bert", get_preset("tiny"), scale=2.0)
    gen = torch.Generator().manual_seed(2)
    run = stand_in_run(16, lambda ids: torch.rand(len(ids), generator=gen))
    method.bind(run)
    for _ in range(500):
        method.next_microbatch(run)
    assert abs(method.stats()["keep_rate"] - 1 / 3) <= 0.03  # E[U^2] = 1/3


def test_an_example_is_kept_with_its_percentile_within_the_history():
    """Losses rise with the example id and the history is one micro-batch: the example of rank k in its micro-batch
    has percentile k/16, so it is kept with probability k/16 (the top one always); kept examples come out in the
    order they were scored."""
    method = build_method("selective_backprop", "bert", get_preset("tiny"), history=16)
    run = stand_in_run(16, lambda ids: ids.float())
    method.bind(run)
    ids = torch.cat([method.next_microbatch(run)["example_ids"] for _ in range(400)])
    assert torch.all(ids[1:] > ids[:-1])
    scored_batches = int(ids[-1]) // 16  # micro-batches fully scored before the last kept example
    kept_by_rank = torch.bincount(ids[ids < scored_batches * 16] % 16, minlength=16).double() / scored_batches
    assert kept_by_rank[15] == 1.0
    expected = torch.arange(1, 17, dtype=torch.float64) / 16
    assert torch.all((kept_by_rank - expected).abs() < 0.08), kept_by_rank


def test_selective_backprop_settings_are_checked_when_built():
    preset = get_preset("tiny")
    for bad in ({"scale": 0.0}, {"scale": -1.0}, {"history": 4}, {"keep": 0.5}, {"scale": "high"}):
        with pytest.raises(UsageError):
            build_method("selective_backprop", "bert", preset, **bad)


# --- RHO-LOSS: the rule -----------------------------------------------------------------------------------

def test_top_k_of_the_reducible_loss():
    assert select_top_k(torch.tensor([0.1, 0.9, 0.5, 0.7]), 2).tolist() == [1, 3]
    assert select_top_k(torch.tensor([1.0, 2.0, 2.0, 0.0]), 3).tolist() == [1, 2, 0]  # ties: earlier first


def test_rho_loss_trains_on_the_largest_current_minus_irreducible_loss():
    """Current loss = id mod 7, IL loss = id mod 5 + 2 x (id even): the chosen set differs from the top of the
    current loss alone, and equals the top half of the difference over each mega-batch."""
    preset = get_preset("tiny")
    method = build_method("rho_loss", "bert", preset)
    batch = method.batch
    run = stand_in_run(method.micro_batch, lambda ids: (ids % 7).float())
    all_ids = np.arange(0, 100 * batch)
    method.il_ids, method.il_losses = all_ids, ((all_ids % 5) + 2.0 * (all_ids % 2 == 0)).astype(np.float32)
    chosen = []
    for _ in range(3 * preset.bert.grad_accum):
        chosen += method.next_microbatch(run)["example_ids"].tolist()
    for step in range(3):
        mega = np.arange(step * 2 * batch, (step + 1) * 2 * batch)
        reducible = (mega % 7) - method.il_losses[mega]
        expected = set(mega[np.argsort(-reducible, kind="stable")[:batch]].tolist())
        assert set(chosen[step * batch:(step + 1) * batch]) == expected
        assert expected != set(mega[np.argsort(-(mega % 7), kind="stable")[:batch]].tolist())
    stats = method.stats()
    assert stats["keep_rate"] == 0.5 and stats["scoring_passes"] == 3 * 2 * preset.bert.grad_accum
    assert stats["selected_mean_reducible_loss"] > stats["scored_mean_reducible_loss"]


def test_rho_loss_without_irreducible_losses_says_so():
    method = build_method("rho_loss", "bert", get_preset("tiny"))
    with pytest.raises(RunError, match="irreducible"):
        method.next_microbatch(stand_in_run(method.micro_batch, lambda ids: ids.float()))


def test_rho_loss_settings_are_checked_when_built():
    for bad in ({"mega_batch_factor": 0}, {"il_budget_s": 0.0}, {"il_seed": -1}, {"mega_batch": 2}):
        with pytest.raises(UsageError):
            build_method("rho_loss", "bert", get_preset("tiny"), **bad)


def test_il_lookup_follows_the_ids_in_any_order():
    ids = np.array([3, 8, 20, 41, 77])
    losses = np.array([0.3, 0.8, 2.0, 4.1, 7.7], dtype=np.float32)
    shuffled = torch.tensor([77, 3, 41, 8, 20, 3])
    assert lookup_il_losses(shuffled, ids, losses).tolist() == pytest.approx([7.7, 0.3, 4.1, 0.8, 2.0, 0.3])
    with pytest.raises(RunError, match="example id 5"):
        lookup_il_losses(torch.tensor([3, 5]), ids, losses)


# --- the split --------------------------------------------------------------------------------------------

def test_the_holdout_is_a_fifth_decided_by_id_alone():
    ids = np.arange(100_000, dtype=np.int64) * 7 + 3
    mask = in_holdout(ids)
    assert abs(mask.mean() - RHO_HOLDOUT_FRACTION) < 0.005
    order = np.random.default_rng(0).permutation(len(ids))
    assert np.array_equal(in_holdout(ids[order]), mask[order])  # order-independent
    windows = np.stack([ids, ids], axis=1)
    main_ids, main_windows = select_split(ids, windows, "rho_main")
    hold_ids, _ = select_split(ids, windows, "rho_holdout")
    assert len(main_ids) + len(hold_ids) == len(ids) and not set(main_ids) & set(hold_ids)
    assert np.array_equal(main_windows[:, 0], main_ids)


# --- the IL model pipeline and whole runs -----------------------------------------------------------------

@pytest.fixture(scope="module")
def il_model(built_fixture, tmp_path_factory):
    """One IL model for the module (built by the first RHO-LOSS run)."""
    data_dir, _ = built_fixture
    tmp = tmp_path_factory.mktemp("rho")
    lines = []
    first = train.pretrain(model="bert", method="rho_loss", budget="3s", preset="tiny", seed=0,
                           out_dir=tmp / "rho0", data_dir=data_dir, method_options={"il_budget_s": 2.0},
                           log=lines.append)
    return first, tmp, lines


def test_rho_loss_run_builds_the_il_model_then_reuses_it(il_model, built_fixture):
    data_dir, _ = built_fixture
    first, tmp, lines = il_model
    assert first["status"] == "complete" and first["data_split"] == "rho_main"
    il = first["il_model"]
    assert il["reused"] is False and il["data_split"] == "rho_holdout" and il["rst_s"] >= 2.0
    assert il["scoring_rst_s"] > 0 and il["examples"] > 0
    assert any("training the baseline on the bert hold-out" in m for m in lines)
    config = json.loads((tmp / "rho0" / "config.json").read_text())
    assert config["data_split"] == "rho_main"
    breakdown = first["rst_breakdown"]
    assert breakdown["scoring"] > 0 and breakdown["train"] > 0
    assert sum(breakdown.values()) == pytest.approx(first["rst_s"])
    assert first["rst_s"] <= first["budget_rst_s"] + 1.0  # the IL model's RST is not in the run's budget
    stats = first["method_stats"]
    assert stats["keep_rate"] == 0.5 and stats["selected_mean_reducible_loss"] >= stats["scored_mean_reducible_loss"]

    il_checkpoint = Path(il["run_dir"]) / "checkpoint.pt"
    assert il_checkpoint.is_relative_to(data_dir / "offline" / "il")  # cached with the data
    stamp = il_checkpoint.stat().st_mtime_ns
    second = train.pretrain(model="bert", method="rho_loss", budget="3s", preset="tiny", seed=1, out_dir=tmp / "rho1",
                            data_dir=data_dir, method_options={"il_budget_s": 2.0}, log=lambda m: None)
    assert second["status"] == "complete" and second["il_model"]["reused"] is True
    assert il_checkpoint.stat().st_mtime_ns == stamp  # not retrained
    assert second["il_model"]["rst_s"] == il["rst_s"]


def test_il_losses_line_up_with_ids_after_a_reshuffle(il_model, built_fixture):
    data_dir, _ = built_fixture
    first, tmp, _ = il_model
    spec = resolve("bert", "rho_loss", "3s", "tiny", 0, tmp / "unused", data_dir=data_dir,
                   method_options={"il_budget_s": 2.0})
    ids, losses, info = ensure_il_losses(spec, 2.0, 0, train.pretrain, log=lambda m: None)
    assert info["reused"] is True and np.all(ids[1:] > ids[:-1])
    from ntng.data import corpus as data_mod
    from ntng.data.batches import make_collator

    packed = data_mod.load_packed("bert", spec.preset, data_dir)
    main_ids, main_windows = select_split(*data_mod.windows_array(packed["train"]), "rho_main")
    assert np.array_equal(np.sort(main_ids), ids)
    vocab_size = data_mod.load_tokenizer("bert", spec.preset.vocab_size, data_dir).get_vocab_size()
    model = build_model("bert", spec.preset, vocab_size=vocab_size)
    state = torch.load(Path(info["run_dir"]) / "checkpoint.pt", weights_only=False)
    model.load_state_dict(state["model"])
    order = np.random.default_rng(5).permutation(len(main_ids))
    collator = make_collator("bert", spec.preset, vocab_size, seed=IL_MASK_SEED)
    again, _ = compute_il_losses(model, main_ids[order], main_windows[order], collator, 16, torch.device("cpu"), None)
    assert lookup_il_losses(torch.from_numpy(main_ids[order]), ids, losses).numpy() == pytest.approx(again, abs=1e-5)


def test_free_scoring_makes_scoring_free_and_buys_more_steps(built_fixture, tmp_path):
    paid = pretrain(built_fixture, tmp_path, "paid", method="selective_backprop")
    free = pretrain(built_fixture, tmp_path, "free", method="selective_backprop", free_scoring=True)
    assert paid["rst_breakdown"]["scoring"] > 0 and free["rst_breakdown"]["scoring"] == 0
    assert free["rst_units"]["scoring"] > 0  # the passes still ran
    assert free["steps"] > paid["steps"]
    stats = paid["method_stats"]
    # the loss falls fast in a short run, so fresh losses rank low in the history: fewer than half are kept
    assert 0 < stats["keep_rate"] < 1 and stats["selected_mean_loss"] > stats["scored_mean_loss"]


@pytest.mark.parametrize("model", ["bert", "t5"])
def test_selective_backprop_resumes_to_the_same_result(built_fixture, tmp_path, model):
    data_dir, _ = built_fixture
    whole = pretrain(built_fixture, tmp_path, "whole", model=model, method="selective_backprop")
    spec = resolve(model, "selective_backprop", "3s", "tiny", 0, tmp_path / "cut", data_dir=data_dir)
    train.Trainer(spec, log=lambda m: None).train(stop_after_steps=int(whole["steps"] * 0.6))
    resumed = pretrain(built_fixture, tmp_path, "cut", model=model, method="selective_backprop", resume=True)
    assert (resumed["steps"], resumed["rst_s"], resumed["final_val_loss"], resumed["method_stats"]) == (
        whole["steps"], whole["rst_s"], whole["final_val_loss"], whole["method_stats"])


def test_baseline_on_the_rho_split_and_split_mismatches(built_fixture, tmp_path):
    data_dir, _ = built_fixture
    summary = pretrain(built_fixture, tmp_path, "base80", budget="1s", data_split="rho_main")
    assert summary["status"] == "complete" and summary["data_split"] == "rho_main"
    assert pretrain(built_fixture, tmp_path, "base", budget="1s")["data_split"] == "full"
    with pytest.raises(UsageError, match="rho_main"):
        resolve("bert", "rho_loss", "3s", "tiny", 0, tmp_path / "x", data_dir=data_dir, data_split="full")
    with pytest.raises(UsageError, match="data split"):
        resolve("bert", "baseline", "3s", "tiny", 0, tmp_path / "y", data_dir=data_dir, data_split="most")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_narrowing_masked_positions_unmasks_the_dropped_ones():
    from ntng.data.batches import concat_batches
    from ntng.data.collate import BertMLMCollator, narrow_masked_positions

    windows = torch.randint(5, 300, (6, 40), generator=torch.Generator().manual_seed(0))
    windows[:, 0], windows[:, -1] = 2, 3  # [CLS] ... [SEP]
    short = windows.clone()
    short[:, 10:20] = 3  # fewer maskable tokens -> a narrower masked width
    collator = BertMLMCollator(300, seed=1)
    wide, narrow = collator(windows), collator(short)
    for b, ids in ((wide, torch.arange(6)), (narrow, torch.arange(6, 12))):
        b["example_ids"] = ids
    k, width = wide["mlm_positions"].shape[1], narrow["mlm_positions"].shape[1]
    assert width < k
    cut = narrow_masked_positions(wide, width)
    assert cut["mlm_positions"].shape == (6, width) and torch.all(cut["mlm_positions"].diff(dim=1) > 0)
    for row in range(6):
        kept = set(cut["mlm_positions"][row].tolist())
        assert kept <= set(wide["mlm_positions"][row].tolist())
        for pos in wide["mlm_positions"][row].tolist():
            expected = wide["input_ids"][row, pos] if pos in kept else windows[row, pos]
            assert cut["input_ids"][row, pos] == expected  # kept: still masked; dropped: the original token
        assert torch.equal(cut["mlm_labels"][row], windows[row, cut["mlm_positions"][row]])
    assert torch.equal(narrow_masked_positions(wide, width)["mlm_positions"], cut["mlm_positions"])  # by id
    joined = concat_batches([wide, narrow])
    assert joined["mlm_positions"].shape == (12, width) and torch.equal(joined["example_ids"], torch.arange(12))
