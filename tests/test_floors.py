"""Context-free loss floors (ntng.data.floors), by hand on tiny token counts, and as `ntng data` stores them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ntng.data.floors import context_free_floor, unigram_cross_entropy
from ntng.presets import PRESETS


def test_unigram_cross_entropy_by_hand():
    # ids 5..7 count: train 5:3, 6:1, 7:0 -> add-one p = (4, 2, 1) / 7; validation q = (1/2, 1/2, 0)
    train = np.array([[2, 5, 5, 5, 6, 3]])
    val = np.array([[2, 5, 6, 3]])
    expected = -(0.5 * math.log(4 / 7) + 0.5 * math.log(2 / 7))
    assert unigram_cross_entropy(train, val, 5, 8) == pytest.approx(expected)


def test_t5_floor_counts_only_the_span_tokens():
    # smoke T5: input 128 -> raw 141, 21 noise tokens in 7 spans, target 21 + 7 + 1 = 29: the floor is the unigram
    # cross-entropy x 21 / 29 (sentinels and EOS cost nothing)
    rng = np.random.default_rng(0)
    train = rng.integers(3, 300, (50, 141))
    val = rng.integers(3, 300, (10, 141))
    floor = context_free_floor("t5", PRESETS["smoke"], 400, train, val)
    assert floor["span_tokens_per_target"] == pytest.approx(21 / 29)
    assert floor["loss"] == pytest.approx(floor["unigram_cross_entropy"] * 21 / 29)
    bert = context_free_floor("bert", PRESETS["smoke"], 400, train, val)
    assert bert["loss"] == bert["unigram_cross_entropy"] == pytest.approx(unigram_cross_entropy(train, val, 5, 400))


def test_ntng_data_stores_the_floor_and_runs_record_it(built_fixture, tmp_path):
    import json

    from ntng.data import corpus as data
    from ntng.training.loop import pretrain

    data_dir, manifest = built_fixture
    packed = manifest["corpora"]["offline"]["packed"]
    for name, entry in packed.items():
        assert 0 < entry["floor"]["loss"] <= entry["floor"]["unigram_cross_entropy"] < math.log(400), name
    preset = data.get_preset("tiny")
    floor = data.packing_floor("bert", preset, data_dir)
    assert floor == packed[data.packing_name("bert", preset)]["floor"]["loss"]
    pretrain(model="bert", method="baseline", budget="1s", preset="tiny", data_dir=data_dir,
             out_dir=tmp_path / "run", log=lambda m: None)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["floor"] == floor
