"""The manifest a store exposes: segments, per-key ranges and the ledger."""

from __future__ import annotations

import os

import pytest

import aoflite
from aoflite import layout, manifest

MiB = 1 << 20

# What each segment of the `sealed` store holds: (key, records) in order.
PLAN = [
    [("a", 5), ("b", 2)],
    [("b", 3)],
    [("a", 3)],
]
ACTIVE = [("a", 1), ("c", 1)]


def _ranges(plan, sids):
    """Expected key_ranges per key: (last_offset, segment_id, first_offset, count)."""
    out: dict[str, list[tuple[int, int, int, int]]] = {}
    next_off: dict[str, int] = {}
    for sid, contents in zip(sids, plan):
        for key, n in contents:
            first = next_off.get(key, 0)
            out.setdefault(key, []).append((first + n - 1, sid, first, n))
            next_off[key] = first + n
    return out


@pytest.fixture
def sealed(db):
    """db after PLAN: three sealed segments and an active one; yields
    (db, sealed segment ids)."""
    sids = []
    for contents in PLAN:
        for key, n in contents:
            db.append_many(key, [b"%s%d" % (key.encode(), i) for i in range(n)])
        sids.append(db.seal())
    for key, n in ACTIVE:
        db.append_many(key, [b"x"] * n)
    return db, sids


def _kid(db, key):
    found = db.manifest.lookup_key(key)
    assert found is not None, key
    return found[0]


def test_segments_states_and_lsn_ranges(sealed):
    """segments() lists every segment by id: the sealed ones with LSN ranges
    that hold exactly their records, then the one active segment."""
    db, sids = sealed
    segs = db.manifest.segments()
    assert [s.segment_id for s in segs][:-1] == sids
    assert [s.state for s in segs] == ["sealed"] * len(sids) + ["active"]
    records = list(db.scan_all())
    for seg, contents in zip(segs, PLAN):
        inside = [r for r in records if seg.first_lsn <= r.lsn <= seg.last_lsn]
        assert [(r.key, r.offset) for r in inside] == [(r.key, r.offset) for r in records[: len(inside)]]
        records = records[len(inside) :]
        assert seg.record_count == len(inside) == sum(n for _, n in contents)
        assert seg.key_count == len({k for k, _ in contents})
        assert seg.file_bytes == os.path.getsize(layout.segment_path(db.path, seg.segment_id))
        assert "t0" in seg.tiers
    active = segs[-1]
    # what is left is the active segment's, from its first LSN on
    assert len(records) == sum(n for _, n in ACTIVE)
    assert all(r.lsn >= active.first_lsn > segs[-2].last_lsn for r in records)
    assert all(a.last_lsn < b.first_lsn for a, b in zip(segs, segs[1:]))
    assert db.manifest.segment(sids[1]) == segs[1]
    assert db.manifest.segment(active.segment_id + 100) is None


def test_key_ranges_and_sealed_counts(sealed):
    """key_ranges(kid) lists a key's sealed ranges in offset order;
    lookup_key counts only sealed records; active-only keys are unknown."""
    db, sids = sealed
    expected = _ranges(PLAN, sids)
    for key, ranges in expected.items():
        kid = _kid(db, key)
        assert db.manifest.key_ranges(kid) == ranges
        assert db.manifest.lookup_key(key) == (kid, ranges[-1][0] + 1)
    assert db.manifest.lookup_key("c") is None
    assert db.manifest.lookup_key("never") is None
    assert set(db.manifest.keys()) == set(expected)


def test_find_segment_at_range_edges(sealed):
    """find_segment gives the sealed segment holding an offset at both ends
    of every range, and None past the sealed offsets or for unknown ids."""
    db, sids = sealed
    for key, ranges in _ranges(PLAN, sids).items():
        kid = _kid(db, key)
        for last, sid, first, count in ranges:
            for off in {first, last, (first + last) // 2}:
                assert db.manifest.find_segment(kid, off) == (sid, first, count), (key, off)
        sealed_count = ranges[-1][0] + 1
        # the next offset is in the active segment (or nowhere): not the next key's range
        assert db.manifest.find_segment(kid, sealed_count) is None
        assert db.manifest.find_segment(kid, 10**9) is None
    assert db.manifest.find_segment(10**6, 0) is None


def _events(db, type_):
    return [e for e in db.manifest.ledger() if e["type"] == type_]


def test_ledger_records_lifecycle(sealed):
    """The ledger starts with StoreCreated, has a SegmentOpened for every
    segment and a SealSegment matching each sealed one, in order, with seq
    numbers strictly increasing; ledger(start) resumes at start."""
    db, sids = sealed
    events = list(db.manifest.ledger())
    assert events[0]["type"] == "StoreCreated"
    assert all(e["type"] in manifest.EVENT_TYPES for e in events)
    seqs = [e["seq"] for e in events]
    assert all(a < b for a, b in zip(seqs, seqs[1:]))
    assert db.manifest.ledger_seq() == seqs[-1]
    segs = db.manifest.segments()
    assert [e["segment"] for e in _events(db, "SegmentOpened")] == [s.segment_id for s in segs]
    seals = _events(db, "SealSegment")
    assert [(e["segment"], e["records"], e["last_lsn"]) for e in seals] == [
        (s.segment_id, s.record_count, s.last_lsn) for s in segs if s.state == "sealed"
    ]
    # each seal is followed by the opening of the segment that replaces it
    for seal in seals:
        after = [e for e in events if e["seq"] > seal["seq"]][0]
        assert (after["type"], after["segment"]) == ("SegmentOpened", seal["segment"] + 1)
    middle = seqs[len(seqs) // 2]
    assert list(db.manifest.ledger(middle)) == [e for e in events if e["seq"] >= middle]


def test_rolls_at_segment_bytes_are_recorded(db):
    """Segments that fill up are sealed and recorded like explicit seals,
    and their ranges account for every record."""
    for i in range(40):
        db.append("k", bytes([i]) * (64 << 10))
    segs = db.manifest.segments()
    sealed = [s for s in segs if s.state == "sealed"]
    assert len(sealed) >= 2
    assert [e["segment"] for e in _events(db, "SealSegment")] == [s.segment_id for s in sealed]
    ranges = db.manifest.key_ranges(_kid(db, "k"))
    assert [r[1] for r in ranges] == [s.segment_id for s in sealed]
    assert sum(r[3] for r in ranges) == sum(s.record_count for s in sealed)
    assert all(s.file_bytes <= 2 * MiB for s in sealed)


def test_event_types_reject_unknown_names(db):
    """log_event takes only names in EVENT_TYPES: an unknown one raises
    ValueError naming it and writes nothing; a known one gets the next seq."""
    assert len(set(manifest.EVENT_TYPES)) == len(manifest.EVENT_TYPES)
    assert {"StoreCreated", "SegmentOpened", "SealSegment"} <= set(manifest.EVENT_TYPES)
    seq = db.manifest.ledger_seq()
    for bad in ("Bogus", "sealsegment", ""):
        with pytest.raises(ValueError, match=repr(bad)):
            db.manifest.log_event(bad, detail=1)
    assert db.manifest.ledger_seq() == seq
    assert db.manifest.log_event("CustomEvent", detail="mine") == seq + 1
    last = list(db.manifest.ledger(seq + 1))
    assert [(e["type"], e["detail"]) for e in last] == [("CustomEvent", "mine")]


def test_manifest_survives_reopen_and_is_shared_with_readers(sealed, store_path):
    """After reopen, and through a read-only handle, the manifest lists the
    same segments, ranges and ledger."""
    db, sids = sealed
    segs, ledger = db.manifest.segments(), list(db.manifest.ledger())
    ranges = {k: db.manifest.key_ranges(_kid(db, k)) for k in ("a", "b")}
    with aoflite.open(store_path, readonly=True) as reader:
        assert reader.manifest.segments() == segs
    db.close()
    with aoflite.open(store_path) as db2, aoflite.open(store_path, readonly=True) as reader:
        for m in (db2.manifest, reader.manifest):
            assert m.segments() == segs
            assert list(m.ledger())[: len(ledger)] == ledger
            assert {k: m.key_ranges(_kid(db2, k)) for k in ranges} == ranges
