"""`sigvirt vm …` and `sigvirt vmss …`: guests from image versions (az vm / az vmss).

JSON and YAML come in az's shape (guests/vmviews.py), with sigvirt's own facts under the
`sigvirt` key; tables are for people and show sigvirt's records as they always did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from sigvirt.catalog import tags as tagging
from sigvirt.cli.common import (
    IdsOpt,
    NoWaitOpt,
    ResourceGroupOpt,
    TagsOpt,
    YesOpt,
    context,
)
from sigvirt.cli.render import Output, OutputOpt, emit, for_people, note, plain
from sigvirt.errors import ExitCode, InvalidArgument
from sigvirt.guests import inventory, lifecycle, scalesets, seed, vms, vmviews
from sigvirt.guests.inventory import Vm
from sigvirt.guests.lifecycle import PowerAction
from sigvirt.guests.vms import VmRequest

app = typer.Typer(
    help="Virtual machines on linked clones of image versions (az vm).", no_args_is_help=True
)
vmss_app = typer.Typer(help="Scale sets: many VMs of one image (az vmss).", no_args_is_help=True)

NameOpt = Annotated[str, typer.Option("--name", "-n", help="VM name (also its hostname)")]
VmOpt = Annotated[
    str | None, typer.Option("--name", "-n", help="VM name (or --ids)", show_default=False)
]
VmssNameOpt = Annotated[
    str,
    typer.Option(
        "--name", "-n", help="scale set name; its instances are NAME-0, NAME-1, … (hostnames)"
    ),
]
VmssOpt = Annotated[
    str | None,
    typer.Option("--name", "-n", help="scale set name (or --ids)", show_default=False),
]
RegionOpt = Annotated[str | None, typer.Option("--region", "--location", "-l", help="region")]
ImageOpt = Annotated[
    str,
    typer.Option(
        "--image",
        help="GALLERY/DEFINITION or GALLERY/DEFINITION/VERSION or an Azure-style image id",
    ),
]
VcpusOpt = Annotated[int | None, typer.Option("--vcpus", help="virtual CPUs (size: Custom)")]
MemoryOpt = Annotated[int | None, typer.Option("--memory", help="MiB (size: Custom)")]
SizeOpt = Annotated[str | None, typer.Option("--size", help="e.g. Standard_B1s, Lab_Tiny")]
SkuOpt = Annotated[
    str | None,
    typer.Option("--vm-sku", "--size", help="instances' size, e.g. Standard_B1s, Lab_Tiny"),
]
AdminOpt = Annotated[
    str | None, typer.Option("--admin-username", help="default: your user name (root → azureuser)")
]
KeyOpt = Annotated[
    str | None, typer.Option("--ssh-key-value", help="public key file, or the key itself")
]
GenKeysOpt = Annotated[
    bool, typer.Option("--generate-ssh-keys", help="create ~/.ssh/id_ed25519 if missing")
]
CustomDataOpt = Annotated[
    Path | None, typer.Option("--custom-data", help="cloud-init user data (#cloud-config or #!)")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="allow a size outside the recommendation")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="seconds to wait for SSH")]
OsDiskOpt = Annotated[
    int | None,
    typer.Option(
        "--os-disk-size-gb", help="OS disk size in GiB (at least the image's; default: the image's)"
    ),
]
DataDisksOpt = Annotated[
    list[int] | None,
    typer.Option(
        "--data-disk-sizes-gb",
        help="empty data disks, GiB each (several after one flag): vdc, vdd, … in the guest",
    ),
]
DetailsOpt = Annotated[
    bool,
    typer.Option("--show-details", "-d", help="add powerState and the addresses, as az -d does"),
]
InstanceIdsOpt = Annotated[
    list[str] | None,
    typer.Option("--instance-ids", help="instance ids (az's instanceId), or * for all"),
]
PowerForceOpt = Annotated[
    bool,
    typer.Option(
        "--force", "--skip-shutdown",
        help="stop, deallocate: power off without ACPI shutdown; restart: reset",
    ),
]  # fmt: skip
VM_COLUMNS = ["name", "region", "state", "image", "replica", "address", "admin_user"]
SHOW_COLUMNS = [
    *VM_COLUMNS[:-1], "admin_user", "ssh", "vcpus", "memory_mib", "size", "resource_group",
    "tags", "os_disk_gb", "data_disks", "scale_set", "instance", "boot_seconds", "warnings",
]  # fmt: skip
INSTANCE_COLUMNS = ["instance", "name", "state", "replica", "address", "image"]
VMSS_COLUMNS = ["name", "region", "image", "capacity", "vcpus", "memory_mib", "admin_user",
                "states", "size", "resource_group", "tags"]  # fmt: skip
DEALLOCATED = (
    "A VM that is shut off holds no memory or CPU on the host: its powerState is "
    "'VM deallocated', after stop as after deallocate."
)


def _request(
    name: str, image: str, region: str | None, vcpus: int | None, memory: int | None,
    size: str | None, admin: str | None, key: str | None, gen: bool,
    custom_data: Path | None, force: bool, no_wait: bool, timeout: float,
    resource_group: str | None, tags: list[str] | None, os_disk: int | None,
    data_disks: list[int] | None,
) -> VmRequest:  # fmt: skip
    data = None if custom_data is None else seed.load_custom_data(custom_data)
    return VmRequest(
        name, image, region, vcpus, memory, size, admin, key, gen, data, force, not no_wait,
        timeout, resource_group or "", tagging.parse(tags) or {}, os_disk,
        tuple(data_disks or ()),
    )  # fmt: skip


def _warn(warnings: tuple[str, ...]) -> None:
    for w in warnings:
        note(f"sigvirt: warning: {w}")


def _row(vm: Vm) -> dict[str, Any]:
    """A VM for a table: data disks as a person reads them."""
    row: dict[str, Any] = plain(vm)
    row["data_disks"] = [f"{d.device} {d.size_gb} GiB" for d in vm.data_disks]
    row["os_disk_gb"] = vm.os_disk_gb or None
    return row


def _emit_vms(
    found: list[Vm], output: Output, *, single: bool, details: bool = False,
    group: str | None = None, columns: list[str] = SHOW_COLUMNS, title: str = "VMs",
) -> None:  # fmt: skip
    if for_people(output):
        rows = [_row(v) for v in found]
        emit(rows[0] if single else rows, output, columns, title="" if single else title,
             ready=True)  # fmt: skip
        return
    data = [vmviews.vm_resource(v, details=details, group=group) for v in found]
    emit(data[0] if single else data, output, ready=True)


def _emit_instances(
    found: list[Vm], output: Output, group: str | None = None, expand: bool = False
) -> None:
    if for_people(output):
        sets = sorted({v.scale_set for v in found})
        emit(found, output, INSTANCE_COLUMNS, title=f"instances of {', '.join(sets)}")
        return
    data = [vmviews.instance_resource(v, group=group, expand=expand) for v in found]
    emit(data, output, ready=True)


# -- vm ---------------------------------------------------------------------------------------
@app.command("create")
def vm_create(
    name: NameOpt, image: ImageOpt, region: RegionOpt = None, vcpus: VcpusOpt = None,
    memory: MemoryOpt = None, size: SizeOpt = None, admin_username: AdminOpt = None,
    ssh_key_value: KeyOpt = None, generate_ssh_keys: GenKeysOpt = False,
    custom_data: CustomDataOpt = None, force: ForceOpt = False, no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300, resource_group: ResourceGroupOpt = None, tags: TagsOpt = None,
    os_disk_size_gb: OsDiskOpt = None, data_disk_sizes_gb: DataDisksOpt = None,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Create a VM on a linked clone of the least-used replica; returns when SSH answers
    (with --no-wait once it started: `vm wait --created` follows)."""
    req = _request(
        name, image, region, vcpus, memory, size, admin_username, ssh_key_value,
        generate_ssh_keys, custom_data, force, no_wait, timeout, resource_group, tags,
        os_disk_size_gb, data_disk_sizes_gb,
    )  # fmt: skip
    with context() as ctx:
        vm = vms.create(ctx, req)
    _warn(vm.warnings)
    if for_people(output):
        emit(_row(vm), output, SHOW_COLUMNS, ready=True)
    else:
        emit(vmviews.vm_created(vm, resource_group), output, ready=True)


@app.command("list")
def vm_list(
    region: RegionOpt = None, show_details: DetailsOpt = False,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """List VMs (scale-set instances: vmss list-instances)."""
    with context() as ctx:
        rows, unreachable = inventory.list_vms(ctx, "vm", region)
    for u in unreachable:
        note(f"sigvirt: warning: region unreachable: {u}")
    _emit_vms(rows, output, single=False, details=show_details, group=resource_group,
              columns=VM_COLUMNS)  # fmt: skip


@app.command("show")
def vm_show(
    name: VmOpt = None, ids: IdsOpt = None, region: RegionOpt = None,
    show_details: DetailsOpt = False, resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Show a VM, with the exact ssh command that reaches it."""
    targets = inventory.vm_names(name, ids)
    with context() as ctx:
        found = inventory.show(ctx, targets, region)
    _emit_vms(found, output, single=len(targets) == 1, details=show_details, group=resource_group)


@app.command("list-ip-addresses")
def vm_list_ip_addresses(
    name: VmOpt = None, ids: IdsOpt = None, region: RegionOpt = None,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Each VM's addresses as az lists them: the public one is its SSH forward."""
    wanted = set(inventory.vm_names(name, ids)) if name or ids else None
    with context() as ctx:
        rows, _unreachable = inventory.list_vms(ctx, "vm", region)
    rows = [v for v in rows if wanted is None or v.name in wanted]
    if for_people(output):
        table = [{"virtual_machine": v.name, "public_ip_addresses": v.address,
                  "private_ip_addresses": ""} for v in rows]  # fmt: skip
        emit(table, output, title="IP addresses", ready=True)
        return
    emit(vmviews.ip_addresses(rows, resource_group), output, ready=True)


def _vm_power(action: PowerAction, help_: str) -> None:
    """`vm start|stop|deallocate|restart`: one shape, defined once."""

    def command(
        name: VmOpt = None, ids: IdsOpt = None, region: RegionOpt = None,
        force: PowerForceOpt = False, no_wait: NoWaitOpt = False,
        resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
    ) -> None:  # fmt: skip
        targets = inventory.vm_names(name, ids)
        with context() as ctx:
            found = lifecycle.power(ctx, targets, action, region, force=force, wait=not no_wait)
        _emit_vms(found, output, single=len(targets) == 1, details=True, columns=VM_COLUMNS)

    app.command(action, help=help_)(command)


_vm_power("start", "Start a stopped VM.")
_vm_power("stop", f"Shut a VM down (ACPI, then power off after 60 s). {DEALLOCATED}")
_vm_power("deallocate", f"Shut a VM down and release its memory and CPU: as stop. {DEALLOCATED}")
_vm_power("restart", "Reboot a VM (start it if it is shut off; --force: reset it).")


@app.command("delete")
def vm_delete(
    name: VmOpt = None, ids: IdsOpt = None, region: RegionOpt = None, yes: YesOpt = False,
    no_wait: NoWaitOpt = False, resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Delete a VM with its disks, seed and console log."""
    targets = inventory.vm_names(name, ids)
    with context() as ctx:
        removed = lifecycle.delete_many(ctx, targets, region)
    emit(removed[0] if len(targets) == 1 else removed, output)


@app.command("wait")
def vm_wait(
    name: VmOpt = None, ids: IdsOpt = None, region: RegionOpt = None,
    created: Annotated[bool, typer.Option("--created", help="until SSH answers")] = False,
    deleted: Annotated[bool, typer.Option("--deleted", help="until it is gone")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds")] = 300,
    resource_group: ResourceGroupOpt = None,
) -> None:  # fmt: skip
    """Wait for a VM (after --no-wait): until it answers SSH, or until it is deleted."""
    if created == deleted:
        raise InvalidArgument("give one of --created or --deleted")
    targets = inventory.vm_names(name, ids)
    with context() as ctx:
        lifecycle.wait(ctx, targets, region, deleted=deleted, timeout=timeout)


@app.command("flatten")
def vm_flatten(
    name: VmOpt = None, ids: IdsOpt = None, region: RegionOpt = None,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Copy the replica's data into the VM's own disk so it no longer depends on the version."""
    targets = inventory.vm_names(name, ids)
    with context() as ctx:
        found = [lifecycle.flatten(ctx, n, region) for n in targets]
    _emit_vms(found, output, single=len(targets) == 1, group=resource_group)


@app.command("ssh", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def vm_ssh(
    ctx_: typer.Context,
    name: VmOpt = None,
    ids: IdsOpt = None,
    region: RegionOpt = None,
    dry_run: Annotated[bool, typer.Option("--print", help="print the ssh command only")] = False,
    resource_group: ResourceGroupOpt = None,
) -> None:
    """SSH into a VM: `sigvirt vm ssh -n NAME [-- COMMAND...]`."""
    targets = inventory.vm_names(name, ids)
    if len(targets) != 1:
        raise InvalidArgument("vm ssh reaches one VM: give one --ids")
    with context() as ctx:
        argv = lifecycle.ssh_argv(ctx, targets[0], region, list(ctx_.args))
    if dry_run:
        print(" ".join(argv))
        return
    os.execvp(argv[0], argv)


# -- scale sets -------------------------------------------------------------------------------
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
    }
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


@vmss_app.command("create")
def vmss_create(
    name: VmssNameOpt, image: ImageOpt,
    instance_count: Annotated[int, typer.Option("--instance-count", help="instances")] = 2,
    region: RegionOpt = None, vcpus: VcpusOpt = None, memory: MemoryOpt = None,
    vm_sku: SkuOpt = None, admin_username: AdminOpt = None, ssh_key_value: KeyOpt = None,
    generate_ssh_keys: GenKeysOpt = False, custom_data: CustomDataOpt = None,
    force: ForceOpt = False, no_wait: NoWaitOpt = False, timeout: TimeoutOpt = 300,
    resource_group: ResourceGroupOpt = None, tags: TagsOpt = None,
    os_disk_size_gb: OsDiskOpt = None, data_disk_sizes_gb: DataDisksOpt = None,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Create a scale set; instances boot concurrently, spread over the replicas."""
    req = _request(
        name, image, region, vcpus, memory, vm_sku, admin_username, ssh_key_value,
        generate_ssh_keys, custom_data, force, no_wait, timeout, resource_group, tags,
        os_disk_size_gb, data_disk_sizes_gb,
    )  # fmt: skip
    with context() as ctx:
        result = scalesets.create(ctx, name, instance_count, req)
    _report(result, output, az="vmss", group=resource_group)


@vmss_app.command("scale")
def vmss_scale(
    new_capacity: Annotated[int, typer.Option("--new-capacity", help="instances wanted")],
    name: VmssOpt = None, ids: IdsOpt = None, no_wait: NoWaitOpt = False,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Add instances, or remove the newest ones."""
    (target,) = _one_set(name, ids)
    with context() as ctx:
        result = scalesets.scale(ctx, target, new_capacity, wait=not no_wait)
    _report(result, output, az="resource", group=resource_group)


def _one_set(name: str | None, ids: list[str] | None) -> list[str]:
    targets = inventory.scale_set_names(name, ids)
    if len(targets) != 1:
        raise InvalidArgument("this command takes one scale set: give one --ids")
    return targets


@vmss_app.command("list-instances")
def vmss_list_instances(
    name: VmssOpt = None, ids: IdsOpt = None,
    expand: Annotated[str | None, typer.Option("--expand", help="instanceView")] = None,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Each instance's state, replica and address."""
    if expand not in (None, "instanceView"):
        raise InvalidArgument(f"--expand {expand!r}: only instanceView can be expanded")
    targets = inventory.scale_set_names(name, ids)
    with context() as ctx:
        found = [vm for n in targets for vm in scalesets.members(ctx, n)]
    _emit_instances(found, output, resource_group, expand=expand is not None)


@vmss_app.command("show")
def vmss_show(
    name: VmssOpt = None, ids: IdsOpt = None,
    instance_id: Annotated[str | None, typer.Option("--instance-id", help="one instance")] = None,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Show a scale set (or, with --instance-id, one of its instances)."""
    if instance_id is not None:
        (target,) = _one_set(name, ids)
        if instance_id == "*":
            raise InvalidArgument("--instance-id: one instance id (vmss list-instances: all)")
        with context() as ctx:
            (vm,) = scalesets.select(target, scalesets.members(ctx, target), [instance_id])
        if for_people(output):
            emit(_row(vm), output, SHOW_COLUMNS, ready=True)
        else:
            emit(vmviews.instance_resource(vm, group=resource_group), output, ready=True)
        return
    targets = inventory.scale_set_names(name, ids)
    with context() as ctx:
        sets = [scalesets.show(ctx, n) for n in targets]
    one = len(sets) == 1
    if for_people(output):
        emit(sets[0] if one else sets, output, VMSS_COLUMNS, title="" if one else "scale sets")
    else:
        resources = [vmviews.vmss_resource(s, resource_group) for s in sets]
        emit(resources[0] if one else resources, output, ready=True)


@vmss_app.command("list")
def vmss_list(resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table) -> None:
    """List scale sets."""
    with context() as ctx:
        rows = scalesets.list_all(ctx)
    if for_people(output):
        emit(rows, output, ["name", "region", "image", "capacity", "states"], title="scale sets")
        return
    emit([vmviews.vmss_resource(s, resource_group) for s in rows], output, ready=True)


@vmss_app.command("delete")
def vmss_delete(
    name: VmssOpt = None, ids: IdsOpt = None, yes: YesOpt = False, no_wait: NoWaitOpt = False,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Delete a scale set and all its instances."""
    (target,) = _one_set(name, ids)
    with context() as ctx:
        result = scalesets.delete(ctx, target)
    _report(result, output)


@vmss_app.command("delete-instances")
def vmss_delete_instances(
    instance_ids: InstanceIdsOpt = None, name: VmssOpt = None, ids: IdsOpt = None,
    yes: YesOpt = False, no_wait: NoWaitOpt = False, resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Delete some instances (--instance-ids 0 2, or '*' for all of them)."""
    (target,) = _one_set(name, ids)
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

    vmss_app.command(action, help=help_)(command)


_vmss_power("start", "Start instances (all, or --instance-ids).")
_vmss_power("stop", f"Shut instances down (all, or --instance-ids). {DEALLOCATED}")
_vmss_power("deallocate", f"Shut instances down: as stop. {DEALLOCATED}")
_vmss_power("restart", "Reboot instances (all, or --instance-ids; --force: reset them).")


@vmss_app.command("list-instance-connection-info")
def vmss_connection_info(
    name: VmssOpt = None, ids: IdsOpt = None, resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Where each instance's SSH answers: {"instance 0": "127.0.0.1:PORT", ...}."""
    (target,) = _one_set(name, ids)
    with context() as ctx:
        found = scalesets.members(ctx, target)
    emit(vmviews.connection_info(found), output, ready=True)


@vmss_app.command("get-instance-view")
def vmss_get_instance_view(
    name: VmssOpt = None, ids: IdsOpt = None,
    instance_id: Annotated[
        str | None, typer.Option("--instance-id", help="one instance, or * for each")
    ] = None,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Statuses: of the scale set (a count per status), or of its instances."""
    (target,) = _one_set(name, ids)
    with context() as ctx:
        found = scalesets.members(ctx, target)
        chosen = scalesets.select(target, found, [instance_id] if instance_id else None)
    if for_people(output):
        table = [{"instance": v.instance, "name": v.name, "power_state": vmviews.power_state(v)}
                 for v in chosen]  # fmt: skip
        emit(table, output, title=f"instances of {target}", ready=True)
    elif instance_id is None:
        view = vmviews.vmss_instance_view(scalesets.summary(target, found), found)
        emit(view, output, ready=True)
    elif instance_id == "*":
        data = [vmviews.instance_resource(v, group=resource_group, expand=True) for v in chosen]
        emit(data, output, ready=True)
    else:
        emit(vmviews.instance_view(chosen[0]), output, ready=True)
