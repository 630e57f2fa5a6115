"""JSON-lines logging on stderr, one object per record."""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

from opentelemetry import trace

LOGGER_NAME = "inference"


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; fields come from extra={"fields": {...}}.

    A record written while a job's trace context is current (its RPC and
    worker threads) carries trace_id and span_id, so that its lines can be
    found from the caller's trace, whether or not the engine exports spans.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "logger": record.name,
        }
        # Formatted in the thread that logged: handlers here are synchronous.
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = trace.format_trace_id(span.trace_id)
            entry["span_id"] = trace.format_span_id(span.span_id)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup(level: str) -> logging.Logger:
    """Sends the engine's and the libraries' logs to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Library chatter (diffusers, transformers) stays at warning unless the
    # engine itself is asked for debug.
    root.setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)
    # Python warnings (libraries use them for deprecations) become log records too.
    logging.captureWarnings(True)
    log = logging.getLogger(LOGGER_NAME)
    log.setLevel(level.upper())
    return log


def adopt_library_loggers() -> None:
    """Routes diffusers' and transformers' own log handlers through ours.

    Both install a plain-text stderr handler when imported; call this after
    importing them so every stderr line stays JSON.
    """
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    for lib in (dlog, tlog):
        lib.disable_default_handler()
        lib.enable_propagation()
        # Progress bars are not log lines.
        lib.disable_progress_bar()


def get() -> logging.Logger:
    """Returns the engine's logger."""
    return logging.getLogger(LOGGER_NAME)


def fields(**kw: Any) -> dict[str, Any]:
    """Wraps structured attributes for a logging call's extra argument."""
    return {"fields": kw}
