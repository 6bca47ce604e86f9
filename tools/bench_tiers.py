"""The tier rows of tools/bench.py: what the tier pipeline costs and gives.

- Tier 1 compression speed and ratio at the default level, on readings
  shaped like the demo's (JSON) and on the bench's random values;
- scan_all of a store whose sealed segments are only in Tier 1, against
  the same scan from Tier 0;
- the append loop with tiering on (compressing and uploading behind it)
  against tiering off;
- hydration of a whole segment from an S3 server on loopback (moto, in
  this process), and a cold point read of the same kind of segment, which
  fetches single frames with ranged requests.

Each figure is a median (or a percentile) over --repeats runs; ratios are
taken within this one run. Only the S3 API is spoken (the minio client).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Callable

MiB = 1 << 20


def _reading(i: int, rng: random.Random) -> bytes:
    return json.dumps({"device": i % 500, "seq": i, "temp_c": round(20 + rng.random() * 5, 2), "ok": True}).encode()


def _values(n: int, kind: str) -> list[bytes]:
    rng = random.Random(7)
    if kind == "json":
        return [_reading(i, rng) for i in range(n)]
    return [rng.randbytes(100) for _ in range(n)]


def _fill(db: Any, values: list[bytes]) -> float:
    """Append values over 8 keys; returns the seconds the loop took."""
    append = db.append
    t0 = time.perf_counter()
    for i, v in enumerate(values):
        append(f"k{i & 7}", v)
    db.commit()
    return time.perf_counter() - t0


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def _row(label: str, value: float | None, unit: str, target: str = "", ok: bool | None = None) -> dict:
    return {"label": label, "value": value, "unit": unit, "target": target, "pass": ok}


def compression(scratch: Path, seg_bytes: int, repeats: int) -> list[dict]:
    """Tier 1 compression MB/s and ratio of one sealed segment per data kind."""
    import aoflite
    from aoflite import layout
    from aoflite.tiers.seekable import compress_segment

    rows = []
    for kind in ("json", "random"):
        path = scratch / f"compress-{kind}"
        with aoflite.open(str(path), segment_bytes=seg_bytes, durability="off") as db:
            # one segment, filled to just under its size
            _fill(db, _values(seg_bytes // (150 if kind == "random" else 110), kind))
            sid = db.seal()
        src = layout.segment_path(str(path), sid)
        speeds, ratio = [], 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            info = compress_segment(src, str(path / "out.zst"), verify=False)
            speeds.append(info.original_bytes / (time.perf_counter() - t0) / MiB)
            ratio = info.original_bytes / info.compressed_bytes
        shutil.rmtree(path, ignore_errors=True)
        mbs = statistics.median(speeds)
        rows.append(_row(f"Tier 1 compression, level 1, {kind} values", mbs, "MB/s", ">= 200", mbs >= 200))
        rows.append(_row(f"Tier 1 compression ratio, {kind} values", ratio, "x"))
    return rows


def scans(scratch: Path, seg_bytes: int, records: int, repeats: int) -> list[dict]:
    """scan_all from Tier 1 only against the same scan from Tier 0."""
    import aoflite

    values = _values(records, "json")
    t0_path, t1_path = scratch / "scan-t0", scratch / "scan-t1"
    t0_db = aoflite.open(str(t0_path), segment_bytes=seg_bytes, durability="off")
    t1_db = aoflite.open(str(t1_path), segment_bytes=seg_bytes, durability="off", tier0_max_bytes=0)
    rates: dict[str, list[float]] = {"t0": [], "t1": []}
    try:
        for db in (t0_db, t1_db):
            _fill(db, values)
            db.seal()
        for _ in range(repeats):
            t1_db.drain_tiers(timeout=600)  # every sealed segment back out of Tier 0
            assert all(set(r.tiers) == {"t1"} for r in t1_db.residency())
            for name, db in (("t0", t0_db), ("t1", t1_db)):
                t = time.perf_counter()
                n = sum(1 for _ in db.scan_all())
                rates[name].append(n / (time.perf_counter() - t))
            time.sleep(2.2)  # past the eviction grace of the segments the scan hydrated
    finally:
        t0_db.close()
        t1_db.close()
        shutil.rmtree(t0_path, ignore_errors=True)
        shutil.rmtree(t1_path, ignore_errors=True)
    r0, r1 = statistics.median(rates["t0"]), statistics.median(rates["t1"])
    return [
        _row("scan_all, sealed segments in Tier 0", r0, "rec/s"),
        _row("scan_all, sealed segments only in Tier 1", r1, "rec/s"),
        _row("Tier 1 scan / Tier 0 scan", r1 / r0, "ratio", ">= 0.8", r1 / r0 >= 0.8),
    ]


def appends(scratch: Path, seg_bytes: int, records: int, repeats: int) -> list[dict]:
    """The append loop with tiering on (file:// Tier 2, small budgets) and off."""
    import aoflite

    values = _values(records, "json")
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for rep in range(repeats):
        for mode in ("off", "on"):
            path = scratch / f"append-{mode}-{rep}"
            opts: dict[str, Any] = {"segment_bytes": seg_bytes}
            if mode == "on":
                bucket = scratch / f"bucket-{rep}"
                bucket.mkdir()
                opts.update(tier2_url=f"file://{bucket}", tier0_max_bytes=2 * seg_bytes, tier1_max_bytes=2 * seg_bytes)
            with aoflite.open(str(path), **opts) as db:
                rates[mode].append(len(values) / _fill(db, values))
                if mode == "on":
                    db.drain_tiers(timeout=600)
            shutil.rmtree(path, ignore_errors=True)
            shutil.rmtree(scratch / f"bucket-{rep}", ignore_errors=True)
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    return [
        _row("append loop, tiering off", off, "rec/s"),
        _row("append loop, tiering on (compress + upload behind)", on, "rec/s"),
        _row("append with tiering / without", on / off, "ratio", ">= 0.9", on / off >= 0.9),
    ]


def _s3() -> tuple[Callable[[], None], dict[str, str]]:
    """An S3 server on loopback and the settings to reach it."""
    from minio import Minio
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    Minio(f"{host}:{port}", "bench", "bench-secret", secure=False).make_bucket("bench")
    return server.stop, {
        "tier2_endpoint": f"http://{host}:{port}",
        "tier2_access_key": "bench",
        "tier2_secret_key": "bench-secret",
        "tier2_url": "s3://bench/tiers",
    }


def _drop_local(db: Any, sid: int) -> None:
    """Make segment sid Tier 2 only again (the measurement's own eviction)."""
    from aoflite import layout

    for p in (layout.segment_path(db.path, sid), layout.tier1_path(db.path, sid)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
    db._reads.forget_segment(sid)


def hydration(scratch: Path, seg_bytes: int, repeats: int) -> list[dict]:
    """Whole-segment hydration from S3, and cold point reads, p50/p99."""
    import aoflite
    from aoflite.coldread import ColdReads

    stop, s3 = _s3()
    path = scratch / "hydrate"
    try:
        with aoflite.open(str(path), segment_bytes=seg_bytes, tier0_max_bytes=0, tier1_max_bytes=0, **s3) as db:
            _fill(db, _values(seg_bytes // 90, "json"))
            db.seal()
            db.drain_tiers(timeout=600)
            res = db.residency()[0]
            sid = res.segment_id
            size = next(r.file_bytes for r in db.manifest.segments() if r.segment_id == sid)
            kid = db.manifest.lookup_key("k3")[0]
            offsets = [(f, n) for _, s, f, n in db.manifest.key_ranges(kid) if s == sid][0]
            whole, cold = [], []
            rng = random.Random(3)
            for _ in range(max(repeats, 5) * 2):
                # the hydration a scan does: fetch the object, rebuild and check the segment
                _drop_local(db, sid)
                t = time.perf_counter()
                db._hydrator.ensure_local(sid)
                whole.append(time.perf_counter() - t)
                _drop_local(db, sid)
                # a cold point read, caches empty: seek table, footer, index, record
                db._reads.cold = ColdReads(db.path, db.manifest, db._hydrator._backend)
                t = time.perf_counter()
                db.read("k3", offsets[0] + rng.randrange(offsets[1]))
                cold.append(time.perf_counter() - t)
    finally:
        stop()
        shutil.rmtree(path, ignore_errors=True)
    p50, p99 = statistics.median(whole) * 1000, _pct(whole, 99) * 1000
    c50, c99 = statistics.median(cold) * 1000, _pct(cold, 99) * 1000
    return [
        _row(f"hydrate a {size / MiB:.0f} MiB segment from S3 (loopback), p50", p50, "ms"),
        _row(f"hydrate a {size / MiB:.0f} MiB segment from S3 (loopback), p99", p99, "ms", "<= 250", p99 <= 250),
        _row("cold point read (segment only in S3), p50", c50, "ms"),
        _row("cold point read (segment only in S3), p99", c99, "ms"),
        _row("cold point read / whole hydration (p50)", c50 / p50, "ratio", "<= 0.1", c50 / p50 <= 0.1),
    ]


def run(scratch: Path, quick: bool, repeats: int, progress: Callable[[str], None]) -> list[dict]:
    """Every tier row; failures become rows with an error."""
    seg = 8 * MiB if quick else 64 * MiB
    records = 200_000 if quick else 2_000_000
    rows: list[dict] = []
    steps: list[tuple[str, Callable[[], list[dict]]]] = [
        ("compression", lambda: compression(scratch, seg, repeats)),
        ("scans", lambda: scans(scratch, seg, records, repeats)),
        ("appends", lambda: appends(scratch, seg, records, repeats)),
        ("hydration", lambda: hydration(scratch, 64 * MiB if not quick else seg, repeats)),
    ]
    for name, step in steps:
        progress(f"[tiers] {name}")
        try:
            rows += step()
        except Exception as e:  # one failed measurement does not hide the others
            rows.append({**_row(name, None, ""), "error": f"{type(e).__name__}: {e}"})
    return rows


def render(rows: list[dict]) -> list[str]:
    """The tier section of the table."""
    lines = ["", "== tiers ==", f"{'measurement':<58} {'value':>12} {'unit':<6} {'target':<8} verdict"]
    for r in rows:
        if r.get("error"):
            lines.append(f"{r['label']:<58} error: {r['error']}")
            continue
        v = r["value"]
        shown = f"{v:,.0f}" if v >= 100 else f"{v:,.2f}"
        verdict = {True: "PASS", False: "MISS", None: ""}[r["pass"]]
        lines.append(f"{r['label']:<58} {shown:>12} {r['unit']:<6} {r['target']:<8} {verdict}")
    return lines
