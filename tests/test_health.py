"""Health: each of the operations guide's thresholds alerts past its value
and not before, names its tier and mitigation, and is configurable."""

from __future__ import annotations

import os
import time

import pytest

import aoflite
from aoflite import layout
from aoflite.config import HealthConfig
from aoflite.health import evaluate, p99
from aoflite.metrics import StoreMetrics


def states(report):
    return {c.name: c.state for c in report.checks}


def check(report, name):
    return next(c for c in report.checks if c.name == name)


def test_healthy_writer(db):
    report = db.health()
    assert report.healthy and report.impacted_tiers == []
    assert set(states(report).values()) == {"ok"}
    assert report.to_dict()["healthy"] is True


def test_read_only_handles_do_not_guess_write_side_checks(db, store_path):
    with aoflite.open(store_path, readonly=True) as reader:
        report = reader.health()
    assert report.healthy
    assert states(report)["flush_failures"] == "unknown" and states(report)["upload_retries"] == "unknown"
    assert states(report)["tier2_fetch_failures"] == "ok"


def test_tier2_fetch_failures_over_threshold(db):
    for _ in range(2):
        db.metrics.tier2_fetch_failed(segment=1)
    assert db.health().healthy  # 2 is not more than 2
    db.metrics.tier2_fetch_failed(segment=1)
    report = db.health()
    assert not report.healthy and report.impacted_tiers == ["t2"]
    c = check(report, "tier2_fetch_failures")
    assert c.alert == "AofliteTier2FetchFailures" and "Tier 2 is reachable" in c.mitigation


def test_flush_and_metadata_failures_alert_at_once(db):
    db.metrics.flush_failed("EIO")
    report = db.health()
    assert states(report)["flush_failures"] == "alert" and report.impacted_tiers == ["t0"]
    db.metrics.metadata_failed("full")
    assert db.health().impacted_tiers == ["manifest", "t0"]


def test_upload_retries_per_minute(db):
    for i in range(10):
        db.metrics.upload_retry(segment=1, attempt=i)
    assert db.health().healthy
    db.metrics.upload_retry(segment=1, attempt=11)
    assert states(db.health())["upload_retries"] == "alert"


def test_hydration_p99(db):
    for _ in range(99):
        db.metrics.hydration_done(0.1)
    db.metrics.hydration_done(2.5)
    assert db.health().healthy  # p99 of 100 values is the 99th: 0.1 s
    db.metrics.hydration_done(2.5)
    report = db.health()
    assert states(report)["hydration_latency"] == "alert" and report.impacted_tiers == ["t1"]
    assert check(report, "hydration_latency").value == 2500.0


def test_thresholds_are_configurable(store_path):
    with aoflite.open(store_path, health_tier2_fetch_failures=0, health_hydration_p99_ms=50) as db:
        db.metrics.hydration_done(0.06)
        report = db.health()
    assert states(report)["tier2_fetch_failures"] == "ok"
    assert states(report)["hydration_latency"] == "alert"
    assert check(report, "hydration_latency").threshold == "p99 > 50 ms over 300 s"


def test_activation_queue_non_empty_for_long_enough():
    stats = {"queues": {"activation": 1}}
    m = StoreMetrics("/s", lambda: stats)
    config = HealthConfig(activation_queue_s=1)
    assert evaluate("/s", stats, m, config, writer=True).healthy  # first seen now
    time.sleep(1.05)
    report = evaluate("/s", stats, m, config, writer=True)
    assert states(report)["activation_queue"] == "alert" and "Tier 0 budget" in check(report, "activation_queue").mitigation
    stats["queues"]["activation"] = 0
    assert evaluate("/s", stats, m, config, writer=True).healthy


def test_a_stopped_or_closed_handle_is_unhealthy(store_path):
    db = aoflite.open(store_path)
    db.close()
    report = db.health()
    assert states(report)["handle"] == "alert" and "closed" in check(report, "handle").detail


def test_missing_segment_file(db):
    db.append("k", b"v")
    db.seal()
    os.remove(layout.segment_path(db.path, 1))
    report = db.health()
    c = check(report, "manifest_files")
    assert c.state == "alert" and "file missing" in c.detail and report.impacted_tiers == ["manifest"]


@pytest.mark.parametrize("values, want", [([], None), ([1.0], 1.0), (list(range(1, 101)), 99), (list(range(1, 201)), 198)])
def test_p99(values, want):
    assert p99([float(v) for v in values]) == want
