# Written with AI assistance; review before relying on it.
"""JSON-schema-constrained decoding with xgrammar, and the final check of the output.

The grammar is compiled with compact whitespace (no free spaces or newlines between tokens), so the
model cannot wander into whitespace; the finished text is parsed and validated against the schema
before it is returned, so a caller never receives JSON that breaks its schema.

Not here: parsing the schema input (cerebro/request.py), sampling (cerebro/generation.py).
"""

from __future__ import annotations

import json
from typing import Any

import torch

from cerebro.errors import GenerationError, SchemaError


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
            raise SchemaError(
                f"json_schema uses something the constrained decoder does not support: {err}",
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


def validate_output(text: str, schema: dict[str, Any], max_new_tokens: int) -> Any:
    """Parse and validate the finished output; E2032 with the reason when it breaks the schema."""
    import jsonschema

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise GenerationError(
            f"the JSON answer was cut off before it was complete (max_new_tokens={max_new_tokens}); raise "
            "max_new_tokens or ask for less",
            field="max_new_tokens",
            code="E2032",
        ) from None
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as err:
        raise GenerationError(
            f"the answer does not validate against json_schema: {err.message}",
            field="json_schema",
            code="E2032",
        ) from None
    return value
