# Written with AI assistance; review before relying on it.
"""A static KV cache in rows: one row per running request, allocated once, read through views.

    keys[layer], values[layer]: [rows, kv_heads, capacity, head_dim]

A request owns one row while it runs; positions 0..n-1 of that row hold its n tokens. Nothing is
reallocated while serving, so CUDA graphs can replay against fixed addresses; "sized to the request"
happens at read time: attention sees a view `[:batch, :, :span]` whose span is a bucket just above the
longest running request, not the whole capacity.

transformers' decoder layers call `update(key, value, layer_idx)`. What that writes and returns depends
on the mode set just before a forward (the layers pass no positions of their own):
- prefill(row, length): key [1, H, T, D] goes to positions 0..T-1 of `row`; returns that row's [1, H, T, D]
- decode(batch, span, positions): key [B, H, 1, D] goes to (row b, positions[b]) for b < B; returns the
  views [B, H, span, D] of rows 0..B-1 (the caller masks positions past each row's length)

Not here: which request owns which row (scheduler.py), masks and RoPE (runner.py).
"""

from __future__ import annotations

import math
import mmap
from typing import Any

import torch


class RowKVCache:
    def __init__(
        self,
        *,
        num_layers: int,
        rows: int,
        kv_heads: int,
        capacity: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.rows, self.capacity = rows, capacity
        shape = (rows, kv_heads, capacity, head_dim)
        # Zeros, not empty: masked positions still enter the q.k product, and NaN garbage there would turn
        # the softmax into NaN even though its weight is zero.
        self.keys = [_zeros(shape, dtype, device) for _ in range(num_layers)]
        self.values = [_zeros(shape, dtype, device) for _ in range(num_layers)]
        self.row_index = torch.arange(rows, device=device)
        self._mode: tuple[Any, ...] = ("idle",)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def prefill(self, row: int, length: int) -> None:
        if not 0 <= row < self.rows or not 0 < length <= self.capacity:
            raise ValueError(
                f"prefill of {length} tokens into row {row}; the cache is {self.rows}x{self.capacity}"
            )
        self._mode = ("prefill", row, length)

    def decode(self, batch: int, span: int, positions: torch.Tensor) -> None:
        """positions [>= batch]: where each of rows 0..batch-1 writes its one new token."""
        self._mode = ("decode", batch, span, positions)

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self._mode[0] == "prefill":
            _, row, length = self._mode
            keys[row, :, :length] = key[0]  # key: [1, H, T, D]
            values[row, :, :length] = value[0]
            return keys[row : row + 1, :, :length], values[row : row + 1, :, :length]
        if self._mode[0] == "decode":
            _, batch, span, positions = self._mode
            rows, pos = self.row_index[:batch], positions[:batch]
            keys[rows, :, pos] = key[:, :, 0]  # key: [B, H, 1, D]; keys[rows, :, pos]: [B, H, D]
            values[rows, :, pos] = value[:, :, 0]
            return keys[:batch, :, :span], values[:batch, :, :span]
        raise RuntimeError("RowKVCache.update outside prefill/decode; call prefill() or decode() first")

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of row src into row dst (keeps running rows contiguous)."""
        for t in (*self.keys, *self.values):
            t[dst, :, :length] = t[src, :, :length]


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero tensor. On the CPU it lives in anonymous mmap memory, which the kernel guarantees to read as
    zeros and commits only page by page as rows are written: a CPU deployment's budget (gigabytes) costs
    memory only for the tokens its requests really hold, and nothing is zero-filled at startup."""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes == 0:
        return torch.zeros(shape, dtype=dtype)
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return torch.frombuffer(memory, dtype=dtype).view(shape)  # the tensor keeps `memory` alive
