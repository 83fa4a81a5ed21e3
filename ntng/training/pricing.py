"""A price for an optimizer step the RST table does not list (a plug-in method's own optimizer).

The step is priced at the table's AdamW step times the ratio of the two steps' times measured on this machine
(interleaved rounds, `ntng.training.calibration.time_rounds`), on the preset's model. Where the package ships a
measured ratio for the table (`ntng/tables/estimates/<table name>.json`, written by `tools/price_optimizers.py`), that
ratio is charged on every machine: runs made in different sessions, on different hosts, pay one price. Otherwise
the ratio is measured once here and cached under the data directory, keyed by the table and the optimizer's RST
key, so every later run charged by that table pays the same. summary.json records the price under `rst_estimates`,
marked as an estimate. A table that prices the optimizer (`ntng calibrate` prices every registered one) is always
used as it is.
"""

from __future__ import annotations

import json
import math
import time
from importlib import resources
from pathlib import Path

from ntng.errors import UsageError
from ntng.files import write_text_atomic

ESTIMATE_REPEATS, ESTIMATE_WARMUP = 7, 2


def cache_path(data_dir: Path, table_name: str) -> Path:
    return Path(data_dir) / "rst-estimates" / f"{table_name}.json"


def shipped_path(table_name: str) -> Path:
    return Path(str(resources.files("ntng") / "tables" / "estimates" / f"{table_name}.json"))


def _valid(entry) -> bool:
    ratio = entry.get("ratio") if isinstance(entry, dict) else None
    return isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and math.isfinite(ratio) and ratio > 0


def shipped_estimate(table_name: str, key: str, path: Path | None = None) -> dict | None:
    """The ratio the package ships for the optimizer `key` under this table ({"table": name, "optimizers": {key:
    entry}}), or None where it ships none. A shipped file that cannot be read, or is not such a file for this table,
    is refused, not skipped: skipping it would measure here and charge some runs another price."""
    path = path or shipped_path(table_name)
    try:
        shipped = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"shipped RST estimates {path} cannot be read ({exc}): restore it from the package") from None
    optimizers = shipped.get("optimizers") if isinstance(shipped, dict) else None
    if not isinstance(optimizers, dict) or shipped.get("table") != table_name:
        raise UsageError(f"shipped RST estimates {path}: not the estimates of table {table_name!r} "
                         f"(want {{\"table\": \"{table_name}\", \"optimizers\": {{...}}}})")
    entry = optimizers.get(key)
    if entry is not None and not (_valid(entry) and entry.get("of", "adamw") == "adamw"):
        raise UsageError(f"shipped RST estimates {path}: the entry for {key!r} needs a finite positive ratio to "
                         f"AdamW's step")
    return entry


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
    ratio the package ships for this table and key, else the one cached here, measured now if there is none. Both
    hold the ratio only (a table recalibrated under the same name prices the step from its own AdamW step); a lock
    keeps parallel runs from measuring twice."""
    import fcntl

    shipped = shipped_estimate(table.name, key)
    if shipped is not None:
        return {**shipped, "seconds": table.optimizer_seconds("adamw") * shipped["ratio"], "estimate": True,
                "table": table.name, "shipped": True}
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
            if not _valid(entry):
                measured = measure_step_ratio(method, model_name, preset, log)
                entry = {"ratio": measured["ratio"], "of": "adamw", "measured_on": time.strftime("%Y-%m-%d"),
                         "measured": measured}
                cached[key] = entry
                write_text_atomic(path, json.dumps(cached, indent=2) + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return {**entry, "seconds": table.optimizer_seconds("adamw") * entry["ratio"], "estimate": True,
            "table": table.name, "shipped": False}
