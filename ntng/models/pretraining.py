"""The two pre-training models: the crammed BERT (`ntng.models.bert`, our own module, as the paper's code defines it) and
T5 v1.1 (span corruption) built from a `transformers` config with our own outer loop.

The wrappers run the loop over blocks themselves, so a training step can run any subset of blocks (layer dropping)
and a stack can be grown by copying (layer stacking), the two architecture-level methods the paper evaluates.
Models are randomly initialised: nothing is ever downloaded.

Conventions: dropout is off (the paper pre-trains without it), attention uses PyTorch SDPA, and special-token ids
come from `ntng.data.vocab`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

from ntng.data.vocab import BERT_PAD, BERT_SPECIALS, N_SENTINELS, T5_DECODER_START, T5_EOS, T5_PAD, T5_SPECIALS
from ntng.errors import UsageError
from ntng.models.bert import BertMLM, CrammedBertConfig
from ntng.models.blocks import loss_output, stack_blocks, validate_active_layers
from ntng.presets import MODELS, BertShape, Preset, T5Shape

ATTN_IMPLEMENTATION = "sdpa"
LM_HEAD_INIT_STD = 1.0  # nanoT5 / HF T5: the untied v1.1 lm_head starts at std 1.0 (nanoT5 and Hugging Face T5 v1.1)


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
        self._position_table_per_block()

    def _untie_lm_head(self) -> None:
        # transformers 5 forces T5Config.tie_word_embeddings = True, which ties lm_head to the shared embedding
        # (unlike t5-v1.1). Give lm_head its own weights and record the untying in the config so a later
        # tie_weights() cannot re-tie it; the encoder and decoder input embeddings stay one shared table.
        # Init std 1.0 (x initializer_factor), as nanoT5 and HF's own T5 init give an untied v1.1 head.
        hf = self.hf
        std = hf.config.initializer_factor * LM_HEAD_INIT_STD
        hf.lm_head.weight = nn.Parameter(torch.empty_like(hf.shared.weight).normal_(0.0, std))
        hf.config.tie_word_embeddings = False
        hf.all_tied_weights_keys = {
            k: v for k, v in hf.all_tied_weights_keys.items() if not k.startswith("lm_head")
        }

    def _position_table_per_block(self) -> None:
        # HF builds a relative position table in block 0 of each stack and shares its bias with every block; the
        # paper's nanoT5 runs `share_positional_bias: False`: every block learns its own table. HF's init for it.
        config = self.hf.config
        std = config.initializer_factor * config.d_model ** -0.5
        for stack in (self.hf.encoder, self.hf.decoder):
            for block in stack.block:
                attention = block.layer[0].SelfAttention
                if not attention.has_relative_attention_bias:
                    attention.has_relative_attention_bias = True
                    attention.relative_attention_bias = nn.Embedding(
                        config.relative_attention_num_buckets, config.num_heads)
                    nn.init.normal_(attention.relative_attention_bias.weight, 0.0, std)

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
        length = input_ids.shape[1]
        hidden = stack.dropout(embeds)
        for index in layers:  # each block adds the bias of its own relative position table
            block = stack.block[index]
            position_bias = block.layer[0].SelfAttention.compute_bias(length, length, device=embeds.device)
            hidden = block(hidden, mask, position_bias)[0]
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
        hidden = stack.dropout(embeds)
        for index in layers:
            block = stack.block[index]
            position_bias = block.layer[0].SelfAttention.compute_bias(length, length, device=embeds.device)
            # Cross-attention has no position bias; passing None lets each block use zeros, as HF's block 0 does.
            hidden = block(hidden, self_mask, position_bias, encoded, cross_mask, None)[0]
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
        return loss_output(logits, batch["labels"])

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
        """Cut encoder and decoder to their first `depth` blocks."""
        assert 1 <= depth <= self.num_layers, depth
        for stack in (self.hf.encoder, self.hf.decoder):
            stack.block = nn.ModuleList(list(stack.block)[:depth])
            stack.config.num_layers = depth
        self.config.num_layers = self.config.num_decoder_layers = depth


# ------------------------------------------------------------------------------------------------------ factories

def bert_config(shape: BertShape, vocab_size: int, num_layers: int | None = None) -> CrammedBertConfig:
    return CrammedBertConfig(vocab_size=vocab_size, hidden=shape.hidden, heads=shape.heads,
                             intermediate=shape.intermediate,
                             num_layers=shape.num_layers if num_layers is None else num_layers,
                             max_seq_len=shape.seq_len, pad_token_id=BERT_PAD)


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
    """A JSON-able description: model kind, current depth, parameter count and the full architecture config."""
    if isinstance(model, BertMLM):
        return {"model": "bert", "num_layers": model.num_layers, "num_parameters": count_parameters(model),
                "attn_implementation": "sdpa", "architecture": model.config.to_dict()}
    return {
        "model": model.model_name,
        "num_layers": model.num_layers,
        "num_parameters": count_parameters(model),
        "attn_implementation": model.config._attn_implementation,
        "hf_config": json.loads(model.config.to_json_string()),
    }
