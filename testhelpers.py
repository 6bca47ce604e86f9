"""Test helpers shared by the unit tests (tests/) and the crash-recovery
suite (fuzz/), so neither suite imports the other's modules.

It lives at the top of the checkout, not in tests/ or fuzz/: pytest puts
the checkout on sys.path for both suites (``pythonpath = ["."]`` in
pyproject.toml), and so does every child process the suites start, so it
is imported by one name, ``testhelpers``, everywhere. (tests/ is not a
package and is on sys.path only once one of its modules is collected;
importing it as ``tests.helpers`` from fuzz/ would load a second copy,
with a second ``InvariantError`` that ``except`` clauses would miss.)
Machinery only the crash-recovery suite uses (the workload child, power
loss, the coverage counters) stays in fuzz/.

Invariants a store must satisfy after any crash:
``check_recovered(path, appended, acked, batches)`` opens the store at path
(running recovery) and checks, against what the test appended:

- every acknowledged record is present and byte-identical;
- what survives of each key is a prefix of what was appended to it, with
  dense offsets from 0, and ``count()`` and ``last()`` agree with it;
- no batch (append_many, transaction) is partly visible;
- ``scan_all()`` yields exactly the surviving records, in strictly
  increasing LSN order;
- files and manifest agree: every segment file is in the manifest, every
  manifest segment held locally has its file, sealed ones verify;
- appending after recovery works.

It returns the surviving counts so a stateful test can continue from them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import aoflite
from aoflite import layout
from aoflite.segment import Segment


class InvariantError(AssertionError):
    """A recovered store broke a crash-recovery invariant."""


def _fail(msg: str) -> None:
    raise InvariantError(msg)


def check_files(path: str) -> None:
    """Files and manifest agree (run on a closed store)."""
    with aoflite.open(path, readonly=True) as db:
        recs = {r.segment_id: r for r in db.manifest.segments()}
        files = set(layout.segment_ids(path))
        orphans = files - set(recs)
        if orphans:
            _fail(f"segment files not in the manifest: {sorted(orphans)}")
        for sid, rec in recs.items():
            if "t0" in rec.tiers and sid not in files:
                _fail(f"manifest segment {sid} ({rec.state}) has no file")
            if rec.state == "sealed" and sid not in files:
                if not {"t1", "t2"} & set(rec.tiers):
                    _fail(f"sealed segment {sid} is in no tier (tiers {rec.tiers}, no file)")
                continue  # evicted: scans and reads bring it back and check it
            if rec.state == "sealed":
                seg, _ = Segment.open(layout.segment_path(path, sid))
                info = seg.info()
                if not info.sealed:
                    _fail(f"segment {sid} is sealed in the manifest but not on disk")
                seg.verify()
                if (info.record_count, info.last_lsn) != (rec.record_count, rec.last_lsn):
                    _fail(f"segment {sid}: manifest and footer disagree")
        actives = [r for r in recs.values() if r.state == "active"]
        if len(actives) > 1:
            _fail(f"more than one active segment: {[r.segment_id for r in actives]}")


def check_recovered(
    path: str,
    appended: Mapping[str, Sequence[bytes]],
    acked: Mapping[str, int],
    batches: Iterable[Sequence[tuple[str, int]]] = (),
    *,
    append_after: bool = True,
    **open_kwargs,
) -> dict[str, int]:
    """Open (recover) the store and check every invariant; returns the
    surviving record count of each key.

    appended: every value appended to each key, in offset order (rolled
    back transactions excluded); acked: how many of each key's first
    records were acknowledged durable; batches: groups of (key, offset)
    that must survive all together or not at all. Records below a key's
    retired mark were removed by retention (whole segments, so whole
    batches), never lost."""
    with aoflite.open(path, **open_kwargs) as db:
        survived: dict[str, int] = {}
        kept_from: dict[str, int] = {}
        seen_keys = set(db.keys())
        for key, values in appended.items():
            n = db.count(key)
            if n < acked.get(key, 0):
                _fail(f"key {key!r}: {acked[key]} records acknowledged, {n} survived")
            if n > len(values):
                _fail(f"key {key!r}: {n} records after recovery, only {len(values)} appended")
            known = db.manifest.lookup_key(key)
            start = kept_from[key] = db.manifest.retired_below(known[0]) if known else 0
            got = list(db.scan(key))
            if [r.offset for r in got] != list(range(start, n)):
                _fail(f"key {key!r}: offsets {[r.offset for r in got][:20]}... are not dense {start}..{n - 1}")
            for r in got:
                if r.value != values[r.offset]:
                    _fail(f"key {key!r} offset {r.offset}: value differs from what was appended")
            last = db.last(key)
            if (None if last is None else last.offset) != (n - 1 if n > start else None):
                _fail(f"key {key!r}: last() {last!r} disagrees with count() {n}")
            if n and key not in seen_keys:
                _fail(f"key {key!r} has records but keys() omits it")
            survived[key] = n
        extra = seen_keys - set(appended)
        if extra:
            _fail(f"keys() lists keys never appended: {sorted(extra)[:5]}")
        for batch in batches:
            alive = [kept_from.get(key, 0) <= off < survived.get(key, 0) for key, off in batch]
            if any(alive) and not all(alive):
                _fail(f"batch {list(batch)[:6]} is partly visible: {alive[:6]}")
        lsns = []
        total = 0
        for r in db.scan_all():
            lsns.append(r.lsn)
            total += 1
            if r.offset >= survived.get(r.key, 0):
                _fail(f"scan_all yields {r.key!r} offset {r.offset} beyond count()")
        if any(b <= a for a, b in zip(lsns, lsns[1:])):
            _fail("scan_all is not in strictly increasing LSN order")
        held = sum(n - kept_from.get(k, 0) for k, n in survived.items())
        if total != held:
            _fail(f"scan_all yields {total} records, keys hold {held}")
        if append_after and not db.readonly:
            top = lsns[-1] if lsns else 0
            for key, n in survived.items():
                if db.append(key, b"after-recovery") != n:
                    _fail(f"key {key!r}: append after recovery did not get offset {n}")
                rec = db.read(key, n)
                if rec.value != b"after-recovery":
                    _fail(f"key {key!r}: record appended after recovery reads back wrong")
                if rec.lsn <= top:
                    _fail(f"key {key!r}: LSN {rec.lsn} after recovery is not above the last recovered LSN {top}")
                top = rec.lsn
                survived[key] = n + 1
            db.commit()
    check_files(path)
    return survived


def copy_tree(src: str, dst: str) -> None:
    """Copy a store directory byte for byte (for tests that recover a copy)."""
    for root, _, files in os.walk(src):
        rel = os.path.relpath(root, src)
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for name in files:
            with open(os.path.join(root, name), "rb") as f, open(os.path.join(dst, rel, name), "wb") as g:
                g.write(f.read())


def in_thread(target: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    """Run target(*args) in a daemon thread; returns a join(timeout=60)
    that waits, re-raises the thread's failure and returns its result."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            out["result"] = target(*args)
        except BaseException as e:  # handed to the test thread
            out["error"] = e

    t = threading.Thread(target=body, daemon=True)
    t.start()

    def join(timeout: float = 60) -> Any:
        t.join(timeout)
        assert not t.is_alive(), "a thread did not finish"
        if "error" in out:
            raise out["error"]
        return out["result"]

    return join
