"""`ntng calibrate`: measure an RST table on this machine.

For every active-layer count 1..L it times a forward+backward micro-batch and a forward-only micro-batch of the
preset's model (the same code, precision and batch shape the training loop uses), and it times one optimizer step
per optimizer. Each figure is the median of `repeats` timed runs after `warmup` untimed ones; the device is
synchronised before the clock is read. The per-layer medians are then fitted with a + b x layers by least squares
(the paper's tables are linear in the layer count to within 1%): the fit is what the table charges, which keeps it
monotone and irons out timer noise; the medians, their spread and the fit's residuals are kept beside it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .batches import make_collator
from .errors import UsageError
from .models import build_model
from .optim import build_optimizer
from .presets import MODELS, get_preset
from .records import write_json
from .rst import TABLE_FORMAT, table_from_dict
from .train import autocast_dtype, describe_machine, pick_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_median(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"median": median, "min": min(times), "max": max(times),
            "spread": (max(times) - min(times)) / median if median > 0 else 0.0}


def fit_linear(counts: list[int], values: list[float]) -> tuple[float, float]:
    """Least-squares a, b of value = a + b x count."""
    n = len(counts)
    if n == 1:
        return values[0], 0.0
    mean_x, mean_y = sum(counts) / n, sum(values) / n
    sxx = sum((x - mean_x) ** 2 for x in counts)
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(counts, values, strict=True)) / sxx
    return mean_y - b * mean_x, b


def monotone_fit(counts: list[int], medians: list[float]) -> tuple[list[float], dict]:
    a, b = fit_linear(counts, medians)
    fitted = [a + b * c for c in counts]
    if b > 0 and fitted[0] > 0:
        residuals = [abs(f - m) / m for f, m in zip(fitted, medians, strict=True)]
        return fitted, {"rule": "least squares a + b x layers", "a": a, "b": b,
                        "max_relative_residual": max(residuals)}
    # noise swamped the per-layer cost (a tiny model): fall back to the running maximum of the medians
    running, out = 0.0, []
    for m in medians:
        running = max(running, m)
        out.append(running)
    return out, {"rule": "running maximum of the medians (the linear fit was not increasing)", "a": a, "b": b}


def calibrate(preset: str, model: str, out: str | Path | None = None, repeats: int = 7, warmup: int = 3,
              log=print) -> dict:
    """Measure and (if `out`) write an RST table for `model` at `preset` on this machine; returns the table."""
    if model not in MODELS:
        raise UsageError(f"unknown model {model!r} (choose from {', '.join(MODELS)})")
    preset_obj = get_preset(preset)
    if repeats < 1 or warmup < 0:
        raise UsageError("repeats must be >= 1 and warmup >= 0")
    device = pick_device()
    amp = autocast_dtype(device)
    shape, recipe = preset_obj.shape(model), preset_obj.recipe(model)
    torch.manual_seed(0)
    net = build_model(model, preset_obj).to(device)
    net.train()
    collator = make_collator(model, preset_obj, preset_obj.vocab_size, seed=0)
    width = shape.seq_len if model == "bert" else collator.raw_len
    tokens = torch.randint(5 if model == "bert" else 3, preset_obj.vocab_size - 100, (shape.micro_batch, width),
                           generator=torch.Generator().manual_seed(0))
    if model == "bert":
        tokens[:, 0], tokens[:, -1] = 2, 3  # [CLS] ... [SEP]
    batch = {k: v.to(device) for k, v in collator(tokens).items()}

    def autocast():
        return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def train_pass(layers):
        def run():
            with autocast():
                loss = net(batch, active_layers=layers)["loss"]
            loss.backward()
            net.zero_grad(set_to_none=True)
        return run

    def forward_pass(layers):
        def run():
            with torch.no_grad(), autocast():
                net(batch, active_layers=layers)
        return run

    counts = list(range(1, shape.num_layers + 1))
    measured: dict[str, dict] = {"train": {}, "forward": {}, "optimizer": {}}
    for unit, make in (("train", train_pass), ("forward", forward_pass)):
        for n in counts:
            measured[unit][str(n)] = time_median(make(list(range(n))), device, repeats, warmup)
            log(f"{unit:8s} {n:2d} layers: {measured[unit][str(n)]['median'] * 1e3:8.2f} ms "
                f"(spread {measured[unit][str(n)]['spread']:.0%})")

    optimizer = build_optimizer(recipe.optimizer, net, recipe.lr, recipe.betas, recipe.eps, recipe.weight_decay)

    def optimizer_step():
        with autocast():
            loss = net(batch)["loss"]
        loss.backward()  # untimed below: only the step is measured
        _sync(device)
        start = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return time.perf_counter() - start

    step_times = [optimizer_step() for _ in range(warmup + repeats)][warmup:]
    median = statistics.median(step_times)
    measured["optimizer"]["adamw"] = {"median": median, "min": min(step_times), "max": max(step_times),
                                      "spread": (max(step_times) - min(step_times)) / median}
    log(f"optimizer step ({recipe.optimizer}): {median * 1e3:.2f} ms")

    units, fits = {}, {}
    for unit in ("train", "forward"):
        fitted, fits[unit] = monotone_fit(counts, [measured[unit][str(n)]["median"] for n in counts])
        units[unit] = {str(n): float(f"{v:.6g}") for n, v in zip(counts, fitted, strict=True)}
    units["optimizer"] = {"adamw": float(f"{median:.6g}")}
    machine = describe_machine(device)
    table = {
        "format": TABLE_FORMAT,
        "name": f"{preset}-{model}-{machine.get('gpu') or machine['cpu']}".replace(" ", "_")[:120],
        "model": model, "preset": preset, "num_layers": shape.num_layers,
        "machine": ", ".join(f"{k}={v}" for k, v in machine.items()),
        "measured_by": "ntng calibrate",
        "measured_on": time.strftime("%Y-%m-%d"),
        "precision": str(amp).replace("torch.", "") if amp else "float32",
        "micro_batch": {"sequences": shape.micro_batch, "tokens_per_sequence": width},
        "units": units,
        "measured": measured,
        "fit": fits,
        "settings": {"repeats": repeats, "warmup": warmup},
        "notes": ["units.train/forward are the fit in 'fit' of the medians in 'measured'; units.optimizer is the "
                  "median step time (clip + step + zero_grad), charged once per optimizer step",
                  "the AdamW key covers T5's AdamWScale, as in the paper's table"],
    }
    table_from_dict(table, "calibration")  # the table we write must pass the same validation as any other
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, table)
        log(f"wrote {out}")
    return table


