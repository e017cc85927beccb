"""Scale sets: N instances of one image, created concurrently, spread over the replicas.

A scale set is the set of this installation's domains whose provenance names it; its model
(image as the user named it, size, admin user, keys, tags, disks) is read back from an
existing instance when scaling. An instance's index is az's instanceId.
"""

from __future__ import annotations

import base64
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from sigvirt import faults
from sigvirt.catalog import names
from sigvirt.context import Context
from sigvirt.errors import (
    Conflict,
    InvalidArgument,
    NotFound,
    RegionUnavailable,
    SigvirtError,
)
from sigvirt.guests import guest, inventory, lifecycle, vms
from sigvirt.guests.inventory import Vm
from sigvirt.guests.lifecycle import PowerAction
from sigvirt.guests.vms import Placement, Prepared, VmRequest
from sigvirt.hosts.hypervisor import Hypervisor

MAX_INSTANCES = 1000


@dataclass(frozen=True)
class ScaleSet:
    name: str
    region: str
    image: str
    capacity: int
    vcpus: int
    memory_mib: int
    admin_user: str
    states: dict[str, int]
    resource_group: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    size: str = ""
    image_id: str = ""
    image_request: str = ""
    os_disk_gb: int = 0
    data_disk_gb: tuple[int, ...] = ()
    instances: tuple[str, ...] = ()  # the instances' names (their domains), by instanceId
    provisioning_state: str = "Succeeded"
    ssh_public_keys: tuple[str, ...] = ()
    created: str = ""  # when its oldest instance was


@dataclass(frozen=True)
class ScaleResult:
    scale_set: str
    created: tuple[Vm, ...]
    deleted: tuple[str, ...]
    failed: tuple[str, ...]  # "name: reason" for instances that did not come up
    model: ScaleSet | None = None  # the scale set afterwards (None: no instance is left)


def _index(vm: Vm) -> int:
    return -1 if vm.instance is None else vm.instance


def instance_name(scale_set: str, index: int) -> str:
    return f"{scale_set}-{index}"


def concurrency(hv: Hypervisor) -> int:
    """Boots are CPU-bound under TCG: about two in flight per host core keeps cores busy."""
    return max(1, 2 * hv.cpu_count())


def instances(ctx: Context, name: str, region: str | None = None) -> list[Vm]:
    """The scale set's instances by instanceId; none if there is no such scale set."""
    found, _unreachable = inventory.list_vms(ctx, kind="vmss-instance", region=region)
    return sorted((v for v in found if v.scale_set == name), key=_index)


def members(ctx: Context, name: str, region: str | None = None) -> list[Vm]:
    """The instances of a scale set that exists (NotFound otherwise)."""
    found = instances(ctx, name, region)
    if not found:
        raise NotFound(f"scale set {name} not found")
    return found


def select(scale_set: str, found: list[Vm], instance_ids: list[str] | None) -> list[Vm]:
    """`--instance-ids 0 2` (az's instanceId) or `*`; none given means all of them."""
    if not instance_ids or "*" in instance_ids:
        return found
    by_id = {_index(v): v for v in found}
    out: dict[int, Vm] = {}
    for text in instance_ids:
        if not text.isascii() or not text.isdigit():
            raise InvalidArgument(
                f"--instance-ids {names.shorten(text)}: an instance id is a number "
                "(an instance's instanceId) or *"
            )
        if int(text) not in by_id:
            raise NotFound(f"instance {int(text)} of scale set {scale_set} not found")
        out[int(text)] = by_id[int(text)]
    return [out[i] for i in sorted(out)]


def summary(name: str, found: list[Vm]) -> ScaleSet:
    """The scale set its instances make up (the first one's model stands for all)."""
    states: dict[str, int] = {}
    for m in found:
        states[m.state] = states.get(m.state, 0) + 1
    m = found[0]
    unsettled = [v.provisioning_state for v in found if v.provisioning_state != "Succeeded"]
    provisioning = unsettled[0] if unsettled else "Succeeded"
    return ScaleSet(
        name, m.region, m.image, len(found), m.vcpus, m.memory_mib, m.admin_user, states,
        resource_group=m.resource_group, tags=dict(m.tags), size=m.size, image_id=m.image_id,
        image_request=m.image_request, os_disk_gb=m.os_disk_gb,
        data_disk_gb=tuple(d.size_gb for d in m.data_disks),
        instances=tuple(v.name for v in found), provisioning_state=provisioning,
        ssh_public_keys=m.ssh_public_keys, created=min((v.created for v in found), default=""),
    )  # fmt: skip


def _after(ctx: Context, name: str) -> ScaleSet | None:
    found = instances(ctx, name)
    return summary(name, found) if found else None


# -- create and scale -------------------------------------------------------------------------
def _create_many(ctx: Context, template: Prepared, name: str, indices: list[int]) -> ScaleResult:
    hv = ctx.hv(template.region)
    placement = Placement()

    def one(i: int) -> Vm:
        p = replace(template, request=replace(template.request, name=instance_name(name, i)))
        return vms.create_prepared(
            ctx, p, placement, kind="vmss-instance", scale_set=name, instance=i
        )

    created: list[Vm] = []
    failed: list[str] = []
    with ThreadPoolExecutor(max_workers=min(len(indices), concurrency(hv))) as pool:
        futures = {i: pool.submit(one, i) for i in indices}
        for i, fut in futures.items():
            try:
                created.append(fut.result())
                faults.point("vmss.instance")
            except SigvirtError as err:
                failed.append(f"{instance_name(name, i)}: {err.message}")
    return ScaleResult(name, tuple(created), (), tuple(failed), _after(ctx, name))


def create(ctx: Context, name: str, count: int, base: VmRequest) -> ScaleResult:
    names.vm_name(name)
    if not 1 <= count <= MAX_INSTANCES:
        raise InvalidArgument(f"--instance-count must be 1..{MAX_INSTANCES} (got {count})")
    # Everything the request says is checked before libvirt is asked anything.
    template = vms.prepare(ctx, replace(base, name=instance_name(name, 0)))
    reap_interrupted(ctx, name)
    if instances(ctx, name):
        raise Conflict(f"scale set {name} already exists")
    return _create_many(ctx, template, name, list(range(count)))


def reap_interrupted(ctx: Context, name: str) -> list[str]:
    """This installation's instances whose creation was killed before they started (their
    creator is gone): removed, so a scale counts and refills only real instances."""
    mine = inventory.installation(ctx)
    removed = []
    for region in ctx.regions.regions:
        with contextlib.suppress(RegionUnavailable):
            hv = ctx.hv(region)
            for dom, prov in inventory.own_domains(hv, mine):
                if prov.scale_set == name and prov.region == region and guest.interrupted(dom):
                    removed += guest.delete(hv, dom.name)
    return removed


def _model(ctx: Context, name: str) -> tuple[VmRequest, str, list[Vm]]:
    reap_interrupted(ctx, name)
    found = members(ctx, name)
    first = found[0]
    _hv, _r, dom = inventory.find(ctx, first.name, first.region)
    prov = guest.provenance_of(dom)
    assert prov is not None
    keyfile = prov.key_path
    named = prov.size in vms.SIZES
    req = VmRequest(
        name=first.name,
        image=prov.image_request or prov.image,
        region=first.region,
        vcpus=None if named else first.vcpus,
        memory_mib=None if named else first.memory_mib,
        size=prov.size if named else None,
        admin_user=prov.admin_user,
        ssh_key_value=prov.ssh_keys.splitlines()[0] if prov.ssh_keys else None,
        custom_data=base64.b64decode(prov.custom_data) if prov.custom_data else None,
        force=True,  # the size was accepted when the scale set was created
        resource_group=prov.resource_group,
        tags=prov.tag_map,
        os_disk_gb=prov.os_disk_gb or None,
        data_disk_gb=tuple(gib for _vol, gib in prov.data_disk_list),
    )
    if keyfile and Path(keyfile + ".pub").exists():
        req = replace(req, ssh_key_value=keyfile + ".pub")
    return req, first.region, found


def scale(ctx: Context, name: str, capacity: int, *, wait: bool = True) -> ScaleResult:
    """Up: add instances after the highest index. Down: delete the newest first."""
    if not 1 <= capacity <= MAX_INSTANCES:
        raise InvalidArgument(
            f"--new-capacity must be 1..{MAX_INSTANCES} (delete the scale set to remove all)"
        )
    req, region, found = _model(ctx, name)
    if capacity > len(found):
        top = max(_index(m) for m in found)
        indices = list(range(top + 1, top + 1 + capacity - len(found)))
        template = vms.prepare(ctx, replace(req, wait=wait, region=region))
        return _create_many(ctx, template, name, indices)
    doomed = sorted(found, key=_index, reverse=True)[: len(found) - capacity]
    deleted = tuple(_delete_one(ctx, m) for m in doomed)
    return ScaleResult(name, (), deleted, (), _after(ctx, name))


# -- instances --------------------------------------------------------------------------------
def _delete_one(ctx: Context, vm: Vm) -> str:
    lifecycle.delete(ctx, vm.name, vm.region)
    faults.point("vmss.instance-deleted")
    return vm.name


def delete(ctx: Context, name: str) -> ScaleResult:
    found = members(ctx, name)
    with ThreadPoolExecutor(max_workers=4) as pool:
        deleted = tuple(pool.map(lambda m: _delete_one(ctx, m), found))
    return ScaleResult(name, (), deleted, ())


def delete_instances(ctx: Context, name: str, instance_ids: list[str]) -> ScaleResult:
    """`vmss delete-instances --instance-ids …`: the scale set keeps the others (deleting
    every instance deletes the scale set: here it is its instances)."""
    if not instance_ids:
        raise InvalidArgument("--instance-ids is required: instance ids, or * for all")
    doomed = select(name, members(ctx, name), instance_ids)
    with ThreadPoolExecutor(max_workers=4) as pool:
        deleted = tuple(pool.map(lambda m: _delete_one(ctx, m), doomed))
    return ScaleResult(name, (), deleted, (), _after(ctx, name))


def power(
    ctx: Context,
    name: str,
    action: PowerAction,
    instance_ids: list[str] | None = None,
    *,
    force: bool = False,
    wait: bool = True,
) -> list[Vm]:
    """Start, stop, deallocate or restart instances (all of them by default), concurrently:
    a stop may wait a minute for each guest's shutdown. The instances as they are after."""
    chosen = select(name, members(ctx, name), instance_ids)

    def one(vm: Vm) -> Vm:
        hv, r, dom = inventory.find(ctx, vm.name, vm.region)
        lifecycle.power_domain(hv, dom, action, force=force, wait=wait)
        return inventory.describe(hv, r, dom)

    with ThreadPoolExecutor(max_workers=min(len(chosen), 8)) as pool:
        return list(pool.map(one, chosen))


def show(ctx: Context, name: str) -> ScaleSet:
    return summary(name, members(ctx, name))


def list_all(ctx: Context) -> list[ScaleSet]:
    found, _unreachable = inventory.list_vms(ctx, kind="vmss-instance")
    groups: dict[str, list[Vm]] = {}
    for v in found:
        groups.setdefault(v.scale_set, []).append(v)
    return [summary(n, sorted(groups[n], key=_index)) for n in sorted(groups)]
