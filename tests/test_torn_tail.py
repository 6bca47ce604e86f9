"""What recovery keeps of a damaged segment tail, and why.

In the manner of LevelDB's log tests: a small unsealed segment with known
batches (single appends, an append_many, a transaction) is damaged at every
byte position of its records (cut short, one byte flipped, zeroed from
there on), reopened for writing, and compared with a model that says which
batches must survive: exactly those whose every record is intact, up to the
first damaged record. The scan report's reason must follow the reader rules
of docs/format.md, and appending must continue at the right offset and LSN.

The byte-level helpers and the segment script here are imported by
tests/test_native.py too.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from typing import NamedTuple

import pytest

import aoflite
from aoflite import layout
from aoflite.segment import (
    HEADER_BYTES,
    MAX_RECORD_BYTES,
    RECORD_HEADER_BYTES,
    ScanReport,
    Segment,
    Writer,
    crc32c,
)
from testhelpers import check_recovered, copy_tree

# The format as docs/format.md states it (test_native checks these against
# native/aof_format.h, so a change there cannot slip past these tests).
RECORD = struct.Struct("<IIIHHQQq")  # crc length key_id flags reserved offset lsn timestamp_ms
HEADER_CRC_AT = 60
MASK_DELTA = 0xA282EAD8
FLAG_BATCH_END = 0x1
FLAG_CONTROL = 0x2
FLAG_KEYDEF = 0x4
FLAG_COMMIT = 0x8
FLAGS_KNOWN = 0xF

FIELD_AT = {"crc": 0, "length": 4, "key_id": 8, "flags": 12, "reserved": 14, "offset": 16, "lsn": 24, "timestamp_ms": 32}
FIELD_FMT = {"crc": "<I", "length": "<I", "key_id": "<I", "flags": "<H", "reserved": "<H", "offset": "<Q", "lsn": "<Q", "timestamp_ms": "<q"}


# ------------------------------------------------------------ byte helpers


def mask(crc: int) -> int:
    """A CRC as stored: rotated right 15 bits plus a constant."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The stored form of data's CRC32C."""
    return mask(crc32c(data))


def shrink(path: str | os.PathLike, size: int) -> None:
    """Cut the file to size bytes, as a crash mid-write leaves it."""
    os.truncate(path, size)


def flip_byte(path: str | os.PathLike, pos: int, bits: int = 0xFF) -> None:
    """XOR the byte at pos with bits."""
    with open(path, "r+b") as f:
        f.seek(pos)
        old = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([old ^ bits]))


def zero_from(path: str | os.PathLike, pos: int) -> None:
    """Overwrite everything from pos to the end of the file with zeros."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(bytes(size - pos))


def set_field(path: str | os.PathLike, pos: int, field: str, value: int) -> None:
    """Overwrite one header field of the record at pos (the CRC is left stale)."""
    with open(path, "r+b") as f:
        f.seek(pos + FIELD_AT[field])
        f.write(struct.pack(FIELD_FMT[field], value))


def fix_crc(path: str | os.PathLike, pos: int) -> None:
    """Recompute the masked CRC of the record at pos over its header and its
    payload as its length field now says, so only the edit itself is judged."""
    with open(path, "r+b") as f:
        f.seek(pos)
        head = f.read(RECORD_HEADER_BYTES)
        (length,) = struct.unpack_from("<I", head, 4)
        body = head[4:] + f.read(length)
        f.seek(pos)
        f.write(struct.pack("<I", masked_crc32c(body)))


def fix_header_crc(path: str | os.PathLike) -> None:
    """Recompute the segment header's masked CRC (over bytes 0..59)."""
    with open(path, "r+b") as f:
        head = f.read(HEADER_CRC_AT)
        f.write(struct.pack("<I", masked_crc32c(head)))


class Rec(NamedTuple):
    """One record as parsed from the bytes."""

    start: int
    end: int
    crc: int
    length: int
    key_id: int
    flags: int
    reserved: int
    offset: int
    lsn: int
    timestamp_ms: int

    @property
    def is_data(self) -> bool:
        return not self.flags & FLAG_CONTROL

    def payload(self, data: bytes) -> bytes:
        return data[self.start + RECORD_HEADER_BYTES : self.end]


def parse_record(data: bytes, pos: int) -> Rec:
    """The record header at pos and where the record ends."""
    fields = RECORD.unpack_from(data, pos)
    return Rec(pos, pos + RECORD_HEADER_BYTES + fields[1], *fields)


def walk(data: bytes, pos: int = HEADER_BYTES, stop: int | None = None) -> list[Rec]:
    """Every record of an intact image from pos to stop (or to the first
    all-zero header), each one's CRC checked."""
    stop = len(data) if stop is None else stop
    out = []
    while stop - pos >= RECORD_HEADER_BYTES and any(data[pos : pos + RECORD_HEADER_BYTES]):
        rec = parse_record(data, pos)
        assert rec.end <= stop, f"record at {pos} runs past {stop}"
        assert mask(crc32c(data[pos + 4 : rec.end])) == rec.crc, f"record at {pos} fails its CRC"
        out.append(rec)
        pos = rec.end
    return out


def batches(recs: Iterable[Rec]) -> list[list[Rec]]:
    """Records grouped into batches, each ending at a BATCH_END record."""
    out: list[list[Rec]] = [[]]
    for rec in recs:
        out[-1].append(rec)
        if rec.flags & FLAG_BATCH_END:
            out.append([])
    assert not out[-1], "the image ends inside a batch"
    return out[:-1]


def begin(w: Writer) -> None:
    """Open a transaction, raising on failure."""
    rc = w.begin_rc()
    if rc:
        Writer.fail(rc, "beginning a transaction")


def append(w: Writer, key_id: int, values: list[bytes], ts: int) -> int:
    """Append values to key_id as one batch (inside a transaction if one is
    open); returns the first offset, raising on failure."""
    lens = Writer.lens_array([len(v) for v in values])
    first = w.append_many(key_id, b"".join(values), lens, len(values), ts)
    if first < 0:
        Writer.fail(first, f"appending to key id {key_id}")
    return first


# ------------------------------------------------------------ the image

CAPACITY = 4096
TS = 1_700_000_000_000
KEYS = {1: b"alpha", 2: b"beta", 3: b"gamma"}
# (key_id, values) per batch; a tuple of such pairs is one transaction
SCRIPT = [
    (1, [b"alpha-0"]),
    (2, [b"beta-0"]),
    (1, [b"alpha-1"]),
    (2, [b"beta-1", b"", b"beta-3-is-a-longer-value"]),  # append_many, with an empty value
    ((1, [b"alpha-2"]), (3, [b"gamma-0"]), (2, [b"beta-4"])),  # gamma is first defined inside
    (1, [b"alpha-3"]),
]


class Image(NamedTuple):
    """An unsealed segment's bytes and its records."""

    data: bytes
    recs: list[Rec]
    batches: list[list[Rec]]

    @property
    def data_end(self) -> int:
        return self.recs[-1].end

    def batch_of(self, marker: Callable[[Rec], bool]) -> list[Rec]:
        return next(b for b in self.batches if any(map(marker, b)))


def new_segment(path: str, capacity: int = CAPACITY) -> tuple[Segment, Writer]:
    """A new segment (first LSN 1) with a writer attached that knows KEYS."""
    seg = Segment.create(path, store_id=7, segment_id=1, first_lsn=1, capacity=capacity)
    w = Writer(1, 1 << 20, 1 << 20)
    for kid, name in KEYS.items():
        w.set_key(kid, name, 0)
    w.attach(seg)
    return seg, w


def run_script(w: Writer) -> None:
    """Append SCRIPT, step i with timestamp TS + i + 1."""
    for i, step in enumerate(SCRIPT):
        ts = TS + i + 1
        if isinstance(step[0], tuple):
            begin(w)
            for kid, values in step:
                append(w, kid, values, ts)
            w.end(True)
        else:
            append(w, step[0], step[1], ts)


def write_script(path: str) -> None:
    """SCRIPT in a new segment, the writer closed without sealing."""
    _, w = new_segment(path)
    run_script(w)
    w.close()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Image:
    """SCRIPT as an unsealed segment, parsed (built once: tests damage copies)."""
    path = str(tmp_path_factory.mktemp("image") / "active.seg")
    write_script(path)
    with open(path, "rb") as f:
        data = f.read()
    recs = walk(data)
    assert len(data) == CAPACITY
    return Image(data, recs, batches(recs))


# ------------------------------------------------------------ the model


class Expect(NamedTuple):
    """The scan report recovery must give, and the records it must keep."""

    report: ScanReport
    kept: list[Rec]


def classify(data: bytes, pos: int) -> str:
    """Why a scan stops at pos, by the reader rules in their order."""
    rest = len(data) - pos
    if rest < RECORD_HEADER_BYTES:
        return "torn" if any(data[pos:]) else "end"
    if not any(data[pos : pos + RECORD_HEADER_BYTES]):
        return "end"
    rec = parse_record(data, pos)
    if rec.length > MAX_RECORD_BYTES:
        return "bad header"
    if rec.length > rest - RECORD_HEADER_BYTES:
        return "torn"
    if mask(crc32c(data[pos + 4 : rec.end])) != rec.crc:
        return "checksum"
    if rec.reserved or rec.flags & ~FLAGS_KNOWN:
        return "bad header"
    return "out of sequence"


def expect(image: Image, damaged: bytes, reason: str | None = None) -> Expect:
    """What recovery must keep: every batch before the one holding the first
    record that is no longer byte for byte what was written."""
    kept: list[Rec] = []
    for batch in image.batches:
        for i, rec in enumerate(batch):
            if rec.end > len(damaged) or damaged[rec.start : rec.end] != image.data[rec.start : rec.end]:
                valid_end = batch[0].start
                pending = sum(r.is_data for r in batch[:i])
                return _expect(damaged, kept, valid_end, rec.start, pending, reason)
        kept += batch
    return _expect(damaged, kept, image.data_end, image.data_end, 0, reason)


def _expect(damaged: bytes, kept: list[Rec], valid_end: int, stop: int, pending: int, reason: str | None) -> Expect:
    reason = reason or classify(damaged, stop)
    looked_at = 0 if reason == "end" else min(RECORD_HEADER_BYTES, len(damaged) - stop)
    return Expect(ScanReport(valid_end, stop, stop - valid_end + looked_at, pending, reason), kept)


def check_recovery(image: Image, path: str, reason: str | None = None) -> Segment:
    """Reopen the damaged file at path for writing and check it against the model."""
    with open(path, "rb") as f:
        damaged = f.read()
    exp = expect(image, damaged, reason)
    seg, rep = Segment.open(path, write=True, capacity=CAPACITY)
    assert rep == exp.report
    info = seg.info()
    data_kept = [r for r in exp.kept if r.is_data]
    assert (info.sealed, info.records_end, info.record_count) == (False, exp.report.valid_end, len(data_kept))
    assert info.last_lsn == (data_kept[-1].lsn if data_kept else 0)
    # what followed the last complete batch is gone from the file, not just skipped
    with open(path, "rb") as f:
        after = f.read()
    assert len(after) == CAPACITY and not any(after[exp.report.valid_end :])
    assert after[: exp.report.valid_end] == image.data[: exp.report.valid_end]
    next_offset = {}
    for kid in KEYS:
        mine = [r for r in data_kept if r.key_id == kid]
        offs, lsns, tss, vals, _ = seg.read_range(kid, 0, 64)
        assert list(zip(offs, lsns, tss, vals)) == [(r.offset, r.lsn, r.timestamp_ms, r.payload(image.data)) for r in mine]
        assert (seg.key_range(kid) is None) == (not mine)
        next_offset[kid] = len(mine)
    assert info.key_count == sum(1 for n in next_offset.values() if n)
    _append_after(seg, info.last_lsn + 1 if data_kept else 1, next_offset)
    return seg


def _append_after(seg: Segment, next_lsn: int, next_offset: dict[int, int]) -> None:
    """Appending continues where the kept records end, for every key."""
    w = Writer(next_lsn, 1 << 20, 1 << 20)
    for kid, name in KEYS.items():
        w.set_key(kid, name, next_offset[kid])
    w.attach(seg)
    for i, kid in enumerate(KEYS):
        off = append(w, kid, [b"after-" + KEYS[kid]], TS + 100)
        assert off == next_offset[kid]
        assert seg.read(kid, off)[:3] == (next_lsn + i, TS + 100, b"after-" + KEYS[kid])
    w.close()


def damage_everywhere(image: Image, tmp_path, damage: Callable[[str, int], None]) -> None:
    """Damage a fresh copy at every position from the first record to a
    header's length past the last one, and check each recovery."""
    path = str(tmp_path / "case.seg")
    for pos in range(HEADER_BYTES, image.data_end + RECORD_HEADER_BYTES + 1):
        with open(path, "wb") as f:
            f.write(image.data)
        damage(path, pos)
        try:
            check_recovery(image, path)
        except AssertionError as e:
            e.add_note(f"damage at byte {pos} ({damage.__name__})")
            raise


# ------------------------------------------------------------ exhaustive


def test_cut_at_every_position_keeps_complete_batches(image, tmp_path):
    """A file cut short anywhere in its records keeps exactly the batches that
    end before the cut; a cut inside a record is "torn", at a record boundary
    a clean "end" (dropping the unfinished batch's records)."""
    damage_everywhere(image, tmp_path, shrink)


@pytest.mark.parametrize("bits", [0x01, 0x80, 0xFF], ids=hex)
def test_flipped_byte_anywhere_drops_its_batch_and_all_after(image, tmp_path, bits):
    """One flipped byte in a record drops that record's batch and everything
    after it, never more; one in the zero space after the last record drops
    nothing. (Which bits flip decides whether a damaged length reads as
    torn, bad or merely mismatched.)"""

    def flip(path: str, pos: int) -> None:
        flip_byte(path, pos, bits)

    damage_everywhere(image, tmp_path, flip)


def test_zeroed_from_any_position_keeps_the_prefix(image, tmp_path):
    """Zeros from a position on (a lost write of the last pages) keep every
    batch the zeros leave intact."""
    damage_everywhere(image, tmp_path, zero_from)


# ------------------------------------------------------------ named cases


def _fresh(image: Image, tmp_path) -> str:
    path = str(tmp_path / "case.seg")
    with open(path, "wb") as f:
        f.write(image.data)
    return path


def _recover(path: str) -> ScanReport:
    return Segment.open(path, write=True, capacity=CAPACITY)[1]


def test_half_an_append_many_is_dropped_whole(image, tmp_path):
    """A torn append_many loses all its records: cut at a record boundary
    after two of three it ends cleanly but drops both, cut inside the third
    it is torn; either way the key keeps only its earlier records."""
    many = image.batch_of(lambda r: r.length == 0)  # the append_many holds the empty value
    assert [r.is_data for r in many] == [True, True, True]
    for cut, reason in ((many[2].start, "end"), (many[2].start + RECORD_HEADER_BYTES + 3, "torn")):
        path = _fresh(image, tmp_path)
        shrink(path, cut)
        rep = _recover(path)
        assert (rep.reason, rep.dropped_records, rep.valid_end, rep.stop_pos) == (reason, 2, many[0].start, many[2].start)
        check_recovery(image, path)


def test_transaction_without_its_commit_record_is_dropped(image, tmp_path):
    """A transaction whose commit record never reached the disk is dropped
    with every record in it, and the key it defined disappears."""
    tx = image.batch_of(lambda r: r.flags & FLAG_COMMIT)
    commit = tx[-1]
    assert (commit.flags, commit.key_id, commit.length) == (FLAG_CONTROL | FLAG_COMMIT | FLAG_BATCH_END, 0, 0)
    path = _fresh(image, tmp_path)
    shrink(path, commit.start)
    rep = _recover(path)
    assert (rep.reason, rep.dropped_records, rep.valid_end) == ("end", 3, tx[0].start)
    check_recovery(image, path)


def test_length_field_is_not_trusted_after_a_checksum_mismatch(tmp_path):
    """The last record's value is itself a well-formed record that carries
    on its key's sequence; setting the outer length field to 0 points a
    trusting reader straight at it. Recovery stops at the checksum mismatch
    instead: the last record is dropped and the embedded one never read."""
    # alpha's definition and alpha-0 take LSN 1, so the outer record is
    # alpha offset 1 at LSN 2: exactly what the ghost claims to be
    ghost = bytearray(RECORD.pack(0, 5, 1, FLAG_BATCH_END, 0, 1, 2, TS) + b"ghost")
    ghost[0:4] = struct.pack("<I", masked_crc32c(bytes(ghost[4:])))
    path = str(tmp_path / "ghost.seg")
    seg, w = new_segment(path)
    append(w, 1, [b"alpha-0"], TS)
    assert append(w, 1, [bytes(ghost)], TS) == 1
    w.close()
    del w, seg
    with open(path, "rb") as f:
        outer = walk(f.read())[-1]
    assert (outer.offset, outer.lsn) == (1, 2)
    set_field(path, outer.start, "length", 0)

    seg, rep = Segment.open(path, write=True, capacity=CAPACITY)
    assert (rep.reason, rep.valid_end, rep.stop_pos, rep.dropped_records) == ("checksum", outer.start, outer.start, 0)
    assert seg.key_range(1).count == 1
    assert seg.read(1, 1) is None
    with open(path, "rb") as f:
        assert b"ghost" not in f.read()


@pytest.mark.parametrize(
    ("length", "reason"),
    [
        (0xFFFFFFFF, "bad header"),  # above the largest record a writer produces
        (CAPACITY, "torn"),  # runs past the end of the file
        (5, "checksum"),  # plausible, but the CRC covers a different span
    ],
)
def test_corrupt_length_of_the_last_record_drops_it(image, tmp_path, length, reason):
    """A damaged length field drops its record whatever it claims; nothing
    is read past it."""
    last = image.recs[-1]
    path = _fresh(image, tmp_path)
    set_field(path, last.start, "length", length)
    rep = _recover(path)
    assert (rep.reason, rep.valid_end, rep.stop_pos) == (reason, last.start, last.start)
    check_recovery(image, path)


def _last(image: Image) -> Rec:
    return image.recs[-1]


def _commit(image: Image) -> Rec:
    return next(r for r in image.recs if r.flags & FLAG_COMMIT)


def _gamma_def(image: Image) -> Rec:
    return next(r for r in image.recs if r.flags & FLAG_KEYDEF and r.key_id == 3)


@pytest.mark.parametrize(
    ("which", "field", "value", "reason"),
    [
        (_last, "flags", FLAG_BATCH_END | 0x10, "bad header"),
        (_last, "reserved", 1, "bad header"),
        (_last, "offset", "+1", "out of sequence"),
        (_last, "lsn", "+1", "out of sequence"),
        (_last, "key_id", 9, "out of sequence"),  # a key never defined here
        (_last, "key_id", 0x80000001, "out of sequence"),  # key ids never use the top bit
        (_commit, "key_id", 1, "bad header"),
        (_commit, "flags", FLAG_CONTROL | FLAG_COMMIT, "bad header"),  # a commit must end its batch
        (_commit, "flags", FLAG_CONTROL | FLAG_BATCH_END, "bad header"),  # neither a definition nor a commit
        (_commit, "lsn", "-1", "out of sequence"),
        (_gamma_def, "key_id", 1, "out of sequence"),  # a second definition of a key
        (_gamma_def, "flags", FLAG_CONTROL | FLAG_KEYDEF | FLAG_COMMIT, "out of sequence"),
        (_gamma_def, "length", 0, "out of sequence"),  # a key name is never empty
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else None,
)
def test_sound_record_that_breaks_the_rules_ends_the_scan(image, tmp_path, which, field, value, reason):
    """A record with a valid CRC but an impossible header or an out-of-order
    offset, LSN or key definition ends the scan like damage does: its batch
    and everything after it are dropped."""
    rec = which(image)
    path = _fresh(image, tmp_path)
    # a string is a change relative to the field's current value
    set_field(path, rec.start, field, getattr(rec, field) + int(value) if isinstance(value, str) else value)
    fix_crc(path, rec.start)
    check_recovery(image, path, reason)


def test_fix_crc_makes_an_edited_payload_acceptable(image, tmp_path):
    """The CRC is what stands between a changed value and a reader: with it
    recomputed, a flipped payload byte is taken as written (this proves the
    helper the other tests rely on)."""
    last = image.recs[-1]
    path = _fresh(image, tmp_path)
    flip_byte(path, last.start + RECORD_HEADER_BYTES, 0x20)
    fix_crc(path, last.start)
    seg, rep = Segment.open(path, write=True, capacity=CAPACITY)
    assert (rep.reason, rep.valid_end) == ("end", image.data_end)
    value = last.payload(image.data)
    assert seg.read(last.key_id, last.offset)[2] == bytes([value[0] ^ 0x20]) + value[1:]


def test_zero_header_ends_the_scan_whatever_follows(image, tmp_path):
    """A record header of 40 zero bytes is preallocated space: the scan ends
    there cleanly ("end"), even with non-zero bytes after it."""
    last = image.recs[-1]
    path = _fresh(image, tmp_path)
    with open(path, "r+b") as f:
        f.seek(last.start)
        f.write(bytes(RECORD_HEADER_BYTES))
    rep = _recover(path)
    assert (rep.reason, rep.valid_end, rep.dropped_bytes, rep.dropped_records) == ("end", last.start, 0, 0)
    check_recovery(image, path)


def test_read_only_open_follows_without_changing_the_file(image, tmp_path):
    """Opening a damaged active segment read-only sees the same complete
    batches but leaves the torn bytes in the file (only a writer truncates)."""
    tx = image.batch_of(lambda r: r.flags & FLAG_COMMIT)
    path = _fresh(image, tmp_path)
    shrink(path, tx[-1].start + 7)
    seg, rep = Segment.open(path)
    assert (rep.reason, rep.valid_end, rep.dropped_records) == ("torn", tx[0].start, 3)
    assert seg.info().records_end == tx[0].start
    assert os.path.getsize(path) == tx[-1].start + 7


# ------------------------------------------------------------ public API


def _store_script(db) -> tuple[dict[str, list[bytes]], list[list[tuple[str, int]]]]:
    """Appends in two segments: a and b start in a sealed one, so the active
    one defines them again, and c is new in a transaction."""
    appended: dict[str, list[bytes]] = {"a": [], "b": [], "c": []}
    batch_list = []

    def put(key: str, value: bytes) -> tuple[str, int]:
        off = db.append(key, value)
        appended[key].append(value)
        return key, off

    put("a", b"a0")
    put("b", b"b0")
    assert db.seal() is not None
    put("a", b"a1")
    offs = db.append_many("a", [b"a2", b"a3", b"a4"])
    appended["a"] += [b"a2", b"a3", b"a4"]
    batch_list.append([("a", o) for o in offs])
    with db.transaction():
        batch_list.append([put("b", b"b1"), put("c", b"c0"), put("a", b"a5")])
    put("c", b"c1")
    return appended, batch_list


def test_store_recovers_the_valid_prefix_of_a_cut_active_segment(store_path, tmp_path):
    """Through aoflite.open: an active segment cut inside any of its last
    batches recovers to exactly the complete batches before the cut (keys'
    sealed records untouched), with every crash invariant holding and
    appends continuing."""
    with aoflite.open(store_path, segment_bytes=1 << 20) as db:
        appended, batch_list = _store_script(db)
    sealed_id, sid = layout.segment_ids(store_path)
    sealed, _ = Segment.open(layout.segment_path(store_path, sealed_id))
    in_sealed = {sealed.key_name(r.key_id): r.count for r in sealed.keys()}
    with open(layout.segment_path(store_path, sid), "rb") as f:
        data = f.read()
    recs = walk(data)
    names = {}
    for r in recs:
        if r.flags & FLAG_KEYDEF:
            names[r.key_id] = r.payload(data).decode()
    tail = [r for b in batches(recs)[-3:] for r in b]
    cuts = sorted({p for r in tail for p in (r.start, r.start + 1, (r.start + r.end) // 2)} | {recs[-1].end - 1})
    for n, cut in enumerate(cuts):
        copy = str(tmp_path / f"copy{n}")
        copy_tree(store_path, copy)
        shrink(layout.segment_path(copy, sid), cut)
        survive = {k: in_sealed.get(k, 0) for k in appended}
        for batch in batches(recs):
            if batch[-1].end <= cut:
                for r in batch:
                    if r.is_data:
                        survive[names[r.key_id]] += 1
        try:
            got = check_recovered(copy, appended, survive, batch_list)
            assert got == {k: v + 1 for k, v in survive.items()}  # + the record appended after recovery
        except AssertionError as e:
            e.add_note(f"segment cut at byte {cut}")
            raise
