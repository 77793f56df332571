# Written with AI assistance; review before relying on it.
"""Generation engines: how requests share the model.

    Engine       continuous batching over a static row KV cache, CUDA graphs on a GPU (the default);
                 drives a family's `Decoder` (decoder.py)
    PlainEngine  one request at a time through generation.generate_tokens (CEREBRO_ENGINE=plain, and
                 families without a Decoder)

Both take a `Job` and stream its tokens through the job's `TokenStream`. `build_engine` sizes the
batching engine from the settings: how many rows (requests decoded together) and how many tokens each
row holds, within a KV-cache budget.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from cerebro.engine.decoder import Decoder, DecoderShape
from cerebro.engine.forward import SPAN_QUANTUM
from cerebro.engine.plain import PlainEngine
from cerebro.engine.scheduler import Engine, Job
from cerebro.engine.stream import TokenStream
from cerebro.errors import CapacityError
from cerebro.settings import Settings

__all__ = [
    "Decoder",
    "DecoderShape",
    "Engine",
    "Geometry",
    "Job",
    "PlainEngine",
    "TokenStream",
    "build_engine",
    "plan_geometry",
]

log = logging.getLogger(__name__)

GPU_ROWS, CPU_ROWS = 16, 1
CPU_KV_BYTES = 4 * 1024**3  # CPU default budget: RAM is shared with the weights and everything else
GPU_HEADROOM_BYTES = 4 * 1024**3  # kept free for activations (prefill, vision tower) beside the cache


@dataclass(frozen=True)
class Geometry:
    rows: int  # requests decoded together
    capacity: int  # tokens per row: the largest prompt + max_new_tokens served
    budget_tokens: int  # what the budget allowed in all
    bytes_per_token: int


def plan_geometry(
    shape: DecoderShape,
    dtype: torch.dtype,
    device: torch.device,
    *,
    max_batch: int,
    kv_cache_tokens: int,
    max_context_tokens: int,
) -> Geometry:
    """Rows and row capacity. max_batch / kv_cache_tokens of 0 mean "choose": 16 rows on a GPU (1 on
    CPU), and a budget of the GPU memory free after the weights minus headroom (4 GiB of RAM on CPU)."""
    per_token = shape.bytes_per_token(dtype)
    rows = max_batch or (GPU_ROWS if device.type == "cuda" else CPU_ROWS)
    if kv_cache_tokens:
        budget = kv_cache_tokens
    elif device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = max(0, free - max(GPU_HEADROOM_BYTES, total // 10)) // per_token
    else:
        budget = CPU_KV_BYTES // per_token
    context = -(-max_context_tokens // SPAN_QUANTUM) * SPAN_QUANTUM
    capacity = min(context, budget // rows // SPAN_QUANTUM * SPAN_QUANTUM)
    if capacity < SPAN_QUANTUM:
        raise CapacityError(
            f"a KV-cache budget of {budget} tokens cannot give each of {rows} rows {SPAN_QUANTUM} tokens; "
            "lower CEREBRO_MAX_BATCH or raise CEREBRO_KV_CACHE_TOKENS",
            field="CEREBRO_KV_CACHE_TOKENS",
            code="E2020",
        )
    cache_bytes = rows * capacity * per_token
    available = _available_bytes(device)
    if cache_bytes > available:
        raise CapacityError(
            f"a KV cache of {rows} rows x {capacity} tokens needs {cache_bytes / 1e9:.1f} GB and "
            f"{device.type} has {available / 1e9:.1f} GB available; lower CEREBRO_KV_CACHE_TOKENS or "
            "CEREBRO_MAX_BATCH",
            field="CEREBRO_KV_CACHE_TOKENS",
            code="E2020",
        )
    return Geometry(rows=rows, capacity=capacity, budget_tokens=budget, bytes_per_token=per_token)


def _available_bytes(device: torch.device) -> int:
    """Memory the cache can take: free GPU memory, or available RAM (checked before allocating, so a
    budget that cannot fit fails setup with its numbers instead of an allocator error)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def build_engine(
    settings: Settings, *, decoder: Decoder | None, plain_model: Any, max_context_tokens: int
) -> Engine | PlainEngine:
    """The batching engine over `decoder`, or the plain engine over `plain_model` when the settings ask
    for it or the family has no Decoder (see decoder.py). `max_context_tokens`: the longest request served
    (the setting, capped by the model's own context window); no row is sized beyond it."""
    if settings.engine == "plain" or decoder is None:
        return PlainEngine(plain_model, capacity=max_context_tokens)
    geometry = plan_geometry(
        decoder.shape,
        decoder.dtype,
        decoder.device,
        max_batch=settings.max_batch,
        kv_cache_tokens=settings.kv_cache_tokens,
        max_context_tokens=max_context_tokens,
    )
    log.info(
        "engine rows=%d capacity_tokens=%d kv_cache_gb=%.2f budget_tokens=%d",
        geometry.rows,
        geometry.capacity,
        geometry.rows * geometry.capacity * geometry.bytes_per_token / 1e9,
        geometry.budget_tokens,
    )
    return Engine(decoder, rows=geometry.rows, capacity=geometry.capacity, cuda_graphs=settings.cuda_graphs)
