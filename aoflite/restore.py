"""Recreating a store from Tier 2 alone: ``aoflite.restore``.

What a restore holds. The newest manifest snapshot (``aoflite.snapshots``)
lists the segments Tier 2 had confirmed when it was taken; segments the
writer uploaded after it are in the bucket too, so the restore adopts them:
each object after the snapshot's last one, in id order, while the ids and
LSNs run on without a gap (a sealed segment not in Tier 2 ends the run: a
later one cannot be restored without LSNs jumping). Those few are
downloaded at once, to read their key ranges; every other segment is
hydrated lazily, on first read, by the ordinary Hydrator. Segments the
copy lists past the run (sealed but never uploaded, the active one) are
dropped with their key ranges.

Point in time. ``as_of_lsn`` keeps the batches whose records all have
LSNs at or below it; ``as_of_time_ms`` keeps the records up to the first
one stamped after that time (it looks for it only in segments sealed
after that time, so records given explicit timestamps out of order are
placed by their segment), then the same rule. A batch (and a transaction,
which is one batch) never crosses a segment (docs/format.md), so a cut
at a segment's end is whole; a cut inside a segment is made by rewriting
that one segment: its bytes up to the end of the last whole batch are
copied unchanged, so records keep their LSNs, offsets, timestamps and
flags, and the engine's own recovery and seal write the index and footer
of the shorter file. That segment becomes a local file of the restored
store (it is no longer the object Tier 2 holds under its id). The
alternative, a recorded cut LSN that every read honours, would add a
check to every read path of every store for the sake of restored ones;
rewriting costs one segment's download, once.

Which Tier 2 the restored store uses. A full restore records the source
as its ``tier2_url``: opened writable, it continues the store there (the
writer lease says whether another store still does). A point-in-time
restore records no ``tier2_url``: it is a copy of the past and must not
overwrite the source's later objects; open it with a ``tier2_url`` of its
own to tier it. Either way the source is recorded as an origin
(``tier2_origins``): when the store's own Tier 2 lacks a segment's object,
hydration fetches it from its origins, so a restored store can move to a
prefix of its own and still read its old segments.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
from typing import Any

import attrs

from . import errors, layout, recovery
from .backup import remove_partial
from .config import Config
from .coordinator import open_tier2
from .manifest import Manifest, SegmentRecord
from .segment import Segment
from .snapshots import Snapshot, read_pointer, restorable, unpack
from .tiers.base import ObjectInfo, Tier2Backend, segment_object_name
from .tiers.seekable import decompress_segment

__all__ = ["restore", "restore_snapshot", "with_origins", "OriginBackend"]

_HEADER = 64  # segment header bytes
_REC = struct.Struct("<IIIHHQQq")  # crc length key_id flags reserved offset lsn timestamp_ms
_BATCH_END, _CONTROL = 0x1, 0x2


def restore(
    tier2_url: str,
    path: str | os.PathLike[str],
    as_of_lsn: int | None = None,
    as_of_time_ms: int | None = None,
    **settings: Any,
) -> int:
    """Recreate at path (new, or an empty directory) the store whose Tier 2
    is tier2_url, from its newest manifest snapshot; returns the last LSN
    restored (0: an empty store). Segments are fetched on first read.

    as_of_lsn / as_of_time_ms (at most one) stop at that LSN or time, at a
    whole batch. settings are the flattened settings (tier2_endpoint and
    credentials for s3://). Bad input raises ValueError or TypeError, an
    occupied path FormatError, a prefix without a snapshot NotFound; a
    failed restore leaves nothing behind."""
    dest = _check_args(tier2_url, path, as_of_lsn, as_of_time_ms)
    config = Config().evolve(**settings) if settings else Config()
    backend = open_tier2(config, tier2_url)
    assert backend is not None
    snap = read_pointer(backend)
    if snap is None:
        raise errors.NotFound(
            f"{tier2_url}: no manifest snapshot here ({'manifest/latest'} is missing): a writer with this "
            "tier2_url snapshots its manifest every snapshot_every_seals uploads and at close"
        )
    return restore_snapshot(backend, snap, dest, config, as_of_lsn, as_of_time_ms)


def restore_snapshot(
    backend: Tier2Backend,
    snap: Snapshot,
    dest: str,
    config: Config,
    as_of_lsn: int | None = None,
    as_of_time_ms: int | None = None,
) -> int:
    """restore() from a snapshot whose pointer was read already, into dest
    (new or empty, checked by the caller); removes what it made on failure."""
    made = not os.path.exists(dest)
    try:
        return _restore(backend, snap, dest, config, as_of_lsn, as_of_time_ms)
    except BaseException:
        remove_partial(dest, made)
        raise


def _check_args(url: Any, path: Any, as_of_lsn: Any, as_of_time_ms: Any) -> str:
    if not isinstance(url, str):
        raise TypeError(f"tier2_url must be a str, not {type(url).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or path-like, not {type(path).__name__}")
    if as_of_lsn is not None and as_of_time_ms is not None:
        raise ValueError("give as_of_lsn or as_of_time_ms, not both")
    for name, v in (("as_of_lsn", as_of_lsn), ("as_of_time_ms", as_of_time_ms)):
        if v is None:
            continue
        if type(v) is not int:
            raise TypeError(f"{name} must be an int, not {type(v).__name__}")
        if v < 0:
            raise ValueError(f"{name} must be at least 0, got {v}")
    dest = os.path.abspath(os.fspath(path))
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise errors.FormatError(f"{dest}: exists and is not an empty directory (restore into a new path)")
    return dest


def _restore(
    backend: Tier2Backend, snap: Snapshot, dest: str, config: Config, as_of_lsn: int | None, as_of_time_ms: int | None
) -> int:
    work = os.path.join(dest, "restore.tmp")
    os.makedirs(work)
    os.makedirs(os.path.join(dest, "segments"))
    mdir = layout.manifest_dir(dest)
    os.makedirs(mdir)
    packed = os.path.join(work, "snapshot.zst")
    info = backend.get(snap.name, packed)
    if (info.size, info.checksum) != (snap.size, snap.checksum):
        raise errors.CorruptionError(
            f"{backend.url}/{snap.name}: the snapshot object is {info.size} bytes with SHA-256 {info.checksum}, "
            f"its pointer says {snap.size} bytes with {snap.checksum}"
        )
    unpack(packed, os.path.join(mdir, "data.mdb"))
    os.unlink(packed)
    manifest = Manifest(mdir)
    try:
        store_id = int(manifest.get_meta("store_id") or 0)
        if store_id != snap.store_id:
            raise errors.CorruptionError(
                f"{backend.url}/{snap.name}: the snapshot is of store {store_id:016x}, its pointer names "
                f"{snap.store_id:016x}"
            )
        pit = as_of_lsn is not None or as_of_time_ms is not None
        held = restorable(manifest.segments())
        last = held[-1].segment_id if held else 0
        origins = _origins_after(manifest.text_setting("tier2_origins"), backend.url)
        manifest.cut_segments(
            last,
            lambda r: attrs.evolve(r, tiers=["t2"]),
            {"tier2_url": None if pit else backend.url, "tier2_origins": json.dumps(origins)},
            source=backend.url,
            snapshot=snap.name,
            as_of_lsn=as_of_lsn,
            as_of_time_ms=as_of_time_ms,
        )
        adopted = _adopt_later(backend, manifest, dest, work, store_id, as_of_lsn)
        held = [r for r in manifest.segments() if r.state == "sealed"]
        last_lsn = held[-1].last_lsn if held else 0
        if as_of_time_ms is not None:
            as_of_lsn = _lsn_at_time(backend, held, dest, work, as_of_time_ms)
        if as_of_lsn is not None and as_of_lsn < last_lsn:
            last_lsn = _cut(backend, manifest, held, dest, work, as_of_lsn, config.segment.segment_bytes)
        manifest.log_event("StoreRestored", last_lsn=last_lsn, adopted=adopted)
    finally:
        manifest.close()
    shutil.rmtree(work)
    # the marker last: until it is there, the directory is not a store
    layout.create_layout(dest, store_id)
    for d in (os.path.join(dest, "segments"), mdir):
        layout.fsync_dir(d)
    return last_lsn


def _origins_after(recorded: str | None, url: str) -> list[str]:
    """The source first, then the origins the source itself had."""
    before = json.loads(recorded) if recorded else []
    return [url] + [u for u in before if isinstance(u, str) and u != url]


def _fetch(backend: Tier2Backend, segment_id: int, dest: str, work: str) -> ObjectInfo:
    """Download segment_id's object and write the segment file at dest."""
    tmp = os.path.join(work, f"{segment_id}.zst")
    info = backend.get(segment_object_name(segment_id), tmp)
    try:
        decompress_segment(tmp, dest)
    finally:
        os.unlink(tmp)
    return info


def _adopt_later(
    backend: Tier2Backend, manifest: Manifest, dest: str, work: str, store_id: int, as_of_lsn: int | None
) -> list[int]:
    """Segments uploaded after the snapshot: each object that continues
    the restored run (next id, next LSN) is downloaded and recorded."""
    present = set(backend.list("segments/"))
    tail = manifest.last_segment()
    sid, next_lsn = (tail.segment_id, tail.last_lsn + 1) if tail is not None else (0, 1)
    adopted = []
    while segment_object_name(sid + 1) in present and (as_of_lsn is None or next_lsn <= as_of_lsn):
        sid += 1
        path = layout.segment_path(dest, sid)
        info = _fetch(backend, sid, path, work)
        seg, _ = Segment.open(path)
        si = seg.info()
        if si.store_id != store_id or si.segment_id != sid or not si.sealed or si.first_lsn != next_lsn:
            # not the continuation of this store's run (another store's
            # object, or one left from an older history): the run ends here
            del seg
            os.unlink(path)
            break
        recovery.commit_seal(manifest, seg, si, manifest.key_name, manifest.next_key_id())
        manifest.record_tier(
            sid, "SegmentAdopted", add=("t2",), remove=("t0",),
            facts={"t2_bytes": info.size, "t2_checksum": info.checksum}, source="t2",
        )
        adopted.append(sid)
        next_lsn = si.last_lsn + 1 if si.record_count else next_lsn
    return adopted


def _local(backend: Tier2Backend, rec: SegmentRecord, dest: str, work: str) -> Segment:
    path = layout.segment_path(dest, rec.segment_id)
    if not os.path.exists(path):
        _fetch(backend, rec.segment_id, path, work)
    seg, _ = Segment.open(path)
    return seg


def _records(seg: Segment) -> list[tuple[int, int, int, int]]:
    """(end position, flags, lsn, timestamp_ms) of every record, in order."""
    mem, end = seg.memory(), seg.info().records_end
    out, pos = [], _HEADER
    while pos < end:
        _, length, _, flags, _, _, lsn, ts = _REC.unpack_from(mem, pos)
        pos += _REC.size + length
        out.append((pos, flags, lsn, ts))
    return out


def _lsn_at_time(backend: Tier2Backend, held: list[SegmentRecord], dest: str, work: str, t_ms: int) -> int:
    """The LSN before the first record stamped after t_ms (every record,
    when none is)."""
    for rec in held:
        if rec.sealed_ms <= t_ms or not rec.record_count:
            continue  # sealed by then: every record in it was appended by then
        seg = _local(backend, rec, dest, work)
        for _, flags, lsn, ts in _records(seg):
            if not flags & _CONTROL and ts > t_ms:
                return lsn - 1
    return held[-1].last_lsn if held else 0


def _cut(
    backend: Tier2Backend, manifest: Manifest, held: list[SegmentRecord], dest: str, work: str, lsn: int,
    capacity: int,
) -> int:
    """Keep the whole batches at or below lsn: drop later segments, rewrite
    the one the cut falls in. Returns the last LSN kept."""
    boundary = next(r for r in held if r.last_lsn > lsn)
    before = [r for r in held if r.segment_id < boundary.segment_id]
    keep_last = before[-1].last_lsn if before else 0
    seg = _local(backend, boundary, dest, work)
    end = _HEADER
    for pos, flags, rec_lsn, _ in _records(seg):
        if not flags & _CONTROL and rec_lsn > lsn:
            break
        if flags & _BATCH_END:
            end = pos
    path = layout.segment_path(dest, boundary.segment_id)
    data = bytes(seg.memory()[:end])
    del seg
    os.unlink(path)
    manifest.cut_segments(boundary.segment_id - 1, lambda r: r, {}, cut_lsn=lsn)
    if end == _HEADER:
        return keep_last  # no whole batch of it is at or below lsn
    tmp = os.path.join(work, "boundary.seg")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    # the engine's recovery takes the copied records as an unsealed tail;
    # its seal writes the index and footer of the shorter file
    short, _ = Segment.open(tmp, write=True, capacity=max(capacity, len(data)))
    info = short.seal()
    del short
    os.replace(tmp, path)
    short, _ = Segment.open(path)
    recovery.commit_seal(manifest, short, short.info(), manifest.key_name, manifest.next_key_id())
    return info.last_lsn


class OriginBackend:
    """A store's own Tier 2 (or none) with the Tier 2s it was restored
    from behind it: reads that find no object in the first try the others
    in order; writes go to the store's own Tier 2 only."""

    def __init__(self, own: Tier2Backend | None, origins: list[Tier2Backend]):
        self._own = own
        self._origins = origins
        self.url = own.url if own is not None else origins[0].url

    def _readers(self) -> list[Tier2Backend]:
        return ([self._own] if self._own is not None else []) + self._origins

    def _first(self, op: str, name: str, call: Any) -> Any:
        missing: errors.Tier2NotFound | None = None
        for b in self._readers():
            try:
                return call(b)
            except errors.Tier2NotFound as e:
                missing = missing or e
        assert missing is not None
        raise missing

    def get(self, name: str, dest: str | os.PathLike[str]) -> ObjectInfo:
        info: ObjectInfo = self._first("get", name, lambda b: b.get(name, dest))
        return info

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        got: bytes = self._first("get_range", name, lambda b: b.get_range(name, offset, length))
        return got

    def head(self, name: str) -> ObjectInfo:
        info: ObjectInfo = self._first("head", name, lambda b: b.head(name))
        return info

    def _writer(self) -> Tier2Backend:
        if self._own is None:
            raise errors.ReadOnlyError(f"{self.url}: the store's origin Tier 2 is read-only to it")
        return self._own

    def put(self, name: str, path: str | os.PathLike[str], *, records: int) -> ObjectInfo:
        return self._writer().put(name, path, records=records)

    def delete(self, name: str) -> None:
        self._writer().delete(name)

    def list(self, prefix: str = "") -> list[str]:
        return self._writer().list(prefix)


def with_origins(backend: Tier2Backend | None, manifest: Manifest, config: Config) -> Tier2Backend | None:
    """backend, or backend backed by the Tier 2s the store was restored
    from (the manifest's tier2_origins), for hydration."""
    raw = manifest.text_setting("tier2_origins")
    if not raw:
        return backend
    own = backend.url if backend is not None else None
    urls = [u for u in json.loads(raw) if isinstance(u, str) and u != own]
    origins = []
    for u in urls:
        with contextlib.suppress(errors.Error, ValueError):
            b = open_tier2(config, u)
            if b is not None:
                origins.append(b)
    return OriginBackend(backend, origins) if origins else backend
