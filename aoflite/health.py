"""Health: the operations guide's alert thresholds, applied to one handle.

``db.health()`` checks what the handle sees, each check naming the tier it
concerns and the mitigation, as the health-check flow goes (confirm,
identify the tier, mitigate, validate). Thresholds come from the
[health] settings (aoflite.config.HealthConfig).

Write-side events (flushes, manifest writes, uploads, the activation
queue) happen in the process that writes: a read-only handle, such as
``aoflite health``'s, reports those checks as "unknown" and never alerts on
them. Reads hydrate and fetch from Tier 2 in every process, so those are
checked everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .config import HealthConfig
from .metrics import StoreMetrics

__all__ = ["Check", "HealthReport", "evaluate", "p99"]

OK, ALERT, UNKNOWN = "ok", "alert", "unknown"


@attrs.frozen
class Check:
    """One threshold: its state ("ok", "alert" or "unknown"), the value
    seen, the threshold, and what to do when it alerts."""

    name: str
    alert: str  # the Prometheus alert that fires on the same condition
    tier: str  # "t0", "t1", "t2" or "manifest"
    state: str
    value: float | None
    threshold: str
    mitigation: str
    runbook: str
    detail: str = ""


@attrs.frozen
class HealthReport:
    """Every check; healthy when none alerts."""

    store: str
    checks: tuple[Check, ...]

    @property
    def healthy(self) -> bool:
        return all(c.state != ALERT for c in self.checks)

    @property
    def impacted_tiers(self) -> list[str]:
        return sorted({c.tier for c in self.checks if c.state == ALERT})

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "healthy": self.healthy,
            "impacted_tiers": self.impacted_tiers,
            "checks": [attrs.asdict(c) for c in self.checks],
        }


def p99(values: list[float]) -> float | None:
    """The 99th percentile (nearest rank), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, -(-99 * len(ordered) // 100) - 1)]


_RUNBOOK = "docs/runbook.md#"


def evaluate(
    store: str,
    stats: Mapping[str, Any] | None,
    metrics: StoreMetrics,
    config: HealthConfig,
    *,
    writer: bool,
    stopped: str | None = None,
    manifest_problems: Sequence[Mapping[str, Any]] = (),
) -> HealthReport:
    """Apply config's thresholds to a handle's stats (None with stopped
    saying why when the handle refuses calls) and its metrics' events;
    writer says whether this handle sees the write-side events;
    manifest_problems are aoflite.admin.manifest_check's findings."""
    checks = [
        Check(
            "handle",
            "AofliteDown",
            "t0",
            ALERT if stopped else OK,
            None,
            "answers stats()",
            "close the handle and open the store again: recovery keeps every batch that reached the disk; "
            "if it stopped on a failed sync, check the disk (dmesg, free space) first",
            _RUNBOOK + "aoflitedown",
            stopped or "",
        )
    ]
    stats = stats or {}
    queues = stats.get("queues") or {}

    def side(condition: bool, observed: bool) -> str:
        if not observed:
            return UNKNOWN
        return ALERT if condition else OK

    elsewhere = "" if writer else "seen only by the process that writes: use its db.health() or its metrics"

    depth = int(queues.get("activation", 0) or 0)
    waited = metrics.activation_waiting_s(depth) if writer else 0.0
    checks.append(
        Check(
            "activation_queue",
            "AofliteActivationQueueStuck",
            "t0",
            side(depth > 0 and waited >= config.activation_queue_s, writer),
            float(depth) if writer else None,
            f"depth > 0 for {config.activation_queue_s} s",
            "raise the Tier 0 budget (tier0_max_bytes) or seal sooner (seal_interval_s); check that "
            "compression and upload keep up (aoflite dump)",
            _RUNBOOK + "aofliteactivationqueuestuck",
            f"non-empty for {waited:.0f} s" if depth and writer else elsewhere,
        )
    )

    latencies = metrics.recent("hydration", config.hydration_window_s)
    worst = p99(latencies)
    checks.append(
        Check(
            "hydration_latency",
            "AofliteHydrationSlow",
            "t1",
            ALERT if worst is not None and worst * 1000 > config.hydration_p99_ms else OK,
            None if worst is None else round(worst * 1000, 3),
            f"p99 > {config.hydration_p99_ms} ms over {config.hydration_window_s} s",
            "check Tier 1 retries, Tier 2 availability and the hydration queue (aoflite dump); "
            "raise hydration_workers",
            _RUNBOOK + "aoflitehydrationslow",
            f"{len(latencies)} hydrations in the window",
        )
    )

    def counted(name: str, alert: str, tier: str, seen: int, limit: int, within: str, mitigation: str, detail: str) -> None:
        """A write-side count against its limit."""
        checks.append(
            Check(
                name, alert, tier, side(seen > limit, writer), float(seen) if writer else None,
                f"> {limit}{within}", mitigation, _RUNBOOK + alert.lower(), detail,
            )
        )

    counted(
        "upload_retries", "AofliteUploadRetries", "t2",
        len(metrics.recent("upload_retry", 60)) if writer else 0, config.upload_retries_per_min, " in 60 s",
        "validate the object store's health (endpoint, credentials, throttling); consider failing over "
        "or throttling ingest",
        elsewhere,
    )
    counted(
        "flush_failures", "AofliteFlushFailures", "t0",
        metrics.count("flush_failures") + (1 if stats.get("last_flush_error") else 0), config.flush_failures, "",
        "escalate now: a failed sync stops the handle; check the disk, then reopen the store",
        str(stats.get("last_flush_error") or elsewhere),
    )
    counted(
        "metadata_failures", "AofliteMetadataFailures", "manifest",
        metrics.count("metadata_failures"), config.metadata_failures, "",
        "escalate now: the manifest could not be written; check the disk, then run aoflite manifest check",
        elsewhere,
    )

    fetch_failures = len(metrics.recent("tier2_fetch_failed", config.tier2_fetch_window_s))
    checks.append(
        Check(
            "tier2_fetch_failures",
            "AofliteTier2FetchFailures",
            "t2",
            ALERT if fetch_failures > config.tier2_fetch_failures else OK,
            float(fetch_failures),
            f"> {config.tier2_fetch_failures} in {config.tier2_fetch_window_s} s",
            "make sure Tier 2 is reachable and the credentials valid; then retry the reads that failed "
            "(hydration recovery)",
            _RUNBOOK + "aoflitetier2fetchfailures",
        )
    )
    first = manifest_problems[0] if manifest_problems else None
    checks.append(
        Check(
            "manifest_files",
            "",  # checked here, not in Prometheus
            "manifest",
            ALERT if manifest_problems else OK,
            float(len(manifest_problems)),
            "any segment file missing, resized or unknown to the manifest",
            "run aoflite manifest check PATH; restore missing files from a backup (aoflite backup) or Tier 2",
            _RUNBOOK + "manifest-mismatch",
            f"segment {first['segment']}: {first['problem']} ({first['path']})" if first else "",
        )
    )
    return HealthReport(store, tuple(checks))
