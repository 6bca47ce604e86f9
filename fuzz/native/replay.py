"""Replays segment images through the Python binding (aoflite.segment).

Run by fuzz/test_native_fuzz.py in a child process against a build of the
extension with AddressSanitizer and UndefinedBehaviorSanitizer, so a memory
error anywhere under Segment.* kills the child with a report. For each
image: Segment.check_bytes, then Segment.open on a file in read mode
(sealed: mapped; unsealed: followed) and in write mode (recovery), reading
every record through the index and by scan. Besides not crashing, a read
never returns bytes other than the scan found for the same record, and
anything raised is an aoflite error.

    python replay.py WORKDIR IMAGE...
"""

from __future__ import annotations

import os
import sys

import aoflite
from aoflite import _native
from aoflite.segment import Segment


def read_everything(seg: Segment) -> int:
    """Scan, then read each scanned record through the index; returns how
    many records were read. Corruption may stop either, never change bytes."""
    records = []
    pos = 0
    while True:
        pos, kids, offs, lsns, tss, vals, ends = seg.scan(pos, 0, 64)
        if not kids:
            break
        records += zip(kids, offs, lsns, tss, vals, ends)
    for kid, off, lsn, ts, val, end in records:
        got = seg.read(kid, off)
        if got is not None and got != (lsn, ts, val, end):
            raise AssertionError(f"key id {kid} offset {off}: read {got[:2] + got[3:]} differs from scan {(lsn, ts, end)}")
    for r in seg.keys():
        offs, _, _, vals, _ = seg.read_range(r.key_id, r.first_offset, 8)
        if offs != list(range(r.first_offset, r.first_offset + len(offs))):
            raise AssertionError(f"key id {r.key_id}: read_range offsets {offs} are not consecutive")
    return len(records)


def replay(workdir: str, image: bytes) -> None:
    path = os.path.join(workdir, "replay.seg")
    try:
        Segment.check_bytes(image)
    except aoflite.Error:
        pass
    for write in (False, True):
        with open(path, "wb") as f:
            f.write(image)
        try:
            seg, _ = Segment.open(path, write=write, capacity=len(image) + 4096)
            read_everything(seg)
            if seg.info().sealed:
                seg.verify()
        except aoflite.Error:
            continue


def main(argv: list[str]) -> int:
    workdir, images = argv[0], argv[1:]
    for name in images:
        with open(name, "rb") as f:
            data = f.read()
        try:
            replay(workdir, data)
        except AssertionError as e:
            print(f"replay: {name}: {e}", file=sys.stderr)
            return 1
    print(f"replayed: {len(images)} with {_native.__file__}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
