"""A seeded workload run in a child process that a test crashes, and the
parent's bookkeeping of what the child was acknowledged.

Child side (``python -m fuzz.workload --ack-fd N SPEC_JSON``, or ``run``):
open the store of a ``Spec`` and run a random mix of append, append_many,
committed and rolled-back transactions, commit, seal and close+reopen,
writing one line per event to the ack fd with a single write(2), so a line
written is a line the parent reads even if the child is SIGKILLed next:

    O key:count [key:count ...]       the store is open and holds these counts
    W key:first:n [key:first:n ...]   about to write one atomic batch
    D                                 every batch announced so far is durable
    S                                 a seal() starts (lets a parent aim a kill)

A value is a pure function of (seed, key, offset): see ``value``. Rolled
back transactions write different bytes (``ROLLED_BACK`` + value) and are
never announced, so a resurrected one fails the byte comparison.

Parent side:

    ledger = Ledger(seed, max_value)
    child = spawn(spec, ack_path, env)   # a Child; kill() or wait()
    ledger.take(child.lines())
    ledger.check(path, **open_kwargs)    # check_recovered, stats, then settle

A Ledger follows one store across any number of child runs: after each
check it remembers exactly what the store holds (including the record
check_recovered appends), so the next run's expectations build on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import aoflite
from testhelpers import InvariantError, check_recovered

from . import stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROLLED_BACK = b"ROLLED BACK "

#: operation -> weight of the default mix
MIX = {"append": 50, "append_many": 15, "transaction": 10, "rollback": 4, "commit": 10, "seal": 3, "reopen": 2}


@dataclass(frozen=True)
class Spec:
    """What one child run does."""

    path: str
    seed: int = 0  # values: the same for every run on one store
    run: int = 0  # schedule: which operations, differs per run
    durability: str = "full"
    segment_bytes: int = 1 << 20
    flush_interval_ms: int = 50
    keys: int = 4
    max_value: int = 2048
    ops: int = 0  # 0: until killed; else this many, then close and exit 0
    mix: dict[str, int] = field(default_factory=lambda: dict(MIX))
    # tiering: sealed segments go to a file:// Tier 2 beside the store and
    # leave local disk at once, so reads of old records hydrate them back
    tiered: bool = False
    # retention: keep this many sealed segments (older records are retired)
    retain_segments: int | None = None

    def child_kwargs(self) -> dict:
        """The settings a child opens the store with: the parent's, and
        retention (which the parent leaves off, so that nothing retires
        records while it checks them)."""
        kwargs = self.open_kwargs()
        if self.retain_segments is not None:
            kwargs["retention_max_segments"] = self.retain_segments
        return kwargs

    def open_kwargs(self) -> dict:
        """The settings a parent reopens the store with."""
        kwargs: dict = {
            "durability": self.durability,
            "segment_bytes": self.segment_bytes,
            "flush_interval_ms": self.flush_interval_ms,
        }
        if self.tiered:
            tier2 = self.path + ".tier2"
            os.makedirs(tier2, exist_ok=True)
            kwargs.update(tier2_url=f"file://{tier2}", tier0_max_bytes=0, tier1_max_bytes=0)
        return kwargs


def value(seed: int, key: str, offset: int, max_value: int) -> bytes:
    """The bytes every run appends at (key, offset) of a store with seed."""
    h = hashlib.blake2b(f"{seed}/{key}/{offset}".encode(), digest_size=16).digest()
    # mostly small values, a few up to max_value; zero length included
    size = int.from_bytes(h[:4], "little") % ((max_value >> (h[4] % 4)) + 1)
    return hashlib.shake_128(h).digest(size)


def key_names(n: int) -> list[str]:
    """The keys a workload uses (one non-ASCII, to cover UTF-8 names)."""
    return [f"k{i}" if i % 3 != 2 else f"clé{i}" for i in range(n)]


# ----------------------------------------------------------------- child


class _Rollback(Exception):
    """Raised inside a transaction to roll it back."""


class _Acks:
    def __init__(self, fd: int):
        self.fd = fd

    def line(self, text: str) -> None:
        os.write(self.fd, (text + "\n").encode())

    def batch(self, parts: Iterable[tuple[str, int, int]]) -> None:
        self.line("W " + " ".join(f"{k}:{first}:{n}" for k, first, n in parts))


class _Child:
    """The workload loop; checks what the store returns as it goes."""

    def __init__(self, spec: Spec, ack_fd: int):
        self.spec = spec
        self.rng = random.Random(f"{spec.seed}/{spec.run}")
        self.acks = _Acks(ack_fd)
        self.keys = key_names(spec.keys)
        self.full = spec.durability == "full"
        self.db = self._open()
        self.counts = {k: self.db.count(k) for k in self.keys}

    def _open(self):
        db = aoflite.open(self.spec.path, **self.spec.child_kwargs())
        self.acks.line("O " + " ".join(f"{k}:{db.count(k)}" for k in self.keys))
        return db

    def _value(self, key: str, offset: int) -> bytes:
        return value(self.spec.seed, key, offset, self.spec.max_value)

    def _durable(self) -> None:
        self.acks.line("D")

    def run(self) -> None:
        names = list(self.spec.mix)
        weights = [self.spec.mix[n] for n in names]
        done = 0
        while not self.spec.ops or done < self.spec.ops:
            getattr(self, "op_" + self.rng.choices(names, weights)[0])()
            done += 1
        self.db.close()
        self._durable()

    def op_append(self) -> None:
        key = self.rng.choice(self.keys)
        off = self.counts[key]
        self.acks.batch([(key, off, 1)])
        got = self.db.append(key, self._value(key, off))
        assert got == off, f"append to {key!r} returned offset {got}, expected {off}"
        self.counts[key] += 1
        if self.full:
            self._durable()

    def op_append_many(self) -> None:
        key = self.rng.choice(self.keys)
        first, n = self.counts[key], self.rng.randint(2, 12)
        self.acks.batch([(key, first, n)])
        got = self.db.append_many(key, [self._value(key, first + i) for i in range(n)])
        assert got == range(first, first + n), f"append_many to {key!r} returned {got}, expected from {first}"
        self.counts[key] += n
        if self.full:
            self._durable()

    def _transaction(self, rollback: bool) -> None:
        steps = [(self.rng.choice(self.keys), self.rng.choice((1, 1, 2, 5))) for _ in range(self.rng.randint(1, 4))]
        before = dict(self.counts)
        if not rollback:
            ends = dict(self.counts)
            for key, n in steps:
                ends[key] += n
            self.acks.batch([(k, before[k], ends[k] - before[k]) for k in self.keys if ends[k] > before[k]])
        # a rollback fires after a random step, sometimes before any append
        stop = self.rng.randint(0, len(steps)) if rollback else -1
        mark = ROLLED_BACK if rollback else b""
        try:
            with self.db.transaction():
                for i, (key, n) in enumerate(steps):
                    if i == stop:
                        raise _Rollback
                    first = self.counts[key]
                    vals = [mark + self._value(key, first + j) for j in range(n)]
                    got = self.db.append(key, vals[0]) if n == 1 else self.db.append_many(key, vals)
                    assert got == first or got == range(first, first + n), f"{key!r}: got {got}, expected {first}"
                    self.counts[key] += n
                if rollback:
                    raise _Rollback
        except _Rollback:
            self.counts = before
            for key in self.keys:
                assert self.db.count(key) == before[key], f"{key!r}: count after rollback"
            return
        if self.full:
            self._durable()

    def op_transaction(self) -> None:
        self._transaction(rollback=False)

    def op_rollback(self) -> None:
        self._transaction(rollback=True)

    def op_commit(self) -> None:
        self.db.commit()
        self._durable()

    def op_seal(self) -> None:
        self.acks.line("S")
        self.db.seal()
        self._durable()

    def op_drain(self) -> None:
        """Wait for the tier pipeline to move every sealed segment."""
        self.db.drain_tiers(timeout=60)

    def op_read_old(self) -> None:
        """Read a key's first records: with tiering, their segment is only
        in Tier 2; the point read fetches single frames, the scan brings the
        whole segment back (hydration)."""
        key = self.rng.choice(self.keys)
        if self.counts[key]:
            got = self.db.read(key, 0).value
            assert got == self._value(key, 0), f"{key!r} offset 0 read back different bytes"
            first = next(self.db.scan(key, 0, 1)).value
            assert first == got, f"{key!r} offset 0 scanned back different bytes"

    def op_reopen(self) -> None:
        self.db.close()
        self._durable()
        self.db = self._open()
        for key in self.keys:
            assert self.db.count(key) == self.counts[key], f"{key!r}: count changed across close and reopen"


def run(spec: Spec, ack_fd: int) -> None:
    """Run the workload of spec in this process, acknowledging to ack_fd."""
    _Child(spec, ack_fd).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ack-fd", type=int, required=True, help="fd the ack lines are written to")
    parser.add_argument("spec", help="the Spec as JSON")
    args = parser.parse_args(argv)
    run(Spec(**json.loads(args.spec)), args.ack_fd)


# ---------------------------------------------------------------- parent


class Child:
    """A workload child process and its ack file."""

    def __init__(self, spec: Spec, ack_path: str, env: Mapping[str, str] | None = None):
        self.spec = spec
        self.ack_path = ack_path
        fd = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("AOFLITE_FAILPOINT")}
        child_env.update(env or {})
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, child_env.get("PYTHONPATH")]))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fuzz.workload", "--ack-fd", str(fd), json.dumps(asdict(spec))],
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=ROOT,
                env=child_env,
            )
        finally:
            os.close(fd)
        self.stderr = ""

    def lines(self) -> list[str]:
        """The complete ack lines written so far."""
        with open(self.ack_path, "rb") as f:
            data = f.read().decode()
        return data.split("\n")[:-1]

    def wait_for(self, tag: str, timeout: float) -> bool:
        """Poll until a line tagged tag appears; False if the child ends or
        the timeout passes first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line.partition(" ")[0] == tag for line in self.lines()):
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.0005)
        return False

    def wait(self, timeout: float = 60) -> int:
        """Wait for the child to end; its return code (-9: SIGKILLed). A
        child still running at the timeout is killed and TimeoutExpired raised."""
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise
        self.stderr = err.decode(errors="replace")
        return self.proc.returncode

    def kill(self) -> int:
        """SIGKILL the child (if still running); its return code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.wait()


def spawn(spec: Spec, ack_path: str, env: Mapping[str, str] | None = None) -> Child:
    """Start a workload child; env adds variables (AOFLITE_FAILPOINT ...)."""
    return Child(spec, ack_path, env)


class Ledger:
    """What the parent knows a store holds and was acknowledged."""

    def __init__(self, seed: int, max_value: int):
        self.seed = seed
        self.max_value = max_value
        self.known: dict[str, list[bytes]] = {}  # exact contents at the last check
        self._reset()

    def _reset(self) -> None:
        self.batches: list[list[tuple[str, int, int]]] = []
        self.ends: dict[str, int] = {}  # key -> end of the offsets that may exist
        self.acked: dict[str, int] = {k: len(v) for k, v in self.known.items()}

    def take(self, lines: Iterable[str]) -> None:
        """Account the ack lines of one child run (call once per run, in
        order; a child that opens the store settles earlier runs' batches)."""
        unacked: list[list[tuple[str, int, int]]] = []
        for line in lines:
            tag, _, rest = line.partition(" ")
            parts = [p.rsplit(":", 2) for p in rest.split()]
            if tag == "O":
                self._opened({k: int(c) for k, c in parts})
                unacked = []
            elif tag == "W":
                batch = [(k, int(first), int(n)) for k, first, n in parts]
                for k, first, n in batch:
                    self.ends[k] = max(self.ends.get(k, 0), first + n)
                self.batches.append(batch)
                unacked.append(batch)
            elif tag == "D":
                for k, first, n in (part for batch in unacked for part in batch):
                    self.acked[k] = max(self.acked.get(k, 0), first + n)
                unacked = []
            elif tag != "S":
                raise ValueError(f"unknown ack line {line!r}")

    def _opened(self, counts: dict[str, int]) -> None:
        """A child opened the store (recovering it) and saw counts: settle
        the batches of earlier runs against them."""
        lost = sum(max(0, self.acked.get(k, 0) - c) for k, c in counts.items())
        if lost:
            stats.add("acknowledged records lost", lost)
            raise InvariantError(f"a child opened the store with {counts}, acknowledged were {self.acked}")
        for batch in self.batches:
            alive = [first + i < counts.get(k, 0) for k, first, n in batch for i in range(n)]
            if any(alive) and not all(alive):
                raise InvariantError(f"a child opened the store with batch {batch} partly visible: {counts}")
        for k, c in counts.items():
            if c > max(self.ends.get(k, 0), len(self.known.get(k, []))):
                raise InvariantError(f"a child opened the store with {c} records of {k!r}, more than appended")
            if c or k in self.ends:
                self.ends[k] = c
        # what survived is now a prefix; what did not can never reappear
        self.batches = []

    def appended(self) -> dict[str, list[bytes]]:
        """Every value each key may hold: what it held, then what was announced."""
        out = {}
        for key in self.known.keys() | self.ends.keys():
            have = self.known.get(key, [])
            end = max(self.ends.get(key, 0), len(have))
            out[key] = have + [value(self.seed, key, off, self.max_value) for off in range(len(have), end)]
        return out

    def check(self, path: str, **open_kwargs) -> dict[str, int]:
        """check_recovered against what was announced and acknowledged;
        then remember what the store now holds. Returns surviving counts."""
        appended = self.appended()
        groups = [[(k, first + i) for k, first, n in b for i in range(n)] for b in self.batches]
        # acknowledgements since the last check (earlier ones are re-checked too)
        stats.add("acknowledged records checked", sum(self.acked.values()) - sum(map(len, self.known.values())))
        try:
            survived = check_recovered(path, appended, self.acked, groups, **open_kwargs)
        except AssertionError:
            stats.add("acknowledged records lost", self._lost(path))
            raise
        with aoflite.open(path, readonly=True) as db:
            for key, n in survived.items():
                # read what this run added: verified against appended, plus
                # whatever check_recovered appended itself
                have = self.known.get(key, [])
                self.known[key] = have + [r.value for r in db.scan(key, len(have), n)]
        self._reset()
        return survived

    def _lost(self, path: str) -> int:
        """Acknowledged records missing from the store at path."""
        try:
            with aoflite.open(path, readonly=True) as db:
                return sum(max(0, n - db.count(k)) for k, n in self.acked.items())
        except Exception:
            # a store that no longer opens has lost all of them
            return sum(self.acked.values())


if __name__ == "__main__":
    main()
