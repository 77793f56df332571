# Written with AI assistance; review before relying on it.
"""Fetching an image over http(s) for a caller who may be hostile: one fetcher, one policy.

What it is: `fetch_url` resolves the host, refuses loopback, private, link-local and reserved addresses
(unless the policy allows them), connects to the address it checked (no second lookup for DNS
rebinding to exploit), vets every redirect hop the same way, caps the body, and bounds the whole fetch
by one deadline. Errors are `URLError` E1200 (refused) or E1201 (not fetchable) naming the field and the
URL without its secrets (`redact`).

What it is not: it does not decode images (cerebro/utils/images.py) and it follows no scheme but http
and https.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from cerebro.errors import URLError, excerpt

logger = logging.getLogger(__name__)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES = 64 * 1024
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


@dataclass(frozen=True)
class FetchPolicy:
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0  # bounds each socket read
    total_timeout_s: float = 30.0  # everything: DNS, connects, headers, body, redirects (one deadline)
    max_redirects: int = 3
    allow_loopback: bool = False  # tests set True
    allow_private: bool = False  # private (10/8, 172.16/12, 192.168/16, fc00::/7) and link-local


def is_url(s: str) -> bool:
    """True for anything shaped like `scheme://...`, not only http(s).

    Routing every such string to `fetch_url` means `file://` or `gopher://` is refused there (E1200)
    instead of being mistaken for a local path.
    """
    return bool(_URL_RE.match(s))


@dataclass(frozen=True)
class _Target:
    """A URL that passed the scheme and address checks, pinned to the addresses it resolved to."""

    scheme: str
    host: str  # ASCII (IDNA) host name, without brackets
    port: int
    host_header: str
    path: str  # path and query, as sent on the request line
    addresses: tuple[str, ...]


def fetch_url(
    url: str, *, field: str, policy: FetchPolicy, max_bytes: int, deadline: float | None = None
) -> bytes:
    """GET an image over http(s), refusing private targets; every redirect hop is vetted again.

    One deadline (`deadline`, time.monotonic(); by default total_timeout_s from now) bounds the whole
    fetch: name resolution, connects, a server that drips its headers or body a byte at a time, and
    every redirect. A Content-Type other than image/* or application/octet-stream is refused; a missing
    one is let through, since the caller still decodes the bytes as an accepted image format.
    """
    started = time.monotonic()
    if deadline is None:
        deadline = started + policy.total_timeout_s
    current = url
    for hop in range(policy.max_redirects + 1):
        target = _vet_url(current, field=field, policy=policy, deadline=deadline)
        status, location, content_type, body = _get(
            target, url=current, field=field, policy=policy, max_bytes=max_bytes, deadline=deadline
        )
        if status in _REDIRECT_STATUSES:
            if not location:
                raise _fetch_error(field, current, f"HTTP {status} redirect without a Location header")
            current = urljoin(current, location)
            continue
        if not 200 <= status < 300:
            raise _fetch_error(field, current, f"HTTP {status}")
        if content_type and not (
            content_type.startswith("image/") or content_type == "application/octet-stream"
        ):
            raise _fetch_error(field, current, f"Content-Type {content_type[:60]!r} is not an image")
        logger.info(
            "fetched field=%s host=%s bytes=%d redirects=%d fetch_s=%.2f",
            field,
            target.host,
            len(body),
            hop,
            time.monotonic() - started,
        )
        return body
    raise _fetch_error(field, url, f"more than {policy.max_redirects} redirects")


def _vet_url(url: str, *, field: str, policy: FetchPolicy, deadline: float) -> _Target:
    """Parse, check the scheme, resolve the host and check every address; no connection is made."""
    shown = redact(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a bad port or a malformed IPv6 literal; exc's text may quote a password
        raise URLError(
            f"{field} is not a valid URL ({shown}): its port is not in 0-65535 or its host is malformed",
            field=field,
            code="E1200",
        ) from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise URLError(
            f"{field} uses the scheme {scheme!r} ({shown}); only http and https are accepted",
            field=field,
            code="E1200",
        )
    if not parts.hostname:
        raise URLError(f"{field} has no host ({shown})", field=field, code="E1200")
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise URLError(f"{field} has an invalid host name ({shown})", field=field, code="E1200") from exc
    default_port = 443 if scheme == "https" else 80
    port = port or default_port
    shown_host = f"[{host}]" if ":" in host else host
    host_header = shown_host if port == default_port else f"{shown_host}:{port}"

    addresses = _resolve(host, port, field=field, url=url, deadline=deadline)
    for address in addresses:
        reason = _address_refusal(ipaddress.ip_address(address), policy)
        if reason is not None:
            raise URLError(
                f"{field} points at {address}, a {reason} address ({shown}); refused",
                field=field,
                code="E1200",
            )
    # Non-ASCII or spaces in the path would break http.client's ASCII request line.
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    return _Target(scheme, host, port, host_header, path, addresses)


def _resolve(host: str, port: int, *, field: str, url: str, deadline: float) -> tuple[str, ...]:
    """getaddrinfo has no timeout of its own: run it in a daemon thread and stop waiting at the deadline
    (the thread ends when the resolver gives up; nothing is connected to meanwhile)."""
    found: list[tuple[str, ...]] = []
    failed: list[BaseException] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.append(tuple(dict.fromkeys(str(info[4][0]) for info in infos)))
        except (OSError, UnicodeError) as exc:
            failed.append(exc)

    thread = threading.Thread(target=lookup, name="cerebro-resolve", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if found:
        return found[0]
    if failed:
        raise _fetch_error(field, url, f"cannot resolve {excerpt(host, 80)}")
    raise _fetch_error(field, url, f"resolving {excerpt(host, 80)} took past the deadline")


def _address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, policy: FetchPolicy) -> str | None:
    """Why `ip` may not be fetched from, or None. Order matters: loopback is also `is_private`."""
    if isinstance(ip, ipaddress.IPv6Address):
        # A form that carries an IPv4 address (::ffff:a.b.c.d, 6to4) is judged by that address.
        # NAT64 (64:ff9b::/96) needs no case: it lies in ::/8, which is_reserved refuses.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return _address_refusal(embedded, policy)
    # Loopback first: ::1 lies in ::/8, which is_reserved also matches.
    if ip.is_loopback:
        return None if policy.allow_loopback else "loopback"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "unspecified, multicast or reserved"
    if ip.is_link_local:
        return None if policy.allow_private else "link-local"
    # is_global is False for private ranges and also for shared space such as 100.64/10, where one
    # cloud keeps its metadata service.
    if ip.is_private or not ip.is_global:
        return None if policy.allow_private else "private"
    return None


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an already vetted IP, with SNI and certificate checks against the original host name."""

    def __init__(self, ip: str, port: int, *, server_hostname: str, timeout: float) -> None:
        self._pinned_context = ssl.create_default_context()
        super().__init__(ip, port, timeout=timeout, context=self._pinned_context)
        self._server_hostname = server_hostname

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # plain TCP to the IP; the base class would SNI the IP
        self.sock = self._pinned_context.wrap_socket(self.sock, server_hostname=self._server_hostname)


def _get(
    target: _Target, *, url: str, field: str, policy: FetchPolicy, max_bytes: int, deadline: float
) -> tuple[int, str | None, str, bytes]:
    """One GET to the vetted address: (status, Location, Content-Type, body); redirects have no body."""
    conn = _connect(target, url=url, field=field, policy=policy, deadline=deadline)
    late = f"the fetch took over {policy.total_timeout_s:g} s in all (the deadline)"
    with _Watchdog(conn, deadline) as watchdog:
        try:
            conn.request(
                "GET",
                target.path,
                headers={"Host": target.host_header, "Accept": "image/*", "User-Agent": "cerebro"},
            )
            with conn.getresponse() as resp:  # closing it releases the socket it holds
                content_type = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()
                if resp.status in _REDIRECT_STATUSES or not 200 <= resp.status < 300:
                    return resp.status, resp.getheader("Location"), content_type, b""
                body = _read_body(resp, url=url, field=field, max_bytes=max_bytes, watchdog=watchdog)
                if watchdog.fired:  # the socket was shut mid-body: what arrived is cut short
                    raise _fetch_error(field, url, late)
                return resp.status, None, content_type, body
        except TimeoutError as exc:
            reason = late if watchdog.fired else f"no data for {policy.read_timeout_s:g} s (read timeout)"
            raise _fetch_error(field, url, reason) from exc
        except (OSError, http.client.HTTPException) as exc:
            reason = late if watchdog.fired else f"{type(exc).__name__}: {str(exc)[:120]}"
            raise _fetch_error(field, url, reason) from exc
        finally:
            conn.close()


class _Watchdog:
    """Shuts the connection's socket at the deadline, so that a read blocked on a server that sends a
    byte just often enough to beat the socket timeout returns at once (http.client has no total timeout)."""

    def __init__(self, conn: http.client.HTTPConnection, deadline: float) -> None:
        self.conn = conn
        self.fired = False
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                # Linux still delivers bytes that arrive after a shutdown, so a server that keeps
                # dripping would keep a read loop going: the tiny timeout makes the next read fail.
                sock.settimeout(0.001)
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


def _read_body(
    resp: http.client.HTTPResponse, *, url: str, field: str, max_bytes: int, watchdog: _Watchdog
) -> bytes:
    declared = resp.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _fetch_error(field, url, f"the body is {declared} bytes; the limit is {max_bytes} bytes")
    chunks: list[bytes] = []
    received = 0
    # read1 returns what has arrived (read() waits to fill); the watchdog ends a body that never ends.
    while not watchdog.fired and (chunk := resp.read1(_CHUNK_BYTES)):
        received += len(chunk)
        if received > max_bytes:  # stop reading as soon as the limit is passed
            raise _fetch_error(field, url, f"the body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _connect(
    target: _Target, *, url: str, field: str, policy: FetchPolicy, deadline: float
) -> http.client.HTTPConnection:
    # Connect to the address vetted in _vet_url, never to the name: re-resolving it would let a
    # DNS answer change between the check and the connection (DNS rebinding).
    last: OSError | None = None
    for address in target.addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            last = TimeoutError()
            break
        timeout = min(policy.connect_timeout_s, left)
        conn: http.client.HTTPConnection
        if target.scheme == "https":
            conn = _PinnedHTTPSConnection(address, target.port, server_hostname=target.host, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(address, target.port, timeout=timeout)
        try:
            conn.connect()
        except OSError as exc:  # refused, unreachable, TLS failure, connect timeout: try the next
            conn.close()
            last = exc
            continue
        conn.sock.settimeout(policy.read_timeout_s)  # from here on, the read timeout applies
        return conn
    reason = "connect timeout" if isinstance(last, TimeoutError) else f"cannot connect: {str(last)[:120]}"
    raise _fetch_error(field, url, reason)


def _fetch_error(field: str, url: str, reason: str) -> URLError:
    return URLError(f"{field} could not be fetched from {redact(url)}: {reason}", field=field, code="E1201")


def redact(url: str) -> str:
    """The URL without user info or query values (signed URLs carry secrets there), shortened."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # unparseable: show only the scheme, since any other part may hold a secret
        return url.split(":", 1)[0][:20] + "://..."
    query = "?..." if parts.query else ""
    shown = f"{parts.scheme}://{host}{port}{parts.path}{query}" if parts.netloc else parts.scheme + ":..."
    return shown if len(shown) <= 200 else shown[:197] + "..."
