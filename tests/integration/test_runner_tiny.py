# Written with AI assistance; review before relying on it.
"""The runner end to end on a tiny random-weight checkpoint: Predictor.setup() loads the real
serving core with the Phi-3.5 family (chosen from config.json) through the real loader, and run()
streams what the real engine generates.

The model's answers are meaningless, but they are deterministic, so tests compare runs with each
other and with transformers' own `generate`. Open-ended JSON strings and integers never end with
random weights, so the schemas here bound their lengths and ranges.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch
from PIL import Image

from cerebro.core import ServingCore
from cerebro.errors import (
    CapacityError,
    ConfigError,
    ImageError,
    InputError,
    PromptError,
    SchemaError,
    WeightsError,
)
from cerebro.families.phi3_v import Phi3VFamily
from cerebro.generation import Sampler, SamplingParams, generate_tokens
from cerebro.predict import Predictor, iterate, run_inputs
from cerebro.request import GenerationRequest
from cerebro.utils import load_image
from tests.support import MetricsPredictor, quadrants, set_up_predictor

pytestmark = pytest.mark.fixtures


def _setup(model_dir: Path, **env: str) -> MetricsPredictor:
    """A predictor set up from the environment; env values override the defaults used here."""
    # These tests pass the files they wrote by path.
    return set_up_predictor(
        model_dir, **{"CEREBRO_WARMUP": "false", "CEREBRO_ALLOW_LOCAL_FILES": "true", **env}
    )


@pytest.fixture(scope="module")
def predictor(tiny_model_dir: Path) -> MetricsPredictor:
    return _setup(tiny_model_dir)


@pytest.fixture(scope="module")
def picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "quadrants.png"
    quadrants().save(path)
    return path


@pytest.fixture(scope="module")
def other_picture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "thin.png"
    Image.new("RGB", (30, 90), (240, 240, 240)).save(path)
    return path


def _inputs(**overrides: Any) -> dict[str, Any]:
    return run_inputs(
        **{"prompt": "Describe the image.", "max_new_tokens": 12, "seed": 0, "num_crops": 1, **overrides}
    )


def _pieces(predictor: MetricsPredictor, **overrides: Any) -> list[str]:
    predictor.metrics = {}
    return list(iterate(predictor.run(**_inputs(**overrides))))


def _text(predictor: MetricsPredictor, **overrides: Any) -> str:
    return "".join(_pieces(predictor, **overrides))


def _adapter(predictor: Predictor) -> ServingCore:
    assert isinstance(predictor.adapter, ServingCore)  # the real serving core, from the real registry
    assert isinstance(predictor.adapter.family, Phi3VFamily)  # chosen from config.json's model_type
    return predictor.adapter


def _greedy_tokens(predictor: Predictor, request: GenerationRequest, stop_ids: frozenset[int]) -> list[int]:
    adapter = _adapter(predictor)
    inputs = adapter.family.model_inputs(request)
    sampler = Sampler(SamplingParams(temperature=0.0), adapter.model.device)
    return list(
        generate_tokens(
            adapter.model,
            {"input_ids": inputs.input_ids, **inputs.extras},
            max_new_tokens=request.max_new_tokens,
            sampler=sampler,
            stop_ids=stop_ids,
        )
    )


# ------------------------------------------------------------------------------- streaming, sampling


def test_streaming_pieces_concatenate_to_the_engines_answer(
    predictor: MetricsPredictor, picture: Path
) -> None:
    pieces = _pieces(predictor, image=picture, max_new_tokens=12)
    assert len([p for p in pieces if p]) >= 3
    request = GenerationRequest(
        prompt="Describe the image.",
        images=(load_image(picture, field="image", local_files=True),),
        max_new_tokens=12,
        num_crops=1,
    )
    adapter = _adapter(predictor)
    tokens = _greedy_tokens(predictor, request, adapter.stop_ids)
    answer = [t for t in tokens if t not in adapter.stop_ids]
    assert "".join(pieces) == adapter.tokenizer.decode(answer, skip_special_tokens=True)
    assert predictor.metrics["output_token_count"] == len(tokens)
    assert predictor.metrics["input_token_count"] == adapter.family.model_inputs(request).input_ids.shape[1]
    assert predictor.metrics["time_to_first_token"] > 0
    assert predictor.metrics["tokens_per_second"] > 0


def test_greedy_is_deterministic(predictor: MetricsPredictor, picture: Path) -> None:
    first = _text(predictor, image=picture, seed=1)
    assert first
    assert _text(predictor, image=picture, seed=2) == first  # the seed does not matter when greedy
    assert _text(predictor, image=picture, seed=None) == first


def test_sampling_repeats_with_a_seed_and_differs_across_seeds(
    predictor: MetricsPredictor, picture: Path
) -> None:
    sample = {seed: _text(predictor, image=picture, temperature=1.0, seed=seed) for seed in (1, 2, 3)}
    assert _text(predictor, image=picture, temperature=1.0, seed=1) == sample[1]
    assert len(set(sample.values())) == 3
    assert _text(predictor, image=picture, temperature=0.0) not in sample.values()


@pytest.mark.parametrize("n_images", [1, 2])
def test_engine_greedy_tokens_equal_transformers_generate(
    predictor: MetricsPredictor, picture: Path, other_picture: Path, n_images: int
) -> None:
    images = tuple(load_image(p, field="image", local_files=True) for p in (picture, other_picture))[
        :n_images
    ]
    request = GenerationRequest(prompt="What is this?", images=images, max_new_tokens=16, num_crops=2)
    mine = _greedy_tokens(predictor, request, frozenset())
    model = _adapter(predictor).model
    inputs = _adapter(predictor).family.model_inputs(request)
    n_prompt = inputs.input_ids.shape[1]
    with torch.no_grad():
        ref = model.generate(
            input_ids=inputs.input_ids,
            **inputs.extras,
            max_new_tokens=16,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=32000,
        )
    assert mine == ref[0, n_prompt:].tolist()
    assert len(mine) == 16


# -------------------------------------------------------------------------------------- JSON schemas

SCHEMAS: dict[str, dict[str, Any]] = {
    "object": {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": 0, "maximum": 999},
            "label": {"type": "string", "maxLength": 8},
            "ok": {"type": "boolean"},
        },
        "required": ["count", "label", "ok"],
        "additionalProperties": False,
    },
    "array": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"x": {"type": "integer", "minimum": -100, "maximum": 100}},
            "required": ["x"],
        },
        "minItems": 2,
        "maxItems": 3,
    },
    "enum": {"enum": ["red", "green", "blue"]},
    "number": {"type": "number", "minimum": -5, "maximum": 5},
    "nested": {
        "type": "object",
        "properties": {
            "outer": {
                "type": "object",
                "properties": {
                    "inner": {"type": "string", "minLength": 1, "maxLength": 10},
                    "n": {"type": "integer", "minimum": 0, "maximum": 9},
                },
                "required": ["inner", "n"],
            }
        },
        "required": ["outer"],
    },
}


@pytest.mark.parametrize("sampling", [(0.0, 0), (1.0, 1), (1.0, 2)], ids=["greedy", "seed1", "seed2"])
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_output_parses_and_validates(
    predictor: MetricsPredictor, picture: Path, name: str, sampling: tuple[float, int]
) -> None:
    temperature, seed = sampling
    text = _text(
        predictor,
        image=picture,
        json_schema=json.dumps(SCHEMAS[name]),
        max_new_tokens=200,
        temperature=temperature,
        seed=seed,
    )
    jsonschema.validate(json.loads(text), SCHEMAS[name])
    assert text == text.strip()  # compact: no whitespace around the value
    assert predictor.metrics["output_token_count"] < 200  # it ended by itself, not at the limit


def test_invalid_schema_is_e1300_before_any_generation(predictor: MetricsPredictor, picture: Path) -> None:
    with pytest.raises(SchemaError, match=r"^E1300 json_schema is not a valid JSON Schema"):
        _pieces(predictor, image=picture, json_schema='{"type": 5}')
    assert predictor.metrics["input_token_count"] == 0
    assert predictor.metrics["output_token_count"] == 0


def test_cut_off_json_is_the_callers_e1302(predictor: MetricsPredictor, picture: Path) -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string", "minLength": 50}}, "required": ["s"]}
    with pytest.raises(InputError) as info:
        _pieces(predictor, image=picture, json_schema=json.dumps(schema), max_new_tokens=3)
    err = info.value
    assert (err.code, err.field) == ("E1302", "max_new_tokens")
    assert "cut off" in err.message and "max_new_tokens=3" in err.message
    assert predictor.metrics["output_token_count"] == 3


# ------------------------------------------------------------------------------------ prompts, limits


@pytest.mark.parametrize(
    ("prompt", "n_images"),
    [
        ("<|image_2|>\nWhat is this?", 1),
        ("<|image_1|>\nCompare.", 2),
        ("<|image_2|>\n<|image_1|>\nCompare.", 2),
        ("<|image_1|><|image_1|>\nCompare.", 2),
    ],
)
def test_image_tags_that_do_not_match_the_images_are_e1012(
    predictor: MetricsPredictor, picture: Path, prompt: str, n_images: int
) -> None:
    with pytest.raises(PromptError, match=r"^E1012 ") as info:
        _pieces(predictor, images=[picture] * n_images, prompt=prompt)
    assert info.value.field == "prompt"
    assert predictor.metrics["output_token_count"] == 0


def test_a_prompt_without_tags_gets_one_per_image(
    predictor: MetricsPredictor, picture: Path, other_picture: Path
) -> None:
    images = [picture, other_picture]
    untagged = _text(predictor, images=images, prompt="Compare them.", num_crops=2)
    n_untagged = predictor.metrics["input_token_count"]
    tagged = _text(predictor, images=images, prompt="<|image_1|>\n<|image_2|>\nCompare them.", num_crops=2)
    assert untagged == tagged
    assert n_untagged == predictor.metrics["input_token_count"]
    _text(predictor, images=images[:1], prompt="Compare them.", num_crops=2)
    assert predictor.metrics["input_token_count"] < n_untagged  # the second image's tokens were there


def test_prompt_over_the_context_is_e1011_naming_counts_and_limit(
    predictor: MetricsPredictor, tiny_model_dir: Path, picture: Path
) -> None:
    _text(predictor, image=picture, max_new_tokens=1)
    n_prompt = predictor.metrics["input_token_count"]
    limit = n_prompt + 20
    small = _setup(tiny_model_dir, CEREBRO_MAX_CONTEXT_TOKENS=str(limit))
    assert _pieces(small, image=picture, max_new_tokens=20)  # exactly at the limit: fine
    with pytest.raises(PromptError) as info:
        _pieces(small, image=picture, max_new_tokens=21)
    err = info.value
    assert (err.code, err.field) == ("E1011", "prompt")
    assert f"the prompt is {n_prompt} tokens" in err.message
    assert "max_new_tokens is 21" in err.message
    assert f"{n_prompt + 21} in all; the limit is {limit}" in err.message
    assert small.metrics["output_token_count"] == 0


def test_request_beyond_a_rows_kv_capacity_is_e2020_and_the_runner_goes_on(
    tiny_model_dir: Path, picture: Path
) -> None:
    # 2 rows sharing 2048 tokens: each row holds 1024, the largest request this deployment serves.
    small = _setup(tiny_model_dir, CEREBRO_MAX_BATCH="2", CEREBRO_KV_CACHE_TOKENS="2048")
    assert small.adapter.describe()["row_capacity_tokens"] == "1024"
    _pieces(small, image=picture, max_new_tokens=1, num_crops=1)
    n_prompt = small.metrics["input_token_count"]
    with pytest.raises(CapacityError) as info:
        _pieces(small, image=picture, max_new_tokens=1024 - n_prompt + 1, num_crops=1)
    err = info.value
    assert (err.code, err.field, err.is_caller_error) == ("E2020", "max_new_tokens", False)
    assert (
        f"needs 1025 tokens of KV cache ({n_prompt} prompt + {1025 - n_prompt} max_new_tokens)" in err.message
    )
    assert "at most 1024 per request" in err.message
    assert _pieces(small, image=picture, max_new_tokens=1024 - n_prompt, num_crops=1)  # exactly a row: fine


@pytest.mark.parametrize("num_crops", [0, 17, 2.5])
def test_num_crops_out_of_range_is_e1001(
    predictor: MetricsPredictor, picture: Path, num_crops: float
) -> None:
    with pytest.raises(InputError, match=r"^E1001 num_crops ") as info:
        _pieces(predictor, image=picture, num_crops=num_crops)
    assert info.value.field == "num_crops"


# -------------------------------------------------------------------------------------------- images

FORMATS = [
    ("JPEG", "jpg", {"quality": 95}),
    ("PNG", "png", {}),
    ("WEBP", "webp", {"lossless": True}),
    ("GIF", "gif", {}),
    ("BMP", "bmp", {}),
    ("TIFF", "tiff", {}),
]


@pytest.mark.parametrize(("fmt", "ext", "params"), FORMATS, ids=[f[0] for f in FORMATS])
def test_every_accepted_format_works_end_to_end(
    predictor: MetricsPredictor, picture: Path, tmp_path: Path, fmt: str, ext: str, params: dict[str, Any]
) -> None:
    path = tmp_path / f"picture.{ext}"
    quadrants().save(path, format=fmt, **params)
    with Image.open(path) as check:
        assert check.format == fmt
    text = _text(predictor, image=path, max_new_tokens=6)
    assert text
    if fmt != "JPEG":  # lossless: the same pixels, so the same greedy answer as the PNG
        assert text == _text(predictor, image=picture, max_new_tokens=6)


def test_decompression_bomb_is_e1102(predictor: MetricsPredictor, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("1", (8000, 8000)).save(bomb)
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageError) as info:
        _pieces(predictor, images=[bomb])
    err = info.value
    assert (err.code, err.field) == ("E1102", "images[0]")
    assert "8000x8000" in err.message and "50000000" in err.message


# -------------------------------------------------------------------------------------- setup, warm-up


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def setup_log() -> Iterator[_Records]:
    """What cerebro.predict logs (its package logger does not propagate to pytest's handler)."""
    handler = _Records()
    logger = logging.getLogger("cerebro.predict")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _warmup_s(log: _Records) -> float:
    (line,) = [m for m in log.messages if "warmup_s=" in m]
    match = re.search(r"warmup_s=([\d.]+)", line)
    assert match, line
    return float(match.group(1))


def test_setup_runs_the_warmup_when_enabled(tiny_model_dir: Path, setup_log: _Records) -> None:
    _setup(tiny_model_dir, CEREBRO_WARMUP="true")
    assert _warmup_s(setup_log) > 0
    setup_log.messages.clear()
    _setup(tiny_model_dir, CEREBRO_WARMUP="false")
    assert _warmup_s(setup_log) == 0


def test_warmup_fails_setup_for_a_model_that_loads_but_cannot_generate(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "no-chat-template"
    shutil.copytree(tiny_model_dir, broken)
    config = json.loads((broken / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (broken / "tokenizer_config.json").write_text(json.dumps(config))
    _setup(broken, CEREBRO_WARMUP="false")  # loading alone does not notice
    with pytest.raises(ValueError, match="chat_template"):
        _setup(broken, CEREBRO_WARMUP="true")


@pytest.fixture
def truncated_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> Path:
    broken = tmp_path / "truncated"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    with weights.open("r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    return broken


def test_a_truncated_checkpoint_fails_setup(truncated_checkpoint: Path) -> None:
    with pytest.raises(Exception, match=r"(?i)deseriali|safetensors|truncat|incomplete"):
        _setup(truncated_checkpoint)


def test_a_truncated_checkpoint_fails_with_a_weights_error_naming_the_file(
    truncated_checkpoint: Path,
) -> None:
    with pytest.raises(WeightsError) as info:
        _setup(truncated_checkpoint)
    assert info.value.code.startswith("E201")
    assert "model.safetensors" in info.value.message


@pytest.mark.parametrize(
    ("missing", "code", "named"),
    [("model.safetensors", "E2010", "model.safetensors"), ("tokenizer.json", "E2012", "tokenizer.json")],
)
def test_a_missing_checkpoint_file_is_a_coded_weights_error_at_setup(
    tiny_model_dir: Path, tmp_path: Path, missing: str, code: str, named: str
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / missing).unlink()
    with pytest.raises(WeightsError, match=rf"^{code} ") as info:
        _setup(broken)
    assert str(broken) in info.value.message and named in info.value.message


@pytest.mark.parametrize(
    ("variable", "value"),
    [("CEREBRO_ATTENTION", "fast"), ("CEREBRO_DTYPE", "float8"), ("CEREBRO_ENGINE", "turbo")],
)
def test_a_bad_deployment_setting_is_a_config_error_naming_it(
    tiny_model_dir: Path, variable: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=r"^E2001 ") as info:
        _setup(tiny_model_dir, **{variable: value})
    assert info.value.field == variable
    assert not info.value.is_caller_error
