"""The exception hierarchy. Everything aoflite raises derives from Error;
bad-input errors also derive from ValueError or TypeError so callers can
catch either."""

from __future__ import annotations

__all__ = [
    "Error",
    "NotFound",
    "LockedError",
    "FencedError",
    "ReadOnlyError",
    "ClosedError",
    "CorruptionError",
    "FormatError",
    "RecordTooLarge",
    "BackpressureError",
    "TransactionError",
    "StorageError",
    "Tier2Error",
    "Tier2NotFound",
]


class Error(Exception):
    """Base of every aoflite error; never raised directly."""


class NotFound(Error, LookupError):
    """A key, offset, segment or store that does not exist."""


class LockedError(Error):
    """Another writable handle (in this or another process) holds the store."""


class FencedError(LockedError):
    """A newer writer took over this store's Tier 2 prefix (its lease epoch
    moved past ours): this handle stops uploading and snapshotting instead
    of overwriting the newer writer's objects. Close it."""

    reason = "fenced"


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


class Tier2Error(Error):
    """An object-store (Tier 2) operation failed. ``reason`` says why, one
    of ``REASONS``; ``retryable`` says whether trying again later can help
    (a throttled or unreachable store) or not (bad credentials, a missing
    bucket); ``op`` names the operation and ``attempts`` how many were made
    before giving up."""

    REASONS = (
        "not_found",  # the object does not exist (Tier2NotFound)
        "no_bucket",  # the bucket or directory does not exist
        "auth",  # credentials rejected
        "access_denied",  # credentials accepted, operation not allowed
        "throttled",  # the store asked us to slow down (503 SlowDown, 429)
        "unavailable",  # the store answered with a 5xx
        "network",  # connection refused, reset, or cut short
        "timeout",  # no answer in time
        "truncated",  # fewer bytes arrived than the object holds
        "checksum_mismatch",  # the bytes are not the ones that were put
        "invalid_range",  # a byte range past the end of the object
        "bad_metadata",  # an object without (or with unreadable) aoflite metadata
        "rejected",  # any other refusal by the store
        "io_error",  # a local file system call failed
    )

    def __init__(
        self,
        message: str,
        reason: str,
        retryable: bool,
        op: str | None = None,
        attempts: int = 1,
    ):
        if reason not in self.REASONS:
            raise ValueError(f"unknown tier 2 reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable
        self.op = op
        self.attempts = attempts


class Tier2NotFound(Tier2Error, NotFound):
    """The named object is not in the Tier 2 store. Never retryable."""

    def __init__(self, message: str, op: str | None = None):
        super().__init__(message, "not_found", False, op)
