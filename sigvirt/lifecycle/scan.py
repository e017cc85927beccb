"""What the pools of a region hold, read from its libvirt host once: every volume with its
sizes, modification time and backing file, each pool's capacity, and the domains defined
there. A region that doesn't answer is a scan that says why, not an error: the space report
and the garbage collector report it and go on with the others.

sigvirt's own names are recognized here too: a replica is `G-D-V-REGION-i.qcow2`
(versions/targets.py volume_name), its bytes in flight `.NAME.partial` (partial_name); a
guest's volumes are `VM.qcow2`, `VM.cidata.iso`, `VM.console.log`, `VM.dataN.qcow2`
(guests/guest.py). A file named otherwise is not sigvirt's and is never touched.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sigvirt.catalog import names
from sigvirt.context import Context
from sigvirt.errors import (
    HostAccessDenied,
    InvalidName,
    NotFound,
    RegionUnavailable,
    SigvirtError,
    Unsupported,
)
from sigvirt.hosts.hostrecords import PoolInfo, VolumeFacts
from sigvirt.hosts.hypervisor import Hypervisor

UNREACHABLE = (RegionUnavailable, HostAccessDenied)


@dataclass
class RegionScan:
    """One region's pools as its host showed them (reachable), or why it couldn't (error)."""

    region: str
    hv: Hypervisor | None = None
    error: str = ""  # why the region could not be read ("" when it was)
    pools: dict[str, PoolInfo] = field(default_factory=dict)
    pool_errors: dict[str, str] = field(default_factory=dict)  # pool -> why it wasn't read
    volumes: dict[str, dict[str, VolumeFacts]] = field(default_factory=dict)  # pool -> name ->
    domains: frozenset[str] = frozenset()  # every domain defined on the host, whoever made it

    @property
    def reachable(self) -> bool:
        return self.hv is not None and not self.error

    def by_path(self, path: str | Path) -> VolumeFacts | None:
        """The scanned volume at `path`; asked of the host for a file in a pool not scanned."""
        wanted = Path(path)
        for vols in self.volumes.values():
            for facts in vols.values():
                if facts.path == wanted:
                    return facts
        if self.hv is None:
            return None
        with contextlib.suppress(SigvirtError):
            vol = self.hv.volume_by_path(wanted)
            if vol is not None:
                return vol.facts()
        return None

    def pool_dirs(self) -> set[Path]:
        return {info.path for info in self.pools.values()}


def host(ctx: Context, region: str) -> Hypervisor:
    """The region's host as it is: a report or a plan must not create the pools that
    regions.yaml names and the host lacks (ctx.hv would)."""
    assert ctx.conns is not None
    return ctx.conns.host(region)


def scan_region(ctx: Context, region: str, pools: Iterable[str]) -> RegionScan:
    """Read `pools` (and the domains) of one region's host; unreachable is a result."""
    scan = RegionScan(region)
    try:
        hv = host(ctx, region)
        scan.domains = frozenset(d.name for d in hv.domains())
    except (*UNREACHABLE, Unsupported) as err:  # Unsupported: a zoned region, not yet read
        scan.error = err.message
        return scan
    scan.hv = hv
    for pool in dict.fromkeys(pools):
        try:
            info = hv.pool_info(pool)
            if not info.active:
                scan.pool_errors[pool] = f"pool {pool} is not active"
                continue
            vols: dict[str, VolumeFacts] = {}
            for vol in hv.volumes(pool):
                with contextlib.suppress(NotFound):  # deleted while we looked
                    vols[vol.name] = vol.facts()
        except NotFound as err:
            scan.pool_errors[pool] = err.message
            continue
        except RegionUnavailable as err:
            # a pool that went away is one pool's problem; a host that did is the region's
            if not _answers(hv):
                scan.error, scan.hv = err.message, None
                return scan
            scan.pool_errors[pool] = err.message
            continue
        scan.pools[pool] = info
        scan.volumes[pool] = vols
    return scan


def _answers(hv: Hypervisor) -> bool:
    try:
        hv.hostname()
    except SigvirtError:
        return False
    return True


# -- sigvirt's names ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplicaName:
    """A volume name sigvirt gives replicas, taken apart."""

    gallery: str
    definition: str
    version: str
    region: str
    index: int

    @property
    def ref(self) -> str:
        return f"{self.gallery}/{self.definition}/{self.version}"


_GALLERY = r"[A-Za-z0-9](?:[A-Za-z0-9_.]{0,78}[A-Za-z0-9])?"  # no '-': the first '-' ends it
_VERSION = r"(?:0|[1-9][0-9]{0,9})\.(?:0|[1-9][0-9]{0,9})\.(?:0|[1-9][0-9]{0,9})"


def replica_name(volume: str, region: str) -> ReplicaName | None:
    """The parts of a replica volume of `region` (replicas of a region live in its pools),
    or None for any other name. A definition may hold '-', so it is what lies between the
    gallery and the last `-Major.Minor.Patch-REGION-i.qcow2`. A zone's location (REGION/ZONE)
    holds replicas named for its region."""
    region = region.partition("/")[0]
    found = re.fullmatch(
        rf"({_GALLERY})-(.+)-({_VERSION})-{re.escape(region)}-(0|[1-9][0-9]{{0,3}})\.qcow2",
        volume,
    )
    if found is None:
        return None
    try:
        names.gallery_name(found[1])
        names.definition_name(found[2])
        names.Version.parse(found[3])
    except InvalidName:
        return None
    return ReplicaName(found[1], found[2], found[3], region, int(found[4]))


def partial_of(volume: str) -> str | None:
    """The replica volume name a `.NAME.partial` stands for, or None."""
    if volume.startswith(".") and volume.endswith(".partial"):
        return volume[1 : -len(".partial")]
    return None


_GUEST = re.compile(
    r"([A-Za-z0-9][A-Za-z0-9-]{0,62})\.(qcow2|cidata\.iso|console\.log|data[0-9]+\.qcow2)"
)


def guest_volume(volume: str) -> tuple[str, str] | None:
    """(VM name, what it is: overlay | seed | console | data) for a guest's volume name.
    VM names have no '.', replica names always do (the version): the two never meet."""
    found = _GUEST.fullmatch(volume)
    if found is None:
        return None
    suffix = found[2]
    kind = {"qcow2": "overlay", "cidata.iso": "seed", "console.log": "console"}.get(suffix, "data")
    return found[1], kind
