"""Measure the price of optimizer steps a preset's RST tables do not list, and ship it with the package.

A method that brings its own optimizer (Muon, Schedule-Free) is charged the table's AdamW step times the ratio of the
two steps' wall times (`ntng.training.pricing`). Measured where a run happens to start, that ratio follows the host:
torch.optim.Muon orthogonalises in bf16, which a CPU without native bf16 emulates, so the same step would cost more
on one session's host than on another's. Shipping the ratio measured once, on a quiet machine, gives every run of a
study one price. Run it with nothing else on the machine, on a host like the table's (its `machine` and `precision`):

    python tools/price_optimizers.py --preset cpu --methods muon schedule_free            # print only
    python tools/price_optimizers.py --preset cpu --methods muon schedule_free --write    # ntng/tables/estimates/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def price(preset_name: str, models: list[str], methods: list[str], log=print) -> dict[str, dict]:
    """{table name: {optimizer key: entry}} for each method whose optimizer the model's table does not price."""
    import torch

    from ntng.errors import UsageError
    from ntng.methods import build_method
    from ntng.presets import get_preset
    from ntng.training.device import describe_machine, pick_device
    from ntng.training.pricing import measure_step_ratio
    from ntng.training.rst import shipped_table

    torch.set_num_threads(1)  # the tables are one-thread tables
    preset = get_preset(preset_name)
    device = pick_device()
    machine = ", ".join(f"{k}={v}" for k, v in describe_machine(device).items())
    out: dict[str, dict] = {}
    for model in models:
        table = shipped_table(preset.rst_preset, model)
        if f"device={device.type}" not in table.machine:  # a GPU's ratio says nothing of a CPU table's steps
            raise UsageError(f"table {table.name} was measured on {table.machine!r}: price its steps on that kind of "
                             f"device, not {device.type}")
        for name in methods:
            method = build_method(name, model, preset)
            key = method.rst_optimizer
            if key in table.optimizer:
                log(f"{model} {name}: the table prices {key!r} itself; nothing to estimate")
                continue
            measured = measure_step_ratio(method, model, preset, log)
            out.setdefault(table.name, {})[key] = {
                "ratio": measured["ratio"], "of": "adamw", "measured_on": time.strftime("%Y-%m-%d"),
                "measured": measured, "machine": machine, "model": model, "preset": preset.name,
                "how": "tools/price_optimizers.py: medians of interleaved rounds (ntng.training.pricing)"}
    return out


def write(prices: dict[str, dict], out_dir: Path) -> list[Path]:
    """Merge `prices` into out_dir/<table name>.json ({"format": 1, "table": ..., "optimizers": {...}})."""
    from ntng.errors import UsageError
    from ntng.files import write_text_atomic

    written = []
    for table_name, entries in prices.items():
        path = out_dir / f"{table_name}.json"
        try:
            current = json.loads(path.read_text()) if path.exists() else {"format": 1, "table": table_name,
                                                                            "optimizers": {}}
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {path} to add to it ({exc})") from None
        if not (isinstance(current, dict) and current.get("table") == table_name
                and isinstance(current.get("optimizers"), dict)):
            raise UsageError(f"{path} is not the estimates file of table {table_name!r}")
        current["optimizers"].update(entries)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(current, indent=2) + "\n")
        written.append(path)
    return written


def main(argv=None) -> int:
    from ntng.errors import NtngError

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", required=True)
    parser.add_argument("--models", nargs="+", default=["bert", "t5"], choices=["bert", "t5"])
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--write", action="store_true", help="merge into the shipped estimates")
    parser.add_argument("--out", type=Path, default=ROOT / "ntng" / "tables" / "estimates")
    args = parser.parse_args(argv)
    try:
        prices = price(args.preset, args.models, args.methods)
        print(json.dumps(prices, indent=2))
        for path in write(prices, args.out) if args.write else ():
            print(f"price_optimizers: wrote {path}")
    except NtngError as exc:
        print(f"price_optimizers: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
