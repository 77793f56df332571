# Written with AI assistance; review before relying on it.
"""Phi3VProcessor: a templated prompt and PIL images -> the model's inputs.

Three steps, as in ../shared/PHI35V.md section 1: validate the `<|image_N|>` tags against the images,
run the HD transform (image_processing.py), then expand: every text chunk between tags is tokenized on
its own (so each starts with BOS) and tag k becomes `num_img_tokens[k-1]` copies of the id -k.

The tokenizer is loaded explicitly from tokenizer.json as a fast tokenizer; the folder's `auto_map`
entries (remote code) are never followed. Not here: the chat template's content (it ships with the
tokenizer), the model, or where images come from (cerebro/utils.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature, PreTrainedTokenizerFast

from cerebro.errors import ImageError, PromptError
from cerebro.models.phi3_v.image_processing import CLIP_MEAN, CLIP_STD, Phi3VImageProcessor

IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")


def image_tag(k: int) -> str:
    return f"<|image_{k}|>"


def check_image_tags(prompt: str, num_images: int) -> list[int]:
    """Tag numbers in order of appearance; raises PromptError (E1012) unless they are exactly 1..n, in
    ascending order, each once, with n the number of images."""
    tags = [int(m) for m in IMAGE_TAG.findall(prompt)]
    if len(tags) != num_images:
        raise PromptError(
            f"the prompt has {len(tags)} image tag(s) {[image_tag(t) for t in tags]} but {num_images} "
            "image(s) "
            f"were given; each image needs exactly one tag <|image_1|> .. <|image_{num_images}|>",
            field="prompt",
            code="E1012",
        )
    if tags != list(range(1, num_images + 1)):
        raise PromptError(
            f"image tags must be numbered 1..{num_images} in order of appearance, each once; "
            f"the prompt has {[image_tag(t) for t in tags]}",
            field="prompt",
            code="E1012",
        )
    return tags


class Phi3VProcessor:
    """HF-style processor: `processor(text=prompt, images=[...], return_tensors="pt")`."""

    def __init__(self, image_processor: Phi3VImageProcessor, tokenizer: PreTrainedTokenizerFast) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, num_crops: int | None = None) -> Phi3VProcessor:
        """Reads preprocessor_config.json (num_crops default, mean, std), config.json (crop and patch size,
        when it names a vision tower) and tokenizer.json / tokenizer_config.json (chat template)."""
        model_dir = Path(model_dir)
        pre = _read_json(model_dir / "preprocessor_config.json")
        vision = (_read_json(model_dir / "config.json").get("vision_config")) or {}
        image_processor = Phi3VImageProcessor(
            num_crops=num_crops if num_crops is not None else int(pre.get("num_crops", 4)),
            image_mean=tuple(pre.get("image_mean", CLIP_MEAN)),
            image_std=tuple(pre.get("image_std", CLIP_STD)),
            crop_size=int(vision.get("image_size", 336)),
            patch_size=int(vision.get("patch_size", 14)),
        )
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
        return cls(image_processor, tokenizer)

    @property
    def num_crops(self) -> int:
        return self.image_processor.num_crops

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        kwargs.setdefault("tokenize", False)
        kwargs.setdefault("add_generation_prompt", True)
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Image.Image | Sequence[Image.Image] | None = None,
        return_tensors: str | None = "pt",
        **unused: Any,
    ) -> BatchFeature:
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' (torch) is supported")
        prompt = _single_prompt(text)
        image_list = _image_list(images)
        check_image_tags(prompt, len(image_list))

        data: dict[str, Any] = {}
        counts: list[int] = []
        if image_list:
            data.update(self.image_processor(image_list))
            counts = data["num_img_tokens"].tolist()

        chunks = IMAGE_TAG.split(prompt)[::2]  # split() interleaves the captured numbers; keep the text
        ids: list[int] = []
        for k, chunk in enumerate(chunks):
            ids.extend(self.tokenizer(chunk).input_ids)  # default special tokens: BOS at every chunk start
            if k < len(counts):
                ids.extend([-(k + 1)] * counts[k])
        input_ids = torch.tensor([ids], dtype=torch.long)  # 1, L
        data["input_ids"] = input_ids
        data["attention_mask"] = torch.ones_like(input_ids)
        return BatchFeature(data=data)

    def decode(self, token_ids: Sequence[int] | torch.Tensor, **kwargs: Any) -> str:
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.decode(token_ids, **kwargs)

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]:
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.batch_decode(sequences, **kwargs)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _single_prompt(text: str | Sequence[str] | None) -> str:
    if isinstance(text, str):
        return text
    if isinstance(text, Sequence) and len(text) == 1 and isinstance(text[0], str):
        return text[0]
    if text is None:
        raise PromptError(
            "text is required: pass the templated prompt as a string", field="prompt", code="E1010"
        )
    raise PromptError(
        f"text must be one prompt string; got {type(text).__name__}"
        + (f" of length {len(text)}" if isinstance(text, Sequence) else ""),
        field="prompt",
        code="E1001",
    )


def _image_list(images: Image.Image | Sequence[Image.Image] | None) -> list[Image.Image]:
    if images is None:
        return []
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, (list, tuple)):
        return list(images)
    raise ImageError(
        f"images must be a PIL image or a list of PIL images; got {type(images).__name__}",
        field="images",
        code="E1105",
    )
