# Written with AI assistance; review before relying on it.
"""URL fetching in cerebro.utils against a real HTTP server on 127.0.0.1, in a thread.

Refused addresses are literal IPs, so no DNS is involved, and a guard makes any connection to
something other than 127.0.0.1 fail the test instead of leaving the machine.
"""

from __future__ import annotations

import http.server
import io
import pathlib
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from PIL import Image

from cerebro.errors import ImageError, InputError, URLError
from cerebro.utils import FetchPolicy, fetch_url, load_image

FIELD = "images[0]"
LOCAL = FetchPolicy(connect_timeout_s=1.0, read_timeout_s=1.0, allow_loopback=True)
MAX_BYTES = 1_000_000


def _png(colour: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 4), colour).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


def _raises(code: str, exc_type: type[InputError] = URLError) -> pytest.RaisesExc[InputError]:
    """Expect `exc_type` with `code`, rendered as "<code> <message>" and naming FIELD."""
    return pytest.raises(exc_type, match=rf"^{code} .*{re.escape(FIELD)}")


# ------------------------------------------------------------------------------------- the server


@dataclass
class Server:
    base: str  # http://127.0.0.1:<port>
    port: int
    seen: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header) per request
    stop: threading.Event = field(default_factory=threading.Event)


def _make_handler(server: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output clean
            pass

        def _send(
            self,
            status: int,
            body: bytes = b"",
            headers: dict[str, str] | None = None,
            *,
            length: bool = True,
        ) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            server.seen.append((path, self.headers.get("Host", "")))
            try:
                if path.startswith("/redirect/"):  # /redirect/N: N hops (relative ones), then the PNG
                    n = int(path.rsplit("/", 1)[1])
                    self._send(302, headers={"Location": f"{n - 1}" if n > 1 else "../image.png"})
                else:
                    ROUTES.get(path, lambda h: h._send(404, b"not found"))(self)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up first, on purpose
                pass

        def drip(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            for _ in range(30):  # one byte every 50 ms: never idle for long, never finished
                if server.stop.wait(0.05):
                    return
                self.wfile.write(b"\x00")
                self.wfile.flush()

        def drip_headers(self) -> None:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Slow: " + b"a" * 30:
                if server.stop.wait(0.05):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()

    ROUTES: dict[str, Callable[[Handler], None]] = {
        "/image.png": lambda h: h._send(200, PNG, {"Content-Type": "image/png"}),
        "/octet": lambda h: h._send(200, PNG, {"Content-Type": "application/octet-stream"}),
        "/no-type": lambda h: h._send(200, PNG),
        "/page.html": lambda h: h._send(200, b"<html></html>", {"Content-Type": "text/html; charset=utf-8"}),
        "/text-as-png": lambda h: h._send(200, b"not a png at all", {"Content-Type": "image/png"}),
        "/huge": lambda h: h._send(200, b"\x00" * 50_000, {"Content-Type": "image/png"}),
        # No Content-Length: HTTP/1.0 ends the body by closing, so only counting while reading stops it.
        "/huge-unannounced": lambda h: h._send(
            200, b"\x00" * 50_000, {"Content-Type": "image/png"}, length=False
        ),
        "/missing": lambda h: h._send(404, b"not found"),
        "/slow": lambda h: (
            None if server.stop.wait(1.5) else h._send(200, PNG, {"Content-Type": "image/png"})
        ),
        "/drip": Handler.drip,
        "/drip-headers": Handler.drip_headers,
        "/loop": lambda h: h._send(302, headers={"Location": "/loop"}),
        "/no-location": lambda h: h._send(302),
        "/to-file": lambda h: h._send(302, headers={"Location": "file:///etc/passwd"}),
        "/to-private": lambda h: h._send(302, headers={"Location": "http://10.0.0.1/image.png"}),
        "/to-metadata": lambda h: h._send(302, headers={"Location": "http://169.254.169.254/latest/"}),
    }
    return Handler


def _serve(httpd: http.server.ThreadingHTTPServer, server: Server) -> Iterator[Server]:
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop.set()  # wake slow handlers so nothing outlives the test
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def server() -> Iterator[Server]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = httpd.server_address[1]
    state = Server(base=f"http://127.0.0.1:{port}", port=port)
    httpd.RequestHandlerClass = _make_handler(state)
    yield from _serve(httpd, state)


@pytest.fixture(autouse=True)
def only_127_0_0_1(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Fail, without any traffic, if the code under test connects anywhere but loopback."""
    attempts: list[object] = []
    real = socket.create_connection

    def guarded(address: tuple[str, int], *args: object, **kwargs: object) -> socket.socket:
        attempts.append(address)
        if address[0] not in ("127.0.0.1", "::1"):  # the loopback addresses, v4 and v6
            raise AssertionError(f"test tried to connect to {address}")
        return real(address, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "create_connection", guarded)
    return attempts


# ---------------------------------------------------------------------------------------- fetches


def test_png_is_fetched_and_loaded_with_the_original_host_header(server: Server) -> None:
    assert fetch_url(f"{server.base}/image.png", field=FIELD, policy=LOCAL, max_bytes=MAX_BYTES) == PNG

    img = load_image(f"{server.base}/image.png", field=FIELD, fetch=LOCAL)
    assert (img.size, img.getpixel((0, 0))) == ((6, 4), (255, 0, 0))
    assert server.seen[-1] == ("/image.png", f"127.0.0.1:{server.port}")


@pytest.mark.parametrize("path", ["/octet", "/no-type"])
def test_octet_stream_or_no_content_type_is_accepted_when_the_bytes_are_an_image(
    server: Server, path: str
) -> None:
    assert load_image(server.base + path, field=FIELD, fetch=LOCAL).size == (6, 4)


def test_redirect_chain_is_followed_up_to_max_redirects(server: Server) -> None:
    policy = FetchPolicy(read_timeout_s=1.0, max_redirects=3, allow_loopback=True)

    assert fetch_url(f"{server.base}/redirect/3", field=FIELD, policy=policy, max_bytes=MAX_BYTES) == PNG
    assert [path for path, _ in server.seen] == ["/redirect/3", "/redirect/2", "/redirect/1", "/image.png"]

    with _raises("E1201") as info:
        fetch_url(f"{server.base}/redirect/4", field=FIELD, policy=policy, max_bytes=MAX_BYTES)
    assert "more than 3 redirects" in info.value.message
    with _raises("E1201"):
        fetch_url(f"{server.base}/loop", field=FIELD, policy=policy, max_bytes=MAX_BYTES)


@pytest.mark.parametrize(
    ("path", "code", "words"),
    [
        ("/to-file", "E1200", "'file'"),
        ("/to-private", "E1200", "10.0.0.1"),
        ("/to-metadata", "E1200", "169.254.169.254"),
        ("/no-location", "E1201", "without a Location"),
    ],
)
def test_every_redirect_hop_is_vetted_again(server: Server, path: str, code: str, words: str) -> None:
    with _raises(code) as info:
        fetch_url(server.base + path, field=FIELD, policy=LOCAL, max_bytes=MAX_BYTES)
    assert words in info.value.message
    assert server.seen == [(path, f"127.0.0.1:{server.port}")]  # one request; the next hop never left


def test_http_error_status_is_E1201_naming_the_url_without_secrets(server: Server) -> None:
    url = f"http://user:hunter2@127.0.0.1:{server.port}/missing?token=s3cret"

    with _raises("E1201") as info:
        fetch_url(url, field=FIELD, policy=LOCAL, max_bytes=MAX_BYTES)
    assert "HTTP 404" in info.value.message
    assert f"127.0.0.1:{server.port}/missing" in info.value.message
    assert "hunter2" not in str(info.value) and "s3cret" not in str(info.value)


def test_read_timeout_is_E1201(server: Server) -> None:
    policy = FetchPolicy(read_timeout_s=0.2, allow_loopback=True)

    with _raises("E1201") as info:
        fetch_url(f"{server.base}/slow", field=FIELD, policy=policy, max_bytes=MAX_BYTES)
    assert "timeout" in info.value.message


@pytest.mark.parametrize("path", ["/drip", "/drip-headers"])
def test_a_response_that_keeps_dripping_hits_the_whole_fetch_deadline(server: Server, path: str) -> None:
    # Each byte arrives well within the socket timeout; only the total deadline stops this, in the body
    # and in the headers alike (http.client reads headers a line at a time, with no deadline of its own).
    policy = FetchPolicy(read_timeout_s=1.0, total_timeout_s=0.4, allow_loopback=True)
    started = time.monotonic()

    with _raises("E1201") as info:
        fetch_url(f"{server.base}{path}", field=FIELD, policy=policy, max_bytes=MAX_BYTES)
    assert "over 0.4 s in all" in info.value.message
    assert time.monotonic() - started < 1.4  # the drip would last 1.5 s or more; the deadline is 0.4 s


def test_ipv6_loopback_is_fetched_when_loopback_is_allowed_and_refused_otherwise() -> None:
    class V6Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = V6Server(("::1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        url = f"http://[::1]:{httpd.server_address[1]}/a.png"
        assert fetch_url(url, field=FIELD, policy=LOCAL, max_bytes=MAX_BYTES) == PNG
        with _raises("E1200", URLError) as info:
            fetch_url(url, field=FIELD, policy=FetchPolicy(), max_bytes=MAX_BYTES)
        assert "loopback" in info.value.message
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(
    ("path", "words"),
    [("/huge", "the body is 50000 bytes"), ("/huge-unannounced", "over the limit of 10000 bytes")],
)
def test_body_over_max_bytes_is_E1201(server: Server, path: str, words: str) -> None:
    # An announced Content-Length is refused before reading; an unannounced body while reading.
    with _raises("E1201") as info:
        fetch_url(server.base + path, field=FIELD, policy=LOCAL, max_bytes=10_000)
    assert words in info.value.message


def test_html_is_refused_as_not_an_image(server: Server) -> None:
    with _raises("E1201") as info:
        fetch_url(f"{server.base}/page.html", field=FIELD, policy=LOCAL, max_bytes=MAX_BYTES)
    assert "text/html" in info.value.message


def test_image_content_type_with_bytes_that_are_not_an_image_is_E1103(server: Server) -> None:
    with _raises("E1103", ImageError):
        load_image(f"{server.base}/text-as-png", field=FIELD, fetch=LOCAL)


def test_nothing_listening_is_E1201() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with _raises("E1201"):
        fetch_url(f"http://127.0.0.1:{port}/a.png", field=FIELD, policy=LOCAL, max_bytes=MAX_BYTES)


# --------------------------------------------------------------------------------------- refusals


def test_loopback_is_refused_by_default_and_allowed_by_the_policy(
    server: Server, only_127_0_0_1: list[object]
) -> None:
    url = f"{server.base}/image.png"

    with _raises("E1200") as info:
        fetch_url(url, field=FIELD, policy=FetchPolicy(), max_bytes=MAX_BYTES)
    assert "loopback" in info.value.message
    assert only_127_0_0_1 == [] and server.seen == []  # refused before connecting

    assert fetch_url(url, field=FIELD, policy=LOCAL, max_bytes=MAX_BYTES) == PNG


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/a.png",
        "http://172.16.5.4/a.png",
        "http://192.168.1.1/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",  # shared address space, a cloud metadata service
        "http://[fd00::1]/a.png",
        "http://[fe80::1]/a.png",
        "http://[::1]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",  # IPv4-mapped loopback
        "http://[::ffff:10.0.0.1]/a.png",  # IPv4-mapped private
        "http://[64:ff9b::a9fe:a9fe]/a.png",  # NAT64 of 169.254.169.254
        "http://[2002:a9fe:a9fe::]/a.png",  # 6to4 of 169.254.169.254
        "http://[2002:7f00:1::]/a.png",  # 6to4 of 127.0.0.1
        "http://0.0.0.0/a.png",
        "http://[::]/a.png",
        "http://224.0.0.1/a.png",
        "http://240.0.0.1/a.png",
        "http://2130706433/a.png",  # 127.0.0.1 written as one number
        "https://127.0.0.1/a.png",
        "file:///etc/passwd",
        "ftp://127.0.0.1/a.png",
        "gopher://127.0.0.1:70/_x",
        "http:///a.png",
        "http://127.0.0.1:99999/a.png",
    ],
)
def test_refused_before_any_connection(url: str, only_127_0_0_1: list[object]) -> None:
    policy = FetchPolicy(connect_timeout_s=0.2, read_timeout_s=0.2)

    with _raises("E1200"):
        fetch_url(url, field=FIELD, policy=policy, max_bytes=MAX_BYTES)
    with _raises("E1200"):
        load_image(url, field=FIELD, fetch=policy)
    assert only_127_0_0_1 == []


def test_allow_loopback_does_not_allow_private(only_127_0_0_1: list[object]) -> None:
    for url in ("http://10.0.0.1/a.png", "http://169.254.169.254/"):
        with _raises("E1200"):
            fetch_url(url, field=FIELD, policy=LOCAL, max_bytes=MAX_BYTES)
    assert only_127_0_0_1 == []


# ------------------------------------------------------------------------------- host names (fake DNS)


@dataclass
class FakeDNS:
    answers: dict[str, list[str]]  # host name -> the addresses getaddrinfo returns
    lookups: list[str]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    """Answer for made-up host names in place of the resolver, so no DNS traffic leaves the machine."""
    dns = FakeDNS(answers={}, lookups=[])
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: int, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
        if host not in dns.answers:
            return real(host, port, *args, **kwargs)  # type: ignore[arg-type]
        dns.lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in dns.answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return dns


def test_a_host_name_is_resolved_once_and_its_vetted_address_is_used(
    server: Server, fake_dns: FakeDNS
) -> None:
    fake_dns.answers["images.test"] = ["127.0.0.1"]

    url = f"http://images.test:{server.port}/image.png"
    assert fetch_url(url, field=FIELD, policy=LOCAL, max_bytes=MAX_BYTES) == PNG
    # The connection went to the IP (the guard allows only 127.0.0.1), with the name as Host.
    assert server.seen == [("/image.png", f"images.test:{server.port}")]
    assert fake_dns.lookups == ["images.test"]


def test_a_host_name_with_any_private_address_is_refused(server: Server, fake_dns: FakeDNS) -> None:
    fake_dns.answers["mixed.test"] = ["127.0.0.1", "10.0.0.1"]

    with _raises("E1200") as info:
        fetch_url(
            f"http://mixed.test:{server.port}/image.png", field=FIELD, policy=LOCAL, max_bytes=MAX_BYTES
        )
    assert "10.0.0.1" in info.value.message
    assert server.seen == []


# ------------------------------------------------------------------------------------------ HTTPS


@pytest.fixture
def tls_server(tmp_path: pathlib.Path) -> Iterator[tuple[Server, pathlib.Path]]:
    """The same routes over TLS, with a self-signed certificate for IP 127.0.0.1."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed, so no test certificate can be made")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    port = httpd.server_address[1]
    state = Server(base=f"https://127.0.0.1:{port}", port=port)
    httpd.RequestHandlerClass = _make_handler(state)
    for served in _serve(httpd, state):
        yield served, cert


def test_https_fetches_when_the_certificate_is_trusted_and_refuses_it_otherwise(
    tls_server: tuple[Server, pathlib.Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, cert = tls_server
    url = f"{server.base}/image.png"

    with _raises("E1201") as info:  # not in the trust store: verification is on
        fetch_url(url, field=FIELD, policy=LOCAL, max_bytes=MAX_BYTES)
    assert "CERTIFICATE_VERIFY_FAILED" in info.value.message

    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # read by ssl.create_default_context()
    assert fetch_url(url, field=FIELD, policy=LOCAL, max_bytes=MAX_BYTES) == PNG
    assert server.seen[-1] == ("/image.png", f"127.0.0.1:{server.port}")


def test_https_to_a_plain_http_server_is_E1201(server: Server) -> None:
    with _raises("E1201"):
        fetch_url(
            f"https://127.0.0.1:{server.port}/image.png", field=FIELD, policy=LOCAL, max_bytes=MAX_BYTES
        )
