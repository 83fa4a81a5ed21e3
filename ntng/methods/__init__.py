"""Efficient-training methods as plug-ins to the one training loop (`ntng.train`).

Each method is a module with a pure, verb-named functional core and a thin `Method` subclass around it; the loop
calls the hooks of `ntng.methods.base.Method` and nothing else. A method that is not implemented yet is refused
with a clear error, never silently replaced by the baseline.
"""

from __future__ import annotations

from ..errors import UsageError
from ..presets import METHODS
from .base import Method, Run
from .baseline import Baseline
from .layer_dropping import LayerDropping
from .layer_stacking import LayerStacking
from .lion import Lion
from .rho_loss import RhoLoss
from .selective_backprop import SelectiveBackprop
from .sophia import Sophia

REGISTRY: dict[str, type[Method]] = {"baseline": Baseline, "layer_stacking": LayerStacking,
                                     "layer_dropping": LayerDropping, "selective_backprop": SelectiveBackprop,
                                     "rho_loss": RhoLoss, "lion": Lion, "sophia": Sophia}

# methods of the study whose module has not landed yet, and the issue that brings each (none left)
PENDING: dict[str, str] = {}
assert set(REGISTRY) | set(PENDING) == set(METHODS) and not set(REGISTRY) & set(PENDING)


def build_method(name: str, model: str, preset, **options) -> Method:
    """The method's hook object, its settings validated now (not when its schedule first fires)."""
    if name in PENDING:
        raise UsageError(f"method {name!r} is not implemented yet: it arrives with {PENDING[name]}")
    if name not in REGISTRY:
        raise UsageError(f"unknown method {name!r} (choose from {', '.join(METHODS)})")
    return REGISTRY[name](model=model, preset=preset, **options)


__all__ = ["Method", "Run", "build_method", "REGISTRY", "PENDING"]
