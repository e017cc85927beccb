"""Moving image bytes: sparse local copies and libvirt streams, hashing what was written.

Inside one host a replica is copied with copy_file_range (the kernel copies, and reflinks
where the filesystem can) while a second thread hashes the *destination* as it lands, so
the checksum verifies the copy, not the source. Between hosts the bytes travel only
through libvirt storage streams, sparse, hashed on the way.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt

from sigvirt.errors import NoSpace, SigvirtError

CHUNK = 32 << 20
# Local copies go in small steps, and the hasher follows at most a few steps behind: it then
# reads pages the copy has just written while they are still in the CPU's caches. With 32 MiB
# steps a copy of 1.5 GiB took about a third more CPU time (bench_replication_local.py).
LOCAL_CHUNK = 4 << 20
LOCAL_AHEAD = 4  # steps the copy may run ahead of the hasher
ZEROS = bytes(1 << 20)
Progress = Callable[[int, int], None]  # (bytes done, total)


class TransferFailed(SigvirtError):
    template = "transfer failed: {detail}"


@dataclass(frozen=True)
class CopyResult:
    sha256: str
    size: int  # logical file size
    bytes_moved: int  # data bytes actually copied or sent (holes excluded)


def segments(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, is_data) covering [0, size), from SEEK_DATA/SEEK_HOLE."""
    pos = 0
    while pos < size:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno != errno.ENXIO:  # ENXIO: only a hole remains
                raise
            data = size
        if data > pos:
            yield pos, data - pos, False
        if data >= size:
            return
        hole = os.lseek(fd, data, os.SEEK_HOLE)
        yield data, min(hole, size) - data, True
        pos = hole


def _hash_zeros(h: hashlib._Hash, length: int) -> None:
    while length > 0:
        n = min(length, len(ZEROS))
        h.update(ZEROS[:n] if n < len(ZEROS) else ZEROS)
        length -= n


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(CHUNK)
        done = 0
        for off, length, is_data in segments(f.fileno(), size):
            if not is_data:
                _hash_zeros(h, length)
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
                    _hash_zeros(h, length)
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
    except BaseException:
        work.put(None)
        thread.join()
        os.close(dfd)
        os.close(sfd)
        dst.unlink(missing_ok=True)
        raise
    os.close(dfd)
    os.close(sfd)
    return CopyResult(h.hexdigest(), size, moved)


# -- libvirt streams (between hosts) ----------------------------------------------------------
class _Counter:
    def __init__(self, total: int, progress: Progress | None) -> None:
        self.h = hashlib.sha256()
        self.total = total
        self.done = 0
        self.moved = 0
        self.progress = progress

    def data(self, chunk: bytes) -> None:
        self.h.update(chunk)
        self.done += len(chunk)
        self.moved += len(chunk)
        if self.progress:
            self.progress(self.done, self.total)

    def hole(self, length: int) -> None:
        _hash_zeros(self.h, length)
        self.done += length
        if self.progress:
            self.progress(self.done, self.total)


def upload_file(
    conn: libvirt.virConnect,
    vol: libvirt.virStorageVol,
    src: Path,
    progress: Progress | None = None,
) -> CopyResult:
    """Send a local file into a (remote) volume through a sparse stream."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    size = os.fstat(fd).st_size
    count = _Counter(size, progress)
    segs = list(segments(fd, size))
    state = {"i": 0, "pos": 0}

    def hole_handler(_stream: libvirt.virStream, _opaque: object) -> list[int | bool]:
        if state["i"] >= len(segs):
            return [False, 0]
        off, length, is_data = segs[state["i"]]
        left = off + length - state["pos"]
        return [is_data, left]

    def skip_handler(_stream: libvirt.virStream, length: int, _opaque: object) -> int:
        count.hole(length)
        _advance(length)
        return 0

    def _advance(n: int) -> None:
        if n == 0 or state["i"] >= len(segs):
            return
        state["pos"] += n
        off, length, _d = segs[state["i"]]
        if state["pos"] >= off + length:
            state["i"] += 1

    def handler(_stream: libvirt.virStream, nbytes: int, _opaque: object) -> bytes:
        chunk = os.pread(fd, nbytes, state["pos"])
        count.data(chunk)
        _advance(len(chunk))
        return chunk

    stream = conn.newStream(0)
    try:
        vol.upload(stream, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
        stream.sparseSendAll(handler, hole_handler, skip_handler, None)
        stream.finish()
    except libvirt.libvirtError as err:
        _abort(stream)
        raise TransferFailed(err.get_error_message() or str(err)) from None
    finally:
        os.close(fd)
    return CopyResult(count.h.hexdigest(), size, count.moved)


def download_file(
    conn: libvirt.virConnect,
    vol: libvirt.virStorageVol,
    dst: Path,
    progress: Progress | None = None,
) -> CopyResult:
    """Receive a (remote) volume into a new local file through a sparse stream."""
    size = file_size(vol)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    count = _Counter(size, progress)
    pos = [0]

    def handler(_stream: libvirt.virStream, buf: bytes, _opaque: object) -> int:
        view = memoryview(buf)
        while view:  # a short write is legal; the stream hands each chunk over only once
            n = os.pwrite(fd, view, pos[0])
            view = view[n:]
            pos[0] += n
        count.data(buf)
        return len(buf)

    def hole_handler(_stream: libvirt.virStream, length: int, _opaque: object) -> int:
        count.hole(length)
        pos[0] += length
        return 0

    stream = conn.newStream(0)
    try:
        vol.download(stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
        stream.sparseRecvAll(handler, hole_handler, None)
        stream.finish()
        os.ftruncate(fd, pos[0])
        os.fdatasync(fd)
    except BaseException as err:
        _abort(stream)
        os.close(fd)
        dst.unlink(missing_ok=True)
        if isinstance(err, libvirt.libvirtError):
            raise TransferFailed(err.get_error_message() or str(err)) from None
        raise
    os.close(fd)
    return CopyResult(count.h.hexdigest(), pos[0], count.moved)


def hash_volume(
    conn: libvirt.virConnect, vol: libvirt.virStorageVol, progress: Progress | None = None
) -> CopyResult:
    """sha256 of a (remote) volume's bytes, read through a sparse stream and discarded."""
    count = _Counter(file_size(vol), progress)
    stream = conn.newStream(0)
    try:
        vol.download(stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)

        def on_data(_s: libvirt.virStream, buf: bytes, _o: object) -> int:
            count.data(buf)
            return len(buf)

        def on_hole(_s: libvirt.virStream, length: int, _o: object) -> int:
            count.hole(length)
            return 0

        stream.sparseRecvAll(on_data, on_hole, None)
        stream.finish()
    except libvirt.libvirtError as err:
        _abort(stream)
        raise TransferFailed(err.get_error_message() or str(err)) from None
    return CopyResult(count.h.hexdigest(), count.done, count.moved)


def stream_copy(
    src_conn: libvirt.virConnect,
    src_vol: libvirt.virStorageVol,
    dst_conn: libvirt.virConnect,
    dst_vol: libvirt.virStorageVol,
    size: int,
    progress: Progress | None = None,
) -> CopyResult:
    """Host to host: download from one libvirt, upload to another, holes kept as holes."""
    count = _Counter(size, progress)
    pending: queue.Queue[tuple[bool, bytes | int] | None] = queue.Queue(maxsize=8)
    failure: list[BaseException] = []

    def receiver() -> None:
        rstream = src_conn.newStream(0)
        try:
            src_vol.download(rstream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)

            def on_data(_s: libvirt.virStream, buf: bytes, _o: object) -> int:
                pending.put((True, bytes(buf)))
                return len(buf)

            def on_hole(_s: libvirt.virStream, length: int, _o: object) -> int:
                pending.put((False, length))
                return 0

            rstream.sparseRecvAll(on_data, on_hole, None)
            rstream.finish()
        except BaseException as err:
            failure.append(err)
            _abort(rstream)
        finally:
            pending.put(None)

    thread = threading.Thread(target=receiver, name="sigvirt-recv", daemon=True)
    thread.start()
    current: list[tuple[bool, bytes | int] | None] = [None]
    finished = [False]

    def take() -> tuple[bool, bytes | int] | None:
        if current[0] is None and not finished[0]:
            current[0] = pending.get()
            if current[0] is None:
                finished[0] = True
        return current[0]

    def hole_handler(_s: libvirt.virStream, _o: object) -> list[int | bool]:
        item = take()
        if item is None:
            return [False, 0]
        is_data, payload = item
        return [is_data, len(payload) if isinstance(payload, bytes) else payload]

    def skip_handler(_s: libvirt.virStream, length: int, _o: object) -> int:
        count.hole(length)
        current[0] = None
        return 0

    def handler(_s: libvirt.virStream, nbytes: int, _o: object) -> bytes:
        item = take()
        if item is None:
            return b""
        _d, payload = item
        assert isinstance(payload, bytes)
        chunk, rest = payload[:nbytes], payload[nbytes:]
        current[0] = (True, rest) if rest else None
        count.data(chunk)
        return chunk

    wstream = dst_conn.newStream(0)
    try:
        dst_vol.upload(wstream, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
        wstream.sparseSendAll(handler, hole_handler, skip_handler, None)
        thread.join()
        if failure:
            raise failure[0]
        wstream.finish()
    except BaseException as err:
        _abort(wstream)
        while take() is not None:  # let the receiver finish
            current[0] = None
        thread.join()
        if isinstance(err, libvirt.libvirtError):
            raise TransferFailed(err.get_error_message() or str(err)) from None
        raise
    return CopyResult(count.h.hexdigest(), size, count.moved)


def _abort(stream: libvirt.virStream) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        stream.abort()


def file_size(vol: libvirt.virStorageVol) -> int:
    # For a file volume libvirt's "capacity" is the qcow2 virtual size; the bytes to move
    # are the file's own length, which the physical size reports.
    try:
        return int(vol.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2])
    except libvirt.libvirtError as err:
        if err.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
            raise _translate(err, "size of a volume") from None
    try:
        return int(vol.info()[2])
    except libvirt.libvirtError as err:
        raise _translate(err, "size of a volume") from None


def _translate(err: libvirt.libvirtError, what: str) -> SigvirtError:
    from sigvirt.hypervisor import translate  # the one mapping of libvirt error codes

    return translate(err, what)
