"""One writer per Tier 2 prefix: the lease refuses a second store, a
restored copy is another store, a crashed store takes its own lease back,
and a writer fenced out by a newer one stops uploading."""

from __future__ import annotations

import json
import os
import time

import pytest

import aoflite
from aoflite.tiers import fence
from aoflite.tiers.base import open_backend, segment_object_name
from test_restore import writer
from test_tiers import fill


def lease(bucket) -> dict:
    return json.loads((bucket / "writer").read_text())


def forge(bucket, **changes) -> None:
    """Write the lease as another process would."""
    fence.put_json(open_backend(f"file://{bucket}"), fence.LEASE_OBJECT, {**lease(bucket), **changes})


def test_second_writer_on_a_prefix_is_refused(tmp_path, bucket):
    import threading

    with writer(tmp_path / "a", bucket) as a:
        before = {t.name for t in threading.enumerate()}
        with pytest.raises(aoflite.LockedError):
            writer(tmp_path / "b", bucket)
        # the refused open left no writer, flusher or pipeline running
        assert {t.name for t in threading.enumerate()} - before == set()
        held = lease(bucket)
        assert held["epoch"] == 1 and held["path"] == a.path and held["pid"] == os.getpid()
        with pytest.raises(aoflite.LockedError, match="another store writes to this Tier 2 prefix") as e:
            writer(tmp_path / "b", bucket)
        assert a.path in str(e.value) and "epoch 1" in str(e.value)
        with aoflite.open(str(tmp_path / "a"), readonly=True) as ro:  # readers take no lease
            ro.keys()
    assert not (bucket / "writer").exists()  # given up at close
    with writer(tmp_path / "b", bucket):
        assert lease(bucket)["epoch"] == 1


def test_restored_copy_is_another_store(tmp_path, bucket):
    """Same store id, other path: refused while the original runs."""
    with writer(tmp_path / "a", bucket) as a:
        fill(a, 3_000)
        a.seal()
        a.drain_tiers(timeout=60)
        a.close()
        a = writer(tmp_path / "a", bucket)
        aoflite.restore(f"file://{bucket}", str(tmp_path / "copy"))
        with pytest.raises(aoflite.LockedError):
            aoflite.open(str(tmp_path / "copy"))  # its recorded tier2_url is the source's
        with aoflite.open(str(tmp_path / "copy"), readonly=True) as ro:
            assert ro.count("k0") == a.count("k0")


def test_stale_lease_and_own_crashed_lease_are_taken_over(tmp_path, bucket):
    with writer(tmp_path / "a", bucket):
        first = lease(bucket)
    backend = open_backend(f"file://{bucket}")
    # what a crash leaves: a fresh lease of this very store (same store id,
    # host and path) under another open's token
    fence.put_json(backend, fence.LEASE_OBJECT, {**first, "token": "crashed", "epoch": 5})
    with writer(tmp_path / "a", bucket):
        assert lease(bucket)["epoch"] == 6
    # another store's lease, not heartbeated for longer than the lease period
    stale = {**first, "path": "/elsewhere", "token": "gone", "epoch": 9,
             "heartbeat_ms": time.time_ns() // 1_000_000 - int(fence.LEASE_S * 1000) - 1000}
    fence.put_json(backend, fence.LEASE_OBJECT, stale)
    with writer(tmp_path / "b", bucket):
        assert lease(bucket)["epoch"] == 10


def test_fenced_writer_stops_uploading(tmp_path, bucket):
    """A newer writer's lease (a higher epoch) stops the old one: its next
    upload fails with reason "fenced", drain_tiers raises FencedError, it
    writes no object and leaves the newer lease alone."""
    with writer(tmp_path / "a", bucket, snapshot_every_seals=1) as a:
        counts = fill(a, 3_000)
        a.seal()
        a.drain_tiers(timeout=60)
        forge(bucket, token="newer", path="/new/owner", epoch=lease(bucket)["epoch"] + 1)
        fill(a, 3_000, counts)
        sid = a.seal()
        with pytest.raises(aoflite.FencedError, match="fenced out by a newer writer") as e:
            a.drain_tiers(timeout=60)
        assert isinstance(e.value, aoflite.LockedError)
        failed = [ev for ev in a.manifest.ledger() if ev["type"] == "UploadFailed"]
        assert failed and all(ev["reason"] == "fenced" for ev in failed)
        assert not (bucket / segment_object_name(sid)).exists()
        pointer = (bucket / "manifest" / "latest").read_bytes()
    assert lease(bucket)["token"] == "newer"  # not released, not overwritten
    assert (bucket / "manifest" / "latest").read_bytes() == pointer  # no snapshot at close either


def test_outage_at_open_defers_the_lease(tmp_path):
    """Tier 2 out at open: the store opens and appends (an outage never
    stops appends); the lease is taken before the first upload."""
    missing = tmp_path / "nas"
    with writer(tmp_path / "a", missing) as a:
        counts = fill(a, 3_000)
        a.seal()
        missing.mkdir()
        a.drain_tiers(timeout=60)
        assert lease(missing)["epoch"] == 1
        assert a.read("k0", counts["k0"] - 1)


def test_lease_is_heartbeated_while_idle_and_expires_when_not(tmp_path, bucket, monkeypatch):
    """An idle writer keeps its lease fresh; once it stops heartbeating (a
    frozen process, here a dropped lease thread) another store may take the
    prefix after the lease period, and the old one is fenced."""
    monkeypatch.setattr(fence, "LEASE_S", 0.6)
    with writer(tmp_path / "a", bucket) as a:
        first = lease(bucket)["heartbeat_ms"]
        time.sleep(0.8)
        assert lease(bucket)["heartbeat_ms"] > first  # heartbeated with nothing to upload
        with pytest.raises(aoflite.LockedError):
            writer(tmp_path / "b", bucket)
        steward = a._coordinator.on_stopped.__self__
        steward._stop.set()  # frozen: no more heartbeats
        steward._thread.join()
        time.sleep(0.8)
        with writer(tmp_path / "b", bucket) as b:
            assert lease(bucket)["epoch"] == 2 and lease(bucket)["path"] == b.path
            fill(a, 3_000)
            a.seal()
            with pytest.raises(aoflite.FencedError):
                a.drain_tiers(timeout=60)
