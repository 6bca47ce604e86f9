"""The ``s3://bucket/prefix`` Tier 2 backend: any store that speaks the S3
API, reached through the minio client and nothing else.

Object ``name`` is the key ``<prefix>/<name>``; its metadata travels as
``x-amz-meta-aoflite-*`` headers, so a whole-object GET brings the
checksum it is checked against in the same response.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from typing import Any, Callable, TypeVar

import certifi
import urllib3
import urllib3.exceptions
from minio import Minio
from minio.error import InvalidResponseError, S3Error, ServerError
from minio.helpers import MIN_PART_SIZE, check_bucket_name

from ..errors import Tier2Error, Tier2NotFound
from .base import (
    CHUNK,
    ObjectInfo,
    OnRetry,
    RetryPolicy,
    atomic_output,
    check_name,
    check_range,
    check_records,
    classify,
    classify_http,
    file_digest,
    run_with_retry,
)

__all__ = ["S3Backend", "ENV_ENDPOINT", "ENV_ACCESS_KEY", "ENV_SECRET_KEY"]

T = TypeVar("T")

#: Environment variables read when the option is not given.
ENV_ENDPOINT = "AOFLITE_TIER2_ENDPOINT"
ENV_ACCESS_KEY = "AOFLITE_TIER2_ACCESS_KEY"
ENV_SECRET_KEY = "AOFLITE_TIER2_SECRET_KEY"

_META = "x-amz-meta-aoflite-"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class S3Backend:
    """Tier 2 objects in ``bucket`` under ``prefix``.

    ``endpoint`` is a URL: ``http://host:port`` speaks plain HTTP,
    ``https://host`` TLS, checked against ``ca_bundle`` (a PEM file) when
    given. Credentials and the endpoint default to AOFLITE_TIER2_ENDPOINT,
    AOFLITE_TIER2_ACCESS_KEY and AOFLITE_TIER2_SECRET_KEY. ``region`` is
    fixed rather than asked of the store, which saves a request and works
    on stores that do not answer it. Files above ``part_size`` bytes (5 MiB
    at least) are uploaded in parts. No retries happen below this class:
    ``retry`` is the one policy, so every retry is seen by ``on_retry``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        ca_bundle: str | None = None,
        part_size: int = 64 << 20,
        retry: RetryPolicy | None = None,
        on_retry: OnRetry | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ):
        check_bucket_name(bucket)
        if prefix:
            check_name(prefix)
        if not isinstance(part_size, int) or part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be an int >= {MIN_PART_SIZE} (5 MiB, the S3 minimum), got {part_size!r}")
        endpoint = endpoint or os.environ.get(ENV_ENDPOINT)
        if not endpoint:
            raise ValueError(f"tier 2 s3://{bucket}: no endpoint (pass endpoint='https://host' or set {ENV_ENDPOINT})")
        parts = urllib3.util.parse_url(endpoint)
        if parts.scheme not in ("http", "https") or not parts.host or (parts.path or "/") != "/" or parts.query:
            raise ValueError(f"tier 2 endpoint {endpoint!r} must be http://host[:port] or https://host[:port]")
        access_key = access_key if access_key is not None else os.environ.get(ENV_ACCESS_KEY)
        secret_key = secret_key if secret_key is not None else os.environ.get(ENV_SECRET_KEY)
        if bool(access_key) != bool(secret_key):
            raise ValueError(f"tier 2 s3://{bucket}: give both an access key and a secret key, or neither")

        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self.part_size = part_size
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=False,  # the RetryPolicy is the one place retries happen
            maxsize=4,
            cert_reqs="CERT_REQUIRED",
            ca_certs=ca_bundle or os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )
        netloc = parts.host if parts.port is None else f"{parts.host}:{parts.port}"
        self._client = Minio(
            netloc,
            access_key=access_key or None,
            secret_key=secret_key or None,
            secure=parts.scheme == "https",
            region=region,
            http_client=http,
        )

    def __repr__(self) -> str:
        return f"S3Backend({self.url!r}, endpoint={self.endpoint!r})"

    def key(self, name: str) -> str:
        """The S3 key of object ``name``: ``<prefix>/<name>``."""
        return f"{self.prefix}/{name}" if self.prefix else name

    # -------------------------------------------------------------- the interface

    def put(self, name: str, path: str | os.PathLike[str], *, records: int) -> ObjectInfo:
        """See Tier2Backend.put."""
        check_name(name)
        check_records(records)
        # Headers go before the body, so the checksum needs its own pass
        # over the file; it also raises FileNotFoundError before any request.
        size, checksum = file_digest(path)
        metadata = {"aoflite-checksum": checksum, "aoflite-records": str(records), "aoflite-size": str(size)}

        def attempt() -> ObjectInfo:
            with open(path, "rb") as source:
                self._client.put_object(
                    self.bucket,
                    self.key(name),
                    source,
                    size,
                    metadata=metadata,  # type: ignore[arg-type]
                    part_size=self.part_size,
                    # Parts one at a time: a failed upload has one cause.
                    num_parallel_uploads=1,
                )
            return ObjectInfo(name, size, checksum, records)

        return self._run("put", name, attempt)

    def get(self, name: str, dest: str | os.PathLike[str]) -> ObjectInfo:
        """See Tier2Backend.get."""
        check_name(name)

        def attempt() -> ObjectInfo:
            response = self._client.get_object(self.bucket, self.key(name))
            try:
                info = self._info(name, response.headers, "get")
                digest = hashlib.sha256()
                size = 0
                with atomic_output(dest) as out:
                    for chunk in response.stream(CHUNK, decode_content=False):  # the bytes as stored
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                    # Raised inside atomic_output, so dest is left as it was;
                    # retryable: a cut connection, not a damaged object, is
                    # the likely cause, and the next attempt reads it afresh.
                    if size != info.size:
                        raise Tier2Error(
                            f"tier 2 get {name} from {self.url}: {size} of {info.size} bytes arrived",
                            "truncated",
                            True,
                        )
                    if digest.hexdigest() != info.checksum:
                        raise Tier2Error(
                            f"tier 2 get {name} from {self.url}: the bytes do not match the object's checksum",
                            "checksum_mismatch",
                            True,
                        )
                return info
            finally:
                response.close()
                response.release_conn()

        return self._run("get", name, attempt)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """See Tier2Backend.get_range."""
        check_name(name)
        check_range(offset, length)

        def attempt() -> bytes:
            response = self._client.get_object(self.bucket, self.key(name), offset=offset, length=length)
            try:
                if response.status != 206:
                    raise Tier2Error(
                        f"tier 2 get_range {name} from {self.url}: the store ignored the byte range "
                        f"(HTTP {response.status})",
                        "rejected",
                        False,
                    )
                data = response.read(decode_content=False)
                if len(data) == length:
                    return data
                found = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
                if found and offset + length > int(found.group(3)):
                    raise Tier2Error(
                        f"tier 2 get_range {name} from {self.url}: bytes [{offset}, {offset + length}) "
                        f"run past the end of the object ({found.group(3)} bytes)",
                        "invalid_range",
                        False,
                    )
                raise Tier2Error(
                    f"tier 2 get_range {name} from {self.url}: {len(data)} of {length} bytes arrived",
                    "truncated",
                    True,
                )
            finally:
                response.close()
                response.release_conn()

        return self._run("get_range", name, attempt)

    def head(self, name: str) -> ObjectInfo:
        """See Tier2Backend.head."""
        check_name(name)

        def attempt() -> ObjectInfo:
            try:
                found = self._client.stat_object(self.bucket, self.key(name))
            except S3Error as exc:
                # A HEAD answer has no body, so a 404 cannot tell a missing
                # object from a missing bucket: ask about the bucket.
                if exc.code == "NoSuchKey" and not self._client.bucket_exists(self.bucket):
                    raise self._no_bucket("head", name) from None
                raise
            return self._info(name, found.metadata, "head")

        return self._run("head", name, attempt)

    def delete(self, name: str) -> None:
        """See Tier2Backend.delete (S3 answers a delete of a missing key
        with success, which is the idempotence the interface promises)."""
        check_name(name)
        self._run("delete", name, lambda: self._client.remove_object(self.bucket, self.key(name)))

    def list(self, prefix: str = "") -> list[str]:
        """See Tier2Backend.list."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        # The "/" after the backend's prefix keeps "p" from listing "p2/...".
        base = f"{self.prefix}/" if self.prefix else ""

        def attempt() -> list[str]:
            found = self._client.list_objects(self.bucket, prefix=base + prefix, recursive=True)
            return sorted(o.object_name[len(base):] for o in found if o.object_name and not o.is_dir)

        return self._run("list", f"prefix {prefix!r}", attempt)

    # -------------------------------------------------------------- helpers

    def _info(self, name: str, headers: Any, op: str) -> ObjectInfo:
        try:
            return ObjectInfo(
                name,
                int(headers[_META + "size"]),
                str(headers[_META + "checksum"]),
                int(headers[_META + "records"]),
            )
        except (KeyError, ValueError, TypeError):
            raise Tier2Error(
                f"tier 2 {op} {name} in {self.url}: the object has no aoflite metadata "
                "(it was not written by aoflite: put it again)",
                "bad_metadata",
                False,
            ) from None

    def _no_bucket(self, op: str, name: str) -> Tier2Error:
        return Tier2Error(
            f"tier 2 {op} {name}: bucket {self.bucket!r} does not exist at {self.endpoint} "
            "(create it, or fix the URL)",
            "no_bucket",
            False,
        )

    def _translate(self, op: str, name: str, exc: BaseException) -> Tier2Error | None:
        where = f"tier 2 {op} {name} in {self.url}"
        if isinstance(exc, S3Error):
            if exc.code == "NoSuchBucket":
                return self._no_bucket(op, name)
            if exc.code == "NoSuchKey":
                return Tier2NotFound(f"{where}: no such object", op)
            status = exc.response.status if exc.response is not None else None
            return classify_http(status, exc.code, f"{where}: {exc.code}: {exc.message}")
        if isinstance(exc, ServerError):
            return classify_http(exc.status_code, None, f"{where}: HTTP {exc.status_code}")
        if isinstance(exc, InvalidResponseError):
            code = getattr(exc, "_code", None)  # minio keeps the HTTP status only there
            return classify_http(code if isinstance(code, int) else None, None, f"{where}: {exc}")
        if isinstance(exc, urllib3.exceptions.NewConnectionError):  # before TimeoutError: it subclasses it
            return Tier2Error(f"{where}: cannot connect to {self.endpoint}: {exc}", "network", True)
        if isinstance(exc, urllib3.exceptions.TimeoutError):
            return Tier2Error(f"{where}: no answer from {self.endpoint} in time", "timeout", True)
        if isinstance(exc, urllib3.exceptions.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return Tier2Error(f"{where}: {exc} (pass ca_bundle=...)", "network", False)
        if isinstance(exc, urllib3.exceptions.HTTPError):
            return Tier2Error(f"{where}: {exc}", "network", True)
        err = classify(exc)
        if err is not None:
            err.args = (f"{where}: {err}",)
        return err

    def _run(self, op: str, name: str, fn: Callable[[], T]) -> T:
        return run_with_retry(
            self.retry, op, fn, translate=functools.partial(self._translate, op, name), on_retry=self.on_retry
        )
