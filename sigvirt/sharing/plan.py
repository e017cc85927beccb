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
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sigvirt.catalog import listindex
from sigvirt.catalog.fileio import file_lock
from sigvirt.catalog.policy import Grant, Policy, Role, covers
from sigvirt.catalog.records import Replica
from sigvirt.catalog.store import Damaged, GalleryStore
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


PoolDirs = Mapping[str, Mapping[str, Path]]  # local region -> pool name -> its directory


def plan(
    store: GalleryStore, policy: Policy, pool_dirs: PoolDirs
) -> tuple[list[Target], list[str]]:
    """Every path of the gallery (metadata and local replicas) with the ACL it should have,
    and the replica paths refused, each as a line naming its record.

    Contributors can rewrite version records, so nothing in a record is trusted: a replica
    gets an ACL only when it sits in the directory of the pool its record names, in a local
    region, under exactly the name sigvirt gives that replica of the version the record's
    *location* says (G-D-V-REGION-i.qcow2); records the store can't read, or that claim to
    be elsewhere, are skipped by the store itself."""
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
    refused: list[str] = []
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
    damaged: list[Damaged] = []
    for d in store.list_definitions(g, damaged, hidden=True):
        dl = level(d.name)
        d_default = _make(_Level(dl.covering, ()), True, og)
        ddir = store.definition_dir(g, d.name)
        for path in (ddir, ddir / "versions"):
            out.append(Target(path, _make(dl, True, og), d_default, gid))
        for name in ("definition.json", ".lock"):
            out.append(Target(ddir / name, _make(dl, False, og), None, gid))
        # The listing index holds every version: readable as a version without grants of its
        # own is, never by those given single versions (catalog/listindex.py).
        index = ddir / "versions" / listindex.NAME
        out.append(Target(index, _make(_Level(dl.covering, ()), False, og), None, gid))
        # Hidden ones too: undelete restores them exactly, their ACLs with them.
        for v in store.list_versions(g, d.name, damaged, hidden=True):
            vl = level(f"{d.name}/{v.name}")
            vacl = _make(vl, False, og)
            out.append(Target(store.version_path(g, d.name, v.name), vacl, None, gid))
            out.append(Target(store.version_op_lock(g, d.name, v.name), vacl, None, gid))
            # Replicas are read-only for all; QEMU reads them through its own entry, since
            # libvirt never relabels a backing file sigvirt marks relabel='no'.
            readers = tuple(sorted((k, READ) for k in vl.entries(False)))
            users = ((qemu, READ),) if qemu is not None else ()
            racl = posixacl.Acl(6, 4 if og else 0, 0, users, readers)
            record = store.version_path(g, d.name, v.name)
            for r in v.replicas:
                problem = replica_path_problem(g, d.name, v.name, r, pool_dirs)
                if problem is None:
                    out.append(Target(Path(r.path), racl, None, gid))
                elif problem:
                    refused.append(f"{record}: refused replica path {r.path[:200]!r}: {problem}")
    refused += [f"{x.path}: refused, not trusted: {x.reason}" for x in damaged]
    return out, refused


_INDEX = re.compile(r"[0-9]{1,3}")


def replica_path_problem(g: str, d: str, v: str, r: Replica, pool_dirs: PoolDirs) -> str | None:
    """None when `r.path` is the file sigvirt made for replica `r` of version G/D/V in a
    local pool; "" for a replica that is simply not local (nothing to set there); else why
    the path is refused."""
    if r.location not in pool_dirs:
        return ""
    directory = pool_dirs[r.location].get(r.pool)
    if directory is None:
        return f"pool {r.pool!r} is not a pool of region {r.region!r}"
    path = Path(r.path)
    if not path.is_absolute() or os.path.normpath(path) != str(path):
        return "not a plain absolute path"
    if path.parent != directory:
        return f"not in the directory of pool {r.pool} ({directory})"
    prefix = f"{g}-{d}-{v}-{r.region}-"
    index = path.name.removeprefix(prefix).removesuffix(".qcow2")
    if not path.name.startswith(prefix) or not path.name.endswith(".qcow2"):
        return f"not the name of a replica of {g}/{d}/{v} in region {r.region}"
    if not _INDEX.fullmatch(index) or (len(index) > 1 and index.startswith("0")):
        return f"not the name of a replica of {g}/{d}/{v} in region {r.region}"
    return None


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
