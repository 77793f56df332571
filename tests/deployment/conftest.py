# Written with AI assistance; review before relying on it.
"""Deployment tier: the real Cog HTTP server (coglet) in a subprocess, spoken to over real HTTP.

- `cog_server(runner_ref, env=None)` starts `python -m cerebro.serving RUNNER_REF` on a free loopback port,
  in its own temporary working directory (so `.cog/openapi_schema.json` never touches the checkout), waits
  until `GET /health-check` reports READY, and returns the base URL. Every server it started is stopped at
  the end of the session: SIGTERM (which coglet handles), then SIGKILL for anything left in its group.
- `cog_http` is just enough HTTP for Cog's API on the standard library: JSON requests and server-sent events.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120.0  # a real runner loads weights in setup(); the toy is READY in about a second
STOP_TIMEOUT_S = 15.0
POLL_INTERVAL_S = 0.2
LOG_TAIL_LINES = 40


@dataclass
class _Server:
    runner_ref: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _log_tail(server: _Server) -> str:
    lines = server.log_path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _health(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{url}/health-check", timeout=2) as response:
            return dict(json.load(response))
    except (OSError, ValueError):  # not listening yet, or a half-written answer
        return None


def _wait_ready(server: _Server, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    health: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            pytest.fail(
                f"cog server for {server.runner_ref} exited with code {code} before READY; "
                f"log tail:\n{_log_tail(server)}",
                pytrace=False,
            )
        health = _health(server.url)
        status = (health or {}).get("status")
        if status == "READY":
            return
        if status in ("SETUP_FAILED", "DEFUNCT"):
            setup_logs = (health or {}).get("setup", {}).get("logs", "")
            _stop(server)
            pytest.fail(
                f"cog server for {server.runner_ref} is {status}; setup logs:\n{setup_logs}\n"
                f"log tail:\n{_log_tail(server)}",
                pytrace=False,
            )
        time.sleep(POLL_INTERVAL_S)
    _stop(server)
    pytest.fail(
        f"cog server for {server.runner_ref} not READY after {timeout_s:.0f} s (last health: {health}); "
        f"log tail:\n{_log_tail(server)}",
        pytrace=False,
    )


def _stop(server: _Server) -> None:
    """SIGTERM to the serving process (it passes the signal on to coglet), then clean up its group."""
    process = server.process
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT_S)
    # The group is the one this fixture started (start_new_session): coglet and its worker live there.
    # ProcessLookupError means every process of the group has already exited, as it should.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


_SERVERS: dict[str, _Server] = {}  # base URL -> the server this session started there


def server_log(base_url: str) -> str:
    """Everything the server at `base_url` has written so far (coglet's own log and the worker's)."""
    return _SERVERS[base_url].log_path.read_text(errors="replace")


def worker_pid(base_url: str) -> int:
    """The process id of coglet's Python worker (where the runner, its model and its images live)."""
    group = _SERVERS[base_url].process.pid  # start_new_session: the group is the server's own
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # the process ended meanwhile
            continue
        # Field 5 of /proc/PID/stat is the process group; the name in field 2 may hold spaces.
        if int(stat.rsplit(")", 1)[1].split()[2]) == group and b"_run_worker" in cmdline:
            return int(entry.name)
    raise LookupError(f"no coglet worker in the process group of {base_url}")


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LookupError(f"no VmRSS for process {pid}")


@pytest.fixture(scope="session")
def cog_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., str]]:
    started: list[_Server] = []

    def start(
        runner_ref: str, env: Mapping[str, str] | None = None, *, ready_timeout_s: float = READY_TIMEOUT_S
    ) -> str:
        """Serve `runner_ref` (relative to the repository root); returns the base URL once READY."""
        workdir = tmp_path_factory.mktemp("cog-server")
        port = _free_port()
        log_path = workdir / "server.log"
        command = [sys.executable, "-m", "cerebro.serving", runner_ref]
        command += ["--host", "127.0.0.1", "--port", str(port), "--workdir", str(workdir)]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = _Server(runner_ref, process, log_path, f"http://127.0.0.1:{port}")
        started.append(server)
        _SERVERS[server.url] = server
        _wait_ready(server, ready_timeout_s)
        return server.url

    yield start
    for server in reversed(started):
        _stop(server)


@dataclass(frozen=True)
class Event:
    """One server-sent event: its name, its JSON data, and when it arrived (time.monotonic())."""

    name: str
    data: dict[str, Any]
    arrived: float


class CogHTTP:
    """JSON requests and server-sent events against Cog's HTTP API, on urllib alone.

    `predict` and `events` retry while the server answers 409: coglet 0.23.1 frees its slot a moment after
    it has sent a response, so a request sent right then finds the server "At capacity" (about one in ten
    back-to-back requests on one slot). Every client has to retry 409; these do it for up to `busy_retry_s`.
    """

    timeout_s = 60.0
    busy_retry_s = 10.0
    busy_poll_s = 0.05

    def request(
        self,
        method: str,
        url: str,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Returns (status, parsed JSON body or None); HTTP errors are returned, not raised."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        return status, json.loads(raw) if raw else None

    def get(self, url: str) -> tuple[int, Any]:
        return self.request("GET", url)

    def post(
        self, url: str, body: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        return self.request("POST", url, body if body is not None else {}, headers)

    def predict(
        self, base_url: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        """POST /predictions; returns (status, body) of the first answer that is not 409 (busy)."""
        deadline = time.monotonic() + self.busy_retry_s
        while True:
            status, payload = self.post(f"{base_url}/predictions", body, headers)
            if status != 409 or time.monotonic() > deadline:
                return status, payload
            time.sleep(self.busy_poll_s)

    def _open_when_free(self, request: urllib.request.Request) -> Any:
        deadline = time.monotonic() + self.busy_retry_s
        while True:
            try:
                return urllib.request.urlopen(request, timeout=self.timeout_s)
            except urllib.error.HTTPError as error:
                if error.code != 409 or time.monotonic() > deadline:
                    raise
            time.sleep(self.busy_poll_s)

    def events(self, url: str, body: Mapping[str, Any]) -> Iterator[Event]:
        """POST with `Accept: text/event-stream`; yields events as they arrive until the server closes."""
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        )
        with self._open_when_free(request) as response:
            assert response.headers.get_content_type() == "text/event-stream"
            name, data_lines = "message", []
            for raw_line in response:
                line = raw_line.decode().rstrip("\r\n")
                if not line:  # a blank line ends one event
                    if data_lines:
                        yield Event(name, json.loads("\n".join(data_lines)), time.monotonic())
                    name, data_lines = "message", []
                elif line.startswith("event:"):
                    name = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    data_lines.append(line.removeprefix("data:").removeprefix(" "))


@pytest.fixture(scope="session")
def cog_http() -> CogHTTP:
    return CogHTTP()
