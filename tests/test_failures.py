"""Failed system calls, failed transactions, fork and out-of-range input:
each call either works or raises an aoflite.Error saying what to do, and
nothing acknowledged is lost or changed, now or after a reopen."""

from __future__ import annotations

import errno
import multiprocessing
import os

import pytest

import aoflite
from aoflite import failpoints, layout

MiB = 1 << 20
BIG = b"B" * (96 << 10)  # one record large enough for the pwrite path


@pytest.fixture(autouse=True)
def _disarm():
    yield
    failpoints.io_reset()


def _records(path, **kw):
    with aoflite.open(path, **kw) as db:
        return [(r.key, r.offset, r.value) for r in db.scan_all()]


def _ledger_types(path):
    with aoflite.open(path, readonly=True) as db:
        return [e["type"] for e in db.manifest.ledger()]


# ------------------------------------------------- failed transactions


def test_failed_write_inside_transaction_rolls_it_back_and_keeps_the_rest(store_path):
    db = aoflite.open(store_path, durability="full", segment_bytes=MiB)
    before = [db.append("k", b"before %d" % i) for i in range(3)]
    with pytest.raises(aoflite.StorageError, match="rolled back") as info:
        with db.transaction():
            db.append("k", b"in tx")
            failpoints.io_error("seg.pwrite", 1, errno.EFBIG)
            with pytest.raises(aoflite.StorageError) as first:
                db.append_many("k", [BIG, BIG])
            failpoints.io_reset()
            assert first.value.errno == errno.EFBIG
            # the transaction is doomed: later appends in it are refused
            with pytest.raises(aoflite.TransactionError, match="already failed"):
                db.append("k", b"after the failure")
    assert info.value.errno == errno.EFBIG
    after = [db.append("k", b"after %d" % i) for i in range(3)]
    assert before == [0, 1, 2] and after == [3, 4, 5]  # the rolled-back offsets are reused
    db.seal()
    assert db.verify() == 1
    db.close()
    got = _records(store_path)
    assert [v for _, _, v in got] == [b"before 0", b"before 1", b"before 2", b"after 0", b"after 1", b"after 2"]
    assert "TailRecovered" not in _ledger_types(store_path)


def test_failed_append_is_tried_once_and_leaves_no_hole(store_path):
    db = aoflite.open(store_path, durability="full", segment_bytes=MiB)
    db.append("k", b"first")
    failpoints.io_error("seg.pwrite", 1, errno.ENOSPC)
    with pytest.raises(aoflite.StorageError) as info:
        db.append("k", BIG)  # the fast path's call fails; the slow path must not call again
    counts = failpoints.io_counts()
    failpoints.io_reset()
    assert info.value.errno == errno.ENOSPC
    assert counts["seg.pwrite"] == 1
    assert db.count("k") == 1
    assert db.append("k", b"second") == 1
    db.close()
    assert [v for _, _, v in _records(store_path)] == [b"first", b"second"]


def test_a_failure_outside_a_transaction_does_not_fail_the_next_one(store_path):
    db = aoflite.open(store_path, segment_bytes=MiB)
    failpoints.io_error("seg.pwrite", 1, errno.EIO)
    with pytest.raises(aoflite.StorageError):
        db.append_many("k", [BIG])
    failpoints.io_reset()
    with db.transaction():
        db.append("k", b"a")
        db.append("j", b"b")
    db.close()
    assert _records(store_path) == [("k", 0, b"a"), ("j", 0, b"b")]


# ------------------------------------------------------- failed syncs


@pytest.mark.parametrize("mode", ["full", "normal", "off"])
def test_failed_sync_refuses_every_call_until_reopened(store_path, mode):
    db = aoflite.open(store_path, durability=mode, segment_bytes=MiB)
    db.append("k", b"durable")
    db.commit()
    failpoints.io_error("seg.msync", 1, errno.EIO, times=-1)
    with pytest.raises(aoflite.StorageError):
        db.append("k", b"maybe")
        db.commit()
    failpoints.io_reset()
    for call in (
        lambda: db.append("k", b"x"),
        lambda: db.append_many("k", [b"x"]),
        lambda: db.read("k", 0),
        lambda: list(db.scan("k")),
        db.commit,
        db.seal,
        lambda: db.transaction().__enter__(),
    ):
        with pytest.raises(aoflite.Error, match="open it again|reopen"):
            call()
    # the lock is still held: no second writer while this one is open
    with pytest.raises(aoflite.LockedError):
        aoflite.open(store_path)
    db.close()  # quietly: the caller was already told
    got = _records(store_path)
    assert got[0] == ("k", 0, b"durable")
    assert all(v in (b"durable", b"maybe") for _, _, v in got)


def test_failed_close_releases_the_store_and_stops_the_writer(store_path):
    db = aoflite.open(store_path, durability="off", segment_bytes=MiB)
    db.append("k", b"a")
    db.commit()
    db.append("k", b"b")
    failpoints.io_error("seg.msync", 1, errno.EIO, times=-1)
    with pytest.raises(aoflite.StorageError):
        db.close()
    failpoints.io_reset()
    with pytest.raises(aoflite.ClosedError):
        db.append("k", b"c")
    with aoflite.open(store_path) as again:  # the lock was released with a dead writer
        assert again.read("k", 0).value == b"a"
        assert again.count("k") in (1, 2)


def test_seal_failing_after_its_truncate_stops_appends_to_that_file(store_path):
    db = aoflite.open(store_path, durability="full", segment_bytes=MiB)
    for i in range(5):
        db.append("k", b"v%d" % i)
    failpoints.io_error("seg.fdatasync", 1, errno.EIO)  # the seal's sync after its truncate
    with pytest.raises(aoflite.StorageError):
        db.seal()
    failpoints.io_reset()
    with pytest.raises(aoflite.Error, match="reopen"):
        db.append("k", b"after")
    db.close()
    assert [v for _, _, v in _records(store_path)] == [b"v%d" % i for i in range(5)]


def test_manifest_commit_failure_at_open_next_segment_keeps_working(store_path):
    db = aoflite.open(store_path, durability="full", segment_bytes=MiB)
    db.append("k", b"a")
    failpoints.io_error("manifest.commit", 1, errno.ENOSPC)
    with pytest.raises(aoflite.StorageError):
        db.seal()  # the roll's manifest commit fails
    failpoints.io_reset()
    with pytest.raises(aoflite.Error, match="reopen"):
        db.append("k", b"b")
    db.close()
    with aoflite.open(store_path) as again:
        assert [r.value for r in again.scan("k")] == [b"a"]
        again.append("k", b"b")
        assert again.verify() == 1


def test_store_creation_failure_is_a_storage_error_and_retryable(store_path):
    failpoints.io_error("layout.rename", 1, errno.ENOSPC)
    with pytest.raises(aoflite.StorageError, match="creating the store"):
        aoflite.open(store_path)
    failpoints.io_reset()
    with aoflite.open(store_path) as db:
        db.append("k", b"v")
    assert _records(store_path) == [("k", 0, b"v")]


# ---------------------------------------------------------------- fork


def _child_uses_inherited(db, path, conn):
    out = {}
    for name, call in [("append", lambda: db.append("k", b"child")), ("read", lambda: db.read("k", 0)),
                       ("commit", db.commit)]:
        try:
            call()
            out[name] = "succeeded"
        except aoflite.Error as e:
            out[name] = str(e)
    db.close()  # must not touch the parent's store
    with aoflite.open(path, readonly=True) as mine:
        out["own handle"] = mine.read("k", 0).value
    conn.send(out)


def test_a_forked_child_cannot_use_an_inherited_handle(store_path):
    db = aoflite.open(store_path, durability="full", segment_bytes=MiB)
    db.append("k", b"parent")
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_child_uses_inherited, args=(db, store_path, child_end))
    child.start()
    got = parent_end.recv()
    child.join(30)
    assert child.exitcode == 0
    for name in ("append", "read", "commit"):
        assert "forked child" in got[name], got
    assert got["own handle"] == b"parent"
    assert db.append("k", b"parent again") == 1  # the parent is unaffected
    assert db.read("k", 1).value == b"parent again"
    db.close()
    assert [v for _, _, v in _records(store_path)] == [b"parent", b"parent again"]


# --------------------------------------------------------- bounds


@pytest.mark.parametrize(
    "call",
    [
        lambda db: db.read("k", 2**64),
        lambda db: list(db.scan("k", 2**64)),
        lambda db: list(db.scan("k", 0, 2**64)),
        lambda db: list(db.scan_all(2**64)),
        lambda db: db.verify(2**64),
        lambda db: db.tail("k", 2**64),
    ],
    ids=["read", "scan start", "scan stop", "scan_all", "verify", "tail"],
)
def test_values_past_u64_are_value_errors(db, call):
    db.append("k", b"v")
    with pytest.raises(ValueError, match=r"2\*\*64"):
        call(db)
    assert db.read("k", 0).value == b"v"


# ------------------------------------------------------- small fixes


def test_pwrite_batches_advance_the_prefault_mark(db):
    db.append_many("k", [b"x" * 4096] * 512)  # 2 MiB through pwrite
    seg = db._writes.writer.segment
    assert seg.prefaulted() >= seg.info().records_end - 4096


def test_sealed_segment_cache_is_least_recently_used(store_path):
    db = aoflite.open(store_path, segment_bytes=MiB, open_segments=2)
    for i in range(3):
        db.append("k", b"%d" % i)
        db.seal()
    db._reads._sealed.clear()
    for off in (0, 1, 0, 2):
        db.read("k", off)
    assert list(db._reads._sealed) == [1, 3]  # segment 2 (offset 1) was the least recently used
    db.close()


def test_feed_file_lives_beside_the_manifest(store_path):
    aoflite.open(store_path).close()
    assert os.path.getsize(layout.feed_path(store_path)) == 4096


def test_a_full_disk_growing_a_transaction_fails_the_transaction(store_path):
    db = aoflite.open(store_path, durability="full", segment_bytes=MiB)
    db.append("k", b"before")
    with pytest.raises(aoflite.StorageError, match="rolled back"):
        with db.transaction():
            db.append("k", b"small")
            failpoints.io_error("seg.fallocate", 1, errno.ENOSPC)
            with pytest.raises(aoflite.StorageError):
                db.append("k", b"x" * (2 * MiB))  # grows the segment: the disk is "full"
            failpoints.io_reset()
    assert db.append("k", b"after") == 1
    db.close()
    assert [v for _, _, v in _records(store_path)] == [b"before", b"after"]
