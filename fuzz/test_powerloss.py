"""Power loss at any moment of a random workload (fuzz/powerloss.py).

A hypothesis state machine drives one store in-process through appends of
0 bytes up to the record limit, atomic batches, committed and aborted
transactions, commits, seals, rolls, and close/reopen in each durability
mode. Its power_cut rule builds a crash image of the store as it is right
now from the sync log and checks it with check_recovered, then carries on
with the original store or with the recovered image; power_cut_in_transaction
cuts while a transaction is open, its records perhaps already on disk. The
active segment is snapshotted after every step, before every cut and inside
every transaction, so a cut may revert a page to any version it had since
the last sync that covered it.

Acknowledged = durable by contract: in "full" every returned append, batch
and transaction; in every mode, all that came before a returned commit(),
seal() or close().
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import aoflite
from aoflite import layout
from testhelpers import InvariantError, check_recovered

from .powerloss import (
    ACTIONS,
    PlanChooser,
    RandomChooser,
    Snapshots,
    build_image,
    crash_and_check,
    disable_sync_log,
    enable_sync_log,
    plans,
)

PROFILE = os.environ.get("AOFLITE_FUZZ_PROFILE", "ci")
MAX_RECORD = 64 << 10
SETTINGS = {"segment_bytes": 1 << 20, "max_record_bytes": MAX_RECORD, "flush_interval_ms": 5}
MODES = ("full", "normal", "off")
KEYS = st.sampled_from(["a", "b", "c", "sensor/ü", "k" * 200])
SIZES = st.one_of(st.integers(0, 64), st.integers(0, MAX_RECORD), st.sampled_from([0, MAX_RECORD - 1, MAX_RECORD]))


class _Abort(Exception):
    """Raised inside a transaction to roll it back."""


class PowerLoss(RuleBasedStateMachine):
    """One store, a model of what was appended and acknowledged, and power cuts."""

    def __init__(self):
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="aoflite-powerloss-")
        self.log = os.path.join(self.tmp, "sync.log")
        enable_sync_log(self.log)
        self.path = os.path.join(self.tmp, "store")
        self.db = None
        self.mode = "full"
        self.appended: dict[str, list[bytes]] = {}
        self.acked: dict[str, int] = {}
        self.batches: list[list[tuple[str, int]]] = []
        self.serial = 0
        self.cuts = 0
        self.snaps = Snapshots()

    @initialize(mode=st.sampled_from(MODES))
    def open_store(self, mode):
        self.mode = mode
        self.db = aoflite.open(self.path, durability=mode, **SETTINGS)

    def teardown(self):
        try:
            if self.db is not None:
                self.db.close()
        finally:
            disable_sync_log()
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------ model

    def value(self, size: int) -> bytes:
        """A value of size bytes that no other append repeats (size allowing)."""
        self.serial += 1
        stamp = f"<{self.serial}>".encode()
        return (stamp * (size // len(stamp) + 1))[:size]

    def ack_all(self):
        self.acked = {k: len(v) for k, v in self.appended.items()}

    def acked_by_call(self):
        """A returned write call: durable at once in "full" mode."""
        if self.mode == "full":
            self.ack_all()

    def record(self, key: str, off: int, value: bytes):
        vals = self.appended.setdefault(key, [])
        assert off == len(vals), f"key {key!r}: append got offset {off}, expected {len(vals)}"
        vals.append(value)

    # ------------------------------------------------------------ rules

    @rule(key=KEYS, size=SIZES)
    def append(self, key, size):
        v = self.value(size)
        self.record(key, self.db.append(key, v), v)
        self.acked_by_call()

    @rule(key=KEYS, sizes=st.lists(SIZES, min_size=1, max_size=6))
    def append_many(self, key, sizes):
        vals = [self.value(n) for n in sizes]
        offs = self.db.append_many(key, vals)
        for off, v in zip(offs, vals):
            self.record(key, off, v)
        self.batches.append([(key, off) for off in offs])
        self.acked_by_call()

    def run_transaction(self, ops, abort: bool, before_end=None):
        """Append ops in a transaction; before_end() runs inside it, last."""
        staged = []
        try:
            with self.db.transaction():
                for key, size in ops:
                    v = self.value(size)
                    staged.append((key, self.db.append(key, v), v))
                if before_end is not None:
                    before_end()
                # the records may reach the disk before a rollback zeroes them
                self.snaps.take(self.path)
                if abort:
                    raise _Abort
        except _Abort:
            return
        for key, off, v in staged:
            self.record(key, off, v)
        self.batches.append([(key, off) for key, off, _ in staged])
        self.acked_by_call()

    @rule(ops=st.lists(st.tuples(KEYS, SIZES), min_size=1, max_size=5), abort=st.booleans())
    def transaction(self, ops, abort):
        self.run_transaction(ops, abort)

    @rule(key=KEYS, n=st.integers(4, 20))
    def fill(self, key, n):
        """Big records, so segments fill and roll."""
        for _ in range(n):
            v = self.value(MAX_RECORD - 100)
            self.record(key, self.db.append(key, v), v)
            self.acked_by_call()

    @rule()
    def commit(self):
        self.db.commit()
        self.ack_all()

    @rule()
    def seal(self):
        self.db.seal()
        self.ack_all()

    @rule(mode=st.sampled_from(MODES))
    def reopen(self, mode):
        self.db.close()
        self.ack_all()
        self.mode = mode
        self.db = aoflite.open(self.path, durability=mode, **SETTINGS)

    def cut(self, chooser) -> tuple[str, dict[str, int]]:
        """Build and check a crash image of the store as it is now."""
        self.cuts += 1
        self.snaps.take(self.path)
        image = os.path.join(self.tmp, f"image-{self.cuts}")
        survived = crash_and_check(
            self.path,
            self.log,
            image,
            chooser,
            self.appended,
            self.acked,
            self.batches,
            manifest_env=self.db.manifest.env,
            snapshots=self.snaps,
            durability=self.mode,
            **SETTINGS,
        )
        return image, survived

    @rule(chooser=plans(), switch=st.booleans())
    def power_cut(self, chooser, switch):
        image, survived = self.cut(chooser)
        if not switch:
            shutil.rmtree(image)
            return
        # carry on from the recovered image: its survivors are the model now
        # (check_recovered appended one record to every key, and committed)
        self.db.close()
        shutil.rmtree(self.path)
        self.path = image
        for key, n in survived.items():
            self.appended[key] = self.appended[key][: n - 1] + [b"after-recovery"]
        self.batches = [b for b in self.batches if all(off < survived[key] - 1 for key, off in b)]
        self.ack_all()
        self.db = aoflite.open(self.path, durability=self.mode, **SETTINGS)

    @rule(
        ops=st.lists(st.tuples(KEYS, SIZES), min_size=1, max_size=5),
        chooser=plans(),
        synced=st.booleans(),
        abort=st.booleans(),
    )
    def power_cut_in_transaction(self, ops, chooser, synced, abort):
        """Power fails while a transaction is open, its records perhaps
        already synced (commit() inside it): none of them may survive."""

        def cut():
            if synced:
                self.db.commit()
                self.ack_all()
            shutil.rmtree(self.cut(chooser)[0])

        self.run_transaction(ops, abort, cut)

    @invariant()
    def snapshot(self):
        if self.db is not None:
            self.snaps.take(self.path)

    @invariant()
    def reads_what_was_appended(self):
        if self.db is None:
            return
        for key, vals in self.appended.items():
            assert self.db.count(key) == len(vals)
            if vals:
                assert self.db.last(key).value == vals[-1]


_EXAMPLES = {"ci": 200, "long": 2500}[PROFILE]
_STEPS = {"ci": 40, "long": 60}[PROFILE]

TestPowerLoss = PowerLoss.TestCase
TestPowerLoss.settings = settings(
    max_examples=_EXAMPLES,
    stateful_step_count=_STEPS,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


# ------------------------------------------------------ the harness itself


class _Always:
    """A chooser that makes one choice everywhere."""

    def __init__(self, action):
        self.action = action

    def choice(self, options):
        return self.action if self.action in options else options[0]

    def integer(self, lo, hi):
        return lo


@pytest.fixture
def logged(tmp_path):
    log = str(tmp_path / "sync.log")
    enable_sync_log(log)
    yield log
    disable_sync_log()


def _store_with_tail(path, mode="off", snaps=None):
    """A store with 30 committed records of key a and 30 unsynced ones;
    snaps, if given, sees it before and after the unsynced ones."""
    db = aoflite.open(path, durability=mode, **SETTINGS)
    vals = [f"{i}-".encode() * 1000 for i in range(60)]
    for v in vals[:30]:
        db.append("a", v)
    db.commit()
    if snaps is not None:
        snaps.take(db.path)
    for v in vals[30:]:
        db.append("a", v)
    if snaps is not None:
        snaps.take(db.path)
    return db, {"a": vals}


@pytest.mark.parametrize("action", ACTIONS)
def test_unsynced_tail_any_fate(tmp_path, logged, action):
    """Whatever happens to the unsynced pages, the committed records survive;
    dropping them, or reverting them to before the tail, loses exactly the
    unsynced records."""
    snaps = Snapshots()
    db, appended = _store_with_tail(str(tmp_path / "s"), snaps=snaps)
    survived = crash_and_check(
        db.path, logged, str(tmp_path / "img"), _Always(action), appended, {"a": 30},
        manifest_env=db.manifest.env, snapshots=snaps, **SETTINGS,
    )
    db.close()
    if action in ("drop", "zero", "garbage", "revert"):
        assert survived == {"a": 31}  # 30 + the record check_recovered appends
    if action == "keep":
        assert survived == {"a": 61}


def test_check_fails_when_unsynced_records_are_claimed(tmp_path, logged):
    """The cut really loses what was not synced: claiming it was acknowledged
    is caught (the harness is not vacuous)."""
    db, appended = _store_with_tail(str(tmp_path / "s"))
    build_image(db.path, logged, str(tmp_path / "img"), _Always("drop"), db.manifest.env)
    db.close()
    with pytest.raises(InvariantError, match="60 records acknowledged, 30 survived"):
        check_recovered(str(tmp_path / "img"), appended, {"a": 60}, **SETTINGS)


def test_sealed_and_closed_store_survives_everything(tmp_path, logged):
    """After close, every file is durable: all choices leave it as it was."""
    db, appended = _store_with_tail(str(tmp_path / "s"))
    db.seal()
    db.close()
    for seed in range(5):
        survived = crash_and_check(
            db.path, logged, str(tmp_path / f"img{seed}"), RandomChooser(seed), appended, {"a": 60}, **SETTINGS
        )
        assert survived == {"a": 61}


def test_vanishing_files(tmp_path, logged):
    """A file the log never made durable may vanish; a durable one never does."""
    db, appended = _store_with_tail(str(tmp_path / "s"))
    db.close()
    stray = tmp_path / "s" / "segments" / "stray"
    stray.write_bytes(b"never synced")
    tally = build_image(db.path, logged, str(tmp_path / "img"), _Always(True))
    assert tally.get("vanished") == 3  # the stray file, LOCK and the feed (shared memory, never synced)
    assert not (tmp_path / "img" / "segments" / "stray").exists()
    assert (tmp_path / "img" / "aoflite.store").exists()
    assert len(list((tmp_path / "img" / "segments").iterdir())) == 1
    assert check_recovered(str(tmp_path / "img"), appended, {"a": 60}) == {"a": 61}


def test_synced_open_transaction_is_dropped(tmp_path, logged):
    """An open transaction whose records a commit() already put on disk
    (with no commit record yet) is gone after the power cut, even with every
    page kept; the batch before it survives whole."""
    db = aoflite.open(str(tmp_path / "s"), durability="off", **SETTINGS)
    db.append_many("a", [b"one", b"two"])
    with db.transaction():
        db.append("a", b"in flight")
        db.append("b", b"in flight too")
        db.commit()
        survived = crash_and_check(
            db.path, logged, str(tmp_path / "img"), PlanChooser(["keep"], 0),
            {"a": [b"one", b"two"], "b": []}, {"a": 2}, [[("a", 0), ("a", 1)]],
            manifest_env=db.manifest.env, **SETTINGS,
        )
    db.close()
    assert survived == {"a": 3, "b": 1}


class _RevertTo:
    """A chooser that reverts each stretch to the version holding needle if
    it had one, else to its newest version."""

    def __init__(self, needle: bytes):
        self.needle = needle

    def choice(self, options):
        if tuple(options) == ACTIONS:
            return "revert"
        if options and isinstance(options[0], bytes):
            return next((v for v in options if self.needle in v), options[-1])
        return options[0]

    def integer(self, lo, hi):
        return lo


def test_rolled_back_bytes_never_return_after_power_loss(tmp_path, logged):
    """Writeback may put a transaction's records on disk before its rollback
    zeroes them in memory, and the next batch reuses their positions, LSNs
    and offsets. Should the page holding the first rolled-back record keep
    that version while the next page, holding the end of the batch, reaches
    the disk, recovery must not take the two for one batch: the rollback
    has to sync its zeros."""
    snaps = Snapshots()
    db = aoflite.open(str(tmp_path / "s"), durability="off", **SETTINGS)
    db.append("a", b"defined")  # the key's definition is in the segment already
    db.commit()
    # a page long, all the same length, and alike but for their first
    # bytes: a record's last bytes share a page with the next one's start
    tags = (b"A1 rolled back", b"A2 rolled back", b"B1 committed", b"B2 committed")
    a1, a2, b1, b2 = (tag.ljust(16) + b"." * 4096 for tag in tags)
    with pytest.raises(_Abort), db.transaction():
        db.append("a", a1)
        db.append("a", a2)
        snaps.take(db.path)
        raise _Abort
    snaps.take(db.path)
    db.append_many("a", [b1, b2])
    snaps.take(db.path)
    (seg,) = layout.segment_ids(db.path)
    with open(layout.segment_path(db.path, seg), "rb") as f:
        data = f.read()
    assert data.index(b"B1 committed") // 4096 < data.index(b"B2 committed") // 4096  # the scenario holds
    crash_and_check(
        db.path, logged, str(tmp_path / "img"), _RevertTo(b"A1 rolled back"),
        {"a": [b"defined", b1, b2]}, {"a": 1}, [[("a", 1), ("a", 2)]],
        manifest_env=db.manifest.env, snapshots=snaps, **SETTINGS,
    )
    db.close()
