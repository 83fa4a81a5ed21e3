"""benchmarks/bench.py: its FLOP formulas against torch's own FLOP counter, and a seconds-long smoke of the whole
script on the fixture data that checks the JSON it writes (keys and types; benchmarks assert no speed)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ntng.data.batches import make_collator
from ntng.methods import paper_methods
from ntng.models.pretraining import build_model
from ntng.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import flops  # noqa: E402

FLOAT_KEYS = ("matmul_gflops_fp32", "matmul_gflops_bf16", "bert_tokens_per_s", "hf_default_tokens_per_s",
              "speedup_vs_hf_default", "bert_mfu", "t5_tokens_per_s", "t5_mfu", "clock_overhead_fraction",
              "loader_wait_fraction")


def _counted_matmul_flops(model_name: str, preset) -> tuple[int, dict]:
    """FLOPs of one forward+backward that torch's counter attributes to weight matmuls (mm / addmm), and the batch.
    Attention runs through SDPA / bmm kernels, some of which the counter does not see, so only weights compare."""
    torch.manual_seed(0)
    net = build_model(model_name, preset)
    collator = make_collator(model_name, preset, preset.vocab_size, seed=0)
    width = preset.bert.seq_len if model_name == "bert" else collator.raw_len
    batch = collator(torch.randint(110, preset.vocab_size - 110, (3, width)))
    with FlopCounterMode(display=False) as counter:
        net(batch)["loss"].backward()
    counts = counter.get_flop_counts()["Global"]
    return sum(v for k, v in counts.items() if str(k) in ("aten.mm", "aten.addmm")), batch


@pytest.mark.parametrize("model_name", ["bert", "t5"])
def test_flop_formula_matches_torch_counter_on_the_weights(model_name):
    preset = get_preset("smoke")
    counted, batch = _counted_matmul_flops(model_name, preset)
    if model_name == "bert":
        per_sequence = flops.bert_flops_per_sequence(preset.bert, preset.vocab_size, batch["mlm_positions"].shape[1])
    else:
        per_sequence = flops.t5_flops_per_sequence(preset.t5, preset.vocab_size, batch["labels"].shape[1])
    assert per_sequence["weights"] * 3 == counted


def test_attention_flops_by_hand():
    # BERT: one block, S = 4 tokens, h = 2: Q K^T and P V are each 2 S^2 h = 64 forward FLOPs, x3 for training
    shape = get_preset("smoke").bert.__class__(num_layers=1, hidden=2, heads=1, intermediate=4, seq_len=4)
    assert flops.bert_flops_per_sequence(shape, 10, 1)["attention"] == 3 * 2 * (2 * 4 * 4 * 2)
    # the full head (k = S) costs S / k times the sparse one: the crammed BERT's is the tied decoder alone (h V),
    # HF's a transform (h^2) and the decoder
    sparse, full = (flops.bert_flops_per_sequence(shape, 10, k) for k in (1, 4))
    assert full["weights"] - sparse["weights"] == 6 * 3 * (2 * 10)
    sparse, full = (flops.bert_flops_per_sequence(shape, 10, k, arch="hf") for k in (1, 4))
    assert full["weights"] - sparse["weights"] == 6 * 3 * (2 * 2 + 2 * 10)
    # per block and token: crammed QKVO 4 h^2 + gated FFN h i + (i / 2) h; HF 4 h^2 + 2 h i
    one = {arch: flops.bert_flops_per_sequence(shape, 10, 0, arch=arch)["weights"] for arch in ("crammed", "hf")}
    assert one == {"crammed": 6 * 4 * (4 * 4 + 2 * 4 + 4), "hf": 6 * 4 * (4 * 4 + 2 * 2 * 4)}


def test_op_categories():
    import bench

    assert bench.op_category("aten::mm") == bench.op_category("aten::addmm") == "matmul"
    assert bench.op_category("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert bench.op_category("aten::_log_softmax_backward_data") == "vocabulary softmax / loss"
    assert bench.op_category("aten::copy_") == "copies and casts"
    assert bench.op_category("aten::gelu") == "elementwise"


def test_bench_smoke_writes_every_key(built_fixture, tmp_path):
    data_dir, _ = built_fixture
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--smoke", "--data-dir",
                           str(data_dir), "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in FLOAT_KEYS:
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, key
    for key in ("clock_overhead_fraction", "loader_wait_fraction"):
        assert result[key] < 1, key
    for key in ("wall_over_rst", "wall_over_rst_t5", "wall_over_rst_relative", "wall_over_rst_relative_t5"):
        assert set(result[key]) == set(paper_methods())
        assert all(isinstance(v, float) and v > 0 for v in result[key].values())
    baseline = result["rst_fidelity"]["runs"]["bert"]["baseline"]
    assert [r["status"] for r in baseline["rounds"]] == ["complete"] and result["wall_over_rst_relative"]["baseline"] == 1
    assert result["compile_s"] is None  # the smoke does not compile
    for model in ("bert", "t5"):  # where a step's time goes: shares of the step, the matmuls among them
        part = result["step_breakdown"][model]
        assert 0.99 <= sum(part["fractions"].values()) <= 1.01 and part["fractions"]["matmul"] > 0
        assert part["fractions"]["optimizer step"] > 0 and part["matmul_gflops"] > 0
    assert "speed-up vs HF default" in proc.stdout and str(out) in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"], "written atomically, no temp file left"


def test_bench_bad_data_dir_is_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--smoke", "--data-dir",
                           str(tmp_path / "nothing"), "--out", str(tmp_path / "b.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("bench: error: no packed data")
    assert not (tmp_path / "b.json").exists()
