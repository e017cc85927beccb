"""What `sigvirt vm` and `sigvirt vmss` share: option types, table columns, the request a
create builds, and how a VM is shown in a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sigvirt.catalog import tags as tagging
from sigvirt.cli.render import note, plain
from sigvirt.cli.safetyargs import flag
from sigvirt.guests import devices, seed
from sigvirt.guests.inventory import Vm
from sigvirt.guests.vms import VmRequest

NameOpt = Annotated[str, typer.Option("--name", "-n", help="VM name (also its hostname)")]
VmOpt = Annotated[
    str | None, typer.Option("--name", "-n", help="VM name (or --ids)", show_default=False)
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
PasswordOpt = Annotated[
    str | None,
    typer.Option(
        "--admin-password",
        help="refused: sigvirt's guests take SSH keys (az's flag, so scripts fail clearly)",
    ),
]
ComputerNameOpt = Annotated[
    str | None, typer.Option("--computer-name", help="the guest's hostname (default: --name)")
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
        help="empty data disks, GiB each (several after one flag): vdc, vdd, … in the guest "
        "(vdb on when the OS disk is SCSI/NVMe or there is no seed); by serial: "
        "/dev/disk/by-id/virtio-sigvirt-lun0, …",
    ),
]
DiskControllerOpt = Annotated[
    str | None,
    typer.Option(
        "--disk-controller-type",
        metavar="SCSI|NVMe",
        help="the OS disk's controller (virtio-scsi or NVMe; default virtio-blk); the image "
        "definition must list it in its DiskControllerTypes feature",
    ),
]
SecurityTypeOpt = Annotated[
    str | None,
    typer.Option(
        "--security-type",
        metavar="Standard|TrustedLaunch",
        help="TrustedLaunch: Secure Boot (OVMF, Microsoft's keys) and a vTPM 2.0; the image "
        "definition's SecurityType must allow it (TrustedLaunch images always launch so)",
    ),
]
SecureBootOpt = Annotated[
    str | None,
    typer.Option(
        "--enable-secure-boot", metavar="true|false", help="Trusted Launch: always true here"
    ),
]
VtpmOpt = Annotated[
    str | None,
    typer.Option("--enable-vtpm", metavar="true|false", help="Trusted Launch: always true here"),
]
DetailsOpt = Annotated[
    bool,
    typer.Option("--show-details", "-d", help="add powerState and the addresses, as az -d does"),
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
DEALLOCATED = (
    "A VM that is shut off holds no memory or CPU on the host: its powerState is "
    "'VM deallocated', after stop as after deallocate."
)


def security_request(
    security_type: str | None, enable_secure_boot: str | None, enable_vtpm: str | None
) -> str | None:
    """az's --security-type with --enable-secure-boot / --enable-vtpm, as `vm create` and
    `vmss create` take them, as one security type for guests/devices.py (None: not asked)."""
    return devices.security_asked(
        security_type,
        flag(enable_secure_boot, "--enable-secure-boot"),
        flag(enable_vtpm, "--enable-vtpm"),
    )


def request(
    name: str, image: str, region: str | None, vcpus: int | None, memory: int | None,
    size: str | None, admin: str | None, key: str | None, gen: bool,
    custom_data: Path | None, force: bool, no_wait: bool, timeout: float,
    resource_group: str | None, tags: list[str] | None, os_disk: int | None,
    data_disks: list[int] | None, *, admin_password: str | None = None,
    computer_name: str | None = None,
) -> VmRequest:  # fmt: skip
    data = None if custom_data is None else seed.load_custom_data(custom_data)
    return VmRequest(
        name, image, region, vcpus, memory, size, admin, key, gen, data, force, not no_wait,
        timeout, resource_group or "", tagging.parse(tags) or {}, os_disk,
        tuple(data_disks or ()), admin_password=admin_password, computer_name=computer_name,
    )  # fmt: skip


def warn(warnings: tuple[str, ...]) -> None:
    for w in warnings:
        note(f"sigvirt: warning: {w}")


def row(vm: Vm) -> dict[str, Any]:
    """A VM for a table: data disks as a person reads them."""
    row: dict[str, Any] = plain(vm)
    row["data_disks"] = [f"{d.device} {d.size_gb} GiB" for d in vm.data_disks]
    row["os_disk_gb"] = vm.os_disk_gb or None
    return row
