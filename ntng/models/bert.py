"""The crammed BERT (Geiping & Goldstein 2023) that the paper pre-trains, as its official code configures it.

`bert/cramming/config/arch/bert-c5.yaml` of JeanKaddour/NoTrainNoGain, read as facts:

- embeddings: word embedding (padding row zeroed at init) + **scaled-sinusoidal** positions (a fixed sinusoid times
  one learned scalar, initialised to 1/sqrt(hidden)), then a LayerNorm;
- **pre-LayerNorm** blocks, LayerNorm eps 1e-12: x + attn(LN(x)), then x + ffn(LN(x));
- attention: one fused QKV projection and an output projection, **no biases** (`qkv_bias: False`,
  `use_bias: False`); PyTorch SDPA here;
- feed-forward **gated GELU** (`GELUglu`): `dense_in` projects hidden -> intermediate, the result is split in two
  halves, x * GELU(gate), and `dense_out` projects intermediate/2 -> hidden (cramming's FFNComponent halves the
  width after a GLU; bert-c5's intermed_size 3072 gives 1536-wide gated halves), no biases;
- a **final LayerNorm** after the last block;
- sparse prediction: the tied vocabulary projection runs on the masked positions only, with **no head transform**
  (`skip_head_transform: True`) and **no decoder bias**;
- init: every Linear and Embedding weight normal(0, 0.02), LayerNorms weight 1 / bias 0.
Dropout is off (the paper pre-trains without it). Not Hugging Face's post-LN `BertForMaskedLM`: that is a
different and, at lr 1e-3, less stable model, and progressive layer dropping assumes pre-LN blocks.

Batch keys: `input_ids` [B, L], `attention_mask` [B, L] (optional, 1 = a real token), `mlm_positions` [B, k],
`mlm_labels` [B, k] (see `ntng.data.collate.BertMLMCollator`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ntng.models.blocks import loss_output, stack_blocks, validate_active_layers


@dataclass(frozen=True)
class CrammedBertConfig:
    vocab_size: int
    hidden: int
    heads: int
    intermediate: int  # width of the gated FFN's input projection; the GELU-gated halves are intermediate / 2
    num_layers: int
    max_seq_len: int = 128  # the sinusoid table's length
    norm_eps: float = 1e-12  # bert-c5 `norm_eps`
    init_std: float = 0.02  # bert-c5 `init: {type: normal, std: 0.02}`
    pad_token_id: int = 0

    def __post_init__(self):
        if self.hidden % self.heads or self.intermediate % 2 or self.hidden % 2:
            raise ValueError(f"crammed BERT needs hidden % heads == 0 and even hidden/intermediate, got {self}")

    def to_dict(self) -> dict:
        return {"architecture": "crammed-bert", **asdict(self)}


def sinusoid_table(length: int, width: int) -> torch.Tensor:
    """[length, width]: sin at even features, cos at odd ones, frequencies 10000^(-2i/width) (Vaswani et al.)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


class Embeddings(nn.Module):
    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden, padding_idx=config.pad_token_id)
        self.register_buffer("sinusoid", sinusoid_table(config.max_seq_len, config.hidden), persistent=False)
        # the FLASH paper's scaled sinusoid: one learned scale, starting at 1/sqrt(width)
        self.position_scale = nn.Parameter(torch.tensor([config.hidden ** -0.5]))
        self.norm = nn.LayerNorm(config.hidden, eps=config.norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = self.sinusoid[: input_ids.shape[1]].to(self.word.weight.dtype)
        return self.norm(self.word(input_ids) + self.position_scale * positions)


class Attention(nn.Module):
    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden, bias=False)
        self.out = nn.Linear(config.hidden, config.hidden, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # mask: [B, 1, 1, L] bool or None
        return self.out(attended.transpose(1, 2).reshape(batch, length, width))


class GatedFeedForward(nn.Module):
    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        self.dense_in = nn.Linear(config.hidden, config.intermediate, bias=False)
        self.dense_out = nn.Linear(config.intermediate // 2, config.hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.dense_in(x).chunk(2, dim=-1)  # cramming's GLU: x, gate = chunk(2); act(gate) * x
        return self.dense_out(F.gelu(gate) * value)


class Block(nn.Module):
    """A pre-LayerNorm transformer block: x + attn(LN(x)), then x + ffn(LN(x))."""

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden, eps=config.norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.hidden, eps=config.norm_eps)
        self.ffn = GatedFeedForward(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask)
        return x + self.ffn(self.norm2(x))


def init_weights(module: nn.Module, std: float) -> None:
    """cramming's `_init_module` with `type: normal`."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, 0.0, std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, 0.0, std)
            if sub.padding_idx is not None:
                with torch.no_grad():
                    sub.weight[sub.padding_idx].zero_()
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, L] (1 = token) -> SDPA's boolean [B, 1, 1, L] (True = attend); None when nothing is padded."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


class BertMLM(nn.Module):
    """Crammed BERT with sparse masked-language modelling: blocks run in the order given by `active_layers`."""

    model_name = "bert"

    def __init__(self, config: CrammedBertConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(config.hidden, eps=config.norm_eps)
        init_weights(self, config.init_std)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def blocks(self) -> nn.ModuleList:
        return self.layers

    def decoder_weight(self) -> torch.Tensor:
        """The vocabulary projection: the word embeddings themselves (tied, no bias)."""
        return self.embeddings.word.weight

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               layers: Sequence[int] | None = None) -> torch.Tensor:
        """[B, L, hidden] after the final LayerNorm, running the blocks `layers` (None: all)."""
        mask = padding_mask(attention_mask)
        hidden = self.embeddings(input_ids)
        for index in range(self.num_layers) if layers is None else layers:
            hidden = self.layers[index](hidden, mask)
        return self.final_norm(hidden)

    def forward(self, batch: Mapping[str, torch.Tensor],
                active_layers: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        layers = validate_active_layers(active_layers, self.num_layers)
        hidden = self.encode(batch["input_ids"], batch.get("attention_mask"), layers)
        positions = batch["mlm_positions"]
        masked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        logits = F.linear(masked, self.decoder_weight())  # [B, k, V]: no head transform, no decoder bias
        return loss_output(logits, batch["mlm_labels"])

    def stack_layers(self) -> list[nn.Parameter]:
        """Double the stack by copying (block i from block i - n); returns the new parameters for the optimizer."""
        old = self.num_layers
        self.layers = stack_blocks(self.layers)
        self._sync_depth()
        return [p for block in self.layers[old:] for p in block.parameters()]

    def keep_first_layers(self, depth: int) -> None:
        """Cut the stack to its first `depth` blocks (layer stacking starts shallow)."""
        assert 1 <= depth <= self.num_layers, depth
        self.layers = nn.ModuleList(list(self.layers)[:depth])
        self._sync_depth()

    def _sync_depth(self) -> None:
        self.config = replace(self.config, num_layers=self.num_layers)
