"""The user QEMU runs as under qemu:///system, from libvirt's qemu.conf.

libvirt's DAC driver chowns disk images to that user when a guest starts and does not
give backing files back when it stops; sigvirt marks every backing file relabel='no' and
grants this user read access to replicas through an ACL entry instead (sharing/plan.py).
"""

from __future__ import annotations

import pwd
import re
from functools import cache
from pathlib import Path

QEMU_CONF = Path("/etc/libvirt/qemu.conf")


@cache
def qemu_user(conf: Path = QEMU_CONF) -> str:
    """The user QEMU runs as for qemu:///system (qemu.conf `user = ...`, Debian's default)."""
    try:
        text = conf.read_text()
    except OSError:
        text = ""
    m = re.search(r'^\s*user\s*=\s*"([^"]+)"', text, re.M)
    user = m.group(1) if m else "libvirt-qemu"
    if user.startswith("+"):
        user = pwd.getpwuid(int(user[1:])).pw_name
    return user
