"""What an operator asks of a store, as plain data: info, dump, segment
listings, the manifest against the files and Tier 2, a capacity forecast,
samples for a live view and who holds the writer lock. The ``aoflite``
command prints these. The gathering functions work on a read-only handle
and change nothing; the few that change the store (``delete_copy``,
``repair``) need the writer's handle and say so.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING, Any

from . import errors, layout
from .manifest import SegmentRecord
from .coordinator import open_tier2
from .tiers.base import Tier2Backend, file_digest, segment_object_name

if TYPE_CHECKING:  # the store imports this module for health()
    from .store import Store

__all__ = [
    "lock_holder", "info", "dump", "segments", "manifest_check", "capacity", "tiers_of", "hydration_targets",
    "delete_copy", "tier2_backend", "tier2_compare", "tier2_check", "repair", "quiet_pipeline", "sample", "scraped",
    "rates", "drill_report",
]

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
    """One row per segment the manifest knows, by id, with its tiers as
    they are now (tier -> bytes: local tiers as the files are, Tier 2 as
    confirmed); tier keeps those with a copy in that tier, key those
    holding records of the key."""
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
    where = {r.segment_id: r.tiers for r in db.residency()}
    rows = []
    for rec in db.manifest.segments():
        if wanted is not None and rec.segment_id not in wanted:
            continue
        now = live.get(rec.segment_id)
        if rec.state == "active":
            tiers = {"t0": now.records_end if now is not None else rec.file_bytes}
        else:
            tiers = dict(where.get(rec.segment_id, {}))
        if tier is not None and f"t{tier}" not in tiers:
            continue
        row = {
            "segment": rec.segment_id,
            "state": rec.state,
            "tiers": tiers,
            "first_lsn": rec.first_lsn,
            "last_lsn": rec.last_lsn,
            "records": rec.record_count,
            "bytes": rec.file_bytes,
            "keys": rec.key_count,
            "created_ms": rec.created_ms,
            "sealed_ms": rec.sealed_ms or None,
        }
        if rec.state == "active" and now is not None:
            row.update(
                last_lsn=now.last_lsn if now.record_count else None,
                records=now.record_count,
                bytes=now.records_end,
                keys=now.key_count,
            )
        rows.append(row)
    return rows


def _sealed(db: Store) -> list[SegmentRecord]:
    return [r for r in db.manifest.segments() if r.state == "sealed"]


def _moves(db: Store) -> bool:
    """Whether the writer's pipeline moves sealed segments down the tiers
    (a Tier 2 or a local budget; retention alone only removes)."""
    c = db.config
    return c.tier2.url is not None or c.tier0.max_bytes is not None or c.tier1.max_bytes is not None


def _pipeline(db: Store, stats: dict[str, Any]) -> tuple[dict[str, int | None], dict[str, Any]]:
    """Queue depths and the Tier 2 backlog. The writer's pipeline reports
    its own; a read-only handle works them out from the manifest and the
    files, except the activation queue (appends waiting in the writer's
    process), which only the writer knows: None."""
    queues = dict(stats.get("queues") or {})
    lag = stats.get("tier2_lag")
    has_t2 = db.config.tier2.url is not None
    if "compression" not in queues or (lag is None and has_t2):
        recs = _sealed(db)
        res = {r.segment_id: r.tiers for r in db.residency()}
        if "compression" not in queues:
            moves = _moves(db)
            queues["compression"] = sum(
                1 for r in recs if moves and "t1" not in r.tiers and "t2" not in r.tiers and "t0" in res.get(r.segment_id, {})
            )
            queues["upload"] = sum(1 for r in recs if has_t2 and "t2" not in r.tiers and "t1" in res.get(r.segment_id, {}))
            queues["activation"] = None if db.readonly else 0
        if lag is None and has_t2:
            behind = [r for r in recs if "t2" not in r.tiers]
            oldest = min((r.sealed_ms for r in behind), default=None)
            lag = {
                "records": sum(r.record_count for r in behind),
                "bytes": sum(r.file_bytes for r in behind),
                "seconds": 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000),
            }
    out_q: dict[str, int | None] = {
        q: (None if queues.get(q) is None else int(queues[q])) for q in ("activation", "compression", "upload", "hydration")
    }
    backlog = {"tier2_" + k: (lag or {}).get(k) if has_t2 else None for k in ("records", "bytes", "seconds")}
    return out_q, backlog


def dump(db: Store) -> dict[str, Any]:
    """What is where: per tier, segments and bytes (the active segment
    counts in Tier 0); the active segment; queue depths; the backlog Tier 2
    has yet to take (None without a Tier 2)."""
    stats = _stats(db)
    queues, backlog = _pipeline(db, stats)
    active = stats.get("active_segment")
    live = [s.info() for s in db._reads.live()]
    return {
        "store": db.path,
        "tier2_url": db.config.tier2.url,
        "tiers": tiers_of(stats),
        "active_segment": active,
        "active_records": live[-1].record_count if live else 0,
        "active_bytes": live[-1].records_end if live else 0,
        "last_lsn": stats["last_lsn"],
        "manifest_version": stats["manifest_version"],
        "queues": queues,
        "backlog": backlog,
        "tier_error": stats.get("tier_error"),
        "disk_bytes": stats["disk_bytes"],
    }


def _problem(kind: str, segment: int | None, path: str, problem: str) -> dict[str, Any]:
    return {"segment": segment, "kind": kind, "path": path, "problem": problem}


def manifest_check(db: Store) -> list[dict[str, Any]]:
    """The manifest against the local files: each mismatch as {segment,
    kind, path, problem}. A segment with a Tier 0 copy (and the active one)
    must have its file, sealed ones at the recorded size, and likewise for
    Tier 1 copies; every sealed segment needs a copy somewhere; a local file
    the manifest does not know is a problem too. Tier 2 is compared by
    tier2_compare (this one never leaves the machine: health uses it)."""
    problems = []
    known = set()
    for rec in db.manifest.segments():
        sid = rec.segment_id
        known.add(sid)
        path, t1 = layout.segment_path(db.path, sid), layout.tier1_path(db.path, sid)
        size, t1_size = _size(path), _size(t1)
        if (rec.state == "active" or "t0" in rec.tiers) and size is None:
            problems.append(_problem("t0_missing", sid, path, "in the manifest, file missing"))
        elif rec.state == "sealed" and size is not None and size != rec.file_bytes:
            problems.append(
                _problem("t0_size", sid, path, f"file is {size} bytes, the manifest recorded {rec.file_bytes}")
            )
        if rec.state != "sealed":
            continue
        if "t1" in rec.tiers and t1_size is None:
            problems.append(_problem("t1_missing", sid, t1, "Tier 1 copy in the manifest, file missing"))
        elif t1_size is not None and rec.t1_bytes and t1_size != rec.t1_bytes:
            problems.append(
                _problem("t1_size", sid, t1, f"Tier 1 file is {t1_size} bytes, the manifest recorded {rec.t1_bytes}")
            )
        if size is None and t1_size is None and "t2" not in rec.tiers and "t0" not in rec.tiers and "t1" not in rec.tiers:
            problems.append(_problem("no_copy", sid, path, "sealed segment with no copy in any tier"))
    for seg_id in layout.segment_ids(db.path):
        if seg_id not in known:
            problems.append(_problem("unknown_file", seg_id, layout.segment_path(db.path, seg_id), "file not in the manifest"))
    for seg_id in layout.tier1_ids(db.path):
        if seg_id not in known:
            problems.append(
                _problem("unknown_t1_file", seg_id, layout.tier1_path(db.path, seg_id), "Tier 1 file not in the manifest")
            )
    return problems


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


# ------------------------------------------------------------------ Tier 2


def tier2_backend(db: Store) -> Tier2Backend:
    """The store's Tier 2 (its configured or recorded URL); ValueError when
    it has none."""
    backend = open_tier2(db.config)
    if backend is None:
        raise ValueError(f"{db.path}: no Tier 2 configured (set tier2_url, or [tier2] url in aoflite.toml)")
    return backend


def _object_segment(name: str) -> int | None:
    stem = name.removeprefix("segments/").removesuffix(".zst")
    if stem.isdigit() and segment_object_name(int(stem)) == name:
        return int(stem)
    return None


def tier2_compare(db: Store, backend: Tier2Backend, names: list[str] | None = None) -> list[dict[str, Any]]:
    """The manifest against the objects under segments/ (names: that
    listing, when the caller has it): every segment the manifest says Tier
    2 holds has its object at the recorded size and SHA-256; every object
    belongs to a segment the manifest records there; objects of retired
    segments are gone or queued for deletion. Each mismatch as {segment,
    kind, path, problem}."""
    if names is None:
        names = backend.list("segments/")
    present = set(names)
    queued = db.manifest.queued_deletes()
    through = db.manifest.retired_through()
    recs = {r.segment_id: r for r in db.manifest.segments()}
    problems = []
    for sid, rec in recs.items():
        if "t2" not in rec.tiers:
            continue
        name = segment_object_name(sid)
        url = f"{backend.url}/{name}"
        if name not in present:
            problems.append(_problem("t2_missing", sid, url, "in the manifest's Tier 2, object missing"))
            continue
        try:
            got = backend.head(name)
        except errors.Tier2NotFound:
            problems.append(_problem("t2_missing", sid, url, "in the manifest's Tier 2, object missing"))
            continue
        if (got.size, got.checksum) != (rec.t2_bytes, rec.t2_checksum):
            problems.append(
                _problem(
                    "t2_mismatch", sid, url,
                    f"object is {got.size} bytes with SHA-256 {got.checksum[:16]}..., the manifest recorded "
                    f"{rec.t2_bytes} bytes with {rec.t2_checksum[:16]}...",
                )
            )
    for name in names:
        of = _object_segment(name)
        url = f"{backend.url}/{name}"
        if of is None:
            problems.append(_problem("t2_orphan", None, url, "not a segment object name"))
        elif of in recs:
            if "t2" not in recs[of].tiers and not _uploading(db, of):
                problems.append(_problem("t2_unrecorded", of, url, "object of a segment the manifest does not record in Tier 2"))
        elif of in queued:
            problems.append(_problem("t2_delete_pending", of, url, "retired by retention, deletion queued but not done"))
        elif of <= through:
            problems.append(_problem("t2_retired", of, url, "object of a retired segment, not queued for deletion"))
        else:
            problems.append(_problem("t2_orphan", of, url, "no such segment in the manifest"))
    for sid, name in sorted(queued.items()):
        if name not in present:
            problems.append(
                _problem("t2_delete_pending", sid, f"{backend.url}/{name}", "deletion queued, object already gone (not yet recorded)")
            )
    return problems


def _uploading(db: Store, segment_id: int) -> bool:
    """Whether segment_id's object may be an upload under way: it was
    confirmed meanwhile, or (on a read-only handle) a writer in another
    process holds the store and may not have confirmed it yet (it records
    an upload once it read the object back). A writable handle's own
    pipeline is held still (quiet_pipeline) before anything compares."""
    now = db.manifest.segment(segment_id)
    if now is not None and "t2" in now.tiers:
        return True
    return db.readonly and lock_holder(db.path) is not None


def tier2_check(db: Store) -> dict[str, Any]:
    """The weekly lifecycle validation: Tier 2 reachable with valid
    credentials (a listing; an authentication failure raises Tier2Error
    with reason "auth"), then tier2_compare. Problems grouped by check:
    "objects" (missing or changed), "orphans", "retention"."""
    backend = tier2_backend(db)
    names = backend.list("segments/")
    problems = tier2_compare(db, backend, names)
    for p in problems:
        p["check"] = {"t2_missing": "objects", "t2_mismatch": "objects", "t2_unrecorded": "orphans",
                      "t2_orphan": "orphans"}.get(p["kind"], "retention")
    recorded = [r for r in _sealed(db) if "t2" in r.tiers]
    return {
        "url": backend.url,
        "reachable": True,
        "objects": len(names),
        "segments_checked": len(recorded),
        "queued_deletes": len(db.manifest.queued_deletes()),
        "problems": problems,
    }


# ------------------------------------------------------------------ changes (the writer's handle)


def quiet_pipeline(db: Store) -> None:
    """Refuse a read-only handle; stop the handle's own tier pipeline, so
    that nothing moves a copy while the caller decides about another (the
    next writer's open starts it again)."""
    if db.readonly:
        raise errors.ReadOnlyError(f"{db.path}: changing tiers needs the writer's handle")
    if db._coordinator is not None:
        db._coordinator.stop()


def _copies(db: Store, rec: SegmentRecord, backend: Tier2Backend | None) -> dict[str, int]:
    """The copies of sealed rec that exist now: local files, and the Tier 2
    object when it is there at the recorded size and checksum."""
    sid = rec.segment_id
    out = {}
    for tier, path in (("t0", layout.segment_path(db.path, sid)), ("t1", layout.tier1_path(db.path, sid))):
        size = _size(path)
        if size is not None:
            out[tier] = size
    if "t2" in rec.tiers and backend is not None:
        try:
            got = backend.head(segment_object_name(sid))
        except errors.Tier2NotFound:
            return out
        if (got.size, got.checksum) == (rec.t2_bytes, rec.t2_checksum):
            out["t2"] = got.size
    return out


_TIER_NAMES = {"t0": "Tier 0", "t1": "Tier 1", "t2": "Tier 2"}


def delete_copy(db: Store, segment_id: int, tier: int, force: bool = False) -> dict[str, Any]:
    """Delete one tier's copy of a sealed segment, on the writer's handle.
    Never the last copy (force or not); Tier 2's only with force and
    another copy. The manifest first (LocalEvicted or Tier2Deleted), then
    the file or object, so the manifest never names a copy that is gone."""
    quiet_pipeline(db)
    rec = db.manifest.segment(segment_id)
    if rec is None:
        raise errors.NotFound(f"{db.path}: no segment {segment_id} in the manifest")
    if rec.state != "sealed":
        raise ValueError(f"{db.path}: segment {segment_id} is the active segment (only a sealed segment's copies can be deleted)")
    name = f"t{tier}"
    backend = open_tier2(db.config)
    if tier == 2 and backend is None:
        raise ValueError(f"{db.path}: no Tier 2 configured, so there is no Tier 2 copy to delete")
    copies = _copies(db, rec, backend)
    if name not in copies:
        raise errors.NotFound(f"{db.path}: segment {segment_id} has no {_TIER_NAMES[name]} copy")
    others = sorted(t for t in copies if t != name)
    if not others:
        raise ValueError(
            f"{db.path}: refusing to delete segment {segment_id}'s {_TIER_NAMES[name]} copy: it is the only one "
            f"(LSNs {rec.first_lsn}..{rec.last_lsn} would be lost; --force does not override this)"
        )
    if tier == 2 and not force:
        raise ValueError(
            f"{db.path}: refusing to delete segment {segment_id}'s Tier 2 copy without --force "
            "(it is the copy a restore from Tier 2 needs; the writer uploads it again)"
        )
    if tier == 2:
        assert backend is not None
        obj = segment_object_name(segment_id)
        db.manifest.record_tier(segment_id, "Tier2Deleted", remove=("t2",), object=obj, by="cli")
        backend.delete(obj)
    else:
        path = layout.segment_path(db.path, segment_id) if tier == 0 else layout.tier1_path(db.path, segment_id)
        db.manifest.record_tier(segment_id, "LocalEvicted", remove=(name,), tier=name, bytes=copies[name], by="cli")
        if tier == 0:
            db._reads.forget_segment(segment_id)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        layout.fsync_dir(os.path.dirname(path))
    return {"segment": segment_id, "tier": name, "bytes": copies[name], "remaining": others}


def repair(db: Store, problems: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fix, on the writer's handle, what is safe of the problems that
    manifest_check and tier2_compare found; each problem comes back with
    "repair" saying what was done, or why it was left alone. Never deletes
    a copy that is the only one: a damaged or missing copy is re-marked
    only when another copy exists; a local file or object is removed only
    when the manifest retired its segment, or when it is a damaged copy of
    a segment with a good copy elsewhere."""
    quiet_pipeline(db)
    backend = open_tier2(db.config)
    m = db.manifest
    through = m.retired_through()
    out = []
    for p in problems:
        kind, sid = p["kind"], p["segment"]
        rec = m.segment(sid) if sid is not None else None
        done = "left alone: " + _LEFT.get(kind, "needs a person's judgement")
        if rec is not None and kind in ("t0_missing", "t0_size", "t1_missing", "t1_size", "t2_missing", "t2_mismatch"):
            tier = kind[:2]
            others = sorted(t for t in _copies(db, rec, backend) if t != tier)
            if rec.state != "sealed":
                done = "left alone: the active segment's file is missing (recover it from a backup)"
            elif not others:
                done = "left alone: no other copy of the segment exists (restore it from a backup)"
            elif tier == "t2":
                m.record_tier(sid, "Tier2Deleted", remove=("t2",), object=segment_object_name(sid), repair=p["problem"])
                done = f"re-marked: not in Tier 2 (copies in {', '.join(others)}; the writer uploads it again)"
            else:
                m.record_tier(sid, "LocalEvicted", remove=(tier,), tier=tier, repair=p["problem"])
                done = f"re-marked: no {_TIER_NAMES[tier]} copy (copies in {', '.join(others)})"
                if kind.endswith("_size"):
                    if tier == "t0":
                        db._reads.forget_segment(sid)
                    os.unlink(p["path"])
                    done += "; removed the damaged file"
        elif rec is not None and kind == "t2_unrecorded" and backend is not None:
            done = _adopt_object(db, rec, backend)
        elif kind in ("unknown_file", "unknown_t1_file") and sid is not None and sid <= through:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p["path"])
            m.log_event("LocalEvicted", segment=sid, tier="t0" if kind == "unknown_file" else "t1", repair="retired")
            done = "removed: a file of a segment retention retired"
        elif kind in ("t2_retired", "t2_delete_pending") and backend is not None and sid is not None:
            name = segment_object_name(sid)
            backend.delete(name)
            m.tier2_deleted(sid, name)
            done = "deleted: the object of a segment retention retired"
        out.append({**p, "repair": done})
    return out


_LEFT = {
    "no_copy": "no copy of the segment exists in any tier (restore it from a backup)",
    "unknown_file": "not in the manifest and not retired: it may hold records (inspect it before removing it)",
    "unknown_t1_file": "not in the manifest and not retired: it may hold records (inspect it before removing it)",
    "t2_orphan": "not a segment of this store's manifest (another store's, or a restore's: check the prefix)",
    "t2_unrecorded": "the object differs from what the manifest and the Tier 1 copy say (the writer uploads the segment again, replacing it)",
}


def _adopt_object(db: Store, rec: SegmentRecord, backend: Tier2Backend) -> str:
    """Re-mark a segment as in Tier 2 when its object matches what the
    manifest recorded of it, or the local Tier 1 copy byte for byte."""
    sid, name = rec.segment_id, segment_object_name(rec.segment_id)
    got = backend.head(name)
    want: tuple[int, str] | None = (rec.t2_bytes, rec.t2_checksum) if rec.t2_checksum else None
    t1 = layout.tier1_path(db.path, sid)
    if want != (got.size, got.checksum) and os.path.exists(t1):
        want = file_digest(t1)
    if want != (got.size, got.checksum):
        return "left alone: " + _LEFT["t2_unrecorded"]
    db.manifest.record_tier(
        sid, "UploadDone", add=("t2",), facts={"t2_bytes": got.size, "t2_checksum": got.checksum},
        object=name, bytes=got.size, repair="object matches",
    )
    return "re-marked: in Tier 2 (the object matches the segment)"


# ------------------------------------------------------------------ hydrate


def hydration_targets(
    db: Store, segment: int | None = None, key: str | None = None, start: int = 0, stop: int | None = None
) -> list[dict[str, Any]]:
    """The sealed segments to bring back: segment, or those holding key's
    records in [start, stop). Each as {segment, source, bytes}: source is
    "t0" when it is local already, else the tier it would come from ("t1",
    "t2"), or None when no tier holds it."""
    if (segment is None) == (key is None):
        raise ValueError("give a segment or a key")
    m = db.manifest
    if segment is not None:
        rec = m.segment(segment)
        if rec is None:
            raise errors.NotFound(f"{db.path}: no segment {segment} in the manifest")
        recs = [rec]
    else:
        assert key is not None
        kid = db._reads.kid(key)
        if kid is None or db.count(key) == 0:
            raise errors.NotFound(f"{db.path}: no key {key!r} in the store")
        ids = [sid for last, sid, first, _ in m.key_ranges(kid) if last >= start and (stop is None or first < stop)]
        recs = [r for r in (m.segment(sid) for sid in ids) if r is not None]
    out = []
    for rec in recs:
        sid = rec.segment_id
        if rec.state != "sealed" or os.path.exists(layout.segment_path(db.path, sid)):
            source: str | None = "t0"
        elif os.path.exists(layout.tier1_path(db.path, sid)):
            source = "t1"
        else:
            source = "t2" if "t2" in rec.tiers else None
        out.append({"segment": sid, "source": source, "bytes": rec.file_bytes})
    return out


# ------------------------------------------------------------------ capacity


def capacity(db: Store, days: float = 7.0, now_ms: int | None = None) -> dict[str, Any]:
    """Growth over the last days (bytes sealed, from the ledger's seal
    events) and, at that rate, when each configured budget fills and what
    the store does then. The Tier 0 and Tier 1 budgets count sealed
    segments' files (the active segment is outside them); Tier 1 grows by
    the compression ratio seen so far."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    since = now_ms - int(days * 86_400_000)
    seals = [e for e in db.manifest.ledger() if e["type"] == "SealSegment" and e["time_ms"] >= since]
    grown = sum(int(e.get("bytes", 0)) for e in seals)
    span_s = (now_ms - min(e["time_ms"] for e in seals)) / 1000 if seals else 0.0
    rate = grown / span_s if span_s > 0 else 0.0
    stats = _stats(db)
    res = db.residency()
    recs = _sealed(db)
    compressed = [r for r in recs if r.t1_bytes]
    ratio = sum(r.t1_bytes for r in compressed) / max(1, sum(r.file_bytes for r in compressed)) if compressed else None
    c = db.config
    has_t2 = c.tier2.url is not None
    moves = _moves(db)
    plans = {
        "t0": (c.tier0.max_bytes, sum(r.tiers.get("t0", 0) for r in res), rate,
               "evicts the least recently used segments held in a lower tier" if moves else "grows past it"),
        "t1": (c.tier1.max_bytes, sum(r.tiers.get("t1", 0) for r in res), rate * (ratio or 1.0) if moves else 0.0,
               "evicts segments Tier 2 holds" if has_t2 else "grows past it (no Tier 2 to evict to)"),
        "retention": (c.retention.max_bytes, stats["data_bytes"], rate, "retires the oldest segments"),
    }
    forecast = {}
    for name, (budget, have, growth, then) in plans.items():
        if budget is None:
            eta = None
        elif have >= budget:
            eta = 0.0
        else:
            eta = (budget - have) / growth if growth > 0 else None
        forecast[name] = {
            "budget_bytes": budget, "used_bytes": have, "growth_bytes_per_day": growth * 86_400, "full_in_s": eta,
            "then": then if budget is not None else None,
        }
    return {
        "window_days": days,
        "sealed_segments": len(seals),
        "sealed_bytes": grown,
        "bytes_per_day": rate * 86_400,
        "tier1_ratio": ratio,
        "budgets": forecast,
    }


# ------------------------------------------------------------------ drill


def drill_report(copy: Store, last_lsn: int, live: Store | None = None) -> dict[str, Any]:
    """A store restored from Tier 2 (copy, restored up to last_lsn) against
    the live store: each sealed segment of the copy must have the live
    manifest's LSN range and record count; and how far the bucket trails
    the live store (records, sealed segments and the age of the oldest
    record it lacks). Without live, the copy's facts alone."""
    recs = _sealed(copy)
    report: dict[str, Any] = {
        "segments": len(recs),
        "records": sum(r.record_count for r in recs),
        "first_lsn": recs[0].first_lsn if recs else None,
        "last_lsn": last_lsn,
        "differences": [],
        "trails": None,
    }
    if live is None:
        return report
    known = {r.segment_id: r for r in live.manifest.segments()}
    through = live.manifest.retired_through()
    for r in recs:
        got = known.get(r.segment_id)
        if got is None:
            if r.segment_id > through:  # one retention retired since is no difference
                report["differences"].append({"segment": r.segment_id, "problem": "in the bucket, not in the live manifest"})
        elif (got.state, got.first_lsn, got.last_lsn, got.record_count) != ("sealed", r.first_lsn, r.last_lsn, r.record_count):
            report["differences"].append(
                {
                    "segment": r.segment_id,
                    "problem": f"restored LSNs {r.first_lsn}..{r.last_lsn} ({r.record_count} records), live "
                    f"{got.state} {got.first_lsn}..{got.last_lsn} ({got.record_count} records)",
                }
            )
    live_last = _stats(live)["last_lsn"]
    first_missing = next(live.scan_all(last_lsn + 1), None) if live_last > last_lsn else None
    report["trails"] = {
        "records": max(0, live_last - last_lsn),
        "segments": sum(1 for r in _sealed(live) if r.last_lsn > last_lsn),
        "seconds": 0.0 if first_missing is None else max(0.0, time.time() - first_missing.timestamp_ms / 1000),
    }
    return report


# ------------------------------------------------------------------ top


def sample(db: Store) -> dict[str, Any]:
    """One sample for the live view: counters to take rates from, and
    what is where now."""
    stats = _stats(db)
    queues, backlog = _pipeline(db, stats)
    return {
        "monotonic": time.monotonic(),
        "last_lsn": stats["last_lsn"],
        "data_bytes": stats["data_bytes"],
        "tiers": tiers_of(stats),
        "queues": queues,
        "backlog": backlog,
        "cursors": {c.name: c.lag_records for c in db.cursors()},
        "tier_error": stats.get("tier_error"),
    }


def scraped(text: str) -> dict[str, Any]:
    """From a writer's /metrics page, what only the writing process knows:
    flush count and seconds, backpressure events by kind, the activation
    queue."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {"flushes": 0.0, "flush_seconds": 0.0, "backpressure": {}, "activation": None}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "aoflite_flush_latency_seconds_count":
                out["flushes"] += s.value
            elif s.name == "aoflite_flush_latency_seconds_sum":
                out["flush_seconds"] += s.value
            elif s.name == "aoflite_backpressure_events_total":
                kind = s.labels.get("kind", "")
                out["backpressure"][kind] = out["backpressure"].get(kind, 0) + int(s.value)
            elif s.name == "aoflite_activation_queue_depth":
                out["activation"] = int(s.value)
    return out


def rates(prev: dict[str, Any], cur: dict[str, Any]) -> dict[str, Any]:
    """The live view's frame from two samples (each a sample(), with the
    writer's scraped() facts under "writer" when there are any): rates
    per second over the time between them, and the state at cur."""
    dt = max(cur["monotonic"] - prev["monotonic"], 1e-9)
    frame: dict[str, Any] = {
        "interval_s": dt,
        "append_records_per_s": max(0, cur["last_lsn"] - prev["last_lsn"]) / dt,
        "append_bytes_per_s": max(0, cur["data_bytes"] - prev["data_bytes"]) / dt,
        "last_lsn": cur["last_lsn"],
        "tiers": cur["tiers"],
        "queues": dict(cur["queues"]),
        "backlog": cur["backlog"],
        "cursor_lag": cur["cursors"],
        "tier_error": cur["tier_error"],
        "flushes_per_s": None,
        "flush_latency_ms": None,
        "backpressure": None,
    }
    a, b = prev.get("writer"), cur.get("writer")
    if a is not None and b is not None:
        n = b["flushes"] - a["flushes"]
        frame["flushes_per_s"] = max(0.0, n) / dt
        frame["flush_latency_ms"] = (b["flush_seconds"] - a["flush_seconds"]) / n * 1000 if n > 0 else None
        frame["backpressure"] = b["backpressure"]
        if frame["queues"].get("activation") is None:
            frame["queues"]["activation"] = b["activation"]
    return frame


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
