"""RST tables and the clock: the paper's numbers exactly, bad tables refused by entry, interpolation, charging."""

from __future__ import annotations

import copy
import itertools
import json
import math
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ntng.errors import UsageError
from ntng.training.rst import KINDS, RSTClock, load_table, shipped_table, shipped_table_path, table_from_dict

# The facts, typed in from the paper and its official code (not read from the package's files).
PAPER_BERT_TRAIN = (.02521, .03837, .05177, .06508, .07847, .09188, .1052, .1186,
                    .1319, .1454, .1589, .1722, .1857, .1988, .212, .2253)
PAPER_BERT_FORWARD_FULL = .09285
PAPER_T5_TRAIN = (.129, .209, .291, .373, .455, .538, .619, .703, .783, .865, .947, 1.031)
PAPER_T5_WHOLE_STEP = {"adamw": 1.031, "lion": 1.043, "sophia": 1.156}
# Sophia's whole step includes its Hessian passes (a whole batch every 10 steps), charged separately by ntng
PAPER_T5_HESSIAN_PER_STEP = {"adamw": 0.0, "lion": 0.0, "sophia": 1.031 / 10}
PAPER_T5_FORWARD_RATIO = 0.4121  # the ratio the T5 table declares (BERT's 0.09285 / 0.2253, rounded)


def paper_bert_forward(layers: int) -> float:
    """Forward-only BERT time: given at full depth, proportional to forward+backward below it."""
    if layers == 16:
        return PAPER_BERT_FORWARD_FULL
    return PAPER_BERT_TRAIN[layers - 1] * PAPER_BERT_FORWARD_FULL / PAPER_BERT_TRAIN[-1]


def shipped_json(name: str) -> dict:
    return json.loads((Path(str(resources.files("ntng"))) / "tables" / name).read_text())


def minimal(num_layers: int = 4, train=None, forward=None, optimizer=None, interpolated=None, **extra) -> dict:
    raw = {
        "format": 1, "name": "t", "model": "bert", "preset": "test", "num_layers": num_layers,
        "units": {
            "train": {str(n): 0.1 * n for n in range(1, num_layers + 1)} if train is None else train,
            "forward": {str(n): 0.04 * n for n in range(1, num_layers + 1)} if forward is None else forward,
            "optimizer": {"adamw": 0.01} if optimizer is None else optimizer,
        },
    }
    if interpolated is not None:
        raw["interpolated"] = interpolated
    raw.update(extra)
    return raw


# ------------------------------------------------------------------------------------------ the paper's tables


def test_paper_bert_table_is_the_papers_with_the_typo_corrected():
    table = shipped_table("paper", "bert")
    assert table.model == "bert" and table.num_layers == 16
    assert table.train == PAPER_BERT_TRAIN  # exact: the JSON holds the paper's decimal literals
    assert table.train_seconds(7) == 0.1052
    assert table.forward_seconds(16) == PAPER_BERT_FORWARD_FULL
    assert table.optimizer == {"adamw": 0.0, "lion": 0.0, "sophia": 0.0}
    assert table.micro_batch == {"sequences": 128, "tokens_per_sequence": 128}
    notes = " ".join(table.to_dict()["notes"])
    assert "units.train[7]" in notes and "0.01052" in notes and "typo" in notes


def test_paper_bert_forward_is_proportional_to_train():
    table = shipped_table("paper", "bert")
    # hand-computed: 0.1186 * 0.09285 / 0.2253 = 0.048877097...
    assert table.forward_seconds(8) == pytest.approx(0.1186 * 0.09285 / 0.2253, rel=1e-12)
    assert table.forward_seconds(8) == pytest.approx(0.0488770972, rel=1e-9)
    for layers in range(1, 17):
        assert table.forward_seconds(layers) == pytest.approx(paper_bert_forward(layers), rel=1e-12)


def test_paper_t5_table_is_the_papers():
    table = shipped_table("paper", "t5")
    assert table.model == "t5" and table.num_layers == 12
    assert table.train == PAPER_T5_TRAIN
    for optimizer, whole in PAPER_T5_WHOLE_STEP.items():  # optimizer units are the extra over AdamW's step
        amortised_hessian = PAPER_T5_HESSIAN_PER_STEP[optimizer]
        assert table.train_seconds(12) + table.optimizer_seconds(optimizer) + amortised_hessian == pytest.approx(
            whole, abs=5e-4)
    assert table.forward_seconds(12) == pytest.approx(1.031 * 0.4121, rel=1e-12)
    assert table.forward_seconds(1) == pytest.approx(0.0531609, rel=1e-12)
    assert pytest.approx(0.09285 / 0.2253, abs=5e-5) == PAPER_T5_FORWARD_RATIO


def test_official_bert_table_with_the_typo_is_refused_by_name():
    raw = shipped_json("paper-bert.json")
    raw["units"]["train"]["7"] = 0.01052
    with pytest.raises(UsageError, match=r"units\.train\[7\]") as info:
        table_from_dict(raw)
    assert "0.01052" in str(info.value)


def test_shipped_table_unknown_preset_is_a_usage_error():
    with pytest.raises(UsageError, match="no shipped RST table"):
        shipped_table("nonesuch", "bert")


SHIPPED = sorted(p.name for p in (Path(str(resources.files("ntng"))) / "tables").glob("*.json"))


def test_the_tables_listed_here_are_shipped():
    assert {"paper-bert.json", "paper-t5.json", "smoke-bert.json", "smoke-t5.json"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_table_validates_and_is_non_decreasing(name):
    raw = shipped_json(name)
    table = load_table(Path(str(resources.files("ntng"))) / "tables" / name)
    assert shipped_table_path(raw["preset"], raw["model"]).name == name
    assert table.model == raw["model"] and table.num_layers == raw["num_layers"]
    for unit in (table.train, table.forward):
        assert len(unit) == table.num_layers
        assert all(v > 0 and math.isfinite(v) for v in unit)
        assert all(a <= b for a, b in itertools.pairwise(unit))
    # a forward-only pass is part of forward+backward, so it can never cost more
    assert all(f < t for f, t in zip(table.forward, table.train, strict=True))
    assert all(v >= 0 for v in table.optimizer.values())
    assert "adamw" in table.optimizer
    # given entries are kept verbatim
    for unit in ("train", "forward"):
        for key, value in raw["units"][unit].items():
            assert getattr(table, unit)[int(key) - 1] == value


# --------------------------------------------------------------------------------------------- refused tables


def test_minimal_table_is_accepted():
    table = table_from_dict(minimal())
    assert table.train == pytest.approx((0.1, 0.2, 0.3, 0.4)) and table.optimizer == {"adamw": 0.01}


@pytest.mark.parametrize("value", [0, 0.0, -0.05, float("nan"), float("inf"), "0.3", None, True])
@pytest.mark.parametrize("key", ["1", "3"])
def test_bad_values_are_refused_naming_the_entry(value, key):
    raw = minimal()
    raw["units"]["train"][key] = value
    with pytest.raises(UsageError, match=rf"units\.train\[{key}\] = .*must be a positive number"):
        table_from_dict(raw)


def test_bad_forward_value_is_refused_naming_the_entry():
    raw = minimal()
    raw["units"]["forward"]["2"] = -1.0
    with pytest.raises(UsageError, match=r"units\.forward\[2\] = -1\.0: every value must be a positive"):
        table_from_dict(raw)


@pytest.mark.parametrize("value", [-0.01, float("nan"), "fast"])
def test_bad_optimizer_value_is_refused_naming_the_entry(value):
    raw = minimal(optimizer={"adamw": 0.0, "lion": value})
    with pytest.raises(UsageError, match=r"units\.optimizer\[lion\]"):
        table_from_dict(raw)


def test_missing_layer_count_without_a_rule_is_refused():
    raw = minimal(train={"1": 0.1, "2": 0.2, "4": 0.4})
    with pytest.raises(UsageError, match=r"units\.train lacks layer count\(s\) \[3\]"):
        table_from_dict(raw)


def test_empty_forward_without_a_rule_is_refused():
    with pytest.raises(UsageError, match=r"units\.forward lacks layer count\(s\) \[1, 2, 3, 4\]"):
        table_from_dict(minimal(forward={}))


@pytest.mark.parametrize("key", ["0", "5", "-1"])
def test_layer_count_out_of_range_is_refused(key):
    raw = minimal()
    raw["units"]["train"][key] = 0.5
    with pytest.raises(UsageError, match=rf"units\.train\[{key}\].*outside 1\.\.4"):
        table_from_dict(raw)


def test_non_numeric_layer_count_is_refused():
    raw = minimal()
    raw["units"]["forward"]["two"] = 0.08
    with pytest.raises(UsageError, match="non-numeric layer count 'two'"):
        table_from_dict(raw)


def test_unknown_interpolation_rule_is_refused():
    raw = minimal(forward={"4": 0.16}, interpolated={"forward": {"rule": "cubic"}})
    with pytest.raises(UsageError, match=r"interpolated\.forward must be an object with rule 'linear' or 'proportional'.*cubic"):
        table_from_dict(raw)


def test_proportional_rule_to_an_unknown_unit_is_refused():
    raw = minimal(forward={"4": 0.16}, interpolated={"forward": {"rule": "proportional", "to": "backward"}})
    with pytest.raises(UsageError, match=r"interpolated\.forward.*'backward'"):
        table_from_dict(raw)


def test_proportional_rule_with_nothing_to_take_a_ratio_from_is_refused():
    raw = minimal(forward={}, interpolated={"forward": {"rule": "proportional", "to": "train"}})
    with pytest.raises(UsageError, match=r"interpolated\.forward.*ratio"):
        table_from_dict(raw)


@pytest.mark.parametrize("ratio", [0, -0.5, float("inf")])
def test_proportional_rule_with_a_bad_ratio_is_refused(ratio):
    raw = minimal(forward={}, interpolated={"forward": {"rule": "proportional", "to": "train", "ratio": ratio}})
    with pytest.raises(UsageError, match=r"interpolated\.forward: ratio"):
        table_from_dict(raw)


@pytest.mark.parametrize("fmt", [0, 2, "1", None])
def test_wrong_format_number_is_refused(fmt):
    raw = minimal(format=fmt)
    with pytest.raises(UsageError, match=r"format must be 1"):
        table_from_dict(raw)


def test_missing_format_is_refused():
    raw = minimal()
    del raw["format"]
    with pytest.raises(UsageError, match="format must be 1, got None"):
        table_from_dict(raw)


@pytest.mark.parametrize("key", ["model", "preset", "num_layers", "units"])
def test_missing_top_level_key_is_refused(key):
    raw = minimal()
    del raw[key]
    with pytest.raises(UsageError, match=f"missing '{key}'"):
        table_from_dict(raw)


@pytest.mark.parametrize("num_layers", [0, -4, 4.0, "4"])
def test_bad_num_layers_is_refused(num_layers):
    raw = minimal()
    raw["num_layers"] = num_layers
    with pytest.raises(UsageError, match="num_layers must be a positive integer"):
        table_from_dict(raw)


def test_units_missing_a_part_is_refused():
    raw = minimal()
    del raw["units"]["optimizer"]
    with pytest.raises(UsageError, match="units must hold objects"):
        table_from_dict(raw)


def test_non_object_is_refused():
    with pytest.raises(UsageError, match="not a JSON object"):
        table_from_dict([1, 2, 3])


def test_load_table_refuses_a_file_that_is_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"format": 1, "units": ')
    with pytest.raises(UsageError, match="not valid JSON") as info:
        load_table(path)
    assert "broken.json" in str(info.value)


def test_load_table_refuses_a_json_list(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[0.1, 0.2]")
    with pytest.raises(UsageError, match="not a JSON object"):
        load_table(path)


def test_load_table_refuses_a_missing_file(tmp_path):
    path = tmp_path / "absent.json"
    with pytest.raises(UsageError, match="no RST table at") as info:
        load_table(path)
    assert "absent.json" in str(info.value)


def test_load_table_reads_a_good_file(tmp_path):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(minimal()))
    table = load_table(path)
    assert table.name == "t" and table.train_seconds(2) == 0.2 and table.forward_seconds(4) == 0.16


def test_load_table_names_the_file_when_the_table_has_no_name(tmp_path):
    raw = minimal(format=3)
    del raw["name"]
    path = tmp_path / "anonymous.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(UsageError, match="anonymous.json"):
        load_table(path)


# ---------------------------------------------------------------------------------------------- interpolation


def test_linear_interpolation_fills_a_gap():
    raw = minimal(num_layers=5, train={"1": 0.02, "4": 0.11, "5": 0.15},
                  forward={str(n): 0.01 * n for n in range(1, 6)}, interpolated={"train": {"rule": "linear"}})
    table = table_from_dict(raw)
    # hand-computed: 0.02 + (0.11 - 0.02) * 1/3 = 0.05; 0.02 + 0.09 * 2/3 = 0.08
    assert table.train == pytest.approx((0.02, 0.05, 0.08, 0.11, 0.15), rel=1e-12)
    assert table.train[0] == 0.02 and table.train[3] == 0.11 and table.train[4] == 0.15


def test_linear_interpolation_of_the_typo_slot_gives_about_0105():
    raw = shipped_json("paper-bert.json")
    del raw["units"]["train"]["7"]
    raw["interpolated"]["train"] = {"rule": "linear"}
    table = table_from_dict(raw)
    assert table.train_seconds(7) == pytest.approx((0.09188 + 0.1186) / 2, rel=1e-12)  # = 0.10524
    assert table.train_seconds(7) == pytest.approx(0.1052, abs=1e-4)


def test_linear_interpolation_cannot_extrapolate():
    raw = minimal(train={"2": 0.2, "3": 0.3, "4": 0.4}, interpolated={"train": {"rule": "linear"}})
    with pytest.raises(UsageError, match=r"units\.train\[1\] cannot be interpolated linearly"):
        table_from_dict(raw)


def test_proportional_interpolation_with_a_given_ratio():
    raw = minimal(train={"1": 0.1, "2": 0.25, "3": 0.3, "4": 0.5}, forward={},
                  interpolated={"forward": {"rule": "proportional", "to": "train", "ratio": 0.4}})
    table = table_from_dict(raw)
    assert table.forward == pytest.approx((0.04, 0.1, 0.12, 0.2), rel=1e-12)


def test_proportional_interpolation_takes_the_ratio_of_the_given_points():
    # given forward/train ratios 0.3 (1 layer) and 0.5 (4 layers): their mean 0.4 fills layers 2 and 3
    raw = minimal(train={"1": 0.1, "2": 0.2, "3": 0.3, "4": 0.4}, forward={"1": 0.03, "4": 0.2},
                  interpolated={"forward": {"rule": "proportional", "to": "train"}})
    table = table_from_dict(raw)
    assert table.forward == pytest.approx((0.03, 0.08, 0.12, 0.2), rel=1e-12)
    assert table.forward[0] == 0.03 and table.forward[3] == 0.2


def test_proportional_interpolation_that_breaks_monotonicity_is_refused():
    # forward[1] is given as 0.5, but the ratio fills forward[2] with 0.2 * 0.5 = 0.1 < 0.5
    raw = minimal(train={"1": 0.1, "2": 0.2, "3": 0.3, "4": 0.4}, forward={"1": 0.5},
                  interpolated={"forward": {"rule": "proportional", "to": "train", "ratio": 0.5}})
    with pytest.raises(UsageError, match=r"units\.forward\[2\] = 0\.1 \(interpolated\) is below units\.forward\[1\]"):
        table_from_dict(raw)


def test_given_values_that_decrease_are_refused():
    raw = minimal(train={"1": 0.1, "2": 0.3, "3": 0.2, "4": 0.4})
    with pytest.raises(UsageError, match=r"units\.train\[3\] = 0\.2 \(given\) is below units\.train\[2\] = 0\.3"):
        table_from_dict(raw)


def test_equal_neighbours_are_allowed():
    table = table_from_dict(minimal(train={"1": 0.1, "2": 0.1, "3": 0.2, "4": 0.2}))
    assert table.train == (0.1, 0.1, 0.2, 0.2)


def test_table_lookup_out_of_range():
    table = table_from_dict(minimal())
    for layers in (0, 5):
        with pytest.raises(ValueError, match="covers 1..4"):
            table.train_seconds(layers)
        with pytest.raises(ValueError, match="covers 1..4"):
            table.forward_seconds(layers)


def test_table_from_dict_does_not_mutate_its_input():
    raw = minimal(forward={"4": 0.16}, interpolated={"forward": {"rule": "proportional", "to": "train"}})
    before = copy.deepcopy(raw)
    table_from_dict(raw)
    assert raw == before


# ------------------------------------------------------------------------------------------------------ clock


def test_clock_charges_add_up_per_kind():
    table = shipped_table("paper", "t5")
    clock = RSTClock(table, budget_s=100.0)
    assert clock.rst_seconds == 0.0 and clock.budget_fraction == 0.0 and not clock.exhausted
    assert clock.charge_train(3) == 0.291
    assert clock.charge_train(12) == 1.031
    assert clock.charge_train(12, kind="hessian") == 1.031
    assert clock.charge_forward(12) == pytest.approx(1.031 * 0.4121, rel=1e-12)
    assert clock.charge_forward(1, kind="scoring") == pytest.approx(0.129 * 0.4121, rel=1e-12)
    assert clock.charge_optimizer("lion") == 0.012
    assert clock.charge_optimizer("sophia") == 0.022
    assert clock.breakdown["train"] == 0.0 + 0.291 + 1.031
    assert clock.breakdown["hessian"] == 1.031
    assert clock.breakdown["scoring"] == pytest.approx((1.031 + 0.129) * 0.4121, rel=1e-12)
    assert clock.breakdown["optimizer"] == 0.0 + 0.012 + 0.022
    assert clock.units == {"train": 2, "scoring": 2, "hessian": 1, "optimizer": 2}
    assert set(clock.breakdown) == set(KINDS)
    assert clock.rst_seconds == sum(clock.breakdown.values())
    assert clock.rst_seconds == pytest.approx(0.291 + 2 * 1.031 + 1.16 * 0.4121 + 0.034, rel=1e-12)


def test_clock_budget_fraction_and_exhaustion():
    table = shipped_table("paper", "t5")
    clock = RSTClock(table, budget_s=0.5)
    for expected_fraction in (0.258, 0.516, 0.774):
        clock.charge_train(1)  # 0.129 s
        assert clock.budget_fraction == pytest.approx(expected_fraction, rel=1e-12)
        assert not clock.exhausted
    clock.charge_train(1)
    assert clock.rst_seconds == pytest.approx(0.516, rel=1e-12)
    assert clock.budget_fraction == pytest.approx(1.032, rel=1e-12)
    assert clock.exhausted


def test_clock_is_exhausted_exactly_at_the_budget():
    table = shipped_table("paper", "bert")
    probe = RSTClock(table, budget_s=1.0)
    for layers in (4, 8, 16):
        probe.charge_train(layers)
    clock = RSTClock(table, budget_s=probe.rst_seconds)
    clock.charge_train(4)
    clock.charge_train(8)
    assert not clock.exhausted
    clock.charge_train(16)
    assert clock.rst_seconds == clock.budget_s and clock.budget_fraction == 1.0 and clock.exhausted


def test_free_kinds_are_counted_but_cost_nothing():
    table = shipped_table("paper", "bert")
    clock = RSTClock(table, budget_s=10.0, free=("scoring", "hessian"))
    assert clock.charge_forward(16) == 0.0
    assert clock.charge_forward(8, kind="scoring") == 0.0
    assert clock.charge_train(16, kind="hessian") == 0.0
    assert clock.charge_train(16) == 0.2253
    assert clock.units == {"train": 1, "scoring": 2, "hessian": 1, "optimizer": 0}
    assert clock.breakdown == {"train": 0.2253, "scoring": 0.0, "hessian": 0.0, "optimizer": 0.0}
    assert clock.rst_seconds == 0.2253


def test_unknown_free_kind_is_refused():
    with pytest.raises(AssertionError, match="unknown kinds"):
        RSTClock(shipped_table("paper", "bert"), budget_s=1.0, free=("scoring", "forward"))


def test_non_positive_budget_is_refused():
    for budget in (0.0, -1.0):
        with pytest.raises(AssertionError):
            RSTClock(shipped_table("paper", "bert"), budget_s=budget)


def test_unknown_optimizer_is_a_usage_error_naming_it():
    table = shipped_table("smoke", "bert")
    clock = RSTClock(table, budget_s=10.0)
    with pytest.raises(UsageError, match="'adafactor'") as info:
        clock.charge_optimizer("adafactor")
    assert "adamw" in str(info.value)  # says what the table does have
    assert clock.units["optimizer"] == 0 and clock.rst_seconds == 0.0
    assert clock.charge_optimizer("adamw") == table.optimizer["adamw"]


def test_out_of_range_charge_changes_nothing():
    clock = RSTClock(shipped_table("paper", "t5"), budget_s=10.0)
    with pytest.raises(ValueError):
        clock.charge_train(13)
    with pytest.raises(ValueError):
        clock.charge_forward(0)
    assert clock.units == dict.fromkeys(KINDS, 0) and clock.rst_seconds == 0.0


def test_clock_state_dict_round_trip():
    table = shipped_table("paper", "bert")
    clock = RSTClock(table, budget_s=5.0, free=("scoring",))
    for layers in (4, 4, 8, 16):
        clock.charge_train(layers)
        clock.charge_forward(layers)
        clock.charge_optimizer("adamw")
    clock.charge_train(16, kind="hessian")
    saved = clock.state_dict()
    state = json.loads(json.dumps(saved))  # what a checkpoint would hold
    assert state["budget_s"] == 5.0
    assert state["units"] == {"train": 4, "scoring": 4, "hessian": 1, "optimizer": 4}

    resumed = RSTClock(table, budget_s=5.0, free=("scoring",))
    resumed.load_state_dict(state)
    assert resumed.breakdown == clock.breakdown and resumed.units == clock.units
    assert resumed.rst_seconds == clock.rst_seconds and resumed.budget_fraction == clock.budget_fraction
    clock.charge_train(16)
    resumed.charge_train(16)
    assert resumed.rst_seconds == clock.rst_seconds and resumed.units == clock.units

    # the saved and loaded states are copies: later charges do not leak into them
    assert saved["units"]["train"] == 4 and state["units"]["train"] == 4
    assert saved["breakdown"]["train"] == state["breakdown"]["train"] < clock.breakdown["train"]
    with pytest.raises(AssertionError, match="keeps its budget"):
        RSTClock(table, budget_s=6.0).load_state_dict(state)


# ------------------------------------------------------------------------------------------------- property


def _smoke_values(name):
    raw = shipped_json(name)
    units = raw["units"]
    n = raw["num_layers"]
    return ([units["train"][str(k)] for k in range(1, n + 1)], [units["forward"][str(k)] for k in range(1, n + 1)],
            units["optimizer"])


INDEPENDENT = {  # (preset, model) -> train by layers, forward by layers, optimizer, from the paper / raw JSON
    ("paper", "bert"): (PAPER_BERT_TRAIN, [paper_bert_forward(n) for n in range(1, 17)],
                        {"adamw": 0.0, "lion": 0.0, "sophia": 0.0}),
    ("paper", "t5"): (PAPER_T5_TRAIN, [t * PAPER_T5_FORWARD_RATIO for t in PAPER_T5_TRAIN],
                      {k: round(v - PAPER_T5_WHOLE_STEP["adamw"] - PAPER_T5_HESSIAN_PER_STEP[k], 3)
                       for k, v in PAPER_T5_WHOLE_STEP.items()}),
    ("smoke", "bert"): _smoke_values("smoke-bert.json"),
    ("smoke", "t5"): _smoke_values("smoke-t5.json"),
}
TABLES = {key: shipped_table(*key) for key in INDEPENDENT}

charge = st.one_of(
    st.tuples(st.just("train"), st.floats(0, 1), st.sampled_from(["train", "hessian"])),
    st.tuples(st.just("forward"), st.floats(0, 1), st.just("scoring")),
    st.tuples(st.just("optimizer"), st.floats(0, 1), st.just("optimizer")),
)


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(sorted(INDEPENDENT)), charges=st.lists(charge, max_size=60),
       free=st.sets(st.sampled_from(KINDS)))
def test_clock_total_is_the_sum_of_the_values_charged(key, charges, free):
    train, forward, optimizer = INDEPENDENT[key]
    table = TABLES[key]
    clock = RSTClock(table, budget_s=1.0, free=tuple(sorted(free)))
    expected = dict.fromkeys(KINDS, 0.0)
    counts = dict.fromkeys(KINDS, 0)
    for op, u, kind in charges:
        layers = 1 + min(int(u * table.num_layers), table.num_layers - 1)
        if op == "train":
            clock.charge_train(layers, kind=kind)
            value = train[layers - 1]
        elif op == "forward":
            clock.charge_forward(layers, kind=kind)
            value = forward[layers - 1]
        else:
            name = sorted(optimizer)[min(int(u * len(optimizer)), len(optimizer) - 1)]
            clock.charge_optimizer(name)
            value = optimizer[name]
        counts[kind] += 1
        if kind not in free:
            expected[kind] += value
    total = math.fsum(expected.values())
    assert clock.units == counts
    assert clock.rst_seconds == pytest.approx(total, rel=1e-9, abs=1e-12)
    for kind in KINDS:
        assert clock.breakdown[kind] == pytest.approx(expected[kind], rel=1e-9, abs=1e-12)
    assert clock.budget_fraction == pytest.approx(total, rel=1e-9, abs=1e-12)
    assert clock.exhausted == (clock.rst_seconds >= 1.0)


@pytest.mark.parametrize("change", [
    {"interpolated": []},
    {"interpolated": {"forward": "linear"}},
    {"interpolated": {"backward": {"rule": "linear"}}},
    {"interpolated": {"train": {"rule": "cubic"}}},  # a rule on a complete unit is still checked
    {"format": True},
    {"num_layers": True},
])
def test_malformed_table_structure_is_a_usage_error(change):
    raw = minimal(forward={"1": 0.04, "4": 0.16}, interpolated={"forward": {"rule": "linear"}})
    raw.update(change)
    with pytest.raises(UsageError):
        table_from_dict(raw)


@pytest.mark.parametrize("ratio", ["abc", None, "0.5", True])
def test_proportional_ratio_must_be_a_number(ratio):
    raw = minimal(forward={}, interpolated={"forward": {"rule": "proportional", "to": "train", "ratio": ratio}})
    with pytest.raises(UsageError, match="ratio must be a number"):
        table_from_dict(raw)


def test_layer_count_given_twice_is_refused():
    raw = minimal(forward={"4": 0.4, "04": 0.45, "1": 0.1, "2": 0.2, "3": 0.3})
    with pytest.raises(UsageError, match="twice"):
        table_from_dict(raw)


def test_a_directory_is_not_a_table(tmp_path):
    with pytest.raises(UsageError, match="cannot read RST table"):
        load_table(tmp_path)


def test_unknown_kind_of_work_is_a_clear_error():
    clock = RSTClock(table_from_dict(minimal()), 10.0)
    with pytest.raises(ValueError, match="unknown kind of work 'forward'"):
        clock.charge_train(4, kind="forward")
    assert clock.rst_seconds == 0.0
