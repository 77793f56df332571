# Written with AI assistance; review before relying on it.
"""Memory for decoding and preprocessing images, shared by every request in flight.

Why: a request's images are small on the wire and large in memory. A 189 KB PNG can decode to 50
megapixels (200 MB in Pillow's 4-bytes-per-pixel layout, and a copy or two more while it is oriented,
converted and resized), and the server runs up to 32 predictions at once. Two limits keep that bounded:

    per request   decoded pixels of all its images <= CEREBRO_MAX_REQUEST_PIXELS, checked from the image
                  headers before anything is decoded (E1107, the caller's to fix)
    per process   `MemoryBudget`: the estimated bytes of every request being decoded and preprocessed at
                  once <= CEREBRO_PREPROCESS_MEMORY_MB. A request waits its turn (first come, first served)
                  and gives up after `wait_s` with E2021 (retry later); a cancel stops the wait at once.

The estimate is `compressed bytes + pixels * BYTES_PER_PIXEL`: Pillow holds RGB as 4 bytes a pixel, and
preprocessing holds at most two more full-size copies (orientation or mode conversion, then the
resize's source) before the model's tensors, which are bounded by num_crops, replace them.

`tune_allocator()` and `trim()` make freed memory go back to the system: glibc otherwise raises its mmap
threshold after the first large free and keeps later large buffers on its heap, where a burst of big
images leaves gigabytes allocated after it ends.

Not here: what the images are (cerebro/utils/images.py), the KV cache (cerebro/engine).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from cerebro.errors import CapacityError

log = logging.getLogger(__name__)

BYTES_PER_PIXEL = 12  # see the module docstring
RAM_SHARE = 4  # by default the budget is a quarter of the machine's memory
_M_MMAP_THRESHOLD = -3  # mallopt parameter numbers from glibc's malloc.h
_MMAP_THRESHOLD_BYTES = 1024 * 1024


def cost(pixels: int, nbytes: int) -> int:
    """Estimated peak bytes for decoding and preprocessing images of `pixels` pixels in all."""
    return nbytes + pixels * BYTES_PER_PIXEL


def default_capacity() -> int:
    """A quarter of the machine's physical memory, in bytes."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // RAM_SHARE


class MemoryBudget:
    """Bytes that requests may hold at once while decoding and preprocessing images. Thread-safe."""

    def __init__(self, capacity_bytes: int, *, wait_s: float = 60.0) -> None:
        self.capacity = capacity_bytes
        self.wait_s = wait_s
        self.in_use = 0
        self._cond = threading.Condition()
        self._queue: collections.deque[object] = collections.deque()  # waiting leases, oldest first

    @contextmanager
    def lease(self, nbytes: int, cancel: threading.Event | None = None) -> Iterator[None]:
        """Hold `nbytes` of the budget for the block. Waits first come, first served; CapacityError
        (E2021) after wait_s, or when a cancel arrives while waiting. `nbytes` above the whole budget is
        held alone (it waits until nothing else is held) rather than refused: the per-request pixel limit
        is what refuses, and it is checked before this."""
        ticket = object()
        deadline = time.monotonic() + self.wait_s
        with self._cond:
            self._queue.append(ticket)
            try:
                while not (
                    self._queue[0] is ticket and (self.in_use + nbytes <= self.capacity or self.in_use == 0)
                ):
                    left = deadline - time.monotonic()
                    if left <= 0 or (cancel is not None and cancel.is_set()):
                        raise CapacityError(
                            f"the server is decoding other images ({self.in_use // 2**20} MiB of its "
                            f"{self.capacity // 2**20} MiB budget in use) and this request's "
                            f"{nbytes // 2**20} MiB did not fit within {self.wait_s:g} s; retry shortly",
                            field="images",
                            code="E2021",
                        )
                    # Short waits: a cancel sets an Event, which does not notify this condition.
                    self._cond.wait(min(left, 0.25))
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may now be at the head
            self.in_use += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= nbytes
                idle = self.in_use == 0
                self._cond.notify_all()
            if idle:
                trim()


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def tune_allocator() -> bool:
    """Fix glibc's mmap threshold at 1 MiB, so large buffers are mmapped and returned on free. Returns
    False where the C library is not glibc (nothing to do there)."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))


def trim() -> None:
    """Give free heap memory back to the system (glibc's malloc_trim); cheap when there is little."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
