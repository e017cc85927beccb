"""Sharing use cases: add or remove a group's role, and keep the files' ACLs in step,
here when we may (root) or through the root helper lab hosts let everyone run."""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from sigvirt.catalog import names
from sigvirt.catalog.policy import ROLES, Caller, Grant, Policy, Role, require, scope_of
from sigvirt.catalog.store import GalleryStore
from sigvirt.context import Context
from sigvirt.errors import (
    HostAccessDenied,
    InvalidArgument,
    NotFound,
    PermissionRefused,
    SigvirtError,
)
from sigvirt.hosts import regions
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import RegionsConfig
from sigvirt.sharing.plan import PoolDirs, apply_plan, locked, plan


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
        raise InvalidArgument(f"--role must be one of {', '.join(ROLES)} (got {role!r})")
    check_group(group)
    kept = tuple(g for g in policy.grants if not (g.group == group and g.scope == scope))
    return replace(policy, grants=(*kept, Grant(group, roles[role], scope)))


def without_grant(policy: Policy, group: str, scope: str) -> Policy:
    kept = tuple(g for g in policy.grants if not (g.group == group and g.scope == scope))
    if len(kept) == len(policy.grants):
        where = f"{policy.gallery}/{scope}" if scope else policy.gallery
        raise NotFound(f"group {group} has no share on {where}")
    return replace(policy, grants=kept)


@dataclass(frozen=True)
class Reach:
    """A gallery the caller reaches through one of their groups, and how."""

    gallery: str
    role: Role  # the highest role those groups give anywhere in it
    groups: tuple[str, ...]  # the caller's groups that do
    scopes: tuple[str, ...]  # where: "(gallery)", "D", "D/V"


def shared_with(store: GalleryStore, caller: Caller) -> list[Reach]:
    """Galleries shared with the caller through a Unix group (owner group or a grant), with
    the highest role they give and where."""
    out = []
    for g in store.list_galleries():
        policy = load(store, g.name)
        hits = [x for x in policy.grants if x.group in caller.groups]
        if policy.owner_group and policy.owner_group in caller.groups:
            hits.append(Grant(policy.owner_group, "owner", ""))
        if hits:
            best = max((x.role for x in hits), key=ROLES.index)
            out.append(
                Reach(
                    g.name,
                    best,
                    tuple(sorted({x.group for x in hits})),
                    tuple(sorted({x.scope or "(gallery)" for x in hits})),
                )
            )
    return out


SYNC_HELPER = "sigvirt-access-sync"


def local_pool_dirs(
    config: RegionsConfig, pool_path: Callable[[str, str], Path] | None = None
) -> dict[str, dict[str, Path]]:
    """Each local region's pools and their directories: from regions.yaml, else (a pool
    sigvirt doesn't create) as its host says; a pool nobody can locate is left out."""
    out: dict[str, dict[str, Path]] = {}
    hosts = [h for r in config.regions.values() for h in (r.zones or (r,))]  # zones: each
    for cfg in hosts:
        name = cfg.location  # REGION, or REGION/ZONE (as replicas name theirs)
        if not cfg.is_local:
            continue
        dirs = out.setdefault(name, {})
        for pool in cfg.pools:
            if pool.path is not None:
                dirs[pool.name] = pool.path
            elif pool_path is not None:
                with contextlib.suppress(SigvirtError):
                    dirs[pool.name] = pool_path(name, pool.name)
    return out


def sync(store: GalleryStore, gallery: str, pool_dirs: PoolDirs) -> list[str]:
    """Make the gallery's files say what its access.json says; problems as lines."""
    with locked(store, gallery):
        targets, refused = plan(store, load(store, gallery), pool_dirs)
        return refused + apply_plan(targets)


def sync_files(ctx: Context, gallery: str) -> list[str]:
    """sync(), here if we may (root), else through the root helper that lab hosts allow
    everyone to run with sudo (it only ever applies what owners wrote in access.json, to
    the pools of a regions.yaml only root can have written)."""
    store = ctx.store
    if os.geteuid() == 0:
        dirs = local_pool_dirs(ctx.regions, lambda r, p: ctx.hv(r).pool_path(p))
        return sync(store, gallery, dirs)
    helper = shutil.which(SYNC_HELPER) or str(Path(sys.executable).parent / SYNC_HELPER)
    argv = ["sudo", "-n", helper, "--gallery-root", str(store.root)]
    if ctx.regions.path is not None:
        argv += ["--regions", str(ctx.regions.path)]
    res = ctx.runner.run([*argv, gallery], check=False)
    if res.returncode != 0:
        raise HostAccessDenied(
            f"could not update the file ACLs of gallery {gallery}: "
            f"{(res.stderr.strip().splitlines() or ['sudo failed'])[-1]}",
            hint=f"as root, run tools/setup-host.sh: it adds the sudo rule for {SYNC_HELPER}",
        )
    return [ln for ln in res.stdout.splitlines() if ln.strip()]


def share(
    ctx: Context,
    caller: Caller,
    gallery: str,
    definition: str | None,
    version: str | None,
    group: str,
    role: str | None,
) -> Policy:
    """Add (role given) or remove (role None) a group's share; files follow at once."""
    store = ctx.store
    scope = scope_of(definition, version)
    _exists(store, gallery, definition, version)
    policy = load(store, gallery)
    require(policy, caller, "owner", scope, "share")
    policy = with_grant(policy, group, role, scope) if role else without_grant(policy, group, scope)
    save(store, policy)
    sync_files(ctx, gallery)
    return policy


def _exists(store: GalleryStore, gallery: str, definition: str | None, version: str | None) -> None:
    if version is not None and definition is not None:
        store.get_version(gallery, definition, version)
    elif definition is not None:
        store.get_definition(gallery, definition)
    else:
        store.get_gallery(gallery)


# -- the root helper -------------------------------------------------------------------------
def trusted(path: Path) -> str | None:
    """Why a directory can't be trusted as root's, or None: every component owned by root
    and writable only by root (sticky world-writable dirs like /var/tmp are fine)."""
    for p in [*reversed(path.parents), path]:
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            return f"{p} is a symbolic link"
        if st.st_uid != 0:
            return f"{p} is not owned by root"
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable and not st.st_mode & stat.S_ISVTX:
            return f"{p} is writable by others"
    return None


def made_by_root(gallery: Path) -> str | None:
    """A gallery directory is root's (only root can create one in a trusted root); its
    owners may write in it, which is how they change its sharing."""
    st = os.lstat(gallery)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return f"{gallery} is not a directory"
    if st.st_uid != 0:
        return f"{gallery} is not owned by root"
    return None


def sync_as_root_helper(root: Path, gallery: str, regions_file: Path | None) -> list[str]:
    """What `sudo sigvirt-access-sync` does for any user: sync one gallery of a root that
    only root can have prepared, setting replica ACLs only in the pools of a regions.yaml
    only root can have written (the system's, unless the caller names another such file);
    PermissionRefused says why a root, gallery or regions file isn't trusted."""
    names.gallery_name(gallery)
    root = root.resolve()
    problem = trusted(root) or made_by_root(root / gallery)
    if regions_file is None:
        regions_file = (
            regions.SYSTEM_REGIONS if regions.SYSTEM_REGIONS.exists() else regions.SHIPPED_REGIONS
        )
    regions_file = regions_file.resolve()
    problem = problem or trusted(regions_file.parent) or _root_file(regions_file)
    if problem:
        raise PermissionRefused(f"refused: {problem}")
    config = regions.load(regions_file, env={})

    def pool_path(region: str, pool: str) -> Path:
        with Hypervisor.open(config.region(region).uri) as hv:
            return hv.pool_path(pool)

    return sync(GalleryStore(root), gallery, local_pool_dirs(config, pool_path))


def _root_file(path: Path) -> str | None:
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is not owned and written by root alone"
    return None
