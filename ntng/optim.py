"""Optimizers: the baselines' AdamW (BERT) and AdamWScale (T5), and the parameter grouping they share.

AdamWScale is the T5 recipe's Adam variant (from nanoT5): the Adam step is scaled by the parameter's own RMS,
max(1e-3, RMS(p)), so that a single large learning rate (2e-2) suits every tensor, as in Adafactor's relative step.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices and embeddings decay; biases and LayerNorm weights do not (the BERT recipe)."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            is_norm = "norm" in type(module).__name__.lower() or "layernorm" in module_name.lower()
            (no_decay if name == "bias" or is_norm else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _rms(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.norm(2) / math.sqrt(tensor.numel())


class AdamWScale(torch.optim.Optimizer):
    """Adam with bias correction whose step is multiplied by max(1e-3, RMS(p)); decoupled weight decay.

    Per parameter p with gradient g, at step t:
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        step = lr * sqrt(1 - b2^t) / (1 - b1^t) * max(1e-3, RMS(p))
        p <- p - step * m / (sqrt(v) + eps);   p <- p - lr * wd * p
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0):
        if lr <= 0 or eps <= 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"bad AdamWScale settings lr={lr} betas={betas} eps={eps} weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                t = state["step"]
                step_size = group["lr"] * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
                step_size = step_size * max(1e-3, _rms(p).item())
                p.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(group["eps"]), value=-step_size)
                if group["weight_decay"] > 0.0:
                    p.add_(p, alpha=-group["lr"] * group["weight_decay"])
        return loss


def build_optimizer(name: str, model: nn.Module, lr: float, betas, eps: float, weight_decay: float):
    """The baselines' optimizers by name ('adamw' for BERT, 'adamw_scale' for T5)."""
    groups = decay_groups(model, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    if name == "adamw_scale":
        return AdamWScale(groups, lr=lr, betas=tuple(betas), eps=eps)
    raise ValueError(f"unknown optimizer {name!r}")
