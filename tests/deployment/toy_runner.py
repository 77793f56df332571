# Written with AI assistance; review before relying on it.
"""A toy Cog runner that exercises the serving harness (tests/deployment/conftest.py) without a model.

It streams `n` words, records a metric, reports cancellation in its logs, and fails on request, so the
deployment tests can check each path of the real Cog HTTP server: validation, SSE, cancel and failure.
It is not an example of Cerebro's predictor; cerebro/predict.py is.
"""

from __future__ import annotations

import time

import cog
from cog import BaseRunner, CancelationException, ConcatenateIterator, Input

from cerebro.errors import InputError

FAIL_PROMPT = "fail"  # the prompt that makes run() raise, to test the failure payload
WORD_DELAY_S = 0.2


class ToyRunner(BaseRunner):
    @cog.streaming
    def run(
        self,
        prompt: str = Input(description="The word to repeat; 'fail' makes run() raise"),
        n: int = Input(default=3, ge=1, le=10, description="How many words to stream"),
    ) -> ConcatenateIterator[str]:
        if prompt == FAIL_PROMPT:
            raise InputError(f"prompt {prompt!r} asks the toy runner to fail", field="prompt")
        self.record_metric("toy.words_requested", n)
        served = 0
        try:
            for index in range(n):
                time.sleep(WORD_DELAY_S)
                served += 1
                yield f"{prompt}{index} "
        except CancelationException:
            # Cog raises this in the run thread on POST /predictions/{id}/cancel; it must be re-raised.
            print(f"toy-runner: canceled after {served} words")
            raise
