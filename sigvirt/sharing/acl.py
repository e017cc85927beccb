"""POSIX ACLs read and written as the kernel stores them (system.posix_acl_* xattrs), on
open file descriptors: no setfacl subprocess per file, and no symlink can redirect a write."""

from __future__ import annotations

import contextlib
import os
import stat
import struct
from dataclasses import dataclass

ACCESS = "system.posix_acl_access"
DEFAULT = "system.posix_acl_default"
_VERSION = 2
_UNDEFINED = 0xFFFFFFFF
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


@dataclass(frozen=True, order=True)
class Entry:
    tag: int
    qualifier: int  # uid/gid for USER/GROUP entries, else _UNDEFINED
    perm: int  # rwx bits: 4 read, 2 write, 1 execute


@dataclass(frozen=True)
class Acl:
    """owner/group/other permissions plus named users and groups (uid/gid → rwx)."""

    owner: int
    group: int
    other: int
    users: tuple[tuple[int, int], ...] = ()
    groups: tuple[tuple[int, int], ...] = ()

    def entries(self) -> list[Entry]:
        out = [
            Entry(USER_OBJ, _UNDEFINED, self.owner),
            Entry(GROUP_OBJ, _UNDEFINED, self.group),
            Entry(OTHER, _UNDEFINED, self.other),
        ]
        out += [Entry(USER, uid, p) for uid, p in self.users]
        out += [Entry(GROUP, gid, p) for gid, p in self.groups]
        if self.users or self.groups:
            mask = self.group
            for _q, p in (*self.users, *self.groups):
                mask |= p
            out.append(Entry(MASK, _UNDEFINED, mask))
        return sorted(out)

    @property
    def mode(self) -> int:
        """The mode bits the kernel shows for this ACL (group bits are the mask)."""
        mask = self.group
        for _q, p in (*self.users, *self.groups):
            mask |= p
        return (self.owner << 6) | (mask << 3) | self.other


def encode(acl: Acl) -> bytes:
    data = struct.pack("<I", _VERSION)
    for e in acl.entries():
        data += struct.pack("<HHI", e.tag, e.perm, e.qualifier)
    return data


def decode(data: bytes) -> Acl:
    (version,) = struct.unpack_from("<I", data)
    if version != _VERSION:
        raise ValueError(f"unknown ACL xattr version {version}")
    owner = group = other = 0
    users: list[tuple[int, int]] = []
    groups: list[tuple[int, int]] = []
    mask = None
    for off in range(4, len(data), 8):
        tag, perm, qual = struct.unpack_from("<HHI", data, off)
        if tag == USER_OBJ:
            owner = perm
        elif tag == GROUP_OBJ:
            group = perm
        elif tag == OTHER:
            other = perm
        elif tag == USER:
            users.append((qual, perm))
        elif tag == GROUP:
            groups.append((qual, perm))
        elif tag == MASK:
            mask = perm
    del mask  # derived again on encode
    return Acl(owner, group, other, tuple(sorted(users)), tuple(sorted(groups)))


def read(fd: int) -> Acl:
    """The access ACL of an open file (a plain mode reads as a minimal ACL)."""
    try:
        return decode(os.getxattr(fd, ACCESS))
    except OSError:
        mode = os.fstat(fd).st_mode
        return Acl((mode >> 6) & 7, (mode >> 3) & 7, mode & 7)


def apply(
    fd: int, acl: Acl, *, gid: int | None = None, default: Acl | None = None, setgid: bool = False
) -> None:
    """Set group owner, mode and ACL of an open file or directory in one go."""
    st = os.fstat(fd)
    if gid is not None and st.st_gid != gid:
        os.fchown(fd, -1, gid)
    extra = stat.S_ISGID if setgid and stat.S_ISDIR(st.st_mode) else 0
    os.fchmod(fd, acl.mode | extra)
    if acl.users or acl.groups:
        os.setxattr(fd, ACCESS, encode(acl))
    else:
        with contextlib.suppress(OSError):
            os.removexattr(fd, ACCESS)
    if stat.S_ISDIR(st.st_mode):
        if default is not None:
            os.setxattr(fd, DEFAULT, encode(default))
        else:
            with contextlib.suppress(OSError):
                os.removexattr(fd, DEFAULT)


def open_nofollow(path: str | os.PathLike[str]) -> int:
    """An fd for a file or directory that is not a symlink (O_PATH can't carry xattrs)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    return os.open(path, flags)
