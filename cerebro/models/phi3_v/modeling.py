# Written with AI assistance; review before relying on it.
"""Phi-3.5-vision as a diff against transformers' own blocks.

    Phi3VForCausalLM            transformers' Phi3ForCausalLM (lm_head, LongRoPE cache reset in generate)
    └── model: Phi3VModel       transformers' Phi3Model (decoder, RMSNorm, LongRoPE) + the image embedding
        └── vision_embed_tokens: Phi3VImageEmbedding   written here: CLIP tower, 2x2 merge, HD layout, MLP

The multimodal seam is three named steps (as in transformers' Llava family): `get_image_features` (CLIP +
HD merge + projection), `image_token_mask` (raises with both counts when they disagree), and the scatter
in `embed_inputs`. Sizes come from the config, so tiny towers work; see ../shared/PHI35V.md section 3.

Differences from the official remote code, each on purpose:
- the vision tower runs only on real crops (the official code also encodes the all-zero padding crops
  and then never reads their features) and stops after the layer whose output is used (hidden_states[-2]);
- image features computed at prefill ride along in generate's model kwargs, so the LongRoPE cache reset
  at 4097 tokens re-encodes the sequence without running the vision tower again.

Not here: checkpoint loading (weights.py), preprocessing (processing.py), sampling or serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import CLIPVisionModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.models.phi3.modeling_phi3 import Phi3ForCausalLM, Phi3Model, Phi3PreTrainedModel

from cerebro.errors import PromptError
from cerebro.models.phi3_v.configuration import Phi3VConfig
from cerebro.models.phi3_v.weights import load_model


@dataclass
class Phi3VModelOutputWithPast(BaseModelOutputWithPast):
    image_embeds: torch.Tensor | None = None  # [T_img, D]: projected features of every image token


@dataclass
class Phi3VCausalLMOutputWithPast(CausalLMOutputWithPast):
    image_embeds: torch.Tensor | None = None


class CLIPTower(nn.Module):
    """Holds the CLIP vision model under the `vision_model` name the official checkpoint uses."""

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__()
        self.vision_model = CLIPVisionModel(config.vision_config)


class Phi3VImageEmbedding(nn.Module):
    """Crops -> CLIP patch features -> 2x2 merge -> HD layout with separators -> MLP into the LM width."""

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__()
        vision = config.vision_config
        c = config.vision_hidden_size
        self.crop_size = int(vision.image_size)  # S = 336
        self.grid = self.crop_size // int(vision.patch_size)  # 24 patches per side
        if self.grid % 2:
            raise ValueError(f"the 2x2 merge needs an even patch grid; image_size/patch_size is {self.grid}")
        # hidden_states[k] is the output after k encoder layers; [-2] means all but the last one.
        self.num_layers_used = vision.num_hidden_layers + 1 + config.vision_layer_index
        self.img_processor = CLIPTower(config)
        self.glb_GN = nn.Parameter(torch.zeros(1, 1, 4 * c))  # separator between local and global parts
        self.sub_GN = nn.Parameter(torch.zeros(1, 1, 1, 4 * c))  # row separator ("newline")
        self.img_projection = nn.Sequential(
            nn.Linear(4 * c, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)
        )

    def get_img_features(self, crops: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, grid*grid, C]: the selected CLIP hidden state without the CLS token."""
        vm = self.img_processor.vision_model
        hidden = vm.pre_layrnorm(vm.embeddings(crops))  # B, 1 + grid*grid, C
        for layer in vm.encoder.layers[: self.num_layers_used]:
            hidden = layer(hidden, None)
        return hidden[:, 1:]

    def merge_2x2(self, features: torch.Tensor) -> torch.Tensor:
        """[B, grid*grid, C] -> [B, g, g, 4C] with g = grid/2; cell (r, c) concatenates patches
        (2r, 2c), (2r, 2c+1), (2r+1, 2c), (2r+1, 2c+1)."""
        b, _, c = features.shape
        g = self.grid // 2
        x = features.reshape(b, g, 2, g, 2, c)  # B, r, dr, c, dc, C
        x = x.permute(0, 1, 3, 2, 4, 5)  # B, r, c, dr, dc, C
        return x.reshape(b, g, g, 4 * c)

    def with_row_separators(self, grid: torch.Tensor) -> torch.Tensor:
        """[H, W, 4C] -> [H * (W + 1), 4C]: sub_GN appended to every row, flattened row-major."""
        h = grid.shape[0]
        sep = self.sub_GN.reshape(1, 1, -1).expand(h, 1, -1).to(grid.dtype)  # H, 1, 4C
        return torch.cat([grid, sep], dim=1).reshape(-1, grid.shape[-1])

    def forward(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """pixel_values [N, K+1, 3, S, S], image_sizes [N, 2] (H', W') -> [T_img, D], images in order."""
        s = self.crop_size
        grids = [(int(h) // s, int(w) // s) for h, w in image_sizes.tolist()]
        # Only the global view and the h*w real tiles of each image; padding crops are never read.
        crops = torch.cat(
            [pixel_values[i, : 1 + h * w] for i, (h, w) in enumerate(grids)]
        )  # sum(n_i), 3, S, S
        dtype = self.img_projection[0].weight.dtype
        merged = self.merge_2x2(self.get_img_features(crops.to(dtype)))  # sum(n_i), g, g, 4C
        g = self.grid // 2
        pieces, start = [], 0
        for h, w in grids:
            glb, tiles = merged[start], merged[start + 1 : start + 1 + h * w]
            start += 1 + h * w
            local = (
                tiles.reshape(h, w, g, g, -1)  # h, w, g, g, 4C
                .permute(0, 2, 1, 3, 4)  # h, g, w, g, 4C
                .reshape(h * g, w * g, -1)  # h*g, w*g, 4C
            )
            pieces += [
                self.with_row_separators(local),  # h*g * (w*g + 1), 4C
                self.glb_GN.reshape(1, -1).to(dtype),  # 1, 4C
                self.with_row_separators(glb),  # g * (g + 1), 4C
            ]
        return self.img_projection(torch.cat(pieces))  # T_img, D


def image_token_mask(input_ids: torch.Tensor, num_image_features: int) -> torch.Tensor:
    """Positions of image tokens (negative ids); raises PromptError with both counts when they differ."""
    mask = input_ids < 0
    found = int(mask.sum())
    if found != num_image_features:
        raise PromptError(
            f"the input has {found} image-token positions but the images produced {num_image_features} "
            "features; "
            "build inputs with Phi3VProcessor so that both agree",
            field="input_ids",
            code="E1012",
        )
    return mask


class Phi3VModel(Phi3Model):
    config_class = Phi3VConfig

    def __init__(self, config: Phi3VConfig) -> None:
        super().__init__(config)
        self.vision_embed_tokens = Phi3VImageEmbedding(config)

    def get_image_features(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        return self.vision_embed_tokens(pixel_values, image_sizes)

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """input_ids [B, L] (negative = image token) -> (inputs_embeds [B, L, D], image_embeds [T_img, D])."""
        has_image_tokens = bool((input_ids < 0).any())
        inputs_embeds = self.embed_tokens(input_ids.clamp(0, self.config.vocab_size - 1))
        if not has_image_tokens and pixel_values is None and image_embeds is None:
            return inputs_embeds, None
        if image_embeds is None:
            if pixel_values is None or image_sizes is None:
                raise PromptError(
                    "the input has image tokens but no pixel_values/image_sizes were given",
                    field="pixel_values",
                    code="E1012",
                )
            image_embeds = self.get_image_features(pixel_values.to(self.device), image_sizes)
        mask = image_token_mask(input_ids, image_embeds.shape[0])
        inputs_embeds = inputs_embeds.masked_scatter(mask[..., None], image_embeds.to(inputs_embeds.dtype))
        return inputs_embeds, image_embeds

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Phi3VModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            inputs_embeds, image_embeds = self.embed_inputs(
                input_ids, pixel_values, image_sizes, image_embeds
            )
        out = super().forward(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return Phi3VModelOutputWithPast(**out, image_embeds=image_embeds)


class Phi3VForCausalLM(Phi3ForCausalLM):
    config_class = Phi3VConfig
    _tied_weights_keys: dict[str, str] = {}  # noqa: RUF012 - lm_head is untied in Phi-3.5-vision
    _keys_to_ignore_on_load_unexpected = None

    def __init__(self, config: Phi3VConfig) -> None:
        Phi3PreTrainedModel.__init__(self, config)
        self.model = Phi3VModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(cls, model_dir: Any, *args: Any, **kwargs: Any) -> Phi3VForCausalLM:  # type: ignore[override]
        """Loads the official checkpoint layout natively; see weights.load_model for the arguments."""
        return load_model(cls, model_dir, *args, **kwargs)  # type: ignore[no-any-return]

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        num_img_tokens: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Phi3VCausalLMOutputWithPast:
        # num_img_tokens is part of the processor's output so that `model(**inputs)` works; the image
        # positions themselves are the negative ids, checked against the features in embed_inputs.
        del num_img_tokens
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            image_embeds=image_embeds,
            **kwargs,
        )
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return Phi3VCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            image_embeds=out.image_embeds,
        )

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        # Phi3ForCausalLM drops the cache when the sequence first reaches original_max + 1 tokens (LongRoPE
        # switches to long factors); the whole sequence is then re-encoded. Images are needed again then, and
        # only then: after the first forward, their projected features come from the model kwargs.
        kwargs.pop("num_img_tokens", None)
        image_inputs = {k: kwargs.pop(k, None) for k in ("pixel_values", "image_sizes", "image_embeds")}
        model_inputs = super().prepare_inputs_for_generation(input_ids, **kwargs)
        cache = model_inputs.get("past_key_values")
        full_sequence = cache is None or cache.get_seq_length() == 0
        if full_sequence:
            if image_inputs["image_embeds"] is not None:
                model_inputs["image_embeds"] = image_inputs["image_embeds"]
            else:
                model_inputs["pixel_values"] = image_inputs["pixel_values"]
                model_inputs["image_sizes"] = image_inputs["image_sizes"]
        return model_inputs

    def _update_model_kwargs_for_generation(
        self, outputs: Any, model_kwargs: dict[str, Any], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        if getattr(outputs, "image_embeds", None) is not None:
            model_kwargs["image_embeds"] = outputs.image_embeds
        return model_kwargs
