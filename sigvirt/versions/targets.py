"""Where a version's replicas go: volume names, `--target-regions` as az reads them, and
the plan of what to add and remove, computed as data before anything is copied or deleted."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sigvirt.catalog.names import shorten
from sigvirt.catalog.plans import Action
from sigvirt.catalog.records import ImageVersion, Replica, ReplicaState
from sigvirt.context import Context
from sigvirt.errors import HasDependents, InvalidArgument, SigvirtError
from sigvirt.hosts import regioncheck
from sigvirt.hosts.regions import (
    STORAGE_TYPES,
    PoolConfig,
    RegionConfig,
    RegionsConfig,
    location,
)
from sigvirt.versions import dependents

MAX_REPLICAS_PER_REGION = 100


# -- naming and targets -----------------------------------------------------------------------
def volume_name(rec: ImageVersion, region: str, index: int) -> str:
    return f"{rec.gallery}-{rec.definition}-{rec.name}-{region}-{index}.qcow2"


def partial_name(volume: str) -> str:
    return f".{volume}.partial"


def replica_index(rec: ImageVersion, replica: Replica) -> int:
    return int(replica.volume.rsplit("-", 1)[1].split(".")[0])


def normalize_region(name: str, config: RegionsConfig) -> str:
    """Azure display names work too: 'West Central US' finds region 'westcentralus'."""
    return regioncheck.resolve(config, name).name


@dataclass(frozen=True)
class TargetItem:
    """One `--target-regions` value as az reads it: name[=count[=storage type]]."""

    text: str
    region: str
    count: int | None
    storage_type: str | None


def parse_items(items: list[str] | None, config: RegionsConfig) -> list[TargetItem]:
    """Every --target-regions value, checked: a known region (Azure display names work), a
    count of 1..100, a storage type one of the region's pools is labelled with; a region
    named twice is refused (az would take the last, silently)."""
    out: list[TargetItem] = []
    seen: dict[str, str] = {}
    for item in items or []:
        parts = item.split("=")
        if len(parts) > 3:
            raise InvalidArgument(
                f"--target-regions {shorten(item)}: expected name, name=count or "
                "name=count=storage_type"
            )
        region = normalize_region(parts[0].strip(), config)
        count = None
        if len(parts) > 1:
            text = parts[1].strip()
            if not text.isdigit():
                raise InvalidArgument(
                    f"--target-regions {shorten(item)}: the count after '=' must be a number"
                )
            count = int(text)
            if not 1 <= count <= MAX_REPLICAS_PER_REGION:
                raise InvalidArgument(
                    f"--target-regions {shorten(item)}: replica count must be "
                    f"1..{MAX_REPLICAS_PER_REGION}"
                )
        storage_type = None
        if len(parts) == 3:
            storage_type = _storage_type(item, parts[2].strip(), config.region(region))
        if region in seen:
            raise InvalidArgument(
                f"--target-regions: region {region} is given twice "
                f"({shorten(seen[region])} and {shorten(item)})"
            )
        seen[region] = item
        out.append(TargetItem(item, region, count, storage_type))
    return out


DEFAULT_STORAGE_TYPE = "Standard_LRS"  # az's default; an unlabelled pool is one


def _canonical(what: str, wanted: str) -> str:
    known = [t for t in STORAGE_TYPES if t.lower() == wanted.lower()]
    if not known:
        raise InvalidArgument(
            f"{what}: storage type {shorten(wanted)} is not one of {', '.join(STORAGE_TYPES)}"
        )
    return known[0]


def _require_pool(what: str, cfg: RegionConfig, kind: str) -> None:
    for host in cfg.zones or (cfg,):  # every zone of a zoned region takes its share
        have = sorted({pool_kind(p) for p in host.pools})
        if kind not in have:
            raise InvalidArgument(
                f"{what}: region {host.location} has no pool of storage type {kind} (its "
                f"pools' types: {', '.join(have)}; label one with storage_type in regions.yaml)"
            )


def _storage_type(item: str, wanted: str, cfg: RegionConfig) -> str:
    kind = _canonical(f"--target-regions {shorten(item)}", wanted)
    _require_pool(f"--target-regions {shorten(item)}", cfg, kind)
    return kind


def pool_kind(pool: PoolConfig) -> str:
    return pool.storage_type or DEFAULT_STORAGE_TYPE


def resolve_types(
    items: list[str] | None,
    wanted: dict[str, int],
    config: RegionsConfig,
    default: str | None = None,
    current: dict[str, str] | None = None,
) -> dict[str, str]:
    """The storage type of every target region: the one its --target-regions item names,
    else the one it has (an update), else --storage-account-type, else Standard_LRS. Each
    region must have a pool of its type: replicas never land on another kind silently."""
    kind = _canonical("--storage-account-type", default) if default else DEFAULT_STORAGE_TYPE
    asked = storage_types(items, config)
    out: dict[str, str] = {}
    for region in wanted:
        out[region] = asked.get(region) or (current or {}).get(region) or kind
        if region not in asked:
            what = "--storage-account-type" if default else f"--target-regions {region}"
            _require_pool(what, config.region(region), out[region])
    return out


def parse_targets(
    items: list[str] | None,
    replica_count: int | None,
    source_region: str,
    config: RegionsConfig,
    current: dict[str, int] | None = None,
) -> dict[str, int]:
    """`--target-regions "local" "east=2"` plus `--replica-count N` as `az sig` reads them:
    N is the count of regions given without one (the version's own replica count when an
    update gives none); the source region is always a target."""
    default = 1 if replica_count is None else replica_count
    if not 1 <= default <= MAX_REPLICAS_PER_REGION:
        raise InvalidArgument(
            f"--replica-count must be 1..{MAX_REPLICAS_PER_REGION} (got {default})"
        )
    targets: dict[str, int] = {}
    if items is None and current:
        targets = dict(current)
        if replica_count is not None:
            targets = {r: replica_count for r in targets}
    for t in parse_items(items, config):
        targets[t.region] = default if t.count is None else t.count
    source_region = normalize_region(source_region, config)
    targets.setdefault(source_region, default)
    return targets


def storage_types(items: list[str] | None, config: RegionsConfig) -> dict[str, str]:
    """Region -> the storage type its replicas must be on, for regions given one."""
    return {t.region: t.storage_type for t in parse_items(items, config) if t.storage_type}


def pools_for(cfg: RegionConfig, storage_type: str | None) -> tuple[PoolConfig, ...]:
    """The pools of a region that take replicas of `storage_type` (Standard_LRS: unlabelled
    ones too). None of them (regions.yaml changed since) is one clear line, not a guess."""
    kind = storage_type or DEFAULT_STORAGE_TYPE
    pools = tuple(p for p in cfg.pools if pool_kind(p) == kind)
    if not pools:
        _require_pool(f"region {cfg.name}", cfg, kind)
    return pools


def update_command(rec: ImageVersion, region: str, count: int) -> str:
    """The `image-version update` that sets `region` to `count` replicas and keeps every
    other target region as it is (`--target-regions` replaces the whole list: a hint that
    named only one region would delete the others' replicas)."""
    wanted = {**rec.target_regions, region: count}
    listing = " ".join(f"{r}={n}" for r, n in wanted.items())
    return (
        f"sigvirt sig image-version update --gallery-name {rec.gallery} "
        f"--gallery-image-definition {rec.definition} --gallery-image-version {rec.name} "
        f"--target-regions {listing}"
    )


# -- planning ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    targets: dict[str, int]
    add: tuple[Replica, ...]
    remove: tuple[Replica, ...]
    blocked: tuple[dependents.Dependent, ...] = ()  # why a wanted removal can't happen

    @property
    def empty(self) -> bool:
        return not self.add and not self.remove


def plan(
    rec: ImageVersion,
    targets: dict[str, int],
    config: RegionsConfig,
    deps: dict[str, list[dependents.Dependent]],
    pool_paths: Callable[[str, str], Path | None] | None = None,
    suspect: frozenset[tuple[str, str]] = frozenset(),
) -> Plan:
    """What to add and remove so each target region holds its count of replicas.

    New replicas take the lowest free indexes and go round-robin over the region's pools
    (index i lands in pool i mod n). In a zoned region each new one goes to the zone that
    holds fewest of the version's replicas (ties: the zone listed first), so 3 replicas in 3
    zones are one per zone, and its pools are that zone's.
    Removals prefer replicas that aren't completed (a corrupt one first of all), then
    completed ones whose file changed since it was verified
    (`suspect`) or that were never verified, then the highest index: a shrink keeps the
    replicas known good. A replica that a clone depends on is never chosen, and if too few
    are free the plan lists the dependents that block it. `pool_paths` gives a pool's
    directory, or None while its host is unreachable (the path is then filled in when the
    copy starts).
    """
    add: list[Replica] = []
    remove: list[Replica] = []
    blocked: list[dependents.Dependent] = []
    by_region: dict[str, list[Replica]] = {}
    for r in rec.replicas:
        if r.state != ReplicaState.DELETING:  # on its way out already (an interrupted removal)
            by_region.setdefault(r.region, []).append(r)
    for region in [*targets, *(r for r in by_region if r not in targets)]:
        have = by_region.get(region, [])
        want = targets.get(region, 0)
        if len(have) < want:
            cfg = config.region(region)
            # Indexes of replicas still being deleted stay taken: a volume name is a key.
            used = {replica_index(rec, r) for r in rec.replicas if r.region == region}
            free = (i for i in range(MAX_REPLICAS_PER_REGION * 2) if i not in used)
            load = {z: sum(r.zone == z for r in have) for z in cfg.zone_names}
            for _ in range(want - len(have)):
                i = next(free)
                host = cfg
                if load:
                    zone = min(load, key=lambda z: (load[z], cfg.zone_names.index(z)))
                    load[zone] += 1
                    host = config.region(location(region, zone))
                pools = pools_for(host, rec.storage_types.get(region))
                pool = pools[i % len(pools)]
                vol = volume_name(rec, region, i)
                directory = pool_paths(host.location, pool.name) if pool_paths else None
                path = str(directory / vol) if directory is not None else ""
                add.append(Replica(region, pool.name, vol, path, zone=host.zone))
        elif len(have) > want:
            excess = len(have) - want
            order = sorted(
                have,
                key=lambda r: (
                    r.state == ReplicaState.COMPLETED,
                    r.state != ReplicaState.CORRUPT,
                    r.key not in suspect and bool(r.verified),
                    -replica_index(rec, r),
                ),
            )
            for r in order:
                if excess == 0:
                    break
                if deps.get(r.path):
                    continue
                remove.append(r)
                excess -= 1
            if excess:
                for r in have:
                    blocked.extend(deps.get(r.path, []))
    return Plan(targets, tuple(add), tuple(remove), tuple(blocked))


# -- the plan as actions (what --dry-run prints, and what a real run reports) ------------------
UNFINISHED = (
    ReplicaState.PENDING, ReplicaState.FAILED, ReplicaState.COPYING, ReplicaState.VERIFYING,
)  # fmt: skip


def copy_action(r: Replica, size: int = 0) -> Action:
    return Action("copy", "replica", r.volume, r.location, r.pool, r.path, size)


def import_action(r: Replica, size: int = 0, source: str = "") -> Action:
    return Action("import", "replica", r.volume, r.location, r.pool, r.path, size, source)


def removal_action(r: Replica, size: int = 0) -> Action:
    state = str(r.state)
    return Action("delete-volume", "replica", r.volume, r.location, r.pool, r.path, size, state)


def replication_actions(
    rec: ImageVersion, p: Plan, path_of: Callable[[str, str], Path | None] | None = None
) -> list[Action]:
    """What applying `p` to `rec` and running replication does: removals marked `deleting`
    (by an earlier, killed run, or by this plan) go, then every new or unfinished replica is
    copied. `path_of` fills in the path of a replica planned while its host was down."""
    gone = {r.key for r in p.remove}
    size = rec.allocated_size
    out = [removal_action(r, size) for r in rec.replicas if r.state == ReplicaState.DELETING]
    out += [removal_action(r, size) for r in p.remove]
    for r in [*(r for r in rec.replicas if r.state in UNFINISHED and r.key not in gone), *p.add]:
        if not r.path and path_of is not None:
            directory = path_of(r.location, r.pool)
            r = dataclasses.replace(r, path=str(directory / r.volume) if directory else "")
        out.append(copy_action(r, size))
    return out


def blocked_error(rec: ImageVersion, blocked: tuple[dependents.Dependent, ...]) -> HasDependents:
    listing = ", ".join(f"{d.kind} {d.name} (on {Path(d.replica).name})" for d in blocked)
    return HasDependents(
        f"image version {rec.ref}: can't remove replicas that clones depend on: {listing}"
    )


def find_dependents(ctx: Context, replicas: list[Replica]) -> dict[str, list[dependents.Dependent]]:
    """Dependents per replica path, read from each host's libvirt (each zone's)."""
    out: dict[str, list[dependents.Dependent]] = {}
    regions = {r.location for r in replicas if r.state == ReplicaState.COMPLETED}
    for region in sorted(regions):
        paths = [
            r.path for r in replicas if r.location == region and r.state == ReplicaState.COMPLETED
        ]
        for dep in dependents.find(ctx.hv(region), paths):
            out.setdefault(dep.replica, []).append(dep)
    return out


def dependents_for(
    ctx: Context, rec: ImageVersion, targets: dict[str, int]
) -> dict[str, list[dependents.Dependent]]:
    """Dependents of the replicas that `targets` may remove: only regions whose count goes
    down are asked, so a host that is down blocks only reductions there, not additions."""
    live = [r for r in rec.replicas if r.state != ReplicaState.DELETING]
    shrinking = {
        region
        for region in {r.region for r in live}
        if sum(r.region == region for r in live) > targets.get(region, 0)
    }
    return find_dependents(ctx, [r for r in live if r.region in shrinking])


def pool_path_lookup(ctx: Context) -> Callable[[str, str], Path | None]:
    """A pool's directory from its host; from regions.yaml (or None) if the host is down,
    so an unreachable region still gets its replicas recorded (and failed, with why)."""

    def lookup(region: str, pool: str) -> Path | None:
        try:
            return ctx.hv(region).pool_path(pool)
        except SigvirtError:
            configured = {p.name: p.path for p in ctx.regions.region(region).pools}
            return configured.get(pool)

    return lookup
