# Written with AI assistance; review before relying on it.
"""The plain engine: one request at a time through cerebro.generation.generate_tokens (a DynamicCache,
no batching, no CUDA graphs). The same interface as the batching Engine, for CEREBRO_ENGINE=plain: a
reference to compare against and a fallback when the batching engine misbehaves on some platform.

Not here: anything fast.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from cerebro.engine.scheduler import Job
from cerebro.errors import ServerError
from cerebro.finish import FinishReason, finish_after
from cerebro.generation import generate_tokens

log = logging.getLogger(__name__)


class PlainEngine:
    def __init__(self, model: Any, *, capacity: int) -> None:
        self.model = model  # called as generation.generate_tokens expects (its docstring)
        self.rows, self.capacity = 1, capacity
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.submitted = 0  # requests ever queued
        self._current: Job | None = None  # the request being generated (the engine thread writes it)
        self._thread = threading.Thread(target=self._loop, name="cerebro-plain-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        if not self._thread.is_alive():
            raise ServerError("the generation engine is not running", code="E2000")
        self._jobs.put(job)
        self.submitted += 1

    def load(self) -> tuple[int, int]:
        """(running, waiting) requests right now."""
        return int(self._current is not None), self._jobs.qsize()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._current = job
            try:
                reason = self._run(job)
            except BaseException as err:
                self._current = None
                job.stream.fail(err)
                continue
            self._current = None  # first: a reader woken by the end sees the engine free
            job.stream.finish(reason)

    def _run(self, job: Job) -> FinishReason:
        if job.stream.cancelled:
            return FinishReason.CANCELLED
        inputs = {"input_ids": job.input_ids, **job.extras}
        reason: FinishReason | None = None
        for count, token in enumerate(
            generate_tokens(
                self.model,
                inputs,
                max_new_tokens=job.max_new_tokens,
                sampler=job.sampler,
                stop_ids=job.stop_ids,
                constraint=job.constraint,
                cancel=job.stream.cancel_event,
            ),
            start=1,
        ):
            job.stream.put(token)
            reason = finish_after(
                token,
                count,
                stop_ids=job.stop_ids,
                constraint=job.constraint,
                max_new_tokens=job.max_new_tokens,
            )
        # No reason: the loop ended before a stop or the length limit, which only a cancel does.
        return reason or (FinishReason.CANCELLED if job.stream.cancelled else FinishReason.LENGTH)
