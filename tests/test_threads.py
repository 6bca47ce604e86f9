"""One Store shared by many threads: appends, group commit, transactions
and readers racing writers."""

from __future__ import annotations

import contextlib
import threading

import pytest

import aoflite
from testhelpers import in_thread

MiB = 1 << 20


def _run_threads(n, target):
    """Run target(i) for i in range(n) in threads released together; returns
    their results."""
    start = threading.Barrier(n)

    def body(i):
        start.wait(10)
        return target(i)

    return [join() for join in [in_thread(body, i) for i in range(n)]]


def _value(thread, i, size=0):
    return b"t%d-%d|" % (thread, i) + b"." * size


def test_threads_append_to_own_and_shared_keys(db):
    """Offsets are unique and dense per key whatever the interleaving: each
    thread's own key holds its values in order, the shared key holds every
    value exactly once, and each thread's records keep its program order."""
    n_threads, per_thread = 8, 300

    def work(t):
        shared = []
        for i in range(per_thread):
            assert db.append(f"own-{t}", _value(t, i)) == i
            # a few large values so the threads also race segment rolls
            shared.append(db.append("shared", _value(t, i, 20_000 if i % 10 == 0 else 0)))
        return shared

    offsets = _run_threads(n_threads, work)
    flat = sorted(o for per in offsets for o in per)
    assert flat == list(range(n_threads * per_thread))
    assert all(per == sorted(per) for per in offsets)
    for t in range(n_threads):
        assert [r.value for r in db.scan(f"own-{t}")] == [_value(t, i) for i in range(per_thread)]
        # the offset append returned holds that thread's value
        for i, off in enumerate(offsets[t]):
            assert db.read("shared", off).value.startswith(_value(t, i))
    assert len([s for s in db.manifest.segments() if s.state == "sealed"]) >= 2
    records = list(db.scan_all())
    assert all(a.lsn < b.lsn for a, b in zip(records, records[1:]))
    assert len(records) == 2 * n_threads * per_thread


def test_full_durability_group_commit(store_path):
    """With durability="full", 8 threads appending at once (sharing syncs)
    all get their appends back, and every record is there after reopen."""
    n_threads, per_thread = 8, 150
    with aoflite.open(store_path, durability="full", segment_bytes=MiB) as db:

        def work(t):
            for i in range(per_thread):
                assert db.append(f"k{t % 3}", _value(t, i)) >= 0
            with db.transaction():
                db.append_many(f"k{t % 3}", [_value(t, per_thread), _value(t, per_thread + 1)])

        _run_threads(n_threads, work)
    with aoflite.open(store_path, readonly=True) as db:
        got = sorted(r.value for r in db.scan_all())
        assert got == sorted(_value(t, i) for t in range(n_threads) for i in range(per_thread + 2))
        for k in range(3):
            assert [r.offset for r in db.scan(f"k{k}")] == list(range(db.count(f"k{k}")))


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_transaction_holds_other_threads_appends(db, outcome):
    """Another thread's append waits while a transaction is open: it does
    not return, it does not see the transaction's records, and its record
    lands after the whole transaction (or right after what was there
    before, when the transaction rolls back)."""
    db.append("k", b"before")
    in_tx, other_started, other_done = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def other(_):
        assert in_tx.wait(10)
        seen["count"] = db.count("k")  # the open transaction is invisible
        other_started.set()
        off = db.append("k", b"other")
        other_done.set()
        return off

    join = in_thread(other, 0)
    with pytest.raises(KeyError) if outcome == "rollback" else contextlib.nullcontext():
        with db.transaction():
            db.append("k", b"tx-1")
            in_tx.set()
            assert other_started.wait(10)
            db.append("k", b"tx-2")
            # the other thread must still be waiting: a bounded look, not a sync
            assert not other_done.wait(0.2), "an append returned while another thread's transaction was open"
            db.append("tx-only", b"tx-3")
            if outcome == "rollback":
                raise KeyError("roll back")
    off = join()
    assert seen["count"] == 1
    records = list(db.scan_all())
    if outcome == "commit":
        assert off == 3
        assert [r.value for r in records] == [b"before", b"tx-1", b"tx-2", b"tx-3", b"other"]
    else:
        assert off == 1
        assert [r.value for r in records] == [b"before", b"other"]
    assert all(a.lsn < b.lsn for a, b in zip(records, records[1:]))


def test_readers_race_writers_and_rolls(store_path):
    """Readers scanning (through the writer's handle and a read-only one)
    while writers append, batch and roll segments never see a partial
    batch, a gap, a wrong value or an error."""
    n_writers, per_writer, batch = 2, 120, 3
    with aoflite.open(store_path, segment_bytes=MiB) as db, aoflite.open(store_path, readonly=True) as ro:
        done = threading.Event()

        def write(w):
            for i in range(0, per_writer, batch):
                # each value says its own offset, so a reader can check it
                db.append_many(f"w{w}", [b"%d|" % (i + j) + b"v" * 20_000 for j in range(batch)])

        def read(handle):
            rounds = 0
            while not done.is_set() or rounds < 2:
                rounds += 1
                for w in range(n_writers):
                    recs = list(handle.scan(f"w{w}"))
                    assert [r.offset for r in recs] == list(range(len(recs)))
                    assert all(r.value.startswith(b"%d|" % r.offset) for r in recs)
                    assert len(recs) % batch == 0, f"saw {len(recs)} records: part of a batch"
                    if recs:
                        assert handle.read(f"w{w}", recs[-1].offset) == recs[-1]
                lsns = [r.lsn for r in handle.scan_all()]
                assert all(a < b for a, b in zip(lsns, lsns[1:]))
            return rounds

        writers = [in_thread(write, w) for w in range(n_writers)]
        readers = [in_thread(read, handle) for handle in (db, ro)]
        for join in writers:
            join()
        done.set()
        for join in readers:
            assert join() >= 2
        assert len([s for s in db.manifest.segments() if s.state == "sealed"]) >= 3
        for handle in (db, ro):
            for w in range(n_writers):
                assert handle.count(f"w{w}") == per_writer


def test_reads_racing_seals(db):
    """A reader asking for a key's newest record while the writer keeps
    sealing segments always gets it: a seal never hides a record, even for
    the moment it takes."""
    db.append("k", b"0")
    stop = threading.Event()

    def read():
        reads = 0
        while not stop.is_set():
            n = db.count("k")
            assert db.read("k", n - 1).offset == n - 1
            assert len(list(db.scan("k", n - 1))) >= 1
            reads += 1
        return reads

    join = in_thread(read)
    try:
        for i in range(1, 200):
            db.append("k", b"%d" % i)
            db.seal()
    finally:
        stop.set()
    assert join() > 0
