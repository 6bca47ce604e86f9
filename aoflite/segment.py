"""The binding's only user: wraps the C segment engine (native/aoflite.h).

Arguments are validated before they reach C, every status is checked as
soon as it comes back, and C failures become aoflite exceptions carrying
the file and byte position the engine reported. Everything else in aoflite
talks to this module, never to ``lib``.
"""

from __future__ import annotations

import functools
from array import array
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import attrs

from . import errors
from ._native import ffi, lib

__all__ = [
    "Segment",
    "Writer",
    "Feed",
    "ScanReport",
    "SegmentInfo",
    "KeyRange",
    "crc32c",
    "crc32c_hardware",
    "force_software_crc32c",
    "FORMAT_VERSION",
    "HEADER_BYTES",
    "RECORD_HEADER_BYTES",
    "FOOTER_BYTES",
    "MAX_KEY_BYTES",
    "MAX_RECORD_BYTES",
]

FORMAT_VERSION: int = lib.AOF_FORMAT_VERSION
HEADER_BYTES: int = lib.AOF_HEADER_BYTES
RECORD_HEADER_BYTES: int = lib.AOF_RECORD_HEADER_BYTES
FOOTER_BYTES: int = lib.AOF_FOOTER_BYTES
MAX_KEY_BYTES: int = lib.AOF_MAX_KEY_BYTES
MAX_RECORD_BYTES: int = lib.AOF_MAX_RECORD_BYTES

COLS = lib.AOF_COLS
STOP_REASONS = {
    lib.AOF_STOP_END: "end",
    lib.AOF_STOP_TORN: "torn",
    lib.AOF_STOP_CHECKSUM: "checksum",
    lib.AOF_STOP_BADHEADER: "bad header",
    lib.AOF_STOP_SEQUENCE: "out of sequence",
    lib.AOF_STOP_SEALED: "sealed",
}


def crc32c(data: bytes | memoryview, crc: int = 0) -> int:
    """CRC32C of data (unmasked), continuing from crc."""
    buf = data if type(data) is bytes else ffi.from_buffer(data)
    value: int = lib.aof_crc32c(crc, buf, len(data))
    return value


def crc_unmask(masked: int) -> int:
    """A CRC as the format stores it (masked, aof_format.h) back to the CRC."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def crc32c_hardware() -> bool:
    """True while the CPU's CRC32C instruction is in use."""
    return bool(lib.aof_crc32c_hardware())


def force_software_crc32c(force: bool) -> None:
    """Switch CRC32C to the portable table implementation (tests prove both)."""
    lib.aof_crc32c_force_software(1 if force else 0)


#: Power-loss tests set AOFLITE_SYNC_LOG to a file (or call
#: enable_sync_log); every completed sync, in C and in Python, then appends
#: a line naming what it made durable. See docs/testing.md.
SYNC_LOG: str | None = None


def enable_sync_log(path: str | None) -> None:
    """Log every completed sync to path (None stops logging)."""
    global SYNC_LOG
    rc = lib.aof_synclog_open(os.fsencode(path) if path else ffi.NULL)
    if rc:
        _raise(rc, path, "opening the sync log")
    SYNC_LOG = path


def sync_log_line(line: str) -> None:
    """Append a line for a sync done in Python (a no-op unless logging)."""
    if SYNC_LOG:
        with open(SYNC_LOG, "a") as f:
            f.write(line + "\n")


def arm_native_failpoint(name: str, skip: int, kill: bool) -> None:
    """Arm a C failpoint (see aoflite.failpoints)."""
    lib.aof_failpoint_arm(name.encode(), skip, 1 if kill else 0)


def native_failpoint_names() -> list[str]:
    """Names of the failpoints in the C engine."""
    names: bytes = ffi.string(lib.aof_failpoint_names())
    return names.decode().split()


def native_pause_names() -> list[str]:
    """Names of the C points that only race tests pause at."""
    names: bytes = ffi.string(lib.aof_pause_names())
    return names.decode().split()


def native_io_sites() -> list[str]:
    """Kinds of system call the C engine can be made to fail."""
    names: bytes = ffi.string(lib.aof_iofail_names())
    return names.decode().split()


def arm_native_io(site: str | None, nth: int, times: int, err: int) -> None:
    """Count C system calls from now on; fail the nth of site (see aoflite.failpoints)."""
    rc = lib.aof_iofail_arm(site.encode() if site else ffi.NULL, nth, times, err)
    if rc:
        _raise(rc, None, "arming an I/O failure")


def reset_native_io() -> None:
    """Stop counting and failing C system calls."""
    lib.aof_iofail_reset()


def native_io_count(site: str) -> int:
    """How often C reached site since the last arm_native_io."""
    return int(lib.aof_iofail_count(site.encode()))


def arm_native_pause(name: str) -> None:
    """Block the next thread that reaches the C point name."""
    rc = lib.aof_pause_arm(name.encode())
    if rc:
        _raise(rc, None, f"arming pause point {name}")


def wait_native_pause(name: str, timeout: float) -> bool:
    """True once a thread is blocked at name (within timeout seconds)."""
    return bool(lib.aof_pause_wait(name.encode(), max(0, int(timeout * 1000))) == 0)


def release_native_pause(name: str | None) -> None:
    """Let every thread blocked at name (None: at any point) go on."""
    lib.aof_pause_release(name.encode() if name else ffi.NULL)


def _raise(rc: int, path: str | None = None, what: str = "") -> None:
    """Turn an AOF_E* status into the matching aoflite exception."""
    detail = ffi.new("aof_error *")
    lib.aof_last_error(detail)
    msg = ffi.string(detail.msg).decode("utf-8", "replace") if detail.code == rc else ""
    if not msg:
        msg = ffi.string(lib.aof_strerror(rc)).decode()
    if what:
        msg = f"{what}: {msg}"
    pos = int(detail.pos) if detail.code == rc else None
    if rc == lib.AOF_ECORRUPT:
        raise errors.CorruptionError(
            f"{msg} (the segment is damaged: restore it from a replica; Store.verify() checks them all)",
            path=path,
            position=pos,
        )
    if rc == lib.AOF_EIO:
        raise errors.StorageError(detail.sys_errno, f"{msg} (check free space and the device)")
    if rc == lib.AOF_EBROKEN:
        raise errors.StorageError(detail.sys_errno, msg)
    raise _EXCEPTIONS.get(rc, errors.Error)(msg)


_EXCEPTIONS: dict[int, type[Exception]] = {
    lib.AOF_EFORMAT: errors.FormatError,
    lib.AOF_EVERSION: errors.FormatError,
    lib.AOF_ENOTFOUND: errors.NotFound,
    lib.AOF_ETOOBIG: errors.RecordTooLarge,
    lib.AOF_ECLOSED: errors.ClosedError,
    lib.AOF_EREADONLY: errors.ReadOnlyError,
    lib.AOF_ETXN: errors.TransactionError,
    lib.AOF_EINVAL: ValueError,
    lib.AOF_ENOMEM: MemoryError,
}


class ScanReport(NamedTuple):
    """What a recovery or follow scan found: records end at valid_end."""

    valid_end: int
    stop_pos: int
    dropped_bytes: int
    dropped_records: int
    reason: str


class SegmentInfo(NamedTuple):
    """A segment's header and footer facts."""

    store_id: int
    segment_id: int
    first_lsn: int
    created_ms: int
    version: int
    sealed: bool
    records_end: int
    file_bytes: int
    record_count: int
    last_lsn: int
    key_count: int
    file_crc: int


#: What read_range returns: offsets, lsns, timestamps, values, batch ends.
RowColumns = tuple[list[int], list[int], list[int], list[bytes], list[bool]]


class KeyRange(NamedTuple):
    """One key's records inside one segment."""

    key_id: int
    first_offset: int
    # named as in the C struct; shadowing tuple.count is harmless here (no
    # caller counts a KeyRange's items), but it is an incompatible override
    count: int  # type: ignore[assignment]


def _report(rep: Any) -> ScanReport:
    return ScanReport(
        int(rep.valid_end),
        int(rep.stop_pos),
        int(rep.dropped_bytes),
        int(rep.dropped_records),
        STOP_REASONS.get(rep.reason, str(rep.reason)),
    )


def _path(path: str | os.PathLike[str]) -> bytes:
    return os.fsencode(path)


@attrs.define(eq=False)
class _Columns:
    """A reusable output block for reads: AOF_COLS columns of cap values."""

    cap: int
    arr: Any  # a cffi uint64_t[]: pointer arithmetic picks a column

    @classmethod
    def new(cls, cap: int) -> _Columns:
        return cls(cap, ffi.new("uint64_t[]", COLS * cap))

    def rows(self, n: int) -> list[list[int]]:
        """The first n values of each column, as lists (only those: a
        tail loop's look often finds one record in a block of hundreds)."""
        arr, cap = self.arr, self.cap
        return [ffi.unpack(arr + c * cap, n) for c in range(COLS)]


class Feed:
    """The store's feed file, shared by the writer and its followers (see
    native/feed.c): the writer moves its change generation around every
    rewrite of uncommitted bytes, followers check it."""

    __slots__ = ("path", "_ptr")

    def __init__(self, path: str, *, writable: bool):
        out = ffi.new("aof_feed **")
        rc = lib.aof_feed_open(_path(path), 1 if writable else 0, out)
        if rc:
            _raise(rc, path, "opening the feed")
        self.path = path
        self._ptr = ffi.gc(out[0], lib.aof_feed_free)

    def generation(self) -> int:
        """The change generation: odd while a rewrite is under way."""
        return int(lib.aof_feed_generation(self._ptr))

    def wait(self, seen: int, timeout_ms: int) -> int | None:
        """Sleep until the wake word differs from seen (the writer bumps it
        at every batch end) or timeout_ms pass; returns the word. Take seen
        from the previous call before looking for records. None, at once,
        when this process cannot sleep on the feed (no write access to the
        file): poll instead."""
        out = ffi.new("uint32_t *")
        rc = lib.aof_feed_wait(self._ptr, seen & 0xFFFFFFFF, timeout_ms, out)
        if rc == lib.AOF_EREADONLY:
            return None
        if rc not in (lib.AOF_OK, lib.AOF_ETIMEDOUT):
            _raise(rc, self.path, "waiting on the feed")
        return int(out[0])

    def interrupt(self) -> None:
        """Move the wake word and wake every sleeper (a closing handle's
        own tail loops end; other followers look once and sleep again)."""
        rc = lib.aof_feed_interrupt(self._ptr)
        if rc:
            _raise(rc, self.path, "waking the feed's sleepers")

    def sleeping(self) -> bool:
        """Whether some follower said it sleeps and no batch woke it since
        (a hint: one killed in its sleep leaves it set until the next batch)."""
        return bool(lib.aof_feed_sleeping(self._ptr))


def _feed_ptr(feed: Feed | None) -> Any:
    return feed._ptr if feed is not None else ffi.NULL


class Segment:
    """One segment file. Sealed segments are read-only maps; the active one
    is appended to through a Writer; a read-only handle follows an unsealed
    one with refresh()."""

    __slots__ = ("path", "_ptr", "_buf", "_tls", "_feed", "__weakref__")

    def __init__(self, ptr: Any, path: str, feed: Feed | None = None):
        self.path = path
        self._feed = feed  # the C segment points at it: keep it alive as long
        self._ptr = ffi.gc(ptr, lib.aof_seg_free)
        base = ffi.new("char **")
        size = ffi.new("uint64_t *")
        lib.aof_seg_memory(self._ptr, base, size)
        # a zero-copy view of the segment's memory; values are sliced from it
        self._buf = ffi.buffer(base[0], size[0]) if size[0] else b""
        self._tls = threading.local()

    @classmethod
    def create(
        cls, path: str, *, store_id: int, segment_id: int, first_lsn: int, capacity: int
    ) -> Segment:
        """Create and sync a new, empty segment file, preallocated to its first
        growth step (it grows with use up to capacity)."""
        out = ffi.new("aof_seg **")
        rc = lib.aof_seg_create(_path(path), store_id, segment_id, first_lsn, capacity, out)
        if rc:
            _raise(rc, path, "creating a segment")
        return cls(out[0], path)

    @classmethod
    def open(
        cls, path: str, *, write: bool = False, capacity: int = 0, feed: Feed | None = None
    ) -> tuple[Segment, ScanReport]:
        """Open a segment; write=True recovers an unsealed tail for appending.
        feed is the store's: a follower checks it, a writer bumps it."""
        out = ffi.new("aof_seg **")
        rep = ffi.new("aof_scan_report *")
        mode = lib.AOF_OPEN_WRITE if write else lib.AOF_OPEN_READ
        rc = lib.aof_seg_open(_path(path), mode, capacity, _feed_ptr(feed), out, rep)
        if rc:
            _raise(rc, path, "opening a segment")
        return cls(out[0], path, feed), _report(rep)

    @staticmethod
    def check_bytes(data: bytes) -> tuple[SegmentInfo, ScanReport]:
        """Parse and check a whole segment image held in memory."""
        info = ffi.new("aof_seg_info *")
        rep = ffi.new("aof_scan_report *")
        rc = lib.aof_seg_check_buffer(data, len(data), info, rep)
        if rc:
            _raise(rc, None, "checking segment bytes")
        return _info(info), _report(rep)

    def info(self) -> SegmentInfo:
        """Header and footer facts, and the committed extent."""
        out = ffi.new("aof_seg_info *")
        lib.aof_seg_info_get(self._ptr, out)
        return _info(out)

    def prefaulted(self) -> int:
        """Writer: the map is prefaulted up to this byte (a diagnostic)."""
        out = ffi.new("aof_seg_info *")
        lib.aof_seg_info_get(self._ptr, out)
        return int(out.prefaulted)

    def refresh(self) -> ScanReport:
        """Follower: take in what the writer committed since the last call."""
        rep = ffi.new("aof_scan_report *")
        rc = lib.aof_seg_refresh(self._ptr, rep)
        if rc:
            _raise(rc, self.path, "following a segment")
        return _report(rep)

    def seal(self) -> SegmentInfo:
        """Write the index and footer and sync; the segment becomes read-only."""
        rc = lib.aof_seg_seal(self._ptr)
        if rc:
            _raise(rc, self.path, "sealing a segment")
        return self.info()

    def verify(self) -> None:
        """Check the file CRC, every record, and the index of a sealed segment."""
        rc = lib.aof_seg_verify(self._ptr)
        if rc:
            _raise(rc, self.path, "verifying a segment")

    def memory(self) -> memoryview:
        """The segment's bytes (sealed: exactly the file)."""
        return memoryview(self._buf)

    def keys(self) -> list[KeyRange]:
        """Every key with records in this segment (visible to this thread)."""
        n = ffi.new("size_t *")
        lib.aof_seg_keys(self._ptr, ffi.NULL, 0, n)
        cap = n[0] + 16
        out = ffi.new("aof_key_range[]", cap)
        lib.aof_seg_keys(self._ptr, out, cap, n)
        return [KeyRange(out[i].key_id, out[i].first_offset, out[i].count) for i in range(min(n[0], cap))]

    def key_range(self, key_id: int) -> KeyRange | None:
        """The key's offsets in this segment, or None."""
        out = self._tls.__dict__.get("range")
        if out is None:
            out = self._tls.range = ffi.new("aof_key_range *")
        if lib.aof_seg_key_range(self._ptr, key_id, out):
            return None
        return KeyRange(key_id, out.first_offset, out.count)

    def key_name(self, key_id: int) -> str:
        """The name the segment's key definition record gives key_id."""
        buf = ffi.new("char[]", MAX_KEY_BYTES)
        n = ffi.new("size_t *")
        rc = lib.aof_seg_key_name(self._ptr, key_id, buf, MAX_KEY_BYTES, n)
        if rc:
            _raise(rc, self.path, f"reading key id {key_id} in {self.path}")
        name: bytes = ffi.unpack(buf, n[0])
        return name.decode("utf-8")

    def read(self, key_id: int, offset: int) -> tuple[int, int, bytes, bool] | None:
        """(lsn, timestamp_ms, value, batch_end) of one record, or None if
        not here."""
        out = self._tls.__dict__.get("one")
        if out is None:
            out = self._tls.one = (ffi.new("uint64_t[]", COLS), ffi.new("size_t *"))
        rc = lib.aof_seg_read_range(self._ptr, key_id, offset, out[0], 1, out[1])
        if rc:
            if rc == lib.AOF_ENOTFOUND:
                return None
            _raise(rc, self.path, f"reading key id {key_id} offset {offset}")
        _, lsn, ts, _, vs, ve, end = ffi.unpack(out[0], COLS)
        return lsn, ts, self._buf[vs:ve], end == 1

    def read_range(self, key_id: int, offset: int, cap: int) -> RowColumns:
        """Columns (offsets, lsns, timestamps, values, batch ends) of up to
        cap records of key_id from offset on; empty when offset is not here."""
        cols = _Columns.new(cap)
        n = ffi.new("size_t *")
        rc = lib.aof_seg_read_range(self._ptr, key_id, offset, cols.arr, cap, n)
        if rc and rc != lib.AOF_ENOTFOUND:
            _raise(rc, self.path, f"reading key id {key_id} from offset {offset}")
        return self._columns(cols, n[0])

    def scan(
        self, pos: int, min_lsn: int, cap: int
    ) -> tuple[int, list[int], list[int], list[int], list[int], list[bytes], list[bool]]:
        """Data records in file order from byte pos: (next_pos, key_ids,
        offsets, lsns, timestamps, values, batch ends)."""
        cols = _Columns.new(cap)
        n = ffi.new("size_t *")
        p = ffi.new("uint64_t *", pos)
        rc = lib.aof_seg_scan(self._ptr, p, min_lsn, cols.arr, cap, n)
        if rc:
            _raise(rc, self.path, f"scanning {self.path}")
        offs, lsns, tss, vals, ends = self._columns(cols, n[0])
        kids: list[int] = ffi.unpack(cols.arr + lib.AOF_COL_KEY_ID * cap, n[0])
        return p[0], kids, offs, lsns, tss, vals, ends

    def _columns(self, cols: _Columns, n: int) -> RowColumns:
        if not n:
            return [], [], [], [], []
        offs, lsns, tss, _, vs, ve, ends = cols.rows(n)
        vals = list(map(self._buf.__getitem__, map(slice, vs, ve)))
        return offs, lsns, tss, vals, list(map(bool, ends))


def _info(i: Any) -> SegmentInfo:
    return SegmentInfo(
        int(i.store_id),
        int(i.segment_id),
        int(i.first_lsn),
        int(i.created_ms),
        int(i.version),
        bool(i.sealed),
        int(i.records_end),
        int(i.file_bytes),
        int(i.record_count),
        int(i.last_lsn),
        int(i.key_count),
        int(i.file_crc),
    )


class Writer:
    """Appends to the active segment; see aof_writer_* in native/aoflite.h.

    ``append_fn`` and ``sync_fn`` are the raw C calls with the writer bound,
    for the store's hot path: they return an offset (>= 0) or an AOF_E*
    code, and the caller hands any negative result to ``fail``.
    """

    __slots__ = ("_ptr", "_feed", "segment", "append_fn", "sync_fn")

    def __init__(self, next_lsn: int, max_record_bytes: int, flush_bytes: int, feed: Feed | None = None):
        out = ffi.new("aof_writer **")
        rc = lib.aof_writer_new(next_lsn, max_record_bytes, flush_bytes, _feed_ptr(feed), out)
        if rc:
            _raise(rc, None, "creating the writer")
        self._feed = feed  # the C writer points at it: keep it alive as long
        self._ptr = ffi.gc(out[0], lib.aof_writer_free)
        self.segment: Segment | None = None
        # (key_id, value, len(value), timestamp_ms or -1) -> offset or AOF_E*
        self.append_fn: Callable[[int, bytes, int, int], int] = functools.partial(lib.aof_writer_append, self._ptr)
        self.sync_fn: Callable[[], int] = functools.partial(lib.aof_writer_sync, self._ptr, ffi.NULL)

    AOF_EFULL: int = lib.AOF_EFULL
    AOF_ENOSEG: int = lib.AOF_ENOSEG
    AOF_ENOKEY: int = lib.AOF_ENOKEY
    AOF_ECLOSED: int = lib.AOF_ECLOSED
    AOF_EREADONLY: int = lib.AOF_EREADONLY
    AOF_EBROKEN: int = lib.AOF_EBROKEN
    AOF_ETIMEDOUT: int = lib.AOF_ETIMEDOUT

    @staticmethod
    def fail(rc: int, what: str) -> None:
        """Raise the exception for a negative status from append_fn/sync_fn."""
        _raise(rc, None, what)

    def set_key(self, key_id: int, name: bytes, next_offset: int) -> None:
        """Register a key with its name and the offset its next record gets."""
        rc = lib.aof_writer_set_key(self._ptr, key_id, name, len(name), next_offset)
        if rc:
            _raise(rc, None, f"registering key {name!r}")

    def attach(self, seg: Segment) -> None:
        """Make seg the active segment."""
        rc = lib.aof_writer_attach(self._ptr, seg._ptr)
        if rc:
            _raise(rc, seg.path, "activating a segment")
        self.segment = seg

    def detach(self) -> Segment | None:
        """Stop appending to the active segment (synced) and return it."""
        rc = lib.aof_writer_detach(self._ptr)
        if rc:
            _raise(rc, None, "rolling the active segment")
        seg, self.segment = self.segment, None
        return seg

    def append_many(self, key_id: int, buf: bytes, lens: Any, n: int, timestamp_ms: int) -> int:
        """Append n records laid back to back in buf (lens: from lens_array);
        returns the first offset."""
        r: int = lib.aof_writer_append_many(self._ptr, key_id, buf, lens, n, timestamp_ms)
        return r

    def begin_rc(self) -> int:
        """Open a transaction owned by the calling thread; returns the raw
        status (AOF_EFULL: roll first; AOF_ENOSEG: a roll is under way)."""
        rc: int = lib.aof_writer_begin(self._ptr)
        return rc

    def end(self, commit: bool) -> None:
        """Commit or roll back the calling thread's transaction."""
        rc = lib.aof_writer_end(self._ptr, 1 if commit else 0)
        if rc:
            _raise(rc, None, "committing a transaction" if commit else "rolling back a transaction")

    def sync(self) -> int:
        """Make everything appended durable; returns the durable LSN."""
        out = ffi.new("uint64_t *")
        rc = lib.aof_writer_sync(self._ptr, out)
        if rc:
            _raise(rc, None, "syncing")
        return int(out[0])

    def wait_dirty(self, timeout_ms: int) -> int:
        """Background flusher: 0 when there is something to sync, else a code."""
        return int(lib.aof_writer_wait_dirty(self._ptr, timeout_ms))

    def wait_commit(self, gen: int, timeout_ms: int) -> int:
        """Tailers: wait for a commit after generation gen; returns the new one."""
        out = ffi.new("uint64_t *")
        lib.aof_writer_wait_commit(self._ptr, gen, timeout_ms, out)
        return int(out[0])

    def next_offset(self, key_id: int) -> int:
        """The key's next offset (another thread's open transaction hidden)."""
        out = ffi.new("uint64_t *")
        rc = lib.aof_writer_next_offset(self._ptr, key_id, out)
        if rc:
            _raise(rc, None, f"key id {key_id}")
        return int(out[0])

    def next_lsn(self) -> int:
        """The LSN the next data record gets."""
        return int(lib.aof_writer_next_lsn(self._ptr))

    def unsynced_bytes(self) -> int:
        """Bytes appended but not yet on stable storage."""
        return int(lib.aof_writer_unsynced_bytes(self._ptr))

    def broken_error(self) -> errors.StorageError | None:
        """The error every call now gets, once the writer is broken."""
        if not lib.aof_writer_broken(self._ptr):
            return None
        try:
            _raise(lib.AOF_EBROKEN)
        except errors.StorageError as e:
            return e
        return None

    def close(self) -> None:
        """Sync and refuse further appends (refused even if the sync fails)."""
        rc = lib.aof_writer_close(self._ptr)
        if rc:
            _raise(rc, None, "closing the writer")

    @staticmethod
    def lens_array(lengths: Iterable[int]) -> Any:
        """A C view of record lengths for append_many (an array('Q') is
        viewed in place; anything else is copied)."""
        if isinstance(lengths, array) and lengths.typecode == "Q":
            return ffi.from_buffer("uint64_t[]", lengths)
        return ffi.new("uint64_t[]", list(lengths))

    @staticmethod
    def from_buffer(value: bytes | bytearray | memoryview) -> Any:
        """A zero-copy C view of any bytes-like object."""
        return ffi.from_buffer(value)


if os.environ.get("AOFLITE_SYNC_LOG"):
    enable_sync_log(os.environ["AOFLITE_SYNC_LOG"])
