"""A read-only handle's view of a store another handle writes: it follows
the active segment with pread (never a map of a file the writer may
shrink), notices new segment files, and reads a segment through the
manifest once the writer has recorded it sealed. Its tail loops sleep on
the feed's wake word until the writer ends a batch. Local files are its
one source; a bucket is the second one, beside it (``aoflite.replica``)."""

from __future__ import annotations

import os
import threading
import time

from . import errors, layout, recovery
from .manifest import Manifest
from .reads import Reads
from .segment import Feed, Segment

__all__ = ["Follower"]


class Follower:
    """Keeps a Reads' view up to date with the writer's files."""

    def __init__(self, path: str, store_id: int, manifest: Manifest, reads: Reads, poll_interval_ms: int):
        self.path = path
        self._poll_s = poll_interval_ms / 1000
        self._store_id = store_id
        self._manifest = manifest
        self._reads = reads
        self._lock = threading.Lock()
        self._seq = -1  # the manifest ledger's sequence the view was built at
        self.feed: Feed | None = None
        self._open_feed()
        last = manifest.last_segment()
        self._newest = 0  # newest segment id seen
        if last is not None:
            self._newest = last.segment_id
            if last.state == "active":
                seg = self._follow(last.segment_id)
                if seg is not None:
                    reads.publish((seg,), keep_ranges=True)
        reads.refresh = self.refresh
        reads.wait_commit = self.wait
        reads.follower = True
        self.refresh()

    def _open_feed(self) -> None:
        """Map the feed once it exists (a writer creates it)."""
        try:
            self.feed = Feed(layout.feed_path(self.path), writable=False)
        except (errors.NotFound, errors.FormatError):
            self.feed = None  # no writer ever ran here: nothing can rewrite a segment

    def refresh(self) -> None:
        """Take in what the writer committed, rolled and sealed. Costs a
        manifest read and a stat when nothing changed."""
        with self._lock:
            if self.feed is None:
                self._open_feed()
            live = self._reads.view.live
            seq = self._manifest.ledger_seq()
            changed = seq != self._seq
            if changed:
                self._seq = seq
                # segments the manifest now lists as sealed are read through it
                live = tuple(s for s in live if not self._manifest_sealed(s))
            for seg in live:
                seg.refresh()
            # segment ids are consecutive: the writer's next file is newest + 1,
            # on disk before the manifest records it
            while os.path.exists(layout.segment_path(self.path, self._newest + 1)):
                new = self._follow(self._newest + 1)
                if new is None:
                    break
                live += (new,)
                self._newest += 1
            if changed or live is not self._reads.view.live:
                self._reads.publish(live, keep_ranges=not changed)

    def wait(self, seen: int, timeout_ms: int) -> int:
        """Tail loops: sleep until the writer ends a batch after the wake
        word read as seen, or timeout_ms pass; returns the word now. Polls
        every poll_interval_ms instead while there is no feed to sleep on
        (no writer has run yet) or no write access to it."""
        feed = self.feed
        now = feed.wait(seen, timeout_ms) if feed is not None else None
        if now is not None:
            return now
        if timeout_ms > 0:
            time.sleep(min(timeout_ms / 1000, self._poll_s))
        return seen

    def close(self) -> None:
        """Wake this handle's sleeping tail loops, so they see it closed."""
        if self.feed is not None:
            self.feed.interrupt()

    def _manifest_sealed(self, seg: Segment) -> bool:
        rec = self._manifest.segment(seg.info().segment_id)
        return rec is not None and rec.state == "sealed"

    def _follow(self, segment_id: int) -> Segment | None:
        """segment_id opened to follow through its in-memory index; None
        when it is not readable yet (being created)."""
        path = layout.segment_path(self.path, segment_id)
        try:
            seg, _ = Segment.open(path, feed=self.feed)
        except (errors.NotFound, errors.FormatError, errors.CorruptionError):
            return None  # being created, or discarded by the writer's recovery
        recovery.check_identity(seg, seg.info(), self._store_id, segment_id)
        return seg
