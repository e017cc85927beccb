"""File permissions the kernel enforces: replicas readable by QEMU and by their group only.

libvirt's DAC driver chowns disk images to the QEMU user when a guest starts and does not
give backing files back when it stops. sigvirt therefore marks every backing file
`relabel='no'` in the domain XML (domxml) and lets QEMU read replicas through an ACL entry
for its user instead: the gallery's owner, group, mode and ACL stay what sigvirt set.
"""

from __future__ import annotations

import os
import pwd
import re
from functools import cache
from pathlib import Path

from sigvirt.runner import Runner

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


def protect_replica(
    path: Path, runner: Runner, group: str | None = None, mode: int = 0o640
) -> None:
    """Owner root (or the caller), group = the gallery's group, mode 0640, plus read for QEMU."""
    if group:
        os.chown(path, -1, _gid(group))
    os.chmod(path, mode)
    user = qemu_user()
    try:
        pwd.getpwnam(user)
    except KeyError:
        return  # no QEMU user on this host (libvirt not installed here): nothing to grant
    runner.run(["setfacl", "-m", f"u:{user}:r", str(path)])


def _gid(group: str) -> int:
    import grp

    return grp.getgrnam(group).gr_gid
