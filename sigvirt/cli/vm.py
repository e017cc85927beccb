"""`sigvirt vm …`: guests from image versions (az vm). Scale sets: cli/vmss.py.

JSON and YAML come in az's shape (guests/vmviews.py), with sigvirt's own facts under the
`sigvirt` key; tables are for people and show sigvirt's records as they always did.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated

import typer

from sigvirt.cli.common import (
    IdsOpt,
    NoWaitOpt,
    ResourceGroupOpt,
    TagsOpt,
    YesOpt,
    context,
)
from sigvirt.cli.render import Output, OutputOpt, emit, for_people, note
from sigvirt.cli.vmcommon import (
    DEALLOCATED,
    SHOW_COLUMNS,
    VM_COLUMNS,
    AdminOpt,
    ComputerNameOpt,
    CustomDataOpt,
    DataDisksOpt,
    DetailsOpt,
    DiskControllerOpt,
    ForceOpt,
    GenKeysOpt,
    ImageOpt,
    KeyOpt,
    MemoryOpt,
    NameOpt,
    OsDiskOpt,
    PasswordOpt,
    PowerForceOpt,
    RegionOpt,
    SecureBootOpt,
    SecurityTypeOpt,
    SizeOpt,
    TimeoutOpt,
    VcpusOpt,
    VmOpt,
    VtpmOpt,
    request,
    row,
    security_request,
    warn,
)
from sigvirt.cli.vmss import app as vmss_app  # `sigvirt vmss` (mounted in cli/__init__.py)
from sigvirt.errors import InvalidArgument
from sigvirt.guests import inventory, lifecycle, vms, vmviews
from sigvirt.guests.inventory import Vm
from sigvirt.guests.lifecycle import PowerAction

app = typer.Typer(
    help="Virtual machines on linked clones of image versions (az vm).", no_args_is_help=True
)
__all__ = ["app", "vmss_app"]
ZoneOpt = Annotated[
    str | None,
    typer.Option(
        "--zone", "-z", help="the availability zone of a zoned region to run in (az's --zone)"
    ),
]


def _emit_vms(
    found: list[Vm], output: Output, *, single: bool, details: bool = False,
    group: str | None = None, columns: list[str] = SHOW_COLUMNS, title: str = "VMs",
) -> None:  # fmt: skip
    if for_people(output):
        rows = [row(v) for v in found]
        emit(rows[0] if single else rows, output, columns, title="" if single else title,
             ready=True)  # fmt: skip
        return
    data = [vmviews.vm_resource(v, details=details, group=group) for v in found]
    emit(data[0] if single else data, output, ready=True)


# -- vm ---------------------------------------------------------------------------------------
@app.command("create")
def vm_create(
    name: NameOpt, image: ImageOpt, region: RegionOpt = None, vcpus: VcpusOpt = None,
    memory: MemoryOpt = None, size: SizeOpt = None, admin_username: AdminOpt = None,
    ssh_key_value: KeyOpt = None, generate_ssh_keys: GenKeysOpt = False,
    custom_data: CustomDataOpt = None, force: ForceOpt = False, no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300, resource_group: ResourceGroupOpt = None, tags: TagsOpt = None,
    os_disk_size_gb: OsDiskOpt = None, data_disk_sizes_gb: DataDisksOpt = None,
    admin_password: PasswordOpt = None, computer_name: ComputerNameOpt = None,
    zone: ZoneOpt = None, disk_controller_type: DiskControllerOpt = None,
    security_type: SecurityTypeOpt = None, enable_secure_boot: SecureBootOpt = None,
    enable_vtpm: VtpmOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Create a VM on a linked clone of the least-used replica; returns when SSH answers
    (a specialized image: when its sshd answers; Windows: once it runs, with the way to its
    console; with --no-wait once it started: `vm wait --created` follows)."""
    req = request(
        name, image, region, vcpus, memory, size, admin_username, ssh_key_value,
        generate_ssh_keys, custom_data, force, no_wait, timeout, resource_group, tags,
        os_disk_size_gb, data_disk_sizes_gb, admin_password=admin_password,
        computer_name=computer_name,
    )  # fmt: skip
    security = security_request(security_type, enable_secure_boot, enable_vtpm)
    req = dataclasses.replace(
        req, zone=zone, disk_controller_type=disk_controller_type, security_type=security
    )
    with context() as ctx:
        vm = vms.create(ctx, req)
    warn(vm.warnings)
    if vm.console:
        note(f"sigvirt: {vm.name}: {vm.console}")
    if for_people(output):
        emit(row(vm), output, SHOW_COLUMNS, ready=True)
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
    local_user: Annotated[
        str | None,
        typer.Option(
            "--local-user", "--username", "-u",
            help="log in as this user (a specialized image's own; default: the admin user)",
        ),
    ] = None,
    private_key_file: Annotated[
        Path | None,
        typer.Option(
            "--private-key-file", "--ssh-key", "-i",
            help="with this private key (default: the key the VM was created with)",
        ),
    ] = None,
    resource_group: ResourceGroupOpt = None,
) -> None:  # fmt: skip
    """SSH into a VM: `sigvirt vm ssh -n NAME [-- COMMAND...]`."""
    targets = inventory.vm_names(name, ids)
    if len(targets) != 1:
        raise InvalidArgument("vm ssh reaches one VM: give one --ids")
    with context() as ctx:
        argv = lifecycle.ssh_argv(
            ctx, targets[0], region, list(ctx_.args), user=local_user, key=private_key_file
        )
    if dry_run:
        print(" ".join(argv))
        return
    os.execvp(argv[0], argv)
