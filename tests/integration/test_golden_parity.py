# Written with AI assistance; review before relying on it.
"""Parity with every golden case of the official implementation (../shared/fixtures/phi35v-golden).

Called exactly as the goldens were made: chat template -> processor(prompt, images) -> model(**inputs)
and model.generate(**inputs, ...). Tolerances from the fixtures README: ids, sizes and tokens exact;
pixels atol 1e-5; embeddings, hidden states and logits atol 1e-4.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cerebro.models.phi3_v import Phi3VForCausalLM, Phi3VProcessor
from tests.conftest import require_shared, shared_dir

PIXEL_ATOL = 1e-5
FLOAT_ATOL = 1e-4
pytestmark = pytest.mark.fixtures


def _case_ids() -> list[str]:
    manifest = shared_dir() / "fixtures/phi35v-golden/manifest.json"
    if not manifest.is_file():
        return ["fixtures-missing"]  # the test then fails on CI / skips elsewhere through require_shared
    return [c["id"] for c in json.loads(manifest.read_text())["cases"]]


@cache
def _golden() -> tuple[Path, dict]:
    root = require_shared("fixtures/phi35v-golden")
    manifest = json.loads((root / "manifest.json").read_text())
    return root, {c["id"]: c for c in manifest["cases"]}


@cache
def _model() -> Phi3VForCausalLM:
    return Phi3VForCausalLM.from_pretrained(require_shared("fixtures/phi35v-tiny"), torch_dtype=torch.float32)


@cache
def _processor(num_crops: int) -> Phi3VProcessor:
    return Phi3VProcessor.from_pretrained(require_shared("fixtures/phi35v-tiny"), num_crops=num_crops)


def _load_case(case_id: str):
    root, cases = _golden()
    case = cases[case_id]
    processor = _processor(case["num_crops"])
    prompt = processor.tokenizer.apply_chat_template(
        case["messages"], tokenize=False, add_generation_prompt=True
    )
    images = [Image.open(root / f) for f in case["images"]]
    inputs = processor(prompt, images=images or None, return_tensors="pt")
    return case, prompt, inputs, load_file(str(root / case["file"]))


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = (actual.double() - expected.double()).abs().max().item()
    assert diff <= atol, f"{what}: max abs diff {diff:.3g} > {atol}"


@pytest.mark.parametrize("case_id", _case_ids())
def test_processor_matches_golden(case_id: str) -> None:
    case, prompt, inputs, gold = _load_case(case_id)
    assert prompt == case["prompt"]
    assert torch.equal(inputs["input_ids"], gold["input_ids"])
    assert torch.equal(inputs["attention_mask"], gold["attention_mask"])
    if not case["images"]:
        assert "pixel_values" not in inputs
        return
    assert torch.equal(inputs["image_sizes"], gold["image_sizes"])
    assert torch.equal(inputs["num_img_tokens"], gold["num_img_tokens"])
    pv = inputs["pixel_values"]
    assert list(pv.shape) == case["pixel_values_shape"]
    _close(pv[..., ::16, ::16], gold["pixel_values_sub16"], PIXEL_ATOL, "pixel_values_sub16")
    _close(
        pv[..., 7::16, 11::16], gold["pixel_values_sub16_off7_11"], PIXEL_ATOL, "pixel_values_sub16_off7_11"
    )
    # Sums over 336x336 planes accumulate rounding; compare them relative to the plane size.
    _close(pv.double().sum((-1, -2)), gold["pixel_values_crop_sum"], PIXEL_ATOL * 336 * 336, "crop_sum")
    _close(
        (pv.double() ** 2).sum((-1, -2)),
        gold["pixel_values_crop_sumsq"],
        PIXEL_ATOL * 336 * 336,
        "crop_sumsq",
    )
    _close(pv.abs().amax((-1, -2)), gold["pixel_values_crop_absmax"], PIXEL_ATOL, "crop_absmax")
    if "pixel_values" in gold:
        _close(pv, gold["pixel_values"], PIXEL_ATOL, "pixel_values (full)")


@pytest.mark.parametrize("case_id", _case_ids())
def test_model_matches_golden(case_id: str) -> None:
    case, _, inputs, gold = _load_case(case_id)
    model = _model()
    with torch.no_grad():
        if case["images"]:
            crop0 = inputs["pixel_values"][0, :1]
            features = model.model.vision_embed_tokens.get_img_features(crop0)[0]
            _close(features, gold["clip_patch_features_img1_crop0"], FLOAT_ATOL, "clip features")
        embeds, _ = model.model.embed_inputs(
            inputs["input_ids"], inputs.get("pixel_values"), inputs.get("image_sizes")
        )
        if "inputs_embeds" in gold:
            _close(embeds, gold["inputs_embeds"], FLOAT_ATOL, "inputs_embeds")
        out = model(**inputs, output_hidden_states=True)
        hidden = model.model(inputs_embeds=embeds).last_hidden_state
        _close(hidden[:, -64:], gold["final_hidden_last64"], FLOAT_ATOL, "final hidden (last 64)")
        logits = out.logits
        _close(logits[:, -1], gold["logits_last"], FLOAT_ATOL, "last logits row")
        _close(logits.logsumexp(-1), gold["logits_logsumexp"], FLOAT_ATOL, "logsumexp per position")
        ids = gold["sampled_vocab_ids"]
        _close(logits[..., ids], gold["logits_at_sampled_ids"], FLOAT_ATOL, "logits at sampled ids")
        # Argmax must agree wherever the golden top-1 is not a near-tie.
        assert torch.equal(logits.argmax(-1), gold["logits_argmax"])


@pytest.mark.parametrize("case_id", _case_ids())
def test_generate_matches_golden(case_id: str) -> None:
    _, _, inputs, gold = _load_case(case_id)
    model = _model()
    n_prompt = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=32000,
            return_dict_in_generate=True,
            output_scores=True,
        )
    generated = out.sequences[:, n_prompt:]
    assert torch.equal(generated, gold["generated_ids"]), (
        f"{generated.tolist()} != {gold['generated_ids'].tolist()}"
    )
    scores = torch.cat(out.scores)  # 12, vocab: the logits of every step
    top = scores.topk(5, dim=-1)
    assert torch.equal(top.indices, gold["gen_step_top5_ids"])
    _close(top.values, gold["gen_step_top5_logits"], FLOAT_ATOL, "per-step top-5 logits")
    _close(scores.logsumexp(-1), gold["gen_step_logsumexp"], FLOAT_ATOL, "per-step logsumexp")
    _close(
        scores[:, gold["sampled_vocab_ids"]],
        gold["gen_step_logits_at_sampled_ids"],
        FLOAT_ATOL,
        "step logits",
    )
    if "fullseq_logits_last" in gold:
        # The LongRoPE case: a plain forward over prompt + generated tokens (long factors everywhere).
        full = torch.cat([inputs["input_ids"], generated], dim=1)
        assert full.shape[1] == int(gold["fullseq_input_len"])
        with torch.no_grad():
            logits = model(input_ids=full).logits
        _close(logits[:, -1], gold["fullseq_logits_last"], FLOAT_ATOL, "full-sequence last logits")
        assert torch.equal(logits[0, -16:].argmax(-1), gold["fullseq_logits_argmax_last16"].reshape(-1))
        _close(
            logits[0, -16:].logsumexp(-1),
            gold["fullseq_logits_logsumexp_last16"].reshape(-1),
            FLOAT_ATOL,
            "full-sequence logsumexp",
        )
