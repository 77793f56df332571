# Written with AI assistance; review before relying on it.
"""Shared utilities, one module per responsibility:

    images.py   a caller's image reference -> a checked, decoded PIL image
    fetch.py    http(s) fetching under an SSRF policy, with one deadline
    logs.py     logging setup: caller-visible lines and the operator's channel

The names below are re-exported so `from cerebro.utils import load_image` keeps working.
"""

from cerebro.utils.fetch import FetchPolicy, fetch_url, is_url, redact
from cerebro.utils.images import (
    ACCEPTED_FORMATS,
    ImageLimits,
    ImageSource,
    decode_data_uri,
    decode_image,
    decode_image_bytes,
    is_data_uri,
    load_image,
    open_image,
    open_image_bytes,
)
from cerebro.utils.logs import OPERATOR_LOGGER, configure_logging

__all__ = [
    "ACCEPTED_FORMATS",
    "OPERATOR_LOGGER",
    "FetchPolicy",
    "ImageLimits",
    "ImageSource",
    "configure_logging",
    "decode_data_uri",
    "decode_image",
    "decode_image_bytes",
    "fetch_url",
    "is_data_uri",
    "is_url",
    "load_image",
    "open_image",
    "open_image_bytes",
    "redact",
]
