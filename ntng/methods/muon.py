"""Muon (Jordan et al. 2024; Liu et al. 2025, "Muon is scalable for LLM training"): orthogonalised momentum for the
blocks' weight matrices, the baseline's optimizer for everything else.

The 2-D weight matrices of the linear layers inside the transformer blocks (attention and feed-forward
projections) are updated by `torch.optim.Muon`: Nesterov momentum 0.95, the update orthogonalised by 5
Newton-Schulz steps with coefficients (3.4445, -4.7750, 2.0315), its learning rate scaled by 0.2 sqrt(max(A, B))
(`adjust_lr_fn="match_rms_adamw"`) so that its learning rate and weight decay live on AdamW's scale. Everything
else, which Muon is not meant for (and `torch.optim.Muon` refuses unless it is 2-D), stays with the baseline's own
optimizer and peak: the (tied) embedding and output matrix, T5's `lm_head` and relative position tables, the
norms. Both follow the baseline's schedule. The Muon step is priced like any optimizer step the RST table does not
list: the table's AdamW step times the measured ratio of the two (`ntng.training.pricing`). The reference tables ship
that ratio, measured on a host that runs bf16 natively: torch.optim.Muon orthogonalises in bf16, which an AVX2-only
CPU emulates (5-9x the ratio, measured 2026-12-03), so a ratio measured wherever a run starts would price Muon by the host.

Not a method the paper studied (`studied_on` is empty): it joins a grid when named (`--methods muon`).
"""

from __future__ import annotations

import torch
from torch import nn

from ntng.errors import UsageError
from ntng.training.optim import decay_groups, optimizer_for_groups

from .base import Claim, Method, around, take_options

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)  # Keller Jordan's quintic coefficients, torch.optim.Muon's defaults
NEWTON_SCHULZ_STEPS = 5


def block_matrices(model: nn.Module) -> list[nn.Parameter]:
    """The weight matrices of the linear layers inside the model's stacks of blocks (any nn.ModuleList): the
    attention and feed-forward projections. Embeddings, the output head, position tables and norms are not."""
    seen: set[int] = set()
    out = []
    for stack in model.modules():
        if not isinstance(stack, nn.ModuleList):
            continue
        for module in stack.modules():
            if isinstance(module, nn.Linear) and module.weight.requires_grad and id(module.weight) not in seen:
                seen.add(id(module.weight))
                out.append(module.weight)
    return out


class MuonWithAdamW:
    """Two optimizers stepped as one: Muon for the block matrices, the baseline's AdamW / AdamWScale for the rest.
    `param_groups` lists both optimizers' groups (the same dicts), so the loop's schedule sets every group's lr."""

    def __init__(self, muon: torch.optim.Optimizer, rest: torch.optim.Optimizer):
        self.muon, self.rest = muon, rest
        self.param_groups = [*muon.param_groups, *rest.param_groups]

    @property
    def state(self) -> dict:
        return {**self.muon.state, **self.rest.state}

    def step(self, closure=None):
        self.muon.step()
        self.rest.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.rest.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "rest": self.rest.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.muon.load_state_dict(state["muon"])
        self.rest.load_state_dict(state["rest"])


class Muon(Method):
    name = "muon"
    label = "Muon"
    family = "newer_optimizers"
    component = "optimization"
    action = "replace"
    summary = "orthogonalised momentum for the block matrices"
    studied_on = ()  # not in the paper's study: run when named
    claims = (
        Claim("about twice AdamW's computational efficiency: AdamW's loss for about half the compute",
              "Liu et al. 2025 (Moonlight, arXiv 2502.16982), Section 3.3 and Figure 3",
              "speedup", factor=2.0, number="~2x"),
        Claim("about 1.35x fewer tokens than AdamW to the same loss (the modded-nanogpt speed-run record, 31.4 to 24.9 "
              "minutes)", "Jordan et al. 2024 (modded-nanogpt)", "speedup", factor=1.35, number="1.35x"),
        Claim("matrix optimizers such as Muon beat a well-tuned AdamW by about 1.4x at 0.1B parameters, less at larger "
              "scale", "Wen et al. 2025 (arXiv 2509.02046)", "speedup", factor=1.4, number="1.4x at 0.1B"),
    )
    card = (
        "**Muon** (Jordan et al. 2024; Liu et al. 2025, *Muon is scalable for LLM training*). The weight matrices "
        "of the blocks' attention and feed-forward projections are updated by torch.optim.Muon: Nesterov momentum "
        "0.95, the update orthogonalised by 5 Newton-Schulz steps (3.4445, -4.7750, 2.0315), its learning rate "
        "scaled by 0.2 sqrt(max(A, B)) so that learning rate and weight decay are on AdamW's scale; everything "
        "else (embeddings, output head, T5's position tables, norms) keeps the baseline's optimizer and peak. "
        "Defaults: Muon's peak and weight decay are the baseline's. The baseline's schedule, clipping and batch; "
        "the step priced at the table's AdamW step times a measured ratio the package ships. Claims: the modded-nanogpt "
        "speed-run record (about 1.35x fewer tokens than AdamW), Moonlight's ~2x computational efficiency. Survey "
        "category: component *optimization* x action *replace*."
    )

    def __init__(self, model: str, preset, **options):
        super().__init__(model, preset)
        r = self.recipe
        self.options = take_options(self.name, options, {
            "lr": r.lr, "weight_decay": r.weight_decay, "momentum": 0.95, "nesterov": True,
            "ns_steps": NEWTON_SCHULZ_STEPS})
        o = self.options
        if not o["lr"] > 0 or not o["weight_decay"] >= 0 or not 0.0 <= o["momentum"] < 1.0 or o["ns_steps"] < 1:
            raise UsageError(f"method muon: lr must be > 0, weight_decay >= 0, momentum in [0, 1) and ns_steps >= 1, "
                             f"got lr={o['lr']} weight_decay={o['weight_decay']} momentum={o['momentum']} "
                             f"ns_steps={o['ns_steps']}")

    @property
    def rst_optimizer(self) -> str:
        return "muon"

    def tuning(self) -> dict[str, list]:
        # the learning rate, and momentum, which Muon's authors name as its other sensitive setting
        return {"lr": around(self.options["lr"]), "momentum": [self.options["momentum"], 0.9, 0.98]}

    def settings(self) -> dict:
        r = self.recipe
        return {"optimizer": "muon", **self.options, "adjust_lr_fn": "match_rms_adamw",
                "ns_coefficients": list(NEWTON_SCHULZ), "rest_optimizer": r.optimizer, "rest_lr": r.lr,
                "rest_betas": list(r.betas), "rest_eps": r.eps, "rest_weight_decay": r.weight_decay}

    def build_optimizer(self, model: nn.Module) -> MuonWithAdamW:
        o, r = self.options, self.recipe
        matrices = block_matrices(model)
        chosen = {id(p) for p in matrices}
        muon = torch.optim.Muon(matrices, lr=o["lr"], weight_decay=o["weight_decay"], momentum=o["momentum"],
                                nesterov=o["nesterov"], ns_coefficients=NEWTON_SCHULZ, ns_steps=o["ns_steps"],
                                adjust_lr_fn="match_rms_adamw")
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in chosen]}
                  for g in decay_groups(model, r.weight_decay)]
        rest = optimizer_for_groups(r.optimizer, [g for g in groups if g["params"]], r.lr, r.betas, r.eps)
        return MuonWithAdamW(muon, rest)
