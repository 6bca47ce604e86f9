"""Real crashes: a workload child is SIGKILLed at random moments, over and
over on one store, and every recovery must keep what was acknowledged."""

from __future__ import annotations

import random
import signal
import time

import pytest

import aoflite
from aoflite import layout

from . import stats
from .workload import MIX, Ledger, Spec, spawn

SEED = 20240611
# a seal about every hundred operations, and values large enough that the
# 1 MiB segments also roll on their own
CRASH_MIX = {**MIX, "seal": 1}
MAX_VALUE = 16 << 10


def kill_loop(
    tmp_path, durability: str, kills: int, seed: int, max_value: int = MAX_VALUE, mix: dict = CRASH_MIX
) -> int:
    """Kill a workload child `kills` times on one store, checking recovery
    after each kill; returns how many records the children had acknowledged."""
    rng = random.Random(seed)
    path = str(tmp_path / "store")
    ack_path = str(tmp_path / "acks")
    # the store exists before the first kill: crashes while creating one are
    # test_failpoints' business
    aoflite.open(path).close()
    ledger = Ledger(seed, max_value)
    acks = 0
    for run in range(kills):
        spec = Spec(path, seed=seed, run=run, durability=durability, max_value=max_value, mix=mix,
                    flush_interval_ms=rng.choice((1, 5, 50)))
        child = spawn(spec, ack_path)
        aim = rng.random()
        if aim < 0.3 and mix.get("seal"):
            # at a seal in progress (it takes a few milliseconds)
            child.wait_for("S", timeout=30)
            time.sleep(rng.uniform(0, 0.004))
        elif aim < 0.5:
            # anywhere from start-up through opening (recovering) the store
            time.sleep(rng.uniform(0, 0.25))
        else:
            # into the workload, however long start-up took
            child.wait_for("O", timeout=30)
            time.sleep(rng.uniform(0, 0.3))
        status = child.kill()
        assert status == -signal.SIGKILL, f"run {run}: the workload failed (status {status}):\n{child.stderr}"
        stats.add("kills")
        stats.add("crash schedules")
        held = sum(map(len, ledger.known.values()))
        ledger.take(child.lines())
        acks += sum(ledger.acked.values()) - held
        ledger.check(path, **spec.open_kwargs())
    return acks


def test_sigkill_loop_full_durability(tmp_path):
    """Fifty SIGKILLs of a "full" workload, recovering the same store each
    time: every returned append, batch and transaction survives."""
    acks = kill_loop(tmp_path, "full", kills=50, seed=SEED)
    # the loop did real work: many records and many segments (rolls, seals)
    assert acks > 5000
    assert len(layout.segment_ids(str(tmp_path / "store"))) > 10


def test_sigkill_loop_rolling_segments(tmp_path):
    """Values averaging ~30 KiB roll the 1 MiB segments every few dozen
    appends, so random kills land in rolls: sealing, creating the next
    file, recording both in the manifest."""
    mix = {"append": 16, "append_many": 2, "seal": 1}
    acks = kill_loop(tmp_path, "full", kills=20, seed=SEED + 1, max_value=128 << 10, mix=mix)
    assert acks > 200
    assert len(layout.segment_ids(str(tmp_path / "store"))) > 20


@pytest.mark.parametrize("durability", ["normal", "off"])
def test_sigkill_loop_commit_acknowledged(tmp_path, durability):
    """In "normal" and "off" modes what commit(), seal() and close() covered
    survives a SIGKILL; whatever else survives is whole batches."""
    acks = kill_loop(tmp_path, durability, kills=8, seed=SEED + len(durability))
    assert acks > 100
