"""The feed's wake word: tail loops sleep until the writer ends a batch,
in another process and in this one, instead of polling. Followers here
poll every 60 s and recheck every 30 s, so anything that arrives within
the generous bounds below arrived because something woke them."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time

import pytest

import aoflite
from aoflite import failpoints, layout
from aoflite.segment import Feed

POLL_MS = 60_000  # a follower that polled would wait this long
PROMPT_S = 5.0  # generous: asserts a wake happened, not how fast


def _ctx():
    return multiprocessing.get_context("spawn")


def _follower(path, out, pause_first):
    """A child process: tail_all on a read-only handle, each record (and,
    with pause_first, the moment it is about to sleep) reported on out."""
    with aoflite.open(path, readonly=True, poll_interval_ms=POLL_MS) as f:
        if pause_first:
            p = failpoints.pause("feed.before_sleep")

            def announce():
                if p.wait(20):
                    out.put(("asleep",))
                    if pause_first == "release":
                        p.release()

            threading.Thread(target=announce, daemon=True).start()
        for r in f.tail_all(timeout=60):
            out.put(("rec", r.lsn, r.value))
            if r.value == b"last":
                return


def _start(path, pause_first=None):
    out = _ctx().Queue()
    child = _ctx().Process(target=_follower, args=(path, out, pause_first))
    child.start()
    return child, out


def _next(out, timeout=PROMPT_S):
    return out.get(timeout=timeout)


_FUTEX = {"x86_64": "202", "aarch64": "98"}.get(os.uname().machine)


def _asleep_on_feed(pid: int, timeout: float = 60) -> bool:
    """True once a thread of pid sleeps in the feed's futex: a shared
    FUTEX_WAIT (op 0), which no lock or condition variable of Python's uses
    (theirs are private). True at once where /proc cannot tell."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
            calls = []
            for tid in tids:
                with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                    calls.append(f.read().split())
        except OSError:
            return True
        if _FUTEX is None or any(c[:1] == [_FUTEX] and c[2:3] == ["0x0"] for c in calls):
            return True
        time.sleep(0.001)
    return False


def test_follower_in_another_process_wakes_on_append(store_path):
    db = aoflite.open(store_path, durability="off")
    db.append("k", b"first")
    child, out = _start(store_path, pause_first="release")
    try:
        assert _next(out, 60) == ("rec", 1, b"first")
        assert _next(out, 60) == ("asleep",)
        assert _asleep_on_feed(child.pid)
        db.append("k", b"second")
        assert _next(out) == ("rec", 2, b"second")
        db.append_many("m", [b"a", b"last"])
        assert [_next(out), _next(out)] == [("rec", 3, b"a"), ("rec", 4, b"last")]
        child.join(30)
        assert child.exitcode == 0
    finally:
        child.kill()
        db.close()


def test_a_follower_killed_in_its_sleep_does_not_stall_the_writer(store_path):
    db = aoflite.open(store_path, durability="off")
    feed = db._writes.feed
    db.append("k", b"0")
    child, out = _start(store_path, pause_first="hold")  # held where it said it sleeps
    try:
        assert _next(out, 60) == ("rec", 1, b"0")
        assert _next(out, 60) == ("asleep",)
        assert feed.sleeping()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    assert child.exitcode == -signal.SIGKILL
    db.append("k", b"1")  # wakes nobody, once, and clears the stale flag
    assert not feed.sleeping()
    t0 = time.monotonic()
    for i in range(2_000):
        db.append("k", b"x")
    assert not feed.sleeping()
    assert time.monotonic() - t0 < 30  # a stall would be a wake per append, or a hang
    # a new follower still sleeps and wakes
    child, out = _start(store_path, pause_first="release")
    try:
        for lsn in range(1, 2_003):
            assert _next(out, 60)[:2] == ("rec", lsn)
        assert _next(out, 60) == ("asleep",)
        assert _asleep_on_feed(child.pid)
        db.append("k", b"last")
        assert _next(out) == ("rec", 2_003, b"last")
        child.join(30)
        assert child.exitcode == 0
    finally:
        child.kill()
        db.close()


def _word(feed: Feed) -> int:
    return feed.wait(0, 0)


def test_every_batch_end_moves_the_wake_word_and_a_rollback_does_not(store_path):
    db = aoflite.open(store_path, durability="off")
    follower = aoflite.open(store_path, readonly=True, poll_interval_ms=POLL_MS)
    feed = follower._follower.feed
    seen = []
    done = threading.Event()

    def tail():
        for r in follower.tail_all(timeout=60):
            seen.append(r.value)
            if r.value == b"last":
                done.set()
                return

    t = threading.Thread(target=tail)
    t.start()
    w = _word(feed)
    db.append("k", b"one")
    assert _word(feed) == w + 1
    db.append_many("k", [b"two", b"three"])
    assert _word(feed) == w + 2
    with db.transaction():
        db.append("k", b"four")
        db.append("j", b"five")
        assert _word(feed) == w + 2  # nothing visible yet
    assert _word(feed) == w + 3
    with pytest.raises(RuntimeError):
        with db.transaction():
            db.append("k", b"rolled back")
            db.append("j", b"rolled back too")
            raise RuntimeError("abort")
    assert _word(feed) == w + 3
    db.append("k", b"last")
    assert _word(feed) == w + 4
    assert done.wait(PROMPT_S)
    t.join(10)
    assert seen == [b"one", b"two", b"three", b"four", b"five", b"last"]
    follower.close()
    db.close()


@pytest.fixture(params=[False, True], ids=["writable handle", "read-only handle"])
def handles(request, store_path):
    """A writer holding one record, and the handle whose tail loop a test
    watches: the writer itself, or a read-only handle in this process."""
    db = aoflite.open(store_path, durability="off")
    db.append("k", b"0")
    reader = aoflite.open(store_path, readonly=True, poll_interval_ms=POLL_MS) if request.param else db
    yield db, reader
    reader.close()
    db.close()


def _start_tail(target, reader) -> threading.Thread:
    """target in a thread; on a read-only handle, returned once it sleeps
    on the feed's wake word."""
    t = threading.Thread(target=target)
    with failpoints.pause("feed.before_sleep") as p:
        t.start()
        if reader.readonly:
            assert p.wait(60)  # said it sleeps, about to sleep
    if reader.readonly:
        assert _asleep_on_feed(os.getpid())
    return t


def test_tail_loops_in_this_process_wake_on_commit(handles):
    db, reader = handles
    got: queue.Queue = queue.Queue()

    def tail():
        for r in reader.tail("k", 0, timeout=60):
            got.put(r.value)
            if r.value == b"last":
                return

    t = _start_tail(tail, reader)
    assert got.get(timeout=60) == b"0"
    with db.transaction():
        db.append("k", b"1")
    assert got.get(timeout=PROMPT_S) == b"1"
    db.append("k", b"last")
    assert got.get(timeout=PROMPT_S) == b"last"
    t.join(10)


def test_closing_ends_a_sleeping_tail_loop(handles):
    _, reader = handles
    ended: queue.Queue = queue.Queue()

    def tail():
        try:
            for _ in reader.tail_all():
                pass
        except aoflite.ClosedError as e:
            ended.put(e)

    t = _start_tail(tail, reader)
    reader.close()
    assert isinstance(ended.get(timeout=PROMPT_S), aoflite.ClosedError)
    t.join(10)


def test_a_sleeping_tail_still_times_out(store_path):
    with aoflite.open(store_path, durability="off") as db:
        db.append("k", b"0")
        with aoflite.open(store_path, readonly=True, poll_interval_ms=POLL_MS) as reader:
            t0 = time.monotonic()
            assert [r.value for r in reader.tail_all(timeout=0.2)] == [b"0"]
            assert 0.2 <= time.monotonic() - t0 < PROMPT_S


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write the feed whatever its mode")
def test_a_follower_without_write_access_to_the_feed_polls(store_path):
    with aoflite.open(store_path, durability="off") as db:
        db.append("k", b"0")
        os.chmod(layout.feed_path(store_path), 0o444)
        with aoflite.open(store_path, readonly=True, poll_interval_ms=20) as reader:
            assert reader._follower.feed.wait(_word(db._writes.feed), 1000) is None
            got = []
            for r in reader.tail_all(timeout=2):
                got.append(r.value)
                if len(got) == 1:
                    db.append("k", b"1")
                if len(got) == 2:
                    break
            assert got == [b"0", b"1"]
