"""The tier pipeline: sealed segments compress into Tier 1, upload to Tier 2
and leave local disk under budgets; reads hydrate them back; outages turn
into admission backpressure and then catch up; nothing acknowledged is lost
and no wrong byte is ever returned."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import pytest

import aoflite
from aoflite import layout
from aoflite.tiers.base import segment_object_name

SEG = 1 << 20
# retries that give up quickly, so an outage shows within a test's patience
FAST = {"tier2_retry_max_attempts": 1, "tier2_retry_base_delay_ms": 5, "tier2_retry_max_delay_ms": 20}


def value(key: str, offset: int) -> bytes:
    """Deterministic, poorly compressible bytes (so segments fill)."""
    return hashlib.shake_128(f"{key}/{offset}".encode()).digest(300 + offset % 200)


def fill_until_refused(db, limit: int) -> tuple[dict[str, int], aoflite.BackpressureError | None]:
    """Append (as fill does) until an append is refused for backpressure,
    at most limit records; returns the counts appended and the refusal."""
    counts: dict[str, int] = {}
    for i in range(limit):
        k = f"k{i % 5}"
        off = counts.get(k, 0)
        try:
            db.append(k, value(k, off))
        except aoflite.BackpressureError as e:
            return counts, e
        counts[k] = off + 1
    return counts, None


def fill(db, n: int, counts: dict[str, int] | None = None) -> dict[str, int]:
    """Append n records over five keys, after counts (each key's records
    so far); returns the new counts."""
    counts = dict(counts or {})
    for i in range(n):
        k = f"k{i % 5}"
        off = counts.get(k, 0)
        assert db.append(k, value(k, off)) == off
        counts[k] = off + 1
    return counts


def check_all(db, counts: dict[str, int]) -> None:
    """Every record reads back byte-identical, by key and store-wide."""
    for k, n in counts.items():
        got = [r.value for r in db.scan(k)]
        assert got == [value(k, i) for i in range(n)], k
    assert sum(1 for _ in db.scan_all()) == sum(counts.values())


@pytest.fixture
def tier2(tmp_path):
    d = tmp_path / "bucket"
    d.mkdir()
    return d


def tiered(path, tier2_dir, **more):
    settings = {"segment_bytes": SEG, "tier2_url": f"file://{tier2_dir}", "tier0_max_bytes": 0, "tier1_max_bytes": 0}
    settings.update(more)
    return aoflite.open(str(path), **settings)


def events(db, kind: str, segment: int | None = None) -> list[dict]:
    return [e for e in db.manifest.ledger() if e["type"] == kind and (segment is None or e.get("segment") == segment)]


def test_pipeline_moves_every_sealed_segment_down_and_reads_back(tmp_path, tier2):
    """Budgets of 0: once drained, every sealed segment lives only in Tier 2
    (confirmed size and checksum); each step is in the ledger in order, and
    every record reads back byte-identical, through hydration."""
    with tiered(tmp_path / "s", tier2) as db:
        counts = fill(db, 12_000)
        db.drain_tiers(timeout=60)
        res = db.residency()
        assert len(res) >= 3
        for r in res:
            assert set(r.tiers) == {"t2"}, r
            assert (tier2 / segment_object_name(r.segment_id)).stat().st_size == r.tiers["t2"]
            assert not os.path.exists(layout.segment_path(db.path, r.segment_id))
            order = [
                e["type"] + e.get("tier", "")
                for e in db.manifest.ledger()
                if e.get("segment") == r.segment_id
                and e["type"] in ("SealSegment", "CompressionDone", "UploadDone", "LocalEvicted")
            ]
            assert order[:2] == ["SealSegment", "CompressionDone"], order
            # Tier 0 may go once Tier 1 holds the segment; Tier 1 only once Tier 2 does
            assert order.index("UploadDone") < order.index("LocalEvictedt1"), order
            assert "LocalEvictedt0" in order, order
        stats = db.stats()
        assert stats["tier_segments"] == {"t0": 1, "t1": 0, "t2": len(res)}  # t0: the active segment
        assert stats["tier2_lag"]["records"] == 0
        check_all(db, counts)
        assert db.verify() == len(res)
    with aoflite.open(str(tmp_path / "s")) as db:  # the recorded Tier 2 URL
        assert db.config.tier2.url == f"file://{tier2}"
        check_all(db, counts)


def test_without_tier2_sealed_segments_stay_in_tier1(tmp_path):
    """No Tier 2: Tier 0 empties into Tier 1, and Tier 1 is never evicted
    (it holds the only copy) whatever its budget."""
    with aoflite.open(str(tmp_path / "s"), segment_bytes=SEG, tier0_max_bytes=0, tier1_max_bytes=0) as db:
        counts = fill(db, 8_000)
        db.drain_tiers(timeout=60)
        res = db.residency()
        assert res and all(set(r.tiers) == {"t1"} for r in res), res
        check_all(db, counts)
        assert not events(db, "UploadStarted")


def test_budget_keeps_tier0_within_bounds(tmp_path, tier2):
    """A budget of about two segments keeps Tier 0's sealed files within it
    once drained, evicting the least recently used."""
    budget = 2 * SEG + SEG // 2
    with tiered(tmp_path / "s", tier2, tier0_max_bytes=budget, tier1_max_bytes=None) as db:
        counts = fill(db, 20_000)
        db.drain_tiers(timeout=60)
        t0 = sum(r.tiers.get("t0", 0) for r in db.residency())
        assert 0 < t0 <= budget
        assert all("t2" in r.tiers and "t1" in r.tiers for r in db.residency())
        check_all(db, counts)


def test_outage_backpressure_then_catch_up(tmp_path):
    """Tier 2 unreachable (its directory is gone): appends go on until the
    local budgets are full, then raise BackpressureError(kind="admission");
    everything acknowledged stays readable; once Tier 2 is back, the
    backlog uploads by itself and appends resume."""
    bucket = tmp_path / "nas"  # not mounted yet
    db = tiered(tmp_path / "s", bucket, admission_timeout_ms=2_000, **FAST)
    try:
        counts, refused = fill_until_refused(db, 200_000)  # bounded: budgets of 0 fill in a few segments
        assert refused is not None and refused.kind == "admission"
        assert "tier0_max_bytes" in str(refused) or "tier1_max_bytes" in str(refused)
        assert "safe" in str(refused)
        check_all(db, counts)
        # a failed append leaves the store usable: appends inside the segment still work after the refusal
        with pytest.raises(aoflite.BackpressureError):
            for _ in range(10_000):
                k = "k0"
                db.append(k, value(k, counts[k]))
                counts[k] += 1
        assert events(db, "UploadFailed")
        bucket.mkdir()  # Tier 2 is back
        db.drain_tiers(timeout=60)
        more = fill(db, 3_000, counts)
        db.drain_tiers(timeout=60)
        assert all(set(r.tiers) == {"t2"} for r in db.residency())
        check_all(db, more)
    finally:
        db.close()


def test_nonblocking_read_raises_then_the_fetch_completes(tmp_path, tier2):
    """read(nonblocking=True) of an evicted segment raises
    BackpressureError(kind="hydration") at once and fetches it behind; the
    record is then there to read. A blocking read just waits."""
    with tiered(tmp_path / "s", tier2) as db:
        counts = fill(db, 6_000)
        db.drain_tiers(timeout=60)
        with pytest.raises(aoflite.BackpressureError) as info:
            db.read("k1", 0, nonblocking=True)
        assert info.value.kind == "hydration" and "segment" in str(info.value)
        deadline = time.monotonic() + 30
        while True:
            try:
                rec = db.read("k1", 0, nonblocking=True)
                break
            except aoflite.BackpressureError:
                assert time.monotonic() < deadline, "the background fetch never completed"
                time.sleep(0.01)
        assert rec.value == value("k1", 0)
        with pytest.raises(aoflite.BackpressureError):
            list(db.scan("k2", 0, nonblocking=True))
        assert [r.value for r in db.scan("k2")] == [value("k2", i) for i in range(counts["k2"])]


def test_concurrent_readers_share_one_fetch(tmp_path, tier2):
    """Eight threads scanning one evicted segment at once cause one fetch."""
    with tiered(tmp_path / "s", tier2) as db:
        fill(db, 6_000)
        db.drain_tiers(timeout=60)
        sid = db.residency()[0].segment_id
        barrier = threading.Barrier(8)
        got: list[bytes] = []

        def reader():
            barrier.wait()
            got.append(next(db.scan("k0")).value)  # a scan hydrates the whole segment

        threads = [threading.Thread(target=reader) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == [value("k0", 0)] * 8
        assert len(events(db, "HydrationStarted", sid)) == 1


def test_prefetch_hydrates_ahead_of_a_scan(tmp_path, tier2):
    """prefetch() starts the fetches of a key range's evicted segments."""
    with tiered(tmp_path / "s", tier2) as db:
        counts = fill(db, 8_000)
        db.drain_tiers(timeout=60)
        started = db.prefetch("k3")
        assert started == len(db.residency())
        deadline = time.monotonic() + 30
        while len(events(db, "HydrationDone")) < started:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert [r.value for r in db.scan("k3")] == [value("k3", i) for i in range(counts["k3"])]
        assert db.prefetch("no-such-key") == 0


def test_reader_in_another_process_hydrates_without_writing(tmp_path, tier2):
    """A read-only handle in another process reads every tier: it hydrates
    into the store with atomic renames and writes nothing to the manifest."""
    with tiered(tmp_path / "s", tier2) as db:
        counts = fill(db, 6_000)
        db.drain_tiers(timeout=60)
        code = (
            "import aoflite, sys, hashlib\n"
            f"db = aoflite.open({str(tmp_path / 's')!r}, readonly=True)\n"
            "n = 0\n"
            "for k in db.keys():\n"
            "    for r in db.scan(k):\n"
            "        assert r.value == hashlib.shake_128(f'{k}/{r.offset}'.encode()).digest(300 + r.offset % 200)\n"
            "        n += 1\n"
            "print(n)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert int(out.stdout) == sum(counts.values())
        assert not events(db, "HydrationStarted"), "a read-only handle wrote the manifest"
        check_all(db, counts)


def test_damaged_tier1_copy_is_fetched_again(tmp_path, tier2):
    """A Tier 1 file that fails its checksums is dropped and fetched again
    from Tier 2; the read returns the right bytes."""
    with tiered(tmp_path / "s", tier2, tier1_max_bytes=None) as db:
        counts = fill(db, 6_000)
        db.drain_tiers(timeout=60)
        sid = db.residency()[0].segment_id
        t1 = layout.tier1_path(db.path, sid)
        with open(t1, "r+b") as f:
            f.seek(os.path.getsize(t1) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        check_all(db, counts)
        assert events(db, "HydrationDone", sid)


def test_damaged_tier2_object_never_returns_wrong_bytes(tmp_path, tier2):
    """A damaged object in Tier 2 (and no local copy): the read raises an
    aoflite error naming the segment, never returns wrong bytes; the rest
    of the store goes on working."""
    with tiered(tmp_path / "s", tier2, **FAST) as db:
        counts = fill(db, 6_000)
        db.drain_tiers(timeout=60)
        sid = db.residency()[0].segment_id
        obj = tier2 / segment_object_name(sid)
        data = bytearray(obj.read_bytes())
        data[len(data) // 2] ^= 0xFF
        obj.write_bytes(bytes(data))
        for reading in (lambda: db.read("k0", 0), lambda: list(db.scan("k0", 0, 10))):  # ranged, then whole
            with pytest.raises(aoflite.Error) as info:
                reading()
            assert "segment" in str(info.value) or segment_object_name(sid) in str(info.value)
        assert events(db, "HydrationFailed", sid)
        last = counts["k0"] - 1
        assert db.read("k0", last).value == value("k0", last)  # the active segment
        db.append("k0", value("k0", counts["k0"]))


def test_segment_missing_everywhere_is_corruption(tmp_path, tier2):
    """A sealed segment whose object was deleted behind the store's back."""
    with tiered(tmp_path / "s", tier2, **FAST) as db:
        fill(db, 6_000)
        db.drain_tiers(timeout=60)
        sid = db.residency()[0].segment_id
        (tier2 / segment_object_name(sid)).unlink()
        with pytest.raises(aoflite.Error) as info:
            db.read("k0", 0)
        assert isinstance(info.value, (aoflite.CorruptionError, aoflite.Tier2Error))


def test_drain_raises_a_step_that_keeps_failing(tmp_path):
    """drain_tiers raises the pipeline's error once a step keeps failing,
    and TimeoutError when its time runs out first."""
    with tiered(tmp_path / "s", tmp_path / "missing", admission_timeout_ms=100, **FAST) as db:
        for i in range(4_000):
            try:
                db.append("k", value("k", i))
            except aoflite.BackpressureError:
                break
        with pytest.raises(aoflite.Tier2Error) as info:
            db.drain_tiers(timeout=60)
        assert info.value.reason == "no_bucket"
    slow = {**FAST, "tier2_retry_base_delay_ms": 60_000, "tier2_retry_max_delay_ms": 60_000}
    with tiered(tmp_path / "s2", tmp_path / "missing", **slow) as db:
        fill(db, 4_000)
        db.seal()
        with pytest.raises(TimeoutError):
            db.drain_tiers(timeout=0.2)


def test_seal_interval_bounds_how_far_tier2_trails(tmp_path, tier2):
    """seal_interval_s seals a quiet active segment once its oldest record
    is that old, so Tier 2 catches up without more appends."""
    with tiered(tmp_path / "s", tier2, seal_interval_s=1) as db:
        db.append("k", b"lonely record")
        deadline = time.monotonic() + 30
        while not db.residency():
            assert time.monotonic() < deadline, "the active segment was never sealed"
            time.sleep(0.05)
        db.drain_tiers(timeout=30)
        assert db.stats()["tier2_lag"] == {"records": 0, "bytes": 0, "seconds": 0.0}
        assert db.read("k", 0).value == b"lonely record"


def test_tiering_is_off_by_default(tmp_path):
    """A store without tier settings moves nothing and writes no tier1/."""
    with aoflite.open(str(tmp_path / "s"), segment_bytes=SEG) as db:
        fill(db, 6_000)
        db.drain_tiers(timeout=1)
        assert all(set(r.tiers) == {"t0"} for r in db.residency())
        assert not os.path.exists(layout.tier1_dir(db.path))


def test_bad_tier_inputs(tmp_path, tier2):
    """Bad arguments and settings get clear errors and leave the store usable."""
    with pytest.raises(aoflite.ConfigError, match="tier2_url"):
        aoflite.open(str(tmp_path / "a"), tier2_url="ftp://host/x")
    with pytest.raises(aoflite.ConfigError, match="tier0_max_bytes"):
        aoflite.open(str(tmp_path / "a"), tier0_max_bytes=-1)
    with tiered(tmp_path / "s", tier2) as db:
        fill(db, 100)
        with pytest.raises(ValueError):
            db.drain_tiers(timeout=-1)
        with pytest.raises(TypeError):
            db.read("k0", 0, nonblocking="yes")
        with pytest.raises(TypeError):
            db.scan("k0", nonblocking=1)
        with pytest.raises((TypeError, ValueError)):
            db.prefetch("", 0)
        with pytest.raises((TypeError, ValueError)):
            db.prefetch("k0", -1)
        assert db.read("k0", 0).value == value("k0", 0)
    with aoflite.open(str(tmp_path / "s"), readonly=True) as ro:
        with pytest.raises(aoflite.ReadOnlyError):
            ro.drain_tiers()
        assert ro.residency() == [] or all(isinstance(r.tiers, dict) for r in ro.residency())


def test_pipeline_against_s3(s3_server, tmp_path):
    """The same pipeline against the S3 protocol server (moto on loopback,
    or a real MinIO named by AOFLITE_TEST_S3_ENDPOINT)."""
    prefix = f"tiers-{os.getpid()}-{time.monotonic_ns()}"
    opts = {
        "segment_bytes": SEG,
        "tier2_url": f"s3://{s3_server.bucket}/{prefix}",
        "tier2_endpoint": s3_server.endpoint,
        "tier2_access_key": s3_server.access_key,
        "tier2_secret_key": s3_server.secret_key,
        "tier0_max_bytes": 0,
        "tier1_max_bytes": 0,
        **FAST,
    }
    with aoflite.open(str(tmp_path / "s"), **opts) as db:
        counts = fill(db, 8_000)
        db.drain_tiers(timeout=60)
        res = db.residency()
        assert res and all(set(r.tiers) == {"t2"} for r in res)
        names = {o.object_name for o in s3_server.client().list_objects(s3_server.bucket, prefix=prefix + "/", recursive=True)}
        assert {f"{prefix}/{segment_object_name(r.segment_id)}" for r in res} <= names
        check_all(db, counts)


def test_backup_of_a_tiered_store_is_self_contained(tmp_path, tier2):
    """backup() of a store whose sealed segments live only in Tier 2 takes
    them into the copy's Tier 1: the copy reads everything with no Tier 2,
    keeps no Tier 2 URL, and verifies."""
    with tiered(tmp_path / "s", tier2) as db:
        counts = fill(db, 8_000)
        db.drain_tiers(timeout=60)
        assert all(set(r.tiers) == {"t2"} for r in db.residency())
        upto = db.backup(str(tmp_path / "copy"))
    with aoflite.open(str(tmp_path / "copy")) as copy:
        assert copy.config.tier2.url is None
        assert all(set(r.tiers) == {"t1"} for r in copy.residency())
        check_all(copy, counts)
        assert max(r.lsn for r in copy.scan_all()) == upto
        assert copy.verify() == len(copy.residency())


class CountingBackend:
    """Wraps a backend, counting requests and bytes by kind."""

    def __init__(self, inner):
        self.inner = inner
        self.url = inner.url
        self.calls: dict[str, int] = {}
        self.bytes = 0

    def __getattr__(self, name):
        fn = getattr(self.inner, name)

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            out = fn(*args, **kwargs)
            if name == "get_range":
                self.bytes += len(out)
            elif name == "get":
                self.bytes += out.size
            return out

        return counted


def test_cold_point_read_fetches_frames_not_the_segment(tmp_path, tier2):
    """A point read of a segment only Tier 2 holds uses a few ranged
    requests of single frames and no whole-object download; the record is
    byte-identical, and a damaged object raises CorruptionError."""
    from aoflite.coldread import ColdReads

    with tiered(tmp_path / "s", tier2, tier1_frame_bytes=256 << 10) as db:
        counts = fill(db, 12_000)
        db.drain_tiers(timeout=60)
        counting = CountingBackend(aoflite.coordinator.open_tier2(db.config))
        db._reads.cold = ColdReads(db.path, db.manifest, counting)
        sid = db.residency()[1].segment_id
        for k in counts:
            rec = db.read(k, counts[k] // 3)
            assert rec.value == value(k, counts[k] // 3)
        assert "get" not in counting.calls, "a point read downloaded a whole object"
        seg_bytes = sum(r.tiers["t2"] for r in db.residency())
        assert counting.bytes < seg_bytes / 5
        assert not events(db, "HydrationStarted")
        # every record of one segment, found from the manifest (no hydration)
        inside = []
        for k in counts:
            kid = db.manifest.lookup_key(k)[0]
            for last, seg, first_off, n in db.manifest.key_ranges(kid):
                if seg == sid:
                    inside += [(k, o) for o in range(first_off, first_off + n)]
        db._reads.cold = ColdReads(db.path, db.manifest, counting)  # cold caches again
        before = counting.calls.get("get_range", 0)
        k, o = inside[len(inside) // 2]
        assert db.read(k, o).value == value(k, o)
        assert counting.calls["get_range"] - before <= 5, "seek table, footer, index, record"
        # damaged: flip a byte inside a frame of that segment's object
        obj = tier2 / segment_object_name(sid)
        data = bytearray(obj.read_bytes())
        data[len(data) // 3] ^= 0x55
        obj.write_bytes(bytes(data))
        db._reads.cold = ColdReads(db.path, db.manifest, counting)
        wrong = 0
        for k, o in inside[::7]:
            try:
                assert db.read(k, o).value == value(k, o)
            except aoflite.CorruptionError as e:
                assert segment_object_name(sid) in str(e)
                wrong += 1
        assert not os.path.exists(layout.segment_path(db.path, sid)), "the reads hydrated the segment"
        assert wrong, "no read touched the damaged frame"


def test_pipeline_events_reach_the_metrics(tmp_path):
    """Retries, backpressure, hydrations and Tier 2 requests are counted in
    the handle's metrics (and so reach health and the alert rules)."""
    bucket = tmp_path / "later"
    with tiered(tmp_path / "s", bucket, admission_timeout_ms=100, **{**FAST, "tier2_retry_max_attempts": 2}) as db:
        with pytest.raises(aoflite.BackpressureError):
            fill(db, 50_000)
        m = db.metrics
        deadline = time.monotonic() + 30
        while m.count("upload_retries") < 1:  # the pipeline tries the upload again and again
            assert time.monotonic() < deadline, "no upload failure was counted"
            time.sleep(0.01)
        bucket.mkdir()
        db.drain_tiers(timeout=60)
        list(db.scan("k0"))  # hydrates
        text = m.exposition().decode()
        assert 'aoflite_backpressure_events_total{kind="admission"' in text
        assert "aoflite_hydration_latency_seconds_count" in text
        assert 'aoflite_tier2_requests_total{op="put"' in text


def s3_settings(s3_server, endpoint: str, prefix: str) -> dict:
    return {
        "tier2_url": f"s3://{s3_server.bucket}/{prefix}",
        "tier2_endpoint": endpoint,
        "tier2_access_key": s3_server.access_key,
        "tier2_secret_key": s3_server.secret_key,
    }


def test_s3_outage_through_a_faulty_network_then_catch_up(s3_server, tmp_path):
    """Through a proxy that answers 503 and resets connections: appends go
    on, then admission backpressure at the budget; once the faults stop, the
    backlog uploads by itself and every record reads back, through the
    same proxy that now also truncates one download (refetched)."""
    import urllib.parse

    from faultproxy import FaultProxy

    parts = urllib.parse.urlsplit(s3_server.endpoint)
    if parts.scheme != "http":
        pytest.skip("the fault proxy speaks plain HTTP only")
    with FaultProxy((parts.hostname, parts.port), io_timeout=5.0) as proxy:
        opts = {
            **s3_settings(s3_server, proxy.endpoint, f"outage-{time.monotonic_ns()}"),
            "segment_bytes": SEG, "tier0_max_bytes": 0, "tier1_max_bytes": 2 * SEG,
            "admission_timeout_ms": 300, **FAST, "tier2_retry_max_attempts": 3,  # the truncated GET is retried
        }
        with aoflite.open(str(tmp_path / "s"), **opts) as db:
            proxy.inject("error", times=10_000, method="PUT")  # the store answers 503 to every upload
            proxy.inject("reset", times=10_000, method="HEAD")
            counts, refused = fill_until_refused(db, 100_000)  # bounded: the budget fills in a few segments
            assert refused is not None and refused.kind == "admission" and "tier1_max_bytes" in str(refused)
            check_all(db, counts)
            reasons = {e["reason"] for e in events(db, "UploadFailed")}
            assert reasons & {"throttled", "unavailable", "network"}, reasons
            proxy.clear()  # the network heals
            db.drain_tiers(timeout=120)
            counts = fill(db, 2_000, counts)
            db.drain_tiers(timeout=120)
            proxy.inject("truncate", times=1, method="GET")
            for r in db.residency():
                assert "t2" in r.tiers
            check_all(db, counts)


def test_bucket_that_disappears(s3_server, tmp_path):
    """The bucket is deleted under a running store: uploads fail with the
    fatal reason no_bucket (not retried), drain_tiers raises it, appends go
    on until the local budget is full, and nothing appended is lost."""
    from minio import Minio

    bucket = f"vanishing-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    client = s3_server.client()
    client.make_bucket(bucket)
    opts = {
        **s3_settings(s3_server, s3_server.endpoint, "app"), "tier2_url": f"s3://{bucket}/app",
        "segment_bytes": SEG, "tier0_max_bytes": 0, "tier1_max_bytes": 4 * SEG, "admission_timeout_ms": 300,
        **FAST,
    }
    with aoflite.open(str(tmp_path / "s"), **opts) as db:
        counts = fill(db, 3_000)
        db.drain_tiers(timeout=60)
        for obj in client.list_objects(bucket, recursive=True):
            client.remove_object(bucket, obj.object_name)
        client.remove_bucket(bucket)
        counts = fill(db, 5_000, counts)
        with pytest.raises(aoflite.Tier2Error) as info:
            db.drain_tiers(timeout=60)
        assert info.value.reason == "no_bucket" and not info.value.retryable
        assert isinstance(client, Minio)
        for k, n in counts.items():  # what is local reads back; what was only in the bucket is reported
            for off in range(n - 1, max(-1, n - 200), -1):
                assert db.read(k, off).value == value(k, off)


def test_torn_cache_copy_is_fetched_again(tmp_path, tier2):
    """A hydrated file is a cache copy, never synced: a crash may tear it.
    Before first use in a process its bytes are checked against the CRC its
    footer records; a damaged one is deleted and hydrated anew."""
    with tiered(tmp_path / "s", tier2, tier0_max_bytes=None) as db:
        counts = fill(db, 6_000)
        db.seal()
    with tiered(tmp_path / "s", tier2) as db:  # budgets of 0 now: every sealed segment leaves
        db.drain_tiers(timeout=60)
    with tiered(tmp_path / "s", tier2, tier0_max_bytes=None) as db:
        sid = db.residency()[0].segment_id
        list(db.scan("k0", 0, 3))  # hydrates segment sid into a cache copy
        path = layout.segment_path(db.path, sid)
        assert os.path.exists(path)
    with open(path, "r+b") as f:  # what a crash before writeback could leave
        f.seek(4096)
        f.write(b"\0" * 512)
    with tiered(tmp_path / "s", tier2, tier0_max_bytes=None) as db:
        check_all(db, counts)
        assert len(events(db, "HydrationDone", sid)) == 2, "the torn copy was not fetched again"


def test_idle_pipeline_sleeps(tmp_path, tier2):
    """With nothing to move, the pipeline's workers sleep: a few passes a
    second, not a spin (two workers once woke each other after every pass
    and took the appender's CPU)."""
    with tiered(tmp_path / "s", tier2) as db:
        fill(db, 100)
        db.drain_tiers(timeout=30)
        before = db._coordinator._passes
        time.sleep(1.0)
        assert db._coordinator._passes - before <= 8
