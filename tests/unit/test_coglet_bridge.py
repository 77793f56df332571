# Written with AI assistance; review before relying on it.
"""cerebro/coglet_bridge.py on the standard library's asyncio: the gate's choices, the hook's cancel, and
the context every next() runs in. The real coglet is driven in tests/deployment/test_streaming_server.py."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

from cerebro import coglet_bridge
from cerebro.coglet_bridge import PROVEN_COGLET, cancel_event, in_context, install, submission, uninstall


@pytest.fixture(autouse=True)
def _standard_library_afterwards() -> Iterator[None]:
    yield
    uninstall()
    assert asyncio.run_coroutine_threadsafe is coglet_bridge._STDLIB_SUBMIT


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


async def _ctx_wrapper(coro: Coroutine[Any, Any, Any]) -> Any:  # named as coglet's wrapper is
    return await coro


async def _other_wrapper(coro: Coroutine[Any, Any, Any]) -> Any:
    return await coro


async def _found() -> threading.Event | None:
    return cancel_event()


def test_outside_a_server_nothing_is_hooked_and_the_shape_streams() -> None:
    shape = install(coglet_version=PROVEN_COGLET, in_server=False)
    assert (shape.streaming, shape.reason) == (True, "in_process")
    assert asyncio.run_coroutine_threadsafe is coglet_bridge._STDLIB_SUBMIT


def test_another_coglet_version_is_buffered_and_says_which() -> None:
    shape = install(coglet_version="0.24.0", in_server=True)
    assert not shape.streaming
    assert "0.24.0" in shape.reason and PROVEN_COGLET in shape.reason
    assert asyncio.run_coroutine_threadsafe is coglet_bridge._STDLIB_SUBMIT


def test_a_submit_function_someone_else_wrapped_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def someone_elses(coro: Any, loop: Any) -> Any:
        return coglet_bridge._STDLIB_SUBMIT(coro, loop)

    monkeypatch.setattr(asyncio, "run_coroutine_threadsafe", someone_elses)
    shape = install(coglet_version=PROVEN_COGLET, in_server=True)
    assert not shape.streaming and "not_the_standard_library" in shape.reason
    assert asyncio.run_coroutine_threadsafe is someone_elses


def test_a_failed_self_test_puts_the_standard_library_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(coglet_bridge, "_self_test", lambda: False)
    shape = install(coglet_version=PROVEN_COGLET, in_server=True)
    assert (shape.streaming, shape.reason) == (False, "cancel_hook_self_test_failed")
    assert asyncio.run_coroutine_threadsafe is coglet_bridge._STDLIB_SUBMIT


def test_the_proven_coglet_is_hooked_once() -> None:
    first = install(coglet_version=PROVEN_COGLET, in_server=True)
    assert first.streaming and asyncio.run_coroutine_threadsafe is coglet_bridge._hooked_submit
    assert install(coglet_version=PROVEN_COGLET, in_server=True) == first  # setup() twice: one hook


def test_cancelling_the_finished_future_of_coglets_wrapper_sets_the_event_run_found(
    loop: asyncio.AbstractEventLoop,
) -> None:
    install(coglet_version=PROVEN_COGLET, in_server=True)
    future = asyncio.run_coroutine_threadsafe(_ctx_wrapper(_found()), loop)
    found = future.result(timeout=5)
    assert isinstance(found, threading.Event) and not found.is_set()
    assert future.done()  # run() has returned: the Future's own cancel can do nothing any more
    future.cancel()
    assert found.is_set()


def test_other_coroutines_pass_through_untouched(loop: asyncio.AbstractEventLoop) -> None:
    install(coglet_version=PROVEN_COGLET, in_server=True)
    future = asyncio.run_coroutine_threadsafe(_other_wrapper(_found()), loop)
    assert future.result(timeout=5) is None
    assert "cancel" not in vars(future)


def test_a_cancel_while_run_is_pending_still_cancels_the_coroutine(loop: asyncio.AbstractEventLoop) -> None:
    install(coglet_version=PROVEN_COGLET, in_server=True)
    started, found = threading.Event(), []

    async def slow() -> None:
        found.append(cancel_event())
        started.set()
        await asyncio.sleep(30)

    future = asyncio.run_coroutine_threadsafe(_ctx_wrapper(slow()), loop)
    assert started.wait(5)
    assert future.cancel()
    assert found[0] is not None and found[0].is_set()
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(timeout=5)


def test_submission_declares_the_event_for_tasks_made_inside_it() -> None:
    cancel = threading.Event()

    async def main() -> tuple[Any, Any]:
        with submission(cancel):
            inside = asyncio.get_running_loop().create_task(_found())
        outside = asyncio.get_running_loop().create_task(_found())
        return await inside, await outside

    assert asyncio.run(main()) == (cancel, None)


def test_every_next_and_the_close_run_in_the_context_of_the_caller() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("prediction", default="none")
    seen: list[str] = []

    def pieces() -> Iterator[int]:
        try:
            for n in range(3):
                seen.append(var.get())
                yield n
        finally:
            seen.append("closed in " + var.get())

    def made_in_run() -> Iterator[int]:
        var.set("p1")
        return in_context(pieces())

    stream = contextvars.copy_context().run(made_in_run)
    var.set("another prediction")  # what the iterating thread has set
    assert next(stream) == 0 and next(stream) == 1
    stream.close()
    assert seen == ["p1", "p1", "closed in p1"]
    assert var.get() == "another prediction"
