"""The ``file:///dir`` Tier 2 backend: a directory used as a bucket (a NAS
mount, a removable disk).

Object ``name`` is the file ``dir/name``; its metadata is a hidden JSON
sidecar beside it, ``.<basename>.meta.json``. The sidecar is written last
and removed first, so it is the commit point: an object exists exactly
when its sidecar does, and a crash in the middle of a put or delete leaves
either the old object, no object, or the new one, never a mix that reads
back as valid.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import urllib.parse
from typing import Callable, TypeVar

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
    fsync_dir,
    run_with_retry,
)

__all__ = ["LocalBackend"]

T = TypeVar("T")
_META_SUFFIX = ".meta.json"
_META_FORMAT = 1


class LocalBackend:
    """Tier 2 objects as files under ``root``, which must exist (a missing
    directory is an unmounted disk, not something to create). Every write
    goes through a temporary name, fsync, rename and a directory fsync."""

    def __init__(self, root: str, *, retry: RetryPolicy | None = None, on_retry: OnRetry | None = None):
        if not isinstance(root, str) or not os.path.isabs(root):
            raise ValueError(f"tier 2 directory must be an absolute path, got {root!r}")
        self.root = os.path.normpath(root)
        self.url = "file://" + urllib.parse.quote(self.root)
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry

    def __repr__(self) -> str:
        return f"LocalBackend({self.url!r})"

    # -------------------------------------------------------------- the interface

    def put(self, name: str, path: str | os.PathLike[str], *, records: int) -> ObjectInfo:
        """See Tier2Backend.put."""
        check_name(name)
        check_records(records)
        src = os.fspath(path)
        os.stat(src)  # a missing source is the caller's FileNotFoundError, before anything is written

        def attempt() -> ObjectInfo:
            self._check_root("put", name)
            data, meta = self._paths(name)
            directory = os.path.dirname(data)
            self._makedirs(directory)
            if os.path.lexists(meta):
                # Uncommit the object being replaced before its bytes change.
                os.unlink(meta)
                fsync_dir(directory)
            digest = hashlib.sha256()
            size = 0
            with open(src, "rb") as source, atomic_output(data) as out:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            info = ObjectInfo(name, size, digest.hexdigest(), records)
            body = {"format": _META_FORMAT, "size": size, "checksum": info.checksum, "records": records}
            with atomic_output(meta) as out:
                out.write(json.dumps(body, sort_keys=True).encode())
            return info

        return self._run("put", name, attempt)

    def get(self, name: str, dest: str | os.PathLike[str]) -> ObjectInfo:
        """See Tier2Backend.get."""
        check_name(name)

        def attempt() -> ObjectInfo:
            info = self._head(name, "get")
            data, _ = self._paths(name)
            try:
                source = open(data, "rb")
            except FileNotFoundError:
                raise self._not_found("get", name) from None
            digest = hashlib.sha256()
            size = 0
            with source, atomic_output(dest) as out:
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                # Raised inside atomic_output, so dest is left as it was.
                if size != info.size:
                    raise Tier2Error(
                        f"tier 2 get {name} from {self.url}: {data} holds {size} bytes, its metadata says "
                        f"{info.size} (the file was damaged: put the object again)",
                        "truncated",
                        False,
                    )
                if digest.hexdigest() != info.checksum:
                    raise Tier2Error(
                        f"tier 2 get {name} from {self.url}: {data} does not match its checksum "
                        "(the file was damaged: put the object again)",
                        "checksum_mismatch",
                        False,
                    )
            return info

        return self._run("get", name, attempt)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """See Tier2Backend.get_range."""
        check_name(name)
        check_range(offset, length)

        def attempt() -> bytes:
            self._check_root("get_range", name)
            data, meta = self._paths(name)
            try:
                os.stat(meta)
                fd = os.open(data, os.O_RDONLY)
            except FileNotFoundError:
                raise self._not_found("get_range", name) from None
            try:
                parts = []
                got = 0
                while got < length:
                    chunk = os.pread(fd, length - got, offset + got)
                    if not chunk:
                        size = os.fstat(fd).st_size
                        raise Tier2Error(
                            f"tier 2 get_range {name} from {self.url}: bytes [{offset}, {offset + length}) "
                            f"run past the end of the object ({size} bytes)",
                            "invalid_range",
                            False,
                        )
                    parts.append(chunk)
                    got += len(chunk)
                return b"".join(parts)
            finally:
                os.close(fd)

        return self._run("get_range", name, attempt)

    def head(self, name: str) -> ObjectInfo:
        """See Tier2Backend.head."""
        check_name(name)
        return self._run("head", name, lambda: self._head(name, "head"))

    def delete(self, name: str) -> None:
        """See Tier2Backend.delete."""
        check_name(name)

        def attempt() -> None:
            self._check_root("delete", name)
            data, meta = self._paths(name)
            # The sidecar goes first (and durably), so a crash never leaves a
            # committed object without its bytes.
            for path in (meta, data):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                    fsync_dir(os.path.dirname(path))

        self._run("delete", name, attempt)

    def list(self, prefix: str = "") -> list[str]:
        """See Tier2Backend.list."""
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")

        def attempt() -> list[str]:
            self._check_root("list", prefix)
            names = []
            for directory, subdirs, files in os.walk(self.root):
                subdirs[:] = [d for d in subdirs if not d.startswith(".")]
                rel = os.path.relpath(directory, self.root)
                for file in files:
                    if file.startswith(".") or not os.path.exists(os.path.join(directory, f".{file}{_META_SUFFIX}")):
                        continue
                    name = file if rel == "." else f"{rel.replace(os.sep, '/')}/{file}"
                    if name.startswith(prefix):
                        names.append(name)
            return sorted(names)

        return self._run("list", f"prefix {prefix!r}", attempt)

    # -------------------------------------------------------------- helpers

    def _paths(self, name: str) -> tuple[str, str]:
        """(data file, metadata sidecar) of object ``name``."""
        data = os.path.join(self.root, *name.split("/"))
        directory, base = os.path.split(data)
        return data, os.path.join(directory, f".{base}{_META_SUFFIX}")

    def _head(self, name: str, op: str) -> ObjectInfo:
        self._check_root(op, name)
        _, meta = self._paths(name)
        try:
            with open(meta, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raise self._not_found(op, name) from None
        try:
            body = json.loads(raw)
            return ObjectInfo(name, int(body["size"]), str(body["checksum"]), int(body["records"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise Tier2Error(
                f"tier 2 {op} {name} in {self.url}: metadata {meta} is unreadable ({exc}; put the object again)",
                "bad_metadata",
                False,
            ) from None

    def _check_root(self, op: str, name: str) -> None:
        if not os.path.isdir(self.root):
            raise Tier2Error(
                f"tier 2 {op} {name}: directory {self.root} does not exist "
                "(mount the disk or create the directory)",
                "no_bucket",
                False,
            )

    def _makedirs(self, directory: str) -> None:
        """Create the directories between root and ``directory``, each made
        durable in its parent before anything is renamed into it."""
        missing = []
        while directory != self.root and not os.path.isdir(directory):
            missing.append(directory)
            directory = os.path.dirname(directory)
        for path in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(path)
            fsync_dir(os.path.dirname(path))

    def _not_found(self, op: str, name: str) -> Tier2NotFound:
        return Tier2NotFound(f"tier 2 {op} {name}: no such object in {self.url}", op)

    def _translate(self, op: str, name: str, exc: BaseException) -> Tier2Error | None:
        err = classify(exc)
        if err is not None:
            err.args = (f"tier 2 {op} {name} in {self.url}: {err}",)
        return err

    def _run(self, op: str, name: str, fn: Callable[[], T]) -> T:
        return run_with_retry(
            self.retry, op, fn, translate=functools.partial(self._translate, op, name), on_retry=self.on_retry
        )

