"""Test hooks at the steps that move data or metadata, in Python and in C.

Three kinds, all off (one branch each) unless a test arms them:

- **Crash points.** A test's child process sets ``AOFLITE_FAILPOINT=name``
  (optionally ``AOFLITE_FAILPOINT_SKIP=n`` to pass the first n hits and
  ``AOFLITE_FAILPOINT_ACTION=kill`` for SIGKILL instead of ``os._exit``);
  the (n+1)-th time the code reaches that point the process dies with exit
  status EXIT_STATUS.
- **I/O errors.** ``io_error(site, nth, err)`` makes the nth system call of
  a kind (``IO_SITES``: every pwrite, fallocate, ftruncate, msync,
  fdatasync, directory sync, mmap and pread in C; the rename, fsyncs and
  LMDB commits in Python) fail with errno err instead of running, in this
  process, as SQLite's I/O-error tests do; ``io_counts()`` says how often
  each kind was reached, so a test can try every N a workload reaches.
- **Pause points.** ``pause(name)`` blocks the next thread that reaches a
  crash point or a pause-only point (``PAUSE_NAMES``) until the test
  releases it: races are replayed step by step, not by sleeps.
"""

from __future__ import annotations

import errno as _errno
import os
import signal
import threading
from collections.abc import Iterator
import contextlib

from . import segment as _native

__all__ = [
    "hit",
    "io",
    "io_error",
    "io_reset",
    "io_counts",
    "io_failing",
    "pause",
    "Pause",
    "NAMES",
    "PAUSE_NAMES",
    "IO_SITES",
    "EXIT_STATUS",
    "all_names",
]

EXIT_STATUS = 77

#: Every Python crash point. Keep in step with the hit() calls.
NAMES = (
    "open.after_lock",
    "open.after_recovery",
    "key.before_define",
    "roll.before_seal",
    "roll.after_seal",
    "roll.after_create",
    "roll.after_manifest",
    "recovery.before_adopt",
    "recovery.before_seal_recovered",
    "tier.after_compress",
    "tier.after_upload",
    "tier.before_unlink",
    "hydrate.after_fetch",
    "retention.after_manifest",
    "flush.before_sync",
    "close.before_sync",
    "close.after_sync",
)

#: Python points only race tests pause at (never crash points).
_PY_PAUSE_NAMES = ("ranges.after_load", "scan_all.segment_end", "segment_after.view_taken")
#: Every pause-only point, Python and C.
PAUSE_NAMES = _PY_PAUSE_NAMES + tuple(_native.native_pause_names())

#: Python system-call sites that io_error can fail.
_PY_IO_SITES = ("layout.rename", "layout.fsync", "layout.dirsync", "manifest.commit")
_C_IO_SITES = tuple(_native.native_io_sites())
#: Every kind of system call io_error can fail.
IO_SITES = _C_IO_SITES + _PY_IO_SITES


def all_names() -> tuple[str, ...]:
    """Crash points, Python and C together."""
    return NAMES + tuple(_native.native_failpoint_names())


# --------------------------------------------------------------- crash

_armed = os.environ.get("AOFLITE_FAILPOINT", "")
_skip = int(os.environ.get("AOFLITE_FAILPOINT_SKIP", "0") or 0)
_kill = os.environ.get("AOFLITE_FAILPOINT_ACTION", "exit") == "kill"
_pauses: dict[str, Pause] = {}  # armed Python pause points
_mu = threading.Lock()


def hit(name: str) -> None:
    """A crash or pause point: nothing unless a test armed name."""
    if _armed or _pauses:
        _dispatch(name)


def _dispatch(name: str) -> None:
    global _skip
    if name == _armed:
        if _skip > 0:
            _skip -= 1
        else:
            if _kill:
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(EXIT_STATUS)
    p = _pauses.get(name)
    if p is not None:
        p._block()


if _armed:
    if _armed not in all_names():
        raise ValueError(f"AOFLITE_FAILPOINT={_armed!r} names no failpoint (known: {', '.join(all_names())})")
    _native.arm_native_failpoint(_armed, _skip, _kill)


# ---------------------------------------------------------------- pause


class Pause:
    """An armed pause point: the first thread to reach it blocks until
    release(). A context manager that releases on exit, so a failing test
    never leaves a thread blocked."""

    def __init__(self, name: str):
        if name not in all_names() and name not in PAUSE_NAMES:
            raise ValueError(f"{name!r} names no failpoint or pause point")
        self.name = name
        self._native = name not in NAMES and name not in _PY_PAUSE_NAMES
        self._reached = threading.Event()
        self._released = threading.Event()
        if self._native:
            _native.arm_native_pause(name)
        else:
            with _mu:
                _pauses[name] = self

    def _block(self) -> None:
        with _mu:
            if _pauses.get(self.name) is not self:
                return
            del _pauses[self.name]  # only the first thread stops here
        self._reached.set()
        self._released.wait()

    def wait(self, timeout: float = 10.0) -> bool:
        """True once a thread is blocked here (False after timeout seconds)."""
        if self._native:
            return _native.wait_native_pause(self.name, timeout)
        return self._reached.wait(timeout)

    def release(self) -> None:
        """Let the blocked thread (and any later one) go on."""
        if self._native:
            _native.release_native_pause(self.name)
        else:
            with _mu:
                if _pauses.get(self.name) is self:
                    del _pauses[self.name]
            self._released.set()

    def __enter__(self) -> Pause:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def pause(name: str) -> Pause:
    """Arm the pause point name (see Pause)."""
    return Pause(name)


# ------------------------------------------------------------------ I/O

_io_site: str | None = None
_io_nth = _io_times = _io_err = 0
_io_counts: dict[str, int] = {}


def io(site: str) -> None:
    """A Python system-call site: raises OSError when a test made this call fail."""
    if _io_site is None and not _io_counts:
        return
    with _mu:
        n = _io_counts[site] = _io_counts.get(site, 0) + 1
        fail = site == _io_site and n >= _io_nth and (_io_times < 0 or n < _io_nth + _io_times)
    if fail:
        raise OSError(_io_err, f"{os.strerror(_io_err)} (injected at {site})")


def io_error(site: str | None, nth: int = 1, err: int = _errno.EIO, times: int = 1) -> None:
    """Count every system call from now on, and make the nth call of kind
    site (1-based) and the times-1 after it (times=-1: all after it) fail
    with errno err. site None only counts."""
    global _io_site, _io_nth, _io_times, _io_err
    if site is not None and site not in IO_SITES:
        raise ValueError(f"{site!r} is no I/O site (known: {', '.join(IO_SITES)})")
    if nth < 1 or times == 0 or err <= 0:
        raise ValueError("nth must be >= 1, times non-zero and err a positive errno")
    with _mu:
        _io_counts.clear()
        for s in _PY_IO_SITES:
            _io_counts[s] = 0
        _io_site = site if site in _PY_IO_SITES else None
        _io_nth, _io_times, _io_err = nth, times, err
    _native.arm_native_io(site if site in _C_IO_SITES else None, nth, times, err)


def io_reset() -> None:
    """Stop counting and failing system calls."""
    global _io_site
    with _mu:
        _io_site = None
        _io_counts.clear()
    _native.reset_native_io()


def io_counts() -> dict[str, int]:
    """How often each kind of system call was reached since io_error."""
    with _mu:
        out = {s: _io_counts.get(s, 0) for s in _PY_IO_SITES}
    out.update({s: _native.native_io_count(s) for s in _C_IO_SITES})
    return out


@contextlib.contextmanager
def io_failing(site: str | None, nth: int = 1, err: int = _errno.EIO, times: int = 1) -> Iterator[None]:
    """io_error for the duration of a with block."""
    io_error(site, nth, err, times)
    try:
        yield
    finally:
        io_reset()
