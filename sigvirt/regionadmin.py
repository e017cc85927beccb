"""Regions from the CLI: `region add|update|remove` edit regions.yaml (hosts/regionfile keeps
the author's comments and layout), with what a region holds checked first.

Every change is a plan before it is a write: the new region is built from the flags as a
small YAML document read by the one parser (so a flag gets the message its key would get in
the file), the whole file is re-read as sigvirt will read it, and `--dry-run` shows the
resulting diff. A region (or a pool) is removed only while nothing lives there: no replica
of any version, no clone of this installation (asked of the region's host: one that doesn't
answer can't be checked, and is removed only with --force).
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from sigvirt.catalog.store import Damaged
from sigvirt.context import Context
from sigvirt.errors import ConfigError, HasDependents, InvalidArgument, RegionUnavailable
from sigvirt.hosts import regionfile, regions
from sigvirt.hosts.regionfile import Edit
from sigvirt.hosts.regions import RegionConfig, RegionsConfig


@dataclass(frozen=True)
class Occupant:
    kind: str  # "replica" | "clone" | "unreadable record"
    name: str  # G/D/V, a domain, a record path
    pool: str = ""


@dataclass(frozen=True)
class RegionChange:
    action: str  # add | update | remove
    region: str
    edit: Edit

    @property
    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                self.edit.before.splitlines(keepends=True),
                self.edit.after.splitlines(keepends=True),
                f"{self.edit.path} (before)",
                f"{self.edit.path} (after)",
            )
        )


def _editable(config: RegionsConfig) -> None:
    if config.path is None or config.path == regions.SHIPPED_REGIONS:
        raise ConfigError(
            "no regions.yaml of this host to edit (sigvirt is using the default it ships)",
            hint="sigvirt region init  (or point $SIGVIRT_REGIONS at your file)",
        )


def region_from(name: str, doc: Mapping[str, Any]) -> RegionConfig:
    """A region from its settings as regions.yaml would hold them, checked by the parser."""
    text = yaml.safe_dump({"regions": {name: dict(doc)}}, sort_keys=False)
    return regions.parse(text, source="the command line").region(name)


def pool_doc(text: str) -> dict[str, str] | str:
    """`--pool NAME`, `NAME=PATH` or `NAME=PATH=STORAGE_TYPE` as regions.yaml writes a pool."""
    parts = text.split("=")
    if len(parts) > 3 or not parts[0]:
        raise InvalidArgument(
            f"--pool {text[:100]!r}: expected NAME, NAME=PATH or NAME=PATH=STORAGE_TYPE"
        )
    if len(parts) == 1:
        return parts[0]
    out = {"name": parts[0], "path": parts[1]}
    if len(parts) == 3:
        out["storage_type"] = parts[2]
    return out


def zones_doc(items: list[str]) -> dict[str, dict[str, str]]:
    """`--zone NAME=URI …` as regions.yaml writes a region's zones."""
    out: dict[str, dict[str, str]] = {}
    for text in items:
        zone, sep, uri = text.partition("=")
        if not sep or not zone or not uri:
            raise InvalidArgument(f"--zone {text[:100]!r}: expected NAME=URI (e.g. 1=qemu+ssh://…)")
        if zone in out:
            raise InvalidArgument(f"--zone {zone[:100]!r} is given twice")
        out[zone] = {"uri": uri}
    return out


def add(config: RegionsConfig, name: str, doc: Mapping[str, Any]) -> RegionChange:
    """Plan adding a region (nothing is written: apply() does)."""
    _editable(config)
    if name in config.regions:
        raise ConfigError(f"region {name} exists already", hint=f"sigvirt region update {name} …")
    region = region_from(name, doc)
    assert config.path is not None
    return RegionChange(
        "add", name, regionfile.plan(config.path, lambda t: regionfile.add_region(t, region))
    )


def update(
    ctx: Context, config: RegionsConfig, name: str, changes: Mapping[str, Any],
    remove_pools: tuple[str, ...] = (), add_pools: tuple[str, ...] = (), *, force: bool = False,
) -> RegionChange:  # fmt: skip
    """Plan changing a region's settings; `changes` are regions.yaml keys (None removes one).
    A pool is dropped only while no replica lives in it."""
    _editable(config)
    old = config.region(name)
    doc: dict[str, Any] = regions.region_doc(old)
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        elif key == "network":
            doc["network"] = {**doc.get("network", {}), **value}
        else:
            doc[key] = value
    names = [p.name for p in old.pools]
    for pool in remove_pools:
        if pool not in names:
            raise InvalidArgument(f"--remove-pool {pool}: region {name} has no such pool")
    if remove_pools:
        held = occupants(ctx, old, pools=remove_pools, clones=False)
        if held:
            raise HasDependents(_held(f"pool(s) {', '.join(remove_pools)} of region {name}", held))
    pools = [p for p in doc.get("pools", []) if _pool_name(p) not in remove_pools]
    pools += [pool_doc(p) for p in add_pools]
    if pools or not old.zones:  # a zoned region's own pools are optional (its zones')
        doc["pools"] = pools
    region = region_from(name, doc)
    if region.uri != old.uri and not force:
        held = occupants(ctx, old)
        if held:
            raise HasDependents(
                _held(f"region {name}", held) + "; a new --uri would orphan them (--force: "
                "the new host holds the same files)"
            )
    assert config.path is not None
    return RegionChange(
        "update", name, regionfile.plan(config.path, lambda t: regionfile.update_region(t, region))
    )


def _pool_name(entry: Any) -> str:
    return str(entry["name"]) if isinstance(entry, dict) else str(entry)


def remove(ctx: Context, config: RegionsConfig, name: str, *, force: bool = False) -> RegionChange:
    """Plan removing a region: refused while a replica or a clone lives there (the list)."""
    _editable(config)
    region = config.region(name)
    held = occupants(ctx, region, force=force)
    if held:
        raise HasDependents(_held(f"region {name}", held))
    assert config.path is not None
    return RegionChange(
        "remove", name, regionfile.plan(config.path, lambda t: regionfile.remove_region(t, name))
    )


def apply(change: RegionChange) -> RegionChange:
    regionfile.apply(change.edit)
    return change


def _held(what: str, held: list[Occupant]) -> str:
    shown = [f"{o.kind} {o.name}" + (f" (pool {o.pool})" if o.pool else "") for o in held[:10]]
    more = f" and {len(held) - 10} more" if len(held) > 10 else ""
    return f"{what} still holds: {', '.join(shown)}{more}"


def occupants(
    ctx: Context,
    region: RegionConfig,
    *,
    pools: tuple[str, ...] = (),
    clones: bool = True,
    force: bool = False,
) -> list[Occupant]:
    """What lives in the region (or in the given pools of it): replicas of any version the
    catalog holds (an unreadable record counts: it may hold one), and this installation's
    clones there. An unreachable host is RegionUnavailable unless `force`."""
    out: list[Occupant] = []
    store = ctx.store
    damaged: list[Damaged] = []
    for g in store.list_galleries(damaged):
        for d in store.list_definitions(g.name, damaged, hidden=True):
            for v in store.list_versions(g.name, d.name, damaged, hidden=True):
                for r in v.replicas:
                    if r.region == region.name and (not pools or r.pool in pools):
                        out.append(Occupant("replica", f"{v.ref} {r.volume}", r.pool))
    out += [Occupant("unreadable record", str(item.path)) for item in damaged]
    if clones:
        from sigvirt.guests import inventory  # libvirt is asked only when clones count

        mine = inventory.installation(ctx)
        for host in region.zones or (region,):  # a zoned region: each zone's host
            try:
                hv = ctx.host(host.location)
            except RegionUnavailable as err:
                if force:
                    continue
                raise RegionUnavailable(
                    f"region {host.location} does not answer, so its clones can't be checked "
                    f"({err.message}); --force removes it anyway"
                ) from None
            with contextlib.suppress(RegionUnavailable):
                for dom, prov in inventory.own_domains(hv, mine):
                    if prov.region == region.name:
                        out.append(Occupant("clone", dom.name, prov.overlay_pool))
    return out
