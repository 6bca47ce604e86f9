"""The write side of a writable handle: registering keys, the append hot
path and its slow paths, transactions, commits, segment rolls and the
background flusher.

The hot path is one dict lookup and one C call; everything rare (new
keys, rolls, errors) takes the slow path under ``lock``, which a
transaction holds from begin to end. Nothing here writes the manifest per
record: only rolls and new segments do.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import errors, layout, recovery
from .args import BytesLike, as_bytes, check_key, check_timestamp
from .config import Config
from .failpoints import hit
from .keys import Keys
from .lifecycle import Lifecycle
from .manifest import Manifest
from .reads import Reads
from .segment import Feed, Segment, Writer

__all__ = ["Writes"]


_TS_END = 1 << 63  # timestamps are i64 milliseconds


def _refused(*args: Any) -> int:
    # the hot path's calls on a refusing handle: the slow path raises why
    return Writer.AOF_ECLOSED


class Writes:
    """Owns the C writer of one store."""

    def __init__(
        self, path: str, store_id: int, manifest: Manifest, keys: Keys, reads: Reads, config: Config, life: Lifecycle
    ):
        self.path = path
        self._store_id = store_id
        self._manifest = manifest
        self._keys = keys
        self._ids = keys.ids  # the hot path's key lookup
        self._reads = reads
        self._config = config
        self._life = life
        self.lock = threading.RLock()  # slow paths; held for a whole transaction
        self._tx_owner: int | None = None
        self._full = config.durability.mode == "full"
        self._max_record = config.segment.max_record_bytes
        self.flusher: threading.Thread | None = None
        self.flush_error: BaseException | None = None
        # before recovery: its truncation rewrites bytes followers may hold
        self.feed = Feed(layout.feed_path(path), writable=True)
        active, next_lsn = recovery.open_active(path, manifest, store_id, config.segment.segment_bytes, self.feed)
        hit("open.after_recovery")
        w = Writer(next_lsn, config.segment.max_record_bytes, config.durability.flush_bytes, self.feed)
        self._next_kid = manifest.next_key_id()
        self.writer = w
        if active is not None:
            for r in active.keys():
                self._register(r.key_id, active.key_name(r.key_id), r.first_offset + r.count)
            w.attach(active)
            reads.publish((active,), keep_ranges=True)
        else:
            self._open_next_segment()
        self._append_fn = w.append_fn
        self._sync_fn = w.sync_fn
        reads.next_offset = w.next_offset
        reads.wait_commit = w.wait_commit
        life.on_refuse(self._stop_hot_path)
        # the tier pipeline's hooks: wait for local space before a roll,
        # and hear of each seal
        self.admit: Callable[[], None] | None = None
        self.on_seal: Callable[[], None] | None = None
        # the metrics: each sync's seconds (the flusher's and commit()'s),
        # and a sync failing
        self.on_flushed: Callable[[float], None] | None = None
        self.on_flush_failed: Callable[[BaseException], None] | None = None

    def start_flusher(self) -> None:
        """Background syncs for durability="normal" (holding this object
        weakly, so a dropped handle still gets finalized)."""
        if self._config.durability.mode != "normal":
            return
        self.flusher = threading.Thread(
            target=_flush_loop,
            args=(self.writer, self._config.durability.flush_interval_ms, weakref.ref(self)),
            name=f"aoflite-flush:{os.path.basename(self.path)}",
            daemon=True,
        )
        self.flusher.start()

    def _stop_hot_path(self) -> None:
        self._append_fn = _refused
        self._sync_fn = _refused

    def _register(self, key_id: int, name: str, next_offset: int) -> None:
        self.writer.set_key(key_id, name.encode(), next_offset)
        self._keys.learn(name, key_id)
        self._next_kid = max(self._next_kid, key_id + 1)

    def _open_next_segment(self) -> None:
        """Create the next active segment (under lock, none active)."""
        w = self.writer
        assert w.segment is None
        # sealed segments may live only in lower tiers: the manifest knows them
        recorded = self._manifest.last_segment()
        last = max(layout.segment_ids(self.path) + [recorded.segment_id if recorded else 0])
        seg, rec = recovery.new_segment(self.path, self._store_id, last + 1, w.next_lsn(), self._config.segment.segment_bytes)
        try:
            self._manifest.record_open(rec)
        except errors.Error:
            # nothing can be in it yet: the next try creates it again
            recovery.discard_new_segment(seg)
            raise
        self._reads.publish((seg,), keep_ranges=True)  # readers look in it before appends can land there
        w.attach(seg)

    # ------------------------------------------------------- failures

    def writer_failed(self, e: BaseException) -> None:
        """After a writer call raised e: if a failed sync broke the writer,
        the handle refuses every call from now on, reads included, so no
        caller goes on as if nothing happened."""
        broken = self.writer.broken_error()
        if broken is not None:
            if not self._life.refused and self.on_flush_failed is not None:
                self.on_flush_failed(e)
            self._life.refuse(lambda: errors.StorageError(broken.errno, f"{self.path}: {broken.strerror}"))

    def _fail(self, rc: int, what: str) -> None:
        """Raise for a negative writer status, noting a broken writer."""
        try:
            Writer.fail(rc, what)
        except errors.StorageError as e:
            self.writer_failed(e)
            raise

    def _check(self) -> Writer:
        self._life.check()
        return self.writer

    # ------------------------------------------------------- appending

    def append(self, key: str, value: BytesLike, *, timestamp_ms: int | None = None) -> int:
        """See Store.append."""
        try:
            kid = self._ids.get(key)
        except TypeError:  # an unhashable key: the slow path says what is wrong
            kid = None
        if kid is not None and value.__class__ is bytes:
            if timestamp_ms is None:
                ts = -1
            elif timestamp_ms.__class__ is int and 0 <= timestamp_ms < _TS_END:
                ts = timestamp_ms
            else:
                return self._append_slow(key, value, timestamp_ms)
            off = self._append_fn(kid, value, len(value), ts)
            if off >= 0:
                if self._full and self._tx_owner != threading.get_ident():
                    self._sync_or_raise()
                return off
            return self._append_slow(key, value, timestamp_ms, off)
        return self._append_slow(key, value, timestamp_ms)

    def _append_slow(self, key: Any, value: Any, timestamp_ms: Any, rc: int = 0) -> int:
        """Appends the fast path could not: new keys, rolls, bad input, and
        the status rc a fast-path call already got (never tried twice: a
        failed call may have failed a transaction)."""
        w = self._check()
        check_key(key)
        value = as_bytes(value, "value")
        ts = check_timestamp(timestamp_ms)
        if len(value) > self._max_record:
            raise errors.RecordTooLarge(
                f"value of {len(value)} bytes for key {key!r} is above max_record_bytes={self._max_record} "
                "(raise max_record_bytes or split the value)"
            )
        if rc:
            self._handle_append_status(w, rc, key)
        while True:
            kid = self._kid_for_append(key)
            off = self._append_fn(kid, value, len(value), ts)
            if off >= 0:
                if self._full and self._tx_owner != threading.get_ident():
                    self._sync_or_raise()
                return off
            self._handle_append_status(w, off, key)

    def _handle_append_status(self, w: Writer, rc: int, key: str) -> None:
        """Deal with a failed append: roll, wait out a roll, or raise."""
        if rc == Writer.AOF_EFULL:
            if self.admit is not None:
                self.admit()
            self._roll(w.segment)
        elif rc == Writer.AOF_ENOSEG:
            with self.lock:
                self._life.check()
                if w.segment is None:
                    self._open_next_segment()
        elif rc != Writer.AOF_ENOKEY:
            self._life.check()  # a refusing handle says why
            self._fail(rc, f"appending to key {key!r} in {self.path}")

    def _kid_for_append(self, key: str) -> int:
        """The key's id, registered with the writer (defining new keys)."""
        with self.lock:
            kid = self._ids.get(key)
            w = self.writer
            try:
                if kid is not None:
                    w.next_offset(kid)
                    return kid
            except errors.Error:
                pass  # known from a read, not yet registered with the writer
            known = self._manifest.lookup_key(key)
            if known is not None:
                kid, count = known
            else:
                kid, count = self._next_kid, 0
            hit("key.before_define")
            self._register(kid, key, count)
            return kid

    def append_many(self, key: str, values: Iterable[BytesLike]) -> range:
        """See Store.append_many."""
        w = self._check()
        check_key(key)
        if isinstance(values, (bytes, bytearray, memoryview, str)):
            raise TypeError("values must be an iterable of bytes-like values, not a single value")
        try:
            vals = values if values.__class__ is list else list(values)
        except TypeError:
            raise TypeError(f"values must be an iterable of bytes-like values, not {type(values).__name__}") from None
        if not vals:
            n = self._reads.count(key)
            return range(n, n)
        try:
            lens = array("Q", map(len, vals))
            buf = b"".join(vals)
        except TypeError:
            lens, buf = array("Q", [1]), b""
        if len(buf) != sum(lens):
            # str values, or buffers whose len() is not their byte size:
            # normalize one by one, which also names the bad one
            vals = [as_bytes(v, f"values[{i}]") for i, v in enumerate(vals)]
            lens = array("Q", map(len, vals))
            buf = b"".join(vals)
        biggest = max(lens)
        if biggest > self._max_record:
            raise errors.RecordTooLarge(
                f"a value of {biggest} bytes for key {key!r} is above max_record_bytes={self._max_record} "
                "(raise max_record_bytes or split the value)"
            )
        clens = Writer.lens_array(lens)
        while True:
            kid = self._ids.get(key)
            if kid is None:
                kid = self._kid_for_append(key)
            first = w.append_many(kid, buf, clens, len(vals), -1)
            if first >= 0:
                if self._full and self._tx_owner != threading.get_ident():
                    self._sync_or_raise()
                return range(first, first + len(vals))
            if first == Writer.AOF_ENOKEY:
                self._kid_for_append(key)
            self._handle_append_status(w, first, key)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """See Store.transaction."""
        w = self._check()
        me = threading.get_ident()
        if self._tx_owner == me:
            raise errors.TransactionError("a transaction is already open on this thread (they do not nest)")
        with self.lock:
            while True:
                self._life.check()
                if w.segment is None:
                    self._open_next_segment()
                rc = w.begin_rc()
                if rc == 0:
                    break
                if rc != Writer.AOF_EFULL:
                    self._fail(rc, f"beginning a transaction in {self.path}")
                if self.admit is not None:
                    self.admit()
                self._roll(w.segment)
            self._tx_owner = me
            try:
                yield
            except BaseException:
                self._tx_owner = None
                try:
                    w.end(False)
                except errors.Error as e:
                    # the body's exception is the one to raise; a rollback
                    # that could not sync its zeros refuses later calls
                    self.writer_failed(e)
                raise
            self._tx_owner = None
            try:
                w.end(True)
            except errors.StorageError as e:
                self.writer_failed(e)
                raise
            if self._full:
                self._sync_or_raise()

    def _sync_or_raise(self) -> int:
        rc = self._sync_fn()
        if rc:
            self._life.check()  # a refused handle says why
            self._fail(rc, f"syncing {self.path}")
        return rc

    def commit(self) -> int:
        """See Store.commit."""
        w = self._check()
        started = time.perf_counter()
        try:
            lsn = w.sync()
        except errors.StorageError as e:
            self.writer_failed(e)
            raise
        if self.on_flushed is not None:  # a flush the caller asked for counts as one
            self.on_flushed(time.perf_counter() - started)
        return lsn

    def seal(self) -> int | None:
        """See Store.seal."""
        w = self._check()
        if self._tx_owner == threading.get_ident():
            raise errors.TransactionError("cannot seal inside a transaction")
        with self.lock:
            self._life.check()
            seg = w.segment
            if seg is None or not seg.info().record_count:
                return None
            return self._roll(seg)

    def seal_if_idle(self) -> int | None:
        """Seal now unless another thread holds the write lock (a
        transaction, a roll): for background callers, which must never
        wait on a writer that may be waiting on them."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            if self._tx_owner is not None:
                return None
            return self.seal()
        finally:
            self.lock.release()

    def _roll(self, full: Segment | None) -> int | None:
        """Seal the active segment, if it is still `full`, and open the next."""
        with self.lock:
            self._life.check()
            w = self.writer
            seg = w.segment
            if seg is None or seg is not full:
                return None  # another thread rolled it already
            try:
                w.detach()
            except errors.StorageError as e:
                self.writer_failed(e)
                raise
            hit("roll.before_seal")
            try:
                info = seg.seal()
            except BaseException as e:
                try:
                    w.attach(seg)  # refused once the seal got past writing its index
                except (errors.Error, ValueError):
                    self._refuse_behind(e)
                raise
            hit("roll.after_seal")
            try:
                new, opened = recovery.new_segment(
                    self.path, self._store_id, info.segment_id + 1, w.next_lsn(), self._config.segment.segment_bytes
                )
                hit("roll.after_create")
                ranges = recovery.commit_seal(
                    self._manifest, seg, info, self._keys.names.get, self._next_kid, opened=opened
                )
            except BaseException as e:
                self._refuse_behind(e)
                raise
            hit("roll.after_manifest")
            # Publish in the order readers look: the sealed segment where
            # the new ranges send them, then fresh ranges, then the new
            # live list, and only then let appends land in the new segment.
            self._reads.cache_segment(info.segment_id, seg)
            self._reads.publish((new,))
            w.attach(new)
            if self.on_seal is not None:
                self.on_seal()
            return info.segment_id

    def _refuse_behind(self, e: BaseException) -> None:
        """A roll failed between sealing and the manifest commit: the files
        are right but the manifest is behind, so reads could miss records.
        Reopening reconciles them."""
        self._life.refuse(
            lambda: errors.Error(
                f"{self.path}: a segment roll failed midway ({e}); close and reopen the store to reconcile "
                "the manifest with the files (nothing acknowledged is lost)"
            )
        )

    # ---------------------------------------------------------- reading


    # --------------------------------------------------------- closing

    def close(self) -> None:
        """Sync and stop the writer (stopped even when the sync fails, so
        the store's lock can be released). Raises StorageError for a failed
        final sync, unless the handle already refused calls for one."""
        hit("close.before_sync")
        try:
            self.writer.close()
        except errors.StorageError:
            if not self._life.refused:  # news to the caller
                raise
        hit("close.after_sync")
        if self.flusher is not None:
            self.flusher.join()

    def stats(self) -> dict[str, Any]:
        """The write side's part of Store.stats()."""
        w = self.writer
        return {
            "next_lsn": w.next_lsn(),
            "unsynced_bytes": w.unsynced_bytes(),
            "last_flush_error": repr(self.flush_error) if self.flush_error else None,
        }


def _flush_loop(w: Writer, interval_ms: int, writes_ref: weakref.ref[Writes]) -> None:
    """Background flusher for durability="normal"."""
    while True:
        rc = w.wait_dirty(interval_ms)
        if rc in (Writer.AOF_ECLOSED, Writer.AOF_EBROKEN):
            return
        if rc == 0:
            hit("flush.before_sync")
            started = time.perf_counter()
            try:
                w.sync()
                writes = writes_ref()
                if writes is not None and writes.on_flushed is not None:
                    writes.on_flushed(time.perf_counter() - started)
                del writes  # hold the handle only weakly between flushes
            except errors.Error as e:
                writes = writes_ref()
                if writes is not None:
                    writes.flush_error = e
                    writes.writer_failed(e)
                if w.broken_error() is not None:
                    return  # a failed sync stopped the writer: nothing more to flush
                time.sleep(interval_ms / 1000)
