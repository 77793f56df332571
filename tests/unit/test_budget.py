# Written with AI assistance; review before relying on it.
"""The shared memory budget for image decoding (cerebro/budget.py), with real threads and no mocks."""

from __future__ import annotations

import threading
import time

import pytest

from cerebro import budget
from cerebro.budget import MemoryBudget
from cerebro.errors import CapacityError


def test_cost_counts_compressed_bytes_and_decoded_pixels() -> None:
    assert budget.cost(pixels=1000, nbytes=50) == 50 + 1000 * budget.BYTES_PER_PIXEL


def test_leases_that_fit_are_held_together_and_returned() -> None:
    memory = MemoryBudget(100)
    with memory.lease(40), memory.lease(60):
        assert memory.in_use == 100
    assert memory.in_use == 0


def test_a_lease_that_does_not_fit_waits_until_memory_is_returned() -> None:
    memory = MemoryBudget(100, wait_s=10)
    order: list[str] = []
    first_in = threading.Event()
    release_first = threading.Event()

    def first() -> None:
        with memory.lease(80):
            order.append("first in")
            first_in.set()
            release_first.wait(5)
            order.append("first out")

    def second() -> None:
        with memory.lease(50):
            order.append("second in")

    a = threading.Thread(target=first)
    a.start()
    assert first_in.wait(5)
    b = threading.Thread(target=second)
    b.start()
    time.sleep(0.3)  # the second is waiting: 80 + 50 > 100
    assert order == ["first in"]
    release_first.set()
    a.join(5)
    b.join(5)
    assert order == ["first in", "first out", "second in"]
    assert memory.in_use == 0


def test_waiters_are_served_in_arrival_order() -> None:
    # A big request first in line is not starved by small ones that would fit earlier.
    memory = MemoryBudget(100, wait_s=10)
    order: list[str] = []
    hold = threading.Event()
    holding = threading.Event()

    def holder() -> None:
        with memory.lease(60):
            holding.set()
            hold.wait(5)

    def taker(name: str, nbytes: int) -> None:
        with memory.lease(nbytes):
            order.append(name)

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    assert holding.wait(5)
    for name, nbytes in (("big", 90), ("small", 10)):
        thread = threading.Thread(target=taker, args=(name, nbytes))
        thread.start()
        threads.append(thread)
        time.sleep(0.2)  # arrival order: big, then small (which would fit beside the holder)
    assert order == []
    hold.set()
    for thread in threads:
        thread.join(5)
    assert order == ["big", "small"]


def test_a_lease_larger_than_the_budget_waits_to_be_alone_rather_than_failing() -> None:
    memory = MemoryBudget(100)
    with memory.lease(500):
        assert memory.in_use == 500
    assert memory.in_use == 0


def test_waiting_too_long_is_e2021_and_holds_nothing() -> None:
    memory = MemoryBudget(100, wait_s=0.3)
    with memory.lease(90), pytest.raises(CapacityError, match=r"^E2021 ") as info, memory.lease(20):
        pass
    assert info.value.field == "images"
    assert memory.in_use == 0


def test_a_cancel_ends_the_wait_at_once() -> None:
    memory = MemoryBudget(100, wait_s=30)
    cancel = threading.Event()
    outcome: list[BaseException] = []

    def waiter() -> None:
        try:
            with memory.lease(50, cancel):
                pass
        except CapacityError as err:
            outcome.append(err)

    with memory.lease(90):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.2)
        cancel.set()
        thread.join(5)
        assert not thread.is_alive() and len(outcome) == 1
    assert memory.in_use == 0


def test_allocator_tuning_reports_what_it_did() -> None:
    # glibc here: mallopt accepts the threshold (returns 1) and trim runs.
    assert budget.tune_allocator() is True
    budget.trim()
