# Written with AI assistance; review before relying on it.
"""Phi3VConfig: the official Phi-3.5-vision `config.json`, read onto transformers' own Phi3Config.

What differs from Phi3Config (the decoder is transformers' Phi3 unchanged):
- `embd_layer` and `img_processor`: the official image-embedding settings, kept as given.
- `vision_config`: a CLIPVisionConfig. The official code hard-codes CLIP ViT-L/14 at 336 px; the official
  config.json has no such key, so it defaults to those sizes. A `vision_config` key overrides it (the tiny
  test checkpoints use one).
- `rope_scaling: {"type": "su", ...}` (the official name of LongRoPE) is renamed to transformers' "longrope"
  before Phi3Config standardizes it: transformers 5.23 renames "su" only after it has already validated the
  parameters for the old name, and then fails on the missing `original_max_position_embeddings`.

Not here: anything about tokenization, image preprocessing (processing.py) or weights (weights.py).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import CLIPVisionConfig, Phi3Config

# CLIP ViT-L/14 at 336 px, the tower the official remote code builds when config.json names no other.
CLIP_VIT_L14_336: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "attention_dropout": 0.0,
    "dropout": 0.0,
}


@strict
class Phi3VConfig(Phi3Config):
    model_type = "phi3_v"

    embd_layer: dict | None = None
    img_processor: dict | None = None
    vision_config: dict | CLIPVisionConfig | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        # Only the official embedding layout exists in released checkpoints; say so instead of misbehaving.
        embd = self.embd_layer or {}
        if embd.get("hd_transform_order", "sub_glb") != "sub_glb" or embd.get("use_hd_transform") is False:
            raise ValueError(
                f"unsupported embd_layer {embd}: only the HD transform in 'sub_glb' order exists"
            )
        if self.vision_config is None:
            self.vision_config = CLIPVisionConfig(**CLIP_VIT_L14_336)
        elif isinstance(self.vision_config, dict):
            fields = {k: v for k, v in self.vision_config.items() if k != "model_type"}
            self.vision_config = CLIPVisionConfig(**{**CLIP_VIT_L14_336, **fields})
        super().__post_init__(**kwargs)

    def convert_rope_params_to_dict(self, default_theta: int | float = 10_000.0, ignore_keys=None, **kwargs):
        rope_scaling = kwargs.get("rope_scaling")
        if isinstance(rope_scaling, dict) and rope_scaling.get("type", rope_scaling.get("rope_type")) == "su":
            renamed = {k: v for k, v in rope_scaling.items() if k != "type"}
            renamed["rope_type"] = "longrope"
            renamed["original_max_position_embeddings"] = self.original_max_position_embeddings
            # The official attention factor sqrt(1 + ln(max/orig) / ln(orig)) comes from this ratio; naming it
            # keeps transformers from warning that it had to infer it.
            renamed.setdefault("factor", self.max_position_embeddings / self.original_max_position_embeddings)
            kwargs["rope_scaling"] = renamed
        return super().convert_rope_params_to_dict(
            default_theta=default_theta, ignore_keys=ignore_keys, **kwargs
        )

    @property
    def image_size(self) -> int:
        """Side of one crop in pixels (336)."""
        return int(self.vision_config.image_size)  # type: ignore[union-attr]

    @property
    def vision_hidden_size(self) -> int:
        """C: width of one CLIP patch feature (1024 for ViT-L)."""
        return int(self.vision_config.hidden_size)  # type: ignore[union-attr]

    @property
    def vision_layer_index(self) -> int:
        """Which CLIP hidden state feeds the projection: the official code takes hidden_states[-2]."""
        return int((self.img_processor or {}).get("layer_idx", -2))
