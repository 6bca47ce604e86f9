"""Tier 1: a sealed segment compressed into the Zstandard seekable format.

The file is a run of independent zstd frames, each holding about
``frame_bytes`` of the segment and its own content checksum, followed by
the seek table: a skippable frame listing every frame's compressed and
original size, ending in the magic 0x8F92EAB1 (docs/format.md, "Tier 1
file"). Any zstd decoder restores the whole segment from it; the seek table
lets a reader fetch and decompress only the frames that hold a byte range,
from a local file or, through a RangeSource, from an object store with
ranged reads.

Writing goes through pyzstd's SeekableZstdFile. Reading parses the seek
table here: pyzstd keeps its parser private and needs a whole seekable
file, while a remote reader has only the tail bytes it fetched.

    python -m aoflite.tiers.seekable [SEGMENT] [--data random|readings]

measures compression speed and ratio (see measure()).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import secrets
import shutil
import statistics
import struct
import sys
import tempfile
import time
from bisect import bisect_right
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple, Protocol, Union

import pyzstd

from .. import errors
from ..layout import fsync_dir
from ..segment import Segment, crc32c

__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_FRAME_BYTES",
    "MIN_FRAME_BYTES",
    "MAX_FRAME_BYTES",
    "TAIL_FETCH_BYTES",
    "CompressedInfo",
    "Frame",
    "SeekTable",
    "RangeSource",
    "FileSource",
    "compress_segment",
    "decompress_segment",
    "read_seek_table",
    "read_range",
    "Measurement",
    "measure",
]

KiB = 1 << 10
MiB = 1 << 20

# Level 1: on segments of small random-ish records it compressed at 285-360
# MB/s against level 3's 125-185 here, with no worse a ratio; Tier 1 must
# keep up with appends on one core.
DEFAULT_LEVEL = 1
DEFAULT_FRAME_BYTES = 1 * MiB
# Smaller frames cost ratio (each starts with an empty window); larger ones
# make a ranged read fetch and decompress more than it needs.
MIN_FRAME_BYTES = 256 * KiB
MAX_FRAME_BYTES = 1 * MiB

#: A first read of this many tail bytes holds the whole seek table of a
#: file of up to 509 frames (a 509 MiB segment at 1 MiB frames), so one
#: ranged read usually finds it; SeekTable.tail_size says when it did not.
TAIL_FETCH_BYTES = 4 * KiB

SEEKABLE_MAGIC = 0x8F92EAB1  # the file's last four bytes
SKIPPABLE_MAGIC = 0x184D2A5E  # the seek table's skippable frame
ZSTD_MAGIC = 0xFD2FB528  # every data frame's first four bytes
_U32X2 = struct.Struct("<II")  # skippable magic + frame size; an entry's sizes
_FOOTER = struct.Struct("<IBI")  # Number_Of_Frames, Seek_Table_Descriptor, Seekable_Magic_Number
_ENTRY_CHECKSUM_FLAG = 0x80  # descriptor bit 7: entries carry a checksum
_RESERVED_BITS = 0x7C  # descriptor bits 6-2 must be zero
_CONTENT_CHECKSUM_FLAG = 0x04  # bit 2 of a zstd frame header's descriptor byte
_MIN_FILE_BYTES = _U32X2.size + _FOOTER.size  # an empty seek table and no frames

Source = Union[str, bytes, "os.PathLike[str]", "RangeSource"]


class CompressedInfo(NamedTuple):
    """What compress_segment wrote (or decompress_segment restored)."""

    compressed_bytes: int  #: size of the Tier 1 file, seek table included
    original_bytes: int  #: size of the segment file
    frames: int  #: zstd frames holding the segment
    crc32c: int  #: CRC32C (unmasked) of the whole segment file


class Frame(NamedTuple):
    """One zstd frame: where it lies in the compressed file and which bytes
    of the original it holds."""

    # the frame's number, as the format calls it; shadowing tuple.index is
    # harmless here (nothing searches a Frame), but it is an incompatible override
    index: int  # type: ignore[assignment]
    compressed_pos: int
    compressed_bytes: int
    original_pos: int
    original_bytes: int
    checksum: int | None  #: the seek table's copy of the frame's checksum, if it has them

    @property
    def compressed_end(self) -> int:
        """Where the next frame starts in the compressed file."""
        return self.compressed_pos + self.compressed_bytes

    @property
    def original_end(self) -> int:
        """Where the next frame's bytes start in the original."""
        return self.original_pos + self.original_bytes


def _corrupt(name: str | None, position: int | None, what: str) -> errors.CorruptionError:
    where = f"{name or 'Tier 1 file'} at byte {position}" if position is not None else (name or "Tier 1 file")
    return errors.CorruptionError(
        f"{where}: {what} (the compressed copy is damaged or truncated: restore the segment from another tier)",
        path=name,
        position=position,
    )


class SeekTable:
    """The frames of a Tier 1 file, parsed from its last bytes alone.

    A remote reader fetches the tail (TAIL_FETCH_BYTES, or exactly
    ``tail_size()`` bytes when that was not enough), builds the table with
    ``from_tail()``, and then fetches only ``compressed_range()`` for the
    bytes it wants."""

    FOOTER_BYTES = _FOOTER.size

    def __init__(self, frames: list[Frame], table_bytes: int):
        self._frames = tuple(frames)
        self._starts = [f.original_pos for f in frames]
        self.table_bytes = table_bytes  #: size of the seek table frame at the end

    @staticmethod
    def tail_size(tail: bytes, file_size: int, *, name: str | None = None) -> int:
        """How many bytes at the end of the file the seek table takes, from
        at least its last FOOTER_BYTES (9) bytes. CorruptionError when those
        are not a seek table's footer."""
        if file_size < _MIN_FILE_BYTES:
            what = f"{file_size} bytes cannot hold a seek table ({_MIN_FILE_BYTES} at least)"
            raise _corrupt(name, file_size, what)
        if len(tail) < _FOOTER.size:
            raise ValueError(f"tail_size needs the file's last {_FOOTER.size} bytes, got {len(tail)}")
        count, descriptor, magic = _FOOTER.unpack_from(tail, len(tail) - _FOOTER.size)
        if magic != SEEKABLE_MAGIC:
            what = f"the file does not end in the seek table magic (found {magic:#010x})"
            raise _corrupt(name, file_size - 4, what)
        if descriptor & _RESERVED_BITS:
            raise _corrupt(name, file_size - 5, f"seek table descriptor {descriptor:#04x} has reserved bits set")
        entry = 12 if descriptor & _ENTRY_CHECKSUM_FLAG else 8
        size = _U32X2.size + int(count) * entry + _FOOTER.size
        if size > file_size:
            what = f"a seek table of {count} frames takes {size} bytes, more than the file's {file_size}"
            raise _corrupt(name, file_size - 9, what)
        return size

    @classmethod
    def from_tail(cls, tail: bytes, file_size: int, *, name: str | None = None) -> SeekTable:
        """Parse the seek table from the file's last bytes (at least
        ``tail_size()`` of them; more are ignored) and check that its frames
        fill exactly the rest of a file of ``file_size`` bytes."""
        size = cls.tail_size(tail, file_size, name=name)
        if len(tail) < size:
            raise ValueError(f"the seek table is the last {size} bytes of the file; {len(tail)} were given")
        table = memoryview(tail)[len(tail) - size :]
        start = file_size - size
        magic, frame_size = _U32X2.unpack_from(table)
        if magic != SKIPPABLE_MAGIC or frame_size != size - 8:
            what = f"the seek table frame's header is wrong (magic {magic:#010x}, size {frame_size})"
            raise _corrupt(name, start, what)
        count, descriptor, _ = _FOOTER.unpack_from(table, size - _FOOTER.size)
        entry = 12 if descriptor & _ENTRY_CHECKSUM_FLAG else 8
        frames = []
        cpos = opos = 0
        for i in range(count):
            at = _U32X2.size + i * entry
            csize, osize = _U32X2.unpack_from(table, at)
            checksum = int.from_bytes(table[at + 8 : at + 12], "little") if entry == 12 else None
            # the format allows empty entries, but this writer never makes them
            if csize == 0 or osize == 0:
                raise _corrupt(name, start + at, f"seek table entry {i} lists an empty frame ({csize}, {osize})")
            frames.append(Frame(i, cpos, csize, opos, osize, checksum))
            cpos += csize
            opos += osize
        if cpos != start:
            raise _corrupt(name, start, f"the seek table's frames take {cpos} bytes, but {start} precede it")
        return cls(frames, size)

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[Frame]:
        return iter(self._frames)

    def __getitem__(self, i: int) -> Frame:
        return self._frames[i]

    @property
    def original_bytes(self) -> int:
        """Size of the original (the segment file)."""
        return self._frames[-1].original_end if self._frames else 0

    @property
    def compressed_bytes(self) -> int:
        """Bytes of the frames, the seek table not included."""
        return self._frames[-1].compressed_end if self._frames else 0

    @property
    def file_bytes(self) -> int:
        """Size of the whole Tier 1 file."""
        return self.compressed_bytes + self.table_bytes

    def frames_for(self, offset: int, length: int) -> list[Frame]:
        """The frames holding original bytes [offset, offset + length), in
        order (none for length 0); ValueError for a range past the end."""
        if offset < 0 or length < 0 or offset + length > self.original_bytes:
            end = offset + length
            raise ValueError(f"range [{offset}, {end}) is outside the original's {self.original_bytes} bytes")
        if length == 0:
            return []
        first = bisect_right(self._starts, offset) - 1
        last = bisect_right(self._starts, offset + length - 1) - 1
        return list(self._frames[first : last + 1])

    def compressed_range(self, offset: int, length: int) -> tuple[int, int]:
        """[start, end) of the compressed bytes holding original bytes
        [offset, offset + length): the frames are adjacent, so one ranged
        read fetches them all."""
        frames = self.frames_for(offset, length)
        if not frames:
            return (0, 0)
        return (frames[0].compressed_pos, frames[-1].compressed_end)


class RangeSource(Protocol):
    """Where a Tier 1 file's bytes come from: a local file (FileSource) or,
    for a remote tier, an object read with ranged requests."""

    name: str  #: names the file or object in errors

    def size(self) -> int:
        """The file's size in bytes."""
        ...

    def read_at(self, offset: int, length: int) -> bytes:
        """length bytes from offset; fewer only where the file ends."""
        ...


class FileSource:
    """A Tier 1 file on the local disk, read with pread."""

    def __init__(self, path: str | bytes | os.PathLike[str]):
        self.name = os.fsdecode(path)
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def size(self) -> int:
        """The file's size in bytes."""
        return os.fstat(self._fd).st_size

    def read_at(self, offset: int, length: int) -> bytes:
        """length bytes from offset; fewer only where the file ends."""
        parts = []
        while length > 0:
            chunk = os.pread(self._fd, length, offset)
            if not chunk:
                break
            parts.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        """Close the file; later reads fail."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def _opened(source: Source) -> Iterator[RangeSource]:
    if isinstance(source, (str, bytes, os.PathLike)):
        with FileSource(source) as f:
            yield f
    else:
        yield source


def _read_exactly(src: RangeSource, offset: int, length: int) -> bytes:
    data = src.read_at(offset, length)
    if len(data) != length:
        raise _corrupt(src.name, offset + len(data), f"the file ends {length - len(data)} bytes early")
    return data


def read_seek_table(source: Source) -> SeekTable:
    """The seek table of a Tier 1 file (a path or a RangeSource), read from
    its tail in one read, or two when the table is unusually long."""
    with _opened(source) as src:
        size = src.size()
        fetch = min(size, TAIL_FETCH_BYTES)
        tail = _read_exactly(src, size - fetch, fetch)
        need = SeekTable.tail_size(tail, size, name=src.name)
        if need > len(tail):
            tail = _read_exactly(src, size - need, need)
        return SeekTable.from_tail(tail, size, name=src.name)


def _decode(frame: Frame, data: bytes | memoryview, name: str) -> bytes:
    """The original bytes of one frame, or CorruptionError: every check a
    frame can fail is made, so damage is never returned as data."""
    if (
        len(data) < 6
        or int.from_bytes(data[:4], "little") != ZSTD_MAGIC
        # every frame is written with a checksum: without one it is damaged
        or not data[4] & _CONTENT_CHECKSUM_FLAG
    ):
        raise _corrupt(name, frame.compressed_pos, f"frame {frame.index} is not a checksummed zstd frame")
    if frame.checksum is not None and frame.checksum != int.from_bytes(data[-4:], "little"):
        raise _corrupt(name, frame.compressed_pos, f"frame {frame.index}'s checksum differs from the seek table's")
    dec = pyzstd.ZstdDecompressor()
    try:
        # one byte of room past the expected size, so a frame that holds
        # more is caught rather than cut to fit
        out = dec.decompress(data, frame.original_bytes + 1)
    except pyzstd.ZstdError as e:
        raise _corrupt(name, frame.compressed_pos, f"frame {frame.index} does not decompress: {e}") from None
    if not dec.eof or dec.unused_data or len(out) != frame.original_bytes:
        raise _corrupt(
            name,
            frame.compressed_pos,
            f"frame {frame.index} holds {len(out)} bytes{'' if dec.eof else ' and is unfinished'}"
            f"{', with bytes after its end' if dec.unused_data else ''}; the seek table says {frame.original_bytes}",
        )
    return out


def read_range(source: Source, offset: int, length: int, *, table: SeekTable | None = None) -> bytes:
    """Original bytes [offset, offset + length) of a Tier 1 file (a path or a
    RangeSource), fetching and decompressing only the frames that hold
    them, in one read. ``table`` is the file's seek table when the caller
    has it already. ValueError for a range past the end; CorruptionError
    for a damaged frame."""
    with _opened(source) as src:
        if table is None:
            table = read_seek_table(src)
        frames = table.frames_for(offset, length)
        if not frames:
            return b""
        start, end = frames[0].compressed_pos, frames[-1].compressed_end
        blob = memoryview(_read_exactly(src, start, end - start))
        out = b"".join(
            _decode(f, blob[f.compressed_pos - start : f.compressed_end - start], src.name) for f in frames
        )
        skip = offset - frames[0].original_pos
        return out[skip : skip + length]


@contextlib.contextmanager
def _atomic_file(dst_path: str | os.PathLike[str], durable: bool = True) -> Iterator[BinaryIO]:
    """A new file that appears at dst_path complete or not at all: written
    under a temporary name beside it (unique, so two writers never share
    one), synced, renamed over dst_path, and the directory synced so that
    the rename survives a crash (durable=False: neither sync, for a copy
    whose reader checks it). On an error the temporary file is removed
    and dst_path is left as it was."""
    dst = os.fspath(dst_path)
    tmp = f"{dst}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, errors.Error):
            raise errors.StorageError(e.errno or 0, f"writing {dst}: {e} (check free space and the device)") from None
        raise
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(dst)))


def _check_sealed(path: str, source_name: str) -> None:
    """Raise unless path is a sound sealed segment (every CRC and the index)."""
    seg, _ = Segment.open(path)
    if not seg.info().sealed:
        raise errors.FormatError(
            f"{source_name} is not a sealed segment "
            "(an active one, or one whose footer is damaged: seal or verify it first)"
        )
    seg.verify()


def compress_segment(
    src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    *,
    level: int = DEFAULT_LEVEL,
    frame_bytes: int = DEFAULT_FRAME_BYTES,
    verify: bool = True,
) -> CompressedInfo:
    """Write the Tier 1 copy of a sealed segment file to dst_path.

    Each frame holds ``frame_bytes`` of the segment (the last one the rest)
    and its own checksum; ``level`` is the zstd level. The file is written
    under a temporary name, synced and renamed into place with its directory
    synced, so after a crash dst_path holds its old state or the complete
    new file. With ``verify`` (the default) the segment is checked first,
    every CRC and its index, so a damaged segment is never archived:
    CorruptionError, or FormatError for a file that is not sealed."""
    if type(level) is not int:
        raise TypeError(f"level must be an int, not {type(level).__name__}")
    if type(frame_bytes) is not int:
        raise TypeError(f"frame_bytes must be an int, not {type(frame_bytes).__name__}")
    if not MIN_FRAME_BYTES <= frame_bytes <= MAX_FRAME_BYTES:
        raise ValueError(f"frame_bytes must be in [{MIN_FRAME_BYTES}, {MAX_FRAME_BYTES}], got {frame_bytes}")
    src_name = os.fsdecode(src_path)
    if verify:
        _check_sealed(src_name, src_name)
    option: dict[int, int] = {pyzstd.CParameter.compressionLevel: level, pyzstd.CParameter.checksumFlag: 1}
    crc = original = 0
    with open(src_path, "rb", buffering=0) as src, _atomic_file(dst_path) as out:
        with pyzstd.SeekableZstdFile(out, "w", level_or_option=option, max_frame_content_size=frame_bytes) as zf:
            while chunk := src.read(frame_bytes):
                crc = crc32c(chunk, crc)
                original += len(chunk)
                zf.write(chunk)
            zf.flush(zf.FLUSH_FRAME)  # so the count below includes the last frame
            table = zf.seek_table_info
            assert table is not None  # None only once the file is closed
            frames = table[0]
        compressed = out.tell()
    return CompressedInfo(compressed, original, frames, crc)


def decompress_segment(
    src: Source,
    dst_path: str | os.PathLike[str],
    *,
    expected_crc32c: int | None = None,
    verify: bool = True,
    durable: bool = True,
) -> CompressedInfo:
    """Restore the exact segment file from a Tier 1 file (a path or a
    RangeSource) to dst_path, atomically as compress_segment writes.

    Every frame is checked against its own checksum and the seek table's
    sizes; ``expected_crc32c`` (CompressedInfo.crc32c, as recorded when it
    was compressed) checks the whole file end to end; with ``verify`` (the
    default) the restored file must also pass the segment's own checks.
    ``durable=False`` skips the syncs, for a cache copy its reader checks.
    Any failure raises CorruptionError naming the file and, for a frame or
    the seek table, the position, and leaves dst_path as it was."""
    with _opened(src) as s:
        table = read_seek_table(s)
        crc = 0
        with _atomic_file(dst_path, durable) as out:
            for frame in table:
                chunk = _decode(frame, _read_exactly(s, frame.compressed_pos, frame.compressed_bytes), s.name)
                crc = crc32c(chunk, crc)
                out.write(chunk)
            if expected_crc32c is not None and crc != expected_crc32c:
                raise _corrupt(
                    s.name, None, f"the restored bytes have CRC32C {crc:#010x}, {expected_crc32c:#010x} was recorded"
                )
            if verify:
                out.flush()
                try:
                    _check_sealed(out.name, s.name)
                except (errors.CorruptionError, errors.FormatError) as e:
                    at = getattr(e, "position", None)
                    where = f" (segment byte {at})" if at is not None else ""
                    what = f"the restored bytes are not a sound sealed segment{where}: {e}"
                    raise _corrupt(s.name, None, what) from None
    return CompressedInfo(table.file_bytes, table.original_bytes, len(table), crc)


# ------------------------------------------------------------ measurement


class Measurement(NamedTuple):
    """Speed and ratio of the codec on one segment (medians over repeats)."""

    original_bytes: int
    compressed_bytes: int
    ratio: float  #: original / compressed
    compress_mb_s: float  #: compress_segment end to end (verify, compress, sync), 10**6 bytes/s of original
    decompress_mb_s: float  #: decompress_segment end to end, likewise


def measure(
    segment_path: str | os.PathLike[str],
    *,
    level: int = DEFAULT_LEVEL,
    frame_bytes: int = DEFAULT_FRAME_BYTES,
    repeats: int = 3,
    scratch_dir: str | None = None,
) -> Measurement:
    """Time compress_segment and decompress_segment on a sealed segment.
    Their files go to a temporary directory under scratch_dir (default: the
    system's; pass one on the device that will hold Tier 1, since the
    syncs are timed too) and are removed."""
    ctimes, dtimes = [], []
    with tempfile.TemporaryDirectory(dir=scratch_dir) as scratch:
        packed, restored = os.path.join(scratch, "seg.zst"), os.path.join(scratch, "seg.restored")
        for _ in range(repeats):
            t = time.perf_counter()
            info = compress_segment(segment_path, packed, level=level, frame_bytes=frame_bytes)
            ctimes.append(time.perf_counter() - t)
            t = time.perf_counter()
            decompress_segment(packed, restored, expected_crc32c=info.crc32c)
            dtimes.append(time.perf_counter() - t)
    mb = info.original_bytes / 1e6
    return Measurement(
        info.original_bytes,
        info.compressed_bytes,
        info.original_bytes / info.compressed_bytes,
        mb / statistics.median(ctimes),
        mb / statistics.median(dtimes),
    )


def _sample_segment(root: str, data: str, value_bytes: int, keys: int = 64) -> str:
    """Fill one default-sized segment (64 MiB) and return its sealed file:
    random values of value_bytes, round-robin over keys in runs of 1000
    (the benchmark's data), or JSON sensor readings (the demo's)."""
    rng = random.Random(20240601)
    names = [f"key-{i:05d}" for i in range(keys)]
    segment_bytes = 64 * MiB
    from .. import open as open_store  # the store imports this module: resolved at call time

    with open_store(root, durability="off", segment_bytes=segment_bytes) as db:
        written = rounds = 0
        while written < segment_bytes:
            rounds += 1
            for n, name in enumerate(names):
                if data == "random":
                    values = [rng.randbytes(value_bytes) for _ in range(1000)]
                else:
                    values = [
                        f'{{"device":{n},"seq":{rounds * 1000 + j},"temp_c":{20 + rng.random() * 5:.2f},"ok":true}}'
                        .encode()
                        for j in range(1000)
                    ]
                db.append_many(name, values)
                written += sum(map(len, values)) + 40 * len(values)
        db.seal()
    segments = os.path.join(root, "segments")
    return os.path.join(segments, sorted(os.listdir(segments))[0])


def main(argv: list[str] | None = None) -> int:
    """Print the measurement for a segment, or for a sample one."""
    p = argparse.ArgumentParser(prog="python -m aoflite.tiers.seekable", description=main.__doc__)
    p.add_argument("segment", nargs="?", help="a sealed segment file (default: write a sample one)")
    p.add_argument("--data", choices=("random", "readings"), default="random", help="sample data (default: random)")
    p.add_argument("--value-bytes", type=int, default=100, help="sample random value size (default: 100)")
    p.add_argument("--level", type=int, default=DEFAULT_LEVEL)
    p.add_argument("--frame-bytes", type=int, default=DEFAULT_FRAME_BYTES)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    scratch = None
    try:
        path = args.segment
        if path is None:
            scratch = tempfile.mkdtemp(prefix="aoflite-tier1-")
            path = _sample_segment(os.path.join(scratch, "store"), args.data, args.value_bytes)
        m = measure(path, level=args.level, frame_bytes=args.frame_bytes, repeats=args.repeats, scratch_dir=scratch)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"{m.original_bytes / MiB:.1f} MiB -> {m.compressed_bytes / MiB:.1f} MiB, ratio {m.ratio:.2f}; "
        f"compress {m.compress_mb_s:.0f} MB/s, decompress {m.decompress_mb_s:.0f} MB/s "
        f"(level {args.level}, frames of {args.frame_bytes} bytes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
