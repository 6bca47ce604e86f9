"""Online backup: a consistent copy while appends go on, opened as an
ordinary store, checked record for record."""

from __future__ import annotations

import os
import threading

import pytest

import aoflite

MiB = 1 << 20


def _records(path, upto=None):
    with aoflite.open(path, readonly=True) as db:
        return [(r.lsn, r.key, r.offset, r.value) for r in db.scan_all() if upto is None or r.lsn <= upto]


def test_backup_during_a_concurrent_append_loop(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "copy")
    db = aoflite.open(src, segment_bytes=MiB, durability="off")
    stop = threading.Event()
    appended = [0]

    def appender():
        i = 0
        while not stop.is_set() and i < 200_000:
            if i % 7 == 0:
                with db.transaction():
                    db.append("tx-a", b"debit %d" % i)
                    db.append("tx-b", b"credit %d" % i)
            else:
                db.append(f"k{i % 5}", b"v%06d" % i * 20)
            i += 1
            appended[0] = i

    t = threading.Thread(target=appender)
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
