"""Learning-rate schedules as functions of the budget fraction: hand values, clamping, monotonicity."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntng.training.schedules import SCHEDULES, cosine_budget, one_cycle

END = 1e-5
TOL = 1e-12  # monotonicity is checked up to rounding of the last bit or so


def test_schedules_are_registered_by_name():
    assert {"one_cycle": one_cycle, "cosine_budget": cosine_budget} == SCHEDULES


# ----------------------------------------------------------------------------------------------- one_cycle


@pytest.mark.parametrize(("fraction", "expected"), [
    (0.0, 0.0), (0.1, 0.2), (0.25, 0.5), (0.5, 1.0), (0.6, 0.8), (0.75, 0.5), (0.9, 0.2), (1.0, 0.0),
])
def test_one_cycle_hand_values(fraction, expected):
    assert one_cycle(fraction) == pytest.approx(expected, abs=1e-12)


def test_one_cycle_endpoints_are_exact():
    assert one_cycle(0.0) == 0.0 and one_cycle(0.5) == 1.0 and one_cycle(1.0) == 0.0


@pytest.mark.parametrize("fraction", [1.0 + 1e-9, 1.01, 1.5, 3.0, 1e9])
def test_one_cycle_clamps_past_the_end(fraction):
    assert one_cycle(fraction) == 0.0


@pytest.mark.parametrize("fraction", [-1e-12, -0.1, -1.0, float("nan")])
def test_one_cycle_asserts_on_a_negative_fraction(fraction):
    with pytest.raises(AssertionError):
        one_cycle(fraction)


def test_one_cycle_other_peak():
    assert one_cycle(0.2, peak_at=0.2) == 1.0
    assert one_cycle(0.1, peak_at=0.2) == pytest.approx(0.5, abs=1e-12)
    assert one_cycle(0.6, peak_at=0.2) == pytest.approx(0.5, abs=1e-12)
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(AssertionError):
            one_cycle(0.3, peak_at=bad)


@settings(max_examples=200, deadline=None)
@given(a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0))
def test_one_cycle_rises_then_falls(a, b):
    lo, hi = min(a, b), max(a, b)
    for f in (lo, hi):
        assert 0.0 <= one_cycle(f) <= 1.0
        # the triangle itself, stated independently
        assert one_cycle(f) == pytest.approx(1.0 - abs(2.0 * f - 1.0), abs=1e-12)
    if hi <= 0.5:
        assert one_cycle(lo) <= one_cycle(hi) + TOL
    if lo >= 0.5:
        assert one_cycle(lo) >= one_cycle(hi) - TOL


@settings(max_examples=100, deadline=None)
@given(f=st.floats(0.0, 0.5))
def test_one_cycle_is_symmetric_about_the_peak(f):
    assert one_cycle(0.5 - f) == pytest.approx(one_cycle(0.5 + f), abs=1e-12)


# ------------------------------------------------------------------------------------------- cosine_budget


def test_cosine_budget_starts_at_half():
    assert cosine_budget(0.0) == 0.5


def test_cosine_budget_warmup_is_linear():
    assert cosine_budget(0.075) == pytest.approx(0.75, abs=1e-12)  # halfway through the warm-up
    assert cosine_budget(0.03) == pytest.approx(0.6, abs=1e-12)
    assert cosine_budget(0.12) == pytest.approx(0.9, abs=1e-12)


def test_cosine_budget_peaks_at_the_end_of_warmup():
    assert cosine_budget(0.15) == 1.0
    assert cosine_budget(0.15 - 1e-9) == pytest.approx(1.0, abs=1e-7)  # continuous at the join
    assert cosine_budget(0.15 + 1e-9) == pytest.approx(1.0, abs=1e-7)


def test_cosine_budget_decay_is_a_half_cosine():
    midpoint = 0.15 + 0.85 / 2  # 0.575
    assert cosine_budget(midpoint) == pytest.approx((1 + END) / 2, rel=1e-12)
    # a quarter of the way through the decay: end + (1 - end) (1 + cos(pi/4)) / 2
    quarter = 0.15 + 0.85 / 4
    assert cosine_budget(quarter) == pytest.approx(END + (1 - END) * (1 + math.sqrt(0.5)) / 2, rel=1e-12)
    assert cosine_budget(quarter) == pytest.approx(0.8535548, rel=1e-6)


def test_cosine_budget_ends_at_end():
    assert cosine_budget(1.0) == pytest.approx(END, rel=1e-9, abs=0)
    for past in (1.0 + 1e-9, 1.2, 10.0):
        assert cosine_budget(past) == cosine_budget(1.0)


@pytest.mark.parametrize("fraction", [-1e-12, -0.5, float("nan")])
def test_cosine_budget_asserts_on_a_negative_fraction(fraction):
    with pytest.raises(AssertionError):
        cosine_budget(fraction)


def test_cosine_budget_other_settings():
    assert cosine_budget(0.0, warmup=0.0) == 1.0  # no warm-up: starts at the peak
    assert cosine_budget(0.5, warmup=0.0, end=0.0) == pytest.approx(0.5, abs=1e-12)
    assert cosine_budget(0.1, warmup=0.2, start=0.0) == pytest.approx(0.5, abs=1e-12)
    assert cosine_budget(1.0, end=0.1) == pytest.approx(0.1, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(a=st.floats(0.0, 1.0), b=st.floats(0.0, 1.0))
def test_cosine_budget_rises_then_falls(a, b):
    lo, hi = min(a, b), max(a, b)
    for f in (lo, hi):
        assert END - TOL <= cosine_budget(f) <= 1.0 + TOL
        if f < 0.15:
            assert 0.5 <= cosine_budget(f) < 1.0
    if hi <= 0.15:
        assert cosine_budget(lo) <= cosine_budget(hi) + TOL
    if lo >= 0.15:
        assert cosine_budget(lo) >= cosine_budget(hi) - TOL


@settings(max_examples=100, deadline=None)
@given(f=st.floats(0.0, 2.0))
def test_budget_schedules_never_exceed_the_peak_and_are_finite(f):
    for schedule in (one_cycle, cosine_budget):
        value = schedule(f)
        assert math.isfinite(value) and 0.0 <= value <= 1.0
        if f >= 1.0:
            assert value == schedule(1.0)
