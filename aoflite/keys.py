"""Key names and key ids, both ways: what the handle has learnt from the
manifest, from live segments and from the writer's registrations."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

from . import errors
from .manifest import Manifest
from .segment import Segment

__all__ = ["Keys"]


class _Names(dict[int, str]):
    """key_id -> name, filled on demand from the manifest or live segments."""

    def __init__(self, manifest: Manifest, live: Callable[[], Iterable[Segment]]):
        super().__init__()
        self._manifest = manifest
        self._live = live

    def __missing__(self, key_id: int) -> str:
        name = self._manifest.key_name(key_id)
        if name is None:
            for seg in self._live():
                with contextlib.suppress(errors.NotFound):
                    name = seg.key_name(key_id)
                    break
        if name is None:
            raise errors.CorruptionError(f"a record refers to key id {key_id}, which no manifest entry or segment names")
        self[key_id] = name
        return name


class Keys:
    """``ids`` (name -> id) is read on the hot paths without a lock: entries
    are only ever added, and a dict store is atomic under the GIL."""

    def __init__(self, manifest: Manifest, live: Callable[[], Iterable[Segment]]):
        self._manifest = manifest
        self.ids: dict[str, int] = {}
        self.names = _Names(manifest, live)
        self._seen: set[int] = set()  # key ids learnt from live segments

    def learn(self, name: str, key_id: int) -> None:
        """Remember that name has key_id."""
        self.ids[name] = key_id
        self.names[key_id] = name

    def known(self, name: str) -> int | None:
        """The key's id from memory or the manifest, or None."""
        kid = self.ids.get(name)
        if kid is not None:
            return kid
        found = self._manifest.lookup_key(name)
        if found is None:
            return None
        self.learn(name, found[0])
        return found[0]

    def learn_live(self, segments: Iterable[Segment]) -> None:
        """Learn the keys defined in (a follower's) live segments."""
        for seg in segments:
            for r in seg.keys():
                if r.key_id not in self._seen:
                    self.learn(seg.key_name(r.key_id), r.key_id)
                    self._seen.add(r.key_id)
