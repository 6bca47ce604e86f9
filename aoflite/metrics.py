"""Prometheus metrics of a store, every one declared here (namespace aoflite).

Each store handle has one ``StoreMetrics`` (``db.metrics``). Its samples
carry a ``store`` label (the store's path), so several stores can share an
application's registry: ``db.metrics.register(registry)``, or
``db.serve_metrics(port)`` for an exporter of the handle's own.

Two kinds of metric, so the hot path pays nothing per record:

* **Read at scrape time** from ``db.stats()`` (see ``STATS_KEYS``): appended
  records and bytes, segments and bytes per tier, queue depths, Tier 2
  lag, the manifest's version. Nothing counts them as records go by.
* **Events**, counted when the store or the tier pipeline reports one by
  calling a method of ``db.metrics``. Each call also writes one structured
  log line (aoflite.logs) under the same event name, so one call gives
  the counter and the log:

  ========================================================= =======================================
  method                                                    counts
  ========================================================= =======================================
  ``flush_failed(error=, segment=)``                        ``aoflite_flush_failures_total``
  ``flush_done(seconds)``                                   ``aoflite_flush_latency_seconds``
  ``metadata_failed(error=, segment=)``                     ``aoflite_metadata_failures_total``
  ``upload_retry(segment=, tier=, attempt=, error=)``       ``aoflite_upload_retry_attempts_total``
  ``tier2_fetch_failed(segment=, key=, attempt=, error=)``  ``aoflite_tier2_fetch_failed_total``
  ``hydration_done(seconds, segment=, key=, tier=)``        ``aoflite_hydration_latency_seconds``
  ``backpressure(kind, error=)``                            ``aoflite_backpressure_events_total{kind}``
  ``tier2_request(op, nbytes=0)``                           ``aoflite_tier2_requests_total{op}``,
                                                            ``aoflite_tier2_request_bytes_total{op}``
  ========================================================= =======================================

  They take a lock and append to a bounded window (which ``db.health()``
  reads); call them once per flush, upload attempt or hydration, never
  per record. ``flush_done`` and ``tier2_request`` log nothing.
"""

from __future__ import annotations

import bisect
import collections
import logging
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .errors import BackpressureError, Error
from .logs import log_event

__all__ = ["StoreMetrics", "METRICS", "STATS_KEYS", "TIERS", "QUEUES", "serve"]

NAMESPACE = "aoflite"
TIERS = ("t0", "t1", "t2")
QUEUES = ("activation", "compression", "upload", "hydration")

#: The stats() keys the scrape reads (missing ones read as 0): the tier
#: pipeline fills the dict-valued ones.
STATS_KEYS = (
    "last_lsn",  # records appended (LSNs are dense from 1)
    "appended_bytes",  # bytes of records appended (falls back to data_bytes)
    "data_bytes",
    "disk_bytes",
    "unsynced_bytes",
    "segments",  # every segment, while tier_segments is absent
    "manifest_version",
    "tier_bytes",  # {"t0", "t1", "t2"} -> bytes
    "tier_segments",  # {"t0", "t1", "t2"} -> segments
    "queues",  # {"activation", "compression", "upload", "hydration"} -> depth
    "tier2_lag",  # {"records", "bytes", "seconds"}
)

HYDRATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 30.0, 60.0)
FLUSH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Every metric: full name -> (type, help, labels besides "store").
#: Counters are named here with their _total suffix, as they are exported.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "aoflite_up": ("gauge", "1 while the handle answers stats(); 0 once it is closed or has stopped", ()),
    "aoflite_appended_records_total": ("counter", "Records appended to the store (its last LSN)", ()),
    "aoflite_appended_bytes_total": ("counter", "Bytes of records appended to the store", ()),
    "aoflite_disk_bytes": ("gauge", "Bytes the store's directory takes on disk (allocated blocks)", ()),
    "aoflite_unsynced_bytes": ("gauge", "Bytes appended and not yet on stable storage", ()),
    "aoflite_segments": ("gauge", "Segments held per tier", ("tier",)),
    "aoflite_tier_bytes": ("gauge", "Bytes held per tier", ("tier",)),
    "aoflite_queue_depth": ("gauge", "Segments waiting per pipeline queue", ("queue",)),
    "aoflite_activation_queue_depth": ("gauge", "Sealed segments waiting for Tier 0 room", ()),
    "aoflite_tier2_lag_records": ("gauge", "Records not yet in Tier 2", ()),
    "aoflite_tier2_lag_bytes": ("gauge", "Bytes not yet in Tier 2", ()),
    "aoflite_tier2_lag_seconds": ("gauge", "Age of the oldest record not yet in Tier 2", ()),
    "aoflite_manifest_replay_version": ("gauge", "The manifest's version: its last ledger sequence number", ()),
    "aoflite_flush_failures_total": ("counter", "Failed syncs of the store's files", ()),
    "aoflite_metadata_failures_total": ("counter", "Failed manifest writes", ()),
    "aoflite_upload_retry_attempts_total": ("counter", "Tier 2 upload attempts retried", ()),
    "aoflite_tier2_fetch_failed_total": ("counter", "Tier 2 fetches that failed for good", ()),
    "aoflite_backpressure_events_total": ("counter", "Calls refused or delayed by a full budget or queue", ("kind",)),
    "aoflite_tier2_requests_total": ("counter", "Tier 2 requests by operation (for the cost review)", ("op",)),
    "aoflite_tier2_request_bytes_total": ("counter", "Tier 2 bytes moved by operation", ("op",)),
    "aoflite_hydration_latency_seconds": ("histogram", "Time to bring a segment back from a lower tier", ()),
    "aoflite_flush_latency_seconds": ("histogram", "Time one sync of the store's files took", ()),
}

log = logging.getLogger("aoflite")

# prometheus_client is imported when metrics are first exported, not with
# aoflite: an application that never exports them does not pay for it
if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric


class _Histogram:
    """Bucket counts and sum, guarded by the owner's lock."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts):
            total += n
            out.append(("+Inf" if bound == math.inf else repr(float(bound)), float(total)))
        return out


class StoreMetrics:
    """One handle's metrics: its events, and its stats() read at scrape time."""

    #: events kept for health's time windows (the oldest drop out first)
    WINDOW = 10_000

    def __init__(self, store: str, stats: Callable[[], Mapping[str, Any]]):
        self.store = store
        self._stats = stats
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._backpressure: collections.Counter[str] = collections.Counter(dict.fromkeys(BackpressureError.KINDS, 0))
        self._requests: collections.Counter[str] = collections.Counter()
        self._request_bytes: collections.Counter[str] = collections.Counter()
        self._hydration = _Histogram(HYDRATION_BUCKETS)
        self._flush = _Histogram(FLUSH_BUCKETS)
        # (monotonic time, value) of recent events, for health
        self._recent: dict[str, collections.deque[tuple[float, float]]] = {
            name: collections.deque(maxlen=self.WINDOW) for name in ("upload_retry", "tier2_fetch_failed", "hydration")
        }
        self._activation_since: float | None = None
        self._registries: list[CollectorRegistry] = []

    # ------------------------------------------------------------ events

    def _event(self, counter: str, recent: str | None = None, value: float = 1.0) -> None:
        with self._lock:
            self._counts[counter] += 1
            if recent is not None:
                self._recent[recent].append((time.monotonic(), value))

    def flush_failed(self, error: object = None, *, segment: int | None = None) -> None:
        """A sync of the store's files failed."""
        self._event("flush_failures")
        log_event(log, "flush_failed", level=logging.ERROR, store=self.store, segment=segment, error=error)

    def flush_done(self, seconds: float) -> None:
        """One sync took seconds."""
        with self._lock:
            self._flush.observe(seconds)

    def metadata_failed(self, error: object = None, *, segment: int | None = None) -> None:
        """A manifest write failed."""
        self._event("metadata_failures")
        log_event(log, "metadata_failed", level=logging.ERROR, store=self.store, segment=segment, error=error)

    def upload_retry(
        self, *, segment: int | None = None, tier: str = "t2", attempt: int | None = None, error: object = None
    ) -> None:
        """An upload attempt failed and will be tried again."""
        self._event("upload_retries", "upload_retry")
        log_event(
            log, "upload_retry", level=logging.WARNING, store=self.store, segment=segment, tier=tier,
            attempt=attempt, error=error,
        )

    def tier2_fetch_failed(
        self, *, segment: int | None = None, key: str | None = None, attempt: int | None = None, error: object = None
    ) -> None:
        """A fetch from Tier 2 failed after its retries."""
        self._event("tier2_fetch_failed", "tier2_fetch_failed")
        log_event(
            log, "tier2_fetch_failed", level=logging.ERROR, store=self.store, segment=segment, key=key, tier="t2",
            attempt=attempt, error=error,
        )

    def hydration_done(
        self, seconds: float, *, segment: int | None = None, key: str | None = None, tier: str | None = None
    ) -> None:
        """A segment came back from a lower tier (tier: where from) in seconds."""
        with self._lock:
            self._hydration.observe(seconds)
            self._recent["hydration"].append((time.monotonic(), seconds))
        log_event(log, "hydration_done", store=self.store, segment=segment, key=key, tier=tier, seconds=round(seconds, 6))

    def backpressure(self, kind: str, error: object = None) -> None:
        """A call was refused or delayed by a full budget or queue."""
        if kind not in BackpressureError.KINDS:
            raise ValueError(f"unknown backpressure kind {kind!r} (one of {', '.join(BackpressureError.KINDS)})")
        with self._lock:
            self._backpressure[kind] += 1
        log_event(log, "backpressure", level=logging.WARNING, store=self.store, kind=kind, error=error)

    def tier2_request(self, op: str, nbytes: int = 0) -> None:
        """One Tier 2 request (op: put, get, head, list, delete) moving nbytes."""
        with self._lock:
            self._requests[op] += 1
            self._request_bytes[op] += nbytes

    # ------------------------------------------------------------ health's view

    def recent(self, name: str, window_s: float) -> list[float]:
        """Values of the events named name ("upload_retry",
        "tier2_fetch_failed", "hydration") in the last window_s seconds."""
        since = time.monotonic() - window_s
        with self._lock:
            return [v for t, v in self._recent[name] if t >= since]

    def count(self, name: str) -> int:
        """Events counted since the handle opened: "flush_failures",
        "metadata_failures", "upload_retries", "tier2_fetch_failed"."""
        with self._lock:
            return self._counts[name]

    def activation_waiting_s(self, depth: int) -> float:
        """How long the activation queue has been non-empty, as seen by the
        scrapes and health checks that sampled it (depth: now)."""
        now = time.monotonic()
        with self._lock:
            if depth <= 0:
                self._activation_since = None
                return 0.0
            if self._activation_since is None:
                self._activation_since = now
            return now - self._activation_since

    # ------------------------------------------------------------ export

    def register(self, registry: CollectorRegistry | None = None) -> CollectorRegistry:
        """Export this handle's metrics in registry (None: a new one of its
        own); returns the registry. Stores sharing a registry are told
        apart by their store label."""
        if registry is None:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry()
        _exporter(registry).add(self)
        if registry not in self._registries:
            self._registries.append(registry)
        return registry

    def unregister(self) -> None:
        """Stop exporting this handle's metrics anywhere."""
        for registry in self._registries:
            _exporter(registry).remove(self)
        self._registries.clear()

    def exposition(self) -> bytes:
        """This handle's metrics in Prometheus' text format."""
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        _Exporter(registry).add(self)
        return generate_latest(registry)

    def _samples(self) -> Iterator[tuple[str, dict[str, str], Any]]:
        """(metric, labels, value) of every sample; a histogram's value is
        (cumulative buckets, sum)."""
        try:
            stats: Mapping[str, Any] = self._stats()
            up = 1
        except Error:
            stats, up = {}, 0
        yield "aoflite_up", {}, up
        if up:
            yield from _stat_samples(stats)
            queues = stats.get("queues") or {}
            self.activation_waiting_s(int(queues.get("activation", 0)))
        with self._lock:
            yield "aoflite_flush_failures_total", {}, self._counts["flush_failures"]
            yield "aoflite_metadata_failures_total", {}, self._counts["metadata_failures"]
            yield "aoflite_upload_retry_attempts_total", {}, self._counts["upload_retries"]
            yield "aoflite_tier2_fetch_failed_total", {}, self._counts["tier2_fetch_failed"]
            for kind, n in sorted(self._backpressure.items()):
                yield "aoflite_backpressure_events_total", {"kind": kind}, n
            for op, n in sorted(self._requests.items()):
                yield "aoflite_tier2_requests_total", {"op": op}, n
                yield "aoflite_tier2_request_bytes_total", {"op": op}, self._request_bytes[op]
            yield "aoflite_hydration_latency_seconds", {}, (self._hydration.cumulative(), self._hydration.sum)
            yield "aoflite_flush_latency_seconds", {}, (self._flush.cumulative(), self._flush.sum)


def _stat_samples(stats: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, str], Any]]:
    yield "aoflite_appended_records_total", {}, stats.get("last_lsn", 0) or 0
    yield "aoflite_appended_bytes_total", {}, stats.get("appended_bytes", stats.get("data_bytes", 0)) or 0
    yield "aoflite_disk_bytes", {}, stats.get("disk_bytes", 0) or 0
    yield "aoflite_unsynced_bytes", {}, stats.get("unsynced_bytes", 0) or 0
    # before the tier pipeline reports tiers, every segment is a Tier 0 file
    segments = stats.get("tier_segments") or {"t0": stats.get("segments", 0)}
    tier_bytes = stats.get("tier_bytes") or {"t0": stats.get("data_bytes", 0)}
    for tier in TIERS:
        yield "aoflite_segments", {"tier": tier}, segments.get(tier, 0) or 0
        yield "aoflite_tier_bytes", {"tier": tier}, tier_bytes.get(tier, 0) or 0
    queues = stats.get("queues") or {}
    for queue in QUEUES:
        yield "aoflite_queue_depth", {"queue": queue}, queues.get(queue, 0) or 0
    yield "aoflite_activation_queue_depth", {}, queues.get("activation", 0) or 0
    lag = stats.get("tier2_lag") or {}
    for what in ("records", "bytes", "seconds"):
        yield f"aoflite_tier2_lag_{what}", {}, lag.get(what, 0) or 0
    yield "aoflite_manifest_replay_version", {}, stats.get("manifest_version", 0) or 0


class _Exporter:
    """The registry's view of every StoreMetrics added to it: one family
    per metric, one sample set per store (a prometheus_client Collector)."""

    def __init__(self, registry: CollectorRegistry):
        self._stores: weakref.WeakSet[StoreMetrics] = weakref.WeakSet()
        self._lock = threading.Lock()  # a scrape's thread iterates while others add
        registry.register(self)

    def add(self, metrics: StoreMetrics) -> None:
        with self._lock:
            self._stores.add(metrics)

    def remove(self, metrics: StoreMetrics) -> None:
        with self._lock:
            self._stores.discard(metrics)

    def describe(self) -> list[Metric]:
        return [_family(name, ()) for name in METRICS]

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Any] = {name: _family(name, ("store",)) for name in METRICS}
        with self._lock:
            stores = sorted(self._stores, key=lambda m: m.store)
        for metrics in stores:
            for name, labels, value in metrics._samples():
                family = families[name]
                label_values = [metrics.store, *(labels[k] for k in METRICS[name][2])]
                if METRICS[name][0] == "histogram":
                    buckets, total = value
                    family.add_metric(label_values, buckets, total)
                else:
                    family.add_metric(label_values, float(value))
        yield from families.values()


def _family(name: str, extra: tuple[str, ...]) -> Metric:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    kind, doc, labels = METRICS[name]
    labels = (*extra, *labels)
    if kind == "counter":
        return CounterMetricFamily(name.removesuffix("_total"), doc, labels=labels)
    if kind == "histogram":
        return HistogramMetricFamily(name, doc, labels=labels)
    return GaugeMetricFamily(name, doc, labels=labels)


_exporters: weakref.WeakKeyDictionary[CollectorRegistry, _Exporter] = weakref.WeakKeyDictionary()
_exporters_lock = threading.Lock()


def _exporter(registry: CollectorRegistry) -> _Exporter:
    with _exporters_lock:
        exporter = _exporters.get(registry)
        if exporter is None:
            exporter = _exporters[registry] = _Exporter(registry)
        return exporter


class Server:
    """A running exporter: ``port`` (the real one when asked for 0), ``close()``."""

    def __init__(self, registry: CollectorRegistry, port: int, addr: str):
        from prometheus_client import start_http_server

        self._httpd, self._thread = start_http_server(port, addr, registry)
        self.port: int = self._httpd.server_port
        self.addr = addr

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(metrics: StoreMetrics, port: int, addr: str = "127.0.0.1") -> Server:
    """Serve metrics' registry (its own when it has none) at http://addr:port/metrics."""
    registry = metrics._registries[0] if metrics._registries else metrics.register()
    return Server(registry, port, addr)
