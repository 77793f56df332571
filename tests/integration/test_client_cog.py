# Written with AI assistance; review before relying on it.
"""`predict_url` against Cog's HTTP API: a loopback fake for the edge cases, and real coglet for the rest.

The shapes below were read off coglet 0.23.1 (`python -m cog.server.http`) serving a toy predictor:

    POST /predictions  {"input": ...}                         -> 200 {"id", "status", "output", "error",
                                                                      "logs", "metrics"}; a failed
                                                                      prediction is also 200, with
                                                                      status "failed" and "error"
    POST /predictions  + Accept: text/event-stream            -> 200 text/event-stream:
        event: start      data: {"id": ..., "status": "processing"}
        event: output     data: {"chunk": "hello ", "index": 0}      (one per yielded value)
        event: completed  data: <the final prediction, as above>
      or 406 {"error": "This model does not support streaming responses. ..."} without @cog.streaming
    invalid input                                              -> 422 {"detail": [{"loc": ["body",
                                                                      "input", "prompt"], "msg", "type"}]}
    POST /predictions/{id}/cancel                              -> 200 {}

coglet streams only when the schema in `.cog/openapi_schema.json` (written by `cog build`) marks
`paths./predictions.post.x-cog-streaming: true`; the real-server test writes that file by hand.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from cerebro.client import EXIT_API, EXIT_INTERRUPTED, EXIT_OK, predict_url

CHUNKS = ["A ", "red", " square", " on\nwhite", "."]
NOT_STREAMING = (
    "This model does not support streaming responses. Add @cog.streaming to predict() to enable SSE."
)


class FakeCog:
    def __init__(self) -> None:
        self.streaming = True
        self.output: Any = CHUNKS  # what a finished prediction holds (a server may send one string)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.url = ""

    def prediction(self, inputs: dict[str, Any]) -> dict[str, Any]:
        base = {"id": "pred_1", "logs": "", "metrics": {"predict_time": 0.1}}
        if inputs.get("fail"):
            return {
                **base,
                "status": "failed",
                "error": "E2031 GenerationError: out of memory",
                "output": None,
            }
        return {**base, "status": "succeeded", "output": self.output}


def _handler(fake: FakeCog) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            fake.requests.append(("POST", self.path, dict(self.headers)))
            if self.path.endswith("/cancel"):
                return self._json(200, {})
            inputs = body.get("input", {})
            if "prompt" not in inputs:
                missing = {
                    "loc": ["body", "input", "prompt"],
                    "msg": "Field required",
                    "type": "value_error.missing",
                }
                return self._json(422, {"detail": [missing]})
            if self.headers.get("Accept") != "text/event-stream":
                return self._json(200, fake.prediction(inputs))
            if not fake.streaming:
                return self._json(406, {"error": NOT_STREAMING})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            events = [("start", {"id": "pred_1", "status": "processing"})]
            events += [("output", {"chunk": chunk, "index": i}) for i, chunk in enumerate(CHUNKS)]
            events.append(("completed", fake.prediction(inputs)))
            for event, data in events:
                self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def fake() -> Iterator[FakeCog]:
    state = FakeCog()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield state
    server.shutdown()
    server.server_close()


def _run(url: str, inputs: dict[str, Any], **kwargs: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = predict_url(url, inputs, out=out, err=err, timeout_s=30, **kwargs)
    return code, out.getvalue(), err.getvalue()


def test_streams_chunks_then_ends_the_line(fake: FakeCog) -> None:
    code, out, err = _run(fake.url, {"prompt": "p"})

    assert (code, out) == (EXIT_OK, "".join(CHUNKS) + "\n"), err
    assert fake.requests[0][2]["Accept"] == "text/event-stream"


def test_a_model_that_cannot_stream_falls_back_to_one_request(fake: FakeCog) -> None:
    fake.streaming = False

    code, out, err = _run(fake.url + "/", {"prompt": "p"})

    assert (code, out) == (EXIT_OK, "".join(CHUNKS) + "\n"), err
    assert "does not stream" in err
    assert len(fake.requests) == 2


def test_json_prints_the_prediction(fake: FakeCog) -> None:
    code, out, err = _run(fake.url, {"prompt": "p"}, as_json=True)

    assert code == EXIT_OK, err
    assert json.loads(out) == {
        "id": "pred_1",
        "status": "succeeded",
        "output": CHUNKS,
        "metrics": {"predict_time": 0.1},
    }


def test_json_output_is_the_list_of_pieces_even_when_the_server_sent_one_string(fake: FakeCog) -> None:
    fake.output = "".join(CHUNKS)

    code, out, err = _run(fake.url, {"prompt": "p"}, as_json=True)

    assert code == EXIT_OK, err
    assert json.loads(out)["output"] == ["".join(CHUNKS)]


def test_json_of_a_failed_prediction_has_an_empty_output_list(fake: FakeCog) -> None:
    code, out, _err = _run(fake.url, {"prompt": "p", "fail": True}, as_json=True)

    assert code == EXIT_API
    printed = json.loads(out)
    assert (printed["status"], printed["output"]) == ("failed", [])
    assert printed["error"].startswith("E2031 ")


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
def test_invalid_input_exits_4_naming_the_field(fake: FakeCog, stream: bool) -> None:
    code, _out, err = _run(fake.url, {"image": "https://example.com/a.png"}, stream=stream)

    assert code == EXIT_API
    assert "422" in err and "prompt: Field required" in err


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
def test_a_failed_prediction_exits_4_with_its_error_and_id(fake: FakeCog, stream: bool) -> None:
    code, _out, err = _run(fake.url, {"prompt": "p", "fail": True}, stream=stream)

    assert code == EXIT_API
    assert "E2031 GenerationError: out of memory" in err and "pred_1" in err


def test_ctrl_c_while_streaming_cancels_the_prediction(fake: FakeCog) -> None:
    class InterruptingOut(io.StringIO):
        def write(self, text: str) -> int:
            raise KeyboardInterrupt

    err = io.StringIO()
    code = predict_url(fake.url, {"prompt": "p"}, out=InterruptingOut(), err=err)

    assert code == EXIT_INTERRUPTED
    assert ("POST", "/predictions/pred_1/cancel") in [(m, p) for m, p, _ in fake.requests]


def test_nothing_listening_exits_4() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    code, _out, err = _run(f"http://127.0.0.1:{port}", {"prompt": "p"})

    assert code == EXIT_API
    assert "could not talk to" in err


# --- real coglet ------------------------------------------------------------------------------------

TOY_PREDICTOR = """
from typing import Iterator

import cog
from cog import BasePredictor, Input


class Predictor(BasePredictor):
    @cog.streaming
    def predict(self, prompt: str = Input(description="words"), fail: bool = False) -> Iterator[str]:
        for word in prompt.split():
            yield word + " "
        if fail:
            raise ValueError("E2030 GenerationError: the toy was asked to fail")
"""
TOY_SCHEMA = {
    "openapi": "3.0.2",
    "info": {"title": "Cog", "version": "0.1.0"},
    "paths": {"/predictions": {"post": {"summary": "Predict", "x-cog-streaming": True}}},
    "components": {
        "schemas": {
            "Input": {
                "type": "object",
                "title": "Input",
                "required": ["prompt"],
                "properties": {
                    "prompt": {"type": "string", "title": "Prompt", "x-order": 0},
                    "fail": {"type": "boolean", "title": "Fail", "default": False, "x-order": 1},
                },
            },
            "Output": {"type": "array", "items": {"type": "string"}, "x-cog-array-type": "iterator"},
        }
    },
}


@pytest.fixture(scope="module")
def coglet_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("coglet", reason="coglet (installed with cog) is needed for the real server")
    root = tmp_path_factory.mktemp("toy-cog")
    (root / "predict.py").write_text(textwrap.dedent(TOY_PREDICTOR))
    (root / ".cog").mkdir()
    (root / ".cog" / "openapi_schema.json").write_text(json.dumps(TOY_SCHEMA))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "PORT": str(port), "COG_PREDICT_TYPE_STUB": "predict.py:Predictor"}
    # coglet starts its worker as `python` from PATH: make that this interpreter (the venv's).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"coglet did not become ready:\n{(root / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health-check", timeout=2).json().get("status") == "READY":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "no-stream"])
def test_real_coglet_answers(coglet_url: str, stream: bool) -> None:
    code, out, err = _run(coglet_url, {"prompt": "a red square"}, stream=stream)

    assert (code, out) == (EXIT_OK, "a red square \n"), err


def test_real_coglet_failure_and_invalid_input(coglet_url: str) -> None:
    code, out, err = _run(coglet_url, {"prompt": "a b", "fail": True})
    assert code == EXIT_API
    assert out == "a b \n"  # streamed before the failure
    assert "E2030 GenerationError: the toy was asked to fail" in err and "(prediction pred_" in err

    code, out, err = _run(coglet_url, {"fail": True})
    assert code == EXIT_API
    assert "prompt: Field required" in err
