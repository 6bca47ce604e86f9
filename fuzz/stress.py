"""The two processes of fuzz/test_stress.py and what they check.

``hammer`` (the writer process): three appenders, a transaction thread that
commits or rolls back, a sealer and a committer on one writable handle,
readers on it and on a read-only handle; then close() from a thread that
did not open the store, while the readers still run. ``follower``: another
process consuming scan_all() and tail() read-only. Both report over a
multiprocessing queue; neither ever blocks its parent.

A committed value is a pure function of (key, offset): ``value``. A value
appended inside a transaction that is then rolled back is ``MARK +
value(...)``, so whoever returns one was served bytes that must not exist.
"""

from __future__ import annotations

import faulthandler
import hashlib
import os
import queue
import random
import signal
import sys
import threading
import time
import traceback
from collections import Counter

import aoflite

MARK = b"ROLLEDBACK"
SEGMENT = 1 << 20  # the smallest segment_bytes allowed: rolls several times a second
STOP_GRACE = 20.0  # seconds a thread gets to finish its operation once told to stop
STALL = 10.0  # seconds of load without one append returning: the writers hang
CATCH_UP = 15.0  # seconds the follower gets to see what the closed writer left
MAX_PROBLEMS = 20  # per checker: after a real bug the rest is mostly echo
APPENDERS = 3
APPENDER_KEYS = [[f"a{i}-{j}" if j != 2 else f"a{i}-ü" for j in range(3)] for i in range(APPENDERS)]
TX_KEYS = ["t0", "t1", "t2"]
TAIL_KEY = "t0"  # written only in transactions, so the follower tails rollbacks too
ALL_KEYS = [k for keys in APPENDER_KEYS for k in keys] + TX_KEYS

_BLOB = random.Random(7).randbytes(1 << 16)
_LARGE = 32 << 10


def value(key: str, offset: int) -> bytes:
    """The bytes a writer appends at (key, offset) and commits."""
    h = int.from_bytes(hashlib.blake2b(f"{key}/{offset}".encode(), digest_size=8).digest(), "little")
    kind, r = h % 100, h >> 8
    # mostly small, some a few KiB, a few up to 32 KiB
    size = r % 300 if kind < 80 else 300 + r % 4000 if kind < 97 else 4096 + r % (_LARGE - 4096)
    start = (h >> 32) % (len(_BLOB) - _LARGE)
    # the header makes every (key, offset) distinct: a record served at the
    # wrong place never matches
    return f"{key}/{offset}/".encode() + _BLOB[start : start + size]


def value_problem(key: str, offset: int, got: bytes) -> str | None:
    """Why got is not what (key, offset) must hold, or None."""
    if got.startswith(MARK):
        return f"a ROLLED-BACK value ({len(got)} bytes, {got[:48]!r})"
    want = value(key, offset)
    if got != want:
        return (
            f"a value the writer never appended there ({len(got)} bytes, {got[:48]!r}; "
            f"expected {len(want)} bytes, {want[:48]!r})"
        )
    return None


def stacks() -> str:
    """Every thread's stack in this process, innermost frames only."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(
        f"--- thread {names.get(ident, ident)} ---\n{''.join(traceback.format_stack(frame)[-8:])}"
        for ident, frame in sys._current_frames().items()
    )


def _dump_stacks(path: str) -> None:
    # where the parent finds this process's stacks if it crashes, or stops
    # answering and gets SIGUSR1
    f = open(path, "w")  # kept open for the life of the process
    faulthandler.enable(file=f, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=f, all_threads=True)


def _exit(results, kind: str, payload) -> None:
    """Report, then end the process without running finalizers: a thread
    stuck inside the store would make a normal exit block on it."""
    results.put((kind, payload))
    results.close()
    results.join_thread()
    os._exit(0)


# ----------------------------------------------------------------- checks


class Feed:
    """Consumes scan_all() from where it left off and checks that LSNs are
    contiguous, each key's offsets dense, and every value the one written.

    With known_offsets=False the first record of each key sets its base
    (a consumer that starts mid-stream)."""

    def __init__(self, who: str, next_lsn: int = 1, known_offsets: bool = True):
        self.who = who
        self.next_lsn = next_lsn
        self.next_off: dict[str, int] = {}
        self.known_offsets = known_offsets
        self.problems: list[str] = []
        self.passes = 0
        self.records = 0
        self.digest = hashlib.blake2b(digest_size=16)  # of the (lsn, key, offset) sequence

    def problem(self, msg: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(f"{self.who}: {msg}")

    def pull(self, db: aoflite.Store, limit: int | None = None) -> int:
        """One scan_all() pass from next_lsn; returns records consumed."""
        start, n = self.next_lsn, 0
        self.passes += 1
        for rec in db.scan_all(start_lsn=start):
            self.check(rec, f"scan_all(start_lsn={start}), pass {self.passes}")
            n += 1
            if limit is not None and n >= limit:
                break
        return n

    def check(self, rec: aoflite.Record, where: str) -> None:
        key, off, lsn = rec.key, rec.offset, rec.lsn
        at = f"{where}: LSN {lsn} ({key!r} offset {off})"
        if lsn > self.next_lsn:
            self.problem(f"{at} follows LSN {self.next_lsn - 1}: LSNs {self.next_lsn}..{lsn - 1} skipped")
        elif lsn < self.next_lsn:
            self.problem(f"{at} follows LSN {self.next_lsn - 1}: LSN went back or repeated")
        want = self.next_off.get(key, 0 if self.known_offsets else off)
        if off != want:
            gap = f"offsets {want}..{off - 1} skipped" if off > want else "offset went back or repeated"
            self.problem(f"{at}: expected offset {want} of {key!r}, {gap}")
        bad = value_problem(key, off, rec.value)
        if bad:
            self.problem(f"{at}: {bad}")
        # carry on from what was served, so that one skip is reported once
        self.next_lsn = lsn + 1
        self.next_off[key] = off + 1
        self.records += 1
        self.digest.update(f"{lsn}:{key}:{off};".encode())


class TailCheck:
    """Follows one key with tail() and checks offsets and values."""

    def __init__(self, who: str, key: str):
        self.who = who
        self.key = key
        self.next_off = 0
        self.problems: list[str] = []

    def run(self, db: aoflite.Store, stop: threading.Event, timeout: float) -> None:
        while not stop.is_set():
            for rec in db.tail(self.key, start=self.next_off, timeout=timeout):
                at = f"{self.who}: tail({self.key!r}) record at offset {rec.offset} (LSN {rec.lsn})"
                if rec.offset != self.next_off and len(self.problems) < MAX_PROBLEMS:
                    self.problems.append(f"{at}: expected offset {self.next_off}")
                bad = value_problem(self.key, rec.offset, rec.value)
                if bad and len(self.problems) < MAX_PROBLEMS:
                    self.problems.append(f"{at}: {bad}")
                self.next_off = rec.offset + 1
                if stop.is_set():
                    break


# ------------------------------------------------------ the writer process


class _Rollback(Exception):
    """Raised inside a transaction to roll it back."""


class Hang(Exception):
    """Writer threads stalled or did not stop; the message holds their stacks."""


class Run:
    """The threads hammering one store, and what they acknowledged."""

    def __init__(self, db: aoflite.Store, ro: aoflite.Store, seed: int):
        self.db, self.ro, self.seed = db, ro, seed
        self.acked: dict[str, int] = {}  # key -> records acknowledged (its owner thread writes it)
        self.ends: dict[str, int] = {}  # key -> records perhaps appended: acked + in flight
        self.max_lsn = 0  # highest LSN a scan_all consumer here has seen
        self.failures: list[str] = []
        self.trouble = threading.Event()  # a failure: end the load early
        self.stop_writes = threading.Event()
        self.stop_reads = threading.Event()
        self.closing = threading.Event()  # close() was called: readers may now fail with aoflite errors
        self.closed = threading.Event()  # close() returned: every later call must raise
        self.doing: dict[str, tuple[str, float]] = {}  # thread -> (operation, since)
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.writers: list[threading.Thread] = []
        self.readers: list[threading.Thread] = []
        self.closer: threading.Thread | None = None

    # ------------------------------------------------------------ plumbing

    def fail(self, msg: str) -> None:
        with self._lock:
            if len(self.failures) < 60:
                self.failures.append(f"[{threading.current_thread().name}] {msg}")
        self.trouble.set()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    def _doing(self, what: str) -> None:
        self.doing[threading.current_thread().name] = (what, time.monotonic())

    def _what(self) -> str:
        return self.doing.get(threading.current_thread().name, ("?", 0))[0]

    def _thread(self, name: str, body, *args) -> threading.Thread:
        def run():
            try:
                body(*args)
            except BaseException:
                self.fail(f"raised during {self._what()}:\n{traceback.format_exc()}")
            finally:
                self._doing("finished")

        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        return t

    def start(self) -> None:
        self.writers = [self._thread(f"appender-{i}", self.appender, i) for i in range(APPENDERS)]
        self.writers += [
            self._thread("transactions", self.transactor),
            self._thread("sealer", self.sealer),
            self._thread("committer", self.committer),
        ]
        for h, label in ((self.db, "writable"), (self.ro, "read-only")):
            self.readers.append(self._thread(f"feed-{label}", self.feeder, h, label))
            self.readers += [self._thread(f"reader-{label}-{i}", self.reader, h, label, i) for i in range(2)]

    def close_from_another_thread(self) -> None:
        def close():
            self.closing.set()
            self._doing("close() of the writable handle")
            self.db.close()
            self._doing("close() of the read-only handle")
            self.ro.close()
            self.closed.set()

        self.closer = self._thread("closer", close)

    def join(self, threads: list[threading.Thread], what: str) -> None:
        end = time.monotonic() + STOP_GRACE
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            raise self.hang(f"{', '.join(stuck)} did not {what} within {STOP_GRACE:.0f} s")

    def hang(self, what: str) -> Hang:
        return Hang(
            f"{what}\nthreads and what they were doing:\n{self.what_threads_do()}\n"
            + "".join(f"failure before that: {f}\n" for f in self.failures[:20])
            + f"stacks of the writer process:\n{stacks()}"
        )

    def what_threads_do(self) -> str:
        now = time.monotonic()
        lines = []
        for t in self.writers + self.readers + [self.closer] * bool(self.closer):
            what, since = self.doing.get(t.name, ("not started", now))
            state = "running" if t.is_alive() else "ended"
            lines.append(f"  {t.name} ({state}): {what}, for {now - since:.1f} s")
        return "\n".join(lines)

    # ------------------------------------------------------------- writers

    def _big(self, rng: random.Random, key: str, off: int, mark: bytes = b"") -> list[bytes]:
        """A batch of 64 KiB or more (the engine stages those differently)."""
        target, vals, size = rng.choice((64 << 10, 96 << 10, 200 << 10)), [], 0
        while size < target:
            vals.append(mark + value(key, off + len(vals)))
            size += len(vals[-1])
        return vals

    def _write(self, key: str, off: int, vals: list[bytes]) -> None:
        n = len(vals)
        if n == 1:
            self._doing(f"append({key!r}, {len(vals[0])} bytes) expecting offset {off}")
            got = self.db.append(key, vals[0])
            if got != off:
                self.fail(f"append({key!r}) returned offset {got}, expected {off}")
        else:
            self._doing(f"append_many({key!r}, {n} values, {sum(map(len, vals))} bytes) expecting offsets from {off}")
            got = self.db.append_many(key, vals)
            if got != range(off, off + n):
                self.fail(f"append_many({key!r}, {n} values) returned {got}, expected range({off}, {off + n})")
        self.count("stress records appended", n)

    def appender(self, i: int) -> None:
        rng = random.Random(f"{self.seed}/appender-{i}")
        keys = APPENDER_KEYS[i]
        counts = dict.fromkeys(keys, 0)
        while not self.stop_writes.is_set():
            key = rng.choice(keys)
            off, r = counts[key], rng.random()
            if r < 0.6:
                vals = [value(key, off)]
            elif r < 0.93:
                vals = [value(key, off + j) for j in range(rng.randint(2, 16))]
            else:
                vals = self._big(rng, key, off)
            self.ends[key] = off + len(vals)
            self._write(key, off, vals)
            counts[key] += len(vals)
            self.acked[key] = counts[key]

    def transactor(self) -> None:
        rng = random.Random(f"{self.seed}/transactions")
        counts = dict.fromkeys(TX_KEYS, 0)
        while not self.stop_writes.is_set():
            # n = 0: a batch of 64 KiB or more
            steps = [(rng.choice(TX_KEYS), rng.choice((1, 1, 2, 5, 0))) for _ in range(rng.randint(1, 4))]
            rollback = rng.random() < 0.35
            cut = rng.randint(0, len(steps)) if rollback else len(steps)
            mark = MARK if rollback else b""
            before = dict(counts)
            try:
                with self.db.transaction():
                    for key, n in steps[:cut]:
                        off = counts[key]
                        if n:
                            vals = [mark + value(key, off + j) for j in range(n)]
                        else:
                            vals = self._big(rng, key, off, mark)
                        if not rollback:
                            self.ends[key] = off + len(vals)
                        self._write(key, off, vals)
                        counts[key] += len(vals)
                    if rollback:
                        self._doing(f"rolling back a transaction after {cut} of its steps {steps}")
                        raise _Rollback
                    self._doing(f"ending a committed transaction of {steps}")
            except _Rollback:
                counts = before
                self.count("stress transactions rolled back")
                for key in TX_KEYS:
                    self._doing(f"count({key!r}) after a rollback")
                    if (n := self.db.count(key)) != before[key]:
                        self.fail(f"count({key!r}) is {n} after a rolled-back transaction, expected {before[key]}")
                continue
            self.count("stress transactions committed")
            for key in TX_KEYS:
                self.acked[key] = counts[key]

    def sealer(self) -> None:
        rng = random.Random(f"{self.seed}/sealer")
        while not self.stop_writes.wait(rng.uniform(0.05, 0.3)):
            self._doing("seal()")
            if self.db.seal() is not None:
                self.count("stress seals")

    def committer(self) -> None:
        rng = random.Random(f"{self.seed}/committer")
        while not self.stop_writes.wait(rng.uniform(0.001, 0.01)):
            self._doing("commit()")
            self.db.commit()
            self.count("stress commits")

    # ------------------------------------------------------------- readers

    def _step(self, label: str, step) -> bool:
        """Run one reader step; False when the reader should stop."""
        after_close = self.closed.is_set()
        try:
            step()
        except aoflite.Error as e:
            if self.closing.is_set():
                self.count(f"stress reads ended by aoflite.{type(e).__name__} racing close()")
                return False
            self._bad(label, f"raised aoflite.{type(e).__name__}: {e}")
            return True
        except Exception as e:
            when = "while close() ran" if self.closing.is_set() else "with no close() under way"
            name = f"{type(e).__module__}.{type(e).__qualname__}"
            self._bad(label, f"raised {name} {when}; only aoflite errors may escape:\n{traceback.format_exc()}")
            return False
        if after_close:
            self._bad(label, "returned normally after close() had returned (expected ClosedError)")
            return False
        return True

    def _bad(self, label: str, msg: str) -> None:
        """A reader's failure, naming the call it made."""
        self.fail(f"{self._what()} on the {label} handle {msg}")

    def _check(self, rec: aoflite.Record, key: str, off: int, label: str) -> None:
        if (rec.key, rec.offset) != (key, off):
            self._bad(label, f"returned ({rec.key!r}, {rec.offset}) for ({key!r}, {off})")
        elif bad := value_problem(key, off, rec.value):
            self._bad(label, f"returned, at {key!r} offset {off} (LSN {rec.lsn}), {bad}")

    def _check_run(self, recs: list[aoflite.Record], key: str, start: int, label: str) -> None:
        for i, rec in enumerate(recs):
            if rec.offset != start + i:
                self._bad(label, f"returned offset {rec.offset} as record {i}, expected {start + i}")
                return
            self._check(rec, key, rec.offset, label)

    def reader(self, h: aoflite.Store, label: str, i: int) -> None:
        rng = random.Random(f"{self.seed}/reader-{label}-{i}")

        def scan():
            key = rng.choice(ALL_KEYS)
            n = self.acked.get(key, 0)
            lo = rng.randrange(n + 1)
            self._doing(f"scan({key!r}, {lo}, {n}) with {n} records of it acknowledged")
            recs = list(h.scan(key, lo, n))
            if len(recs) != n - lo:
                got = f"offsets {recs[0].offset}..{recs[-1].offset}" if recs else "nothing"
                self._bad(label, f"returned {len(recs)} records ({got}), expected {n - lo}")
            self._check_run(recs, key, lo, label)

        def scan_open_ended():
            key = rng.choice(ALL_KEYS)
            n = self.acked.get(key, 0)
            lo = max(0, n - rng.randint(1, 300))
            self._doing(f"scan({key!r}, {lo}) with {n} records of it acknowledged")
            recs = list(h.scan(key, lo))
            if len(recs) < n - lo:
                self._bad(label, f"returned {len(recs)} records, at least {n - lo} acknowledged")
            self._check_run(recs, key, lo, label)

        def beyond(key=None):
            # just past what is acknowledged: an append in flight, or a
            # transaction open or rolled back; never its bytes
            key = key or rng.choice(ALL_KEYS)
            n = self.acked.get(key, 0)
            self._doing(f"read({key!r}, {n}) just past the {n} acknowledged records")
            try:
                rec = h.read(key, n)
            except aoflite.NotFound:
                if self.closing.is_set():
                    raise  # not "nothing there": the handle may be closed
                return
            self._check(rec, key, n, label)

        def read():
            key = rng.choice(ALL_KEYS)
            n = self.acked.get(key, 0)
            if not n:
                return beyond(key)
            off = rng.randrange(n)
            self._doing(f"read({key!r}, {off}) with {n} records of it acknowledged")
            self._check(h.read(key, off), key, off, label)

        def scan_all_window():
            start = rng.randint(1, max(1, self.max_lsn))
            limit = rng.choice((50, 500, 3000))
            self._doing(f"scan_all(start_lsn={start}), up to {limit} records, with LSN {self.max_lsn} seen committed")
            feed = Feed(f"{self._what()} on the {label} handle", start, known_offsets=False)
            feed.pull(h, limit)
            if self.max_lsn >= start and feed.records == 0:
                self._bad(label, "returned nothing")
            for msg in feed.problems:
                self.fail(msg)

        steps = [read] * 9 + [scan] * 4 + [scan_open_ended] * 2 + [beyond] * 2 + [scan_all_window] * 3
        while not self.stop_reads.is_set() and self._step(label, rng.choice(steps)):
            self.count("stress reader calls")

    def feeder(self, h: aoflite.Store, label: str) -> None:
        feed = Feed(f"scan_all consumer on the {label} handle")
        got = 0

        def pull():
            nonlocal got
            self._doing(f"scan_all(start_lsn={feed.next_lsn}) continuing a feed")
            got = feed.pull(h)

        while not self.stop_reads.is_set() and self._step(label, pull):
            for msg in feed.problems:
                self.fail(msg)
            feed.problems.clear()
            self.max_lsn = max(self.max_lsn, feed.next_lsn - 1)
            self.count("stress records fed in-process", got)
            if not got:
                time.sleep(0.002)


def hammer(results, stack_path: str, path: str, seed: int, seconds: float, stop_early) -> None:
    """The writer process: open the store, run the threads for seconds (or
    until a failure, or stop_early is set), stop the writers, close() from
    another thread while the readers run, stop the readers. Puts ("done",
    report), ("hang", message with stacks) or ("error", traceback)."""
    _dump_stacks(stack_path)
    try:
        db = aoflite.open(path, durability="full", segment_bytes=SEGMENT)
        ro = aoflite.open(path, readonly=True)
        run = Run(db, ro, seed)
        run.start()
        end = time.monotonic() + seconds
        done, since = 0, time.monotonic()
        while time.monotonic() < end and not run.trouble.is_set() and not stop_early.is_set():
            run.trouble.wait(0.1)
            if run.counts["stress records appended"] != done:
                done, since = run.counts["stress records appended"], time.monotonic()
            elif time.monotonic() - since > STALL:
                raise run.hang(f"no append returned for {STALL:.0f} s while the load ran")
        run.stop_writes.set()
        run.join(run.writers, "finish their operation and stop")
        # close while the readers still run, from a thread that did not open it
        run.close_from_another_thread()
        run.join([run.closer], "return from close()")
        time.sleep(0.2)
        run.stop_reads.set()
        run.join(run.readers, "stop reading")
    except Hang as e:
        _exit(results, "hang", str(e))
    except BaseException:
        _exit(results, "error", traceback.format_exc())
    report = {"failures": run.failures, "acked": run.acked, "ends": run.ends, "counts": dict(run.counts)}
    _exit(results, "done", report)


# ---------------------------------------------------- the follower process


def follower(results, stack_path: str, path: str, control, lifetime: float) -> None:
    """The follower process: opens the store read-only and consumes
    scan_all() (and tail(TAIL_KEY) in a thread) until the parent sends the
    final (last LSN, count of TAIL_KEY) and it has caught up with them;
    then puts ("done", report). Problems go to the parent as found.

    It ends by itself when its parent dies, lifetime seconds pass, or
    CATCH_UP seconds after the final numbers came."""
    _dump_stacks(stack_path)
    parent, deadline = os.getppid(), time.monotonic() + lifetime
    sent = 0
    try:
        db = aoflite.open(path, readonly=True)
        feed = Feed("follower process")
        tail = TailCheck("follower process", TAIL_KEY)
        stop_tail = threading.Event()
        tail_error: list[str] = []

        def tail_body():
            try:
                tail.run(db, stop_tail, timeout=0.2)
            except BaseException:
                tail_error.append(traceback.format_exc())

        tailer = threading.Thread(target=tail_body, name="follower-tail", daemon=True)
        tailer.start()
        results.put(("ready", os.getpid()))
        final = None
        while time.monotonic() < deadline and os.getppid() == parent:
            got = feed.pull(db)
            for msg in feed.problems[sent:]:
                results.put(("problem", msg))
            sent = len(feed.problems)
            if final is None:
                try:
                    final = control.get_nowait()
                    deadline = min(deadline, time.monotonic() + CATCH_UP)
                except queue.Empty:
                    pass
            if final is not None and feed.next_lsn > final[0] and tail.next_off >= final[1]:
                break
            if not got:
                time.sleep(0.005)
        stop_tail.set()
        tailer.join(5)
        report = {
            "last_lsn": feed.next_lsn - 1,
            "counts": feed.next_off,
            "digest": feed.digest.hexdigest(),
            "records": feed.records,
            "problems": tail.problems + [f"follower process: tail() raised:\n{e}" for e in tail_error],
            "tail_next": tail.next_off,
            "tail_stuck": tailer.is_alive(),
            "caught_up": final is not None and feed.next_lsn > final[0],
        }
    except BaseException:
        _exit(results, "error", traceback.format_exc())
    _exit(results, "done", report)
