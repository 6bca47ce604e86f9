"""Threaded stress on one store: nothing acknowledged is lost, no reader or
follower skips or invents a record, and nothing hangs.

A writer process (fuzz.stress.hammer) runs three appenders (append and
append_many, batches up to ~200 KiB), a thread whose transactions commit
or roll back, a sealer and a committer on one writable handle
(durability="full", 1 MiB segments, so segments roll several times a
second); readers on that handle and on a read-only handle in the same
process read all the time, and a follower process (fuzz.stress.follower)
consumes scan_all() and tail(). The test fails if:

- a read or scan on either handle returns bytes other than those written
  at that (key, offset), returns a rolled-back value (they start with
  ``fuzz.stress.MARK``), or misses an acknowledged record (NotFound, a
  short scan);
- a scan_all consumer (one per handle in the writer process, one in the
  follower) sees a gap or repeat in LSNs (committed LSNs are dense from 1:
  a rolled-back transaction's are reused) or in a key's offsets; the
  follower's tail() of one key likewise; or the follower ends having seen
  other than exactly what the reopened store holds;
- close(), called from another thread than open() while readers run, lets
  anything but an aoflite error reach them, or a call after it succeeds;
- after reopening, an acknowledged record is missing or differs, or the
  store breaks any invariant of ``testhelpers.check_recovered``;
- a thread or process does not finish in time: the test then fails with
  the stacks of every thread of both processes instead of hanging.

The writer side runs in a process of its own so that a thread stuck inside
the store can be killed with it: in this process it would keep pytest from
exiting. AOFLITE_FUZZ_PROFILE=long runs six rounds of 40 s, not one of 20 s.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import random
import shutil
import signal
import time
from collections.abc import Sequence

import pytest

import aoflite
from testhelpers import check_recovered

from . import stats
from .stress import ALL_KEYS, CATCH_UP, SEGMENT, TAIL_KEY, Feed, follower, hammer, value

PROFILE = os.environ.get("AOFLITE_FUZZ_PROFILE", "ci")
# long: several rounds on fresh stores rather than one long one, so that a
# store stays within a few hundred MB and close() races readers each round
ROUNDS, LOAD_SECONDS = {"ci": (1, 20), "long": (6, 40)}[PROFILE]
# Stuck threads show up sooner, as the writer process's own report (after
# the load and fuzz.stress.STOP_GRACE); the bound catches a process that
# stops answering: three times what a healthy run takes.
BOUND = 3 * (LOAD_SECONDS + 10)

pytestmark = [pytest.mark.slow] if PROFILE == "long" else []


class _Values(Sequence):
    """value(key, 0..n-1) without holding them."""

    def __init__(self, key: str, n: int):
        self.key, self.n = key, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return value(self.key, i)


class Child:
    """A spawned process (never forked: a handle must not cross fork)
    running target(results, stack_path, *args), and what it reported."""

    def __init__(self, ctx, name: str, tmp: str, target, *args):
        self.name = name
        self.results = ctx.Queue()
        self.stack_path = os.path.join(tmp, f"{name}-stacks.txt")
        self.messages: dict[str, object] = {}  # kind -> the last payload of that kind
        self.problems: list[str] = []
        self.proc = ctx.Process(target=target, args=(self.results, self.stack_path, *args), name=name, daemon=True)
        self.proc.start()

    def poll(self, timeout: float) -> None:
        """Take its messages, waiting up to timeout for the first."""
        while True:
            try:
                kind, payload = self.results.get(timeout=timeout)
            except queue.Empty:
                return
            timeout = 0
            if kind == "problem":
                self.problems.append(payload)
            else:
                self.messages[kind] = payload

    def wait(self, kinds: tuple[str, ...], timeout: float) -> str | None:
        """Poll until one of kinds or "error" arrives; None after timeout,
        or once the process has ended without sending one."""
        end = time.monotonic() + timeout
        while True:
            for kind in (*kinds, "error"):
                if kind in self.messages:
                    return kind
            if time.monotonic() >= end:
                return None
            alive = self.proc.is_alive()
            self.poll(0.1)
            if not alive and not any(k in self.messages for k in (*kinds, "error")):
                return None

    def stacks(self) -> str:
        """Every thread's stack (a crashed process's: as it crashed)."""
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGUSR1)
            time.sleep(0.5)
        with open(self.stack_path) as f:
            dump = f.read() or "(no stack dump arrived)"
        return dump if self.proc.is_alive() else f"(ended, exit code {self.proc.exitcode})\n{dump}"

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.results.cancel_join_thread()  # never block on a queue nobody reads
        self.results.close()


def _hung(what: str, *children: Child) -> None:
    """The watchdog: fail with every process's stacks, ending them."""
    parts = [f"watchdog: {what}"]
    for child in children:
        if "hang" in child.messages:
            parts.append(f"{child.name} process reports: {child.messages['hang']}")
        else:
            parts.append(f"stacks of the {child.name} process (pid {child.proc.pid}):\n{child.stacks()}")
    for child in children:
        child.stop()
    pytest.fail("\n".join(parts), pytrace=False)


def _settle(path: str) -> Feed:
    """scan_all of the closed store, checked from LSN 1."""
    feed = Feed("scan_all of the reopened store")
    with aoflite.open(path, readonly=True) as h:
        feed.pull(h)
    return feed


def _compare_follower(report: dict, final: Feed) -> list[str]:
    out = [f"[follower] {p}" for p in report["problems"]]
    last = final.next_lsn - 1
    if report["tail_stuck"]:
        out.append(f"[follower] tail({TAIL_KEY!r}, timeout=0.2) did not return within 5 s of being told to stop")
    if not report["caught_up"] or report["last_lsn"] != last:
        ended = report["last_lsn"]
        out.append(f"[follower] its scan_all consumer ended at LSN {ended}; the store holds LSNs 1..{last}")
    elif report["digest"] != final.digest.hexdigest():
        out.append("[follower] the (LSN, key, offset) sequence it consumed differs from the reopened store's")
    for key in sorted(set(report["counts"]) | set(final.next_off)):
        saw, has = report["counts"].get(key, 0), final.next_off.get(key, 0)
        if saw != has:
            out.append(f"[follower] saw {saw} records of {key!r} through scan_all; the store holds {has}")
    if report["tail_next"] != final.next_off.get(TAIL_KEY, 0):
        out.append(
            f"[follower] tail({TAIL_KEY!r}) reached offset {report['tail_next']}; "
            f"the store holds {final.next_off.get(TAIL_KEY, 0)} records"
        )
    return out


@pytest.mark.parametrize("round_no", range(ROUNDS))
def test_stress(tmp_path, round_no):
    seed = random.randrange(1 << 32)
    path = str(tmp_path / "store")
    aoflite.open(path, durability="full", segment_bytes=SEGMENT).close()  # so the follower can open it first
    ctx = multiprocessing.get_context("spawn")
    start = time.monotonic()

    def left(cap: float) -> float:
        return max(0.0, min(cap, start + BOUND - time.monotonic()))

    control, stop_early = ctx.Queue(), ctx.Event()
    # the follower outlives the bound, so that a watchdog still finds it to ask for its stacks
    fol = Child(ctx, "follower", str(tmp_path), follower, path, control, BOUND + 30)
    writer = None
    try:
        if fol.wait(("ready",), left(60)) != "ready":
            _hung("the follower process did not open the store within 60 s", fol)
        writer = Child(ctx, "writer", str(tmp_path), hammer, path, seed, LOAD_SECONDS, stop_early)
        kind = None
        while kind is None and left(1):
            kind = writer.wait(("done", "hang"), left(0.2))
            if kind is None and not writer.proc.is_alive():
                kind = writer.wait(("done", "hang"), 1)  # what it sent just before it ended
                break
            fol.poll(0)
            if fol.problems:
                stop_early.set()  # the writer stops early on its own failures; on the follower's, tell it
        if kind is None and not writer.proc.is_alive():
            pytest.fail(f"the writer process died without a report (seed {seed}):\n{writer.stacks()}", pytrace=False)
        if kind is None or kind == "hang":
            late = time.monotonic() - start
            why = "its threads hang" if kind else f"no report {late:.0f} s into the run"
            _hung(f"the writer process did not finish: {why} (seed {seed})", writer, fol)
        if kind == "error":
            pytest.fail(f"the writer process failed:\n{writer.messages['error']}", pytrace=False)
        report = writer.messages["done"]

        final = _settle(path)
        control.put((final.next_lsn - 1, final.next_off.get(TAIL_KEY, 0)))
        kind = fol.wait(("done",), left(CATCH_UP + 10))
        if kind is None:
            _hung("the follower process did not report after catching up with the closed store", fol)
        if kind == "error":
            pytest.fail(f"the follower process failed:\n{fol.messages['error']}", pytrace=False)
        seen = fol.messages["done"]

        failures = list(report["failures"]) + [f"[follower] {p}" for p in fol.problems]
        failures += final.problems + _compare_follower(seen, final)
        acked = {k: n for k, n in report["acked"].items() if n}
        stats.add("acknowledged records checked", sum(acked.values()))
        lost = sum(max(0, n - final.next_off.get(k, 0)) for k, n in acked.items())
        if lost:
            stats.add("acknowledged records lost", lost)
        appended = {k: _Values(k, report["ends"].get(k, 0)) for k in ALL_KEYS}
        try:
            check_recovered(path, appended, acked, durability="full", segment_bytes=SEGMENT)
        except AssertionError as e:
            failures.append(f"[reopened store] {e}")
        for name, n in sorted(report["counts"].items()):
            stats.add(name, n)
        stats.add("stress records followed by another process", seen["records"])

        if failures:
            pytest.fail(
                f"{len(failures)} stress check(s) failed (seed {seed}; store kept at {path}):\n"
                + "\n".join(failures)
                + f"\nacknowledged counts: {acked}",
                pytrace=False,
            )
        shutil.rmtree(path)
    finally:
        for child in (writer, fol):
            if child is not None:
                child.stop()
        control.cancel_join_thread()
        control.close()
