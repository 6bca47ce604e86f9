"""Point reads of a segment held only in Tier 2, without fetching it.

A Tier 1 object is seekable zstd: independent frames and a seek table at
its end. A point read fetches, with ranged GETs, the seek table (once per
segment), the frame holding the segment's footer and key entries (kept),
the frame holding the record's position, and the frame holding the record:
a few small requests instead of the whole object. Each frame is checked by
its own zstd checksum, the footer by its CRC, and the record by its CRC and
by its key and offset, so a damaged object raises CorruptionError and never
yields wrong bytes. Scans still hydrate whole segments (hydration.py).
"""

from __future__ import annotations

import os
import struct
import threading
from collections import OrderedDict
from typing import NamedTuple

from . import errors, layout
from .manifest import Manifest, SegmentRecord
from .segment import crc32c, crc_unmask
from .tiers.base import Tier2Backend, segment_object_name
from .tiers.seekable import SeekTable, read_range, read_seek_table

__all__ = ["ColdReads", "LOCAL"]

#: read() answers this when a local tier holds the segment: read it there.
LOCAL = object()

_FOOTER = struct.Struct("<QQQQIIIIII8s")  # index_pos index_bytes records last_lsn keys flags index_crc file_crc version crc magic
_FOOTER_BYTES = 64
_KEY_ENTRY = struct.Struct("<IIQQQQ")  # key_id reserved first_offset count def_pos pos_start
_RECORD_HEAD = struct.Struct("<IIIHHQQq")  # crc length key_id flags reserved offset lsn timestamp
_U64 = struct.Struct("<Q")
_BATCH_END = 0x1
_SEGMENTS_KEPT = 64  # seek tables and key entries kept, per segment
_BLOBS_KEPT = 32
_TAIL_BYTES = 512 << 10  # compressed: a 1 MiB frame of an index compresses well below this  # compressed ranges kept (footer and index frames are read again and again)


class _RemoteSource:
    """A Tier 2 object read with ranged GETs (a seekable.RangeSource),
    keeping the last few ranges it fetched."""

    def __init__(self, backend: Tier2Backend, name: str, size: int):
        self._backend = backend
        self.name = f"{backend.url}/{name}"
        self._object = name
        self._size = size
        self._blobs: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self._size - offset))
        with self._lock:
            # any range fetched before that holds this one serves it
            for (start, n), blob in self._blobs.items():
                if start <= offset and offset + length <= start + n:
                    self._blobs.move_to_end((start, n))
                    return blob[offset - start : offset - start + length]
        got = self._backend.get_range(self._object, offset, length) if length else b""
        with self._lock:
            self._blobs[(offset, length)] = got
            while len(self._blobs) > _BLOBS_KEPT:
                self._blobs.popitem(last=False)
        return got


class _Opened(NamedTuple):
    source: _RemoteSource
    table: SeekTable
    index_pos: int
    keys: dict[int, tuple[int, int, int]]  # key id -> (first_offset, count, pos_start)


class ColdReads:
    """Ranged point reads of segments only Tier 2 holds."""

    def __init__(self, path: str, manifest: Manifest, backend: Tier2Backend):
        self.path = path
        self._manifest = manifest
        self._backend = backend
        self._opened: OrderedDict[int, _Opened] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, segment_id: int, key_id: int, offset: int) -> object:
        """(lsn, timestamp_ms, value, batch_end) of the record, None when
        the segment does not hold it, or LOCAL when a local tier holds the
        segment (or Tier 2 does not): read it the ordinary way then."""
        if os.path.exists(layout.segment_path(self.path, segment_id)) or os.path.exists(
            layout.tier1_path(self.path, segment_id)
        ):
            return LOCAL
        rec = self._manifest.segment(segment_id)
        if rec is None or "t2" not in rec.tiers or not rec.t2_bytes:
            return LOCAL
        try:
            return self._read(rec, key_id, offset)
        except errors.CorruptionError:
            # a stale cache or a damaged fetch: once more from scratch,
            # then the error stands
            with self._lock:
                self._opened.pop(segment_id, None)
            return self._read(rec, key_id, offset)

    def _open(self, rec: SegmentRecord) -> _Opened:
        sid = rec.segment_id
        with self._lock:
            got = self._opened.get(sid)
            if got is not None:
                self._opened.move_to_end(sid)
                return got
        src = _RemoteSource(self._backend, segment_object_name(sid), rec.t2_bytes)
        # One request for the object's tail: the seek table, and the last
        # frame or two, which hold the footer and the key entries (and,
        # in a small segment, the whole index).
        src.read_at(max(0, rec.t2_bytes - _TAIL_BYTES), _TAIL_BYTES)
        table = read_seek_table(src)
        if table.original_bytes != rec.file_bytes:
            raise self._corrupt(rec, f"its object holds {table.original_bytes} bytes, the segment {rec.file_bytes}")
        raw = read_range(src, rec.file_bytes - _FOOTER_BYTES, _FOOTER_BYTES, table=table)
        ipos, _, nrec, _, nkeys, _, _, _, _, crc, magic = _FOOTER.unpack(raw)
        if magic != b"AOFLEND\0" or crc_unmask(crc) != crc32c(raw[:52]) or nrec != rec.record_count:
            raise self._corrupt(rec, "its footer is damaged")
        entries = read_range(src, ipos, nkeys * _KEY_ENTRY.size, table=table)
        keys = {}
        for i in range(nkeys):
            kid, _, first, count, _, start = _KEY_ENTRY.unpack_from(entries, i * _KEY_ENTRY.size)
            keys[kid] = (first, count, start)
        opened = _Opened(src, table, ipos, keys)
        with self._lock:
            self._opened[sid] = opened
            while len(self._opened) > _SEGMENTS_KEPT:
                self._opened.popitem(last=False)
        return opened

    def _read(self, rec: SegmentRecord, key_id: int, offset: int) -> tuple[int, int, bytes, bool] | None:
        o = self._open(rec)
        entry = o.keys.get(key_id)
        if entry is None or not entry[0] <= offset < entry[0] + entry[1]:
            return None
        first, _, start = entry
        at = o.index_pos + len(o.keys) * _KEY_ENTRY.size + 8 * (start + offset - first)
        (pos,) = _U64.unpack(read_range(o.source, at, 8, table=o.table))
        if not 0 < pos < o.index_pos:
            raise self._corrupt(rec, f"its index sends key id {key_id} offset {offset} to byte {pos}")
        head = read_range(o.source, pos, _RECORD_HEAD.size, table=o.table)
        crc, length, kid, flags, _, off, lsn, ts = _RECORD_HEAD.unpack(head)
        if kid != key_id or off != offset or pos + _RECORD_HEAD.size + length > o.index_pos:
            raise self._corrupt(rec, f"the record at byte {pos} is not key id {key_id} offset {offset}")
        whole = read_range(o.source, pos, _RECORD_HEAD.size + length, table=o.table)
        if crc_unmask(crc) != crc32c(whole[4:]):
            raise self._corrupt(rec, f"the record at byte {pos} fails its CRC")
        return lsn, ts, whole[_RECORD_HEAD.size :], bool(flags & _BATCH_END)

    def _corrupt(self, rec: SegmentRecord, what: str) -> errors.CorruptionError:
        name = f"{self._backend.url}/{segment_object_name(rec.segment_id)}"
        return errors.CorruptionError(
            f"{name}: the Tier 2 object of segment {rec.segment_id} is damaged: {what} "
            "(restore the object from another replica of the bucket)"
        )
