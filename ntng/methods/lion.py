"""Lion: the baseline's loop and schedule with the Lion optimizer in place of AdamW / AdamWScale.

The functional core is `ntng.training.optim.Lion`; this module only chooses its settings (the recipe's `lion_*` fields,
overridable through method options) and makes sure the RST table prices a Lion step.
"""

from __future__ import annotations

import torch

from ntng.errors import UsageError
from ntng.presets import paper_peak_ratio
from ntng.training.optim import Lion as LionOptimizer
from ntng.training.optim import decay_groups

from .base import Claim, Method, around, take_options

LION_BETAS = (0.9, 0.99)


def check_betas(method: str, betas) -> None:
    if not all(0.0 <= b < 1.0 for b in betas):
        raise UsageError(f"method {method}: betas {tuple(betas)} must lie in [0, 1)")


# Appendix C.5: the paper's values per model. Its peak is for the paper's baseline peak and moves with a preset's
# (ntng.presets.paper_peak_ratio); T5's steps are scaled by max(1e-3, RMS(param)) as the paper's T5 code does.
PAPER_OPTIONS = {"bert": {"lr": 7e-4, "weight_decay": 0.1, "rms_scale": False},
                 "t5": {"lr": 7.5e-4, "weight_decay": 0.0, "rms_scale": True}}


class Lion(Method):
    name = "lion"
    label = "Lion"
    family = "optimizers"
    component = "optimization"
    action = "replace"
    summary = "sign-of-momentum update"
    claims = (
        Claim("Lion underperforms AdamW in validation loss in nearly all budgets",
              "Kaddour et al. 2023, Section 6.1, Figure 4",
              "worse"),
    )
    card = (
        "**Lion** (Chen et al. 2023, *Symbolic Discovery of Optimization Algorithms*). Replaces AdamW with a "
        "sign-of-momentum update: p <- p (1 - lr wd); p <- p - lr sign(b1 m + (1 - b1) g); m <- b2 m + (1 - b2) g, "
        "betas 0.9/0.99 - one state tensor instead of Adam's two, every coordinate moving by exactly lr. "
        "Hyper-parameters as the paper tuned them (Appendix C.5): BERT lr 7e-4 and weight decay 0.1 (none on "
        "biases and LayerNorm); T5 lr 7.5e-4, no weight decay, the step scaled by max(1e-3, RMS(param)) like "
        "AdamWScale. The baseline's schedule, clipping and batch. Charged the table's Lion step time. "
        "Survey category: component *optimization* x action *replace*."
    )

    def __init__(self, model: str, preset, **options):
        super().__init__(model, preset)
        paper = PAPER_OPTIONS[model]
        self.options = take_options(self.name, options, {
            "lr": paper["lr"] * paper_peak_ratio(self.recipe, model), "weight_decay": paper["weight_decay"],
            "betas": LION_BETAS, "rms_scale": paper["rms_scale"]})
        if not self.options["lr"] > 0 or not self.options["weight_decay"] >= 0:
            raise UsageError(f"method lion: lr must be > 0 and weight_decay >= 0, got {self.options}")
        check_betas(self.name, self.options["betas"])

    @property
    def rst_optimizer(self) -> str:
        return "lion"

    def tuning(self) -> dict[str, list]:
        wd = self.options["weight_decay"]
        # C.5: lr and weight decay; no decay (T5's tuned value) is tried against two decays instead of factors of 0
        return {"lr": around(self.options["lr"]), "weight_decay": around(wd) if wd > 0 else [0.0, 0.01, 0.1]}

    def settings(self) -> dict:
        return {"optimizer": "lion", **self.options}

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        o = self.options
        return LionOptimizer(decay_groups(model, o["weight_decay"]), lr=o["lr"], betas=o["betas"],
                             weight_decay=o["weight_decay"], rms_scale=o["rms_scale"])
