"""`sigvirt vm …` and `sigvirt vmss …`: guests from image versions (az vm / az vmss)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from sigvirt.cli.common import ResourceGroupOpt, context
from sigvirt.cli.render import Output, OutputOpt, emit, note
from sigvirt.errors import ExitCode
from sigvirt.guests import scalesets, seed, vms
from sigvirt.guests.vms import VmRequest

app = typer.Typer(
    help="Virtual machines on linked clones of image versions (az vm).", no_args_is_help=True
)
vmss_app = typer.Typer(help="Scale sets: many VMs of one image (az vmss).", no_args_is_help=True)

NameOpt = Annotated[str, typer.Option("--name", "-n", help="VM name (also its hostname)")]
RegionOpt = Annotated[str | None, typer.Option("--region", "--location", "-l", help="region")]
ImageOpt = Annotated[
    str,
    typer.Option(
        "--image",
        help="GALLERY/DEFINITION or GALLERY/DEFINITION/VERSION or an Azure-style image id",
    ),
]
VcpusOpt = Annotated[int | None, typer.Option("--vcpus", help="virtual CPUs")]
MemoryOpt = Annotated[int | None, typer.Option("--memory", help="MiB")]
SizeOpt = Annotated[str | None, typer.Option("--size", help="e.g. Standard_B1s, Lab_Tiny")]
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
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="return once the VM is started")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="seconds to wait for SSH")]
VM_COLUMNS = ["name", "region", "state", "image", "replica", "address", "admin_user"]
INSTANCE_COLUMNS = ["instance", "name", "state", "replica", "address", "image"]


def _request(
    name: str, image: str, region: str | None, vcpus: int | None, memory: int | None,
    size: str | None, admin: str | None, key: str | None, gen: bool,
    custom_data: Path | None, force: bool, no_wait: bool, timeout: float,
) -> VmRequest:  # fmt: skip
    data = None if custom_data is None else seed.load_custom_data(custom_data)
    return VmRequest(
        name, image, region, vcpus, memory, size, admin, key, gen, data, force, not no_wait,
        timeout,
    )  # fmt: skip


def _warn(warnings: tuple[str, ...]) -> None:
    for w in warnings:
        note(f"sigvirt: warning: {w}")


@app.command("create")
def vm_create(
    name: NameOpt, image: ImageOpt, region: RegionOpt = None, vcpus: VcpusOpt = None,
    memory: MemoryOpt = None, size: SizeOpt = None, admin_username: AdminOpt = None,
    ssh_key_value: KeyOpt = None, generate_ssh_keys: GenKeysOpt = False,
    custom_data: CustomDataOpt = None, force: ForceOpt = False, no_wait: NoWaitOpt = False,
    timeout: TimeoutOpt = 300, resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Create a VM on a linked clone of the least-used replica; returns when SSH answers."""
    req = _request(
        name, image, region, vcpus, memory, size, admin_username, ssh_key_value,
        generate_ssh_keys, custom_data, force, no_wait, timeout,
    )  # fmt: skip
    with context() as ctx:
        vm = vms.create(ctx, req)
    _warn(vm.warnings)
    emit(vm, output)


@app.command("list")
def vm_list(region: RegionOpt = None, output: OutputOpt = Output.table) -> None:
    """List VMs (scale-set instances: vmss list-instances)."""
    with context() as ctx:
        rows, unreachable = vms.list_vms(ctx, "vm", region)
    for u in unreachable:
        note(f"sigvirt: warning: region unreachable: {u}")
    emit(rows, output, VM_COLUMNS, title="VMs")


@app.command("show")
def vm_show(name: NameOpt, region: RegionOpt = None, output: OutputOpt = Output.table) -> None:
    """Show a VM, with the exact ssh command that reaches it."""
    with context() as ctx:
        hv, r, dom = vms.find(ctx, name, region)
        vm = vms.describe(hv, r, dom)
    emit(vm, output)


@app.command("start")
def vm_start(name: NameOpt, region: RegionOpt = None, output: OutputOpt = Output.table) -> None:
    """Start a stopped VM."""
    with context() as ctx:
        vm = vms.start(ctx, name, region)
    emit(vm, output, VM_COLUMNS)


@app.command("stop")
def vm_stop(
    name: NameOpt,
    region: RegionOpt = None,
    force: Annotated[bool, typer.Option("--force", help="power off without ACPI shutdown")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Shut a VM down (ACPI, then power off after 60 s)."""
    with context() as ctx:
        vm = vms.stop(ctx, name, region, force)
    emit(vm, output, VM_COLUMNS)


@app.command("restart")
def vm_restart(name: NameOpt, region: RegionOpt = None, output: OutputOpt = Output.table) -> None:
    """Reboot a VM."""
    with context() as ctx:
        vm = vms.restart(ctx, name, region)
    emit(vm, output, VM_COLUMNS)


@app.command("delete")
def vm_delete(name: NameOpt, region: RegionOpt = None, output: OutputOpt = Output.table) -> None:
    """Delete a VM with its disk, seed and console log."""
    with context() as ctx:
        removed = vms.delete(ctx, name, region)
    emit({"deleted": name, "removed": removed}, output)


@app.command("flatten")
def vm_flatten(name: NameOpt, region: RegionOpt = None, output: OutputOpt = Output.table) -> None:
    """Copy the replica's data into the VM's disk so it no longer depends on the version."""
    with context() as ctx:
        vm = vms.flatten(ctx, name, region)
    emit(vm, output)


@app.command("ssh", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def vm_ssh(
    ctx_: typer.Context,
    name: NameOpt,
    region: RegionOpt = None,
    dry_run: Annotated[bool, typer.Option("--print", help="print the ssh command only")] = False,
) -> None:
    """SSH into a VM: `sigvirt vm ssh -n NAME [-- COMMAND...]`."""
    with context() as ctx:
        argv = vms.ssh_argv(ctx, name, region, list(ctx_.args))
    if dry_run:
        print(" ".join(argv))
        return
    os.execvp(argv[0], argv)


# -- scale sets -------------------------------------------------------------------------------
def _report(result: scalesets.ScaleResult, output: Output) -> None:
    emit(
        {
            "scale_set": result.scale_set,
            "created": [v.name for v in result.created],
            "deleted": list(result.deleted),
            "failed": list(result.failed),
        },
        output,
    )
    if result.failed:
        raise typer.Exit(ExitCode.GUEST_FAILED)


@vmss_app.command("create")
def vmss_create(
    name: NameOpt, image: ImageOpt,
    instance_count: Annotated[int, typer.Option("--instance-count", help="instances")] = 2,
    region: RegionOpt = None, vcpus: VcpusOpt = None, memory: MemoryOpt = None,
    size: SizeOpt = None, admin_username: AdminOpt = None, ssh_key_value: KeyOpt = None,
    generate_ssh_keys: GenKeysOpt = False, custom_data: CustomDataOpt = None,
    force: ForceOpt = False, no_wait: NoWaitOpt = False, timeout: TimeoutOpt = 300,
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Create a scale set; instances boot concurrently, spread over the replicas."""
    req = _request(
        name, image, region, vcpus, memory, size, admin_username, ssh_key_value,
        generate_ssh_keys, custom_data, force, no_wait, timeout,
    )  # fmt: skip
    with context() as ctx:
        result = scalesets.create(ctx, name, instance_count, req)
    _report(result, output)


@vmss_app.command("scale")
def vmss_scale(
    name: NameOpt,
    new_capacity: Annotated[int, typer.Option("--new-capacity", help="instances wanted")],
    no_wait: NoWaitOpt = False,
    output: OutputOpt = Output.table,
) -> None:
    """Add instances, or remove the newest ones."""
    with context() as ctx:
        result = scalesets.scale(ctx, name, new_capacity, wait=not no_wait)
    _report(result, output)


@vmss_app.command("list-instances")
def vmss_list_instances(name: NameOpt, output: OutputOpt = Output.table) -> None:
    """Each instance's state, replica and address."""
    with context() as ctx:
        rows = scalesets.instances(ctx, name)
    emit(rows, output, INSTANCE_COLUMNS, title=f"instances of {name}")


@vmss_app.command("show")
def vmss_show(name: NameOpt, output: OutputOpt = Output.table) -> None:
    """Show a scale set."""
    with context() as ctx:
        s = scalesets.show(ctx, name)
    emit(s, output)


@vmss_app.command("list")
def vmss_list(output: OutputOpt = Output.table) -> None:
    """List scale sets."""
    with context() as ctx:
        rows = scalesets.list_all(ctx)
    emit(rows, output, ["name", "region", "image", "capacity", "states"], title="scale sets")


@vmss_app.command("delete")
def vmss_delete(name: NameOpt, output: OutputOpt = Output.table) -> None:
    """Delete a scale set and all its instances."""
    with context() as ctx:
        result = scalesets.delete(ctx, name)
    _report(result, output)
