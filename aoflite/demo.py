"""The demo: a realistic workload on a fresh store, then what is where.

    aoflite-demo [PATH] [--records N] [--keys K]
    python -m aoflite demo [PATH] ...

A fleet of devices reports readings: each device is a key; most readings
arrive one at a time, some in bursts (append_many), and configuration
changes touch several keys atomically (transactions). Segments roll as
they fill; the demo seals the last one, reads everything back, checks it,
and prints the segments, the busiest keys and the throughput.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from typing import TextIO

from . import open as open_store
from .layout import segment_path

__all__ = ["main", "run"]


def _reading(device: int, seq: int, rng: random.Random) -> bytes:
    temp = 20 + rng.random() * 5
    return f'{{"device":{device},"seq":{seq},"temp_c":{temp:.2f},"ok":true}}'.encode()


def run(path: str, records: int, keys: int, out: TextIO = sys.stdout, seed: int = 7) -> dict[str, float]:
    """Write the workload to a new store at path and report on it; returns
    the measured rates."""
    rng = random.Random(seed)
    names = [f"device-{i:04d}" for i in range(keys)]
    expected: dict[str, int] = dict.fromkeys(names, 0)
    rates: dict[str, float] = {}
    print(f"aoflite demo: {records:,} readings from {keys:,} devices into {path}", file=out)

    with open_store(path, segment_bytes=4 << 20) as db:
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

        t0 = time.perf_counter()
        seen = 0
        for name in names:
            n = 0
            for rec in db.scan(name):
                if rec.offset != n:
                    raise SystemExit(f"demo: {name} offset {rec.offset} where {n} was expected")
                n += 1
            if n != expected[name]:
                raise SystemExit(f"demo: {name} holds {n} records, {expected[name]} were appended")
            seen += n
        rates["scan"] = seen / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        reads = min(50_000, seen)
        for _ in range(reads):
            name = names[rng.randrange(keys)]
            if expected[name]:
                db.read(name, rng.randrange(expected[name]))
        rates["point read"] = reads / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        last_lsn = 0
        for rec in db.scan_all():
            if rec.lsn <= last_lsn:
                raise SystemExit("demo: scan_all out of LSN order")
            last_lsn = rec.lsn
        rates["scan_all"] = seen / (time.perf_counter() - t0)

        segments = db.manifest.segments()
        print(f"\n{len(segments)} segments (sealed ones are immutable; one stays active):", file=out)
        print(f"  {'id':>4} {'state':<7} {'records':>9} {'LSNs':>21} {'bytes on disk':>14}", file=out)
        for srec in segments:
            size = os.path.getsize(segment_path(path, srec.segment_id))
            lsns = f"{srec.first_lsn}-{srec.last_lsn}" if srec.record_count else "-"
            print(f"  {srec.segment_id:>4} {srec.state:<7} {srec.record_count:>9,} {lsns:>21} {size:>14,}", file=out)
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
    args = p.parse_args(argv)
    if args.records < 1 or args.keys < 1:
        p.error("--records and --keys must be at least 1")
    if args.path:
        if os.path.exists(args.path) and (not os.path.isdir(args.path) or os.listdir(args.path)):
            # the demo's checks count on a store of its own: never write
            # into an application's
            p.error(f"{args.path} already exists; the demo writes a new store (give a path that does not exist)")
        run(args.path, args.records, args.keys)
        return 0
    tmp = tempfile.mkdtemp(prefix="aoflite-demo-")
    try:
        run(os.path.join(tmp, "store"), args.records, args.keys)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
