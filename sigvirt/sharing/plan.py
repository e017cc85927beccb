"""The ACLs the kernel enforces: a pure function of a gallery's access.json and its tree,
applied through file descriptors (no symlink can redirect a write).

  G/, gallery.json, access.json   owners rw; gallery readers/contributors r;
                                   anyone granted something deeper: traverse / read
  G/images/ and everything below  default ACLs carry the gallery's grants, so what a
                                   contributor creates is shared the same way at once
  a definition's subtree          plus that definition's grants
  a version's record and replicas plus that version's grants; replicas also `r` for QEMU
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sigvirt.catalog.fileio import file_lock
from sigvirt.catalog.policy import Grant, Policy, Role, covers
from sigvirt.catalog.records import ImageVersion
from sigvirt.catalog.store import GalleryStore
from sigvirt.hosts import qemuconf
from sigvirt.sharing import acl as posixacl

DIR_PERM = {"reader": 5, "contributor": 7, "owner": 7}
FILE_PERM = {"reader": 4, "contributor": 6, "owner": 6}
TRAVERSE, READ = 1, 4
REPLICA_MODE = 0o640


@dataclass(frozen=True)
class Target:
    path: Path
    acl: posixacl.Acl
    default: posixacl.Acl | None = None
    gid: int | None = None


def gid_of(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def qemu_uid() -> int | None:
    try:
        return pwd.getpwnam(qemuconf.qemu_user()).pw_uid
    except KeyError:
        return None


@dataclass(frozen=True)
class _Level:
    """Grants that cover a path, and grantees further down who only pass through it."""

    covering: tuple[Grant, ...]
    below: tuple[Grant, ...]

    def entries(
        self, is_dir: bool, writers: tuple[Role, ...] = ("contributor", "owner")
    ) -> dict[int, int]:
        out: dict[int, int] = {}
        for g in self.below:
            gid = gid_of(g.group)
            if gid is not None:
                out[gid] = out.get(gid, 0) | (TRAVERSE if is_dir else READ)
        for g in self.covering:
            gid = gid_of(g.group)
            if gid is None:
                continue
            perm = (5 if is_dir else 4) | (2 if g.role in writers else 0)
            out[gid] = out.get(gid, 0) | perm
        return out


def _make(
    level: _Level,
    is_dir: bool,
    owner_group: bool,
    writers: tuple[Role, ...] = ("contributor", "owner"),
) -> posixacl.Acl:
    group = (7 if is_dir else 6) if owner_group else 0
    named = tuple(sorted(level.entries(is_dir, writers).items()))
    return posixacl.Acl(7 if is_dir else 6, group, 0, (), named)


def plan(store: GalleryStore, policy: Policy) -> list[Target]:
    """Every path of the gallery (metadata and local replicas) with the ACL it should have."""
    g = policy.gallery
    gdir = store.gallery_dir(g)
    og = bool(policy.owner_group)
    gid = gid_of(policy.owner_group) if og else 0

    def level(scope: str) -> _Level:
        cover = tuple(x for x in policy.grants if covers(x.scope, scope))
        below = tuple(
            x
            for x in policy.grants
            if x.scope != scope and covers(scope, x.scope) and x not in cover
        )
        return _Level(cover, below)

    out: list[Target] = []
    top = level("")
    # The gallery's own directory and files change only by owners (sharing lives there).
    owners_only: tuple[Role, ...] = ("owner",)
    out.append(Target(gdir, _make(top, True, og, writers=owners_only), None, gid))
    for name in ("gallery.json", "access.json", ".lock"):
        out.append(Target(gdir / name, _make(top, False, og, writers=owners_only), None, gid))
    images = gdir / "images"
    inherit = _Level(top.covering, ())  # what a new definition starts with
    out.append(Target(images, _make(top, True, og), _make(inherit, True, og), gid))
    out.append(Target(images / ".lock", _make(inherit, False, og), None, gid))
    qemu = qemu_uid()
    for d in store.list_definitions(g):
        dl = level(d.name)
        d_default = _make(_Level(dl.covering, ()), True, og)
        ddir = store.definition_dir(g, d.name)
        for path in (ddir, ddir / "versions"):
            out.append(Target(path, _make(dl, True, og), d_default, gid))
        for name in ("definition.json", ".lock"):
            out.append(Target(ddir / name, _make(dl, False, og), None, gid))
        for v in store.list_versions(g, d.name):
            vl = level(f"{d.name}/{v.name}")
            vacl = _make(vl, False, og)
            out.append(Target(store.version_path(g, d.name, v.name), vacl, None, gid))
            out.append(Target(store.version_op_lock(g, d.name, v.name), vacl, None, gid))
            # Replicas are read-only for all; QEMU reads them through its own entry, since
            # libvirt never relabels a backing file sigvirt marks relabel='no'.
            readers = tuple(sorted((k, READ) for k in vl.entries(False)))
            users = ((qemu, READ),) if qemu is not None else ()
            racl = posixacl.Acl(6, 4 if og else 0, 0, users, readers)
            for r in v.replicas:
                path = Path(r.path)
                if replica_paths_ok(v, path):
                    out.append(Target(path, racl, None, gid))
    return out


def replica_paths_ok(v: ImageVersion, path: Path) -> bool:
    """A replica path a record names is one sigvirt would have made for this version."""
    prefix = f"{v.gallery}-{v.definition}-{v.name}-"
    return path.name.startswith(prefix) and path.suffix == ".qcow2" and path.is_absolute()


def apply_plan(targets: list[Target]) -> list[str]:
    """Apply every target; paths that are missing or not ours to change are reported."""
    problems = []
    for t in targets:
        try:
            fd = posixacl.open_nofollow(t.path)
        except FileNotFoundError:
            continue
        except OSError as err:
            problems.append(f"{t.path}: {err.strerror}")
            continue
        try:
            posixacl.apply(
                fd,
                t.acl,
                gid=t.gid,
                default=t.default,
                setgid=t.default is not None or t.path.is_dir(),
            )
        except OSError as err:
            problems.append(f"{t.path}: {err.strerror}")
        finally:
            os.close(fd)
    return problems


@contextlib.contextmanager
def locked(store: GalleryStore, gallery: str) -> Iterator[None]:
    with file_lock(store.gallery_dir(gallery) / ".lock"):
        yield


def protect_replica(path: Path) -> None:
    """A new replica: owner rw, group r, others nothing, and read for QEMU's user (libvirt
    never relabels a backing file sigvirt marks relabel='no'). The gallery's own entries
    follow with the next sync."""
    fd = posixacl.open_nofollow(path)
    try:
        uid = qemu_uid()
        users = ((uid, READ),) if uid is not None else ()
        mode = REPLICA_MODE
        posixacl.apply(fd, posixacl.Acl(mode >> 6 & 7, mode >> 3 & 7, mode & 7, users))
    finally:
        os.close(fd)
