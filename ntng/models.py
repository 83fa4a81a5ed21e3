"""BERT (sparse MLM) and T5 v1.1 (span corruption) built from `transformers` configs, with our own outer loop.

The Hugging Face modules supply the layers and weights; the wrappers here run the loop over blocks themselves, so a
training step can run any subset of blocks (layer dropping) and a stack can be grown by copying (layer stacking),
the two architecture-level methods the paper evaluates. Models are randomly initialised from configs: nothing is
ever downloaded.

Conventions: dropout is off (the paper pre-trains without it), attention uses PyTorch SDPA, and special-token ids
come from `ntng.vocab`.
"""

from __future__ import annotations

import copy
import itertools
import json
import operator
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM, T5Config, T5ForConditionalGeneration
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from .errors import UsageError
from .presets import MODELS, BertShape, Preset, T5Shape
from .vocab import BERT_PAD, BERT_SPECIALS, N_SENTINELS, T5_DECODER_START, T5_EOS, T5_PAD, T5_SPECIALS

ATTN_IMPLEMENTATION = "sdpa"


# ------------------------------------------------------------------------------------------------ shared helpers


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


def _per_example_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B, T, V] logits and [B, T] labels -> [B] mean token cross-entropy, computed in float32."""
    batch, tokens = labels.shape
    token_loss = F.cross_entropy(
        logits.reshape(batch * tokens, -1).float(), labels.reshape(-1), reduction="none"
    )
    return token_loss.view(batch, tokens).mean(dim=1)


def _loss_output(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    per_example = _per_example_cross_entropy(logits, labels)
    # Every sequence has the same number of targets (no padding), so the mean of per-sequence means is the token
    # mean that Hugging Face's own loss computes.
    return {"loss": per_example.mean(), "per_example_loss": per_example, "logits": logits}


def stack_blocks(blocks: nn.ModuleList) -> nn.ModuleList:
    """Double a stack by copying: [A B C D] -> [A B C D A' B' C' D'], block i copied from block i - n.

    The original modules are kept (an optimizer's state for them stays valid); the copies are deep copies with
    fresh parameters and no gradients. Copies share the model config object rather than cloning it. A copy of a T5
    block 0 drops its relative position table: the bias is always computed from the original block 0.
    """
    depth = len(blocks)
    copies = []
    for offset, block in enumerate(blocks):
        shared = {id(m.config): m.config for m in block.modules() if getattr(m, "config", None) is not None}
        clone = copy.deepcopy(block, memo=dict(shared))
        for module in clone.modules():
            if getattr(module, "has_relative_attention_bias", False):
                del module.relative_attention_bias
                module.has_relative_attention_bias = False
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = depth + offset  # only used by generation caches, kept truthful anyway
        for parameter in clone.parameters():
            parameter.grad = None
        copies.append(clone)
    return nn.ModuleList([*blocks, *copies])


# ------------------------------------------------------------------------------------------------------------ BERT


def bert_config(shape: BertShape, vocab_size: int, num_layers: int | None = None) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=shape.hidden,
        num_hidden_layers=shape.num_layers if num_layers is None else num_layers,
        num_attention_heads=shape.heads,
        intermediate_size=shape.intermediate,
        hidden_act="gelu",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=shape.seq_len,
        type_vocab_size=1,  # no next-sentence prediction, so a single segment
        pad_token_id=BERT_PAD,
        tie_word_embeddings=True,
        attn_implementation=ATTN_IMPLEMENTATION,
    )


class BertMLM(nn.Module):
    """BERT with sparse masked-language-modelling: the vocabulary projection runs on the masked positions only.

    Batch keys: `input_ids` [B, L], `attention_mask` [B, L] (optional), `mlm_positions` [B, k], `mlm_labels` [B, k]
    (see `ntng.collate.BertMLMCollator`).
    """

    model_name = "bert"

    def __init__(self, config: BertConfig):
        super().__init__()
        self.hf = BertForMaskedLM(config)

    @property
    def config(self) -> BertConfig:
        return self.hf.config

    @property
    def num_layers(self) -> int:
        return len(self.hf.bert.encoder.layer)

    def blocks(self) -> nn.ModuleList:
        return self.hf.bert.encoder.layer

    def forward(
        self, batch: Mapping[str, torch.Tensor], active_layers: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        layers = validate_active_layers(active_layers, self.num_layers)
        bert = self.hf.bert
        hidden = bert.embeddings(input_ids=batch["input_ids"])
        # Same call as BertModel: with SDPA and no padding this returns None and attention runs unmasked.
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=batch.get("attention_mask")
        )
        for index in layers:
            hidden = bert.encoder.layer[index](hidden, attention_mask)

        positions = batch["mlm_positions"]
        masked_hidden = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        # [B, k, V]; the head's decoder weight is tied to the word embeddings
        logits = self.hf.cls.predictions(masked_hidden)
        return _loss_output(logits, batch["mlm_labels"])

    def stack_layers(self) -> list[nn.Parameter]:
        """Double the encoder by copying (see `stack_blocks`); returns the new parameters for the optimizer."""
        encoder = self.hf.bert.encoder
        old = len(encoder.layer)
        encoder.layer = stack_blocks(encoder.layer)
        self.config.num_hidden_layers = len(encoder.layer)
        return [p for block in encoder.layer[old:] for p in block.parameters()]

    def keep_first_layers(self, depth: int) -> None:
        """Cut the encoder to its first `depth` blocks (layer stacking starts shallow)."""
        encoder = self.hf.bert.encoder
        assert 1 <= depth <= len(encoder.layer), depth
        encoder.layer = nn.ModuleList(list(encoder.layer)[:depth])
        self.config.num_hidden_layers = depth


# -------------------------------------------------------------------------------------------------------------- T5


def t5_config(shape: T5Shape, vocab_size: int, num_layers: int | None = None) -> T5Config:
    layers = shape.num_layers if num_layers is None else num_layers
    return T5Config(
        vocab_size=vocab_size,
        d_model=shape.d_model,
        d_kv=shape.d_kv,
        d_ff=shape.d_ff,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=shape.heads,
        feed_forward_proj=shape.feed_forward_proj,
        dropout_rate=0.0,
        # v1.1: an untied lm_head and no d_model**-0.5 rescaling of the decoder output. transformers 5 reads this
        # flag as "do not rescale" only and still ties lm_head to the embeddings; `T5SpanModel` unties it.
        tie_word_embeddings=False,
        pad_token_id=T5_PAD,
        eos_token_id=T5_EOS,
        decoder_start_token_id=T5_DECODER_START,
        use_cache=False,
        attn_implementation=ATTN_IMPLEMENTATION,
    )


class T5SpanModel(nn.Module):
    """T5 v1.1 encoder-decoder for span corruption. Batch keys: `input_ids` [B, N], `labels` [B, T].

    Block indices apply to the encoder and the decoder alike, as in the paper's T5 layer dropping.
    """

    model_name = "t5"

    def __init__(self, config: T5Config):
        super().__init__()
        self.hf = T5ForConditionalGeneration(config)
        self._untie_lm_head()

    def _untie_lm_head(self) -> None:
        # transformers 5 forces T5Config.tie_word_embeddings = True, which ties lm_head to the shared embedding
        # (unlike t5-v1.1). Give lm_head its own weights and record the untying in the config so a later
        # tie_weights() cannot re-tie it; the encoder and decoder input embeddings stay one shared table.
        # Init is fan-in (std d_model**-0.5) as in T5X's untied v1.1 head, not HF's std 1.0, which starts the
        # loss near sqrt(d_model) times too large logits (loss ~40 instead of ~ln V on the smoke model).
        hf = self.hf
        std = hf.config.initializer_factor * hf.config.d_model**-0.5
        hf.lm_head.weight = nn.Parameter(torch.empty_like(hf.shared.weight).normal_(0.0, std))
        hf.config.tie_word_embeddings = False
        hf.all_tied_weights_keys = {
            k: v for k, v in hf.all_tied_weights_keys.items() if not k.startswith("lm_head")
        }

    @property
    def config(self) -> T5Config:
        return self.hf.config

    @property
    def num_layers(self) -> int:
        return len(self.hf.encoder.block)

    def blocks(self) -> tuple[nn.ModuleList, nn.ModuleList]:
        return self.hf.encoder.block, self.hf.decoder.block

    def encode(self, input_ids: torch.Tensor, layers: list[int], attention_mask=None) -> torch.Tensor:
        stack = self.hf.encoder
        embeds = stack.embed_tokens(input_ids)
        mask = create_bidirectional_mask(
            config=stack.config, inputs_embeds=embeds, attention_mask=attention_mask
        )
        # HF computes the relative position bias inside block 0 and shares it; block 0 may be skipped here, so it
        # is computed up front from block 0's table and handed to every block that runs.
        length = input_ids.shape[1]
        position_bias = (
            stack.block[0].layer[0].SelfAttention.compute_bias(length, length, device=embeds.device)
        )
        hidden = stack.dropout(embeds)
        for index in layers:
            hidden = stack.block[index](hidden, mask, position_bias)[0]
        return stack.dropout(stack.final_layer_norm(hidden))

    def decode(
        self, labels: torch.Tensor, encoded: torch.Tensor, layers: list[int], encoder_attention_mask=None
    ) -> torch.Tensor:
        stack = self.hf.decoder
        decoder_input_ids = self.hf._shift_right(labels)  # start token (= pad) then labels[:-1]
        embeds = stack.embed_tokens(decoder_input_ids)
        self_mask = create_causal_mask(
            config=stack.config, inputs_embeds=embeds, attention_mask=None, past_key_values=None
        )
        cross_mask = create_bidirectional_mask(
            config=stack.config,
            inputs_embeds=embeds,
            attention_mask=encoder_attention_mask,
            encoder_hidden_states=encoded,
        )
        length = labels.shape[1]
        position_bias = (
            stack.block[0].layer[0].SelfAttention.compute_bias(length, length, device=embeds.device)
        )
        hidden = stack.dropout(embeds)
        for index in layers:
            # Cross-attention has no position bias; passing None lets each block use zeros, as HF's block 0 does.
            hidden = stack.block[index](hidden, self_mask, position_bias, encoded, cross_mask, None)[0]
        return stack.dropout(stack.final_layer_norm(hidden))

    def forward(
        self, batch: Mapping[str, torch.Tensor], active_layers: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        layers = validate_active_layers(active_layers, self.num_layers)
        attention_mask = batch.get("attention_mask")  # absent for packed span-corruption batches
        encoded = self.encode(batch["input_ids"], layers, attention_mask)
        decoded = self.decode(batch["labels"], encoded, layers, attention_mask)
        if self.config.scale_decoder_outputs:  # original T5 (tied head) only; False for v1.1
            decoded = decoded * (self.config.d_model**-0.5)
        logits = self.hf.lm_head(decoded)
        return _loss_output(logits, batch["labels"])

    def stack_layers(self) -> list[nn.Parameter]:
        """Double encoder and decoder by copying (see `stack_blocks`); returns the new parameters."""
        new_parameters = []
        for stack in (self.hf.encoder, self.hf.decoder):
            old = len(stack.block)
            stack.block = stack_blocks(stack.block)
            stack.config.num_layers = len(stack.block)
            new_parameters += [p for block in stack.block[old:] for p in block.parameters()]
        self.config.num_layers = self.config.num_decoder_layers = self.num_layers
        return new_parameters

    def keep_first_layers(self, depth: int) -> None:
        """Cut encoder and decoder to their first `depth` blocks (block 0 keeps the position table)."""
        assert 1 <= depth <= self.num_layers, depth
        for stack in (self.hf.encoder, self.hf.decoder):
            stack.block = nn.ModuleList(list(stack.block)[:depth])
            stack.config.num_layers = depth
        self.config.num_layers = self.config.num_decoder_layers = depth


# ------------------------------------------------------------------------------------------------------ factories

PretrainingModel = BertMLM | T5SpanModel


def build_model(
    model_name: str, preset: Preset, vocab_size: int | None = None, num_layers: int | None = None
) -> PretrainingModel:
    """A randomly initialised model for `preset`; `num_layers` overrides the depth (e.g. L/4 to start stacking).

    Initialisation draws from torch's global RNG: seed it (torch.manual_seed) for a reproducible model.
    """
    vocab_size = preset.vocab_size if vocab_size is None else int(vocab_size)
    if num_layers is not None and int(num_layers) < 1:
        raise UsageError(f"num_layers must be at least 1, got {num_layers}")
    if model_name == "bert":
        if vocab_size <= len(BERT_SPECIALS):
            raise UsageError(f"vocab_size {vocab_size} is too small for BERT")
        return BertMLM(bert_config(preset.bert, vocab_size, num_layers))
    if model_name == "t5":
        if vocab_size <= len(T5_SPECIALS) + N_SENTINELS:
            raise UsageError(f"vocab_size {vocab_size} is too small for T5 ({N_SENTINELS} sentinels)")
        return T5SpanModel(t5_config(preset.t5, vocab_size, num_layers))
    raise UsageError(f"unknown model {model_name!r} (choose from {', '.join(MODELS)})")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_config_dict(model: PretrainingModel) -> dict:
    """A JSON-able description: model kind, current depth, parameter count and the full HF config."""
    return {
        "model": model.model_name,
        "num_layers": model.num_layers,
        "num_parameters": count_parameters(model),
        "attn_implementation": model.config._attn_implementation,
        "hf_config": json.loads(model.config.to_json_string()),
    }
