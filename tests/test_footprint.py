"""Disk footprint: the active segment's file grows in doubling steps with
use instead of being preallocated to segment_bytes, so a small store stays
small; reads stay right across every growth, in this process and from a
read-only handle in another; a grown size is made durable before a record
in the grown space is acknowledged; a growth that fails fails only the
append (or transaction) that needed it."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest

import aoflite
from aoflite import failpoints, layout
from aoflite import segment as _segment

KiB, MiB = 1 << 10, 1 << 20
FIRST_STEP = 256 * KiB  # AOF_GROW_FIRST in native/aof_internal.h
RECORD_HEADER = 40


@pytest.fixture(autouse=True)
def _disarm():
    yield
    failpoints.io_reset()


def du(root: str) -> int:
    """Allocated bytes under root, as du counts them."""
    return sum(os.stat(os.path.join(top, n)).st_blocks * 512 for top, _, names in os.walk(root) for n in names)


def value(i: int, size: int) -> bytes:
    return (b"%08d" % i * (size // 8 + 1))[:size]


def active(db):
    return db._writes.writer.segment


def active_file(db) -> str:
    return layout.segment_path(db.path, active(db).info().segment_id)


def payloads_to_step_end(db) -> list[int]:
    """Payload sizes of two records of an already defined key that, appended
    after the committed records, end exactly where the file does."""
    info = active(db).info()
    room = info.file_bytes - info.records_end
    first = room // 2 - RECORD_HEADER
    return [first, room - 2 * RECORD_HEADER - first]


def fill_to_step_end(db, key: str = "k") -> int:
    """Append until the active segment's records end exactly where its file
    does, so the next byte appended needs the file to grow; returns how
    many records the key then has."""
    db.append(key, b"f")
    for size in payloads_to_step_end(db):
        db.append(key, b"g" * size)
    info = active(db).info()
    assert info.records_end == info.file_bytes
    return db.count(key)


# ------------------------------------------------------------ the target


def test_a_new_store_of_1000_small_records_takes_at_most_2_mib(store_path):
    with aoflite.open(store_path) as db:  # default settings: 64 MiB segments
        for i in range(1000):
            db.append("sensor", value(i, 100))
        db.commit()
        stats = db.stats()
        assert stats["disk_bytes"] == du(store_path)
        assert stats["data_bytes"] == active(db).info().records_end
    assert du(store_path) <= 2 * MiB
    # the active segment is at its first step; the rest is the manifest,
    # the feed, the marker and the lock
    assert os.path.getsize(layout.segment_path(store_path, 1)) == FIRST_STEP
    with aoflite.open(store_path, readonly=True) as db:
        assert [r.value for r in db.scan("sensor")] == [value(i, 100) for i in range(1000)]


def test_a_sealed_segment_is_trimmed_to_its_records_index_and_footer(store_path):
    with aoflite.open(store_path, segment_bytes=4 * MiB) as db:
        for i in range(3000):
            db.append("k", value(i, 300))
        end = active(db).info().records_end
        db.seal()
        sealed = [s for s in db.manifest.segments() if s.state == "sealed"]
    assert len(sealed) == 1
    index = 40 + 3000 * 8  # one key entry, one position per record
    assert sealed[0].file_bytes == os.path.getsize(layout.segment_path(store_path, 1)) == end + index + 64


# ------------------------------------------------------------ growing


def test_the_active_segment_grows_in_doubling_steps_up_to_segment_bytes(store_path):
    db = aoflite.open(store_path, segment_bytes=4 * MiB, durability="off")
    sizes, written = [os.path.getsize(active_file(db))], []
    for i in range(200):
        # through the map, and through pwrite (64 KiB and more)
        written.append(value(i, 30 * KiB if i % 3 else 70 * KiB))
        db.append("k", written[-1])
        seg = active(db)
        info = seg.info()
        if info.segment_id != 1:
            break
        size = os.path.getsize(active_file(db))
        assert size == info.file_bytes >= info.records_end
        assert os.stat(active_file(db)).st_blocks * 512 >= size  # allocated, not sparse
        # the prefault window keeps working across growth
        assert seg.prefaulted() >= info.records_end - 4096
        if size != sizes[-1]:
            sizes.append(size)
            # every record so far reads back right after each growth
            assert [r.value for r in db.scan("k")] == written
    assert sizes == [256 * KiB, 512 * KiB, 1 * MiB, 2 * MiB, 4 * MiB]
    db.close()


def test_a_transaction_grows_the_segment_in_steps_and_past_segment_bytes(store_path):
    db = aoflite.open(store_path, segment_bytes=MiB, durability="full", max_record_bytes=MiB)
    with db.transaction():
        for i in range(6):
            db.append("k", value(i, 300 * KiB))
    assert os.path.getsize(active_file(db)) >= 6 * 300 * KiB
    db.close()
    with aoflite.open(store_path) as db:
        assert [r.value for r in db.scan("k")] == [value(i, 300 * KiB) for i in range(6)]


def test_a_grown_size_is_synced_once_per_step_before_records_in_it_are_acknowledged(store_path, tmp_path):
    log = str(tmp_path / "sync.log")
    db = aoflite.open(store_path, segment_bytes=2 * MiB, durability="full")
    path = os.path.abspath(active_file(db))
    _segment.enable_sync_log(log)
    try:
        durable_sizes = []
        for i in range(180):
            db.append("k", value(i, 10 * KiB))  # acknowledged when it returns
            size = os.path.getsize(path)
            with open(log) as f:
                fsynced = [int(line.split()[-1]) for line in f if line.startswith(f"F {path} ")]
            # the last fsync of the file covered its current size
            if size > FIRST_STEP:
                assert fsynced and fsynced[-1] == size, (i, size, fsynced)
            durable_sizes = fsynced
    finally:
        _segment.enable_sync_log(None)
    # one fsync per step, not one per record
    assert durable_sizes == [512 * KiB, 1 * MiB, 2 * MiB]
    db.close()


# ------------------------------------------------------------ readers


READER = textwrap.dedent(
    """
    import sys
    import aoflite

    path, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def value(i):
        return (b"%08d" % i * (size // 8 + 1))[:size]

    print("ready", flush=True)
    with aoflite.open(path, readonly=True, poll_interval_ms=1) as db:
        got = 0
        for rec in db.tail("k", 0, timeout=60):
            assert rec.offset == got and rec.value == value(got), (rec.offset, got)
            got += 1
            if got == n:
                break
        # and once more from the start, after all the growth
        assert [r.value for r in db.scan("k")] == [value(i) for i in range(n)]
    print("ok", got, flush=True)
    """
)


def test_a_reader_in_another_process_stays_right_while_the_file_grows(store_path):
    n, size = 600, 12 * KiB  # ~7 MiB: four growths of one segment, then rolls
    db = aoflite.open(store_path, segment_bytes=4 * MiB, durability="off")
    db.append("k", value(0, size))
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(aoflite.__file__)))}
    child = subprocess.Popen(
        [sys.executable, "-c", READER, store_path, str(n), str(size)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        grown = set()
        for i in range(1, n):
            db.append("k", value(i, size))
            if i % 8 == 0:
                db.commit()
            grown.add(os.path.getsize(active_file(db)))
        db.commit()
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert out.split() == ["ok", str(n)]
    assert {256 * KiB, 512 * KiB, 1 * MiB, 2 * MiB, 4 * MiB} <= grown
    db.close()


# ------------------------------------------------------------ failures


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO])
def test_a_growth_failing_at_a_step_boundary_fails_only_that_append(store_path, err):
    db = aoflite.open(store_path, durability="full", segment_bytes=4 * MiB)
    n = fill_to_step_end(db)
    size = os.path.getsize(active_file(db))
    failpoints.io_error("seg.fallocate", 1, err)
    with pytest.raises(aoflite.StorageError, match="growing .* from 262144 to 524288 bytes") as info:
        db.append("k", b"needs room")
    assert failpoints.io_counts()["seg.fallocate"] == 1
    failpoints.io_reset()
    assert info.value.errno == err
    assert os.path.getsize(active_file(db)) == size
    # nothing lost, nothing half-written, and the next append takes the offset
    assert db.count("k") == n
    assert db.append("k", b"after") == n
    assert os.path.getsize(active_file(db)) == 2 * size
    db.close()
    with aoflite.open(store_path) as db:
        assert db.count("k") == n + 1
        assert db.read("k", n).value == b"after"
        assert db.verify() >= 0


def test_a_growth_failing_inside_a_transaction_fails_the_transaction(store_path):
    db = aoflite.open(store_path, durability="full", segment_bytes=4 * MiB)
    n = fill_to_step_end(db)
    with pytest.raises(aoflite.StorageError, match="rolled back"):
        with db.transaction():
            failpoints.io_error("seg.fallocate", 1, errno.ENOSPC)
            with pytest.raises(aoflite.StorageError, match="growing"):
                db.append("k", b"in tx")
            failpoints.io_reset()
            with pytest.raises(aoflite.TransactionError, match="already failed"):
                db.append("k", b"later in tx")
    assert db.count("k") == n
    with db.transaction():
        db.append("k", b"tx 1")
        db.append("j", b"tx 2")
    db.close()
    with aoflite.open(store_path) as db:
        assert db.count("k") == n + 1 and db.read("k", n).value == b"tx 1"
        assert db.read("j", 0).value == b"tx 2"


def test_a_growth_failing_for_a_transactions_commit_record_rolls_it_back(store_path):
    db = aoflite.open(store_path, durability="full", segment_bytes=4 * MiB)
    db.append("k", b"before")
    sizes = payloads_to_step_end(db)
    with pytest.raises(aoflite.StorageError, match="growing"):
        with db.transaction():
            # records that end exactly at the step: only the commit record
            # needs the file to grow
            for size in sizes:
                db.append("k", b"t" * size)
            assert os.path.getsize(active_file(db)) == FIRST_STEP
            failpoints.io_error("seg.fallocate", 1, errno.ENOSPC)
    failpoints.io_reset()
    assert db.count("k") == 1
    assert db.append("k", b"after") == 1
    db.close()
    with aoflite.open(store_path) as db:
        assert [r.value for r in db.scan("k")] == [b"before", b"after"]


def test_a_growth_without_fallocate_falls_back_to_ftruncate(store_path):
    db = aoflite.open(store_path, durability="full", segment_bytes=4 * MiB)
    n = fill_to_step_end(db)
    failpoints.io_error("seg.fallocate", 1, errno.EOPNOTSUPP)
    assert db.append("k", b"sparse growth") == n
    failpoints.io_reset()
    assert os.path.getsize(active_file(db)) == 2 * FIRST_STEP
    db.close()
    with aoflite.open(store_path) as db:
        assert db.read("k", n).value == b"sparse growth"


@pytest.mark.parametrize("cut", [FIRST_STEP - 4096, FIRST_STEP + 12345, 3 * FIRST_STEP // 2, 4 * FIRST_STEP])
def test_recovery_takes_a_file_of_any_size_between_steps(store_path, cut):
    """A crash mid-growth, or a power loss that kept an older size or part
    of a newer one: recovery keeps every batch within the file, and the file
    ends on the growth step that holds them."""
    db = aoflite.open(store_path, durability="full", segment_bytes=4 * MiB)
    values = [value(i, 1000) for i in range(400)]  # ~407 KiB: into the second step
    for v in values:
        db.append("k", v)
    path = active_file(db)
    db.close()  # the active segment stays unsealed, at its grown size
    os.truncate(path, cut)
    with aoflite.open(store_path, segment_bytes=4 * MiB) as db:
        kept = [r.value for r in db.scan("k")]
        end = active(db).info().records_end
        assert kept == values[: len(kept)]
        assert len(kept) == min(400, (cut - 64 - 41) // 1040)
        size = os.path.getsize(path)
        assert size >= end and size in (FIRST_STEP, 2 * FIRST_STEP)
        db.append("k", b"next")
        assert db.read("k", len(kept)).value == b"next"
