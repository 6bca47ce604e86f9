"""The exception hierarchy. Everything aoflite raises derives from Error;
bad-input errors also derive from ValueError or TypeError so callers can
catch either."""

from __future__ import annotations

__all__ = [
    "Error",
    "NotFound",
    "LockedError",
    "ReadOnlyError",
    "ClosedError",
    "CorruptionError",
    "FormatError",
    "RecordTooLarge",
    "BackpressureError",
    "TransactionError",
    "StorageError",
]


class Error(Exception):
    """Base of every aoflite error; never raised directly."""


class NotFound(Error, LookupError):
    """A key, offset, segment or store that does not exist."""


class LockedError(Error):
    """Another writable handle (in this or another process) holds the store."""


class ReadOnlyError(Error):
    """A write through a handle opened with readonly=True."""


class ClosedError(Error):
    """The handle was closed."""


class CorruptionError(Error):
    """Bytes on disk are not what was written. ``path`` and ``position``
    say where; wrong bytes are never returned in place of this error."""

    def __init__(self, message: str, path: str | None = None, position: int | None = None):
        super().__init__(message)
        self.path = path
        self.position = position


class FormatError(Error):
    """The path is not an aoflite store or segment, or it was written by a
    newer format version."""


class RecordTooLarge(Error, ValueError):
    """A value above the store's max_record_bytes."""


class BackpressureError(Error):
    """A budget or queue is full; ``kind`` is one of "admission",
    "hydration", "rollover", "flush", "tail". Retry later, or raise the
    budget named in the message."""

    KINDS = ("admission", "hydration", "rollover", "flush", "tail")

    def __init__(self, kind: str, message: str):
        if kind not in self.KINDS:
            raise ValueError(f"unknown backpressure kind {kind!r}")
        super().__init__(message)
        self.kind = kind


class TransactionError(Error):
    """Misuse of a transaction: nested, or sealing or closing inside one."""


class StorageError(Error, OSError):
    """A system call on the store's files failed (disk full, I/O error);
    ``errno`` is set. Nothing acknowledged before it is lost."""
