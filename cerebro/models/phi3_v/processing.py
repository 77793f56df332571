# Written with AI assistance; review before relying on it.
"""Phi3VProcessor: a templated prompt and PIL images -> the model's inputs.

Three steps, as in ../shared/PHI35V.md section 1: validate the `<|image_N|>` tags against the images,
run the HD transform (image_processing.py), then expand: every text chunk between tags is tokenized on
its own (so each starts with BOS) and tag k becomes `num_img_tokens[k-1]` copies of the id -k.

Caller text is text: `render_chat` renders the chat template and returns where each message's content
sits, and `processor(text=prompt, literal_spans=spans)` tokenizes those spans so that no special or added
token can come out of them (TextOnlyEncoder); only the template and the image tags make control tokens.

The tokenizer is loaded explicitly from tokenizer.json as a fast tokenizer; the folder's `auto_map`
entries (remote code) are never followed. Not here: the chat template's content (it ships with the
tokenizer), the model, or where images come from (cerebro/utils/images.py).
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

from cerebro.caller_text import TextOnlyEncoder, locate_texts
from cerebro.errors import ImageError, PromptError, ServerError
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


def render_chat(
    tokenizer: PreTrainedTokenizerFast, messages: list[dict[str, str]]
) -> tuple[str, tuple[tuple[int, int], ...]]:
    """The templated prompt (`apply_chat_template(..., tokenize=False, add_generation_prompt=True)`) and
    the [start, end) character span of each message's content in it, in message order. A template that
    drops, repeats or rewrites a content raises ServerError: its spans could not be trusted to cover the
    caller's text (cerebro/caller_text.py: locate_texts)."""

    def render(contents: Sequence[str]) -> str:
        return _render(tokenizer, [{**m, "content": c} for m, c in zip(messages, contents, strict=True)])

    prompt, spans = locate_texts(render, [m["content"] for m in messages])
    if spans is None:
        raise ServerError(
            "the chat template does not place each message's content exactly once, verbatim; caller text "
            "cannot be located in the prompt"
        )
    return prompt, spans


def _render(tokenizer: PreTrainedTokenizerFast, messages: list[dict[str, str]]) -> str:
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(prompt, str):
        raise ServerError(f"the chat template rendered {type(prompt).__name__}, not a string")
    return prompt


class Phi3VProcessor:
    """HF-style processor: `processor(text=prompt, images=[...], return_tensors="pt")`."""

    def __init__(self, image_processor: Phi3VImageProcessor, tokenizer: PreTrainedTokenizerFast) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self._text_only: TextOnlyEncoder | None = None

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
        literal_spans: Sequence[tuple[int, int]] | None = None,
        **unused: Any,
    ) -> BatchFeature:
        """`literal_spans`: [start, end) character spans of the prompt that came from the caller (from
        `render_chat`). Their characters are tokenized as plain text: no added token, special or not, can
        come out of them, while the rest is tokenized exactly as without spans (see `TextOnlyEncoder`).
        Image tags inside a span stay image tags: the caller's prompt carries them by design."""
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

        bounds = _chunk_bounds(prompt)  # the text between image tags, as [start, end) of the prompt
        if literal_spans is None:
            chunk_ids = [self.tokenizer(prompt[a:b]).input_ids for a, b in bounds]  # BOS at every chunk
        else:
            spans = _merge_spans(literal_spans, len(prompt))
            encoder = self.text_only_encoder()
            chunk_ids = [encoder.encode(prompt[a:b], _clip_spans(spans, a, b)) for a, b in bounds]
        ids: list[int] = []
        for k, one in enumerate(chunk_ids):
            ids.extend(one)
            if k < len(counts):
                ids.extend([-(k + 1)] * counts[k])
        input_ids = torch.tensor([ids], dtype=torch.long)  # 1, L
        data["input_ids"] = input_ids
        data["attention_mask"] = torch.ones_like(input_ids)
        return BatchFeature(data=data)

    def text_only_encoder(self) -> TextOnlyEncoder:
        """Built on first use (a regex and three probe encodings), then kept with this processor."""
        if self._text_only is None or self._text_only.tokenizer is not self.tokenizer:
            self._text_only = TextOnlyEncoder(self.tokenizer)
        return self._text_only

    def decode(self, token_ids: Sequence[int] | torch.Tensor, **kwargs: Any) -> str:
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.decode(token_ids, **kwargs)

    def batch_decode(self, sequences: Any, **kwargs: Any) -> list[str]:
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.batch_decode(sequences, **kwargs)


def _chunk_bounds(prompt: str) -> list[tuple[int, int]]:
    """[start, end) of the text between image tags: the same chunks as IMAGE_TAG.split(prompt)[::2]."""
    bounds: list[tuple[int, int]] = []
    start = 0
    for match in IMAGE_TAG.finditer(prompt):
        bounds.append((start, match.start()))
        start = match.end()
    bounds.append((start, len(prompt)))
    return bounds


def _merge_spans(spans: Sequence[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted((int(s), int(e)) for s, e in spans):
        if not 0 <= start <= end <= length:
            raise ValueError(f"literal span ({start}, {end}) is not inside the prompt of {length} characters")
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        elif start < end:
            merged.append((start, end))
    return merged


def _clip_spans(spans: Sequence[tuple[int, int]], a: int, b: int) -> list[tuple[int, int]]:
    """The parts of `spans` inside [a, b), shifted to start at a."""
    return [(max(s, a) - a, min(e, b) - a) for s, e in spans if min(e, b) > max(s, a)]


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
