"""A price for an optimizer step the RST table does not list (a plug-in method's own optimizer).

The step is priced at the table's AdamW step times the ratio of the two steps' times measured on this machine
(interleaved rounds, `ntng.training.calibration.time_rounds`), on the preset's model. The estimate is measured once and cached
under the data directory, keyed by the table and the optimizer's RST key, so every run charged by that table pays
the same price for that optimizer; summary.json records it under `rst_estimates`, marked as an estimate. A table
that prices the optimizer (`ntng calibrate` prices every registered one) is always used as it is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ntng.files import write_text_atomic

ESTIMATE_REPEATS, ESTIMATE_WARMUP = 7, 2


def cache_path(data_dir: Path, table_name: str) -> Path:
    return Path(data_dir) / "rst-estimates" / f"{table_name}.json"


def measure_step_ratio(method, model_name: str, preset, log=print) -> dict:
    """Median step time of `method`'s optimizer over the baseline's AdamW / AdamWScale, on the preset's model."""
    import torch

    from ntng.training.calibration import time_rounds, timing_setup
    from ntng.training.optim import build_optimizer

    recipe = preset.recipe(model_name)
    device, amp, net, batch = timing_setup(model_name, preset)
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        net(batch)["loss"].backward()
    optimizers = {"adamw": build_optimizer(recipe.optimizer, net, recipe.lr, recipe.betas, recipe.eps,
                                           recipe.weight_decay),
                  "candidate": method.build_optimizer(net)}
    timed = time_rounds({k: o.step for k, o in optimizers.items()}, device, ESTIMATE_REPEATS, ESTIMATE_WARMUP)
    ratio = timed["candidate"]["median"] / timed["adamw"]["median"]
    log(f"priced the {method.rst_optimizer!r} optimizer step at {ratio:.2f}x AdamW's (measured here)")
    return {"ratio": ratio, "adamw_s": timed["adamw"]["median"], "candidate_s": timed["candidate"]["median"]}


def estimated_price(table, key: str, method, model_name: str, preset, data_dir: Path, log=print) -> dict:
    """{seconds, ratio, estimate: True, ...} for the optimizer `key` under `table`: the table's AdamW step times the
    ratio cached for this table and key, measured now if there is none. The cache holds the ratio only (a table
    recalibrated under the same name prices the step from its own AdamW step); a lock keeps parallel runs from
    measuring twice."""
    import fcntl

    path = cache_path(data_dir, table.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            try:
                cached = json.loads(path.read_text())
            except (OSError, ValueError):
                cached = {}
            if not isinstance(cached, dict):
                cached = {}
            entry = cached.get(key)
            if not (isinstance(entry, dict) and isinstance(entry.get("ratio"), (int, float)) and entry["ratio"] > 0):
                measured = measure_step_ratio(method, model_name, preset, log)
                entry = {"ratio": measured["ratio"], "of": "adamw", "measured_on": time.strftime("%Y-%m-%d"),
                         "measured": measured}
                cached[key] = entry
                write_text_atomic(path, json.dumps(cached, indent=2) + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return {"seconds": table.optimizer_seconds("adamw") * entry["ratio"], "estimate": True, "table": table.name,
            **entry}
