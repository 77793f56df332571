# Written with AI assistance; review before relying on it.
"""Registry of model adapters: name -> "module:Class" (imported only when chosen) or a class.

To serve another model: write `cerebro/adapters/<name>.py` with a ModelAdapter subclass, add one line
to `_REGISTRY`, and set CEREBRO_ADAPTER=<name>. Tests register fakes through `register()`.
"""

from __future__ import annotations

import importlib

from cerebro.adapters.base import Capabilities, GenerationStats, ModelAdapter
from cerebro.errors import ServerError

_REGISTRY: dict[str, str | type[ModelAdapter]] = {
    "phi3_v": "cerebro.adapters.phi3_v:Phi3VAdapter",
}


def register(name: str, adapter: str | type[ModelAdapter]) -> None:
    _REGISTRY[name] = adapter


def names() -> list[str]:
    return sorted(_REGISTRY)


def get_adapter(name: str) -> type[ModelAdapter]:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ServerError(f"unknown adapter {name!r} (CEREBRO_ADAPTER); known adapters: {names()}")
    if isinstance(entry, str):
        module, _, cls = entry.partition(":")
        entry = getattr(importlib.import_module(module), cls)
        _REGISTRY[name] = entry
    return entry


__all__ = ["Capabilities", "GenerationStats", "ModelAdapter", "get_adapter", "names", "register"]
