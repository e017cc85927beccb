"""Scale sets: N instances of one image, created concurrently, spread over the replicas.

A scale set is its model (catalog/fleet.py: image as the user named it, size, admin user,
keys, disks, upgrade policy, health probe) and the set of this installation's domains whose
provenance names it. New instances are made from the model; a scale set made before models
existed gets one read back from its first instance, on first use. An instance's index is
az's instanceId; its provenance records the model generation it got.
"""

from __future__ import annotations

import base64
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from sigvirt import faults
from sigvirt.catalog import azureid, features, names
from sigvirt.catalog.fleet import (
    FleetStore,
    HealthProbe,
    RollingPolicy,
    ScaleSetModel,
    UpgradeMode,
    checked,
)
from sigvirt.catalog.plans import Action, Journal, Plan, note
from sigvirt.catalog.records import ImageVersion, Replica
from sigvirt.context import Context
from sigvirt.errors import (
    CapacityExhausted,
    Conflict,
    HostAccessDenied,
    InvalidArgument,
    InvalidName,
    NotFound,
    PermissionRefused,
    RegionUnavailable,
    SigvirtError,
)
from sigvirt.guests import admission, guest, guestplans, inventory, lifecycle, vms, zonal
from sigvirt.guests.inventory import Vm
from sigvirt.guests.lifecycle import PowerAction
from sigvirt.guests.vms import Placement, Prepared, VmRequest
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import location, split_location

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
    created: str = ""  # when it was created (before models: when its oldest instance was)
    model: ScaleSetModel | None = None  # None: read back from an instance, not stored


@dataclass(frozen=True)
class ScaleResult:
    scale_set: str
    created: tuple[Vm, ...]
    deleted: tuple[str, ...]
    failed: tuple[str, ...]  # "name: reason" for instances that did not come up
    model: ScaleSet | None = None  # the scale set afterwards (None: no instance is left)
    skipped: tuple[str, ...] = ()  # "zone: reason" for zones a scale-out left out (down)


def _index(vm: Vm) -> int:
    return -1 if vm.instance is None else vm.instance


def instance_name(scale_set: str, index: int) -> str:
    return f"{scale_set}-{index}"


def concurrency(hv: Hypervisor) -> int:
    """How many guests (reimages) one host boots at once: admission.py says why."""
    return admission.for_host(hv, "auto")


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


def summary(name: str, found: list[Vm], model: ScaleSetModel | None = None) -> ScaleSet:
    """The scale set its model and instances make up (without a model, the first instance's
    stands for all)."""
    states: dict[str, int] = {}
    for m in found:
        states[m.state] = states.get(m.state, 0) + 1
    unsettled = [v.provisioning_state for v in found if v.provisioning_state != "Succeeded"]
    provisioning = unsettled[0] if unsettled else "Succeeded"
    listed = tuple(v.name for v in found)
    if model is not None:
        running = found[0].image if found else model.image  # what the instances run
        return ScaleSet(
            name, model.region, running, len(found), model.vcpus, model.memory_mib,
            model.admin_user, states, resource_group=model.resource_group,
            tags=dict(model.tags), size=model.size or vms.CUSTOM_SIZE,
            image_id=model_image_id(model), image_request=model.image,
            os_disk_gb=model.os_disk_gb, data_disk_gb=model.data_disk_gb, instances=listed,
            provisioning_state=provisioning, ssh_public_keys=model.ssh_public_keys,
            created=model.created, model=model,
        )  # fmt: skip
    m = found[0]
    return ScaleSet(
        name, m.region, m.image, len(found), m.vcpus, m.memory_mib, m.admin_user, states,
        resource_group=m.resource_group, tags=dict(m.tags), size=m.size, image_id=m.image_id,
        image_request=m.image_request, os_disk_gb=m.os_disk_gb,
        data_disk_gb=tuple(d.size_gb for d in m.data_disks),
        instances=listed, provisioning_state=provisioning,
        ssh_public_keys=m.ssh_public_keys, created=min((v.created for v in found), default=""),
    )  # fmt: skip


def model_image_id(model: ScaleSetModel) -> str:
    """virtualMachineProfile.storageProfile.imageReference.id: the version's id, or the
    definition's when the model means latest (in the group its id had, or sigvirt's)."""
    try:
        ref = names.parse_image_ref(model.image)
    except InvalidName:
        return ""
    group = azureid.parse(model.image).group if model.image.startswith("/") else ""
    if ref.version is None:
        return azureid.definition_id(group, ref.gallery, ref.definition)
    return azureid.version_id(group, ref.gallery, ref.definition, ref.version)


def _after(ctx: Context, name: str) -> ScaleSet | None:
    found = instances(ctx, name)
    model = stored_model(ctx, name)
    return summary(name, found, model) if found or model else None


# -- the model --------------------------------------------------------------------------------
def fleet(ctx: Context) -> FleetStore:
    return FleetStore(ctx.store.root)


def stored_model(ctx: Context, name: str) -> ScaleSetModel | None:
    """The scale set's stored model; None when it has none (made before models)."""
    try:
        return fleet(ctx).get(name)
    except NotFound:
        return None


def model_of(ctx: Context, name: str) -> ScaleSetModel:
    """The scale set's model. One made before models existed gets one read back from its
    first instance, stored (by whoever may: another user's first look stores nothing)."""
    model = stored_model(ctx, name)
    if model is not None:
        return model
    model = synthesize(ctx, name)
    try:
        return fleet(ctx).create(model)
    except Conflict:  # another process stored it meanwhile
        return fleet(ctx).get(name)
    except (HostAccessDenied, PermissionRefused):
        return model


def synthesize(ctx: Context, name: str, *, reap: bool = True) -> ScaleSetModel:
    """The model an older scale set's first instance was made with (NotFound: no instance);
    reap=False: read-only (a dry run), interrupted instances left where they are."""
    if reap:
        reap_interrupted(ctx, name)
    found = members(ctx, name)
    first = found[0]
    _hv, _r, dom = inventory.find(ctx, first.name, first.region)
    prov = guest.provenance_of(dom)
    assert prov is not None
    return ScaleSetModel(
        name=name, region=first.region, image=prov.image_request or prov.image,
        generation=max(1, max(v.model_generation for v in found)),
        size=prov.size or vms.CUSTOM_SIZE, vcpus=first.vcpus, memory_mib=first.memory_mib,
        admin_user=prov.admin_user, ssh_public_keys=tuple(prov.ssh_keys.splitlines()),
        key_path=prov.key_path, custom_data=prov.custom_data,
        os_disk_gb=prov.os_disk_gb, data_disk_gb=tuple(gib for _vol, gib in prov.data_disk_list),
        resource_group=prov.resource_group, tags=prov.tag_map,
        created=min((v.created for v in found), default=""),
    )  # fmt: skip


def model_from(
    p: Prepared, name: str, *, upgrade_mode: UpgradeMode = UpgradeMode.MANUAL,
    rolling: RollingPolicy | None = None, health: HealthProbe | None = None,
    zones: tuple[str, ...] = (),
) -> ScaleSetModel:  # fmt: skip
    """A new scale set's model, from its checked request."""
    req = p.request
    return ScaleSetModel(
        name=name, region=p.region, image=req.image, generation=1, upgrade_mode=upgrade_mode,
        rolling=rolling or RollingPolicy(), health=health or HealthProbe(), size=p.size,
        vcpus=p.vcpus, memory_mib=p.memory_mib, admin_user=p.admin_user, zones=zones,
        ssh_public_keys=p.public_keys, key_path=str(p.private_key or ""),
        custom_data=base64.b64encode(req.custom_data).decode() if req.custom_data else "",
        os_disk_gb=req.os_disk_gb or 0, data_disk_gb=req.data_disk_gb, tags=dict(req.tags),
        resource_group=req.resource_group, disk_controller_type=req.disk_controller_type or "",
        security_type=features.TRUSTED_LAUNCH if p.devices.trusted_launch else "",
    )  # fmt: skip


def request_of(model: ScaleSetModel, *, wait: bool = True) -> VmRequest:
    """What an instance of the model is made from (a definition: its latest at that time)."""
    named = model.size in vms.SIZES
    return VmRequest(
        name=instance_name(model.name, 0), image=model.image, region=model.region,
        vcpus=None if named else model.vcpus, memory_mib=None if named else model.memory_mib,
        size=model.size if named else None, admin_user=model.admin_user or None,
        custom_data=base64.b64decode(model.custom_data) if model.custom_data else None,
        force=True, wait=wait,  # the size was accepted when the scale set was created
        resource_group=model.resource_group, tags=dict(model.tags), data_disk_gb=model.data_disk_gb,
        os_disk_gb=model.os_disk_gb or None, disk_controller_type=model.disk_controller_type,
        ssh_public_keys=model.ssh_public_keys, ssh_private_key=model.key_path,
        security_type=model.security_type or None,
    )  # fmt: skip


# -- create and scale -------------------------------------------------------------------------
def _create_many(
    ctx: Context, template: Prepared, name: str, indices: list[int], generation: int,
    journal: Journal | None = None, zone_of: dict[int, str] | None = None,
) -> ScaleResult:  # fmt: skip
    """The instances `indices`, each in its zone (`zone_of`; none: the template's); the
    instances of a zone whose host doesn't answer fail alone, saying why."""
    zone_of = zone_of or {i: template.zone for i in indices}
    hosts, down = zonal.hosts(ctx, template.region, tuple(dict.fromkeys(zone_of.values())))
    placement = Placement()
    picks: dict[int, Replica] = {}
    for zone, hv in hosts.items():
        at_zone = replace(template, zone=zone)
        picks.update(placements(ctx, hv, at_zone, [i for i in indices if zone_of[i] == zone]))

    def one(i: int, slot: admission.Slot) -> Vm:
        p = replace(
            template, zone=zone_of[i],
            request=replace(template.request, name=instance_name(name, i)),
        )  # fmt: skip
        return vms.create_prepared(
            ctx, p, _Pinned(picks[i]) if i in picks else placement, kind="vmss-instance",
            scale_set=name, instance=i, generation=generation, boot_slot=slot,
        )  # fmt: skip

    created: list[Vm] = []
    failed = [f"{instance_name(name, i)}: {down[zone_of[i]]}" for i in indices
              if zone_of[i] in down]  # fmt: skip
    runnable = [i for i in indices if zone_of[i] in hosts]
    limits = admission.limits(ctx, template, hosts)  # at most that many boots per host at once
    with admission.boots(limits) as pool:
        futures = {i: pool.submit(zone_of[i], one, i, pool.slot(zone_of[i])) for i in runnable}
        for i, fut in futures.items():
            try:
                created.append(fut.result())
                if journal is not None:
                    vm = created[-1]
                    journal.extend(guestplans.made_actions(
                        hosts[vm.zone], vm.name, vm.location, vm.pool, vm.volumes
                    ))  # fmt: skip
                faults.point("vmss.instance")
            except SigvirtError as err:
                failed.append(f"{instance_name(name, i)}: {err.message}")
    zonal.record(ctx, name, created)
    return ScaleResult(name, tuple(created), (), tuple(failed), _after(ctx, name))


class _Pinned(Placement):
    """The replica chosen for one instance before any was created (counted then)."""

    def __init__(self, replica: Replica) -> None:
        super().__init__()
        self.replica = replica

    def pick(self, hv: Hypervisor, rec: ImageVersion, region: str, budget: int) -> Replica:
        return self.replica

    def done(self, replica: Replica) -> None:
        pass


def placements(
    ctx: Context, hv: Hypervisor, template: Prepared, indices: list[int], *, strict: bool = False
) -> dict[int, Replica]:
    """Each new instance's replica, least-used first, as if all were in flight at once: what
    a plan prints and the real run then uses. Instances past every replica's budget get none
    (their creation fails, saying so), or with `strict` the whole plan is refused."""
    where = location(template.region, template.zone)  # a zone's replicas in a zoned region
    budget = ctx.regions.region(where).clones_per_replica
    sim, out = Placement(), {}
    for i in indices:
        try:
            out[i] = sim.pick(hv, template.version, where, budget)
        except CapacityExhausted:
            if strict:
                raise
            break
    return out


def create(
    ctx: Context, name: str, count: int, base: VmRequest, *,
    upgrade_mode: UpgradeMode = UpgradeMode.MANUAL, rolling: RollingPolicy | None = None,
    health: HealthProbe | None = None, zones: list[str] | None = None,
) -> ScaleResult:  # fmt: skip
    """The model is recorded first (generation 1), then the instances boot, spread over the
    zones of a zoned region (`zones`: az's --zones; default all of them). If none of them
    comes up, the model goes again: the scale set was never made."""
    names.vm_name(name)
    if not 1 <= count <= MAX_INSTANCES:
        raise InvalidArgument(f"--instance-count must be 1..{MAX_INSTANCES} (got {count})")
    # Everything the request says is checked before libvirt is asked anything.
    template = vms.prepare(ctx, replace(base, name=instance_name(name, 0)))
    chosen = zonal.check(ctx, template.region, zones, template.version)
    model = model_from(
        template, name, upgrade_mode=upgrade_mode, rolling=rolling, health=health, zones=chosen
    )
    checked(model)
    reap_interrupted(ctx, name)
    if instances(ctx, name):
        raise Conflict(f"scale set {name} already exists")
    model = fleet(ctx).create(model)
    faults.point("vmss.model")
    indices = list(range(count))
    zone_of = zonal.spread(chosen, {}, indices) if chosen else None
    result = _create_many(ctx, template, name, indices, model.generation, zone_of=zone_of)
    if not result.created:
        fleet(ctx).delete(name)
        return replace(result, model=None)
    return result


def _interrupted(ctx: Context, name: str) -> list[tuple[Hypervisor, str, Vm]]:
    """This installation's instances of `name` whose creation was killed before they
    started (their creator is gone), with their host and region (read-only)."""
    mine = inventory.installation(ctx)
    out = []
    for where in inventory.hosts(ctx):  # every host: each zone of a zoned region too
        region = split_location(where)[0]
        with contextlib.suppress(RegionUnavailable):
            hv = ctx.hv(where)
            for dom, prov in inventory.own_domains(hv, mine):
                if prov.scale_set == name and prov.region == region and guest.interrupted(dom):
                    out.append((hv, where, inventory.describe(hv, where, dom)))
    return out


def reap_interrupted(ctx: Context, name: str, journal: Journal | None = None) -> list[str]:
    """This installation's instances whose creation was killed before they started (their
    creator is gone): removed, so a scale counts and refills only real instances."""
    removed = []
    for hv, region, vm in _interrupted(ctx, name):
        gone = guest.delete(hv, vm.name)
        if journal is not None:
            journal.extend(guestplans.removed_actions(hv, region, vm, gone))
        removed += gone
    return removed


def _check_capacity(capacity: int) -> None:
    if not 1 <= capacity <= MAX_INSTANCES:
        raise InvalidArgument(
            f"--new-capacity must be 1..{MAX_INSTANCES} (delete the scale set to remove all)"
        )


def _new_indices(found: list[Vm], capacity: int) -> list[int]:
    top = max((_index(m) for m in found), default=-1)
    return list(range(top + 1, top + 1 + capacity - len(found)))


def _doomed(found: list[Vm], capacity: int) -> list[Vm]:
    return sorted(found, key=_index, reverse=True)[: len(found) - capacity]


def scale(
    ctx: Context, name: str, capacity: int, *, wait: bool = True, journal: Journal | None = None
) -> ScaleResult:
    """Up: add instances of the model after the highest index. Down: delete the newest
    first. Each action taken is reported to `journal` (plan_scale lists the same ones)."""
    _check_capacity(capacity)
    had_model = stored_model(ctx, name) is not None
    model = model_of(ctx, name)
    if not had_model and stored_model(ctx, name) is not None:
        note(journal, Action("create-record", "scale-set", name, model.region))
    reap_interrupted(ctx, name, journal)
    found = instances(ctx, name)
    if model.zones:
        out = _scale_zoned(ctx, model, found, capacity, wait, journal)
        if out is not None:
            return out
    elif capacity > len(found):
        indices = _new_indices(found, capacity)
        template = vms.prepare(ctx, request_of(model, wait=wait))
        return _create_many(ctx, template, name, indices, model.generation, journal)
    deleted = tuple(_delete_one(ctx, m, journal) for m in _doomed(found, capacity))
    return ScaleResult(name, (), deleted, (), _after(ctx, name))


def _scale_zoned(
    ctx: Context, model: ScaleSetModel, found: list[Vm], capacity: int, wait: bool,
    journal: Journal | None,
) -> ScaleResult | None:  # fmt: skip
    """A scale-out of a zoned scale set, in the zones that answer (zonal.scale_out); None:
    nothing to add (a scale-in goes as in any scale set)."""
    up, down = zonal.hosts(ctx, model.region, model.zones)
    out = zonal.scale_out(model, found, capacity, list(up), down)
    if out is None:
        return None if capacity <= len(found) else ScaleResult(model.name, (), (), (), None)
    indices, zone_of = out
    template = vms.prepare(ctx, replace(request_of(model, wait=wait), zone=next(iter(up))))
    result = _create_many(ctx, template, model.name, indices, model.generation, journal, zone_of)
    return replace(result, skipped=tuple(f"zone {z}: {why}" for z, why in down.items()))


def plan_scale(ctx: Context, name: str, capacity: int) -> Plan:
    """What `vmss scale` would do, as data; nothing changes. New instances go on the
    replicas `placements` gives, as in the real run."""
    _check_capacity(capacity)
    actions: list[Action] = []
    model = stored_model(ctx, name)
    if model is None:
        model = synthesize(ctx, name, reap=False)
        actions.append(Action("create-record", "scale-set", name, model.region))
    reaped = _interrupted(ctx, name)
    for hv, region, vm in reaped:
        actions += guestplans.removal_plan(hv, region, vm)
    gone = {vm.name for _hv, _r, vm in reaped}
    found = [v for v in instances(ctx, name) if v.name not in gone]
    up, down = zonal.hosts(ctx, model.region, model.zones)
    out = zonal.scale_out(model, found, capacity, list(up), down) if model.zones else None
    if capacity > len(found) and (out is not None or not model.zones):
        template = vms.prepare(ctx, request_of(model))
        indices, zone_of = out or (_new_indices(found, capacity), {})
        for zone, hv in up.items():  # per zone (one host for a region without zones)
            at = replace(template, zone=zone)
            mine = [i for i in indices if zone_of.get(i, "") == zone]
            picks = placements(ctx, hv, at, mine, strict=True)
            for i in mine:
                vm_name = instance_name(name, i)
                disks = [guest.data_disk_name(vm_name, lun)
                         for lun in range(len(template.request.data_disk_gb))]  # fmt: skip
                volumes = (*guest.volume_names(vm_name), *disks)
                where = location(model.region, zone)
                actions += guestplans.made_actions(hv, vm_name, where, picks[i].pool, volumes)
    elif capacity <= len(found):
        for vm in _doomed(found, capacity):
            actions += guestplans.removal_plan(ctx.hv(vm.location), vm.location, vm)
    return Plan("vmss scale", name, tuple(actions))


# -- instances --------------------------------------------------------------------------------
def _delete_one(ctx: Context, vm: Vm, journal: Journal | None = None) -> str:
    removed = lifecycle.delete(ctx, vm.name, vm.location)
    zonal.forget(ctx, vm)
    if journal is not None:
        journal.extend(guestplans.removed_actions(ctx.hv(vm.location), vm.location, vm, removed))
    faults.point("vmss.instance-deleted")
    return vm.name


def delete(ctx: Context, name: str, journal: Journal | None = None) -> ScaleResult:
    """Every instance, then the model (with the scale set's rollout records); each action
    taken is reported to `journal` (plan_delete lists the same ones)."""
    found = instances(ctx, name)
    model = stored_model(ctx, name)
    if not found and model is None:
        raise NotFound(f"scale set {name} not found")
    if found:
        with ThreadPoolExecutor(max_workers=4) as pool:
            deleted = tuple(pool.map(lambda m: _delete_one(ctx, m, journal), found))
    else:
        deleted = ()
    if model is not None:
        fleet(ctx).delete(name)
        note(journal, Action("delete-record", "scale-set", name, model.region))
    return ScaleResult(name, (), deleted, ())


def plan_delete(ctx: Context, name: str) -> Plan:
    """What `vmss delete` would do, as data; nothing changes."""
    found = instances(ctx, name)
    model = stored_model(ctx, name)
    if not found and model is None:
        raise NotFound(f"scale set {name} not found")
    actions = [
        a for vm in found for a in guestplans.removal_plan(ctx.hv(vm.location), vm.location, vm)
    ]
    if model is not None:
        actions.append(Action("delete-record", "scale-set", name, model.region))
    return Plan("vmss delete", name, tuple(actions))


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
    found = instances(ctx, name)
    model = stored_model(ctx, name)
    if model is None:
        if not found:
            raise NotFound(f"scale set {name} not found")
        model = model_of(ctx, name)
    return summary(name, found, model)


def members_of(ctx: Context, name: str) -> tuple[ScaleSetModel, list[Vm]]:
    """The scale set's model and instances (none at capacity 0); NotFound without either."""
    found = instances(ctx, name)
    if not found and stored_model(ctx, name) is None:
        raise NotFound(f"scale set {name} not found")
    return model_of(ctx, name), found


def list_all(ctx: Context) -> list[ScaleSet]:
    """Every scale set: those with a model and those made before models (read back from their
    instances, nothing stored by a listing)."""
    found, _unreachable = inventory.list_vms(ctx, kind="vmss-instance")
    groups: dict[str, list[Vm]] = {}
    for v in found:
        groups.setdefault(v.scale_set, []).append(v)
    models = {m.name: m for m in fleet(ctx).list()}
    return [
        summary(n, sorted(groups.get(n, []), key=_index), models.get(n))
        for n in sorted(set(groups) | set(models))
    ]
