"""Efficient-training methods as plug-ins to the one training loop (`ntng.training.loop`).

Each method is a module with a pure, verb-named functional core and a thin `Method` subclass around it; the loop
calls the hooks of `ntng.methods.base.Method` and nothing else. A method is found by name (`find_method`):

1. the built-in methods of the study (`BUILTINS`);
2. the entry-point group `ntng.methods` of any installed package (`name = "package.module:Class"`);
3. `module:Class`, imported as written (a plain string, so it travels to papermill kernels and Ray workers).

A method class names itself (`name`) and carries what the records need (label, family, survey component and action,
card, extra work): the loop writes them into config.json, so nothing else in the package has to know the method.
"""

from __future__ import annotations

import importlib
import inspect
import re
from importlib import metadata

from ntng.errors import UsageError
from ntng.presets import RECIPE_PREFIX, with_recipe
from ntng.training.rst import EXTRA_KINDS

from .base import Claim, Method, Run
from .baseline import Baseline
from .layer_dropping import LayerDropping
from .layer_stacking import LayerStacking
from .lion import Lion
from .muon import Muon
from .rho_loss import RhoLoss
from .schedule_free import ScheduleFreeAdamW
from .selective_backprop import SelectiveBackprop
from .sophia import Sophia
from .warmup_stable_decay import WarmupStableDecay

BUILTINS: dict[str, type[Method]] = {cls.name: cls for cls in (
    Baseline, LayerStacking, LayerDropping, SelectiveBackprop, RhoLoss, Lion, Sophia, Muon, WarmupStableDecay,
    ScheduleFreeAdamW)}
ENTRY_POINT_GROUP = "ntng.methods"
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_SPEC = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
# the hooks a method may override, each called with (self, run) by the loop
HOOKS = ("bind", "begin_step", "next_microbatch", "active_layers", "before_update", "end_step", "evaluation_weights")


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def method_names() -> list[str]:
    """Every method found by name: the built-ins, then the installed packages' entry points."""
    return [*BUILTINS, *(n for n in _entry_points() if n not in BUILTINS)]


def check_method_class(cls, spec: str) -> type[Method]:
    """A usable plug-in: a Method subclass that names itself and whose hooks take the loop's arguments."""
    if not (inspect.isclass(cls) and issubclass(cls, Method)):
        raise UsageError(f"method {spec!r} is not a subclass of ntng.methods.base.Method")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError(f"method {spec!r} must set its own `name` (lower case, digits, _), got {name!r}")
    if name in BUILTINS and BUILTINS[name] is not cls:
        raise UsageError(f"method {spec!r} calls itself {name!r}, the name of a built-in method")
    family = getattr(cls, "family", "")
    if not isinstance(family, str) or (family and not _NAME.fullmatch(family)):
        raise UsageError(f"method {spec!r}: family must be a name (lower case, digits, _), got {family!r}")
    extra_work = getattr(cls, "extra_work", ())
    if not (isinstance(extra_work, (tuple, list)) and set(extra_work) <= set(EXTRA_KINDS)):
        raise UsageError(f"method {spec!r}: extra_work must list kinds of extra work "
                         f"({', '.join(EXTRA_KINDS)}), got {extra_work!r}")
    for hook, arguments in (*((h, ("run",)) for h in HOOKS), ("prepare", ("spec", "log", "pretrain=")),
                            ("lr_multiplier", ("budget_fraction",))):
        if not _takes(cls, hook, arguments):
            raise UsageError(f"method {spec!r}: {hook} must be a method taking ({', '.join(arguments)})")
    return cls


def _takes(cls, hook: str, arguments: tuple[str, ...]) -> bool:
    """Whether the class's `hook` can be called on an instance with `arguments` (static methods too)."""
    attribute = inspect.getattr_static(cls, hook, None)
    function = attribute.__func__ if isinstance(attribute, (staticmethod, classmethod)) else attribute
    if not callable(function):
        return False
    bound = () if isinstance(attribute, staticmethod) else (None,)
    positional = [None for a in arguments if not a.endswith("=")]
    keywords = {a[:-1]: None for a in arguments if a.endswith("=")}
    try:
        inspect.signature(function).bind(*bound, *positional, **keywords)
    except (TypeError, ValueError):
        return False
    return True


def find_method(spec: str) -> type[Method]:
    """The method class a name or `module:Class` stands for; UsageError when none does."""
    spec = str(spec)
    if spec in BUILTINS:
        return BUILTINS[spec]
    points = _entry_points()
    if spec in points:
        try:
            cls = points[spec].load()
        except Exception as exc:  # a broken plug-in is the user's input, not our crash
            raise UsageError(f"method {spec!r} (entry point {points[spec].value}) cannot be loaded: "
                             f"{type(exc).__name__}: {exc}") from None
        return check_method_class(cls, spec)
    if _SPEC.fullmatch(spec):
        module_name, class_name = spec.split(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise UsageError(f"method {spec!r}: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
        if not hasattr(module, class_name):
            raise UsageError(f"method {spec!r}: {module_name} has no {class_name}")
        return check_method_class(getattr(module, class_name), spec)
    raise UsageError(f"unknown method {spec!r} (choose from {', '.join(method_names())}, or give module:Class)")


def build_method(name: str, model: str, preset, **options) -> Method:
    """The method's hook object, its settings validated now (not when its schedule first fires). The preset's
    values for the method (`Preset.method_options`: what tuning chose at that scale) come first, `options` over
    them."""
    cls = find_method(name)
    options = {**preset.options_for(model, cls.name), **options}
    # `recipe.FIELD` values (a peak tuned for this method, a variant's) change the training recipe it runs with: the
    # built method's `preset` holds them
    recipe = {key[len(RECIPE_PREFIX):]: options.pop(key) for key in [k for k in options if k.startswith(RECIPE_PREFIX)]}
    if recipe:
        preset = with_recipe(preset, model, recipe)
    try:
        return cls(model=model, preset=preset, **options)
    except UsageError:
        raise
    except TypeError as exc:  # an option the method does not take
        raise UsageError(f"method {cls.name}: {exc}") from None


def paper_methods() -> list[str]:
    """The built-in methods the paper studied (each one's `studied_on` names a model), in the study's order."""
    return [name for name, cls in BUILTINS.items() if cls.studied_on]


def paper_ablations() -> list[str]:
    """The paper's ablations: each studied method with the extra work it charges made free, as variants
    (`selective_backprop+free_scoring`, Section 5.4; `sophia+free_hessian`, Section 6.1)."""
    return [f"{name}+free_{kind}" for name in paper_methods() for kind in BUILTINS[name].extra_work]


def studied_methods(model: str) -> list[str]:
    """The built-in methods the paper ran on `model` (each one's `studied_on`), in the study's order: a grid's
    default (BERT all seven; T5 without batch selection)."""
    return [name for name, cls in BUILTINS.items() if model in cls.studied_on]


__all__ = ["Claim", "Method", "Run", "build_method", "find_method", "method_names", "paper_ablations", "paper_methods",
           "studied_methods", "BUILTINS", "HOOKS"]
