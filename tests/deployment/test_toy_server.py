# Written with AI assistance; review before relying on it.
"""The serving harness end to end: the toy runner behind the real Cog server (coglet), over real HTTP.

These pin the HTTP shapes Cerebro's predictor relies on: a prediction with its metrics, 422 from the
schema's constraints, SSE streaming, cancel of an async prediction, and the failure payload.
"""

from __future__ import annotations

import http.server
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cerebro.serving import openapi_schema

if TYPE_CHECKING:
    from .conftest import CogHTTP

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER_REF = "tests/deployment/toy_runner.py:ToyRunner"
TERMINAL = ("succeeded", "failed", "canceled")
WAIT_S = 20.0


@pytest.fixture(scope="module")
def toy_url(cog_server: Callable[..., str]) -> str:
    return cog_server(RUNNER_REF)


class WebhookSink:
    """Collects the prediction objects Cog POSTs to a webhook, on a loopback port."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.end_headers()
                with sink._changed:
                    sink.received.append(body)
                    sink._changed.notify_all()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep pytest's output for failures

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/webhook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = WAIT_S
    ) -> dict[str, Any]:
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((body for body in self.received if predicate(body)), None), timeout=timeout_s
            )
        assert found is not None, f"no webhook matched within {timeout_s} s; received: {self.received}"
        return found

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def webhook_sink() -> Iterator[WebhookSink]:
    sink = WebhookSink()
    yield sink
    sink.close()


def test_prediction_returns_output_and_metrics(toy_url: str, cog_http: CogHTTP) -> None:
    status, body = cog_http.predict(toy_url, {"input": {"prompt": "hi", "n": 2}})

    assert status == 200
    assert body["status"] == "succeeded"
    assert body["output"] == ["hi0 ", "hi1 "]  # a ConcatenateIterator arrives as its list of chunks
    # record_metric's dotted key nests; predict_time is Cog's own.
    assert body["metrics"]["toy"] == {"words_requested": 2}
    assert body["metrics"]["predict_time"] > 0


def test_server_serves_the_schema_serving_wrote(
    toy_url: str, cog_http: CogHTTP, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT)  # runner refs are relative to the project root
    status, served = cog_http.get(f"{toy_url}/openapi.json")

    assert status == 200
    assert served == openapi_schema(RUNNER_REF)
    assert served["paths"]["/predictions"]["post"]["x-cog-streaming"] is True
    n = served["components"]["schemas"]["Input"]["properties"]["n"]
    assert (n["type"], n["default"], n["minimum"], n["maximum"]) == ("integer", 3, 1, 10)


@pytest.mark.parametrize(
    ("given", "loc", "error_type"),
    [
        ({"prompt": "hi", "n": 99}, ["body", "input", "n"], "value_error"),
        ({"prompt": "hi", "n": "three"}, ["body", "input", "n"], "value_error"),
        ({"n": 2}, ["body", "input", "prompt"], "value_error.missing"),
    ],
)
def test_invalid_input_is_rejected_with_422(
    toy_url: str, cog_http: CogHTTP, given: dict[str, Any], loc: list[str], error_type: str
) -> None:
    status, body = cog_http.predict(toy_url, {"input": given})

    assert status == 422
    [detail] = body["detail"]
    assert (detail["loc"], detail["type"]) == (loc, error_type)
    assert detail["msg"]


def test_output_streams_as_server_sent_events(toy_url: str, cog_http: CogHTTP) -> None:
    events = list(cog_http.events(f"{toy_url}/predictions", {"input": {"prompt": "w", "n": 4}}))

    assert events[0].name == "start"
    assert events[-1].name == "completed"
    outputs = [e for e in events if e.name == "output"]
    assert [e.data for e in outputs] == [{"chunk": f"w{i} ", "index": i} for i in range(4)]
    metrics = [e.data for e in events if e.name == "metric"]
    assert metrics == [{"name": "toy.words_requested", "value": 4, "mode": "replace"}]
    completed = events[-1].data
    assert completed["status"] == "succeeded"
    assert completed["output"] == [e.data["chunk"] for e in outputs]
    # Streamed, not buffered: the first chunk arrives while three more words are still being made, so
    # more time passes after it than before it (one word's delay).
    assert events[-1].arrived - outputs[0].arrived > outputs[0].arrived - events[0].arrived


def test_cancel_stops_an_async_prediction(toy_url: str, cog_http: CogHTTP, webhook_sink: WebhookSink) -> None:
    prediction_id = f"toy-cancel-{uuid.uuid4().hex[:12]}"
    request = {"id": prediction_id, "input": {"prompt": "slow", "n": 10}, "webhook": webhook_sink.url}

    status, body = cog_http.predict(toy_url, request, headers={"Prefer": "respond-async"})
    assert (status, body) == (202, {"id": prediction_id, "status": "starting"})
    webhook_sink.wait_for(lambda p: p["status"] == "processing" and bool(p.get("output")))
    status, _ = cog_http.post(f"{toy_url}/predictions/{prediction_id}/cancel")
    assert status == 200

    final = webhook_sink.wait_for(lambda p: p["status"] in TERMINAL)
    assert final["status"] == "canceled"
    assert 1 <= len(final["output"]) < 10
    # The runner saw cog.CancelationException in its own thread (it logs, then re-raises).
    assert "toy-runner: canceled after" in final["logs"]


def test_cancel_of_an_unknown_prediction_is_404(toy_url: str, cog_http: CogHTTP) -> None:
    status, _ = cog_http.post(f"{toy_url}/predictions/no-such-prediction/cancel")

    assert status == 404


def test_server_is_free_again_after_a_cancel(toy_url: str, cog_http: CogHTTP) -> None:
    # predict() waits out a 409 while the canceled run unwinds; a slot lost to the cancel would fail here.
    status, body = cog_http.predict(toy_url, {"input": {"prompt": "again", "n": 1}})

    assert (status, body["status"], body["output"]) == (200, "succeeded", ["again0 "])


def test_run_that_raises_gives_failed_status_and_the_error(toy_url: str, cog_http: CogHTTP) -> None:
    status, body = cog_http.predict(toy_url, {"input": {"prompt": "fail"}})

    assert status == 200  # a failed run is a successful request
    assert body["status"] == "failed"
    # coglet prefixes its own words ("Prediction failed: Generator iteration error: InputError: "); the
    # error's own rendering, with its stable code, is kept whole inside.
    assert "InputError: E1001 prompt 'fail' asks the toy runner to fail" in body["error"]
    assert body.get("output") is None
