# Written with AI assistance; review before relying on it.
"""Streaming that stays cancellable on coglet 0.23.1: the one module that knows coglet's private details.

coglet picks a runner's shape by `inspect` alone. An async-generator `run()` is collected whole before
anything is sent. A coroutine whose result is a plain generator (`types.GeneratorType`) is streamed: coglet
calls `next()` on it from the prediction's slot thread, piece by piece, and several such predictions run at
once. That second shape loses two things, and this module gives them back:

- **Cancel.** coglet cancels an async prediction by calling `cancel()` on the `concurrent.futures.Future`
  that `asyncio.run_coroutine_threadsafe` returned for its wrapper coroutine around `run()`. Once `run()` has
  returned its generator that Future is finished and the cancel does nothing: the generator runs to its
  end. `install()` replaces `asyncio.run_coroutine_threadsafe` with a wrapper that, for coglet's wrapper
  coroutine only, makes a `threading.Event` for the prediction, sets a context variable to it while
  submitting (the task that runs `run()` starts in a copy of the submitting thread's context, as every
  `call_soon_threadsafe` callback does), and gives the returned Future a `cancel()` that sets the Event
  first. Inside `run()`, `cancel_event()` returns it; the engine and the generator stop when it is set.
- **Attribution.** coglet routes logs and metrics by context variables that its wrapper sets while
  `run()` runs; `next()` on the slot thread runs outside them, so its lines and metrics would land on
  another prediction. `in_context(pieces)` runs every `next()` in a copy of `run()`'s own context.

The coglet details relied on (read in its source, crates/coglet-python, and measured on 0.23.1):
1. the version: `coglet.__version__ == PROVEN_COGLET`;
2. it looks up `asyncio.run_coroutine_threadsafe` as a module attribute on every call;
3. its wrapper coroutine around `run()` is named `_ctx_wrapper` (the only one this hook touches);
4. it cancels an async prediction with `Future.cancel()` on that Future, and nothing else.

The gate: `install()` hooks nothing, and says why, when coglet is another version, when
`asyncio.run_coroutine_threadsafe` is not the standard library's (something else wrapped it), or when a
self-test of the hook fails. Then, and for any prediction whose `run()` finds no Event (the hook never saw
its submission), the runner serves the buffered shape, which coglet can cancel: never a stream that
cannot be cancelled. Callers that drive `run()` themselves (the CLI, tests) declare the Event with
`submission(event)`, exactly as the hook does.

Not here: what streams (predict.py), the engine's own cancel (cerebro/engine/stream.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from cerebro.utils.logs import OPERATOR_LOGGER

PROVEN_COGLET = "0.23.1"  # the coglet these details were read in and measured on
WRAPPER_NAME = "_ctx_wrapper"  # coglet's coroutine around run(); every other submission passes untouched

operator_log = logging.getLogger(OPERATOR_LOGGER)  # the server's log: a cancel belongs to no prediction

T = TypeVar("T")

_CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "cerebro_prediction_cancel", default=None
)
_SELF_TEST_THREAD = "cerebro-hook-self-test"
_STDLIB_SUBMIT = asyncio.run_coroutine_threadsafe  # what install() replaces, and uninstall() puts back


@dataclass(frozen=True)
class Shape:
    """How the runner serves predictions: `streaming` (pieces as they are made) or buffered, and why."""

    streaming: bool
    reason: str


def cancel_event() -> threading.Event | None:
    """Inside `run()`: the Event that a cancel of this prediction sets; None when nobody declared one."""
    return _CANCEL.get()


@contextlib.contextmanager
def submission(cancel: threading.Event) -> Iterator[None]:
    """Declare `cancel` as the Event of the `run()` task created inside this block (asyncio copies the
    current context into a new task). The hook does this for coglet; in-process drivers do it themselves."""
    token = _CANCEL.set(cancel)
    try:
        yield
    finally:
        _CANCEL.reset(token)


def in_context(pieces: Iterator[T]) -> Iterator[T]:
    """`pieces`, with every `next()` (and the final close) run in a copy of the caller's context: call it
    inside `run()`, so the prediction's logs and metrics stay its own on whichever thread iterates."""
    context = contextvars.copy_context()

    def each() -> Iterator[T]:
        try:
            while True:
                try:
                    item = context.run(next, pieces)
                except StopIteration:
                    return
                yield item
        finally:
            close: Callable[[], None] | None = getattr(pieces, "close", None)
            if close is not None:
                context.run(close)

    return each()


def _hooked_submit(
    coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop
) -> concurrent.futures.Future[T]:
    code = getattr(coro, "cr_code", None)
    if getattr(code, "co_name", None) != WRAPPER_NAME:
        return _STDLIB_SUBMIT(coro, loop)
    cancel = threading.Event()
    with submission(cancel):  # the task that runs run() copies this thread's context when it is created
        future = _STDLIB_SUBMIT(coro, loop)
    finished_cancel = future.cancel
    announce = threading.current_thread().name != _SELF_TEST_THREAD

    def cancel_prediction() -> bool:
        cancel.set()  # first: after run() has returned, the Future's own cancel does nothing
        if announce:
            operator_log.info("prediction_cancel_delivered")
        return finished_cancel()

    future.cancel = cancel_prediction  # type: ignore[method-assign]
    return future


def install(*, coglet_version: str | None = None, in_server: bool | None = None) -> Shape:
    """Choose the shape, hooking the cancel when it is safe; call once from setup(). The arguments default
    to the installed coglet's version and whether this process is coglet's worker (tests pass them)."""
    if coglet_version is None or in_server is None:
        import coglet

        coglet_version = coglet.__version__ if coglet_version is None else coglet_version
        in_server = bool(coglet.server.active) if in_server is None else in_server
    if not in_server:
        return Shape(True, "in_process")  # the caller drives run() and declares its cancel (submission)
    if coglet_version != PROVEN_COGLET:
        return Shape(False, f"coglet_{coglet_version}_unproven_(proven_on_{PROVEN_COGLET})")
    current = asyncio.run_coroutine_threadsafe
    if current is _hooked_submit:
        return Shape(True, f"coglet_{coglet_version}_cancel_hook")
    if current is not _STDLIB_SUBMIT:
        return Shape(False, "asyncio.run_coroutine_threadsafe_is_not_the_standard_library's")
    asyncio.run_coroutine_threadsafe = _hooked_submit
    if not _self_test():
        uninstall()
        return Shape(False, "cancel_hook_self_test_failed")
    return Shape(True, f"coglet_{coglet_version}_cancel_hook")


def uninstall() -> None:
    """Put the standard library's function back (tests)."""
    if asyncio.run_coroutine_threadsafe is _hooked_submit:
        asyncio.run_coroutine_threadsafe = _STDLIB_SUBMIT


def _self_test() -> bool:
    """Submit as coglet does (a `_ctx_wrapper` coroutine from another thread, through the module attribute)
    and check that run() would find its Event and that cancelling the finished Future sets it."""
    loop = asyncio.new_event_loop()
    looping = threading.Thread(target=loop.run_forever, name="cerebro-hook-self-test-loop", daemon=True)
    looping.start()
    passed: list[bool] = []

    async def probe() -> threading.Event | None:
        return cancel_event()

    async def _ctx_wrapper(coro: Coroutine[Any, Any, threading.Event | None]) -> threading.Event | None:
        return await coro

    def submit() -> None:  # from a thread of its own, as coglet's slot threads submit
        try:
            future = asyncio.run_coroutine_threadsafe(_ctx_wrapper(probe()), loop)
            found = future.result(timeout=5)
            future.cancel()
            passed.append(found is not None and found.is_set())
        except Exception:  # any failure means the hook cannot be trusted here
            operator_log.warning("cancel_hook_self_test_failed", exc_info=True)

    try:
        submitter = threading.Thread(target=submit, name=_SELF_TEST_THREAD, daemon=True)
        submitter.start()
        submitter.join(timeout=10)
        return passed == [True]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        looping.join(timeout=5)
        loop.close()
