# Written with AI assistance; review before relying on it.
"""The attention kernels a model may be loaded with, checked once: every family and the native Phi-3.5
loader accept the same names, and flash_attention_2 only where its package is installed."""

from __future__ import annotations

import importlib.util

ATTENTION_BACKENDS = ("sdpa", "eager", "flash_attention_2")


def resolve_attention(attn_implementation: str | None) -> str:
    """The backend to load with (None = sdpa); ValueError naming the choices when it cannot be used."""
    attn = attn_implementation or "sdpa"
    if attn not in ATTENTION_BACKENDS:
        raise ValueError(
            f"attn_implementation {attn!r} is not supported; use one of {list(ATTENTION_BACKENDS)}"
        )
    if attn == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError(
            "attn_implementation 'flash_attention_2' needs the flash-attn package, which is not installed"
        )
    return attn
