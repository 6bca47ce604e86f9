"""Damage to sealed segments of a real store: reads return the right bytes
or raise CorruptionError, never wrong bytes, never fewer records in silence.

Hypothesis damages a copy of a store built once per module: flipped bits
anywhere in a sealed segment, a cut file, a missing file, two segments'
files exchanged, one segment's file copied over another's, and a segment
from another store in its place. Then every record is read (read, scan,
scan_all) and every sealed segment verified. Records in segments the
damage did not touch must still read back whole.
"""

from __future__ import annotations

import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aoflite
from aoflite import layout, recovery
from aoflite.segment import Segment

PROFILE = os.environ.get("AOFLITE_FUZZ_PROFILE", "ci")
SEALED = 4  # sealed segments in the store; a fifth is active
SETTINGS = {"segment_bytes": 1 << 20, "durability": "off"}


def _build(path: str, salt: bytes) -> list[tuple[str, int, bytes, int]]:
    """A store of SEALED sealed segments and an active one; returns every
    record as (key, offset, value, segment id) in append order."""
    records = []
    counts: dict[str, int] = {}
    with aoflite.open(path, **SETTINGS) as db:
        for seg in range(1, SEALED + 2):
            for i in range(30):
                key = ("a", "b", "c", f"only-{seg}")[i % 4]
                value = salt + f"{seg}/{i}/".encode() * (i * 7 % 40)
                off = db.append(key, value)
                assert off == counts.get(key, 0)
                counts[key] = off + 1
                records.append((key, off, value, seg))
            if seg <= SEALED:
                assert db.seal() == seg
    return records


class Stores(tuple):
    """(the store's path, its records, a foreign store's path)."""

    def __repr__(self):
        return f"Stores({self[0]!r}, {len(self[1])} records)"


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Stores:
    base = tmp_path_factory.mktemp("damage")
    path, foreign = str(base / "store"), str(base / "foreign")
    records = _build(path, b"")
    _build(foreign, b"other store ")
    return Stores((path, records, foreign))


def _seg(root: str, sid: int) -> str:
    return layout.segment_path(root, sid)


SEGS = st.integers(1, SEALED)
PAIRS = st.tuples(SEGS, SEGS).filter(lambda p: p[0] != p[1])
DAMAGE = st.one_of(
    st.tuples(st.just("flip"), SEGS, st.lists(st.integers(0, 1 << 20), min_size=1, max_size=8), st.integers(0, 7)),
    st.tuples(st.just("cut"), SEGS, st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("missing"), SEGS),
    st.tuples(st.just("swap"), PAIRS),
    st.tuples(st.just("duplicate"), PAIRS),
    st.tuples(st.just("foreign"), SEGS),
)


def _damage(root: str, foreign: str, damage) -> set[int]:
    """Apply damage to the store at root; returns the segment ids it touched."""
    kind = damage[0]
    if kind == "flip":
        _, sid, where, bit = damage
        data = bytearray(open(_seg(root, sid), "rb").read())
        for pos in where:
            data[pos % len(data)] ^= 1 << bit
        open(_seg(root, sid), "wb").write(data)
        return {sid}
    if kind == "cut":
        _, sid, keep = damage
        os.truncate(_seg(root, sid), int(keep * os.path.getsize(_seg(root, sid))))
        return {sid}
    if kind == "missing":
        os.unlink(_seg(root, damage[1]))
        return {damage[1]}
    if kind == "foreign":
        shutil.copy(_seg(foreign, damage[1]), _seg(root, damage[1]))
        return {damage[1]}
    i, j = damage[1]
    if kind == "swap":
        os.rename(_seg(root, i), _seg(root, i) + ".swap")
        os.rename(_seg(root, j), _seg(root, i))
        os.rename(_seg(root, i) + ".swap", _seg(root, j))
        return {i, j}
    shutil.copy(_seg(root, i), _seg(root, j))
    return {j}


def _verify(db: aoflite.Store, rec) -> None:
    """Verify a sealed segment as the store serves it."""
    db.verify(rec.segment_id)


def _check_prefix(got, expected, what: str, must_complete: bool) -> None:
    """got: (records yielded, exception or None). Yielded records are an
    exact prefix of expected; stopping early takes a CorruptionError."""
    records, error = got
    assert records == expected[: len(records)], f"{what}: wrong records"
    if error is None:
        assert len(records) == len(expected), f"{what}: {len(records)} of {len(expected)} records, no error"
    else:
        assert isinstance(error, aoflite.CorruptionError), f"{what}: raised {error!r}"
        assert not must_complete, f"{what}: {error!r} though its segments are intact"


def _drain(it) -> tuple[list, BaseException | None]:
    out = []
    try:
        for r in it:
            out.append((r.key, r.offset, r.value))
    except Exception as e:  # judged by _check_prefix
        return out, e
    return out, None


def _same_bytes(a: str, b: str) -> bool:
    return os.path.exists(a) and open(a, "rb").read() == open(b, "rb").read()


def check_reads(root: str, pristine: str, records, damaged: set[int]) -> None:
    """Every read of the damaged store at root (a copy of pristine) is right
    or a CorruptionError."""
    with aoflite.open(root, **SETTINGS) as db:
        by_key: dict[str, list] = {}
        for key, off, value, sid in records:
            by_key.setdefault(key, []).append((key, off, value, sid))
        for key, recs in by_key.items():
            assert db.count(key) == len(recs)
            for _, off, value, sid in recs:
                try:
                    got = db.read(key, off).value
                except aoflite.CorruptionError:
                    assert sid in damaged, f"{key}@{off}: CorruptionError from intact segment {sid}"
                    continue
                assert got == value, f"{key}@{off}: wrong bytes"
            intact = not {sid for *_, sid in recs} & damaged
            _check_prefix(_drain(db.scan(key)), [r[:3] for r in recs], f"scan({key!r})", intact)
        _check_prefix(_drain(db.scan_all()), [r[:3] for r in records], "scan_all()", False)
        for rec in db.manifest.segments():
            if rec.state != "sealed":
                continue
            try:
                _verify(db, rec)
            except aoflite.CorruptionError:
                continue
            sid = rec.segment_id
            assert sid not in damaged or _same_bytes(_seg(root, sid), _seg(pristine, sid)), (
                f"segment {rec.segment_id} verifies after damage"
            )


@settings(
    max_examples={"ci": 500, "long": 10000}[PROFILE],
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(damage=DAMAGE)
def test_damaged_sealed_segments(stores, tmp_path_factory, damage):
    path, records, foreign = stores
    work = str(tmp_path_factory.mktemp("damaged") / "store")
    shutil.copytree(path, work)
    try:
        damaged = _damage(work, foreign, damage)
        check_reads(work, path, records, damaged)
    finally:
        shutil.rmtree(os.path.dirname(work))


def test_undamaged_store_reads_everything(stores, tmp_path):
    """The baseline: with nothing damaged every read completes."""
    path, records, _ = stores
    shutil.copytree(path, tmp_path / "store")
    check_reads(str(tmp_path / "store"), path, records, set())


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(("cut", 1, 0.0), id="cut-to-empty"),
        pytest.param(("cut", 2, 0.0001), id="cut-inside-header"),
        pytest.param(("flip", 3, [0], 0), id="magic-bit"),
        pytest.param(("flip", 4, [8], 1), id="version-bit"),
    ],
)
def test_damaged_header_reads_as_corruption(stores, tmp_path, damage):
    """Shrunk from test_damaged_sealed_segments: a sealed segment whose
    header is cut or has a flipped magic or version bit is corruption, not
    FormatError ("not an aoflite segment" / "newer version")."""
    path, records, foreign = stores
    work = str(tmp_path / "store")
    shutil.copytree(path, work)
    damaged = _damage(work, foreign, damage)
    check_reads(work, path, records, damaged)
