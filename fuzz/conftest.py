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
    failed_at = {n.removeprefix("I/O failures injected at ") for n in stats.counters if n.startswith("I/O failures")}
    if failed_at:
        tr.write_line(f"I/O sites failed: {len(failed_at & set(failpoints.IO_SITES))} of {len(failpoints.IO_SITES)}")
        missing_io = sorted(set(failpoints.IO_SITES) - failed_at)
        if missing_io:
            tr.write_line(f"I/O sites never failed: {', '.join(missing_io)}")
    for name in sorted(stats.counters):
        tr.write_line(f"{name}: {stats.counters[name]}")
    tr.write_line(f"acknowledged records lost: {stats.counters.get('acknowledged records lost', 0)}")


def pytest_sessionfinish(session, exitstatus):
    # a lost acknowledged record fails the run even if a test swallowed it
    if stats.counters.get("acknowledged records lost", 0) and exitstatus == 0:
        session.exitstatus = 1
