"""A results folder written by hand, shaped like a sweep's (docs/records.md), with numbers chosen so every aggregate
the book shows can be computed independently in the tests. No training runs.

Curves: val_loss(t) = L0 - (L0 - final) * (t / B) ** 0.5 at t = k B / 10, k = 0..10 (L0 = 7).
Final losses: the baseline's is 6 - log2(B / 5) * 0.5 + seed * 0.02; a method's adds DELTA[method] * 5 / B, so each
method's gap to the baseline shrinks as the budget B grows (the shape of the paper's claim).
"""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from pathlib import Path

import nbformat

from ntng.training.records import METRIC_COLUMNS

PRESET = "smoke"
BUDGETS = {"5s": 5.0, "10s": 10.0, "20s": 20.0}
DELTA = {"layer_stacking": -0.10, "layer_dropping": 0.05, "selective_backprop": 0.20, "lion": 0.30, "sophia": 0.15}
L0 = 7.0
FLOOR = {"bert": 6.5, "t5": 6.2}  # the context-free floors the synthetic runs record (config.json data.floor)
CARD = {"layer_stacking": "**What.** Start with L/4 blocks; double at 12.5% and 30% of the RST budget.",
        "layer_dropping": "**What.** Skip block i of L with probability (1 - theta) i / L.",
        "selective_backprop": "**Selective backprop.** Keep an example with probability percentile^scale.",
        "lion": "**Lion.** Sign-of-momentum update.", "sophia": "**Sophia-G.** Clipped diagonal Newton step."}


def png(width: int = 8, height: int = 6) -> bytes:
    """A small solid-red PNG, the image output of the synthetic executed notebooks."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def baseline_final(budget_s: float, seed: int) -> float:
    return 6.0 - math.log2(budget_s / 5.0) * 0.5 + seed * 0.02


def final_loss(method: str, budget_s: float, seed: int) -> float:
    return baseline_final(budget_s, seed) + (DELTA.get(method, 0.0) * 5.0 / budget_s if method != "baseline" else 0)


VARIANT = "selective_backprop+free_scoring"  # the paper's ablation: its gap is DELTA[VARIANT]
DELTA[VARIANT] = 0.12
PLUGIN = "freeze_embeddings"  # a method from outside ntng, in a family the book does not know
DELTA[PLUGIN] = 0.02
PLUGIN_META = {"name": PLUGIN, "label": "frozen embeddings", "family": "warm_start", "component": "model",
               "action": "restrict", "summary": "no update to the input embeddings early in the budget",
               "extra_work": [], "class": "plugin_methods:FreezeEmbeddings"}


def method_meta(method: str) -> dict:
    """config.json's method_meta, as the loop writes it from the method class."""
    if method == PLUGIN:
        return PLUGIN_META
    from ntng.methods import BUILTINS

    return BUILTINS[method].meta()


def curve(budget_s: float, final: float) -> list[tuple[float, float]]:
    return [(k * budget_s / 10, L0 - (L0 - final) * (k / 10) ** 0.5) for k in range(11)]


def write_run(root: Path, model: str, method: str, budget: str, seed: int, status: str = "complete",
              notebook: bool = False, stats: dict | None = None, rst_scale: float = 1.0, preset: str = PRESET) -> Path:
    budget_s = BUDGETS[budget]
    run_dir = root / preset / model / method / budget / f"seed{seed}"
    run_dir.mkdir(parents=True)
    final = final_loss(method, budget_s, seed)
    base = method.split("+", 1)[0]  # a variant (ntng.training.variants) records its method and its own name
    points = curve(budget_s, final)
    steps = 20
    if status != "complete":
        points = points[:4]
        steps = 6
    config = {"model": model, "method": base, "variant": method, "method_meta": method_meta(base), "preset": preset, "seed": seed, "budget": budget,
              "budget_rst_s": budget_s, "rst_table": {"name": f"smoke-{model}-AMD_EPYC"},
              "method_card": CARD.get(base, ""), "precision": "bfloat16", "data": {"floor": FLOOR[model]},
              "versions": {"ntng": "0.1.0", "torch": "2.13.0"},
              "machine": {"cpu": "AMD EPYC", "cpu_count": 2, "device": "cpu", "python": "3.11.7"}}
    rows = []
    for step in range(steps + 1):
        rst = budget_s * step / 20
        depth = 4 if method != "layer_stacking" else (1 if step < 3 else 2 if step < 6 else 4)
        evals = [v for r, v in points if abs(r - rst) < 1e-9]
        rows.append([step, rst, rst * 1.3 * rst_scale, step * 512, (L0 - 0.05 * step) if step else "",
                     1e-3 if step else "", depth if step else "", evals[0] if evals else "",
                     FLOOR[model] if evals else ""])
    (run_dir / "metrics.csv").write_text(",".join(METRIC_COLUMNS) + "\n"
                                         + "".join(",".join(str(c) for c in r) + "\n" for r in rows))
    rst_total = budget_s * steps / 20
    summary = {"status": status, "budget_rst_s": budget_s, "rst_s": rst_total, "wall_s": rst_total * 1.3 * rst_scale,
               "steps": steps, "tokens": steps * 512, "final_val_loss": final if status == "complete" else None,
               "evals": [{"rst_s": r, "val_loss": v} for r, v in points],
               "rst_breakdown": {"train": rst_total * 0.8, "scoring": rst_total * 0.15 if "selective" in method
                                 else 0.0, "hessian": 0.0, "optimizer": rst_total * 0.05},
               "method_stats": {"mean_active_layers": 3.5, **(stats or {})}}
    if status == "failed":
        summary["error"] = "RuntimeError: simulated failure at step 6"
    if status == "diverged":
        summary["error"] = "non-finite training loss (nan) at step 6, 3.0 s RST"
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    if notebook:
        nb = nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_markdown_cell("# Pre-train one model with one method under an RST budget"),
            nbformat.v4.new_code_cell("summary = ntng.pretrain(...)", execution_count=1, outputs=[
                nbformat.v4.new_output("stream", name="stdout", text="step 20  val_loss 5.5\n")]),
            nbformat.v4.new_code_cell("plot()", execution_count=2, outputs=[nbformat.v4.new_output(
                "display_data", data={"image/png": base64.b64encode(png()).decode(), "text/plain": "<Figure>"})])])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, run_dir / "notebook.ipynb")
    return run_dir


def write_tutorial(path: Path) -> None:
    """An executed tutorial notebook, as `ntng book` leaves it (ntng.book.build.run_tutorial)."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Your own method: is it faster under a fair budget?"),
        nbformat.v4.new_code_cell("print(format_comparison(result))", execution_count=1, outputs=[
            nbformat.v4.new_output("stream", name="stdout", text="freeze_embeddings against the baseline\n")])])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def write_finetune(run_dir: Path, task: str, score: float, floor: float) -> None:
    folder = run_dir / "finetune"
    folder.mkdir(exist_ok=True)
    parts = run_dir.parts
    (folder / f"{task}.json").write_text(json.dumps({
        "task": task, "suite": "offline", "metric": "accuracy", "best_dev_score": score, "best_epoch": 2,
        "epochs": [{"epoch": e, "dev_score": score - 0.01 * (3 - e), "train_loss": 1.0 / e} for e in (1, 2, 3)],
        "floor": {"best_dev_score": floor}, "wall_s": 3.0, "model": parts[-5], "method": parts[-4],
        "preset": PRESET, "budget": parts[-2], "seed": int(parts[-1][4:])}))


# the scale probe (ntng.experiments.probe): (model, layers, width, batch, lr) -> final loss, 60 s of RST each
PROBE = {("bert", 4, 64, 16, 0.002): 6.31, ("bert", 4, 64, 16, 0.004): 6.12, ("bert", 8, 64, 32, 0.004): 6.27,
         ("t5", 4, 64, 16, 0.02): 5.55, ("t5", 4, 64, 16, 0.04): 5.61}
# a tuning plan (ntng.experiments.tuning) at PRESET: bert lion's lr at three values, at the smallest budget, seed 0
TUNING_LOSSES = {"lion+lr=0.0007": 6.20, "lion+lr=0.00035": 6.05, "lion+lr=0.0014": 6.40}


def write_probe(root: Path) -> None:
    for (model, layers, width, batch, lr), loss in PROBE.items():
        run_dir = root / "probe" / model / f"{layers}x{width}-b{batch}" / "1m" / f"lr{lr!r}"
        run_dir.mkdir(parents=True)
        shape = {"num_layers": layers, "hidden" if model == "bert" else "d_model": width, "micro_batch": batch,
                 "grad_accum": 1}
        config = {"model": model, "preset": f"probe-{model}-{layers}x{width}-b{batch}", "shape": shape,
                  "recipe": {"lr": lr}, "model_config": {"num_parameters": 1000 * layers * width},
                  "data": {"floor": FLOOR[model]}}
        summary = {"status": "complete", "budget_rst_s": 60.0, "rst_s": 60.0, "wall_s": 66.0, "steps": 100,
                   "tokens": 100 * batch * 128, "final_val_loss": loss}
        (run_dir / "config.json").write_text(json.dumps(config))
        (run_dir / "summary.json").write_text(json.dumps(summary))


def write_tuning(root: Path) -> None:
    runs = list(TUNING_LOSSES)
    plan = {"preset": PRESET, "budget": "5s", "seed": 0, "planned_on": "2026-11-26",
            "axes": [{"model": "bert", "method": "lion", "key": "lr", "values": [0.0007, 0.00035, 0.0014],
                      "runs": runs, "centre": 0.0007, "paper": 0.0007}],
            "runs": {"bert": runs}}
    (root / "tuning" / PRESET).mkdir(parents=True)
    (root / "tuning" / PRESET / "tuning.json").write_text(json.dumps(plan))
    for run, loss in TUNING_LOSSES.items():
        run_dir = root / "tuning" / PRESET / "bert" / run / "5s" / "seed0"
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"status": "complete", "final_val_loss": loss}))


# a batch-size control of PRESET (presets.batch_control_of), defined in a presets file as a user would: 4x the batch
CONTROL_PRESET = "smoke_batch4x"
CONTROL_PRESETS = [{"name": CONTROL_PRESET, "base": PRESET, "bert": {"grad_accum": 8}, "t5": {"grad_accum": 8},
                    "budgets": ["10s"], "batch_control_of": PRESET}]


def write_batch_control(root: Path) -> Path:
    """The control's records (baseline, Lion, Sophia at its one budget, three seeds: none is a tuning seed there)
    and the presets file that defines it; returns the file, for $NTNG_PRESETS_FILE."""
    for method in ("baseline", "lion", "sophia"):
        for seed in (1, 2, 3):
            write_run(root, "bert", method, "10s", seed, preset=CONTROL_PRESET)
    path = root.parent / "presets.json"  # beside the results, as a user's own file would be
    path.write_text(json.dumps(CONTROL_PRESETS))
    return path


def write_results(root: Path) -> dict:
    """The synthetic grid; returns what was written (for the tests' own expectations)."""
    methods = ["baseline", "layer_stacking", "layer_dropping", "selective_backprop", "lion", "sophia"]
    for method in methods:
        for budget in BUDGETS:
            for seed in (0, 1):
                stats = {}
                if method == "selective_backprop":
                    stats = {"keep_rate": 0.5 + 0.01 * seed, "scored_mean_loss": 6.0}
                if method == "sophia":
                    stats = {"hessian_updates": 2, "clip_fraction": 0.3}
                run = write_run(root, "bert", method, budget, seed, stats=stats,
                                notebook=(seed == 0 and budget == "5s"),
                                rst_scale=1.6 if method == "layer_dropping" else 1.0)
                if budget == "20s" and method in ("baseline", "layer_stacking"):
                    write_finetune(run, "spam_ham", 0.90 + (0.02 if method == "baseline" else 0.0) + 0.01 * seed,
                                   0.60)
    for seed in (0, 1):  # an ablation at the middle budget, beside its charged method
        write_run(root, "bert", VARIANT, "10s", seed, stats={"keep_rate": 0.5}, notebook=seed == 0)
    for seed in (0, 1):
        write_run(root, "bert", PLUGIN, "5s", seed)
    write_tutorial(root / PRESET / "tutorial" / "your_method.ipynb")
    write_probe(root)
    write_tuning(root)
    write_run(root, "t5", "baseline", "5s", 0)
    write_run(root, "t5", "lion", "5s", 0)
    write_run(root, "bert", "rho_loss", "5s", 0, status="diverged")
    write_run(root, "bert", "rho_loss", "5s", 1, status="failed", notebook=True)
    # damaged records
    bad = write_run(root, "bert", "rho_loss", "10s", 0)
    text = (bad / "metrics.csv").read_text()
    (bad / "metrics.csv").write_text(text[: len(text) // 2])  # cut mid-file
    bad = write_run(root, "bert", "rho_loss", "10s", 1)
    (bad / "summary.json").write_text('{"status": "complete", "evals": [')
    bad = write_run(root, "bert", "rho_loss", "20s", 0)
    (bad / "config.json").unlink()
    (root / PRESET / "bert" / "baseline" / "20s" / "seed1" / "finetune" / "brown_genre.json").write_text("{oops")
    return {"unreadable": {"bert/rho_loss/10s/seed0": "metrics.csv", "bert/rho_loss/10s/seed1": "summary.json",
                           "bert/rho_loss/20s/seed0": "config.json",
                           "bert/baseline/20s/seed1": "finetune/brown_genre.json"}}
