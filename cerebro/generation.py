# Written with AI assistance; review before relying on it.
"""Token generation for one request: prefill, sampling, the decode loop and incremental detokenization.

Written for Hugging-Face-style causal LMs whose forward takes `past_key_values` and returns logits (the
native Phi-3.5-vision model). Kept small on purpose; the plain transformers `generate` gives the same
greedy tokens (a test checks it), but this loop also takes per-request sampling settings, a grammar
constraint, stop ids and a cancel flag, and yields each token as soon as it exists.

LongRoPE: when the sequence first reaches original_max + 1 tokens while the cache holds fewer, the
cache is dropped and the whole sequence re-encoded with the long factors (as the official code does),
reusing the image features from prefill.

Not here: prompts, images, chat templates (the adapter), JSON schemas (structured.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from cerebro.finish import LogitsConstraint, finish_after
from cerebro.request import LIMITS


@dataclass(frozen=True)
class SamplingParams:
    # The request limits own the defaults (and the Cog inputs' defaults come from them too).
    temperature: float = float(LIMITS["temperature"].default or 0.0)  # 0 = greedy
    top_p: float = float(LIMITS["top_p"].default or 0.0)
    top_k: int = int(LIMITS["top_k"].default or 0)  # 0 = off
    repetition_penalty: float = float(LIMITS["repetition_penalty"].default or 0.0)
    seed: int = 0


class Sampler:
    """Per-request sampling with its own seeded generator (results do not depend on other requests)."""

    def __init__(self, params: SamplingParams, device: torch.device) -> None:
        self.params = params
        self.generator = torch.Generator(device=device).manual_seed(params.seed)

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None) -> int:
        """logits [V] (float32) -> one token id. `seen` [S]: ids already in the sequence (>= 0)."""
        p = self.params
        if p.repetition_penalty != 1.0 and seen is not None and seen.numel():
            # transformers' rule: divide positive logits, multiply negative ones, for every seen token.
            picked = logits[seen]
            logits = logits.scatter(
                0, seen, torch.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
            )
            # A tiny penalty (1e-40 is a valid input) overflows a positive logit to inf; keep it finite so
            # that the shift below cannot make inf - inf = nan.
            finite = torch.finfo(logits.dtype).max
            logits = logits.clamp(min=-finite, max=finite)
        if p.temperature == 0.0:
            return int(torch.argmax(logits))
        # Shift so the largest logit is 0 before dividing: a tiny temperature (1e-38) then sends the others
        # to -inf instead of overflowing them all to inf (softmax of inf is nan). Same distribution.
        # The floor keeps a temperature below float32's range (5e-324) from rounding to 0 (0 / 0 = nan).
        logits = (logits - logits.max()) / max(p.temperature, torch.finfo(torch.float32).tiny)
        if p.top_k > 0:
            kth = torch.topk(logits, min(p.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
            drop = cumulative - torch.softmax(sorted_logits, dim=-1) >= p.top_p  # keep the first token always
            logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def generate_tokens(
    model: Any,
    inputs: dict[str, torch.Tensor],
    *,
    max_new_tokens: int,
    sampler: Sampler,
    stop_ids: frozenset[int],
    constraint: LogitsConstraint | None = None,
    cancel: threading.Event | None = None,
) -> Iterator[int]:
    """Yield new token ids (stop tokens included, then the loop ends). Batch size 1.

    inputs: input_ids [1, L] and the model's other prefill inputs (pixel_values, ...), passed to the
    first forward only. `model` is called like a transformers causal LM: model(input_ids=,
    past_key_values=, use_cache=True, logits_to_keep=1, **extras) -> .logits; it may offer `new_cache()`
    (an encoder-decoder's cache), else a DynamicCache is used. A LongRoPE model (Phi-3) re-encodes the
    whole sequence once it reaches original_max + 1 tokens, reusing its `image_embeds`."""
    device = model.device
    input_ids = inputs["input_ids"].to(device)
    # Batch size 1 has no padding: an all-ones attention_mask would only move SDPA off its causal kernel.
    extra = {k: v.to(device) for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    new_cache = getattr(model, "new_cache", None) or (lambda: DynamicCache(config=model.config))
    original_max: int = getattr(model.config, "original_max_position_embeddings", None) or 0
    rope = getattr(model.config, "rope_parameters", None) or {}
    longrope = rope.get("rope_type") == "longrope" and original_max > 0
    sequence = [int(t) for t in input_ids[0]]
    seen = input_ids[0][input_ids[0] >= 0]
    cache = new_cache()
    with torch.inference_mode():
        out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1, **extra)
        image_embeds = getattr(out, "image_embeds", None)
        for count in range(1, max_new_tokens + 1):
            if cancel is not None and cancel.is_set():
                return
            logits = out.logits[0, -1].float()
            if constraint is not None:
                constraint.mask(logits)
            token = sampler(logits, seen)
            if constraint is not None:
                constraint.accept(token)
            yield token
            if finish_after(
                token, count, stop_ids=stop_ids, constraint=constraint, max_new_tokens=max_new_tokens
            ):
                return
            sequence.append(token)
            seen = torch.cat([seen, torch.tensor([token], device=device)])
            if longrope and len(sequence) == original_max + 1 and cache.get_seq_length() <= original_max:
                cache = new_cache()
                full = torch.tensor([sequence], device=device)
                out = model(
                    input_ids=full,
                    image_embeds=image_embeds,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
            else:
                step = torch.tensor([[token]], device=device)
                out = model(input_ids=step, past_key_values=cache, use_cache=True, logits_to_keep=1)


class IncrementalDecoder:
    """Token ids in, text deltas out, without re-decoding the whole answer at every step.

    Decodes a small window (from the last emitted boundary) so SentencePiece's leading-space rules and
    multi-token UTF-8 characters come out right; holds text back while it ends in U+FFFD (a character
    whose bytes are not complete yet).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the decode window
        self.read = 0  # tokens already turned into emitted text

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.prefix :], skip_special_tokens=True)
        self.prefix = self.read = len(self.ids)
        return after[len(before) :]
