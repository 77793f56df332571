# Written with AI assistance; review before relying on it.
"""Helpers the test tiers share: a runner that keeps its metrics, and one set up from a clean environment.

Not fixtures (tests/conftest.py has those) and not fakes of our own code: these drive the real runner.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cerebro.predict import Predictor


class MetricsPredictor(Predictor):
    """Keeps what record_metric is given (outside a Cog prediction it is a no-op)."""

    metrics: dict[str, Any]

    def record_metric(self, key: str, value: Any, mode: str = "replace") -> None:
        self.metrics[key] = value


def set_up_predictor(model_dir: Path, **env: str) -> MetricsPredictor:
    """Predictor.setup() as a deployment runs it: every CEREBRO_* variable unset (so the family comes from
    config.json's model_type) except CEREBRO_MODEL_DIR and `env`."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("CEREBRO_")]:
            mp.delenv(name)
        mp.setenv("CEREBRO_MODEL_DIR", str(model_dir))
        for name, value in env.items():
            mp.setenv(name, value)
        predictor = MetricsPredictor()
        predictor.metrics = {}
        predictor.setup()
    return predictor


def quadrants(width: int = 64, height: int = 48) -> Image.Image:
    """A small image with three colour regions: different images give different image features."""
    img = Image.new("RGB", (width, height), (200, 30, 30))
    img.paste((20, 180, 40), (width // 2, 0, width, height // 2))
    img.paste((10, 10, 220), (0, height // 2, width // 2, height))
    return img


def plain_tokens(family: Any, request: Any, stop_ids: frozenset[int]) -> list[int]:
    """Greedy tokens of the plain path (generation.generate_tokens) for a family's inputs of `request`:
    the reference the engines and the runner are compared with."""
    import torch

    from cerebro.generation import Sampler, SamplingParams, generate_tokens

    inputs = family.model_inputs(request)
    return list(
        generate_tokens(
            family.plain_model(),
            {"input_ids": inputs.input_ids, **inputs.extras},
            max_new_tokens=request.max_new_tokens,
            sampler=Sampler(SamplingParams(), torch.device("cpu")),
            stop_ids=stop_ids,
        )
    )


def greedy_job(family: Any, request: Any) -> Any:
    """An engine Job for a family's inputs of `request`: greedy, no stop tokens, on the model's device."""
    import torch

    from cerebro.engine import Job
    from cerebro.generation import Sampler, SamplingParams

    inputs = family.model_inputs(request)
    device = getattr(family.model, "device", torch.device("cpu"))
    return Job(
        input_ids=inputs.input_ids,
        extras=inputs.extras,
        max_new_tokens=request.max_new_tokens,
        sampler=Sampler(SamplingParams(), device),
        stop_ids=frozenset(),
    )
