"""Opening a store: locks that say who holds them and can be waited for,
permission problems reported as such, and nothing but aoflite errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import aoflite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = 65534


def test_locked_error_names_the_holder(store_path):
    with aoflite.open(store_path):
        with pytest.raises(aoflite.LockedError, match=rf"process {os.getpid()}: this process"):
            aoflite.open(store_path)


def test_lock_timeout_waits_for_the_holder_to_close(store_path):
    first = aoflite.open(store_path)
    first.append("k", b"v")
    closer = threading.Timer(0.2, first.close)
    closer.start()
    t0 = time.monotonic()
    with aoflite.open(store_path, lock_timeout_ms=10_000) as second:
        assert time.monotonic() - t0 >= 0.15
        assert second.read("k", 0).value == b"v"
    closer.join()


def test_lock_timeout_gives_up_with_locked_error(store_path):
    with aoflite.open(store_path):
        t0 = time.monotonic()
        with pytest.raises(aoflite.LockedError, match="lock_timeout_ms"):
            aoflite.open(store_path, lock_timeout_ms=150)
        assert time.monotonic() - t0 >= 0.14


def test_bad_lock_timeout_is_a_value_error(store_path):
    with pytest.raises(ValueError, match="lock_timeout_ms"):
        aoflite.open(store_path, lock_timeout_ms=-1)


def test_scan_all_advanced_after_close_raises_closed_error(store_path):
    db = aoflite.open(store_path, segment_bytes=1 << 20)
    for i in range(600):
        db.append("k", b"%d" % i)
    db.seal()
    it = db.scan_all()
    next(it)
    db.close()
    with pytest.raises(aoflite.ClosedError):
        list(it)


def _opens_as_nobody(path: str, *kwargs: dict) -> list[str]:
    """Open path with each kwargs in a forked child running as an
    unprivileged user (root passes every permission check); what each
    open did, as text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = []
            for kw in kwargs:
                try:
                    aoflite.open(path, **kw).close()
                    out.append("opened")
                except aoflite.StorageError as e:
                    out.append(f"StorageError {e.errno} {e}")
                except BaseException as e:
                    out.append(f"{type(e).__name__} {e}")
            os.write(w, "\n".join(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return text.splitlines()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changes user to test permissions (CI runs as root)")


@needs_root
def test_permission_problems_are_storage_errors_that_say_what_is_needed(tmp_path):
    # pytest's own directories are private to root: the other user could
    # not even reach the store (that case is tested below)
    top = tempfile.mkdtemp(prefix="aoflite-perm-", dir="/tmp")
    try:
        _permission_cases(os.path.join(top, "s"))
        assert _opens_as_nobody(str(tmp_path / "s"), {"readonly": True})[0].startswith("StorageError 13")
    finally:
        shutil.rmtree(top)


def _permission_cases(path: str) -> None:
    with aoflite.open(path) as db:
        db.append("k", b"v")
    os.chmod(os.path.dirname(path), 0o755)
    # a directory the user cannot enter: a permission problem, not a missing store
    os.chmod(path, 0o700)
    lines = _opens_as_nobody(path, {"readonly": True}, {})
    assert len(lines) == 2, lines
    for line in lines:
        assert line.startswith("StorageError 13") and "permission" in line, line
    # a directory it can read but not write: a writable open says so; the
    # manifest's lock file must be writable even for reading
    os.chmod(path, 0o755)
    lines = _opens_as_nobody(path, {}, {"readonly": True})
    assert len(lines) == 2, lines
    assert lines[0].startswith("StorageError 13") and "write permission" in lines[0], lines[0]
    assert lines[1].startswith("StorageError 13") and "lock.mdb" in lines[1], lines[1]


def test_demo_refuses_an_existing_store(store_path):
    with aoflite.open(store_path) as db:
        db.append("orders", b"an application's record")
    out = subprocess.run(
        [sys.executable, "-m", "aoflite", "demo", store_path, "--records", "100", "--keys", "2"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert out.returncode != 0 and "already exists" in out.stderr
    with aoflite.open(store_path, readonly=True) as db:
        assert db.keys() == ["orders"]
