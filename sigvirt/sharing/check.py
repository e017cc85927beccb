"""check-access: can QEMU and each shared group read a version's replicas, and the fix.
The kernel's POSIX ACL check, done here for other principals."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from sigvirt.catalog.policy import covers, scope_of
from sigvirt.catalog.store import GalleryStore
from sigvirt.hosts import qemuconf
from sigvirt.sharing import acl as posixacl
from sigvirt.sharing.plan import READ, TRAVERSE, gid_of


@dataclass(frozen=True)
class AccessReport:
    path: str
    principal: str  # "user libvirt-qemu" or "group NAME"
    can_read: bool
    why: str
    fix: str


def _allowed(path: Path, uid: int, gids: set[int], want: int) -> tuple[bool, str]:
    """POSIX ACL access check (as the kernel does it) for uid/gids on one path."""
    fd = posixacl.open_nofollow(path)
    try:
        st = os.fstat(fd)
        a = posixacl.read(fd)
    finally:
        os.close(fd)
    mask = a.mode >> 3 & 7 if (a.users or a.groups) else a.group
    if uid == st.st_uid:
        return (a.owner & want) == want, "owner"
    for u, p in a.users:
        if u == uid:
            return (p & mask & want) == want, "named user entry"
    matched = False
    if st.st_gid in gids:
        matched = True
        if (a.group & mask & want) == want:
            return True, "owning group"
    for g, p in a.groups:
        if g in gids:
            matched = True
            if (p & mask & want) == want:
                return True, "named group entry"
    if matched:
        return False, "its group entries lack the permission"
    return (a.other & want) == want, "other"


def can_read(path: Path, uid: int, gids: set[int]) -> tuple[bool, str]:
    """Read access to path, including search permission on every directory above it."""
    for parent in reversed(path.parents):
        ok, why = _allowed(parent, uid, gids, TRAVERSE)
        if not ok:
            return False, f"can't enter {parent} ({why})"
    return _allowed(path, uid, gids, READ)


def check_access(
    store: GalleryStore, gallery: str, definition: str, version: str
) -> list[AccessReport]:
    """For each replica of a version: can QEMU and each shared group read it, and the fix."""
    policy = store.policy(gallery)
    rec = store.get_version(gallery, definition, version)
    scope = scope_of(definition, version)
    principals: list[tuple[str, int, set[int]]] = []
    with contextlib.suppress(KeyError):
        q = pwd.getpwnam(qemuconf.qemu_user())
        principals.append((f"user {q.pw_name}", q.pw_uid, {q.pw_gid, *_supplementary(q.pw_name)}))
    groups = {g.group for g in policy.grants if covers(g.scope, scope)}
    if policy.owner_group:
        groups.add(policy.owner_group)
    for name in sorted(groups):
        gid = gid_of(name)
        if gid is not None:
            # A member with no other group: uid that owns nothing, only this group.
            principals.append((f"group {name}", 2**31 - 2, {gid}))
    fix = f"sigvirt sig access-sync --gallery-name {gallery}"
    out = []
    for r in rec.replicas:
        path = Path(r.path)
        for label, uid, gids in principals:
            try:
                ok, why = can_read(path, uid, gids)
            except FileNotFoundError:
                ok, why = False, "replica file missing"
            except OSError as err:
                ok, why = False, err.strerror or str(err)
            out.append(AccessReport(str(path), label, ok, why, "" if ok else fix))
    return out


def _supplementary(user: str) -> set[int]:
    return {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
