"""A libvirt connection of its own for every storage stream.

libvirt 9.0 (Debian 12) loses a connection that carries a stream while other threads make
calls on it: three threads, each creating a volume and uploading 66 KiB to it over one
`qemu:///system` connection, hang for good or see "client socket is closed" within a
minute, and the daemon logs "virFDStreamRemoveCallback: stream is not open". A lock around
the streams alone does not help (the other threads' calls still interleave). With one
connection per stream, used by nothing else while the stream lives, the same load ran
13,364 rounds in 90 s without a fault. A `vmss create` writes its instances' seeds from
several threads, and replication streams beside other calls, so every stream goes through
here. Idle connections are kept for the next stream: on a `qemu+ssh` host a new one costs
an ssh handshake.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import libvirt

from sigvirt.hosts.libvirterrors import translate

KEEP_IDLE = 4  # connections kept for the next streams; more are closed when done


@dataclass(frozen=True)
class Channel:
    """One stream and the volume it reads or writes, on a connection no one else uses."""

    stream: libvirt.virStream
    vol: libvirt.virStorageVol


class Channels:
    """The stream connections of one host."""

    def __init__(self, uri: str, primary: libvirt.virConnect) -> None:
        self.uri = uri
        # libvirt's test driver has no streams, and a second test:/// connection may see
        # other objects: its callers (tests of the catalog) stay on the one connection.
        self._primary = primary if uri.startswith("test:") else None
        self._idle: list[libvirt.virConnect] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def open(self, pool: str, name: str) -> Iterator[Channel]:
        """A new stream for volume `pool`/`name`; on any failure the connection is dropped
        (and the stream aborted), since libvirt may have left it mid-message."""
        conn = self._take()
        stream: libvirt.virStream | None = None
        try:
            try:
                vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
                stream = conn.newStream(0)
            except libvirt.libvirtError as err:
                raise translate(err, f"volume {pool}/{name}", self.uri) from None
            yield Channel(stream, vol)
        except BaseException:
            if stream is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
            self._drop(conn)
            raise
        self._give_back(conn)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._drop(conn)

    def _take(self) -> libvirt.virConnect:
        if self._primary is not None:
            return self._primary
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            return libvirt.open(self.uri)
        except libvirt.libvirtError as err:
            raise translate(err, "connect", self.uri) from None

    def _give_back(self, conn: libvirt.virConnect) -> None:
        if conn is self._primary:
            return
        with self._lock:
            if len(self._idle) < KEEP_IDLE:
                self._idle.append(conn)
                return
        self._drop(conn)

    def _drop(self, conn: libvirt.virConnect) -> None:
        if conn is self._primary:
            return
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
