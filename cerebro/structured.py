# Written with AI assistance; review before relying on it.
"""JSON-schema-constrained decoding with xgrammar, and the final check of the output.

The grammar is compiled with compact whitespace (no free spaces or newlines between tokens), so the
model cannot wander into whitespace; the finished text is parsed and validated against the schema
before it is returned, so a caller never receives JSON that breaks its schema.

Which schemas reach the compiler, and that validation never fetches a `$ref`, is
cerebro/schema_guard.py. Not here: parsing the schema input (cerebro/request.py), sampling
(cerebro/generation.py).
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import torch

from cerebro.errors import GenerationError, InputError, SchemaError
from cerebro.schema_guard import safe_validator

logger = logging.getLogger(__name__)

_MAX_REASON_CHARS = 200
# xgrammar prefixes its messages with "[12:00:00] /project/cpp/json_schema_converter.cc:123: " and
# glog's "Check failed: (expr) is false: "; callers get neither.
_LOG_PREFIX = re.compile(r"^\s*\[[\d:.]+\]\s*\S+?:\d+:\s*")
_CHECK_FAILED = re.compile(r"Check failed:.*? is false:\s*")
_SOURCE_PATH = re.compile(
    r"(?:[\w.\-]*/)+[\w.\-]+\.(?:cc|cpp|cxx|h|hpp|py|cu)(?::\d+)*:?|(?<![#\w])(?:/[\w.\-]+){2,}"
)


class JsonSchemaCompiler:
    """Built once per model (tokenizer vocabulary analysis is the slow part), then compiles per request."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: list[int]) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids)
        self.compiler = xgr.GrammarCompiler(info, max_threads=2)

    def compile(self, schema: dict[str, Any]) -> JsonConstraint:
        try:
            compiled = self.compiler.compile_json_schema(
                json.dumps(schema), any_whitespace=False, separators=(",", ":")
            )
        except (RuntimeError, ValueError, self._xgr.InvalidJSONError) as err:
            logger.debug("schema_compile_failed error=%r", str(err)[:4000])
            raise SchemaError(
                f"json_schema uses something the constrained decoder does not support: {clean_reason(err)}",
                field="json_schema",
                code="E1301",
            ) from None
        return JsonConstraint(self._xgr, compiled, self.vocab_size)


class JsonConstraint:
    """Masks logits to tokens the grammar allows; one per request (it holds the parse state)."""

    def __init__(self, xgr: Any, compiled: Any, vocab_size: int) -> None:
        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.vocab_size = vocab_size

    def mask(self, logits: torch.Tensor) -> None:
        self.matcher.fill_next_token_bitmask(self.bitmask)
        row = logits[None, : self.vocab_size]  # 1, V view: masking it masks logits in place
        self._xgr.apply_token_bitmask_inplace(row, self.bitmask.to(logits.device))

    def accept(self, token: int) -> None:
        if not self.matcher.accept_token(token):
            raise GenerationError(f"the grammar rejected token {token} that it had allowed", code="E2032")

    def is_finished(self) -> bool:
        return bool(self.matcher.is_terminated())


def clean_reason(err: BaseException) -> str:
    """A compiler message without timestamps, source paths or assertion text, at most 200 characters."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    reason = lines[0] if lines else type(err).__name__
    reason = _CHECK_FAILED.sub("", _LOG_PREFIX.sub("", reason))
    reason = _SOURCE_PATH.sub("", reason).strip(" :") or "the schema could not be compiled"
    return reason if len(reason) <= _MAX_REASON_CHARS else reason[: _MAX_REASON_CHARS - 1] + "…"


def validate_output(text: str, schema: dict[str, Any], max_new_tokens: int) -> Any:
    """Parse and validate the finished output; E2032 with the reason when it breaks the schema.

    Validation uses a registry that retrieves nothing, so even a schema that slipped past the guard
    cannot make it fetch a remote `$ref`.
    """
    import jsonschema
    from referencing.exceptions import Unresolvable

    try:
        value = json.loads(text)
    except RecursionError:  # free-form parts of a schema ({} or true) allow any nesting
        raise GenerationError(
            "the JSON answer nests too deeply to read", field="json_schema", code="E2032"
        ) from None
    except json.JSONDecodeError:
        # The grammar only lets a complete answer end, so an unparseable one was cut off by the caller's
        # own max_new_tokens: theirs to fix.
        raise InputError(
            f"the JSON answer was cut off before it was complete (max_new_tokens={max_new_tokens}); raise "
            "max_new_tokens or ask for less",
            field="max_new_tokens",
            code="E1302",
        ) from None
    try:
        error = jsonschema.exceptions.best_match(safe_validator(schema).iter_errors(value))
    except Unresolvable:
        raise SchemaError(
            "json_schema has a reference that does not resolve inside the schema; nothing is fetched",
            field="json_schema",
            code="E1301",
        ) from None
    if error is not None:
        reason = error.message if len(error.message) <= _MAX_REASON_CHARS else error.message[:199] + "…"
        raise GenerationError(
            f"the answer does not validate against json_schema: {reason}", field="json_schema", code="E2032"
        )
    return value
