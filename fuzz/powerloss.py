"""Simulated power loss: the store a machine would find after losing power.

The sync log (see aoflite.segment.SYNC_LOG) says which bytes of which file
were on stable storage at each moment. ``build_image`` turns a store
directory, live or just killed, and its log into a crash image in another
directory:

- a segment file keeps the ranges its msyncs (``R``) made durable, and its
  header once an fsync (``F``) covered it; the header is all a segment holds
  at its creating fsync, the rest of the file being preallocated zeros that
  appends later overwrite without that fsync covering them;
- a file's size is durable only as of its last fsync (``F``, which logs the
  size it covered): an msync writes pages back, not the inode, so what an
  msync covered past that size is durable only if the size survives, which
  nothing promised. A file that grew since its last fsync may come back at
  that size, or at any size up to its current one (writeback and the
  journal may have taken the growth along), its stretches past the old size
  kept, dropped, torn, zeroed or garbled like any unsynced stretch;
- every other stretch of a file, page by page (PAGE), is independently kept,
  dropped (the old bytes: zeros inside the durable size, nothing past it),
  torn (kept up to a sector boundary (SECTOR), dropped after), zeroed,
  filled with garbage, or reverted to a version it had earlier, as a Chooser
  decides;
- versions come from Snapshots: a harness driving the workload in-process
  takes one after each step, and a ``V`` line orders it against the syncs.
  Writeback may have put on disk any version a page had since the last
  sync that covered it, so an unsynced stretch may revert to its contents
  at any snapshot, and a synced stretch that changed since holds what the
  sync wrote or its contents at a later snapshot (or now), never less;
- other files (the store marker, written through a temporary name) are
  durable whole once fsynced; a file whose creation no fsync of the file nor
  of its directory made durable may vanish;
- the LMDB manifest is taken as of its last commit (LMDB syncs each one).

The image is then opened and checked with testhelpers.check_recovered
(``crash_and_check``). Bytes nothing acknowledged may come back as anything,
so a cut taken while the store is open and writing is a valid crash.
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
import re
import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Protocol, TypeVar

from aoflite import layout
from aoflite import segment as _segment
from testhelpers import InvariantError, check_recovered

from . import stats

__all__ = [
    "ACTIONS",
    "Chooser",
    "PlanChooser",
    "RandomChooser",
    "Snapshots",
    "build_image",
    "crash_and_check",
    "crash_file",
    "disable_sync_log",
    "enable_sync_log",
    "mark_durable",
    "plans",
    "read_sync_log",
]

PAGE = 4096
SECTOR = 512
ACTIONS = ("keep", "drop", "torn", "zero", "garbage", "revert")

T = TypeVar("T")


class Chooser(Protocol):
    """Where a crash image's choices come from."""

    def choice(self, options: Sequence[T]) -> T: ...

    def integer(self, lo: int, hi: int) -> int: ...


class RandomChooser:
    """Choices from a seeded random.Random."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def choice(self, options):
        return self.rng.choice(options)

    def integer(self, lo, hi):
        return self.rng.randint(lo, hi)


class PlanChooser:
    """Page fates taken in turn from a plan (cycling), everything else from
    a seeded random.Random. Its shape does not depend on the store, so
    hypothesis replays it even when a background flush moved the durable
    end (``plans()``), and failures shrink toward keeping every page."""

    def __init__(self, fates: Sequence[str], seed: int):
        self.fates, self.seed = list(fates), seed
        self.rng = random.Random(seed)
        self.turn = 0

    def choice(self, options):
        if tuple(options) == ACTIONS:
            self.turn += 1
            return self.fates[(self.turn - 1) % len(self.fates)]
        return self.rng.choice(options)

    def integer(self, lo, hi):
        return self.rng.randint(lo, hi)

    def __repr__(self):
        return f"PlanChooser({self.fates!r}, {self.seed})"


def plans(max_fates: int = 32):
    """A hypothesis strategy of PlanChoosers."""
    from hypothesis import strategies as st

    return st.builds(
        PlanChooser, st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=max_fates), st.integers(0, 2**32 - 1)
    )


# ------------------------------------------------------------- the sync log


def enable_sync_log(path: str) -> None:
    """Start logging syncs to path, as AOFLITE_SYNC_LOG does when set before
    aoflite is imported (pytest imports it before any test can set it)."""
    _segment.enable_sync_log(path)


def disable_sync_log() -> None:
    """Stop logging syncs."""
    _segment.enable_sync_log(None)


class FileLog:
    """What the log says of one file."""

    def __init__(self, first_line: int):
        self.first_line = first_line
        self.ranges: list[tuple[int, int, int]] = []  # (from, to, line) of each R
        self.fsyncs: list[tuple[int, int]] = []  # (size, line) of each F
        self.size: int | None = None  # from the last F line

    def syncs(self, is_segment: bool) -> Iterator[tuple[int, int, int]]:
        """(from, to, line) of each sync, for the bytes it made durable:
        none past the durable size, which only an fsync makes durable."""
        limit = self.size or 0
        for size, line in self.fsyncs:
            yield 0, min(size, _segment.HEADER_BYTES, limit) if is_segment else min(size, limit), line
        for a, b, line in self.ranges:
            if a < limit:
                yield a, min(b, limit), line

    def durable(self, is_segment: bool) -> list[tuple[int, int]]:
        """Merged byte ranges known durable."""
        merged: list[tuple[int, int]] = []
        for a, b, _ in sorted(self.syncs(is_segment)):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            elif b > a:
                merged.append((a, b))
        return merged


# the marker is written under this name, fsynced, then renamed
_RENAMED = {layout.MARKER + ".tmp": layout.MARKER}


def read_sync_log(log_path: str, root: str) -> tuple[dict[str, FileLog], dict[str, int], dict[int, int]]:
    """Parse the log for files under root: (path -> FileLog, directory ->
    line of its last D, snapshot id -> line of its V)."""
    root = os.path.abspath(root)
    files: dict[str, FileLog] = {}
    dirs: dict[str, int] = {}
    marks: dict[int, int] = {}
    with open(log_path) as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines):
        kind, _, rest = line.partition(" ")
        if kind == "D":
            dirs[os.path.abspath(rest)] = n
            continue
        if kind == "V":
            marks[int(rest)] = n
            continue
        if kind == "R":
            path, a, b = rest.rsplit(" ", 2)
        elif kind == "F":
            path, a = rest.rsplit(" ", 1)
        else:
            continue  # not a sync line
        path = os.path.abspath(path)
        if os.path.commonpath([root, path]) != root:
            continue
        head, name = os.path.split(path)
        path = os.path.join(head, _RENAMED.get(name, name))
        flog = files.setdefault(path, FileLog(n))
        if kind == "R":
            flog.ranges.append((int(a), int(b), n))
        else:
            flog.size = int(a)
            flog.fsyncs.append((flog.size, n))
    return files, dirs, marks


# ------------------------------------------------------------ page versions

_snapshot_ids = itertools.count(1)


class Snapshots:
    """The versions the active segment's pages went through, as seen by the
    harness that drives the workload in-process: it calls ``take`` after
    each step, before each cut, and wherever else a version may be
    short-lived. Sealed segments need none: sealing fsyncs them whole."""

    def __init__(self):
        self._path: str | None = None
        self._last = b""
        self._ids: list[int] = []
        self._changes: dict[int, list[tuple[int, bytes]]] = {}  # page -> [(snapshot id, the page from then on)]

    def take(self, root: str) -> None:
        """Record the active (newest) segment of the store at root as it is now."""
        sid = next(_snapshot_ids)
        # the V line goes first: every sync logged before it is older than
        # the bytes read here
        _segment.sync_log_line(f"V {sid}")
        self._ids.append(sid)
        ids = layout.segment_ids(root)
        if not ids:
            return
        path = os.path.abspath(layout.segment_path(root, ids[-1]))
        with open(path, "rb") as f:
            data = f.read()
        if path != self._path:
            # a page first seen as zeros needs no entry: no entry means zeros
            self._path, self._last, self._changes = path, bytes(len(data)), {}
        step = 64 * PAGE  # skip unchanged stretches fast
        for start in range(0, len(data), step):
            if data[start : start + step] == self._last[start : start + step]:
                continue
            for pos in range(start, min(start + step, len(data)), PAGE):
                page = data[pos : pos + PAGE]
                if page != self._last[pos : pos + PAGE]:
                    self._changes.setdefault(pos // PAGE, []).append((sid, page))
        self._last = data

    def history(self, path: str, marks: Mapping[int, int]) -> _History | None:
        """The versions of path's pages, placed in the log by marks
        (snapshot id -> line); None if path is not the segment tracked."""
        if path != self._path:
            return None
        return _History(
            {p: [(marks[i], v) for i, v in vs if i in marks] for p, vs in self._changes.items()},
            sorted(marks[i] for i in self._ids if i in marks),
        )


class _History:
    """One file's page versions, by log line."""

    def __init__(self, changes: dict[int, list[tuple[int, bytes]]], lines: list[int]):
        self.changes = changes
        self.lines = lines

    def versions(self, a: int, b: int, since: int | None) -> list[bytes]:
        """Bytes [a, b) (within a page) at each snapshot after log line since
        (None: at every snapshot), oldest first."""
        i = bisect.bisect_right(self.lines, -1 if since is None else since)
        if i == len(self.lines):
            return []
        held, later = None, []  # held: the page at the first of them (None: zeros)
        for line, page in self.changes.get(a // PAGE, ()):
            if line <= self.lines[i]:
                held = page
            else:
                later.append(page)
        lo = a % PAGE
        return [(page or b"")[lo : lo + b - a].ljust(b - a, b"\0") for page in [held, *later]]


# ------------------------------------------------------------------ images


def _is_segment(path: str) -> bool:
    return os.path.basename(os.path.dirname(path)) == "segments" and path.endswith(".seg")


def _gaps(durable: list[tuple[int, int]], end: int) -> Iterable[tuple[int, int]]:
    """The stretches of [0, end) outside durable, split at page boundaries."""
    pos = 0
    for a, b in [*durable, (end, end)]:
        a = min(a, end)
        while pos < a:
            stop = min(a, (pos // PAGE + 1) * PAGE)
            yield pos, stop
            pos = stop
        pos = max(pos, b)


def _stretches(
    flog: FileLog | None, is_segment: bool, durable: list[tuple[int, int]], history: _History | None, end: int
) -> Iterator[tuple[int, int, int | None]]:
    """(from, to, since) for the stretches of [0, end), at most a page long
    and split where syncs end, that may not hold their current bytes after
    the crash: since is the log line of the last sync that covered the
    stretch, or None if none did. A covered stretch is one only on a page
    that snapshots saw change (history)."""
    pages = {a // PAGE for a, _ in _gaps(durable, end)}
    if history is not None:
        pages.update(p for p in history.changes if p * PAGE < end)
    pages = sorted(pages)
    covers = defaultdict(list)  # page -> syncs that covered some of it
    for a, b, line in flog.syncs(is_segment) if flog else ():
        first, stop = bisect.bisect_left(pages, a // PAGE), bisect.bisect_left(pages, (b + PAGE - 1) // PAGE)
        for p in pages[first:stop]:
            covers[p].append((a, b, line))
    for p in pages:
        p0, p1 = p * PAGE, min((p + 1) * PAGE, end)
        syncs = covers[p]
        cuts = sorted({p0, p1, *(x for a, b, _ in syncs for x in (a, b) if p0 < x < p1)})
        for a, b in zip(cuts, cuts[1:]):
            lines = [line for lo, hi, line in syncs if lo <= a and b <= hi]
            if not lines:
                yield a, b, None
            elif history is not None:
                yield a, b, max(lines)


def crash_file(
    current: bytes,
    flog: FileLog | None,
    is_segment: bool,
    chooser: Chooser,
    tally: dict,
    history: _History | None = None,
) -> bytes:
    """The bytes a file holds after the crash; history: its page versions
    (Snapshots.history), if any were taken."""
    durable = flog.durable(is_segment) if flog else []
    # the size the last fsync covered, not what msyncs reached past it: a
    # file grown since may come back this long
    durable_size = min(len(current), flog.size or 0) if flog else 0
    # past the last non-zero byte (and the page after it) every choice but
    # garbage gives the same zeros, and garbage there is never read; an
    # earlier version may reach further
    reach = max(history.changes, default=-1) + 1 if history else 0
    horizon = min(len(current), max(len(current.rstrip(b"\0")) // PAGE + 2, reach) * PAGE)
    out = bytearray(current)
    size = durable_size
    for a, b, since in _stretches(flog, is_segment, durable, history, horizon):
        versions = history.versions(a, b, since) if history else []
        if since is not None:
            # durable: what the sync wrote, or a later version, nothing else
            if any(v != current[a:b] for v in versions):
                tally["revert"] = tally.get("revert", 0) + 1
                out[a:b] = chooser.choice([*versions, current[a:b]])
            continue
        action = chooser.choice(ACTIONS)
        tally[action] = tally.get(action, 0) + 1
        if action == "keep":
            size = max(size, b)
        elif action == "torn":
            cuts = range((a // SECTOR + 1) * SECTOR, b, SECTOR)
            cut = chooser.choice(cuts) if cuts else a
            out[cut:b] = bytes(b - cut)
            size = max(size, cut)
        elif action == "garbage":
            out[a:b] = random.Random(chooser.integer(0, 2**32 - 1)).randbytes(b - a)
            size = max(size, b)
        elif action == "revert":
            if versions:
                out[a:b] = chooser.choice(versions)
            size = max(size, b)
        else:
            out[a:b] = bytes(b - a)
            if action == "zero":
                size = max(size, b)
    del out[size:]
    return bytes(out)


def build_image(
    root: str, log_path: str, dest: str, chooser: Chooser, manifest_env=None, snapshots: Snapshots | None = None
) -> dict[str, int]:
    """Write the crash image of the store at root into dest (which must not
    exist) and return how often each choice was made. manifest_env: the
    live LMDB environment when the store is open (None: copy the files);
    snapshots: the page versions the harness took, if any."""
    root = os.path.abspath(root)
    files, dirs, marks = read_sync_log(log_path, root)  # before the copy: see module doc
    tally: dict[str, int] = {}
    man_src, man_dst = layout.manifest_dir(root), layout.manifest_dir(dest)
    os.makedirs(man_dst)
    if manifest_env is not None:
        manifest_env.copy(man_dst)
    else:
        shutil.copy(os.path.join(man_src, "data.mdb"), man_dst)
    for dirpath, _, names in os.walk(root):
        if os.path.commonpath([dirpath, man_src]) == man_src:
            continue
        out_dir = os.path.join(dest, os.path.relpath(dirpath, root))
        os.makedirs(out_dir, exist_ok=True)
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            flog = files.get(path)
            entry_durable = flog is not None and (
                flog.size is not None or dirs.get(dirpath, -1) > flog.first_line
            )
            if not entry_durable and chooser.choice((False, True)):
                tally["vanished"] = tally.get("vanished", 0) + 1
                continue
            with open(path, "rb") as f:
                current = f.read()
            with open(os.path.join(out_dir, name), "wb") as f:
                history = snapshots.history(path, marks) if snapshots else None
                f.write(crash_file(current, flog, _is_segment(path), chooser, tally, history))
    mark_durable(dest, log_path)
    return tally


def mark_durable(root: str, log_path: str) -> None:
    """Log every file under root as wholly durable: a crash image is what
    the disk holds, so a later cut of a store continued from it keeps it."""
    lines = []
    for dirpath, _, names in os.walk(os.path.abspath(root)):
        for name in names:
            path = os.path.join(dirpath, name)
            size = os.path.getsize(path)
            lines += [f"R {path} 0 {size}", f"F {path} {size}"]
        lines.append(f"D {dirpath}")
    with open(log_path, "a") as f:
        f.write("".join(line + "\n" for line in lines))


_LOST = re.compile(r"(\d+) records acknowledged, (\d+) survived")


def crash_and_check(
    root: str,
    log_path: str,
    dest: str,
    chooser: Chooser,
    appended: Mapping[str, Sequence[bytes]],
    acked: Mapping[str, int],
    batches: Iterable[Sequence[tuple[str, int]]] = (),
    manifest_env=None,
    snapshots: Snapshots | None = None,
    **open_kwargs,
) -> dict[str, int]:
    """Build a crash image of root in dest, recover it and check every
    invariant (testhelpers.check_recovered); returns the survivors."""
    build_image(root, log_path, dest, chooser, manifest_env, snapshots)
    stats.add("crash schedules")
    stats.add("acknowledged records checked", sum(acked.values()))
    try:
        return check_recovered(dest, appended, acked, batches, **open_kwargs)
    except InvariantError as e:
        lost = _LOST.search(str(e))
        if lost:
            stats.add("acknowledged records lost", int(lost[1]) - int(lost[2]))
        raise

