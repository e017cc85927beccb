"""Whether a process that left its mark is still at work: a pid on this machine, or a
`host:boot:pid` tag (a domain's creator, a boot test's or rollout's runner), which a reboot
or another machine's process can't be mistaken for. One rule for every such mark."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """A process of that pid exists here (someone else's live process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def tag() -> str:
    """This process's mark: host, boot and pid."""
    return f"{socket.gethostname()}:{boot_id()}:{os.getpid()}"


def tag_alive(mark: str) -> bool:
    """Whether the process a `host:boot:pid` mark names may still be at work (one on another
    machine can't be asked: it counts as alive; one from before a reboot is gone)."""
    host, _, rest = mark.partition(":")
    boot, _, pid = rest.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    if boot != boot_id():
        return False
    return pid_alive(int(pid))
