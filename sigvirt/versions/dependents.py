"""Who depends on a replica, read from libvirt itself: volumes whose backing store is the
replica and domains whose disks' backing chains reach it, whoever created them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sigvirt.errors import NotFound
from sigvirt.hosts.hypervisor import Hypervisor


@dataclass(frozen=True)
class Dependent:
    kind: str  # "domain" | "volume"
    name: str  # domain name, or pool/volume
    replica: str  # the replica path it depends on


def how_to_release(found: list[Dependent]) -> str:
    """Commands that free a replica: a VM is flattened (it keeps running) or deleted; a
    volume sigvirt didn't make is the business of whoever made it."""
    steps = []
    for d in found:
        if d.kind == "domain":
            steps.append(f"sigvirt vm flatten -n {d.name} (or sigvirt vm delete -n {d.name})")
        else:
            pool, _, vol = d.name.partition("/")
            steps.append(f"virsh vol-delete --pool {pool} {vol} (a volume backed by it)")
    return "; ".join(dict.fromkeys(steps))


def _chain_paths(disk: ET.Element) -> list[str]:
    paths = []
    node: ET.Element | None = disk
    while node is not None:
        src = node.find("source")
        if src is not None and src.get("file"):
            paths.append(src.get("file", ""))
        node = node.find("backingStore")
    return paths


def domain_backing_paths(xml: str) -> list[str]:
    """Every file in every disk's backing chain, as the domain XML states it."""
    root = ET.fromstring(xml)
    out: list[str] = []
    for disk in root.findall("./devices/disk"):
        out.extend(_chain_paths(disk)[1:])  # [0] is the disk itself
    return out


def find(hv: Hypervisor, replicas: Iterable[str | Path]) -> list[Dependent]:
    wanted = {str(Path(p)) for p in replicas}
    if not wanted:
        return []
    found: dict[tuple[str, str], Dependent] = {}
    for dom in hv.domains():
        try:
            # Inactive XML states the chain as sigvirt wrote it; a running domain's live XML
            # also lists chains libvirt discovered from image headers (other tools' clones).
            xmls = [dom.xml(inactive=True)]
            if dom.is_active():
                xmls.append(dom.xml())
        except NotFound:
            continue  # undefined while we looked
        for xml in xmls:
            for path in domain_backing_paths(xml):
                if path in wanted:
                    found[("domain", dom.name)] = Dependent("domain", dom.name, path)
    for vol in hv.all_volumes():
        try:
            backing = vol.backing_path()
        except NotFound:
            continue  # deleted while we looked
        if backing and str(Path(backing)) in wanted:
            key = ("volume", f"{vol.pool}/{vol.name}")
            found[key] = Dependent("volume", key[1], backing)
    return sorted(found.values(), key=lambda d: (d.replica, d.kind, d.name))
