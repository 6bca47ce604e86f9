"""Bringing a sealed segment back to local disk when a read needs it.

A sealed segment whose file was evicted is rebuilt from its Tier 1 copy
(PATH/tier1/ID.zst); when that is gone too, the Tier 1 copy is first
fetched from Tier 2. Every step writes a temporary file that is synced and
renamed into place, so any number of handles, in this process or others,
may hydrate the same segment at once: each rename installs a complete,
verified file and the last one wins with the same bytes. Only the writer's
handle records the steps in the ledger (read-only handles never write the
manifest); the writer counts every local file in its budgets.

Concurrent readers of one segment share one fetch; fetches run on a small
worker pool behind a bounded queue.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from . import errors, layout
from .config import Config
from .failpoints import hit
from .manifest import Manifest, SegmentRecord
from .restore import with_origins
from .segment import Segment, crc32c, crc_unmask
from .tiers.base import Tier2Backend, segment_object_name
from .tiers.seekable import FileSource, decompress_segment

__all__ = ["Hydrator", "facts_mismatch"]

_FOOTER_BYTES = 64  # native/aof_format.h: the file CRC covers what precedes it

#: Segments waiting for a worker, beyond which a read is refused with
#: BackpressureError(kind="hydration") rather than queued.
QUEUE_LIMIT = 256

#: Called after each hydration: (segment id, the tier it came from, seconds,
#: the error or None).
OnHydrated = Callable[[int, str, float, "BaseException | None"], None]


def facts_mismatch(seg: Segment, rec: SegmentRecord) -> str | None:
    """Why the sealed file seg is not the one the manifest recorded, or None."""
    info = seg.info()
    got = (info.record_count, info.last_lsn, info.file_crc, info.file_bytes)
    want = (rec.record_count, rec.last_lsn, rec.file_crc, rec.file_bytes)
    if got == want:
        return None
    return f"records, last LSN, CRC, size {got} != {want} recorded in the manifest"


class Hydrator:
    """Fetches evicted segments back into PATH/segments."""

    def __init__(
        self,
        path: str,
        manifest: Manifest,
        backend: Tier2Backend | None,
        config: Config,
        *,
        ledger: bool,
        on_hydrated: OnHydrated | None = None,
        on_backpressure: Callable[[str, BaseException], None] | None = None,
    ):
        self.path = path
        self._manifest = manifest
        # a restored store also reads the Tier 2s it was restored from
        self._backend = with_origins(backend, manifest, config)
        self._ledger = ledger
        self._on_hydrated = on_hydrated
        self._on_backpressure = on_backpressure
        self._timeout_ms = config.tiers.hydration_timeout_ms
        self._attempts = config.tier2.retry_max_attempts
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.tiers.hydration_workers, thread_name_prefix="aoflite-hydrate"
        )
        self._lock = threading.Lock()
        self._inflight: dict[int, concurrent.futures.Future[Segment | None]] = {}
        self._closed = False
        # cache copies checked (or made) by this process
        self._checked: set[int] = set()

    @property
    def backend(self) -> Tier2Backend | None:
        """What it fetches from: the store's Tier 2, and the Tier 2s a
        restored store came from behind it."""
        return self._backend

    # ------------------------------------------------------------ callers

    def ensure_local(self, segment_id: int, *, wait: bool = True) -> Segment | None:
        """Make segment_id's file local again: None when it already is,
        else the hydrated segment, mapped before its file was renamed into
        place (so an eviction racing the caller cannot take it away).

        wait=False: when it is not local, start fetching it and raise
        BackpressureError(kind="hydration") at once. Waiting longer than
        hydration_timeout_ms raises the same (the fetch goes on)."""
        if os.path.exists(layout.segment_path(self.path, segment_id)):
            return None
        fut = self.start(segment_id)
        if not wait:
            raise self._refused(
                f"{self.path}: segment {segment_id} is being fetched back from a lower tier "
                "(read again later, or read without nonblocking=True to wait for it)"
            )
        try:
            return fut.result(timeout=self._timeout_ms / 1000)
        except concurrent.futures.TimeoutError:
            raise self._refused(
                f"{self.path}: segment {segment_id} did not come back from Tier 2 within "
                f"hydration_timeout_ms={self._timeout_ms} (the fetch goes on; retry, or raise the timeout)"
            ) from None

    def _refused(self, message: str) -> errors.BackpressureError:
        e = errors.BackpressureError("hydration", message)
        if self._on_backpressure is not None:
            self._on_backpressure("hydration", e)
        return e

    def start(self, segment_id: int) -> concurrent.futures.Future[Segment | None]:
        """The fetch of segment_id, started if none is under way."""
        with self._lock:
            if self._closed:
                raise errors.ClosedError(f"{self.path}: store is closed")
            fut = self._inflight.get(segment_id)
            if fut is None:
                if len(self._inflight) >= QUEUE_LIMIT:
                    raise self._refused(
                        f"{self.path}: {QUEUE_LIMIT} segments are already waiting to be fetched "
                        "(retry later, or raise hydration_workers)"
                    )
                fut = self._pool.submit(self._hydrate, segment_id)
                self._inflight[segment_id] = fut
                fut.add_done_callback(functools.partial(self._finished, segment_id))
            return fut

    def fetch_tier1(self, rec: SegmentRecord, dest: str) -> None:
        """Download the Tier 2 object of rec (its Tier 1 file) to dest,
        checked against what the manifest recorded (for backups)."""
        self._fetch(rec, dest)

    def is_sound(self, seg: Segment, rec: SegmentRecord | None) -> bool:
        """Whether a local file of a sealed segment can be used: always for
        the writer's own file (the manifest says "t0": it was synced when
        sealed); for a cache copy (hydrated, never synced), once its bytes
        match the file CRC its footer records and the footer matches the
        manifest, checked once per process. A torn copy is deleted, and the
        caller hydrates it anew."""
        sid = seg.info().segment_id
        if rec is None or "t0" in rec.tiers or sid in self._checked:
            return True
        info = seg.info()
        data = seg.memory()
        sound = (
            info.sealed
            and facts_mismatch(seg, rec) is None
            and crc_unmask(info.file_crc) == crc32c(data[: info.file_bytes - _FOOTER_BYTES])
        )
        if sound:
            self._checked.add(sid)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(seg.path)
        return bool(sound)

    def pending(self) -> int:
        """Segments being fetched or waiting for a worker."""
        return len(self._inflight)

    def close(self) -> None:
        """Stop taking work; fetches under way finish (their files stay valid)."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _finished(self, segment_id: int, _: object) -> None:
        with self._lock:
            self._inflight.pop(segment_id, None)

    # ------------------------------------------------------------ the work

    def _event(self, segment_id: int, event: str, **fields: Any) -> None:
        if self._ledger:
            with contextlib.suppress(errors.Error):  # the ledger is a record, not a gate
                self._manifest.record_tier(segment_id, event, **fields)

    def _hydrate(self, segment_id: int) -> Segment | None:
        rec = self._manifest.segment(segment_id)
        if rec is None or rec.state != "sealed":
            raise errors.NotFound(f"{self.path}: no sealed segment {segment_id} in the manifest")
        dst = layout.segment_path(self.path, segment_id)
        if os.path.exists(dst):
            return None
        t1 = layout.tier1_path(self.path, segment_id)
        source = "t1" if os.path.exists(t1) else "t2"
        started = time.monotonic()
        self._event(segment_id, "HydrationStarted", source=source)
        try:
            seg = self._rebuild(rec, dst, t1)
        except BaseException as e:
            self._event(segment_id, "HydrationFailed", source=source, reason=type(e).__name__, error=str(e))
            if self._on_hydrated is not None:
                self._on_hydrated(segment_id, source, time.monotonic() - started, e)
            raise
        seconds = time.monotonic() - started
        # no "t0" in the manifest for it: a hydrated file is a cache copy the
        # evictor may remove at any time, and the manifest must never name a
        # copy that is not there
        self._event(segment_id, "HydrationDone", source=source, ms=round(seconds * 1000, 3))
        if self._on_hydrated is not None:
            self._on_hydrated(segment_id, source, seconds, None)
        return seg

    def _rebuild(self, rec: SegmentRecord, dst: str, t1: str) -> Segment:
        """Write dst from the Tier 1 copy, or from Tier 2 when that copy is
        missing or proves damaged (up to the retry policy's attempts);
        returns it mapped. Every file is opened before it is used, so an
        eviction racing the hydration cannot pull it away midway."""
        sid = rec.segment_id
        last: errors.Error | None = None
        for _ in range(max(1, self._attempts)):
            fetched: str | None = None
            try:
                source = FileSource(t1)
            except FileNotFoundError:
                fetched = f"{t1}.{secrets.token_hex(4)}.tmp"
                self._fetch(rec, fetched)
                hit("hydrate.after_fetch")
                source = FileSource(fetched)
            # checked under a name of its own, then renamed into place
            tmp = f"{dst}.{secrets.token_hex(4)}.tmp"
            try:
                # The recorded CRC of the whole file (taken from a segment
                # verified before it was compressed) proves every byte, so the
                # segment's own walk is needed only without it. A hydrated
                # file is a cache copy: not synced (a crash may tear it; a
                # reader checks its CRC before first use, see is_sound).
                crc = rec.t1_crc if rec.t1_bytes else None
                with source:
                    decompress_segment(source, tmp, expected_crc32c=crc, verify=crc is None, durable=False)
                seg, _ = Segment.open(tmp)
                why = facts_mismatch(seg, rec)
                if why is not None:
                    raise errors.CorruptionError(f"{dst}: segment {sid} rebuilt from {source.name} is not the sealed file: {why}")
                os.replace(tmp, dst)
                if fetched is not None:
                    os.replace(fetched, t1)  # kept as the Tier 1 copy (the evictor counts it)
                self._checked.add(sid)
                return seg
            except errors.CorruptionError as e:
                last = e
                if fetched is None:
                    # a damaged Tier 1 copy is worth nothing: the next attempt fetches anew
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(t1)
                if self._backend is None or "t2" not in rec.tiers:
                    raise
            finally:
                for leftover in (tmp, fetched):
                    if leftover is not None:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(leftover)
        assert last is not None
        raise last

    def _fetch(self, rec: SegmentRecord, t1: str) -> None:
        sid = rec.segment_id
        if self._backend is None or "t2" not in rec.tiers:
            where = "no Tier 2 is configured" if self._backend is None else "Tier 2 does not hold it"
            raise errors.CorruptionError(
                f"{layout.segment_path(self.path, sid)}: segment {sid} is in the manifest but in no local tier "
                f"and {where} (restore the file from a backup or replica)",
                path=layout.segment_path(self.path, sid),
            )
        os.makedirs(os.path.dirname(t1), exist_ok=True)
        info = self._backend.get(segment_object_name(sid), t1)  # size and SHA-256 checked, atomic
        if rec.t2_checksum and (info.size, info.checksum) != (rec.t2_bytes, rec.t2_checksum):
            raise errors.CorruptionError(
                f"{self._backend.url}/{segment_object_name(sid)}: Tier 2 object of segment {sid} is "
                f"{info.size} bytes with SHA-256 {info.checksum}, the manifest recorded {rec.t2_bytes} "
                f"bytes with {rec.t2_checksum} (the object was replaced or damaged)"
            )
