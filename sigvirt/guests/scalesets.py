"""Scale sets: N instances of one image, created concurrently, spread over the replicas.

A scale set is the set of domains whose provenance names it; its model (image as the user
named it, size, admin user, keys) is read back from an existing instance when scaling.
"""

from __future__ import annotations

import base64
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
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
from sigvirt.guests import guest, vms
from sigvirt.guests.vms import Placement, Vm, VmRequest
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


@dataclass(frozen=True)
class ScaleResult:
    scale_set: str
    created: tuple[Vm, ...]
    deleted: tuple[str, ...]
    failed: tuple[str, ...]  # "name: reason" for instances that did not come up


def _index(vm: Vm) -> int:
    return -1 if vm.instance is None else vm.instance


def instance_name(scale_set: str, index: int) -> str:
    return f"{scale_set}-{index}"


def concurrency(hv: Hypervisor) -> int:
    """Boots are CPU-bound under TCG: about two in flight per host core keeps cores busy."""
    return max(1, 2 * hv.cpu_count())


def instances(ctx: Context, name: str, region: str | None = None) -> list[Vm]:
    found, _unreachable = vms.list_vms(ctx, kind="vmss-instance", region=region)
    return sorted((v for v in found if v.scale_set == name), key=_index)


def _create_many(
    ctx: Context, base: VmRequest, name: str, indices: list[int], region: str
) -> ScaleResult:
    template = vms.prepare(ctx, replace(base, name=instance_name(name, indices[0]), region=region))
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
    return ScaleResult(name, tuple(created), (), tuple(failed))


def create(ctx: Context, name: str, count: int, base: VmRequest) -> ScaleResult:
    names.vm_name(name)
    if not 1 <= count <= MAX_INSTANCES:
        raise InvalidArgument(f"--instance-count must be 1..{MAX_INSTANCES} (got {count})")
    reap_interrupted(ctx, name)
    if instances(ctx, name):
        raise Conflict(f"scale set {name} already exists")
    probe = vms.prepare(ctx, replace(base, name=instance_name(name, 0)))
    return _create_many(ctx, base, name, list(range(count)), probe.region)


def reap_interrupted(ctx: Context, name: str) -> list[str]:
    """Instances whose creation was killed before they started (their creator is gone):
    removed, so a scale counts and refills only real instances."""
    removed = []
    for region in ctx.regions.regions:
        with contextlib.suppress(RegionUnavailable):
            hv = ctx.hv(region)
            for dom, prov in vms.sigvirt_domains(hv):
                if prov.scale_set == name and prov.region == region and guest.interrupted(dom):
                    removed += guest.delete(hv, dom.name)
    return removed


def _model(ctx: Context, name: str) -> tuple[VmRequest, str, list[Vm]]:
    reap_interrupted(ctx, name)
    members = instances(ctx, name)
    if not members:
        raise NotFound(f"scale set {name} not found")
    first = members[0]
    _hv, _r, dom = vms.find(ctx, first.name, first.region)
    prov = guest.provenance_of(dom)
    assert prov is not None
    keyfile = prov.key_path
    req = VmRequest(
        name=first.name,
        image=prov.image_request or prov.image,
        region=first.region,
        vcpus=first.vcpus,
        memory_mib=first.memory_mib,
        admin_user=prov.admin_user,
        ssh_key_value=prov.ssh_keys.splitlines()[0] if prov.ssh_keys else None,
        custom_data=base64.b64decode(prov.custom_data) if prov.custom_data else None,
        force=True,  # the size was accepted when the scale set was created
    )
    if keyfile and Path(keyfile + ".pub").exists():
        req = replace(req, ssh_key_value=keyfile + ".pub")
    return req, first.region, members


def scale(ctx: Context, name: str, capacity: int, *, wait: bool = True) -> ScaleResult:
    """Up: add instances after the highest index. Down: delete the newest first."""
    if not 1 <= capacity <= MAX_INSTANCES:
        raise InvalidArgument(
            f"--new-capacity must be 1..{MAX_INSTANCES} (delete the scale set to remove all)"
        )
    req, region, members = _model(ctx, name)
    if capacity > len(members):
        top = max(_index(m) for m in members)
        indices = list(range(top + 1, top + 1 + capacity - len(members)))
        return _create_many(ctx, replace(req, wait=wait), name, indices, region)
    doomed = sorted(members, key=_index, reverse=True)[: len(members) - capacity]
    deleted = tuple(_delete_one(ctx, m) for m in doomed)
    return ScaleResult(name, (), deleted, ())


def _delete_one(ctx: Context, vm: Vm) -> str:
    vms.delete(ctx, vm.name, vm.region)
    faults.point("vmss.instance-deleted")
    return vm.name


def delete(ctx: Context, name: str) -> ScaleResult:
    members = instances(ctx, name)
    if not members:
        raise NotFound(f"scale set {name} not found")
    with ThreadPoolExecutor(max_workers=4) as pool:
        deleted = tuple(pool.map(lambda m: _delete_one(ctx, m), members))
    return ScaleResult(name, (), deleted, ())


def show(ctx: Context, name: str) -> ScaleSet:
    members = instances(ctx, name)
    if not members:
        raise NotFound(f"scale set {name} not found")
    states: dict[str, int] = {}
    for m in members:
        states[m.state] = states.get(m.state, 0) + 1
    m = members[0]
    return ScaleSet(
        name, m.region, m.image, len(members), m.vcpus, m.memory_mib, m.admin_user, states
    )


def list_all(ctx: Context) -> list[ScaleSet]:
    found, _unreachable = vms.list_vms(ctx, kind="vmss-instance")
    return [show(ctx, n) for n in sorted({v.scale_set for v in found})]
