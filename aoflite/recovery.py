"""Bringing the manifest and the segment files into agreement when the
writer opens a store, and recording a sealed segment.

Only the active segment and files newer than anything the manifest knows
are opened here: sealed segments are trusted to the manifest, so open time
does not grow with history. The cases, after a crash at any point:

- the manifest's active segment is sealed on disk (the crash fell between
  the seal's fsync and the manifest commit): record the seal;
- a segment file newer than the manifest knows (the crash fell between
  creating it and the manifest commit): adopt it, or, when its header never
  reached the disk, delete it: it cannot hold an acknowledged record, since
  the header is synced before the first append;
- an unsealed segment that is not the newest (a crash during a roll after
  the next file was created): recover its tail and seal it;
- the newest unsealed segment: recover its tail (keep whole batches only,
  truncate the rest) and make it active.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from . import errors, layout
from .failpoints import hit
from .manifest import Manifest, SegmentRecord
from .segment import Feed, Segment, SegmentInfo

__all__ = ["open_active", "commit_seal", "new_segment", "discard_new_segment"]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def check_identity(seg: Segment, info: SegmentInfo, store_id: int, segment_id: int) -> None:
    """Refuse a segment file from another store or under the wrong name."""
    if info.store_id != store_id:
        raise errors.CorruptionError(
            f"{seg.path}: segment belongs to another store (store id {info.store_id:016x}, "
            f"expected {store_id:016x}); move it out of the store",
            path=seg.path,
            position=16,
        )
    if info.segment_id != segment_id:
        raise errors.CorruptionError(
            f"{seg.path}: file holds segment {info.segment_id}, its name says {segment_id}",
            path=seg.path,
            position=24,
        )


def first_timestamp(seg: Segment) -> int:
    """The timestamp of seg's first record (0 when it holds none)."""
    _, _, _, _, tss, _, _ = seg.scan(0, 0, 1)
    return int(tss[0]) if tss else 0


def commit_seal(
    manifest: Manifest,
    seg: Segment,
    info: SegmentInfo,
    name_of: Callable[[int], str | None],
    next_key_id: int,
    opened: SegmentRecord | None = None,
) -> list[tuple[int, int, int]]:
    """Record a sealed segment (and the active one replacing it) in one
    manifest transaction; returns its key ranges (key_id, first, count)."""
    ranges = [(r.key_id, r.first_offset, r.count) for r in seg.keys()]
    names: dict[int, str] = {}
    for key_id, _, _ in ranges:
        if manifest.key_name(key_id) is None:
            names[key_id] = name_of(key_id) or seg.key_name(key_id)
    rec = SegmentRecord(
        segment_id=info.segment_id,
        state="sealed",
        first_lsn=info.first_lsn,
        last_lsn=info.last_lsn,
        record_count=info.record_count,
        file_bytes=info.file_bytes,
        file_crc=info.file_crc,
        key_count=info.key_count,
        created_ms=info.created_ms,
        sealed_ms=_now_ms(),
        first_ts_ms=first_timestamp(seg),
    )
    top = max([next_key_id] + [k + 1 for k, _, _ in ranges])
    manifest.record_seal(rec, ranges, names, top, opened=opened)
    return ranges


def new_segment(root: str, store_id: int, segment_id: int, first_lsn: int, capacity: int) -> tuple[Segment, SegmentRecord]:
    """Create the file of a new active segment and its manifest record."""
    seg = Segment.create(
        layout.segment_path(root, segment_id),
        store_id=store_id,
        segment_id=segment_id,
        first_lsn=first_lsn,
        capacity=capacity,
    )
    info = seg.info()
    return seg, SegmentRecord(segment_id, "active", first_lsn, created_ms=info.created_ms)


def discard_new_segment(seg: Segment) -> None:
    """Remove a segment file new_segment just made, before anything was
    appended to it (its manifest record could not be written)."""
    os.unlink(seg.path)
    layout.fsync_dir(os.path.dirname(seg.path))


def open_active(
    root: str, manifest: Manifest, store_id: int, capacity: int, feed: Feed | None = None
) -> tuple[Segment | None, int]:
    """Reconcile and return (the active segment or None, next LSN). feed
    is the store's: followers learn from it that a recovered tail changed."""
    recs = {r.segment_id: r for r in manifest.segments()}
    files = set(layout.segment_ids(root))
    known_max = max(recs, default=0)
    sealed_lsn = max((r.last_lsn for r in recs.values() if r.state == "sealed"), default=0)
    candidates = sorted({s for s, r in recs.items() if r.state == "active"} | {f for f in files if f > known_max})
    active: Segment | None = None
    next_lsn = sealed_lsn + 1
    for sid in candidates:
        path = layout.segment_path(root, sid)
        if sid not in files:
            raise errors.CorruptionError(
                f"{path}: the manifest's active segment {sid} is missing (restore the file, or "
                "move the store aside and open a copy with the file removed from its manifest)",
                path=path,
            )
        try:
            seg, report = Segment.open(path, write=True, capacity=capacity, feed=feed)
        except (errors.FormatError, errors.CorruptionError) as e:
            if sid in recs:
                raise
            # created but its header never reached the disk: it cannot hold
            # an acknowledged record
            os.unlink(path)
            layout.fsync_dir(os.path.dirname(path))
            manifest.log_event("SegmentDiscarded", segment=sid, reason=str(e))
            continue
        info = seg.info()
        check_identity(seg, info, store_id, sid)
        if active is not None:
            # an older unsealed candidate: seal it, the newer one continues
            hit("recovery.before_seal_recovered")
            _seal_recovered(manifest, active, sid)
            active = None
        if info.sealed:
            commit_seal(manifest, seg, info, manifest.key_name, manifest.next_key_id())
            next_lsn = max(next_lsn, info.last_lsn + 1)
            continue
        if report.reason != "end" or report.dropped_records:
            manifest.log_event(
                "TailRecovered",
                segment=sid,
                valid_end=report.valid_end,
                stop_pos=report.stop_pos,
                dropped_bytes=report.dropped_bytes,
                dropped_records=report.dropped_records,
                reason=report.reason,
            )
        if sid not in recs:
            hit("recovery.before_adopt")
            manifest.record_open(
                SegmentRecord(sid, "active", info.first_lsn, created_ms=info.created_ms), event="SegmentAdopted"
            )
            recs[sid] = SegmentRecord(sid, "active", info.first_lsn)
        active = seg
        next_lsn = info.last_lsn + 1 if info.record_count else info.first_lsn
    return active, next_lsn


def _seal_recovered(manifest: Manifest, seg: Segment, newer: int) -> None:
    """Seal a recovered segment that a newer one follows."""
    info = seg.seal()
    commit_seal(manifest, seg, info, manifest.key_name, manifest.next_key_id())
