"""Learning-rate schedules as pure functions of the budget fraction t/T (RST used / RST budget).

Each returns a multiplier of the peak learning rate. Both decay fully by the end of the budget: that is the
baseline the study insists on (a schedule tuned for a longer run flatters any method that stops early).
"""

from __future__ import annotations

import math


def _clamp(fraction: float) -> float:
    assert fraction >= 0.0, f"budget fraction must be >= 0, got {fraction}"
    return min(fraction, 1.0)  # the last step may start just before the end and finish just past it


def one_cycle(fraction: float, peak_at: float = 0.5) -> float:
    """BERT (crammed): a triangle, 0 -> 1 at `peak_at` -> 0 at the end of the budget."""
    assert 0.0 < peak_at < 1.0, peak_at
    f = _clamp(fraction)
    return f / peak_at if f <= peak_at else (1.0 - f) / (1.0 - peak_at)


def cosine_budget(fraction: float, warmup: float = 0.15, start: float = 0.5, end: float = 1e-5) -> float:
    """T5 (nanoT5-style): linear warm-up from `start` to 1 over the first `warmup` of the budget, then a
    half-cosine from 1 down to `end` at the end of the budget."""
    assert 0.0 <= warmup < 1.0 and 0.0 <= start <= 1.0 and 0.0 <= end <= 1.0
    f = _clamp(fraction)
    if f < warmup:
        return start + (1.0 - start) * f / warmup
    progress = (f - warmup) / (1.0 - warmup)
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES = {"one_cycle": one_cycle, "cosine_budget": cosine_budget}
