"""Variants: a method plus settings, run and reported as a method of its own.

A variant's name is the method's name followed by its settings, each `+key=value` (or `+flag` for a setting that
is switched on), in sorted order: `selective_backprop+free_scoring`, `sophia+free_hessian`,
`lion+lr=0.0003+weight_decay=0.2`. It names the run directory (results/<preset>/<model>/<variant>/<budget>/seed<k>)
and the runs' rows in the report, so the paper's ablations (Section 5.4: batch selection with scoring not charged;
Section 6.1: Sophia with free Hessian passes) sit beside the charged runs, and any grid over settings is a set of
variants. A setting is a run flag (`free_scoring`, `free_hessian`: the RST clock does not charge that kind of extra
work), one of the method's own options (`ntng.methods.base.take_options`), or `recipe.FIELD`, a value of the model's
training recipe (`ntng.presets.Recipe`: `baseline+recipe.lr=0.002`). `--set KEY=VALUE` on the command line adds
settings to a method (`with_settings`); in a sweep, `--set METHOD.KEY=V1,V2,...` makes a grid axis
(`expand_settings`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ntng.errors import UsageError
from ntng.presets import RECIPE_PREFIX
from ntng.training.rst import EXTRA_KINDS

# a run flag per kind of extra work: `free_scoring`, `free_hessian` (the flag -> the kind of extra work it makes free)
RUN_FLAGS = {f"free_{kind}": kind for kind in EXTRA_KINDS}
# a run setting naming the training windows (ntng.data.splits.DATA_SPLITS): `baseline+data_split=rho_main` is the
# baseline on the 80% RHO-LOSS trains on, its like-for-like control
DATA_SPLIT = "data_split"
# the models the paper ran its ablations on (ntng.methods.paper_ablations), at the grid's middle budget
ABLATION_MODELS = ("bert",)
_KEY = re.compile(r"(recipe\.)?[a-z][a-z0-9_]*")  # a method option, or recipe.FIELD (ntng.presets.Recipe)


@dataclass(frozen=True)
class Variant:
    method: str
    settings: tuple[tuple[str, object], ...] = ()  # sorted by key

    @property
    def name(self) -> str:
        return variant_name(self.method, dict(self.settings))

    @property
    def is_variant(self) -> bool:
        return bool(self.settings)

    def run_flags(self) -> dict[str, bool]:
        return {k: bool(v) for k, v in self.settings if k in RUN_FLAGS}

    def method_options(self) -> dict:
        return {k: v for k, v in self.settings
                if k not in RUN_FLAGS and k != DATA_SPLIT and not k.startswith(RECIPE_PREFIX)}

    def data_split(self) -> str | None:
        """The training windows the variant names (`+data_split=rho_main`), or None: the method's own."""
        return dict(self.settings).get(DATA_SPLIT)

    def recipe_overrides(self) -> dict:
        """`recipe.lr=0.002` -> {"lr": 0.002}: the model's training recipe changed for this run."""
        return {k[len(RECIPE_PREFIX):]: v for k, v in self.settings if k.startswith(RECIPE_PREFIX)}


def format_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value).replace("e+", "e")  # exact (a name must give back the value it was made from); no "+"
    return str(value)


def parse_value(text: str, where: str):
    """'true'/'false' -> bool, whole numbers -> int, other numbers -> float; a comma list -> a list of those."""
    if "," in text:
        return [parse_value(part, where) for part in text.split(",")]
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(lowered)
    except ValueError:
        pass
    try:
        value = float(lowered)
    except ValueError:
        raise UsageError(f"{where}: {text!r} is not a number, true or false") from None
    if not math.isfinite(value):
        raise UsageError(f"{where}: {text!r} is not a finite number")
    return value


def variant_name(method: str, settings: dict) -> str:
    parts = [method]
    for key in sorted(settings):
        value = settings[key]
        parts.append(key if value is True and key in RUN_FLAGS else f"{key}={format_value(value)}")
    return "+".join(parts)


def parse_variant(text: str) -> Variant:
    """`method+flag+key=value...` -> Variant; a plain method name is a variant with no settings. Checks the
    syntax only: the method and its options are checked where the run is resolved."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"bad method {text!r}: give a method name, optionally with +settings")
    method, *items = text.strip().split("+")
    settings: dict = {}
    for item in items:
        key, has_value, raw = item.partition("=")
        if not _KEY.fullmatch(key):
            raise UsageError(f"bad setting {item!r} in {text!r}: expected key=value or a flag such as free_scoring")
        if key in settings:
            raise UsageError(f"setting {key!r} is given twice in {text!r}")
        if not has_value and key not in RUN_FLAGS:
            raise UsageError(f"setting {key!r} in {text!r} needs a value (key=value); flags are "
                             f"{', '.join(RUN_FLAGS)}")
        settings[key] = setting_value(key, raw if has_value else "true", f"setting {key} in {text!r}")
        if key in RUN_FLAGS and settings[key] is False:  # a flag turned off is no setting: `sophia`, not a variant
            del settings[key]
    return Variant(method, tuple(sorted(settings.items())))


def setting_value(key: str, raw: str, where: str):
    """The value of one setting: a number, true/false, or a tuple of numbers; a run flag takes true/false only;
    data_split the name of a split."""
    if key == DATA_SPLIT:
        from ntng.data.splits import DATA_SPLITS

        if raw.strip() not in DATA_SPLITS:
            raise UsageError(f"{where}: unknown data split {raw!r} (choose from {', '.join(DATA_SPLITS)})")
        return raw.strip()
    value = parse_value(raw, where)
    if key in RUN_FLAGS and not isinstance(value, bool):
        raise UsageError(f"{where} must be true or false")
    return tuple(value) if isinstance(value, list) else value


def canonical_method(text: str) -> str:
    """A method or variant by its canonical name (settings sorted, exact), once its method is found (a built-in,
    an installed entry point, module:Class); UsageError otherwise."""
    from ntng.methods import find_method

    variant = parse_variant(text)
    find_method(variant.method)
    return variant.name


def run_name(text: str) -> str:
    """The name a method or variant runs and is recorded under: a plug-in given as `module:Class` goes by the
    name its class gives itself (`mypkg.wsd:WSD+lr=0.001` -> `wsd+lr=0.001`)."""
    from ntng.methods import find_method

    variant = parse_variant(text)
    return variant_name(find_method(variant.method).name, dict(variant.settings))


def parse_assignment(text: str) -> tuple[str, str]:
    """`KEY=VALUE` -> (KEY, VALUE text)."""
    key, has_value, value = str(text).partition("=")
    if not has_value or not key or not value:
        raise UsageError(f"bad --set {text!r}: expected KEY=VALUE, e.g. lr=0.0003 or recipe.lr=0.002")
    return key.strip(), value.strip()


def with_settings(method: str, assignments) -> str:
    """A method (or variant) with `--set KEY=VALUE` assignments added: `lion`, [lr=3e-4] -> `lion+lr=0.0003`."""
    variant = parse_variant(method)
    settings = dict(variant.settings)
    for text in assignments or ():
        key, raw = parse_assignment(text)
        if not _KEY.fullmatch(key) or "+" in raw:
            raise UsageError(f"bad --set {text!r}: expected KEY=VALUE (one setting each, no '+')")
        added = setting_value(key, raw, f"--set {text!r}")
        if key in settings and settings[key] != added:
            raise UsageError(f"setting {key} is given twice with different values")
        settings[key] = added
    return parse_variant(variant_name(variant.method, settings)).name  # canonical: a flag turned off drops out


def expand_settings(methods: list[str], assignments, strict: bool = True) -> list[str]:
    """A sweep's grid axes: `--set METHOD.KEY=V1,V2` gives METHOD one variant per value (several keys: every
    combination); a method named by no assignment stays as it is. A key must name a method of the grid (`strict`;
    otherwise it is skipped: one model's grid of several that were checked together)."""
    import itertools

    axes: dict[str, list[tuple[str, list[str]]]] = {}
    # the longest matching method first: a plug-in's module:Class may itself hold dots
    grid_methods = sorted({parse_variant(m).method for m in methods}, key=len, reverse=True)
    for text in assignments or ():
        key, raw = parse_assignment(text)
        scope = next((m for m in grid_methods if key.startswith(m + ".") and len(key) > len(m) + 1), None)
        if scope is None and not strict:
            continue
        if scope is None:
            raise UsageError(f"bad --set {text!r} in a sweep: expected METHOD.KEY=V1,V2 with METHOD one of the "
                             f"grid's methods ({', '.join(sorted(grid_methods))}), e.g. lion.lr=3e-4,7e-4")
        axes.setdefault(scope, []).append((key[len(scope) + 1:], raw.split(",")))
    out = []
    for method in methods:
        base = parse_variant(method).method
        if base not in axes:
            out.append(method)
            continue
        keys = [k for k, _ in axes[base]]
        for values in itertools.product(*(v for _, v in axes[base])):
            out.append(with_settings(method, [f"{k}={v}" for k, v in zip(keys, values, strict=True)]))
    return list(dict.fromkeys(out))


def base_method(name: str) -> str:
    """The method a variant name runs: `sophia+free_hessian` -> `sophia`."""
    return str(name).split("+", 1)[0]


def describe(name: str) -> str:
    """The settings of a variant in words, for labels: 'free scoring', 'lr=0.0003', 'on RHO-LOSS's 80%' ('' for a
    plain method)."""
    from ntng.data.splits import SPLIT_LABELS  # here: the data wing (numpy) loads with a label, not on import

    def words(key, value) -> str:
        if value is True and key in RUN_FLAGS:
            return key.replace("_", " ")
        if key == DATA_SPLIT and value in SPLIT_LABELS:  # 'on RHO-LOSS's 80%', not 'data_split=rho_main'
            return f"on {SPLIT_LABELS[value]}"
        return f"{key}={format_value(value)}"

    return ", ".join(words(k, v) for k, v in parse_variant(name).settings)
