#!/usr/bin/env python3
"""Benchmark aoflite against peers in one process, on one machine and payload.

Peers: sqlite3 in WAL mode, LMDB (py-lmdb), a plain buffered file with a
CRC per record, and the os.write + os.fdatasync floor of one durable commit.
Every case runs on a fresh store in its own scratch directory, --repeats
times; the table shows medians and the ratios that aoflite targets.

    python tools/bench.py                  # 1M records x 100 B and 4 KiB
    python tools/bench.py --quick          # smoke run
    python tools/bench.py --only sqlite,lmdb --sizes 100 --json
    python tools/bench.py --only feed      # the live feed's probes only
    python tools/bench.py --only tiers     # the tier rows only (tools/bench_tiers.py)

Throughput cases run first, size by size, with the repeats of all cases
interleaved so that a slow spell of a noisy machine hits every case alike;
the fsync-bound commit cases run after them, in a phase of their own.
The live feed's probes (a writer here, a follower in another process) come
next: they report latencies, CPU shares and a ratio rather than rates. The
tier rows (tools/bench_tiers.py: compression, scans from Tier 1, appends
with tiering, hydration and cold reads from a loopback S3 server) come last.
Progress goes to stderr; the table (or JSON with --json) to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import gc
import json
import multiprocessing
import os
import platform
import random
import resource
import shutil
import sqlite3
import statistics
import struct
import sys
import tempfile
import threading
import time
import zlib
from contextlib import closing
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

try:
    import lmdb
except ImportError:  # the lmdb cases are then skipped
    lmdb = None

# measure the checkout this file lives in, not some other installed copy
REPO = Path(__file__).resolve().parent.parent
if (REPO / "aoflite").is_dir():
    sys.path.insert(0, str(REPO))

MiB = 1 << 20
MAX_CASE_BYTES = 512 * MiB  # value bytes one case may write; larger sizes get fewer records
AUTOCOMMIT_RECORDS = 100_000  # sqlite's one-transaction-per-insert case is capped here
COMMIT_VALUE_BYTES = 100  # the durable-commit cases append records of this size
COMMIT_THREADS = 8
CHUNK = 1000  # values per append_many call
PEERS = ("aoflite", "sqlite", "lmdb", "file", "fsync", "feed", "tiers")
SEED = 20240601


# ---------------------------------------------------------------- aoflite


def load_aoflite():
    """The aoflite module, or None and the reason it cannot be benchmarked."""
    try:
        import aoflite
    except Exception as e:  # a half-built package may fail in any way
        return None, f"import failed: {type(e).__name__}: {e}"
    if not callable(getattr(aoflite, "open", None)):
        return None, "aoflite.open() is not there yet"
    return aoflite, None


aoflite, AOFLITE_MISSING = load_aoflite()


def aoflite_version() -> str | None:
    """aoflite's version string, if it can be found."""
    if aoflite is None:
        return None
    version = getattr(aoflite, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version("aoflite")
        except Exception:
            version = "unknown"
    return f"{version} ({Path(aoflite.__file__).parent})"


# ---------------------------------------------------------------- workloads


@dataclass
class Workload:
    """The records one size's cases write: values round-robin over keys.

    Record i goes to key i % K at that key's offset i // K. Derived forms
    (rows for sqlite, keys for LMDB, chunks for append_many) are built on
    first use, outside any timed section, and shared by all repeats.
    """

    size: int
    keys: list[str]
    values: list[bytes]
    n_probes: int = 0

    @classmethod
    def random(cls, n: int, size: int, keys: list[str], n_probes: int = 0, seed: int = SEED):
        """n random values of size bytes, drawn once for every peer."""
        rng = random.Random(seed + size)
        blob = b"".join(rng.randbytes(min(MiB, n * size - i)) for i in range(0, n * size, MiB))
        values = [blob[i : i + size] for i in range(0, n * size, size)]
        return cls(size, keys, values, n_probes)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def nbytes(self) -> int:
        return self.n * self.size

    def where(self, i: int) -> tuple[str, int]:
        """The (key, offset) of record i."""
        k = len(self.keys)
        return self.keys[i % k], i // k

    @cached_property
    def work(self) -> list[tuple[str, bytes]]:
        """(key, value) in append order."""
        k, keys = len(self.keys), self.keys
        return [(keys[i % k], v) for i, v in enumerate(self.values)]

    @cached_property
    def by_key(self) -> dict[str, list[bytes]]:
        """Each key's values, in offset order."""
        k = len(self.keys)
        return {key: self.values[j::k] for j, key in enumerate(self.keys)}

    @cached_property
    def chunks(self) -> list[tuple[str, list[bytes]]]:
        """Per key, its values in runs of CHUNK for append_many."""
        return [
            (key, values[i : i + CHUNK])
            for key, values in self.by_key.items()
            for i in range(0, len(values), CHUNK)
        ]

    @cached_property
    def rows(self) -> list[tuple[str, int, int, int, bytes]]:
        """sqlite rows (key, off, lsn, ts, value) in append order."""
        ts0 = int(time.time() * 1000)
        return [(*self.where(i), i + 1, ts0 + i, v) for i, v in enumerate(self.values)]

    @cached_property
    def lmdb_items(self) -> list[tuple[bytes, bytes]]:
        """LMDB (key bytes + 8-byte big-endian offset, value) in append order."""
        out = []
        for i, v in enumerate(self.values):
            key, off = self.where(i)
            out.append((key.encode() + off.to_bytes(8, "big"), v))
        return out

    @cached_property
    def probes(self) -> list[tuple[str, int]]:
        """Random (key, offset) point reads, the same set for every peer."""
        rng = random.Random(SEED)
        return [self.where(rng.randrange(self.n)) for _ in range(self.n_probes)]


# ---------------------------------------------------------------- cases


@dataclass(frozen=True)
class Sample:
    """One timed run: ops done, value bytes moved, seconds taken."""

    ops: int
    nbytes: int
    seconds: float


@dataclass(frozen=True)
class Case:
    """One measured operation of one peer.

    run(workload, path) returns a Sample. path is a fresh empty directory,
    or, for a case with prepare, the directory that prepare(workload, path)
    filled once per size (shared by all cases with the same prepare).
    Durable cases are fsync-bound: they run in their own phase, once, on
    COMMIT_VALUE_BYTES records, rather than once per value size.
    """

    id: str
    label: str
    run: Callable[[Workload, Path], Sample]
    unit: str = "records"
    durable: bool = False
    prepare: Callable[[Workload, Path], None] | None = None

    @property
    def peer(self) -> str:
        return self.id.split(".")[0]


CASES: list[Case] = []


def case(id: str, label: str, **kw):
    """Register the decorated function as a Case."""

    def register(fn):
        CASES.append(Case(id, label, fn, **kw))
        return fn

    return register


class Stopwatch:
    """Times a with-block, with the cyclic garbage collector held off."""

    seconds = 0.0

    def __enter__(self):
        gc.collect()
        gc.disable()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        gc.enable()


def check_count(what: str, got: int, want: int) -> None:
    """Fail a read case that saw the wrong number of records."""
    if got != want:
        raise RuntimeError(f"{what} returned {got} records, expected {want}")


# aoflite ---------------------------------------------------------------


def aoflite_fill(w: Workload, path: Path) -> None:
    """Write w with the append loop: keys interleave on disk as in real use."""
    with closing(aoflite.open(path)) as db:
        for key, v in w.work:
            db.append(key, v)
        db.commit()


@case("aoflite.append", "append loop + commit")
def aoflite_append(w: Workload, path: Path) -> Sample:
    """One append() per record, then commit()."""
    with closing(aoflite.open(path)) as db:
        append = db.append
        with Stopwatch() as t:
            for key, v in w.work:
                append(key, v)
            db.commit()
    return Sample(w.n, w.nbytes, t.seconds)


@case("aoflite.append_many", f"append_many x{CHUNK} + commit")
def aoflite_append_many(w: Workload, path: Path) -> Sample:
    """Per key, append_many() in runs of CHUNK values, then commit()."""
    chunks = w.chunks
    with closing(aoflite.open(path)) as db:
        append_many = db.append_many
        with Stopwatch() as t:
            for key, values in chunks:
                append_many(key, values)
            db.commit()
    return Sample(w.n, w.nbytes, t.seconds)


@case("aoflite.scan", "scan(key), every key", prepare=aoflite_fill)
def aoflite_scan(w: Workload, path: Path) -> Sample:
    """Iterate scan(key) over every key, touching each value."""
    with closing(aoflite.open(path)) as db:
        n = nbytes = 0
        with Stopwatch() as t:
            for key in w.keys:
                for rec in db.scan(key):
                    n += 1
                    nbytes += len(rec.value)
    check_count("scan", n, w.n)
    return Sample(n, nbytes, t.seconds)


@case("aoflite.scan_all", "scan_all()", prepare=aoflite_fill)
def aoflite_scan_all(w: Workload, path: Path) -> Sample:
    """Iterate scan_all(), touching each value."""
    with closing(aoflite.open(path)) as db:
        n = nbytes = 0
        with Stopwatch() as t:
            for rec in db.scan_all():
                n += 1
                nbytes += len(rec.value)
    check_count("scan_all", n, w.n)
    return Sample(n, nbytes, t.seconds)


@case("aoflite.read", "point reads", unit="reads", prepare=aoflite_fill)
def aoflite_read(w: Workload, path: Path) -> Sample:
    """read(key, offset) for each random probe."""
    probes = w.probes
    with closing(aoflite.open(path)) as db:
        read = db.read
        nbytes = 0
        with Stopwatch() as t:
            for key, off in probes:
                nbytes += len(read(key, off).value)
    return Sample(len(probes), nbytes, t.seconds)


@case("aoflite.commit1", "full commits, 1 thread", unit="commits", durable=True)
def aoflite_commit1(w: Workload, path: Path) -> Sample:
    """durability="full": each append() returns once it is on stable storage."""
    key = w.keys[0]
    with closing(aoflite.open(path, durability="full")) as db:
        append = db.append
        with Stopwatch() as t:
            for v in w.values:
                append(key, v)
    return Sample(w.n, w.nbytes, t.seconds)


@case("aoflite.commit8", f"full commits, {COMMIT_THREADS} threads", unit="commits", durable=True)
def aoflite_commit_threads(w: Workload, path: Path) -> Sample:
    """The same appends split over threads, each on its own key (group commit)."""
    shares = [(f"t{i}", w.values[i::COMMIT_THREADS]) for i in range(COMMIT_THREADS)]
    errors: list[BaseException] = []
    with closing(aoflite.open(path, durability="full")) as db:
        go = threading.Barrier(COMMIT_THREADS + 1)

        def worker(key: str, values: list[bytes]) -> None:
            append = db.append
            go.wait()
            try:
                for v in values:
                    append(key, v)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=share) for share in shares]
        for th in threads:
            th.start()
        with Stopwatch() as t:
            go.wait()
            for th in threads:
                th.join()
    if errors:
        raise errors[0]
    return Sample(w.n, w.nbytes, t.seconds)


# sqlite ----------------------------------------------------------------

SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS log(key TEXT, off INTEGER, lsn INTEGER, ts INTEGER,"
    " value BLOB, PRIMARY KEY(key, off)) WITHOUT ROWID"
)
SQLITE_INSERT = "INSERT INTO log VALUES (?, ?, ?, ?, ?)"


def sqlite_open(path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    """A WAL-mode connection in autocommit mode (explicit BEGIN for batches)."""
    con = sqlite3.connect(path / "log.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={synchronous}")
    con.execute(SQLITE_SCHEMA)
    return con


def sqlite_fill(w: Workload, path: Path) -> None:
    """Write w in one transaction; closing checkpoints the WAL."""
    with closing(sqlite_open(path)) as con:
        con.execute("BEGIN")
        con.executemany(SQLITE_INSERT, w.rows)
        con.execute("COMMIT")


@case("sqlite.executemany", "WAL executemany, 1 txn (NORMAL)")
def sqlite_executemany(w: Workload, path: Path) -> Sample:
    """All rows by executemany() inside one transaction."""
    rows = w.rows
    with closing(sqlite_open(path)) as con:
        with Stopwatch() as t:
            con.execute("BEGIN")
            con.executemany(SQLITE_INSERT, rows)
            con.execute("COMMIT")
    return Sample(w.n, w.nbytes, t.seconds)


@case("sqlite.autocommit", "WAL insert per txn (NORMAL)")
def sqlite_autocommit(w: Workload, path: Path) -> Sample:
    """One autocommitted INSERT per record, on at most AUTOCOMMIT_RECORDS."""
    rows = w.rows[:AUTOCOMMIT_RECORDS]
    with closing(sqlite_open(path)) as con:
        execute = con.execute
        with Stopwatch() as t:
            for row in rows:
                execute(SQLITE_INSERT, row)
    return Sample(len(rows), len(rows) * w.size, t.seconds)


@case("sqlite.scan", "SELECT ... WHERE key=? ORDER BY off", prepare=sqlite_fill)
def sqlite_scan(w: Workload, path: Path) -> Sample:
    """Every key's rows in offset order, touching each value."""
    query = "SELECT off, lsn, ts, value FROM log WHERE key=? ORDER BY off"
    with closing(sqlite_open(path)) as con:
        n = nbytes = 0
        with Stopwatch() as t:
            for key in w.keys:
                for off, lsn, ts, value in con.execute(query, (key,)):
                    n += 1
                    nbytes += len(value)
    check_count("sqlite scan", n, w.n)
    return Sample(n, nbytes, t.seconds)


@case("sqlite.read", "point SELECT by (key, off)", unit="reads", prepare=sqlite_fill)
def sqlite_read(w: Workload, path: Path) -> Sample:
    """One SELECT by primary key for each random probe."""
    query = "SELECT lsn, ts, value FROM log WHERE key=? AND off=?"
    probes = w.probes
    with closing(sqlite_open(path)) as con:
        execute = con.execute
        nbytes = 0
        with Stopwatch() as t:
            for probe in probes:
                nbytes += len(execute(query, probe).fetchone()[2])
    return Sample(len(probes), nbytes, t.seconds)


@case("sqlite.commit", "WAL commits (FULL)", unit="commits", durable=True)
def sqlite_commit(w: Workload, path: Path) -> Sample:
    """One autocommitted INSERT per record at synchronous=FULL."""
    rows = w.rows
    with closing(sqlite_open(path, "FULL")) as con:
        execute = con.execute
        with Stopwatch() as t:
            for row in rows:
                execute(SQLITE_INSERT, row)
    return Sample(w.n, w.nbytes, t.seconds)


# LMDB, plain file, fdatasync floor ---------------------------------------


@case("lmdb.put", "puts, 1 write txn")
def lmdb_put(w: Workload, path: Path) -> Sample:
    """Every put in one write transaction; its commit syncs."""
    items = w.lmdb_items
    with closing(lmdb.open(str(path), map_size=4 * w.nbytes + (1 << 30))) as env:
        with Stopwatch() as t:
            with env.begin(write=True) as txn:
                put = txn.put
                for k, v in items:
                    put(k, v)
    return Sample(w.n, w.nbytes, t.seconds)


@case("file.write", "buffered write + crc32, fsync at end")
def file_write(w: Workload, path: Path) -> Sample:
    """A Python loop writing a struct header (len, crc32) and each value."""
    header = struct.Struct("<II").pack
    crc32 = zlib.crc32
    with open(path / "log", "wb", buffering=1 << 20) as f:
        write = f.write
        with Stopwatch() as t:
            for v in w.values:
                write(header(len(v), crc32(v)))
                write(v)
            f.flush()
            os.fsync(f.fileno())
    return Sample(w.n, w.nbytes, t.seconds)


@case("fsync.commit", "os.write + fdatasync per record", unit="commits", durable=True)
def fsync_commit(w: Workload, path: Path) -> Sample:
    """The floor of one durable append: write then fdatasync, per record."""
    fd = os.open(path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        with Stopwatch() as t:
            for v in w.values:
                os.write(fd, v)
                os.fdatasync(fd)
    finally:
        os.close(fd)
    return Sample(w.n, w.nbytes, t.seconds)


# ---------------------------------------------------------------- live feed
#
# Probes measure what a rate cannot: each is a function of (scratch
# directory, arguments) returning Readings, registered with @probe. The
# follower of each runs in a spawned process, as a real one would.


@dataclass(frozen=True)
class Reading:
    """One measured number, with its target when it has one."""

    label: str
    value: float | None
    unit: str
    target: str | None = None  # "<= 2" or ">= 0.9"
    passed: bool | None = None

    def as_dict(self) -> dict:
        return {"label": self.label, "value": self.value, "unit": self.unit, "target": self.target,
                "pass": self.passed}


@dataclass(frozen=True)
class Probe:
    id: str
    run: Callable[[Path, argparse.Namespace], list[Reading]]


PROBES: list[Probe] = []


def probe(id: str):
    """Register the decorated function as a Probe."""

    def register(fn):
        PROBES.append(Probe(id, fn))
        return fn

    return register


def judged(label: str, value: float, unit: str, op: str, target: float) -> Reading:
    """A Reading checked against value <= target or value >= target."""
    ok = value <= target if op == "<=" else value >= target
    return Reading(label, value, unit, f"{op} {target:g}", ok)


def spawn(target: Callable, *args) -> tuple[multiprocessing.Process, multiprocessing.Queue]:
    """target(*args, queue) in a spawned process; returns it and the queue."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, out), daemon=True)
    proc.start()
    return proc, out


def _latency_follower(path: str, n: int, out) -> None:
    """Tails the store; reports when it has the warm-up record, then the
    monotonic time each of the next n records reached the loop."""
    got = []
    with aoflite.open(path, readonly=True) as f:
        for r in f.tail_all(timeout=60):
            if r.lsn == 1:
                out.put("ready")
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
                continue
            got.append(time.monotonic())
            if len(got) == n:
                break
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    out.put((got, (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / (t1 - t0)))


@probe("feed.latency")
def feed_latency(scratch: Path, args: argparse.Namespace) -> list[Reading]:
    """append() returning in the writer to tail_all yielding the record in
    another process, one record every 1/rate s."""
    rate, n = 1000, 1000 * args.feed_seconds
    path = str(scratch / "feed-latency")
    with closing(aoflite.open(path)) as db:
        db.append("k", b"warm-up")
        proc, out = spawn(_latency_follower, path, n)
        if out.get(timeout=60) != "ready":
            raise RuntimeError("the follower did not start")
        value, returned = b"x" * 100, []
        start = time.monotonic()
        for i in range(n):
            pause = start + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            db.append("k", value)
            returned.append(time.monotonic())
        got, cpu = out.get(timeout=60)
        proc.join(30)
    lat = sorted((g - r) * 1000 for g, r in zip(got, returned))
    check_count("feed.latency follower", len(lat), n)
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return [
        judged(f"tail_all latency p50 ({rate:,} records/s)", p50, "ms", "<=", 2),
        judged(f"tail_all latency p99 ({rate:,} records/s)", p99, "ms", "<=", 10),
        Reading(f"tail_all latency max ({rate:,} records/s)", lat[-1], "ms"),
        Reading(f"follower CPU ({rate:,} records/s)", 100 * cpu, "% core"),
    ]


def _idle_follower(path: str, seconds: float, out) -> None:
    """Waits in tail_all with nothing to read; reports its CPU share."""
    with aoflite.open(path, readonly=True) as f:
        last = f.scan_all()
        start_lsn = max((r.lsn for r in last), default=0) + 1
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        for _ in f.tail_all(start_lsn, timeout=seconds):
            pass
        r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    out.put((r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / (t1 - t0))


@probe("feed.idle")
def feed_idle(scratch: Path, args: argparse.Namespace) -> list[Reading]:
    """An idle follower's CPU (user + system) over feed_seconds, writer open."""
    path = str(scratch / "feed-idle")
    with closing(aoflite.open(path)) as db:
        db.append("k", b"0")
        db.commit()
        proc, out = spawn(_idle_follower, path, float(args.feed_seconds))
        share = out.get(timeout=60 + args.feed_seconds)
        proc.join(30)
    return [judged("idle follower CPU (tail_all waiting)", 100 * share, "% core", "<=", 1)]


def _counting_follower(path: str, out) -> None:
    """Tails until the record b"last"; reports how many it saw."""
    n = 0
    with aoflite.open(path, readonly=True) as f:
        for r in f.tail_all(timeout=60):
            n += 1
            if n == 1:
                out.put("ready")
            if r.value == b"last":
                break
    out.put(n)


@probe("feed.writer")
def feed_writer(scratch: Path, args: argparse.Namespace) -> list[Reading]:
    """The append loop (100 B records) alone and with a follower in
    another process tailing every record; repeats alternate the order.
    Besides the rate, records per second of the appending thread's own
    CPU time: on a busy machine the follower's work takes CPU from the
    writer, which the wall-clock rate shows and this does not."""
    n, value = args.feed_appends, b"v" * 100
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpu_rates: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(args.repeats):
        for follow in (False, True) if rep % 2 == 0 else (True, False):
            path = str(scratch / f"feed-writer-{rep}-{int(follow)}")
            with closing(aoflite.open(path)) as db:
                db.append("k", b"start")
                db.commit()
                if follow:
                    proc, out = spawn(_counting_follower, path)
                    if out.get(timeout=60) != "ready":
                        raise RuntimeError("the follower did not start")
                append = db.append
                os.sync()
                cpu0 = time.thread_time()
                with Stopwatch() as t:
                    for _ in range(n):
                        append("k", value)
                    db.commit()
                cpu = time.thread_time() - cpu0
                db.append("k", b"last")
                if follow:
                    check_count("feed.writer follower", out.get(timeout=120), n + 2)
                    proc.join(30)
            shutil.rmtree(path, ignore_errors=True)
            rates[follow].append(n / t.seconds)
            cpu_rates[follow].append(n / cpu)
            progress(f"[feed {rep + 1}/{args.repeats}] append loop {'with' if follow else 'without'} a follower "
                     f"{fmt_rate(n / t.seconds)} records/s")
    alone, followed = statistics.median(rates[False]), statistics.median(rates[True])
    cpu_alone, cpu_followed = statistics.median(cpu_rates[False]), statistics.median(cpu_rates[True])
    return [
        Reading("append loop, no follower", alone, "rec/s"),
        Reading("append loop, a follower tailing", followed, "rec/s"),
        judged("append loop with / without a follower", followed / alone, "ratio", ">=", 0.9),
        Reading("the same per second of appender CPU", cpu_followed / cpu_alone, "ratio"),
    ]


def run_probes(args: argparse.Namespace, runner: Runner) -> list[dict]:
    """Every registered probe, each in a fresh directory."""
    out = []
    for p in PROBES:
        path = runner.fresh_dir(p.id)
        progress(f"[feed] {p.id}")
        t0 = time.perf_counter()
        try:
            readings = [r.as_dict() for r in p.run(path, args)]
            out.append({"probe": p.id, "readings": readings, "error": None})
        except Exception as e:
            out.append({"probe": p.id, "readings": [], "error": f"{type(e).__name__}: {e}"})
            progress(f"[feed] {p.id} FAILED {out[-1]['error']}")
        finally:
            shutil.rmtree(path, ignore_errors=True)
            runner.wall["feed"] = runner.wall.get("feed", 0.0) + time.perf_counter() - t0
    return out


# footprint -------------------------------------------------------------

FOOTPRINT_RECORDS = 1000


def footprint_case(peer: str) -> Callable[[Workload, Path], Sample]:
    """A case for peer (aoflite or sqlite): the disk a new store of the
    group's first FOOTPRINT_RECORDS records takes once closed, in allocated
    blocks as du counts them (preallocation included). The Sample's ops are
    those bytes over one second, so the rate column shows them (unit "B du")."""

    def run(w: Workload, path: Path) -> Sample:
        work = Workload(w.size, w.keys, w.values[:FOOTPRINT_RECORDS])
        (aoflite_fill if peer == "aoflite" else sqlite_fill)(work, path)
        du = sum(os.lstat(os.path.join(top, n)).st_blocks * 512 for top, _, names in os.walk(path) for n in names)
        return Sample(du, 0, 1.0)

    return run


CASES += [Case(f"{p}.footprint", f"disk of {FOOTPRINT_RECORDS:,} records (du)", footprint_case(p), "B du") for p in ("aoflite", "sqlite")]


# ---------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """A rate ratio aoflite must reach: rate(num) / rate(den) >= target."""

    label: str
    num: str
    den: str
    target: float


TARGETS = [
    Target("append loop / sqlite executemany", "aoflite.append", "sqlite.executemany", 2),
    Target("append_many / sqlite executemany", "aoflite.append_many", "sqlite.executemany", 8),
    Target("scan / sqlite scan", "aoflite.scan", "sqlite.scan", 1),
    Target("point reads / sqlite point select", "aoflite.read", "sqlite.read", 2),
    Target("full commits 1 thread / write+fdatasync", "aoflite.commit1", "fsync.commit", 0.9),
    Target(f"full commits {COMMIT_THREADS} threads / write+fdatasync", "aoflite.commit8", "fsync.commit", 3),
]


# ---------------------------------------------------------------- running


@dataclass
class Result:
    """All repeats of one case on one group (a value size, or "commits")."""

    case: Case
    group: str
    samples: list[Sample] = field(default_factory=list)
    error: str | None = None

    @property
    def rate(self) -> float | None:
        """Median ops per second."""
        if self.error or not self.samples:
            return None
        return statistics.median(s.ops / s.seconds for s in self.samples)

    @property
    def mb_per_s(self) -> float | None:
        """Median value megabytes (10^6 B) per second."""
        if self.error or not self.samples:
            return None
        return statistics.median(s.nbytes / s.seconds / 1e6 for s in self.samples)

    @property
    def spread(self) -> float | None:
        """(max - min) / median of the rates: how noisy the repeats were."""
        if self.error or len(self.samples) < 2:
            return None
        rates = [s.ops / s.seconds for s in self.samples]
        return (max(rates) - min(rates)) / statistics.median(rates)

    def as_dict(self) -> dict:
        return {
            "case": self.case.id,
            "label": self.case.label,
            "peer": self.case.peer,
            "group": self.group,
            "unit": self.case.unit,
            "ops": self.samples[0].ops if self.samples else None,
            "seconds": [round(s.seconds, 6) for s in self.samples],
            "rate": self.rate,
            "mb_per_s": self.mb_per_s,
            "spread": self.spread,
            "error": self.error,
        }


class Runner:
    """Runs cases in fresh scratch directories and collects Results."""

    def __init__(self, scratch: Path, repeats: int):
        self.scratch = scratch
        self.repeats = repeats
        self.results: list[Result] = []
        self.wall: dict[str, float] = {}  # seconds per peer, setup included
        self._n = 0

    def fresh_dir(self, name: str) -> Path:
        self._n += 1
        path = self.scratch / f"{self._n:04d}-{name}"
        path.mkdir()
        return path

    def run_group(self, group: str, cases: list[Case], w: Workload) -> None:
        """Each case --repeats times on w, repeats interleaved across cases."""
        results = {c.id: Result(c, group) for c in cases}
        self.results.extend(results.values())
        stores: dict[Callable, Path] = {}
        try:
            for rep in range(1, self.repeats + 1):
                for c in cases:
                    r = results[c.id]
                    if r.error is None:
                        self._run_once(r, w, stores, rep)
        finally:
            for path in stores.values():
                shutil.rmtree(path, ignore_errors=True)

    def _run_once(self, r: Result, w: Workload, stores: dict, rep: int) -> None:
        c = r.case
        t0 = time.perf_counter()
        path = None
        try:
            if c.prepare is None:
                path = self.fresh_dir(c.id)
            elif c.prepare in stores:
                path = stores[c.prepare]
            else:
                path = stores[c.prepare] = self.fresh_dir(c.peer + ".store")
                progress(f"[{r.group}] preparing {c.peer} store ({w.n:,} records)")
                c.prepare(w, path)
            os.sync()  # no earlier case's writeback lands inside this one
            sample = c.run(w, path)
            r.samples.append(sample)
            progress(
                f"[{r.group} {rep}/{self.repeats}] {c.id:<20} "
                f"{sample.seconds:8.3f} s {fmt_rate(sample.ops / sample.seconds):>12} {c.unit}/s"
            )
        except Exception as e:
            r.error = f"{type(e).__name__}: {e}"
            progress(f"[{r.group} {rep}/{self.repeats}] {c.id:<20} FAILED {r.error}")
        finally:
            if c.prepare is None and path is not None:
                shutil.rmtree(path, ignore_errors=True)
            self.wall[c.peer] = self.wall.get(c.peer, 0.0) + time.perf_counter() - t0


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def size_group(size: int) -> str:
    return f"{size} B"


COMMITS_GROUP = f"commits {COMMIT_VALUE_BYTES} B"


def evaluate_targets(results: list[Result]) -> list[dict]:
    """Each target's ratio in every group where both of its cases ran."""
    by = {(r.case.id, r.group): r for r in results}
    groups = list(dict.fromkeys(r.group for r in results))
    out = []
    for g in groups:
        for tgt in TARGETS:
            num, den = by.get((tgt.num, g)), by.get((tgt.den, g))
            if num is None and den is None:
                continue
            ratio = num.rate / den.rate if num and den and num.rate and den.rate else None
            out.append(
                {
                    "group": g,
                    "label": tgt.label,
                    "num": tgt.num,
                    "den": tgt.den,
                    "target": tgt.target,
                    "ratio": ratio,
                    "pass": None if ratio is None else ratio >= tgt.target,
                }
            )
    return out


# ---------------------------------------------------------------- environment


def filesystem_of(path: Path) -> str:
    """'type device on mountpoint' of the mount holding path, from /proc/mounts."""
    real = os.path.realpath(path)
    best = None
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype, *_ = line.split()
                mnt = mnt.replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and (best is None or len(mnt) >= len(best[1])):
                    best = (dev, mnt, fstype)
    except OSError:
        return "unknown"
    return f"{best[2]} ({best[0]} on {best[1]})" if best else "unknown"


def environment(scratch: Path, started: datetime.datetime) -> dict:
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    return {
        "date": started.isoformat(timespec="seconds"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "lmdb": f"py-lmdb {lmdb.__version__} (LMDB {'.'.join(map(str, lmdb.version()))})" if lmdb else None,
        "aoflite": aoflite_version(),
        "cpus": cpus,
        "cpus_usable": usable,
        "dir": str(scratch),
        "filesystem": filesystem_of(scratch),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------- output


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def fmt_num(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render_table(report: dict) -> str:
    """The human-readable report."""
    env, params = report["environment"], report["params"]
    lines = [
        f"aoflite benchmark  {env['date']}",
        f"python {env['python']} | sqlite {env['sqlite']} | {env['lmdb'] or 'lmdb: not installed'}",
        f"aoflite {env['aoflite'] or 'not benchmarked: ' + str(report['aoflite_missing'])}",
        f"cpus {env['cpus']} ({env['cpus_usable']} usable) | scratch {env['dir']} on {env['filesystem']}",
        f"keys {params['keys']} | repeats {params['repeats']} (median shown) | "
        f"point reads {params['probes']:,} | commits {params['commits']:,} x {COMMIT_VALUE_BYTES} B",
        "",
    ]
    lines += [f"note: {n}" for n in report["notes"]]
    head = f"{'case':<46} {'ops':>10} {'rate/s':>12} {'unit':<8} {'MB/s':>8} {'spread':>7}"
    for group in report["groups"]:
        lines += ["", f"== {group['name']}: {group['title']} ==", head, "-" * len(head)]
        for r in (r for r in report["results"] if r["group"] == group["name"]):
            name = f"{r['peer']:<8} {r['label']}"
            if r["error"]:
                lines.append(f"{name:<46} error: {r['error']}")
                continue
            lines.append(
                f"{name:<46} {r['ops']:>10,} {fmt_rate(r['rate']):>12} {r['unit']:<8} "
                f"{fmt_num(r['mb_per_s'], '8.1f')} {fmt_pct(r['spread']):>7}"
            )
    if report["probes"]:
        lines += ["", "== live feed: a writer here, its follower in another process ==",
                  f"{'probe':<50} {'value':>10} {'unit':<8} target"]
        lines.append("-" * len(lines[-1]))
        for p in report["probes"]:
            if p["error"]:
                lines.append(f"{p['probe']:<50} error: {p['error']}")
            for r in p["readings"]:
                verdict = {True: "PASS", False: "MISS", None: ""}[r["pass"]]
                target = f"{r['target']} {verdict}" if r["target"] else ""
                value = "-" if r["value"] is None else fmt_rate(r["value"]) if r["value"] >= 1000 else f"{r['value']:.3g}"
                lines.append(f"{r['label']:<50} {value:>10} {r['unit']:<8} {target}".rstrip())
    if report["targets"]:
        lines += ["", "== aoflite targets (ratio of median rates) =="]
    for t in report["targets"]:
        verdict = {True: "PASS", False: "MISS", None: "n/a"}[t["pass"]]
        lines.append(
            f"{t['group']:<14} {t['label']:<42} {fmt_num(t['ratio'], '7.2f'):>7}  >= {t['target']:<4g} {verdict}"
        )
    if report.get("tiers"):
        import bench_tiers

        lines += bench_tiers.render(report["tiers"])
    wall = ", ".join(f"{p} {s:.0f} s" for p, s in report["wall_seconds"]["peers"].items())
    lines += ["", f"wall time {report['wall_seconds']['total']:.0f} s; per peer, setup included: {wall}"]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, help="records per case (default 1000000; --quick 20000)")
    p.add_argument("--keys", type=int, default=8, help="keys the records spread over, round-robin")
    p.add_argument("--sizes", default="100,4096", help="value sizes in bytes, comma-separated")
    p.add_argument("--repeats", type=int, default=3, help="runs per case; the median is reported")
    p.add_argument("--dir", type=Path, help="where scratch stores go (default: under the cwd)")
    p.add_argument("--quick", action="store_true", help="a small smoke run")
    p.add_argument("--only", help=f"comma-separated peers: {','.join(PEERS)}")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--feed-seconds", type=int, help="seconds each live feed probe measures (default 5; --quick 1)")
    p.add_argument("--feed-appends", type=int, help="appends per live feed writer run (default 300000; --quick 20000)")
    args = p.parse_args(argv)
    args.feed_seconds = args.feed_seconds or (1 if args.quick else 5)
    args.feed_appends = args.feed_appends or (20_000 if args.quick else 300_000)
    args.records = args.records or (20_000 if args.quick else 1_000_000)
    args.probes = 10_000 if args.quick else 100_000
    args.commits = 300 if args.quick else 2_000
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error("--sizes takes integers, e.g. 100,4096")
    args.only = [s.strip() for s in args.only.split(",")] if args.only else list(PEERS)
    unknown = set(args.only) - set(PEERS)
    if unknown:
        p.error(f"unknown peer(s) {', '.join(sorted(unknown))}; choose from {', '.join(PEERS)}")
    if min([args.records, args.keys, args.repeats, *args.sizes, args.feed_seconds, args.feed_appends]) < 1:
        p.error("--records, --keys, --repeats, --sizes and the --feed- counts must be positive")
    return args


def select_cases(only: list[str], notes: list[str]) -> list[Case]:
    """The registered cases of the chosen peers that can run here."""
    missing = {
        "aoflite": AOFLITE_MISSING,
        "feed": AOFLITE_MISSING,
        "tiers": AOFLITE_MISSING,
        "lmdb": None if lmdb else "`pip install lmdb`",
    }
    chosen = []
    for peer in only:
        if missing.get(peer):
            notes.append(f"{peer} skipped: {missing[peer]}")
        else:
            chosen += [c for c in CASES if c.peer == peer]
    return chosen


def records_for(size: int, records: int) -> int:
    """Records per case at this value size: --records, capped at MAX_CASE_BYTES of values."""
    return min(records, max(1, MAX_CASE_BYTES // size))


def run_all(args: argparse.Namespace, cases: list[Case], runner: Runner, notes: list[str]) -> list[dict]:
    """Throughput cases size by size, then the durable ones; returns the groups run."""
    keys = [f"k{i}" for i in range(args.keys)]
    groups = []
    bulk = [c for c in cases if not c.durable]
    for size in args.sizes if bulk else []:
        n = records_for(size, args.records)
        title = f"{n:,} records of {size} B values"
        if n < args.records:
            title += f" (capped from {args.records:,} so that each case writes <= {MAX_CASE_BYTES // MiB} MiB)"
        if any(c.id == "sqlite.autocommit" for c in bulk) and n > AUTOCOMMIT_RECORDS:
            notes.append(f"{size} B: sqlite insert-per-txn runs on the first {AUTOCOMMIT_RECORDS:,} records")
        groups.append({"name": size_group(size), "title": title})
        progress(f"generating {n:,} x {size} B values")
        runner.run_group(size_group(size), bulk, Workload.random(n, size, keys, n_probes=args.probes))

    durable = [c for c in cases if c.durable]
    if durable:
        title = f"{args.commits:,} durable commits of one {COMMIT_VALUE_BYTES} B record each, fsync-bound"
        groups.append({"name": COMMITS_GROUP, "title": title})
        w = Workload.random(args.commits, COMMIT_VALUE_BYTES, keys, seed=SEED + 1)
        runner.run_group(COMMITS_GROUP, durable, w)
    return groups


def main(argv: list[str] | None = None) -> int:
    faulthandler.enable()  # a crash in native code still says where it was
    args = parse_args(argv)
    notes: list[str] = []
    cases = select_cases(args.only, notes)

    base = args.dir or Path.cwd()
    base.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="aoflite-bench-", dir=base))
    runner = Runner(scratch, args.repeats)
    started, t_start = datetime.datetime.now().astimezone(), time.perf_counter()
    probes: list[dict] = []
    tiers: list[dict] = []
    try:
        groups = run_all(args, cases, runner, notes)
        if "feed" in args.only and not AOFLITE_MISSING:
            probes = run_probes(args, runner)
        if "tiers" in args.only and not AOFLITE_MISSING:
            import bench_tiers

            t_tiers = time.perf_counter()
            tiers = bench_tiers.run(scratch, args.quick, args.repeats, progress)
            runner.wall["tiers"] = time.perf_counter() - t_tiers
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    notes.append("sqlite rows, LMDB keys and append_many chunks are built before timing")
    notes.append("read cases run on a store written once per size (aoflite: append loop, sqlite: executemany), page cache warm")
    report = {
        "environment": environment(base.resolve(), started),
        "params": {
            "records": args.records,
            "keys": args.keys,
            "sizes": args.sizes,
            "repeats": args.repeats,
            "probes": args.probes,
            "commits": args.commits,
            "quick": args.quick,
            "peers": args.only,
        },
        "aoflite_missing": AOFLITE_MISSING,
        "notes": notes,
        "groups": groups,
        "results": [r.as_dict() for r in runner.results],
        "targets": evaluate_targets(runner.results),
        "probes": probes,
        "tiers": tiers,
        "wall_seconds": {
            "total": round(time.perf_counter() - t_start, 1),
            "peers": {p: round(s, 1) for p, s in runner.wall.items()},
        },
    }
    print(json.dumps(report, indent=2) if args.json else render_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
