"""QEMU's I/O engine for guest disks on one host: io_uring until that host refuses it.

With QEMU's default thread pool every guest disk request hops from the vCPU thread to a pool
worker and back through the main loop; io_uring submits it from the vCPU thread and
completes it in the main loop, with no worker in between. Under TCG on a host whose cores all
run vCPUs, each of those wake-ups preempts some guest's vCPU, and a boot makes a few hundred
requests (a tiny guest alone: a third of the involuntary context switches; bench_scaleset
`+threads` against sigvirt's default). A QEMU built without io_uring, or a kernel that refuses it to
QEMU (kernel.io_uring_disabled, a seccomp filter), fails the domain's define or start; the
caller then asks `refused(message)` and defines the guest again with the thread pool, and so
does every later guest on that host handle. A guest made while its host allowed io_uring is
moved to the thread pool the same way when it is started on a host that no longer does
(guest.start_domain).
"""

from __future__ import annotations

import re
from pathlib import Path

IO_URING_KNOB = Path("/proc/sys/kernel/io_uring_disabled")  # Linux 6.6+


def _disabled(knob: Path) -> bool:
    try:
        return knob.read_text().strip() not in ("", "0")
    except OSError:
        return False  # no such knob: nothing refuses it up front


class DiskIo:
    """The engine for the next guest defined on one host ("" = libvirt's default)."""

    def __init__(self, local: bool, knob: Path = IO_URING_KNOB) -> None:
        # A local kernel that refuses io_uring to unprivileged processes (QEMU is one) says
        # so up front, which spares every command one failed start.
        self._engine = "" if local and _disabled(knob) else "io_uring"

    @property
    def engine(self) -> str:
        return self._engine

    def refused(self, message: str) -> bool:
        """Whether a define or start failed on io_uring (libvirt: "io uring is not
        supported"; QEMU: "Unable to use io_uring"); if so, the thread pool from now on."""
        if re.search(r"io[ _]uring", message, re.I) is None:
            return False
        self._engine = ""  # boot threads may all get here: one assignment, same value
        return True
