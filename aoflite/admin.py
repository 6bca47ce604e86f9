"""What an operator asks of a store, as plain data: info, dump, segment
listings, the manifest against the files, a capacity forecast and who
holds the writer lock. The ``aoflite`` command prints these; every one
works on a read-only handle and changes nothing.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from . import errors, layout

if TYPE_CHECKING:  # the store imports this module for health()
    from .store import Store

__all__ = ["lock_holder", "info", "dump", "segments", "manifest_check", "capacity", "tiers_of"]

_SHAPING = ("segment_bytes", "max_record_bytes")


def lock_holder(path: str) -> int | None:
    """The pid holding the store's writer lock, or None. Read from
    /proc/locks, so the lock is never touched."""
    try:
        st = os.stat(os.path.join(path, "LOCK"))
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF": the device in hex;
    # a process waiting for the lock has a line starting "1: ->"
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    same_inode = []
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK" or not parts[4].isdigit():
            continue
        if parts[5] == want:
            return int(parts[4])
        if parts[5].rsplit(":", 1)[-1] == str(st.st_ino):
            same_inode.append(int(parts[4]))
    # some file systems (btrfs subvolumes) show stat() another device number
    # than /proc/locks: then trust the inode when the holder's own note agrees
    try:
        with open(os.path.join(path, "LOCK")) as f:
            noted = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return noted if noted in same_inode else None


def tiers_of(stats: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Segments and bytes per tier (before the tier pipeline reports them,
    every segment is a Tier 0 file)."""
    segs = stats.get("tier_segments") or {"t0": stats.get("segments", 0)}
    size = stats.get("tier_bytes") or {"t0": stats.get("data_bytes", 0)}
    return {t: {"segments": int(segs.get(t, 0) or 0), "bytes": int(size.get(t, 0) or 0)} for t in ("t0", "t1", "t2")}


def _stats(db: Store) -> dict[str, Any]:
    return db._ops_stats()


def info(db: Store) -> dict[str, Any]:
    """Format version, recorded settings, segments, sizes, LSN and time
    range, key count, lock holder and cursors."""
    stats = _stats(db)
    m = db.manifest
    last = stats["last_lsn"]
    first_rec = next(db.scan_all(1), None) if last else None
    last_rec = next(db.scan_all(last), None) if last else None
    records = m.segments()
    created = m.get_meta("created_ms")
    return {
        "path": db.path,
        "format_version": int(m.get_meta("format_version") or 0),
        "store_id": int(m.get_meta("store_id") or 0),
        "created_ms": int(created) if created else None,
        "settings": m.settings(_SHAPING),
        "segments": {
            "sealed": sum(r.state == "sealed" for r in records),
            "active": sum(r.state == "active" for r in records),
        },
        "data_bytes": stats["data_bytes"],
        "disk_bytes": stats["disk_bytes"],
        "lsn": {"first": first_rec.lsn if first_rec else None, "last": last or None},
        "time_ms": {
            "first": first_rec.timestamp_ms if first_rec else None,
            "last": last_rec.timestamp_ms if last_rec else None,
        },
        "keys": len(db.keys()),
        "lock_holder_pid": lock_holder(db.path),
        "manifest_version": stats["manifest_version"],
        "cursors": [c._asdict() for c in db.cursors()],
    }


def segments(db: Store, tier: int | None = None, key: str | None = None) -> list[dict[str, Any]]:
    """One row per segment the manifest knows, by id; tier keeps those
    with a copy in that tier, key those holding records of the key."""
    live = {seg.info().segment_id: seg.info() for seg in db._reads.live()}
    wanted: set[int] | None = None
    if key is not None:
        kid = db._reads.kid(key)
        if kid is None or db.count(key) == 0:
            raise errors.NotFound(f"{db.path}: no key {key!r} in the store")
        ranges = db.manifest.key_ranges(kid)
        wanted = {seg for _, seg, _, _ in ranges}
        if db.count(key) > sum(n for _, _, _, n in ranges):
            wanted |= set(live)  # the rest of the key is in the active segment
    rows = []
    for rec in db.manifest.segments():
        if wanted is not None and rec.segment_id not in wanted:
            continue
        if tier is not None and f"t{tier}" not in rec.tiers:
            continue
        row = {
            "segment": rec.segment_id,
            "state": rec.state,
            "tiers": list(rec.tiers),
            "first_lsn": rec.first_lsn,
            "last_lsn": rec.last_lsn,
            "records": rec.record_count,
            "bytes": rec.file_bytes,
            "keys": rec.key_count,
            "created_ms": rec.created_ms,
            "sealed_ms": rec.sealed_ms or None,
        }
        now = live.get(rec.segment_id)
        if rec.state == "active" and now is not None:
            row.update(
                last_lsn=now.last_lsn if now.record_count else None,
                records=now.record_count,
                bytes=now.records_end,
                keys=now.key_count,
            )
        rows.append(row)
    return rows


def dump(db: Store) -> dict[str, Any]:
    """What is where: per tier, segments and bytes; the active segment;
    queue depths; the backlog Tier 2 has yet to take."""
    stats = _stats(db)
    queues = stats.get("queues") or {}
    lag = stats.get("tier2_lag") or {}
    return {
        "store": db.path,
        "tiers": tiers_of(stats),
        "active_segment": stats.get("active_segment"),
        "last_lsn": stats["last_lsn"],
        "manifest_version": stats["manifest_version"],
        "queues": {q: int(queues.get(q, 0) or 0) for q in ("activation", "compression", "upload", "hydration")},
        "backlog": {"tier2_" + k: lag.get(k, 0) or 0 for k in ("records", "bytes", "seconds")},
        "disk_bytes": stats["disk_bytes"],
    }


def manifest_check(db: Store) -> list[dict[str, Any]]:
    """The manifest against the local segment files: each mismatch as
    {segment, path, problem}. A segment with a Tier 0 copy (and the active
    one) must have its file, sealed ones at the recorded size; a local
    segment file the manifest does not know is an orphan."""
    problems = []
    known = set()
    for rec in db.manifest.segments():
        known.add(rec.segment_id)
        path = layout.segment_path(db.path, rec.segment_id)
        local = rec.state == "active" or "t0" in rec.tiers
        try:
            size: int | None = os.stat(path).st_size
        except FileNotFoundError:
            size = None
        if local and size is None:
            problems.append({"segment": rec.segment_id, "path": path, "problem": "in the manifest, file missing"})
        elif rec.state == "sealed" and local and size != rec.file_bytes:
            problems.append(
                {
                    "segment": rec.segment_id,
                    "path": path,
                    "problem": f"file is {size} bytes, the manifest recorded {rec.file_bytes}",
                }
            )
    for seg_id in layout.segment_ids(db.path):
        if seg_id not in known:
            problems.append(
                {"segment": seg_id, "path": layout.segment_path(db.path, seg_id), "problem": "file not in the manifest"}
            )
    return problems


def capacity(db: Store, days: float = 7.0, now_ms: int | None = None) -> dict[str, Any]:
    """Growth over the last days (bytes sealed, from the ledger's seal
    events) and, at that rate, when each configured budget fills."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    since = now_ms - int(days * 86_400_000)
    seals = [e for e in db.manifest.ledger() if e["type"] == "SealSegment" and e["time_ms"] >= since]
    grown = sum(int(e.get("bytes", 0)) for e in seals)
    span_s = (now_ms - min(e["time_ms"] for e in seals)) / 1000 if seals else 0.0
    rate = grown / span_s if span_s > 0 else 0.0
    stats = _stats(db)
    used = tiers_of(stats)
    c = db.config
    budgets = {
        "t0": c.tier0.max_bytes,
        "t1": c.tier1.max_bytes,
        "retention": c.retention.max_bytes,
    }
    forecast = {}
    for name, budget in budgets.items():
        have = stats["data_bytes"] if name == "retention" else used[name]["bytes"]
        if budget is None:
            eta = None
        elif have >= budget:
            eta = 0.0
        else:
            eta = (budget - have) / rate if rate > 0 else None
        forecast[name] = {"budget_bytes": budget, "used_bytes": have, "full_in_s": eta}
    return {
        "window_days": days,
        "sealed_segments": len(seals),
        "sealed_bytes": grown,
        "bytes_per_day": rate * 86_400,
        "budgets": forecast,
    }


def locate_corruption(path: str) -> int | None:
    """The byte position of the first record of a damaged segment file
    that fails its own checks, or None when every record passes (then only
    the whole-file checksum or the index is wrong). Reads the file again,
    one record at a time: for after verify() found it damaged."""
    from .segment import Segment

    seg, _ = Segment.open(path)
    pos = 0
    try:
        while True:
            nxt, *rows = seg.scan(pos, 0, 1)
            if not rows[0] or nxt == pos:
                return None
            pos = nxt
    except errors.CorruptionError as e:
        return e.position if e.position is not None else pos
