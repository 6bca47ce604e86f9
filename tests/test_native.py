"""The C segment engine through its binding (aoflite.segment), and the
format document against the engine's header.

CRC32C on both the CPU instruction and the table path; segments created,
appended, sealed, reopened and checked; headers from newer versions or
other files refused; damaged records reported, never returned; transactions
rolled back to zeros; a Python reader written from docs/format.md parsing
what the engine writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aoflite
from aoflite._native import ffi, lib
from aoflite.segment import (
    FOOTER_BYTES,
    FORMAT_VERSION,
    HEADER_BYTES,
    RECORD_HEADER_BYTES,
    Segment,
    Writer,
    crc32c,
    crc32c_hardware,
    force_software_crc32c,
    native_failpoint_names,
)
from test_torn_tail import (
    FIELD_AT,
    FLAG_BATCH_END,
    FLAG_COMMIT,
    FLAG_CONTROL,
    FLAG_KEYDEF,
    FLAGS_KNOWN,
    HEADER_CRC_AT,
    KEYS,
    MASK_DELTA,
    RECORD,
    SCRIPT,
    TS,
    append,
    begin,
    fix_header_crc,
    flip_byte,
    masked_crc32c,
    new_segment,
    parse_record,
    run_script,
    shrink,
    walk,
    write_script,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent
VECTORS = pathlib.Path(__file__).resolve().parent / "data" / "crc32c_vectors.txt"
FORMAT_H = ROOT / "native" / "aof_format.h"
FORMAT_DOC = ROOT / "docs" / "format.md"

# the layouts as docs/format.md gives them
HEADER = struct.Struct("<8sIIQQQq12sI")
KEY_ENTRY = struct.Struct("<IIQQQQ")
FOOTER = struct.Struct("<QQQQIIIIII8s")


# ------------------------------------------------------------------ CRC32C

HARDWARE_AT_START = crc32c_hardware()


def crc32c_reference(data: bytes, crc: int = 0) -> int:
    """CRC32C bit by bit, straight from the definition."""
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@contextlib.contextmanager
def crc_path(hardware: bool):
    """Run the body on one CRC32C implementation, then restore the one in use."""
    force_software_crc32c(not hardware)
    try:
        assert crc32c_hardware() == hardware
        yield
    finally:
        force_software_crc32c(not HARDWARE_AT_START)


PATHS = [True, False] if HARDWARE_AT_START else [False]


def load_vectors() -> list[tuple[int, bytes, str]]:
    out = []
    for line in VECTORS.read_text().splitlines():
        body, _, note = line.partition("#")
        if body.strip():
            crc, data = body.split()
            unit, _, times = data.partition("*")
            out.append((int(crc, 16), b"" if data == "-" else bytes.fromhex(unit) * int(times or 1), note.strip()))
    return out


def crc_at(data: bytes, shift: int, crc: int = 0) -> int:
    """CRC32C of data placed shift bytes into a buffer (the wrapper only
    takes bytes objects, whose data is always 8-byte aligned)."""
    buf = bytearray(shift) + data
    return lib.aof_crc32c(crc, ffi.from_buffer(buf) + shift, len(data))


@pytest.fixture(params=["hardware", "software"])
def crc_impl(request):
    if request.param == "hardware" and not HARDWARE_AT_START:
        pytest.skip("this CPU has no CRC32C instruction")
    with crc_path(request.param == "hardware"):
        yield request.param


def test_crc32c_vectors_file_holds_the_published_values():
    """The vector file starts with the published answers (so a wrong file
    cannot make a wrong CRC pass)."""
    got = {data: crc for crc, data, _ in load_vectors()}
    assert got[b""] == 0
    assert got[b"123456789"] == 0xE3069283
    assert got[bytes(32)] == 0x8A9136AA
    assert got[b"\xff" * 32] == 0x62A8AB43
    assert got[bytes(range(32))] == 0x46DD794E
    assert got[bytes(range(31, -1, -1))] == 0x113FDB5C
    assert len(got) >= 12 and max(map(len, got)) > 3 * 8192


@pytest.mark.parametrize(("expected", "data", "note"), load_vectors(), ids=lambda v: v if isinstance(v, str) else None)
def test_crc32c_known_answers(crc_impl, expected, data, note):
    """Each implementation gives the known answer, at every alignment; the
    bitwise reference agrees with it (on the short ones: it is slow, and it
    computed the long ones)."""
    if len(data) <= 4096:
        assert crc32c_reference(data) == expected
    assert crc32c(data) == expected
    for shift in range(1, 8):
        assert crc_at(data, shift) == expected, f"start misaligned by {shift}"


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=300),
    cut=st.integers(0, 300),
    shift=st.integers(0, 7),
    seed=st.integers(0, 0xFFFFFFFF),
)
def test_crc32c_paths_agree_and_continue(data, cut, shift, seed):
    """Hardware, table and reference agree on any bytes at any alignment,
    and a CRC continued over a second part equals the CRC of the whole."""
    cut = min(cut, len(data))
    want = crc32c_reference(data)
    for hardware in PATHS:
        with crc_path(hardware):
            assert crc32c(data) == want
            assert crc_at(data, shift) == want
            assert crc32c(data[cut:], crc32c(data[:cut])) == want
            assert crc32c(data, seed) == crc32c_reference(data, seed)


# ------------------------------------------------------------------ segments


def script_model() -> list[tuple[int, int, int, int, bytes]]:
    """(key_id, offset, lsn, timestamp_ms, value) of every SCRIPT record, in
    append order, worked out from SCRIPT alone."""
    out, next_off = [], dict.fromkeys(KEYS, 0)
    for i, step in enumerate(SCRIPT):
        for kid, values in step if isinstance(step[0], tuple) else [step]:
            for v in values:
                out.append((kid, next_off[kid], len(out) + 1, TS + i + 1, v))
                next_off[kid] += 1
    return out


MODEL = script_model()


def assert_reads(seg: Segment, model) -> None:
    """Every record of model reads back identical, one by one, by key range
    and in a whole-segment scan."""
    for kid, off, lsn, ts, value in model:
        assert seg.read(kid, off)[:3] == (lsn, ts, value)
    for kid in {m[0] for m in model}:
        mine = [m for m in model if m[0] == kid]
        assert list(zip(*seg.read_range(kid, 0, 1000)[:4])) == [m[1:] for m in mine]
        assert seg.key_range(kid) == (kid, 0, len(mine))
        assert seg.read(kid, len(mine)) is None
    _, kids, offs, lsns, tss, vals, _ = seg.scan(0, 0, 1000)
    assert list(zip(kids, offs, lsns, tss, vals)) == model


@pytest.fixture(scope="module")
def sealed(tmp_path_factory) -> tuple[str, bytes]:
    """A sealed segment holding SCRIPT: its path and bytes."""
    path = str(tmp_path_factory.mktemp("sealed") / "sealed.seg")
    seg, w = new_segment(path)
    run_script(w)
    w.detach()
    seg.seal()
    with open(path, "rb") as f:
        return path, f.read()


@pytest.fixture(scope="module")
def active(tmp_path_factory) -> tuple[str, bytes]:
    """An unsealed segment holding SCRIPT, its writer closed: path and bytes."""
    path = str(tmp_path_factory.mktemp("active") / "active.seg")
    write_script(path)
    with open(path, "rb") as f:
        return path, f.read()


def copy_of(segment: tuple[str, bytes], tmp_path) -> str:
    """A copy of a fixture's segment file, to damage."""
    path = str(tmp_path / "copy.seg")
    shutil.copyfile(segment[0], path)
    return path


def _footer(image: bytes):
    """The footer fields of a sealed image."""
    return FOOTER.unpack_from(image, len(image) - FOOTER_BYTES)


def _record(image: bytes, kid: int, offset: int):
    """The data record (kid, offset) of a sealed image."""
    return next(r for r in walk(image, stop=_footer(image)[0]) if r.is_data and (r.key_id, r.offset) == (kid, offset))


def set_u32(path: str, pos: int, value: int) -> None:
    """Overwrite a u32 field of a file."""
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(struct.pack("<I", value))


def reseal(path: str) -> None:
    """Recompute the index, file and footer CRCs of a sealed file after an edit."""
    with open(path, "r+b") as f:
        image = bytearray(f.read())
        at = len(image) - FOOTER_BYTES
        index_pos = _footer(bytes(image))[0]
        struct.pack_into("<I", image, at + 40, masked_crc32c(bytes(image[index_pos:at])))
        struct.pack_into("<I", image, at + 44, masked_crc32c(bytes(image[:at])))
        struct.pack_into("<I", image, at + 52, masked_crc32c(bytes(image[at : at + 52])))
        f.seek(0)
        f.write(image)


def test_segment_round_trip(tmp_path):
    """Created, appended, sealed and reopened read-only, a segment returns
    the same records at every stage, and its info says what it holds."""
    path = str(tmp_path / "s.seg")
    seg, w = new_segment(path)
    info = seg.info()
    assert (info.store_id, info.segment_id, info.first_lsn, info.version) == (7, 1, 1, FORMAT_VERSION)
    assert (info.sealed, info.record_count, info.last_lsn, info.records_end) == (False, 0, 0, HEADER_BYTES)
    run_script(w)
    info = seg.info()
    assert (info.sealed, info.record_count, info.last_lsn, info.key_count) == (False, len(MODEL), len(MODEL), 3)
    assert info.file_bytes == os.path.getsize(path)
    assert_reads(seg, MODEL)
    with pytest.raises(ValueError, match="not sealed"):
        seg.verify()

    w.detach()
    sealed_info = seg.seal()
    index_bytes = 3 * KEY_ENTRY.size + len(MODEL) * 8
    assert sealed_info.sealed and sealed_info.records_end == info.records_end
    assert sealed_info.file_bytes == os.path.getsize(path) == info.records_end + index_bytes + FOOTER_BYTES
    assert (sealed_info.record_count, sealed_info.last_lsn, sealed_info.key_count) == (len(MODEL), len(MODEL), 3)
    seg.verify()
    assert_reads(seg, MODEL)

    again, rep = Segment.open(path)
    assert again.info() == sealed_info
    assert (rep.reason, rep.valid_end) == ("end", sealed_info.records_end)
    again.verify()
    assert_reads(again, MODEL)
    assert [again.key_name(k) for k in KEYS] == [n.decode() for n in KEYS.values()]
    assert again.keys() == [(kid, 0, sum(m[0] == kid for m in MODEL)) for kid in KEYS]
    # a scan from an LSN skips what comes before it
    assert again.scan(0, 5, 1000)[3] == list(range(5, len(MODEL) + 1))
    with open(path, "rb") as f:
        assert Segment.check_bytes(f.read())[0] == sealed_info


def test_empty_segment_seals_to_header_and_footer(tmp_path):
    """A segment with no record seals to 128 bytes (header and footer, an
    empty index) and reopens sealed and empty."""
    path = str(tmp_path / "empty.seg")
    seg = Segment.create(path, store_id=7, segment_id=3, first_lsn=10, capacity=4096)
    info = seg.seal()
    seg.verify()
    assert os.path.getsize(path) == info.file_bytes == HEADER_BYTES + FOOTER_BYTES
    again, _ = Segment.open(path)
    assert again.info() == info
    assert (info.sealed, info.first_lsn, info.record_count, info.last_lsn, info.key_count) == (True, 10, 0, 0, 0)
    assert again.keys() == [] and again.read(1, 0) is None and again.scan(0, 0, 10)[1] == []


batch_lists = st.lists(
    st.tuples(
        st.sampled_from(sorted(KEYS)),
        st.lists(st.binary(max_size=40), min_size=1, max_size=4),
        st.sampled_from(["batch", "tx", "rolled back"]),
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch_lists)
def test_any_batches_survive_seal_and_reopen(batches):
    """Whatever the values (empty ones too) and however they are batched
    (appends, append_many, transactions over several of them, rolled-back
    ones in between), a sealed and reopened segment holds exactly what was
    committed, and verifies."""
    model, next_off, in_tx = [], dict.fromkeys(KEYS, 0), False
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.seg")
        seg, w = new_segment(path)
        for i, (kid, values, mode) in enumerate(batches):
            if in_tx and mode != "tx":
                w.end(True)
            if mode != "batch" and not (in_tx and mode == "tx"):
                begin(w)
            in_tx = mode == "tx"
            assert append(w, kid, values, TS + i) == next_off[kid]
            if mode == "rolled back":
                w.end(False)
                continue
            for v in values:
                model.append((kid, next_off[kid], len(model) + 1, TS + i, v))
                next_off[kid] += 1
        if in_tx:
            w.end(True)
        w.detach()
        info = seg.seal()
        seg.verify()
        del seg, w
        again, _ = Segment.open(path)
        assert again.info() == info
        assert (info.record_count, info.last_lsn) == (len(model), len(model))
        assert_reads(again, model)


def test_check_bytes_sealed_and_unsealed_images(sealed, active):
    """A segment image checked in memory gives the same facts as the file
    opened; an unsealed image reports where its records end and why."""
    info, _ = Segment.check_bytes(sealed[1])
    assert info.sealed and info.record_count == len(MODEL) and info.file_bytes == len(sealed[1])

    image = active[1]
    info, rep = Segment.check_bytes(image)
    records_end = walk(image)[-1].end
    assert (info.sealed, info.record_count, info.last_lsn, info.records_end) == (False, len(MODEL), len(MODEL), records_end)
    assert (rep.reason, rep.valid_end, rep.stop_pos, rep.dropped_records) == ("end", records_end, records_end, 0)
    # cut inside the last record: that batch is torn off
    info, rep = Segment.check_bytes(image[: records_end - 1])
    last = walk(image)[-1]
    assert (rep.reason, rep.valid_end, info.record_count) == ("torn", last.start, len(MODEL) - 1)
    with pytest.raises(aoflite.FormatError):
        Segment.check_bytes(b"not a segment at all" * 4)


def test_check_bytes_reports_a_sealed_image_like_open(sealed):
    """Checking a sealed image in memory reports what opening the file
    reports: its records end at the index."""
    _, opened = Segment.open(sealed[0])
    _, checked = Segment.check_bytes(sealed[1])
    assert opened.valid_end == _footer(sealed[1])[0]
    assert checked == opened


@settings(max_examples=400, deadline=None)
@given(
    which=st.sampled_from([0, 1]),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 10**6),
)
def test_check_bytes_survives_any_damage(sealed, active, which, edits, cut):
    """Damaged anywhere, an image is either accepted or refused with an
    aoflite error: never a crash, never another exception."""
    original = (sealed, active)[which][1]
    image = bytearray(original)
    for pos, value in edits:
        image[pos % len(image)] = value
    if cut % 3 == 0:
        del image[len(image) - cut % 64 :]
    try:
        info, _ = Segment.check_bytes(bytes(image))
    except aoflite.Error:
        return
    # damage never passes as a sound sealed segment: only the original does
    assert not info.sealed or image == original
    assert info.record_count <= len(MODEL)


# ------------------------------------------------------------------ headers


def _refused_unchanged(path: str, error: type[Exception], match: str | None = None) -> Exception:
    """Opening path (read-only and for writing) raises error and leaves the
    file exactly as it was."""
    with open(path, "rb") as f:
        before = f.read()
    for write in (False, True):
        with pytest.raises(error, match=match) as info:
            Segment.open(path, write=write)
    with open(path, "rb") as f:
        assert f.read() == before
    return info.value


@pytest.mark.parametrize("state", ["sealed", "active"])
def test_newer_format_version_is_refused_naming_both(request, tmp_path, state):
    """A segment from a newer format version raises FormatError naming its
    version and ours, and is not touched."""
    path = copy_of(request.getfixturevalue(state), tmp_path)
    set_u32(path, 8, FORMAT_VERSION + 1)
    fix_header_crc(path)
    err = _refused_unchanged(path, aoflite.FormatError, rf"version {FORMAT_VERSION + 1}\b.*\b{FORMAT_VERSION}\b")
    assert "newer" in str(err)
    with open(path, "rb") as f, pytest.raises(aoflite.FormatError, match=rf"version {FORMAT_VERSION + 1}\b"):
        Segment.check_bytes(f.read())


@pytest.mark.parametrize(
    "content",
    [b"", b"AOFLSEG", b"AOFLSEG\0" + bytes(HEADER_BYTES - 9), b"AOFLSEG\x01" + bytes(200), b"\0" * 4096],
    ids=["empty", "magic only", "header cut short", "bad magic", "zeros"],
)
def test_not_a_segment_is_a_format_error(tmp_path, content):
    """A file too short for a header or without the magic is not a segment."""
    path = str(tmp_path / "x.seg")
    with open(path, "wb") as f:
        f.write(content)
    _refused_unchanged(path, aoflite.FormatError, "not an aoflite segment")


def test_bad_magic_on_a_real_segment_is_a_format_error(sealed, tmp_path):
    """One flipped magic byte makes a sound segment unrecognisable."""
    path = copy_of(sealed, tmp_path)
    flip_byte(path, 3, 0x01)
    _refused_unchanged(path, aoflite.FormatError)


@pytest.mark.parametrize(
    ("pos", "value"),
    [(16, None), (48, None), (60, None), (8, 0), (12, HEADER_BYTES + 8)],
    ids=["store_id flipped", "reserved flipped", "crc flipped", "version 0", "header_bytes wrong"],
)
def test_damaged_header_is_corruption_at_byte_0(sealed, tmp_path, pos, value):
    """A header whose CRC fails, or that is impossible though its CRC holds,
    is CorruptionError at position 0 naming the file."""
    path = copy_of(sealed, tmp_path)
    if value is None:
        flip_byte(path, pos)
    else:
        set_u32(path, pos, value)
        fix_header_crc(path)
    err = _refused_unchanged(path, aoflite.CorruptionError)
    assert (err.path, err.position) == (path, 0)


def test_missing_or_existing_paths(sealed, tmp_path):
    """Opening a missing segment is NotFound; creating over an existing
    file is refused and leaves it alone."""
    with pytest.raises(aoflite.NotFound):
        Segment.open(str(tmp_path / "missing.seg"))
    path = copy_of(sealed, tmp_path)
    with pytest.raises(aoflite.StorageError) as err:
        Segment.create(path, store_id=7, segment_id=1, first_lsn=1, capacity=1 << 16)
    assert err.value.errno == 17  # EEXIST
    with open(path, "rb") as f:
        assert f.read() == sealed[1]


# ------------------------------------------------------------------ corruption


@pytest.mark.parametrize("field", ["crc", "length", "key_id", "flags", "offset", "lsn", "timestamp_ms", "payload"])
def test_damaged_record_in_sealed_segment_is_reported_not_returned(sealed, tmp_path, field):
    """A flipped byte anywhere in a sealed record makes reading it raise
    CorruptionError naming the file and the record's position; the records
    around it still read; scans and verify refuse too."""
    victim = _record(sealed[1], 1, 1)
    path = copy_of(sealed, tmp_path)
    flip_byte(path, victim.start + (RECORD_HEADER_BYTES if field == "payload" else FIELD_AT[field]))
    seg, _ = Segment.open(path)
    assert seg.info().sealed  # the index still checks out; the record does not

    with pytest.raises(aoflite.CorruptionError) as err:
        seg.read(1, 1)
    assert (err.value.path, err.value.position) == (path, victim.start)
    assert path in str(err.value)
    for kid, off, lsn, ts, value in MODEL:
        if (kid, off) != (1, 1):
            assert seg.read(kid, off)[:3] == (lsn, ts, value)
    for call in (lambda: seg.read_range(1, 0, 10), lambda: seg.scan(0, 0, 1000)):
        with pytest.raises(aoflite.CorruptionError) as err:
            call()
        assert err.value.position == victim.start
    with pytest.raises(aoflite.CorruptionError):
        seg.verify()
    with open(path, "rb") as f, pytest.raises(aoflite.CorruptionError):
        Segment.check_bytes(f.read())


def test_damaged_key_definition_is_reported(sealed, tmp_path):
    """A flipped byte in a key's name makes the name unreadable
    (CorruptionError at the definition), while its data still reads through
    the index; a scan over the definition refuses it."""
    image = sealed[1]
    keydef = next(r for r in walk(image, stop=_footer(image)[0]) if r.flags & FLAG_KEYDEF and r.key_id == 2)
    path = copy_of(sealed, tmp_path)
    flip_byte(path, keydef.end - 1)
    seg, _ = Segment.open(path)
    with pytest.raises(aoflite.CorruptionError) as err:
        seg.key_name(2)
    assert err.value.position == keydef.start
    assert seg.key_name(1) == "alpha"
    for kid, off, lsn, ts, value in MODEL:
        assert seg.read(kid, off)[:3] == (lsn, ts, value)
    with pytest.raises(aoflite.CorruptionError) as err:
        seg.scan(0, 0, 1000)
    assert err.value.position == keydef.start


@pytest.mark.parametrize("damage", [flip_byte, shrink], ids=["flipped", "cut"])
def test_damaged_index_or_footer_falls_back_to_the_records(sealed, tmp_path, damage):
    """A byte flipped anywhere in the index or footer fails their CRCs, and
    a file cut anywhere there has lost its footer: either way the segment
    opens as an unsealed one, indexed from its records, and every record
    still reads back exactly (never through the bad index)."""
    image = sealed[1]
    index_pos = _footer(image)[0]
    path = str(tmp_path / "copy.seg")
    for pos in range(index_pos, len(image)):
        with open(path, "wb") as f:
            f.write(image)
        damage(path, pos)
        try:
            seg, rep = Segment.open(path)
            info = seg.info()
            assert not info.sealed
            assert (info.records_end, info.record_count, info.last_lsn) == (index_pos, len(MODEL), len(MODEL))
            assert rep.valid_end == index_pos
            assert_reads(seg, MODEL)
            with open(path, "rb") as f:
                assert not Segment.check_bytes(f.read())[0].sealed
        except AssertionError as e:
            e.add_note(f"{damage.__name__} at byte {pos} ({pos - index_pos} into the index)")
            raise


def test_index_pointing_at_the_wrong_record_is_caught(sealed, tmp_path):
    """An index whose checksums hold but whose positions are swapped never
    makes a read return another record: each read checks that the record
    it lands on is the key and offset asked for."""
    image = sealed[1]
    index_pos, _, _, _, nkeys = _footer(image)[:5]
    positions = index_pos + nkeys * KEY_ENTRY.size  # alpha's runs come first: offsets 0 and 1
    first, second = _record(image, 1, 0), _record(image, 1, 1)
    path = copy_of(sealed, tmp_path)
    with open(path, "r+b") as f:
        f.seek(positions)
        f.write(struct.pack("<QQ", second.start, first.start))
    reseal(path)
    seg, _ = Segment.open(path)
    assert seg.info().sealed
    for off, pos in ((0, second.start), (1, first.start)):
        with pytest.raises(aoflite.CorruptionError, match="another record") as err:
            seg.read(1, off)
        assert err.value.position == pos
    assert seg.read(1, 2)[:3] == next(m[2:] for m in MODEL if m[:2] == (1, 2))
    with pytest.raises(aoflite.CorruptionError, match="index"):
        seg.verify()


# ------------------------------------------------------------------ writer


def test_rolled_back_transaction_leaves_zeros_and_restores_counters(tmp_path):
    """end(commit=False) forgets the transaction: its bytes are zeros,
    offsets and the LSN are back where they were, a key it defined is gone;
    appends then reuse the same offsets, LSNs and bytes."""
    path = str(tmp_path / "tx.seg")
    seg, w = new_segment(path)
    append(w, 1, [b"before"], TS)
    start = seg.info().records_end
    state = (w.next_offset(1), w.next_offset(3), w.next_lsn(), seg.info())
    begin(w)
    append(w, 1, [b"in-tx-1", b"in-tx-2"], TS)
    append(w, 3, [b"gamma-in-tx"], TS)
    # the owner sees its open transaction; another thread does not
    assert seg.read(3, 0)[2] == b"gamma-in-tx" and w.next_offset(1) == 3
    seen = []
    t = threading.Thread(target=lambda: seen.append((seg.read(1, 1), seg.key_range(3), w.next_offset(1))))
    t.start()
    t.join()
    assert seen == [(None, None, 1)]
    w.sync()
    with open(path, "rb") as f:
        written = f.read()
    assert any(written[start : start + 200])
    w.end(False)

    assert (w.next_offset(1), w.next_offset(3), w.next_lsn(), seg.info()) == state
    assert seg.key_range(3) is None and seg.read(1, 1) is None
    with open(path, "rb") as f:
        assert not any(f.read()[start:])
    assert append(w, 1, [b"after"], TS) == 1
    assert seg.read(1, 1) == (2, TS, b"after", True)
    assert walk(seg.memory()[: seg.info().records_end].tobytes())[-1].start == start
    # the key the rolled-back transaction defined is defined afresh
    assert append(w, 3, [b"gamma-again"], TS) == 0
    assert seg.key_name(3) == "gamma" and seg.read(3, 0) == (3, TS, b"gamma-again", True)


def test_key_defined_in_an_open_transaction_is_named_for_its_owner(tmp_path):
    """The thread that owns a transaction sees a key it defined there (its
    range and records), so it can also read the key's name; only after a
    rollback is the key unknown."""
    seg, w = new_segment(str(tmp_path / "tx.seg"))
    begin(w)
    append(w, 3, [b"gamma-0"], TS)
    assert seg.key_range(3) == (3, 0, 1)
    assert seg.key_name(3) == "gamma"
    w.end(False)
    with pytest.raises(aoflite.NotFound):
        seg.key_name(3)


def test_committed_transaction_ends_with_a_commit_record(tmp_path):
    """end(commit=True) closes the transaction's records (none of which ends
    a batch) with one commit record carrying the next LSN; an empty
    transaction writes nothing."""
    path = str(tmp_path / "tx.seg")
    seg, w = new_segment(path)
    begin(w)
    w.end(True)
    assert seg.info().records_end == HEADER_BYTES
    begin(w)
    append(w, 1, [b"a", b"b"], TS)
    append(w, 2, [b"c"], TS)
    w.end(True)
    image = seg.memory()[: seg.info().records_end].tobytes()
    recs = walk(image)
    *body, commit = recs
    assert [r.flags for r in body] == [FLAG_CONTROL | FLAG_KEYDEF, 0, 0, FLAG_CONTROL | FLAG_KEYDEF, 0]
    assert commit.flags == FLAG_CONTROL | FLAG_COMMIT | FLAG_BATCH_END
    assert (commit.key_id, commit.length, commit.offset, commit.lsn) == (0, 0, 0, 4)
    assert commit.crc == masked_crc32c(image[commit.start + 4 : commit.end])
    assert (seg.info().record_count, w.next_lsn()) == (3, 4)


def test_sealed_segment_takes_no_more_appends(tmp_path):
    """Once sealed, a segment is immutable: a writer still attached to it is
    refused with AOF_ESEALED ("segment is sealed: no more appends") instead
    of writing over the index, and the sealed file stays sound."""
    path = str(tmp_path / "s.seg")
    seg, w = new_segment(path)
    append(w, 1, [b"x"], TS)
    info = seg.seal()
    with open(path, "rb") as f:
        before = f.read()
    assert w.append_many(1, b"late", Writer.lens_array([4]), 1, TS) == lib.AOF_ESEALED
    with open(path, "rb") as f:
        assert f.read() == before
    seg.verify()
    assert Segment.open(path)[0].info() == info


def test_transaction_misuse(tmp_path):
    """Nested begin, end without begin, sealing or closing inside a
    transaction are refused without harm."""
    seg, w = new_segment(str(tmp_path / "tx.seg"))
    with pytest.raises(aoflite.TransactionError):
        w.end(True)
    begin(w)
    append(w, 1, [b"x"], TS)
    with pytest.raises(aoflite.TransactionError):
        begin(w)
    with pytest.raises(ValueError, match="idle"):
        seg.seal()
    with pytest.raises(aoflite.TransactionError):
        w.close()
    w.end(True)
    assert seg.read(1, 0)[2] == b"x"


def test_transaction_grows_segment_then_next_begin_wants_a_roll(tmp_path):
    """A transaction larger than the capacity grows the segment instead of
    splitting; the next begin on the overfull segment asks for a roll."""
    seg, w = new_segment(str(tmp_path / "big.seg"), capacity=4096)
    begin(w)
    append(w, 1, [bytes(3000), bytes(3000)], TS)
    w.end(True)
    assert seg.info().records_end > 4096 and seg.read(1, 1)[2] == bytes(3000)
    assert w.begin_rc() == Writer.AOF_EFULL
    # outside a transaction, a batch that does not fit is refused the same way
    lens = Writer.lens_array([10])
    assert w.append_many(1, b"0123456789", lens, 1, TS) == Writer.AOF_EFULL


def test_writer_refusals(sealed, tmp_path):
    """Bad arguments and states fail with their documented codes and errors."""
    seg, w = new_segment(str(tmp_path / "w.seg"))
    lens = Writer.lens_array([3])
    assert w.append_many(9, b"abc", lens, 1, TS) == Writer.AOF_ENOKEY
    with pytest.raises(ValueError, match="no records"):
        Writer.fail(w.append_many(1, b"", Writer.lens_array([0]), 0, TS), "append_many")
    small = Writer(1, 4, 1 << 20)
    small.set_key(1, b"k", 0)
    with pytest.raises(aoflite.RecordTooLarge):
        Writer.fail(small.append_many(1, b"12345", Writer.lens_array([5]), 1, TS), "append")
    for bad in ((0, b"k"), (0x80000000, b"k"), (1, b""), (1, b"x" * 1025)):
        with pytest.raises(ValueError):
            w.set_key(bad[0], bad[1], 0)
    with pytest.raises(ValueError):
        Writer(0, 1 << 20, 1 << 20)
    with pytest.raises(ValueError, match="already active"):
        w.attach(seg)
    other = Writer(5, 1 << 20, 1 << 20)
    seg2 = Segment.create(str(tmp_path / "w2.seg"), store_id=7, segment_id=2, first_lsn=1, capacity=1 << 16)
    with pytest.raises(ValueError, match="LSN"):
        other.attach(seg2)
    ro, _ = Segment.open(copy_of(sealed, tmp_path), write=True)
    assert ro.info().sealed
    with pytest.raises(ValueError):
        other.attach(ro)
    assert ro.seal() == ro.info()  # sealing a sealed segment changes nothing
    w.detach()
    assert w.append_many(1, b"abc", lens, 1, TS) == Writer.AOF_ENOSEG
    w.close()
    assert w.append_many(1, b"abc", lens, 1, TS) == Writer.AOF_ECLOSED
    with pytest.raises(aoflite.ClosedError):
        Writer.fail(Writer.AOF_ECLOSED, "append")


def test_follower_sees_complete_batches_then_the_seal(tmp_path):
    """A read-only handle on the active segment sees only committed batches
    (not an open transaction), picks up new ones on refresh, and learns
    when the segment is sealed."""
    path = str(tmp_path / "f.seg")
    seg, w = new_segment(path, capacity=4 << 20)
    append(w, 1, [b"one"], TS)
    follower, rep = Segment.open(path)
    assert (rep.reason, follower.info().record_count) == ("end", 1)
    begin(w)
    append(w, 1, [b"two"], TS)
    assert follower.refresh().reason == "end" and follower.read(1, 1) is None
    w.end(True)
    follower.refresh()
    assert follower.read(1, 1) == (2, TS, b"two", True)
    # records larger than the follower's read step arrive whole
    big = [bytes([i]) * 700_000 for i in range(1, 4)]
    append(w, 2, big[:1], TS)
    begin(w)
    append(w, 2, big[1:], TS)
    w.end(True)
    follower.refresh()
    assert follower.read_range(2, 0, 10)[3] == big
    w.detach()
    seg.seal()
    assert follower.refresh().reason == "sealed"
    assert follower.read(1, 1) == (2, TS, b"two", True)


def test_native_failpoint_names_match_the_sites():
    """native_failpoint_names() lists exactly the AOF_FAILPOINT sites in the C sources."""
    sites = set()
    for src in (ROOT / "native").glob("*.c"):
        sites |= set(re.findall(r'AOF_FAILPOINT\("([^"]+)"\)', src.read_text()))
    names = native_failpoint_names()
    assert len(names) == len(set(names))
    assert set(names) == sites


def test_cdef_is_up_to_date():
    """native/aoflite_cdef.h is what tools/gen_cdef.py makes of aoflite.h."""
    done = subprocess.run([sys.executable, "tools/gen_cdef.py", "--check"], cwd=ROOT, capture_output=True, timeout=60)
    assert done.returncode == 0, "native/aoflite_cdef.h is stale: run python tools/gen_cdef.py"


# ------------------------------------------------------------------ format


def format_defines() -> dict[str, int | bytes]:
    """Every numeric and string #define of native/aof_format.h, and the mask constant."""
    text = FORMAT_H.read_text()
    out: dict[str, int | bytes] = {}
    for name, value in re.findall(r"^#define (AOF_\w+) (\S+)", text, re.M):
        if value.startswith('"'):
            out[name] = value.strip('"').replace("\\0", "\0").encode()
        else:
            out[name] = int(value.rstrip("u"), 0)
    out["MASK_DELTA"] = int(re.search(r"\+ (0x[0-9a-f]+)u;", text).group(1), 16)
    return out


DEFS = format_defines()


def doc_section(title: str) -> str:
    text = FORMAT_DOC.read_text()
    start = text.index(f"\n### {title}\n")
    end = text.find("\n#", start + 1)
    return text[start : end if end > 0 else len(text)]


def doc_fields(title: str) -> list[tuple[int, int, str, str]]:
    """(offset, size, type, field) rows of the byte table under a heading."""
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\w+) \| `(\w+)` \|", doc_section(title), re.M)
    return [(int(o), int(s), t, f) for o, s, t, f in rows]


SIZES = {"u16": 2, "u32": 4, "u64": 8, "i64": 8}


@pytest.mark.parametrize(
    ("title", "prefix", "total", "layout"),
    [
        ("Segment header", "AOF_H_", "AOF_HEADER_BYTES", HEADER),
        ("Records", "AOF_R_", "AOF_RECORD_HEADER_BYTES", RECORD),
        ("Sealed index", "AOF_K_", "AOF_KEY_ENTRY_BYTES", KEY_ENTRY),
        ("Footer", "AOF_F_", "AOF_FOOTER_BYTES", FOOTER),
    ],
)
def test_format_doc_tables_match_the_engine(title, prefix, total, layout):
    """Each byte table in docs/format.md lays its fields end to end, to the
    size aof_format.h gives, at the positions aof_format.h names."""
    rows = doc_fields(title)
    pos = 0
    for offset, size, kind, field in rows:
        assert offset == pos, f"{title}: {field} at {offset}, expected {pos}"
        assert size == SIZES.get(kind, size), f"{title}: {field} is {kind} but {size} bytes"
        pos += size
    assert pos == DEFS[total] == layout.size
    at = {field.upper(): offset for offset, _, _, field in rows}
    for name, value in DEFS.items():
        if name.startswith(prefix):
            field = name.removeprefix(prefix)
            assert at.get(field, at.get(field + "_MS")) == value, f"{name} = {value}, the doc says otherwise"


def test_format_doc_and_test_constants_match_the_engine():
    """Flags, limits, magics, the mask constant and the version in the doc
    and in the test helpers are the engine's."""
    doc = FORMAT_DOC.read_text()
    doc_flags = {name: int(bit, 16) for bit, name in re.findall(r"^\| `0x([0-9a-f]+)` \| `(\w+)` \|", doc, re.M)}
    assert doc_flags == {name.removeprefix("AOF_FLAG_"): v for name, v in DEFS.items() if name.startswith("AOF_FLAG_")}
    assert (FLAG_BATCH_END, FLAG_CONTROL, FLAG_KEYDEF, FLAG_COMMIT, FLAGS_KNOWN) == tuple(
        DEFS[f"AOF_FLAG{n}"] for n in ("_BATCH_END", "_CONTROL", "_KEYDEF", "_COMMIT", "S_KNOWN")
    )
    assert f"`0x{DEFS['AOF_FOOTER_SEALED']:x}` `SEALED`" in doc
    assert f"0x{DEFS['MASK_DELTA']:08x}" in doc and MASK_DELTA == DEFS["MASK_DELTA"]
    assert f"0x{DEFS['AOF_MAX_RECORD_BYTES']:x}" in doc and str(DEFS["AOF_MAX_RECORD_BYTES"]) in doc
    assert re.search(rf"1 to\s+{DEFS['AOF_MAX_KEY_BYTES']} bytes", doc)
    assert f"Segment format version: **{DEFS['AOF_FORMAT_VERSION']}**" in doc
    assert DEFS["AOF_FORMAT_VERSION"] == FORMAT_VERSION
    for magic in (DEFS["AOF_SEG_MAGIC"], DEFS["AOF_FOOTER_MAGIC"]):
        assert " ".join(f"{b:02x}" for b in magic) in doc
    assert HEADER_CRC_AT == DEFS["AOF_H_CRC"]
    assert FIELD_AT == {f: DEFS["AOF_R_" + f.upper().removesuffix("_MS")] for f in FIELD_AT}


def test_python_reader_from_the_doc_parses_a_sealed_segment(sealed):
    """A reader written from docs/format.md alone finds every checksum
    sound and every record where the engine says it is."""
    image = sealed[1]
    magic, version, header_bytes, store_id, segment_id, first_lsn, _, _, hcrc = HEADER.unpack_from(image)
    assert (magic, version, header_bytes, store_id, segment_id, first_lsn) == (b"AOFLSEG\0", 1, 64, 7, 1, 1)
    assert hcrc == masked_crc32c(image[:60])

    index_pos, index_bytes, nrec, last_lsn, nkeys, flags, index_crc, file_crc, fversion, fcrc, fmagic = _footer(image)
    footer_at = len(image) - FOOTER_BYTES
    assert (fmagic, flags & 1, fversion) == (b"AOFLEND\0", 1, 1)
    assert fcrc == masked_crc32c(image[footer_at : footer_at + 52])
    assert index_pos + index_bytes == footer_at and index_bytes == nkeys * 40 + nrec * 8
    assert index_crc == masked_crc32c(image[index_pos:footer_at])
    assert file_crc == masked_crc32c(image[:footer_at])

    recs = walk(image, stop=index_pos)
    assert recs[-1].end == index_pos
    data = [r for r in recs if r.is_data]
    assert [(r.key_id, r.offset, r.lsn, r.timestamp_ms, r.payload(image)) for r in data] == MODEL
    assert (nrec, last_lsn) == (len(MODEL), MODEL[-1][2])
    positions = struct.unpack_from(f"<{nrec}Q", image, index_pos + nkeys * 40)
    expected_start = 0
    for i in range(nkeys):
        kid, reserved, first, count, def_pos, pos_start = KEY_ENTRY.unpack_from(image, index_pos + i * 40)
        assert reserved == 0 and pos_start == expected_start
        assert parse_record(image, def_pos).payload(image) == KEYS[kid]
        mine = [r for r in data if r.key_id == kid]
        assert [parse_record(image, p) for p in positions[pos_start : pos_start + count]] == mine
        assert first == mine[0].offset
        expected_start += count
    assert expected_start == nrec

    seg, _ = Segment.open(sealed[0])
    info = seg.info()
    assert (info.records_end, info.record_count, info.last_lsn, info.key_count, info.file_crc) == (
        index_pos,
        nrec,
        last_lsn,
        nkeys,
        file_crc,
    )


def test_header_crc_helper_matches_the_engine(sealed, tmp_path):
    """Rewriting the header CRC of an untouched file changes nothing (so the
    version test above judges only the version)."""
    path = copy_of(sealed, tmp_path)
    fix_header_crc(path)
    with open(path, "rb") as f:
        assert f.read() == sealed[1]


def test_store_directory_matches_the_doc(store_path):
    """The marker, segment file names and manifest tables are laid out as
    docs/format.md says (read here with lmdb directly, not through aoflite)."""
    long_name = "n" * DEFS["AOF_MAX_KEY_BYTES"]  # past LMDB's key limit: why the keys table uses a digest
    with aoflite.open(store_path, segment_bytes=1 << 20) as db:
        db.append_many("k", [b"v0", b"v1"])
        db.append(long_name, b"long")
        sealed_id = db.seal()
    with open(os.path.join(store_path, "aoflite.store"), encoding="ascii") as f:
        marker = re.fullmatch(r"aoflite store\nformat 1\nstore_id ([0-9a-f]{16})\n", f.read())
    assert marker
    store_id = int(marker.group(1), 16)
    assert {"aoflite.store", "LOCK", "manifest", "segments"} <= set(os.listdir(store_path))
    names = sorted(os.listdir(os.path.join(store_path, "segments")))
    assert names == [f"{sealed_id:020d}.seg", f"{sealed_id + 1:020d}.seg"]
    for name in names:
        with open(os.path.join(store_path, "segments", name), "rb") as f:
            header = HEADER.unpack(f.read(HEADER.size))
        assert (header[3], header[4]) == (store_id, int(name.split(".")[0]))

    env = lmdb.open(os.path.join(store_path, "manifest"), readonly=True, lock=False, max_dbs=7)
    try:
        with env.begin() as txn:
            def table(name):
                return dict(txn.cursor(db=env.open_db(name.encode(), txn=txn)))

            meta = table("meta")
            assert (int(meta[b"store_id"]), meta[b"format_version"]) == (store_id, b"1")
            ids = {v.decode(): struct.unpack(">I", k)[0] for k, v in table("key_names").items()}
            assert set(ids) == {"k", long_name} and int(meta[b"next_key_id"]) == max(ids.values()) + 1
            keys = table("keys")
            for name, count in (("k", 2), (long_name, 1)):
                value = keys[hashlib.blake2b(name.encode(), digest_size=32).digest()]
                assert struct.unpack_from("<IQ", value) == (ids[name], count) and value[12:] == name.encode()
            assert table("key_segments") == {
                struct.pack(">IQ", ids["k"], 1): struct.pack("<QQQ", sealed_id, 0, 2),
                struct.pack(">IQ", ids[long_name], 0): struct.pack("<QQQ", sealed_id, 0, 1),
            }
            assert table("lsn_segments") == {struct.pack(">Q", 3): struct.pack(">Q", sealed_id)}
            segments = {struct.unpack(">Q", k)[0]: json.loads(v) for k, v in table("segments").items()}
            assert [segments[s]["state"] for s in sorted(segments)] == ["sealed", "active"]
            assert (segments[sealed_id]["record_count"], segments[sealed_id]["last_lsn"]) == (3, 3)
            ledger = [json.loads(v) for v in table("ledger").values()]
            assert [e["seq"] for e in ledger] == list(range(1, len(ledger) + 1))
            assert ledger[0]["type"] == "StoreCreated" and "SealSegment" in {e["type"] for e in ledger}
    finally:
        env.close()
