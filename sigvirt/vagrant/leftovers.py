"""What Vagrant leaves in sigvirt's pools: `vagrant box remove` removes a box from Vagrant's
own directory but leaves the volume vagrant-libvirt uploaded it to (NAME_vagrant_box_image_
..._box.img) in the pool. `doctor` reports those that no volume or domain depends on (read
from libvirt, as every dependent is), with the command that removes one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sigvirt.context import Context
from sigvirt.errors import SigvirtError
from sigvirt.versions import dependents

# vagrant-libvirt 0.11: "#{box name, / as -VAGRANTSLASH-}_vagrant_box_image_#{version}_#{disk}.img"
BOX_VOLUME = re.compile(r".+_vagrant_box_image_.+\.img")


@dataclass(frozen=True)
class BoxVolume:
    region: str
    uri: str
    pool: str
    name: str
    bytes: int  # allocated
    used_by: tuple[str, ...]  # "volume NAME" / "domain NAME" whose chain reaches it

    @property
    def remove_command(self) -> str:
        return f"virsh -c {self.uri} vol-delete --pool {self.pool} {self.name}"


def box_volumes(ctx: Context, regions: list[str] | None = None) -> list[BoxVolume]:
    """Vagrant box volumes in the pools of these regions (default: every region on this
    machine); a region that doesn't answer is skipped (doctor checks libvirt itself)."""
    names = regions if regions is not None else [
        r.name for r in ctx.regions.regions.values() if r.is_local
    ]  # fmt: skip
    out = []
    for name in names:
        cfg = ctx.regions.region(name)
        try:
            hv = ctx.host(name)
            defined = set(hv.pools())
            found = [
                (pool.name, vol.name, vol.facts())
                for pool in cfg.pools
                if pool.name in defined
                for vol in hv.volumes(pool.name)
                if BOX_VOLUME.fullmatch(vol.name)
            ]
            deps = dependents.find(hv, [facts.path for _p, _v, facts in found])
        except SigvirtError:
            continue
        for pool, vol, facts in found:
            used = tuple(f"{d.kind} {d.name}" for d in deps if d.replica == str(facts.path))
            out.append(BoxVolume(name, hv.uri, pool, vol, facts.allocation, used))
    return out
