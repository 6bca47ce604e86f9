"""Named, durable consumer positions.

A cursor is a small file, PATH/cursors/<name>.cursor, replaced atomically
(temporary name, fsync, rename, directory fsync) each time it is saved, so
a read-only handle in another process can save one without writing the
manifest, and a crash leaves the old position or the new one. It holds the
LSN of the last record its consumer has finished with, always a batch end,
so resuming after it never starts inside a transaction. Retention will
read every cursor before it retires a segment.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from typing import NamedTuple

from . import errors, layout
from .args import check_offset
from .failpoints import io

__all__ = ["Cursor", "CursorInfo", "Cursors", "copy_cursors"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SUFFIX = ".cursor"


class CursorInfo(NamedTuple):
    """A cursor and how far it trails the store: records after its LSN,
    and the bytes of the segments holding them (an upper bound)."""

    name: str
    lsn: int
    lag_records: int
    lag_bytes: int


def _dir(root: str) -> str:
    return os.path.join(root, "cursors")


def _names(root: str) -> list[str]:
    try:
        return sorted(n[: -len(_SUFFIX)] for n in os.listdir(_dir(root)) if n.endswith(_SUFFIX))
    except FileNotFoundError:
        return []


def saved(root: str) -> dict[str, int]:
    """Every saved cursor of the store at root: name -> LSN (what retention
    must not remove unless a hard byte budget forces it)."""
    out = {}
    for name in _names(root):
        got = _load(root, name)
        if got is not None:
            out[name] = got[0]
    return out


def _load(root: str, name: str) -> tuple[int, object] | None:
    """The saved LSN of cursor name and when it was saved (ms since the
    epoch), or None when it was never saved."""
    path = os.path.join(_dir(root), name + _SUFFIX)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise errors.CorruptionError(f"{path}: unreadable cursor: {e} (save it again)", path=path) from None
    lsn = data.get("lsn") if isinstance(data, dict) else None
    if type(lsn) is not int or lsn < 0 or data.get("name") != name:
        raise errors.CorruptionError(f"{path}: damaged cursor (save it again)", path=path)
    return int(lsn), data.get("saved_ms")


def _store(root: str, name: str, lsn: int, saved_ms: object) -> None:
    """Replace cursor name's file atomically: the old position or the new
    one survives a crash, never a mix."""
    d = _dir(root)
    path = os.path.join(d, name + _SUFFIX)
    tmp = f"{path}.{os.getpid()}.tmp"
    body = json.dumps({"name": name, "lsn": lsn, "saved_ms": saved_ms}).encode()
    try:
        os.makedirs(d, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            io("layout.fsync")
            os.fsync(f.fileno())
        io("layout.rename")
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise errors.StorageError(e.errno or 0, f"saving cursor {name!r} at {path}: {e}") from None
    layout.fsync_dir(d)


def copy_cursors(root: str, dest: str, upto: int) -> None:
    """Copy every saved cursor of the store at root into the store being
    made at dest, which holds the records up to LSN upto (whole batches).
    A cursor saved past upto (its consumer went on while the copy was
    made) is copied as upto: in the copy it has consumed everything there
    is, and upto ends a batch, so it stays a valid resume point."""
    for name in _names(root):
        saved = _load(root, name)
        if saved is not None:
            lsn, saved_ms = saved
            _store(dest, name, min(lsn, upto), saved_ms)


def _check_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"cursor name must be a str, not {type(name).__name__}")
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"cursor name {name!r} must be 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


class Cursors:
    """The cursors of one store; ``batch_end_at(lsn)`` answers whether a
    record ends its batch (from the read path)."""

    def __init__(
        self,
        root: str,
        check: Callable[[], None],
        batch_end_at: Callable[[int], bool],
        last_lsn: Callable[[], int],
        segments: Callable[[], list[tuple[int, int, int]]],
    ):
        self.root = root
        self._check = check  # raises once the handle is closed or refusing
        self._batch_end_at = batch_end_at
        self._last_lsn = last_lsn
        self._segments = segments

    def lsn(self, name: str) -> int:
        """The saved LSN of name (0 when never saved)."""
        self._check()
        saved = _load(self.root, _check_name(name))
        return 0 if saved is None else saved[0]

    def save(self, name: str, lsn: int) -> None:
        """Make lsn the durable position of name; lsn must end a batch."""
        self._check()
        _check_name(name)
        check_offset("lsn", lsn)
        if lsn and not self._batch_end_at(lsn):
            raise ValueError(
                f"cursor {name!r}: LSN {lsn} is not the end of a batch (save only where Record.batch_end "
                "is True, so a resume never starts inside a transaction)"
            )
        _store(self.root, name, lsn, time.time_ns() // 1_000_000)

    def list(self) -> list[CursorInfo]:
        """Every saved cursor, by name, with its lag."""
        names = _names(self.root)
        if not names:
            return []
        last = self._last_lsn()
        segs = self._segments()  # (first_lsn, last_lsn, bytes) of every segment
        out = []
        for name in names:
            lsn = self.lsn(name)
            behind = sum(size for first, end, size in segs if end > lsn)
            out.append(CursorInfo(name, lsn, max(0, last - lsn), behind))
        return out


class Cursor:
    """A named consumer position: ``lsn`` is the last record consumed."""

    def __init__(self, cursors: Cursors, name: str):
        self._cursors = cursors
        self.name = _check_name(name)

    @property
    def lsn(self) -> int:
        """The saved LSN (0: nothing consumed yet)."""
        return self._cursors.lsn(self.name)

    def save(self, lsn: int) -> None:
        """Durably record that everything up to lsn is consumed. lsn must
        be a batch end (Record.batch_end True), else ValueError."""
        self._cursors.save(self.name, lsn)

    def __repr__(self) -> str:
        return f"<aoflite.Cursor {self.name!r} lsn={self.lsn}>"
