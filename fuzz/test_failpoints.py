"""Every named failpoint: a workload child dies exactly there, then the
store must recover. Points that fire while a store is opened run against a
store a previous crash left in the state that reaches them, and the
recovery that died there is recovered again in the parent."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from aoflite import failpoints, layout
from aoflite.segment import Segment
from testhelpers import check_recovered

from . import stats
from .workload import MIX, Ledger, Spec, spawn

SEED = 77
# values averaging ~30 KiB: 1 MiB segments roll every few dozen appends
BIG = {"max_value": 128 << 10, "mix": {"append": 8, "append_many": 1}}
BATCHES = {"mix": {"append": 1, "append_many": 3}}
TRANSACTIONS = {"mix": {"append": 1, "transaction": 3, "rollback": 1}}
# a child that appends nothing: only opening (recovering) and closing the
# store can reach its failpoint
AT_OPEN = {"mix": {"commit": 1}, "ops": 1}
# sealed segments compress, upload to a file:// Tier 2 and leave local disk
# while appends go on; old records are read back through hydration
TIERED = {**BIG, "tiered": True, "mix": {"append": 8, "append_many": 1, "drain": 1, "read_old": 2}}
NORMAL_FLUSHING = {"durability": "normal", "flush_interval_ms": 1, "mix": {"append": 1}, "ops": 5000}

_reached: set[str] = set()  # failpoints this module's children died at


@dataclass
class Scene:
    """One store under test, the parent's ledger of it, and the settings
    every child on it shares."""

    path: str
    ack_path: str
    overrides: dict = field(default_factory=dict)  # win over each step's spec
    ledger: Ledger | None = None  # made for the first child's values
    spec: Spec | None = None  # the last child's

    @classmethod
    def new(cls, where, **overrides) -> Scene:
        os.makedirs(where, exist_ok=True)
        return cls(os.path.join(where, "store"), os.path.join(where, "acks"), overrides)

    def next_spec(self, settings: dict) -> Spec:
        """The next child's spec: its own settings, appending the same
        values as every child before it on this store."""
        settings = {"ops": 400, **settings, **self.overrides}
        if self.spec is None:
            spec = Spec(self.path, seed=SEED, **settings)
            self.ledger = Ledger(spec.seed, spec.max_value)
        else:
            settings.setdefault("max_value", self.spec.max_value)
            spec = Spec(self.path, seed=SEED, run=self.spec.run + 1, **settings)
            assert spec.max_value == self.ledger.max_value, "one store, one value function"
        self.spec = spec
        return spec

    def check(self) -> None:
        """Recover in this process and check every invariant."""
        stats.add("crash schedules")
        self.ledger.check(self.path, **self.spec.open_kwargs())


@dataclass(frozen=True)
class Crash:
    """Run a workload child with failpoint armed; it must die there (a
    child that never reaches it ends after its ops with status 0)."""

    failpoint: str
    skip: int = 0
    spec: dict = field(default_factory=dict)

    def __call__(self, scene: Scene, action: str = "exit") -> None:
        env = {"AOFLITE_FAILPOINT": self.failpoint, "AOFLITE_FAILPOINT_SKIP": str(self.skip)}
        if action == "kill":
            env["AOFLITE_FAILPOINT_ACTION"] = "kill"
        child = spawn(scene.next_spec(self.spec), scene.ack_path, env)
        status = child.wait(timeout=120)
        expected = -signal.SIGKILL if action == "kill" else failpoints.EXIT_STATUS
        assert status == expected, (
            f"armed at {self.failpoint} (skip {self.skip}), the child ended with status {status}, "
            f"not {expected}: {'the failpoint was never reached' if status == 0 else child.stderr}"
        )
        _reached.add(self.failpoint)
        stats.hit_failpoint(self.failpoint)
        stats.add("kills")
        scene.ledger.take(child.lines())


def add_unsealed_segment(scene: Scene) -> None:
    """Give the store a second unsealed segment after its active one, as a
    roll that created the next file before sealing would leave it."""
    ids = layout.segment_ids(scene.path)
    active, _ = Segment.open(layout.segment_path(scene.path, ids[-1]))
    info = active.info()
    assert not info.sealed
    Segment.create(
        layout.segment_path(scene.path, ids[-1] + 1),
        store_id=layout.read_marker(scene.path)[1],
        segment_id=ids[-1] + 1,
        first_lsn=info.last_lsn + 1 if info.record_count else info.first_lsn,
        capacity=scene.spec.segment_bytes,
    )


Step = Callable[..., None]

# failpoint -> steps that end with a child dying at it
SCENARIOS: dict[str, list[Step]] = {
    "open.after_lock": [Crash("roll.after_seal", 1, BIG), Crash("open.after_lock", 0, AT_OPEN)],
    "open.after_recovery": [Crash("append_many.half", 1, BATCHES), Crash("open.after_recovery", 0, AT_OPEN)],
    # new keys, or keys a reopened writer knows only from sealed segments
    "key.before_define": [Crash("key.before_define", 2, {"mix": {"append": 4, "seal": 1, "reopen": 1}})],
    "roll.before_seal": [Crash("roll.before_seal", 1, BIG)],
    "roll.after_seal": [Crash("roll.after_seal", 1, BIG)],
    "roll.after_create": [Crash("roll.after_create", 1, BIG)],
    "roll.after_manifest": [Crash("roll.after_manifest", 1, BIG)],
    # the next segment's file exists, the manifest does not know it yet
    "recovery.before_adopt": [Crash("roll.after_create", 2, BIG), Crash("recovery.before_adopt", 0, AT_OPEN)],
    # no crash leaves two unsealed segments (a roll seals before it creates),
    # so the second one is made by hand after a crash mid-transaction
    "recovery.before_seal_recovered": [
        Crash("tx.before_commit_record", 3, TRANSACTIONS),
        add_unsealed_segment,
        Crash("recovery.before_seal_recovered", 0, AT_OPEN),
    ],
    # the background flusher, woken every millisecond while appends go on
    "flush.before_sync": [Crash("flush.before_sync", 1, NORMAL_FLUSHING)],
    "close.before_sync": [Crash("close.before_sync", 1, {"mix": {**MIX, "reopen": 30}})],
    "close.after_sync": [Crash("close.after_sync", 0, {"durability": "off", "ops": 30})],
    "create.opened": [Crash("create.opened", 1, BIG)],
    # a process crash keeps the header in the page cache: the file is adopted
    "create.header_written": [Crash("create.header_written", 1, BIG)],
    "seal.index_written": [Crash("seal.index_written", 0, BIG)],
    "seal.synced": [Crash("seal.synced", 1, BIG)],
    "seal.truncated": [Crash("seal.truncated", 2, BIG)],
    # a torn batch in the tail, then a crash just after recovery cut it off
    "recover.truncated": [Crash("append_many.half", 2, BATCHES), Crash("recover.truncated", 0, AT_OPEN)],
    "append_many.half": [Crash("append_many.half", 3, BATCHES)],
    "tx.before_commit_record": [Crash("tx.before_commit_record", 2, TRANSACTIONS)],
    "sync.before_msync": [Crash("sync.before_msync", 10)],
    "tier.after_compress": [Crash("tier.after_compress", 1, TIERED)],
    "tier.after_upload": [Crash("tier.after_upload", 1, TIERED)],
    "tier.before_unlink": [Crash("tier.before_unlink", 1, TIERED)],
    "hydrate.after_fetch": [Crash("hydrate.after_fetch", 0, TIERED)],
    # retention drops old segments from the manifest, then their files
    "retention.after_manifest": [Crash("retention.after_manifest", 0, {**BIG, "retain_segments": 2})],
    # the active segment's second growth: the file is longer than any sync knew
    "seg.grown": [Crash("seg.grown", 1, BIG)],
}


def scenario(name: str) -> list[Step]:
    """The steps that end with a child dying at failpoint name."""
    steps = SCENARIOS.get(name)
    assert steps, f"no scenario reaches failpoint {name!r}: add one to SCENARIOS"
    assert isinstance(steps[-1], Crash) and steps[-1].failpoint == name
    return steps


def play(scene: Scene, steps: list[Step], action: str = "exit") -> None:
    """Play steps on scene (the last one with action), then recover."""
    for step in steps[:-1]:
        step(scene)
    steps[-1](scene, action)
    scene.check()


@pytest.mark.parametrize("name", failpoints.all_names())
def test_failpoint(tmp_path, name):
    """The child dies at the failpoint (exit status 77); the store recovers."""
    play(Scene.new(tmp_path), scenario(name))


@pytest.mark.parametrize(
    "name", ["open.after_lock", "recovery.before_adopt", "create.header_written", "seal.synced", "append_many.half"]
)
def test_failpoint_sigkill(tmp_path, name):
    """The same with AOFLITE_FAILPOINT_ACTION=kill: the child SIGKILLs itself."""
    play(Scene.new(tmp_path), scenario(name), action="kill")


def test_failpoints_one_after_another(tmp_path):
    """Every scenario in turn on one store, recovering after each: the
    crashes land on a store with history (sealed segments, earlier
    recoveries, keys only in sealed segments)."""
    scene = Scene.new(tmp_path, max_value=BIG["max_value"])
    for name in failpoints.all_names():
        play(scene, scenario(name))
    assert len(layout.segment_ids(scene.path)) > 10


def test_crash_creating_the_first_segment(tmp_path):
    """A crash while a new store creates its first segment file leaves an
    empty file behind, which recovery discards."""
    scene = Scene.new(tmp_path)
    Crash("create.opened", 0)(scene, "kill")
    assert os.path.getsize(layout.segment_path(scene.path, 1)) == 0
    scene.check()


def test_crash_creating_a_store(tmp_path):
    """A crash right after a new store's directory and lock file exist, before
    its marker, must not leave a path that can never be opened."""
    scene = Scene.new(tmp_path)
    Crash("open.after_lock", 0)(scene)
    check_recovered(scene.path, {}, {})


# crashes inside the recovery of a crashed store, each recovered again by
# the next child or the parent
TWO_UNSEALED = SCENARIOS["recovery.before_seal_recovered"][:-1]
AFTER_SEAL = [Crash("roll.after_seal", 1, BIG)]  # recovery records it, then creates the next
IN_RECOVERY = {
    "sealing an older segment, index written": [*TWO_UNSEALED, Crash("seal.index_written", 0, AT_OPEN)],
    "sealing an older segment, synced": [*TWO_UNSEALED, Crash("seal.synced", 0, AT_OPEN)],
    "sealing an older segment, truncated": [*TWO_UNSEALED, Crash("seal.truncated", 0, AT_OPEN)],
    "creating the next segment, empty file": [*AFTER_SEAL, Crash("create.opened", 0, AT_OPEN)],
    "creating the next segment, header written": [*AFTER_SEAL, Crash("create.header_written", 0, AT_OPEN)],
    "cutting a torn tail, twice": [*SCENARIOS["recover.truncated"], Crash("recover.truncated", 0, AT_OPEN)],
    "adopting, twice, then after recovery": [
        *SCENARIOS["recovery.before_adopt"],
        Crash("recovery.before_adopt", 0, AT_OPEN),
        Crash("open.after_recovery", 0, AT_OPEN),
    ],
}


@pytest.mark.parametrize("steps", IN_RECOVERY.values(), ids=IN_RECOVERY.keys())
def test_crash_during_recovery(tmp_path, steps):
    """A recovery that dies (again and again) is recovered by the next open."""
    play(Scene.new(tmp_path), steps)


def test_every_failpoint_is_reached(tmp_path):
    """Every defined failpoint, C and Python, has a scenario that kills a
    child there (played here for any the tests above did not reach)."""
    for name in failpoints.all_names():
        if name not in _reached:
            play(Scene.new(tmp_path / name), scenario(name))
    assert set(failpoints.all_names()) <= _reached
