"""`ntng calibrate`: measure an RST table on this machine.

For every active-layer count 1..L it times a forward+backward micro-batch and a forward-only micro-batch of the
preset's model (the same code, precision and batch shape the training loop uses), and it times one optimizer step
per optimizer: the baseline's and that of every registered method bringing its own (Lion, Sophia-G, Muon,
Schedule-Free AdamW: the step only; Sophia's Hessian passes are charged as forward+backward micro-batches). Each
figure is the median of `repeats` timed runs after `warmup` untimed ones;
the device is synchronised before the clock is read. The per-layer medians are then fitted with a + b x layers
(Theil-Sen) (the paper's tables are linear in the layer count to within 1%): the fit is what the table charges,
which keeps it monotone and irons out timer noise (a Theil-Sen fit, which a few spoiled timings cannot drag); the
medians, their spread and the fit's residuals are kept beside it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ntng.data.batches import make_collator
from ntng.data.corpus import packing_width
from ntng.errors import UsageError
from ntng.methods import build_method, method_names
from ntng.models.pretraining import build_model
from ntng.presets import MODELS, get_preset
from ntng.training.device import autocast_dtype, describe_machine, pick_device
from ntng.training.optim import build_optimizer
from ntng.training.records import write_json
from ntng.training.rst import TABLE_FORMAT, table_from_dict


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(fns: dict[str, Callable[[], None]], device: torch.device, repeats: int, warmup: int) -> dict:
    """Median time of each fn, measured in interleaved rounds (every fn once per round), so that a burst of
    machine noise lands on all of them alike instead of on whichever was being measured at the time."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[key].append(time.perf_counter() - start)
    return {key: _stats(values) for key, values in times.items()}


def _stats(values: list[float]) -> dict:
    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values),
            "spread": (max(values) - min(values)) / median if median > 0 else 0.0}


def fit_linear(counts: list[int], values: list[float]) -> tuple[float, float]:
    """Theil-Sen a, b of value = a + b x count: the median of pairwise slopes, then the median intercept.
    Robust to a few timings spoiled by machine noise, which an ordinary least-squares fit is not."""
    if len(counts) == 1:
        return values[0], 0.0
    slopes = [(values[j] - values[i]) / (counts[j] - counts[i])
              for i in range(len(counts)) for j in range(i + 1, len(counts))]
    b = statistics.median(slopes)
    a = statistics.median(v - b * c for c, v in zip(counts, values, strict=True))
    return a, b


def monotone_fit(counts: list[int], medians: list[float]) -> tuple[list[float], dict]:
    a, b = fit_linear(counts, medians)
    fitted = [a + b * c for c in counts]
    if b > 0 and fitted[0] > 0:
        residuals = [abs(f - m) / m for f, m in zip(fitted, medians, strict=True)]
        return fitted, {"rule": "Theil-Sen a + b x layers", "a": a, "b": b,
                        "max_relative_residual": max(residuals)}
    # noise swamped the per-layer cost (a tiny model): fall back to the running maximum of the medians
    running, out = 0.0, []
    for m in medians:
        running = max(running, m)
        out.append(running)
    return out, {"rule": "running maximum of the medians (the fit was not increasing)", "a": a, "b": b}


def timing_setup(model: str, preset) -> tuple:
    """(device, autocast dtype, the preset's model in training mode on the device, one micro-batch of random
    windows on it): what every timing of a unit of work starts from (calibration, the pricing of an optimizer)."""
    device = pick_device()
    amp = autocast_dtype(device)
    shape = preset.shape(model)
    torch.manual_seed(0)
    net = build_model(model, preset).to(device)
    net.train()
    collator = make_collator(model, preset, preset.vocab_size, seed=0)
    width = shape.seq_len if model == "bert" else collator.raw_len
    tokens = torch.randint(5 if model == "bert" else 3, preset.vocab_size - 100, (shape.micro_batch, width),
                           generator=torch.Generator().manual_seed(0))
    if model == "bert":
        tokens[:, 0], tokens[:, -1] = 2, 3  # [CLS] ... [SEP]
    return device, amp, net, {k: v.to(device) for k, v in collator(tokens).items()}


def calibrate(preset: str, model: str, out: str | Path | None = None, repeats: int = 7, warmup: int = 3,
              log=print) -> dict:
    """Measure and (if `out`) write an RST table for `model` at `preset` on this machine; returns the table."""
    if model not in MODELS:
        raise UsageError(f"unknown model {model!r} (choose from {', '.join(MODELS)})")
    preset_obj = get_preset(preset)
    if repeats < 1 or warmup < 0:
        raise UsageError("repeats must be >= 1 and warmup >= 0")
    shape, recipe = preset_obj.shape(model), preset_obj.recipe(model)
    device, amp, net, batch = timing_setup(model, preset_obj)
    width = packing_width(model, preset_obj)  # tokens per raw window (T5's before span corruption)

    def autocast():
        return torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None)

    def train_pass(layers):
        def run():
            with autocast():
                loss = net(batch, active_layers=layers)["loss"]
            loss.backward()  # gradients accumulate, as over the micro-batches of a step
        return run

    def forward_pass(layers):
        def run():
            with torch.no_grad(), autocast():
                net(batch, active_layers=layers)
        return run

    counts = list(range(1, shape.num_layers + 1))
    fns = {f"{unit}:{n}": make(list(range(n))) for unit, make in (("train", train_pass), ("forward", forward_pass))
           for n in counts}
    # one step of every optimizer the model can use: the baseline's (the "adamw" key, which covers T5's
    # AdamWScale as in the paper's table) and those of the optimizer methods, built exactly as those methods build
    # them (Sophia: the step only; its Hessian passes are charged as forward+backward micro-batches)
    optimizers = {"adamw": build_optimizer(recipe.optimizer, net, recipe.lr, recipe.betas, recipe.eps,
                                           recipe.weight_decay)}
    for method in method_names():  # every registered method that brings an optimizer of its own
        try:
            hooks = build_method(method, model, preset_obj)
        except UsageError:  # a method that cannot run at this preset has no step to price here
            continue
        if hooks.rst_optimizer not in optimizers:
            optimizers[hooks.rst_optimizer] = hooks.build_optimizer(net)

    def optimizer_step(optimizer):
        def run():
            # gradients must exist for a real step; a step on stale gradients costs the same as on fresh ones
            if next(net.parameters()).grad is None:
                with autocast():
                    net(batch)["loss"].backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.grad_clip)
            optimizer.step()
        return run

    for key, optimizer in optimizers.items():
        fns[f"optimizer:{key}"] = optimizer_step(optimizer)
    timed = time_rounds(fns, device, repeats, warmup)
    measured: dict[str, dict] = {"train": {}, "forward": {}, "optimizer": {}}
    for key, stats in timed.items():
        unit, n = key.split(":")
        measured[unit][n] = stats
        log(f"{unit:9s} {n:>5s}: {stats['median'] * 1e3:8.2f} ms (spread {stats['spread']:.0%})")

    units, fits = {}, {}
    for unit in ("train", "forward"):
        fitted, fits[unit] = monotone_fit(counts, [measured[unit][str(n)]["median"] for n in counts])
        units[unit] = {str(n): float(f"{v:.6g}") for n, v in zip(counts, fitted, strict=True)}
    units["optimizer"] = {key: float(f"{measured['optimizer'][key]['median']:.6g}") for key in optimizers}
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
                  "median step time (gradient clipping + step), charged once per optimizer step",
                  "the AdamW key covers T5's AdamWScale, as in the paper's table",
                  "the other keys are the step times of the optimizers the methods bring (lion, sophia, muon, "
                  "schedule_free); Sophia's Hessian "
                  "passes are charged as units.train micro-batches, not in its step time"],
    }
    table_from_dict(table, "calibration")  # the table we write must pass the same validation as any other
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, table)
        log(f"wrote {out}")
    return table


