"""Moving image bytes inside one machine: sparse local copies, hashing what was written.

A replica is copied with copy_file_range (the kernel copies, and reflinks where the
filesystem can) while a second thread hashes the *destination* as it lands, so the
checksum verifies the copy, not the source. Between hosts the bytes travel through
libvirt's storage streams (hosts/streams.py).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from sigvirt import faults
from sigvirt.errors import NoSpace
from sigvirt.hosts.streams import (
    CHUNK,
    CopyResult,
    Progress,
    TransferFailed,
    hash_zeros,
    segments,
)


class ChecksumMismatch(TransferFailed):
    """What was written is not the version's bytes (a bad disk, a bad copy, tampering)."""

    template = "replica {volume}: sha256 of the copy {got} differs from the version's {want}"


# Local copies go in small steps, and the hasher follows at most a few steps behind: it then
# reads pages the copy has just written while they are still in the CPU's caches. With 32 MiB
# steps a copy of 1.5 GiB took about a third more CPU time (bench_replication_local.py).
LOCAL_CHUNK = 4 << 20
LOCAL_AHEAD = 4  # steps the copy may run ahead of the hasher


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(CHUNK)
        done = 0
        for off, length, is_data in segments(f.fileno(), size):
            if not is_data:
                hash_zeros(h, length)
            else:
                f.seek(off)
                left = length
                while left:
                    n = f.readinto(memoryview(buf)[: min(left, CHUNK)])
                    if not n:
                        raise TransferFailed(f"{path} shrank while being read")
                    h.update(memoryview(buf)[:n])
                    left -= n
            done += length
            if progress:
                progress(done, size)
    return h.hexdigest()


def _copy_range(src: int, dst: int, off: int, length: int) -> None:
    left = length
    pos = off
    while left:
        try:
            n = os.copy_file_range(src, dst, left, pos, pos)
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise NoSpace("no space left on device while copying a replica") from None
            if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = os.pwrite(dst, os.pread(src, min(left, CHUNK), pos), pos)
        if n == 0:
            raise TransferFailed("source ended early")
        pos += n
        left -= n


SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback, don't wait


@functools.cache
def _writeback_starter() -> Callable[[int, int, int], None]:
    """sync_file_range(SYNC_FILE_RANGE_WRITE) from libc (Python has no binding): the copy's
    pages go to disk while later ones are copied and hashed, so the closing fdatasync has
    little left to wait for. Without it that wait came after everything else (~0.5 s per
    GiB here). A no-op where libc lacks it; fdatasync stays what guarantees durability."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return lambda fd, off, n: None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def start(fd: int, off: int, n: int) -> None:
        fn(fd, off, n, SYNC_FILE_RANGE_WRITE)  # errors resurface in fdatasync

    return start


def local_copy(
    src: Path, dst: Path, progress: Progress | None = None, mode: int = 0o640
) -> CopyResult:
    """Sparse copy of src to a new file dst, returning the sha256 of what dst holds."""
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dfd = os.open(dst, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except BaseException:
        os.close(sfd)
        raise
    work: queue.Queue[tuple[int, int, bool] | None] = queue.Queue(maxsize=LOCAL_AHEAD)
    h = hashlib.sha256()
    failure: list[BaseException] = []

    def hasher() -> None:
        buf = bytearray(LOCAL_CHUNK)
        try:
            while (item := work.get()) is not None:
                off, length, is_data = item
                if not is_data:
                    hash_zeros(h, length)
                    continue
                while length:
                    n = os.preadv(dfd, [memoryview(buf)[: min(length, LOCAL_CHUNK)]], off)
                    if n <= 0:
                        raise TransferFailed(f"{dst} is shorter than what was written")
                    h.update(memoryview(buf)[:n])
                    off += n
                    length -= n
        except BaseException as err:  # reported by the copying thread
            failure.append(err)
            while work.get() is not None:
                pass

    thread = threading.Thread(target=hasher, name="sigvirt-hash", daemon=True)
    thread.start()
    writeback = _writeback_starter()
    moved = 0
    try:
        size = os.fstat(sfd).st_size
        os.ftruncate(dfd, size)
        done = 0
        for off, length, is_data in segments(sfd, size):
            if not is_data:
                work.put((off, length, False))
            else:
                for sub in range(off, off + length, LOCAL_CHUNK):
                    n = min(LOCAL_CHUNK, off + length - sub)
                    _copy_range(sfd, dfd, sub, n)
                    writeback(dfd, sub, n)
                    work.put((sub, n, True))
                    moved += n
                    faults.point("copy.chunk")
                    if failure:
                        raise failure[0]
                    if progress:
                        progress(done + sub + n - off, size)
            done += length
        work.put(None)
        thread.join()
        if failure:
            raise failure[0]
        os.fdatasync(dfd)
        if progress:  # holes report nothing on the way: a trailing one would stop short
            progress(size, size)
    except BaseException as err:
        work.put(None)
        thread.join()
        os.close(dfd)
        os.close(sfd)
        dst.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise NoSpace(f"no space left on device writing {dst}") from None
        raise
    os.close(dfd)
    os.close(sfd)
    return CopyResult(h.hexdigest(), size, moved)
