"""Layer stacking: train a shallow model, then grow it by copying its blocks.

Method card
-----------
**What.** Start with L/4 blocks; at 12.5% of the RST budget double the stack to L/2 by copying block i-n into
block i ([A B C D] -> [A B C D A B C D]), and double again to L at 30%. New blocks start with fresh optimizer state;
the existing blocks keep theirs. Each micro-batch is charged at the depth it actually ran, so the shallow phase buys
more steps. T5 grows its encoder and decoder together (3 -> 6 -> 12 for t5-base).
**Where from.** Gong et al. 2019 (progressive stacking for BERT), as re-implemented in Kaddour et al. 2023.
**Hyper-parameters.** start depth L/4; doubling points at 12.5% and 30% of the budget (fractions of RST, t/T).
**Survey category** (Blalock et al.): component = model (function); action = restrict (train a smaller model first,
then grow it).
"""

from __future__ import annotations

import itertools

from ntng.errors import UsageError
from ntng.presets import Preset
from ntng.training.optim import decay_groups

from .base import Claim, Method, Run, around

DOUBLING_POINTS = (0.125, 0.3)  # budget fractions at which the stack doubles: L/4 -> L/2 -> L


def stacking_depth(fraction: float, num_layers: int, points: tuple[float, ...] = DOUBLING_POINTS) -> int:
    """Blocks the stack should have at budget fraction t/T: L/4, doubling at each point passed."""
    assert fraction >= 0.0, fraction
    assert num_layers % (2 ** len(points)) == 0, (num_layers, points)
    depth = num_layers // 2 ** len(points)
    for point in points:
        if fraction >= point:
            depth *= 2
    return depth


class LayerStacking(Method):
    name = "layer_stacking"
    label = "layer stacking"
    family = "dynamic"
    component = "model"
    action = "restrict"
    summary = "train a shallow stack, then grow it by copying blocks"
    claims = (
        Claim("Early in a budget layer stacking reaches the lowest loss, and the gap to the baseline closes almost completely at the largest budget",
              "Kaddour et al. 2023, Section 4.3, Figure 1",
              "gap_closes"),
    )
    card = __doc__.split("Method card\n-----------\n", 1)[1]

    def __init__(self, model: str, preset: Preset, points: tuple[float, ...] = DOUBLING_POINTS):
        super().__init__(model, preset)
        self.num_layers = preset.shape(model).num_layers
        self.points = tuple(float(p) for p in points)
        increasing = all(a < b for a, b in itertools.pairwise(self.points))
        if not self.points or not increasing or not all(0.0 < p < 1.0 for p in self.points):
            raise UsageError(f"layer_stacking: doubling points must increase within (0, 1), got {self.points}")
        if self.num_layers % (2 ** len(self.points)) != 0:
            raise UsageError(f"layer_stacking: {model} at preset {preset.name} has {self.num_layers} blocks, which "
                             f"cannot start at L/{2 ** len(self.points)} and double {len(self.points)} times")
        self.growth: list[dict] = []  # the schedule points actually taken

    def tuning(self) -> dict[str, list]:
        # C.1: when the stack grows; earlier and later points, each stays inside the budget
        return {"points": [p for p in around(list(self.points)) if all(0.0 < x < 1.0 for x in p)]}

    def settings(self) -> dict:
        return {"start_depth": self.num_layers // 2 ** len(self.points), "doubling_points": list(self.points),
                "final_depth": self.num_layers}

    def bind(self, run: Run) -> None:
        run.model.keep_first_layers(stacking_depth(0.0, self.num_layers, self.points))

    def begin_step(self, run: Run) -> None:
        target = stacking_depth(run.clock.budget_fraction, self.num_layers, self.points)
        while run.model.num_layers < target:
            self._double(run)
            self.growth.append({"step": run.step, "rst_s": run.clock.rst_seconds,
                                "budget_fraction": run.clock.budget_fraction, "depth": run.model.num_layers})

    def _double(self, run: Run) -> None:
        """Copy the blocks, and give the optimizer the copies as new parameter groups (fresh state)."""
        new = {id(p) for p in run.model.stack_layers()}
        recipe_groups = self.optimizer_groups(run.model)
        for group in recipe_groups:
            params = [p for p in group["params"] if id(p) in new]
            if params:
                peak = run.optimizer.param_groups[0].get("peak_lr", run.optimizer.param_groups[0]["lr"])
                run.optimizer.add_param_group({**group, "params": params, "lr": peak, "peak_lr": peak})

    def optimizer_groups(self, model) -> list[dict]:
        return decay_groups(model, self.recipe.weight_decay)

    def stats(self) -> dict:
        return {"doublings": self.growth, "final_depth": self.growth[-1]["depth"] if self.growth else None}

    def state_dict(self) -> dict:
        return {"growth": self.growth}

    def load_state(self, state: dict, run: Run) -> None:
        """Regrow the model and the optimizer's groups to the checkpoint's depth, so its weights fit."""
        for _ in state["growth"]:
            self._double(run)
        self.growth = list(state["growth"])
