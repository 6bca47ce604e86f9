"""The crash-recovery fuzz suite's summary: what it covered."""

from __future__ import annotations

import os

from aoflite import failpoints

from . import stats


def pytest_report_header(config):
    return f"aoflite fuzz profile: {os.environ.get('AOFLITE_FUZZ_PROFILE', 'ci')}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not stats.counters and not stats.failpoints_hit:
        return
    tr = terminalreporter
    tr.section("crash-recovery coverage")
    defined = failpoints.all_names()
    tr.write_line(f"failpoints hit: {len(stats.failpoints_hit & set(defined))} of {len(defined)} defined")
    missing = sorted(set(defined) - stats.failpoints_hit)
    if missing:
        tr.write_line(f"failpoints never hit: {', '.join(missing)}")
    for name in sorted(stats.counters):
        tr.write_line(f"{name}: {stats.counters[name]}")
    tr.write_line(f"acknowledged records lost: {stats.counters.get('acknowledged records lost', 0)}")


def pytest_sessionfinish(session, exitstatus):
    # a lost acknowledged record fails the run even if a test swallowed it
    if stats.counters.get("acknowledged records lost", 0) and exitstatus == 0:
        session.exitstatus = 1
