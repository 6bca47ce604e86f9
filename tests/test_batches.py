"""Large batches: append_many builds batches of 64 KiB and more in a staging
buffer and writes them with pwrite (records larger than the 1 MiB stage go
out directly). They must read back, survive reopen, stay atomic, and mix
with records written through the map."""

from __future__ import annotations

import os
import subprocess
import sys

import aoflite
from testhelpers import check_recovered


def _values(n: int, size: int, tag: int) -> list[bytes]:
    return [bytes([tag, i % 251]) * (size // 2) for i in range(n)]


def test_staged_batches_read_back_across_reopen(store_path):
    """Small batches (map), staged batches spanning several stage flushes,
    and records bigger than the stage, interleaved, all read back."""
    appended: dict[str, list[bytes]] = {"small": [], "staged": [], "huge": []}
    with aoflite.open(store_path, segment_bytes=8 << 20, max_record_bytes=4 << 20) as db:
        for round_ in range(3):
            for key, vals in (
                ("small", _values(10, 100, round_)),
                ("staged", _values(600, 3000, round_)),  # ~1.8 MiB: two stage flushes
                ("huge", _values(2, 3 << 20, round_)),  # each above the stage
            ):
                offs = db.append_many(key, vals)
                assert offs == range(len(appended[key]), len(appended[key]) + len(vals))
                appended[key] += vals
            db.append("small", b"single")
            appended["small"].append(b"single")
        for key, vals in appended.items():
            assert [r.value for r in db.scan(key)] == vals
    check_recovered(store_path, appended, {k: len(v) for k, v in appended.items()})


def test_staged_batch_in_a_transaction_rolls_back(store_path):
    """A staged batch inside a rolled-back transaction leaves nothing."""
    with aoflite.open(store_path) as db:
        db.append("k", b"before")
        try:
            with db.transaction():
                db.append_many("k", _values(100, 4096, 1))
                raise RuntimeError("abandon")
        except RuntimeError:
            pass
        assert db.count("k") == 1
        db.append_many("k", _values(100, 4096, 2))
        assert [r.value for r in db.scan("k", 1)] == _values(100, 4096, 2)
    with aoflite.open(store_path) as db:
        assert db.count("k") == 101


def test_crash_in_the_middle_of_a_staged_batch_drops_it_whole(store_path):
    """A process that dies halfway through writing a staged batch leaves
    the batch out entirely after recovery."""
    script = (
        "import aoflite\n"
        f"db = aoflite.open({store_path!r}, durability='full')\n"
        "db.append_many('k', [b'a' * 4000] * 10)\n"
        "db.append_many('k', [b'b' * 4000] * 500)\n"
    )
    env = dict(os.environ, AOFLITE_FAILPOINT="append_many.half", AOFLITE_FAILPOINT_SKIP="1")
    r = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
    assert r.returncode == 77
    survived = check_recovered(
        store_path, {"k": [b"a" * 4000] * 10 + [b"b" * 4000] * 500}, {"k": 10}, [[("k", o) for o in range(10, 510)]]
    )
    assert survived["k"] == 11  # the first batch, plus check_recovered's own append
