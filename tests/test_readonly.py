"""Read-only handles, in another process and in this one, follow a writer
without reopening: new records, new keys, rolls and seals, finished
transactions only, and tail()."""

from __future__ import annotations

import pickle
import queue
import subprocess
import sys
import threading

import pytest

import aoflite

MiB = 1 << 20

# The reader's side. The same source runs in a child process (commands
# arrive pickled on stdin, replies leave on stdout) and, exec'd, in a thread
# of the test process, so both kinds of reader are driven alike.
READER = r'''
import pickle
import sys
import time
import traceback

import aoflite


def snapshot(db):
    """Everything a handle shows, compared record by record."""
    keys = db.keys()
    return {
        "keys": keys,
        "logs": {k: list(db.scan(k)) for k in keys},
        "counts": {k: db.count(k) for k in keys},
        "last": {k: db.last(k) for k in keys},
        "all": list(db.scan_all()),
    }


def tx_value(t, i):
    return b"tx%d-%d" % (t, i)


def watch(db, key, batch, target, reply):
    """Poll key until it holds target records, checking every view of it
    holds whole transactions of `batch` records only; reports each poll."""
    polls, seen, bad = 0, set(), []
    deadline = time.monotonic() + 60
    while True:
        n = db.count(key)
        values = [r.value for r in db.scan(key)]
        in_feed = [r.value for r in db.scan_all() if r.key == key]
        for what, got in (("count", n), ("scan", len(values)), ("scan_all", len(in_feed))):
            if got % batch:
                bad.append(f"{what} saw {got} records, not whole transactions of {batch}")
        for vals in (values, in_feed):
            if vals != [tx_value(o // batch, o % batch) for o in range(len(vals))]:
                bad.append(f"wrong values: {vals[-batch:]}")
        seen.add(n)
        polls += 1
        reply(("progress", polls))
        if n >= target or bad or time.monotonic() > deadline:
            return sorted(seen), bad


def serve(commands, reply):
    db = None
    for cmd, args in commands:
        try:
            if cmd == "open":
                db = aoflite.open(args[0], readonly=True, poll_interval_ms=1)
                result = None
            elif cmd == "snapshot":
                result = snapshot(db)
            elif cmd == "tail":
                key, start, n, timeout = args
                result = []
                for rec in db.tail(key, start, timeout=timeout):
                    result.append(rec)
                    if len(result) == 1:
                        reply(("progress", rec))
                    if len(result) == n:
                        break
            elif cmd == "watch":
                result = watch(db, *args, reply)
            elif cmd == "close":
                db.close()
                reply(("done", None))
                return
            else:
                raise ValueError(f"unknown command {cmd!r}")
            reply(("done", result))
        except Exception as e:
            reply(("error", type(e).__name__, traceback.format_exc()))


if __name__ == "__main__":
    def commands():
        while True:
            try:
                yield pickle.load(sys.stdin.buffer)
            except EOFError:
                return

    def reply(msg):
        pickle.dump(msg, sys.stdout.buffer)
        sys.stdout.buffer.flush()

    serve(commands(), reply)
'''

_reader_code: dict = {"__name__": "aoflite_test_reader"}
exec(READER, _reader_code)
snapshot, tx_value = _reader_code["snapshot"], _reader_code["tx_value"]


class Reader:
    """A read-only handle on path, in a child process or in a thread."""

    def __init__(self, where: str, path: str):
        self.replies: queue.Queue = queue.Queue()
        self.proc = None
        if where == "process":
            self.proc = subprocess.Popen([sys.executable, "-c", READER], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            threading.Thread(target=self._pump, daemon=True).start()
        else:
            self.inbox: queue.Queue = queue.Queue()
            threading.Thread(
                target=_reader_code["serve"], args=(iter(self.inbox.get, None), self.replies.put), daemon=True
            ).start()
        self.call("open", path)

    def _pump(self):
        while True:
            try:
                self.replies.put(pickle.load(self.proc.stdout))
            except EOFError:
                self.replies.put(("error", "EOFError", "the reader process exited"))
                return

    def start(self, cmd, *args):
        if self.proc is None:
            self.inbox.put((cmd, args))
        else:
            pickle.dump((cmd, args), self.proc.stdin)
            self.proc.stdin.flush()

    def next(self, timeout=60):
        msg = self.replies.get(timeout=timeout)
        if msg[0] == "error":
            raise AssertionError(f"the reader failed with {msg[1]}:\n{msg[2]}")
        return msg

    def result(self):
        while True:
            kind, value = self.next()
            if kind == "done":
                return value

    def call(self, cmd, *args):
        self.start(cmd, *args)
        return self.result()

    def wait_polls(self, n):
        """Return once the reader finished n more polls (of a running watch)."""
        for _ in range(n):
            assert self.next()[0] == "progress"

    def close(self):
        self.call("close")
        if self.proc is not None:
            self.proc.stdin.close()
            assert self.proc.wait(30) == 0


@pytest.fixture(params=["process", "thread"])
def reader(request):
    """Opens Readers in another process or in this one; closes them after."""
    opened = []

    def make(path):
        opened.append(Reader(request.param, path))
        return opened[-1]

    yield make
    for r in opened:
        r.close()


def _assert_same_view(reader, db):
    assert reader.call("snapshot") == snapshot(db)


@pytest.mark.parametrize("durability", ["full", "normal", "off"])
def test_reader_sees_records_appended_after_it_opened(store_path, reader, durability):
    """Every record whose append returned, in any durability mode and
    without commit(), reaches an open reader: new keys too."""
    with aoflite.open(store_path, durability=durability, segment_bytes=MiB) as db:
        db.append("a", b"a0")
        r = reader(store_path)
        _assert_same_view(r, db)
        db.append("a", b"a1", timestamp_ms=7)
        db.append("new-key", b"n0")
        db.append_many("batch", [b"b0", b"b1", b""])
        _assert_same_view(r, db)
        for i in range(50):
            db.append(f"key-{i % 7}", b"%d" % i)
        _assert_same_view(r, db)


def test_reader_follows_rolls_seals_and_reopens(store_path, reader):
    """A reader opened early keeps up while the writer rolls full segments,
    seals explicitly, and closes and reopens the store."""
    db = aoflite.open(store_path, segment_bytes=MiB)
    try:
        db.append("k", b"first")
        r = reader(store_path)
        for i in range(40):  # about 2.5 segments
            db.append("k", bytes([i]) * (64 << 10))
        _assert_same_view(r, db)
        db.seal()
        assert db.seal() is None
        _assert_same_view(r, db)
        db.append("after-seal", b"x")
        _assert_same_view(r, db)
        db.close()
        db = aoflite.open(store_path, segment_bytes=MiB)
        db.append("after-reopen", b"y")
        db.append("k", b"last")
        _assert_same_view(r, db)
        assert len([s for s in db.manifest.segments() if s.state == "sealed"]) >= 3
    finally:
        db.close()


def test_reader_never_sees_part_of_a_transaction(store_path, reader):
    """A reader polling while transactions are open sees each one whole or
    not at all, and never one that rolled back; polls happen while each
    transaction is half written."""
    batch, n_tx = 6, 5
    with aoflite.open(store_path, segment_bytes=MiB) as db:
        r = reader(store_path)
        r.start("watch", "tx", batch, batch * n_tx)
        r.wait_polls(1)
        for t in range(n_tx):
            if t == 2:
                with pytest.raises(KeyError), db.transaction():
                    db.append("tx", b"rolled-back")
                    db.append("tx", b"rolled-back")
                    r.wait_polls(2)
                    raise KeyError("roll back")
            if t == 3:
                db.seal()
            with db.transaction():
                for i in range(batch):
                    db.append("tx", tx_value(t, i))
                    if i == batch // 2:
                        r.wait_polls(2)  # one whole poll with the transaction half done
        seen, bad = r.result()
        assert bad == []
        assert seen[-1] == batch * n_tx
        assert len(seen) >= 2, "the reader saw only the end state"
        _assert_same_view(r, db)


def test_reader_tail_follows_the_writer(store_path, reader):
    """A reader's tail() yields records the writer appends after it started,
    through a seal and a transaction, in offset order."""
    with aoflite.open(store_path, segment_bytes=MiB) as db:
        db.append("t", b"0")
        r = reader(store_path)
        r.start("tail", "t", 0, 6, 30)
        kind, first = r.next()
        assert kind == "progress" and first.value == b"0"
        db.append("t", b"1")
        db.seal()
        db.append("other", b"not tailed")
        db.append_many("t", [b"2", b"3"])
        with db.transaction():
            db.append("t", b"4")
            db.append("t", b"5")
        assert r.result() == list(db.scan("t"))


def test_reader_tail_times_out(store_path, reader):
    """A reader's tail with a timeout ends when nothing new arrives."""
    with aoflite.open(store_path, segment_bytes=MiB) as db:
        db.append("t", b"0")
        r = reader(store_path)
        assert [rec.value for rec in r.call("tail", "t", 0, 100, 0.2)] == [b"0"]
        assert r.call("tail", "missing", 0, 100, 0.1) == []


def test_reader_takes_in_batches_larger_than_its_read_steps(store_path):
    """A follower reads the active segment in steps that start at 64 KiB
    and double: a batch of 3 MiB (and one record of 1.5 MiB) runs into the
    end of several steps before it is whole, and arrives whole."""
    with aoflite.open(store_path, durability="off", segment_bytes=64 * MiB) as db:
        db.append("small", b"0")
        with aoflite.open(store_path, readonly=True) as r:
            assert [x.value for x in r.scan("small")] == [b"0"]
            with db.transaction():
                for i in range(48):
                    db.append("big", bytes([i]) * 65_536)
            db.append("huge", b"h" * (3 * MiB // 2))
            db.append("small", b"1")
            assert [x.value for x in r.scan("big")] == [bytes([i]) * 65_536 for i in range(48)]
            assert r.read("huge", 0).value == b"h" * (3 * MiB // 2)
            assert [x.value for x in r.tail_all(timeout=0)] == [x.value for x in db.scan_all()]
