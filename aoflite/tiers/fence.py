"""One writer per Tier 2 prefix: a lease object and an epoch.

The object ``writer`` under the prefix says who writes there::

    {"format": 1, "store_id": "…", "host": "…", "pid": 123, "path": "/…",
     "epoch": 7, "token": "…", "heartbeat_ms": 1764582000000}

A writable store with a Tier 2 takes the lease when it opens. It is
refused (``LockedError`` naming the holder) while another store holds a
fresh lease, one heartbeated within ``LEASE_S``. "Another store" is
another open: the token is drawn anew at every open, so a restored copy
with the same store id is another store. The one exception is the same
store (store id, host and path) opening again after a crash: the local
flock already proves the previous open is gone, so it takes the lease
over at once instead of waiting for it to expire.

When Tier 2 cannot be reached at open, the store opens all the same (an
outage must not stop appends) and takes the lease before its first
upload; a fresh holder found then fails that upload with LockedError.
Taking the lease raises the epoch by one. Before every upload and
snapshot the writer reads the lease back (one small GET): when the epoch
moved past its own, a newer writer took over, and this one stops
(``FencedError``, reason "fenced") instead of overwriting the newer
writer's objects. When it finds an older epoch (a writer it fenced, which
wrote once more in the window below), it writes its own lease back: the
higher epoch always wins.

The S3 API has no compare-and-swap, so this narrows the race, it does not
close it: a writer paused for longer than the lease (a VM frozen, a
network cut) can complete one upload that it began before its check, and
two stores opening within the same instant can both see a free lease
(each confirms by reading the lease back after writing it, which catches
all but a simultaneous pair). Objects are whole and checked on read, and a
snapshot names each segment's checksum, so such a late object is detected
when read, never returned as the newer writer's data.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import tempfile
import threading
import time
from typing import Any

from .. import errors
from .base import ObjectInfo, Tier2Backend

__all__ = ["LEASE_S", "LEASE_OBJECT", "WriterLease", "FencedBackend", "get_json", "put_json"]

#: Seconds a lease stays fresh without a heartbeat.
LEASE_S = 30.0
#: The lease's object name, relative to the Tier 2 URL.
LEASE_OBJECT = "writer"
_FORMAT = 1
_REREADS = 5


# Scratch space for the small objects' local files: memory when there is
# some (a get syncs what it writes, and the lease is read before every upload)
_SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def put_json(backend: Tier2Backend, name: str, body: dict[str, Any]) -> ObjectInfo:
    """Store a small JSON object (through a temporary local file: the
    backend interface puts files)."""
    fd, tmp = tempfile.mkstemp(prefix=".aoflite-", suffix=".json", dir=_SCRATCH)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(body, sort_keys=True).encode())
        return backend.put(name, tmp, records=0)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def get_json(backend: Tier2Backend, name: str) -> dict[str, Any] | None:
    """A small JSON object, or None when there is none. One GET (more only
    when a get overlapped a replacement of the object)."""
    directory = tempfile.mkdtemp(prefix=".aoflite-", dir=_SCRATCH)
    try:
        dest = os.path.join(directory, "object.json")
        for attempt in range(_REREADS):
            try:
                backend.get(name, dest)
                break
            except errors.Tier2NotFound:
                return None
            except errors.Tier2Error as e:
                # the file backend replaces an object as data then sidecar: a
                # get in between sees the new bytes against the old checksum
                if e.reason not in ("checksum_mismatch", "truncated") or attempt == _REREADS - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        with open(dest, "rb") as f:
            raw = f.read()
    finally:
        with contextlib.suppress(OSError):
            for n in os.listdir(directory):
                os.unlink(os.path.join(directory, n))
            os.rmdir(directory)
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise errors.Tier2Error(f"{backend.url}/{name}: not an aoflite JSON object", "bad_metadata", False)
    return body


#: Pauses before reading a vanished lease again (about 0.3 s in all).
_VANISHED_REREADS = (0.01, 0.04, 0.1, 0.15)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def describe(lease: dict[str, Any]) -> str:
    """Who holds a lease, for error messages."""
    age = (_now_ms() - int(lease.get("heartbeat_ms", 0))) / 1000
    return (
        f"store {lease.get('store_id')} at {lease.get('host')}:{lease.get('path')} (pid {lease.get('pid')}), "
        f"epoch {lease.get('epoch')}, last heartbeat {age:.1f} s ago"
    )


class WriterLease:
    """This open's lease on one Tier 2 prefix."""

    def __init__(self, backend: Tier2Backend, *, store_id: int, path: str, lease_s: float | None = None):
        self._backend = backend
        self.store_id = f"{store_id:016x}"
        self.path = os.path.abspath(path)
        self.host = socket.gethostname()
        self.token = secrets.token_hex(8)
        self.lease_s = LEASE_S if lease_s is None else lease_s
        self.epoch = 0
        self._written = 0.0  # monotonic time of our last write of the lease
        self._fenced: errors.FencedError | None = None
        self._released = False
        self._lock = threading.Lock()

    @property
    def fenced(self) -> errors.FencedError | None:
        """Why this writer may no longer write, or None."""
        return self._fenced

    def _body(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "store_id": self.store_id,
            "host": self.host,
            "pid": os.getpid(),
            "path": self.path,
            "epoch": self.epoch,
            "token": self.token,
            "heartbeat_ms": _now_ms(),
        }

    def _write(self) -> None:
        put_json(self._backend, LEASE_OBJECT, self._body())
        self._written = time.monotonic()

    def _ours_before(self, held: dict[str, Any]) -> bool:
        """The lease is this store's own, left by an earlier open here."""
        return (held.get("store_id"), held.get("host"), held.get("path")) == (self.store_id, self.host, self.path)

    def acquire(self) -> None:
        """Take the lease, or raise LockedError naming a fresh holder."""
        with self._lock:
            self._acquire()

    def _acquire(self) -> None:
        held = get_json(self._backend, LEASE_OBJECT)
        if held is not None and held.get("token") != self.token and not self._ours_before(held):
            age_s = (_now_ms() - int(held.get("heartbeat_ms", 0))) / 1000
            if age_s < self.lease_s:
                raise errors.LockedError(
                    f"{self._backend.url}: another store writes to this Tier 2 prefix ({describe(held)}); "
                    f"close it, give this store its own tier2_url, or wait {self.lease_s:.0f} s after it "
                    "stopped for its lease to expire"
                )
        epoch = int(held.get("epoch", 0)) + 1 if held is not None else 1
        body = dict(self._body(), epoch=epoch)
        put_json(self._backend, LEASE_OBJECT, body)
        got = get_json(self._backend, LEASE_OBJECT)
        if got is None or got.get("token") != self.token:
            raise errors.LockedError(
                f"{self._backend.url}: another store took this Tier 2 prefix at the same moment "
                f"({describe(got) if got else 'its lease vanished'}); open again later"
            )
        # only now: an epoch of ours is one the bucket has seen
        self.epoch = epoch
        self._written = time.monotonic()

    def check(self) -> None:
        """Before an upload or a snapshot: raise FencedError when a newer
        writer took the prefix; heartbeat when due. One GET, and a PUT when
        the heartbeat is due."""
        with self._lock:
            if self._fenced is not None:
                raise self._fenced
            if self._released:
                raise errors.ClosedError(f"{self._backend.url}: this store gave up its writer lease (it was closed)")
            if not self.epoch:
                self._acquire()  # Tier 2 was out at open: taken before the first write
                return
            held = get_json(self._backend, LEASE_OBJECT)
            # A lease that vanished is not ours to rewrite at once: the file
            # backend uncommits an object while it replaces it, so a newer
            # writer may be in the middle of taking the prefix.
            for delay in _VANISHED_REREADS:
                if held is not None:
                    break
                time.sleep(delay)
                held = get_json(self._backend, LEASE_OBJECT)
            if held is not None and held.get("token") != self.token and int(held.get("epoch", 0)) >= self.epoch:
                self._fenced = errors.FencedError(
                    f"{self._backend.url}: this store (epoch {self.epoch}) was fenced out by a newer writer "
                    f"({describe(held)}); it stops uploading and snapshotting. Close it: the newer writer "
                    "owns the prefix"
                )
                raise self._fenced
            # missing, an older epoch (a writer we fenced wrote last) or ours: ours stands
            if held is None or held.get("token") != self.token or time.monotonic() - self._written >= self.lease_s / 3:
                self._write()

    def heartbeat(self) -> None:
        """Keep the lease fresh while idle (check() heartbeats when due)."""
        with contextlib.suppress(errors.FencedError):
            self.check()

    def release(self) -> None:
        """Give the lease up at close, when it is still ours."""
        with self._lock:
            if self._fenced is not None or not self.epoch or self._released:
                return
            self._released = True
            held = get_json(self._backend, LEASE_OBJECT)
            if held is not None and held.get("token") == self.token:
                self._backend.delete(LEASE_OBJECT)


class FencedBackend:
    """A Tier 2 backend whose writes first check the writer's lease: what
    the writer's pipeline uploads through. Reads pass straight through."""

    def __init__(self, inner: Tier2Backend, lease: WriterLease):
        self.inner = inner
        self.lease = lease
        self.url = inner.url

    def __repr__(self) -> str:
        return f"FencedBackend({self.inner!r})"

    def put(self, name: str, path: str | os.PathLike[str], *, records: int) -> ObjectInfo:
        self.lease.check()
        return self.inner.put(name, path, records=records)

    def delete(self, name: str) -> None:
        self.lease.check()
        self.inner.delete(name)

    def get(self, name: str, dest: str | os.PathLike[str]) -> ObjectInfo:
        return self.inner.get(name, dest)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        return self.inner.get_range(name, offset, length)

    def head(self, name: str) -> ObjectInfo:
        return self.inner.head(name)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)
