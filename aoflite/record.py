"""The record type that reads return."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Record"]


class Record(NamedTuple):
    """One record: its key, per-key offset, store-wide LSN, timestamp in
    milliseconds since the epoch, and value bytes. Immutable."""

    key: str
    offset: int
    lsn: int
    timestamp_ms: int
    value: bytes
