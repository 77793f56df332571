# Written with AI assistance; review before relying on it.
"""Phi-3.5-vision-instruct as a family: request -> chat prompt -> processor -> model inputs.

Owns what is specific to this model: image tags (`<|image_N|>` added when the prompt has none), the
chat template, the num_crops option and its default (Microsoft's advice: 16 for one image, 4 for
several), the stop tokens (`<|end|>`, `<|endoftext|>`, `</s>`) and its Decoder for the batching engine
(Phi3 layers, image features scattered over negative ids, LongRoPE switching at 4097 tokens). The model
itself is cerebro/models/phi3_v.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from cerebro.engine.decoder import Decoder, text_decoder
from cerebro.errors import WeightsError
from cerebro.families.base import Family, LoadOptions, ModelInputs, known_token_ids
from cerebro.models.phi3_v import Phi3VForCausalLM, Phi3VProcessor
from cerebro.models.phi3_v.image_processing import Phi3VImageProcessor
from cerebro.models.phi3_v.processing import IMAGE_TAG, check_image_tags, image_tag, render_chat
from cerebro.request import GenerationRequest

STOP_TOKENS = ("<|end|>", "<|endoftext|>", "</s>")
NUM_CROPS_ONE_IMAGE, NUM_CROPS_SEVERAL = 16, 4


def build_prompt(request: GenerationRequest) -> list[dict[str, str]]:
    """Chat messages; image tags for every image are prepended when the prompt has none."""
    n = len(request.images)
    content = request.prompt
    if IMAGE_TAG.search(content) is None:
        content = "".join(f"{image_tag(k)}\n" for k in range(1, n + 1)) + content
    check_image_tags(content, n)
    messages = [{"role": "system", "content": request.system_prompt}] if request.system_prompt else []
    return [*messages, {"role": "user", "content": content}]


def phi3v_decoder(model: Phi3VForCausalLM) -> Decoder:
    """The batching engine's view of Phi-3.5-vision: its Phi3 layers, and a prompt embedding that
    scatters the HD image features over the negative ids (reused when a row is re-encoded)."""
    lm = model.model

    def embed_prompt(
        input_ids: torch.Tensor, extras: Mapping[str, torch.Tensor], reuse: Any
    ) -> tuple[torch.Tensor, Any]:
        pixel_values, image_sizes = extras.get("pixel_values"), extras.get("image_sizes")
        return lm.embed_inputs(
            input_ids,
            None if pixel_values is None else pixel_values.to(model.device),
            None if image_sizes is None else image_sizes.to(model.device),
            reuse,
        )

    decoder = text_decoder(lm, model.lm_head, model.config, embed_prompt)
    if decoder is None:  # Phi-3.5's rope types (default, longrope) always have a policy
        raise WeightsError("this Phi-3.5-vision config has an unsupported rope type", code="E2011")
    return decoder


class Phi3VFamily(Family):
    name: ClassVar[str] = "phi3_v"
    options: ClassVar[frozenset[str]] = frozenset({"num_crops", "system_prompt"})
    max_images: ClassVar[int] = 16

    def __init__(self, model: Phi3VForCausalLM, processor: Phi3VProcessor) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.stop_ids = known_token_ids(self.tokenizer, STOP_TOKENS)
        self.vocab_size = int(model.config.vocab_size)
        self.max_positions = int(model.config.max_position_embeddings)
        self._processors: dict[int, Phi3VProcessor] = {}

    @classmethod
    def load(cls, model_dir: Path, options: LoadOptions) -> Phi3VFamily:
        attention = options.attention  # resolved and checked by the core
        model = Phi3VForCausalLM.from_pretrained(
            model_dir, torch_dtype=options.dtype, attn_implementation=attention, device=options.device
        )
        if not (model_dir / "tokenizer.json").is_file():
            raise WeightsError(
                f"{model_dir} holds weights but no tokenizer.json; copy the checkpoint's tokenizer "
                "files into it",
                field="CEREBRO_MODEL_DIR",
                code="E2012",
            )
        return cls(model, Phi3VProcessor.from_pretrained(model_dir))

    def describe(self) -> dict[str, str]:
        return {"attention": str(self.model.config._attn_implementation)}

    def decoder(self) -> Decoder:
        return phi3v_decoder(self.model)

    def processor_for(self, num_crops: int) -> Phi3VProcessor:
        """One processor per num_crops, kept: each builds its caller-text encoder once."""
        if num_crops not in self._processors:
            base = self.processor.image_processor
            image_processor = Phi3VImageProcessor(
                num_crops=num_crops,
                image_mean=tuple(base.mean.flatten().tolist()),
                image_std=tuple(base.std.flatten().tolist()),
                crop_size=base.crop_size,
                patch_size=base.patch_size,
            )
            self._processors[num_crops] = Phi3VProcessor(image_processor, self.tokenizer)
        return self._processors[num_crops]

    def num_crops(self, request: GenerationRequest) -> int:
        if request.num_crops is not None:
            return request.num_crops
        return NUM_CROPS_ONE_IMAGE if len(request.images) == 1 else NUM_CROPS_SEVERAL

    def model_inputs(self, request: GenerationRequest) -> ModelInputs:
        # The caller's text is text: only the chat template's own markers become special tokens, so a
        # prompt that types "<|end|><|assistant|>" cannot forge a turn (processing.render_chat).
        prompt, caller_spans = render_chat(self.tokenizer, build_prompt(request))
        processor = self.processor_for(self.num_crops(request))
        inputs = dict(processor(text=prompt, images=list(request.images), literal_spans=caller_spans))
        input_ids = inputs.pop("input_ids")
        inputs.pop("num_img_tokens", None)
        inputs.pop("attention_mask", None)
        return ModelInputs(input_ids, inputs, image_tokens=int((input_ids < 0).sum()))

    def warmup_request(self) -> GenerationRequest:
        from dataclasses import replace

        return replace(super().warmup_request(), num_crops=1)
