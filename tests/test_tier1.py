"""Tier 1: sealed segments in the Zstandard seekable format (aoflite/tiers/seekable.py)."""

from __future__ import annotations

import math
import os
import pathlib
import random
import re
import shutil
import struct
import subprocess

import pytest
import pyzstd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aoflite
from aoflite.errors import CorruptionError, FormatError, StorageError
from aoflite.layout import segment_path
from aoflite.segment import crc32c
from aoflite.tiers import seekable as sk

KiB, MiB = 1 << 10, 1 << 20
SMALL_FRAMES = sk.MIN_FRAME_BYTES


def _values(rng: random.Random, total: int) -> list[bytes]:
    """About total bytes of values, half compressible text, half random, so
    frames compress to different sizes."""
    out, n = [], 0
    while n < total:
        size = rng.choice((0, 1, 37, 100, 900, 4096, 20000))
        v = rng.randbytes(size) if rng.random() < 0.5 else (b"reading %d " % n * (size // 12 + 1))[:size]
        out.append(v)
        n += size + 40
    return out


@pytest.fixture(scope="module")
def segments(tmp_path_factory) -> dict[str, str]:
    """Sealed segment files of several sizes, by name."""
    root = str(tmp_path_factory.mktemp("tier1") / "store")
    rng = random.Random(11)
    sizes = {
        "one-empty-record": 0,
        "few": 2 * KiB,
        "under-a-frame": 200 * KiB,
        "frames": 1200 * KiB,
        "many-frames": 3300 * KiB,
    }
    out = {}
    with aoflite.open(root, segment_bytes=8 * MiB, durability="off") as db:
        for name, total in sizes.items():
            if total == 0:
                db.append("k0", b"")
            for i, v in enumerate(_values(rng, total)):
                db.append(f"k{i % 17}", v)
            out[name] = segment_path(root, db.seal())
    return out


@pytest.fixture(scope="module")
def packed(segments, tmp_path_factory) -> tuple[str, bytes, sk.CompressedInfo]:
    """The many-frames segment compressed with small frames: (path, original bytes, info)."""
    dst = str(tmp_path_factory.mktemp("packed") / "seg.zst")
    info = sk.compress_segment(segments["many-frames"], dst, frame_bytes=SMALL_FRAMES)
    with open(segments["many-frames"], "rb") as f:
        return dst, f.read(), info


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _leftovers(directory) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


class CountingSource(sk.FileSource):
    """A FileSource that records its reads, as a ranged-GET backend would."""

    def __init__(self, path):
        super().__init__(path)
        self.reads: list[tuple[int, int]] = []

    def read_at(self, offset, length):
        self.reads.append((offset, length))
        return super().read_at(offset, length)


# ------------------------------------------------------------ round trips


@pytest.mark.parametrize("frame_bytes", [SMALL_FRAMES, sk.DEFAULT_FRAME_BYTES])
@pytest.mark.parametrize("name", ["one-empty-record", "few", "under-a-frame", "frames", "many-frames"])
def test_round_trip(segments, tmp_path, name, frame_bytes):
    src = segments[name]
    original = _read(src)
    info = sk.compress_segment(src, tmp_path / "seg.zst", frame_bytes=frame_bytes)
    assert info == sk.CompressedInfo(
        compressed_bytes=os.path.getsize(tmp_path / "seg.zst"),
        original_bytes=len(original),
        frames=math.ceil(len(original) / frame_bytes),
        crc32c=crc32c(original),
    )
    back = sk.decompress_segment(tmp_path / "seg.zst", tmp_path / "seg.back", expected_crc32c=info.crc32c)
    assert back == info
    assert _read(tmp_path / "seg.back") == original
    assert _leftovers(tmp_path) == []


def test_frames_hold_frame_bytes_each(packed):
    path, original, info = packed
    table = sk.read_seek_table(path)
    assert len(table) == info.frames > 3
    assert [f.original_bytes for f in table][:-1] == [SMALL_FRAMES] * (len(table) - 1)
    assert table.original_bytes == len(original) and table.file_bytes == info.compressed_bytes


def test_compress_replaces_destination(segments, tmp_path):
    dst = tmp_path / "seg.zst"
    _write(dst, b"an older copy")
    sk.compress_segment(segments["few"], dst)
    sk.decompress_segment(dst, tmp_path / "back")
    assert _read(tmp_path / "back") == _read(segments["few"])



def test_unwritable_destination_is_a_storage_error(segments, tmp_path):
    with pytest.raises(StorageError, match="writing"):
        sk.compress_segment(segments["few"], tmp_path / "missing" / "seg.zst")
    assert os.listdir(tmp_path) == []

def test_frame_bytes_and_level_are_checked(segments, tmp_path):
    for bad in (SMALL_FRAMES - 1, sk.MAX_FRAME_BYTES + 1):
        with pytest.raises(ValueError, match="frame_bytes"):
            sk.compress_segment(segments["few"], tmp_path / "x", frame_bytes=bad)
    with pytest.raises(TypeError, match="level"):
        sk.compress_segment(segments["few"], tmp_path / "x", level="3")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------ the seek table


def test_seek_table_from_tail_alone(packed):
    path, original, info = packed
    data = _read(path)
    size = len(data)
    # a remote reader: the footer first, then exactly the table
    need = sk.SeekTable.tail_size(data[-sk.SeekTable.FOOTER_BYTES :], size)
    assert need == 8 + 8 * info.frames + 9
    with pytest.raises(ValueError, match="last"):
        sk.SeekTable.from_tail(data[-(need - 1) :], size)
    table = sk.SeekTable.from_tail(data[-need:], size)
    assert table.table_bytes == need and table.file_bytes == size
    # each frame's compressed bytes alone decompress to its slice of the original
    for f in table:
        frame = data[f.compressed_pos : f.compressed_end]
        assert pyzstd.decompress(frame) == original[f.original_pos : f.original_end]
    # a longer tail gives the same table
    longer = sk.SeekTable.from_tail(data[-sk.TAIL_FETCH_BYTES :], size)
    assert list(longer) == list(table)



def test_long_seek_table_takes_a_second_read(packed, monkeypatch):
    path, _, info = packed
    monkeypatch.setattr(sk, "TAIL_FETCH_BYTES", 64)  # shorter than this table
    need = 8 + 8 * info.frames + 9
    with CountingSource(path) as src:
        table = sk.read_seek_table(src)
    size = os.path.getsize(path)
    assert src.reads == [(size - 64, 64), (size - need, need)]
    assert len(table) == info.frames

def test_compressed_range_maps_original_bytes_to_frames(packed):
    path, _, _ = packed
    table = sk.read_seek_table(path)
    f1, f2 = table[1], table[2]
    assert table.frames_for(f1.original_pos, 1) == [f1]
    assert table.frames_for(f1.original_end - 1, 2) == [f1, f2]
    assert table.compressed_range(f1.original_end - 1, 2) == (f1.compressed_pos, f2.compressed_end)
    assert table.frames_for(0, 0) == []
    with pytest.raises(ValueError, match="outside"):
        table.frames_for(table.original_bytes - 1, 2)


# ------------------------------------------------------------ read_range


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_read_range_matches_the_original(packed, data):
    path, original, _ = packed
    offset = data.draw(st.integers(0, len(original)))
    length = data.draw(st.integers(0, min(len(original) - offset, 3 * SMALL_FRAMES)))
    src = CountingSource(path)
    with src:
        assert sk.read_range(src, offset, length) == original[offset : offset + length]
    table = sk.read_seek_table(path)
    # the tail, then (for a non-empty range) exactly the frames holding it
    assert src.reads[0] == (len(_read(path)) - sk.TAIL_FETCH_BYTES, sk.TAIL_FETCH_BYTES)
    if length:
        start, end = table.compressed_range(offset, length)
        assert src.reads[1:] == [(start, end - start)]
    else:
        assert src.reads[1:] == []


def test_read_range_with_a_known_table_reads_only_frames(packed):
    path, original, _ = packed
    table = sk.read_seek_table(path)
    with CountingSource(path) as src:
        got = sk.read_range(src, table[2].original_pos + 5, 10, table=table)
    assert got == original[table[2].original_pos + 5 :][:10]
    assert src.reads == [(table[2].compressed_pos, table[2].compressed_bytes)]


def test_read_range_past_the_end(packed):
    path, original, _ = packed
    with pytest.raises(ValueError, match="outside"):
        sk.read_range(path, len(original) - 3, 4)
    assert sk.read_range(path, len(original), 0) == b""


# ------------------------------------------------------------ damage


def _shrink(path: str, tmp_path, keep: int) -> str:
    """A copy of path holding only its first keep bytes."""
    out = str(tmp_path / "damaged.zst")
    _write(out, _read(path)[:keep])
    return out


def _flip_byte(path: str, tmp_path, at: int, bits: int) -> str:
    """A copy of path with the byte at position at (modulo the size) XORed with bits."""
    data = bytearray(_read(path))
    data[at % len(data)] ^= bits
    out = str(tmp_path / "damaged.zst")
    _write(out, bytes(data))
    return out


@pytest.mark.parametrize("cut", [1, 9, 20, 200, 5000, "all-but-10", "all"])
def test_truncated_file_raises(packed, tmp_path, cut):
    path, original, _ = packed
    size = os.path.getsize(path)
    keep = size - cut if isinstance(cut, int) else {"all-but-10": 10, "all": 0}[cut]
    bad = _shrink(path, tmp_path, keep)
    for call in (
        lambda: sk.decompress_segment(bad, tmp_path / "back"),
        lambda: sk.read_range(bad, 0, 10),
        lambda: sk.read_seek_table(bad),
    ):
        with pytest.raises(CorruptionError) as e:
            call()
        assert e.value.path == bad and e.value.position is not None and "damaged or truncated" in str(e.value)
    assert not os.path.exists(tmp_path / "back") and _leftovers(tmp_path) == []


def test_flipped_frame_byte_raises_where_the_frame_is(packed, tmp_path):
    path, original, _ = packed
    table = sk.read_seek_table(path)
    f = table[2]
    bad = _flip_byte(path, tmp_path, f.compressed_pos + f.compressed_bytes // 2, 0x10)
    # caught by the frame's own checksum, with no end-to-end check asked for
    with pytest.raises(CorruptionError, match="frame 2") as e:
        sk.decompress_segment(bad, tmp_path / "back", verify=False)
    assert (e.value.path, e.value.position) == (bad, f.compressed_pos)
    with pytest.raises(CorruptionError, match="frame 2"):
        sk.read_range(bad, f.original_pos + 100, 1)
    # the other frames still read
    g = table[4]
    assert sk.read_range(bad, g.original_pos, 100) == original[g.original_pos : g.original_pos + 100]
    assert not os.path.exists(tmp_path / "back")


def test_flipped_seek_table_byte_raises(packed, tmp_path):
    path, _, info = packed
    size = os.path.getsize(path)
    descriptor = size - 5
    for at in range(size - (8 + 8 * info.frames + 9), size):
        bad = _flip_byte(path, tmp_path, at, 0x01)
        if at == descriptor:  # bits 1-0 are unused: the format says not to interpret them
            sk.decompress_segment(bad, tmp_path / "back")
            os.unlink(tmp_path / "back")
            continue
        with pytest.raises(CorruptionError):
            sk.decompress_segment(bad, tmp_path / "back")
    bad = _flip_byte(path, tmp_path, descriptor, 0x04)
    with pytest.raises(CorruptionError, match="reserved bits"):
        sk.decompress_segment(bad, tmp_path / "back")
    assert not os.path.exists(tmp_path / "back") and _leftovers(tmp_path) == []


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pos=st.integers(0, 10**9), xor=st.integers(1, 255))
def test_any_damage_raises_or_changes_nothing(packed, tmp_path, pos, xor):
    """Wrong bytes are never returned: a damaged copy raises, or (for a bit
    the decoder does not depend on) restores the original exactly."""
    path, original, info = packed
    bad = _flip_byte(path, tmp_path, pos, xor)
    dst = tmp_path / "back"
    try:
        sk.decompress_segment(bad, dst, expected_crc32c=info.crc32c)
    except CorruptionError:
        assert not dst.exists()
    else:
        assert _read(dst) == original
        dst.unlink()
    offset = pos % len(original)
    length = min(1000, len(original) - offset)
    try:
        got = sk.read_range(bad, offset, length)
    except CorruptionError:
        pass
    else:
        assert got == original[offset : offset + length]


def test_wrong_expected_crc_leaves_destination(packed, tmp_path):
    path, _, info = packed
    _write(tmp_path / "back", b"what was there")
    with pytest.raises(CorruptionError, match="CRC32C"):
        sk.decompress_segment(path, tmp_path / "back", expected_crc32c=info.crc32c ^ 1)
    assert _read(tmp_path / "back") == b"what was there" and _leftovers(tmp_path) == []


def test_compress_refuses_unsealed_and_damaged_segments(segments, tmp_path):
    root = str(tmp_path / "store")
    with aoflite.open(root) as db:
        db.append("k", b"v")
        db.commit()
        active = segment_path(root, 1)
        with pytest.raises(FormatError, match="not a sealed segment"):
            sk.compress_segment(active, tmp_path / "a.zst")
    damaged = str(tmp_path / "damaged.seg")
    data = bytearray(_read(segments["frames"]))
    data[len(data) // 2] ^= 0x04
    _write(damaged, bytes(data))
    with pytest.raises(CorruptionError):
        sk.compress_segment(damaged, tmp_path / "d.zst")
    assert not any(n.endswith(".zst") or n.endswith(".tmp") for n in os.listdir(tmp_path))


def test_restored_bytes_must_be_a_sealed_segment(tmp_path):
    _write(tmp_path / "junk", b"not a segment" * 1000)
    sk.compress_segment(tmp_path / "junk", tmp_path / "junk.zst", verify=False)
    with pytest.raises(CorruptionError, match="not a sound sealed segment"):
        sk.decompress_segment(tmp_path / "junk.zst", tmp_path / "back")
    sk.decompress_segment(tmp_path / "junk.zst", tmp_path / "back", verify=False)
    assert _read(tmp_path / "back") == b"not a segment" * 1000


def _with_entry_checksums(data: bytes, frames: int) -> bytes:
    """The same file with a seek table whose entries carry checksums (the
    format's option; each is the low 32 bits of the frame's XXH64, which is
    also the frame's own last four bytes)."""
    table = data[-(8 + 8 * frames + 9) :]
    body = data[: len(data) - len(table)]
    entries, pos = [], 0
    for i in range(frames):
        csize, dsize = struct.unpack_from("<II", table, 8 + 8 * i)
        checksum = int.from_bytes(body[pos + csize - 4 : pos + csize], "little")
        entries.append(struct.pack("<III", csize, dsize, checksum))
        pos += csize
    content = b"".join(entries) + struct.pack("<IBI", frames, 0x80, sk.SEEKABLE_MAGIC)
    return body + struct.pack("<II", sk.SKIPPABLE_MAGIC, len(content)) + content


def test_seek_table_entry_checksums_are_checked(packed, tmp_path):
    path, original, info = packed
    data = _with_entry_checksums(_read(path), info.frames)
    _write(tmp_path / "ck.zst", data)
    assert sk.read_range(tmp_path / "ck.zst", 1000, 500_000) == original[1000:501_000]
    if shutil.which("zstd"):
        out = subprocess.run(["zstd", "-d", "-q", "-c", tmp_path / "ck.zst"], capture_output=True, check=True)
        assert out.stdout == original
    at = len(data) - 9 - 12 + 8  # the last entry's checksum
    _write(tmp_path / "ck.zst", data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])
    with pytest.raises(CorruptionError, match="checksum differs"):
        sk.read_range(tmp_path / "ck.zst", len(original) - 1, 1)


# ------------------------------------------------------------ other readers


def test_stock_zstd_decompresses_it(packed, tmp_path):
    """Any zstd decoder restores the segment (Debian/Ubuntu package: zstd)."""
    if not shutil.which("zstd"):
        # tools/test.sh installs it: CI never skips this
        assert not os.environ.get("CI"), "the zstd command is missing (tools/test.sh installs it)"
        pytest.skip("the zstd command is not installed (apt-get install zstd)")
    path, original, _ = packed
    subprocess.run(["zstd", "-d", "-q", path, "-o", tmp_path / "out"], check=True)
    assert _read(tmp_path / "out") == original


def test_other_seekable_readers_agree(packed):
    path, original, _ = packed
    with pyzstd.SeekableZstdFile(path) as f:
        f.seek(700_000)
        assert f.read(1000) == original[700_000:701_000]


# ------------------------------------------------------------ measurement


def test_measure(segments, capsys):
    m = sk.measure(segments["frames"], repeats=1)
    assert m.original_bytes == os.path.getsize(segments["frames"])
    assert m.ratio == m.original_bytes / m.compressed_bytes > 1
    assert m.compress_mb_s > 0 and m.decompress_mb_s > 0
    assert sk.main([segments["few"], "--repeats", "1"]) == 0
    assert "ratio" in capsys.readouterr().out
    assert _leftovers(os.path.dirname(segments["frames"])) == []


def test_format_doc_describes_this_file():
    """docs/format.md's Tier 1 section gives the magics, sizes and frame
    sizes this module uses."""
    doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "format.md").read_text()
    section = doc[doc.index("\n## Tier 1 file\n") : doc.index("\n## Versions\n")]
    for magic in (sk.SKIPPABLE_MAGIC, sk.SEEKABLE_MAGIC, sk.ZSTD_MAGIC):
        assert f"`{magic:#010x}`" in section
    assert "`b1 ea 92 8f`" in section and sk.SEEKABLE_MAGIC.to_bytes(4, "little").hex(" ") == "b1 ea 92 8f"
    footer = section[section.index("The footer") :]
    sizes = re.findall(r"^\| \d+ \| (\d+) \|", footer.split("\n\n")[1], re.M)
    assert sum(map(int, sizes)) == sk.SeekTable.FOOTER_BYTES
    assert (sk.DEFAULT_FRAME_BYTES, sk.MIN_FRAME_BYTES, sk.MAX_FRAME_BYTES) == (MiB, 256 * KiB, MiB)
    assert "**1 MiB** by default and accepts 256 KiB to 1 MiB" in " ".join(section.split())
    assert f"up to {(sk.TAIL_FETCH_BYTES - 17) // 8} frames" in section
