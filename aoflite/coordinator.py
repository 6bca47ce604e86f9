"""The tier pipeline: moving sealed segments down the tiers in the
background, inside the writer's handle.

Two threads, so that a Tier 2 outage never stalls local work:

- the local worker compresses each sealed segment into Tier 1 and evicts
  Tier 0 files (oldest use first) while Tier 0 is over its budget; it also
  seals the active segment when ``seal_interval_s`` says so;
- the remote worker uploads Tier 1 files to Tier 2, confirms each object
  (size and SHA-256 read back, not assumed) and evicts Tier 1 files while
  Tier 1 is over its budget.

Work is found by comparing the manifest's ``tiers`` of every sealed
segment with the files on disk, so a crash anywhere leaves nothing to
clean up by hand: the next open finds the same work again and redoes it.
Every step writes its file atomically and records itself in the ledger
(CompressionStarted/Done/Failed, UploadStarted/Done/Failed, LocalEvicted).
An eviction is recorded before the file goes, so the manifest never names
a copy that is not there; a file left behind by a crash is a spare copy,
counted and evicted again. The last local copy of a segment is deleted
only once Tier 2 confirmed its object.

Budgets count the files on disk, so copies that read-only handles in other
processes hydrated count too. Appends meet the budgets only when they roll
into a new segment (``admit``): while Tier 0 is over budget and nothing
can be evicted yet, the roll waits up to ``admission_timeout_ms`` and then
raises BackpressureError(kind="admission"); what was appended is safe.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from . import errors, layout
from .config import Config, ConfigError
from .cursors import saved as saved_cursors
from .failpoints import hit
from .lifecycle import Lifecycle
from .manifest import Manifest, SegmentRecord
from .reads import Reads
from .tiers.base import (
    ObjectInfo,
    OnRetry,
    RetryPolicy,
    Tier2Backend,
    confirm_object,
    file_digest,
    open_backend,
    segment_object_name,
)
from .tiers.seekable import compress_segment

__all__ = ["Coordinator", "Residency", "open_tier2", "remove_leftovers", "residency", "tiering_enabled"]

#: How often the workers look for work when nobody wakes them.
_IDLE_S = 1.0
#: Seconds a segment a read just opened is safe from eviction.
_EVICT_GRACE_S = 2.0
#: A step that failed this many passes in a row makes drain_tiers raise.
_STUCK_AFTER = 3


class Residency(NamedTuple):
    """Where one sealed segment lives: tier name ("t0", "t1", "t2") -> bytes."""

    segment_id: int
    tiers: dict[str, int]


def tiering_enabled(config: Config) -> bool:
    """Whether the pipeline runs: a Tier 2, a local budget, a retention
    rule or sealing on time is set."""
    r = config.retention
    return any(
        v is not None
        for v in (config.tier2.url, config.tier0.max_bytes, config.tier1.max_bytes, r.max_age_s, r.max_bytes,
                  r.max_segments, config.tiers.seal_interval_s)
    )


def _moves(config: Config) -> bool:
    """Whether sealed segments move down the tiers (retention alone only removes)."""
    return any(v is not None for v in (config.tier2.url, config.tier0.max_bytes, config.tier1.max_bytes))


def retry_policy(config: Config, floor_ms: int = 0) -> RetryPolicy:
    """The [tier2] retry settings as a RetryPolicy (delays at least floor_ms)."""
    t2 = config.tier2
    base = max(t2.retry_base_delay_ms, floor_ms)
    return RetryPolicy(
        max_attempts=t2.retry_max_attempts,
        base_delay_ms=base,
        max_delay_ms=max(t2.retry_max_delay_ms, base),
        jitter=t2.retry_jitter,
    )


class _Metered:
    """A backend that reports each request and the bytes it moved (the
    object-store cost review counts them)."""

    def __init__(self, inner: Tier2Backend, on_request: Callable[[str, int], None]):
        self._inner = inner
        self._on_request = on_request
        self.url = inner.url

    def put(self, name: str, path: str | os.PathLike[str], *, records: int) -> ObjectInfo:
        info = self._inner.put(name, path, records=records)
        self._on_request("put", info.size)
        return info

    def get(self, name: str, dest: str | os.PathLike[str]) -> ObjectInfo:
        info = self._inner.get(name, dest)
        self._on_request("get", info.size)
        return info

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        data = self._inner.get_range(name, offset, length)
        self._on_request("get", len(data))
        return data

    def head(self, name: str) -> ObjectInfo:
        self._on_request("head", 0)
        return self._inner.head(name)

    def delete(self, name: str) -> None:
        self._on_request("delete", 0)
        self._inner.delete(name)

    def list(self, prefix: str = "") -> list[str]:
        self._on_request("list", 0)
        return self._inner.list(prefix)


def open_tier2(
    config: Config,
    url: str | None = None,
    *,
    on_retry: OnRetry | None = None,
    on_request: Callable[[str, int], None] | None = None,
) -> Tier2Backend | None:
    """The configured Tier 2 backend (None when there is none); on_retry
    hears of every retried request, on_request of every request."""
    t2 = config.tier2
    url = url or t2.url
    if url is None:
        return None
    options: dict[str, Any] = {"retry": retry_policy(config), "on_retry": on_retry}
    if url.startswith("s3://"):
        options.update(
            endpoint=t2.endpoint, region=t2.region, access_key=t2.access_key, secret_key=t2.secret_key,
            ca_bundle=t2.ca_bundle,
        )
    try:
        backend = open_backend(url, **options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"setting tier2_url={url!r}: {e}") from None
    return backend if on_request is None else _Metered(backend, on_request)


class _Failures:
    """Consecutive failures per step, when to try each again, and when the
    last few happened."""

    def __init__(self, policy: RetryPolicy):
        self._policy = policy
        self._by_step: dict[tuple[str, int], tuple[int, float, BaseException, list[float]]] = {}

    def ready(self, step: str, sid: int) -> bool:
        got = self._by_step.get((step, sid))
        return got is None or time.monotonic() >= got[1]

    def failed(self, step: str, sid: int, e: BaseException) -> None:
        n, _, _, times = self._by_step.get((step, sid), (0, 0.0, e, []))
        now = time.monotonic()
        delay = self._policy.delay_ms(n + 1) / 1000
        self._by_step[(step, sid)] = (n + 1, now + delay, e, [*times[-(_STUCK_AFTER - 1) :], now])

    def done(self, step: str, sid: int) -> None:
        self._by_step.pop((step, sid), None)

    def stuck(self, since: float) -> BaseException | None:
        """The error of a step that failed _STUCK_AFTER times in a row since
        the monotonic time since (a step failing before a drain began may
        succeed now that the cause is gone)."""
        for _, _, e, times in list(self._by_step.values()):
            if sum(1 for t in times if t >= since) >= _STUCK_AFTER:
                return e
        return None

    def last(self) -> BaseException | None:
        got = list(self._by_step.values())
        return got[-1][2] if got else None


class Coordinator:
    """Moves the sealed segments of one writable store down the tiers."""

    def __init__(
        self,
        path: str,
        manifest: Manifest,
        reads: Reads,
        backend: Tier2Backend | None,
        config: Config,
        life: Lifecycle,
        seal: Callable[[], int | None],
    ):
        self.path = path
        self._manifest = manifest
        self._reads = reads
        self._backend = backend
        self._config = config
        self._life = life
        self._seal = seal
        #: told of each admission refusal: (kind, error)
        self.on_backpressure: Callable[[str, BaseException], None] | None = None
        #: told of each failed upload, which the pipeline tries again: (segment, error)
        self.on_upload_failed: Callable[[int, BaseException], None] | None = None
        self._t0_max = config.tier0.max_bytes
        self._t1_max = config.tier1.max_bytes
        # Two signals, never one: a worker that woke the other after each
        # pass would wake it back, and the two would spin. Each worker has
        # an event that says "look for work" (set by notify, never by the
        # worker itself, and never lost when set while it is busy); waiters
        # (drain, admission) hear of progress on their own condition.
        self._progress = threading.Condition()
        self._stopping = False
        self._passes = 0  # completed passes of both workers, for drain
        self._waiting_admission = 0
        # a pipeline step that failed waits before its next try, as a
        # backend waits between retries (never less than 10 ms: no spinning)
        self._failures = _Failures(retry_policy(config, floor_ms=10))
        self._last_used: dict[int, float] = {}
        self._pending = {"compression": 0, "upload": 0, "eviction": 0}
        # the writer's Tier 2 steward (aoflite.snapshots): hears of each
        # confirmed upload (in the remote worker) and of the stop, and says
        # when a manifest snapshot is due (drain waits for it)
        self.on_uploaded: Callable[[int], None] | None = None
        self.on_stopped: Callable[[], None] | None = None
        self.snapshot_due: Callable[[], bool] | None = None
        self._moves = _moves(config)
        if self._moves:
            os.makedirs(layout.tier1_dir(path), exist_ok=True)
        passes = [("aoflite-tier-local", self._local_pass)]
        if backend is not None:
            passes.append(("aoflite-tier-remote", self._remote_pass))
        self._kicks = [threading.Event() for _ in passes]
        self._threads = [
            threading.Thread(target=self._run, args=(one_pass, kick), name=name, daemon=True)
            for (name, one_pass), kick in zip(passes, self._kicks)
        ]

    # ------------------------------------------------------------ control

    def start(self) -> None:
        """Start the workers."""
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop the workers after the step each is in (a step is atomic)."""
        self._stopping = True
        self.notify()
        with self._progress:
            self._progress.notify_all()
        for t in self._threads:
            if t.is_alive() and t is not threading.current_thread():
                t.join()
        if self.on_stopped is not None:
            self.on_stopped()

    def notify(self) -> None:
        """Something changed (a seal, a hydration): look for work now."""
        for kick in self._kicks:
            kick.set()

    def used(self, segment_id: int) -> None:
        """A read used segment_id: evict it after segments used longer ago."""
        self._last_used[segment_id] = time.monotonic()

    def _run(self, one_pass: Callable[[], bool], kick: threading.Event) -> None:
        while not self._stopping:
            kick.clear()  # before the pass: a notify during it makes the next one start at once
            try:
                busy = one_pass()
            except errors.ClosedError:
                return
            except Exception as e:  # a bug or an unforeseen error: never the end of the pipeline
                self._failures.failed("pass", 0, e)
                busy = False
            with self._progress:
                self._passes += 1
                self._progress.notify_all()
            if not busy and not self._stopping:
                kick.wait(_IDLE_S)

    # ------------------------------------------------------------ what is where

    def _sealed(self) -> list[SegmentRecord]:
        return [r for r in self._manifest.segments() if r.state == "sealed"]

    def _t0_files(self, recs: list[SegmentRecord]) -> dict[int, int]:
        return _t0_sizes(self.path, recs)

    def _t1_files(self, recs: list[SegmentRecord]) -> dict[int, int]:
        return _t1_sizes(self.path, recs)

    def _first_ready(self, step: str, todo: list[SegmentRecord], act: Callable[[SegmentRecord], None]) -> bool | None:
        """Do step (act) for the first segment of todo whose backoff has
        passed: True when it did, False when stopping, None when none was ready."""
        for r in todo:
            if self._stopped():
                return False
            if self._failures.ready(step, r.segment_id):
                act(r)
                return True
        return None

    def residency(self) -> list[Residency]:
        """Per sealed segment, which tiers hold it and the bytes in each."""
        return residency(self.path, self._manifest)

    def _behind(self) -> str | None:
        """Which local budget is exceeded by files that cannot be evicted
        yet because no lower tier holds them (the pipeline is behind), if
        any. Copies a lower tier holds are the evictor's business, never a
        reason to hold appends back."""
        recs = self._sealed()
        if self._t0_max is not None:
            t0 = self._t0_files([r for r in recs if "t1" not in r.tiers and "t2" not in r.tiers])
            if sum(t0.values()) > self._t0_max:
                return (
                    f"Tier 0 holds {sum(t0.values())} bytes of sealed segments not yet in a lower tier, "
                    f"over tier0_max_bytes={self._t0_max}"
                )
        if self._backend is not None and self._t1_max is not None:
            t1 = self._t1_files([r for r in recs if "t2" not in r.tiers])
            if sum(t1.values()) > self._t1_max:
                return (
                    f"Tier 1 holds {sum(t1.values())} bytes not yet in Tier 2, over tier1_max_bytes={self._t1_max}"
                )
        return None

    # ------------------------------------------------------------ admission

    def admit(self, timeout_ms: int | None = None) -> None:
        """Wait while a local budget is exceeded (the pipeline is behind);
        BackpressureError(kind="admission") after admission_timeout_ms."""
        if self._t0_max is None and (self._t1_max is None or self._backend is None):
            return
        timeout_ms = self._config.tiers.admission_timeout_ms if timeout_ms is None else timeout_ms
        deadline = time.monotonic() + timeout_ms / 1000
        with self._progress:
            self._waiting_admission += 1
        try:
            while True:
                self._life.check()
                why = self._behind()
                if why is None:
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    behind = self._failures.last()
                    cause = f"; the pipeline's last error: {behind}" if behind is not None else ""
                    refused = errors.BackpressureError(
                        "admission",
                        f"{self.path}: local disk budget full: {why}, and nothing can be evicted yet "
                        f"(waited admission_timeout_ms={timeout_ms}{cause}). Everything appended so far is "
                        "safe; retry once compression and upload catch up, or raise the budget",
                    )
                    if self.on_backpressure is not None:
                        self.on_backpressure("admission", refused)
                    raise refused
                self.notify()
                with self._progress:
                    self._progress.wait(min(remaining, 0.05))
        finally:
            with self._progress:
                self._waiting_admission -= 1

    # ------------------------------------------------------------ local work

    def _local_pass(self) -> bool:
        """Compress what Tier 1 lacks, then evict Tier 0 over budget. True
        when it did something (look again at once)."""
        self._maybe_seal()
        if self._note_last_timestamp():
            return True
        if self._retire():
            return True
        if not self._moves:
            return False
        recs = self._sealed()
        t0 = self._t0_files(recs)
        # a segment Tier 2 holds needs no Tier 1 copy to leave Tier 0
        todo = [r for r in recs if "t1" not in r.tiers and "t2" not in r.tiers and r.segment_id in t0]
        self._pending["compression"] = len(todo)
        did = self._first_ready("compress", todo, self._compress)
        if did is not None:
            return did
        return self._evict("t0", recs, t0, self._t0_max, lambda r: "t1" in r.tiers or "t2" in r.tiers)

    def _compress(self, r: SegmentRecord) -> None:
        sid = r.segment_id
        src, dst = layout.segment_path(self.path, sid), layout.tier1_path(self.path, sid)
        tier1 = self._config.tier1
        self._manifest.record_tier(sid, "CompressionStarted", level=tier1.level)
        try:
            info = compress_segment(src, dst, level=tier1.level, frame_bytes=tier1.frame_bytes)
            hit("tier.after_compress")
        except FileNotFoundError:
            return  # evicted meanwhile: nothing to compress from
        except (errors.Error, OSError) as e:
            self._failures.failed("compress", sid, e)
            self._manifest.record_tier(sid, "CompressionFailed", reason=_reason(e), error=str(e))
            return
        self._failures.done("compress", sid)
        self._manifest.record_tier(
            sid,
            "CompressionDone",
            add=("t1",),
            facts={"t1_bytes": info.compressed_bytes, "t1_crc": info.crc32c},
            bytes=info.compressed_bytes,
            original=info.original_bytes,
            frames=info.frames,
        )
        self.notify()  # the remote worker has a file to upload

    def _maybe_seal(self) -> None:
        interval = self._config.tiers.seal_interval_s
        if interval is None:
            return
        live = self._reads.live()
        if not live:
            return
        seg = live[-1]
        info = seg.info()
        if not info.record_count:
            return
        _, _, _, _, tss, _, _ = seg.scan(0, 0, 1)
        if tss and time.time() * 1000 - tss[0] >= interval * 1000:
            with contextlib.suppress(errors.TransactionError):
                self._seal()

    # ------------------------------------------------------------ remote work

    def _remote_pass(self) -> bool:
        """Delete retired objects, upload what Tier 2 lacks, then evict
        Tier 1 over budget."""
        assert self._backend is not None
        for sid, name in self._manifest.queued_deletes().items():
            if self._stopped():
                return False
            if self._failures.ready("delete", sid):
                try:
                    self._backend.delete(name)
                except errors.Error as e:
                    self._failures.failed("delete", sid, e)
                    continue
                self._failures.done("delete", sid)
                self._manifest.tier2_deleted(sid, name)
                return True
        recs = self._sealed()
        t1 = self._t1_files(recs)
        todo = [r for r in recs if "t2" not in r.tiers and "t1" in r.tiers and r.segment_id in t1]
        self._pending["upload"] = len(todo)
        did = self._first_ready("upload", todo, self._upload)
        if did is not None:
            return did
        return self._evict("t1", recs, t1, self._t1_max, lambda r: "t2" in r.tiers)

    def _upload(self, r: SegmentRecord) -> None:
        assert self._backend is not None
        sid = r.segment_id
        src, name = layout.tier1_path(self.path, sid), segment_object_name(sid)
        self._manifest.record_tier(sid, "UploadStarted", object=name)
        try:
            size, checksum = file_digest(src)
            self._backend.put(name, src, records=r.record_count)
            # confirmed by reading the object's facts back, not assumed from the put
            hit("tier.after_upload")
            confirm_object(self._backend, name, size, checksum)
        except FileNotFoundError:
            return  # evicted meanwhile
        except (errors.Error, OSError) as e:
            self._failures.failed("upload", sid, e)
            self._manifest.record_tier(sid, "UploadFailed", reason=_reason(e), error=str(e))
            if self.on_upload_failed is not None:
                self.on_upload_failed(sid, e)
            return
        self._failures.done("upload", sid)
        done = self._manifest.record_tier(
            sid, "UploadDone", add=("t2",), facts={"t2_bytes": size, "t2_checksum": checksum}, object=name, bytes=size
        )
        if done is None:  # retired while it was uploading: its object must not outlive it
            self._manifest.queue_tier2_delete(sid, name)
            return
        if self.on_uploaded is not None:
            self.on_uploaded(sid)
        self.notify()  # Tier 1 copies may go now

    # ------------------------------------------------------------ retention

    def _note_last_timestamp(self) -> bool:
        """Record the last record's timestamp of one sealed segment that
        lacks it (a walk over the segment: kept off the roll's path)."""
        if self._config.retention.max_age_s is None:
            return False
        for r in self._sealed():
            if r.last_ts_ms or not r.record_count:
                continue
            try:
                seg = self._reads.segment(r.segment_id)
            except errors.Error:
                return False  # not readable now: age falls back to the next segment's start
            _, _, _, _, tss, _, _ = seg.scan(0, r.last_lsn, 1)
            if tss:
                self._manifest.note_facts(r.segment_id, last_ts_ms=int(tss[0]))
                return True
        return False

    def _retention_due(self) -> tuple[SegmentRecord, str, dict[str, int]] | None:
        """The segment retention removes next, why, and the cursors that
        had not consumed it; None when nothing is due. Whole segments, in
        LSN order; a segment a cursor has not consumed stays unless the
        byte budget (the hard one) forces it out."""
        rule = self._config.retention
        if rule.max_age_s is None and rule.max_bytes is None and rule.max_segments is None:
            return None
        recs = self._sealed()
        if not recs:
            return None
        oldest = recs[0]
        total = sum(r.file_bytes for r in recs)
        by_bytes = rule.max_bytes is not None and total > rule.max_bytes
        by_count = rule.max_segments is not None and len(recs) > rule.max_segments
        by_age = False
        if rule.max_age_s is not None:
            newest = oldest.last_ts_ms
            if not newest:
                # not noted yet: its newest record is no newer than the next segment's first
                nxt = recs[1] if len(recs) > 1 else self._manifest.segment_after(oldest.segment_id)
                newest = nxt.first_ts_ms if nxt is not None and nxt.first_ts_ms else oldest.sealed_ms
            by_age = time.time() * 1000 - newest > rule.max_age_s * 1000
        if not (by_bytes or by_count or by_age):
            return None
        behind = {n: lsn for n, lsn in saved_cursors(self.path).items() if lsn < oldest.last_lsn}
        if behind and not by_bytes:
            return None  # a consumer still needs it
        return oldest, "max_bytes" if by_bytes else "max_segments" if by_count else "max_age", behind

    def _retire(self) -> bool:
        """Retire the segment retention says is due, if any (the ledger
        says which cursor lost what). True when it retired one."""
        due = self._retention_due()
        if due is None:
            return False
        oldest, reason, behind = due
        # whether Tier 2 holds it is decided inside the retirement's own
        # transaction (an upload may land between this read and that one)
        held = self._backend is not None
        sid = oldest.segment_id
        rec = self._manifest.retire_segment(
            sid, reason=reason, object_name=segment_object_name(sid) if held else None, overrun=behind
        )
        if rec is None:
            return False
        hit("retention.after_manifest")
        self._reads.forget_segment(sid)
        self._reads.publish(self._reads.live())  # no cached range may send a read to it
        for p in (layout.segment_path(self.path, sid), layout.tier1_path(self.path, sid)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
                layout.fsync_dir(os.path.dirname(p))
        self.notify()
        return True

    # ------------------------------------------------------------ eviction

    def _evict(
        self,
        tier: str,
        recs: list[SegmentRecord],
        files: dict[int, int],
        budget: int | None,
        held_below: Callable[[SegmentRecord], bool],
    ) -> bool:
        """Delete tier's files, least recently used first, while the tier is
        over budget, of segments a lower tier durably holds."""
        if budget is None:
            self._pending["eviction"] = 0
            return False
        total = sum(files.values())
        # a segment a reader here opened moments ago stays a little, so a
        # budget of 0 does not make every read of old records fetch twice
        fresh = time.monotonic() - _EVICT_GRACE_S
        candidates = [
            r
            for r in recs
            if r.segment_id in files and held_below(r) and self._last_used.get(r.segment_id, 0.0) < fresh
        ]
        candidates.sort(key=lambda r: (self._last_used.get(r.segment_id, 0.0), r.segment_id))
        self._pending["eviction"] = len(candidates) if total > budget else 0
        did = False
        for r in candidates:
            if total <= budget or self._stopped():
                break
            sid = r.segment_id
            path = layout.segment_path(self.path, sid) if tier == "t0" else layout.tier1_path(self.path, sid)
            # the manifest first: it must never name a copy that is gone
            self._manifest.record_tier(sid, "LocalEvicted", remove=(tier,), tier=tier, bytes=files[sid])
            hit("tier.before_unlink")
            if tier == "t0":
                self._reads.forget_segment(sid)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= files[sid]
            did = True
        if did:
            layout.fsync_dir(os.path.dirname(path))
            with self._progress:
                self._progress.notify_all()  # appends waiting for admission
        return did

    # ------------------------------------------------------------ drain, stats

    def pending(self) -> dict[str, int]:
        """Work the pipeline knows of: compression, upload, eviction."""
        return dict(self._pending)

    def _outstanding(self) -> str | None:
        """What is left to do, from the manifest and the files (None: nothing)."""
        if self._retention_due() is not None:
            return "retention has a segment to retire"
        if self._backend is not None and self._manifest.queued_deletes():
            return "a retired segment's Tier 2 object waits for deletion"
        recs = self._sealed()
        t0, t1 = self._t0_files(recs), self._t1_files(recs)
        for r in recs:
            if not self._moves:
                break
            if "t1" not in r.tiers and "t2" not in r.tiers and r.segment_id in t0:
                return f"segment {r.segment_id} waits for compression"
            if self._backend is not None and "t2" not in r.tiers:
                return f"segment {r.segment_id} waits for upload"
        if self._t0_max is not None and sum(t0.values()) > self._t0_max:
            if any(("t1" in r.tiers or "t2" in r.tiers) and r.segment_id in t0 for r in recs):
                return "Tier 0 is over budget"
        if self._backend is not None and self._t1_max is not None and sum(t1.values()) > self._t1_max:
            if any("t2" in r.tiers and r.segment_id in t1 for r in recs):
                return "Tier 1 is over budget"
        if self.snapshot_due is not None and self.snapshot_due():
            return "a manifest snapshot is due"
        return None

    def drain(self, timeout: float | None = None) -> None:
        """Wait until nothing is pending; raise a step's error once it
        failed several passes in a row, TimeoutError after timeout seconds."""
        began = time.monotonic()
        deadline = None if timeout is None else began + timeout
        while True:
            self._life.check()
            left = self._outstanding()
            if left is None:
                return
            stuck = self._failures.stuck(began)
            if stuck is not None:
                raise stuck
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"{self.path}: tiers not drained after {timeout} s: {left}")
            self.notify()
            with self._progress:
                self._progress.wait(0.05 if remaining is None else min(remaining, 0.05))

    def stats(self) -> dict[str, Any]:
        """The pipeline's part of Store.stats()."""
        out: dict[str, Any] = {
            "queues": {
                "activation": self._waiting_admission,
                "compression": self._pending["compression"],
                "upload": self._pending["upload"],
                "eviction": self._pending["eviction"],
            },
        }
        if self._backend is not None:
            behind = [r for r in self._sealed() if "t2" not in r.tiers]
            oldest = min((r.sealed_ms for r in behind), default=None)
            out["tier2_lag"] = {
                "records": sum(r.record_count for r in behind),
                "bytes": sum(r.file_bytes for r in behind),
                "seconds": 0.0 if oldest is None else max(0.0, time.time() - oldest / 1000),
            }
        last = self._failures.last()
        out["tier_error"] = None if last is None else str(last)
        return out

    def _stopped(self) -> bool:
        return self._stopping


def residency(path: str, manifest: Manifest) -> list[Residency]:
    """Per sealed segment of the store at path, which tiers hold it and the
    bytes in each: local tiers as the files are now, Tier 2 as confirmed."""
    recs = [r for r in manifest.segments() if r.state == "sealed"]
    t0, t1 = _t0_sizes(path, recs), _t1_sizes(path, recs)
    out = []
    for r in recs:
        tiers: dict[str, int] = {}
        if r.segment_id in t0:
            tiers["t0"] = t0[r.segment_id]
        if r.segment_id in t1:
            tiers["t1"] = t1[r.segment_id]
        if "t2" in r.tiers:
            tiers["t2"] = r.t2_bytes
        out.append(Residency(r.segment_id, tiers))
    return out


def _t0_sizes(root: str, recs: list[SegmentRecord]) -> dict[int, int]:
    """Sizes of the segment files (Tier 0) of recs that are present."""
    return _sizes({r.segment_id: layout.segment_path(root, r.segment_id) for r in recs})


def _t1_sizes(root: str, recs: list[SegmentRecord]) -> dict[int, int]:
    """Sizes of the Tier 1 files of recs that are present."""
    return _sizes({r.segment_id: layout.tier1_path(root, r.segment_id) for r in recs})


def _sizes(paths: dict[int, str]) -> dict[int, int]:
    out = {}
    for sid, p in paths.items():
        try:
            out[sid] = os.stat(p).st_size
        except FileNotFoundError:
            pass
    return out


def _reason(e: BaseException) -> str:
    """The operations guide's reason code for a failed step."""
    reason = getattr(e, "reason", None)
    if isinstance(reason, str):
        return reason
    if isinstance(e, errors.CorruptionError):
        return "corruption"
    if isinstance(e, OSError | errors.StorageError):
        return "io_error"
    return type(e).__name__


def remove_leftovers(root: str, manifest: Manifest) -> None:
    """At a writable open, whether or not the pipeline runs now: what a
    crash left of the pipeline's steps (retired segments' files, stale
    temporary files)."""
    _remove_stale_temporaries(root)
    _remove_retired_files(root, manifest)


def _remove_retired_files(root: str, manifest: Manifest) -> None:
    """Local files of segments retention removed from the manifest, left
    behind by a crash between the manifest commit and the unlink (ids at or
    below the retired mark that the manifest no longer knows)."""
    through = manifest.retired_through()
    if not through:
        return
    known = {r.segment_id for r in manifest.segments()}
    for sid in layout.segment_ids(root):
        if sid <= through and sid not in known:
            os.unlink(layout.segment_path(root, sid))
    for sid in layout.tier1_ids(root):
        if sid <= through and sid not in known:
            os.unlink(layout.tier1_path(root, sid))


def _remove_stale_temporaries(root: str, older_than_s: float = 600.0) -> None:
    """Temporary files of hydrations or compressions cut short by a crash
    (newer ones may belong to a live reader's hydration in another process)."""
    now = time.time()
    for d in (os.path.join(root, "segments"), layout.tier1_dir(root)):
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        for n in names:
            if n.endswith((".part", ".tmp")):
                p = os.path.join(d, n)
                with contextlib.suppress(FileNotFoundError):
                    if now - os.stat(p).st_mtime > older_than_s:
                        os.unlink(p)
