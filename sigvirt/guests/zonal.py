"""Availability zones of scale sets: a zoned region's zones are hosts of their own, and a
scale set spreads its instances over the zones it was created with (az's `--zones`),
balanced, each instance on a replica in its own zone. libvirt stays the record of the
instances of every zone that answers; the model keeps which zone each instance went to, so a
zone that doesn't answer is still counted (catalog/fleetmodel.py `instance_zones`)."""

from __future__ import annotations

import contextlib
from dataclasses import replace

from sigvirt.catalog import names
from sigvirt.catalog.fleet import FleetStore, ScaleSetModel
from sigvirt.catalog.records import ImageVersion
from sigvirt.context import Context
from sigvirt.errors import (
    HostAccessDenied,
    InvalidArgument,
    NotFound,
    PermissionRefused,
    RegionUnavailable,
)
from sigvirt.guests.inventory import Vm
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import location
from sigvirt.versions import targets


def _model(ctx: Context, name: str) -> ScaleSetModel | None:
    try:
        return FleetStore(ctx.store.root).get(name)
    except NotFound:
        return None


def check(
    ctx: Context, region: str, zones: list[str] | None, rec: ImageVersion | None = None
) -> tuple[str, ...]:
    """`--zones 1 2 3` checked against the region: every zone must be one of its zones, none
    twice, and hold a completed replica of `rec`. A zoned region without --zones spreads
    over all its zones."""
    have = ctx.regions.region(region).zone_names
    if zones and not have:
        given = names.shorten(" ".join(zones))
        raise InvalidArgument(f"--zones {given}: region {region} has no zones")
    zones = zones or list(have)
    for z in zones:
        if z not in have:
            raise InvalidArgument(
                f"--zones {names.shorten(z)}: region {region} has zones {', '.join(have)}"
            )
    if len(set(zones)) != len(zones):
        raise InvalidArgument(f"--zones {' '.join(zones)}: a zone is given twice")
    for z in zones:
        if rec is not None and not rec.completed_replicas(location(region, z)):
            raise NotFound(
                f"image version {rec.ref} has no completed replica in zone {z} of region {region}",
                hint=targets.update_command(rec, region, len(have)),
            )
    return tuple(zones)


def spread(zones: tuple[str, ...], load: dict[str, int], indices: list[int]) -> dict[int, str]:
    """Each new instance's zone, balanced as Azure spreads a scale set: the zone with the
    fewest instances next (ties: the zone listed first). `load`: instances per zone now."""
    counts = {z: load.get(z, 0) for z in zones}
    out = {}
    for i in indices:
        zone = min(counts, key=lambda z: (counts[z], zones.index(z)))
        counts[zone] += 1
        out[i] = zone
    return out


def hosts(
    ctx: Context, region: str, zones: tuple[str, ...]
) -> tuple[dict[str, Hypervisor], dict[str, str]]:
    """The zones that answer (their hosts) and those that don't (with why). A region without
    zones is one host, "": its RegionUnavailable is the command's failure, as ever."""
    up: dict[str, Hypervisor] = {}
    down: dict[str, str] = {}
    for z in zones or ("",):
        if not z:
            up[z] = ctx.hv(region)
            continue
        try:
            up[z] = ctx.hv(location(region, z))
        except RegionUnavailable as err:
            down[z] = err.message
    return up, down


def unanswered(ctx: Context, model: ScaleSetModel) -> list[str]:
    """A line for each zone of the scale set that doesn't answer: its instances can't be
    listed (the model says how many it holds)."""
    _up, down = hosts(ctx, model.region, model.zones) if model.zones else ({}, {})
    out = []
    for zone, why in down.items():
        held = sum(z == zone for z in model.instance_zones.values())
        out.append(f"zone {zone} of region {model.region} did not answer ({why}): its "
                   f"{held} instance(s) are not listed")  # fmt: skip
    return out


def record(ctx: Context, name: str, made: list[Vm]) -> None:
    """Which zone each new instance went to, in the model (once it is made: an instance that
    failed is no instance to count)."""
    zone_of = {v.instance: v.zone for v in made if v.zone and v.instance is not None}
    if not zone_of or _model(ctx, name) is None:
        return

    def add(m: ScaleSetModel) -> ScaleSetModel:
        return replace(m, instance_zones={**m.instance_zones,
                                          **{str(i): z for i, z in zone_of.items()}})  # fmt: skip

    with contextlib.suppress(HostAccessDenied, PermissionRefused):
        FleetStore(ctx.store.root).update(name, add)


def forget(ctx: Context, vm: Vm) -> None:
    if not vm.zone or vm.instance is None:
        return
    model = _model(ctx, vm.scale_set)
    if model is None or str(vm.instance) not in model.instance_zones:
        return

    def drop(m: ScaleSetModel) -> ScaleSetModel:
        left = {k: z for k, z in m.instance_zones.items() if k != str(vm.instance)}
        return replace(m, instance_zones=left)

    with contextlib.suppress(HostAccessDenied, PermissionRefused, NotFound):
        FleetStore(ctx.store.root).update(vm.scale_set, drop)


def scale_out(
    model: ScaleSetModel, found: list[Vm], capacity: int, up: list[str], down: dict[str, str]
) -> tuple[list[int], dict[int, str]] | None:
    """The new instances' indexes and zones when `capacity` asks for more: the zones that
    answer (`up`) take them, balanced among them; the instances of zones that don't answer
    count as the model placed them. None: there are enough already."""
    seen = {v.instance for v in found if v.instance is not None}
    hidden = [int(i) for i, z in model.instance_zones.items() if z in down and int(i) not in seen]
    if capacity <= len(found) + len(hidden):
        return None
    if not up:
        why = "; ".join(f"zone {z}: {m}" for z, m in down.items())
        raise RegionUnavailable(f"no zone of region {model.region} answers ({why})")
    top = max([*seen, *hidden], default=-1)
    indices = list(range(top + 1, top + 1 + capacity - len(found) - len(hidden)))
    load = {z: sum(v.zone == z for v in found) for z in up}
    return indices, spread(tuple(z for z in model.zones if z in up), load, indices)
