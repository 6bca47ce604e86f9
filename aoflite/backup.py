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
"""

from __future__ import annotations

import os
import shutil

from . import errors, layout
from .manifest import Manifest
from .segment import Feed, Segment

__all__ = ["backup", "remove_partial"]


def backup(path: str, manifest: Manifest, feed: Feed | None, dest: str) -> int:
    """Copy the store at path into dest (which must not exist, or be an
    empty directory); returns the last LSN the copy holds."""
    dest = os.path.abspath(dest)
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)):
        raise errors.FormatError(f"{dest}: exists and is not an empty directory (back up into a new path)")
    made = not os.path.exists(dest)
    try:
        return _copy(path, manifest, feed, dest)
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


def _copy(path: str, manifest: Manifest, feed: Feed | None, dest: str) -> int:
    os.makedirs(os.path.join(dest, "segments"), exist_ok=True)
    os.makedirs(layout.manifest_dir(dest), exist_ok=True)
    manifest.copy_to(layout.manifest_dir(dest))
    snapshot = Manifest(layout.manifest_dir(dest))
    try:
        recs = {r.segment_id: r for r in snapshot.segments()}
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
            _copy_file(src, dst)
            last_lsn = max(last_lsn, rec.last_lsn)
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
    # the marker last: until it is there, the copy is not a store
    _copy_file(os.path.join(path, layout.MARKER), os.path.join(dest, layout.MARKER))
    for d in (os.path.join(dest, "segments"), layout.manifest_dir(dest), dest, os.path.dirname(dest)):
        layout.fsync_dir(d)
    return last_lsn


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
