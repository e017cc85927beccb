"""What an image definition's features make of a guest's devices (issue 17): the OS disk's
controller (az `--disk-controller-type`, the definition's DiskControllerTypes) and virtio-net
multiqueue (IsAcceleratedNetworkSupported), decided before anything is created.

| asked (`--disk-controller-type`) | the OS disk |
| --- | --- |
| nothing | virtio-blk (`vda`), sigvirt's default; NVMe when the definition lists only NVMe |
| SCSI | virtio-scsi (`sda`), if the definition lists SCSI |
| NVMe | QEMU's NVMe controller (`nvme0n1`), if the definition lists NVMe |

Trusted Launch (SecurityType=TrustedLaunch, or `--security-type TrustedLaunch` on a
TrustedLaunchSupported definition): Secure Boot firmware with Microsoft's keys enrolled, SMM,
and a vTPM 2.0 (domxml.DomainSpec.trusted_launch). Confidential VMs are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from sigvirt.catalog import features
from sigvirt.catalog.records import Definition
from sigvirt.errors import InvalidArgument, Unsupported
from sigvirt.guests.domxml import DiskController
from sigvirt.hosts.regions import Network

FLAG = "--disk-controller-type"
# az's spelling (storageProfile.diskControllerType) of each controller; virtio-blk has none
AZ_NAMES: dict[DiskController, str] = {"scsi": "SCSI", "nvme": "NVMe"}
# libvirt 9.0 has no emulated NVMe disk: it is a virtio-blk disk whose QEMU device is
# overridden (domxml._nvme_override), which <qemu:override> allows from libvirt 8.2.0 on.
NVME_MIN_LIBVIRT = (8, 2, 0)


@dataclass(frozen=True)
class Devices:
    """A guest's device choices and what the definition asked that can't apply here."""

    disk_controller: DiskController = "virtio"
    net_queues: int = 0
    notes: tuple[str, ...] = ()  # warnings
    trusted_launch: bool = False  # Secure Boot + vTPM

    @property
    def recorded(self) -> str:
        """The controller as a domain's provenance records it ("" = virtio-blk)."""
        return "" if self.disk_controller == "virtio" else self.disk_controller


def parse_controller(text: str) -> DiskController:
    """az's value (SCSI or NVMe, any case) as sigvirt's controller name."""
    for name, az in AZ_NAMES.items():
        if text.strip().lower() == az.lower():
            return name
    raise InvalidArgument(f"{FLAG} {text!r}: expected one of {', '.join(AZ_NAMES.values())}")


def choose(
    d: Definition, asked: str | None, vcpus: int, network: Network, security: str | None = None
) -> Devices:
    """The devices a VM of definition `d` gets; refuses (InvalidArgument) a controller the
    definition doesn't list, and (Unsupported) a security type sigvirt can't launch.
    `security`: az's `--security-type` (Standard or TrustedLaunch), None for the image's."""
    where = f"image definition {d.gallery}/{d.name}"
    unsupported = features.unsupported_security(d.features)
    if unsupported:
        raise Unsupported(
            f"{where} requires {features.SECURITY_TYPE}={unsupported}: sigvirt has no "
            "confidential guests (SEV-SNP, TDX)"
        )
    trusted = _trusted_launch(d, security, where)
    listed = features.controllers(d.features)
    if not asked:  # None, or "" (a scale-set model's: none asked)
        controller: DiskController = "nvme" if listed == ("NVMe",) else "virtio"
    else:
        controller = parse_controller(asked)
        if AZ_NAMES[controller] not in listed:
            offered = ",".join(listed) if listed else "none"
            raise InvalidArgument(
                f"{FLAG} {AZ_NAMES[controller]}: {where} doesn't list it in its "
                f"{features.DISK_CONTROLLER_TYPES} ({offered})"
            )
        if d.hyper_v_generation != "V2":
            raise InvalidArgument(
                f"{FLAG} needs a V2 (UEFI) image definition, as in Azure; {where} is "
                f"{d.hyper_v_generation}"
            )
    queues, notes = _queues(d, vcpus, network)
    return Devices(controller, queues, notes, trusted)


SECURITY_FLAG = "--security-type"
UEFI_FLAGS = ("--enable-secure-boot", "--enable-vtpm")


def security_asked(
    security_type: str | None, secure_boot: bool | None = None, vtpm: bool | None = None
) -> str | None:
    """az's `--security-type` with `--enable-secure-boot` / `--enable-vtpm` as one request
    for choose(): the UEFI flags mean TrustedLaunch, whose VMs here always have both (a
    Trusted Launch VM without Secure Boot or vTPM is refused, InvalidArgument)."""
    given = [f for f, v in zip(UEFI_FLAGS, (secure_boot, vtpm), strict=True) if v is not None]
    if not given:
        return security_type
    if False in (secure_boot, vtpm):
        off = UEFI_FLAGS[0] if secure_boot is False else UEFI_FLAGS[1]
        raise InvalidArgument(
            f"{off} false: sigvirt's Trusted Launch VMs always boot with Secure Boot and a vTPM"
        )
    if (security_type or "TrustedLaunch").strip().lower() != "trustedlaunch":
        raise InvalidArgument(
            f"{' and '.join(given)} can only be used with {SECURITY_FLAG} TrustedLaunch"
        )
    return "TrustedLaunch"


def _trusted_launch(d: Definition, asked: str | None, where: str) -> bool:
    """Whether the VM launches trusted: a TrustedLaunch image always, a TrustedLaunchSupported
    one when asked (`--security-type TrustedLaunch`), others never (asking is refused)."""
    stored = d.features.get(features.SECURITY_TYPE, "")
    wanted = (asked or "").strip().lower()
    if wanted not in ("", "standard", "trustedlaunch"):
        raise InvalidArgument(f"{SECURITY_FLAG} {asked}: expected Standard or TrustedLaunch")
    if stored == features.TRUSTED_LAUNCH:
        if wanted == "standard":
            raise InvalidArgument(f"{SECURITY_FLAG} Standard: {where} requires TrustedLaunch")
        trusted = True
    elif wanted == "trustedlaunch":
        if "TrustedLaunch" not in stored:
            raise InvalidArgument(
                f"{SECURITY_FLAG} TrustedLaunch: {where} doesn't support it (its "
                f"{features.SECURITY_TYPE} is {stored or 'Standard'})"
            )
        trusted = True
    else:
        return False
    if d.hyper_v_generation != "V2" or d.architecture != "x64":
        raise InvalidArgument(
            f"Trusted Launch needs a V2 (UEFI) x64 image definition, as in Azure; {where} is "
            f"{d.hyper_v_generation} {d.architecture}"
        )
    return trusted


def _queues(d: Definition, vcpus: int, network: Network) -> tuple[int, tuple[str, ...]]:
    """IsAcceleratedNetworkSupported=True: one virtio-net queue pair per vCPU, where the
    network kind has queues to give (a tap: libvirt networks and bridges). QEMU's user
    networking (slirp) has one queue, and a Windows guest's e1000e none to spread."""
    if not features.is_true(d.features, features.ACCELERATED_NETWORKING):
        return 0, ()
    if d.os_type == "Windows":
        return 0, ("accelerated networking: a Windows guest's e1000e NIC has one queue",)
    if network.kind == "user-forward":
        return 0, (
            "accelerated networking: this region's user networking (QEMU slirp) has one "
            "queue; virtio-net multiqueue needs a region on a libvirt network or bridge",
        )
    return (vcpus if vcpus > 1 else 0), ()


def check_host(devices: Devices, libvirt_version: str, where: str) -> None:
    """Refuses (Unsupported) a controller the region's libvirt can't give."""
    if devices.disk_controller != "nvme":
        return
    try:
        have = tuple(int(p) for p in libvirt_version.split(".")[:3])
    except ValueError:
        return  # a version we can't read: libvirt will say it itself at define time
    if have < NVME_MIN_LIBVIRT:
        need = ".".join(map(str, NVME_MIN_LIBVIRT))
        raise Unsupported(
            f"{FLAG} NVMe: region {where} runs libvirt {libvirt_version}; an NVMe OS disk "
            f"needs libvirt >= {need} (<qemu:override>)"
        )
