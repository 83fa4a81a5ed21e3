"""Optimizers: the baselines' AdamW (BERT) and AdamWScale (T5), the efficient optimizers Lion and Sophia-G, and the
parameter grouping they share.

AdamWScale is the T5 recipe's Adam variant (from nanoT5): the Adam step is scaled by the parameter's own RMS,
max(1e-3, RMS(p)), so that a single large learning rate (2e-2) suits every tensor, as in Adafactor's relative step.
The paper's T5 code scales Lion's and Sophia's steps the same way (`rms_scale=True`); its BERT code does not.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices and embeddings decay; biases, LayerNorm weights and other 1-d gains (the crammed BERT's
    position scale) do not (the BERT recipe)."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            is_norm = "norm" in type(module).__name__.lower() or "layernorm" in module_name.lower()
            (no_decay if name == "bias" or is_norm or param.ndim < 2 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _rms(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.norm(2) / math.sqrt(tensor.numel())


def _rms_scales(params: list) -> list:
    """max(1e-3, RMS(p)) for every tensor at once, kept on the device (no host sync per tensor)."""
    scales = list(torch._foreach_norm(params))
    torch._foreach_div_(scales, [math.sqrt(p.numel()) for p in params])
    torch._foreach_clamp_min_(scales, 1e-3)
    return scales


def _on_cuda(optimizer: torch.optim.Optimizer) -> bool:
    return any(p.is_cuda for group in optimizer.param_groups for p in group["params"])


class _PerParameterOptimizer(torch.optim.Optimizer):
    """What AdamWScale and Lion share: the closure, the walk over groups, skipping parameters with no gradient
    (a block that sat out the step), and two implementations of one rule: tensor by tensor (`_update(p, grad,
    state, group)`, the CPU default) or every tensor of a group at once (`_step_group(group, params)` with
    torch._foreach_*, the CUDA default: a few kernels, no host sync per tensor). `foreach` forces one."""

    foreach: bool | None = None

    def _uses_foreach(self) -> bool:
        return self.foreach if self.foreach is not None else _on_cuda(self)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        foreach = self._uses_foreach()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]  # a block that sat out: untouched
            if foreach and params:
                self._step_group(group, params)
            elif not foreach:
                for p in params:
                    self._update(p, p.grad, self.state[p], group)
        return loss


class AdamWScale(_PerParameterOptimizer):
    """Adam with bias correction whose step is multiplied by max(1e-3, RMS(p)); decoupled weight decay.

    Per parameter p with gradient g, at step t:
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        step = lr * sqrt(1 - b2^t) / (1 - b1^t) * max(1e-3, RMS(p))
        p <- p - step * m / (sqrt(v) + eps);   p <- p - lr * wd * p

    Two implementations of the same rule: tensor by tensor (CPU default: each tensor's ops run while it is in
    cache; measured 2.4x faster than `foreach` on the mini T5 on one core) and `foreach` (CUDA default: a few
    kernels per group, and RMS(p) stays on the device instead of ~200 host syncs a step).
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0,
                 foreach: bool | None = None):
        if lr <= 0 or eps <= 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"bad AdamWScale settings lr={lr} betas={betas} eps={eps} weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.foreach = foreach

    def _init_state(self, p, state) -> None:
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1

    def _update(self, p, grad, state, group) -> None:
        beta1, beta2 = group["betas"]
        self._init_state(p, state)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        t = state["step"]
        step_size = group["lr"] * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
        step_size = step_size * max(1e-3, _rms(p).item())
        p.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size)
        if group["weight_decay"] > 0.0:
            p.add_(p, alpha=-group["lr"] * group["weight_decay"])

    def _step_group(self, group: dict, params: list) -> None:
        """`_update` for every tensor of a group at once (torch._foreach_*)."""
        beta1, beta2 = group["betas"]
        states = [self.state[p] for p in params]
        for p, state in zip(params, states, strict=True):
            self._init_state(p, state)
        grads = [p.grad for p in params]
        exp_avgs = [state["exp_avg"] for state in states]
        exp_avg_sqs = [state["exp_avg_sq"] for state in states]
        scales = _rms_scales(params)  # of the parameters before this step
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)  # m <- b1 m + (1 - b1) g
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
        # p <- p - m / [(sqrt(v) + eps) / (step size x scale)]: the step size folded into the one temporary
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(denominators, group["eps"])
        torch._foreach_div_(denominators, scales)
        # step counts differ between tensors when blocks sit steps out (layer dropping): per-tensor corrections
        torch._foreach_div_(denominators, [group["lr"] * math.sqrt(1.0 - beta2 ** state["step"])
                                           / (1.0 - beta1 ** state["step"]) for state in states])
        torch._foreach_addcdiv_(params, exp_avgs, denominators, value=-1.0)
        if group["weight_decay"] > 0.0:
            torch._foreach_mul_(params, 1.0 - group["lr"] * group["weight_decay"])


def _relative_scale(p: torch.Tensor) -> float:
    """Adafactor's relative step: max(1e-3, RMS(p)), the factor AdamWScale applies to its step."""
    return max(1e-3, _rms(p).item())


def _check_betas(name: str, betas) -> tuple[float, float]:
    betas = tuple(float(b) for b in betas)
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"bad {name} betas {betas}: expected two numbers in [0, 1)")
    return betas


class Lion(_PerParameterOptimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the sign of an interpolated momentum.

    Per parameter p with gradient g and momentum m (zero at first), with decoupled weight decay:
        p <- p (1 - lr wd)
        p <- p - lr sign(b1 m + (1 - b1) g)
        m <- b2 m + (1 - b2) g
    With `rms_scale`, lr is multiplied by max(1e-3, RMS(p)) (RMS before the step), as in the paper's T5 code.
    Parameters whose `.grad` is None are skipped, state and all. Tensor by tensor on CPU, `foreach` (a few kernels
    per group, RMS(p) kept on the device) on CUDA, unless `foreach` says otherwise.
    """

    def __init__(self, params, lr: float, betas=(0.9, 0.99), weight_decay: float = 0.0, *, rms_scale: bool = False,
                 foreach: bool | None = None):
        if not lr > 0 or not weight_decay >= 0:
            raise ValueError(f"bad Lion settings lr={lr} weight_decay={weight_decay}: lr > 0 and weight_decay >= 0")
        defaults = {"lr": lr, "betas": _check_betas("Lion", betas), "weight_decay": weight_decay,
                    "rms_scale": bool(rms_scale)}
        super().__init__(params, defaults)
        self.foreach = foreach

    def _step_group(self, group: dict, params: list) -> None:
        """`_update` for every tensor of a group at once (torch._foreach_*)."""
        beta1, beta2 = group["betas"]
        grads = [p.grad for p in params]
        momenta = []
        for p in params:
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p)
            momenta.append(state["exp_avg"])
        lr, wd = group["lr"], group["weight_decay"]
        scales = _rms_scales(params) if group.get("rms_scale") else None  # before the decay, as `_update`
        if wd != 0.0:
            if scales is None:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            else:  # p (1 - lr s wd), s on the device
                torch._foreach_mul_(params, torch._foreach_add(torch._foreach_mul(scales, -lr * wd), 1.0))
        directions = torch._foreach_lerp(momenta, grads, 1.0 - beta1)  # b1 m + (1 - b1) g
        torch._foreach_sign_(directions)
        if scales is not None:
            torch._foreach_mul_(directions, scales)
        torch._foreach_add_(params, directions, alpha=-lr)
        torch._foreach_lerp_(momenta, grads, 1.0 - beta2)  # m <- b2 m + (1 - b2) g

    def _update(self, p, grad, state, group) -> None:
        beta1, beta2 = group["betas"]
        if not state:
            state["exp_avg"] = torch.zeros_like(p)
        momentum = state["exp_avg"]
        lr = group["lr"] * (_relative_scale(p) if group.get("rms_scale") else 1.0)
        if group["weight_decay"] != 0.0:
            p.mul_(1.0 - lr * group["weight_decay"])
        direction = torch.mul(momentum, beta1).add_(grad, alpha=1.0 - beta1).sign_()
        p.add_(direction, alpha=-lr)
        momentum.mul_(beta2).add_(grad, alpha=1.0 - beta2)


class SophiaG(torch.optim.Optimizer):
    """Sophia-G (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
    Pre-training") with the Gauss-Newton-Bartlett diagonal Hessian estimate, as in the official `SophiaG`.

    `update_hessian()` folds the current `.grad` (a gradient of the loss on labels sampled from the model itself)
    into the estimate:  h <- b2 h + (1 - b2) g * g.
    `step(bs=...)`, with the training gradient g, the momentum m and tokens per batch bs:
        p <- p (1 - lr wd)
        m <- b1 m + (1 - b1) g
        p <- p - lr sign(m) min(|m| / (rho bs h + 1e-15), 1)
    Until the first Hessian update h is 0 and every coordinate takes the clipped (sign) step, as in the official
    code. `bs` defaults to the value given at construction (the official BERT fork's convention; the official
    `step` takes it per call). With `rms_scale` the update (not the decay) is multiplied by max(1e-3, RMS(p)) after
    the decay, as in the paper's T5 code. `last_clip_fraction` is the fraction of coordinates whose ratio
    |m| / (rho bs h + 1e-15) exceeded 1 in the last step (None before the first step). Tensor by tensor on CPU,
    `foreach` on CUDA (one host sync a step, for the clip fraction), unless `foreach` says otherwise.
    """

    def __init__(self, params, lr: float, betas=(0.965, 0.99), rho: float = 0.04, weight_decay: float = 0.0, *,
                 bs: int = 5120, rms_scale: bool = False, foreach: bool | None = None):
        if not lr > 0 or not rho >= 0 or not weight_decay >= 0 or not bs > 0:
            raise ValueError(f"bad SophiaG settings lr={lr} rho={rho} weight_decay={weight_decay} bs={bs}: "
                             f"lr > 0, rho >= 0, weight_decay >= 0 and bs > 0")
        defaults = {"lr": lr, "betas": _check_betas("SophiaG", betas), "rho": rho, "weight_decay": weight_decay,
                    "rms_scale": bool(rms_scale)}
        super().__init__(params, defaults)
        self.bs = bs
        self.foreach = foreach
        self.last_clip_fraction: float | None = None

    def _uses_foreach(self) -> bool:
        return self.foreach if self.foreach is not None else _on_cuda(self)

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["hessian"] = torch.zeros_like(p)
        return state

    @torch.no_grad()
    def update_hessian(self) -> None:
        for group in self.param_groups:
            beta2 = group["betas"][1]
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._state(p)["hessian"].mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)

    @torch.no_grad()
    def step(self, closure=None, bs: int | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        bs = self.bs if bs is None else bs
        if self._uses_foreach():
            self._step_foreach(bs)
            return loss
        clipped, total = None, 0
        for group in self.param_groups:
            beta1 = group["betas"][0]
            lr, scale = group["lr"], group["rho"] * bs
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                state["step"] += 1
                momentum = state["exp_avg"]
                p.mul_(1.0 - lr * group["weight_decay"])
                momentum.mul_(beta1).add_(p.grad, alpha=1.0 - beta1)
                ratio = momentum.abs().div_(scale * state["hessian"] + 1e-15)
                over = (ratio > 1.0).sum()
                clipped = over if clipped is None else clipped + over
                total += ratio.numel()
                ratio.clamp_(max=1.0)
                size = lr * (_relative_scale(p) if group.get("rms_scale") else 1.0)
                p.addcmul_(momentum.sign(), ratio, value=-size)
        if total:
            self.last_clip_fraction = clipped.item() / total
        return loss


    def _step_foreach(self, bs: int) -> None:
        """`step` for every tensor of a group at once (torch._foreach_*)."""
        clipped, total = [], 0
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._state(p) for p in params]
            for state in states:
                state["step"] += 1
            momenta, hessians = [s["exp_avg"] for s in states], [s["hessian"] for s in states]
            beta1, lr = group["betas"][0], group["lr"]
            torch._foreach_mul_(params, 1.0 - lr * group["weight_decay"])
            torch._foreach_lerp_(momenta, [p.grad for p in params], 1.0 - beta1)  # m <- b1 m + (1 - b1) g
            denominators = torch._foreach_mul(hessians, group["rho"] * bs)
            torch._foreach_add_(denominators, 1e-15)
            ratios = torch._foreach_abs(momenta)
            torch._foreach_div_(ratios, denominators)
            clipped += [(ratio > 1.0).sum() for ratio in ratios]
            total += sum(ratio.numel() for ratio in ratios)
            torch._foreach_clamp_max_(ratios, 1.0)
            torch._foreach_mul_(ratios, torch._foreach_sign(momenta))
            if group.get("rms_scale"):
                torch._foreach_mul_(ratios, _rms_scales(params))  # RMS after the decay, as the per-tensor path
            torch._foreach_add_(params, ratios, alpha=-lr)
        if total:
            self.last_clip_fraction = torch.stack(clipped).sum().item() / total


def build_optimizer(name: str, model: nn.Module, lr: float, betas, eps: float, weight_decay: float):
    """The baselines' optimizers by name ('adamw' for BERT, 'adamw_scale' for T5)."""
    return optimizer_for_groups(name, decay_groups(model, weight_decay), lr, betas, eps)


def optimizer_for_groups(name: str, groups: list[dict], lr: float, betas, eps: float):
    """A baseline optimizer by name over parameter groups that carry their own weight decay (`decay_groups`)."""
    if name == "adamw":
        # fused: one kernel over every tensor (CPU and CUDA); torch's CPU default loops per tensor, 2.7x slower here
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=True)
    if name == "adamw_scale":
        return AdamWScale(groups, lr=lr, betas=tuple(betas), eps=eps)
    raise ValueError(f"unknown optimizer {name!r}")
