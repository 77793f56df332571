# Written with AI assistance; review before relying on it.
"""The adapter seam: what the runner needs from a model, and nothing more.

An adapter declares its capabilities and turns a validated `GenerationRequest` into a stream of text
pieces in two steps (`prepare`, then `stream` or `astream` for the async runner), filling
`GenerationStats` as it goes. The
runner (predict.py) never branches on a model name. Cerebro's one real adapter is the serving core
(cerebro/core.py), which serves every model family (cerebro/families); tests register fakes.
"""

from __future__ import annotations

import abc
import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from cerebro.request import GenerationRequest
from cerebro.settings import Settings


@dataclass(frozen=True)
class Capabilities:
    max_images: int  # per request, before the deployment's own limit
    json_schema: bool  # constrained decoding to a JSON Schema
    streaming: bool  # yields text while generating
    max_context_tokens: int  # prompt (image tokens included) + new tokens
    options: frozenset[str] = frozenset()  # optional request inputs it honours (e.g. num_crops)
    min_images: int = 1
    prompt_required: bool = True


@dataclass
class GenerationStats:
    input_token_count: int = 0
    output_token_count: int = 0
    time_to_first_token: float | None = None  # seconds, from request start (preprocessing included)
    tokens_per_second: float | None = None  # decode rate after the first token
    finish_reason: str = ""  # a finish.FinishReason (a str) once the request ends
    seed: int | None = None  # the seed actually used, so a sampled answer can be reproduced


class ModelAdapter(abc.ABC):
    """Two steps per request, so the runner can stand between them:

    prepare(request, stats) -> prepared   CPU work in a worker thread (schema, images -> tensors, tokens);
                                          raises E1xxx for the caller's mistakes. Nothing is queued yet,
                                          so a request cancelled meanwhile is simply dropped.
    stream / astream(prepared, stats)     hands the prepared request to the engine and yields text.

    `prepared` is opaque to the runner; it must not keep the request's images alive (they can be large).
    """

    name: ClassVar[str]
    capabilities: Capabilities

    @classmethod
    @abc.abstractmethod
    def load(cls, settings: Settings) -> ModelAdapter:
        """Load weights and everything else once; called from the runner's setup()."""

    @abc.abstractmethod
    def prepare(self, request: GenerationRequest, stats: GenerationStats) -> Any:
        """Everything before generation; fills stats.input_token_count and stats.seed."""

    @abc.abstractmethod
    def stream(
        self, prepared: Any, stats: GenerationStats, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        """Yield text pieces as they are decoded; stop promptly once `cancel` is set."""

    async def astream(self, prepared: Any, stats: GenerationStats) -> AsyncIterator[str]:
        """The same pieces for an asyncio reader. This default steps `stream` in a worker thread;
        adapters with an engine of their own override it to avoid the thread hop per piece."""
        cancel = threading.Event()
        pieces = self.stream(prepared, stats, cancel)
        end = object()
        try:
            while (piece := await asyncio.to_thread(next, pieces, end)) is not end:
                yield piece  # type: ignore[misc]
        finally:
            cancel.set()
            close = getattr(pieces, "close", None)  # a generator: release what it holds
            if close is not None:
                close()

    def generate(
        self, request: GenerationRequest, stats: GenerationStats, cancel: threading.Event | None = None
    ) -> Iterator[str]:
        """prepare + stream, for synchronous callers (warm-up, tests)."""
        return self.stream(self.prepare(request, stats), stats, cancel)

    def describe(self) -> dict[str, str]:
        """What setup() logs about this adapter (device, dtype, ...)."""
        return {"adapter": self.name}

    def counters(self) -> dict[str, int]:
        """Running totals for the per-prediction log line (for example requests the engine accepted)."""
        return {}
