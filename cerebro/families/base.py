# Written with AI assistance; review before relying on it.
"""A model family: only what is specific to one kind of model. The serving core (cerebro/core.py) does
everything else (sampling, the engines, JSON constraints, text pieces, metrics, errors).

A family supplies:
- `load`: the model, its tokenizer and processor from a local folder (never downloads);
- `model_inputs`: a validated request -> token ids and the model's other prefill inputs (its chat
  template, its image placeholders, its own image options such as Phi-3.5's num_crops);
- `stop_ids`, `vocab_size`, `max_positions`;
- `decoder()`: the Decoder the batching engine drives (cerebro/engine/decoder.py: how multimodal inputs
  are embedded, its rotary policy), or None to be served on the plain path (`plain_reason` says why);
- `plain_model()`: what the plain engine calls (cerebro.generation.generate_tokens);
- its capabilities as class attributes, which the runner enforces before any work.

Not here: anything shared by families, Cog, HTTP.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from cerebro.engine.decoder import Decoder
from cerebro.request import GenerationRequest


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # [1, T]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # other prefill inputs (pixel_values, ...)
    image_tokens: int = 0  # how many of the T are image tokens (for the context-window message)


@dataclass(frozen=True)
class LoadOptions:
    """How to load a family's model; the core resolves these from the deployment's settings."""

    device: torch.device
    dtype: torch.dtype
    attention: str  # sdpa, eager or flash_attention_2


class Family(abc.ABC):
    name: ClassVar[str]
    # Request options beyond the common ones (prompt, images, sampling, json_schema) this family
    # honours; a request that sets another one is refused with the field named (E1002).
    options: ClassVar[frozenset[str]] = frozenset()
    max_images: ClassVar[int] = 16
    min_images: ClassVar[int] = 1
    json_schema: ClassVar[bool] = True  # constrained decoding to a JSON Schema
    prompt_required: ClassVar[bool] = True
    plain_reason: ClassVar[str] = ""  # why decoder() is None, for the setup log

    model: Any  # has .device and .dtype
    tokenizer: Any  # a transformers tokenizer (decode, convert_tokens_to_ids)
    stop_ids: frozenset[int]
    vocab_size: int  # logits width
    max_positions: int  # the model's context window

    @classmethod
    @abc.abstractmethod
    def load(cls, model_dir: Path, options: LoadOptions) -> Family:
        """Everything from the local folder; raises WeightsError (E2010-E2012) for a broken folder."""

    @abc.abstractmethod
    def model_inputs(self, request: GenerationRequest) -> ModelInputs:
        """The request as model inputs; raises E1xxx for the caller's mistakes (image tags, ...)."""

    def decoder(self) -> Decoder | None:
        """What the batching engine drives; None = plain path only."""
        return None

    def plain_model(self) -> Any:
        """What the plain engine calls: model(input_ids=, past_key_values=, use_cache=, logits_to_keep=,
        **extras) -> .logits, with .config and .device (a transformers causal LM is one)."""
        return self.model

    def warmup_request(self) -> GenerationRequest:
        """A tiny request that runs every part of the model once, for setup()."""
        from PIL import Image

        return GenerationRequest(
            prompt="What is in this image?",
            images=(Image.new("RGB", (64, 48), "gray"),),
            max_new_tokens=2,
        )

    def describe(self) -> dict[str, str]:
        """Family-specific facts for the setup log."""
        return {}


def known_token_ids(tokenizer: Any, tokens: tuple[str, ...]) -> frozenset[int]:
    """The ids of those of `tokens` the tokenizer knows (stop tokens differ between checkpoints)."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    unknown = getattr(tokenizer, "unk_token_id", None)
    return frozenset(i for i in ids if isinstance(i, int) and i >= 0 and i != unknown)
