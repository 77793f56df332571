# Written with AI assistance; review before relying on it.
"""A decoder's two forwards over a RowKVCache: prefill of one request into a row, and one decode step
for rows 0..B-1 at once, replayed from CUDA graphs on a GPU.

Both run the model's own transformers decoder layers through its family's `Decoder` (decoder.py: the
same modules and kernels as the plain path, so the greedy tokens agree); what is ours is around them:
- RoPE per row: each row uses its own rotary table (LongRoPE: short or long by the row's own length),
  where transformers picks one set for the whole batch;
- the decode mask [B, 1, 1, span]: row b sees positions 0..positions[b];
- static input buffers (tokens, positions, rotary variants) that CUDA graphs read at fixed addresses, one
  graph per (batch bucket, span bucket), captured on first use or in warm-up.

Prefill is not graphed: its length varies per request, and SDPA with is_causal=True (flash attention on
a GPU) already keeps it compute-bound. The vision tower runs once here, at prefill.

Not here: which request owns which row, sampling, stopping (scheduler.py).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Mapping
from typing import Any

import torch

from cerebro.engine.decoder import Decoder
from cerebro.engine.kv_cache import RowKVCache

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64)
SPAN_QUANTUM = 256  # spans are multiples of this: 256, 512, 768 (x1.5 steps beyond 1024, see span_for)


def bucket_up(value: int, buckets: tuple[int, ...]) -> int:
    i = bisect.bisect_left(buckets, value)
    if i == len(buckets):
        raise ValueError(f"{value} is above the largest bucket {buckets[-1]}")
    return buckets[i]


def span_buckets(capacity: int) -> tuple[int, ...]:
    """Attention spans for decode: 256, 512, 768, 1024, then x1.5 (rounded to 256) up to the capacity.
    Few enough to capture every graph in warm-up, close enough that little attention is wasted."""
    spans, s = [], SPAN_QUANTUM
    while s < capacity:
        spans.append(s)
        s = s + SPAN_QUANTUM if s < 1024 else -(-int(s * 1.5) // SPAN_QUANTUM) * SPAN_QUANTUM
    spans.append(capacity)
    return tuple(spans)


class BatchForward:
    def __init__(self, decoder: Decoder, cache: RowKVCache, *, cuda_graphs: bool) -> None:
        self.decoder = decoder
        self.rotary = decoder.rotary
        self.cache = cache
        self.device = decoder.device
        self.dtype = decoder.dtype
        self.batch_buckets = (*(b for b in BATCH_BUCKETS if b < cache.rows), cache.rows)
        self.spans = span_buckets(cache.capacity)
        rows = cache.rows
        # Static decode inputs: filled before every step, read by the graphs at fixed addresses.
        self.tokens = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.variants = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.span_index = torch.arange(cache.capacity, device=self.device)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.graph_pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None

    # ---------------------------------------------------------------------------------------- shared

    def variant(self, length: int) -> int:
        """The rotary table a sequence of `length` tokens uses (LongRoPE: 1 beyond original_max)."""
        return self.rotary.variant(length)

    def _forward(
        self,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        variants: torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """embeds [B, T, D] -> float32 logits [B, V] of each row's last token."""
        cos_sin = self.rotary.cos_sin(positions, variants, self.dtype)
        hidden = embeds
        for layer in self.decoder.layers:
            hidden = layer(
                hidden, attention_mask=mask, position_embeddings=cos_sin, past_key_values=self.cache
            )
        # The norm is per token: the last one is enough.
        return self.decoder.head(hidden[:, -1:])[:, 0].float()  # B, V

    # ---------------------------------------------------------------------------------------- prefill

    @torch.inference_mode()
    def prefill(
        self, row: int, input_ids: torch.Tensor, extras: Mapping[str, torch.Tensor], reuse: Any = None
    ) -> tuple[torch.Tensor, Any]:
        """input_ids [1, T] and the family's extras into `row` -> (logits [V], reuse). Pass `reuse` from an
        earlier prefill of the same prompt to re-encode it without the vision tower."""
        input_ids = input_ids.to(self.device)
        embeds, reuse = self.decoder.embed_prompt(input_ids, extras, reuse)  # 1, T, D
        length = int(input_ids.shape[1])
        self.cache.prefill(row, length)
        positions = torch.arange(length, device=self.device)[None]  # 1, T
        variants = torch.tensor([self.variant(length)], device=self.device)
        # mask=None: transformers' SDPA path then uses is_causal=True over exactly these T keys.
        return self._forward(embeds, positions, variants, None)[0], reuse

    # ---------------------------------------------------------------------------------------- decode

    def _decode_step(self, batch: int, span: int) -> torch.Tensor:
        """One token for each of rows 0..batch-1 from the static buffers -> logits [batch, V]."""
        positions = self.positions[:batch]
        embeds = self.decoder.embed_tokens(self.tokens[:batch])[:, None]  # B, 1, D
        mask = (self.span_index[:span][None, :] <= positions[:, None])[:, None, None, :]  # B, 1, 1, span
        self.cache.decode(batch, span, self.positions)
        return self._forward(embeds, positions[:, None], self.variants[:batch], mask)

    @torch.inference_mode()
    def decode(self, tokens: list[int], positions: list[int], variants: list[int]) -> torch.Tensor:
        """Rows 0..n-1 feed tokens[i] at positions[i] -> logits [n, V]. Rows n..B-1 of the batch bucket
        are idle rows fed token 0 at position 0 (their contents are overwritten by the next prefill)."""
        n = len(tokens)
        batch = bucket_up(n, self.batch_buckets)
        span = bucket_up(max(positions) + 1, self.spans)
        pad = batch - n
        self.tokens[:batch].copy_(torch.tensor(tokens + [0] * pad), non_blocking=True)
        self.positions[:batch].copy_(torch.tensor(positions + [0] * pad), non_blocking=True)
        self.variants[:batch].copy_(torch.tensor(variants + [0] * pad), non_blocking=True)
        if not self.cuda_graphs:
            return self._decode_step(batch, span)[:n]
        if (batch, span) not in self.graphs:
            self.capture(batch, span)
        graph, logits = self.graphs[(batch, span)]
        graph.replay()
        return logits[:n]

    def capture(self, batch: int, span: int) -> float:
        """Record the decode step for (batch, span) as a CUDA graph; returns seconds taken.

        The eager warm-up runs write the same keys and values the replay will (same inputs), so capturing
        in the middle of serving is safe."""
        started = time.perf_counter()
        with torch.inference_mode():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # cuBLAS and allocator warm-up outside the capture
                    self._decode_step(batch, span)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: request threads may touch CUDA (e.g. a sampler's generator) during a capture.
            with torch.cuda.graph(graph, pool=self.graph_pool, capture_error_mode="thread_local"):
                logits = self._decode_step(batch, span)
        self.graphs[(batch, span)] = (graph, logits)
        return time.perf_counter() - started

    def capture_all(self, max_span: int) -> tuple[int, float]:
        """Capture every (batch bucket, span bucket <= max_span): largest first, so later graphs reuse the
        pool memory. Returns (graphs captured, seconds)."""
        if not self.cuda_graphs:
            return 0, 0.0
        started, count = time.perf_counter(), 0
        self.positions.zero_()  # idle rows: every write lands at position 0 of a row nobody owns yet
        self.tokens.zero_()
        for batch in reversed(self.batch_buckets):
            for span in reversed([s for s in self.spans if s <= max_span]):
                if (batch, span) not in self.graphs:
                    self.capture(batch, span)
                    count += 1
        torch.cuda.synchronize()
        return count, time.perf_counter() - started
