# Written with AI assistance; review before relying on it.
"""`predict_replicate` against a loopback fake of the part of Replicate's HTTP API the client uses.

The fake (`FakeReplicate`) speaks what replicate==1.0.7 calls, read from its source:

    POST /v1/models/{owner}/{name}/predictions   {"input": ..., "stream": true}   -> 201 prediction
    POST /v1/predictions                         {"version": ..., "input": ...}   -> 201 prediction
    GET  /v1/predictions/{id}                    each call moves starting -> processing -> terminal
    POST /v1/predictions/{id}/cancel                                              -> 200 prediction
    GET  {urls.stream}                           text/event-stream: `event: output` per token, then
                                                 `event: done`; a failing model sends `event: error`

Every request must carry `Authorization: Bearer <token>`; anything else gets Replicate's 401 problem
document. SSE events carry an `id:` line because replicate's decoder drops events that never had one.
Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cerebro.client import EXIT_API, EXIT_AUTH, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, predict_replicate

TOKEN = "r8_fake_token_for_tests"
TOKENS = ["A ", "red", " square", " on\nwhite", "."]  # one token spans two SSE data lines
FAILURE = "E1102 ImageError: images[0] is 25000x25000 pixels; the limit is 50 megapixels"
MODELS = {"cerebro/phi-3.5-vision": "abc123", "cerebro/broken": "def456"}
UNAUTHENTICATED = {
    "title": "Unauthenticated",
    "detail": "You did not pass a valid authentication token",
    "status": 401,
}


class FakeReplicate:
    """Prediction state and a request log, shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.predictions: dict[str, dict[str, Any]] = {}
        self.base_url = ""

    def create(self, model: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            prediction_id = f"pred{len(self.predictions) + 1:04d}"
            prediction = {
                "id": prediction_id,
                "model": model,
                "version": version,
                "status": "starting",
                "input": body.get("input"),
                "output": None,
                "logs": "",
                "error": None,
                "metrics": {},
                "created_at": "2025-01-01T00:00:00.000Z",
                "started_at": None,
                "completed_at": None,
                "urls": {
                    "get": f"{self.base_url}/v1/predictions/{prediction_id}",
                    "cancel": f"{self.base_url}/v1/predictions/{prediction_id}/cancel",
                    "stream": f"{self.base_url}/stream/{prediction_id}",
                },
            }
            self.predictions[prediction_id] = prediction
            return dict(prediction)

    def advance(self, prediction_id: str) -> dict[str, Any]:
        """One poll: starting -> processing (half the output) -> succeeded or failed."""
        with self.lock:
            prediction = self.predictions[prediction_id]
            if prediction["status"] == "starting":
                prediction.update(status="processing", started_at="2025-01-01T00:00:01.000Z")
                prediction["output"] = TOKENS[:2]
            elif prediction["status"] == "processing":
                self._finish(prediction)
            return dict(prediction)

    def _finish(self, prediction: dict[str, Any]) -> None:
        prediction["completed_at"] = "2025-01-01T00:00:03.000Z"
        if prediction["model"] == "cerebro/broken":
            prediction.update(status="failed", error=FAILURE, output=None)
        else:
            prediction.update(status="succeeded", output=list(TOKENS), metrics={"predict_time": 1.5})

    def finish(self, prediction_id: str) -> None:
        with self.lock:
            self._finish(self.predictions[prediction_id])

    def cancel(self, prediction_id: str) -> dict[str, Any]:
        with self.lock:
            prediction = self.predictions[prediction_id]
            prediction.update(status="canceled", completed_at="2025-01-01T00:00:02.000Z")
            return dict(prediction)

    def paths(self, method: str) -> list[str]:
        return [r["path"] for r in self.requests if r["method"] == method]


def _handler(fake: FakeReplicate) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else {}
            with fake.lock:
                fake.requests.append(
                    {"method": method, "path": self.path, "headers": dict(self.headers), "body": body}
                )
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._json(401, UNAUTHENTICATED)
            parts = self.path.strip("/").split("/")
            if method == "POST" and parts[:2] == ["v1", "models"] and parts[4:] == ["predictions"]:
                model = f"{parts[2]}/{parts[3]}"
                if model not in MODELS:
                    detail = "The requested resource could not be found."
                    return self._json(404, {"title": "Not found", "detail": detail, "status": 404})
                return self._json(201, fake.create(model, MODELS[model], body))
            if method == "POST" and parts == ["v1", "predictions"]:
                model = next((m for m, v in MODELS.items() if v == body.get("version")), None)
                if model is None:
                    title = "Invalid version or not permitted"
                    return self._json(422, {"title": title, "detail": title, "status": 422})
                return self._json(201, fake.create(model, body["version"], body))
            if parts[:2] == ["v1", "predictions"] and len(parts) >= 3 and parts[2] in fake.predictions:
                if method == "GET" and len(parts) == 3:
                    return self._json(200, fake.advance(parts[2]))
                if method == "POST" and parts[3:] == ["cancel"]:
                    return self._json(200, fake.cancel(parts[2]))
            if method == "GET" and parts[0] == "stream" and parts[1] in fake.predictions:
                return self._stream(parts[1])
            return self._json(404, {"title": "Not found", "detail": "no such route", "status": 404})

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, prediction_id: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()  # HTTP/1.0: the body ends when the connection closes
            failing = fake.predictions[prediction_id]["model"] == "cerebro/broken"
            events = [("output", token) for token in (TOKENS[:1] if failing else TOKENS)]
            if failing:
                events.append(("error", json.dumps({"detail": FAILURE})))
            events.append(("done", json.dumps({"reason": "error"} if failing else {})))
            for number, (event, data) in enumerate(events):
                lines = "".join(f"data: {line}\n" for line in data.split("\n"))
                self.wfile.write(f"event: {event}\nid: {number}\n{lines}\n".encode())
                self.wfile.flush()
            fake.finish(prediction_id)

    return Handler


@pytest.fixture
def fake() -> Iterator[FakeReplicate]:
    state = FakeReplicate()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


class RecordingOut(io.StringIO):
    """stdout that remembers each write, to check tokens were printed one by one and in order."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def _run(fake: FakeReplicate, model: str = "cerebro/phi-3.5-vision", token: str = TOKEN, **kwargs: Any):
    out, err = RecordingOut(), io.StringIO()
    environ = {
        "REPLICATE_API_TOKEN": token,
        "REPLICATE_BASE_URL": fake.base_url,
        "REPLICATE_POLL_INTERVAL": "0.01",
    }
    inputs = {"prompt": "What is in the image?", "image": "data:image/png;base64,iVBORw0KGgo="}
    code = predict_replicate(model, inputs, out=out, err=err, environ=environ, **kwargs)
    return code, out, err.getvalue()


def test_streams_tokens_in_order_as_they_arrive(fake: FakeReplicate) -> None:
    code, out, err = _run(fake)

    assert code == EXIT_OK, err
    assert out.getvalue() == "".join(TOKENS) + "\n"
    assert out.writes[: len(TOKENS)] == TOKENS  # one write per token, in order, before the final newline
    create = fake.requests[0]
    assert create["path"] == "/v1/models/cerebro/phi-3.5-vision/predictions"
    assert create["body"] == {
        "input": {"prompt": "What is in the image?", "image": "data:image/png;base64,iVBORw0KGgo="},
        "stream": True,
    }
    assert create["headers"]["Authorization"] == f"Bearer {TOKEN}"
    assert "/stream/pred0001" in fake.paths("GET")


def test_no_stream_polls_until_done_and_prints_the_output(fake: FakeReplicate) -> None:
    code, out, err = _run(fake, stream=False)

    assert code == EXIT_OK, err
    assert out.getvalue() == "".join(TOKENS) + "\n"
    assert fake.paths("GET") == ["/v1/predictions/pred0001"] * 2  # starting -> processing -> succeeded
    assert "stream" not in fake.requests[0]["body"]


def test_json_prints_the_whole_prediction(fake: FakeReplicate) -> None:
    code, out, err = _run(fake, as_json=True)

    assert code == EXIT_OK, err
    prediction = json.loads(out.getvalue())
    assert prediction["id"] == "pred0001"
    assert prediction["status"] == "succeeded"
    assert prediction["output"] == TOKENS
    assert prediction["metrics"] == {"predict_time": 1.5}
    assert prediction["error"] is None
    assert prediction["created_at"] and prediction["completed_at"]
    assert "input" not in prediction  # it carries whole images
    assert not [path for path in fake.paths("GET") if path.startswith("/stream/")]


def test_a_version_ref_creates_the_prediction_on_that_version(fake: FakeReplicate) -> None:
    code, _out, err = _run(fake, model="cerebro/phi-3.5-vision:abc123", stream=False)

    assert code == EXIT_OK, err
    assert fake.requests[0]["path"] == "/v1/predictions"
    assert fake.requests[0]["body"]["version"] == "abc123"


def test_a_rejected_token_exits_3_with_a_message_and_no_traceback(fake: FakeReplicate) -> None:
    code, out, err = _run(fake, token="r8_wrong")

    assert code == EXIT_AUTH
    assert "the Replicate API token in REPLICATE_API_TOKEN was rejected (401)" in err
    assert "Traceback" not in err
    assert out.getvalue() == ""
    assert len(fake.requests) == 1


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
def test_a_failed_prediction_exits_4_with_its_error_and_id(fake: FakeReplicate, stream: bool) -> None:
    code, _out, err = _run(fake, model="cerebro/broken", stream=stream)

    assert code == EXIT_API
    assert FAILURE in err
    assert "pred0001" in err
    assert "Traceback" not in err


def test_an_unknown_model_exits_4_with_the_server_message(fake: FakeReplicate) -> None:
    code, _out, err = _run(fake, model="cerebro/nope")

    assert code == EXIT_API
    assert "404" in err and "could not be found" in err and "cerebro/nope" in err


def test_ctrl_c_cancels_the_prediction_and_exits_130(fake: FakeReplicate) -> None:
    class InterruptingOut(io.StringIO):
        def write(self, text: str) -> int:
            raise KeyboardInterrupt

    environ = {"REPLICATE_API_TOKEN": TOKEN, "REPLICATE_BASE_URL": fake.base_url}
    err = io.StringIO()
    code = predict_replicate(
        "cerebro/phi-3.5-vision", {"prompt": "hi"}, out=InterruptingOut(), err=err, environ=environ
    )

    assert code == EXIT_INTERRUPTED
    assert "/v1/predictions/pred0001/cancel" in fake.paths("POST")
    assert fake.predictions["pred0001"]["status"] == "canceled"
    assert "canceled prediction pred0001" in err.getvalue()


def test_an_unreachable_api_exits_4() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as server:
        port = server.server_address[1]  # bound, then closed: nothing listens there afterwards
    environ = {"REPLICATE_API_TOKEN": TOKEN}
    err = io.StringIO()
    code = predict_replicate(
        "cerebro/phi-3.5-vision",
        {"prompt": "hi"},
        out=io.StringIO(),
        err=err,
        environ=environ,
        base_url=f"http://127.0.0.1:{port}",
    )

    assert code == EXIT_API
    assert "could not talk to the Replicate API" in err.getvalue()


# --- through the `cerebro predict` command --------------------------------------------------------------


def _cli(
    fake: FakeReplicate, image: Path, token: str | None, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLICATE_")}
    env.update({"REPLICATE_BASE_URL": fake.base_url, "REPLICATE_POLL_INTERVAL": "0.01"})
    if token is not None:
        env["REPLICATE_API_TOKEN"] = token
    command = [sys.executable, "-m", "cerebro", "predict", "--replicate", "cerebro/phi-3.5-vision"]
    command += ["--image", str(image), "--prompt", "What is in the image?", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "square.png"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path)
    return path


def test_cli_streams_the_answer_and_sends_the_image_as_a_data_uri(fake: FakeReplicate, png: Path) -> None:
    result = _cli(fake, png, TOKEN)

    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout == "".join(TOKENS) + "\n"
    sent = fake.requests[0]["body"]["input"]
    assert sent["image"] == "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def test_cli_json_output_parses(fake: FakeReplicate, png: Path) -> None:
    result = _cli(fake, png, TOKEN, "--json")

    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["output"] == TOKENS


@pytest.mark.parametrize(
    ("token", "code", "message"),
    [(None, EXIT_USAGE, "REPLICATE_API_TOKEN is not set"), ("r8_wrong", EXIT_AUTH, "was rejected (401)")],
    ids=["missing-token", "rejected-token"],
)
def test_cli_token_problems_exit_with_a_message_and_no_traceback(
    fake: FakeReplicate, png: Path, token: str | None, code: int, message: str
) -> None:
    result = _cli(fake, png, token)

    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(fake.requests) == (0 if token is None else 1)
