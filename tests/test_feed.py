"""The store-wide feed: batch_end marks the last record of every atomic
unit in every read, and tail_all follows every key in LSN order, in this
process and in another."""

from __future__ import annotations

import multiprocessing
import threading

import pytest

import aoflite

MiB = 1 << 20


def _write_units(db):
    db.append("a", b"single")  # a unit of one
    db.append_many("b", [b"b0", b"b1", b"b2"])  # one unit
    with db.transaction():  # one unit across keys
        db.append("debit", b"-5")
        db.append("credit", b"+5")
        db.append("debit", b"fee")


EXPECTED = [
    ("a", True),
    ("b", False),
    ("b", False),
    ("b", True),
    ("debit", False),
    ("credit", False),
    ("debit", True),
]


def _check_everywhere(db):
    assert [(r.key, r.batch_end) for r in db.scan_all()] == EXPECTED
    by_key = {}
    for key, end in EXPECTED:
        by_key.setdefault(key, []).append(end)
    for key, ends in by_key.items():
        assert [r.batch_end for r in db.scan(key)] == ends
        assert [db.read(key, i).batch_end for i in range(len(ends))] == ends


def test_batch_end_marks_every_atomic_unit_live_sealed_and_followed(store_path):
    db = aoflite.open(store_path, segment_bytes=MiB)
    _write_units(db)
    _check_everywhere(db)  # the active segment
    with aoflite.open(store_path, readonly=True) as follower:
        db.commit()
        _check_everywhere(follower)  # a follower's copy
    db.seal()
    _check_everywhere(db)  # the sealed segment
    db.close()
    with aoflite.open(store_path) as again:
        _check_everywhere(again)


def test_replay_stopping_at_batch_ends_never_splits_a_transaction(store_path):
    with aoflite.open(store_path, segment_bytes=MiB) as db:
        for i in range(200):
            with db.transaction():
                db.append("debit", b"%d" % i)
                db.append("credit", b"%d" % i)
        for stop in (1, 2, 3, 201, 399):
            seen = []
            for r in db.scan_all():
                seen.append(r)
                if r.lsn >= stop and r.batch_end:
                    break
            assert len([r for r in seen if r.key == "debit"]) == len([r for r in seen if r.key == "credit"])


def test_tail_all_follows_every_key_in_order(store_path):
    db = aoflite.open(store_path, segment_bytes=MiB, durability="off")
    db.append("a", b"before")
    got = []
    done = threading.Event()

    def consume():
        for r in db.tail_all(timeout=5):
            got.append((r.lsn, r.key, r.value))
            if len(got) == 6:
                done.set()
                return

    t = threading.Thread(target=consume)
    t.start()
    db.append("b", b"1")
    db.append_many("c", [b"2", b"3"])
    db.seal()
    with db.transaction():
        db.append("a", b"4")
        db.append("b", b"5")
    assert done.wait(10)
    t.join(10)
    assert got == [(1, "a", b"before"), (2, "b", b"1"), (3, "c", b"2"), (4, "c", b"3"), (5, "a", b"4"), (6, "b", b"5")]
    assert list(db.tail_all(start_lsn=5, timeout=0)) == list(db.scan_all(5))
    db.close()


def _tail_in_child(path, n, out):
    with aoflite.open(path, readonly=True) as f:
        seen = []
        for r in f.tail_all(timeout=20):
            seen.append((r.lsn, r.key, r.value, r.batch_end))
            if len(seen) == n:
                break
        out.put(seen)


def test_tail_all_from_another_process_across_rolls(store_path):
    db = aoflite.open(store_path, segment_bytes=MiB, durability="off")
    db.append("k", b"first")
    db.commit()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_tail_in_child, args=(store_path, 301, out))
    child.start()
    for i in range(100):
        db.append_many(f"k{i % 3}", [b"%d" % i, b"%d" % i])
        db.append("k", b"x" * 20_000)  # about 2 MiB in all: the segment rolls
        db.commit()
    seen = out.get(timeout=60)
    child.join(30)
    assert child.exitcode == 0
    assert [s[0] for s in seen] == list(range(1, 302))
    assert seen == [(r.lsn, r.key, r.value, r.batch_end) for r in db.scan_all()]
    db.close()


def test_tail_all_starts_each_look_where_the_last_stopped(db, store_path, monkeypatch):
    """A look for new records scans on from where the previous one stopped,
    never the active segment from its start again (that costs the whole
    segment's records, with their CRCs, per look)."""
    from aoflite import failpoints
    from aoflite.segment import Segment

    db.append_many("k", [b"x"] * 1000)
    db.commit()
    starts = []
    real_scan = Segment.scan

    def scan(self, pos, min_lsn, cap):
        starts.append(pos)
        return real_scan(self, pos, min_lsn, cap)

    monkeypatch.setattr(Segment, "scan", scan)
    with aoflite.open(store_path, readonly=True) as reader:
        it = reader.tail_all(timeout=10)
        assert [next(it).lsn for _ in range(1000)] == list(range(1, 1001))
        got = []
        with failpoints.pause("feed.before_sleep") as p:
            t = threading.Thread(target=lambda: got.append(next(it)))
            t.start()
            assert p.wait(10)  # the look that found the 1000 records is over
            starts.clear()
            db.append("k", b"new")
        t.join(10)
        assert got[0].value == b"new"
        assert starts and min(starts) > 1000 * 41
        it.close()


@pytest.mark.parametrize("bad", [-1, 2**64, "0"])
def test_tail_all_rejects_bad_start(db, bad):
    with pytest.raises((ValueError, TypeError)):
        db.tail_all(bad)


def test_atail_all_and_atail_do_not_block_the_event_loop(store_path):
    import asyncio

    db = aoflite.open(store_path, durability="off")
    db.append("k", b"0")

    async def main():
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        t = asyncio.create_task(ticker())
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, db.append, "k", b"1")
        got = [r.value async for r in db.atail_all(timeout=0.4)]
        keyed = [r.offset async for r in db.atail("k", start=1, timeout=0.05)]
        stop.set()
        await t
        return got, keyed, ticks

    got, keyed, ticks = asyncio.run(main())
    assert got == [b"0", b"1"] and keyed == [1]
    assert ticks >= 20  # the loop kept running while the tails waited
    db.close()
