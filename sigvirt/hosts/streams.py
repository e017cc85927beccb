"""Image bytes through libvirt storage streams: the only way bytes reach another host.

Sparse both ways (holes travel as lengths, not zeros) and hashed on the way, so what the
far side received is verified without reading it back. Functions take sigvirt's host
handles; the libvirt stream objects never leave this module.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt

from sigvirt import faults
from sigvirt.errors import HostAccessDenied, HostError, NoSpace, RegionUnavailable, SigvirtError
from sigvirt.hosts import xmlbuild
from sigvirt.hosts.hypervisor import Hypervisor, Volume
from sigvirt.hosts.libvirterrors import translate

CHUNK = 32 << 20
ZEROS = bytes(1 << 20)
Progress = Callable[[int, int], None]  # (bytes done, total)


class TransferFailed(HostError):
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


def hash_zeros(h: hashlib._Hash, length: int) -> None:
    while length > 0:
        n = min(length, len(ZEROS))
        h.update(ZEROS[:n] if n < len(ZEROS) else ZEROS)
        length -= n


# -- libvirt streams (between hosts) ----------------------------------------------------------
class _Counter:
    def __init__(self, total: int, progress: Progress | None, *, hashing: bool = True) -> None:
        self.h = hashlib.sha256()
        self.hashing = hashing  # False: someone else hashes (the upload's read-ahead)
        self.total = total
        self.done = 0
        self.moved = 0
        self.progress = progress

    def data(self, chunk: bytes) -> None:
        if self.hashing:
            self.h.update(chunk)
        self.done += len(chunk)
        self.moved += len(chunk)
        if self.progress:
            self.progress(self.done, self.total)

    def hole(self, length: int) -> None:
        if self.hashing:
            hash_zeros(self.h, length)
        self.done += length
        if self.progress:
            self.progress(self.done, self.total)


class _ReadAhead:
    """A file's data read in the pieces libvirt's stream asks for, and the whole file hashed
    in file order (holes as zeros), in a thread of its own: the read and the sha256 overlap
    the send (hashlib and libvirt's send both release the GIL), where inline they added to
    it. Pieces start at each data segment's start, so they match the stream's requests."""

    DEPTH = 16  # pieces read ahead (~4 MiB)

    def __init__(self, fd: int, segs: list[tuple[int, int, bool]], piece: int) -> None:
        self.h = hashlib.sha256()
        self._fd, self._segs, self._piece = fd, segs, piece
        self._q: queue.Queue[tuple[int, bytes] | None] = queue.Queue(maxsize=self.DEPTH)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="upload-read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for off, length, is_data in self._segs:
                if not is_data:
                    hash_zeros(self.h, length)
                    continue
                pos, end = off, off + length
                while pos < end and not self._stop.is_set():
                    chunk = os.pread(self._fd, min(self._piece, end - pos), pos)
                    if not chunk:
                        raise TransferFailed(detail=f"the source ended early at byte {pos}")
                    self.h.update(chunk)
                    self._put((pos, chunk))
                    pos += len(chunk)
        except BaseException as err:  # handed to the sender, which raises it
            self._error = err
            self._put(None)

    def _put(self, item: tuple[int, bytes] | None) -> None:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def take(self, pos: int, nbytes: int) -> bytes:
        if nbytes == 0:  # how sparseSendAll asks whether the file has ended
            return b""
        item = self._q.get()
        if item is None:
            raise self._error or TransferFailed(detail="read-ahead stopped")
        at, chunk = item
        if at != pos or len(chunk) != nbytes:
            raise TransferFailed(detail=f"read-ahead out of step at byte {pos}")
        return chunk

    def hexdigest(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.h.hexdigest()

    def close(self) -> None:
        """Stop reading (before the file descriptor is closed)."""
        self._stop.set()
        self._thread.join()


def upload_file(vol: Volume, src: Path, progress: Progress | None = None) -> CopyResult:
    """Send a local file into a (remote) volume through a sparse stream."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    size = os.fstat(fd).st_size
    count = _Counter(size, progress, hashing=False)
    segs = list(segments(fd, size))
    ahead = _ReadAhead(fd, segs, libvirt.virStorageVol.streamBufSize)
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
        chunk = ahead.take(state["pos"], nbytes)
        count.data(chunk)
        _advance(len(chunk))
        faults.point("stream.chunk")
        return chunk

    try:
        with vol.channel() as ch:
            try:
                ch.vol.upload(ch.stream, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
                ch.stream.sparseSendAll(handler, hole_handler, skip_handler, None)
                ch.stream.finish()
            except libvirt.libvirtError as err:
                raise _stream_error(err, vol) from None
        digest = ahead.hexdigest()
    finally:
        ahead.close()
        os.close(fd)
    return CopyResult(digest, size, count.moved)


def download_file(vol: Volume, dst: Path, progress: Progress | None = None) -> CopyResult:
    """Receive a (remote) volume into a new local file through a sparse stream."""
    size = vol.file_size()
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
        faults.point("stream.chunk")
        return len(buf)

    def hole_handler(_stream: libvirt.virStream, length: int, _opaque: object) -> int:
        count.hole(length)
        pos[0] += length
        return 0

    try:
        _receive(vol, handler, hole_handler)
        os.ftruncate(fd, pos[0])
        os.fdatasync(fd)
    except BaseException as err:
        os.close(fd)
        dst.unlink(missing_ok=True)
        if isinstance(err, libvirt.libvirtError):
            raise _stream_error(err, vol) from None
        raise
    os.close(fd)
    return CopyResult(count.h.hexdigest(), pos[0], count.moved)


def _receive(vol: Volume, on_data: Callable[..., int], on_hole: Callable[..., int]) -> None:
    """The whole volume through a sparse download stream on a connection of its own; a
    libvirt error goes to the caller untranslated (each says what it was doing)."""
    with vol.channel() as ch:
        ch.vol.download(ch.stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
        ch.stream.sparseRecvAll(on_data, on_hole, None)
        ch.stream.finish()


def hash_volume(vol: Volume, progress: Progress | None = None) -> CopyResult:
    """sha256 of a (remote) volume's bytes, read through a sparse stream and discarded."""
    count = _Counter(vol.file_size(), progress)

    def on_data(_s: libvirt.virStream, buf: bytes, _o: object) -> int:
        count.data(buf)
        return len(buf)

    def on_hole(_s: libvirt.virStream, length: int, _o: object) -> int:
        count.hole(length)
        return 0

    try:
        _receive(vol, on_data, on_hole)
    except libvirt.libvirtError as err:
        raise _stream_error(err, vol) from None
    return CopyResult(count.h.hexdigest(), count.done, count.moved)


def stream_copy(
    src_vol: Volume, dst_vol: Volume, size: int, progress: Progress | None = None
) -> CopyResult:
    """Host to host: download from one libvirt, upload to another, holes kept as holes."""
    count = _Counter(size, progress)
    pending: queue.Queue[tuple[bool, bytes | int] | None] = queue.Queue(maxsize=8)
    failure: list[BaseException] = []

    def on_data(_s: libvirt.virStream, buf: bytes, _o: object) -> int:
        pending.put((True, bytes(buf)))
        return len(buf)

    def on_hole(_s: libvirt.virStream, length: int, _o: object) -> int:
        pending.put((False, length))
        return 0

    def receiver() -> None:
        try:
            _receive(src_vol, on_data, on_hole)
        except BaseException as err:
            failure.append(
                _stream_error(err, src_vol) if isinstance(err, libvirt.libvirtError) else err
            )
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
        faults.point("stream.chunk")
        return chunk

    try:
        with dst_vol.channel() as ch:
            ch.vol.upload(ch.stream, 0, size, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
            ch.stream.sparseSendAll(handler, hole_handler, skip_handler, None)
            thread.join()
            if failure:
                raise failure[0]
            ch.stream.finish()
    except BaseException as err:
        while take() is not None:  # let the receiver finish
            current[0] = None
        thread.join()
        if isinstance(err, libvirt.libvirtError):
            raise _stream_error(err, dst_vol) from None
        raise
    return CopyResult(count.h.hexdigest(), size, count.moved)


# -- small whole-buffer streams: seeds, console logs ------------------------------------------
def upload_bytes(hv: Hypervisor, pool: str, name: str, data: bytes, mode: int = 0o600) -> Path:
    """A raw volume holding `data`, written through libvirt's stream (works on remote hosts)."""
    vol = hv.create_volume(pool, xmlbuild.raw_volume_xml(name, len(data), mode))
    if not data:  # an empty volume (a console log QEMU will fill) needs no stream
        return vol.path
    try:
        with vol.channel() as ch:
            ch.vol.upload(ch.stream, 0, len(data), 0)
            view = memoryview(data)
            sent = 0
            while sent < len(data):
                sent += ch.stream.send(bytes(view[sent : sent + (1 << 20)]))
            ch.stream.finish()
    except libvirt.libvirtError as err:
        raise translate(err, f"upload {pool}/{name}", hv.uri) from None
    return vol.path


def download_tail(hv: Hypervisor, pool: str, name: str, max_bytes: int = 16384) -> bytes:
    """The last bytes of a volume (console logs on remote hosts)."""
    vol = hv.listed_volume(pool, name)
    capacity = vol.capacity
    if capacity == 0:
        return b""
    offset = max(0, capacity - max_bytes)
    chunks: list[bytes] = []
    try:
        with vol.channel() as ch:
            ch.vol.download(ch.stream, offset, capacity - offset, 0)
            while True:
                got = ch.stream.recv(65536)
                if not got or got in (-1, -2):
                    break
                chunks.append(bytes(got))
            ch.stream.finish()
    except libvirt.libvirtError as err:
        raise translate(err, f"read {pool}/{name}", hv.uri) from None
    return b"".join(chunks)


def _stream_error(err: libvirt.libvirtError, vol: Volume) -> SigvirtError:
    """A full disk or a lost host keeps its own meaning; anything else is a failed transfer."""
    known = translate(err, f"stream {vol.what}", vol.hv.uri)
    if isinstance(known, NoSpace | RegionUnavailable | HostAccessDenied):
        return known
    if not vol.hv.alive():  # the daemon (or the ssh under it) died mid-stream: the host is gone
        return RegionUnavailable(
            f"stream {vol.what}: libvirt host {vol.hv.uri} went away mid-transfer "
            f"({err.get_error_message() or err})"
        )
    return TransferFailed(f"{vol.what} on {vol.hv.uri}: {err.get_error_message() or err}")
