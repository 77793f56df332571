# Written with AI assistance; review before relying on it.
"""Streaming over HTTP on the real Cog server (coglet 0.23.1), tested by arrival, never by timing.

The runner is Cerebro's own with a gate in its engine (gated_runner.py): a test holds the engine at a
known point of a request, so "a piece arrived while the engine was still generating" and "the cancel
landed at token 8" are facts, not timings. Each test ends with a normal request that must succeed, and
the engine must then hold no row for anyone else (no zombie).
"""

from __future__ import annotations

import http.client
import itertools
import json
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .conftest import server_log
from .test_cerebro_server import (
    TERMINAL,
    LoopbackPeer,
    assert_succeeded,
    data_uri,
    error_code,
    png_bytes,
    tiny_input,
    wait_ready,
)

if TYPE_CHECKING:
    from .conftest import CogHTTP

GATED_REF = "tests/deployment/gated_runner.py:GatedPredictor"
REFUSED_REF = "tests/deployment/gated_runner.py:RefusedHookPredictor"
GATE_SEED = 1  # at temperature 1 the tiny model meets no stop token with this seed: all 4096 tokens
WAIT_S = 30.0
DELIVERED = "prediction_cancel_delivered"
LOAD_RE = re.compile(r"prediction input_tokens=.* engine_running=(\d+) engine_waiting=(\d+)")


def long_input(**overrides: Any) -> dict[str, Any]:
    """A request the gate holds: seed GATE_SEED, sampled, far more tokens than any test lets it make."""
    return tiny_input(**{"max_new_tokens": 4096, "temperature": 1.0, "seed": GATE_SEED, **overrides})


class SSE:
    """One server-sent-event prediction read on a thread of its own, so the test can wait on what has
    arrived (`wait_for`) and hang up mid-stream (`disconnect`)."""

    def __init__(self, base_url: str, body: dict[str, Any]) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.done = False
        self._changed = threading.Condition()
        parts = urllib.parse.urlsplit(base_url)
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        deadline = time.monotonic() + 10
        while True:  # coglet answers 409 for a moment after a slot is freed
            self._conn.request("POST", "/predictions", payload, headers)
            self._response = self._conn.getresponse()
            if self._response.status != 409 or time.monotonic() > deadline:
                break
            self._response.read()
            time.sleep(0.05)
        assert self._response.status == 200, self._response.status
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        name, data = "message", []
        try:
            for raw in self._response:
                line = raw.decode().rstrip("\r\n")
                if not line:
                    if data:
                        with self._changed:
                            self.events.append((name, json.loads("\n".join(data))))
                            self._changed.notify_all()
                    name, data = "message", []
                elif line.startswith("event:"):
                    name = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    data.append(line.removeprefix("data:").removeprefix(" "))
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass  # hung up by disconnect() (http.client then trips over its own closed file: AttributeError)
        finally:
            with self._changed:
                self.done = True
                self._changed.notify_all()

    def chunks(self) -> list[str]:
        with self._changed:
            return [data["chunk"] for name, data in self.events if name == "output"]

    def wait_for(self, predicate: Callable[[SSE], bool], timeout_s: float = WAIT_S) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self) or self.done, timeout=timeout_s) and (
                predicate(self)
            )

    def completed(self, timeout_s: float = WAIT_S) -> dict[str, Any]:
        assert self.wait_for(lambda s: s.done, timeout_s), "the stream did not end"
        ends = [data for name, data in self.events if name == "completed"]
        assert ends, [name for name, _ in self.events]
        return ends[-1]

    def disconnect(self) -> None:
        sock = self._conn.sock
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
        self._conn.close()


def first_output(stream: SSE) -> bool:
    return bool(stream.chunks())


def delivered_count(base_url: str) -> int:
    return server_log(base_url).count(DELIVERED)


def cancel_delivered(base_url: str, cog_http: CogHTTP, prediction_id: str) -> None:
    """Cancel the prediction, and return once the bridge has set its Event."""
    before = delivered_count(base_url)
    assert cog_http.post(f"{base_url}/predictions/{prediction_id}/cancel")[0] == 200
    wait_delivered(base_url, before)


def wait_delivered(base_url: str, before: int) -> None:
    """Until the bridge has set a cancel's Event since `before` (its line in the server's log)."""
    deadline = time.monotonic() + WAIT_S
    while delivered_count(base_url) <= before:
        assert time.monotonic() < deadline, "the cancel never reached the prediction"
        time.sleep(0.02)


def assert_no_zombie(base_url: str, cog_http: CogHTTP) -> None:
    """A normal request succeeds, and when it ends nobody else holds a row or waits in the engine."""
    assert wait_ready(base_url) == "READY"
    status, body = cog_http.predict(base_url, {"input": tiny_input()})
    assert_succeeded(status, body)
    match = LOAD_RE.search(body["logs"])
    assert match, body["logs"]
    assert (int(match.group(1)), int(match.group(2))) == (0, 0), "engine still busy"


def prediction_log_line(body: dict[str, Any]) -> str:
    lines = [line for line in (body.get("logs") or "").splitlines() if "prediction input_tokens=" in line]
    assert len(lines) == 1, body.get("logs")
    return lines[0]


@pytest.fixture(scope="module")
def peer() -> Iterator[LoopbackPeer]:
    server = LoopbackPeer()
    yield server
    server.close()


def _env(tiny_model_dir: Path, peer: LoopbackPeer) -> dict[str, str]:
    return {
        "CEREBRO_MODEL_DIR": str(tiny_model_dir),
        "CEREBRO_LOG_LEVEL": "INFO",
        "CEREBRO_MAX_BATCH": "32",  # all 32 concurrent predictions decode together, on CPU too
        "CEREBRO_TEST_GATE_URL": f"http://127.0.0.1:{peer.port}",
        "CEREBRO_TEST_GATE_SEED": str(GATE_SEED),
    }


@pytest.fixture(scope="module")
def gated_url(cog_server: Callable[..., str], tiny_model_dir: Path, peer: LoopbackPeer) -> str:
    return cog_server(GATED_REF, env=_env(tiny_model_dir, peer))


def gate(peer: LoopbackPeer, point: str) -> tuple[threading.Event, threading.Event]:
    """Hold the engine at `point` of the next gated request: (reached, release)."""
    path = f"/gate/{point}"
    peer.holds.pop(path, None)
    _, reached, release = peer.hold(path, b"go")
    return reached, release


def release_all(peer: LoopbackPeer) -> None:
    for _, release in peer.holds.values():
        release.set()
    peer.holds.clear()
    peer.files.pop("/gate/token-4", None)


@pytest.fixture(autouse=True)
def _open_gates(peer: LoopbackPeer) -> Iterator[None]:
    yield
    release_all(peer)  # a failed test must not leave the engine held for the next one


# ------------------------------------------------------------------------------------------ arrival


def test_the_first_piece_arrives_while_the_engine_is_held_mid_generation(
    gated_url: str, cog_http: CogHTTP, peer: LoopbackPeer
) -> None:
    reached, release = gate(peer, "token-8")
    stream = SSE(gated_url, {"input": long_input(max_new_tokens=64)})

    # The engine cannot pass token 8 until released, so a piece that arrives now was sent mid-stream;
    # a server that buffers until the end sends nothing until the release and fails this wait.
    assert stream.wait_for(first_output), f"no piece arrived while the engine was held: {stream.events}"
    assert reached.wait(WAIT_S), "the engine never reached token 8"
    assert not stream.done
    release.set()

    completed = stream.completed()
    assert completed["status"] == "succeeded", completed.get("error")
    assert completed["output"] == stream.chunks()
    assert completed["metrics"]["output_token_count"] == 64
    assert_no_zombie(gated_url, cog_http)


# ------------------------------------------------------------------------------------------- cancel


def test_a_cancel_mid_stream_stops_decoding_within_a_step_and_frees_the_row(
    gated_url: str, cog_http: CogHTTP, peer: LoopbackPeer
) -> None:
    reached, release = gate(peer, "token-8")
    prediction_id = f"stream-cancel-{uuid.uuid4().hex[:12]}"
    stream = SSE(gated_url, {"id": prediction_id, "input": long_input()})
    assert stream.wait_for(first_output) and reached.wait(WAIT_S)

    cancel_delivered(gated_url, cog_http, prediction_id)
    release.set()  # the engine goes on from token 8 with the cancel already set

    completed = stream.completed()
    assert completed["status"] == "canceled", completed
    # Token 8 was made; the step in flight may add one more before the row is freed. Of 4096.
    assert 8 <= completed["metrics"]["output_token_count"] <= 9, completed["metrics"]
    assert len(stream.chunks()) <= 9
    assert "finish=cancelled" in prediction_log_line(completed)
    assert_no_zombie(gated_url, cog_http)


def test_a_cancel_before_the_first_piece_sends_nothing_and_leaves_no_zombie(
    gated_url: str, cog_http: CogHTTP, peer: LoopbackPeer
) -> None:
    reached, release = gate(peer, "admit")  # run() has returned its stream; the engine has not begun
    prediction_id = f"stream-early-cancel-{uuid.uuid4().hex[:12]}"
    stream = SSE(gated_url, {"id": prediction_id, "input": long_input()})
    assert reached.wait(WAIT_S), "the request never reached the engine"

    cancel_delivered(gated_url, cog_http, prediction_id)
    release.set()  # its prefill runs, and its first token must not reach the reader

    completed = stream.completed()
    assert completed["status"] == "canceled", completed
    assert stream.chunks() == []
    assert completed["metrics"]["output_token_count"] == 0
    assert "finish=cancelled" in prediction_log_line(completed)
    assert_no_zombie(gated_url, cog_http)


def test_a_client_that_hangs_up_mid_stream_frees_its_row(
    gated_url: str, cog_http: CogHTTP, peer: LoopbackPeer
) -> None:
    reached, release = gate(peer, "token-8")
    prediction_id = f"stream-hangup-{uuid.uuid4().hex[:12]}"
    stream = SSE(gated_url, {"id": prediction_id, "input": long_input(), "webhook": peer.webhook_url})
    assert stream.wait_for(first_output) and reached.wait(WAIT_S)

    before = delivered_count(gated_url)
    stream.disconnect()
    wait_delivered(gated_url, before)  # coglet cancels a prediction whose stream lost its reader
    release.set()

    final = peer.wait_for(lambda p: p.get("id") == prediction_id and p["status"] in TERMINAL)
    assert final is not None, "no final webhook"
    assert final["status"] == "canceled"
    assert final["metrics"]["output_token_count"] <= 9
    assert_no_zombie(gated_url, cog_http)


# ----------------------------------------------------------------------------------------- errors


def test_an_internal_error_mid_stream_is_E2000_with_an_incident_id_and_no_detail(
    gated_url: str, cog_http: CogHTTP, peer: LoopbackPeer
) -> None:
    peer.serve("/gate/token-4", b"fail", "text/plain")  # the engine raises after token 4
    stream = SSE(gated_url, {"input": long_input()})

    completed = stream.completed()
    assert completed["status"] == "failed", completed
    assert 1 <= len(stream.chunks()) <= 4  # pieces went out before the failure
    assert error_code(completed) == "E2000", completed["error"]
    incident = re.search(r"incident ([0-9a-f]{12})", completed["error"])
    assert incident, completed["error"]
    for leak in ("secret", "engine.py", "Traceback", "line 42"):
        assert leak not in completed["error"] and leak not in completed["logs"], leak
    # The operator's log has the traceback under the same incident id.
    log = server_log(gated_url)
    assert f"incident={incident.group(1)}" in log and "GateFailure" in log
    peer.files.pop("/gate/token-4")
    assert_no_zombie(gated_url, cog_http)


def test_a_json_answer_cut_off_mid_stream_is_E1302(gated_url: str, cog_http: CogHTTP) -> None:
    schema = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}
    body = {"input": tiny_input(json_schema=json.dumps(schema), max_new_tokens=3)}

    completed = SSE(gated_url, body).completed()

    assert completed["status"] == "failed", completed
    assert error_code(completed) == "E1302", completed["error"]
    assert "max_new_tokens" in completed["error"]
    assert_no_zombie(gated_url, cog_http)


# ------------------------------------------------------------------------------------- concurrency


def test_32_streams_at_once_interleave_and_a_cancelled_one_leaves_the_others_whole(
    gated_url: str, cog_http: CogHTTP, peer: LoopbackPeer
) -> None:
    requests = [
        tiny_input(
            prompt=f"Item {k}: {'what is in the picture? ' * (k % 4)}",
            image=data_uri(png_bytes((24 + 3 * k, 40 - k), ("red", "teal", "navy", "olive")[k % 4])),
            max_new_tokens=12 + k % 5,
        )
        for k in range(31)
    ]
    alone = []
    for inputs in requests:
        status, body = cog_http.predict(gated_url, {"input": inputs})
        assert_succeeded(status, body, max_new_tokens=inputs["max_new_tokens"])
        alone.append("".join(body["output"]))

    arrivals: list[int] = []  # the stream index of every piece, in the order the pieces arrived
    arrivals_lock = threading.Lock()
    cancel_id = f"stream-32-cancel-{uuid.uuid4().hex[:12]}"
    reached, release = gate(peer, "token-8")
    bodies = [{"input": inputs} for inputs in requests] + [{"id": cancel_id, "input": long_input()}]
    streams: list[SSE | None] = [None] * len(bodies)

    def open_and_watch(index: int) -> None:
        stream = streams[index] = SSE(gated_url, bodies[index])
        seen = 0
        while not stream.done:
            stream.wait_for(lambda s, seen=seen: len(s.chunks()) > seen or s.done)
            count = len(stream.chunks())
            with arrivals_lock:
                arrivals.extend([index] * (count - seen))
            seen = count

    watchers = [threading.Thread(target=open_and_watch, args=(i,), daemon=True) for i in range(len(bodies))]
    for watcher in watchers:
        watcher.start()
    assert reached.wait(WAIT_S), "the long prediction never reached token 8"
    cancel_delivered(gated_url, cog_http, cancel_id)
    release.set()
    for watcher in watchers:
        watcher.join(timeout=120)

    *others, cancelled = streams
    assert cancelled is not None and cancelled.completed()["status"] == "canceled"
    assert cancelled.completed()["metrics"]["output_token_count"] <= 9
    texts = []
    for stream in others:
        assert stream is not None
        completed = stream.completed()
        assert completed["status"] == "succeeded", completed.get("error")
        texts.append("".join(stream.chunks()))
    assert texts == alone
    # Served together: the arrival order switches between streams far more often than 32 streams served
    # one after another could (31 switches).
    switches = sum(1 for a, b in itertools.pairwise(arrivals) if a != b)
    assert switches > 3 * len(bodies), (switches, len(arrivals))
    assert_no_zombie(gated_url, cog_http)


def test_three_at_once_each_get_their_own_logs_and_metrics(gated_url: str, cog_http: CogHTTP) -> None:
    lengths = (5, 40, 120)  # the gate seed stops for no token: each makes exactly its max_new_tokens
    streams = [SSE(gated_url, {"input": long_input(max_new_tokens=n)}) for n in lengths]
    for n, stream in zip(lengths, streams, strict=True):
        completed = stream.completed()
        assert completed["status"] == "succeeded", completed.get("error")
        assert completed["metrics"]["output_token_count"] == n, completed["metrics"]
        line = prediction_log_line(completed)  # exactly one prediction line in its logs: its own
        assert f"output_tokens={n} " in line, line
        counts = [
            d["value"] for name, d in stream.events if name == "metric" and d["name"] == "output_token_count"
        ]
        assert counts == [n]


# ------------------------------------------------------------------------------------------ the gate


@pytest.fixture(scope="module")
def refused_url(cog_server: Callable[..., str], tiny_model_dir: Path, peer: LoopbackPeer) -> str:
    return cog_server(REFUSED_REF, env=_env(tiny_model_dir, peer))


def test_with_the_hook_refused_the_buffered_shape_serves_cancels_and_says_why(
    refused_url: str, cog_http: CogHTTP, peer: LoopbackPeer
) -> None:
    setup_line = next(line for line in server_log(refused_url).splitlines() if "setup_s=" in line)
    assert "stream_shape=buffered" in setup_line, setup_line
    assert "stream_reason=asyncio.run_coroutine_threadsafe_is_not_the_standard_library's" in setup_line
    assert_succeeded(*cog_http.predict(refused_url, {"input": tiny_input()}))

    reached, release = gate(peer, "token-8")
    prediction_id = f"buffered-cancel-{uuid.uuid4().hex[:12]}"
    request = {"id": prediction_id, "input": long_input(), "webhook": peer.webhook_url}
    assert cog_http.predict(refused_url, request, headers={"Prefer": "respond-async"})[0] == 202
    assert reached.wait(WAIT_S), "the request never reached token 8"
    cancelled_lines = server_log(refused_url).count("finish=cancelled")
    assert cog_http.post(f"{refused_url}/predictions/{prediction_id}/cancel")[0] == 200
    # coglet cancels the buffered coroutine itself: canceled while the engine is still held.
    final = peer.wait_for(lambda p: p.get("id") == prediction_id and p["status"] in TERMINAL)
    release.set()
    assert final is not None and final["status"] == "canceled", final
    # The coroutine's own end (its log line, its metrics) runs after coglet has reported the cancel, so
    # it reaches the server's log rather than the final webhook: the buffered shape's known cost.
    deadline = time.monotonic() + WAIT_S
    while server_log(refused_url).count("finish=cancelled") <= cancelled_lines:
        assert time.monotonic() < deadline, "no finish=cancelled line for the cancelled prediction"
        time.sleep(0.05)
    assert_no_zombie(refused_url, cog_http)
