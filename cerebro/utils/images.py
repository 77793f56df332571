# Written with AI assistance; review before relying on it.
"""Image loading and validation: a caller's image reference in, a decoded, checked `PIL.Image.Image` out.

What it is: the one place that turns an image reference (an http(s) URL, a `data:` URI, raw bytes or,
only where the deployment allows it, a local path) into a validated image, raising `ImageError` /
`URLError` with a stable code and a bounded message that names the field, the value (a short prefix of
it) and the limit.

What it is not: it knows nothing about Cog, torch or the model. It does not resize, convert modes or
normalise (the model's processor does that) and it never reads the environment. URLs are fetched by
cerebro/utils/fetch.py.

    load_image(source, field=..., limits=..., fetch=..., local_files=...) = decode_image(open_image(...))
      open_image            bytes from the source, then the header checks; nothing decoded yet
        ├── decode_data_uri   data:image/...;base64,...  -> bytes
        ├── fetch_url         http(s) URL, every hop vetted, connects to the vetted IP, one deadline
        └── (local path)      only with local_files=True (the CLI): a regular file, size checked
      decode_image          load() the pixels, apply the EXIF orientation

A string that is neither a URL nor a data URI is refused (E1106) before any filesystem access unless
the caller passes local_files=True: over HTTP every string is the caller's, and a path would let them
read the server's files. Splitting open from decode lets the runner count a request's pixels (from
the headers) and wait for memory before decoding them.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageOps

from cerebro.errors import ImageError, URLError, excerpt
from cerebro.utils.fetch import FetchPolicy, fetch_url, is_url, redact

# Pillow's `img.format` names. MPO is how Pillow names a JPEG that carries extra pictures
# (many phone cameras write one); it is a JPEG file, so it is accepted as one.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_FORMAT_ALIASES = {"MPO": "JPEG"}
_ACCEPTED_TEXT = "JPEG, PNG, WebP, GIF, BMP, TIFF"

# What Pillow raises on corrupt or truncated data. UnidentifiedImageError is an OSError; EOFError and
# struct.error come out of some plugins on truncated headers.
_PIL_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024  # per image file
    max_pixels: int = 50_000_000  # decoded width*height (decompression-bomb guard)
    min_side: int = 1  # pixels


def is_data_uri(s: str) -> bool:
    return s[:5].lower() == "data:"


ImageSource = str | os.PathLike[str] | bytes | bytearray


def load_image(
    source: ImageSource,
    *,
    field: str,
    limits: ImageLimits = ImageLimits(),
    fetch: FetchPolicy | None = None,
    local_files: bool = False,
) -> Image.Image:
    """Load one image from an http(s) URL (only when `fetch` is given), a data URI, bytes, or a local
    path (only with `local_files`)."""
    return decode_image(
        open_image(source, field=field, limits=limits, fetch=fetch, local_files=local_files),
        field=field,
        limits=limits,
    )


def open_image(
    source: ImageSource,
    *,
    field: str,
    limits: ImageLimits = ImageLimits(),
    fetch: FetchPolicy | None = None,
    local_files: bool = False,
    deadline: float | None = None,
) -> Image.Image:
    """The image's bytes, opened lazily and checked from the header (format, pixels, sides); not decoded.
    `deadline` (time.monotonic()) bounds a fetch; by default the policy's total_timeout_s from now."""
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
    elif isinstance(source, str) and is_data_uri(source):
        data = decode_data_uri(source, field=field, max_bytes=limits.max_bytes)
    elif isinstance(source, str) and is_url(source):
        if fetch is None:
            raise URLError(
                f"{field} is a URL ({redact(source)}); URLs are not enabled here, "
                "send the image as a file or a data URI",
                field=field,
                code="E1200",
            )
        data = fetch_url(source, field=field, policy=fetch, max_bytes=limits.max_bytes, deadline=deadline)
    elif isinstance(source, str | os.PathLike):
        if not local_files:
            # Refused before any filesystem access, with the same words whether or not the path exists.
            shown = "empty" if not str(source) else f"{excerpt(str(source), 40)}, which is"
            raise ImageError(
                f"{field} is {shown} neither an http(s) URL nor a data:image/...;base64 URI; this server "
                "reads no local files",
                field=field,
                code="E1106",
            )
        data = _read_file(os.fspath(source), field=field, max_bytes=limits.max_bytes)
    else:
        raise ImageError(
            f"{field} is a {type(source).__name__}; expected a URL, a data URI or bytes",
            field=field,
            code="E1105",
        )
    return open_image_bytes(data, field=field, limits=limits)


def open_image_bytes(data: bytes, *, field: str, limits: ImageLimits) -> Image.Image:
    """Open `data` lazily (the header only) and run every check the header allows."""
    _check_size(len(data), field=field, max_bytes=limits.max_bytes)
    if not data:
        raise ImageError(f"{field} is empty (0 bytes)", field=field, code="E1103")
    with _decoding(field=field, nbytes=len(data), limits=limits):
        img = Image.open(io.BytesIO(data))  # lazy: reads the header only
    _check_header(img, field=field, limits=limits)
    return img


def decode_image(img: Image.Image, *, field: str, limits: ImageLimits) -> Image.Image:
    """Decode an image from open_image; corrupt data fails here, not in the model's processor."""
    fp = getattr(img, "fp", None)  # the BytesIO open_image_bytes gave Pillow, for the message
    nbytes = len(fp.getvalue()) if isinstance(fp, io.BytesIO) else 0
    with _decoding(field=field, nbytes=nbytes, limits=limits):
        img.load()
        # exif_transpose copies the whole image even when there is nothing to turn; call it only when
        # there is (an orientation tag) or to keep just the first frame of an animated GIF/TIFF/WebP.
        if img.getexif().get(_EXIF_ORIENTATION, 1) != 1 or getattr(img, "n_frames", 1) > 1:
            return ImageOps.exif_transpose(img)
        return img


def decode_image_bytes(data: bytes, *, field: str, limits: ImageLimits) -> Image.Image:
    """Open, check and decode an image held in memory."""
    return decode_image(open_image_bytes(data, field=field, limits=limits), field=field, limits=limits)


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
    """A regular file only: a FIFO, a terminal or /dev/stdin would block the request forever."""
    if not path:
        raise ImageError(f"{field} is an empty path", field=field, code="E1100")
    shown = excerpt(path, 200)  # local files are the operator's own (the CLI): a longer excerpt
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; the type is checked on what was opened.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError as exc:
        raise ImageError(f"{field}: no such file {shown}", field=field, code="E1103") from exc
    except (OSError, ValueError) as exc:  # no permission, a NUL byte in the path, ...
        reason = getattr(exc, "strerror", None) or "not a valid path"
        raise ImageError(f"{field}: cannot read {shown} ({reason})", field=field, code="E1103") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # a directory, a FIFO, a device
        os.close(fd)
        raise ImageError(f"{field}: {shown} is not a regular file", field=field, code="E1103")
    with os.fdopen(fd, "rb") as fh:
        _check_size(info.st_size, field=field, max_bytes=max_bytes)
        try:
            data = fh.read(max_bytes + 1)  # the file may have grown since fstat
        except OSError as exc:
            raise ImageError(
                f"{field}: cannot read {shown} ({exc.strerror or 'I/O error'})", field=field, code="E1103"
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
    # application/octet-stream is what the `replicate` client writes for a file object without a name;
    # the bytes are still decoded as one of the accepted formats, as for a fetched URL.
    if not (media_type.startswith("image/") or media_type == "application/octet-stream"):
        raise ImageError(
            f"{field} is a data URI of media type {media_type[:50]!r}; only image/* (or "
            "application/octet-stream) is accepted",
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
