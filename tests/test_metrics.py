"""Metrics: every declared metric is exported, scraped values come from
stats(), events count, several stores share a registry, the exporter serves."""

from __future__ import annotations

import logging
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import aoflite
from aoflite.metrics import METRICS, StoreMetrics


def families(text: bytes) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_every_declared_metric_is_exported(db):
    db.append("k", b"v")
    found = families(db.metrics.exposition())
    for name, (kind, _, _) in METRICS.items():
        want = name + "_bucket" if kind == "histogram" else name
        if name.startswith("aoflite_tier2_request"):
            continue  # no sample until the first Tier 2 request
        assert want in found, name
    db.metrics.tier2_request("put", 1000)
    found = families(db.metrics.exposition())
    assert found["aoflite_tier2_request_bytes_total"][(("op", "put"), ("store", db.path))] == 1000


def test_scrape_reads_stats(db):
    db.append_many("k", [b"a" * 100, b"b" * 100])
    db.commit()
    found = families(db.metrics.exposition())
    me = (("store", db.path),)
    assert found["aoflite_appended_records_total"][me] == 2
    assert found["aoflite_appended_bytes_total"][me] == db.stats()["data_bytes"]
    assert found["aoflite_segments"][(("store", db.path), ("tier", "t0"))] == 1
    assert found["aoflite_manifest_replay_version"][me] == db.manifest.ledger_seq()
    assert found["aoflite_up"][me] == 1


def test_tier_pipeline_stats_keys_are_read():
    stats = {
        "last_lsn": 7, "data_bytes": 10, "tier_bytes": {"t0": 1, "t1": 2, "t2": 3},
        "tier_segments": {"t0": 4, "t1": 5, "t2": 6}, "queues": {"activation": 2, "upload": 9},
        "tier2_lag": {"records": 11, "bytes": 12, "seconds": 13.5},
    }
    m = StoreMetrics("/s", lambda: stats)
    found = families(m.exposition())
    s = ("store", "/s")
    assert found["aoflite_tier_bytes"][(s, ("tier", "t2"))] == 3
    assert found["aoflite_segments"][(s, ("tier", "t1"))] == 5
    assert found["aoflite_queue_depth"][(("queue", "upload"), s)] == 9
    assert found["aoflite_queue_depth"][(("queue", "hydration"), s)] == 0
    assert found["aoflite_activation_queue_depth"][(s,)] == 2
    assert found["aoflite_tier2_lag_seconds"][(s,)] == 13.5


def test_events_count_and_log(db, caplog):
    m = db.metrics
    with caplog.at_level(logging.INFO, logger="aoflite"):
        m.flush_failed("EIO")
        m.metadata_failed("MDB_MAP_FULL", segment=3)
        m.upload_retry(segment=4, attempt=2, error="timeout")
        m.tier2_fetch_failed(segment=5, key="k", error="network")
        m.hydration_done(2.5, segment=5, tier="t2")
        m.hydration_done(0.01, segment=6, tier="t1")
        m.flush_done(0.002)
        m.backpressure("admission")
    found = families(m.exposition())
    me = (("store", db.path),)
    for name in ("aoflite_flush_failures_total", "aoflite_metadata_failures_total",
                 "aoflite_upload_retry_attempts_total", "aoflite_tier2_fetch_failed_total"):
        assert found[name][me] == 1, name
    assert found["aoflite_hydration_latency_seconds_count"][me] == 2
    assert found["aoflite_hydration_latency_seconds_bucket"][(("le", "2.0"), ("store", db.path))] == 1
    assert found["aoflite_hydration_latency_seconds_bucket"][(("le", "2.5"), ("store", db.path))] == 2
    assert found["aoflite_flush_latency_seconds_sum"][me] == pytest.approx(0.002)
    assert found["aoflite_backpressure_events_total"][(("kind", "admission"), ("store", db.path))] == 1
    assert found["aoflite_backpressure_events_total"][(("kind", "tail"), ("store", db.path))] == 0
    events = [r.event for r in caplog.records]
    assert events == ["flush_failed", "metadata_failed", "upload_retry", "tier2_fetch_failed",
                      "hydration_done", "hydration_done", "backpressure"]
    with pytest.raises(ValueError):
        m.backpressure("nonsense")


def test_stores_share_an_application_registry(tmp_path):
    registry = CollectorRegistry()
    with aoflite.open(tmp_path / "a") as a, aoflite.open(tmp_path / "b") as b:
        a.append("k", b"v")
        assert a.metrics.register(registry) is registry
        b.metrics.register(registry)
        a.metrics.flush_failed("x")
        found = families(generate_latest(registry))
        assert found["aoflite_flush_failures_total"] == {(("store", a.path),): 1, (("store", b.path),): 0}
        assert found["aoflite_appended_records_total"][(("store", a.path),)] == 1
        b.metrics.unregister()
        assert set(families(generate_latest(registry))["aoflite_up"]) == {(("store", a.path),)}
    # closed: the handle reports itself down
    assert families(generate_latest(registry))["aoflite_up"][(("store", a.path),)] == 0


def test_serve_metrics(db):
    with db.serve_metrics(0) as server:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10).read()
    assert b"aoflite_appended_records_total" in body


def test_the_hot_path_is_untouched(db):
    """Appends never reach the metrics: nothing is counted per record."""
    m = db.metrics
    before = dict(m._counts)
    for i in range(1000):
        db.append("k", b"v")
    assert dict(m._counts) == before
    assert db.append.__func__ is type(db._writes).append  # still the write room's own method


def test_importing_aoflite_leaves_prometheus_client_alone():
    """An application that never exports metrics does not pay for the import."""
    import subprocess
    import sys

    import pathlib

    code = "import sys, aoflite; print('prometheus_client' in sys.modules)"
    root = pathlib.Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert r.stdout == "False\n"
