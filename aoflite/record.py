"""The record type that reads return."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Record"]


class Record(NamedTuple):
    """One record: its key, per-key offset, store-wide LSN, timestamp in
    milliseconds since the epoch, value bytes, and whether it is the last
    record of its atomic unit (a single append, an append_many batch, a
    transaction). A consumer that stops or checkpoints only where
    ``batch_end`` is True never splits a transaction. Immutable."""

    key: str
    offset: int
    lsn: int
    timestamp_ms: int
    value: bytes
    batch_end: bool
