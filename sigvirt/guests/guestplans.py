"""A guest's domain and volumes as plan actions (catalog/plans.py): what creating or deleting
an instance makes or removes, as a dry run lists it and the real run reports it."""

from __future__ import annotations

from sigvirt.catalog.plans import Action
from sigvirt.guests.inventory import Vm
from sigvirt.hosts.hypervisor import Hypervisor


def volume_kind(vm: str, volume: str) -> str:
    rest = volume.removeprefix(f"{vm}.")
    if rest == "cidata.iso":
        return "seed"
    if rest == "console.log":
        return "console"
    return "data-disk" if rest.startswith("data") else "overlay"


def volume_action(hv: Hypervisor, verb: str, vm: str, region: str, pool: str, vol: str) -> Action:
    path = str(hv.pool_path(pool) / vol)
    return Action(verb, volume_kind(vm, vol), vol, region, pool, path)


def made_actions(
    hv: Hypervisor, vm: str, region: str, pool: str, volumes: tuple[str, ...]
) -> list[Action]:
    """An instance created: its domain and its volumes (overlay, seed, console, data disks)."""
    return [
        Action("define-domain", "vmss-instance", vm, region),
        *(volume_action(hv, "create-volume", vm, region, pool, v) for v in volumes),
    ]


def removal_plan(hv: Hypervisor, region: str, vm: Vm) -> list[Action]:
    """What deleting an instance removes: its domain and those of its volumes that exist."""
    there = [v for v in vm.volumes if vm.pool and hv.volume_exists(vm.pool, v)]
    return [
        Action("undefine-domain", "vmss-instance", vm.name, region),
        *(volume_action(hv, "delete-volume", vm.name, region, vm.pool, v) for v in there),
    ]


def removed_actions(hv: Hypervisor, region: str, vm: Vm, removed: list[str]) -> list[Action]:
    """guest.delete's account (`domain NAME`, `volume POOL/VOL`) as actions."""
    out = []
    for item in removed:
        what, _, name = item.partition(" ")
        if what == "domain":
            out.append(Action("undefine-domain", "vmss-instance", name, region))
        else:
            pool, _, vol = name.partition("/")
            out.append(volume_action(hv, "delete-volume", vm.name, region, pool, vol))
    return out
