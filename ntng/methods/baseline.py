"""The baseline: the model's standard recipe with a schedule that decays fully by the end of the budget."""

from __future__ import annotations

from .base import Method, around


class Baseline(Method):
    name = "baseline"
    label = "baseline"
    family = ""
    component = "-"
    action = "-"
    summary = "AdamW on a schedule that decays fully by the end of the budget"
    card = (
        "**Baseline.** BERT: AdamW (lr 1e-3, betas 0.9/0.98, eps 1e-12, weight decay 0.01 except biases and "
        "LayerNorm, clipping 0.5) with a one-cycle triangle (0 -> peak at half the budget -> 0 at the end). "
        "T5: AdamWScale (lr 2e-2 scaled by max(1e-3, RMS(param)), betas 0.9/0.999, eps 1e-6, clipping 1.0) with "
        "warm-up from 0.5x to 1x over 15% of the budget and a half-cosine to 1e-5x. Every schedule is a function "
        "of the fraction of the RST budget used, so it always ends fully decayed."
    )

    def tuning(self) -> dict[str, list]:
        return {"recipe.lr": around(self.recipe.lr)}  # C.1: the baseline's peak learning rate
