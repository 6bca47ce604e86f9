"""The LMDB manifest: which segments exist, where each key's offsets live,
which tier holds what, and a ledger of every lifecycle event.

Appends never write here: the manifest is brought up to date when a
segment is sealed and when the store is opened. Tables (LMDB sub-databases):

=============  ====================================  ===============================
table          key                                   value
=============  ====================================  ===============================
meta           name (ascii)                          value (ascii)
keys           blake2b-256 of the key name           key_id:u32 sealed_count:u64 name (utf-8)
key_names      key_id:u32be                          key name (utf-8)
segments       segment_id:u64be                      JSON SegmentRecord
key_segments   key_id:u32be last_offset:u64be        segment_id:u64 first_offset:u64 count:u64
lsn_segments   last_lsn:u64be                        segment_id:u64
ledger         seq:u64be                             JSON event
=============  ====================================  ===============================

Key names run to 1024 bytes, past LMDB's 511-byte key limit, so the keys
table is keyed by a digest of the name and holds the name itself, which a
lookup compares. key_segments is ordered by (key id, last offset), which orders the same as
(key id, segment id) since both grow together; keying by the last offset
makes "which segment holds (key, offset)" one range lookup.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import lmdb

from . import errors, failpoints

__all__ = ["Manifest", "SegmentRecord", "EVENT_TYPES"]

#: Lifecycle events the ledger records (after the tiered design's manifest
#: record types). Recovery adds TailRecovered and SegmentAdopted.
EVENT_TYPES = (
    "StoreCreated",
    "SegmentOpened",
    "SealSegment",
    "CompressionStarted",
    "CompressionDone",
    "CompressionFailed",
    "UploadStarted",
    "UploadDone",
    "UploadFailed",
    "Tier2DeleteQueued",
    "Tier2Deleted",
    "HydrationStarted",
    "HydrationDone",
    "HydrationFailed",
    "LocalEvicted",
    "SegmentRetired",
    "CursorOverrun",
    "SnapshotMarker",
    "CustomEvent",
    "TailRecovered",
    "SegmentAdopted",
    "SegmentDiscarded",
    "SettingChanged",
    "StoreRestored",
)

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_KEYSEG = struct.Struct(">IQ")
_KEYVAL = struct.Struct("<IQ")


def _name_key(name: bytes) -> bytes:
    return hashlib.blake2b(name, digest_size=32).digest()
_RANGE = struct.Struct("<QQQ")
_TABLES = ("meta", "keys", "key_names", "segments", "key_segments", "lsn_segments", "ledger")
_MAP_SIZE = 16 << 30  # virtual; the file grows only as data is written


@attrs.define
class SegmentRecord:
    """What the manifest knows of one segment."""

    segment_id: int
    state: str  # "active" or "sealed"
    first_lsn: int
    last_lsn: int = 0
    record_count: int = 0
    file_bytes: int = 0
    file_crc: int = 0
    key_count: int = 0
    tiers: list[str] = attrs.field(factory=lambda: ["t0"])
    created_ms: int = 0
    sealed_ms: int = 0
    # the Tier 1 copy: its size and the CRC32C of the segment bytes it holds
    t1_bytes: int = 0
    t1_crc: int = 0
    # the Tier 2 object, as the object store confirmed it
    t2_bytes: int = 0
    t2_checksum: str = ""
    # the timestamps of its first and last records (find_lsn, retention by
    # age); the last one is filled in by the pipeline, in the background
    first_ts_ms: int = 0
    last_ts_ms: int = 0

    def to_json(self) -> bytes:
        return json.dumps(attrs.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SegmentRecord:
        raw = json.loads(data)
        known = {a.name for a in attrs.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


# LMDB must not be opened twice in one process (its locks are per process),
# so every handle on a path shares one Environment.
_envs: dict[str, tuple[lmdb.Environment, int]] = {}
_envs_lock = threading.Lock()


# A forked child inherits the parent's environments. It must never close
# one: closing aborts the transactions py-lmdb keeps for reuse, and those
# hold reader slots of the parent's in the shared lock file. py-lmdb also
# refuses to open the same files twice in one process, so a new handle in
# the child shares the inherited environment (new transactions, never the
# parent's), and it stays open for the child's life.
_inherited: list[lmdb.Environment] = []


def _keep_envs_after_fork() -> None:
    global _envs_lock
    _envs_lock = threading.Lock()  # another thread may have held it at fork
    _inherited.extend(env for env, _ in _envs.values())


os.register_at_fork(after_in_child=_keep_envs_after_fork)


def _acquire_env(path: str, create: bool) -> lmdb.Environment:
    with _envs_lock:
        entry = _envs.get(path)
        if entry is not None:
            _envs[path] = (entry[0], entry[1] + 1)
            return entry[0]
        if not create and not os.path.exists(os.path.join(path, "data.mdb")):
            raise errors.FormatError(f"{path}: the store's manifest is missing")
        writable = os.access(os.path.dirname(path), os.W_OK)
        try:
            env = lmdb.open(
                path,
                map_size=_MAP_SIZE,
                max_dbs=len(_TABLES),
                readonly=not writable,
                create=create,
                subdir=True,
                max_readers=512,
            )
        except lmdb.Error as e:
            if "Permission denied" in str(e) or isinstance(e, lmdb.ReadonlyError):
                raise errors.StorageError(
                    errno.EACCES,
                    f"opening the manifest at {path}: permission denied (a handle needs read permission on "
                    f"{path}/data.mdb and read and write permission on {path}/lock.mdb, where LMDB keeps its readers)",
                ) from None
            raise errors.StorageError(0, f"opening the manifest at {path}: {e}") from None
        _envs[path] = (env, 1)
        return env


def _release_env(path: str, env: lmdb.Environment) -> None:
    with _envs_lock:
        entry = _envs.get(path)
        if entry is None or entry[0] is not env:
            return
        if entry[1] > 1 or any(env is e for e in _inherited):
            _envs[path] = (env, max(entry[1] - 1, 0))
        else:
            del _envs[path]
            env.close()


class Manifest:
    """One store's manifest. Thread-safe; writes come from the writer only."""

    def __init__(self, path: str, *, create: bool = False):
        self.path = path
        # told of every failed commit (the metrics' metadata failures)
        self.on_commit_failed: Callable[[errors.StorageError], None] | None = None
        self.env = _acquire_env(path, create)
        self._closed = False
        # close() waits for transactions under way in other threads: closing
        # the environment under them would fail them with raw LMDB errors
        self._users = 0
        self._idle = threading.Condition(threading.Lock())
        try:
            if create:
                with self._write() as txn:
                    self._dbs = {t: self.env.open_db(t.encode(), txn=txn) for t in _TABLES}
            else:
                # without txn=, py-lmdb opens each handle in a transaction of
                # its own that it commits, so the handle outlives it
                self._dbs = {t: self.env.open_db(t.encode(), create=False) for t in _TABLES}
        except lmdb.Error as e:
            _release_env(path, self.env)
            raise errors.FormatError(f"{path}: the store's manifest is incomplete or damaged: {e}") from None

    def close(self) -> None:
        """Release this handle's share of the environment, once no
        transaction of it is under way; later calls raise ClosedError."""
        with self._idle:
            if self._closed:
                return
            self._closed = True
            while self._users:
                self._idle.wait()
        _release_env(self.path, self.env)

    def _enter(self) -> None:
        with self._idle:
            if self._closed:
                raise errors.ClosedError(f"{self.path}: the manifest is closed (its store handle was closed)")
            self._users += 1

    def _leave(self) -> None:
        with self._idle:
            self._users -= 1
            if not self._users:
                self._idle.notify_all()

    @contextlib.contextmanager
    def _read(self, table: str) -> Iterator[lmdb.Transaction[bytes]]:
        """A read transaction on one table."""
        self._enter()
        try:
            with self.env.begin(db=self._dbs[table]) as txn:
                yield txn
        except lmdb.Error as e:
            raise errors.StorageError(0, f"reading the manifest at {self.path}: {e}") from None
        finally:
            self._leave()

    @contextlib.contextmanager
    def _write(self) -> Iterator[lmdb.Transaction[bytes]]:
        """A write transaction, committed when the block ends without error.
        A failed commit leaves the manifest as it was (LMDB commits are
        atomic) and raises StorageError."""
        self._enter()
        try:
            txn = self.env.begin(write=True)
            try:
                yield txn
                failpoints.io("manifest.commit")
                txn.commit()
            except BaseException:
                txn.abort()
                raise
        except (lmdb.Error, OSError) as e:
            err = getattr(e, "errno", 0) or 0
            failure = errors.StorageError(
                err, f"committing to the manifest at {self.path}: {e} (check free space and the device)"
            )
            if self.on_commit_failed is not None:
                self.on_commit_failed(failure)
            raise failure from None
        finally:
            self._leave()

    def copy_to(self, path: str) -> None:
        """A consistent copy of the whole environment (one read
        transaction) into the empty directory path, synced."""
        self._enter()
        try:
            self.env.copy(path, compact=True)
        except lmdb.Error as e:
            raise errors.StorageError(0, f"copying the manifest at {self.path} to {path}: {e}") from None
        finally:
            self._leave()

    # ------------------------------------------------------------- meta

    def get_meta(self, name: str) -> str | None:
        """A meta value, or None."""
        with self._read("meta") as txn:
            v = txn.get(name.encode())
        return None if v is None else v.decode()

    def init_store(self, store_id: int, format_version: int) -> None:
        """Write the meta of a new store."""
        with self._write() as txn:
            meta = self._dbs["meta"]
            txn.put(b"store_id", str(store_id).encode(), db=meta)
            txn.put(b"format_version", str(format_version).encode(), db=meta)
            txn.put(b"created_ms", str(_now_ms()).encode(), db=meta)
            txn.put(b"next_key_id", b"1", db=meta)
            self._event(txn, "StoreCreated", store_id=store_id)

    def settings(self, names: tuple[str, ...]) -> dict[str, int]:
        """The recorded values of store-shaping settings (missing: never recorded)."""
        out = {}
        for name in names:
            v = self.get_meta(f"setting.{name}")
            if v is not None:
                out[name] = int(v)
        return out

    def record_settings(self, changes: dict[str, tuple[int | None, int]]) -> None:
        """Record settings (name -> (old or None, new)); a change of a value
        already recorded goes into the ledger."""
        with self._write() as txn:
            meta = self._dbs["meta"]
            for name, (old, new) in changes.items():
                txn.put(f"setting.{name}".encode(), str(new).encode(), db=meta)
                if old is not None:
                    self._event(txn, "SettingChanged", setting=name, old=old, new=new)

    # ------------------------------------------------------------- keys

    def lookup_key(self, name: str) -> tuple[int, int] | None:
        """(key_id, sealed_count) of a key the manifest knows, or None."""
        raw = name.encode()
        with self._read("keys") as txn:
            v = txn.get(_name_key(raw))
        if v is None or v[_KEYVAL.size :] != raw:
            return None
        return _KEYVAL.unpack_from(v)

    def key_name(self, key_id: int) -> str | None:
        """The name of key_id, or None."""
        with self._read("key_names") as txn:
            v = txn.get(_U32.pack(key_id))
        return None if v is None else v.decode()

    def keys(self) -> dict[str, tuple[int, int]]:
        """Every key with sealed records: name -> (key_id, sealed_count)."""
        with self._read("keys") as txn:
            return {v[_KEYVAL.size :].decode(): _KEYVAL.unpack_from(v) for _, v in txn.cursor()}

    def next_key_id(self) -> int:
        """The lowest key id the manifest has not handed out."""
        return int(self.get_meta("next_key_id") or 1)

    # --------------------------------------------------------- segments

    def segments(self) -> list[SegmentRecord]:
        """Every segment, by id."""
        with self._read("segments") as txn:
            return [SegmentRecord.from_json(v) for _, v in txn.cursor()]

    def segment(self, segment_id: int) -> SegmentRecord | None:
        """One segment's record, or None."""
        with self._read("segments") as txn:
            v = txn.get(_U64.pack(segment_id))
        return None if v is None else SegmentRecord.from_json(v)

    def last_segment(self) -> SegmentRecord | None:
        """The segment with the highest id, or None."""
        with self._read("segments") as txn:
            cur = txn.cursor()
            return SegmentRecord.from_json(cur.value()) if cur.last() else None

    def segment_after(self, segment_id: int) -> SegmentRecord | None:
        """The first segment with an id above segment_id, or None."""
        with self._read("segments") as txn:
            cur = txn.cursor()
            if not cur.set_range(_U64.pack(segment_id + 1)):
                return None
            return SegmentRecord.from_json(cur.value())

    def segment_for_lsn(self, lsn: int) -> int | None:
        """The sealed segment whose LSN range reaches lsn (the first one
        ending at or after it), or None."""
        with self._read("lsn_segments") as txn:
            cur = txn.cursor()
            if not cur.set_range(_U64.pack(lsn)):
                return None
            return int(_U64.unpack(cur.value())[0])

    def key_ranges(self, key_id: int) -> list[tuple[int, int, int, int]]:
        """The key's sealed ranges in offset order: (last_offset, segment_id,
        first_offset, count)."""
        out = []
        prefix = _U32.pack(key_id)
        with self._read("key_segments") as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k, v in cur:
                    if k[:4] != prefix:
                        break
                    seg, first, count = _RANGE.unpack(v)
                    out.append((_KEYSEG.unpack(k)[1], seg, first, count))
        return out

    def find_segment(self, key_id: int, offset: int) -> tuple[int, int, int] | None:
        """(segment_id, first_offset, count) of the sealed segment holding
        (key_id, offset), or None: one range lookup."""
        with self._read("key_segments") as txn:
            cur = txn.cursor()
            if not cur.set_range(_KEYSEG.pack(key_id, offset)):
                return None
            kid, _ = _KEYSEG.unpack(cur.key())
            if kid != key_id:
                return None
            seg, first, count = _RANGE.unpack(cur.value())
            return (seg, first, count) if first <= offset else None

    def record_open(self, rec: SegmentRecord, event: str = "SegmentOpened", **fields: Any) -> None:
        """A new active segment."""
        with self._write() as txn:
            txn.put(_U64.pack(rec.segment_id), rec.to_json(), db=self._dbs["segments"])
            self._event(txn, event, segment=rec.segment_id, first_lsn=rec.first_lsn, **fields)

    def record_seal(
        self,
        rec: SegmentRecord,
        ranges: list[tuple[int, int, int]],
        names: dict[int, str],
        next_key_id: int,
        opened: SegmentRecord | None = None,
    ) -> None:
        """A sealed segment, its per-key ranges ((key_id, first_offset,
        count)), the names of keys it introduces and, in the same
        transaction, the segment that replaces it as active."""
        with self._write() as txn:
            keys, key_names = self._dbs["keys"], self._dbs["key_names"]
            for key_id, new_name in names.items():
                txn.put(_U32.pack(key_id), new_name.encode(), db=key_names)
            for key_id, first, count in ranges:
                name = names.get(key_id)
                if name is None:
                    raw = txn.get(_U32.pack(key_id), db=key_names)
                    if raw is None:
                        raise errors.CorruptionError(
                            f"segment {rec.segment_id} holds key id {key_id}, which the manifest does not name"
                        )
                    name = raw.decode()
                raw = name.encode()
                txn.put(_name_key(raw), _KEYVAL.pack(key_id, first + count) + raw, db=keys)
                txn.put(
                    _KEYSEG.pack(key_id, first + count - 1),
                    _RANGE.pack(rec.segment_id, first, count),
                    db=self._dbs["key_segments"],
                )
            if rec.record_count:
                txn.put(_U64.pack(rec.last_lsn), _U64.pack(rec.segment_id), db=self._dbs["lsn_segments"])
            txn.put(_U64.pack(rec.segment_id), rec.to_json(), db=self._dbs["segments"])
            meta = self._dbs["meta"]
            if next_key_id > int(txn.get(b"next_key_id", db=meta) or b"1"):
                txn.put(b"next_key_id", str(next_key_id).encode(), db=meta)
            self._event(
                txn,
                "SealSegment",
                segment=rec.segment_id,
                records=rec.record_count,
                bytes=rec.file_bytes,
                last_lsn=rec.last_lsn,
            )
            if opened is not None:
                txn.put(_U64.pack(opened.segment_id), opened.to_json(), db=self._dbs["segments"])
                self._event(txn, "SegmentOpened", segment=opened.segment_id, first_lsn=opened.first_lsn)

    def record_tier(
        self,
        segment_id: int,
        event: str,
        *,
        add: tuple[str, ...] = (),
        remove: tuple[str, ...] = (),
        facts: dict[str, Any] | None = None,
        **fields: Any,
    ) -> SegmentRecord | None:
        """One step of a sealed segment's move between tiers: the tiers
        it gains and loses and the facts (SegmentRecord fields) learnt, with
        its ledger event, in one transaction. Returns the new record, or
        None (and records nothing) when the segment is gone."""
        with self._write() as txn:
            segs = self._dbs["segments"]
            raw = txn.get(_U64.pack(segment_id), db=segs)
            if raw is None:
                return None
            rec = SegmentRecord.from_json(raw)
            if add or remove or facts:
                tiers: list[str] = [t for t in ("t0", "t1", "t2") if (t in rec.tiers or t in add) and t not in remove]
                rec = attrs.evolve(rec, tiers=tiers, **(facts or {}))
                txn.put(_U64.pack(segment_id), rec.to_json(), db=segs)
            self._event(txn, event, segment=segment_id, **fields)
            return rec

    # ------------------------------------------------------- retention

    def retire_segment(
        self, segment_id: int, *, reason: str, object_name: str | None, overrun: dict[str, int]
    ) -> SegmentRecord | None:
        """Remove a sealed segment by retention, in one transaction: its
        record, its key ranges and LSN entry; each key's retired watermark
        (reads below it say "retired"); a queued Tier 2 delete of
        object_name when the record says Tier 2 holds it (an upload that
        lands later queues its own, see queue_tier2_delete); the ledger events, with one CursorOverrun per
        cursor (name -> its LSN) that had not consumed it."""
        with self._write() as txn:
            segs, meta = self._dbs["segments"], self._dbs["meta"]
            raw = txn.get(_U64.pack(segment_id), db=segs)
            if raw is None:
                return None
            rec = SegmentRecord.from_json(raw)
            if rec.state != "sealed":
                raise ValueError(f"segment {segment_id} is {rec.state}: only sealed segments are retired")
            ranges = self._dbs["key_segments"]
            cur = txn.cursor(db=ranges)
            doomed = []
            for k, v in cur:
                seg, first, count = _RANGE.unpack(v)
                if seg == segment_id:
                    doomed.append((k, _KEYSEG.unpack(k)[0], first + count))
            for k, key_id, end in doomed:
                txn.delete(k, db=ranges)
                mark = f"retired.{key_id}".encode()
                if end > int(txn.get(mark, db=meta) or b"0"):
                    txn.put(mark, str(end).encode(), db=meta)
            if rec.record_count:
                txn.delete(_U64.pack(rec.last_lsn), db=self._dbs["lsn_segments"])
            txn.delete(_U64.pack(segment_id), db=segs)
            if segment_id > int(txn.get(b"retired_through", db=meta) or b"0"):
                txn.put(b"retired_through", str(segment_id).encode(), db=meta)
            self._event(
                txn,
                "SegmentRetired",
                segment=segment_id,
                reason=reason,
                first_lsn=rec.first_lsn,
                last_lsn=rec.last_lsn,
                records=rec.record_count,
            )
            for name, lsn in overrun.items():
                self._event(
                    txn, "CursorOverrun", cursor=name, cursor_lsn=lsn, lost_from=max(lsn + 1, rec.first_lsn),
                    lost_to=rec.last_lsn, segment=segment_id,
                )
            if object_name is not None and "t2" in rec.tiers:
                txn.put(f"t2delete.{segment_id}".encode(), object_name.encode(), db=meta)
                self._event(txn, "Tier2DeleteQueued", segment=segment_id, object=object_name)
            return rec

    def retired_below(self, key_id: int) -> int:
        """Offsets of key_id below this were retired (0: none)."""
        v = self.get_meta(f"retired.{key_id}")
        return int(v) if v else 0

    def retired_through(self) -> int:
        """The highest segment id retention removed (0: none)."""
        v = self.get_meta("retired_through")
        return int(v) if v else 0

    def queue_tier2_delete(self, segment_id: int, object_name: str) -> None:
        """Queue the deletion of the Tier 2 object of a segment that is gone
        (an upload that finished after retention retired its segment)."""
        with self._write() as txn:
            txn.put(f"t2delete.{segment_id}".encode(), object_name.encode(), db=self._dbs["meta"])
            self._event(txn, "Tier2DeleteQueued", segment=segment_id, object=object_name)

    def queued_deletes(self) -> dict[int, str]:
        """Tier 2 objects of retired segments still to delete: id -> name."""
        out = {}
        with self._read("meta") as txn:
            cur = txn.cursor()
            if cur.set_range(b"t2delete."):
                for k, v in cur:
                    if not k.startswith(b"t2delete."):
                        break
                    out[int(k[len(b"t2delete.") :])] = v.decode()
        return out

    def tier2_deleted(self, segment_id: int, object_name: str) -> None:
        """A queued Tier 2 delete is done."""
        with self._write() as txn:
            txn.delete(f"t2delete.{segment_id}".encode(), db=self._dbs["meta"])
            self._event(txn, "Tier2Deleted", segment=segment_id, object=object_name)

    def note_facts(self, segment_id: int, **facts: Any) -> None:
        """Facts about a sealed segment learnt later (no ledger event: they
        add knowledge, they do not move anything)."""
        with self._write() as txn:
            segs = self._dbs["segments"]
            raw = txn.get(_U64.pack(segment_id), db=segs)
            if raw is not None:
                txn.put(_U64.pack(segment_id), attrs.evolve(SegmentRecord.from_json(raw), **facts).to_json(), db=segs)

    def text_setting(self, name: str) -> str | None:
        """A recorded setting whose value is text (the Tier 2 URL)."""
        return self.get_meta(f"setting.{name}")

    def forget_text_setting(self, name: str) -> None:
        """Drop a recorded text setting (a backup's copy keeps no Tier 2)."""
        with self._write() as txn:
            txn.delete(f"setting.{name}".encode(), db=self._dbs["meta"])

    def record_text_setting(self, name: str, old: str | None, new: str) -> None:
        """Record a text setting; a change goes into the ledger."""
        with self._write() as txn:
            txn.put(f"setting.{name}".encode(), new.encode(), db=self._dbs["meta"])
            if old is not None:
                self._event(txn, "SettingChanged", setting=name, old=old, new=new)

    def cut_segments(
        self,
        keep_through: int,
        fix: Callable[[SegmentRecord], SegmentRecord],
        texts: dict[str, str | None],
        **fields: Any,
    ) -> None:
        """After a restore installed a copy: drop every segment past
        keep_through with its key and LSN ranges (keys left with no sealed
        record are forgotten, the others' counts fall back), rewrite each
        kept record through fix, set (or, for None, remove) text settings,
        and record StoreRestored, in one transaction."""
        with self._write() as txn:
            segs, kseg = self._dbs["segments"], self._dbs["key_segments"]
            cur = txn.cursor(db=segs)
            dropped = []
            for k, v in list(cur):
                rec = SegmentRecord.from_json(v)
                if rec.segment_id > keep_through:
                    dropped.append(rec.segment_id)
                    txn.delete(k, db=segs)
                    if rec.state == "sealed" and rec.record_count:
                        txn.delete(_U64.pack(rec.last_lsn), db=self._dbs["lsn_segments"])
                else:
                    txn.put(k, fix(rec).to_json(), db=segs)
            ends: dict[int, int] = {}
            for k, v in list(txn.cursor(db=kseg)):
                key_id, _ = _KEYSEG.unpack(k)
                seg, first, count = _RANGE.unpack(v)
                if seg > keep_through:
                    txn.delete(k, db=kseg)
                    ends.setdefault(key_id, 0)
                else:
                    ends[key_id] = max(ends.get(key_id, 0), first + count)
            for key_id, end in ends.items():
                raw = txn.get(_U32.pack(key_id), db=self._dbs["key_names"])
                if raw is None:
                    continue
                # offsets retention retired stay taken: a key keeps counting from them
                end = max(end, int(txn.get(f"retired.{key_id}".encode(), db=self._dbs["meta"]) or b"0"))
                if end:
                    txn.put(_name_key(raw), _KEYVAL.pack(key_id, end) + raw, db=self._dbs["keys"])
                else:
                    txn.delete(_name_key(raw), db=self._dbs["keys"])
                    txn.delete(_U32.pack(key_id), db=self._dbs["key_names"])
            for name, value in texts.items():
                if value is None:
                    txn.delete(f"setting.{name}".encode(), db=self._dbs["meta"])
                else:
                    txn.put(f"setting.{name}".encode(), value.encode(), db=self._dbs["meta"])
            self._event(txn, "StoreRestored", kept_through=keep_through, dropped=dropped, **fields)

    def forget_segment(self, segment_id: int, reason: str) -> None:
        """Drop an active segment that never reached disk intact."""
        with self._write() as txn:
            txn.delete(_U64.pack(segment_id), db=self._dbs["segments"])
            self._event(txn, "SegmentDiscarded", segment=segment_id, reason=reason)

    # ----------------------------------------------------------- ledger

    def log_event(self, event: str, **fields: Any) -> int:
        """Append one event to the ledger; returns its sequence number."""
        with self._write() as txn:
            return self._event(txn, event, **fields)

    def _event(self, txn: lmdb.Transaction[bytes], event: str, **fields: Any) -> int:
        if event not in EVENT_TYPES:
            raise ValueError(f"unknown ledger event {event!r}")
        ledger = self._dbs["ledger"]
        cur = txn.cursor(db=ledger)
        seq = _U64.unpack(cur.key())[0] + 1 if cur.last() else 1
        body = {"seq": seq, "type": event, "time_ms": _now_ms(), **fields}
        txn.put(_U64.pack(seq), json.dumps(body, separators=(",", ":")).encode(), db=ledger)
        return seq

    def ledger(self, start: int = 1) -> Iterator[dict[str, Any]]:
        """Ledger events from sequence number start on."""
        seq = max(start, 0)
        while True:
            # a page at a time: a transaction never stays open across a
            # yield, where close() would wait for it
            with self._read("ledger") as txn:
                cur = txn.cursor()
                page = []
                if cur.set_range(_U64.pack(seq)):
                    for _, v in cur:
                        page.append(json.loads(v))
                        if len(page) == 256:
                            break
            yield from page
            if len(page) < 256:
                return
            seq = page[-1]["seq"] + 1

    def ledger_seq(self) -> int:
        """The last ledger sequence number (0 when empty): changes on every
        manifest write, so a follower can tell when to reload."""
        with self._read("ledger") as txn:
            cur = txn.cursor()
            return _U64.unpack(cur.key())[0] if cur.last() else 0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
