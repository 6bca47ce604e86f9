"""The store handle: what ``aoflite.open`` returns.

A handle either writes (one per store across processes, guarded by an
flock) or reads (any number, in this or other processes). It opens the
directory and the manifest, then hands the work to its rooms: ``Writes``
(appends, transactions, rolls, the flusher), ``Reads`` (key to segment,
the map cache, scans, the change feed) and, on a read-only handle,
``Follower`` (keeping the reads in step with another process's writer).
``Lifecycle`` is what all of them ask before they act: closed, or refusing
every call (a failed sync, a roll that failed midway, a fork).

The two hot calls, ``append`` and ``read``, are bound straight to the
room's method on each handle, so delegating costs them nothing.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from . import backup as _backup
from . import errors, layout
from . import health as _health
from . import metrics as _metrics
from .args import BytesLike, check_timeout
from .config import Config
from .coordinator import Coordinator, Residency, open_tier2, remove_leftovers, residency, tiering_enabled
from .cursors import Cursor, CursorInfo, Cursors
from .failpoints import hit
from .coldread import ColdReads
from .follow import Follower
from .hydration import Hydrator
from .keys import Keys
from .lifecycle import Lifecycle
from .manifest import Manifest
from .reads import Reads
from .record import Record
from .snapshots import Steward
from .writes import Writes

__all__ = ["Store", "open"]

#: Settings that shape the files: the store records them (see _settle_settings).
_SHAPING = ("segment_bytes", "max_record_bytes")

# Every open handle, so a forked child can disown the ones it inherited.
_handles: weakref.WeakSet[Store] = weakref.WeakSet()
# What inherited handles hold (C writer, maps, locks): a child keeps them
# alive and never runs their finalizers, which would act on the parent's
# store (syncs, LMDB reader slots) from the wrong process.
_inherited: list[Any] = []


def _disown_after_fork() -> None:
    for store in list(_handles):
        store._disown()


os.register_at_fork(after_in_child=_disown_after_fork)


def _allocated_bytes(root: str) -> int:
    total = 0
    for top, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
            except FileNotFoundError:
                pass  # a temporary file that went away meanwhile
    return total


async def _in_thread(it: Iterator[Record]) -> AsyncIterator[Record]:
    """Each next() of a blocking iterator in the loop's default executor."""
    import asyncio

    loop = asyncio.get_running_loop()
    while True:
        # None marks the end: iterators of records never yield None
        rec: Record | None = await loop.run_in_executor(None, next, it, None)
        if rec is None:
            return
        yield rec


def open(
    path: str | os.PathLike[str],
    *,
    readonly: bool = False,
    durability: str | None = None,
    config: Config | None = None,
    **overrides: Any,
) -> Store:
    """Open (or create) the store at path.

    A missing path is created unless readonly (then NotFound). A path that
    exists but is not an aoflite store raises FormatError and is left as it
    was. ``durability`` is "full", "normal" (the default) or "off"; see
    ``aoflite.config.DURABILITY_MODES`` for what each guarantees. Other
    keyword arguments override settings by their flattened names
    (``segment_bytes=...``); unknown or out-of-range ones raise ValueError.
    """
    if config is None:
        config = Config()
        explicit: set[str] = set()
    elif not isinstance(config, Config):
        raise TypeError(f"config must be an aoflite.Config, not {type(config).__name__}")
    else:
        defaults = Config().flat()
        explicit = {name for name, value in config.flat().items() if value != defaults[name]}
    if durability is not None:
        overrides["durability"] = durability
    if overrides:
        config = config.evolve(**overrides)
        explicit |= set(overrides)
    if not isinstance(readonly, bool):
        raise TypeError("readonly must be True or False")
    return Store(os.fspath(path), readonly=readonly, config=config, explicit=frozenset(explicit))


class _Events:
    """What the rooms report (flushes, failures, Tier 2 requests,
    hydrations, backpressure), passed on to the handle's metrics. Holds the
    handle weakly, so that the rooms holding these callbacks never keep a
    dropped handle alive (its finalizer must run)."""

    def __init__(self, store: weakref.ref[Store]):
        self._store = store

    def _metrics(self) -> Any:
        store = self._store()
        return None if store is None else store.metrics

    def flushed(self, seconds: float) -> None:
        if (m := self._metrics()) is not None:
            m.flush_done(seconds)

    def flush_failed(self, error: BaseException) -> None:
        if (m := self._metrics()) is not None:
            m.flush_failed(error=error)

    def metadata_failed(self, error: BaseException) -> None:
        if (m := self._metrics()) is not None:
            m.metadata_failed(error=error)

    def tier2_retry(self, op: str, failures: int, error: errors.Tier2Error, delay_ms: float) -> None:
        if (m := self._metrics()) is None:
            return
        if op == "put":
            m.upload_retry(attempt=failures, error=error)
        elif op in ("get", "get_range"):
            m.tier2_fetch_failed(attempt=failures, error=error)

    def upload_failed(self, segment_id: int, error: BaseException) -> None:
        if (m := self._metrics()) is not None:
            m.upload_retry(segment=segment_id, error=error)

    def tier2_request(self, op: str, nbytes: int) -> None:
        if (m := self._metrics()) is not None:
            m.tier2_request(op, nbytes)

    def hydrated(self, segment_id: int, source: str, seconds: float, error: BaseException | None) -> None:
        if (m := self._metrics()) is None:
            return
        if error is None:
            m.hydration_done(seconds, segment=segment_id, tier=source)
        elif source == "t2":
            m.tier2_fetch_failed(segment=segment_id, error=error)

    def backpressure(self, kind: str, error: BaseException) -> None:
        if (m := self._metrics()) is not None:
            m.backpressure(kind, error)


class Store:
    """An open aoflite store. Thread-safe. Use ``aoflite.open`` to get one."""

    def __init__(self, path: str, *, readonly: bool, config: Config, explicit: frozenset[str] = frozenset()):
        self.path = os.path.abspath(path)
        self.readonly = readonly
        self.config = config
        self._life = Lifecycle(self.path)
        self._lock_fd: int | None = None
        self._writes: Writes | None = None
        self._follower: Follower | None = None
        self._owner_pid = os.getpid()
        self._forked = False
        self._close_lock = threading.Lock()
        self._coordinator: Coordinator | None = None
        self._hydrator: Hydrator | None = None

        state = layout.inspect_path(self.path)
        if state == "missing" and readonly:
            raise errors.NotFound(f"{self.path}: no store here (open it writable once to create it)")
        if state == "empty" and readonly:
            raise errors.NotFound(f"{self.path}: empty directory, no store here")
        if not readonly:
            if state == "missing":
                os.makedirs(self.path)
            self._lock_fd = layout.acquire_lock(self.path, config.open.lock_timeout_ms)
            hit("open.after_lock")
        try:
            if state in ("missing", "empty"):
                store_id = layout.create_layout(self.path)
                self._manifest = Manifest(layout.manifest_dir(self.path), create=True)
                self._manifest.init_store(store_id, layout.FORMAT_VERSION)
            else:
                _, store_id = layout.read_marker(self.path)
                self._manifest = Manifest(layout.manifest_dir(self.path), create=not readonly)
                if self._manifest.get_meta("store_id") is None and not readonly:
                    self._manifest.init_store(store_id, layout.FORMAT_VERSION)
            config = self.config = self._settle_settings(config, explicit, readonly)
            keys = Keys(self._manifest, lambda: reads.live())
            reads = self._reads = Reads(self.path, store_id, self._manifest, keys, config, self._life)
            events = self._events = _Events(weakref.ref(self))
            self._manifest.on_commit_failed = events.metadata_failed
            backend = open_tier2(config, on_retry=events.tier2_retry, on_request=events.tier2_request)
            self._hydrator = reads.hydrator = Hydrator(
                self.path,
                self._manifest,
                backend,
                config,
                ledger=not readonly,
                on_hydrated=events.hydrated,
                on_backpressure=events.backpressure,
            )
            if backend is not None:
                reads.cold = ColdReads(self.path, self._manifest, self._hydrator.backend or backend)
            if readonly:
                self._follower = Follower(
                    self.path, store_id, self._manifest, reads, config.read.poll_interval_ms
                )
            else:
                self._writes = Writes(self.path, store_id, self._manifest, keys, reads, config, self._life)
                self._writes.on_flushed = events.flushed
                self._writes.on_flush_failed = events.flush_failed
                self._writes.start_flusher()
                remove_leftovers(self.path, self._manifest)
                self.append = self._writes.append  # type: ignore[method-assign]
                if tiering_enabled(config):
                    self._start_pipeline(backend)
            self.read = reads.read  # type: ignore[method-assign]
            self._cursors = Cursors(self.path, self._life.check, reads.batch_end_at, reads.last_lsn, reads.segment_spans)
        except BaseException:
            if self._writes is not None:
                # an open that failed after the writer started (a Tier 2
                # prefix another store holds): stop it, and its flusher
                with contextlib.suppress(errors.Error):
                    self._writes.close()
            self._release()
            raise
        w = self._writes
        self._finalizer = weakref.finalize(
            self, Store._finalize, w.writer if w else None, w.flusher if w else None, self._coordinator
        )
        _handles.add(self)

    # ------------------------------------------------------------ rooms

    def _settle_settings(self, config: Config, explicit: frozenset[str], readonly: bool) -> Config:
        """Settings that shape the files are the store's: recorded at
        creation, used when an open does not name them, and changed (for
        new segments, with a ledger event) when one names a new value."""
        recorded = self._manifest.settings(_SHAPING)
        flat = config.flat()
        changes: dict[str, tuple[int | None, int]] = {}
        keep: dict[str, int] = {}
        for name in _SHAPING:
            if name not in recorded:
                changes[name] = (None, flat[name])
            elif name in explicit and recorded[name] != flat[name]:
                changes[name] = (recorded[name], flat[name])
            else:
                keep[name] = recorded[name]
        if changes and not readonly:
            self._manifest.record_settings(changes)
        # where Tier 2 is, so that a reopen (or a reader) finds the segments
        # it holds; credentials are never recorded
        url = self._manifest.text_setting("tier2_url")
        if config.tier2.url is None and url is not None:
            keep_text = {"tier2_url": url}
        else:
            keep_text = {}
            if config.tier2.url is not None and config.tier2.url != url and not readonly:
                self._manifest.record_text_setting("tier2_url", url, config.tier2.url)
        return config.evolve(**keep, **keep_text) if keep or keep_text else config

    def _start_pipeline(self, backend: Any) -> None:
        """The background moves of sealed segments down the tiers."""
        w = self._writes
        assert w is not None
        # one writer per Tier 2 prefix: the lease (LockedError), fenced uploads, snapshots
        steward = Steward(backend, self._manifest, self.path, self.config) if backend is not None else None
        c = self._coordinator = Coordinator(
            self.path, self._manifest, self._reads, steward.backend if steward else backend, self.config,
            self._life, w.seal_if_idle,
        )
        if steward is not None:
            c.on_uploaded, c.on_stopped, c.snapshot_due = steward.uploaded, steward.stopped, steward.due
        w.admit = c.admit
        w.on_seal = c.notify
        c.on_backpressure = self._events.backpressure
        c.on_upload_failed = self._events.upload_failed
        self._reads.on_use = c.used
        c.start()

    def _writer_side(self) -> Writes:
        self._life.check()
        if self._writes is None:
            raise errors.ReadOnlyError(f"{self.path}: handle is read-only (open without readonly=True to write)")
        return self._writes

    def _disown(self) -> None:
        """In a forked child: this handle belongs to the parent."""
        _inherited.append((self._writes, self._follower, self._reads, self._manifest, self._lock_fd))
        self._finalizer.detach()
        self._forked = True
        self._life.refuse(
            lambda: errors.Error(
                f"{self.path}: this handle was opened by process {self._owner_pid} and cannot be used in a "
                "forked child (open a new handle in the child)"
            )
        )

    # ---------------------------------------------------------- writing

    def append(self, key: str, value: BytesLike, *, timestamp_ms: int | None = None) -> int:
        """Append value to key's log; returns its offset (dense from 0).

        Durable on return in "full" mode; otherwise see commit()."""
        return self._writer_side().append(key, value, timestamp_ms=timestamp_ms)

    def append_many(self, key: str, values: Iterable[BytesLike]) -> range:
        """Append every value to key's log as one atomic batch: after a crash
        all of them are there or none. Returns the range of their offsets."""
        return self._writer_side().append_many(key, values)

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """All records appended inside (by this thread) survive a crash
        together or not at all; an exception rolls them back. Other threads'
        appends wait until the transaction ends. Not nestable.

        An append that fails inside (a full disk, an I/O error) fails the
        transaction even if the caller catches its error: later appends in
        it raise TransactionError, and the block's end rolls everything
        back and raises the first failure. Nothing outside is touched."""
        return self._writer_side().transaction()

    def commit(self) -> int:
        """Durable barrier: everything appended before the call (another
        thread's open transaction aside) is on stable storage when it
        returns. Returns the last durable LSN.

        A failed sync, here or in the background flusher, raises
        StorageError and stops the handle: after one, the kernel may have
        dropped pages it could not write, so no later sync could vouch for
        them. Every later call raises; close and reopen the store, and
        recovery keeps every batch that reached the disk."""
        return self._writer_side().commit()

    def seal(self) -> int | None:
        """Seal the active segment now (it also happens at segment_bytes) and
        start a new one. Returns the sealed segment's id, or None when the
        active segment holds nothing yet."""
        return self._writer_side().seal()

    # ---------------------------------------------------------- reading

    def read(self, key: str, offset: int, *, nonblocking: bool = False) -> Record:
        """The record at (key, offset); NotFound if there is none.

        A record whose segment was evicted to a lower tier is fetched back
        first, waiting up to hydration_timeout_ms; with nonblocking=True the
        read raises BackpressureError(kind="hydration") at once instead and
        the fetch goes on in the background."""
        return self._reads.read(key, offset, nonblocking=nonblocking)

    def scan(
        self, key: str, start: int = 0, stop: int | None = None, *, nonblocking: bool = False
    ) -> Iterator[Record]:
        """Records of key with start <= offset < stop (stop=None: to the end),
        in offset order. nonblocking as for read(), raised by the iterator
        when it reaches an evicted segment."""
        return self._reads.scan(key, start, stop, nonblocking=nonblocking)

    def prefetch(self, key: str, start: int = 0, stop: int | None = None) -> int:
        """Start fetching back, in the background, the evicted segments that
        hold key's records in [start, stop), ahead of a scan. Returns how
        many fetches it started."""
        return self._reads.prefetch(key, start, stop)

    def last(self, key: str) -> Record | None:
        """The key's newest record, or None when it has none (or retention
        retired all of them)."""
        n = self.count(key)
        if not n:
            return None
        try:
            return self.read(key, n - 1)
        except errors.NotFound:
            known = self._manifest.lookup_key(key)
            if known is not None and n <= self._manifest.retired_below(known[0]):
                return None  # every record of the key was retired
            raise

    def count(self, key: str) -> int:
        """Records ever appended to key: its next offset."""
        return self._reads.count(key)

    def keys(self) -> list[str]:
        """Every key with at least one record, sorted."""
        return self._reads.keys()

    def scan_all(self, start_lsn: int = 0) -> Iterator[Record]:
        """Every record of every key in append (LSN) order from start_lsn: a
        change feed."""
        return self._reads.scan_all(start_lsn)

    def tail(self, key: str, start: int = 0, timeout: float | None = None) -> Iterator[Record]:
        """Records of key from offset start on, waiting for new ones as they
        are committed. Ends when no new record arrives for timeout seconds
        (None: never); raises ClosedError if the store is closed meanwhile."""
        return self._reads.tail(key, start, timeout)

    def tail_all(
        self, start_lsn: int = 0, timeout: float | None = None, *, cursor: str | None = None
    ) -> Iterator[Record]:
        """Every record of every key from start_lsn on, in LSN order, like
        scan_all, then each new one as it is committed. Ends when no new
        record arrives for timeout seconds (None: never); raises
        ClosedError if the store is closed meanwhile. Stop or checkpoint
        where ``batch_end`` is True to never split a transaction.
        ``cursor=name`` resumes after that cursor's saved LSN instead."""
        if cursor is not None:
            if start_lsn:
                raise ValueError("give start_lsn or cursor, not both")
            self._life.check()
            start_lsn = self._cursors.lsn(cursor) + 1
            self._check_overrun(cursor, start_lsn)
        return self._reads.tail_all(start_lsn, timeout)

    def _check_overrun(self, cursor: str, start_lsn: int) -> None:
        """A cursor whose next records retention removed (a hard byte
        budget forced it) must not resume as if nothing happened."""
        for event in self._manifest.ledger():
            if event["type"] == "CursorOverrun" and event["cursor"] == cursor and event["lost_to"] >= start_lsn:
                raise errors.NotFound(
                    f"{self.path}: cursor {cursor!r} resumes at LSN {start_lsn}, but retention removed LSNs "
                    f"{event['lost_from']}..{event['lost_to']} before it consumed them (a byte budget forced "
                    f"it); save the cursor at {event['lost_to']} to go on from the oldest record kept"
                )

    def atail(self, key: str, start: int = 0, timeout: float | None = None) -> AsyncIterator[Record]:
        """tail() as an async iterator: the waiting happens in a worker
        thread, never on the event loop."""
        return _in_thread(self.tail(key, start, timeout))

    def atail_all(
        self, start_lsn: int = 0, timeout: float | None = None, *, cursor: str | None = None
    ) -> AsyncIterator[Record]:
        """tail_all() as an async iterator: the waiting happens in a worker
        thread, never on the event loop."""
        return _in_thread(self.tail_all(start_lsn, timeout, cursor=cursor))

    def cursor(self, name: str) -> Cursor:
        """The named, durable consumer position name (created at its first
        save; its lsn is 0 until then). Works on read-only handles too."""
        self._life.check()
        return Cursor(self._cursors, name)

    def cursors(self) -> list[CursorInfo]:
        """Every saved cursor with its LSN and how far it trails the store."""
        self._life.check()
        return self._cursors.list()

    def verify(self, segment_id: int | None = None) -> int:
        """Check sealed segments as they are on disk now: the file CRC, every
        record, the index, and agreement with the manifest. Raises
        CorruptionError naming the first bad one; returns how many were
        checked. Reads the whole of each segment."""
        return self._reads.verify(segment_id)

    def backup(self, dest_path: str | os.PathLike[str]) -> int:
        """A consistent copy of the store at dest_path (a new path) while
        appends go on; returns the LSN it holds up to: every record
        committed before the call, whole batches only. The copy opens as an
        ordinary store. Copy a live store this way, never with ``cp -r``,
        which can catch the manifest and a segment mid-write."""
        self._life.check()
        feed = self._writes.feed if self._writes is not None else self._follower.feed if self._follower else None
        fetch = self._hydrator.fetch_tier1 if self._hydrator is not None else None
        return _backup.backup(self.path, self._manifest, feed, os.fspath(dest_path), fetch)

    # ------------------------------------------------------------ tiers

    def residency(self) -> list[Residency]:
        """Per sealed segment, which tiers hold it and the bytes in each:
        ``(segment_id, tiers)`` with tiers mapping "t0", "t1", "t2" to bytes."""
        self._life.check()
        return residency(self.path, self._manifest)

    def find_lsn(self, time_ms: int) -> int | None:
        """The LSN of the first record whose timestamp is at or after
        time_ms (None: none is). Narrowed by the manifest's per-segment
        times, then one segment is scanned. Exact when timestamps grow with
        LSN, as the default ones (the append time) do."""
        return self._reads.find_lsn(time_ms)

    def drain_tiers(self, timeout: float | None = None) -> None:
        """Wait until the tier pipeline has nothing pending: every sealed
        segment compressed and uploaded, evictions done. Raises the
        pipeline's error if a step keeps failing, TimeoutError after
        timeout seconds. Returns at once when tiering is off."""
        self._writer_side()
        check_timeout(timeout)
        if self._coordinator is not None:
            self._coordinator.drain(timeout)

    # ----------------------------------------------------------- status

    def stats(self) -> dict[str, Any]:
        """A snapshot of the handle's state, for operators and tests."""
        self._life.check()
        live = self._reads.live()
        out: dict[str, Any] = {
            "path": self.path,
            "readonly": self.readonly,
            "durability": self.config.durability.mode,
            "segments": len(self._manifest.segments()),
            "active_segment": live[-1].info().segment_id if live else None,
            "next_lsn": None,
            "unsynced_bytes": 0,
            "open_segments": self._reads.cached_segments(),
            "last_flush_error": None,
            # what the store's files hold, and what they take on disk (as
            # du counts: allocated blocks, preallocation included)
            "data_bytes": sum(size for _, _, size in self._reads.segment_spans()),
            "disk_bytes": _allocated_bytes(self.path),
        }
        if self._writes is not None:
            out.update(self._writes.stats())
        if self._coordinator is not None:
            out.update(self._coordinator.stats())
        # what each tier holds: the sealed segments where they live now, and
        # the active segment (always in Tier 0, outside the budgets)
        res = residency(self.path, self._manifest)
        out["tier_bytes"] = {t: sum(r.tiers.get(t, 0) for r in res) for t in ("t0", "t1", "t2")}
        out["tier_segments"] = {t: sum(1 for r in res if t in r.tiers) for t in ("t0", "t1", "t2")}
        for seg in live:
            out["tier_bytes"]["t0"] += seg.info().records_end  # written, not preallocated
            out["tier_segments"]["t0"] += 1
        out.setdefault("queues", {})["hydration"] = self._hydrator.pending() if self._hydrator else 0
        return out

    @property
    def manifest(self) -> Manifest:
        """The store's manifest (segments, key ranges, ledger)."""
        return self._manifest

    # ---------------------------------------------------------- closing

    def close(self) -> None:
        """Make everything appended durable and release the store. Idempotent.

        If the final sync fails, StorageError says so, and the store is
        released all the same: the writer refuses every append from then
        on, so the next handle to open it (which recovers) is the only one."""
        if self._life.closed:
            return
        if self._forked:
            self._life.close()  # the parent's store: nothing here is ours to sync or release
            return
        w = self._writes
        if w is None:
            with self._close_lock:
                if not self._life.closed:
                    self._life.close()
                    if self._follower is not None:
                        self._follower.close()  # after the mark above: the loops it wakes must see it
                    self._finalizer.detach()
                    self._release()
            return
        if w._tx_owner == threading.get_ident():
            raise errors.TransactionError("cannot close inside a transaction (finish it first)")
        if self._coordinator is not None:
            self._coordinator.stop()  # before the lock: it may be sealing, never waiting on us
        with w.lock:  # after any transaction of another thread
            if self._life.closed:
                return
            try:
                w.close()
            finally:
                self._life.close()
                self._finalizer.detach()
                self._release()

    def _release(self) -> None:
        if self._coordinator is not None:
            self._coordinator.stop()
        if self._hydrator is not None:
            self._hydrator.close()  # fetches under way finish before the manifest closes
        manifest = getattr(self, "_manifest", None)
        if manifest is not None:
            manifest.close()
        if self._lock_fd is not None:
            layout.release_lock(self._lock_fd)
            self._lock_fd = None

    @staticmethod
    def _finalize(writer: Any, flusher: threading.Thread | None, coordinator: Coordinator | None) -> None:
        # a handle dropped without close(): still make its appends durable
        if coordinator is not None:
            coordinator.stop()
        if writer is not None:
            try:
                writer.close()
            except errors.Error:
                pass
        if flusher is not None:
            flusher.join(timeout=5)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._life.closed else ("read-only" if self.readonly else "writable")
        return f"<aoflite.Store {self.path!r} {state}>"

    # ------------------------------------------------------- operations
    # Metrics and health: aoflite.metrics and aoflite.health do the work.

    @property
    def metrics(self) -> _metrics.StoreMetrics:
        """This handle's metrics. ``register(registry)`` exports them in an
        application's prometheus_client registry (or a new one of their
        own); the store and the tier pipeline report failures and latencies
        through its event methods (see aoflite.metrics)."""
        found: _metrics.StoreMetrics | None = self.__dict__.get("_metrics")
        if found is None:
            found = self.__dict__.setdefault("_metrics", _metrics.StoreMetrics(self.path, self._ops_stats))
        return found

    def serve_metrics(self, port: int, addr: str = "127.0.0.1") -> _metrics.Server:
        """Serve this handle's metrics at http://addr:port/metrics from a
        daemon thread (port 0: any free port, then see ``.port``); ``close()``
        the returned server to stop."""
        return _metrics.serve(self.metrics, port, addr)

    def health(self) -> _health.HealthReport:
        """The [health] thresholds applied to this handle: each check says
        whether it alerts, the tier it concerns and the mitigation."""
        from . import admin

        try:
            stats: dict[str, Any] | None = self._ops_stats()
            problems = admin.manifest_check(self)
            stopped = None
        except errors.Error as e:
            stats, problems, stopped = None, [], str(e)
        return _health.evaluate(
            self.path, stats, self.metrics, self.config.health, writer=not self.readonly, stopped=stopped,
            manifest_problems=problems,
        )

    def _ops_stats(self) -> dict[str, Any]:
        """stats() and what the metrics and health read besides."""
        out = self.stats()
        out.setdefault("last_lsn", self._reads.last_lsn())
        out.setdefault("manifest_version", self._manifest.ledger_seq())
        return out
