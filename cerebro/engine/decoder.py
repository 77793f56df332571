# Written with AI assistance; review before relying on it.
"""What the batching engine needs from a model: a decoder stack it can drive row by row.

A model family builds one `Decoder` from its loaded model; the engine never looks further inside:

    shape          layers, KV heads, head dim: sizes the RowKVCache
    rotary         a RotaryPolicy: which frequency table a sequence of a given length uses, and cos/sin
                   per row (Phi-3's LongRoPE switch at 4097 tokens is one policy, plain RoPE another)
    embed_prompt   input_ids [1, T] + the family's extra tensors (pixels, ...) -> embeds [1, T, D], and
                   what a later re-encode of the same prompt may reuse (image features), opaque here
    embed_tokens   tokens [B] -> embeds [B, D]
    layers         transformers decoder layers, called layer(h, attention_mask=, position_embeddings=,
                   past_key_values=) like Phi3 and Llama layers are
    head           hidden [B, 1, D] -> logits [B, V] (final norm and LM head)

A model whose positions are not one integer per token (Qwen2-VL's 3-D M-RoPE) has no Decoder: its family
returns None and it is served on the plain path.

Not here: row bookkeeping and CUDA graphs (forward.py), scheduling (scheduler.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

# Rope types whose frequencies do not change with the sequence length (or change once, at a known
# length, for LongRoPE). "dynamic" NTK scaling recomputes them every step: not supported here.
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope")


@dataclass(frozen=True)
class DecoderShape:
    num_layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, text_config: Any) -> DecoderShape:
        """From a transformers text config (num_hidden_layers, num_key_value_heads, head_dim or
        hidden_size / num_attention_heads)."""
        heads = int(text_config.num_attention_heads)
        head_dim = getattr(text_config, "head_dim", None) or int(text_config.hidden_size) // heads
        return cls(
            num_layers=int(text_config.num_hidden_layers),
            kv_heads=int(getattr(text_config, "num_key_value_heads", None) or heads),
            head_dim=int(head_dim),
        )

    def bytes_per_token(self, dtype: torch.dtype) -> int:
        """Keys and values of one token in every layer (Phi-3.5-vision in bf16: 393,216 bytes)."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * self.num_layers * self.kv_heads * self.head_dim * itemsize


class RotaryPolicy:
    """RoPE with one or more frequency tables; a row uses table `variant(length)` for its whole sequence.

    One table (plain RoPE, linear, llama3, yarn): variant is always 0. LongRoPE: table 1 (long factors)
    once a sequence holds more than `switch_after` tokens, and the engine then re-encodes that row whole.
    """

    def __init__(
        self, tables: Sequence[torch.Tensor], attention_scaling: float, switch_after: int | None = None
    ) -> None:
        self.tables = torch.stack([t.float() for t in tables])  # [variants, D/2]
        self.attention_scaling = attention_scaling
        self.switch_after = switch_after

    def variant(self, length: int) -> int:
        return int(self.switch_after is not None and length > self.switch_after)

    def cos_sin(
        self, positions: torch.Tensor, variants: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T], variants [B] -> cos, sin [B, T, D] (transformers' formula, per row)."""
        inv_freq = self.tables[variants]  # B, D/2
        freqs = positions[..., None].float() * inv_freq[:, None, :]  # B, T, D/2
        emb = torch.cat((freqs, freqs), dim=-1)  # B, T, D
        cos, sin = emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def rotary_policy(config: Any, rotary_emb: nn.Module, device: torch.device) -> RotaryPolicy | None:
    """The policy for a transformers text config and its rotary module; None when the rope type's
    frequencies depend on the length in a way rows cannot share (the family then serves on the plain path)."""
    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        return None
    original: torch.Tensor = rotary_emb.original_inv_freq  # type: ignore[assignment]
    short = original.to(device, torch.float32)
    scaling = float(rotary_emb.attention_scaling)  # type: ignore[arg-type]
    if rope_type != "longrope":
        return RotaryPolicy([short], scaling)
    original_max = int(params["original_max_position_embeddings"])
    long, _ = ROPE_INIT_FUNCTIONS["longrope"](config, device, seq_len=original_max + 1)
    return RotaryPolicy([short, long.to(device, torch.float32)], scaling, switch_after=original_max)


EmbedPrompt = Callable[[torch.Tensor, Mapping[str, torch.Tensor], Any], tuple[torch.Tensor, Any]]


@dataclass(frozen=True)
class Decoder:
    shape: DecoderShape
    rotary: RotaryPolicy
    layers: Sequence[nn.Module]
    embed_prompt: EmbedPrompt  # (input_ids [1, T], extras, reuse or None) -> (embeds [1, T, D], reuse)
    embed_tokens: Callable[[torch.Tensor], torch.Tensor]  # [B] -> [B, D]
    head: Callable[[torch.Tensor], torch.Tensor]  # [B, 1, D] -> [B, 1, V]
    device: torch.device
    dtype: torch.dtype


def text_decoder(
    text_model: nn.Module, lm_head: nn.Module, text_config: Any, embed_prompt: EmbedPrompt
) -> Decoder | None:
    """A Decoder over a transformers text model with `embed_tokens`, `layers`, `norm` and `rotary_emb`
    (Phi3Model, LlamaModel, MistralModel, ...); None when its rope type is not one rows can share."""
    parameter = next(text_model.parameters())
    rotary = rotary_policy(text_config, text_model.rotary_emb, parameter.device)  # type: ignore[arg-type]
    if rotary is None:
        return None
    norm: nn.Module = text_model.norm  # type: ignore[assignment]
    return Decoder(
        shape=DecoderShape.from_config(text_config),
        rotary=rotary,
        layers=text_model.layers,  # type: ignore[arg-type]
        embed_prompt=embed_prompt,
        embed_tokens=text_model.embed_tokens,  # type: ignore[arg-type]
        head=lambda hidden: lm_head(norm(hidden)),
        device=parameter.device,
        dtype=parameter.dtype,
    )
