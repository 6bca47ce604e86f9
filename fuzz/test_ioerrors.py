"""I/O errors at every system call, as SQLite's I/O-error tests do: each
workload runs once to count the calls of every kind it makes, then again
with the Nth call of one kind failing (EIO, ENOSPC or EFBIG), for every N
it reaches, once failing that call only and once failing every call of
that kind from the Nth on. After each run:

- every call either succeeded or raised an aoflite.Error;
- after a failure the handle either still works or refuses every call
  with a message saying to reopen, and while it is open no second writer
  can take the store (the lock is never released under a live writer);
- after a reopen every acknowledged record reads back byte-identical, in
  order, offsets dense; nothing rolled back comes back, and a record of a
  failed call is there whole with its batch or not at all.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

import aoflite
from aoflite import failpoints

from . import stats

MiB = 1 << 20
PROFILE = os.environ.get("AOFLITE_FUZZ_PROFILE", "ci")
ERRNOS = (errno.EIO, errno.ENOSPC, errno.EFBIG)
ROLLED_BACK = b"RB:"
REFUSAL = ("reopen", "open it again")


@dataclass
class Model:
    """What the workload was told: acknowledged batches in order, and the
    batches of calls that failed (their fate is unknown, but all or none)."""

    acked: dict[str, list[bytes]] = field(default_factory=dict)
    uncertain: list[list[tuple[str, bytes]]] = field(default_factory=list)
    failures: int = 0
    refused: bool = False
    seq: int = 0  # values are unique across every handle on the store


class Driver:
    """Runs one workload's operations against a handle, keeping the model
    and checking every failure for what it must look like."""

    def __init__(self, path: str, db: aoflite.Store, model: Model):
        self.path, self.db, self.model = path, db, model

    def value(self, key: str, size: int = 24) -> bytes:
        self.model.seq += 1
        head = f"{key}:{self.model.seq}:".encode()
        return head + b"." * max(0, size - len(head))

    def do(self, batch: list[tuple[str, bytes]], call: Callable[[], object]) -> bool:
        try:
            call()
        except aoflite.Error as e:
            self.failed(e)
            if batch:
                self.model.uncertain.append(batch)
            return False
        for key, value in batch:
            self.model.acked.setdefault(key, []).append(value)
        return True

    def failed(self, e: aoflite.Error) -> None:
        self.model.failures += 1
        text = str(e)
        if any(word in text for word in REFUSAL):
            self.model.refused = True
        if self.model.refused:
            # a refusing handle refuses everything, reads included, and
            # still holds the store
            for probe in (lambda: self.db.append("probe", b"p"), lambda: self.db.count("k0")):
                with pytest.raises(aoflite.Error, match="|".join(REFUSAL)):
                    probe()
            with pytest.raises(aoflite.LockedError):
                aoflite.open(self.path)

    # the operations
    def append(self, key: str, size: int = 24) -> None:
        v = self.value(key, size)
        self.do([(key, v)], lambda: self.db.append(key, v))

    def append_many(self, key: str, n: int, size: int) -> None:
        vals = [self.value(key, size) for _ in range(n)]
        self.do([(key, v) for v in vals], lambda: self.db.append_many(key, vals))

    def transaction(self, items: list[tuple[str, int]], commit: bool) -> None:
        batch = [(k, self.value(k, size)) for k, size in items]
        if not commit:
            batch = [(k, ROLLED_BACK + v) for k, v in batch]

        def run():
            inner: list[aoflite.Error] = []
            try:
                with self.db.transaction():
                    for k, v in batch:
                        try:
                            self.db.append(k, v)
                        except aoflite.Error as e:
                            # caught and ignored, as careless callers do:
                            # the transaction must fail all the same
                            inner.append(e)
                    if not commit:
                        raise _RollBack
            except _RollBack:
                pass
            assert not inner or not commit, f"a transaction ended normally after {inner[0]!r} inside it"

        self.do(batch if commit else [], run)

    def commit(self) -> None:
        self.do([], self.db.commit)

    def seal(self) -> None:
        self.do([], self.db.seal)


class _RollBack(Exception):
    pass


# ------------------------------------------------------------ workloads


def appends(d: Driver) -> None:
    for i in range(24):
        d.append(f"k{i % 3}")
        if i % 8 == 7:
            d.commit()


def batches(d: Driver) -> None:
    for i in range(6):
        d.append_many(f"k{i % 2}", 3, 40 << 10 if i % 2 else 60)  # 120 KiB ones go through pwrite
        d.append("k2")
    d.commit()


def transactions(d: Driver) -> None:
    for i in range(8):
        d.transaction([("k0", 30), ("k1", 90 << 10 if i % 3 == 0 else 30)], commit=i % 4 != 3)
        d.append("k2")
    d.commit()


def rolls(d: Driver) -> None:
    for i in range(10):
        d.append_many("k0", 2, 200 << 10)  # 1 MiB segments roll every few calls
        d.append("k1", 100)
        if i % 4 == 3:
            d.seal()
    d.commit()


WORKLOADS = {"appends": appends, "batches": batches, "transactions": transactions, "rolls": rolls}
MODES = ("full", "normal", "off")


def _prepare(path: str, mode: str) -> tuple[Model, Callable[[], aoflite.Store]]:
    """A store with committed history and an unsealed tail, so reopening
    it also runs recovery under the failing call."""
    model = Model()
    db = aoflite.open(path, durability=mode, segment_bytes=MiB)
    d = Driver(path, db, model)
    d.append("k0")
    d.append_many("k1", 2, 30)
    d.seal()
    d.append("k2")
    d.commit()
    db.close()
    return model, lambda: aoflite.open(path, durability=mode, segment_bytes=MiB, flush_interval_ms=5)


def run_once(path: str, workload: str, mode: str, arm: Callable[[], None]) -> Model:
    """Prepare a store, arm the failure, reopen and run the workload, then
    disarm, close and check what a reopen finds."""
    model, reopen = _prepare(path, mode)
    arm()
    try:
        try:
            db = reopen()
        except aoflite.Error as e:
            model.failures += 1
            assert not isinstance(e, aoflite.LockedError), e
            db = None
        if db is not None:
            d = Driver(path, db, model)
            WORKLOADS[workload](d)
    finally:
        failpoints.io_reset()
    if db is not None:
        try:
            db.close()
        except aoflite.StorageError as e:  # the final sync may be the failing call
            model.failures += 1
            assert not model.refused, f"close of a refused handle raised {e!r}"
    check_reopened(path, mode, model)
    return model


def check_reopened(path: str, mode: str, model: Model) -> None:
    with aoflite.open(path, durability=mode, segment_bytes=MiB) as db:
        found: dict[str, list[bytes]] = {}
        lsns = []
        for r in db.scan_all():
            found.setdefault(r.key, []).append(r.value)
            lsns.append(r.lsn)
            assert r.offset == len(found[r.key]) - 1, f"{r.key}: offset {r.offset} after {len(found[r.key]) - 1} records"
            assert not r.value.startswith(ROLLED_BACK), f"{r.key} offset {r.offset}: a rolled-back value came back"
        assert lsns == list(range(1, len(lsns) + 1)), "LSNs are not dense from 1"
        maybe = {v: i for i, batch in enumerate(model.uncertain) for _, v in batch}
        present = set()
        for key, values in found.items():
            acked = model.acked.get(key, [])
            assert [v for v in values if v not in maybe] == acked, f"{key}: acknowledged records lost or reordered"
            present.update(maybe[v] for v in values if v in maybe)
        for key, acked in model.acked.items():
            assert key in found or not acked, f"{key}: every acknowledged record lost"
        for i in present:
            for key, v in model.uncertain[i]:
                assert v in found.get(key, []), f"{key}: a failed call's batch came back in part"
        stats.add("acknowledged records checked", sum(map(len, model.acked.values())))
        db.verify()


def _counts(tmp_path, workload: str, mode: str) -> dict[str, int]:
    path = str(tmp_path / "count")
    seen: dict[str, int] = {}

    def arm():
        failpoints.io_error(None)

    model, reopen = _prepare(path, mode)
    arm()
    try:
        db = reopen()
        WORKLOADS[workload](Driver(path, db, model))
        seen = failpoints.io_counts()
    finally:
        failpoints.io_reset()
    db.close()
    shutil.rmtree(path)
    return seen


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_every_failing_call_keeps_acknowledged_records(tmp_path, workload, mode):
    counts = _counts(tmp_path, workload, mode)
    assert counts["seg.msync"] or counts["seg.fdatasync"], counts
    cap = None if PROFILE == "long" else 12  # N beyond the cap: spread over the range
    runs = 0
    for site, reached in sorted(counts.items()):
        if not reached:
            continue
        ns = range(1, reached + 1)
        if cap is not None and reached > cap:
            step = reached / cap
            ns = sorted({1, reached, *(int(1 + i * step) for i in range(cap))})
        for nth in ns:
            for times in (1, -1):
                err = ERRNOS[(nth + runs) % len(ERRNOS)]
                path = str(tmp_path / f"s{runs}")
                try:
                    run_once(path, workload, mode, lambda: failpoints.io_error(site, nth, err, times))
                except AssertionError as e:
                    raise AssertionError(
                        f"{workload}/{mode}: call {nth} of {site} failing with {errno.errorcode[err]}"
                        f"{' and every one after it' if times < 0 else ''}: {e}"
                    ) from e
                shutil.rmtree(path)
                runs += 1
                stats.add(f"I/O failures injected at {site}")
    stats.add("I/O-error runs", runs)


def test_store_creation_failing_at_every_call(tmp_path):
    """Creating a store fails cleanly at each of its calls (marker, syncs,
    manifest commits, the first segment), and the next open succeeds."""
    failpoints.io_error(None)
    aoflite.open(str(tmp_path / "count")).close()
    counts = failpoints.io_counts()
    failpoints.io_reset()
    runs = 0
    for site, reached in sorted(counts.items()):
        for nth in range(1, reached + 1):
            path = str(tmp_path / f"s{runs}")
            failpoints.io_error(site, nth, ERRNOS[runs % len(ERRNOS)])
            try:
                aoflite.open(path).close()
            except aoflite.Error as e:
                assert isinstance(e, aoflite.StorageError), f"{site} call {nth}: {e!r}"
            finally:
                failpoints.io_reset()
            stats.add(f"I/O failures injected at {site}")
            with aoflite.open(path) as db:
                db.append("k", b"v")
            assert [r.value for r in aoflite.open(path, readonly=True).scan("k")] == [b"v"]
            shutil.rmtree(path)
            runs += 1
    assert runs >= 8, counts
    stats.add("I/O-error runs", runs)


def test_follower_reads_failing_at_every_call(tmp_path):
    """A read-only handle whose reads fail raises StorageError and goes on
    working once they succeed again."""
    path = str(tmp_path / "s")
    db = aoflite.open(path, durability="off", segment_bytes=MiB)
    for i in range(20):
        db.append("k", b"%d" % i)
        if i == 9:
            db.seal()
    db.commit()
    failpoints.io_error(None)
    with aoflite.open(path, readonly=True) as f:
        assert len(list(f.scan_all())) == 20
    counts = failpoints.io_counts()
    failpoints.io_reset()
    assert counts["seg.pread"] and counts["seg.mmap"], counts
    for site in ("seg.pread", "seg.mmap"):
        for nth in range(1, counts[site] + 1):
            failpoints.io_error(site, nth, errno.EIO)
            stats.add(f"I/O failures injected at {site}")
            try:
                with aoflite.open(path, readonly=True) as f:
                    got = [r.value for r in f.scan_all()]
                    assert got == [b"%d" % i for i in range(20)]
            except aoflite.StorageError:
                pass
            finally:
                failpoints.io_reset()
            with aoflite.open(path, readonly=True) as f:
                assert [r.value for r in f.scan_all()] == [b"%d" % i for i in range(20)]
    db.close()
