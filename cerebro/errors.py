# Written with AI assistance; review before relying on it.
"""The error vocabulary of Cerebro: a small typed tree, raised deep, translated once at the edges.

    CerebroError                  base; carries a stable `code`, the `field` it concerns, a message
    ├── InputError                the caller's fault (also a ValueError); E1xxx
    │   ├── PromptError           prompt empty, too long for the context, image tags that do not match
    │   ├── ImageError            image count, bytes, pixels, corrupt or unsupported files, too thin
    │   ├── URLError              a URL refused (scheme, private address) or not fetchable
    │   └── SchemaError           a JSON schema that is invalid or unsupported
    └── ServerError               ours, not the caller's; E2xxx
        ├── WeightsError          weights missing, or a checkpoint that does not match the config
        ├── ConfigError           a deployment setting that is not valid (fails setup)
        ├── CapacityError         a request that does not fit the memory budget (retry later)
        └── GenerationError       generation failed (out of memory, output that broke its schema)

Messages name the field, the value and the limit ("images[2] is 25000x25000 pixels; the limit is 50
megapixels"). `str(error)` is "<code> <message>" ("E1102 images[2] is ..."); the Cog server puts the type
in front ("ImageError: E1102 images[2] is ..."), and `error.describe()` gives that same line in-process.

Every message is bounded (MAX_MESSAGE_CHARS): a message travels back to the caller through the Cog
server, which permanently retires a prediction slot when an error is too large to send. Caller values
are shown through `excerpt()`, which keeps only a short prefix.
This module knows nothing about Cog, HTTP or torch.
"""

from __future__ import annotations

from typing import Any

MAX_MESSAGE_CHARS = 1000  # far below any transport limit; a message is one line for a person
QUOTE_CHARS = 60  # how much of a caller's value a message may repeat


def excerpt(value: Any, limit: int = QUOTE_CHARS) -> str:
    """A caller's value for a message: repr of at most `limit` characters, with the full length when cut."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


class CerebroError(Exception):
    """Base of every error Cerebro raises on purpose."""

    code = "E2000"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    @property
    def is_caller_error(self) -> bool:
        return isinstance(self, InputError)

    def __str__(self) -> str:
        return f"{self.code} {self.message}"

    def describe(self) -> str:
        """The line a caller reads: "ImageError: E1102 images[2] is ..." (the Cog server's own shape)."""
        return f"{type(self).__name__}: {self}"

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "type": type(self).__name__, "field": self.field, "message": self.message}


class InputError(CerebroError, ValueError):
    """Bad input: the caller can fix it. Default code for an out-of-range or ill-typed value."""

    code = "E1001"


class PromptError(InputError):
    code = "E1010"


class ImageError(InputError):
    code = "E1100"


class URLError(InputError):
    code = "E1200"


class SchemaError(InputError):
    code = "E1300"


class ServerError(CerebroError):
    """Our fault, or the deployment's: the caller cannot fix it by changing the request."""

    code = "E2000"


class WeightsError(ServerError):
    code = "E2010"


class ConfigError(ServerError):
    code = "E2001"


class CapacityError(ServerError):
    code = "E2020"


class GenerationError(ServerError):
    code = "E2030"


# Every code in use, with the one-line meaning the README's error table shows. Subclasses pick a
# specific code from here with `code=...` where the class default is too coarse.
CODES: dict[str, str] = {
    "E1001": "an input is out of range or of the wrong type",
    "E1002": "an input the served model does not have (for example num_crops on a model without crops)",
    "E1010": "the prompt is empty or not text",
    "E1011": "the prompt (with its image tokens) does not fit the context window",
    "E1012": "image tags in the prompt do not match the images (numbering, order, count)",
    "E1100": "no image given, or more images than the limit",
    "E1101": "an image file is larger than the byte limit",
    "E1102": "an image has more pixels than the limit (decompression-bomb guard)",
    "E1103": "an image cannot be decoded, or its format is not accepted",
    "E1104": "an image is too thin or too small to process",
    "E1105": "an object given as an image is not an image",
    "E1106": "an image is neither an http(s) URL nor a data URI (this server reads no local files)",
    "E1107": "the images of one request have more pixels in all than the per-request limit",
    "E1200": "a URL uses a refused scheme or points at a private, loopback or link-local address",
    "E1201": "a URL could not be fetched (timeout, HTTP error, too large, not an image)",
    "E1300": "the JSON schema is not valid JSON or not a valid JSON Schema",
    "E1301": "the JSON schema uses a feature the constrained decoder does not support",
    "E1302": "the JSON answer was cut off by max_new_tokens before it was complete",
    "E1303": "a JSON schema was sent to a model that cannot constrain its answer (a captioner)",
    "E2000": "internal error",
    "E2001": "a deployment setting is not valid",
    "E2010": "model weights are missing",
    "E2011": "the checkpoint does not match the model configuration (missing or unexpected tensors)",
    "E2012": "a model or tokenizer folder is incomplete (no tokenizer.json) or a file in it does not load",
    "E2013": "the checkpoint's model_type is not one Cerebro serves (the message lists those it does)",
    "E2020": "the request does not fit the KV-cache budget right now",
    "E2021": "the server is busy decoding other images; retry shortly",
    "E2030": "generation failed",
    "E2031": "the GPU ran out of memory for this request",
    "E2032": "the output did not validate against the JSON schema",
}
