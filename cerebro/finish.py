# Written with AI assistance; review before relying on it.
"""How a request's generation ends: the finish reasons, and the one stop rule every engine applies.

Torch-free on purpose: the Cog runner (predict.py) and the transcript read finish reasons, and importing
them must not import torch and transformers (the Cog server imports the runner module before setup(), and
`cerebro serve` imports it once more to write the OpenAPI schema).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


class FinishReason(StrEnum):
    """Why a request's generation ended (GenerationStats.finish_reason, the engines' streams)."""

    STOP = "stop"  # a stop token, or a JSON constraint whose value is complete
    LENGTH = "length"  # max_new_tokens
    CANCELLED = "cancelled"
    ERROR = "error"


def finish_after(
    token: int,
    count: int,
    *,
    stop_ids: frozenset[int],
    constraint: LogitsConstraint | None,
    max_new_tokens: int,
) -> FinishReason | None:
    """The one stop rule, for every engine: after the `count`-th new token, is the request done?"""
    if token in stop_ids or (constraint is not None and constraint.is_finished()):
        return FinishReason.STOP
    if count >= max_new_tokens:
        return FinishReason.LENGTH
    return None


class LogitsConstraint(Protocol):
    def mask(self, logits: torch.Tensor) -> None: ...  # in place, [V]
    def accept(self, token: int) -> None: ...
    def is_finished(self) -> bool: ...
