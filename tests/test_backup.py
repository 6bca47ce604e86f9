"""Online backup: a consistent copy while appends go on, opened as an
ordinary store, checked record for record."""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest

import aoflite

MiB = 1 << 20


def _records(path, upto=None):
    with aoflite.open(path, readonly=True) as db:
        return [(r.lsn, r.key, r.offset, r.value) for r in db.scan_all() if upto is None or r.lsn <= upto]


def _append_loop(db, stop, appended):
    """Append until stop is set: transactions (a debit and its credit),
    append_many batches and single appends; appended[0] counts the rounds."""
    i = 0
    while not stop.is_set() and i < 200_000:
        if i % 7 == 0:
            with db.transaction():
                db.append("tx-a", b"debit %d" % i)
                db.append("tx-b", b"credit %d" % i)
        elif i % 7 == 1:
            db.append_many("batch", [b"%d.%d" % (i, j) for j in range(4)])
        else:
            db.append(f"k{i % 5}", b"v%06d" % i * 20)
        i += 1
        appended[0] = i


def test_backup_during_a_concurrent_append_loop(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "copy")
    db = aoflite.open(src, segment_bytes=MiB, durability="off")
    stop = threading.Event()
    appended = [0]
    t = threading.Thread(target=_append_loop, args=(db, stop, appended))
    t.start()
    while appended[0] < 20000:
        threading.Event().wait(0.01)
    before = db.manifest.segment_for_lsn(1)
    lsn = db.backup(dst)
    stop.set()
    t.join()
    assert before is not None  # segments had rolled and sealed before the copy
    assert lsn >= 20000
    db.close()
    copied = _records(dst)
    assert [r[0] for r in copied] == list(range(1, lsn + 1))  # whole, dense, nothing past the cut
    assert copied == _records(src, upto=lsn)
    debits = {r[3].split()[1] for r in copied if r[1] == "tx-a"}
    credits = {r[3].split()[1] for r in copied if r[1] == "tx-b"}
    assert debits == credits  # never half a transaction
    with aoflite.open(dst) as again:
        assert again.verify() >= 1
        again.append("after", b"the copy is a store of its own")


def test_backup_from_a_read_only_handle(store_path, tmp_path):
    with aoflite.open(store_path, segment_bytes=MiB) as db:
        for i in range(100):
            db.append("k", b"%d" % i)
            if i == 50:
                db.seal()
    with aoflite.open(store_path, readonly=True) as ro:
        assert ro.backup(tmp_path / "copy") == 100
    assert _records(str(tmp_path / "copy")) == _records(store_path)


def test_backup_refuses_an_existing_path_and_leaves_it(store_path, tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "precious").write_text("keep me")
    with aoflite.open(store_path) as db:
        db.append("k", b"v")
        with pytest.raises(aoflite.FormatError, match="new path"):
            db.backup(target)
        assert (target / "precious").read_text() == "keep me"
        with pytest.raises(TypeError):
            db.backup(None)


def test_a_failed_backup_leaves_no_store_behind(store_path, tmp_path):
    from aoflite import failpoints

    with aoflite.open(store_path) as db:
        db.append("k", b"v")
        db.seal()
        db.append("k", b"w")
        failpoints.io_error("layout.dirsync", 1)
        try:
            with pytest.raises(aoflite.StorageError):
                db.backup(tmp_path / "copy")
        finally:
            failpoints.io_reset()
        assert not os.path.exists(tmp_path / "copy")
        assert db.backup(tmp_path / "copy") == 2


def _consume_with_cursor(path, name, stop):
    """A consumer in another process: follows the store and saves its
    cursor at every batch end until stop is set."""
    with aoflite.open(path, readonly=True) as f:
        cursor = f.cursor(name)
        while not stop.is_set():
            for r in f.tail_all(cursor=name, timeout=0.05):
                if r.batch_end:
                    cursor.save(r.lsn)
                if stop.is_set():
                    break


def test_backup_copies_cursors_saved_from_another_process_during_appends(tmp_path):
    """A consumer in another process saves its cursor at every batch end
    while a loop appends and the backup runs. The copy holds the cursor at
    a batch end it has, no older than before the backup started and never
    past the LSN the backup holds up to, and tail_all resumes after it."""
    src, dst = str(tmp_path / "src"), str(tmp_path / "copy")
    db = aoflite.open(src, segment_bytes=MiB, durability="off")
    db.append("early", b"x")
    db.cursor("early").save(1)  # saved in the writer's process, and left there
    stop_appends = threading.Event()
    ctx = multiprocessing.get_context("spawn")
    stop_consumer = ctx.Event()
    consumer = ctx.Process(target=_consume_with_cursor, args=(src, "audit", stop_consumer))
    t = threading.Thread(target=_append_loop, args=(db, stop_appends, [0]))
    t.start()
    consumer.start()
    try:
        while db.cursor("audit").lsn < 5000:
            assert consumer.is_alive(), "the consumer died"
            threading.Event().wait(0.01)
        before = db.cursor("audit").lsn
        lsn = db.backup(dst)
    finally:
        stop_appends.set()
        t.join()
        stop_consumer.set()
        consumer.join(60)
    assert consumer.exitcode == 0
    db.close()
    with aoflite.open(dst) as copy:
        assert copy.verify() >= 1
        saved = copy.cursor("audit").lsn
        assert before <= saved <= lsn
        at = [r for r in copy.scan_all(start_lsn=saved) if r.lsn == saved]
        assert at and at[0].batch_end  # a valid resume point in the copy
        resumed = list(copy.tail_all(cursor="audit", timeout=0))
        assert [r.lsn for r in resumed] == list(range(saved + 1, lsn + 1))
        assert not resumed or resumed[-1].batch_end
        assert copy.cursor("early").lsn == 1
        listed = {c.name: (c.lsn, c.lag_records) for c in copy.cursors()}
        assert listed == {"audit": (saved, lsn - saved), "early": (1, lsn - 1)}
        copy.cursor("audit").save(lsn)  # the copy's cursors are its own
    assert not [n for n in os.listdir(os.path.join(dst, "cursors")) if not n.endswith(".cursor")]


def test_a_cursor_saved_past_the_backup_is_clamped_to_it(store_path, tmp_path, monkeypatch):
    """A consumer that saves past the LSN the copy holds up to, after the
    records were copied and before the cursors are, is copied at that LSN:
    it has consumed all the copy has, and no more."""
    import aoflite.backup as backup_module

    db = aoflite.open(store_path, segment_bytes=MiB)
    db.append_many("k", [b"a", b"b"])
    copy_cursors = backup_module.copy_cursors

    def consumer_goes_on(path, dest, upto):
        db.append_many("k", [b"c", b"d"])
        db.cursor("fast").save(4)
        copy_cursors(path, dest, upto)

    db.cursor("fast").save(2)
    db.cursor("slow").save(0)
    monkeypatch.setattr(backup_module, "copy_cursors", consumer_goes_on)
    assert db.backup(tmp_path / "copy") == 2
    db.close()
    with aoflite.open(str(tmp_path / "copy")) as copy:
        assert [(c.name, c.lsn, c.lag_records) for c in copy.cursors()] == [("fast", 2, 0), ("slow", 0, 2)]
        assert list(copy.tail_all(cursor="fast", timeout=0)) == []
