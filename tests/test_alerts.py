"""The shipped alert rules and dashboard: promtool checks the rules and
runs their unit tests (never skipped: tools/test.sh installs promtool), and
every metric the rules and the dashboard query is one the store exports."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess

import yaml

from aoflite.metrics import METRICS

ALERTS = pathlib.Path(__file__).resolve().parent.parent / "docs" / "alerts"
RULES = ALERTS / "aoflite-rules.yml"
DASHBOARD = ALERTS / "aoflite-dashboard.json"

SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
EXPORTED = {name + suffix for name, (kind, _, _) in METRICS.items() for suffix in SUFFIXES[kind]}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: tools/test.sh installs it (Debian package prometheus)"
    return subprocess.run([tool, *args], capture_output=True, text=True, cwd=ALERTS, timeout=120)


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\baoflite_[a-z0-9_]+", expr))


def test_promtool_check_rules():
    r = promtool("check", "rules", RULES.name)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 7 rules found" in r.stdout


def test_promtool_test_rules():
    """aoflite-rules.test.yml: each alert fires past its threshold and
    duration, and not before."""
    r = promtool("test", "rules", "aoflite-rules.test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_rules_cover_the_operations_guide_and_query_exported_metrics():
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert names == {
        "AofliteDown", "AofliteActivationQueueStuck", "AofliteHydrationSlow", "AofliteUploadRetries",
        "AofliteFlushFailures", "AofliteMetadataFailures", "AofliteTier2FetchFailures",
    }
    for r in rules:
        assert metric_names(r["expr"]) <= EXPORTED, r["alert"]
        assert r["labels"]["tier"] in ("t0", "t1", "t2", "manifest")
        assert r["annotations"]["runbook"] == f"docs/runbook.md#{r['alert'].lower()}"
    runbook = (ALERTS.parent / "runbook.md").read_text()
    for name in names:
        assert f"\n## {name}\n" in runbook, f"docs/runbook.md has no section for {name}"


def test_dashboard_queries_only_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][1]["query"]["query"])
    used = set().union(*(metric_names(e) for e in exprs))
    assert used and used <= EXPORTED, sorted(used - EXPORTED)
    # every seed metric is on the dashboard
    for name in ("aoflite_activation_queue_depth", "aoflite_hydration_latency_seconds_bucket",
                 "aoflite_upload_retry_attempts_total", "aoflite_flush_failures_total",
                 "aoflite_metadata_failures_total", "aoflite_tier2_fetch_failed_total",
                 "aoflite_manifest_replay_version"):
        assert name in used, name
