"""Races found by review, each replayed step by step with pause points
(aoflite.failpoints.pause): a thread stops at the racing step, the test
makes the other side move, then lets it go. No sleeps, no luck."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

import aoflite
from aoflite import failpoints

MiB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Runner(threading.Thread):
    """Runs fn in a thread; join() re-raises what it raised."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None
        self.start()

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as e:  # handed to the test thread
            self.error = e

    def join(self, timeout=20):
        super().join(timeout)
        assert not self.is_alive(), f"{self.fn} did not finish: hung"
        if self.error is not None:
            raise self.error
        return self.result


def test_commit_returns_when_another_threads_transaction_rolls_back(store_path):
    db = aoflite.open(store_path, durability="off", segment_bytes=MiB)
    db.append("k", b"committed")
    in_tx, rolled_back = threading.Event(), threading.Event()

    def transaction():
        with pytest.raises(RuntimeError):
            with db.transaction():
                db.append("k", b"rolled back" * 100)
                in_tx.set()
                rolled_back.wait(10)
                raise RuntimeError("roll back")

    def roll_back_later():
        t = Runner(transaction)
        in_tx.wait(10)
        return t

    with failpoints.pause("sync.after_target") as p:
        tx = roll_back_later()
        committer = Runner(db.commit)  # its target is fixed while the transaction is open
        assert p.wait()
        rolled_back.set()
        tx.join()
    committer.join()  # spun forever when the target included the rolled-back bytes
    assert db.commit() >= 1
    db.close()


def test_follower_scan_all_takes_every_record_across_a_roll(store_path):
    db = aoflite.open(store_path, durability="off", segment_bytes=MiB)
    for i in range(3):
        db.append("k", b"%d" % i)
    db.commit()
    follower = aoflite.open(store_path, readonly=True)
    it = follower.scan_all()
    got = [next(it).lsn]
    for i in range(3, 6):
        db.append("k", b"%d" % i)
    db.commit()
    db.seal()
    db.append("k", b"6")
    db.append("k", b"7")
    db.commit()
    got += [r.lsn for r in it]
    assert got == list(range(1, 9))
    follower.close()
    db.close()


def test_follower_scan_all_standing_at_a_segment_end_sees_the_seal(store_path):
    db = aoflite.open(store_path, durability="off", segment_bytes=MiB)
    db.append("k", b"0")
    db.commit()
    follower = aoflite.open(store_path, readonly=True)
    # the follower has taken all of segment 1 as it was; while it stands at
    # the end, the writer adds to it, seals it and moves on
    with failpoints.pause("scan_all.segment_end") as p:
        scan = Runner(lambda: [r.lsn for r in follower.scan_all()])
        assert p.wait()
        db.append("k", b"1")
        db.commit()
        db.seal()
        db.append("k", b"2")
        db.commit()
    assert scan.join() == [1, 2, 3]
    follower.close()
    db.close()


def test_follower_never_serves_rolled_back_bytes(store_path):
    """A follower copies the uncommitted region in steps; between two of
    them a transaction rolls back and the next one rewrites the same
    positions with the same LSNs and offsets. Its second record is
    byte-identical to the rolled-back one, so a copy stitched from both
    passes every check: the follower must start its copy over instead."""
    db = aoflite.open(store_path, durability="off", segment_bytes=4 * MiB)
    db.append("k", b"defined")
    db.commit()
    follower = aoflite.open(store_path, readonly=True)
    assert follower.count("k") == 1
    tail = b"t" * (3 * MiB // 2)
    ts = 1_700_000_000_000
    written, go = threading.Event(), threading.Event()

    def doomed():
        with pytest.raises(RuntimeError):
            with db.transaction():
                db.append("k", b"ROLLED-BACK", timestamp_ms=ts)
                db.append("k", tail, timestamp_ms=ts)
                written.set()
                go.wait(10)
                raise RuntimeError("roll back")

    with failpoints.pause("follow.after_read") as p:
        tx = Runner(doomed)
        assert written.wait(10)
        reader = Runner(lambda: follower.count("k"))
        assert p.wait()  # first step copied: the doomed records' start
        go.set()
        tx.join()
        with db.transaction():
            db.append("k", b"COMMITTED!!", timestamp_ms=ts)
            db.append("k", tail, timestamp_ms=ts)
    reader.join()
    assert follower.read("k", 1).value == b"COMMITTED!!"
    assert [r.value[:11] for r in follower.scan("k")] == [b"defined", b"COMMITTED!!", b"t" * 11]
    follower.close()
    db.close()


def test_key_ranges_loaded_while_a_roll_commits_are_not_kept(store_path):
    db = aoflite.open(store_path, durability="off", segment_bytes=MiB)
    for i in range(3):
        db.append("k", b"%d" % i)
    db.seal()
    for i in range(3, 7):
        db.append("k", b"%d" % i)
    with failpoints.pause("ranges.after_load") as p:
        reader = Runner(lambda: db.read("k", 0).value)
        assert p.wait()  # it holds the ranges from before the roll
        db.seal()
    assert reader.join() == b"0"
    assert db.count("k") == 7
    assert [r.offset for r in db.scan("k")] == list(range(7))
    assert db.read("k", 4).value == b"4"
    db.close()


def test_follower_key_ranges_loaded_while_a_roll_commits_are_not_kept(store_path):
    db = aoflite.open(store_path, durability="off", segment_bytes=MiB)
    for i in range(3):
        db.append("k", b"%d" % i)
    db.seal()
    follower = aoflite.open(store_path, readonly=True)
    for i in range(3, 7):
        db.append("k", b"%d" % i)
    db.commit()
    with failpoints.pause("ranges.after_load") as p:
        reader = Runner(lambda: follower.read("k", 0).value)
        assert p.wait()
        db.seal()
        follower._follower.refresh()  # takes in the roll while the reader holds old ranges
    assert reader.join() == b"0"
    assert [r.offset for r in follower.scan("k")] == list(range(7))
    assert follower.read("k", 4).value == b"4"
    follower.close()
    db.close()


def test_follower_first_scan_after_a_seal_reads_the_sealed_file(store_path):
    db = aoflite.open(store_path, durability="off", segment_bytes=MiB)
    db.append("other", b"x")
    db.commit()
    follower = aoflite.open(store_path, readonly=True)  # follows segment 1 as it is now
    for i in range(3):
        db.append("k", b"%d" % i)
    db.seal()
    assert [r.value for r in follower.scan("k")] == [b"0", b"1", b"2"]
    assert follower.count("k") == 3
    follower.close()
    db.close()


def test_readonly_open_racing_a_seal_does_not_fault(store_path):
    """The open stats the preallocated file, the seal shrinks it, then the
    open finds a footer: it must map the sealed size (SIGBUS otherwise).
    Run in a child so a fault fails this test, not the whole run."""
    script = textwrap.dedent(
        f"""
        import threading, aoflite
        from aoflite import failpoints
        db = aoflite.open({store_path!r}, durability="off", segment_bytes=1 << 20)
        for i in range(5):
            db.append("k", b"v%d" % i)
        db.commit()
        out = {{}}
        def follow():
            with aoflite.open({store_path!r}, readonly=True) as f:
                out["values"] = [r.value for r in f.scan("k")]
        with failpoints.pause("seg_open.after_stat") as p:
            t = threading.Thread(target=follow)
            t.start()
            assert p.wait(10)
            db.seal()
        t.join(30)
        assert out["values"] == [b"v%d" % i for i in range(5)], out
        db.close()
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])


def test_close_racing_readers_raises_only_aoflite_errors(store_path):
    db = aoflite.open(store_path, durability="off", segment_bytes=MiB)
    for i in range(50):
        db.append("k%d" % (i % 5), b"v")
    db.seal()
    errors_seen: list[BaseException] = []
    stop = threading.Event()

    def reader():
        n = 0
        while not stop.is_set() and n < 20000:
            n += 1
            try:
                db.count("k%d" % (n % 7))  # unknown keys go to the manifest
                db.read("k1", 0)
                db.keys()
            except aoflite.ClosedError:
                return
            except BaseException as e:
                errors_seen.append(e)
                return

    threads = [Runner(reader) for _ in range(3)]
    with failpoints.pause("close.before_sync") as p:
        closer = Runner(db.close)
        assert p.wait()
    closer.join()
    stop.set()
    for t in threads:
        t.join()
    assert not errors_seen, errors_seen


def test_scan_all_moving_to_the_next_segment_while_it_is_sealed(store_path):
    """scan_all finished segment 1 and looks for the next one just as the
    writer seals segment 2 and opens segment 3: it must not jump to 3."""
    db = aoflite.open(store_path, durability="off", segment_bytes=MiB)
    for i in range(3):
        db.append("k", b"%d" % i)
    db.seal()
    for i in range(3, 6):
        db.append("k", b"%d" % i)
    with failpoints.pause("segment_after.view_taken") as p:
        scan = Runner(lambda: [r.lsn for r in db.scan_all()])
        assert p.wait()
        db.seal()
        db.append("k", b"6")
    assert scan.join() == list(range(1, 8))
    db.close()
