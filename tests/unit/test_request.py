# Written with AI assistance; review before relying on it.
"""Request validation in cerebro.request: numeric limits, prompts, image counts and the JSON-schema input.

Images are real PNG files written at test time and loaded through cerebro.utils.load_image, the
loader the runner passes in.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
from typing import Any

import pytest
from PIL import Image

from cerebro.errors import CerebroError, ImageError, InputError, PromptError, SchemaError
from cerebro.request import (
    LIMITS,
    MAX_PROMPT_CHARS,
    MAX_SCHEMA_CHARS,
    MAX_SYSTEM_PROMPT_CHARS,
    GenerationRequest,
    Limit,
    build_request,
    parse_json_schema,
)
from cerebro.utils import load_image

INTEGER_FIELDS = sorted(name for name, limit in LIMITS.items() if limit.integer)
FLOAT_FIELDS = sorted(name for name, limit in LIMITS.items() if not limit.integer)


def _shown(number: float) -> str:
    """A limit as a caller should read it: exact, without a needless '.0' or exponent."""
    return str(int(number)) if float(number).is_integer() else repr(number)


def _below(limit: Limit) -> float:
    if limit.low_exclusive:
        return limit.low  # the bound itself is already out of range
    return limit.low - 1 if limit.integer else limit.low - 0.01


def _above(limit: Limit) -> float:
    return limit.high + 1 if limit.integer else limit.high + 0.01


def _raises_input_error(field: str) -> pytest.RaisesExc[InputError]:
    return pytest.raises(InputError, match=rf"^E1001 {re.escape(field)}\b")


# ---------------------------------------------------------------------------------- numeric limits


def _range_cases() -> list[Any]:
    cases = []
    for name, limit in sorted(LIMITS.items()):
        cases.append(pytest.param(name, _below(limit), limit.low, id=f"{name}-below"))
        cases.append(pytest.param(name, _above(limit), limit.high, id=f"{name}-above"))
    return cases


@pytest.mark.parametrize(("name", "value", "bound"), _range_cases())
def test_out_of_range_names_field_value_and_limit(name: str, value: float, bound: float) -> None:
    with _raises_input_error(name) as info:
        LIMITS[name].check(name, value)
    err = info.value
    assert err.code == "E1001"
    assert err.field == name
    assert isinstance(err, ValueError)
    assert not isinstance(err, (PromptError, ImageError, SchemaError))
    assert repr(value) in err.message
    assert re.search(rf"(at least|greater than|at most) {re.escape(_shown(bound))}(?![\d.e])", err.message), (
        err.message
    )


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_bounds_are_inclusive_unless_exclusive(name: str) -> None:
    limit = LIMITS[name]
    low = limit.low + (1e-6 if limit.low_exclusive else 0)
    for value in (low, limit.high):
        got = limit.check(name, value)
        assert got == pytest.approx(value)
        assert type(got) is (int if limit.integer else float)


@pytest.mark.parametrize("name", ["top_p", "repetition_penalty"])
def test_exclusive_low_bound_says_greater_than(name: str) -> None:
    with _raises_input_error(name) as info:
        LIMITS[name].check(name, 0.0)
    assert "greater than 0" in info.value.message


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_none_gives_the_default(name: str) -> None:
    assert LIMITS[name].check(name, None) == LIMITS[name].default


@pytest.mark.parametrize("name", sorted(LIMITS))
@pytest.mark.parametrize("value", ["1", "", True, False, [1], {"v": 1}], ids=repr)
def test_wrong_type_is_refused(name: str, value: Any) -> None:
    with _raises_input_error(name) as info:
        LIMITS[name].check(name, value)
    assert "must be a number" in info.value.message
    assert type(value).__name__ in info.value.message
    assert repr(value) in info.value.message


@pytest.mark.parametrize("name", INTEGER_FIELDS)
def test_integer_fields_refuse_fractions(name: str) -> None:
    value = LIMITS[name].low + 1.5
    with _raises_input_error(name) as info:
        LIMITS[name].check(name, value)
    assert "must be an integer" in info.value.message
    assert repr(value) in info.value.message


@pytest.mark.parametrize("name", INTEGER_FIELDS)
def test_integer_fields_take_integral_floats_as_int(name: str) -> None:
    value = float(LIMITS[name].low + 1)
    got = LIMITS[name].check(name, value)
    assert got == value
    assert type(got) is int


@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_float_fields_take_ints_as_float(name: str) -> None:
    got = LIMITS[name].check(name, 1)
    assert got == 1.0
    assert type(got) is float


@pytest.mark.parametrize("name", sorted(LIMITS))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=repr)
def test_nan_and_infinity_are_refused(name: str, value: float) -> None:
    with _raises_input_error(name) as info:
        LIMITS[name].check(name, value)
    assert repr(value) in info.value.message


# ------------------------------------------------------------------------------------ build_request


@pytest.fixture
def png(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "red.png"
    Image.new("RGB", (7, 5), (255, 0, 0)).save(path)
    return path


class Loader:
    """The real image loader, counting its calls (the runner passes one like it)."""

    def __init__(self) -> None:
        self.fields: list[str] = []

    def __call__(self, source: Any, field: str) -> Image.Image:
        self.fields.append(field)
        return load_image(source, field=field, local_files=True)  # files this test wrote


def _build(images: list[Any], *, max_images: int = 8, loader: Loader | None = None, **inputs: Any):
    return build_request(
        prompt=inputs.pop("prompt", "What is this?"),
        image_sources=[(f"images[{i}]", src) for i, src in enumerate(images)],
        load_image=loader or Loader(),
        max_images=max_images,
        **inputs,
    )


def test_a_valid_request_is_built_with_defaults_and_loaded_images(png: pathlib.Path) -> None:
    loader = Loader()
    request = _build([png, str(png)], loader=loader, system_prompt="  Be brief.  ")
    assert isinstance(request, GenerationRequest)
    assert loader.fields == ["images[0]", "images[1]"]
    assert [img.size for img in request.images] == [(7, 5), (7, 5)]
    assert request.images[0].convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    assert request.system_prompt == "Be brief."
    assert request.json_schema is None
    for name, limit in LIMITS.items():
        assert getattr(request, name) == limit.default


def test_numbers_and_schema_reach_the_request(png: pathlib.Path) -> None:
    request = _build(
        [png],
        max_new_tokens=7.0,
        temperature=1,
        top_k=5,
        seed=42,
        num_crops=4,
        json_schema='{"type": "integer"}',
    )
    assert (request.max_new_tokens, request.temperature, request.top_k) == (7, 1.0, 5)
    assert (request.seed, request.num_crops) == (42, 4)
    assert type(request.max_new_tokens) is int and type(request.temperature) is float
    assert request.json_schema == {"type": "integer"}


@pytest.mark.parametrize("prompt", ["", " ", "\n\t  ", None, 5], ids=repr)
def test_empty_prompt_is_e1010(png: pathlib.Path, prompt: Any) -> None:
    with pytest.raises(PromptError, match=r"^E1010 prompt is empty") as info:
        _build([png], prompt=prompt)
    assert info.value.code == "E1010"
    assert info.value.field == "prompt"
    assert isinstance(info.value, InputError)


def test_prompt_at_the_limit_is_accepted_and_one_more_is_e1011(png: pathlib.Path) -> None:
    assert len(_build([png], prompt="x" * MAX_PROMPT_CHARS).prompt) == MAX_PROMPT_CHARS
    with pytest.raises(PromptError) as info:
        _build([png], prompt="x" * (MAX_PROMPT_CHARS + 1))
    err = info.value
    assert (err.code, err.field) == ("E1011", "prompt")
    assert f"prompt is {MAX_PROMPT_CHARS + 1} characters; the limit is {MAX_PROMPT_CHARS}" in err.message


def test_system_prompt_too_long_is_e1011(png: pathlib.Path) -> None:
    assert _build([png], system_prompt="s" * MAX_SYSTEM_PROMPT_CHARS).system_prompt is not None
    with pytest.raises(PromptError) as info:
        _build([png], system_prompt="s" * (MAX_SYSTEM_PROMPT_CHARS + 1))
    err = info.value
    assert (err.code, err.field) == ("E1011", "system_prompt")
    assert str(MAX_SYSTEM_PROMPT_CHARS + 1) in err.message
    assert f"the limit is {MAX_SYSTEM_PROMPT_CHARS}" in err.message


@pytest.mark.parametrize("system_prompt", [None, "", "   \n"], ids=repr)
def test_blank_system_prompt_becomes_none(png: pathlib.Path, system_prompt: str | None) -> None:
    assert _build([png], system_prompt=system_prompt).system_prompt is None


def test_no_image_is_e1100() -> None:
    with pytest.raises(ImageError, match=r"^E1100 no image given") as info:
        _build([])
    assert (info.value.code, info.value.field) == ("E1100", "image")


def test_too_many_images_is_e1100_naming_the_limit_and_loads_none(png: pathlib.Path) -> None:
    loader = Loader()
    assert len(_build([png] * 3, max_images=3).images) == 3
    with pytest.raises(ImageError) as info:
        _build([png] * 4, max_images=3, loader=loader)
    err = info.value
    assert (err.code, err.field) == ("E1100", "images")
    assert "4 images given; the limit is 3" in err.message
    assert loader.fields == []


def test_cheap_checks_run_before_any_image_is_loaded(tmp_path: pathlib.Path) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    loader = Loader()
    with _raises_input_error("temperature"):
        _build([corrupt], loader=loader, temperature=9.0)
    with pytest.raises(SchemaError):
        _build([corrupt], loader=loader, json_schema="{")
    assert loader.fields == []
    with pytest.raises(ImageError) as info:  # with valid inputs, the image is loaded and fails
        _build([corrupt], loader=loader)
    assert (info.value.code, info.value.field) == ("E1103", "images[0]")


def test_unknown_numeric_input_is_an_input_error(png: pathlib.Path) -> None:
    with pytest.raises(InputError, match="temprature") as info:
        _build([png], temprature=0.5)
    assert info.value.field == "temprature"
    assert info.value.code == "E1001"


@pytest.mark.parametrize(("name", "value"), [("max_new_tokens", 0), ("top_k", -1), ("num_crops", 17)])
def test_build_request_checks_every_limit(png: pathlib.Path, name: str, value: int) -> None:
    with _raises_input_error(name) as info:
        _build([png], **{name: value})
    assert info.value.field == name


# -------------------------------------------------------------------------------- parse_json_schema


@pytest.mark.parametrize("text", [None, ""], ids=repr)
def test_empty_schema_is_none(text: str | None) -> None:
    assert parse_json_schema(text) is None


@pytest.mark.parametrize("text", ["   ", "\n\t"], ids=repr)
def test_a_whitespace_only_schema_is_e1300_not_no_schema(text: str) -> None:
    with pytest.raises(SchemaError, match=r"^E1300 json_schema is only whitespace") as info:
        parse_json_schema(text)
    assert info.value.field == "json_schema"


def test_a_valid_schema_is_returned_as_a_dict() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}, "required": ["n"]}
    assert parse_json_schema(json.dumps(schema)) == schema


def _schema_error(text: str) -> SchemaError:
    with pytest.raises(SchemaError, match=r"^E1300 json_schema ") as info:
        parse_json_schema(text)
    assert info.value.code == "E1300"
    assert info.value.field == "json_schema"
    assert isinstance(info.value, InputError) and isinstance(info.value, CerebroError)
    return info.value


@pytest.mark.parametrize("text", ["{", "{'type': 'object'}", "not json", '{"type": "object",}'])
def test_invalid_json_is_e1300(text: str) -> None:
    assert "not valid JSON" in _schema_error(text).message


@pytest.mark.parametrize(("text", "kind"), [("[1, 2]", "list"), ('"object"', "str"), ("3", "int")])
def test_non_object_is_e1300(text: str, kind: str) -> None:
    assert f"must be a JSON object; got {kind}" in _schema_error(text).message


@pytest.mark.parametrize(
    "schema",
    [{"type": 5}, {"type": "integer", "minimum": "zero"}, {"properties": []}, {"required": "name"}],
    ids=json.dumps,
)
def test_invalid_json_schema_is_e1300(schema: dict[str, Any]) -> None:
    assert "not a valid JSON Schema" in _schema_error(json.dumps(schema)).message


def test_oversize_schema_is_e1300_naming_size_and_limit() -> None:
    def of_length(n: int) -> str:
        head, tail = '{"description": "', '"}'
        return head + "x" * (n - len(head) - len(tail)) + tail

    assert parse_json_schema(of_length(MAX_SCHEMA_CHARS)) is not None
    err = _schema_error(of_length(MAX_SCHEMA_CHARS + 1))
    assert f"{MAX_SCHEMA_CHARS + 1} characters; the limit is {MAX_SCHEMA_CHARS}" in err.message
