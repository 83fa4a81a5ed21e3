"""Warmup-stable-decay (WSD; MiniCPM, Hu et al. 2024; Hägele et al. 2024, "Scaling laws and compute-optimal
training beyond fixed training durations"): the baseline with another learning-rate schedule.

Linear warm-up from 0 to the peak over the first `warmup` of the budget, the peak held, then a cool-down to 0 over
the last `decay` of the budget, linear or 1 - sqrt (Hägele et al.'s best shape). Claimed to match a cosine or
linear decay of the same budget, and so to let one run serve several budgets: its stable phase can be branched
into a cool-down at any point. Like every schedule here, a pure function of the budget fraction, and it decays
fully by the end of the budget, as the protocol requires of a baseline.

Not a method the paper studied (`studied_on` is empty): it joins a grid when named (`--methods warmup_stable_decay`).
"""

from __future__ import annotations

import math

from ..errors import UsageError
from .base import Method, around, take_options


def wsd_multiplier(fraction: float, warmup: float, decay: float, sqrt_decay: bool) -> float:
    """The peak's multiplier at `fraction` of the budget: fraction / warmup during warm-up, 1 in the stable phase,
    then over the last `decay` of the budget with progress p from 0 to 1, 1 - p (linear) or 1 - sqrt(p)."""
    f = min(max(fraction, 0.0), 1.0)  # the last step may start just before the end and finish just past it
    if f < warmup:
        return f / warmup
    start = 1.0 - decay
    if f <= start:
        return 1.0
    if f >= 1.0:
        return 0.0  # exactly, whatever the rounding of 1 - decay
    progress = (f - start) / decay
    return 1.0 - (math.sqrt(progress) if sqrt_decay else progress)


class WarmupStableDecay(Method):
    name = "warmup_stable_decay"
    label = "WSD schedule"
    family = "newer_optimizers"
    component = "optimization"
    action = "reorder"
    summary = "constant learning rate, short final cool-down"
    studied_on = ()  # not in the paper's study: run when named
    card = (
        "**Warmup-stable-decay** (Hu et al. 2024, *MiniCPM*; Hägele et al. 2024, *Scaling laws and compute-optimal "
        "training beyond fixed training durations*). The baseline's optimizer, peak, clipping and batch with "
        "another schedule: linear warm-up over the first 10% of the budget, the peak held, then a cool-down to 0 "
        "over the last 20% (share and shape are settings: `decay`, `sqrt_decay` for 1 - sqrt, the shape Hägele "
        "et al. found best, else linear). Claim: it matches a cosine or linear decay of the same budget, so one "
        "run's stable phase can be branched into cool-downs for several budgets. Survey category: component "
        "*optimization* x action *reorder*."
    )

    def __init__(self, model: str, preset, **options):
        super().__init__(model, preset)
        self.options = take_options(self.name, options, {"warmup": 0.1, "decay": 0.2, "sqrt_decay": True})
        o = self.options
        if not (0.0 <= o["warmup"] < 1.0 and 0.0 < o["decay"] <= 1.0 and o["warmup"] + o["decay"] <= 1.0):
            raise UsageError(f"method {self.name}: warmup in [0, 1), decay in (0, 1] and warmup + decay <= 1, got "
                             f"warmup={o['warmup']} decay={o['decay']}")

    def tuning(self) -> dict[str, list]:
        # the cool-down's share, the setting its sources vary (10-20% and beyond); the peak is the baseline's, tuned
        return {"decay": around(self.options["decay"])}

    def settings(self) -> dict:
        return {"schedule": "warmup_stable_decay", **self.options}

    def lr_multiplier(self, budget_fraction: float) -> float:
        o = self.options
        return wsd_multiplier(budget_fraction, o["warmup"], o["decay"], o["sqrt_decay"])
