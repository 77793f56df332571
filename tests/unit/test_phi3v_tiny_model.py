# Written with AI assistance; review before relying on it.
"""Generation behaviour of Phi3VForCausalLM on tiny random models built here (no ../shared needed):
KV-cached greedy = uncached greedy, the LongRoPE cache reset (and proof that it matters), eager = sdpa,
one vision-tower run per generate call, and the image-token count check.

Weights use std 0.1 (not tiny.py's 0.02) so that attention is sharp enough for RoPE changes to show in the
logits and greedy choices have clear margins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import DynamicCache

from cerebro.errors import InputError, PromptError
from cerebro.models.phi3_v import Phi3VConfig, Phi3VForCausalLM, Phi3VImageProcessor
from cerebro.models.phi3_v.tiny import random_model, save_checkpoint, tiny_config_dict
from cerebro.models.phi3_v.weights import load_model

STD = 0.1
ATOL = 1e-4
PAD = 32000


def _model(seed: int = 0, **overrides: Any) -> Phi3VForCausalLM:
    return random_model(Phi3VConfig(**tiny_config_dict(**overrides)), seed=seed, std=STD)


def _photo(width: int, height: int) -> Image.Image:
    """A deterministic image with structure in every channel (gradients, a disc, noise)."""
    g = torch.Generator().manual_seed(width * 7919 + height)
    y = torch.linspace(0, 1, height)[:, None].expand(height, width)
    x = torch.linspace(0, 1, width)[None, :].expand(height, width)
    disc = (((x - 0.6) ** 2 + (y - 0.4) ** 2) < 0.05).float()
    rgb = torch.stack([x, y, 0.5 * disc + 0.3 * x * y], dim=-1) + 0.05 * torch.rand(
        height, width, 3, generator=g
    )
    return Image.fromarray((rgb.clamp(0, 1) * 255).to(torch.uint8).numpy(), "RGB")


def _image_inputs(num_crops: int, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Inputs as the processor would build them, without a tokenizer: [1, 5, 6] <image> [1, 7, 8]."""
    pix = Phi3VImageProcessor(num_crops=num_crops)([_photo(*size)])
    n = int(pix["num_img_tokens"][0])
    ids = torch.tensor([[1, 5, 6] + [-1] * n + [1, 7, 8]])
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "pixel_values": pix["pixel_values"],
        "image_sizes": pix["image_sizes"],
    }


def _generate(model: Phi3VForCausalLM, inputs: dict[str, torch.Tensor], steps: int) -> Any:
    out = model.generate(
        **inputs,
        max_new_tokens=steps,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=PAD,
        return_dict_in_generate=True,
        output_scores=True,
    )
    assert out.sequences.shape[1] == inputs["input_ids"].shape[1] + steps
    assert len(out.scores) == steps
    return out


def _uncached_last_logits(
    model: Phi3VForCausalLM, inputs: dict[str, torch.Tensor], seq: torch.Tensor
) -> torch.Tensor:
    """Last-position logits of a full forward over `seq` without any cache (images re-encoded)."""
    extra = {k: v for k, v in inputs.items() if k in ("pixel_values", "image_sizes")}
    return model(input_ids=seq, use_cache=False, **extra).logits[:, -1].float()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# ----------------------------------------------------------------- (a) cached greedy == uncached greedy


def test_cached_greedy_equals_uncached_greedy_with_an_image() -> None:
    model = _model(seed=11)
    inputs = _image_inputs(num_crops=4, size=(500, 300))
    assert int((inputs["input_ids"] < 0).sum()) == 757
    steps = 8
    out = _generate(model, inputs, steps)

    seq = inputs["input_ids"]
    for step in range(steps):
        logits = _uncached_last_logits(model, inputs, seq)
        top2 = logits.topk(2).values[0]
        assert (top2[0] - top2[1]).item() > 10 * ATOL, f"step {step}: greedy margin too small to be a test"
        diff = _max_diff(out.scores[step], logits)
        assert diff <= ATOL, f"step {step}: cached scores differ from uncached logits by {diff:.3g}"
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.sequences, seq)


# ----------------------------------------------------------------- (b) LongRoPE cache reset

ORIGINAL_MAX = 64
LONG_ROPE = {"original_max_position_embeddings": ORIGINAL_MAX, "max_position_embeddings": 2048}


@pytest.fixture(scope="module")
def long_rope_model() -> Phi3VForCausalLM:
    model = _model(seed=5, **LONG_ROPE)
    rope = model.config.rope_parameters
    assert rope["original_max_position_embeddings"] == ORIGINAL_MAX
    assert rope["short_factor"] != rope["long_factor"]
    return model


def _text_prompt(length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.tensor([[1]]), torch.randint(3, 32000, (1, length - 1), generator=g)], dim=1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_long_rope_reset_keeps_generate_equal_to_uncached_forwards(long_rope_model: Phi3VForCausalLM) -> None:
    prompt_len, steps = 60, 10
    inputs = _text_prompt(prompt_len)
    out = _generate(long_rope_model, inputs, steps)
    crossed = [s for s in range(steps) if prompt_len + s > ORIGINAL_MAX]
    assert crossed, "the test must cross original_max_position_embeddings"
    for step in range(steps):
        prefix = out.sequences[:, : prompt_len + step]
        diff = _max_diff(out.scores[step], _uncached_last_logits(long_rope_model, inputs, prefix))
        assert diff <= ATOL, f"step {step} (key length {prompt_len + step}): scores differ by {diff:.3g}"


def test_without_the_reset_a_cached_loop_diverges_after_the_switch(long_rope_model: Phi3VForCausalLM) -> None:
    """The same comparison for a cached loop that never drops its cache: it agrees with the uncached
    forwards while every key fits the short factors, and is far off once the long factors apply. So the
    test above would fail without the reset."""
    prompt_len, steps = 60, 10
    inputs = _text_prompt(prompt_len)
    seq = _generate(long_rope_model, inputs, steps).sequences
    cache = DynamicCache(config=long_rope_model.config)
    out = long_rope_model(input_ids=seq[:, :prompt_len], past_key_values=cache, use_cache=True)
    diffs = {}
    for step in range(steps):
        length = prompt_len + step
        if step:
            out = long_rope_model(
                input_ids=seq[:, length - 1 : length],
                past_key_values=cache,
                use_cache=True,
                position_ids=torch.tensor([[length - 1]]),
            )
        assert cache.get_seq_length() == length
        full = _uncached_last_logits(long_rope_model, inputs, seq[:, :length])
        diffs[length] = _max_diff(out.logits[:, -1], full)
    before = {k: v for k, v in diffs.items() if k <= ORIGINAL_MAX}
    after = {k: v for k, v in diffs.items() if k > ORIGINAL_MAX}
    assert before and after
    assert max(before.values()) <= ATOL, f"the naive loop should agree before the switch: {before}"
    assert min(after.values()) > 1e-3, f"the naive loop should diverge after the switch: {after}"


def test_a_prompt_already_past_the_switch_uses_long_factors_throughout(
    long_rope_model: Phi3VForCausalLM,
) -> None:
    prompt_len, steps = ORIGINAL_MAX + 6, 5
    inputs = _text_prompt(prompt_len, seed=1)
    out = _generate(long_rope_model, inputs, steps)
    for step in range(steps):
        prefix = out.sequences[:, : prompt_len + step]
        diff = _max_diff(out.scores[step], _uncached_last_logits(long_rope_model, inputs, prefix))
        assert diff <= ATOL, f"step {step}: scores differ by {diff:.3g}"


# ----------------------------------------------------------------- (c) eager == sdpa


def test_eager_and_sdpa_give_the_same_logits(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(tiny_config_dict(**LONG_ROPE)))
    save_checkpoint(_model(seed=3, **LONG_ROPE), tmp_path)
    eager = load_model(Phi3VForCausalLM, tmp_path, attn_implementation="eager")
    sdpa = load_model(Phi3VForCausalLM, tmp_path, attn_implementation="sdpa")
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    image = _image_inputs(num_crops=2, size=(300, 500))
    text = _text_prompt(ORIGINAL_MAX + 10, seed=2)  # long factors, too
    for inputs in (image, text):
        a = eager(**inputs, use_cache=False).logits
        b = sdpa(**inputs, use_cache=False).logits
        diff = _max_diff(a, b)
        assert diff <= ATOL, f"eager vs sdpa logits differ by {diff:.3g}"
        assert a.abs().max() > 0.1  # not trivially equal


# ----------------------------------------------------------------- (d) one vision-tower run per generate


def test_vision_tower_runs_once_per_generate_across_the_reset() -> None:
    inputs = _image_inputs(num_crops=1, size=(400, 300))
    prompt_len = inputs["input_ids"].shape[1]
    assert prompt_len == 3 + 313 + 3
    original_max = prompt_len + 1  # the switch happens at the third generated token
    model = _model(seed=9, original_max_position_embeddings=original_max, max_position_embeddings=2048)

    vision_calls: list[int] = []
    full_sequence_forwards: list[int] = []
    embeddings = model.model.vision_embed_tokens.img_processor.vision_model.embeddings
    handles = [
        embeddings.register_forward_hook(lambda _m, args, _out: vision_calls.append(args[0].shape[0])),
        model.model.embed_tokens.register_forward_hook(
            lambda _m, args, _out: (
                full_sequence_forwards.append(args[0].shape[1]) if args[0].shape[1] > 1 else None
            )
        ),
    ]
    steps = 6
    try:
        out = _generate(model, inputs, steps)
    finally:
        for handle in handles:
            handle.remove()
    # Prefill and the re-encode at the switch both cover the whole sequence; only the prefill runs CLIP.
    assert full_sequence_forwards == [prompt_len, original_max + 1]
    assert vision_calls == [2], f"vision tower calls (crops per call): {vision_calls}"
    # The re-encode reused the image features correctly: scores still match uncached forwards.
    for step in range(steps):
        prefix = out.sequences[:, : prompt_len + step]
        diff = _max_diff(out.scores[step], _uncached_last_logits(model, inputs, prefix))
        assert diff <= ATOL, f"step {step}: scores differ by {diff:.3g}"


def test_vision_tower_runs_once_per_generate_call_not_once_per_model() -> None:
    model = _model(seed=9)
    inputs = _image_inputs(num_crops=1, size=(200, 200))
    calls: list[int] = []
    embeddings = model.model.vision_embed_tokens.img_processor.vision_model.embeddings
    handle = embeddings.register_forward_hook(lambda *_: calls.append(1))
    try:
        _generate(model, inputs, 3)
        _generate(model, inputs, 3)
    finally:
        handle.remove()
    assert len(calls) == 2


# ----------------------------------------------------------------- (e) image-token count mismatch


@pytest.mark.parametrize("delta", [-1, +2])
def test_mismatched_image_positions_raise_prompt_error_with_both_counts(delta: int) -> None:
    model = _model(seed=1)
    inputs = _image_inputs(num_crops=1, size=(100, 80))
    ids = inputs["input_ids"][0].tolist()
    n = sum(1 for i in ids if i < 0)
    assert n == 313
    wrong = [1, 5, 6] + [-1] * (n + delta) + [1, 7, 8]
    inputs["input_ids"] = torch.tensor([wrong])
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with pytest.raises(PromptError) as err:
        model(**inputs)
    assert isinstance(err.value, InputError)
    assert err.value.code == "E1012"
    assert str(n + delta) in err.value.message and str(n) in err.value.message


def test_image_tokens_without_pixels_raise_prompt_error() -> None:
    model = _model(seed=1)
    ids = torch.tensor([[1, 5] + [-1] * 313 + [1, 7]])
    with pytest.raises(PromptError) as err:
        model(input_ids=ids)
    assert err.value.code == "E1012" and "pixel_values" in err.value.message


def test_images_without_any_image_positions_raise_prompt_error_with_both_counts() -> None:
    model = _model(seed=1)
    inputs = _image_inputs(num_crops=1, size=(100, 80))
    inputs["input_ids"] = torch.tensor([[1, 5, 6, 1, 7, 8]])  # the image's 313 positions left out
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    with pytest.raises(PromptError) as err:
        model(**inputs)
    assert err.value.code == "E1012"
    assert "0" in err.value.message and "313" in err.value.message
