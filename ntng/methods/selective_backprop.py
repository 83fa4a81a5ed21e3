"""Selective backprop (Jiang et al. 2019), as the study runs it on pre-training.

Every candidate micro-batch is scored with a no-grad forward pass (per-sequence loss, charged at forward cost);
the losses join a history of the most recent ones; an example is kept with probability percentile(loss)^scale,
its percentile taken within that history (scale 1 keeps about half, 2 about a third). Kept examples accumulate
until a full micro-batch, which the loop then trains on. The history is 5000 losses in the paper (micro-batches
of 128): here it covers the same number of micro-batches, round(5000 / 128 x micro-batch) losses.
"""

from __future__ import annotations

import torch

from ntng.data.batches import take_rows
from ntng.errors import UsageError

from .base import Claim, Method, Run, around, take_options
from .selection import ExampleQueue, SelectionCounters, score_examples

PAPER_HISTORY, PAPER_MICRO_BATCH = 5000, 128


def percentile_ranks(values: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Each value's percentile rank within `history`, in [0, 1]: the mean of the share of history strictly below
    it and the share at or below it, counting the value itself once when it is in the history (the "rank" kind of
    scipy's percentileofscore, divided by 100). Ties share one rank."""
    n = history.numel()
    assert n > 0, "empty history"
    below = (history[None, :] < values[:, None]).sum(dim=1)
    at_or_below = (history[None, :] <= values[:, None]).sum(dim=1)
    present = (below < at_or_below).long()
    return (below + at_or_below + present).double() / (2 * n)


def keep_probabilities(percentiles: torch.Tensor, scale: float) -> torch.Tensor:
    """percentile^scale: high-loss examples are kept, low-loss ones mostly skipped; a larger scale keeps fewer."""
    assert scale > 0, scale
    return percentiles.clamp(0.0, 1.0) ** scale


def sample_kept(probabilities: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask: each example kept independently with its probability."""
    return torch.rand(probabilities.shape, generator=generator, dtype=torch.float64) < probabilities


def default_history(micro_batch: int) -> int:
    return max(1, round(PAPER_HISTORY / PAPER_MICRO_BATCH * micro_batch))


class SelectiveBackprop(Method):
    extra_work = ("scoring",)
    studied_on = ("bert",)  # the paper ran batch selection on BERT only
    name = "selective_backprop"
    label = "selective backprop"
    family = "selection"
    component = "data"
    action = "restrict"
    summary = "back-propagate only high-loss examples"
    claims = (
        Claim("Selective backprop does not improve the validation loss over the baseline",
              "Kaddour et al. 2023, Section 5.3, Figure 3",
              "not_better"),
        Claim("With its scoring passes free, selective backprop still does not improve",
              "Kaddour et al. 2023, Section 5.4, Table 4",
              "not_better",
              settings="free_scoring"),
    )
    card = (
        "Selective backprop (Jiang et al. 2019): score each candidate micro-batch with a no-grad forward pass, keep "
        "an example with probability percentile(loss)^scale within the recent loss history (5000 losses at the "
        "paper's micro-batch of 128; scaled to cover as many micro-batches here), and train only on full "
        "micro-batches of kept examples. Scoring passes are charged at forward-only cost (free with "
        "--free-scoring, the paper's ablation). Baseline optimizer, schedule and batch. Survey category: "
        "component *data* x action *select*."
    )

    def __init__(self, model: str, preset, **options):
        super().__init__(model, preset)
        micro_batch = preset.shape(model).micro_batch
        self.options = take_options(self.name, options, {"scale": 1.0, "history": default_history(micro_batch)})
        if not self.options["scale"] > 0:
            raise UsageError(f"method {self.name}: scale must be > 0, got {self.options['scale']}")
        if self.options["history"] < micro_batch:
            raise UsageError(f"method {self.name}: history ({self.options['history']}) must hold at least one "
                             f"micro-batch ({micro_batch})")
        self.micro_batch = micro_batch
        self.history = torch.empty(0, dtype=torch.float32)
        self.queue = ExampleQueue()
        self.counters = SelectionCounters()
        self.generator = torch.Generator()

    def tuning(self) -> dict[str, list]:
        return {"scale": around(self.options["scale"])}  # C.3: beta, how sharply low losses are dropped

    def settings(self) -> dict:
        return dict(self.options)

    def bind(self, run: Run) -> None:
        self.generator.manual_seed(run.seed * 1_000_003 + 17)  # its own stream: training RNG use is unchanged

    def next_microbatch(self, run: Run) -> dict:
        while len(self.queue) < self.micro_batch:
            candidates = run.batches.next()
            losses = score_examples(run, candidates)
            self.history = torch.cat([self.history, losses])[-self.options["history"]:]
            kept = sample_kept(keep_probabilities(percentile_ranks(losses, self.history), self.options["scale"]),
                               self.generator)
            self.counters.add(losses, kept)
            self.queue.push(take_rows(candidates, kept.nonzero().flatten()))
        return self.queue.pop(self.micro_batch)

    def stats(self) -> dict:
        return self.counters.stats()

    def state_dict(self) -> dict:
        return {"history": self.history, "queue": self.queue.state_dict(), "counters": self.counters.state_dict(),
                "generator": self.generator.get_state()}

    def load_state(self, state: dict, run: Run) -> None:
        self.history = state["history"]
        self.queue.load_state_dict(state["queue"])
        self.counters.load_state_dict(state["counters"])
        self.generator.set_state(state["generator"])
