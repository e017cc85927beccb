"""Sharing through Unix groups: reader < contributor < owner, on a gallery, a definition or
a version; enforced by the CLI (role checks) and by the kernel (ACLs sigvirt computes).

Who may do what lives in ROOT/G/access.json, in the gallery's own directory, which only
owners can write: contributors, who can rewrite definition and version records, can't
grant themselves anything. The ACLs are a pure function of that file and the tree:

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
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from sigvirt import acl as posixacl
from sigvirt import perms
from sigvirt.errors import HostAccessDenied, InvalidName, NotFound
from sigvirt.records import ImageVersion
from sigvirt.roles import ROLES, Caller, Grant, Policy, Role, covers, require, scope_of
from sigvirt.runner import Runner
from sigvirt.store import GalleryStore, file_lock

DIR_PERM = {"reader": 5, "contributor": 7, "owner": 7}
FILE_PERM = {"reader": 4, "contributor": 6, "owner": 6}
TRAVERSE, READ = 1, 4


# -- storage ---------------------------------------------------------------------------------
def load(store: GalleryStore, gallery: str) -> Policy:
    return store.policy(gallery)


def save(store: GalleryStore, policy: Policy) -> None:
    store.save_policy(policy)


def check_group(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise NotFound(f"group {name!r} does not exist on this host") from None


def with_grant(policy: Policy, group: str, role: str, scope: str) -> Policy:
    roles: dict[str, Role] = {r: r for r in ROLES}
    if role not in roles:
        raise InvalidName(f"--role must be one of {', '.join(ROLES)} (got {role!r})")
    check_group(group)
    kept = tuple(g for g in policy.grants if not (g.group == group and g.scope == scope))
    return replace(policy, grants=(*kept, Grant(group, roles[role], scope)))


def without_grant(policy: Policy, group: str, scope: str) -> Policy:
    kept = tuple(g for g in policy.grants if not (g.group == group and g.scope == scope))
    if len(kept) == len(policy.grants):
        where = f"{policy.gallery}/{scope}" if scope else policy.gallery
        raise NotFound(f"group {group} has no share on {where}")
    return replace(policy, grants=kept)


# -- the ACLs the kernel enforces -------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    path: Path
    acl: posixacl.Acl
    default: posixacl.Acl | None = None
    gid: int | None = None


def _gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _qemu_uid() -> int | None:
    try:
        return pwd.getpwnam(perms.qemu_user()).pw_uid
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
            gid = _gid(g.group)
            if gid is not None:
                out[gid] = out.get(gid, 0) | (TRAVERSE if is_dir else READ)
        for g in self.covering:
            gid = _gid(g.group)
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
    gid = _gid(policy.owner_group) if og else 0

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
    qemu = _qemu_uid()
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


# -- use cases --------------------------------------------------------------------------------
SYNC_HELPER = "sigvirt-access-sync"


def sync(store: GalleryStore, gallery: str) -> list[str]:
    """Make the gallery's files say what its access.json says; problems as lines."""
    with locked(store, gallery):
        return apply_plan(plan(store, load(store, gallery)))


def sync_files(store: GalleryStore, gallery: str, runner: Runner) -> list[str]:
    """sync(), here if we may (root), else through the root helper that lab hosts allow
    everyone to run with sudo (it only ever applies what owners wrote in access.json)."""
    if os.geteuid() == 0:
        return sync(store, gallery)
    helper = shutil.which(SYNC_HELPER) or str(Path(sys.executable).parent / SYNC_HELPER)
    res = runner.run(
        ["sudo", "-n", helper, "--gallery-root", str(store.root), gallery], check=False
    )
    if res.returncode != 0:
        raise HostAccessDenied(
            f"could not update the file ACLs of gallery {gallery}: "
            f"{(res.stderr.strip().splitlines() or ['sudo failed'])[-1]}",
            hint=f"the lab host needs the sudo rule from `make install-shared` for {SYNC_HELPER}",
        )
    return [ln for ln in res.stdout.splitlines() if ln.strip()]


def share(
    store: GalleryStore,
    caller: Caller,
    runner: Runner,
    gallery: str,
    definition: str | None,
    version: str | None,
    group: str,
    role: str | None,
) -> Policy:
    """Add (role given) or remove (role None) a group's share; files follow at once."""
    scope = scope_of(definition, version)
    _exists(store, gallery, definition, version)
    policy = load(store, gallery)
    require(policy, caller, "owner", scope, "share")
    policy = with_grant(policy, group, role, scope) if role else without_grant(policy, group, scope)
    save(store, policy)
    sync_files(store, gallery, runner)
    return policy


def _exists(store: GalleryStore, gallery: str, definition: str | None, version: str | None) -> None:
    if version is not None and definition is not None:
        store.get_version(gallery, definition, version)
    elif definition is not None:
        store.get_definition(gallery, definition)
    else:
        store.get_gallery(gallery)


def set_owner_group(store: GalleryStore, gallery: str, group: str) -> Policy:
    check_group(group)
    policy = replace(load(store, gallery), owner_group=group)
    save(store, policy)
    return policy


# -- check-access -----------------------------------------------------------------------------
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
    policy = load(store, gallery)
    rec = store.get_version(gallery, definition, version)
    scope = scope_of(definition, version)
    principals: list[tuple[str, int, set[int]]] = []
    with contextlib.suppress(KeyError):
        q = pwd.getpwnam(perms.qemu_user())
        principals.append((f"user {q.pw_name}", q.pw_uid, {q.pw_gid, *_supplementary(q.pw_name)}))
    groups = {g.group for g in policy.grants if covers(g.scope, scope)}
    if policy.owner_group:
        groups.add(policy.owner_group)
    for name in sorted(groups):
        gid = _gid(name)
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
