# Written with AI assistance; review before relying on it.
"""One request's channel from the engine thread to whoever reads it, synchronously or with asyncio.

The engine calls `put(token)` for every new token, then exactly one of `finish(reason)` or
`fail(error)`. A reader iterates token ids (`for` or `async for`); a failure is raised in the reader,
and `finish_reason` (a finish.FinishReason) says why the stream ended.

Not here: text (the adapter decodes tokens), sampling (scheduler.py).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from cerebro.finish import FinishReason

_END = object()


class TokenStream:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_queue: asyncio.Queue[Any] | None = None
        self.finish_reason: FinishReason | str = ""  # "" while it runs
        self.cancel_event = threading.Event()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver to an asyncio reader on `loop`; call before the engine sees the stream."""
        self._loop, self._async_queue = loop, asyncio.Queue()

    def cancel(self) -> None:
        """Ask the engine to stop this request (it frees the row at its next step); a no-op once it ended,
        so that an Event shared with the caller is set only by a real cancel."""
        if not self.finish_reason:
            self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    # ------------------------------------------------------------------------- engine side

    def _deliver(self, item: Any) -> None:
        if self._loop is None:
            self._queue.put(item)
            return
        assert self._async_queue is not None
        try:
            self._loop.call_soon_threadsafe(self._async_queue.put_nowait, item)
        except RuntimeError:  # the reader's loop is closed: nobody is listening any more
            self.cancel_event.set()

    def put(self, token: int) -> None:
        self._deliver(token)

    def finish(self, reason: FinishReason) -> None:
        self.finish_reason = reason
        self._deliver(_END)

    def fail(self, error: BaseException) -> None:
        self.finish_reason = FinishReason.ERROR
        self._deliver(error)

    # ------------------------------------------------------------------------- reader side

    @staticmethod
    def _check(item: Any) -> bool:
        if item is _END:
            return False
        if isinstance(item, BaseException):
            raise item
        return True

    def __iter__(self) -> Iterator[int]:
        while self._check(item := self._queue.get()):
            yield item

    async def __aiter__(self) -> AsyncIterator[int]:
        assert self._async_queue is not None, "bind(loop) before reading asynchronously"
        while self._check(item := await self._async_queue.get()):
            yield item
