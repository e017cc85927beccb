"""`sigvirt vmss …`: scale sets (az vmss): their model, their instances, and moving the
instances to what the model says (update-instances, reimage; rolling upgrades: cli/rolling.py).

JSON and YAML come in az's shape (guests/vmviews.py), with sigvirt's own facts under the
`sigvirt` key; tables are for people.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import typer

from sigvirt.catalog import tags as tagging
from sigvirt.catalog.policy import Caller
from sigvirt.cli import plans, vmssargs
from sigvirt.cli.common import (
    AddOpt,
    IdsOpt,
    NoWaitOpt,
    RemoveOpt,
    ResourceGroupOpt,
    SetOpt,
    TagsOpt,
    YesOpt,
    context,
    generic_update,
)
from sigvirt.cli.render import Output, OutputOpt, emit, for_people, note
from sigvirt.cli.vmcommon import (
    DEALLOCATED,
    SHOW_COLUMNS,
    AdminOpt,
    CustomDataOpt,
    DataDisksOpt,
    DiskControllerOpt,
    ForceOpt,
    GenKeysOpt,
    ImageOpt,
    KeyOpt,
    MemoryOpt,
    OsDiskOpt,
    PowerForceOpt,
    RegionOpt,
    SecureBootOpt,
    SecurityTypeOpt,
    TimeoutOpt,
    VcpusOpt,
    VtpmOpt,
    request,
    row,
    security_request,
)
from sigvirt.cli.vmssargs import (
    UPDATE_PATHS,
    BatchOpt,
    InstanceIdsOpt,
    ModeOpt,
    PauseOpt,
    PrioritizeOpt,
    ProbeCommandOpt,
    ProbeSpecOpt,
    SkuOpt,
    UnhealthyOpt,
    UpgradedOpt,
    VmssNameOpt,
    VmssOpt,
)
from sigvirt.errors import ExitCode, InvalidArgument, ReimageFailed, Unsupported
from sigvirt.guests import inventory, scalesets, vmviews, zonal
from sigvirt.guests.inventory import Vm
from sigvirt.guests.lifecycle import PowerAction
from sigvirt.rollouts import automatic, manual, model
from sigvirt.rollouts.reimage import ReimageResult

app = typer.Typer(help="Scale sets: many VMs of one image (az vmss).", no_args_is_help=True)

INSTANCE_COLUMNS = ["instance", "name", "state", "version", "latest_model", "replica", "address",
                    "image"]  # fmt: skip
VMSS_COLUMNS = ["name", "region", "image", "capacity", "vcpus", "memory_mib", "admin_user",
                "states", "size", "upgrade_mode", "generation", "resource_group",
                "tags"]  # fmt: skip
RESULT_COLUMNS = ["instance", "ok", "version", "previous", "seconds", "reason"]


# -- parsing ----------------------------------------------------------------------------------
def _one_set(name: str | None, ids: list[str] | None) -> str:
    targets = inventory.scale_set_names(name, ids)
    if len(targets) != 1:
        raise InvalidArgument("this command takes one scale set: give one --ids")
    return targets[0]


# -- rendering ----------------------------------------------------------------------------------
def _report(
    result: scalesets.ScaleResult, output: Output, *, az: str = "", group: str | None = None
) -> None:
    """What a create, scale or delete did; in JSON, with az="vmss" az's {"vmss": {...}}, with
    az="resource" the scale set itself, the report under its `sigvirt` key."""
    report = {
        "scale_set": result.scale_set,
        "created": [v.name for v in result.created],
        "deleted": list(result.deleted),
        "failed": list(result.failed),
        **({"skipped_zones": list(result.skipped)} if result.skipped else {}),
    }
    for skipped in result.skipped:
        note(f"sigvirt: skipped {skipped}")
    if for_people(output) or not az:
        emit(report, output)
    elif result.model is None:
        emit({"vmss": None, vmviews.EXTRA: report} if az == "vmss" else report, output)
    else:
        resource = vmviews.vmss_resource(result.model, group)
        resource[vmviews.EXTRA].update(report)
        emit({"vmss": resource} if az == "vmss" else resource, output, ready=True)
    if result.failed:
        raise typer.Exit(ExitCode.GUEST_FAILED)


def _instance_row(vm: Vm, generation: int | None) -> dict[str, Any]:
    facts = vmviews.instance_facts(vm)
    return {
        "instance": vm.instance, "name": vm.name, "state": vm.state, "version": facts["version"],
        "latest_model": vmviews.latest_model_applied(vm, generation), "replica": vm.replica,
        "address": vm.address, "image": vm.image, **({"zone": vm.zone} if vm.zone else {}),
    }  # fmt: skip


def _emit_instances(
    found: list[Vm], output: Output, group: str | None = None, expand: bool = False,
    generation: int | None = None,
) -> None:  # fmt: skip
    if for_people(output):
        sets = sorted({v.scale_set for v in found})
        rows = [_instance_row(v, generation) for v in found]
        columns = INSTANCE_COLUMNS + ["zone"] * any(v.zone for v in found)
        emit(rows, output, columns, title=f"instances of {', '.join(sets)}", ready=True)
        return
    data = [
        vmviews.instance_resource(v, group=group, expand=expand, model_generation=generation)
        for v in found
    ]
    emit(data, output, ready=True)


def _set_row(ss: scalesets.ScaleSet) -> dict[str, Any]:
    out: dict[str, Any] = {c: getattr(ss, c, None) for c in VMSS_COLUMNS}
    out["upgrade_mode"] = ss.model.upgrade_mode.value if ss.model else "Manual"
    out["generation"] = ss.model.generation if ss.model else None
    return out


def _emit_results(
    results: list[ReimageResult], after: list[Vm], output: Output, group: str | None,
    generation: int,
) -> None:  # fmt: skip
    """What a reimage or update-instances did: each instance as az shows it, the result under
    `sigvirt.reimage`; a table of results for people. Exit 26 if any failed."""
    if for_people(output):
        emit(results, output, RESULT_COLUMNS, title="reimaged", ready=False)
    else:
        by_name = {v.name: v for v in after}
        data = []
        for r in results:
            if r.instance not in by_name:
                continue
            shown = vmviews.instance_resource(
                by_name[r.instance], group=group, model_generation=generation
            )
            shown[vmviews.EXTRA]["reimage"] = {
                "ok": r.ok, "version": r.version, "previous": r.previous, "reason": r.reason,
                "seconds": round(r.seconds, 1),
            }  # fmt: skip
            data.append(shown)
        emit(data, output, ready=True)
    failed = [r for r in results if not r.ok]
    if failed:
        raise ReimageFailed(
            "; ".join(f"{r.instance}: {r.reason}; back on {r.version}" for r in failed)
        )


# -- create, scale, update ------------------------------------------------------------------------
@app.command("create")
def vmss_create(
    name: VmssNameOpt, image: ImageOpt,
    instance_count: Annotated[int, typer.Option("--instance-count", help="instances")] = 2,
    region: RegionOpt = None, vcpus: VcpusOpt = None, memory: MemoryOpt = None,
    vm_sku: SkuOpt = None, admin_username: AdminOpt = None, ssh_key_value: KeyOpt = None,
    generate_ssh_keys: GenKeysOpt = False, custom_data: CustomDataOpt = None,
    force: ForceOpt = False, no_wait: NoWaitOpt = False, timeout: TimeoutOpt = 300,
    resource_group: ResourceGroupOpt = None, tags: TagsOpt = None,
    os_disk_size_gb: OsDiskOpt = None, data_disk_sizes_gb: DataDisksOpt = None,
    upgrade_policy_mode: ModeOpt = None, max_batch_instance_percent: BatchOpt = None,
    max_unhealthy_instance_percent: UnhealthyOpt = None,
    max_unhealthy_upgraded_instance_percent: UpgradedOpt = None,
    pause_time_between_batches: PauseOpt = None,
    prioritize_unhealthy_instances: PrioritizeOpt = None,
    health_probe_command: ProbeCommandOpt = None, health_probe_spec: ProbeSpecOpt = None,
    zones: vmssargs.ZonesOpt = None, disk_controller_type: DiskControllerOpt = None,
    security_type: SecurityTypeOpt = None, enable_secure_boot: SecureBootOpt = None,
    enable_vtpm: VtpmOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Create a scale set: its model is recorded, then instances boot concurrently, spread
    over the replicas (and over the zones of a zoned region)."""
    req = request(
        name, image, region, vcpus, memory, vm_sku, admin_username, ssh_key_value,
        generate_ssh_keys, custom_data, force, no_wait, timeout, resource_group, tags,
        os_disk_size_gb, data_disk_sizes_gb,
    )  # fmt: skip
    security = security_request(security_type, enable_secure_boot, enable_vtpm)
    req = dataclasses.replace(
        req, disk_controller_type=disk_controller_type, security_type=security
    )
    mode, rolling, probe = vmssargs.policy(
        upgrade_policy_mode, max_batch_instance_percent, max_unhealthy_instance_percent,
        max_unhealthy_upgraded_instance_percent, pause_time_between_batches,
        prioritize_unhealthy_instances, health_probe_command, health_probe_spec,
    )  # fmt: skip
    with context() as ctx:
        result = scalesets.create(
            ctx, name, instance_count, req, upgrade_mode=mode, rolling=rolling, health=probe,
            zones=zones,
        )  # fmt: skip
    _report(result, output, az="vmss", group=resource_group)


@app.command("update")
def vmss_update(
    name: VmssOpt = None, ids: IdsOpt = None,
    image: Annotated[str | None, typer.Option(
        "--image", help="the model's image: GALLERY/DEFINITION (latest), "
        "GALLERY/DEFINITION/VERSION or an Azure id")] = None,
    set_items: SetOpt = None, add_items: AddOpt = None, remove_items: RemoveOpt = None,
    tags: TagsOpt = None, max_batch_instance_percent: BatchOpt = None,
    max_unhealthy_instance_percent: UnhealthyOpt = None,
    max_unhealthy_upgraded_instance_percent: UpgradedOpt = None,
    pause_time_between_batches: PauseOpt = None,
    prioritize_unhealthy_instances: PrioritizeOpt = None,
    health_probe_command: ProbeCommandOpt = None, health_probe_spec: ProbeSpecOpt = None,
    no_wait: NoWaitOpt = False, resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Change the model (image, upgrade policy, health probe, tags). Under an Automatic or
    Rolling policy, instances not on the model's image then move by a rolling upgrade in
    the background (`rolling-upgrade get-latest`); under Manual, with update-instances or
    reimage. `--set
    virtualMachineProfile.storageProfile.imageReference.id=ID` as az; the image is checked
    (published, complete in the scale set's region) before anything changes."""
    target = _one_set(name, ids)
    if add_items:
        raise Unsupported("--add: a scale set's model has no list sigvirt can add to")
    spec = vmssargs.spec_source(health_probe_spec)
    with context() as ctx:
        current = model.model_of(ctx, target)
        given, new_tags = generic_update(set_items, remove_items, UPDATE_PATHS, current.tags)
        change = vmssargs.change(
            given, image, max_batch_instance_percent, max_unhealthy_instance_percent,
            max_unhealthy_upgraded_instance_percent, pause_time_between_batches,
            prioritize_unhealthy_instances, health_probe_command, spec,
            tagging.parse(tags) if tags is not None else new_tags,
        )  # fmt: skip
        model.update(ctx, target, change, Caller.current().user)
        started = automatic.on_model_changed(ctx, target)
        shown = scalesets.show(ctx, target)
    if started is not None:
        note(f"sigvirt: rolling upgrade {started.id} to {started.target} started in the "
             f"background (vmss rolling-upgrade get-latest -n {target})")  # fmt: skip
    if for_people(output):
        emit(_set_row(shown), output, VMSS_COLUMNS)
    else:
        emit(vmviews.vmss_resource(shown, resource_group), output, ready=True)


@app.command("scale")
def vmss_scale(
    new_capacity: Annotated[int, typer.Option("--new-capacity", help="instances wanted")],
    name: VmssOpt = None, ids: IdsOpt = None, no_wait: NoWaitOpt = False,
    dry_run: plans.DryRunOpt = False,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Add instances of the model, or remove the newest ones. --dry-run prints the domains
    and volumes it would create or delete, and changes nothing."""
    target = _one_set(name, ids)
    with context() as ctx:
        if dry_run:
            plans.show(scalesets.plan_scale(ctx, target, new_capacity), output)
            return
        result = scalesets.scale(ctx, target, new_capacity, wait=not no_wait)
    _report(result, output, az="resource", group=resource_group)


# -- reimage, update-instances ------------------------------------------------------------------
@app.command("reimage")
def vmss_reimage(
    name: VmssOpt = None, ids: IdsOpt = None, instance_ids: InstanceIdsOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds each instance gets to "
                                           "answer SSH on its new disk")] = 300,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Reimage instances (all, or --instance-ids) onto a fresh disk of the model's version:
    same name, hostname, SSH port, admin user, keys and data disks. Each is health-checked
    and, if unhealthy, put back on its old disk (exit 26)."""
    target = _one_set(name, ids)
    with context() as ctx:
        if no_wait:
            log = manual.start_background(ctx, target, "reimage", instance_ids)
            note(f"sigvirt: reimaging in the background (log: {log})")
            return
        results = manual.reimage_instances(ctx, target, instance_ids, timeout=timeout)
        current, after = scalesets.members_of(ctx, target)
    _emit_results(results, after, output, resource_group, current.generation)


@app.command("update-instances")
def vmss_update_instances(
    instance_ids: InstanceIdsOpt = None, name: VmssOpt = None, ids: IdsOpt = None,
    no_wait: NoWaitOpt = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds each instance gets to "
                                           "answer SSH on its new disk")] = 300,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Apply the model to instances (--instance-ids '*' or ids): those on another version are
    reimaged onto the model's (health-checked, rolled back on failure: exit 26); all take
    the model's generation (latestModelApplied)."""
    if not instance_ids:
        raise InvalidArgument("--instance-ids is required: instance ids, or * for all")
    target = _one_set(name, ids)
    with context() as ctx:
        if no_wait:
            log = manual.start_background(ctx, target, "update-instances", instance_ids)
            note(f"sigvirt: updating instances in the background (log: {log})")
            return
        results = manual.reimage_instances(
            ctx, target, instance_ids, only_outdated=True, timeout=timeout
        )
        current, after = scalesets.members_of(ctx, target)
    _emit_results(results, after, output, resource_group, current.generation)


# -- reading ----------------------------------------------------------------------------------
@app.command("list-instances")
def vmss_list_instances(
    name: VmssOpt = None, ids: IdsOpt = None,
    expand: Annotated[str | None, typer.Option("--expand", help="instanceView")] = None,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Each instance's state, version (latestModelApplied: it has the model's generation),
    replica and address."""
    if expand not in (None, "instanceView"):
        raise InvalidArgument(f"--expand {expand!r}: only instanceView can be expanded")
    targets = inventory.scale_set_names(name, ids)
    with context() as ctx:
        sets = [scalesets.members_of(ctx, n) for n in targets]
        silent = [line for m, _found in sets for line in zonal.unanswered(ctx, m)]
    for line in silent:
        note(f"sigvirt: warning: {line}")
    if len(sets) == 1:
        _emit_instances(sets[0][1], output, resource_group, expand is not None,
                        sets[0][0].generation)  # fmt: skip
        return
    found = [vm for _m, vms in sets for vm in vms]
    _emit_instances(found, output, resource_group, expand=expand is not None)


@app.command("show")
def vmss_show(
    name: VmssOpt = None, ids: IdsOpt = None,
    instance_id: Annotated[str | None, typer.Option("--instance-id", help="one instance")] = None,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Show a scale set as its model says (or, with --instance-id, one of its instances)."""
    if instance_id is not None:
        target = _one_set(name, ids)
        if instance_id == "*":
            raise InvalidArgument("--instance-id: one instance id (vmss list-instances: all)")
        with context() as ctx:
            current, found = scalesets.members_of(ctx, target)
            (vm,) = scalesets.select(target, found, [instance_id])
        if for_people(output):
            emit(row(vm), output, SHOW_COLUMNS, ready=True)
        else:
            shown = vmviews.instance_resource(
                vm, group=resource_group, model_generation=current.generation
            )
            emit(shown, output, ready=True)
        return
    targets = inventory.scale_set_names(name, ids)
    with context() as ctx:
        sets = [scalesets.show(ctx, n) for n in targets]
    one = len(sets) == 1
    if for_people(output):
        rows = [_set_row(s) for s in sets]
        emit(rows[0] if one else rows, output, VMSS_COLUMNS, title="" if one else "scale sets")
    else:
        resources = [vmviews.vmss_resource(s, resource_group) for s in sets]
        emit(resources[0] if one else resources, output, ready=True)


@app.command("list")
def vmss_list(resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table) -> None:
    """List scale sets."""
    with context() as ctx:
        rows = scalesets.list_all(ctx)
    if for_people(output):
        emit([_set_row(s) for s in rows], output,
             ["name", "region", "image", "capacity", "states", "upgrade_mode"],
             title="scale sets")  # fmt: skip
        return
    emit([vmviews.vmss_resource(s, resource_group) for s in rows], output, ready=True)


# -- delete, power ------------------------------------------------------------------------------
@app.command("delete")
def vmss_delete(
    name: VmssOpt = None, ids: IdsOpt = None, yes: YesOpt = False, no_wait: NoWaitOpt = False,
    dry_run: plans.DryRunOpt = False,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Delete a scale set: all its instances, then its model. --dry-run prints what would
    go and changes nothing."""
    target = _one_set(name, ids)
    with context() as ctx:
        if dry_run:
            plans.show(scalesets.plan_delete(ctx, target), output)
            return
        result = scalesets.delete(ctx, target)
    _report(result, output)


@app.command("delete-instances")
def vmss_delete_instances(
    instance_ids: InstanceIdsOpt = None, name: VmssOpt = None, ids: IdsOpt = None,
    yes: YesOpt = False, no_wait: NoWaitOpt = False, resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Delete some instances (--instance-ids 0 2, or '*' for all of them)."""
    target = _one_set(name, ids)
    with context() as ctx:
        result = scalesets.delete_instances(ctx, target, instance_ids or [])
    _report(result, output)


def _vmss_power(action: PowerAction, help_: str) -> None:
    """`vmss start|stop|deallocate|restart [--instance-ids …]`: one shape, defined once."""

    def command(
        name: VmssOpt = None, ids: IdsOpt = None, instance_ids: InstanceIdsOpt = None,
        force: PowerForceOpt = False, no_wait: NoWaitOpt = False,
        resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
    ) -> None:  # fmt: skip
        targets = inventory.scale_set_names(name, ids)
        wait = not no_wait
        with context() as ctx:
            found = [vm for n in targets for vm in scalesets.power(
                ctx, n, action, instance_ids, force=force, wait=wait)]  # fmt: skip
        _emit_instances(found, output, resource_group, expand=True)

    app.command(action, help=help_)(command)


_vmss_power("start", "Start instances (all, or --instance-ids).")
_vmss_power("stop", f"Shut instances down (all, or --instance-ids). {DEALLOCATED}")
_vmss_power("deallocate", f"Shut instances down: as stop. {DEALLOCATED}")
_vmss_power("restart", "Reboot instances (all, or --instance-ids; --force: reset them).")


@app.command("list-instance-connection-info")
def vmss_connection_info(
    name: VmssOpt = None, ids: IdsOpt = None, resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Where each instance's SSH answers: {"instance 0": "127.0.0.1:PORT", ...}."""
    target = _one_set(name, ids)
    with context() as ctx:
        found = scalesets.members(ctx, target)
    emit(vmviews.connection_info(found), output, ready=True)


@app.command("get-instance-view")
def vmss_get_instance_view(
    name: VmssOpt = None, ids: IdsOpt = None,
    instance_id: Annotated[
        str | None, typer.Option("--instance-id", help="one instance, or * for each")
    ] = None,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Statuses: of the scale set (a count per status), or of its instances; each running
    instance's health (vmHealth: SSH answers and the health probe passes)."""
    target = _one_set(name, ids)
    with context() as ctx:
        current, found = scalesets.members_of(ctx, target)
        chosen = scalesets.select(target, found, [instance_id] if instance_id else None)
        verdicts = manual.healths(ctx, current.health, chosen)
        summary = scalesets.summary(target, found, current)
    # a stopped instance reports no health: unknown, saying why
    health = {v.name: (False, "") for v in chosen}
    health.update({n: (h.healthy, h.reason) for n, h in verdicts.items()})
    if for_people(output):
        table = []
        for v in chosen:
            status = vmviews.vm_health(health[v.name], v)["status"]
            table.append({"instance": v.instance, "name": v.name,
                          "power_state": vmviews.power_state(v),
                          "health": status["code"].removeprefix("HealthState/"),
                          "reason": status.get("message", "")})  # fmt: skip
        emit(table, output, title=f"instances of {target}", ready=True)
    elif instance_id is None:
        emit(vmviews.vmss_instance_view(summary, found, health), output, ready=True)
    elif instance_id == "*":
        data = [
            vmviews.instance_resource(
                v, group=resource_group, expand=True, model_generation=current.generation,
                health=health[v.name],
            )
            for v in chosen
        ]  # fmt: skip
        emit(data, output, ready=True)
    else:
        vm = chosen[0]
        emit(vmviews.instance_view(vm, health[vm.name]), output, ready=True)
