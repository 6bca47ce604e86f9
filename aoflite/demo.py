"""The demo: a realistic workload on a fresh, tiered store, then what is where.

    python -m aoflite demo [PATH] [--records N] [--keys K] [--tier2-url URL]

A fleet of devices reports readings: each device is a key; most readings
arrive one at a time, some in bursts (append_many), and configuration
changes touch several keys atomically (transactions). Segments roll as
they fill, and small budgets make the tiers work while the demo runs:
sealed segments compress into Tier 1, upload to Tier 2 (a file:// directory
beside the store, or --tier2-url s3://bucket/prefix with AOFLITE_TIER2_*
credentials) and leave local disk; reading old records hydrates them back.
The demo prints where every segment lives before and after, reads
everything back, checks it, and prints the busiest keys and the throughput.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any, TextIO

from . import open as open_store

__all__ = ["main", "run"]


def _reading(device: int, seq: int, rng: random.Random) -> bytes:
    temp = 20 + rng.random() * 5
    return f'{{"device":{device},"seq":{seq},"temp_c":{temp:.2f},"ok":true}}'.encode()


SEGMENT_BYTES = 4 << 20
#: Small budgets, so that segments move while the demo runs: Tier 0 keeps
#: about two sealed segments, Tier 1 about four compressed ones.
BUDGETS = {"tier0_max_bytes": 2 * SEGMENT_BYTES, "tier1_max_bytes": SEGMENT_BYTES}


def _where(db: Any, out: TextIO, title: str) -> None:
    """Print the tiers every sealed segment lives in, and the totals."""
    res = db.residency()
    print(f"\n{title}:", file=out)
    print(f"  {'segment':>7}  {'t0 (hot)':>10} {'t1 (zstd)':>10} {'t2 (bucket)':>12}", file=out)
    for r in res:
        cells = [f"{r.tiers[t]:,}" if t in r.tiers else "-" for t in ("t0", "t1", "t2")]
        print(f"  {r.segment_id:>7}  {cells[0]:>10} {cells[1]:>10} {cells[2]:>12}", file=out)
    totals = {t: sum(r.tiers.get(t, 0) for r in res) for t in ("t0", "t1", "t2")}
    print(f"  {'total':>7}  {totals['t0']:>10,} {totals['t1']:>10,} {totals['t2']:>12,}", file=out)


def run(
    path: str,
    records: int,
    keys: int,
    out: TextIO = sys.stdout,
    seed: int = 7,
    tier2_url: str | None = None,
) -> dict[str, float]:
    """Write the workload to a new store at path and report on it; returns
    the measured rates. Tier 2 is tier2_url, or a directory path + ".tier2"."""
    rng = random.Random(seed)
    names = [f"device-{i:04d}" for i in range(keys)]
    expected: dict[str, int] = dict.fromkeys(names, 0)
    rates: dict[str, float] = {}
    if tier2_url is None:
        os.makedirs(path + ".tier2")
        tier2_url = "file://" + os.path.abspath(path + ".tier2")
    print(f"aoflite demo: {records:,} readings from {keys:,} devices into {path}", file=out)
    print(f"Tier 2: {tier2_url}; budgets: {BUDGETS}", file=out)

    with open_store(path, segment_bytes=SEGMENT_BYTES, tier2_url=tier2_url, **BUDGETS) as db:
        t0 = time.perf_counter()
        single = records * 6 // 10
        for i in range(single):
            d = rng.randrange(keys)
            db.append(names[d], _reading(d, expected[names[d]], rng))
            expected[names[d]] += 1
        db.commit()
        rates["append"] = single / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        burst_total = 0
        while burst_total < records * 3 // 10:
            d = rng.randrange(keys)
            n = rng.randrange(50, 500)
            db.append_many(names[d], [_reading(d, expected[names[d]] + j, rng) for j in range(n)])
            expected[names[d]] += n
            burst_total += n
        db.commit()
        rates["append_many"] = burst_total / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        tx_records = 0
        while tx_records < records - single - burst_total:
            group = rng.sample(range(keys), min(keys, 4))
            with db.transaction():
                for d in group:
                    db.append(names[d], b'{"config":"rollout","device":%d}' % d)
                    expected[names[d]] += 1
            tx_records += len(group)
        db.commit()
        rates["transaction records"] = tx_records / (time.perf_counter() - t0)
        db.seal()
        _where(db, out, "where the sealed segments live as the appends end (the pipeline at work)")
        t0 = time.perf_counter()
        db.drain_tiers(timeout=300)
        print(f"\n(drain_tiers: the pipeline caught up in {time.perf_counter() - t0:.2f} s)", file=out)
        _where(db, out, "after drain_tiers: every sealed segment in Tier 2, local disk within budget")
        cold = db.residency()[0]
        kid = next(k for k in names if expected[k])
        t0 = time.perf_counter()
        db.read(kid, 0)
        cold_ms = (time.perf_counter() - t0) * 1000

        # every record, store-wide in LSN order: each evicted segment comes
        # back once (a key-by-key scan would fetch each segment per key)
        t0 = time.perf_counter()
        last_lsn = 0
        seen_per_key: dict[str, int] = dict.fromkeys(names, 0)
        for rec in db.scan_all():
            if rec.lsn <= last_lsn:
                raise SystemExit("demo: scan_all out of LSN order")
            if rec.offset != seen_per_key[rec.key]:
                raise SystemExit(f"demo: {rec.key} offset {rec.offset} where {seen_per_key[rec.key]} was expected")
            seen_per_key[rec.key] += 1
            last_lsn = rec.lsn
        if seen_per_key != expected:
            raise SystemExit("demo: scan_all did not return every record appended")
        seen = sum(seen_per_key.values())
        rates["scan_all"] = seen / (time.perf_counter() - t0)
        fetched = sum(1 for e in db.manifest.ledger() if e["type"] == "HydrationDone")
        print(
            f"\nscan_all read all {seen:,} records back, hydrating {fetched} evicted segments from Tier 1 "
            "and Tier 2 on the way (the budgets evict them again once unused)",
            file=out,
        )

        t0 = time.perf_counter()
        reads = min(2_000, seen)
        for _ in range(reads):
            name = names[rng.randrange(keys)]
            if expected[name]:
                db.read(name, rng.randrange(expected[name]))
        rates["point read (any tier)"] = reads / (time.perf_counter() - t0)
        print(
            f"\nthe first read after the drain, of segment {cold.segment_id} in Tier 2 only, took "
            f"{cold_ms:.1f} ms: ranged requests of single frames, not the whole object",
            file=out,
        )
        segments = db.manifest.segments()
        print(f"\n{len(segments)} segments (sealed ones are immutable; one stays active):", file=out)
        print(f"  {'id':>4} {'state':<7} {'records':>9} {'LSNs':>21}", file=out)
        for srec in segments:
            lsns = f"{srec.first_lsn}-{srec.last_lsn}" if srec.record_count else "-"
            print(f"  {srec.segment_id:>4} {srec.state:<7} {srec.record_count:>9,} {lsns:>21}", file=out)
        busiest = sorted(expected, key=expected.__getitem__, reverse=True)[:5]
        print("\nbusiest devices (records, and which segments hold them):", file=out)
        for name in busiest:
            kid, _ = db.manifest.lookup_key(name) or (0, 0)
            where = sorted({seg for _, seg, _, _ in db.manifest.key_ranges(kid)})
            last = db.last(name)
            newest = last.lsn if last is not None else "-"  # a device with no readings (few records, many keys)
            print(f"  {name}: {db.count(name):,} records in segments {where}; last lsn {newest}", file=out)
        events = list(db.manifest.ledger())
        kinds: dict[str, int] = {}
        for e in events:
            kinds[e["type"]] = kinds.get(e["type"], 0) + 1
        print(f"\nledger: {len(events)} events ({', '.join(f'{k} {v}' for k, v in kinds.items())})", file=out)
    print("\nthroughput (records/s, this machine):", file=out)
    for name, rate in rates.items():
        print(f"  {name:<20} {rate:>12,.0f}", file=out)
    print(f"\nall {seen:,} records read back and checked.", file=out)
    return rates


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``aoflite-demo``."""
    p = argparse.ArgumentParser(prog="aoflite-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("path", nargs="?", help="where to create the store (default: a temporary directory, removed after)")
    p.add_argument("--records", type=int, default=300_000, help="readings to write (default 300000)")
    p.add_argument("--keys", type=int, default=500, help="devices, one key each (default 500)")
    p.add_argument(
        "--tier2-url",
        help="Tier 2 (default: a file:// directory beside the store); s3://bucket/prefix takes the endpoint "
        "and credentials from AOFLITE_TIER2_ENDPOINT, AOFLITE_TIER2_ACCESS_KEY, AOFLITE_TIER2_SECRET_KEY",
    )
    args = p.parse_args(argv)
    if args.records < 1 or args.keys < 1:
        p.error("--records and --keys must be at least 1")
    if args.path:
        if os.path.exists(args.path) and (not os.path.isdir(args.path) or os.listdir(args.path)):
            # the demo's checks count on a store of its own: never write
            # into an application's
            p.error(f"{args.path} already exists; the demo writes a new store (give a path that does not exist)")
        if args.tier2_url is None and os.path.exists(args.path + ".tier2"):
            p.error(f"{args.path}.tier2 already exists; the demo makes its Tier 2 directory anew")
        run(args.path, args.records, args.keys, tier2_url=args.tier2_url)
        return 0
    tmp = tempfile.mkdtemp(prefix="aoflite-demo-")
    try:
        run(os.path.join(tmp, "store"), args.records, args.keys, tier2_url=args.tier2_url)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
