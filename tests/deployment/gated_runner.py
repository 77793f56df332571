# Written with AI assistance; review before relying on it.
"""Cerebro's real runner, with a gate in its engine that a deployment test holds open or shut.

The streaming tests must know that the engine is still generating when a piece reaches them, and where
it is when a cancel lands. So the engine thread of this runner asks the test's loopback peer before it
goes on at two points of every request sampled with seed CEREBRO_TEST_GATE_SEED (other requests are not
gated): `GET /gate/admit` before the request's prefill, and `GET /gate/token-K` after its K-th token has
been handed to its stream. The peer answers at once, unless the test holds that path (then the engine
waits until the test releases it), or answers "fail" (then the engine raises a RuntimeError there, an
internal error with a path in its text, which the caller must never see).

`RefusedHookPredictor` wraps `asyncio.run_coroutine_threadsafe` before setup(), as another library might:
the bridge must refuse to hook over it and serve the buffered shape.

Test code only: it reaches into the engine's private methods on purpose.
"""

from __future__ import annotations

import asyncio
import os
import urllib.error
import urllib.request
from typing import Any

from cerebro.engine import Engine, Job
from cerebro.predict import Predictor

GATE_TIMEOUT_S = 60.0  # the peer gives up a held gate after its own timeout, well before this


class GateFailure(RuntimeError):
    pass


class GatedPredictor(Predictor):
    def setup(self) -> None:
        super().setup()  # the warm-up runs ungated
        gate_url = os.environ["CEREBRO_TEST_GATE_URL"]
        gate_seed = int(os.environ["CEREBRO_TEST_GATE_SEED"])
        engine = self.adapter.engine  # type: ignore[attr-defined]
        assert isinstance(engine, Engine), "the gate sits in the batching engine"
        admit, emit = engine._admit, engine._emit

        def ask(job: Job, point: str) -> None:
            if job.sampler.params.seed != gate_seed:
                return
            try:
                with urllib.request.urlopen(f"{gate_url}/gate/{point}", timeout=GATE_TIMEOUT_S) as answer:
                    said = answer.read()
            except urllib.error.HTTPError:  # 404: nobody holds this point
                return
            if said == b"fail":
                raise GateFailure(f"gate {point} failed at /srv/secret/engine.py line 42")

        def gated_admit(job: Job) -> None:
            ask(job, "admit")
            admit(job)

        def gated_emit(job: Job, token: int) -> None:
            emit(job, token)
            ask(job, f"token-{len(job.generated)}")

        engine._admit = gated_admit  # type: ignore[method-assign]
        engine._emit = gated_emit  # type: ignore[method-assign]


class RefusedHookPredictor(GatedPredictor):
    def setup(self) -> None:
        stdlib = asyncio.run_coroutine_threadsafe

        def someone_elses(coro: Any, loop: asyncio.AbstractEventLoop) -> Any:
            return stdlib(coro, loop)

        asyncio.run_coroutine_threadsafe = someone_elses
        super().setup()
