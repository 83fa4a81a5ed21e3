"""Schedule-Free AdamW (Defazio et al. 2024, "The Road Less Scheduled"): AdamW's momentum replaced by interpolation
and averaging, and no decay schedule.

Three sequences per parameter: z (the base AdamW-like steps, no first moment), x (their running weighted average:
the weights the model is evaluated and saved at) and y = (1 - beta1) z + beta1 x (the weights the gradient is taken
at: the parameters hold y while training). At step k (0-based), with the loop's learning rate lr:

    lr_max = max(lr, lr_max);  weight = (k + 1)^r lr_max^weight_lr_power;  c = weight / sum of weights (0 while 0)
    v <- beta2 v + (1 - beta2) g^2;  d = g / (sqrt(v / (1 - beta2^(k+1))) + eps) + weight_decay y
    y <- (1 - c) y + c z;  y <- y + lr (beta1 (1 - c) - 1) d;  z <- z - lr d

which updates y in place without storing x. `eval()` puts x in the parameters (x = (y - (1 - beta1) z) / beta1) and
`train()` puts y back. The loop sees them through `Method.evaluation_weights`: every evaluation and every checkpoint
is made at x, so fine-tuning starts from x. The learning rate warms up linearly over the first `warmup` of the budget
and is then constant to the end (`lr_multiplier`): averaging stands in for the decay. Weight decay spares norms and
biases (`ntng.training.optim.decay_groups`), as the baseline's does.

Not a method the paper studied (`studied_on` is empty): it joins a grid when named (`--methods schedule_free`).
"""

from __future__ import annotations

import contextlib

import torch

from ntng.errors import UsageError
from ntng.training.optim import decay_groups

from .base import Claim, Method, Run, around, take_options

# The warm-up, as a share of the budget. The Schedule-Free README recommends a warm-up but gives no length; the
# authors' AlgoPerf 2024 self-tuning entry (the claim below; schedulefree/algoperf/self_tuning/.../submission.py)
# warms up over 2% of the step budget on every workload, the WMT translation transformer included: one value for
# all problems, independent of the recipe, as this default must be.
WARMUP = 0.02
# beta1 weighs x against z in y. The README: 0.9 works on most problems, 0.95 or 0.98 may be needed for long runs.
BETA1_TRIES = (0.9, 0.95, 0.98)


class AdamWScheduleFree(torch.optim.Optimizer):
    """Schedule-Free AdamW (module docstring) with decoupled weight decay taken at y, for the loop's own schedule
    (it sets each group's `lr` every step; there is no warm-up inside). Each group keeps its step count `k`,
    `lr_max`, `weight_sum` and `train_mode` (so `state_dict` holds them). Parameters with no gradient are skipped;
    z and v are made at a parameter's first step. `eval()` / `train()` switch the parameters between x and y;
    `step()` switches to y itself if it finds them at x. Tensor by tensor on CPU, torch._foreach_* on CUDA, unless
    `foreach` says otherwise."""

    foreach: bool | None = None  # a class default too: torch's pickling of an optimizer keeps only its groups and state

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 r: float = 0.0, weight_lr_power: float = 2.0, foreach: bool | None = None):
        betas = tuple(float(b) for b in betas)
        if not (lr >= 0 and eps > 0 and weight_decay >= 0 and r >= 0 and weight_lr_power >= 0 and len(betas) == 2
                and 0.0 < betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"bad Schedule-Free AdamW settings lr={lr} betas={betas} eps={eps} "
                             f"weight_decay={weight_decay} r={r} weight_lr_power={weight_lr_power}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "r": r,
                                  "weight_lr_power": weight_lr_power, "k": 0, "lr_max": 0.0, "weight_sum": 0.0,
                                  "train_mode": True})
        self.foreach = foreach

    def _uses_foreach(self) -> bool:
        if self.foreach is not None:
            return self.foreach
        return any(p.is_cuda for group in self.param_groups for p in group["params"])

    @torch.no_grad()
    def _move(self, to_train: bool) -> None:
        """Each group not yet in the mode: its parameters from y to x (eval) or from x to y (train)."""
        for group in self.param_groups:
            if group["train_mode"] == to_train:
                continue
            beta1 = group["betas"][0]
            # y = x + (1 - b1)(z - x);  x = y + (1 - 1/b1)(z - y)
            weight = 1.0 - beta1 if to_train else 1.0 - 1.0 / beta1
            for p in group["params"]:
                z = self.state[p].get("z")
                if z is not None:
                    p.lerp_(z, weight)
            group["train_mode"] = to_train

    def eval(self) -> None:
        """The parameters to x, the averaged weights (evaluation, checkpoints)."""
        self._move(to_train=False)

    def train(self) -> None:
        """The parameters to y, where the gradients are taken."""
        self._move(to_train=True)

    @torch.no_grad()
    def step(self, closure=None):
        if not all(group["train_mode"] for group in self.param_groups):
            self.train()  # e.g. a run resumed from a checkpoint written at x
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        foreach = self._uses_foreach()
        for group in self.param_groups:
            k, lr = group["k"], group["lr"]
            beta1, beta2 = group["betas"]
            lr_max = group["lr_max"] = max(lr, group["lr_max"])
            weight = (k + 1) ** group["r"] * lr_max ** group["weight_lr_power"]
            weight_sum = group["weight_sum"] = group["weight_sum"] + weight
            c = weight / weight_sum if weight_sum > 0 else 0.0
            correction = 1.0 - beta2 ** (k + 1)
            # y <- lerp(y, z, c) + lr (b1 (1 - c) - 1) d;  z <- z - lr d
            y_step, z_step = lr * (beta1 * (1.0 - c) - 1.0), -lr
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                state = self.state[p]
                if "z" not in state:
                    state["z"] = p.detach().clone(memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if params and foreach:
                self._step_foreach(group, params, c, correction, y_step, z_step)
            else:
                for p in params:
                    state = self.state[p]
                    z, v, grad = state["z"], state["exp_avg_sq"], p.grad
                    v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                    d = grad.div(v.div(correction).sqrt_().add_(group["eps"]))  # the gradient itself is left as it is
                    if group["weight_decay"] != 0.0:
                        d.add_(p, alpha=group["weight_decay"])
                    p.lerp_(z, c)
                    p.add_(d, alpha=y_step)
                    z.add_(d, alpha=z_step)
            group["k"] = k + 1
        return loss

    def _step_foreach(self, group: dict, params: list, c: float, correction: float, y_step: float,
                      z_step: float) -> None:
        """The per-tensor update of `step` for every tensor of a group at once (torch._foreach_*)."""
        beta2 = group["betas"][1]
        states = [self.state[p] for p in params]
        grads = [p.grad for p in params]
        zs, vs = [s["z"] for s in states], [s["exp_avg_sq"] for s in states]
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, grads, grads, value=1.0 - beta2)
        denominators = torch._foreach_div(vs, correction)
        torch._foreach_sqrt_(denominators)
        torch._foreach_add_(denominators, group["eps"])
        directions = torch._foreach_div(grads, denominators)
        if group["weight_decay"] != 0.0:
            torch._foreach_add_(directions, params, alpha=group["weight_decay"])
        torch._foreach_lerp_(params, zs, c)
        torch._foreach_add_(params, directions, alpha=y_step)
        torch._foreach_add_(zs, directions, alpha=z_step)


def warmup_constant(fraction: float, warmup: float) -> float:
    """The peak's multiplier at `fraction` of the budget: fraction / warmup during the warm-up, then 1 to the end."""
    f = min(max(fraction, 0.0), 1.0)
    return f / warmup if f < warmup else 1.0


class ScheduleFreeAdamW(Method):
    name = "schedule_free"
    label = "Schedule-Free AdamW"
    family = "newer_optimizers"
    component = "optimization"
    action = "replace"
    summary = "interpolation and averaging instead of momentum and a decay schedule"
    studied_on = ()  # not in the paper's study: run when named
    claims = (
        Claim("matches or beats a tuned decay schedule of the same budget, with no schedule",
              "Defazio et al. 2024 (arXiv 2405.15682), Sections 1 and 4; Kasimbeg et al. 2025 (AlgoPerf)",
              "not_worse"),
        Claim("needs no stopping time: three quarters of the way through a run it matches a run of three quarters of "
              "the budget with a decay schedule", "Defazio et al. 2024, Section 1", "not_worse", at_fraction=0.75),
        Claim("needs no stopping time: half-way through a run it matches a run of half the budget with a decay "
              "schedule", "Defazio et al. 2024, Section 1", "not_worse", at_fraction=0.5),
        Claim("needs no stopping time: a quarter of the way through a run it matches a run of a quarter of the budget "
              "with a decay schedule", "Defazio et al. 2024, Section 1", "not_worse", at_fraction=0.25),
    )
    card = (
        "**Schedule-Free AdamW** (Defazio et al. 2024, *The Road Less Scheduled*). AdamW's momentum is replaced "
        "by interpolation and averaging: the gradient is taken at y = (1 - beta1) z + beta1 x, where z takes "
        "Adam-normalised steps (no first moment; weight decay at y, not on norms and biases) and x is their running "
        "average weighted by the squared peak learning rate so far; the model is evaluated and saved at x, so "
        "fine-tuning starts from x. The learning rate warms up linearly over the first 2% of the budget (the "
        "authors' AlgoPerf setting) and then stays at its peak to the end: no decay. Defaults: beta1 0.9, the "
        "baseline's beta2, eps, weight decay, clipping and batch; BERT at the baseline's peak; T5 (whose baseline "
        "scales Adam's step by the parameter RMS, at a peak plain Adam cannot take) at BERT's AdamW peak for the "
        "preset. The step priced at the table's AdamW step times a measured ratio the package ships. Claims: no schedule and "
        "no stopping time to fix in advance, matching or beating tuned cosine and linear-decay schedules; the "
        "winning entry of the AlgoPerf 2024 self-tuning track (Kasimbeg et al. 2025). Survey category: component "
        "*optimization* x action *replace*."
    )

    def __init__(self, model: str, preset, **options):
        super().__init__(model, preset)
        r = self.recipe
        # T5's baseline is AdamWScale, whose peak (4e-2 at `cpu`) is for steps scaled by max(1e-3, RMS(p)); plain
        # Adam steps at that peak diverge. Schedule-Free is written for plain AdamW, so T5 starts from the preset's
        # BERT AdamW peak (the preset's plain-AdamW peak, for models of the same size), which tuning then moves by
        # factors of two; the RMS scaling is not carried over (it would also make the averaging weights per tensor).
        lr = r.lr if r.optimizer == "adamw" else preset.recipe("bert").lr
        self.options = take_options(self.name, options, {
            "lr": lr, "beta1": 0.9, "beta2": r.betas[1], "eps": r.eps, "weight_decay": r.weight_decay,
            "warmup": WARMUP, "r": 0.0, "weight_lr_power": 2.0})
        o = self.options
        if not (o["lr"] > 0 and 0.0 < o["beta1"] < 1.0 and 0.0 <= o["beta2"] < 1.0 and o["eps"] > 0
                and o["weight_decay"] >= 0 and 0.0 <= o["warmup"] < 1.0 and o["r"] >= 0 and o["weight_lr_power"] >= 0):
            given = " ".join(f"{k}={v}" for k, v in o.items())
            raise UsageError(f"method schedule_free: lr > 0, beta1 in (0, 1), beta2 in [0, 1), eps > 0, weight_decay "
                             f">= 0, warmup in [0, 1), r >= 0 and weight_lr_power >= 0, got {given}")
        self.lr_from = "recipe" if r.optimizer == "adamw" else "bert_recipe"

    @property
    def rst_optimizer(self) -> str:
        return "schedule_free"

    def tuning(self) -> dict[str, list]:
        # the learning rate, and beta1 over the values its authors recommend (README: 0.9 on most problems, 0.95 or
        # 0.98 for long runs); the warm-up stays at the authors' 2%
        beta1 = self.options["beta1"]
        return {"lr": around(self.options["lr"]), "beta1": [beta1, *(b for b in BETA1_TRIES if b != beta1)]}

    def settings(self) -> dict:
        return {"optimizer": "schedule_free_adamw", **self.options, "lr_from": self.lr_from,
                "schedule": "warmup_constant", "weight_decay_at": "y", "evaluated_at": "x"}

    def lr_multiplier(self, budget_fraction: float) -> float:
        return warmup_constant(budget_fraction, self.options["warmup"])

    def build_optimizer(self, model: torch.nn.Module) -> AdamWScheduleFree:
        o = self.options
        return AdamWScheduleFree(decay_groups(model, o["weight_decay"]), lr=o["lr"], betas=(o["beta1"], o["beta2"]),
                                 eps=o["eps"], weight_decay=o["weight_decay"], r=o["r"],
                                 weight_lr_power=o["weight_lr_power"])

    @contextlib.contextmanager
    def evaluation_weights(self, run: Run):
        run.optimizer.eval()
        try:
            yield
        finally:
            run.optimizer.train()
