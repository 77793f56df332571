# Written with AI assistance; review before relying on it.
"""Logging setup for operators: short key=value lines, and a separate channel for tracebacks.

Nothing here runs at import time; `configure_logging` is called once from the runner's setup().
"""

from __future__ import annotations

import logging
import os
import sys

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_HANDLER_NAME = "cerebro"
# Detail for the operator only (tracebacks): not under "cerebro", so it never reaches the caller-visible
# handler. See configure_logging.
OPERATOR_LOGGER = "cerebro_operator"


def configure_logging(level: str = "INFO") -> None:
    """Send Cerebro's loggers to stderr as short lines; call once at startup. Safe to call again.

    Only the `cerebro` logger is configured, not the root: the host (Cog) owns the root logger, and
    a second root handler would print every line twice.

    Two audiences. Inside a Cog server, what a prediction writes to `sys.stderr` becomes that
    prediction's `logs`, which its caller reads: the `cerebro` loggers write short key=value lines there
    and never a traceback. The OPERATOR_LOGGER writes to file descriptor 2 directly, which coglet sends
    to the server's own log and not to any prediction: tracebacks and internal detail go there.
    Outside Cog both end up on the same stderr.
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
    operator = logging.getLogger(OPERATOR_LOGGER)
    operator.setLevel(logging.INFO)
    operator.propagate = False
    if not any(h.get_name() == _HANDLER_NAME for h in operator.handlers):
        # A private duplicate of fd 2, opened once: sys.stderr may be a per-prediction wrapper.
        stream = os.fdopen(os.dup(2), "w", buffering=1, errors="backslashreplace")
        handler = logging.StreamHandler(stream)
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT))
        operator.addHandler(handler)
