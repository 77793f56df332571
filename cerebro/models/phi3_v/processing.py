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
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature, PreTrainedTokenizerFast

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
    the [start, end) character span of each message's content in it, in message order.

    The template is rendered once with unguessable sentinels as contents, which shows where each content
    lands whatever the template's markup; the real contents are then put in their place, and the result
    must equal a direct rendering. A template that drops, repeats or rewrites a content (trims it, say)
    fails that check and raises ServerError: its spans could not be trusted to cover the caller's text.
    """
    sentinels = [f"cerebro{secrets.token_hex(16)}" for _ in messages]
    skeleton = _render(tokenizer, [{**m, "content": s} for m, s in zip(messages, sentinels, strict=True)])
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = length = 0  # pos: in the skeleton; length: of the prompt built so far
    for k, (message, sentinel) in enumerate(zip(messages, sentinels, strict=True)):
        at = skeleton.find(sentinel, pos)
        if at < 0 or skeleton.count(sentinel) != 1:
            raise ServerError(
                f"the chat template does not place message {k}'s content exactly once, in order; "
                "caller text cannot be located in the prompt"
            )
        content = message["content"]
        parts += [skeleton[pos:at], content]
        length += at - pos
        spans.append((length, length + len(content)))
        length += len(content)
        pos = at + len(sentinel)
    parts.append(skeleton[pos:])
    prompt = "".join(parts)
    if prompt != _render(tokenizer, messages):
        raise ServerError("the chat template rewrites message contents; caller text cannot be located in it")
    return prompt, tuple(spans)


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


# Rust's `char::is_whitespace` (Unicode White_Space), which decides what an added token's lstrip/rstrip
# swallows; Python's str.isspace() differs (it also takes U+001C..U+001F).
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


class TextOnlyEncoder:
    """Tokenizes a text chunk in which some spans are caller text that must never become added tokens.

    Why this reproduces the tokenizer exactly: a Hugging Face fast tokenizer first splits the text at
    added-token occurrences (leftmost-longest; a token flagged lstrip/rstrip also swallows the whitespace
    before/after it), then runs normalizer -> pre-tokenizer -> model on each remaining piece on its own,
    then lets the post-processor add BOS/EOS. This class does the same steps itself, with one change:
    added tokens are only looked for OUTSIDE the literal spans. The pieces between tokens, caller text
    included, go through the backend's normalizer, pre-tokenizer and model directly, and those never
    match added tokens. So caller text is always text, and a prompt whose spans hold no added-token
    strings gets the very ids `tokenizer(text)` gives (tests/unit/test_caller_text_tokens.py).

    On purpose, a template token's lstrip/rstrip still swallows whitespace inside an adjacent span (the
    tokenizer does that today, e.g. after `<|assistant|>`), and a token that would straddle a span edge is
    not formed. Not supported, and refused here rather than silently mis-tokenized: added tokens matched
    after normalization (`normalized=True`) or only as whole words (`single_word=True`). A normalizer or
    pre-tokenizer that depends on where a piece sits in the whole text (Metaspace prepend_scheme="first")
    would also differ; the probes in `__init__` catch that and raise.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerFast) -> None:
        self.tokenizer = tokenizer
        self._backend = tokenizer.backend_tokenizer
        skip_special = bool(self._backend.encode_special_tokens)  # special tokens read as text, if set
        self._ids: dict[str, int] = {}
        self._lstrip: set[str] = set()
        self._rstrip: set[str] = set()
        for token_id, token in sorted(self._backend.get_added_tokens_decoder().items()):
            if not token.content or (skip_special and token.special):
                continue
            if token.normalized or token.single_word:
                raise ServerError(
                    f"added token {token.content!r} is normalized={token.normalized} "
                    f"single_word={token.single_word}; caller text cannot be kept literal with it"
                )
            self._ids[token.content] = token_id
            if token.lstrip:
                self._lstrip.add(token.content)
            if token.rstrip:
                self._rstrip.add(token.content)
        # Longest first: Python's alternation takes the first branch that matches -> leftmost-longest.
        by_length = sorted(self._ids, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, by_length))) if by_length else None
        self._prefix, self._suffix = self._special_affixes()
        for probe in self._probes():
            expected = list(tokenizer(probe).input_ids)
            if self.encode(probe) != expected:
                raise ServerError(
                    f"this tokenizer's pipeline cannot be reproduced piece by piece (probe {probe!r}); "
                    "caller text cannot be kept literal with it"
                )

    def encode(self, text: str, literal: Sequence[tuple[int, int]] = ()) -> list[int]:
        """Ids of `text` with the post-processor's specials (BOS); `literal`: sorted, disjoint spans."""
        ids = list(self._prefix)
        pos = 0
        for start, stop, token_id in self._added_tokens(text, literal):
            ids += self._text_ids(text[pos:start])
            ids.append(token_id)
            pos = stop
        ids += self._text_ids(text[pos:])
        ids += self._suffix
        return ids

    def _added_tokens(self, text: str, literal: Sequence[tuple[int, int]]) -> list[tuple[int, int, int]]:
        """(start, stop, id) of every added token outside the literal spans; start/stop take in the
        whitespace that lstrip/rstrip swallow, which may lie inside a span."""
        found: list[tuple[int, int, int]] = []
        if self._pattern is None:
            return found
        prev_stop = 0
        for a, b in _outside(literal, len(text)):
            for match in self._pattern.finditer(text, a, b):
                start, stop, content = match.start(), match.end(), match.group()
                if start < prev_stop:  # inside whitespace the previous token swallowed
                    continue
                if content in self._lstrip:
                    while start > prev_stop and text[start - 1] in _WHITESPACE:
                        start -= 1
                if content in self._rstrip:
                    while stop < len(text) and text[stop] in _WHITESPACE:
                        stop += 1
                found.append((start, stop, self._ids[content]))
                prev_stop = stop
        return found

    def _text_ids(self, piece: str) -> list[int]:
        """normalizer -> pre-tokenizer -> model on one piece; none of these knows about added tokens."""
        if not piece:
            return []
        backend = self._backend
        normalized = backend.normalizer.normalize_str(piece) if backend.normalizer is not None else piece
        if backend.pre_tokenizer is not None:
            words = [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]
        else:
            words = [normalized]
        return [token.id for word in words if word for token in backend.model.tokenize(word)]

    def _special_affixes(self) -> tuple[list[int], list[int]]:
        """What the post-processor puts around one sequence (BOS here), read off a probe encoding."""
        with_specials = list(self.tokenizer("a").input_ids)
        plain = list(self.tokenizer("a", add_special_tokens=False).input_ids)
        for i in range(len(with_specials) - len(plain) + 1):
            if with_specials[i : i + len(plain)] == plain:
                return with_specials[:i], with_specials[i + len(plain) :]
        raise ServerError("the tokenizer's post-processor does not keep the text's ids together")

    def _probes(self) -> list[str]:
        tokens = sorted(self._ids, key=lambda c: self._ids[c])
        tokens = tokens[:: max(1, len(tokens) // 4)]  # a few, spread over the added vocabulary
        joined = "".join(f"{t}\n Probe  text{k} \n" for k, t in enumerate(tokens))
        return ["", " Hello  world \n", f"{joined}tail \u00e9\u4e2d "]


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


def _outside(spans: Sequence[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """The complement of sorted, disjoint `spans` in [0, length)."""
    gaps: list[tuple[int, int]] = []
    pos = 0
    for start, end in spans:
        if start > pos:
            gaps.append((pos, start))
        pos = max(pos, end)
    if pos < length:
        gaps.append((pos, length))
    return gaps


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
