# Written with AI assistance; review before relying on it.
"""Which ModelAdapter the runner loads: the serving core (cerebro/core.py) for every model family, or an
adapter registered here under a name (tests register fakes; CEREBRO_FAMILY=<that name> selects it).

To serve another model, write a family (cerebro/families), not an adapter.
"""

from __future__ import annotations

import importlib

from cerebro.adapters.base import Capabilities, GenerationStats, ModelAdapter

_REGISTRY: dict[str, str | type[ModelAdapter]] = {}


def register(name: str, adapter: str | type[ModelAdapter]) -> None:
    """Serve CEREBRO_FAMILY=`name` with `adapter` (a class, or "module:Class" imported on first use)."""
    _REGISTRY[name] = adapter


def get_adapter(name: str) -> type[ModelAdapter]:
    """The adapter registered as `name`; any other name (auto, a family) is the serving core's, which
    resolves the family itself and refuses an unknown one (E2001)."""
    entry = _REGISTRY.get(name)
    if entry is None:
        from cerebro.core import ServingCore  # imports torch and transformers: seconds

        return ServingCore
    if isinstance(entry, str):
        module, _, cls = entry.partition(":")
        entry = getattr(importlib.import_module(module), cls)
        _REGISTRY[name] = entry
    return entry


__all__ = ["Capabilities", "GenerationStats", "ModelAdapter", "get_adapter", "register"]
