# Written with AI assistance; review before relying on it.
"""One request's tokens in, its text pieces out: keeps GenerationStats current (token counts, time to
first token, decode rate, finish reason) and validates a JSON answer at the end.

Shared by every family and by both readers of the serving core (sync and async). Not here: sampling,
stopping (the engines), the Cog boundary (predict.py).
"""

from __future__ import annotations

import time
from typing import Any

from cerebro.adapters.base import GenerationStats
from cerebro.finish import FinishReason
from cerebro.generation import IncrementalDecoder
from cerebro.request import GenerationRequest
from cerebro.structured import validate_output


class Transcript:
    def __init__(
        self,
        tokenizer: Any,
        stop_ids: frozenset[int],
        stats: GenerationStats,
        started: float,
        request: GenerationRequest,
    ) -> None:
        self.decoder = IncrementalDecoder(tokenizer)
        self.stop_ids, self.stats, self.started = stop_ids, stats, started
        # Only what the end needs: holding the request would keep its images alive while it generates.
        self.json_schema, self.max_new_tokens = request.json_schema, request.max_new_tokens
        self.text: list[str] = []
        self.first_at: float | None = None

    def push(self, token: int) -> str:
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
            self.stats.time_to_first_token = now - self.started
        self.stats.output_token_count += 1
        if token in self.stop_ids:
            return ""
        piece = self.decoder.push(token)
        self.text.append(piece)
        return piece

    def close(self, finish_reason: str) -> str:
        """The end of the text; raises E2032 when a JSON answer does not validate (E1302 when it was cut
        off by max_new_tokens)."""
        stats = self.stats
        stats.finish_reason = finish_reason
        tail = self.decoder.flush()
        self.text.append(tail)
        if self.first_at is not None and stats.output_token_count > 1:
            stats.tokens_per_second = (stats.output_token_count - 1) / max(
                time.perf_counter() - self.first_at, 1e-9
            )
        if self.json_schema is not None and finish_reason != FinishReason.CANCELLED:
            validate_output("".join(self.text), self.json_schema, self.max_new_tokens)
        return tail
