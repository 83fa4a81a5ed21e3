"""How the book, the report and `ntng compare` write a number: one formatter for all of them."""

from __future__ import annotations

import math


def fmt(value, digits: int = 3, signed: bool = False, missing: str = "-") -> str:
    """`value` with `digits` decimals (a sign always, if `signed`); `missing` for None, NaN, infinities and what is
    not a number."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return missing
    if not math.isfinite(value):
        return missing
    return f"{value:{'+' if signed else ''}.{digits}f}"


def fmt_ci(mean, low, high, digits: int = 3, signed: bool = False) -> str:
    """A mean and its interval, "6.125 [6.100, 6.150]"; the mean alone where the interval is missing (one seed)."""
    text = fmt(mean, digits, signed)
    if text != "-" and fmt(low) != "-" and fmt(high) != "-":
        text += f" [{fmt(low, digits, signed)}, {fmt(high, digits, signed)}]"
    return text
