"""Store.verify: sealed segments checked byte for byte against the manifest."""

from __future__ import annotations

import os

import pytest

import aoflite
from aoflite import layout


def _sealed_store(path: str) -> list[int]:
    with aoflite.open(path) as db:
        ids = []
        for i in range(3):
            db.append_many("k", [b"%d-%d" % (i, j) for j in range(50)])
            ids.append(db.seal())
        db.append("k", b"active")
    return ids


def test_verify_counts_every_sealed_segment(store_path):
    """A sound store verifies whole, or one segment at a time."""
    ids = _sealed_store(store_path)
    with aoflite.open(store_path) as db:
        assert db.verify() == 3
        assert db.verify(ids[1]) == 1


def test_verify_names_the_damaged_segment(store_path):
    """A flipped byte in a sealed segment is CorruptionError naming its file;
    the others still verify and the store keeps working."""
    ids = _sealed_store(store_path)
    path = layout.segment_path(store_path, ids[1])
    with open(path, "r+b") as f:
        f.seek(200)
        b = f.read(1)
        f.seek(200)
        f.write(bytes([b[0] ^ 0x40]))
    with aoflite.open(store_path) as db:
        with pytest.raises(aoflite.CorruptionError) as e:
            db.verify()
        assert e.value.path == path and os.path.basename(path) in str(e.value)
        assert db.verify(ids[0]) == 1 and db.verify(ids[2]) == 1
        assert db.append("k", b"after") == 151


def test_verify_rejects_bad_arguments(store_path):
    """Unknown, active or ill-typed segment ids get clear errors."""
    _sealed_store(store_path)
    with aoflite.open(store_path) as db:
        active = db.stats()["active_segment"]
        with pytest.raises(aoflite.NotFound, match="no segment 999"):
            db.verify(999)
        with pytest.raises(aoflite.Error, match="still active"):
            db.verify(active)
        with pytest.raises(TypeError, match="segment_id"):
            db.verify("1")
        with pytest.raises(ValueError, match="segment_id"):
            db.verify(-1)
