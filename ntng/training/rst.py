"""Reference System Time: tables of what a unit of work costs on a reference machine, and the clock that adds
them up during training.

A table is JSON (format 1):

    {"format": 1, "name": ..., "model": "bert"|"t5", "preset": ..., "num_layers": L, "machine": "...",
     "micro_batch": {"sequences": S, "tokens_per_sequence": N},
     "units": {"train":     {"1": s, ..., "L": s},   # forward+backward of one micro-batch, by active layers
               "forward":   {...},                  # forward only (scoring passes), by active layers
               "optimizer": {"adamw": s, ...}},     # one optimizer step, by optimizer (extra to the above)
     "interpolated": {"forward": {"rule": "proportional", "to": "train", "ratio": r?, "why": "..."}},
     "notes": [...]}

Every layer count 1..L of a per-layer unit is either given or filled by a rule named under "interpolated"
("linear" between given counts, or "proportional" to another unit); nothing is filled silently. Values must be
positive and must not decrease with the layer count: the official BERT table's 0.01052 s at 7 layers (a 10x typo)
is refused by name.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ntng.errors import UsageError

TABLE_FORMAT = 1
PER_LAYER_UNITS = ("train", "forward")
KINDS = ("train", "scoring", "hessian", "optimizer")  # the parts of rst_breakdown
# the extra work a method's hooks may charge beyond training (Method.extra_work), which a run can make free
EXTRA_KINDS = ("scoring", "hessian")


@dataclass(frozen=True)
class RSTTable:
    name: str
    model: str
    preset: str
    num_layers: int
    train: tuple[float, ...]  # index l-1 -> seconds with l active layers
    forward: tuple[float, ...]
    optimizer: dict[str, float]
    micro_batch: dict = field(default_factory=dict)
    machine: str = ""
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    def train_seconds(self, active_layers: int) -> float:
        return self.train[self._index(active_layers)]

    def forward_seconds(self, active_layers: int) -> float:
        return self.forward[self._index(active_layers)]

    def optimizer_seconds(self, optimizer: str) -> float:
        if optimizer not in self.optimizer:
            raise UsageError(f"RST table {self.name} has no optimizer step time for {optimizer!r} "
                             f"(it has {', '.join(sorted(self.optimizer))}): calibrate one that does")
        return self.optimizer[optimizer]

    def _index(self, active_layers: int) -> int:
        if not 1 <= active_layers <= self.num_layers:
            raise ValueError(f"RST table {self.name} covers 1..{self.num_layers} active layers, not {active_layers}")
        return active_layers - 1

    def to_dict(self) -> dict:
        return self.raw


def _bad(name: str, message: str) -> UsageError:
    return UsageError(f"RST table {name}: {message}")


def _layer_values(name: str, unit: str, given: dict, num_layers: int) -> dict[int, float]:
    values = {}
    for key, value in given.items():
        try:
            layers = int(key)
        except (TypeError, ValueError):
            raise _bad(name, f"units.{unit} has a non-numeric layer count {key!r}") from None
        if not 1 <= layers <= num_layers:
            raise _bad(name, f"units.{unit}[{key}]: layer count outside 1..{num_layers}")
        if layers in values:
            raise _bad(name, f"units.{unit} gives layer count {layers} twice")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise _bad(name, f"units.{unit}[{key}] = {value!r}: every value must be a positive number of seconds")
        values[layers] = float(value)
    return values


def _check_monotone(name: str, unit: str, values: dict[int, float], filled: set[int] = frozenset()) -> None:
    counts = sorted(values)
    for lower, upper in itertools.pairwise(counts):
        if values[upper] < values[lower]:
            what = "interpolated" if upper in filled else "given"
            raise _bad(name, f"units.{unit}[{upper}] = {values[upper]:g} ({what}) is below units.{unit}[{lower}] = "
                       f"{values[lower]:g}: cost must not decrease as layers are added (a typo?)")


def _fill(name: str, unit: str, values: dict[int, float], rule: dict | None, num_layers: int,
          other: dict[str, dict[int, float]]) -> dict[int, float]:
    if rule is not None and (not isinstance(rule, dict) or rule.get("rule") not in ("linear", "proportional")):
        raise _bad(name, f"interpolated.{unit} must be an object with rule 'linear' or 'proportional', got {rule!r}")
    missing = [n for n in range(1, num_layers + 1) if n not in values]
    if not missing:
        return values
    if rule is None:
        raise _bad(name, f"units.{unit} lacks layer count(s) {missing} and declares no interpolation for them "
                   f"(add interpolated.{unit})")
    kind = rule.get("rule")
    out = dict(values)
    if kind == "linear":
        given = sorted(values)
        for n in missing:
            below = [g for g in given if g < n]
            above = [g for g in given if g > n]
            if not below or not above:
                raise _bad(name, f"units.{unit}[{n}] cannot be interpolated linearly: no given count on both sides")
            lo, hi = below[-1], above[0]
            out[n] = values[lo] + (values[hi] - values[lo]) * (n - lo) / (hi - lo)
    elif kind == "proportional":
        base_unit = rule.get("to")
        if base_unit not in other:
            raise _bad(name, f"interpolated.{unit}: 'to' must name a complete per-layer unit, not {base_unit!r}")
        base = other[base_unit]
        if "ratio" in rule:
            ratio = rule["ratio"]
            if not isinstance(ratio, (int, float)) or isinstance(ratio, bool):
                raise _bad(name, f"interpolated.{unit}: ratio must be a number, got {ratio!r}")
        elif values:
            ratio = sum(values[n] / base[n] for n in values) / len(values)
        else:
            raise _bad(name, f"interpolated.{unit}: a proportional rule needs a 'ratio' or at least one given value")
        if not (ratio > 0 and math.isfinite(ratio)):
            raise _bad(name, f"interpolated.{unit}: ratio {ratio!r} must be a positive number")
        for n in missing:
            out[n] = base[n] * ratio
    return out


def table_from_dict(raw: dict, source: str = "<dict>") -> RSTTable:
    """Validate a table and fill its declared interpolations; a bad table is refused with the entry named."""
    if not isinstance(raw, dict):
        raise UsageError(f"RST table {source}: not a JSON object")
    name = raw.get("name") or source
    if raw.get("format") != TABLE_FORMAT or isinstance(raw.get("format"), bool):
        raise _bad(name, f"format must be {TABLE_FORMAT}, got {raw.get('format')!r}")
    for key in ("model", "preset", "num_layers", "units"):
        if key not in raw:
            raise _bad(name, f"missing {key!r}")
    num_layers = raw["num_layers"]
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise _bad(name, f"num_layers must be a positive integer, got {num_layers!r}")
    units = raw["units"]
    if not isinstance(units, dict) or not all(isinstance(units.get(u), dict) for u in (*PER_LAYER_UNITS, "optimizer")):
        raise _bad(name, "units must hold objects 'train', 'forward' and 'optimizer'")
    interpolated = raw.get("interpolated", {})
    if not isinstance(interpolated, dict) or set(interpolated) - set(PER_LAYER_UNITS):
        raise _bad(name, f"interpolated must map {' / '.join(PER_LAYER_UNITS)} to a rule, got {interpolated!r}")
    filled: dict[str, dict[int, float]] = {}
    for unit in PER_LAYER_UNITS:  # train first: forward may be proportional to it
        given = _layer_values(name, unit, units[unit], num_layers)
        _check_monotone(name, unit, given)
        filled[unit] = _fill(name, unit, given, interpolated.get(unit), num_layers, filled)
        _check_monotone(name, unit, filled[unit], set(filled[unit]) - set(given))
    optimizer = {}
    for opt, value in units["optimizer"].items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            raise _bad(name, f"units.optimizer[{opt}] = {value!r}: must be a number of seconds >= 0")
        optimizer[opt] = float(value)
    return RSTTable(name=name, model=raw["model"], preset=raw["preset"], num_layers=num_layers,
                    train=tuple(filled["train"][n] for n in range(1, num_layers + 1)),
                    forward=tuple(filled["forward"][n] for n in range(1, num_layers + 1)),
                    optimizer=optimizer, micro_batch=raw.get("micro_batch", {}), machine=raw.get("machine", ""),
                    raw=raw)


def load_table(path: str | Path) -> RSTTable:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no RST table at {path}") from None
    except OSError as exc:
        raise UsageError(f"cannot read RST table {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"RST table {path} is not valid JSON ({exc})") from None
    return table_from_dict(raw, str(path))


def shipped_table_path(preset: str, model: str) -> Path:
    return Path(str(resources.files("ntng") / "tables" / f"{preset}-{model}.json"))


def shipped_table(preset: str, model: str) -> RSTTable:
    """The preset's own reference table (the paper's for `paper`, this project's CPU calibration otherwise)."""
    path = shipped_table_path(preset, model)
    if not path.exists():
        raise UsageError(f"no shipped RST table for preset {preset!r} and model {model!r}: "
                         f"run `ntng calibrate --preset {preset} --model {model}` and pass --rst-table")
    return load_table(path)


class RSTClock:
    """Adds up the reference cost of the work actually done; the budget is spent when it reaches `budget_s`.

    Charges happen *before* the work (as in the paper's code), so a step that starts under budget is charged in
    full; the loop checks `exhausted` between optimizer steps, so a run overshoots by at most one step.
    Kinds in `free` (the paper's ablations: free scoring, free Hessian passes) are counted but cost nothing.
    """

    def __init__(self, table: RSTTable, budget_s: float, free: tuple[str, ...] = ()):
        assert budget_s > 0, budget_s
        unknown = set(free) - set(KINDS)
        assert not unknown, f"unknown kinds {unknown}"
        self.table = table
        self.budget_s = float(budget_s)
        self.free = tuple(free)
        self.breakdown = dict.fromkeys(KINDS, 0.0)
        self.units = dict.fromkeys(KINDS, 0)  # units of work done per kind, free or not

    def _charge(self, kind: str, seconds: float) -> float:
        if kind not in self.breakdown:
            raise ValueError(f"unknown kind of work {kind!r} (one of {', '.join(KINDS)})")
        self.units[kind] += 1
        if kind in self.free:
            return 0.0
        self.breakdown[kind] += seconds
        return seconds

    def charge_train(self, active_layers: int, kind: str = "train", share: float = 1.0) -> float:
        """One forward+backward micro-batch with `active_layers` blocks (kind 'hessian' for Sophia's passes);
        `share`: the pass's sequences as a fraction of the table's micro-batch (a smaller pass costs its share)."""
        return self._charge(kind, self.table.train_seconds(active_layers) * share)

    def charge_forward(self, active_layers: int, kind: str = "scoring", share: float = 1.0) -> float:
        """One forward-only micro-batch (batch-selection scoring); `share` as in `charge_train`."""
        return self._charge(kind, self.table.forward_seconds(active_layers) * share)

    def charge_optimizer(self, optimizer: str) -> float:
        return self._charge("optimizer", self.table.optimizer_seconds(optimizer))

    @property
    def rst_seconds(self) -> float:
        return sum(self.breakdown.values())

    @property
    def budget_fraction(self) -> float:
        return self.rst_seconds / self.budget_s

    @property
    def exhausted(self) -> bool:
        return self.rst_seconds >= self.budget_s

    def state_dict(self) -> dict:
        return {"budget_s": self.budget_s, "breakdown": dict(self.breakdown), "units": dict(self.units)}

    def load_state_dict(self, state: dict) -> None:
        assert state["budget_s"] == self.budget_s, "a resumed run keeps its budget"
        self.breakdown = dict(state["breakdown"])
        self.units = dict(state["units"])
