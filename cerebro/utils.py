# Written with AI assistance; review before relying on it.
"""Image loading and validation, safe URL fetching, and logging setup, shared by Cerebro's layers.

What it is: the one place that turns a caller's image reference (a local path, an http(s) URL, a
`data:` URI or raw bytes) into a fully loaded, validated `PIL.Image.Image`, raising `ImageError` /
`URLError` with a stable code and a message that names the field, the value and the limit.

What it is not: it knows nothing about Cog, torch or the model. It does not resize, convert modes or
normalise (the model's processor does that), it never reads the environment, and it configures
logging only when `configure_logging` is called.

    load_image(source, field=..., limits=..., fetch=...)
      ├── decode_data_uri   data:image/...;base64,...  -> bytes
      ├── fetch_url         http(s) URL, every hop vetted, connects to the vetted IP -> bytes
      ├── (local path)      size checked before reading -> bytes
      └── decode_image_bytes  format, pixel and side checks from the header, then load()

A local path is trusted: callers pass only paths they own (for example files Cog downloaded).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import logging
import os
import re
import socket
import ssl
import struct
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from PIL import Image, ImageOps

from cerebro.errors import ImageError, URLError

logger = logging.getLogger(__name__)

# Pillow's `img.format` names. MPO is how Pillow names a JPEG that carries extra pictures
# (many phone cameras write one); it is a JPEG file, so it is accepted as one.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_FORMAT_ALIASES = {"MPO": "JPEG"}
_ACCEPTED_TEXT = "JPEG, PNG, WebP, GIF, BMP, TIFF"

# What Pillow raises on corrupt or truncated data. UnidentifiedImageError is an OSError; EOFError and
# struct.error come out of some plugins on truncated headers.
_PIL_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_CHUNK_BYTES = 64 * 1024
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024  # per image file
    max_pixels: int = 50_000_000  # decoded width*height (decompression-bomb guard)
    min_side: int = 1  # pixels


@dataclass(frozen=True)
class FetchPolicy:
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 20.0  # bounds each socket read and the whole response
    max_redirects: int = 3
    allow_loopback: bool = False  # tests set True
    allow_private: bool = False  # private (10/8, 172.16/12, 192.168/16, fc00::/7) and link-local


# --------------------------------------------------------------------------------------------- images


def is_url(s: str) -> bool:
    """True for anything shaped like `scheme://...`, not only http(s).

    Routing every such string to `fetch_url` means `file://` or `gopher://` is refused there (E1200)
    instead of being mistaken for a local path.
    """
    return bool(_URL_RE.match(s))


def is_data_uri(s: str) -> bool:
    return s[:5].lower() == "data:"


def load_image(
    source: str | os.PathLike[str] | bytes | bytearray,
    *,
    field: str,
    limits: ImageLimits = ImageLimits(),
    fetch: FetchPolicy | None = None,
) -> Image.Image:
    """Load one image from a path, an http(s) URL (only when `fetch` is given), a data URI or bytes."""
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
    elif isinstance(source, str) and is_data_uri(source):
        data = decode_data_uri(source, field=field, max_bytes=limits.max_bytes)
    elif isinstance(source, str) and is_url(source):
        if fetch is None:
            raise URLError(
                f"{field} is a URL ({_redact(source)}); URLs are not enabled here, "
                "send the image as a file or a data URI",
                field=field,
                code="E1200",
            )
        data = fetch_url(source, field=field, policy=fetch, max_bytes=limits.max_bytes)
    elif isinstance(source, str | os.PathLike):
        data = _read_file(os.fspath(source), field=field, max_bytes=limits.max_bytes)
    else:
        raise ImageError(
            f"{field} is a {type(source).__name__}; expected a path, a URL, a data URI or bytes",
            field=field,
            code="E1105",
        )
    return decode_image_bytes(data, field=field, limits=limits)


def decode_image_bytes(data: bytes, *, field: str, limits: ImageLimits) -> Image.Image:
    """Decode and validate an image; every check that can run on the header runs before `load()`."""
    _check_size(len(data), field=field, max_bytes=limits.max_bytes)
    if not data:
        raise ImageError(f"{field} is empty (0 bytes)", field=field, code="E1103")
    with _decoding(field=field, nbytes=len(data), limits=limits):
        img = Image.open(io.BytesIO(data))  # lazy: reads the header only
    _check_header(img, field=field, limits=limits)
    with _decoding(field=field, nbytes=len(data), limits=limits):
        img.load()  # decode now, so corrupt data fails here and not in the model's processor
        # exif_transpose returns a new single-frame image: the first frame of a GIF/TIFF/WebP.
        return ImageOps.exif_transpose(img)


@contextmanager
def _decoding(*, field: str, nbytes: int, limits: ImageLimits) -> Iterator[None]:
    """Map what Pillow raises while opening or decoding to E1102 (bomb) or E1103 (corrupt)."""
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; turn the warning into an error
    # locally rather than changing Pillow's global limit. (catch_warnings is process-wide state.)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(
                f"{field} is too large to decode safely ({exc}); the limit is {limits.max_pixels} pixels",
                field=field,
                code="E1102",
            ) from exc
        except _PIL_DECODE_ERRORS as exc:
            raise ImageError(
                f"{field} cannot be decoded as an image ({nbytes} bytes: {_pil_reason(exc)}); "
                f"accepted formats are {_ACCEPTED_TEXT}",
                field=field,
                code="E1103",
            ) from exc


def _check_header(img: Image.Image, *, field: str, limits: ImageLimits) -> None:
    # Image.open is lazy: format and size come from the header, nothing is decoded yet.
    fmt = _FORMAT_ALIASES.get(img.format or "", img.format)
    if fmt not in ACCEPTED_FORMATS:
        raise ImageError(
            f"{field} is a {img.format or 'unknown'} image; accepted formats are {_ACCEPTED_TEXT}",
            field=field,
            code="E1103",
        )
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ImageError(
            f"{field} is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels} "
            f"pixels ({limits.max_pixels / 1e6:g} megapixels)",
            field=field,
            code="E1102",
        )
    if min(width, height) < limits.min_side:
        raise ImageError(
            f"{field} is {width}x{height} pixels; each side must be at least {limits.min_side} pixels",
            field=field,
            code="E1104",
        )


def _pil_reason(exc: BaseException) -> str:
    # UnidentifiedImageError's text names a BytesIO object, which tells the caller nothing.
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not a recognised image format"
    return str(exc)[:200] or type(exc).__name__


def _check_size(size: int, *, field: str, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageError(
            f"{field} is {size} bytes; the limit is {max_bytes} bytes ({max_bytes / 2**20:g} MiB)",
            field=field,
            code="E1101",
        )


def _read_file(path: str, *, field: str, max_bytes: int) -> bytes:
    if not path:
        raise ImageError(f"{field} is an empty path", field=field, code="E1100")
    try:
        _check_size(os.path.getsize(path), field=field, max_bytes=max_bytes)
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)  # the file may have grown since getsize
    except FileNotFoundError as exc:
        raise ImageError(f"{field}: no such file {path!r}", field=field, code="E1103") from exc
    except OSError as exc:  # a directory, no permission, an I/O error
        raise ImageError(
            f"{field}: cannot read {path!r} ({exc.strerror or exc})", field=field, code="E1103"
        ) from exc
    _check_size(len(data), field=field, max_bytes=max_bytes)
    return data


def decode_data_uri(uri: str, *, field: str, max_bytes: int) -> bytes:
    """Return the bytes of `data:image/<type>;base64,<data>`; the image itself is not decoded here."""
    if not is_data_uri(uri):
        raise ImageError(f"{field} is not a data URI (it must start with 'data:')", field=field, code="E1103")
    header, sep, payload = uri[5:].partition(",")
    if not sep:
        raise ImageError(f"{field} is a data URI without a ',' before its data", field=field, code="E1103")
    params = [p.strip().lower() for p in header.split(";")]
    media_type = params[0] or "text/plain"  # RFC 2397's default
    if not media_type.startswith("image/"):
        raise ImageError(
            f"{field} is a data URI of media type {media_type[:50]!r}; only image/* is accepted",
            field=field,
            code="E1103",
        )
    if params[-1] != "base64":
        raise ImageError(
            f"{field} is a data URI that is not base64-encoded; use data:{media_type};base64,...",
            field=field,
            code="E1103",
        )
    payload = "".join(payload.split())  # line breaks are common in pasted base64
    # 4 base64 characters carry 3 bytes; refuse before decoding when even the best case is too big.
    at_least = len(payload) * 3 // 4 - 2
    if at_least > max_bytes:
        raise ImageError(
            f"{field} is a data URI of at least {at_least} bytes; the limit is {max_bytes} bytes",
            field=field,
            code="E1101",
        )
    payload += "=" * (-len(payload) % 4)  # tolerate stripped padding
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(
            f"{field} is a data URI with invalid base64 ({exc})", field=field, code="E1103"
        ) from exc
    _check_size(len(data), field=field, max_bytes=max_bytes)
    return data


# ----------------------------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class _Target:
    """A URL that passed the scheme and address checks, pinned to the addresses it resolved to."""

    scheme: str
    host: str  # ASCII (IDNA) host name, without brackets
    port: int
    host_header: str
    path: str  # path and query, as sent on the request line
    addresses: tuple[str, ...]


def fetch_url(url: str, *, field: str, policy: FetchPolicy, max_bytes: int) -> bytes:
    """GET an image over http(s), refusing private targets; every redirect hop is vetted again.

    A Content-Type other than image/* or application/octet-stream is refused; a missing one is let
    through, since the caller still decodes the bytes as an accepted image format.
    """
    started = time.monotonic()
    current = url
    for hop in range(policy.max_redirects + 1):
        target = _vet_url(current, field=field, policy=policy)
        status, location, content_type, body = _get(
            target, url=current, field=field, policy=policy, max_bytes=max_bytes
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


def _vet_url(url: str, *, field: str, policy: FetchPolicy) -> _Target:
    """Parse, check the scheme, resolve the host and check every address; no connection is made."""
    shown = _redact(url)
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

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _fetch_error(field, url, f"cannot resolve {host!r}") from exc
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
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


def _address_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, policy: FetchPolicy) -> str | None:
    """Why `ip` may not be fetched from, or None. Order matters: loopback is also `is_private`."""
    if isinstance(ip, ipaddress.IPv6Address):
        # A form that carries an IPv4 address (::ffff:a.b.c.d, 6to4) is judged by that address.
        # NAT64 (64:ff9b::/96) needs no case: it lies in ::/8, which is_reserved refuses.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            return _address_refusal(embedded, policy)
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "unspecified, multicast or reserved"
    if ip.is_loopback:
        return None if policy.allow_loopback else "loopback"
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
    target: _Target, *, url: str, field: str, policy: FetchPolicy, max_bytes: int
) -> tuple[int, str | None, str, bytes]:
    """One GET to the vetted address: (status, Location, Content-Type, body); redirects have no body."""
    conn = _connect(target, url=url, field=field, policy=policy)
    deadline = time.monotonic() + policy.read_timeout_s
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
            body = _read_body(
                resp, url=url, field=field, max_bytes=max_bytes, deadline=deadline, policy=policy
            )
            return resp.status, None, content_type, body
    except TimeoutError as exc:
        raise _fetch_error(field, url, f"no data for {policy.read_timeout_s:g} s (read timeout)") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _fetch_error(field, url, f"{type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()


def _read_body(
    resp: http.client.HTTPResponse,
    *,
    url: str,
    field: str,
    max_bytes: int,
    deadline: float,
    policy: FetchPolicy,
) -> bytes:
    declared = resp.getheader("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise _fetch_error(field, url, f"the body is {declared} bytes; the limit is {max_bytes} bytes")
    chunks: list[bytes] = []
    received = 0
    while chunk := resp.read1(_CHUNK_BYTES):  # read1 returns what has arrived; read() waits to fill
        received += len(chunk)
        if received > max_bytes:  # stop reading as soon as the limit is passed
            raise _fetch_error(field, url, f"the body is over the limit of {max_bytes} bytes")
        if time.monotonic() > deadline:  # a server dripping bytes never trips the socket timeout
            raise _fetch_error(field, url, f"the response took over {policy.read_timeout_s:g} s")
        chunks.append(chunk)
    return b"".join(chunks)


def _connect(target: _Target, *, url: str, field: str, policy: FetchPolicy) -> http.client.HTTPConnection:
    # Connect to the address vetted in _vet_url, never to the name: re-resolving it would let a
    # DNS answer change between the check and the connection (DNS rebinding).
    last: OSError | None = None
    for address in target.addresses:
        conn: http.client.HTTPConnection
        if target.scheme == "https":
            conn = _PinnedHTTPSConnection(
                address, target.port, server_hostname=target.host, timeout=policy.connect_timeout_s
            )
        else:
            conn = http.client.HTTPConnection(address, target.port, timeout=policy.connect_timeout_s)
        try:
            conn.connect()
        except OSError as exc:  # refused, unreachable, TLS failure, connect timeout: try the next
            conn.close()
            last = exc
            continue
        conn.sock.settimeout(policy.read_timeout_s)  # from here on, the read timeout applies
        return conn
    reason = "connect timeout" if isinstance(last, TimeoutError) else f"cannot connect: {last}"
    raise _fetch_error(field, url, reason)


def _fetch_error(field: str, url: str, reason: str) -> URLError:
    return URLError(f"{field} could not be fetched from {_redact(url)}: {reason}", field=field, code="E1201")


def _redact(url: str) -> str:
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


# -------------------------------------------------------------------------------------------- logging

_HANDLER_NAME = "cerebro"


def configure_logging(level: str = "INFO") -> None:
    """Send Cerebro's loggers to stderr as short lines; call once at startup. Safe to call again.

    Only the `cerebro` logger is configured, not the root: the host (Cog) owns the root logger, and
    a second root handler would print every line twice.
    """
    levels = logging.getLevelNamesMapping()
    if level.upper() not in levels:
        raise ValueError(f"log level {level!r} is not one of {', '.join(sorted(levels))}")
    package = logging.getLogger("cerebro")
    package.setLevel(levels[level.upper()])
    package.propagate = False
    if not any(h.get_name() == _HANDLER_NAME for h in package.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        package.addHandler(handler)
