# Written with AI assistance; review before relying on it.
"""The caption family (cerebro/families/caption.py) end to end on a tiny random-weight captioner (a ViT
encoder and a GPT-2 decoder with cross-attention, written by cerebro.models.tiny_hf): the plain path
against transformers' own `generate`, with and without a caption prefix; requests one after another on
one PlainEngine sharing no state; and the runner, which picks the family from config.json and refuses
what a captioner cannot do.

No mocks: the real loader, image processor, tokenizer, engine thread and Cog runner. The captions are
meaningless but deterministic.
"""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from cerebro.core import ServingCore
from cerebro.engine import Job, PlainEngine
from cerebro.errors import CerebroError, ImageError, InputError, SchemaError, WeightsError
from cerebro.families.base import LoadOptions
from cerebro.families.caption import CaptionCache, CaptionFamily
from cerebro.generation import Sampler, SamplingParams
from cerebro.models.tiny_hf import write_tiny_captioner
from cerebro.predict import iterate, run_inputs
from cerebro.request import GenerationRequest
from tests.support import MetricsPredictor, plain_tokens, quadrants, set_up_predictor

pytestmark = pytest.mark.fixtures

CPU = torch.device("cpu")
MAX_NEW = 12
PREFIX = "a photo of"


@pytest.fixture(scope="module")
def captioner_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return write_tiny_captioner(tmp_path_factory.mktemp("tiny-captioner"), tokenizer_dir, seed=3)


@pytest.fixture(scope="module")
def family(captioner_dir: Path) -> CaptionFamily:
    return CaptionFamily.load(captioner_dir, LoadOptions(CPU, torch.float32, "sdpa"))


@pytest.fixture(scope="module")
def predictor(captioner_dir: Path) -> Iterator[MetricsPredictor]:
    # CEREBRO_FAMILY unset: auto; the warm-up request runs through the engine
    runner = set_up_predictor(captioner_dir, CEREBRO_WARMUP="true", CEREBRO_ALLOW_LOCAL_FILES="true")
    yield runner
    assert isinstance(runner.adapter, ServingCore)
    runner.adapter.engine.close()


def _stripes() -> Image.Image:
    img = Image.new("RGB", (40, 90), (240, 240, 240))
    for x in range(0, 40, 8):
        img.paste((0, 0, 0), (x, 0, x + 4, 90))
    return img


def _data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _request(img: Image.Image, prompt: str = "", max_new_tokens: int = MAX_NEW) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, images=(img,), max_new_tokens=max_new_tokens)


def _plain(family: CaptionFamily, request: GenerationRequest) -> list[int]:
    return plain_tokens(family, request, family.stop_ids)


# ------------------------------------------------------------------------------------------ loading


@pytest.mark.parametrize(
    ("gone", "code", "words"),
    [
        ("model.safetensors", "E2010", "holds no weights"),
        ("preprocessor_config.json", "E2012", "has no preprocessor_config.json"),
        ("tokenizer.json", "E2012", "has no tokenizer"),
        (
            "decoder.lm_head.weight",
            "E2011",
            "lacks 1 tensors the config needs (first: decoder.lm_head.weight)",
        ),
    ],
)
def test_a_broken_folder_is_one_coded_line(
    captioner_dir: Path, tmp_path: Path, gone: str, code: str, words: str
) -> None:
    broken = Path(shutil.copytree(captioner_dir, tmp_path / "broken"))
    if (broken / gone).exists():
        (broken / gone).unlink()
    else:  # a tensor: the weights file without it
        tensors = load_file(broken / "model.safetensors")
        del tensors[gone]
        save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightsError) as info:
        CaptionFamily.load(broken, LoadOptions(CPU, torch.float32, "sdpa"))
    assert (info.value.code, info.value.field) == (code, "CEREBRO_MODEL_DIR")
    assert words in info.value.message and "\n" not in info.value.message


# ------------------------------------------------------------------------------------------ plain path


@pytest.mark.parametrize("make_image", [quadrants, _stripes])
def test_plain_greedy_equals_generate_without_a_prompt(family: CaptionFamily, make_image: Any) -> None:
    request = _request(make_image())
    inputs = family.model_inputs(request)
    assert inputs.input_ids.tolist() == [[family.start_id]] and inputs.image_tokens == 0
    mine = _plain(family, request)
    with torch.no_grad():
        ref = family.model.generate(
            pixel_values=inputs.extras["pixel_values"], do_sample=False, max_new_tokens=MAX_NEW
        )
    assert ref[0, 0] == family.start_id
    assert mine == ref[0, 1:].tolist()
    assert mine


def test_plain_greedy_with_a_prefix_equals_generate_from_that_prefix(family: CaptionFamily) -> None:
    request = _request(quadrants(), prompt=PREFIX)
    inputs = family.model_inputs(request)
    prefix = family.tokenizer(PREFIX, add_special_tokens=False)["input_ids"]
    assert inputs.input_ids.tolist() == [[family.start_id, *prefix]]
    mine = _plain(family, request)
    with torch.no_grad():
        ref = family.model.generate(
            pixel_values=inputs.extras["pixel_values"],
            decoder_input_ids=inputs.input_ids,
            do_sample=False,
            max_new_tokens=MAX_NEW,
        )
    assert mine == ref[0, inputs.input_ids.shape[1] :].tolist()
    assert mine != _plain(family, _request(quadrants()))  # the prefix changes the caption


def test_special_token_text_in_a_prompt_stays_text(family: CaptionFamily) -> None:
    eos = family.tokenizer.eos_token
    ids = family.model_inputs(_request(quadrants(), prompt=f"a {eos} b")).input_ids[0].tolist()
    assert ids[0] == family.start_id
    assert not set(ids[1:]) & (family.stop_ids | {family.start_id})
    assert family.model_inputs(_request(quadrants(), prompt="   ")).input_ids.tolist() == [[family.start_id]]


def test_the_wrapper_keeps_the_encoder_output_in_the_requests_cache(family: CaptionFamily) -> None:
    model = family.plain_model()
    pixels = family.model_inputs(_request(quadrants())).extras["pixel_values"]
    start = torch.tensor([[family.start_id]])
    with torch.inference_mode():
        with pytest.raises(ValueError, match="pixel_values"):
            model(input_ids=start, past_key_values=model.new_cache(), use_cache=True, logits_to_keep=1)
        cache = model.new_cache()
        assert isinstance(cache, CaptionCache)
        out = model(
            input_ids=start, past_key_values=cache, use_cache=True, logits_to_keep=1, pixel_values=pixels
        )
        assert out.logits.shape == (1, 1, family.vocab_size)
        assert cache.encoder_hidden_states is not None and cache.get_seq_length() == 1
        with pytest.raises(ValueError, match="fresh cache"):
            model(
                input_ids=start, past_key_values=cache, use_cache=True, logits_to_keep=1, pixel_values=pixels
            )
        step = model(input_ids=start, past_key_values=cache, use_cache=True, logits_to_keep=1)
        assert step.logits.shape == (1, 1, family.vocab_size) and cache.get_seq_length() == 2


# ------------------------------------------------------------------------------------------ the engine


def _job(family: CaptionFamily, request: GenerationRequest) -> Job:
    inputs = family.model_inputs(request)
    return Job(
        input_ids=inputs.input_ids,
        extras=inputs.extras,
        max_new_tokens=request.max_new_tokens,
        sampler=Sampler(SamplingParams(), CPU),
        stop_ids=family.stop_ids,
    )


def test_requests_one_after_another_on_a_plain_engine_share_no_state(family: CaptionFamily) -> None:
    requests = [_request(quadrants()), _request(_stripes(), prompt=PREFIX), _request(_stripes())]
    alone = [_plain(family, r) for r in requests]
    assert alone[0] != alone[2]  # different images, different captions
    model = family.plain_model()
    pixels = [family.model_inputs(r).extras["pixel_values"] for r in requests]
    with torch.inference_mode():
        assert not torch.allclose(model.encode(pixels[0]), model.encode(pixels[2]))
    engine = PlainEngine(model, capacity=family.max_positions)
    try:
        for order in ([0, 1, 2], [2, 0, 1]):
            jobs = [_job(family, requests[k]) for k in order]
            for job in jobs:  # all queued at once: the engine runs them one after another
                engine.submit(job)
            assert [list(job.stream) for job in jobs] == [alone[k] for k in order]
    finally:
        engine.close()


# ------------------------------------------------------------------------------------------ the runner


def _pieces(predictor: MetricsPredictor, **inputs: Any) -> list[str]:
    predictor.metrics = {}
    return list(iterate(predictor.run(**run_inputs(**inputs))))


def test_the_runner_picks_the_family_from_config_and_streams_the_plain_caption(
    predictor: MetricsPredictor,
) -> None:
    adapter = predictor.adapter
    assert isinstance(adapter, ServingCore) and isinstance(adapter.family, CaptionFamily)
    assert isinstance(adapter.engine, PlainEngine)
    assert adapter.describe()["decoder"] == "gpt2"
    family = adapter.family
    for prompt in ("", PREFIX):
        pieces = _pieces(predictor, prompt=prompt, image=_data_uri(quadrants()), max_new_tokens=6)
        tokens = _plain(family, _request(quadrants(), prompt=prompt, max_new_tokens=6))
        answer = [t for t in tokens if t not in family.stop_ids]
        assert "".join(pieces) == family.tokenizer.decode(answer, skip_special_tokens=True)
        assert "".join(pieces)
        assert predictor.metrics["output_token_count"] == len(tokens)
        n_prompt = family.model_inputs(_request(quadrants(), prompt=prompt)).input_ids.shape[1]
        assert predictor.metrics["input_token_count"] == n_prompt
        assert predictor.metrics["time_to_first_token"] > 0


def test_the_runner_reads_a_local_file_when_allowed(predictor: MetricsPredictor, tmp_path: Path) -> None:
    path = tmp_path / "stripes.png"
    _stripes().save(path)
    by_path = _pieces(predictor, image=str(path), max_new_tokens=6)
    assert "".join(by_path) == "".join(_pieces(predictor, image=_data_uri(_stripes()), max_new_tokens=6))


@pytest.mark.parametrize(
    ("inputs", "error", "code", "field"),
    [
        ({"json_schema": '{"type": "string"}'}, SchemaError, "E1303", "json_schema"),
        ({"num_crops": 4}, InputError, "E1002", "num_crops"),
        ({"system_prompt": "You are a poet."}, InputError, "E1002", "system_prompt"),
        ({"images": ["IMAGE", "IMAGE"], "image": None}, ImageError, "E1100", "images"),
    ],
    ids=["json_schema", "num_crops", "system_prompt", "two_images"],
)
def test_the_runner_refuses_what_a_captioner_cannot_do(
    predictor: MetricsPredictor, inputs: dict[str, Any], error: type[CerebroError], code: str, field: str
) -> None:
    uri = _data_uri(quadrants())
    inputs = {"image": uri, **inputs}
    if inputs.get("images"):
        inputs["images"] = [uri, uri]
    with pytest.raises(error) as info:
        _pieces(predictor, **inputs)
    assert (info.value.code, info.value.field) == (code, field)
    assert predictor.metrics["output_token_count"] == 0
