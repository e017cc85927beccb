"""Guest architectures: what an image definition's --architecture boots on, and whether a
region's host can run it.

Azure names two architectures, x64 and Arm64. On QEMU they are libvirt's x86_64 (q35) and
aarch64 (`virt`, UEFI only: AAVMF). A host runs an architecture when libvirt's domain
capabilities for it name an emulator (qemu-system-aarch64) and, for Arm64, a UEFI loader
(package qemu-efi-aarch64); KVM only when the host's own CPU is of that architecture and
libvirt offers kvm for it (an x86 host runs Arm64 guests under TCG).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from sigvirt.errors import Unsupported
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import ARCHITECTURES, Accel, AccelSetting, RegionConfig

__all__ = ["ARCHITECTURES", "ArchSupport", "accel_for", "check_declared", "require", "support"]
LIBVIRT_ARCH = {"x64": "x86_64", "Arm64": "aarch64"}
MACHINE = {"x64": "q35", "Arm64": "virt"}
# Where the pieces come from on Debian, for the line that says one is missing.
PACKAGES = {"x64": ("qemu-system-x86", "ovmf"), "Arm64": ("qemu-system-arm", "qemu-efi-aarch64")}


@dataclass(frozen=True)
class ArchSupport:
    """What one host has for one architecture (from libvirt's domain capabilities)."""

    architecture: str  # x64 | Arm64
    emulator: str = ""  # "" when libvirt knows no emulator for it
    loaders: tuple[str, ...] = ()  # UEFI firmware images libvirt offers
    kvm: bool = False

    @property
    def problem(self) -> str | None:
        """Why the host can't boot this architecture's guests; None when it can."""
        emulator_pkg, firmware_pkg = PACKAGES[self.architecture]
        arch = LIBVIRT_ARCH[self.architecture]
        if not self.emulator:
            return f"no {arch} emulator (install {emulator_pkg})"
        if self.architecture == "Arm64" and not self.loaders:
            return f"no UEFI firmware for {arch} (install {firmware_pkg})"
        return None

    @property
    def accel(self) -> Accel:
        return "kvm" if self.kvm else "tcg"


def support(hv: Hypervisor, architecture: str) -> ArchSupport:
    """The host's support for `architecture` (x64 or Arm64)."""
    arch = LIBVIRT_ARCH[architecture]
    text = hv.domain_capabilities(arch, MACHINE[architecture], "qemu")
    if text is None:
        return ArchSupport(architecture)
    caps = ET.fromstring(text)
    loaders = tuple(v.text or "" for v in caps.findall("./os/loader/value"))
    kvm = hv.host_arch() == arch and hv.domain_capabilities(arch, MACHINE[architecture], "kvm")
    return ArchSupport(architecture, caps.findtext("path") or "", loaders, bool(kvm))


def check_declared(region: RegionConfig, architecture: str) -> None:
    """A region (or zone) whose regions.yaml lists `architectures` serves only those."""
    if region.architectures and architecture not in region.architectures:
        raise Unsupported(
            f"region {region.location} does not run --architecture {architecture} guests "
            f"(regions.yaml architectures: {', '.join(region.architectures)})"
        )


def require(hv: Hypervisor, region: RegionConfig, architecture: str) -> ArchSupport:
    """The host's support for `architecture`; Unsupported with the missing piece if none."""
    check_declared(region, architecture)
    found = support(hv, architecture)
    if found.problem:
        raise Unsupported(
            f"region {region.location} can't run --architecture {architecture} guests: "
            f"{found.problem}"
        )
    return found


def accel_for(found: ArchSupport, setting: AccelSetting) -> Accel | None:
    """The accelerator a guest of this architecture gets: the region's setting where the
    host can honour it (TCG for a foreign architecture, whatever the region says); None
    for x64 under `auto` (the host decides, as before)."""
    if found.architecture == "x64":
        return None if setting == "auto" else setting
    if setting == "tcg" or not found.kvm:
        return "tcg"
    return "kvm"
