"""Checking the arguments of public calls: each check raises TypeError or
ValueError naming the argument and what it must be."""

from __future__ import annotations

from typing import Any

from .segment import MAX_KEY_BYTES

__all__ = ["BytesLike", "U64_END", "check_key", "check_offset", "check_timestamp", "check_timeout", "as_bytes"]

#: What the append calls take as a value (anything memoryview() accepts
#: works at run time; these are the types callers are told about).
BytesLike = bytes | bytearray | memoryview

U64_END = 1 << 64  # offsets, LSNs and segment ids are u64 in the format


def check_key(key: Any) -> bytes:
    """The key's UTF-8 bytes, or TypeError/ValueError."""
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, not {type(key).__name__}")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"key {key!r} is not valid UTF-8 (lone surrogate)") from None
    if not 0 < len(raw) <= MAX_KEY_BYTES:
        raise ValueError(f"key must be 1 to {MAX_KEY_BYTES} UTF-8 bytes, got {len(raw)}")
    if b"\0" in raw:
        raise ValueError(f"key {key!r} contains a NUL character")
    return raw


def check_offset(name: str, value: Any, allow_none: bool = False) -> None:
    """An offset, LSN or segment id: an int in [0, 2**64)."""
    if value is None and allow_none:
        return
    if type(value) is not int:
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not 0 <= value < U64_END:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")


def check_timestamp(ts: Any) -> int:
    """timestamp_ms as the engine takes it (-1: now)."""
    if ts is None:
        return -1
    if type(ts) is not int:
        raise TypeError(f"timestamp_ms must be an int, not {type(ts).__name__}")
    if not 0 <= ts < 2**63:
        raise ValueError(f"timestamp_ms must be in [0, 2**63), got {ts}")
    return ts


def check_timeout(timeout: Any) -> None:
    """A number of seconds >= 0, or None."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0, got {timeout}")


def as_bytes(value: Any, what: str) -> bytes:
    """A bytes-like value as bytes (copied unless it is bytes already)."""
    if type(value) is bytes:
        return value
    if isinstance(value, str):
        raise TypeError(f"{what} must be bytes-like, not str (encode it first)")
    try:
        return memoryview(value).tobytes()
    except TypeError:
        raise TypeError(f"{what} must be bytes-like, not {type(value).__name__}") from None
