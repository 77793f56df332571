# Written with AI assistance; review before relying on it.
"""One prediction request, validated: raw runner inputs in, a `GenerationRequest` out.

The ranges in `LIMITS` are the single source for both the Cog input declarations (predict.py builds
its `Input(ge=..., le=...)` from them, so the generated OpenAPI schema agrees) and this validation,
which runs inside `run()` because a Cog server started without a schema validates nothing.

Model-agnostic: prompt layout (image tags, chat template) belongs to the adapter. Not here: image
decoding (cerebro/utils/images.py), Cog types, tensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from cerebro.errors import ImageError, InputError, PromptError, SchemaError
from cerebro.schema_guard import MAX_JSON_DEPTH, check_json_depth, vet_schema


@dataclass(frozen=True)
class Limit:
    """An inclusive numeric range with its default (None = optional input)."""

    low: float
    high: float
    default: float | int | None
    integer: bool = False
    low_exclusive: bool = False

    def check(self, field: str, value: Any) -> Any:
        if value is None:
            return self.default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{field} must be a number; got {type(value).__name__} {value!r}", field=field)
        if self.integer and (isinstance(value, float) and not value.is_integer()):
            raise InputError(f"{field} must be an integer; got {value!r}", field=field)
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{field} must be a finite number; got {value!r}", field=field)
        too_low = value <= self.low if self.low_exclusive else value < self.low
        if too_low or value > self.high:
            low, high = (
                (int(self.low), int(self.high)) if self.integer else (f"{self.low:g}", f"{self.high:g}")
            )
            lo = f"greater than {low}" if self.low_exclusive else f"at least {low}"
            raise InputError(f"{field} is {value!r}; it must be {lo} and at most {high}", field=field)
        return int(value) if self.integer else float(value)


LIMITS: dict[str, Limit] = {
    "max_new_tokens": Limit(1, 4096, 512, integer=True),
    "temperature": Limit(0.0, 2.0, 0.0),
    "top_p": Limit(0.0, 1.0, 1.0, low_exclusive=True),
    "top_k": Limit(0, 1000, 0, integer=True),
    "repetition_penalty": Limit(0.0, 2.0, 1.0, low_exclusive=True),
    "seed": Limit(0, 2**32 - 1, None, integer=True),
    "num_crops": Limit(1, 16, None, integer=True),
}
# Inputs that only some model families honour (cerebro/families: Family.options).
FAMILY_OPTIONS = frozenset({"num_crops", "system_prompt"})
MAX_PROMPT_CHARS = 200_000
MAX_SYSTEM_PROMPT_CHARS = 20_000
MAX_SCHEMA_CHARS = 100_000


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    images: tuple[Image.Image, ...]
    system_prompt: str | None = None
    # LIMITS owns these defaults (and the Cog inputs' defaults come from it too).
    max_new_tokens: int = int(LIMITS["max_new_tokens"].default or 0)
    temperature: float = float(LIMITS["temperature"].default or 0.0)  # 0 = greedy
    top_p: float = float(LIMITS["top_p"].default or 0.0)
    top_k: int = int(LIMITS["top_k"].default or 0)  # 0 = no top-k filter
    repetition_penalty: float = float(LIMITS["repetition_penalty"].default or 0.0)
    seed: int | None = None  # None = drawn per request (and logged)
    num_crops: int | None = None  # None = the adapter's default for this many images
    json_schema: dict[str, Any] | None = None


def parse_json_schema(text: str | None) -> dict[str, Any] | None:
    """The `json_schema` input: empty = none; otherwise a JSON object that is a valid JSON Schema that
    the constrained decoder can guarantee (cerebro/schema_guard.py). Whitespace alone is an error, not
    "no schema": a caller who sent something meant a schema."""
    if text is None or text == "":
        return None
    if not text.strip():
        raise SchemaError(
            f"json_schema is only whitespace ({len(text)} characters); send a JSON Schema, or leave it "
            "empty for a plain-text answer",
            field="json_schema",
            code="E1300",
        )
    if len(text) > MAX_SCHEMA_CHARS:
        raise SchemaError(
            f"json_schema is {len(text)} characters; the limit is {MAX_SCHEMA_CHARS}",
            field="json_schema",
            code="E1300",
        )
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as err:
        raise SchemaError(
            f"json_schema is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}",
            field="json_schema",
            code="E1300",
        ) from None
    except RecursionError:  # json.loads recurses once per nesting level
        raise SchemaError(
            f"json_schema is nested too deeply to read; the limit is {MAX_JSON_DEPTH} levels",
            field="json_schema",
            code="E1301",
        ) from None
    if not isinstance(schema, dict):
        raise SchemaError(
            f"json_schema must be a JSON object; got {type(schema).__name__}",
            field="json_schema",
            code="E1300",
        )
    import jsonschema  # local: only requests with a schema pay for the import

    check_json_depth(schema)  # before check_schema, which recurses once per level
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        raise SchemaError(
            f"json_schema is not a valid JSON Schema: {err.message}", field="json_schema", code="E1300"
        ) from None
    vet_schema(schema)  # no fetches, nothing the constrained decoder cannot guarantee
    return schema


def build_request(
    *,
    prompt: Any,
    image_sources: Sequence[tuple[str, Any]],
    load_image: Callable[[Any, str], Image.Image],
    max_images: int,
    system_prompt: str | None = None,
    json_schema: str | None = None,
    prompt_required: bool = True,
    **numbers: Any,
) -> GenerationRequest:
    """Validate every input (cheap checks first, images last) and load the images.

    image_sources: (field name, source) pairs, e.g. ("image", path), ("images[0]", url).
    """
    prompt = "" if prompt is None else prompt
    if not isinstance(prompt, str) or (prompt_required and not prompt.strip()):
        raise PromptError(
            "prompt is empty; describe what you want to know about the image(s)", field="prompt", code="E1010"
        )
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PromptError(
            f"prompt is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}",
            field="prompt",
            code="E1011",
        )
    system = (system_prompt or "").strip() or None
    if system is not None and len(system) > MAX_SYSTEM_PROMPT_CHARS:
        raise PromptError(
            f"system_prompt is {len(system)} characters; the limit is {MAX_SYSTEM_PROMPT_CHARS}",
            field="system_prompt",
            code="E1011",
        )
    unknown = set(numbers) - set(LIMITS)
    if unknown:
        raise InputError(f"unknown inputs {sorted(unknown)}", field=sorted(unknown)[0])
    values = {name: limit.check(name, numbers.get(name)) for name, limit in LIMITS.items()}
    schema = parse_json_schema(json_schema)
    if not image_sources:
        raise ImageError(
            "no image given: pass `image` or `images` (at least one)", field="image", code="E1100"
        )
    if len(image_sources) > max_images:
        raise ImageError(
            f"{len(image_sources)} images given; the limit is {max_images}", field="images", code="E1100"
        )
    images = tuple(load_image(source, field) for field, source in image_sources)
    return GenerationRequest(prompt=prompt, images=images, system_prompt=system, json_schema=schema, **values)


def check_capabilities(inputs: dict[str, Any], capabilities: Any) -> None:
    """Refuse, before any work, what the served model cannot honour: an option only other families have
    (E1002, the field named) or a JSON schema for a model without constrained decoding (E1303).

    inputs: the raw runner inputs; capabilities: the adapter's (cerebro.adapters.Capabilities)."""
    for name in sorted(FAMILY_OPTIONS - set(capabilities.options)):
        if inputs.get(name) not in (None, ""):
            raise InputError(
                f"{name} is not an option of the model this server runs; leave it empty",
                field=name,
                code="E1002",
            )
    schema = inputs.get("json_schema")
    if not capabilities.json_schema and isinstance(schema, str) and schema != "":
        raise SchemaError(
            "this model cannot constrain its answer to a JSON schema; leave json_schema empty",
            field="json_schema",
            code="E1303",
        )
