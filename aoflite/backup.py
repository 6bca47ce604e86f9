"""Online backup: a consistent copy of a store while appends go on, as
sqlite3's Connection.backup makes one.

The copy is what a crash at the moment of the backup would leave, made
whole: a snapshot of the manifest (LMDB copies one transaction), every
segment the snapshot lists as sealed (immutable files, copied as they
are), and of every newer segment either the sealed file or, while it is
still being written, its committed prefix, read the way a follower reads
it (whole batches only). Opening the copy runs the ordinary recovery,
which records the seals and adopts the segments the snapshot did not know
yet. A copy made with ``cp -r`` of a live store can catch the manifest and
a segment mid-write; this cannot.

A tiered store's copy is self-contained: of each sealed segment it takes
the local file, else the Tier 1 copy, else it downloads the Tier 2 object
into the copy's Tier 1; the copy keeps no Tier 2 URL (it is a new store,
and one writer per bucket prefix is the rule), so give it one of its own
when it should tier again.

Consumer cursors are copied after the records, so each is as fresh as it
can be, and clamped to the LSN the copy holds up to: a consumer that saved
a position past it while the copy was made is taken to have consumed
everything in the copy, never records the copy does not have.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from . import errors, layout
from .cursors import copy_cursors
from .manifest import Manifest, SegmentRecord
from .segment import Feed, Segment

#: Writes the Tier 2 object of a sealed segment to a local path.
Fetch = Callable[[SegmentRecord, str], None]

__all__ = ["backup", "remove_partial"]


def backup(path: str, manifest: Manifest, feed: Feed | None, dest: str, fetch: Fetch | None = None) -> int:
    """Copy the store at path into dest (which must not exist, or be an
    empty directory); returns the last LSN the copy holds."""
    dest = os.path.abspath(dest)
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise errors.FormatError(f"{dest}: exists and is not an empty directory (back up into a new path)")
    made = not os.path.exists(dest)
    try:
        return _copy(path, manifest, feed, dest, fetch)
    except BaseException:
        remove_partial(dest, made)
        raise


def remove_partial(dest: str, made: bool) -> None:
    """A half-made copy must not pass for a store: remove dest when we made
    it, else empty it again."""
    if made:
        shutil.rmtree(dest, ignore_errors=True)
    else:
        for name in os.listdir(dest):
            target = os.path.join(dest, name)
            shutil.rmtree(target, ignore_errors=True) if os.path.isdir(target) else os.unlink(target)


def _copy(path: str, manifest: Manifest, feed: Feed | None, dest: str, fetch: Fetch | None) -> int:
    os.makedirs(os.path.join(dest, "segments"), exist_ok=True)
    os.makedirs(layout.manifest_dir(dest), exist_ok=True)
    manifest.copy_to(layout.manifest_dir(dest))
    snapshot = Manifest(layout.manifest_dir(dest))
    try:
        recs = {r.segment_id: r for r in snapshot.segments()}
        for sealed in recs.values():
            if sealed.state == "sealed":
                tiers = _copy_sealed(path, manifest, dest, sealed, fetch)
                snapshot.note_facts(sealed.segment_id, tiers=tiers)
        snapshot.forget_text_setting("tier2_url")
    finally:
        snapshot.close()
    last_lsn = 0
    newest_known = max(recs, default=0)
    ids = sorted(set(recs) | {s for s in layout.segment_ids(path) if s > newest_known})
    for sid in ids:
        src = layout.segment_path(path, sid)
        dst = layout.segment_path(dest, sid)
        rec = recs.get(sid)
        if rec is not None and rec.state == "sealed":
            last_lsn = max(last_lsn, rec.last_lsn)  # copied above
            continue
        try:
            seg, _ = Segment.open(src, feed=feed)  # sealed since: mapped; else followed
        except errors.NotFound:
            continue  # a file being created (or discarded) holds no committed record
        info = seg.info()
        data = seg.memory()[: info.file_bytes if info.sealed else info.records_end]
        _write_file(dst, data)
        if info.record_count:
            last_lsn = max(last_lsn, info.last_lsn)
    copy_cursors(path, dest, last_lsn)
    # the marker last: until it is there, the copy is not a store
    _copy_file(os.path.join(path, layout.MARKER), os.path.join(dest, layout.MARKER))
    for d in (os.path.join(dest, "segments"), layout.manifest_dir(dest), dest, os.path.dirname(dest)):
        layout.fsync_dir(d)
    return last_lsn


def _copy_sealed(path: str, manifest: Manifest, dest: str, rec: SegmentRecord, fetch: Fetch | None) -> list[str]:
    """Copy a sealed segment from the nearest tier that holds it; returns
    the tiers the copy holds it in. The pipeline may move it meanwhile,
    but it never deletes the last copy, so one of the three is there."""
    sid = rec.segment_id
    try:
        _copy_file(layout.segment_path(path, sid), layout.segment_path(dest, sid))
        return ["t0"]
    except FileNotFoundError:
        pass
    os.makedirs(layout.tier1_dir(dest), exist_ok=True)
    try:
        _copy_file(layout.tier1_path(path, sid), layout.tier1_path(dest, sid))
        return ["t1"]
    except FileNotFoundError:
        pass
    now = manifest.segment(sid)  # the snapshot may predate the upload
    if now is None or "t2" not in now.tiers or fetch is None:
        raise errors.StorageError(
            0, f"{path}: segment {sid} is in no local tier and Tier 2 cannot be reached to back it up "
            "(configure tier2_url and its credentials, then back up again)"
        )
    fetch(now, layout.tier1_path(dest, sid))
    return ["t1"]


def _copy_file(src: str, dst: str) -> None:
    with open(src, "rb") as f:
        _write_file(dst, memoryview(f.read()))


def _write_file(dst: str, data: memoryview | bytes) -> None:
    try:
        with open(dst, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise errors.StorageError(e.errno or 0, f"writing the backup file {dst}: {e} (check free space)") from None
