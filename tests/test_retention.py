"""Retention: whole sealed segments leave every tier by count, bytes or
age, in LSN order; the store goes on reading, scanning and verifying
cleanly; reads of retired offsets say so; cursors hold retention back
unless the byte budget forces it; find_lsn maps a time to an LSN."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import aoflite
from aoflite import layout
from aoflite.tiers.base import segment_object_name

SEG = 1 << 20


def value(key: str, offset: int) -> bytes:
    return (f"{key}/{offset}/".encode() * 64)[:700]


def fill(db, n: int, counts: dict[str, int] | None = None, ts: int | None = None) -> dict[str, int]:
    counts = dict(counts or {})
    for i in range(n):
        k = f"k{i % 3}"
        off = counts.get(k, 0)
        db.append(k, value(k, off), timestamp_ms=ts)
        counts[k] = off + 1
    return counts


def sealed(db) -> list:
    return [r for r in db.manifest.segments() if r.state == "sealed"]


def ledger(db, kind: str) -> list[dict]:
    return [e for e in db.manifest.ledger() if e["type"] == kind]


def check_kept(db, counts: dict[str, int]) -> int:
    """What is kept reads back right, from each key's oldest kept offset;
    scan_all agrees; verify passes. Returns the records kept."""
    kept = 0
    for k, n in counts.items():
        got = list(db.scan(k))
        first = got[0].offset if got else n
        assert [r.offset for r in got] == list(range(first, n))
        assert all(r.value == value(k, r.offset) for r in got)
        assert db.count(k) == n
        kept += len(got)
    assert sum(1 for _ in db.scan_all()) == kept
    db.verify()
    return kept


def test_retention_by_segment_count(tmp_path):
    """max_segments keeps that many sealed segments; retired offsets raise
    NotFound saying so; the rest reads, scans and verifies; reopening works."""
    path = str(tmp_path / "s")
    with aoflite.open(path, segment_bytes=SEG, retention_max_segments=2) as db:
        counts = fill(db, 9_000)
        db.drain_tiers(timeout=30)
        assert len(sealed(db)) == 2
        retired = ledger(db, "SegmentRetired")
        assert retired and all(e["reason"] == "max_segments" for e in retired)
        assert [e["segment"] for e in retired] == list(range(1, len(retired) + 1)), "in LSN order"
        for e in retired:
            assert not os.path.exists(layout.segment_path(path, e["segment"]))
        with pytest.raises(aoflite.NotFound, match="retired by retention"):
            db.read("k0", 0)
        kept = check_kept(db, counts)
        assert 0 < kept < sum(counts.values())
        first_kept = next(db.scan_all()).lsn
        assert first_kept == sealed(db)[0].first_lsn
    with aoflite.open(path) as db:
        check_kept(db, counts)
        assert db.last("k1").offset == counts["k1"] - 1
        assert db.append("k0", b"more") == counts["k0"]


def test_retention_by_bytes_and_tier2_deletes(tmp_path):
    """max_bytes bounds the sealed bytes; a retired segment's Tier 2 object
    is deleted too, and both steps are in the ledger."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    with aoflite.open(
        str(tmp_path / "s"), segment_bytes=SEG, tier2_url=f"file://{bucket}", retention_max_bytes=3 * SEG
    ) as db:
        counts = fill(db, 9_000)
        db.drain_tiers(timeout=30)
        assert sum(r.file_bytes for r in sealed(db)) <= 3 * SEG
        queued = ledger(db, "Tier2DeleteQueued")
        deleted = ledger(db, "Tier2Deleted")
        assert queued and [e["segment"] for e in deleted] == [e["segment"] for e in queued]
        for e in deleted:
            assert not (bucket / segment_object_name(e["segment"])).exists()
        for r in sealed(db):
            assert (bucket / segment_object_name(r.segment_id)).exists()
        check_kept(db, counts)


def test_retention_by_age(tmp_path):
    """Segments whose newest record is older than max_age_s are retired;
    younger ones stay."""
    old = int(time.time() * 1000) - 3_600_000
    with aoflite.open(str(tmp_path / "s"), segment_bytes=SEG, retention_max_age_s=600) as db:
        counts = fill(db, 4_500, ts=old)
        db.seal()
        counts = fill(db, 4_500, counts)
        db.seal()
        db.drain_tiers(timeout=30)
        retired = ledger(db, "SegmentRetired")
        assert retired and all(e["reason"] == "max_age" for e in retired)
        assert all(r.first_ts_ms > old for r in sealed(db)), "only the old segments went"
        check_kept(db, counts)


def test_cursor_holds_retention_back(tmp_path):
    """A segment a cursor has not consumed stays (count and age rules);
    once the cursor moves past it, it goes."""
    with aoflite.open(str(tmp_path / "s"), segment_bytes=SEG, retention_max_segments=1) as db:
        fill(db, 100)
        cur = db.cursor("billing")
        cur.save(next(r.lsn for r in db.scan_all() if r.batch_end))
        counts = fill(db, 9_000, {"k0": 34, "k1": 33, "k2": 33})
        db.drain_tiers(timeout=30)
        assert sealed(db)[0].segment_id == 1, "retention removed what a cursor had not consumed"
        assert len(sealed(db)) > 1
        cur.save(db.manifest.segments()[-2].last_lsn)  # everything sealed consumed
        db.drain_tiers(timeout=30)
        assert len(sealed(db)) == 1
        assert not ledger(db, "CursorOverrun")
        check_kept(db, counts)


def test_byte_budget_overrides_a_cursor_and_says_so(tmp_path):
    """The byte budget is hard: it retires what a cursor has not consumed,
    the ledger names the cursor and what it lost, and resuming that cursor
    raises NotFound saying so (until it is saved past the loss)."""
    with aoflite.open(str(tmp_path / "s"), segment_bytes=SEG, retention_max_bytes=SEG) as db:
        fill(db, 10)
        db.cursor("slow").save(3)
        fill(db, 9_000, {"k0": 4, "k1": 3, "k2": 3})
        db.drain_tiers(timeout=30)
        lost = ledger(db, "CursorOverrun")
        assert lost and lost[0]["cursor"] == "slow" and lost[0]["lost_from"] == 4
        with pytest.raises(aoflite.NotFound, match="slow"):
            next(db.tail_all(cursor="slow", timeout=0))
        db.cursor("slow").save(lost[-1]["lost_to"])
        first = next(db.tail_all(cursor="slow", timeout=0))
        assert first.lsn == db.manifest.segments()[0].first_lsn  # the oldest record kept


def test_find_lsn(tmp_path):
    """find_lsn(t) is the first LSN whose timestamp is at or after t, across
    sealed and live segments and after retention."""
    with aoflite.open(str(tmp_path / "s"), segment_bytes=SEG, retention_max_segments=3) as db:
        base = 1_700_000_000_000
        for i in range(9_000):
            db.append(f"k{i % 3}", value("k", i), timestamp_ms=base + i * 10)
        db.drain_tiers(timeout=30)
        recs = list(db.scan_all())
        for t in (base - 1, recs[0].timestamp_ms, recs[100].timestamp_ms + 5, recs[-1].timestamp_ms,
                  recs[len(recs) // 2].timestamp_ms - 3):
            want = next((r.lsn for r in recs if r.timestamp_ms >= t), None)
            assert db.find_lsn(t) == want, t
        assert db.find_lsn(recs[-1].timestamp_ms + 1) is None
        with pytest.raises(TypeError):
            db.find_lsn("yesterday")
        with pytest.raises(TypeError):
            db.find_lsn(1.5)
    with aoflite.open(str(tmp_path / "empty")) as db:
        assert db.find_lsn(0) is None


def test_crash_after_retirement_is_recorded(tmp_path):
    """A crash between the manifest commit and the file deletes leaves
    files the next open removes; nothing kept is lost."""
    path = str(tmp_path / "s")
    code = (
        "import aoflite\n"
        f"db = aoflite.open({path!r}, segment_bytes={SEG}, retention_max_segments=1)\n"
        "for i in range(6000):\n"
        "    db.append(f'k{i % 3}', (f'k{i % 3}/{i // 3}/'.encode() * 64)[:700])\n"
        "db.drain_tiers(timeout=30)\n"
    )
    env = {**os.environ, "AOFLITE_FAILPOINT": "retention.after_manifest"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert out.returncode == aoflite.failpoints.EXIT_STATUS, out.stderr
    with aoflite.open(path, readonly=True) as db:
        known = {r.segment_id for r in db.manifest.segments()}
    assert set(layout.segment_ids(path)) - known, "the crash left the retired file behind"
    with aoflite.open(path, segment_bytes=SEG, retention_max_segments=1) as db:
        assert set(layout.segment_ids(path)) <= {r.segment_id for r in db.manifest.segments()}
        for k in ("k0", "k1", "k2"):
            for r in db.scan(k):
                assert r.value == value(k, r.offset)
        db.verify()
