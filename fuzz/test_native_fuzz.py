"""Coverage-guided fuzzing of the segment engine's parsers under ASan and UBSan.

Two sanitized builds, both with gcc alone:

- fuzz/native/driver.c + fuzz_segment.c + native/*.c: a small
  coverage-guided fuzzer (edge coverage from gcc's trace-pc hooks, compare
  operands from trace-cmp) mutating the seed segments in fuzz/corpus for a
  bounded time; the target parses each image in memory, as a followed file,
  as a recovered file, reads it through the index and by scan, and seals
  what recovery kept;
- the cffi extension built with AOFLITE_SANITIZE=1, run in a child with
  the ASan runtime preloaded, replaying the corpus the fuzzer grew through
  aoflite.segment.Segment (fuzz/native/replay.py).

A sanitizer report, a failed check or an input slower than the per-input
limit fails the test and names the saved input. AOFLITE_FUZZ_PROFILE=long
(tools/fuzz.sh --long) fuzzes for much longer.

``python -m fuzz.test_native_fuzz`` rewrites the seed corpus.
"""

from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import aoflite
from aoflite.segment import HEADER_BYTES, Segment, Writer, crc32c

from . import stats

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
HARNESS = Path(__file__).resolve().parent / "native"
CORPUS = Path(__file__).resolve().parent / "corpus"
PROFILE = os.environ.get("AOFLITE_FUZZ_PROFILE", "ci")
FUZZ_SECONDS = {"ci": 30, "long": 1800}[PROFILE]
INPUT_TIMEOUT_S = 10
# failing inputs are copied here: pytest's own temporary directories rotate
ARTIFACTS = Path(os.environ.get("AOFLITE_FUZZ_ARTIFACTS", Path(tempfile.gettempdir()) / "aoflite-fuzz-artifacts"))
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g", "-O1"]
ENGINE_SOURCES = ["crc32c.c", "failpoint.c", "feed.c", "segment.c", "writer.c"]


def _gcc(args: list[str], cwd: Path) -> None:
    proc = subprocess.run(["gcc", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"gcc {' '.join(args)} failed:\n{proc.stderr}")


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory) -> Path:
    """The sanitized, coverage-instrumented fuzzer binary."""
    out = tmp_path_factory.mktemp("fuzzer")
    traced = [str(NATIVE / s) for s in ENGINE_SOURCES] + [str(HARNESS / "fuzz_segment.c")]
    flags = ["-std=c11", *SANITIZE, f"-I{NATIVE}"]
    _gcc([*flags, "-fsanitize-coverage=trace-pc,trace-cmp", "-c", *traced], out)
    _gcc([*flags, "-c", str(HARNESS / "driver.c")], out)
    objs = sorted(str(p) for p in out.glob("*.o"))
    _gcc([*SANITIZE, *objs, "-lpthread", "-o", "fuzz_segment"], out)
    return out / "fuzz_segment"


@pytest.fixture(scope="module")
def fuzz_run(fuzzer, tmp_path_factory):
    """One bounded fuzzing run: (completed process, directory of the corpus it grew)."""
    work = tmp_path_factory.mktemp("fuzzing")
    grown = work / "corpus"
    grown.mkdir()
    seed = int.from_bytes(os.urandom(4), "little")
    proc = subprocess.run(
        [
            str(fuzzer),
            f"-max_total_time={FUZZ_SECONDS}",
            f"-timeout={INPUT_TIMEOUT_S}",
            f"-seed={seed}",
            f"-artifact_prefix={work}/",
            f"-corpus_out={grown}",
            str(CORPUS),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "AOF_FUZZ_DIR": str(work)},
        timeout=FUZZ_SECONDS + 120,
    )
    return proc, grown


def test_seed_corpus_parses_as_named():
    """Each seed is what its name says: valid-* parse clean, torn-* parse
    with a dropped tail, sealed-* are sealed and verify."""
    seeds = sorted(CORPUS.iterdir())
    assert len(seeds) >= 8
    for seed in seeds:
        info, report = Segment.check_bytes(seed.read_bytes())
        kind = seed.name.split("-")[0]
        assert kind in ("valid", "torn", "sealed"), seed.name
        assert info.sealed == (kind == "sealed"), seed.name
        if kind == "valid":
            assert report.reason == "end" and not report.dropped_bytes, (seed.name, report)
        if kind == "torn":
            assert report.reason != "end" or report.dropped_records, (seed.name, report)


def _failure(proc, work: Path) -> str:
    """The report and the failing input (kept in ARTIFACTS, and in base64
    for a regression test), for the assertion message."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    lines = [f"fuzzer failed (status {proc.returncode}):", proc.stderr[-6000:]]
    for art in sorted(work.glob("crash-*")) + sorted(work.glob("timeout-*")):
        shutil.copy(art, ARTIFACTS / art.name)
        data = art.read_bytes()
        lines.append(f"input kept as {ARTIFACTS / art.name} ({len(data)} bytes); base64:")
        lines.append(base64.b64encode(data[:32768]).decode())
    return "\n".join(lines)


def test_fuzz_segment_parsers(fuzz_run):
    """No sanitizer report, failed check or hang in the bounded run."""
    proc, grown = fuzz_run
    done = [line for line in proc.stdout.splitlines() if line.startswith("done:")]
    if done:
        stats.add("inputs fuzzed", int(done[0].split()[1]))
    assert proc.returncode == 0 and done and "runtime error" not in proc.stderr, _failure(proc, grown.parent)
    # the run went past the seeds, or it fuzzed nothing worth the time
    assert len(list(grown.iterdir())) > len(list(CORPUS.iterdir())), proc.stderr[-2000:]


@pytest.fixture(scope="module")
def sanitized_aoflite(tmp_path_factory) -> Path:
    """A copy of the aoflite package whose extension is built with ASan and
    UBSan (native/_build.py with AOFLITE_SANITIZE=1); put it on PYTHONPATH."""
    out = tmp_path_factory.mktemp("sanitized")
    # the builder names its sources relative to the repository: build in a copy
    shutil.copytree(NATIVE, out / "native")
    script = "import sys; sys.path.insert(0, 'native'); import _build; print(_build.ffibuilder.compile(tmpdir='.'))"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=out,
        capture_output=True,
        text=True,
        env={**os.environ, "AOFLITE_SANITIZE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    shutil.copytree(
        ROOT / "aoflite", out / "aoflite", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    built = Path(proc.stdout.strip().splitlines()[-1])
    assert built.parent == out / "aoflite", built
    return out


def test_binding_replays_fuzzed_corpus(fuzz_run, sanitized_aoflite, tmp_path):
    """The grown corpus through Segment.* in the sanitized extension: no
    memory error, and reads through the index agree with the scan."""
    _, grown = fuzz_run
    images = sorted(str(p) for p in [*CORPUS.iterdir(), *grown.iterdir()])
    asan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    env = {
        **os.environ,
        "PYTHONPATH": str(sanitized_aoflite),
        "LD_PRELOAD": asan,
        "ASAN_OPTIONS": "detect_leaks=0:handle_abort=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    }
    proc = subprocess.run(
        [sys.executable, str(HARNESS / "replay.py"), str(tmp_path), *images],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0 and f"replayed: {len(images)} with {sanitized_aoflite}" in proc.stdout, (
        proc.stdout[-2000:] + proc.stderr[-6000:]
    )
    assert "runtime error" not in proc.stderr, proc.stderr[-6000:]


# ----------------------------------------------- regressions from fuzzing


def _masked(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _record(key_id: int, flags: int, offset: int, lsn: int, payload: bytes) -> bytes:
    body = struct.pack("<IIHHQQq", len(payload), key_id, flags, 0, offset, lsn, 1) + payload
    return _masked(body) + body


def sealed_segment(name: bytes, value: bytes, first_lsn: int = 100) -> bytes:
    """A sealed segment, laid out by hand, holding one key definition (name)
    and one record of it (value): for defects a writer cannot produce."""
    head = b"AOFLSEG\0" + struct.pack("<IIQQQq", 1, HEADER_BYTES, 0x5EED, 7, first_lsn, 1) + bytes(12)
    head += _masked(head)
    keydef = _record(1, 0x2 | 0x4, 0, first_lsn, name)
    data_pos = len(head) + len(keydef)
    body = head + keydef + _record(1, 0x1, 0, first_lsn, value)
    index = struct.pack("<IIQQQQ", 1, 0, 0, 1, len(head), 0) + struct.pack("<Q", data_pos)
    footer = struct.pack("<QQQQII", len(body), len(index), 1, first_lsn, 1, 1)
    footer += _masked(index) + _masked(body + index) + struct.pack("<I", 1)
    footer += _masked(footer) + b"AOFLEND\0"
    return body + index + footer


def test_hand_made_sealed_segment_is_sound(tmp_path):
    """The layout sealed_segment writes is the real one."""
    path = tmp_path / "seg"
    path.write_bytes(sealed_segment(b"key", b"value"))
    seg, _ = Segment.open(str(path))
    seg.verify()
    assert seg.info().sealed and seg.key_name(1) == "key" and seg.read(1, 0)[2] == b"value"


@pytest.mark.parametrize("name", [b"", b"n" * 1025], ids=["empty", "too-long"])
def test_sealed_key_definition_of_bad_length_is_corruption(tmp_path, name):
    """Found by test_fuzz_segment_parsers: a sealed segment's key definition
    is not checked for the 1..1024-byte name length (an unsealed one is, by
    the recovery scan), so key_name returned an empty name."""
    path = tmp_path / "seg"
    path.write_bytes(sealed_segment(name, b"value"))
    seg, _ = Segment.open(str(path))
    with pytest.raises(aoflite.CorruptionError):
        seg.key_name(1)


# ------------------------------------------------------------------ corpus


def _image(seg: Segment, upto: int | None = None, zeros: int = 64) -> bytes:
    """A segment's bytes: a sealed one whole, an unsealed one up to upto
    (default: its committed end) plus some preallocated zeros."""
    mem = seg.memory()
    info = seg.info()
    if info.sealed:
        return bytes(mem[: info.file_bytes])
    end = info.records_end if upto is None else upto
    return bytes(mem[:end]) + bytes(zeros)


def _append(w: Writer, key_id: int, *values: bytes) -> int:
    buf = b"".join(values)
    return w.append_many(key_id, buf, Writer.lens_array([len(v) for v in values]), len(values), 1)


def write_corpus(dest: Path, scratch: Path) -> None:
    """Writes the seed segments: valid active ones, torn ones and sealed ones."""
    dest.mkdir(exist_ok=True)
    for old in dest.iterdir():
        old.unlink()

    def new(name: str, keys: int = 3) -> tuple[Segment, Writer]:
        seg = Segment.create(str(scratch / name), store_id=0x5EED, segment_id=7, first_lsn=100, capacity=1 << 20)
        w = Writer(100, 1 << 16, 1 << 20)
        for k in range(1, keys + 1):
            w.set_key(k, f"key-{k}".encode(), 10 * (k - 1))
        w.attach(seg)
        return seg, w

    seg, w = new("empty")
    (dest / "valid-empty").write_bytes(_image(seg))
    seg, w = new("records")
    _append(w, 1, b"first")
    _append(w, 2, b"", b"two", b"x" * 300)
    w.begin_rc()
    _append(w, 3, b"in a transaction")
    _append(w, 1, b"also")
    w.end(True)
    w.begin_rc()
    _append(w, 2, b"rolled back")
    w.end(False)
    _append(w, 1, bytes(range(256)) * 4)
    (dest / "valid-records").write_bytes(_image(seg))
    full = seg.info().records_end
    (dest / "torn-mid-header").write_bytes(_image(seg, full - 1024 - 20, zeros=0))
    (dest / "torn-mid-payload").write_bytes(_image(seg, full - 500, zeros=0))
    w.begin_rc()
    _append(w, 3, b"open transaction", b"never committed")
    (dest / "torn-open-transaction").write_bytes(_image(seg, seg.info().records_end + 2 * 40 + 31))
    w.end(False)
    damaged = bytearray(_image(seg))
    damaged[full - 3] ^= 0x40
    (dest / "torn-bad-checksum").write_bytes(bytes(damaged))
    w.detach()
    seg.seal()
    (dest / "sealed-records").write_bytes(_image(seg))
    seg, w = new("sealed-empty")
    w.detach()
    seg.seal()
    (dest / "sealed-empty").write_bytes(_image(seg))
    seg, w = new("many-keys", keys=20)
    for k in range(1, 21):
        _append(w, k, *[bytes([k]) * (k % 5) for _ in range(k % 4 + 1)])
    (dest / "valid-many-keys").write_bytes(_image(seg))
    w.detach()
    seg.seal()
    (dest / "sealed-many-keys").write_bytes(_image(seg))
    assert all(len(p.read_bytes()) >= HEADER_BYTES for p in dest.iterdir())


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        write_corpus(CORPUS, Path(tmp))
    print("\n".join(f"{p.stat().st_size:6d} {p.name}" for p in sorted(CORPUS.iterdir())))
