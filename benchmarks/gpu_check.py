"""The GPU check: every method of preset `paper` for a few steps on CUDA, timed against the paper's RST tables.

    python benchmarks/gpu_check.py --out gpu_check.json        # or: bash benchmarks/gpu_check.sh OUT_DIR

For a bare GPU machine that reaches no package registry: it needs this checkout and the packages ntng imports
(torch, transformers, tokenizers, datasets, numpy) and nothing else. Without packed data for preset `paper`
(`ntng data --preset paper`) it writes synthetic token windows and a placeholder tokenizer of the paper's vocabulary
into a temporary data directory: the check is about speed and code paths, not about what the models learn.

What it measures, per model x method (the paper's crammed BERT 16x768 and t5-v1.1-base, bf16 autocast):
- wall/RST: training wall seconds per RST second, over the steps after the first two (warm-up, allocator,
  autotuning). Near 1 on the paper's hardware (an RTX 3090 for BERT, an A100 for T5) means the table fits;
  below 1, this GPU is faster than the reference machine.
- what a step costs in wall seconds against the table's price for it.
And it checks the CUDA-only paths: the fused / foreach optimizer steps (AdamW fused, AdamWScale, Lion and Sophia
foreach), bf16 autocast, the CUDA RNG state in a checkpoint, and that a run stopped after a few steps and resumed
ends where the uninterrupted run ends. Writes one JSON. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Baseline steps per run (a method's own costs change how many it takes): enough to time the steps after warm-up,
# few enough for every method of both models in one 10-minute call on a bare machine.
STEPS = 8
IL_STEPS = 3  # RHO-LOSS's irreducible-loss model: a few steps, not the paper's 12 h
SYNTHETIC_WINDOWS = {"train": 24_000, "validation": 2_048}
WARMUP_STEPS = 2


def step_price(model: str, preset) -> float:
    """RST seconds of one baseline optimizer step at full depth in the preset's table."""
    from ntng.training.rst import shipped_table

    table, shape = shipped_table(preset.rst_preset, model), preset.shape(model)
    return shape.grad_accum * table.train_seconds(shape.num_layers) + table.optimizer_seconds("adamw")


def budget_for(model: str, preset, steps: int = STEPS) -> str:
    return f"{steps * step_price(model, preset):.2f}s"


def synthetic_data(data_dir: Path, preset) -> None:
    """Random token windows shaped like `ntng data`'s packing for `preset`, and a word-level tokenizer of the
    preset's vocabulary size (the loop reads only its size)."""
    import datasets
    import numpy as np
    from tokenizers import Tokenizer, models

    from ntng.data import corpus as data_mod
    from ntng.data import vocab

    rng = np.random.default_rng(0)
    for model in ("bert", "t5"):
        tokenizer_dir = data_dir / "offline" / "tokenizers"
        tokenizer_dir.mkdir(parents=True, exist_ok=True)
        words = {f"w{i}": i for i in range(preset.vocab_size)}
        Tokenizer(models.WordLevel(words, unk_token="w1")).save(
            str(tokenizer_dir / f"{data_mod.tokenizer_name(model, preset.vocab_size)}.json"))
        width = data_mod.packing_width(model, preset)
        splits = {}
        for split, count in SYNTHETIC_WINDOWS.items():
            if model == "bert":
                windows = rng.integers(len(vocab.BERT_SPECIALS), preset.vocab_size, (count, width), dtype=np.int32)
                windows[:, 0], windows[:, -1] = vocab.BERT_CLS, vocab.BERT_SEP
            else:
                top = preset.vocab_size - vocab.N_SENTINELS
                windows = rng.integers(len(vocab.T5_SPECIALS), top, (count, width), dtype=np.int32)
            first = 0 if split == "train" else data_mod.VALIDATION_ID_OFFSET
            features = datasets.Features({"example_id": datasets.Value("int64"),
                                          "input_ids": datasets.List(datasets.Value("int32"), length=width)})
            splits[split] = datasets.Dataset.from_dict(
                {"example_id": np.arange(first, first + count, dtype=np.int64), "input_ids": windows},
                features=features)
        datasets.DatasetDict(splits).save_to_disk(
            str(data_dir / "offline" / "packed" / data_mod.packing_name(model, preset)))


def step_timing(run_dir: Path) -> dict:
    """Wall and RST of the steps after the first WARMUP_STEPS, from metrics.csv."""
    import csv

    with open(run_dir / "metrics.csv") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train_loss")]
    if len(rows) <= WARMUP_STEPS + 1:
        return {"timed_steps": 0}
    first, last = rows[WARMUP_STEPS], rows[-1]
    wall = float(last["wall_s"]) - float(first["wall_s"])
    rst = float(last["rst_s"]) - float(first["rst_s"])
    steps = int(last["step"]) - int(first["step"])
    return {"timed_steps": steps, "wall_per_step_s": wall / steps, "rst_per_step_s": rst / steps,
            "wall_over_rst": wall / rst if rst > 0 else None}


def check_method(model: str, method: str, preset, data_dir: Path, work: Path) -> dict:
    import ntng

    options = {"il_budget_s": IL_STEPS * step_price(model, preset)} if method == "rho_loss" else None
    started = time.perf_counter()
    summary = ntng.pretrain(model=model, method=method, budget=budget_for(model, preset), preset=preset,
                            out_dir=work / model / method, data_dir=data_dir, method_options=options,
                            log=lambda m: None)
    config = json.loads((work / model / method / "config.json").read_text())
    out = {"status": summary["status"], "steps": summary["steps"], "rst_s": summary["rst_s"],
           "wall_s": summary["wall_s"], "final_val_loss": summary["final_val_loss"],
           "elapsed_s": time.perf_counter() - started, "precision": config["precision"],
           "device": config["machine"].get("gpu") or config["machine"]["device"],
           "rst_breakdown": summary["rst_breakdown"], **step_timing(work / model / method)}
    return out


def optimizer_paths(preset, device: str) -> dict:
    """Which implementation each optimizer step takes on the device (fused / foreach)."""
    import torch

    from ntng.methods import build_method
    from ntng.models.pretraining import build_model

    out = {}
    for model in ("bert", "t5"):
        net = build_model(model, preset).to(device)
        for method in ("baseline", "lion", "sophia"):
            optimizer = build_method(method, model, preset).build_optimizer(net)
            defaults = optimizer.defaults
            uses = getattr(optimizer, "_uses_foreach", None)
            out[f"{model}/{method}"] = {
                "class": type(optimizer).__name__, "fused": defaults.get("fused"),
                "foreach": uses() if callable(uses) else defaults.get("foreach")}
        del net
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def resume_check(preset, data_dir: Path, work: Path) -> dict:
    """The BERT baseline stopped after 3 steps and resumed ends as the uninterrupted run (same steps, a loss
    within bf16 noise); the checkpoint carries the CUDA RNG state."""
    import torch

    import ntng
    from ntng.training.loop import Trainer
    from ntng.training.spec import resolve

    budget = budget_for("bert", preset)
    whole = ntng.pretrain(model="bert", method="baseline", budget=budget, preset=preset,
                          out_dir=work / "resume" / "whole", data_dir=data_dir, log=lambda m: None)
    spec = resolve("bert", "baseline", budget, preset, out_dir=work / "resume" / "cut", data_dir=data_dir)
    Trainer(spec, log=lambda m: None).train(stop_after_steps=3)
    state = torch.load(work / "resume" / "cut" / "checkpoint.pt", map_location="cpu", weights_only=False)
    resumed = ntng.pretrain(model="bert", method="baseline", budget=budget, preset=preset,
                            out_dir=work / "resume" / "cut", resume=True, data_dir=data_dir, log=lambda m: None)
    same = (whole["steps"] == resumed["steps"] and resumed["status"] == "complete"
            and abs(whole["final_val_loss"] - resumed["final_val_loss"]) < 0.05)
    return {"cuda_rng_in_checkpoint": state.get("cuda_rng") is not None, "whole": whole["final_val_loss"],
            "resumed": resumed["final_val_loss"], "steps": [whole["steps"], resumed["steps"]], "same_end": same}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--data-dir", type=Path, default=None, help="packed data for preset paper, if there is")
    parser.add_argument("--models", nargs="+", default=["bert", "t5"])
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method")
    parser.add_argument("--preset", default="paper", help="a dry run of the script itself: --preset smoke --cpu")
    parser.add_argument("--cpu", action="store_true", help="run without CUDA (checks the script, times nothing)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available() and not args.cpu:
        print("gpu_check: no CUDA device here; this check is for a GPU machine", file=sys.stderr)
        return 2
    from ntng.data import corpus as data_mod
    from ntng.presets import METHODS, get_preset

    paper = get_preset(args.preset)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report: dict = {"gpu": torch.cuda.get_device_name(0) if device == "cuda" else None, "torch": torch.__version__,
                    "bf16": torch.cuda.is_bf16_supported() if device == "cuda" else None, "preset": paper.name,
                    "budgets": {m: budget_for(m, paper) for m in args.models}, "methods": {}, "errors": {}}
    with tempfile.TemporaryDirectory(prefix="ntng-gpu-check-") as tmp:
        work = Path(tmp)
        data_dir = args.data_dir or data_mod.default_data_dir()
        if not all((Path(data_dir) / "offline" / "packed" / data_mod.packing_name(m, paper)).exists()
                   for m in ("bert", "t5")):
            data_dir = work / "data"
            synthetic_data(data_dir, paper)
            report["data"] = f"synthetic windows {SYNTHETIC_WINDOWS}"
        else:
            report["data"] = str(data_dir)

        def attempt(key: str, fn):
            try:
                return fn()
            except Exception as exc:  # one failure is a result of the check, not the end of it
                report["errors"][key] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
                return None

        for model in args.models:
            for method in args.methods or METHODS:
                key = f"{model}/{method}"
                result = attempt(key, lambda m=model, k=method: check_method(m, k, paper, Path(data_dir), work))
                if result is not None:
                    report["methods"][key] = result
                    print(f"gpu_check: {key}: {result['status']}, {result['steps']} steps, wall/RST "
                          f"{result.get('wall_over_rst')}", flush=True)
                args.out.write_text(json.dumps(report, indent=2) + "\n")  # what is done survives a timeout
        report["optimizers"] = attempt("optimizers", lambda: optimizer_paths(paper, device))
        report["resume"] = attempt("resume", lambda: resume_check(paper, Path(data_dir), work))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: wrote {args.out}; {len(report['errors'])} error(s)")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
