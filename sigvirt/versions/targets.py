"""Where a version's replicas go: volume names, `--target-regions` as az reads them, and
the plan of what to add and remove, computed as data before anything is copied or deleted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sigvirt.catalog.records import ImageVersion, Replica, ReplicaState
from sigvirt.context import Context
from sigvirt.errors import HasDependents, InvalidArgument, SigvirtError
from sigvirt.hosts import regioncheck
from sigvirt.hosts.regions import RegionsConfig
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


def parse_targets(
    items: list[str] | None,
    replica_count: int | None,
    source_region: str,
    config: RegionsConfig,
    current: dict[str, int] | None = None,
) -> dict[str, int]:
    """`--target-regions "local" "east=2"` plus `--replica-count N` as `az sig` reads them:
    N is the default for regions given without a count; the source region is always a target."""
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
    for item in items or []:
        name, sep, count_text = item.rpartition("=") if "=" in item else (item, "", "")
        if not sep:
            name = item
        region = normalize_region(name.strip(), config)
        if sep:
            if not count_text.strip().isdigit():
                raise InvalidArgument(
                    f"--target-regions {item!r}: the count after '=' must be a number"
                )
            count = int(count_text)
            if not 1 <= count <= MAX_REPLICAS_PER_REGION:
                raise InvalidArgument(
                    f"--target-regions {item!r}: replica count must be 1..{MAX_REPLICAS_PER_REGION}"
                )
        else:
            count = default
        targets[region] = count
    source_region = normalize_region(source_region, config)
    targets.setdefault(source_region, default)
    return targets


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
    (index i lands in pool i mod n). Removals prefer replicas that aren't completed (a
    corrupt one first of all), then completed ones whose file changed since it was verified
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
            for _ in range(want - len(have)):
                i = next(free)
                pool = cfg.pools[i % len(cfg.pools)]
                vol = volume_name(rec, region, i)
                directory = pool_paths(region, pool.name) if pool_paths else None
                path = str(directory / vol) if directory is not None else ""
                add.append(Replica(region, pool.name, vol, path))
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


def blocked_error(rec: ImageVersion, blocked: tuple[dependents.Dependent, ...]) -> HasDependents:
    listing = ", ".join(f"{d.kind} {d.name} (on {Path(d.replica).name})" for d in blocked)
    return HasDependents(
        f"image version {rec.ref}: can't remove replicas that clones depend on: {listing}"
    )


def find_dependents(ctx: Context, replicas: list[Replica]) -> dict[str, list[dependents.Dependent]]:
    """Dependents per replica path, read from each region's libvirt."""
    out: dict[str, list[dependents.Dependent]] = {}
    regions = {r.region for r in replicas if r.state == ReplicaState.COMPLETED}
    for region in sorted(regions):
        paths = [
            r.path for r in replicas if r.region == region and r.state == ReplicaState.COMPLETED
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
