"""Loopback ports for guests' SSH forwards (QEMU user networking, hostfwd on 127.0.0.1)."""

from __future__ import annotations

import socket
import threading

from sigvirt.errors import Conflict
from sigvirt.hosts.regions import DEFAULT_PORT_RANGE


class PortAllocator:
    """Ports of one host's range; shared by the threads of one process.

    The caller says which ports that host's domains use already (read from their own
    metadata), so concurrent sigvirt processes rarely collide, and a collision (QEMU can't
    bind) is retried by the caller with the port in `used`.
    """

    def __init__(self, lo: int = DEFAULT_PORT_RANGE[0], hi: int = DEFAULT_PORT_RANGE[1]) -> None:
        self.lo, self.hi = lo, hi
        self._lock = threading.Lock()
        self._reserved: set[int] = set()

    def allocate(self, used: set[int], *, local: bool, where: str = "this host") -> int:
        """A port nobody uses; `local`: also free on this machine's loopback right now."""
        with self._lock:
            for port in range(self.lo, self.hi + 1):
                if port in used or port in self._reserved:
                    continue
                if local and not free_on_loopback(port):
                    continue
                self._reserved.add(port)
                return port
        raise Conflict(f"no free port in {self.lo}-{self.hi} on {where}")

    def release(self, port: int) -> None:
        with self._lock:
            self._reserved.discard(port)


def free_on_loopback(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
