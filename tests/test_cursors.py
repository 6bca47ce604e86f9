"""Consumer cursors: named, durable positions that resume tail_all after
them, saved from the writer's process or from a read-only handle in
another, only at batch ends."""

from __future__ import annotations

import multiprocessing
import os

import pytest

import aoflite

MiB = 1 << 20


def _fill(db):
    db.append("a", b"1")
    with db.transaction():
        db.append("debit", b"-1")
        db.append("credit", b"+1")
    db.append_many("b", [b"2", b"3"])


def test_cursor_saves_at_batch_ends_and_resumes_tail_all(store_path):
    with aoflite.open(store_path, segment_bytes=MiB) as db:
        _fill(db)
        c = db.cursor("billing")
        assert c.lsn == 0
        assert [r.lsn for r in db.tail_all(cursor="billing", timeout=0)] == [1, 2, 3, 4, 5]
        for bad in (2, 4):  # inside the transaction, inside the batch
            with pytest.raises(ValueError, match="not the end of a batch"):
                c.save(bad)
        with pytest.raises(ValueError, match="no record"):
            c.save(99)
        c.save(3)
        assert c.lsn == 3
        assert [r.lsn for r in db.tail_all(cursor="billing", timeout=0)] == [4, 5]
        (info,) = db.cursors()
        assert (info.name, info.lsn, info.lag_records) == ("billing", 3, 2) and info.lag_bytes > 0
    with aoflite.open(store_path) as again:  # durable across reopen
        assert again.cursor("billing").lsn == 3


def _save_from_child(path, conn):
    with aoflite.open(path, readonly=True) as f:
        last = 0
        for r in f.tail_all(cursor="reporter", timeout=0):
            if r.batch_end:
                last = r.lsn
        f.cursor("reporter").save(last)
        conn.send(last)


def test_read_only_handle_in_another_process_saves_a_cursor(store_path):
    db = aoflite.open(store_path, segment_bytes=MiB, durability="off")
    _fill(db)
    db.commit()
    ctx = multiprocessing.get_context("spawn")
    a, b = ctx.Pipe()
    child = ctx.Process(target=_save_from_child, args=(store_path, b))
    child.start()
    assert a.recv() == 5
    child.join(30)
    assert child.exitcode == 0
    assert db.cursor("reporter").lsn == 5
    assert [c.name for c in db.cursors()] == ["reporter"]
    assert not [n for n in os.listdir(os.path.join(store_path, "cursors")) if n.endswith(".tmp")]
    db.close()


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "x" * 129, 7])
def test_bad_cursor_names_are_rejected(db, name):
    with pytest.raises((ValueError, TypeError)):
        db.cursor(name)


def test_cursor_calls_after_close_raise_closed_error(store_path):
    db = aoflite.open(store_path)
    db.append("a", b"1")
    c = db.cursor("c")
    db.close()
    with pytest.raises(aoflite.ClosedError):
        c.save(1)
    with pytest.raises(aoflite.ClosedError):
        db.cursors()


def test_tail_all_with_cursor_and_start_is_an_error(db):
    with pytest.raises(ValueError, match="not both"):
        db.tail_all(5, cursor="c")
