"""Every public entry point rejects bad input with an error of the right
class whose message names what was wrong, and the store is unharmed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import aoflite
from aoflite import layout

MiB = 1 << 20
MAX = 100  # max_record_bytes of the test stores
TOO_BIG = b"x" * (MAX + 1)


@pytest.fixture
def populated(store_path):
    """A writable store with records in a sealed and in the active segment."""
    db = aoflite.open(store_path, segment_bytes=MiB, max_record_bytes=MAX)
    db.append_many("a", [b"a0", b"a1"])
    db.seal()
    db.append("a", b"a2")
    db.append("b", b"b0")
    yield db
    db.close()


def _state(db):
    return db.keys(), [(r.key, r.offset, r.lsn, r.value) for r in db.scan_all()]


def _assert_unharmed(db, before):
    """Nothing was lost or added, and the store still takes appends."""
    assert _state(db) == before
    n = db.count("a")
    assert db.append("a", b"after") == n
    assert db.read("a", n).value == b"after"


def _assert_fails(call, exc, *names):
    with pytest.raises(exc) as info:
        call()
    for name in names:
        assert name in str(info.value), f"{type(info.value).__name__} message {str(info.value)!r} does not name {name!r}"
    return info.value


def _check(db, call, exc, *names):
    """call(db) raises exc naming names, and leaves db as it was."""
    before = _state(db)
    _assert_fails(lambda: call(db), exc, *names)
    _assert_unharmed(db, before)


# ---------------------------------------------------------------- keys

BAD_KEYS = [
    pytest.param(None, TypeError, ["key", "NoneType"], id="None"),
    pytest.param(1, TypeError, ["key", "int"], id="int"),
    pytest.param(b"a", TypeError, ["key", "bytes"], id="bytes"),
    pytest.param(["a"], TypeError, ["key", "list"], id="list"),
    pytest.param("", ValueError, ["key", "0"], id="empty"),
    pytest.param("a" * 1025, ValueError, ["key", "1025"], id="1025-bytes"),
    pytest.param("é" * 513, ValueError, ["key", "1026"], id="1026-utf8-bytes"),
    pytest.param("a\0b", ValueError, ["'a\\x00b'", "NUL"], id="NUL"),
    pytest.param("a\ud800", ValueError, ["'a\\ud800'", "surrogate"], id="lone-surrogate"),
]

KEYED_CALLS = {
    "append": lambda db, k: db.append(k, b"v"),
    "append_many": lambda db, k: db.append_many(k, [b"v"]),
    "read": lambda db, k: db.read(k, 0),
    "scan": lambda db, k: list(db.scan(k)),
    "tail": lambda db, k: list(db.tail(k, 0, timeout=0)),
    "count": lambda db, k: db.count(k),
    "last": lambda db, k: db.last(k),
}


@pytest.mark.parametrize("call", KEYED_CALLS.values(), ids=KEYED_CALLS.keys())
@pytest.mark.parametrize(("key", "exc", "names"), BAD_KEYS)
def test_bad_key(populated, call, key, exc, names):
    """A key that is not a str, is empty, longer than 1024 UTF-8 bytes, holds
    a NUL or cannot be encoded is refused by every call taking a key."""
    _check(populated, lambda db: call(db, key), exc, *names)


# ---------------------------------------------------------------- values

BAD_CALLS = [
    # append: values and timestamps
    pytest.param(lambda db: db.append("a", "text"), TypeError, ["value", "str"], id="append-str"),
    pytest.param(lambda db: db.append("a", 1), TypeError, ["value", "int"], id="append-int"),
    pytest.param(lambda db: db.append("a", None), TypeError, ["value", "NoneType"], id="append-None"),
    pytest.param(lambda db: db.append("new", None), TypeError, ["value"], id="append-None-new-key"),
    pytest.param(lambda db: db.append("a", TOO_BIG), aoflite.RecordTooLarge, ["'a'", f"{MAX + 1}", "max_record_bytes"], id="append-too-large"),
    pytest.param(lambda db: db.append("new", TOO_BIG), aoflite.RecordTooLarge, ["'new'"], id="append-too-large-new-key"),
    pytest.param(lambda db: db.append("a", TOO_BIG), ValueError, [], id="too-large-is-ValueError"),
    pytest.param(lambda db: db.append("a", b"v", timestamp_ms=-1), ValueError, ["timestamp_ms", "-1"], id="ts-negative"),
    pytest.param(lambda db: db.append("a", b"v", timestamp_ms=2**63), ValueError, ["timestamp_ms"], id="ts-2**63"),
    pytest.param(lambda db: db.append("a", b"v", timestamp_ms=1.5), TypeError, ["timestamp_ms", "float"], id="ts-float"),
    pytest.param(lambda db: db.append("a", b"v", timestamp_ms=True), TypeError, ["timestamp_ms", "bool"], id="ts-bool"),
    pytest.param(lambda db: db.append("a", b"v", timestamp_ms="1"), TypeError, ["timestamp_ms", "str"], id="ts-str"),
    # append_many: the batch is refused whole
    pytest.param(lambda db: db.append_many("a", "text"), TypeError, ["values"], id="many-str"),
    pytest.param(lambda db: db.append_many("a", b"raw"), TypeError, ["values"], id="many-bytes"),
    pytest.param(lambda db: db.append_many("a", None), TypeError, ["values", "NoneType"], id="many-None"),
    pytest.param(lambda db: db.append_many("a", 5), TypeError, ["values", "int"], id="many-int"),
    pytest.param(lambda db: db.append_many("a", [b"ok", "s"]), TypeError, ["values[1]", "str"], id="many-list-with-str"),
    pytest.param(lambda db: db.append_many("a", [b"ok", None]), TypeError, ["values[1]", "NoneType"], id="many-list-with-None"),
    pytest.param(lambda db: db.append_many("a", [b"ok", 7]), TypeError, ["values[1]", "int"], id="many-list-with-int"),
    pytest.param(lambda db: db.append_many("a", [b"ok", TOO_BIG, b"ok"]), aoflite.RecordTooLarge, ["'a'", f"{MAX + 1}"], id="many-one-too-large"),
    pytest.param(lambda db: db.append_many("new", [b"ok", TOO_BIG]), aoflite.RecordTooLarge, ["'new'"], id="many-too-large-new-key"),
    # read
    pytest.param(lambda db: db.read("a", -1), ValueError, ["offset", "-1"], id="read-negative"),
    pytest.param(lambda db: db.read("a", 1.0), TypeError, ["offset", "float"], id="read-float"),
    pytest.param(lambda db: db.read("a", True), TypeError, ["offset", "bool"], id="read-bool"),
    pytest.param(lambda db: db.read("a", None), TypeError, ["offset"], id="read-None"),
    pytest.param(lambda db: db.read("a", 3), aoflite.NotFound, ["'a'", "offset 3", "{path}"], id="read-at-count"),
    pytest.param(lambda db: db.read("a", 10**6), aoflite.NotFound, ["'a'", "1000000"], id="read-far-beyond"),
    pytest.param(lambda db: db.read("nope", 0), aoflite.NotFound, ["'nope'", "{path}"], id="read-unknown-key"),
    pytest.param(lambda db: db.read("a", 3), LookupError, [], id="NotFound-is-LookupError"),
    # scan, scan_all, tail
    pytest.param(lambda db: list(db.scan("a", -1)), ValueError, ["start", "-1"], id="scan-start-negative"),
    pytest.param(lambda db: list(db.scan("a", "0")), TypeError, ["start", "str"], id="scan-start-str"),
    pytest.param(lambda db: list(db.scan("a", None)), TypeError, ["start"], id="scan-start-None"),
    pytest.param(lambda db: list(db.scan("a", 0, -1)), ValueError, ["stop", "-1"], id="scan-stop-negative"),
    pytest.param(lambda db: list(db.scan("a", 0, 1.5)), TypeError, ["stop", "float"], id="scan-stop-float"),
    pytest.param(lambda db: list(db.scan_all(-1)), ValueError, ["start_lsn", "-1"], id="scan_all-negative"),
    pytest.param(lambda db: list(db.scan_all("1")), TypeError, ["start_lsn", "str"], id="scan_all-str"),
    pytest.param(lambda db: list(db.scan_all(None)), TypeError, ["start_lsn"], id="scan_all-None"),
    pytest.param(lambda db: list(db.scan_all(1.0)), TypeError, ["start_lsn", "float"], id="scan_all-float"),
    pytest.param(lambda db: list(db.tail("a", -1, timeout=0)), ValueError, ["start", "-1"], id="tail-start-negative"),
    pytest.param(lambda db: list(db.tail("a", 0.5, timeout=0)), TypeError, ["start", "float"], id="tail-start-float"),
    pytest.param(lambda db: list(db.tail("a", 0, timeout=-1)), ValueError, ["timeout", "-1"], id="tail-timeout-negative"),
    pytest.param(lambda db: list(db.tail("a", 0, timeout="1")), TypeError, ["timeout", "str"], id="tail-timeout-str"),
    pytest.param(lambda db: list(db.tail("a", 0, timeout=True)), TypeError, ["timeout", "bool"], id="tail-timeout-bool"),
]


@pytest.mark.parametrize(("call", "exc", "names"), BAD_CALLS)
def test_bad_arguments(populated, call, exc, names):
    """Bad values, timestamps, offsets and bounds raise the documented class
    naming the argument, and nothing is appended (a batch not even in part)."""
    _check(populated, call, exc, *(n.replace("{path}", populated.path) for n in names))


# ---------------------------------------------------------------- transactions


def test_transaction_misuse(populated):
    """Nesting, seal() and close() inside a transaction raise
    TransactionError and leave the transaction open: it still commits."""
    before = _state(populated)
    with populated.transaction():
        populated.append("a", b"in-tx-1")
        with pytest.raises(aoflite.TransactionError, match="nest"):
            with populated.transaction():
                pass  # pragma: no cover - never entered
        with pytest.raises(aoflite.TransactionError, match="seal"):
            populated.seal()
        with pytest.raises(aoflite.TransactionError, match="close"):
            populated.close()
        populated.append("a", b"in-tx-2")
    assert _state(populated)[1][: len(before[1])] == before[1]
    assert [r.value for r in populated.scan("a", 3)] == [b"in-tx-1", b"in-tx-2"]
    # the failed close() did not close anything
    assert populated.append("b", b"b1") == 1


# ---------------------------------------------------------------- handles


WRITES = {
    "append": lambda db: db.append("a", b"v"),
    "append-new-key": lambda db: db.append("new", b"v"),
    "append_many": lambda db: db.append_many("a", [b"v"]),
    "transaction": lambda db: db.transaction().__enter__(),
    "commit": lambda db: db.commit(),
    "seal": lambda db: db.seal(),
}

READS = {
    "read": lambda db: db.read("a", 0),
    "scan": lambda db: list(db.scan("a")),
    "scan_all": lambda db: list(db.scan_all()),
    "tail": lambda db: list(db.tail("a", 0, timeout=0)),
    "last": lambda db: db.last("a"),
    "count": lambda db: db.count("a"),
    "keys": lambda db: db.keys(),
}


@pytest.mark.parametrize("call", WRITES.values(), ids=WRITES.keys())
def test_writes_on_readonly_handle(populated, call):
    """A read-only handle refuses every write with ReadOnlyError naming the
    path; the writer and the reader carry on unharmed."""
    before = _state(populated)
    with aoflite.open(populated.path, readonly=True) as reader:
        _assert_fails(lambda: call(reader), aoflite.ReadOnlyError, populated.path)
        assert _state(reader) == before
    _assert_unharmed(populated, before)


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
@pytest.mark.parametrize("call", {**WRITES, **READS}.values(), ids={**WRITES, **READS}.keys())
def test_anything_on_closed_handle(populated, call, readonly):
    """Every call on a closed handle raises ClosedError naming the path;
    closing lost nothing."""
    before = _state(populated)
    handle = populated if not readonly else aoflite.open(populated.path, readonly=True)
    handle.close()
    _assert_fails(lambda: call(handle), aoflite.ClosedError, populated.path)
    populated.close()
    with aoflite.open(populated.path) as db:
        _assert_unharmed(db, before)


def test_second_writer_in_process(populated):
    """A second writable open raises LockedError at once, naming the path;
    readers are still allowed and the first writer is unharmed."""
    before = _state(populated)
    _assert_fails(lambda: aoflite.open(populated.path), aoflite.LockedError, populated.path)
    _assert_fails(lambda: aoflite.open(populated.path, durability="full"), aoflite.LockedError)
    with aoflite.open(populated.path, readonly=True) as reader:
        assert _state(reader) == before
    _assert_unharmed(populated, before)


_OPEN_IN_CHILD = """
import sys, aoflite
try:
    aoflite.open(sys.argv[1]).close()
except aoflite.Error as e:
    print(type(e).__name__)
    print(e)
else:
    print("opened")
"""


def _open_in_child(path):
    out = subprocess.run(
        [sys.executable, "-c", _OPEN_IN_CHILD, path], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.splitlines()


def test_second_writer_in_another_process(populated):
    """A writable open from another process gets LockedError while this
    process holds the store, and succeeds once it is closed."""
    before = _state(populated)
    name, message = _open_in_child(populated.path)
    assert name == "LockedError" and populated.path in message
    _assert_unharmed(populated, before)
    populated.close()
    assert _open_in_child(populated.path) == ["opened"]


# ---------------------------------------------------------------- open

BAD_SETTINGS = [
    pytest.param({"durability": "fast"}, aoflite.ConfigError, ["durability", "fast"], id="durability"),
    pytest.param({"durability": 1}, aoflite.ConfigError, ["durability"], id="durability-int"),
    pytest.param({"bogus": 1}, aoflite.ConfigError, ["bogus"], id="unknown"),
    pytest.param({"segment_bytes": MiB - 1}, aoflite.ConfigError, ["segment_bytes", str(MiB - 1)], id="segment_bytes-low"),
    pytest.param({"segment_bytes": (16 << 30) + 1}, aoflite.ConfigError, ["segment_bytes"], id="segment_bytes-high"),
    pytest.param({"segment_bytes": "1MiB"}, aoflite.ConfigError, ["segment_bytes"], id="segment_bytes-str"),
    pytest.param({"max_record_bytes": 0}, aoflite.ConfigError, ["max_record_bytes"], id="max_record_bytes"),
    pytest.param({"flush_interval_ms": 0}, aoflite.ConfigError, ["flush_interval_ms"], id="flush_interval_ms"),
    pytest.param({"flush_bytes": 0}, aoflite.ConfigError, ["flush_bytes"], id="flush_bytes"),
    pytest.param({"open_segments": 0}, aoflite.ConfigError, ["open_segments"], id="open_segments"),
    pytest.param({"poll_interval_ms": 0}, aoflite.ConfigError, ["poll_interval_ms"], id="poll_interval_ms"),
    pytest.param({"segment_bytes": MiB - 1}, ValueError, [], id="ConfigError-is-ValueError"),
    pytest.param({"config": {"segment_bytes": MiB}}, TypeError, ["config", "dict"], id="config-dict"),
    pytest.param({"readonly": "yes"}, TypeError, ["readonly"], id="readonly-str"),
]


@pytest.mark.parametrize(("kwargs", "exc", "names"), BAD_SETTINGS)
def test_open_with_bad_settings(populated, tmp_path, kwargs, exc, names):
    """A bad setting fails open before anything is touched: a missing path
    is not created, and an open store's writer is unharmed."""
    missing = str(tmp_path / "missing")
    _assert_fails(lambda: aoflite.open(missing, **kwargs), exc, *names)
    assert not os.path.exists(missing)
    _check(populated, lambda db: aoflite.open(db.path, **kwargs), exc, *names)


def test_open_path_of_wrong_type():
    """The path must be a str or path-like."""
    _assert_fails(lambda: aoflite.open(None), TypeError)
    _assert_fails(lambda: aoflite.open(3.5), TypeError)


def test_readonly_open_of_missing_or_empty_path(tmp_path):
    """readonly=True does not create a store: a missing path or an empty
    directory raises NotFound naming it, and stays as it was."""
    missing, empty = str(tmp_path / "missing"), str(tmp_path / "empty")
    os.mkdir(empty)
    _assert_fails(lambda: aoflite.open(missing, readonly=True), aoflite.NotFound, missing)
    _assert_fails(lambda: aoflite.open(empty, readonly=True), aoflite.NotFound, empty)
    assert not os.path.exists(missing)
    assert os.listdir(empty) == []


def _tree(root):
    """Every file and directory under root with its bytes."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = None
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                out[os.path.relpath(os.path.join(dirpath, f), root)] = fh.read()
    return out


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_open_on_a_file_is_refused_untouched(tmp_path, readonly):
    """A path that is a regular file raises FormatError naming it; the file
    is unchanged byte for byte."""
    path = tmp_path / "data.bin"
    content = os.urandom(4096)
    path.write_bytes(content)
    _assert_fails(lambda: aoflite.open(str(path), readonly=readonly), aoflite.FormatError, str(path))
    assert path.read_bytes() == content
    assert os.listdir(tmp_path) == ["data.bin"]


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_open_on_a_foreign_directory_is_refused_untouched(tmp_path, readonly):
    """A non-empty directory without the store marker raises FormatError
    naming it; nothing inside is created, changed or removed."""
    root = tmp_path / "project"
    (root / "segments").mkdir(parents=True)
    (root / "notes.txt").write_text("mine")
    (root / "segments" / "x.seg").write_bytes(b"\0" * 64)
    before = _tree(root)
    _assert_fails(lambda: aoflite.open(str(root), readonly=readonly), aoflite.FormatError, str(root))
    assert _tree(root) == before


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_open_of_a_newer_format_is_refused(populated, readonly):
    """A marker from a newer format version raises FormatError naming both
    versions and leaves the store intact: with the marker restored it opens
    with every record."""
    before = _state(populated)
    path = populated.path
    populated.close()
    marker = os.path.join(path, layout.MARKER)
    with open(marker) as f:
        original = f.read()
    newer = layout.FORMAT_VERSION + 41
    changed = original.replace(f"format {layout.FORMAT_VERSION}\n", f"format {newer}\n")
    assert changed != original
    with open(marker, "w") as f:
        f.write(changed)
    tree = _tree(path)
    err = _assert_fails(lambda: aoflite.open(path, readonly=readonly), aoflite.FormatError, str(newer))
    assert str(layout.FORMAT_VERSION) in str(err).replace(str(newer), "")
    assert _tree(path) == tree
    with open(marker, "w") as f:
        f.write(original)
    with aoflite.open(path) as db:
        _assert_unharmed(db, before)
