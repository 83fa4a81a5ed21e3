"""What both pre-training models share: which blocks a step runs, and the loss dict every forward returns."""

from __future__ import annotations

import copy
import itertools
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def validate_active_layers(active_layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """The block indices a step runs: all of them for None, else a non-empty, strictly increasing, in-range list."""
    if active_layers is None:
        return list(range(num_layers))
    try:
        indices = [operator.index(i) for i in active_layers]
    except TypeError:
        raise ValueError(f"active_layers must be a sequence of ints, got {active_layers!r}") from None
    if any(isinstance(i, bool) for i in active_layers):
        raise ValueError(f"active_layers must be ints, not bools: {active_layers!r}")
    if not indices:
        raise ValueError("active_layers is empty: at least one block must run")
    if any(b <= a for a, b in itertools.pairwise(indices)):
        raise ValueError(f"active_layers must be strictly increasing, got {indices}")
    if indices[0] < 0 or indices[-1] >= num_layers:
        raise ValueError(f"active_layers {indices} out of range for a stack of {num_layers} blocks")
    return indices


def per_example_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, T, V] logits and [B, T] labels -> [B] mean token cross-entropy, computed in float32."""
    batch, tokens = labels.shape
    token_loss = F.cross_entropy(
        logits.reshape(batch * tokens, -1).float(), labels.reshape(-1), reduction="none"
    )
    return token_loss.view(batch, tokens).mean(dim=1)


def loss_output(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    per_example = per_example_cross_entropy(logits, labels)
    # Every sequence has the same number of targets (no padding), so the mean of per-sequence means is the token
    # mean that Hugging Face's own loss computes.
    return {"loss": per_example.mean(), "per_example_loss": per_example, "logits": logits}


def stack_blocks(blocks: nn.ModuleList) -> nn.ModuleList:
    """Double a stack by copying: [A B C D] -> [A B C D A' B' C' D'], block i copied from block i - n.

    The original modules are kept (an optimizer's state for them stays valid); the copies are deep copies with
    fresh parameters and no gradients. Copies share the model config object rather than cloning it. Every block
    has its own T5 relative position table (nanoT5 `share_positional_bias: False`), so a copy copies it too.
    """
    depth = len(blocks)
    copies = []
    for offset, block in enumerate(blocks):
        shared = {id(m.config): m.config for m in block.modules() if getattr(m, "config", None) is not None}
        clone = copy.deepcopy(block, memo=dict(shared))
        for module in clone.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = depth + offset  # only used by generation caches, kept truthful anyway
        for parameter in clone.parameters():
            parameter.grad = None
        copies.append(clone)
    return nn.ModuleList([*blocks, *copies])
