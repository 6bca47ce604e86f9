"""Where things live inside a store directory, and the files that guard it.

    PATH/aoflite.store      marker: format version and store id (written first)
    PATH/LOCK               flock()ed by the one writable handle
    PATH/manifest/          the LMDB environment
    PATH/feed.shm           shared memory between the writer and followers
    PATH/segments/N.seg     segment files, N the zero-padded segment id
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import time

from . import errors
from .failpoints import io
from .segment import sync_log_line

__all__ = [
    "MARKER",
    "FORMAT_VERSION",
    "segment_path",
    "segment_ids",
    "manifest_dir",
    "feed_path",
    "inspect_path",
    "create_layout",
    "read_marker",
    "acquire_lock",
    "release_lock",
    "fsync_dir",
]

MARKER = "aoflite.store"
#: Version of the store layout (the marker, the manifest tables). Segment
#: files carry their own format version as well.
FORMAT_VERSION = 1
_SUFFIX = ".seg"


def segment_path(root: str, segment_id: int) -> str:
    """The file of segment_id."""
    return os.path.join(root, "segments", f"{segment_id:020d}{_SUFFIX}")


def segment_ids(root: str) -> list[int]:
    """Ids of the segment files present, ascending."""
    out = []
    for name in os.listdir(os.path.join(root, "segments")):
        stem, dot, suffix = name.partition(".")
        if dot and "." + suffix == _SUFFIX and stem.isdigit():
            out.append(int(stem))
    return sorted(out)


def tier1_dir(root: str) -> str:
    """Where Tier 1 (seekable zstd) copies of sealed segments live."""
    return os.path.join(root, "tier1")


def tier1_path(root: str, segment_id: int) -> str:
    """The Tier 1 file of segment_id."""
    return os.path.join(root, "tier1", f"{segment_id:020d}.zst")


def tier1_ids(root: str) -> list[int]:
    """Ids of the Tier 1 files present, ascending."""
    try:
        names = os.listdir(tier1_dir(root))
    except FileNotFoundError:
        return []
    return sorted(int(n[:-4]) for n in names if n.endswith(".zst") and n[:-4].isdigit())


def feed_path(root: str) -> str:
    """The feed file the writer shares with followers (not durable data)."""
    return os.path.join(root, "feed.shm")


def manifest_dir(root: str) -> str:
    """The LMDB environment's directory."""
    return os.path.join(root, "manifest")


def inspect_path(root: str) -> str:
    """"missing", "empty" (an empty directory), "store", or raises
    FormatError for anything else, which is then left untouched.
    StorageError when the directory cannot be read (permissions)."""
    try:
        os.lstat(root)
    except FileNotFoundError:
        return "missing"
    except PermissionError as e:
        # a path we cannot reach is a permission problem, not a missing store
        raise errors.StorageError(
            e.errno, f"{root}: permission denied reaching it (every directory above it needs execute permission)"
        ) from None
    if not os.path.isdir(root):
        raise errors.FormatError(f"{root}: exists and is not a directory, so not an aoflite store (choose another path)")
    if not os.access(root, os.R_OK | os.X_OK):
        raise errors.StorageError(
            errno.EACCES,
            f"{root}: permission denied (opening a store needs read and execute permission on its directory)",
        )
    if os.path.exists(os.path.join(root, MARKER)):
        return "store"
    if _only_creation_leftovers(root):
        return "empty"
    raise errors.FormatError(
        f"{root}: directory is not empty and has no {MARKER} marker, so it is not an aoflite store "
        "(choose an empty or new path)"
    )


def _only_creation_leftovers(root: str) -> bool:
    """True for an empty directory, or one holding only what an interrupted
    creation leaves before the marker: the lock file, the marker's temporary
    file, and the empty segments/ and manifest/ directories. A settings
    file (aoflite.toml) may be there first: deployments put it in place
    before the application creates the store."""
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name in ("LOCK", MARKER + ".tmp", "aoflite.toml") and os.path.isfile(path):
            continue
        if name in ("segments", "manifest") and os.path.isdir(path) and not os.listdir(path):
            continue
        return False
    return True


def read_marker(root: str) -> tuple[int, int]:
    """(format_version, store_id) from the marker; FormatError if it is not ours
    or newer than this aoflite."""
    path = os.path.join(root, MARKER)
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise errors.FormatError(f"{path}: unreadable store marker: {e}") from None
    fields = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
    if not lines or lines[0] != "aoflite store" or "format" not in fields or "store_id" not in fields:
        raise errors.FormatError(f"{path}: not an aoflite store marker")
    try:
        version, store_id = int(fields["format"]), int(fields["store_id"], 16)
    except ValueError:
        raise errors.FormatError(f"{path}: damaged store marker") from None
    if version > FORMAT_VERSION:
        raise errors.FormatError(
            f"{root}: store format version {version} is newer than this aoflite's {FORMAT_VERSION} "
            "(upgrade aoflite to open it)"
        )
    return version, store_id


def create_layout(root: str, store_id: int | None = None) -> int:
    """Make a new store's directories and marker; returns the new store id
    (store_id when given: a restore recreates a store under its own id).
    A failure leaves what an interrupted creation leaves, which the next
    open takes for an empty directory."""
    try:
        os.makedirs(os.path.join(root, "segments"), exist_ok=True)
        os.makedirs(manifest_dir(root), exist_ok=True)
        if store_id is None:
            store_id = secrets.randbits(63) | 1
        tmp = os.path.join(root, MARKER + ".tmp")
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"aoflite store\nformat {FORMAT_VERSION}\nstore_id {store_id:016x}\n")
            f.flush()
            io("layout.fsync")
            os.fsync(f.fileno())
            sync_log_line(f"F {tmp} {f.tell()}")
        io("layout.rename")
        os.replace(tmp, os.path.join(root, MARKER))
    except OSError as e:
        raise errors.StorageError(e.errno or 0, f"creating the store at {root}: {e} (check permissions and free space)") from None
    fsync_dir(root)
    fsync_dir(os.path.dirname(os.path.abspath(root)))
    return store_id


def acquire_lock(root: str, timeout_ms: int = 0) -> int:
    """Take the store's writer lock, waiting up to timeout_ms for another
    writer to let go, or raise LockedError naming the holder."""
    path = os.path.join(root, "LOCK")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except PermissionError as e:
        raise errors.StorageError(
            e.errno, f"{path}: permission denied (a writable handle needs write permission on {root})"
        ) from None
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                os.close(fd)
                raise errors.StorageError(e.errno, f"{path}: taking the writer lock: {e}") from None
            if time.monotonic() >= deadline:
                holder = _lock_holder(fd)
                os.close(fd)
                raise errors.LockedError(
                    f"{root}: another writable handle holds the store ({holder}); close it, open with "
                    "readonly=True, or wait for it with lock_timeout_ms"
                ) from None
            time.sleep(min(0.005, max(0.0, deadline - time.monotonic())))
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _lock_holder(fd: int) -> str:
    """Who holds the lock, from the pid its holder wrote into the file."""
    try:
        pid = int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return "a process that has not said which yet"
    if pid == os.getpid():
        return f"process {pid}: this process, through another handle"
    return f"process {pid}"


def release_lock(fd: int) -> None:
    """Drop the writer lock."""
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def fsync_dir(path: str) -> None:
    """Make a directory's entries durable (StorageError when that fails)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            io("layout.dirsync")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise errors.StorageError(e.errno or 0, f"syncing the directory {path}: {e} (check the device)") from None
    sync_log_line(f"D {path}")
