"""RHO-LOSS (Mindermann et al. 2022): train on the examples whose loss is high and still reducible.

Each optimizer step scores a mega-batch (twice the batch) with the current model and keeps the batch's worth of
examples with the largest reducible loss, current loss - irreducible loss, where the irreducible loss comes from a
model of the same architecture trained on a 20% hold-out (`ntng.methods.irreducible`, built once and cached, its cost
reported apart). The run trains on the other 80% ("rho_main" split, `ntng.data.splits`); IL losses are looked up by
stable example id, so they stay aligned whatever the data order.

The two losses are taken under different masks, as in the paper's code (`bert/efficient_training/
extract_il_losses.py` stores each example's loss from one pass of the IL model over the training loader, whose
collator masks at random; `pretrain_bert_rho_loss.py` subtracts it from the loss of the example as the training
loader masked it that step): the IL loss under one fixed masking per window (`IL_MASK_SEED`), the current loss under
the run's own. Scoring both under one mask would need either a fixed mask per window for training (no dynamic
masking) or an IL forward pass per scored example (a cost the paper does not pay).
"""

from __future__ import annotations

import torch

from ntng.data.batches import concat_batches, take_rows
from ntng.errors import RunError, UsageError
from ntng.presets import middle_budget, parse_budget

from .base import Claim, Method, Run, take_options
from .irreducible import ensure_il_losses, lookup_il_losses
from .selection import ExampleQueue, SelectionCounters, score_examples


def il_budget_seconds(preset) -> float:
    """The IL model's RST budget: the preset's middle budget, as the paper trains it for 12 h of its 6/12/24 h."""
    return parse_budget(middle_budget(preset.budgets))


def select_top_k(reducible_losses: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest reducible losses, largest first (ties: the earlier example first)."""
    assert 0 < k <= reducible_losses.numel(), (k, reducible_losses.numel())
    order = torch.sort(reducible_losses, descending=True, stable=True).indices
    return order[:k]


class RhoLoss(Method):
    extra_work = ("scoring",)
    studied_on = ("bert",)  # the paper ran batch selection on BERT only
    name = "rho_loss"
    label = "RHO-LOSS"
    family = "selection"
    component = "data"
    action = "restrict"
    summary = "train on examples with high reducible loss"
    claims = (
        Claim("RHO-LOSS does not improve the validation loss over the baseline",
              "Kaddour et al. 2023, Section 5.3, Figure 3",
              "not_better"),
        Claim("RHO-LOSS does not improve the validation loss over the baseline trained on the same 80% of the data",
              "Kaddour et al. 2023, Section 5.3 (control added here: the baseline on its split)",
              "not_better",
              against="baseline+data_split=rho_main"),
        Claim("With its scoring passes free, RHO-LOSS reaches a slightly better validation loss",
              "Kaddour et al. 2023, Section 5.4, Table 4",
              "better",
              settings="free_scoring"),
    )
    data_split = "rho_main"
    requires_data_split = True
    card = (
        "RHO-LOSS (Mindermann et al. 2022): per step, score a mega-batch of twice the batch with a no-grad forward "
        "pass and train on the half with the largest reducible loss (current loss - irreducible loss). The "
        "irreducible-loss model is the baseline of the same architecture trained on a 20% hold-out under its own "
        "budget (the preset's middle one, as the paper's 12 h of 6/12/24 h), built once and cached with its losses keyed by example id; its "
        "RST is reported apart, as in the paper. Masks, as in the paper's code: an example's irreducible loss is "
        "taken once, under one fixed masking of its window, and its current loss under the masking the run's "
        "stream gives it that step, so the two are measured on different masked targets (the paper's code stores "
        "the IL model's losses from one pass over the training loader and scores each mega-batch as it comes). "
        "The run trains on the other 80% (run the baseline with "
        "--data-split rho_main for the like-for-like comparison). Scoring at forward-only cost (free with "
        "--free-scoring). Survey category: component *data* x action *select*."
    )

    def __init__(self, model: str, preset, **options):
        super().__init__(model, preset)
        shape = preset.shape(model)
        self.options = take_options(self.name, options, {
            "mega_batch_factor": 2, "il_budget_s": il_budget_seconds(preset), "il_seed": 0})
        o = self.options
        if o["mega_batch_factor"] < 1:
            raise UsageError(f"method {self.name}: mega_batch_factor must be >= 1, got {o['mega_batch_factor']}")
        if not o["il_budget_s"] > 0:
            raise UsageError(f"method {self.name}: il_budget_s must be > 0, got {o['il_budget_s']}")
        if o["il_seed"] < 0:
            raise UsageError(f"method {self.name}: il_seed must be >= 0, got {o['il_seed']}")
        self.micro_batch = shape.micro_batch
        self.batch = shape.micro_batch * shape.grad_accum
        self.il_ids = self.il_losses = None
        self.queue = ExampleQueue()
        self.counters = SelectionCounters()
        self.reducible = {"scored_sum": 0.0, "kept_sum": 0.0, "kept_il_sum": 0.0}

    def tuning(self) -> dict[str, list]:
        # C.4: the mega-batch, as a multiple of the batch; one would select nothing, so only larger ones are tried
        factor = self.options["mega_batch_factor"]
        return {"mega_batch_factor": [factor, 2 * factor, 4 * factor]}

    def settings(self) -> dict:
        return {**self.options, "mega_batch": self.batch * self.options["mega_batch_factor"], "batch": self.batch}

    def prepare(self, spec, log, pretrain=None) -> dict:
        self.il_ids, self.il_losses, info = ensure_il_losses(spec, self.options["il_budget_s"],
                                                             self.options["il_seed"], pretrain, log)
        return {"il_model": info}

    def next_microbatch(self, run: Run) -> dict:
        if len(self.queue) < self.micro_batch:
            self._select_batch(run)
        return self.queue.pop(self.micro_batch)

    def _select_batch(self, run: Run) -> None:
        if self.il_ids is None:
            raise RunError("rho_loss has no irreducible losses: the run was not prepared (use ntng.pretrain)")
        candidates = [run.batches.next() for _ in range(self.options["mega_batch_factor"] * self.batch
                                                         // self.micro_batch)]
        losses = [score_examples(run, batch) for batch in candidates]
        mega = concat_batches(candidates)
        current = torch.cat(losses)
        il = lookup_il_losses(mega["example_ids"], self.il_ids, self.il_losses)
        reducible = current - il
        chosen = select_top_k(reducible, self.batch)
        kept = torch.zeros_like(current, dtype=torch.bool)
        kept[chosen] = True
        for part, part_kept in zip(losses, kept.split(self.micro_batch), strict=True):
            self.counters.add(part, part_kept)
        self.reducible["scored_sum"] += float(reducible.sum())
        self.reducible["kept_sum"] += float(reducible[chosen].sum())
        self.reducible["kept_il_sum"] += float(il[chosen].sum())
        self.queue.push(take_rows(mega, chosen))

    def stats(self) -> dict:
        c, r = self.counters, self.reducible
        return {**c.stats(),
                "scored_mean_reducible_loss": r["scored_sum"] / c.scored if c.scored else None,
                "selected_mean_reducible_loss": r["kept_sum"] / c.kept if c.kept else None,
                "selected_mean_il_loss": r["kept_il_sum"] / c.kept if c.kept else None}

    def state_dict(self) -> dict:
        return {"queue": self.queue.state_dict(), "counters": self.counters.state_dict(),
                "reducible": dict(self.reducible)}

    def load_state(self, state: dict, run: Run) -> None:
        self.queue.load_state_dict(state["queue"])
        self.counters.load_state_dict(state["counters"])
        self.reducible = dict(state["reducible"])
