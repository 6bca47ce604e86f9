"""A program using every public call of aoflite, as an application would.

tests/test_types.py checks it with ``mypy --strict`` against the installed
package (found through its py.typed marker), so a change that breaks or
loosens the public types fails there. assert_type pins the types callers
rely on: an import that resolved to Any would fail them too. It also runs
as an ordinary program (python3 typed_example.py), which keeps it honest.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any, assert_type

import aoflite
from aoflite import Record


def use(root: str) -> None:
    config = aoflite.Config(
        durability=aoflite.DurabilityConfig(mode="normal", flush_interval_ms=20),
        segment=aoflite.SegmentConfig(segment_bytes=1 << 20, max_record_bytes=1 << 16),
        read=aoflite.ReadConfig(poll_interval_ms=5),
        open=aoflite.OpenConfig(lock_timeout_ms=0),
    )
    db = aoflite.open(os.path.join(root, "store"), durability="normal", config=config, open_segments=8)
    assert_type(db, aoflite.Store)

    off = db.append("sensor-1", b"reading")
    assert_type(off, int)
    db.append("sensor-1", bytearray(b"more"), timestamp_ms=1_700_000_000_000)
    db.append("sensor-1", memoryview(b"and more"))
    batch = db.append_many("sensor-2", [b"a", bytearray(b"b"), memoryview(b"c")])
    assert_type(batch, range)
    with db.transaction():
        db.append("sensor-1", b"one")
        db.append("sensor-2", b"two")
    durable = db.commit()
    assert_type(durable, int)
    sealed = db.seal()
    assert_type(sealed, int | None)

    rec = db.read("sensor-1", off)
    assert_type(rec, Record)
    key: str = rec.key
    offset: int = rec.offset
    lsn: int = rec.lsn
    ts: int = rec.timestamp_ms
    value: bytes = rec.value
    batch_end: bool = rec.batch_end
    print(key, offset, lsn, ts, value, batch_end)

    records: Iterator[Record] = db.scan("sensor-1", 0, None)
    values = [r.value for r in records]
    assert_type(values, list[bytes])
    newest = db.last("sensor-2")
    assert_type(newest, Record | None)
    if newest is not None:
        print(newest.lsn)
    n: int = db.count("sensor-1")
    keys: list[str] = db.keys()
    everything: list[Record] = list(db.scan_all(start_lsn=0))
    print(n, keys, len(everything))

    for r in db.tail("sensor-1", start=0, timeout=0.05):
        print(r.offset)
    seen = 0
    for r in db.tail_all(0, timeout=0.05):
        if r.batch_end:
            seen = r.lsn

    cursor = db.cursor("consumer")
    saved: int = cursor.lsn
    cursor.save(seen)
    for r in db.tail_all(timeout=0.05, cursor="consumer"):
        print(r.lsn)
    for info in db.cursors():
        name: str = info.name
        lag: int = info.lag_records + info.lag_bytes + info.lsn
        print(name, lag, saved)

    async def follow() -> list[int]:
        feed: AsyncIterator[Record] = db.atail_all(0, timeout=0.05)
        return [r.lsn async for r in feed]

    lsns = asyncio.run(follow())
    assert_type(lsns, list[int])

    copied_to: int = db.backup(os.path.join(root, "copy"))
    checked: int = db.verify()
    stats: dict[str, Any] = db.stats()
    print(copied_to, checked, sorted(stats))
    db.close()

    with aoflite.open(os.path.join(root, "copy"), readonly=True) as ro:
        try:
            ro.append("sensor-1", b"refused")
        except aoflite.ReadOnlyError as e:
            print("read-only:", e)
        try:
            ro.read("sensor-1", 10**6)
        except aoflite.NotFound as e:
            print("not found:", e)


def errors_a_caller_handles() -> list[type[aoflite.Error]]:
    return [
        aoflite.Error,
        aoflite.NotFound,
        aoflite.LockedError,
        aoflite.ReadOnlyError,
        aoflite.ClosedError,
        aoflite.CorruptionError,
        aoflite.FormatError,
        aoflite.RecordTooLarge,
        aoflite.BackpressureError,
        aoflite.TransactionError,
        aoflite.StorageError,
        aoflite.Tier2Error,
        aoflite.Tier2NotFound,
        aoflite.ConfigError,
    ]


def describe(e: aoflite.CorruptionError) -> str:
    return f"{e} at {e.path}:{e.position}"


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        use(tmp)
    print(len(errors_a_caller_handles()), describe(aoflite.CorruptionError("bad", path="x", position=1)))
    sys.exit(0)
