"""Manifest snapshots in Tier 2, and the writer's stewardship of its prefix.

A snapshot is the LMDB data file of a consistent copy of the manifest
(``Manifest.copy_to``: one read transaction, compacted), compressed with
zstd into one object, ``manifest/<snapshot id>.mdb.zst``. The id is
``<milliseconds, 15 digits>-e<epoch>-<ledger sequence>``, so ids sort by
time and two snapshots never share one. Only after
Tier 2 confirmed that object (size and SHA-256 read back) is the pointer
``manifest/latest`` written, a small JSON object::

    {"format": 1, "snapshot": "manifest/….mdb.zst", "size": …, "checksum": "…",
     "last_lsn": …, "last_segment": …, "segments": …, "time_ms": …,
     "store_id": "…", "epoch": …}

so a reader of the pointer always finds a whole snapshot. ``last_lsn`` and
``last_segment`` are the end of the longest run of sealed segments, from
the first, whose objects Tier 2 confirmed: what a restore can hold. The
copy may list later segments (sealed but not uploaded yet, the active
one); a restore drops them (see ``aoflite.restore``). The newest
``KEEP`` snapshot objects are kept, older ones deleted.

The writer's ``Steward`` takes the prefix's lease at open
(``aoflite.tiers.fence``), routes the pipeline's writes through the
lease check, heartbeats it, takes a snapshot every
``snapshot_every_seals`` uploads (in a thread of its own, woken by the
pipeline's remote worker, so uploads never wait for a snapshot) and once
more when the pipeline stops, and gives the lease up at close.
Each snapshot is recorded as a SnapshotMarker ledger event.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from typing import Any, NamedTuple

import pyzstd

from . import errors
from .config import Config
from .manifest import Manifest, SegmentRecord
from .tiers.base import Tier2Backend, confirm_object, file_digest
from .tiers.fence import FencedBackend, WriterLease, get_json, put_json

__all__ = ["Snapshot", "Steward", "POINTER", "KEEP", "take", "read_pointer", "restorable", "unpack"]

#: The pointer object naming the newest snapshot.
POINTER = "manifest/latest"
#: Snapshot objects kept (the newest); older ones are deleted.
KEEP = 4
_FORMAT = 1
_CHUNK = 1 << 20


class Snapshot(NamedTuple):
    """A snapshot as its pointer describes it."""

    name: str  #: the snapshot object's name
    size: int
    checksum: str
    last_lsn: int  #: the last LSN Tier 2 fully holds, as of the snapshot
    last_segment: int  #: the segment that LSN is in (0: none)
    segments: int
    time_ms: int
    store_id: int
    epoch: int

    def to_json(self) -> dict[str, Any]:
        return {
            "format": _FORMAT,
            "snapshot": self.name,
            "size": self.size,
            "checksum": self.checksum,
            "last_lsn": self.last_lsn,
            "last_segment": self.last_segment,
            "segments": self.segments,
            "time_ms": self.time_ms,
            "store_id": f"{self.store_id:016x}",
            "epoch": self.epoch,
        }

    @classmethod
    def from_json(cls, body: dict[str, Any], url: str) -> Snapshot:
        try:
            if body["format"] > _FORMAT:
                raise errors.FormatError(
                    f"{url}/{POINTER}: snapshot format {body['format']} is newer than this aoflite's {_FORMAT} "
                    "(upgrade aoflite)"
                )
            return cls(
                str(body["snapshot"]), int(body["size"]), str(body["checksum"]), int(body["last_lsn"]),
                int(body["last_segment"]), int(body["segments"]), int(body["time_ms"]),
                int(body["store_id"], 16), int(body["epoch"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise errors.FormatError(f"{url}/{POINTER}: damaged snapshot pointer ({e!r})") from None


def restorable(recs: list[SegmentRecord]) -> list[SegmentRecord]:
    """The longest run of sealed segments, in id order from the first,
    whose objects Tier 2 confirmed: a later segment cannot be restored
    while an earlier one is missing (LSNs would jump)."""
    out: list[SegmentRecord] = []
    for r in sorted(recs, key=lambda r: r.segment_id):
        if r.state != "sealed" or "t2" not in r.tiers:
            break
        out.append(r)
    return out


def read_pointer(backend: Tier2Backend) -> Snapshot | None:
    """The newest snapshot's pointer, or None when the prefix has none."""
    body = get_json(backend, POINTER)
    return None if body is None else Snapshot.from_json(body, backend.url)


def take(manifest: Manifest, backend: Tier2Backend, *, epoch: int = 0) -> Snapshot:
    """Upload a snapshot of manifest and point ``manifest/latest`` at it."""
    work = tempfile.mkdtemp(prefix=".aoflite-snapshot-")
    try:
        copy_dir = os.path.join(work, "manifest")
        os.mkdir(copy_dir)
        manifest.copy_to(copy_dir)
        copy = Manifest(copy_dir)
        try:
            held = restorable(copy.segments())
            store_id = int(copy.get_meta("store_id") or 0)
            count = len(copy.segments())
            seq = copy.ledger_seq()
        finally:
            copy.close()
        packed = os.path.join(work, "snapshot.mdb.zst")
        _compress(os.path.join(copy_dir, "data.mdb"), packed)
        now = time.time_ns() // 1_000_000
        name = f"manifest/{now:015d}-e{epoch}-{seq}.mdb.zst"
        size, checksum = file_digest(packed)
        backend.put(name, packed, records=count)
        confirm_object(backend, name, size, checksum)
        snap = Snapshot(
            name, size, checksum, held[-1].last_lsn if held else 0, held[-1].segment_id if held else 0,
            len(held), now, store_id, epoch,
        )
        put_json(backend, POINTER, snap.to_json())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest.log_event(
        "SnapshotMarker", object=name, bytes=size, last_lsn=snap.last_lsn, last_segment=snap.last_segment,
        epoch=epoch,
    )
    _prune(backend, name)
    return snap


def _prune(backend: Tier2Backend, newest: str) -> None:
    """Delete all but the KEEP newest snapshot objects (never the newest)."""
    with contextlib.suppress(errors.Error):
        names = [n for n in backend.list("manifest/") if n.endswith(".mdb.zst")]
        for n in sorted(names)[:-KEEP]:
            if n != newest:
                backend.delete(n)


def _compress(src: str, dst: str) -> None:
    comp = pyzstd.ZstdCompressor(3)
    with open(src, "rb") as f, open(dst, "wb") as out:
        while chunk := f.read(_CHUNK):
            out.write(comp.compress(chunk))
        out.write(comp.flush())


def unpack(packed: str, data_mdb: str) -> None:
    """Decompress a snapshot object into an LMDB data file, synced."""
    dec = pyzstd.ZstdDecompressor()
    try:
        with open(packed, "rb") as f, open(data_mdb, "wb") as out:
            while chunk := f.read(_CHUNK):
                out.write(dec.decompress(chunk))
            out.flush()
            os.fsync(out.fileno())
    except pyzstd.ZstdError as e:
        raise errors.CorruptionError(f"{packed}: the manifest snapshot does not decompress: {e}", path=packed) from None
    if not dec.eof:
        raise errors.CorruptionError(f"{packed}: the manifest snapshot is cut short", path=packed)


class Steward:
    """The writer's duties toward its Tier 2 prefix: the lease, fenced
    writes, periodic snapshots, the snapshot at close."""

    def __init__(self, backend: Tier2Backend, manifest: Manifest, path: str, config: Config):
        self._manifest = manifest
        self.lease = WriterLease(backend, store_id=int(manifest.get_meta("store_id") or 0), path=path)
        try:
            self.lease.acquire()  # LockedError: another store writes there
        except errors.LockedError:
            raise
        except errors.Tier2Error:
            pass  # Tier 2 is out: the lease is taken before the first upload
        #: what the pipeline uploads through: every write checks the lease
        self.backend = FencedBackend(backend, self.lease)
        self._every = config.tiers.snapshot_every_seals
        # segments Tier 2 held at the last snapshot (counted from the
        # manifest, so an upload is due for a snapshot from the moment it
        # is recorded: drain_tiers never returns in between)
        self._held = self._confirmed()
        self._taken = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._stopped = False
        # snapshots are taken here, not in the remote worker: a snapshot
        # costs a manifest copy and two writes, which uploads need not wait for
        self._thread = threading.Thread(target=self._run, name="aoflite-tier2-steward", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        beat = self.lease.lease_s / 3
        next_beat = time.monotonic() + beat
        while True:
            self._wake.wait(max(0.0, next_beat - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            if time.monotonic() >= next_beat:
                with contextlib.suppress(errors.Error, OSError):  # an outage: the lease may lapse, as it should
                    self.lease.heartbeat()
                next_beat = time.monotonic() + beat
            with self._lock:
                if self._due():
                    self._snapshot()  # due after uploads, or one that failed before

    def _confirmed(self) -> int:
        return sum(1 for r in self._manifest.segments() if r.state == "sealed" and "t2" in r.tiers)

    def _due(self) -> bool:
        return self.lease.fenced is None and self._confirmed() - self._held >= self._every

    def due(self) -> bool:
        """Whether snapshot_every_seals uploads have been confirmed since
        the last snapshot (which the steward's thread is taking)."""
        with contextlib.suppress(errors.Error):
            return self._due()
        return False

    def uploaded(self, segment_id: int) -> None:
        """The pipeline confirmed segment_id in Tier 2 (its remote worker)."""
        self._wake.set()

    def _snapshot(self) -> None:
        held = self._confirmed()
        try:
            take(self._manifest, self.backend, epoch=self.lease.epoch)
        except (errors.Error, OSError) as e:
            with contextlib.suppress(errors.Error):
                self._manifest.log_event(
                    "CustomEvent", name="SnapshotFailed", reason=getattr(e, "reason", type(e).__name__), error=str(e)
                )
            return
        self._held = held
        self._taken = True

    def stopped(self) -> None:
        """The pipeline stopped (the store closes): a last snapshot when
        anything changed, then the lease goes. Idempotent."""
        self._stop.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join()  # no heartbeat may write the lease after it is given up
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            if self.lease.fenced is None and (self._confirmed() != self._held or not self._taken):
                self._snapshot()
            with contextlib.suppress(errors.Error, OSError):
                self.lease.release()
