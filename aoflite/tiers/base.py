"""The Tier 2 interface: what an object-store backend does, and what each
call does when the object is missing.

A backend stores immutable objects under names such as
``segments/00000000000000000042.zst`` (see ``segment_object_name``),
relative to the place its URL points at. Every object carries the same
metadata, ``ObjectInfo``: its size, the SHA-256 of its bytes (computed by
the backend at ``put`` and checked at every whole-object ``get``) and the
number of records it holds (given by the caller).

Errors: every failure is a ``Tier2Error`` with a ``reason`` and a
``retryable`` flag; a missing object is ``Tier2NotFound`` (also a
``NotFound``), raised by ``get``, ``get_range`` and ``head`` only.
Backends retry retryable failures themselves, under their
``RetryPolicy``, and raise once it is used up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import random
import re
import tempfile
import time
import urllib.parse
from typing import Any, BinaryIO, Callable, Iterator, Protocol, TypeVar, runtime_checkable

from ..errors import Tier2Error, Tier2NotFound

__all__ = [
    "ObjectInfo",
    "Tier2Backend",
    "RetryPolicy",
    "run_with_retry",
    "classify",
    "classify_http",
    "check_name",
    "segment_object_name",
    "atomic_output",
    "confirm_object",
    "fsync_dir",
    "open_backend",
]

T = TypeVar("T")

#: Bytes read or written per call when streaming objects.
CHUNK = 1 << 20

# Names are relative paths of plain components. A component never starts
# with "." so the file backend's temporary files and metadata sidecars
# (hidden files) can never collide with an object, and ".." cannot escape.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*")
_MAX_NAME = 512


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    """What a backend knows about one stored object."""

    name: str  #: relative to the backend's URL
    size: int  #: bytes
    checksum: str  #: SHA-256 of the object's bytes, lowercase hex
    records: int  #: records in the object, as given to put()


@runtime_checkable
class Tier2Backend(Protocol):
    """An object store holding sealed, compressed segments.

    Objects are written whole and never modified in place; a second put
    of the same name replaces the object. Every method may raise
    ``Tier2Error`` after its retries are used up; the list below says what
    each does about a missing object.
    """

    #: Where the objects live, e.g. "s3://bucket/prefix" or "file:///mnt/nas/aof".
    url: str

    def put(self, name: str, path: str | os.PathLike[str], *, records: int) -> ObjectInfo:
        """Store the local file ``path`` as object ``name`` (replacing any),
        with ``records`` and its checksum as metadata; large files go up in
        parts. The object is visible only once complete. A missing source
        file raises FileNotFoundError and stores nothing."""
        ...

    def get(self, name: str, dest: str | os.PathLike[str]) -> ObjectInfo:
        """Write the whole object to the local file ``dest``, checked
        against its size and checksum, through a temporary name and a
        rename: ``dest`` is either the complete object or as it was before
        (no partial file, even on failure). Missing: Tier2NotFound, and
        ``dest`` is untouched."""
        ...

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes of the object from ``offset`` (one
        compressed frame). A range that runs past the end raises
        Tier2Error(reason="invalid_range"). Missing: Tier2NotFound."""
        ...

    def head(self, name: str) -> ObjectInfo:
        """The object's size and metadata without its bytes. Missing:
        Tier2NotFound."""
        ...

    def delete(self, name: str) -> None:
        """Remove the object. Missing: nothing happens (idempotent)."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Names of the stored objects that start with ``prefix``, sorted.
        None: an empty list, never an error."""
        ...


# ------------------------------------------------------------------ names


def check_name(name: Any) -> str:
    """``name`` if it is a valid object name; TypeError or ValueError if not."""
    if not isinstance(name, str):
        raise TypeError(f"object name must be a str, not {type(name).__name__}")
    if len(name) > _MAX_NAME or not _NAME.fullmatch(name):
        raise ValueError(
            f"object name {name!r} is not valid: use 1 to {_MAX_NAME} characters of "
            "[A-Za-z0-9._-] in '/'-separated parts, none starting with '.'"
        )
    return name


def segment_object_name(segment_id: int) -> str:
    """The stable object name of a sealed, compressed segment:
    ``segments/<id, zero-padded to 20 digits>.zst``, so that names sort in
    segment order (as the local segment files do)."""
    if not isinstance(segment_id, int) or isinstance(segment_id, bool):
        raise TypeError(f"segment_id must be an int, not {type(segment_id).__name__}")
    if not 0 <= segment_id < 2**64:
        raise ValueError(f"segment_id must be in [0, 2**64), got {segment_id}")
    return f"segments/{segment_id:020d}.zst"


def check_range(offset: Any, length: Any) -> None:
    """TypeError or ValueError unless offset >= 0 and length >= 1 are ints."""
    for what, value, low in (("offset", offset, 0), ("length", length, 1)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{what} must be an int, not {type(value).__name__}")
        if value < low:
            raise ValueError(f"{what} must be >= {low}, got {value}")


def check_records(records: Any) -> None:
    """TypeError or ValueError unless records is an int >= 0."""
    if not isinstance(records, int) or isinstance(records, bool):
        raise TypeError(f"records must be an int, not {type(records).__name__}")
    if records < 0:
        raise ValueError(f"records must be >= 0, got {records}")


# ------------------------------------------------------------------ retries


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How a backend retries a retryable failure: up to ``max_attempts``
    tries in all, sleeping ``base_delay_ms * 2**(n-1)`` after the n-th
    failure, capped at ``max_delay_ms``; ``jitter`` (0 to 1) is the share of
    each delay drawn at random, so that many clients throttled together do
    not come back together."""

    max_attempts: int = 5
    base_delay_ms: float = 100.0
    max_delay_ms: float = 5000.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if not 0 <= self.base_delay_ms <= self.max_delay_ms:
            raise ValueError(
                f"need 0 <= base_delay_ms <= max_delay_ms, got {self.base_delay_ms} and {self.max_delay_ms}"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def delay_ms(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        """The sleep after the ``failures``-th failed attempt (1-based)."""
        full = min(self.max_delay_ms, self.base_delay_ms * 2.0 ** min(failures - 1, 62))
        return full * (1.0 - self.jitter * rand())


#: Called before each sleep: (op, failures so far, the error, delay in ms).
#: Where retry counters (the operations guide's upload_retry_attempts) hook in.
OnRetry = Callable[[str, int, Tier2Error, float], None]


def run_with_retry(
    policy: RetryPolicy,
    op: str,
    fn: Callable[[], T],
    *,
    translate: Callable[[BaseException], Tier2Error | None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_retry: OnRetry | None = None,
) -> T:
    """``fn()``, tried again under ``policy`` while it fails retryably.

    ``translate`` turns a foreign exception into a Tier2Error (default:
    ``classify``); an exception it returns None for is a bug, not a store
    failure, and propagates at once. A fatal error is raised at once; when
    the attempts run out, a Tier2Error with the last reason, retryable=True
    and ``attempts`` set is raised from the last failure.
    """
    translate = translate or classify
    failures = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            err = exc if isinstance(exc, Tier2Error) else translate(exc)
            if err is None:
                raise
            if err.op is None:
                err.op = op
            if not err.retryable:
                err.attempts = failures + 1
                if err is exc:
                    raise
                raise err from exc
            failures += 1
            if failures >= policy.max_attempts:
                raise Tier2Error(
                    f"{err} (gave up after {failures} attempts: retry later, or check the store's health)",
                    err.reason,
                    True,
                    op,
                    attempts=failures,
                ) from exc
            delay = policy.delay_ms(failures)
            if on_retry is not None:
                on_retry(op, failures, err, delay)
            sleep(delay / 1000.0)


#: HTTP statuses and S3 error codes that mean "not now" rather than "no".
_THROTTLE_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests", "RequestThrottled"}
)
_AUTH_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
     "RequestTimeTooSkewed", "AuthorizationHeaderMalformed", "InvalidSecurity"}
)
_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem"})
_TRANSIENT_CODES = frozenset({"InternalError", "ServiceUnavailable", "RequestTimeout", "OperationAborted"})


def classify_http(status: int | None, code: str | None, message: str) -> Tier2Error:
    """The Tier2Error for an object store's error answer: ``status`` is the
    HTTP status, ``code`` the S3 error code when there is one. Throttling,
    5xx and timeouts are retryable; credentials, permissions, a missing
    bucket and every other refusal are not."""
    if code == "NoSuchKey":
        return Tier2NotFound(message)
    if code == "NoSuchBucket":
        return Tier2Error(f"{message} (create the bucket, or fix the URL)", "no_bucket", False)
    if code in _THROTTLE_CODES or status == 429:
        return Tier2Error(message, "throttled", True)
    if code in _AUTH_CODES:
        return Tier2Error(f"{message} (check the access key and secret key)", "auth", False)
    if code in _DENIED_CODES or status == 403:
        return Tier2Error(f"{message} (the credentials lack permission for this bucket)", "access_denied", False)
    if code == "InvalidRange" or status == 416:
        return Tier2Error(message, "invalid_range", False)
    if code == "RequestTimeout" or status == 408:
        return Tier2Error(message, "timeout", True)
    if code in _TRANSIENT_CODES or (status is not None and status >= 500):
        return Tier2Error(message, "unavailable", True)
    return Tier2Error(message, "rejected", False)


def classify(exc: BaseException) -> Tier2Error | None:
    """The Tier2Error for a failure any backend can meet: timeouts, dropped
    connections and file system errors that may pass (``TRANSIENT_ERRNOS``)
    are retryable; permissions, a full disk and other file system errors
    are not. None for anything else (a bug, which should propagate)."""
    if isinstance(exc, TimeoutError):
        return Tier2Error(f"no answer in time: {exc}", "timeout", True)
    if isinstance(exc, ConnectionError):
        return Tier2Error(f"connection failed: {exc}", "network", True)
    if isinstance(exc, OSError):
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return Tier2Error(f"{exc} (check the permissions of the tier 2 directory)", "access_denied", False)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return Tier2Error(f"{exc} (free space or raise the quota)", "io_error", False)
        return Tier2Error(str(exc), "io_error", exc.errno in TRANSIENT_ERRNOS)
    return None


# ------------------------------------------------------------------ local files


def fsync_dir(path: str) -> None:
    """Make a rename or unlink in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(dest: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A file to write ``dest``'s new content into. On a clean exit it is
    synced and renamed over ``dest`` (and the directory synced); on an
    exception it is removed and ``dest`` stays as it was."""
    dest = os.path.abspath(os.fspath(dest))
    directory, base = os.path.split(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def file_digest(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, SHA-256 hex) of a local file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def confirm_object(backend: Tier2Backend, name: str, size: int, checksum: str) -> None:
    """Check, by reading its facts back, that the stored object ``name`` is
    the ``size`` bytes with SHA-256 ``checksum`` that were put; a retryable
    Tier2Error(reason="checksum_mismatch") when it is not."""
    got = backend.head(name)
    if (got.size, got.checksum) != (size, checksum):
        raise Tier2Error(
            f"{backend.url}/{name}: the stored object is {got.size} bytes with SHA-256 "
            f"{got.checksum}, the upload was {size} bytes with {checksum}",
            reason="checksum_mismatch",
            retryable=True,
        )


# Errnos of a file system that may come back (a NAS rebooting, a flaky
# link); everything else on a local file system is a fact, not a blip.
TRANSIENT_ERRNOS = frozenset(
    {errno.EIO, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ESTALE, errno.EHOSTDOWN,
     errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET, errno.ECONNABORTED}
)


# ------------------------------------------------------------------ URLs


def open_backend(url: str, **options: Any) -> Tier2Backend:
    """The backend for ``url``:

    - ``s3://bucket/prefix``: an S3-compatible store (``S3Backend``;
      options ``endpoint``, ``region``, ``access_key``, ``secret_key``,
      ``ca_bundle``, ``part_size``, ``retry``, timeouts).
    - ``file:///dir``: a directory used as a bucket (``LocalBackend``;
      option ``retry``).

    An unknown scheme raises ValueError.
    """
    if not isinstance(url, str):
        raise TypeError(f"tier 2 URL must be a str, not {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError(f"tier 2 URL {url!r}: no query or fragment allowed (pass options as arguments)")
    if parts.scheme == "s3":
        from .s3 import S3Backend

        return S3Backend(parts.netloc, parts.path.strip("/"), **options)
    if parts.scheme == "file":
        from .local import LocalBackend

        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"tier 2 URL {url!r}: a file URL names a local path (file:///dir)")
        return LocalBackend(urllib.parse.unquote(parts.path), **options)
    raise ValueError(f"tier 2 URL {url!r}: scheme must be s3:// or file://")
