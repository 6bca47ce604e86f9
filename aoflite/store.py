"""The store handle: what ``aoflite.open`` returns.

A handle either writes (one per store across processes, guarded by an
flock) or reads (any number, in this or other processes). The writer's hot
path is one dict lookup and one C call; everything rare (new keys, segment
rolls, errors) takes the slow path under ``_lock``. Reads go to the active
segment's in-memory index or, for sealed segments, to the manifest's key
ranges (cached per key) and a small cache of mapped segment files.
"""

from __future__ import annotations

import contextlib
from array import array
import os
import threading
import time
import weakref
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from itertools import repeat
from operator import itemgetter
from typing import Any

from . import errors, layout, recovery
from .failpoints import hit
from .config import Config
from .manifest import Manifest
from .record import Record
from .segment import MAX_KEY_BYTES, Feed, Segment, Writer

__all__ = ["Store", "open"]

_new_record = tuple.__new__  # tuple.__new__(Record, fields): a Record without a Python frame
_CHUNK = 512  # records fetched from C per call while scanning
_first = itemgetter(0)
_U64_END = 1 << 64  # offsets, LSNs and segment ids are u64 in the format

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
    elif not isinstance(config, Config):
        raise TypeError(f"config must be an aoflite.Config, not {type(config).__name__}")
    if durability is not None:
        overrides["durability"] = durability
    if overrides:
        config = config.evolve(**overrides)
    if not isinstance(readonly, bool):
        raise TypeError("readonly must be True or False")
    return Store(os.fspath(path), readonly=readonly, config=config)


class _Names(dict):
    """key_id -> name, filled on demand from the manifest or live segments."""

    def __init__(self, store: Store):
        super().__init__()
        self._store = weakref.ref(store)

    def __missing__(self, key_id: int) -> str:
        store = self._store()
        name = store._manifest.key_name(key_id) if store else None
        if name is None and store is not None:
            for seg in store._live:
                with contextlib.suppress(errors.NotFound):
                    name = seg.key_name(key_id)
                    break
        if name is None:
            raise errors.CorruptionError(f"a record refers to key id {key_id}, which no manifest entry or segment names")
        self[key_id] = name
        return name


def _check_key(key: Any) -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, not {type(key).__name__}")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"key {key!r} is not valid UTF-8 (lone surrogate)") from None
    if not 0 < len(raw) <= MAX_KEY_BYTES:
        raise ValueError(f"key must be 1 to {MAX_KEY_BYTES} UTF-8 bytes, got {len(raw)}")
    if b"\0" in raw:
        raise ValueError(f"key {key!r} contains a NUL character")
    return raw


def _check_offset(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value < _U64_END:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")


def _as_bytes(value: Any, what: str) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        raise TypeError(f"{what} must be bytes-like, not str (encode it first)")
    try:
        return memoryview(value).tobytes()
    except TypeError:
        raise TypeError(f"{what} must be bytes-like, not {type(value).__name__}") from None


class Store:
    """An open aoflite store. Thread-safe. Use ``aoflite.open`` to get one."""

    def __init__(self, path: str, *, readonly: bool, config: Config):
        self.path = os.path.abspath(path)
        self.readonly = readonly
        self.config = config
        self._closed = False
        self._lock = threading.RLock()  # writer slow paths; held for a whole transaction
        self._seg_lock = threading.Lock()  # the sealed-segment cache
        self._tx_owner: int | None = None
        self._kids: dict[str, int] = {}
        self._names = _Names(self)
        # key id -> sealed ranges from the manifest. Replaced, never cleared,
        # when the manifest changes: a reader fills the dict it took before
        # reading the manifest, so a load racing a roll can only land in a
        # dict that is already discarded
        self._ranges: dict[int, list[tuple[int, int, int]]] = {}
        self._sealed: OrderedDict[int, Segment] = OrderedDict()
        self._live: list[Segment] = []  # unsealed segments read through their in-memory index
        self._writer: Writer | None = None
        self._lock_fd: int | None = None
        self._flusher: threading.Thread | None = None
        self._flush_error: BaseException | None = None
        # why every call is refused (a failed sync, a manifest that fell
        # behind, a fork): a function making the exception to raise
        self._refusal: Any = None
        self._feed: Feed | None = None
        self._full = config.durability.mode == "full"
        self._max_record = config.segment.max_record_bytes
        self._manifest_seq = -1
        self._newest = 0  # follower: newest segment id seen
        self._seen_kids: set[int] = set()
        self._owner_pid = os.getpid()
        self._forked = False

        state = layout.inspect_path(self.path)
        if state == "missing" and readonly:
            raise errors.NotFound(f"{self.path}: no store here (open it writable once to create it)")
        if state == "empty" and readonly:
            raise errors.NotFound(f"{self.path}: empty directory, no store here")
        if not readonly:
            if state == "missing":
                os.makedirs(self.path)
            self._lock_fd = layout.acquire_lock(self.path)
            hit("open.after_lock")
        try:
            if state in ("missing", "empty"):
                self._store_id = layout.create_layout(self.path)
                self._manifest = Manifest(layout.manifest_dir(self.path), create=True)
                self._manifest.init_store(self._store_id, layout.FORMAT_VERSION)
            else:
                _, self._store_id = layout.read_marker(self.path)
                self._manifest = Manifest(layout.manifest_dir(self.path), create=not readonly)
                if self._manifest.get_meta("store_id") is None and not readonly:
                    self._manifest.init_store(self._store_id, layout.FORMAT_VERSION)
            if readonly:
                self._open_follower()
            else:
                self._open_writer()
        except BaseException:
            self._release()
            raise
        self._finalizer = weakref.finalize(self, Store._finalize, self._writer, self._flusher)
        _handles.add(self)

    # ----------------------------------------------------------- opening

    def _open_writer(self) -> None:
        cfg = self.config
        # before recovery: its truncation rewrites bytes followers may hold
        self._feed = Feed(layout.feed_path(self.path), writable=True)
        active, next_lsn = recovery.open_active(
            self.path, self._manifest, self._store_id, cfg.segment.segment_bytes, self._feed
        )
        hit("open.after_recovery")
        w = Writer(next_lsn, cfg.segment.max_record_bytes, cfg.durability.flush_bytes, self._feed)
        self._next_kid = self._manifest.next_key_id()
        if active is not None:
            for r in active.keys():
                name = active.key_name(r.key_id)
                self._register(w, r.key_id, name, r.first_offset + r.count)
            w.attach(active)
            self._live = [active]
        self._writer = w
        if active is None:
            self._open_next_segment()
        self._append_fn = w.append_fn
        self._sync_fn = w.sync_fn
        if cfg.durability.mode == "normal":
            self._flusher = threading.Thread(
                target=_flush_loop,
                args=(w, cfg.durability.flush_interval_ms, weakref.ref(self)),
                name=f"aoflite-flush:{os.path.basename(self.path)}",
                daemon=True,
            )
            self._flusher.start()

    def _register(self, w: Writer, key_id: int, name: str, next_offset: int) -> None:
        w.set_key(key_id, name.encode(), next_offset)
        self._kids[name] = key_id
        self._names[key_id] = name
        self._next_kid = max(self._next_kid, key_id + 1)

    def _open_follower(self) -> None:
        """Read-only: follow the manifest's active segment and any newer file."""
        self._append_fn = _no_writer
        self._sync_fn = _no_writer
        self._refresh_lock = threading.Lock()
        self._open_feed()
        last = self._manifest.last_segment()
        self._newest = 0
        if last is not None:
            self._newest = last.segment_id
            if last.state == "active":
                self._follow(last.segment_id)
        self._refresh()

    def _open_feed(self) -> None:
        """Follower: map the feed once it exists (a writer creates it)."""
        try:
            self._feed = Feed(layout.feed_path(self.path), writable=False)
        except (errors.NotFound, errors.FormatError):
            self._feed = None  # no writer ever ran here: nothing can rewrite a segment

    def _refresh(self) -> None:
        """Follower: take in what the writer committed, rolled and sealed.
        Costs a manifest read and a stat when nothing changed."""
        if self._writer is not None:
            return
        with self._refresh_lock:
            if self._feed is None:
                self._open_feed()
            seq = self._manifest.ledger_seq()
            if seq != self._manifest_seq:
                self._manifest_seq = seq
                self._ranges = {}
                # segments the manifest now lists as sealed are read through it
                self._live = [s for s in self._live if not self._manifest_sealed(s)]
            for seg in self._live:
                seg.refresh()
            # segment ids are consecutive: the writer's next file is newest + 1,
            # on disk before the manifest records it
            while os.path.exists(layout.segment_path(self.path, self._newest + 1)):
                if not self._follow(self._newest + 1):
                    break
                self._newest += 1

    def _manifest_sealed(self, seg: Segment) -> bool:
        rec = self._manifest.segment(seg.info().segment_id)
        return rec is not None and rec.state == "sealed"

    def _follow(self, segment_id: int) -> bool:
        """Start reading segment_id through its in-memory index; False when
        it is not readable yet (being created)."""
        path = layout.segment_path(self.path, segment_id)
        try:
            seg, _ = Segment.open(path, feed=self._feed)
        except (errors.NotFound, errors.FormatError, errors.CorruptionError):
            return False  # being created, or discarded by the writer's recovery
        info = seg.info()
        recovery.check_identity(seg, info, self._store_id, segment_id)
        self._live.append(seg)
        return True

    def _open_next_segment(self) -> None:
        """Create the next active segment (under _lock, none active)."""
        w = self._writer
        assert w is not None and w.segment is None
        last = max(layout.segment_ids(self.path), default=0)
        seg, rec = recovery.new_segment(
            self.path, self._store_id, last + 1, w.next_lsn(), self.config.segment.segment_bytes
        )
        try:
            self._manifest.record_open(rec)
        except errors.Error:
            # nothing can be in it yet: the next try creates it again
            recovery.discard_new_segment(seg)
            raise
        self._live = [seg]  # readers look in it before appends can land there
        w.attach(seg)

    # ---------------------------------------------------------- checks

    def _check_open(self) -> None:
        if self._closed:
            raise errors.ClosedError(f"{self.path}: store is closed")
        if self._refusal is not None:
            raise self._refusal()

    def _refuse(self, make: Any) -> None:
        """From now on every call raises make() (the writer cannot go on)."""
        if self._refusal is None:
            self._refusal = make
        self._append_fn = _refused
        self._sync_fn = _refused

    def _writer_failed(self, e: BaseException) -> None:
        """After a writer call raised e: if a failed sync broke the writer,
        the handle refuses every call from now on, reads included, so no
        caller goes on as if nothing happened."""
        w = self._writer
        broken = w.broken_error() if w is not None else None
        if broken is not None:
            self._refuse(lambda: errors.StorageError(broken.errno, f"{self.path}: {broken.strerror}"))

    def _disown(self) -> None:
        """In a forked child: this handle belongs to the parent."""
        _inherited.append((self._writer, self._feed, self._live, self._sealed, self._manifest, self._lock_fd))
        self._finalizer.detach()
        self._forked = True
        self._refuse(
            lambda: errors.Error(
                f"{self.path}: this handle was opened by process {self._owner_pid} and cannot be used in a "
                "forked child (open a new handle in the child)"
            )
        )

    def _check_writable(self) -> Writer:
        self._check_open()
        if self._writer is None:
            raise errors.ReadOnlyError(f"{self.path}: handle is read-only (open without readonly=True to write)")
        return self._writer

    # ---------------------------------------------------------- writing

    def append(self, key: str, value: bytes, *, timestamp_ms: int | None = None) -> int:
        """Append value to key's log; returns its offset (dense from 0).

        Durable on return in "full" mode; otherwise see commit()."""
        try:
            kid = self._kids.get(key)
        except TypeError:  # an unhashable key: the slow path says what is wrong
            kid = None
        if kid is not None and value.__class__ is bytes and timestamp_ms is None:
            off = self._append_fn(kid, value, len(value), -1)
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
        w = self._check_writable()
        _check_key(key)
        value = _as_bytes(value, "value")
        ts = self._check_timestamp(timestamp_ms)
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
            self._roll(w.segment)
        elif rc == Writer.AOF_ENOSEG:
            with self._lock:
                self._check_open()
                if w.segment is None:
                    self._open_next_segment()
        elif rc != Writer.AOF_ENOKEY:
            self._check_open()  # a refused handle says why
            self._fail(rc, f"appending to key {key!r} in {self.path}")

    def _fail(self, rc: int, what: str) -> None:
        """Raise for a negative writer status, noting a broken writer."""
        try:
            Writer.fail(rc, what)
        except errors.StorageError as e:
            self._writer_failed(e)
            raise

    def _check_timestamp(self, ts: Any) -> int:
        if ts is None:
            return -1
        if type(ts) is not int:
            raise TypeError(f"timestamp_ms must be an int, not {type(ts).__name__}")
        if not 0 <= ts < 2**63:
            raise ValueError(f"timestamp_ms must be in [0, 2**63), got {ts}")
        return ts

    def _kid_for_append(self, key: str) -> int:
        """The key's id, registered with the writer (defining new keys)."""
        with self._lock:
            kid = self._kids.get(key)
            w = self._writer
            assert w is not None
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
            self._register(w, kid, key, count)
            return kid

    def append_many(self, key: str, values: Iterable[bytes]) -> range:
        """Append every value to key's log as one atomic batch: after a crash
        all of them are there or none. Returns the range of their offsets."""
        w = self._check_writable()
        _check_key(key)
        if isinstance(values, (bytes, bytearray, memoryview, str)):
            raise TypeError("values must be an iterable of bytes-like values, not a single value")
        try:
            vals = values if values.__class__ is list else list(values)
        except TypeError:
            raise TypeError(f"values must be an iterable of bytes-like values, not {type(values).__name__}") from None
        if not vals:
            n = self.count(key)
            return range(n, n)
        try:
            lens = array("Q", map(len, vals))
            buf = b"".join(vals)
        except TypeError:
            lens, buf = array("Q", [1]), b""
        if len(buf) != sum(lens):
            # str values, or buffers whose len() is not their byte size:
            # normalize one by one, which also names the bad one
            vals = [_as_bytes(v, f"values[{i}]") for i, v in enumerate(vals)]
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
            kid = self._kids.get(key)
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
        """All records appended inside (by this thread) survive a crash
        together or not at all; an exception rolls them back. Other threads'
        appends wait until the transaction ends. Not nestable.

        An append that fails inside (a full disk, an I/O error) fails the
        transaction even if the caller catches its error: later appends in
        it raise TransactionError, and the block's end rolls everything
        back and raises the first failure. Nothing outside is touched."""
        w = self._check_writable()
        me = threading.get_ident()
        if self._tx_owner == me:
            raise errors.TransactionError("a transaction is already open on this thread (they do not nest)")
        with self._lock:
            while True:
                self._check_open()
                if w.segment is None:
                    self._open_next_segment()
                rc = w.begin_rc()
                if rc == 0:
                    break
                if rc != Writer.AOF_EFULL:
                    self._fail(rc, f"beginning a transaction in {self.path}")
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
                    self._writer_failed(e)
                raise
            self._tx_owner = None
            try:
                w.end(True)
            except errors.StorageError as e:
                self._writer_failed(e)
                raise
            if self._full:
                self._sync_or_raise()

    def _sync_or_raise(self) -> int:
        rc = self._sync_fn()
        if rc:
            self._check_open()  # a refused handle says why
            self._fail(rc, f"syncing {self.path}")
        return rc

    def commit(self) -> int:
        """Durable barrier: everything appended before the call (another
        thread's open transaction aside) is on stable storage when it
        returns. Returns the last durable LSN.

        A failed sync, here or in the background flusher, raises
        StorageError and stops the handle: after one, the kernel may have
        dropped pages it could not write, so no later sync could vouch for
        them. Every later call raises; close and reopen the store, and
        recovery keeps every batch that reached the disk."""
        w = self._check_writable()
        try:
            return w.sync()
        except errors.StorageError as e:
            self._writer_failed(e)
            raise

    def seal(self) -> int | None:
        """Seal the active segment now (it also happens at segment_bytes) and
        start a new one. Returns the sealed segment's id, or None when the
        active segment holds nothing yet."""
        w = self._check_writable()
        if self._tx_owner == threading.get_ident():
            raise errors.TransactionError("cannot seal inside a transaction")
        with self._lock:
            self._check_open()
            seg = w.segment
            if seg is None or not seg.info().record_count:
                return None
            return self._roll(seg)

    def _roll(self, full: Segment | None) -> int | None:
        """Seal the active segment, if it is still `full`, and open the next."""
        with self._lock:
            self._check_open()
            w = self._writer
            assert w is not None
            seg = w.segment
            if seg is None or seg is not full:
                return None  # another thread rolled it already
            try:
                w.detach()
            except errors.StorageError as e:
                self._writer_failed(e)
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
                    self.path, self._store_id, info.segment_id + 1, w.next_lsn(), self.config.segment.segment_bytes
                )
                hit("roll.after_create")
                ranges = recovery.commit_seal(
                    self._manifest, seg, info, self._names.get, self._next_kid, opened=opened
                )
            except BaseException as e:
                self._refuse_behind(e)
                raise
            hit("roll.after_manifest")
            # Publish in the order readers look: the sealed segment where
            # the new ranges send them, then fresh ranges, then the new
            # live list, and only then let appends land in the new segment.
            self._cache_segment(info.segment_id, seg)
            self._ranges = {}
            self._live = [new]
            w.attach(new)
            return info.segment_id

    def _refuse_behind(self, e: BaseException) -> None:
        """A roll failed between sealing and the manifest commit: the files
        are right but the manifest is behind, so reads could miss records.
        Reopening reconciles them."""
        self._refuse(
            lambda: errors.Error(
                f"{self.path}: a segment roll failed midway ({e}); close and reopen the store to reconcile "
                "the manifest with the files (nothing acknowledged is lost)"
            )
        )

    # ---------------------------------------------------------- reading

    def _kid(self, key: Any) -> int | None:
        _check_key(key)
        kid = self._kids.get(key)
        if kid is not None:
            return kid
        known = self._manifest.lookup_key(key)
        if known is not None:
            self._kids[key] = known[0]
            self._names[known[0]] = key
            return known[0]
        if self._writer is None:
            self._refresh()
            self._learn_live_keys()
            return self._kids.get(key)
        return None

    def _learn_live_keys(self) -> None:
        for seg in self._live:
            for r in seg.keys():
                if r.key_id not in self._seen_kids:
                    name = seg.key_name(r.key_id)
                    self._kids[name] = r.key_id
                    self._names[r.key_id] = name
                    self._seen_kids.add(r.key_id)

    def _cache_segment(self, segment_id: int, seg: Segment) -> None:
        with self._seg_lock:
            self._sealed[segment_id] = seg
            while len(self._sealed) > self.config.read.open_segments:
                self._sealed.popitem(last=False)  # the least recently used

    def _segment(self, segment_id: int) -> Segment:
        """A segment the manifest says is sealed, mapped (from the cache
        when it is there). Never a follower's live copy of it: that one
        may not have taken in the segment's last records yet."""
        seg = self._sealed.get(segment_id)
        if seg is not None:
            try:
                self._sealed.move_to_end(segment_id)
            except KeyError:
                pass  # evicted meanwhile: still good to use
            return seg
        seg = self._open_sealed(segment_id)
        self._cache_segment(segment_id, seg)
        return seg

    def _open_sealed(self, segment_id: int) -> Segment:
        """Open the file of a segment the manifest says is sealed; any way it
        falls short of that is corruption."""
        path = layout.segment_path(self.path, segment_id)
        try:
            seg, _ = Segment.open(path)
        except errors.NotFound:
            raise errors.CorruptionError(
                f"{path}: segment {segment_id} is in the manifest but its file is missing "
                "(restore it from a backup or replica)",
                path=path,
            ) from None
        except errors.FormatError as e:
            raise errors.CorruptionError(
                f"segment {segment_id} is in the manifest but its file is not a readable segment: {e} "
                "(restore it from a backup or replica)",
                path=path,
                position=0,
            ) from None
        info = seg.info()
        recovery.check_identity(seg, info, self._store_id, segment_id)
        if not info.sealed:
            raise errors.CorruptionError(
                f"{path}: the manifest says segment {segment_id} is sealed but its footer is missing or damaged "
                "(restore it from a backup or replica)",
                path=path,
                position=info.file_bytes,
            )
        return seg

    def verify(self, segment_id: int | None = None) -> int:
        """Check sealed segments as they are on disk now: the file CRC, every
        record, the index, and agreement with the manifest. Raises
        CorruptionError naming the first bad one; returns how many were
        checked. Reads the whole of each segment."""
        self._check_open()
        if segment_id is None:
            recs = [r for r in self._manifest.segments() if r.state == "sealed"]
        else:
            _check_offset("segment_id", segment_id)
            rec = self._manifest.segment(segment_id)
            if rec is None:
                raise errors.NotFound(f"{self.path}: no segment {segment_id} in the manifest")
            if rec.state != "sealed":
                raise errors.Error(f"{self.path}: segment {segment_id} is still active (seal it first)")
            recs = [rec]
        for rec in recs:
            seg = self._open_sealed(rec.segment_id)
            seg.verify()
            info = seg.info()
            facts = (info.record_count, info.last_lsn, info.file_crc, info.file_bytes)
            if facts != (rec.record_count, rec.last_lsn, rec.file_crc, rec.file_bytes):
                raise errors.CorruptionError(
                    f"{seg.path}: segment {rec.segment_id} verifies on its own but is not the file the "
                    f"manifest recorded (records, last LSN, CRC, size {facts} != "
                    f"{(rec.record_count, rec.last_lsn, rec.file_crc, rec.file_bytes)})",
                    path=seg.path,
                )
        return len(recs)

    def _key_ranges(self, kid: int) -> list[tuple[int, int, int]]:
        cache = self._ranges  # before the manifest read: see __init__
        ranges = cache.get(kid)
        if ranges is None:
            ranges = [(last, seg, first) for last, seg, first, _ in self._manifest.key_ranges(kid)]
            hit("ranges.after_load")
            cache[kid] = ranges
        return ranges

    def _find(self, kid: int, offset: int) -> Segment | None:
        """The segment holding (kid, offset), or None when it does not exist."""
        for seg in reversed(self._live):
            r = seg.key_range(kid)
            if r is not None and offset >= r.first_offset:
                return seg if offset < r.first_offset + r.count else None
        return self._sealed_segment_of(kid, offset)

    def _sealed_segment_of(self, kid: int, offset: int) -> Segment | None:
        ranges = self._key_ranges(kid)
        i = bisect_left(ranges, offset, key=_first)
        if i < len(ranges) and offset >= ranges[i][2]:
            return self._segment(ranges[i][1])
        return None

    def read(self, key: str, offset: int) -> Record:
        """The record at (key, offset); NotFound if there is none."""
        if self._closed or self._refusal is not None:
            self._check_open()
        try:
            kid = self._kids.get(key)
        except TypeError:
            kid = None
        if kid is None:
            kid = self._kid(key)
        if kid is not None and type(offset) is int and 0 <= offset < _U64_END:
            got = self._read(kid, offset)
            if got is None and self._writer is None:
                self._refresh()
                got = self._read(kid, offset)
            if got is not None:
                return _new_record(Record, (key, offset, got[0], got[1], got[2]))
        _check_offset("offset", offset)
        raise errors.NotFound(f"{self.path}: no record at key {key!r} offset {offset}")

    def _read(self, kid: int, offset: int) -> tuple[int, int, bytes] | None:
        # the live segments answer for their own offsets (newest first);
        # older offsets are in a sealed segment the manifest names
        for seg in reversed(self._live):
            got = seg.read(kid, offset)
            if got is not None:
                return got
        seg = self._sealed_segment_of(kid, offset)
        return seg.read(kid, offset) if seg is not None else None

    def scan(self, key: str, start: int = 0, stop: int | None = None) -> Iterator[Record]:
        """Records of key with start <= offset < stop (stop=None: to the end),
        in offset order."""
        self._check_open()
        _check_offset("start", start)
        _check_offset("stop", stop, allow_none=True)
        kid = self._kid(key)
        return self._scan(key, kid, start, stop) if kid is not None else iter(())

    def _scan(self, key: str, kid: int, off: int, stop: int | None) -> Iterator[Record]:
        refreshed = False
        while stop is None or off < stop:
            self._check_open()
            seg = self._find(kid, off)
            if seg is None:
                if self._writer is not None or refreshed:
                    return
                self._refresh()
                refreshed = True
                continue
            n = _CHUNK if stop is None else min(_CHUNK, stop - off)
            offs, lsns, tss, vals = seg.read_range(kid, off, n)
            if not offs:
                return
            yield from map(_new_record, repeat(Record), zip(repeat(key), offs, lsns, tss, vals))
            off = offs[-1] + 1

    def last(self, key: str) -> Record | None:
        """The key's newest record, or None when it has none."""
        n = self.count(key)
        return self.read(key, n - 1) if n else None

    def count(self, key: str) -> int:
        """Records ever appended to key: its next offset."""
        self._check_open()
        kid = self._kid(key)
        if kid is None:
            return 0
        w = self._writer
        if w is not None:
            with contextlib.suppress(errors.Error):
                return w.next_offset(kid)
        else:
            self._refresh()
            for seg in reversed(self._live):
                r = seg.key_range(kid)
                if r is not None:
                    return r.first_offset + r.count
        known = self._manifest.lookup_key(key)
        return known[1] if known else 0

    def keys(self) -> list[str]:
        """Every key with at least one record, sorted."""
        self._check_open()
        self._refresh()
        names = set(self._manifest.keys())
        for seg in self._live:
            for r in seg.keys():
                names.add(self._names[r.key_id])
        return sorted(names)

    def scan_all(self, start_lsn: int = 0) -> Iterator[Record]:
        """Every record of every key in append (LSN) order from start_lsn: a
        change feed."""
        self._check_open()
        _check_offset("start_lsn", start_lsn)
        return self._scan_all(max(start_lsn, 1))

    def _scan_all(self, lsn: int) -> Iterator[Record]:
        self._refresh()
        sid = self._manifest.segment_for_lsn(lsn)
        seg = self._segment(sid) if sid is not None else (self._live[0] if self._live else None)
        names = self._names
        pos = 0
        settled = retried = False
        while seg is not None:
            self._check_open()
            pos, kids, offs, lsns, tss, vals = seg.scan(pos, lsn, _CHUNK)
            if kids:
                yield from map(_new_record, repeat(Record), zip(map(names.__getitem__, kids), offs, lsns, tss, vals))
                lsn = lsns[-1] + 1
                retried = False
                continue
            hit("scan_all.segment_end")
            if settled:
                # settled before the scan that just came back empty: every
                # record the segment will ever hold has been yielded
                seg = self._segment_after(seg.info().segment_id)
                pos, settled = 0, False
            elif retried:
                return  # nothing more for now
            else:
                # the segment may have grown or been sealed since the scan
                # began: scan it once more before moving on or stopping
                settled, retried = self._settled(seg), True

    def _settled(self, seg: Segment) -> bool:
        """True when seg holds every record it ever will (it is sealed and
        this handle has taken in its last records)."""
        if seg.info().sealed:
            return True
        # a follower's live copy (a writer's unsealed segment is the active
        # one): the refresh says whether the file was sealed before it
        # began, and then it took in the last records
        return self._writer is None and seg.refresh().reason == "sealed"

    def _segment_after(self, segment_id: int) -> Segment | None:
        """The segment following segment_id: the manifest's next one, or a
        live segment it does not list yet."""
        self._refresh()
        rec = self._manifest.segment_after(segment_id)
        if rec is not None and rec.state == "sealed":
            return self._segment(rec.segment_id)
        later = [s for s in self._live if s.info().segment_id > segment_id]
        return min(later, key=lambda s: s.info().segment_id) if later else None

    def tail(self, key: str, start: int = 0, timeout: float | None = None) -> Iterator[Record]:
        """Records of key from offset start on, waiting for new ones as they
        are committed. Ends when no new record arrives for timeout seconds
        (None: never); raises ClosedError if the store is closed meanwhile."""
        self._check_open()
        _check_key(key)
        _check_offset("start", start)
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
            if timeout < 0:
                raise ValueError(f"timeout must be >= 0, got {timeout}")
        return self._tail(key, start, timeout)

    def _tail(self, key: str, off: int, timeout: float | None) -> Iterator[Record]:
        deadline = None if timeout is None else time.monotonic() + timeout
        w = self._writer
        gen = w.wait_commit(-1 & 0xFFFFFFFFFFFFFFFF, 0) if w is not None else 0
        while True:
            got = False
            kid = self._kid(key)
            if kid is not None:
                for rec in self._scan(key, kid, off, None):
                    yield rec
                    off = rec.offset + 1
                    got = True
            if got and timeout is not None:
                deadline = time.monotonic() + timeout
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            self._check_open()
            step = 1.0 if remaining is None else min(remaining, 1.0)
            if w is not None:
                gen = w.wait_commit(gen, max(1, int(step * 1000)))
            else:
                time.sleep(min(step, self.config.read.poll_interval_ms / 1000))

    # ----------------------------------------------------------- status

    def stats(self) -> dict[str, Any]:
        """A snapshot of the handle's state, for operators and tests."""
        self._check_open()
        w = self._writer
        return {
            "path": self.path,
            "readonly": self.readonly,
            "durability": self.config.durability.mode,
            "segments": len(self._manifest.segments()),
            "active_segment": self._live[-1].info().segment_id if self._live else None,
            "next_lsn": w.next_lsn() if w else None,
            "unsynced_bytes": w.unsynced_bytes() if w else 0,
            "open_segments": len(self._sealed),
            "last_flush_error": repr(self._flush_error) if self._flush_error else None,
        }

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
        if self._closed:
            return
        if self._forked:
            self._closed = True  # the parent's store: nothing here is ours to sync or release
            return
        if self._tx_owner == threading.get_ident():
            raise errors.TransactionError("cannot close inside a transaction (finish it first)")
        with self._lock:
            if self._closed:
                return
            try:
                if self._writer is not None:
                    hit("close.before_sync")
                    try:
                        self._writer.close()
                    except errors.StorageError:
                        if self._refusal is None:  # news to the caller
                            raise
                    hit("close.after_sync")
            finally:
                self._closed = True
                self._finalizer.detach()
                if self._flusher is not None:
                    self._flusher.join()
                self._release()

    def _release(self) -> None:
        manifest = getattr(self, "_manifest", None)
        if manifest is not None:
            manifest.close()
        if self._lock_fd is not None:
            layout.release_lock(self._lock_fd)
            self._lock_fd = None

    @staticmethod
    def _finalize(writer: Writer | None, flusher: threading.Thread | None) -> None:
        # a handle dropped without close(): still make its appends durable
        if writer is not None:
            with contextlib.suppress(errors.Error):
                writer.close()
        if flusher is not None:
            flusher.join(timeout=5)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("read-only" if self.readonly else "writable")
        return f"<aoflite.Store {self.path!r} {state}>"


def _no_writer(*args: Any) -> int:
    return Writer.AOF_EREADONLY


def _refused(*args: Any) -> int:
    # the hot path's calls on a refused handle: the slow path raises why
    return Writer.AOF_ECLOSED


def _flush_loop(w: Writer, interval_ms: int, store_ref: weakref.ref) -> None:
    """Background flusher for durability="normal"."""
    while True:
        rc = w.wait_dirty(interval_ms)
        if rc in (Writer.AOF_ECLOSED, Writer.AOF_EBROKEN):
            return
        if rc == 0:
            hit("flush.before_sync")
            try:
                w.sync()
            except errors.Error as e:
                store = store_ref()
                if store is not None:
                    store._flush_error = e
                    store._writer_failed(e)
                if w.broken_error() is not None:
                    return  # a failed sync stopped the writer: nothing more to flush
                time.sleep(interval_ms / 1000)
