"""Read replicas straight from a Tier 2 bucket: aoflite.open_replica reads
everything back from its own cache directory, follows newer snapshots with
refresh(), and keeps its cache within its budget."""

from __future__ import annotations

import os
import time

import pytest

import aoflite
from test_restore import every_record, writer
from test_tiers import FAST, SEG, check_all, fill


def cache_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs if f.endswith((".seg", ".zst")))


def test_replica_reads_everything_and_follows_new_snapshots(tmp_path, bucket):
    """A replica on a second cache directory reads every record back
    byte-identical; once the writer seals, uploads and snapshots more, a
    refresh() shows it, and a refresh with nothing new changes nothing."""
    url = f"file://{bucket}"
    with writer(tmp_path / "s", bucket, snapshot_every_seals=1) as db:
        counts = fill(db, 8_000)
        db.seal()
        db.drain_tiers(timeout=60)
        with aoflite.open_replica(url, str(tmp_path / "cache")) as rep:
            check_all(rep, counts)
            assert rep.verify() >= 2
            with pytest.raises(aoflite.ReadOnlyError):
                rep.store.append("k0", b"no")
            seen = rep.snapshot
            assert rep.refresh() is False
            counts = fill(db, 5_000, counts)
            db.seal()
            db.drain_tiers(timeout=60)
            assert rep.refresh() is True and rep.snapshot != seen
            check_all(rep, counts)
            assert every_record(rep) == every_record(db)
            assert rep.stats()["snapshot"] == rep.snapshot


def test_replica_reuses_its_cache_and_refuses_a_foreign_one(tmp_path, bucket):
    url = f"file://{bucket}"
    with writer(tmp_path / "s", bucket) as db:
        counts = fill(db, 4_000)
        db.seal()
        db.drain_tiers(timeout=60)
    cache = tmp_path / "cache"
    with aoflite.open_replica(url, str(cache)) as rep:
        first = rep.store.path
        check_all(rep, counts)
    with aoflite.open_replica(url, str(cache)) as rep:
        assert rep.store.path == first  # the same snapshot: nothing restored again
        check_all(rep, counts)
    other = tmp_path / "other-bucket"
    other.mkdir()
    with pytest.raises(aoflite.FormatError, match="replica cache of"):
        aoflite.open_replica(f"file://{other}", str(cache))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(aoflite.FormatError):
        aoflite.open_replica(url, str(tmp_path / "junk"))
    with pytest.raises(aoflite.NotFound, match="no manifest snapshot"):
        aoflite.open_replica(f"file://{other}", str(tmp_path / "fresh"))
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(ValueError, match="scheme"):
        aoflite.open_replica("ftp://x/y", str(tmp_path / "fresh"))
    with pytest.raises(TypeError):
        aoflite.open_replica(url, None)  # type: ignore[arg-type]
    assert not (tmp_path / "fresh").exists()


def test_replica_keeps_its_cache_within_budget(tmp_path, bucket):
    """tier0_max_bytes bounds what the replica's reads hydrate: least
    recently used files go, and reading them again fetches them again."""
    url = f"file://{bucket}"
    with writer(tmp_path / "s", bucket) as db:
        counts = fill(db, 12_000)
        db.seal()
        db.drain_tiers(timeout=60)
    budget = 1 << 20
    with aoflite.open_replica(url, str(tmp_path / "cache"), tier0_max_bytes=budget, open_segments=1) as rep:
        peak = 0
        for k, n in counts.items():
            for off in range(0, n, 97):
                rep.read(k, off)
                peak = max(peak, cache_bytes(rep.store.path))
        # at most the budget, plus the segment a read has just opened and its Tier 1 copy
        assert peak <= budget + 2 * (1 << 20) + (1 << 20)
        assert cache_bytes(rep.store.path) <= budget + 2 * (1 << 20)
        check_all(rep, counts)


def test_replica_against_s3(s3_server, tmp_path):
    """A replica served from the S3 protocol server follows its writer."""
    prefix = f"replica-{os.getpid()}-{time.monotonic_ns()}"
    opts = s3_server.settings(**FAST)
    url = f"s3://{s3_server.bucket}/{prefix}"
    with aoflite.open(
        str(tmp_path / "s"), segment_bytes=SEG, tier2_url=url, tier0_max_bytes=0, tier1_max_bytes=0,
        snapshot_every_seals=1, **opts,
    ) as db:
        counts = fill(db, 5_000)
        db.seal()
        db.drain_tiers(timeout=60)
        with aoflite.open_replica(url, str(tmp_path / "cache"), **opts) as rep:
            check_all(rep, counts)
            counts = fill(db, 3_000, counts)
            db.seal()
            db.drain_tiers(timeout=60)
            assert rep.refresh() is True
            check_all(rep, counts)
