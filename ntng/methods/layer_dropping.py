"""Progressive layer dropping: skip blocks at random, deeper blocks more often, more so as training goes on.

Method card
-----------
**What.** The keep probability decays from 1 towards theta_bar = 0.5 over the budget,
theta(t) = theta_bar + (1 - theta_bar) exp(-gamma t) with gamma = gamma_factor / T (t, T in RST seconds); block i
of L (1-based) is skipped with probability (1 - theta) i / L, so the last block is the one skipped most. BERT draws
a new set of blocks for every micro-batch; T5 draws one set per optimizer step and skips the same blocks in its
encoder and decoder. If every block would be skipped, all run. All blocks run at evaluation; outputs are not
rescaled. Each micro-batch is charged at the depth it ran, so skipped blocks buy more steps; a block idle for a
whole step is left out of that optimizer update.
**Where from.** Zhang & He 2020 (progressive layer dropping), as re-implemented in Kaddour et al. 2023.
**Hyper-parameters.** theta_bar 0.5; gamma_factor 100 (BERT), 20 (T5); T5 trains at its own peak lr 1e-2, not the
baseline's 2e-2 (Appendix C.2: more stable); BERT at the baseline's 1e-3.
**Survey category** (Blalock et al.): component = model (function); action = remove (skip blocks).
"""

from __future__ import annotations

import math

import torch

from ntng.errors import UsageError
from ntng.presets import Preset, paper_peak_ratio
from ntng.training.optim import build_optimizer

from .base import Claim, Method, Run, around

THETA_BAR = 0.5
GAMMA_FACTOR = {"bert": 100.0, "t5": 20.0}
# C.2: T5 runs layer dropping at a peak of its own, 1e-2 against the baseline's 2e-2 (more stable), moving with a
# preset's baseline peak (ntng.presets.paper_peak_ratio); BERT at the baseline's peak (None)
PAPER_LR = {"bert": None, "t5": 1e-2}
LAST_FIFTH = 0.8  # method_stats reports the mean depth over the budget's last fifth as well


def keep_probability(rst_s: float, budget_s: float, gamma_factor: float, theta_bar: float = THETA_BAR) -> float:
    """theta(t) = theta_bar + (1 - theta_bar) exp(-gamma t), gamma = gamma_factor / T."""
    assert budget_s > 0 and rst_s >= 0, (rst_s, budget_s)
    return theta_bar + (1.0 - theta_bar) * math.exp(-gamma_factor / budget_s * rst_s)


def drop_probabilities(theta: float, num_layers: int) -> torch.Tensor:
    """P(skip block i) = (1 - theta) i / L for i = 1..L."""
    assert 0.0 <= theta <= 1.0, theta
    return (1.0 - theta) * torch.arange(1, num_layers + 1, dtype=torch.float64) / num_layers


def sample_active_layers(theta: float, num_layers: int, generator: torch.Generator) -> list[int]:
    """The 0-based indices of the blocks that run; all of them if every block was drawn to be skipped."""
    uniform = torch.rand(num_layers, generator=generator, dtype=torch.float64)
    active = [i for i, skip in enumerate((uniform < drop_probabilities(theta, num_layers)).tolist()) if not skip]
    return active or list(range(num_layers))


def expected_depth(theta: float, num_layers: int) -> float:
    """E[blocks run] under `sample_active_layers`: sum of keep probabilities, plus L x P(all skipped)."""
    drop = drop_probabilities(theta, num_layers)
    return float((1.0 - drop).sum() + num_layers * torch.prod(drop))


class LayerDropping(Method):
    name = "layer_dropping"
    label = "layer dropping"
    family = "dynamic"
    component = "model"
    action = "remove"
    summary = "skip blocks at random, deeper ones more often"
    claims = (
        Claim("Layer dropping is worse than the baseline throughout training",
              "Kaddour et al. 2023, Section 4.3, Figure 1",
              "worse"),
    )
    card = __doc__.split("Method card\n-----------\n", 1)[1]

    def __init__(self, model: str, preset: Preset, theta_bar: float = THETA_BAR, gamma_factor: float | None = None,
                 lr: float | None = None):
        super().__init__(model, preset)
        own_lr = PAPER_LR[model]
        self.lr = float(lr if lr is not None else own_lr * paper_peak_ratio(self.recipe, model) if own_lr is not None
                        else self.recipe.lr)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UsageError(f"layer_dropping: lr must be a positive number, got {lr}")
        self.num_layers = preset.shape(model).num_layers
        self.theta_bar = float(theta_bar)
        self.gamma_factor = float(GAMMA_FACTOR[model] if gamma_factor is None else gamma_factor)
        if not 0.0 < self.theta_bar <= 1.0:
            raise UsageError(f"layer_dropping: theta_bar must be in (0, 1], got {theta_bar}")
        if not self.gamma_factor > 0.0:
            raise UsageError(f"layer_dropping: gamma_factor must be positive, got {gamma_factor}")
        self.per_step = model == "t5"  # T5: one draw per optimizer step, shared by encoder and decoder
        self.generator = torch.Generator()
        self.step_layers: list[int] | None = None
        self.used_in_step: set[int] = set()
        self.runs = [0] * self.num_layers  # micro-batches each block ran in
        self.draws = 0
        self.late_depth_sum = 0
        self.late_draws = 0

    def tuning(self) -> dict[str, list]:
        grid = {"gamma_factor": around(self.gamma_factor)}  # C.2: how fast the keep probability falls
        if self.model_name == "t5":  # C.2: T5 runs layer dropping at a learning rate of its own
            grid["lr"] = around(self.lr)
        return grid

    def settings(self) -> dict:
        return {"theta_bar": self.theta_bar, "gamma_factor": self.gamma_factor, "lr": self.lr,
                "resample": "every optimizer step" if self.per_step else "every micro-batch"}

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        r = self.recipe
        return build_optimizer(r.optimizer, model, self.lr, r.betas, r.eps, r.weight_decay)

    def bind(self, run: Run) -> None:
        self.generator.manual_seed(run.batches.seed * 1_000_003 + 7)  # its own stream: data order stays put

    def _theta(self, run: Run) -> float:
        return keep_probability(run.clock.rst_seconds, run.clock.budget_s, self.gamma_factor, self.theta_bar)

    def begin_step(self, run: Run) -> None:
        self.used_in_step = set()
        if self.per_step:
            self.step_layers = sample_active_layers(self._theta(run), self.num_layers, self.generator)

    def active_layers(self, run: Run) -> list[int]:
        layers = self.step_layers if self.per_step else sample_active_layers(self._theta(run), self.num_layers,
                                                                              self.generator)
        self.used_in_step.update(layers)
        for index in layers:
            self.runs[index] += 1
        self.draws += 1
        if run.clock.budget_fraction >= LAST_FIFTH:
            self.late_depth_sum += len(layers)
            self.late_draws += 1
        return layers

    def before_update(self, run: Run) -> None:
        """Blocks that ran in no micro-batch of this step get no update (no momentum, no weight decay)."""
        blocks = run.model.blocks()
        stacks = blocks if isinstance(blocks, tuple) else (blocks,)
        for index in set(range(self.num_layers)) - self.used_in_step:
            for stack in stacks:
                for name, param in stack[index].named_parameters():
                    if "relative_attention_bias" not in name:  # T5's position table serves every block
                        param.grad = None

    def stats(self) -> dict:
        return {"theta_end": keep_probability(1.0, 1.0, self.gamma_factor, self.theta_bar),
                "expected_depth_end": expected_depth(keep_probability(1.0, 1.0, self.gamma_factor, self.theta_bar),
                                                     self.num_layers),
                "mean_depth_last_fifth": self.late_depth_sum / self.late_draws if self.late_draws else None,
                "block_run_fraction": [r / self.draws if self.draws else None for r in self.runs]}

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "runs": list(self.runs), "draws": self.draws,
                "late": [self.late_depth_sum, self.late_draws]}

    def load_state(self, state: dict, run: Run) -> None:
        self.generator.set_state(state["generator"])
        self.runs, self.draws = list(state["runs"]), state["draws"]
        self.late_depth_sum, self.late_draws = state["late"]
