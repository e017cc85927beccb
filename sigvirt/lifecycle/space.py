"""Where the disk space went: per version and region, the replicas' bytes, the bytes of the
clones that depend on them, what deleting the version would free; per pool, its capacity and
free space. Every number comes from the files as the hosts see them now (libvirt's volume
and pool info), never from the records: a record says which files to look at, nothing more.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sigvirt.catalog import names
from sigvirt.catalog.records import ImageVersion, Replica
from sigvirt.context import Context
from sigvirt.errors import InvalidName, NotFound, SigvirtError
from sigvirt.lifecycle.scan import UNREACHABLE, RegionScan, scan_region
from sigvirt.versions import dependents, scrub, targets


@dataclass(frozen=True)
class ReplicaSpace:
    volume: str
    pool: str
    path: str
    state: str  # the replica's state in its record
    present: bool | None  # its file is there (None: its region didn't answer)
    allocated: int | None  # bytes on disk (0 when absent, None when unknown)
    file_size: int | None  # the file's length
    virtual_size: int | None  # what a guest sees


@dataclass(frozen=True)
class CloneSpace:
    """A file whose backing chain reaches a replica: an overlay of a VM, or any volume."""

    path: str
    volume: str  # pool/name, "" for a file in no pool
    replica: str  # the replica volume it depends on
    domains: tuple[str, ...]  # domains whose disk it is
    allocated: int | None  # None: not a volume libvirt can size


@dataclass(frozen=True)
class VersionSpace:
    version: str  # G/D/V
    region: str
    reachable: bool
    detail: str  # why not reachable
    virtual_size: int | None  # from a replica's file (None: none could be read)
    replicas: tuple[ReplicaSpace, ...]
    clones: tuple[CloneSpace, ...]
    state: str = "succeeded"  # the version's (soft-deleted ones hold bytes in the bin)

    @property
    def soft_deleted(self) -> int:
        """Bytes of its replicas here while it is in the recycle bin."""
        return (self.replica_bytes or 0) if self.state == "soft-deleted" else 0

    @property
    def replica_bytes(self) -> int | None:
        if not self.reachable:
            return None
        return sum(r.allocated or 0 for r in self.replicas)

    @property
    def clone_bytes(self) -> int | None:
        if not self.reachable:
            return None
        return sum(c.allocated or 0 for c in self.clones)

    @property
    def freed_by_delete(self) -> int | None:
        """Deleting the version removes its replicas (while no clone depends on them)."""
        return self.replica_bytes


@dataclass(frozen=True)
class PoolSpace:
    region: str
    pool: str
    status: str  # ok | inactive | missing | unreachable
    path: str
    capacity: int | None
    allocation: int | None
    available: int | None
    detail: str = ""


@dataclass(frozen=True)
class SpaceReport:
    versions: tuple[VersionSpace, ...]
    pools: tuple[PoolSpace, ...]


# -- scope --------------------------------------------------------------------------------------
def parse_scope(text: str | None) -> tuple[str | None, str | None, str | None]:
    """`G`, `G/D` or `G/D/V` (an exact version: the space of `latest` is no one thing)."""
    if not text:
        return None, None, None
    parts = text.split("/")
    if len(parts) > 3 or not all(parts):
        raise InvalidName(
            f"{names.shorten(text)} is not GALLERY, GALLERY/DEFINITION or GALLERY/DEFINITION/"
            "VERSION"
        )
    g = names.gallery_name(parts[0])
    d = names.definition_name(parts[1]) if len(parts) > 1 else None
    v = str(names.Version.parse(parts[2])) if len(parts) > 2 else None
    return g, d, v


def _regions_of(ctx: Context, rec: ImageVersion) -> list[str]:
    """The hosts (locations: a region, or each zone of a zoned one) the version is meant
    for or has replicas on."""
    meant = [where for t in rec.target_regions for where in _hosts(ctx, t)]
    return list(dict.fromkeys([*meant, *(r.location for r in rec.replicas)]))


def _hosts(ctx: Context, region: str | None = None) -> list[str]:
    try:
        return ctx.regions.locations(region)
    except NotFound:  # a record naming a region regions.yaml dropped
        return [region] if region else []


# -- the report ---------------------------------------------------------------------------------
def report(ctx: Context, scope: str | None = None, region: str | None = None) -> SpaceReport:
    """The space report of the versions in scope (every gallery the caller sees, by default)
    and of the pools of their regions (one region with `region`)."""
    g, d, v = parse_scope(scope)
    only = targets.normalize_region(region, ctx.regions) if region else None
    if g is not None:
        ctx.store.get_gallery(g)  # NotFound for a gallery that isn't there
    recs = list(scrub.versions_in(ctx, g, d, v, hidden=True))
    wanted: dict[str, list[str]] = {}  # region -> pools to read
    for name in _hosts(ctx, only):  # each zone of a zoned region is a host of its own
        wanted[name] = [p.name for p in ctx.regions.region(name).pools]
    for rec in recs:
        for r in rec.replicas:
            if only is None or r.region == only:
                wanted.setdefault(r.location, []).append(r.pool)
    scans = {name: _scan(ctx, name, pools) for name, pools in wanted.items()}
    clones = {name: _clones(scan, recs) for name, scan in scans.items()}
    rows = [
        _version_space(rec, name, scans[name], clones[name])
        for rec in recs
        for name in _regions_of(ctx, rec)
        if name in scans
    ]
    pools = [row for name in scans for row in _pool_space(ctx, scans[name], wanted[name])]
    return SpaceReport(tuple(rows), tuple(pools))


def _scan(ctx: Context, region: str, pools: list[str]) -> RegionScan:
    if region.partition("/")[0] not in ctx.regions.regions:  # a region regions.yaml dropped
        return RegionScan(region, error=f"region {region} is not in regions.yaml")
    return scan_region(ctx, region, pools)


def _version_space(
    rec: ImageVersion, region: str, scan: RegionScan, clones: dict[str, list[CloneSpace]]
) -> VersionSpace:
    mine = [r for r in rec.replicas if r.location == region]
    if not scan.reachable:
        unknown = tuple(
            ReplicaSpace(r.volume, r.pool, r.path, r.state.value, None, None, None, None)
            for r in mine
        )
        return VersionSpace(rec.ref, region, False, scan.error, None, unknown, (), rec.state.value)
    reps = tuple(_replica_space(scan, r) for r in mine)
    sizes = [r.virtual_size for r in reps if r.present and r.virtual_size is not None]
    held = tuple(c for r in mine for c in clones.get(r.path, []))
    detail = "; ".join(dict.fromkeys(scan.pool_errors[r.pool] for r in mine
                                     if r.pool in scan.pool_errors))  # fmt: skip
    size = max(sizes) if sizes else None
    return VersionSpace(rec.ref, region, True, detail, size, reps, held, rec.state.value)


def _replica_space(scan: RegionScan, r: Replica) -> ReplicaSpace:
    if r.pool not in scan.volumes:  # its pool could not be read: unknown, not absent
        return ReplicaSpace(r.volume, r.pool, r.path, r.state.value, None, None, None, None)
    facts = scan.volumes[r.pool].get(r.volume)
    if facts is None:
        return ReplicaSpace(r.volume, r.pool, r.path, r.state.value, False, 0, 0, 0)
    return ReplicaSpace(
        r.volume, r.pool, str(facts.path), r.state.value, True, facts.allocation,
        facts.physical, facts.capacity,
    )  # fmt: skip


def _clones(scan: RegionScan, recs: Iterable[ImageVersion]) -> dict[str, list[CloneSpace]]:
    """Per replica path, the files that depend on it (read from libvirt: volumes backed by
    it, domains whose disk chains reach it), each with its allocation."""
    if not scan.reachable or scan.hv is None:
        return {}
    hv = scan.hv
    paths = {r.path: r.volume for rec in recs for r in rec.replicas if r.location == scan.region}
    try:
        found = dependents.find(hv, paths)
    except UNREACHABLE:
        return {}
    files: dict[tuple[str, str], tuple[str, set[str]]] = {}  # (replica, file) -> volume, domains
    for dep in found:
        if dep.kind == "volume":
            pool, _, name = dep.name.partition("/")
            facts = scan.volumes.get(pool, {}).get(name)
            path = str(facts.path) if facts else _volume_path(scan, pool, name)
            if path:
                files.setdefault((dep.replica, path), (dep.name, set()))
        else:
            for path in _disks_on(scan, dep.name, dep.replica):
                vol, doms = files.get((dep.replica, path), ("", set()))
                files[(dep.replica, path)] = (vol, {*doms, dep.name})
    out: dict[str, list[CloneSpace]] = {}
    for (replica, path), (vol, doms) in sorted(files.items()):
        facts = scan.by_path(path)
        if facts is not None and not vol:
            vol = f"{facts.pool}/{facts.name}"
        clone = CloneSpace(
            path, vol, paths.get(replica, Path(replica).name), tuple(sorted(doms)),
            facts.allocation if facts else None,
        )  # fmt: skip
        out.setdefault(replica, []).append(clone)
    return out


def _volume_path(scan: RegionScan, pool: str, name: str) -> str:
    assert scan.hv is not None
    try:
        return str(scan.hv.volume_path(pool, name))
    except SigvirtError:
        return ""


def _disks_on(scan: RegionScan, domain: str, replica: str) -> Iterator[str]:
    """The disks of `domain` whose backing chain reaches `replica`: the files the domain
    writes (its overlays)."""
    assert scan.hv is not None
    try:
        dom = scan.hv.domain(domain)
        xmls = [dom.xml(inactive=True)]
        if dom.is_active():
            xmls.append(dom.xml())
    except NotFound:
        return  # undefined while we looked
    seen: set[str] = set()
    for xml in xmls:
        for disk in ET.fromstring(xml).findall("./devices/disk"):
            chain = []
            node: ET.Element | None = disk
            while node is not None:
                src = node.find("source")
                if src is not None and src.get("file"):
                    chain.append(str(Path(src.get("file", ""))))
                node = node.find("backingStore")
            if chain and replica in chain[1:] and chain[0] not in seen:
                seen.add(chain[0])
                yield chain[0]


def _pool_space(ctx: Context, scan: RegionScan, pools: list[str]) -> Iterator[PoolSpace]:
    for pool in dict.fromkeys(pools):
        if not scan.reachable:
            yield PoolSpace(scan.region, pool, "unreachable", "", None, None, None, scan.error)
        elif pool in scan.pools:
            info = scan.pools[pool]
            yield PoolSpace(
                scan.region, pool, "ok", str(info.path), info.capacity, info.allocation,
                info.available,
            )  # fmt: skip
        else:
            why = scan.pool_errors.get(pool, "")
            status = "inactive" if "not active" in why else "missing"
            path = ""
            with contextlib.suppress(NotFound):
                configured = {p.name: p.path for p in ctx.regions.region(scan.region).pools}
                path = str(configured.get(pool) or "")
            yield PoolSpace(scan.region, pool, status, path, None, None, None, why)
