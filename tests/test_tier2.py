"""Tier 2 backends: one contract suite run against every backend (file://
and s3://), the retry policy, and the S3 backend behind a faulty network."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
import urllib.parse
import uuid
from typing import Any

import pytest
from faultproxy import FaultProxy
from s3server import FAST_RETRY

import aoflite
from aoflite.errors import NotFound, Tier2Error, Tier2NotFound
from aoflite.tiers.base import (
    ObjectInfo,
    RetryPolicy,
    Tier2Backend,
    classify_http,
    open_backend,
    run_with_retry,
    segment_object_name,
)

MiB = 1 << 20
PART = 5 * MiB  # the smallest part S3 (and moto, and minio) allow


# ---------------------------------------------------------------- backends under test


class FileEnv:
    """file:// backends in a temporary directory standing in for a NAS."""

    kind = "file"

    def __init__(self, tmp_path):
        self.bucket = tmp_path / "bucket"
        self.bucket.mkdir()

    def open(self, prefix: str, **options: Any) -> Tier2Backend:
        # The directory is the bucket: it has to exist, as a bucket does.
        (self.bucket / prefix).mkdir(parents=True, exist_ok=True)
        return open_backend(f"file://{self.bucket / prefix}", retry=FAST_RETRY, **options)

    def open_large(self, prefix: str) -> Tier2Backend:
        return self.open(prefix)

    def missing_bucket(self) -> Tier2Backend:
        return open_backend(f"file://{self.bucket / 'not-mounted'}", retry=FAST_RETRY)

    def stored(self, prefix: str, name: str) -> bool:
        """Whether the object is where the layout says, behind the backend's back."""
        return (self.bucket / prefix / name).is_file()

    def parts(self, prefix: str, name: str) -> int | None:
        return None

    def damage(self, backend: Tier2Backend, prefix: str, name: str) -> None:
        """Cut the object's bytes in half, leaving its metadata."""
        path = self.bucket / prefix / name
        os.truncate(path, path.stat().st_size // 2)


class S3Env:
    """s3:// backends in the session's bucket, each test under its own prefix."""

    kind = "s3"

    def __init__(self, server):
        self.server = server
        self.run = f"run-{uuid.uuid4().hex[:12]}"

    def open(self, prefix: str, **options: Any) -> Tier2Backend:
        return open_backend(f"s3://{self.server.bucket}/{self.run}/{prefix}", **self.server.options(**options))

    def open_large(self, prefix: str) -> Tier2Backend:
        return self.open(prefix, part_size=PART)

    def missing_bucket(self) -> Tier2Backend:
        return open_backend(f"s3://aoflite-missing-{uuid.uuid4().hex[:12]}/p", **self.server.options())

    def key(self, prefix: str, name: str) -> str:
        return f"{self.run}/{prefix}/{name}"

    def stored(self, prefix: str, name: str) -> bool:
        keys = [o.object_name for o in self.server.client().list_objects(self.server.bucket, self.run, recursive=True)]
        return self.key(prefix, name) in keys

    def parts(self, prefix: str, name: str) -> int | None:
        etag = self.server.client().stat_object(self.server.bucket, self.key(prefix, name)).etag
        return int(etag.rsplit("-", 1)[1]) if "-" in etag else 1

    def damage(self, backend: Tier2Backend, prefix: str, name: str) -> None:
        """Replace the object's bytes with their first half, keeping the metadata."""
        client = self.server.client()
        key = self.key(prefix, name)
        meta = {k[len("x-amz-meta-"):]: v for k, v in client.stat_object(self.server.bucket, key).metadata.items()
                if k.lower().startswith("x-amz-meta-")}
        data = client.get_object(self.server.bucket, key).read()
        half = data[: len(data) // 2]
        client.put_object(self.server.bucket, key, io.BytesIO(half), len(half), metadata=meta)


@pytest.fixture(params=["file", "s3"])
def env(request, tmp_path):
    if request.param == "file":
        return FileEnv(tmp_path)
    return S3Env(request.getfixturevalue("s3_server"))


@pytest.fixture
def backend(env):
    return env.open("tier2")


@pytest.fixture
def files(tmp_path):
    """make(size) -> (path, bytes) of a new local file of random bytes."""
    out = tmp_path / "files"
    out.mkdir()
    counter = iter(range(1 << 30))

    def make(size: int) -> tuple[str, bytes]:
        data = os.urandom(size)
        path = out / f"f{next(counter)}"
        path.write_bytes(data)
        return str(path), data

    return make


def no_temp_files(directory) -> bool:
    return not [n for n in os.listdir(directory) if n.startswith(".")]


# ---------------------------------------------------------------- the contract


def test_put_get_head_round_trip(backend, files, tmp_path):
    """What is put comes back byte for byte, with its metadata."""
    assert isinstance(backend, Tier2Backend)
    path, data = files(100_000)
    name = segment_object_name(7)
    info = backend.put(name, path, records=1234)
    assert info == ObjectInfo(name, len(data), hashlib.sha256(data).hexdigest(), 1234)
    assert backend.head(name) == info
    dest = tmp_path / "out.zst"
    assert backend.get(name, dest) == info
    assert dest.read_bytes() == data
    assert no_temp_files(tmp_path)


def test_get_range_returns_exactly_the_bytes_asked(backend, files):
    path, data = files(10_000)
    backend.put("segments/r.zst", path, records=1)
    for offset, length in [(0, 1), (0, 10_000), (123, 4567), (9_999, 1)]:
        assert backend.get_range("segments/r.zst", offset, length) == data[offset : offset + length]
    for offset, length in [(9_990, 11), (10_000, 1), (50_000, 5)]:
        with pytest.raises(Tier2Error) as info:
            backend.get_range("segments/r.zst", offset, length)
        assert info.value.reason == "invalid_range" and not info.value.retryable
    with pytest.raises(ValueError):
        backend.get_range("segments/r.zst", 0, 0)
    with pytest.raises(ValueError):
        backend.get_range("segments/r.zst", -1, 5)


def test_missing_object_is_not_found_everywhere(backend, tmp_path):
    """head, get and get_range raise Tier2NotFound; delete succeeds; list is
    empty. A failed get leaves the destination as it was."""
    dest = tmp_path / "dest"
    dest.write_bytes(b"previous content")
    calls = {
        "head": lambda: backend.head("segments/missing.zst"),
        "get": lambda: backend.get("segments/missing.zst", dest),
        "get_range": lambda: backend.get_range("segments/missing.zst", 0, 10),
    }
    for op, call in calls.items():
        with pytest.raises(Tier2NotFound) as info:
            call()
        err = info.value
        assert isinstance(err, NotFound) and isinstance(err, LookupError) and isinstance(err, aoflite.Error)
        assert (err.reason, err.retryable, err.op, err.attempts) == ("not_found", False, op, 1)
        assert "segments/missing.zst" in str(err)
    assert dest.read_bytes() == b"previous content"
    assert no_temp_files(tmp_path)
    backend.delete("segments/missing.zst")
    assert backend.list() == []


def test_delete_is_idempotent(backend, files):
    path, _ = files(100)
    backend.put("segments/d.zst", path, records=1)
    backend.delete("segments/d.zst")
    backend.delete("segments/d.zst")
    with pytest.raises(Tier2NotFound):
        backend.head("segments/d.zst")
    assert backend.list() == []


def test_put_replaces(backend, files, tmp_path):
    first, _ = files(300)
    second, data = files(200)
    backend.put("x", first, records=3)
    backend.put("x", second, records=2)
    assert backend.head("x").records == 2
    backend.get("x", tmp_path / "x")
    assert (tmp_path / "x").read_bytes() == data
    assert backend.list() == ["x"]


def test_empty_object(backend, files, tmp_path):
    path, _ = files(0)
    assert backend.put("empty", path, records=0).size == 0
    backend.get("empty", tmp_path / "e")
    assert (tmp_path / "e").read_bytes() == b""
    with pytest.raises(Tier2Error) as info:
        backend.get_range("empty", 0, 1)
    assert info.value.reason == "invalid_range"


def test_list_is_sorted_and_filtered_by_prefix(backend, files):
    path, _ = files(10)
    names = [segment_object_name(i) for i in (10, 2, 33)] + ["other/a", "other/b/c", "top"]
    for name in names:
        backend.put(name, path, records=1)
    assert backend.list() == sorted(names)
    assert backend.list("segments/") == [segment_object_name(i) for i in (2, 10, 33)]
    assert backend.list("other/b") == ["other/b/c"]
    assert backend.list("t") == ["top"]
    assert backend.list("nothing") == []


def test_names_live_under_the_prefix(env, files):
    """Objects sit at <prefix>/segments/<id>.zst; another prefix sees none."""
    path, _ = files(10)
    one, two = env.open("one"), env.open("two")
    name = segment_object_name(42)
    assert name == "segments/00000000000000000042.zst"
    one.put(name, path, records=1)
    assert env.stored("one", name) and not env.stored("two", name)
    assert one.list() == [name] and two.list() == []
    with pytest.raises(Tier2NotFound):
        two.head(name)
    # A prefix is a path component, not a string prefix: "one" does not see "one2".
    env.open("one2").put("z", path, records=1)
    assert one.list() == [name]


def test_large_object_goes_up_in_parts(env, files, tmp_path):
    backend = env.open_large("big")
    path, data = files(2 * PART + MiB)
    name = segment_object_name(1)
    backend.put(name, path, records=99)
    assert env.parts("big", name) in (None, 3)
    backend.get(name, tmp_path / "big")
    assert (tmp_path / "big").read_bytes() == data
    # A frame straddling the first part boundary.
    assert backend.get_range(name, PART - 100, 200) == data[PART - 100 : PART + 100]


def test_get_of_a_damaged_object_leaves_no_file(env, backend, files, tmp_path):
    """A get whose bytes do not match the object's size never writes the
    destination, and leaves no temporary file behind."""
    path, _ = files(50_000)
    backend.put("segments/dmg.zst", path, records=5)
    env.damage(backend, "tier2", "segments/dmg.zst")
    dest = tmp_path / "dest"
    with pytest.raises(Tier2Error) as info:
        backend.get("segments/dmg.zst", dest)
    assert info.value.reason in ("truncated", "checksum_mismatch")
    assert not dest.exists() and no_temp_files(tmp_path)


def test_missing_bucket_is_fatal_and_says_create_it(env, files, tmp_path):
    backend = env.missing_bucket()
    path, _ = files(10)
    calls = [
        lambda: backend.put("a", path, records=1),
        lambda: backend.get("a", tmp_path / "a"),
        lambda: backend.get_range("a", 0, 1),
        lambda: backend.head("a"),
        lambda: backend.delete("a"),
        lambda: backend.list(),
    ]
    for call in calls:
        with pytest.raises(Tier2Error) as info:
            call()
        err = info.value
        assert not isinstance(err, Tier2NotFound)
        assert (err.reason, err.retryable, err.attempts) == ("no_bucket", False, 1)
        assert "create" in str(err)
    assert not (tmp_path / "a").exists()


def test_put_of_a_missing_file_stores_nothing(backend, tmp_path):
    with pytest.raises(FileNotFoundError):
        backend.put("a", tmp_path / "nope", records=1)
    assert backend.list() == []


@pytest.mark.parametrize("name", ["", "/a", "a/", "a//b", "../a", "a/../b", ".hidden", "a/.b", "a b", "é"])
def test_bad_names_are_refused(backend, files, name):
    path, _ = files(1)
    with pytest.raises(ValueError, match="object name"):
        backend.put(name, path, records=1)
    with pytest.raises(ValueError, match="object name"):
        backend.head(name)


# ---------------------------------------------------------------- URLs and options


def test_open_backend_by_url(s3_server, tmp_path, monkeypatch):
    local = open_backend(f"file://{tmp_path}")
    assert type(local).__name__ == "LocalBackend" and local.url == f"file://{tmp_path}"
    monkeypatch.setenv("AOFLITE_TIER2_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("AOFLITE_TIER2_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("AOFLITE_TIER2_SECRET_KEY", s3_server.secret_key)
    remote = open_backend(f"s3://{s3_server.bucket}/env-{uuid.uuid4().hex[:8]}")
    assert remote.list() == []  # reached the server with the environment's endpoint and keys
    assert remote.key("segments/1.zst") == remote.url.split("/", 3)[3] + "/segments/1.zst"
    for url in ["ftp://x/y", "s3://bucket/p?x=1", "file://host/dir", "relative/dir"]:
        with pytest.raises(ValueError):
            open_backend(url)
    monkeypatch.delenv("AOFLITE_TIER2_ENDPOINT")
    with pytest.raises(ValueError, match="AOFLITE_TIER2_ENDPOINT"):
        open_backend("s3://bucket/p")
    with pytest.raises(ValueError, match="http://host"):
        open_backend("s3://bucket/p", endpoint="ftp://host")
    with pytest.raises(ValueError, match="part_size"):
        open_backend("s3://bucket/p", endpoint="http://127.0.0.1:1", part_size=MiB)


# ---------------------------------------------------------------- the retry policy


class Flaky:
    """A fake operation failing with the given exceptions, then returning "ok"."""

    def __init__(self, *failures: BaseException):
        self.failures = list(failures)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def throttled() -> Tier2Error:
    return Tier2Error("slow down", "throttled", True)


def test_delays_grow_exponentially_within_bounds():
    policy = RetryPolicy(max_attempts=10, base_delay_ms=100, max_delay_ms=1000, jitter=0)
    assert [policy.delay_ms(n) for n in range(1, 7)] == [100, 200, 400, 800, 1000, 1000]
    jittery = RetryPolicy(max_attempts=10, base_delay_ms=100, max_delay_ms=1000, jitter=0.5)
    assert jittery.delay_ms(3, rand=lambda: 0.0) == 400 and jittery.delay_ms(3, rand=lambda: 1.0) == 200
    assert all(50 <= jittery.delay_ms(1) <= 100 for _ in range(100))
    assert jittery.delay_ms(10_000) <= 1000  # no overflow far out
    for bad in [dict(max_attempts=0), dict(base_delay_ms=-1), dict(base_delay_ms=10, max_delay_ms=5), dict(jitter=2)]:
        with pytest.raises(ValueError):
            RetryPolicy(**bad)


def test_retryable_errors_are_retried_with_backoff():
    sleeps: list[float] = []
    seen: list[tuple] = []
    op = Flaky(throttled(), ConnectionResetError("reset"), TimeoutError("slow"))
    policy = RetryPolicy(max_attempts=5, base_delay_ms=10, max_delay_ms=25, jitter=0)
    result = run_with_retry(policy, "get", op, sleep=sleeps.append,
                            on_retry=lambda o, n, e, d: seen.append((o, n, e.reason, d)))
    assert result == "ok" and op.calls == 4
    assert sleeps == [0.01, 0.02, 0.025]
    assert seen == [("get", 1, "throttled", 10), ("get", 2, "network", 20), ("get", 3, "timeout", 25)]


def test_fatal_errors_are_not_retried():
    denied = Tier2Error("no", "access_denied", False)
    op = Flaky(denied)
    with pytest.raises(Tier2Error) as info:
        run_with_retry(FAST_RETRY, "put", op, sleep=lambda s: None)
    assert info.value is denied and op.calls == 1 and info.value.op == "put"
    op = Flaky(PermissionError(13, "Permission denied"))
    with pytest.raises(Tier2Error) as info:
        run_with_retry(FAST_RETRY, "put", op, sleep=lambda s: None)
    assert info.value.reason == "access_denied" and op.calls == 1
    # A fatal answer after retryable ones counts every attempt.
    op = Flaky(throttled(), Tier2NotFound("gone"))
    with pytest.raises(Tier2NotFound) as info:
        run_with_retry(FAST_RETRY, "head", op, sleep=lambda s: None)
    assert info.value.attempts == 2 and op.calls == 2


def test_bugs_are_not_retried():
    op = Flaky(KeyError("bug"))
    with pytest.raises(KeyError):
        run_with_retry(FAST_RETRY, "put", op, sleep=lambda s: None)
    assert op.calls == 1


def test_exhausted_attempts_raise_tier2_error():
    sleeps: list[float] = []
    op = Flaky(*(throttled() for _ in range(10)))
    policy = RetryPolicy(max_attempts=3, base_delay_ms=1, max_delay_ms=2, jitter=0)
    with pytest.raises(Tier2Error) as info:
        run_with_retry(policy, "put", op, sleep=sleeps.append)
    err = info.value
    assert (err.reason, err.retryable, err.attempts, err.op) == ("throttled", True, 3, "put")
    assert "gave up after 3 attempts" in str(err)
    assert op.calls == 3 and len(sleeps) == 2 and sum(sleeps) <= 0.004


@pytest.mark.parametrize(
    "status, code, reason, retryable",
    [
        (503, "SlowDown", "throttled", True),
        (429, None, "throttled", True),
        (500, "InternalError", "unavailable", True),
        (502, None, "unavailable", True),
        (400, "RequestTimeout", "timeout", True),
        (403, "InvalidAccessKeyId", "auth", False),
        (403, "SignatureDoesNotMatch", "auth", False),
        (403, "AccessDenied", "access_denied", False),
        (404, "NoSuchBucket", "no_bucket", False),
        (404, "NoSuchKey", "not_found", False),
        (416, "InvalidRange", "invalid_range", False),
        (400, "InvalidArgument", "rejected", False),
    ],
)
def test_store_answers_are_classed(status, code, reason, retryable):
    err = classify_http(status, code, "msg")
    assert (err.reason, err.retryable) == (reason, retryable)
    assert isinstance(err, Tier2NotFound) == (reason == "not_found")


# ---------------------------------------------------------------- a faulty network


@pytest.fixture
def proxied(s3_server):
    """(proxy, backend, retries seen): an S3 backend reaching the server
    through a fault-injecting proxy, with a short read timeout."""
    parts = urllib.parse.urlsplit(s3_server.endpoint)
    if parts.scheme != "http":
        pytest.skip("the fault proxy speaks plain HTTP only")
    retries: list[str] = []
    with FaultProxy((parts.hostname, parts.port), io_timeout=5.0) as proxy:
        backend = open_backend(
            f"s3://{s3_server.bucket}/proxied-{uuid.uuid4().hex[:12]}",
            **s3_server.options(endpoint=proxy.endpoint, read_timeout=0.5,
                                on_retry=lambda op, n, err, delay: retries.append(err.reason)),
        )
        yield proxy, backend, retries


def test_s3_retries_through_throttling_and_resets(proxied, files, tmp_path):
    proxy, backend, retries = proxied
    path, data = files(20_000)
    proxy.inject("error", times=2, method="PUT")  # 503 SlowDown
    backend.put("segments/a.zst", path, records=2)
    proxy.inject("reset", times=2, method="GET")
    backend.get("segments/a.zst", tmp_path / "a")
    assert (tmp_path / "a").read_bytes() == data
    proxy.inject("error", times=1, method="HEAD")
    proxy.inject("reset", times=1, method="HEAD")
    assert backend.head("segments/a.zst").records == 2
    assert retries == ["throttled", "throttled", "network", "network", "unavailable", "network"]
    assert proxy.injected == ["error", "error", "reset", "reset", "error", "reset"]

    # When the faults persist, the policy's attempts run out and say so.
    retries.clear()
    proxy.inject("error", times=100)
    with pytest.raises(Tier2Error) as info:
        backend.get("segments/a.zst", tmp_path / "b")
    assert (info.value.reason, info.value.retryable, info.value.attempts) == ("throttled", True, FAST_RETRY.max_attempts)
    proxy.clear()
    proxy.inject("reset", times=100)
    with pytest.raises(Tier2Error) as info:
        backend.put("segments/b.zst", path, records=1)
    assert (info.value.reason, info.value.attempts) == ("network", FAST_RETRY.max_attempts)
    proxy.clear()
    assert not (tmp_path / "b").exists() and no_temp_files(tmp_path)
    assert backend.list() == ["segments/a.zst"]


def test_s3_fatal_answers_are_not_retried(proxied, files):
    proxy, backend, retries = proxied
    path, _ = files(100)
    for status, code, reason in [(403, "AccessDenied", "access_denied"), (403, "InvalidAccessKeyId", "auth")]:
        before = proxy.requests
        proxy.inject("error", status=status, code=code)
        with pytest.raises(Tier2Error) as info:
            backend.put("a", path, records=1)
        assert (info.value.reason, info.value.retryable, info.value.attempts) == (reason, False, 1)
        assert proxy.requests == before + 1
    assert retries == []


def test_s3_slow_answers_time_out_and_are_retried(proxied, files):
    proxy, backend, retries = proxied
    path, data = files(1000)
    backend.put("slow", path, records=1)
    proxy.inject("delay", seconds=1.5)  # beyond the 0.5 s read timeout
    assert backend.get_range("slow", 10, 20) == data[10:30]
    assert retries == ["timeout"]


@pytest.mark.parametrize("kind", ["truncate", "short"])
def test_s3_truncated_bodies_never_yield_a_wrong_object(proxied, files, tmp_path, kind):
    """A body cut short, whether the header admits it or not, is retried;
    when every answer is cut, the call fails and no bytes are returned."""
    proxy, backend, retries = proxied
    path, data = files(200_000)
    backend.put("segments/t.zst", path, records=1)
    proxy.inject(kind, method="GET")
    backend.get("segments/t.zst", tmp_path / "ok")
    assert (tmp_path / "ok").read_bytes() == data
    proxy.inject(kind, method="GET")
    assert backend.get_range("segments/t.zst", 1000, 50_000) == data[1000:51_000]
    assert len(retries) == 2

    proxy.inject(kind, times=100, method="GET")
    with pytest.raises(Tier2Error) as info:
        backend.get("segments/t.zst", tmp_path / "bad")
    assert info.value.reason in ("network", "truncated") and info.value.attempts == FAST_RETRY.max_attempts
    with pytest.raises(Tier2Error):
        backend.get_range("segments/t.zst", 1000, 50_000)
    proxy.clear()
    assert not (tmp_path / "bad").exists() and no_temp_files(tmp_path)


def test_fault_proxy_stops_cleanly_with_requests_in_flight(s3_server):
    parts = urllib.parse.urlsplit(s3_server.endpoint)
    if parts.scheme != "http":
        pytest.skip("the fault proxy speaks plain HTTP only")
    proxy = FaultProxy((parts.hostname, parts.port)).start()
    proxy.inject("delay", times=3, seconds=60)
    backend = open_backend(f"s3://{s3_server.bucket}/stop", **s3_server.options(endpoint=proxy.endpoint, read_timeout=30))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            backend.list()
        except Tier2Error as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 5
    while proxy.requests == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    proxy.stop(timeout=5)  # raises if a proxy thread is still running
    assert time.monotonic() - started < 2
    caller.join(10)
    assert not caller.is_alive() and errors  # the client saw the proxy go away and gave up
