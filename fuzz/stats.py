"""What the crash-recovery suite covered, printed at the end of the run.

Tests add to the counters; fuzz/conftest.py prints them in pytest's
terminal summary, and the run fails if any acknowledged record was lost.
"""

from __future__ import annotations

from collections import Counter

counters: Counter[str] = Counter()
failpoints_hit: set[str] = set()


def add(name: str, n: int = 1) -> None:
    """Count n more of name: "crash schedules", "inputs fuzzed", "kills",
    "acknowledged records checked", "acknowledged records lost"."""
    counters[name] += n


def hit_failpoint(name: str) -> None:
    """Record that a test killed a process at failpoint name."""
    failpoints_hit.add(name)
