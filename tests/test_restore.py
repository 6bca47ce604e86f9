"""Restore from Tier 2 alone: manifest snapshots, aoflite.restore, point-in-time
cuts at whole batches, and bad inputs that leave nothing half-made."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import aoflite
from aoflite.tiers.base import segment_object_name
from test_tiers import FAST, SEG, check_all, fill, tiered, value

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def writer(path, bucket, **more):
    """A tiered store (budgets of 0) whose Tier 2 steps give up quickly."""
    return tiered(path, bucket, **{**FAST, **more})


def transactions(db, n: int, counts: dict[str, int]) -> None:
    """n transactions of three records each over keys t0..t2, between plain appends."""
    for i in range(n):
        with db.transaction():
            for k in ("t0", "t1", "t2"):
                off = counts.get(k, 0)
                db.append(k, value(k, off))
                counts[k] = off + 1
        fill_one(db, counts)


def fill_one(db, counts):
    off = counts.get("p", 0)
    db.append("p", value("p", off))
    counts["p"] = off + 1


def every_record(db) -> list[aoflite.Record]:
    return list(db.scan_all())


def test_restore_reads_everything_back_from_tier2_alone(tmp_path, bucket):
    """A store whose sealed segments live only in Tier 2 is recreated at a
    fresh path: every record reads back byte-identical (hydrated on read),
    verify passes, and the restored store appends after its last segment."""
    with writer(tmp_path / "s", bucket) as db:
        counts = fill(db, 12_000)
        db.seal()
        db.drain_tiers(timeout=60)
        assert all(set(r.tiers) == {"t2"} for r in db.residency())
        original = every_record(db)
    with aoflite.open(str(tmp_path / "s"), readonly=True) as ro:
        assert [e for e in ro.manifest.ledger() if e["type"] == "SnapshotMarker"]  # at least the one at close
    pointer = json.loads((bucket / "manifest" / "latest").read_text())
    assert pointer["last_lsn"] == original[-1].lsn
    shutil.rmtree(tmp_path / "s")  # the machine is gone: Tier 2 alone
    dest = tmp_path / "restored"
    assert aoflite.restore(f"file://{bucket}", str(dest)) == original[-1].lsn
    assert not os.listdir(dest / "segments")  # lazily: nothing fetched yet
    with aoflite.open(str(dest), readonly=True) as ro:
        assert every_record(ro) == original
        check_all(ro, counts)
        assert ro.verify() == len(ro.residency())
    with aoflite.open(str(dest), segment_bytes=SEG) as rw:
        last = max(r.segment_id for r in rw.residency())
        assert rw.append("k0", b"after") == counts["k0"]
        rw.seal()
        assert max(r.segment_id for r in rw.residency()) == last + 1
        assert rw.read("k0", counts["k0"]).value == b"after"
        assert rw.verify() == last + 1


def test_restored_store_moves_to_its_own_prefix(tmp_path, bucket):
    """Opened with a Tier 2 of its own, a restored store uploads its new
    segments there and still hydrates its old ones from the source."""
    with writer(tmp_path / "s", bucket) as db:
        counts = fill(db, 6_000)
        db.seal()
        db.drain_tiers(timeout=60)
    aoflite.restore(f"file://{bucket}", str(tmp_path / "r"))
    own = tmp_path / "own"
    own.mkdir()
    with writer(tmp_path / "r", own) as rw:
        counts = fill(rw, 3_000, counts)
        rw.seal()
        rw.drain_tiers(timeout=60)
        check_all(rw, counts)
        new = max(r.segment_id for r in rw.residency())
    assert (own / segment_object_name(new)).exists()
    assert not (own / segment_object_name(1)).exists()
    assert not (bucket / segment_object_name(new)).exists()
    with aoflite.open(str(tmp_path / "r"), readonly=True) as ro:
        for d in ("segments", "tier1"):
            for name in os.listdir(tmp_path / "r" / d):
                os.unlink(tmp_path / "r" / d / name)
        assert ro.read("k0", 5).value == value("k0", 5)  # a cold point read, from the origin
        check_all(ro, counts)


_CRASHING_WRITER = """
import os, sys
sys.path.insert(0, {tests!r})
import aoflite
from test_tiers import fill
db = aoflite.open({path!r}, segment_bytes=1 << 20, tier2_url={url!r}, tier0_max_bytes=0, tier1_max_bytes=0,
                  snapshot_every_seals=1000)
counts = fill(db, 8_000)
db.seal()
db.drain_tiers(timeout=60)
db.close()  # a snapshot at close
db = aoflite.open({path!r}, segment_bytes=1 << 20, tier2_url={url!r}, tier0_max_bytes=0, tier1_max_bytes=0,
                  snapshot_every_seals=1000)
counts = fill(db, 5_000, counts)  # sealed and uploaded after the snapshot
db.seal()
db.drain_tiers(timeout=60)
db.append("k0", b"never uploaded")
db.commit()
os._exit(0)  # the machine is lost: no snapshot at close
"""


def test_restore_adopts_segments_uploaded_after_the_last_snapshot(tmp_path, bucket):
    """What a lost machine loses is its active segment: segments uploaded
    after the last snapshot are adopted from the bucket, the active one is
    not there to restore."""
    src = tmp_path / "s"
    code = _CRASHING_WRITER.format(
        tests=os.path.join(ROOT, "tests"), path=str(src), url=f"file://{bucket}"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, env=env)
    with aoflite.open(str(src), readonly=True) as ro:
        held = every_record(ro)
        sealed_last = max(r.last_lsn for r in ro.manifest.segments() if r.state == "sealed")
    held = [r for r in held if r.lsn <= sealed_last]
    pointer = json.loads((bucket / "manifest" / "latest").read_text())
    assert pointer["last_lsn"] < sealed_last  # the snapshot trails the bucket
    dest = tmp_path / "restored"
    assert aoflite.restore(f"file://{bucket}", str(dest)) == sealed_last
    with aoflite.open(str(dest), readonly=True) as ro:
        assert every_record(ro) == held
        assert ro.verify() >= 2
        adopted = [e for e in ro.manifest.ledger() if e["type"] == "SegmentAdopted"]
        assert adopted


def _batch_ends(records: list[aoflite.Record]) -> list[int]:
    return [r.lsn for r in records if r.batch_end]


def test_point_in_time_by_lsn_keeps_whole_transactions(tmp_path, bucket):
    """as_of_lsn inside a transaction keeps the batches before it; the
    boundary segment is rewritten with the records up to the cut, byte
    for byte; the copy verifies and takes new appends."""
    counts: dict[str, int] = {}
    with writer(tmp_path / "s", bucket) as db:
        counts = fill(db, 3_000, counts)
        transactions(db, 1_500, counts)
        counts = fill(db, 3_000, counts)
        db.seal()
        db.drain_tiers(timeout=60)
        original = every_record(db)
    ends = _batch_ends(original)
    tx_lsns = [r.lsn for r in original if r.key == "t1"]
    for i, as_of in enumerate([tx_lsns[10], tx_lsns[700] + 1, 2_999, 3_000, original[-1].lsn + 50]):
        dest = tmp_path / f"pit{i}"
        want = max(e for e in ends if e <= as_of)
        assert aoflite.restore(f"file://{bucket}", str(dest), as_of_lsn=as_of) == want
        with aoflite.open(str(dest), readonly=True) as ro:
            assert every_record(ro) == [r for r in original if r.lsn <= want]
            assert ro.verify() >= 1
            assert ro.config.tier2.url is None or as_of > original[-1].lsn
    with aoflite.open(str(tmp_path / "pit0"), segment_bytes=SEG) as rw:
        off = rw.count("t0")
        assert rw.append("t0", b"branch") == off
        rw.seal()
        assert rw.read("t0", off).value == b"branch"
        rw.verify()
    assert aoflite.restore(f"file://{bucket}", str(tmp_path / "zero"), as_of_lsn=0) == 0
    with aoflite.open(str(tmp_path / "zero"), readonly=True) as ro:
        assert every_record(ro) == []


def test_point_in_time_by_time(tmp_path, bucket):
    """as_of_time_ms keeps the records up to the first one stamped after
    that time, at a whole batch."""
    base = time.time_ns() // 1_000_000 - 1_000_000
    with writer(tmp_path / "s", bucket) as db:
        for i in range(6_000):
            if i % 7 == 0:
                with db.transaction():
                    db.append("m", value("m", i), timestamp_ms=base + i)
                    db.append("m", value("m", i + 1), timestamp_ms=base + i + 1)
            db.append(f"k{i % 3}", value("k", i), timestamp_ms=base + i)
        db.seal()
        db.drain_tiers(timeout=60)
        original = every_record(db)
    at = base + 4_321
    first_after = next(r.lsn for r in original if r.timestamp_ms > at)
    want = max(e for e in _batch_ends(original) if e < first_after)
    assert aoflite.restore(f"file://{bucket}", str(tmp_path / "t"), as_of_time_ms=at) == want
    with aoflite.open(str(tmp_path / "t"), readonly=True) as ro:
        assert every_record(ro) == [r for r in original if r.lsn <= want]
        ro.verify()


def test_bad_inputs_raise_and_leave_nothing(tmp_path, bucket):
    url = f"file://{bucket}"
    dest = tmp_path / "d"
    with pytest.raises(aoflite.NotFound, match="no manifest snapshot"):
        aoflite.restore(url, str(dest))
    assert not dest.exists()
    with writer(tmp_path / "s", bucket) as db:
        fill(db, 3_000)
        db.drain_tiers(timeout=60)
    with pytest.raises(ValueError, match="scheme"):
        aoflite.restore("ftp://x/y", str(dest))
    with pytest.raises(TypeError):
        aoflite.restore(None, str(dest))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        aoflite.restore(url, str(dest), as_of_lsn=1, as_of_time_ms=1)
    with pytest.raises(ValueError, match="at least 0"):
        aoflite.restore(url, str(dest), as_of_lsn=-1)
    with pytest.raises(TypeError):
        aoflite.restore(url, str(dest), as_of_lsn="5")  # type: ignore[arg-type]
    with pytest.raises(aoflite.ConfigError):
        aoflite.restore(url, str(dest), no_such_setting=1)
    assert not dest.exists()
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(aoflite.FormatError, match="not an empty directory"):
        aoflite.restore(url, str(dest))
    assert os.listdir(dest) == ["keep.txt"]
    # a damaged snapshot object fails the restore and leaves nothing
    pointer = json.loads((bucket / "manifest" / "latest").read_text())
    snap = bucket / pointer["snapshot"]
    snap.write_bytes(snap.read_bytes()[:-10])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(aoflite.Tier2Error):
        aoflite.restore(url, str(empty))
    assert os.listdir(empty) == []
    with pytest.raises(aoflite.Tier2Error):
        aoflite.restore(url, str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_restore_against_s3(s3_server, tmp_path):
    """Snapshots, restore and reads through the S3 protocol server."""
    prefix = f"restore-{os.getpid()}-{time.monotonic_ns()}"
    opts = s3_server.settings(**FAST)
    url = f"s3://{s3_server.bucket}/{prefix}"
    with aoflite.open(
        str(tmp_path / "s"), segment_bytes=SEG, tier2_url=url, tier0_max_bytes=0, tier1_max_bytes=0, **opts
    ) as db:
        counts = fill(db, 8_000)
        db.seal()
        db.drain_tiers(timeout=60)
        original = every_record(db)
    names = {o.object_name for o in s3_server.client().list_objects(s3_server.bucket, prefix=prefix + "/", recursive=True)}
    assert f"{prefix}/manifest/latest" in names and f"{prefix}/writer" not in names
    shutil.rmtree(tmp_path / "s")  # the machine is gone: Tier 2 alone
    assert aoflite.restore(url, str(tmp_path / "r"), **opts) == original[-1].lsn
    with aoflite.open(str(tmp_path / "r"), readonly=True, **opts) as ro:
        assert every_record(ro) == original
        check_all(ro, counts)
        ro.verify()


def test_restore_keeps_what_retention_retired_retired(tmp_path, bucket):
    """A store whose oldest segments retention retired restores to the same
    view: retired offsets say so, kept ones read back, offsets go on."""
    with writer(tmp_path / "s", bucket, retention_max_segments=2) as db:
        counts = fill(db, 12_000)
        db.seal()
        db.drain_tiers(timeout=60)
        kept = every_record(db)
    assert kept[0].lsn > 1
    assert aoflite.restore(f"file://{bucket}", str(tmp_path / "r")) == kept[-1].lsn
    with aoflite.open(str(tmp_path / "r"), segment_bytes=SEG) as rw:
        assert every_record(rw) == kept
        with pytest.raises(aoflite.NotFound, match="retired by retention"):
            rw.read("k0", 0)
        assert rw.count("k0") == counts["k0"]
        assert rw.append("k0", b"on") == counts["k0"]
    cut = kept[len(kept) // 2].lsn
    assert aoflite.restore(f"file://{bucket}", str(tmp_path / "p"), as_of_lsn=cut) == cut
    with aoflite.open(str(tmp_path / "p"), segment_bytes=SEG) as rw:
        assert every_record(rw) == [r for r in kept if r.lsn <= cut]
        n = rw.count("k1")
        assert n == max(r.offset for r in kept if r.key == "k1" and r.lsn <= cut) + 1
        assert rw.append("k1", b"on") == n
