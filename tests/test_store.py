"""The Store contract end to end, through the public API only."""

from __future__ import annotations

import os
import tempfile
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import aoflite
from aoflite import layout
from testhelpers import in_thread

MiB = 1 << 20
BIG = 64 * 1024  # big enough that a few dozen values roll a 1 MiB segment


def _open(path, **kw):
    kw.setdefault("segment_bytes", MiB)
    return aoflite.open(path, **kw)


def _values(db, key, start=0, stop=None):
    return [r.value for r in db.scan(key, start, stop)]


def _snapshot(db):
    """Everything a store holds, records compared field by field."""
    return {key: list(db.scan(key)) for key in db.keys()}, list(db.scan_all())


def _assert_lsn_order(records):
    lsns = [r.lsn for r in records]
    assert all(a < b for a, b in zip(lsns, lsns[1:])), "LSNs are not strictly increasing"


def _flip_byte(path, needle):
    """Damage the one copy of needle in a file, in place."""
    with open(path, "r+b") as f:
        data = f.read()
        at = data.find(needle)
        assert at >= 0 and data.find(needle, at + 1) < 0, "needle must occur exactly once"
        f.seek(at + len(needle) // 2)
        f.write(bytes([data[at + len(needle) // 2] ^ 0xFF]))


# ---------------------------------------------------------------- a shared store

A_SEALS_AFTER = (8, 16)  # "a" has offsets 0..7 in segment 1, 8..15 in 2, 16.. in the active one
A_COUNT = 24


@pytest.fixture(scope="module")
def sealed(tmp_path_factory):
    """A store read (never written) by many tests: keys "a" and "b"
    interleaved across two sealed segments and the active one."""
    db = _open(os.path.join(tmp_path_factory.mktemp("sealed"), "store"))
    for i in range(A_COUNT):
        if i in A_SEALS_AFTER:
            db.seal()
        db.append("a", b"a%d" % i)
        if i % 3 == 0:
            db.append("b", b"b%d" % i)
    yield db
    db.close()


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, A_COUNT + 3), stop=st.none() | st.integers(0, A_COUNT + 3))
def test_scan_bounds_follow_slice_semantics(sealed, start, stop):
    """scan(key, start, stop) is records[start:stop], across segment edges,
    and empty (not an error) past the end or when stop <= start."""
    expected = [b"a%d" % i for i in range(A_COUNT)][start:stop]
    got = list(sealed.scan("a", start, stop))
    assert [r.value for r in got] == expected
    assert [r.offset for r in got] == list(range(start, start + len(expected)))


def test_read_count_last_keys_across_segments(sealed):
    """read/count/last/keys see sealed and active records alike."""
    assert sealed.keys() == ["a", "b"]
    assert sealed.count("a") == A_COUNT
    assert sealed.count("missing") == 0
    assert sealed.last("missing") is None
    assert sealed.last("a").value == b"a%d" % (A_COUNT - 1)
    for off in (0, 7, 8, 15, 16, A_COUNT - 1):  # both sides of each segment edge
        rec = sealed.read("a", off)
        assert (rec.key, rec.offset, rec.value) == ("a", off, b"a%d" % off)
    for off in (A_COUNT, A_COUNT + 100):
        with pytest.raises(aoflite.NotFound, match=f"offset {off}"):
            sealed.read("a", off)


def _lsn_edges(db):
    segs = [s for s in db.manifest.segments() if s.state == "sealed"]
    assert len(segs) == 2
    first, second = segs
    return {
        "zero": 0,
        "first": 1,
        "middle of sealed": (first.first_lsn + first.last_lsn) // 2,
        "last of a sealed": first.last_lsn,
        "segment boundary": second.first_lsn,
        "first active": second.last_lsn + 1,
    }


def test_scan_all_from_any_lsn(sealed):
    """scan_all(start_lsn) yields exactly the records with lsn >= start_lsn,
    in LSN order, whether it starts in a sealed segment, on a boundary, in
    the active segment or beyond the end."""
    everything = list(sealed.scan_all())
    _assert_lsn_order(everything)
    assert len(everything) == sealed.count("a") + sealed.count("b")
    assert {(r.key, r.offset) for r in everything} == {
        *(("a", i) for i in range(sealed.count("a"))),
        *(("b", i) for i in range(sealed.count("b"))),
    }
    end = everything[-1].lsn
    for name, lsn in {**_lsn_edges(sealed), "last": end, "beyond": end + 1, "far beyond": end + 1000}.items():
        assert list(sealed.scan_all(lsn)) == [r for r in everything if r.lsn >= lsn], name


def test_records_read_back_equal_everywhere(sealed):
    """read, scan, last and scan_all return the same Record for a record."""
    by_pos = {(r.key, r.offset): r for r in sealed.scan_all()}
    for key in sealed.keys():
        for rec in sealed.scan(key):
            assert sealed.read(key, rec.offset) == rec == by_pos[(key, rec.offset)]
        assert sealed.last(key) == rec


# ---------------------------------------------------------------- appending


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["k0", "k1", "k2"]), st.binary(max_size=40)), max_size=40))
def test_offsets_dense_per_key_lsns_increase_store_wide(ops):
    """Each key's offsets are 0, 1, 2...; every append gets a higher LSN
    than the one before, whatever the key."""
    with tempfile.TemporaryDirectory() as tmp, _open(os.path.join(tmp, "s")) as db:
        model: dict[str, list[bytes]] = {}
        for key, value in ops:
            assert db.append(key, value) == len(model.setdefault(key, []))
            model[key].append(value)
        for key, values in model.items():
            assert db.count(key) == len(values)
            assert _values(db, key) == values
        everything = list(db.scan_all())
        _assert_lsn_order(everything)
        assert [(r.key, r.value) for r in everything] == ops


def test_append_many_returns_contiguous_range(db):
    """append_many returns the range of its offsets; iterables and any
    bytes-like values work; an empty batch is the empty range at count()."""
    db.append("k", b"first")
    assert db.append_many("k", [b"x", bytearray(b"y"), memoryview(b"z")]) == range(1, 4)
    assert db.append_many("k", (v for v in [b"g1", b"g2"])) == range(4, 6)
    assert db.append_many("k", []) == range(6, 6)
    assert db.append_many("new", []) == range(0, 0)
    assert _values(db, "k") == [b"first", b"x", b"y", b"z", b"g1", b"g2"]
    assert all(type(v) is bytes for v in _values(db, "k"))
    assert "new" not in db.keys()
    batch = list(db.scan("k", 1, 4))
    assert [r.lsn for r in batch] == list(range(batch[0].lsn, batch[0].lsn + 3))


def test_timestamps_given_or_now(db):
    """timestamp_ms is stored as given, or is the wall clock at append."""
    before = time.time_ns() // 1_000_000
    db.append("k", b"now")
    after = time.time_ns() // 1_000_000
    db.append("k", b"given", timestamp_ms=12345)
    db.append("k", b"zero", timestamp_ms=0)
    now, given, zero = db.scan("k")
    assert before <= now.timestamp_ms <= after
    assert (given.timestamp_ms, zero.timestamp_ms) == (12345, 0)


def test_transaction_commits_together(db):
    """Records appended in a transaction appear together when it ends."""
    db.append("a", b"before")
    with db.transaction():
        assert db.append("a", b"t1") == 1
        assert db.append_many("b", [b"t2", b"t3"]) == range(0, 2)
        assert db.append("a", b"t4") == 2
    assert _values(db, "a") == [b"before", b"t1", b"t4"]
    assert _values(db, "b") == [b"t2", b"t3"]
    _assert_lsn_order(list(db.scan_all()))


def test_transaction_rolls_back_on_exception(db):
    """An exception inside a transaction propagates and removes everything
    it appended, keys it defined included; offsets are reused afterwards."""
    db.append("a", b"kept")
    with pytest.raises(KeyError), db.transaction():
        db.append("a", b"gone")
        db.append("ghost", b"gone")
        raise KeyError("abort")
    assert db.keys() == ["a"]
    assert (db.count("a"), db.count("ghost")) == (1, 0)
    with pytest.raises(aoflite.NotFound):
        db.read("a", 1)
    assert db.append("a", b"next") == 1
    assert db.append("ghost", b"real") == 0
    assert [(r.key, r.value) for r in db.scan_all()] == [("a", b"kept"), ("a", b"next"), ("ghost", b"real")]


@pytest.mark.parametrize("durability", ["full", "normal", "off"])
def test_commit_returns_last_durable_lsn(store_path, durability):
    """commit() returns the LSN of the last record appended before it (0 on
    an empty store)."""
    with _open(store_path, durability=durability) as db:
        assert db.commit() == 0
        db.append("k", b"1")
        db.append_many("k", [b"2", b"3"])
        with db.transaction():
            db.append("j", b"4")
        assert db.commit() == db.last("j").lsn == max(r.lsn for r in db.scan_all())


@pytest.mark.parametrize("size", [0, 1, 4096])
def test_value_sizes_up_to_max_record_bytes(store_path, size):
    """Empty, one-byte and exactly max_record_bytes values round-trip."""
    value = os.urandom(size)
    with _open(store_path, max_record_bytes=4096) as db:
        db.append("k", value)
        db.append_many("k", [value])
        assert _values(db, "k") == [value, value]
    with _open(store_path) as db:
        assert _values(db, "k") == [value, value]


def test_record_larger_than_a_segment(store_path):
    """A record above segment_bytes (allowed by max_record_bytes) is stored
    whole and survives reopen."""
    value = os.urandom(2 * MiB)
    with _open(store_path, max_record_bytes=2 * MiB) as db:
        db.append("small", b"s")
        db.append("huge", value)
        db.append("small", b"t")
    with _open(store_path) as db:
        assert db.read("huge", 0).value == value
        assert _values(db, "small") == [b"s", b"t"]


_key_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")


_keys = st.text(_key_chars, min_size=1, max_size=400).filter(lambda k: len(k.encode()) <= 1024)


@settings(max_examples=30, deadline=None)
@given(st.lists(_keys, min_size=1, max_size=8, unique=True))
def test_unicode_keys_round_trip(keys):
    """Any str of 1..1024 UTF-8 bytes without NUL is a key, kept exactly, in
    sealed and active segments and across reopen."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "s")
        with _open(path) as db:
            for i, key in enumerate(keys):
                db.append(key, b"%d" % i)
                if i == len(keys) // 2:
                    db.seal()
        with _open(path, readonly=True) as db:
            assert db.keys() == sorted(keys)
            for i, key in enumerate(keys):
                rec = db.read(key, 0)
                assert (rec.key, rec.value) == (key, b"%d" % i)


@pytest.mark.parametrize("key", ["a" * 1024, "é" * 512, "\U0001f600" * 256], ids=["ascii", "2-byte", "4-byte"])
def test_longest_keys(store_path, key):
    """A key of exactly 1024 UTF-8 bytes works in the active segment, in a
    sealed one and after reopen."""
    assert len(key.encode()) == 1024
    with _open(store_path) as db:
        db.append(key, b"1")
        db.seal()
        db.append(key, b"2")
        assert _values(db, key) == [b"1", b"2"]
    with _open(store_path) as db:
        assert db.keys() == [key]
        assert _values(db, key) == [b"1", b"2"]


def test_many_keys(store_path):
    """Thousands of keys, some in sealed segments, are all listed and read."""
    names = [f"key/{i:05d}" for i in range(3000)]
    with _open(store_path) as db:
        for i, name in enumerate(names):
            db.append(name, name.encode())
            if i == 1000:
                db.seal()
        assert db.keys() == names
    with _open(store_path) as db:
        assert db.keys() == names
        assert all(db.read(n, 0).value == n.encode() and db.count(n) == 1 for n in names)


# ---------------------------------------------------------------- segments


def test_records_spanning_many_segments_survive_reopen(store_path):
    """Records rolled over many segments read back identically (lsn and
    timestamp included) after reopen, and LSNs keep increasing."""
    with _open(store_path) as db:
        for i in range(90):
            db.append(f"k{i % 3}", bytes([i]) * BIG)
        assert len([s for s in db.manifest.segments() if s.state == "sealed"]) >= 4
        before = _snapshot(db)
    with _open(store_path) as db:
        assert _snapshot(db) == before
        for i in range(90):
            assert db.read(f"k{i % 3}", i // 3).value == bytes([i]) * BIG
        rec = db.read("k0", db.append("k0", b"after"))
        assert rec.lsn > before[1][-1].lsn


def test_sealed_reads_do_not_need_the_active_tail(store_path):
    """After reopen, sealed records read back even though the active
    segment's records are garbage: only the active segment's are lost."""
    with _open(store_path) as db:
        db.append_many("k", [b"sealed-%d" % i for i in range(5)])
        db.seal()
        db.append("k", b"active-" + b"x" * 100)
        active = db.manifest.segments()[-1].segment_id
    _flip_byte(layout.segment_path(store_path, active), b"active-" + b"x" * 100)
    with _open(store_path) as db:
        assert _values(db, "k") == [b"sealed-%d" % i for i in range(5)]
        assert db.append("k", b"again") == 5


def test_open_does_not_read_sealed_segments(store_path):
    """A damaged payload in a sealed segment does not stop open; only reading
    that record raises CorruptionError, and its neighbours still read."""
    needle = b"damage-me-" + b"z" * 64
    with _open(store_path) as db:
        db.append("k", b"before")
        db.append("k", needle)
        db.append("k", b"after")
        sid = db.seal()
    _flip_byte(layout.segment_path(store_path, sid), needle)
    with _open(store_path) as db:
        assert db.count("k") == 3
        assert db.read("k", 0).value == b"before"
        assert db.read("k", 2).value == b"after"
        with pytest.raises(aoflite.CorruptionError):
            db.read("k", 1)
        with pytest.raises(aoflite.CorruptionError):
            list(db.scan("k"))
        assert db.append("k", b"more") == 3


def test_transaction_larger_than_a_segment(store_path):
    """A transaction bigger than segment_bytes grows the active segment
    instead of splitting, commits, and reads back before and after reopen."""
    values = [bytes([i]) * BIG for i in range(40)]  # 2.5 MiB
    with _open(store_path) as db:
        db.append("k", b"first")
        with db.transaction():
            for v in values:
                db.append("k", v)
        assert _values(db, "k") == [b"first", *values]
        seg = db.seal()
        assert [s.segment_id for s in db.manifest.segments() if s.state == "sealed"] == [seg]
    with _open(store_path) as db:
        assert _values(db, "k") == [b"first", *values]


def test_seal_returns_segment_id_or_none(db):
    """seal() returns the id of the segment it sealed, None when the active
    segment is empty; records stay readable either way."""
    assert db.seal() is None
    db.append("k", b"1")
    first = db.seal()
    assert first is not None
    assert db.seal() is None
    db.append("k", b"2")
    second = db.seal()
    assert second > first
    states = {s.segment_id: s.state for s in db.manifest.segments()}
    assert states[first] == states[second] == "sealed"
    assert _values(db, "k") == [b"1", b"2"]


# ---------------------------------------------------------------- closing


def test_close_is_idempotent_and_reopen_preserves_everything(store_path):
    """close() twice is fine; reopening in each durability mode shows every
    record of the previous handle."""
    db = _open(store_path, durability="off")
    db.append("k", b"1")
    db.close()
    db.close()
    for mode in ("full", "normal", "off"):
        with _open(store_path, durability=mode) as db:
            assert _values(db, "k") == [b"1"]
    with _open(store_path) as db:
        assert db.append("k", b"2") == 1


def test_context_manager_closes_and_keeps_data(store_path):
    """Leaving the with block (also by an exception) commits and closes."""
    with pytest.raises(RuntimeError), _open(store_path, durability="off") as db:
        db.append("k", b"1")
        raise RuntimeError
    with pytest.raises(aoflite.ClosedError):
        db.append("k", b"2")
    with _open(store_path) as db:
        assert _values(db, "k") == [b"1"]
        # the previous handle released the writer lock
        assert db.append("k", b"2") == 1


# ---------------------------------------------------------------- tail


def test_tail_follows_records_appended_later(db):
    """A tail started before records exist yields them as they are
    appended, in order, without restarting."""
    db.append("k", b"0")
    got, seen_first = [], threading.Event()

    def follow():
        for rec in db.tail("k", 0, timeout=10):
            got.append(rec.value)
            seen_first.set()
            if len(got) == 4:
                return

    join = in_thread(follow)
    assert seen_first.wait(10)
    db.append("other", b"x")  # another key's records are not the tail's
    db.append("k", b"1")
    db.append_many("k", [b"2", b"3"])
    join()
    assert got == [b"0", b"1", b"2", b"3"]


def test_tail_picks_up_a_key_defined_later(db):
    """Tailing a key that has no records yet waits for its first one."""
    got, started = [], threading.Event()

    def follow():
        started.set()
        for rec in db.tail("late", 0, timeout=10):
            got.append(rec)
            return

    join = in_thread(follow)
    assert started.wait(10)
    db.append("late", b"v")
    join()
    assert [(r.key, r.offset, r.value) for r in got] == [("late", 0, b"v")]


def test_tail_ends_after_timeout_without_new_records(db):
    """tail(timeout=t) yields what exists from start, then ends once t
    seconds pass without a new record; the timeout is not cut short."""
    db.append_many("k", [b"0", b"1", b"2"])
    t0 = time.monotonic()
    assert [r.value for r in db.tail("k", 1, timeout=0.2)] == [b"1", b"2"]
    assert [r.value for r in db.tail("missing", 0, timeout=0.2)] == []
    assert 0.4 <= time.monotonic() - t0 < 5
    assert list(db.tail("k", 3, timeout=0)) == []
