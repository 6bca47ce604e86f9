"""A read replica straight from a Tier 2 bucket: ``aoflite.open_replica``.

A second source of a store's records beside the local follower
(``aoflite.follow``): where a follower reads the writer's files on the
same machine, a replica reads what the writer put in Tier 2, from
anywhere. It restores the newest manifest snapshot into a generation
directory of its cache (``cache_dir/gen-N``, see ``aoflite.restore``),
opens it read-only, and hydrates segments from the bucket as reads need
them. ``refresh()`` installs a newer snapshot as a new generation; the
files already hydrated move over (linked) when the new manifest records
the same segment, so a refresh costs one GET when nothing changed and one
snapshot download when something did.

Cache budget: no writer runs in a replica's cache to evict what reads
hydrate, so the replica does: with ``tier0_max_bytes`` set, each time a
read opens a segment it deletes the least recently used hydrated files
(segment and Tier 1 copies) until the cache is within the budget. Reads
holding a segment keep it mapped; the next read of an evicted segment
hydrates it again.

A replica trails the writer by the snapshot interval: it sees what the
newest snapshot and the segments uploaded after it hold (restore adopts
those), never the writer's active segment.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

from . import errors, layout
from .backup import remove_partial
from .config import Config
from .coordinator import Residency, open_tier2
from .hydration import facts_mismatch
from .manifest import Manifest
from .record import Record
from .restore import restore_snapshot
from .segment import Segment
from .snapshots import Snapshot, read_pointer
from .store import Store
from .store import open as open_store

__all__ = ["Replica", "open_replica"]

_MARKER = "aoflite.replica"
_GEN = "gen-"


def open_replica(tier2_url: str, cache_dir: str | os.PathLike[str], **settings: Any) -> Replica:
    """A read-only handle on the store whose Tier 2 is tier2_url, cached in
    cache_dir (new, empty, or this replica's cache from before, reused when
    it holds the newest snapshot). settings are the flattened settings:
    tier0_max_bytes bounds the cache, tier2_endpoint and credentials reach
    an s3:// bucket. NotFound when the bucket has no snapshot yet."""
    if not isinstance(tier2_url, str):
        raise TypeError(f"tier2_url must be a str, not {type(tier2_url).__name__}")
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a str or path-like, not {type(cache_dir).__name__}")
    return Replica(tier2_url, os.path.abspath(os.fspath(cache_dir)), settings)


class Replica:
    """A read-only store served from Tier 2. It has the read methods of a
    read-only ``Store`` (read, scan, scan_all, count, keys, last, verify,
    residency, stats) and ``refresh()``. Thread-safe."""

    def __init__(self, tier2_url: str, cache_dir: str, settings: dict[str, Any]):
        self.cache_dir = cache_dir
        self._settings = settings
        self._config = Config().evolve(**settings) if settings else Config()
        backend = open_tier2(self._config, tier2_url)
        assert backend is not None
        self._backend = backend
        self._budget = self._config.tier0.max_bytes
        self._lock = threading.RLock()
        self._used: dict[int, float] = {}
        self._previous: Store | None = None  # kept open one refresh longer, for iterators under way
        self._check_cache()
        snap = self._pointer()
        made = self._claim_cache()
        try:
            gen = self._reusable(snap)
            if gen is None:
                gen = self._restore(snap, None)
            self._store = self._open(gen)
        except BaseException:
            if made is not None:
                remove_partial(self.cache_dir, made)  # nothing half-made
            raise
        self._gen, self._snapshot = gen, snap.name
        self._remove_generations(keep=(gen,))

    # ------------------------------------------------------------ cache

    def _check_cache(self) -> None:
        """FormatError unless cache_dir is new, empty or this replica's cache."""
        marker = os.path.join(self.cache_dir, _MARKER)
        if os.path.exists(marker):
            with open(marker, encoding="utf-8") as f:
                source = json.load(f).get("source")
            if source != self._backend.url:
                raise errors.FormatError(
                    f"{self.cache_dir}: the replica cache of {source}, not of {self._backend.url} "
                    "(use another cache_dir)"
                )
        elif os.path.exists(self.cache_dir) and (not os.path.isdir(self.cache_dir) or os.listdir(self.cache_dir)):
            raise errors.FormatError(
                f"{self.cache_dir}: exists and is neither empty nor a replica cache (use a new cache_dir)"
            )

    def _claim_cache(self) -> bool | None:
        """Make cache_dir this replica's cache: None when it was one
        already, else whether the directory was made now."""
        marker = os.path.join(self.cache_dir, _MARKER)
        if os.path.exists(marker):
            return None
        made = not os.path.exists(self.cache_dir)
        os.makedirs(self.cache_dir, exist_ok=True)
        with open(marker, "w", encoding="utf-8") as f:
            json.dump({"source": self._backend.url}, f)
        return made

    def _pointer(self) -> Snapshot:
        snap = read_pointer(self._backend)
        if snap is None:
            raise errors.NotFound(
                f"{self._backend.url}: no manifest snapshot here yet (its writer snapshots every "
                "snapshot_every_seals uploads and at close)"
            )
        return snap

    def _generations(self) -> list[str]:
        names = [n for n in os.listdir(self.cache_dir) if n.startswith(_GEN) and n[len(_GEN) :].isdigit()]
        return [os.path.join(self.cache_dir, n) for n in sorted(names, key=lambda n: int(n[len(_GEN) :]))]

    def _reusable(self, snap: Snapshot) -> str | None:
        for gen in reversed(self._generations()):
            try:
                with open(os.path.join(gen, "replica.json"), encoding="utf-8") as f:
                    if json.load(f).get("snapshot") == snap.name:
                        return gen
            except (OSError, ValueError):
                continue
        return None

    def _restore(self, snap: Snapshot, previous: str | None) -> str:
        gens = self._generations()
        n = int(os.path.basename(gens[-1])[len(_GEN) :]) + 1 if gens else 1
        gen = os.path.join(self.cache_dir, f"{_GEN}{n:06d}")
        restore_snapshot(self._backend, snap, gen, self._config)
        if previous is not None:
            self._carry(previous, gen)
        with open(os.path.join(gen, "replica.json"), "w", encoding="utf-8") as f:
            json.dump({"snapshot": snap.name, "source": self._backend.url}, f)
        return gen

    def _carry(self, old: str, new: str) -> None:
        """Link the old generation's hydrated files into the new one where
        the new manifest records the very same segment."""
        m = Manifest(layout.manifest_dir(new))
        try:
            recs = {r.segment_id: r for r in m.segments() if r.state == "sealed"}
        finally:
            m.close()
        for sid in layout.segment_ids(old):
            rec = recs.get(sid)
            dst = layout.segment_path(new, sid)
            if rec is None or os.path.exists(dst):
                continue
            src = layout.segment_path(old, sid)
            with contextlib.suppress(errors.Error, OSError):
                seg, _ = Segment.open(src)
                if facts_mismatch(seg, rec) is None:
                    os.link(src, dst)

    def _open(self, gen: str) -> Store:
        store = open_store(gen, readonly=True, **self._settings)
        store._reads.on_use = self._on_use
        return store

    def _remove_generations(self, keep: tuple[str, ...]) -> None:
        for gen in self._generations():
            if gen not in keep:
                shutil.rmtree(gen, ignore_errors=True)

    def _on_use(self, segment_id: int) -> None:
        """A read opened segment_id: evict least recently used files past the budget."""
        self._used[segment_id] = time.monotonic()
        if self._budget is None:
            return
        with self._lock:
            gen = self._gen
            files: dict[int, list[tuple[str, int]]] = {}
            total = 0
            for sid in layout.segment_ids(gen):
                for p in (layout.segment_path(gen, sid), layout.tier1_path(gen, sid)):
                    with contextlib.suppress(FileNotFoundError):
                        size = os.stat(p).st_size
                        files.setdefault(sid, []).append((p, size))
                        total += size
            for sid in layout.tier1_ids(gen):
                if sid not in files:
                    p = layout.tier1_path(gen, sid)
                    with contextlib.suppress(FileNotFoundError):
                        size = os.stat(p).st_size
                        files[sid] = [(p, size)]
                        total += size
            for sid in sorted(files, key=lambda s: (self._used.get(s, 0.0), s)):
                if total <= self._budget:
                    break
                if sid == segment_id:
                    continue
                self._store._reads.forget_segment(sid)
                for p, size in files[sid]:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(p)
                        total -= size

    # ------------------------------------------------------------ refresh

    def refresh(self) -> bool:
        """Install the newest snapshot if it is newer than the one served;
        True when it did. One GET when nothing changed."""
        with self._lock:
            snap = self._pointer()
            if snap.name == self._snapshot:
                return False
            gen = self._restore(snap, self._gen)
            store = self._open(gen)
            if self._previous is not None:
                old_gen = self._previous.path
                self._previous.close()
                shutil.rmtree(old_gen, ignore_errors=True)
            self._previous, self._store = self._store, store
            self._gen, self._snapshot = gen, snap.name
            return True

    @property
    def snapshot(self) -> str:
        """The name of the snapshot served."""
        return self._snapshot

    @property
    def store(self) -> Store:
        """The read-only store now served (replaced by refresh())."""
        return self._store

    # ------------------------------------------------------------ reads

    def read(self, key: str, offset: int, *, nonblocking: bool = False) -> Record:
        """See Store.read."""
        return self._store.read(key, offset, nonblocking=nonblocking)

    def scan(self, key: str, start: int = 0, stop: int | None = None, *, nonblocking: bool = False) -> Iterator[Record]:
        """See Store.scan."""
        return self._store.scan(key, start, stop, nonblocking=nonblocking)

    def scan_all(self, start_lsn: int = 0) -> Iterator[Record]:
        """See Store.scan_all."""
        return self._store.scan_all(start_lsn)

    def count(self, key: str) -> int:
        """See Store.count."""
        return self._store.count(key)

    def keys(self) -> list[str]:
        """See Store.keys."""
        return self._store.keys()

    def last(self, key: str) -> Record | None:
        """See Store.last."""
        return self._store.last(key)

    def verify(self, segment_id: int | None = None) -> int:
        """See Store.verify (hydrates every segment it checks)."""
        return self._store.verify(segment_id)

    def residency(self) -> list[Residency]:
        """See Store.residency."""
        return self._store.residency()

    def stats(self) -> dict[str, Any]:
        """See Store.stats, with the snapshot served."""
        out = self._store.stats()
        out["snapshot"] = self._snapshot
        return out

    def close(self) -> None:
        """Close the handle; the cache stays for the next open_replica."""
        with self._lock:
            if self._previous is not None:
                old_gen = self._previous.path
                self._previous.close()
                self._previous = None
                shutil.rmtree(old_gen, ignore_errors=True)
            self._store.close()

    def __enter__(self) -> Replica:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<aoflite.Replica {self._backend.url!r} at {self.cache_dir!r} snapshot {self._snapshot!r}>"
