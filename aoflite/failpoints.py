"""Named crash points for the crash-recovery tests.

A test's child process sets ``AOFLITE_FAILPOINT=name`` (optionally
``AOFLITE_FAILPOINT_SKIP=n`` to pass the first n hits and
``AOFLITE_FAILPOINT_ACTION=kill`` for SIGKILL instead of ``os._exit``);
the (n+1)-th time the code reaches that point the process dies with exit
status EXIT_STATUS. Unset, ``hit`` is a function that does nothing, and the
sites are all off the append path. C sites are armed through the binding.
"""

from __future__ import annotations

import os
import signal

from .segment import arm_native_failpoint, native_failpoint_names

__all__ = ["hit", "NAMES", "EXIT_STATUS", "all_names"]

EXIT_STATUS = 77

#: Every Python failpoint site. Keep in step with the hit() calls.
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
    "flush.before_sync",
    "close.before_sync",
    "close.after_sync",
)


def all_names() -> tuple[str, ...]:
    """Python and C failpoints together."""
    return NAMES + tuple(native_failpoint_names())


def _noop(name: str) -> None:
    pass


_armed = os.environ.get("AOFLITE_FAILPOINT", "")
_skip = int(os.environ.get("AOFLITE_FAILPOINT_SKIP", "0") or 0)
_kill = os.environ.get("AOFLITE_FAILPOINT_ACTION", "exit") == "kill"


def _fire(name: str) -> None:
    global _skip
    if name != _armed:
        return
    if _skip > 0:
        _skip -= 1
        return
    if _kill:
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(EXIT_STATUS)


if _armed:
    if _armed not in all_names():
        raise ValueError(f"AOFLITE_FAILPOINT={_armed!r} names no failpoint (known: {', '.join(all_names())})")
    arm_native_failpoint(_armed, _skip, _kill)
    hit = _fire
else:
    hit = _noop
