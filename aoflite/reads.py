"""The read path: from (key, offset) or LSN to a segment and its records.

The live segments answer for their own offsets from their in-memory index;
older offsets are in a sealed segment the manifest's key ranges name,
mapped through a least-recently-used cache. What a read consults, the live
segments and the ranges cached from the manifest, is one immutable View,
replaced whole (never patched) when a roll or a follower's refresh changes
it: a reader takes the view once and fills the ranges dict of the view it
took, so a manifest load racing a roll can only land in a discarded view.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterator
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any, cast

from . import errors, layout, recovery
from .args import U64_END, check_key, check_offset, check_timeout
from .coldread import LOCAL, ColdReads
from .config import Config
from .failpoints import hit
from .keys import Keys
from .lifecycle import Lifecycle
from .manifest import Manifest
from .record import Record
from .segment import Segment

if TYPE_CHECKING:
    from .hydration import Hydrator

__all__ = ["Reads", "View"]

_new_record = tuple.__new__  # tuple.__new__(Record, fields): a Record without a Python frame
_CHUNK = 512  # records fetched from C per call while scanning
_first = itemgetter(0)
# How long a tail loop sleeps between looks when nothing wakes it. Commits
# and closing wake it (the writer's condition variable in process, the
# feed's wake word across processes), so this only bounds a wake that
# never comes, such as from a writer built before the wake word.
_RECHECK_S = 30.0
# A look that found more than one record means records come faster than
# the loop wakes: it then naps this long before it asks to be woken, so
# each look takes a chunk and wakes (a system call in the writer each)
# come about once per millisecond at most. A look that found one record
# is a quiet feed: the loop sleeps until the next batch wakes it.
_BUSY_NAP_S = 0.001


class View:
    """The live segments (oldest first) and the sealed key ranges loaded
    from the manifest so far (key id -> [(last_offset, segment_id,
    first_offset)]), as one unit."""

    __slots__ = ("live", "ranges")

    def __init__(self, live: tuple[Segment, ...], ranges: dict[int, list[tuple[int, int, int]]] | None = None):
        self.live = live
        self.ranges = {} if ranges is None else ranges


def _no_refresh() -> None:
    pass


class _Resume:
    """Where a tail loop's store-wide scan stopped: the segment, the byte
    position past the last record it yielded, and the next LSN. The next
    look starts there: a segment scan from the start reads (and checks the
    CRC of) every record before the LSN asked for, so a look would cost the
    size of the active segment rather than the records new since the last."""

    __slots__ = ("seg", "pos", "lsn")

    def __init__(self) -> None:
        self.seg: Segment | None = None
        self.pos = 0
        self.lsn = 0


class Reads:
    """Every read of one handle. ``refresh`` is the follower's (a writer's
    handle sees its own appends at once); ``next_offset`` the writer's;
    ``wait_commit(seen, timeout_ms)`` either's: sleeps until a batch ends
    after the value seen (which it returned last) and returns the new one."""

    def __init__(self, path: str, store_id: int, manifest: Manifest, keys: Keys, config: Config, life: Lifecycle):
        self.path = path
        self._store_id = store_id
        self._manifest = manifest
        self._keys = keys
        self._ids = keys.ids  # the hot path's key lookup
        self._config = config
        self._life = life
        self.view = View(())
        self.refresh: Callable[[], None] = _no_refresh
        self.follower = False
        self.next_offset: Callable[[int], int] | None = None
        self.wait_commit: Callable[[int, int], int] | None = None
        self._sealed: OrderedDict[int, Segment] = OrderedDict()
        self._seg_lock = threading.Lock()
        # the tiers' plug-in: brings an evicted segment's file back
        self.hydrator: Hydrator | None = None
        self.on_use: Callable[[int], None] | None = None
        # point reads of segments only Tier 2 holds, by ranged requests
        self.cold: ColdReads | None = None

    # ------------------------------------------------------ the view

    def publish(self, live: tuple[Segment, ...], *, keep_ranges: bool = False) -> None:
        """Replace the view: new live segments, and fresh ranges unless the
        manifest has not changed (keep_ranges)."""
        self.view = View(live, self.view.ranges if keep_ranges else None)

    def live(self) -> tuple[Segment, ...]:
        """The live segments now."""
        return self.view.live

    # --------------------------------------------- sealed segments

    def cache_segment(self, segment_id: int, seg: Segment) -> None:
        """Keep seg mapped (evicting the least recently used past the limit)."""
        with self._seg_lock:
            self._sealed[segment_id] = seg
            while len(self._sealed) > self._config.read.open_segments:
                self._sealed.popitem(last=False)

    def forget_segment(self, segment_id: int) -> None:
        """Drop segment_id's map (its file is being evicted)."""
        with self._seg_lock:
            self._sealed.pop(segment_id, None)

    def cached_segments(self) -> int:
        """How many sealed segments are mapped."""
        return len(self._sealed)

    def segment(self, segment_id: int, wait: bool = True) -> Segment:
        """A segment the manifest says is sealed, mapped (from the cache
        when it is there). Never a follower's live copy of it: that one
        may not have taken in the segment's last records yet. An evicted
        one is hydrated first (wait=False: BackpressureError(kind=
        "hydration") instead of waiting for it)."""
        seg = self._sealed.get(segment_id)
        if seg is not None:
            try:
                self._sealed.move_to_end(segment_id)
            except KeyError:
                pass  # evicted meanwhile: still good to use
            return seg
        seg = self.open_sealed(segment_id, wait)
        self.cache_segment(segment_id, seg)
        if self.on_use is not None:
            self.on_use(segment_id)
        return seg

    def open_sealed(self, segment_id: int, wait: bool = True) -> Segment:
        """Open the file of a segment the manifest says is sealed, hydrating
        it from a lower tier when it was evicted; any way it falls short of
        a sealed segment is corruption."""
        path = layout.segment_path(self.path, segment_id)
        seg: Segment | None = None
        # a hydrated file can be evicted again before we map it: a few tries
        for _ in range(3 if self.hydrator is not None else 1):
            if self.hydrator is not None:
                seg = self.hydrator.ensure_local(segment_id, wait=wait)
                if seg is not None:
                    break
            try:
                seg, _ = Segment.open(path)
            except errors.NotFound:
                continue
            except errors.FormatError as e:
                raise errors.CorruptionError(
                    f"segment {segment_id} is in the manifest but its file is not a readable segment: {e} "
                    "(restore it from a backup or replica)",
                    path=path,
                    position=0,
                ) from None
            # a cache copy (hydrated, never synced) is checked before first use
            if self.hydrator is None or self.hydrator.is_sound(seg, self._manifest.segment(segment_id)):
                break
            seg = None
        if seg is None:
            raise errors.CorruptionError(
                f"{path}: segment {segment_id} is in the manifest but its file is missing "
                "(restore it from a backup or replica)",
                path=path,
            )
        info = seg.info()
        recovery.check_identity(seg, info, self._store_id, segment_id)
        if not info.sealed:
            raise errors.CorruptionError(
                f"{path}: the manifest says segment {segment_id} is sealed but its footer is missing or damaged "
                "(restore it from a backup or replica)",
                path=path,
                position=info.file_bytes,
            )
        return seg

    def verify(self, segment_id: int | None = None) -> int:
        """See Store.verify."""
        self._life.check()
        if segment_id is None:
            recs = [r for r in self._manifest.segments() if r.state == "sealed"]
        else:
            check_offset("segment_id", segment_id)
            rec = self._manifest.segment(segment_id)
            if rec is None:
                raise errors.NotFound(f"{self.path}: no segment {segment_id} in the manifest")
            if rec.state != "sealed":
                raise errors.Error(f"{self.path}: segment {segment_id} is still active (seal it first)")
            recs = [rec]
        for rec in recs:
            seg = self.open_sealed(rec.segment_id)
            seg.verify()
            info = seg.info()
            facts = (info.record_count, info.last_lsn, info.file_crc, info.file_bytes)
            if facts != (rec.record_count, rec.last_lsn, rec.file_crc, rec.file_bytes):
                raise errors.CorruptionError(
                    f"{seg.path}: segment {rec.segment_id} verifies on its own but is not the file the "
                    f"manifest recorded (records, last LSN, CRC, size {facts} != "
                    f"{(rec.record_count, rec.last_lsn, rec.file_crc, rec.file_bytes)})",
                    path=seg.path,
                )
        return len(recs)

    # --------------------------------------------- key to segment

    def _key_ranges(self, view: View, kid: int) -> list[tuple[int, int, int]]:
        ranges = view.ranges.get(kid)
        if ranges is None:
            ranges = [(last, seg, first) for last, seg, first, _ in self._manifest.key_ranges(kid)]
            hit("ranges.after_load")
            view.ranges[kid] = ranges
        return ranges

    def _find(self, kid: int, offset: int, wait: bool = True) -> Segment | None:
        """The segment holding (kid, offset), or None when it does not exist."""
        view = self.view
        for seg in reversed(view.live):
            r = seg.key_range(kid)
            if r is not None and offset >= r.first_offset:
                return seg if offset < r.first_offset + r.count else None
        return self._sealed_segment_of(view, kid, offset, wait)

    def _sealed_segment_of(self, view: View, kid: int, offset: int, wait: bool = True) -> Segment | None:
        ranges = self._key_ranges(view, kid)
        i = bisect_left(ranges, offset, key=_first)
        if i < len(ranges) and offset >= ranges[i][2]:
            return self.segment(ranges[i][1], wait)
        return None

    def kid(self, key: Any) -> int | None:
        """The key's id, checking the key; None when no record has it."""
        check_key(key)
        kid = self._keys.known(key)
        if kid is None and self.follower:
            self.refresh()
            self._keys.learn_live(self.view.live)
            kid = self._keys.ids.get(key)
        return kid

    # -------------------------------------------------------- reads

    def read(self, key: str, offset: int, *, nonblocking: bool = False) -> Record:
        """See Store.read."""
        if not self._life.usable:
            self._life.check()
        if nonblocking is not False and nonblocking is not True:
            raise TypeError("nonblocking must be True or False")
        try:
            kid = self._ids.get(key)
        except TypeError:
            kid = None
        if kid is None:
            kid = self.kid(key)
        if kid is not None and type(offset) is int and 0 <= offset < U64_END:
            got = self._read(kid, offset, not nonblocking)
            if got is None and self.follower:
                self.refresh()
                got = self._read(kid, offset, not nonblocking)
            if got is not None:
                return _new_record(Record, (key, offset, *got))
        check_offset("offset", offset)
        if kid is not None and offset < self._manifest.retired_below(kid):
            raise errors.NotFound(
                f"{self.path}: key {key!r} offset {offset} was retired by retention (the key's oldest "
                f"record kept is at offset {self._manifest.retired_below(kid)})"
            )
        raise errors.NotFound(f"{self.path}: no record at key {key!r} offset {offset}")

    def _read(self, kid: int, offset: int, wait: bool = True) -> tuple[int, int, bytes, bool] | None:
        # the live segments answer for their own offsets (newest first);
        # older offsets are in a sealed segment the manifest names
        view = self.view
        for seg in reversed(view.live):
            got = seg.read(kid, offset)
            if got is not None:
                return got
        ranges = self._key_ranges(view, kid)
        i = bisect_left(ranges, offset, key=_first)
        if i == len(ranges) or offset < ranges[i][2]:
            return None
        sid = ranges[i][1]
        if self.cold is not None and wait and sid not in self._sealed:
            cold = self.cold.read(sid, kid, offset)
            if cold is not LOCAL:
                return cast("tuple[int, int, bytes, bool] | None", cold)
        return self.segment(sid, wait).read(kid, offset)

    def scan(
        self, key: str, start: int = 0, stop: int | None = None, *, nonblocking: bool = False
    ) -> Iterator[Record]:
        """See Store.scan."""
        self._life.check()
        check_offset("start", start)
        check_offset("stop", stop, allow_none=True)
        if not isinstance(nonblocking, bool):
            raise TypeError("nonblocking must be True or False")
        kid = self.kid(key)
        return self._scan(key, kid, start, stop, not nonblocking) if kid is not None else iter(())

    def _scan(self, key: str, kid: int, off: int, stop: int | None, wait: bool = True) -> Iterator[Record]:
        refreshed = False
        off = max(off, self._manifest.retired_below(kid))  # retention took what lies below
        while stop is None or off < stop:
            self._life.check()
            seg = self._find(kid, off, wait)
            if seg is None:
                if not self.follower or refreshed:
                    return
                self.refresh()
                refreshed = True
                continue
            n = _CHUNK if stop is None else min(_CHUNK, stop - off)
            offs, lsns, tss, vals, ends = seg.read_range(kid, off, n)
            if not offs:
                return
            yield from map(_new_record, repeat(Record), zip(repeat(key), offs, lsns, tss, vals, ends))
            off = offs[-1] + 1

    def prefetch(self, key: str, start: int = 0, stop: int | None = None) -> int:
        """See Store.prefetch."""
        self._life.check()
        check_offset("start", start)
        check_offset("stop", stop, allow_none=True)
        kid = self.kid(key)
        if kid is None or self.hydrator is None:
            return 0
        started = 0
        for last, sid, first, _ in self._manifest.key_ranges(kid):
            if last < start or (stop is not None and first >= stop):
                continue
            if not os.path.exists(layout.segment_path(self.path, sid)):
                with contextlib.suppress(errors.BackpressureError):  # a full queue: the scan fetches it
                    self.hydrator.start(sid)
                    started += 1
        return started

    def count(self, key: str) -> int:
        """See Store.count."""
        self._life.check()
        kid = self.kid(key)
        if kid is None:
            return 0
        if self.next_offset is not None:
            try:
                return self.next_offset(kid)
            except errors.Error:
                pass  # known from the manifest, not registered with the writer
        else:
            self.refresh()
            for seg in reversed(self.view.live):
                r = seg.key_range(kid)
                if r is not None:
                    return r.first_offset + r.count
        known = self._manifest.lookup_key(key)
        return known[1] if known else 0

    def keys(self) -> list[str]:
        """See Store.keys."""
        self._life.check()
        self.refresh()
        names = set(self._manifest.keys())
        for seg in self.view.live:
            for r in seg.keys():
                names.add(self._keys.names[r.key_id])
        return sorted(names)

    # ---------------------------------------------------- positions

    def find_lsn(self, time_ms: int) -> int | None:
        """See Store.find_lsn."""
        self._life.check()
        if type(time_ms) is not int:
            raise TypeError(f"time_ms must be an int (milliseconds since the epoch), not {type(time_ms).__name__}")
        self.refresh()
        # the segments' first timestamps narrow it to one segment: the last
        # one that starts before time_ms (its later records may reach it),
        # else the first one at or after it
        starts = [(r.first_ts_ms, r.first_lsn) for r in self._manifest.segments() if r.state == "sealed"]
        for seg in self.view.live:
            info = seg.info()
            if info.record_count and info.first_lsn > max((lsn for _, lsn in starts), default=0):
                starts.append((recovery.first_timestamp(seg), info.first_lsn))
        if not starts:
            return None
        i = bisect_left([ts for ts, _ in starts], time_ms)
        lsn = starts[max(i - 1, 0)][1]
        for rec in self._scan_all(lsn):
            if rec.timestamp_ms >= time_ms:
                return rec.lsn
        return None

    def batch_end_at(self, lsn: int) -> bool:
        """Whether the record at lsn ends its batch (ValueError when there
        is no record at lsn)."""
        for rec in self._scan_all(lsn):
            if rec.lsn == lsn:
                return rec.batch_end
            break
        if self._manifest.retired_through():
            first = self._manifest.segments()
            if first and lsn < first[0].first_lsn:
                return True  # retired: a position before the oldest record kept
        raise ValueError(f"{self.path}: no record has LSN {lsn}")

    def segment_spans(self) -> list[tuple[int, int, int]]:
        """(first LSN, last LSN, bytes) of every segment, sealed and live."""
        self.refresh()
        spans = [(r.first_lsn, r.last_lsn, r.file_bytes) for r in self._manifest.segments() if r.state == "sealed"]
        for seg in self.view.live:
            info = seg.info()
            if info.record_count:
                spans.append((info.first_lsn, info.last_lsn, info.records_end))
        return spans

    def last_lsn(self) -> int:
        """The LSN of the newest committed record (0: none)."""
        return max((end for _, end, _ in self.segment_spans()), default=0)

    # ---------------------------------------------------- change feed

    def scan_all(self, start_lsn: int = 0) -> Iterator[Record]:
        """See Store.scan_all."""
        self._life.check()
        check_offset("start_lsn", start_lsn)
        return self._scan_all(max(start_lsn, 1))

    def _scan_all(self, lsn: int, at: _Resume | None = None) -> Iterator[Record]:
        """Records from lsn on; with at, from where the last scan given the
        same at stopped, which it keeps up to date."""
        self.refresh()
        seg: Segment | None
        if at is not None and at.seg is not None and at.lsn == lsn:
            seg, pos = at.seg, at.pos
        else:
            # the live segments before the manifest: a roll commits the manifest
            # before it publishes the view, so a segment missing from this
            # view's live list is already sealed in the manifest read after it
            live = self.view.live
            sid = self._manifest.segment_for_lsn(lsn)
            seg = self.segment(sid) if sid is not None else (live[0] if live else None)
            if sid is not None:
                self._prefetch_after(sid)
            pos = 0
        names = self._keys.names
        settled = retried = False
        while seg is not None:
            self._life.check()
            pos, kids, offs, lsns, tss, vals, ends = seg.scan(pos, lsn, _CHUNK)
            if kids:
                yield from map(
                    _new_record, repeat(Record), zip(map(names.__getitem__, kids), offs, lsns, tss, vals, ends)
                )
                lsn = lsns[-1] + 1
                if at is not None:
                    at.seg, at.pos, at.lsn = seg, pos, lsn
                retried = False
                continue
            hit("scan_all.segment_end")
            if settled:
                # settled before the scan that just came back empty: every
                # record the segment will ever hold has been yielded
                seg = self._segment_after(seg.info().segment_id)
                pos, settled = 0, False
                if at is not None:
                    at.seg, at.pos, at.lsn = seg, pos, lsn
            elif retried:
                return  # nothing more for now
            else:
                # the segment may have grown or been sealed since the scan
                # began: scan it once more before moving on or stopping
                settled, retried = self._settled(seg), True

    def _settled(self, seg: Segment) -> bool:
        """True when seg holds every record it ever will (it is sealed and
        this handle has taken in its last records)."""
        if seg.info().sealed:
            return True
        # a follower's live copy (a writer's unsealed segment is the active
        # one): the refresh says whether the file was sealed before it
        # began, and then it took in the last records
        return self.follower and seg.refresh().reason == "sealed"

    def _prefetch_after(self, segment_id: int) -> None:
        """A store-wide scan entering segment_id: start fetching the next
        sealed segment if it was evicted, so its hydration overlaps this
        segment's scan."""
        if self.hydrator is None:
            return
        nxt = self._manifest.segment_after(segment_id)
        if nxt is not None and nxt.state == "sealed" and not os.path.exists(layout.segment_path(self.path, nxt.segment_id)):
            with contextlib.suppress(errors.Error):  # only a head start: the scan fetches it anyway
                self.hydrator.start(nxt.segment_id)

    def _segment_after(self, segment_id: int) -> Segment | None:
        """The segment following segment_id: the manifest's next one, or a
        live segment it does not list yet."""
        self.refresh()
        live = self.view.live  # before the manifest: see _scan_all
        hit("segment_after.view_taken")
        rec = self._manifest.segment_after(segment_id)
        if rec is not None and rec.state == "sealed":
            self._prefetch_after(rec.segment_id)
            return self.segment(rec.segment_id)
        later = [s for s in live if s.info().segment_id > segment_id]
        return min(later, key=lambda s: s.info().segment_id) if later else None

    # ---------------------------------------------------------- tail

    def tail_all(self, start_lsn: int = 0, timeout: float | None = None) -> Iterator[Record]:
        """See Store.tail_all."""
        self._life.check()
        check_offset("start_lsn", start_lsn)
        check_timeout(timeout)
        at = _Resume()
        return self._follow_feed(lambda lsn: self._scan_all(lsn, at), max(start_lsn, 1), timeout, "lsn")

    def _follow_feed(
        self, scan: Callable[[int], Iterator[Record]], pos: int, timeout: float | None, field: str
    ) -> Iterator[Record]:
        """Yield scan(pos) again and again as new records commit, pos moving
        past each record (by offset or LSN); ends after timeout seconds
        without one (None: never)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = self.wait_commit
        assert wait is not None, "set by the handle's writer or follower"
        gen = wait(-1 & 0xFFFFFFFFFFFFFFFF, 0)
        while True:
            got = 0
            for rec in scan(pos):
                yield rec
                pos = getattr(rec, field) + 1
                got += 1
            if got and timeout is not None:
                deadline = time.monotonic() + timeout
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            self._life.check()
            if got > 1:
                time.sleep(_BUSY_NAP_S)
            step = _RECHECK_S if remaining is None else min(remaining, _RECHECK_S)
            gen = wait(gen, max(1, int(step * 1000)))

    def tail(self, key: str, start: int = 0, timeout: float | None = None) -> Iterator[Record]:
        """See Store.tail."""
        self._life.check()
        check_key(key)
        check_offset("start", start)
        check_timeout(timeout)
        return self._tail(key, start, timeout)

    def _tail(self, key: str, off: int, timeout: float | None) -> Iterator[Record]:
        def scan(start: int) -> Iterator[Record]:
            kid = self.kid(key)
            return self._scan(key, kid, start, None) if kid is not None else iter(())

        return self._follow_feed(scan, off, timeout, "offset")
