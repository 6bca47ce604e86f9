"""Structured logs: standard ``logging`` with one event name per line.

Every operational event goes through ``log_event(logger, event, **fields)``
on a logger under ``aoflite`` (``logging.getLogger("aoflite")`` catches them
all). The event name is the message; the fields ride along as attributes,
so a plain formatter prints ``upload_retry segment=12 attempt=3
error='timeout'`` and ``JsonFormatter`` prints one JSON object per line::

    {"time": "2026-01-02T03:04:05.678Z", "level": "warning", "logger": "aoflite",
     "event": "upload_retry", "segment": 12, "attempt": 3, "error": "timeout"}

Events (``EVENTS``) and their usual fields:

==================== ===========================================================
``segment_sealed``     segment, bytes, records
``flush_failed``       error (a failed sync: the handle stops)
``metadata_failed``    error, segment (a manifest write failed)
``upload_retry``       segment, tier, attempt, error
``upload_done``        segment, tier, bytes
``tier2_fetch_failed`` segment, key, tier, attempt, error
``hydration_done``     segment, key, tier, seconds
``backpressure``       kind, error
==================== ===========================================================

Credentials never reach a log line: a field whose name says it holds one
(``secret``, ``password``, ``token``, ``access_key``, ``credential``) is
written as ``***``, and ``user:password@`` is cut out of any URL in a
string field.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

__all__ = ["EVENTS", "JsonFormatter", "log_event", "configure", "redact"]

EVENTS = frozenset(
    {
        "segment_sealed",
        "flush_failed",
        "metadata_failed",
        "upload_retry",
        "upload_done",
        "tier2_fetch_failed",
        "hydration_done",
        "backpressure",
    }
)

# a library's logs go where the application sends them, nowhere by default
logging.getLogger("aoflite").addHandler(logging.NullHandler())

_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*")
_SECRET_FIELD = re.compile(r"secret|password|passwd|token|access_key|credential|authorization", re.I)
_URL_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")


def redact(name: str, value: Any) -> Any:
    """value as it may be logged under name."""
    if _SECRET_FIELD.search(name):
        return "***" if value is not None else None
    if isinstance(value, BaseException):
        value = f"{type(value).__name__}: {value}"
    if isinstance(value, str):
        return _URL_USERINFO.sub(r"\1***@", value)
    return value


def log_event(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event: its name starts the message, the fields (credentials
    redacted, None left out) follow it and ride on the record as ``fields``."""
    if not _EVENT_NAME.fullmatch(event):
        raise ValueError(f"event names are snake_case identifiers, not {event!r}")
    if not logger.isEnabledFor(level):
        return
    clean = {k: redact(k, v) for k, v in fields.items() if v is not None}
    text = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in clean.items())
    logger.log(level, "%s%s%s", event, " " if text else "", text, extra={"event": event, "fields": clean})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger,
    event, then the event's fields. A line not logged through log_event
    has its message as ``message`` and no event."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        event = getattr(record, "event", None)
        if event is not None:
            out["event"] = event
            out.update(getattr(record, "fields", {}))
        else:
            out["message"] = redact("message", record.getMessage())
        if record.exc_info:
            out["exc"] = redact("exc", self.formatException(record.exc_info))
        return json.dumps(out, default=str, separators=(",", ":"))


def configure(level: int | str = logging.INFO, *, json_lines: bool = False, stream: TextIO | None = None) -> logging.Handler:
    """Send aoflite's logs to stream (default stderr), as JSON lines or
    plain text; returns the handler (remove it from
    ``logging.getLogger("aoflite")`` to undo)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("aoflite")
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
