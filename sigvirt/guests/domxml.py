"""Domain XML from pure functions, and sigvirt's provenance metadata inside it.

Nothing here talks to libvirt; tests compare the output with expected files. Pool and
volume XML live with the host handle (hosts/xmlbuild.py).
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from sigvirt.catalog.records import Firmware
from sigvirt.errors import InternalError
from sigvirt.guests.memory import memory_backing, tb_cache_mib
from sigvirt.guests.osdisk import Intent, OsDisk
from sigvirt.hosts.regions import Accel, Network
from sigvirt.hosts.xmlbuild import render, sub

# One namespace URI for everything sigvirt writes into libvirt <metadata>.
XMLNS = "https://sigvirt.dev/xmlns/provenance/1"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("sigvirt", XMLNS)
ET.register_namespace("qemu", QEMU_NS)


@dataclass(frozen=True)
class Backing:
    """One element of a disk's backing chain, spelled out so libvirt never probes formats
    and never relabels a shared base (relabel='no': the gallery's permissions stay)."""

    path: Path
    fmt: str = "qcow2"


@dataclass(frozen=True)
class Provenance:
    """What sigvirt knows about a domain, stored in the domain itself (<metadata>)."""

    kind: str = "vm"  # vm | vmss-instance | guest
    region: str = ""
    image: str = ""  # gallery/definition/version
    replica_pool: str = ""
    replica_path: str = ""
    overlay_pool: str = ""
    overlay: str = ""  # volume name of the linked clone
    seed: str = ""  # volume name of the NoCloud seed
    console: str = ""  # volume name of the serial console log
    admin_user: str = ""
    ssh_port: int = 0
    scale_set: str = ""
    instance: int = -1
    created: str = ""
    # what a scale set needs to add instances like the existing ones
    image_request: str = ""  # as the user named it (a definition means latest)
    ssh_keys: str = ""  # public keys, one per line
    key_path: str = ""  # private key sigvirt waits for SSH with
    custom_data: str = ""  # base64
    flattened: str = ""  # when the disk stopped depending on its replica
    creator: str = ""  # host:boot:pid of the process creating it; cleared once it started
    # az's model of the VM (ids, tags, size) and what a second setup on the host must not touch
    resource_group: str = ""  # -g at create: a name in its Azure-style ids, nothing more
    installation: str = ""  # the gallery root's id (store.installation()); "" = made before
    tags: str = ""  # JSON object: one element keeps the flat codec below
    size: str = ""  # hardwareProfile.vmSize: a size name, or Custom (--vcpus/--memory)
    image_id: str = ""  # the version's Azure id when it was created
    os_disk_gb: int = 0  # --os-disk-size-gb as asked (0: the image's own size)
    os_disk_bytes: int = 0  # the overlay's capacity as created
    data_disks: str = ""  # "VOLUME:GiB ..." in lun order (vdc, vdd, ...)
    # scale-set instances: the model generation the instance got, and a reimage's intent
    model_generation: int = 0
    reimage: str = ""  # osdisk.Intent as JSON while a reimage is under way (or a disk kept)
    disk_controller: str = ""  # the OS disk's controller: scsi | nvme; "" = virtio-blk
    # a guest booted without a seed has admin_user "" (its identity is the image's own)
    os_type: str = ""  # the definition's --os-type when not Linux (Windows)
    computer_name: str = ""  # the hostname --computer-name gave the seed ("": the name)
    security_type: str = ""  # TrustedLaunch when it launched so (Secure Boot + vTPM); "": Standard

    @property
    def tag_map(self) -> dict[str, str]:
        """The tags; a hand-edited value that isn't a JSON object of strings counts as none."""
        try:
            value = json.loads(self.tags) if self.tags else {}
        except ValueError:
            return {}
        if not isinstance(value, dict):
            return {}
        return {str(k): str(v) for k, v in value.items()}

    @property
    def data_disk_list(self) -> tuple[tuple[str, int], ...]:
        """(volume, GiB) per data disk, lun 0 first."""
        out = []
        for item in self.data_disks.split():
            vol, _, gib = item.rpartition(":")
            out.append((vol, int(gib) if gib.isdigit() else 0))
        return tuple(out)

    @property
    def intent(self) -> Intent | None:
        """The reimage under way (or the disk kept by one); None when there is none, or when
        the element was edited into something that is not one."""
        if not self.reimage:
            return None
        try:
            return Intent.decode(self.reimage)
        except (ValueError, TypeError):
            return None

    @property
    def os_disk(self) -> OsDisk:
        """The OS disk the domain boots."""
        return OsDisk(
            self.overlay, self.image, self.image_id, self.replica_pool, self.replica_path,
            self.os_disk_bytes, self.model_generation, self.flattened,
        )  # fmt: skip

    def booting(self, disk: OsDisk, intent: Intent | None) -> Provenance:
        """The provenance of the domain once it boots `disk`, with `intent` recorded."""
        return replace(
            self, overlay=disk.overlay, image=disk.image, image_id=disk.image_id,
            replica_pool=disk.replica_pool, replica_path=disk.replica_path,
            os_disk_bytes=disk.bytes, model_generation=disk.generation,
            flattened=disk.flattened,
            reimage=intent.encode() if intent else "",
        )  # fmt: skip

    @property
    def volumes(self) -> tuple[str, ...]:
        """Every volume the domain owns, all in overlay_pool: a reimage's second overlay too."""
        intent = self.intent
        extra = intent.overlays if intent else ()
        own = (self.overlay, *extra, self.seed, self.console, *(v for v, _ in self.data_disk_list))
        return tuple(dict.fromkeys(v for v in own if v))

    def to_xml(self, namespace: str | None = XMLNS) -> ET.Element:
        """The <guest> element; namespace=None gives it bare, as libvirt's setMetadata takes
        it (libvirt puts it in the namespace it is given itself)."""
        ns = f"{{{namespace}}}" if namespace else ""
        root = ET.Element(f"{ns}guest")
        for f in fields(self):
            value = getattr(self, f.name)
            if value in ("", -1, 0) and f.name not in ("instance",):
                continue
            if f.name == "instance" and value < 0:
                continue
            ET.SubElement(root, f"{ns}{f.name.replace('_', '-')}").text = str(value)
        return root

    @classmethod
    def from_xml(cls, text: str) -> Provenance:
        root = ET.fromstring(text)
        values: dict[str, object] = {}
        for f in fields(cls):
            el = root.find(f.name.replace("_", "-"))
            if el is None:
                el = root.find(f"{{{XMLNS}}}{f.name.replace('_', '-')}")
            if el is None or el.text is None:
                continue
            values[f.name] = int(el.text) if f.type in ("int", int) else el.text
        return cls(**values)  # type: ignore[arg-type]


def encode_tags(tags: dict[str, str]) -> str:
    return json.dumps(tags, sort_keys=True, separators=(",", ":")) if tags else ""


def encode_data_disks(disks: list[tuple[str, int]]) -> str:
    return " ".join(f"{vol}:{gib}" for vol, gib in disks)


def provenance_xml(prov: Provenance) -> str:
    """The provenance element alone, as libvirt's setMetadata takes it."""
    return ET.tostring(prov.to_xml(namespace=None), encoding="unicode")


# The OS disk's controller: virtio-blk (sigvirt's default), virtio-scsi (az's SCSI) or NVMe.
DiskController = Literal["virtio", "scsi", "nvme"]
OS_DISK_ALIAS = "ua-osdisk"  # libvirt keeps user aliases ("ua-" prefix) in the domain


@dataclass(frozen=True)
class DomainSpec:
    name: str
    memory_mib: int
    vcpus: int
    disk: Path  # the linked clone (qcow2 overlay)
    backing: tuple[Backing, ...] = ()
    seed: Path | None = None  # NoCloud ISO, attached as a read-only virtio disk
    data_disks: tuple[Path, ...] = ()  # empty qcow2 volumes: vdc, vdd, ... (lun 0, 1, ...)
    console_log: Path | None = None
    network: Network = field(default_factory=Network)
    accel: Accel = "tcg"
    firmware: Firmware = "bios"
    tb_cache_mib: int = 0  # TCG translation cache; 0: by guest RAM (guests/memory.py)
    provenance: Provenance | None = None
    arch: str = "x86_64"
    machine: str = "q35"
    disk_controller: DiskController = "virtio"
    net_queues: int = 0  # > 1: virtio-net multiqueue (network/bridge; slirp has one queue)
    trusted_launch: bool = False  # Secure Boot (MS keys enrolled, SMM) and a vTPM 2.0; UEFI
    memory_merge: bool = False  # KSM may merge its RAM (guests/memory.py)
    disk_io: str = ""  # QEMU's I/O engine for its disks (hosts/diskio.py); "": libvirt's
    uuid: str = ""  # a redefinition keeps the domain's (libvirt refuses a new one)


def mac_for(name: str) -> str:
    """A stable locally-administered MAC per domain name (QEMU's default is the same for all)."""
    h = hashlib.sha256(name.encode()).digest()
    return "52:54:00:{:02x}:{:02x}:{:02x}".format(*h[:3])


def _disk_backing(parent: ET.Element, chain: tuple[Backing, ...]) -> None:
    node = parent
    for b in chain:
        bs = sub(node, "backingStore", type="file")
        sub(bs, "format", type=b.fmt)
        src = sub(bs, "source", file=str(b.path))
        sub(src, "seclabel", model="dac", relabel="no")
        node = bs
    sub(node, "backingStore")  # end of chain: libvirt must not look further


# Under TCG every emulated PCIe root port costs the guest's firmware and kernel time to probe:
# the six libvirt adds on q35 took ~1.5 s of a tiny guest's ~8 s boot here. So under TCG the
# devices sit on pcie.0 as integrated endpoints (no hot-plug; sigvirt never hot-plugs) and
# there is no USB controller. Under KVM the probing is cheap and libvirt's layout, with its
# hot-pluggable root ports, is kept.
FLAT_SLOTS = {"vda": 0x02, "vdb": 0x03, "nic": 0x04, "virtio-serial": 0x05, "rng": 0x06}
USER_NIC_SLOT = 0x10
# Data disks take the free slots of pcie.0 in order (0x1f is the ICH9 functions' own): the
# guest names virtio disks in PCI order, so lun 0 is vdc whatever the accelerator.
DATA_SLOTS = (*range(0x07, 0x10), *range(0x11, 0x18))
MAX_DATA_DISKS = len(DATA_SLOTS)


def data_device(lun: int, controller: str = "", seeded: bool = True, sata: bool = False) -> str:
    """The guest's name for a data disk: in PCI order, after a virtio-blk OS disk and a seed
    (vdc for lun 0 with both); Windows' are SATA (sdb). Its serial is stable: sigvirt-lunN."""
    if sata:
        return "sd" + chr(ord("b") + lun)
    return "vd" + chr(ord("a") + (controller in ("", "virtio")) + seeded + lun)


def _flat(spec: DomainSpec) -> bool:
    # aarch64's `virt` has a PCIe root too: the same saving applies to its devices
    return spec.accel == "tcg" and spec.machine in ("q35", "virt")


def _pci_slot(parent: ET.Element, spec: DomainSpec, what: str | int) -> None:
    if _flat(spec):
        slot = FLAT_SLOTS[what] if isinstance(what, str) else what
        sub(
            parent, "address", type="pci", domain="0x0000", bus="0x00",
            slot=f"0x{slot:02x}", function="0x0",
        )  # fmt: skip


def _head(spec: DomainSpec) -> tuple[ET.Element, ET.Element]:
    """<domain> up to its <features> (acpi, apic): name, provenance, size, firmware."""
    dom = ET.Element("domain", type="kvm" if spec.accel == "kvm" else "qemu")
    sub(dom, "name", spec.name)
    if spec.uuid:
        sub(dom, "uuid", spec.uuid)
    if spec.provenance is not None:
        sub(dom, "metadata").append(spec.provenance.to_xml())
    sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    memory_backing(dom, spec.memory_merge)
    sub(dom, "vcpu", str(spec.vcpus))
    os_attrs = {"firmware": "efi"} if spec.firmware == "uefi" else {}
    os_el = sub(dom, "os", **os_attrs)
    if spec.firmware == "uefi":
        fw = sub(os_el, "firmware")
        # Trusted Launch: libvirt picks OVMF_CODE_4M.ms.fd (40-edk2-x86_64-secure-enrolled.json:
        # Secure Boot on, Microsoft's keys enrolled, SMM required); otherwise no Secure Boot,
        # which under TCG only costs boot time (SMM) and generalized images aren't signed.
        on = "yes" if spec.trusted_launch else "no"
        sub(fw, "feature", enabled=on, name="secure-boot")
        if spec.trusted_launch:
            sub(fw, "feature", enabled="yes", name="enrolled-keys")
    sub(os_el, "type", "hvm", arch=spec.arch, machine=spec.machine)
    if spec.trusted_launch:
        sub(os_el, "loader", secure="yes")  # the firmware's flash writable only from SMM
    sub(os_el, "boot", dev="hd")
    feats = sub(dom, "features")
    sub(feats, "acpi")
    if spec.arch == "x86_64":
        sub(feats, "apic")  # aarch64: libvirt picks the virt machine's GIC
    if spec.trusted_launch:
        sub(feats, "smm", state="on")
    return dom, feats


def _tpm(dev: ET.Element, spec: DomainSpec) -> None:
    """Trusted Launch's vTPM 2.0: swtpm, its state in libvirt's swtpm directory per domain
    (/var/lib/libvirt/swtpm/UUID), removed when the domain is undefined (Domain.remove)."""
    if spec.trusted_launch:
        tpm = sub(dev, "tpm", model="tpm-crb")
        sub(tpm, "backend", type="emulator", version="2.0")


def _tcg_cache(feats: ET.Element, spec: DomainSpec) -> None:
    if spec.accel == "tcg":
        tcg = sub(feats, "tcg")
        size = spec.tb_cache_mib or tb_cache_mib(spec.memory_mib)
        sub(tcg, "tb-cache", str(size), unit="MiB")


def _lifecycle(dom: ET.Element) -> ET.Element:
    """on_poweroff/reboot/crash, and the <devices> element that follows them."""
    sub(dom, "on_poweroff", "destroy")
    sub(dom, "on_reboot", "restart")
    sub(dom, "on_crash", "destroy")
    return sub(dom, "devices")


def domain_xml(spec: DomainSpec) -> str:
    dom, feats = _head(spec)
    _tcg_cache(feats, spec)
    if spec.accel == "kvm":
        sub(dom, "cpu", mode="host-passthrough")
    elif spec.arch == "aarch64":
        _aarch64_tcg_cpu(dom)
    sub(dom, "clock", offset="utc")
    dev = _lifecycle(dom)

    _os_disk(dev, spec, "virtio")

    if spec.seed is not None:
        # virtio, not an IDE/SATA CD-ROM: every cloud kernel has virtio_blk, not all have ahci.
        seed = sub(dev, "disk", type="file", device="disk")
        _driver(seed, spec, "raw")
        sub(seed, "source", file=str(spec.seed))
        sub(seed, "target", dev="vdb", bus="virtio")
        sub(seed, "readonly")
        _pci_slot(seed, spec, "vdb")

    _data_disks(dev, spec, "virtio")
    _interface(dev, spec, "virtio")
    _console(dev, spec)
    if _flat(spec):
        sub(dev, "controller", type="usb", model="none")
        _pci_slot(sub(dev, "controller", type="virtio-serial", index="0"), spec, "virtio-serial")
    chan = sub(dev, "channel", type="unix")
    sub(chan, "target", type="virtio", name="org.qemu.guest_agent.0")
    rng = sub(dev, "rng", model="virtio")
    sub(rng, "backend", "/dev/urandom", model="random")
    _pci_slot(rng, spec, "rng")
    return _finish(dom, dev, spec, "virtio-net-pci")


def _finish(dom: ET.Element, dev: ET.Element, spec: DomainSpec, nic: str) -> str:
    """What every domain ends with: its vTPM (Trusted Launch), no balloon, the user-net NIC
    `nic` (QEMU arguments, after the devices), the NVMe override; the XML text."""
    _tpm(dev, spec)
    sub(dev, "memballoon", model="none")
    _user_net(dom, spec, nic)
    if spec.disk_controller == "nvme":
        _nvme_override(dom)
    return render(dom)


def _data_disks(dev: ET.Element, spec: DomainSpec, bus: str) -> None:
    if len(spec.data_disks) > MAX_DATA_DISKS:
        raise InternalError(f"{spec.name}: more than {MAX_DATA_DISKS} data disks got this far")
    for lun, path in enumerate(spec.data_disks):
        data = sub(dev, "disk", type="file", device="disk")
        _driver(data, spec, "qcow2", discard="unmap")
        sub(data, "source", file=str(path))
        sub(data, "backingStore")  # an empty disk of its own: nothing for libvirt to probe
        sub(data, "serial", f"sigvirt-lun{lun}")  # a name that holds in every guest layout
        if bus == "sata":  # sdb, sdc, ...: libvirt gives them SATA ports
            sub(data, "target", dev="sd" + chr(ord("b") + lun), bus="sata")
            continue
        sub(data, "target", dev=data_device(lun), bus="virtio")
        _pci_slot(data, spec, DATA_SLOTS[lun])


def _interface(dev: ET.Element, spec: DomainSpec, model: str) -> None:
    """The NIC of a network or bridge region (user-forward's is on QEMU's command line)."""
    net = spec.network
    if net.kind not in ("network", "bridge"):
        return
    iface = sub(dev, "interface", type=net.kind)
    sub(iface, "mac", address=mac_for(spec.name))
    sub(iface, "source", **{net.kind: net.source})
    sub(iface, "model", type=model)
    if spec.net_queues > 1 and model == "virtio":
        # vhost needs KVM's ioeventfds; under TCG QEMU's userspace virtio-net serves the
        # tap's queues itself (libvirt opens one tap fd per queue either way).
        vhost = {"name": "vhost"} if spec.accel == "kvm" else {}
        sub(iface, "driver", queues=str(spec.net_queues), **vhost)
    _pci_slot(iface, spec, "nic")


def _console(dev: ET.Element, spec: DomainSpec) -> None:
    if spec.console_log is not None:
        serial = sub(dev, "serial", type="file")
        sub(serial, "source", path=str(spec.console_log), append="off")
    else:
        serial = sub(dev, "serial", type="pty")
    if spec.arch == "aarch64":  # the virt machine's PL011 UART: the guest's ttyAMA0
        target = sub(serial, "target", type="system-serial", port="0")
        sub(target, "model", name="pl011")
    else:
        sub(serial, "target", port="0")


def _user_net(dom: ET.Element, spec: DomainSpec, device_model: str) -> None:
    """user-forward: libvirt 9.0 has no <portForward> for user networking (passt is
    rejected), so the slirp netdev with a loopback-only hostfwd is passed to QEMU directly.
    slirp has one queue: multiqueue (net_queues) can't apply here."""
    net = spec.network
    if net.kind != "user-forward":
        return
    cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
    netdev = f"user,id=svnet0,hostfwd=tcp:127.0.0.1:{net.host_port}-:22"
    if net.restrict:
        netdev = netdev.replace("user,", "user,restrict=on,", 1)
    device = f"{device_model},netdev=svnet0,id=svnic0,mac={mac_for(spec.name)}"
    if spec.machine in ("q35", "virt"):
        device += f",bus=pcie.0,addr=0x{USER_NIC_SLOT:02x}"
    for arg in ("-netdev", netdev, "-device", device):
        ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=arg)


# -- Arm64 --------------------------------------------------------------------------------------
# An Arm64 definition's guest is domain_xml's Linux guest with arch aarch64 on the `virt`
# machine (aarch64_spec): UEFI through libvirt's firmware selection (AAVMF_CODE.fd, its
# variables copied per VM from AAVMF_VARS.fd as libvirt's <nvram>), no secure boot; devices
# as on q35 (virtio over PCI, integrated on pcie.0 under TCG), console on the PL011 (ttyAMA0:
# libvirt's default serial for `virt`), no apic, and a CPU model under TCG.


def aarch64_spec(spec: DomainSpec) -> DomainSpec:
    """The spec of an Arm64 guest: aarch64, `virt`, UEFI (the only firmware it has)."""
    return replace(spec, arch="aarch64", machine="virt", firmware="uefi")


def _aarch64_tcg_cpu(dom: ET.Element) -> None:
    # cortex-a57, not `max`: max adds pointer authentication, whose architected QARMA
    # algorithm QEMU's docs call slow to emulate under TCG (they suggest pauth-impdef).
    cpu = sub(dom, "cpu", mode="custom", match="exact", check="none")
    sub(cpu, "model", "cortex-a57", fallback="forbid")


# -- Windows ------------------------------------------------------------------------------------
# Hyper-V enlightenments, as Windows guests on QEMU are usually given them (what virt-install
# and virt-manager pick): Windows uses each one it finds and runs noticeably better under KVM.
HYPERV: tuple[tuple[str, dict[str, str]], ...] = (
    ("relaxed", {}),
    ("vapic", {}),
    ("spinlocks", {"retries": "8191"}),
    ("vpindex", {}),
    ("runtime", {}),
    ("synic", {}),
    ("stimer", {}),
    ("reset", {}),
    ("frequencies", {}),
)
# Under TCG QEMU 7.2 refuses to start with vpindex ("kernel doesn't allow setting HyperV
# VP_INDEX"), and synic and stimer need it; the others (and the hypervclock) start (tried here).
KVM_ONLY_HYPERV = frozenset({"vpindex", "synic", "stimer"})


def windows_domain_xml(spec: DomainSpec) -> str:
    """A Windows guest: the firmware of its generation (V2 UEFI, V1 BIOS), Hyper-V
    enlightenments, the clock in local time with the Hyper-V clock, devices a stock Windows
    has drivers for (OS and data disks on SATA, an e1000e NIC, VGA) unless the definition's
    disk controller says otherwise (NVMe: Windows' own stornvme; SCSI: virtio-scsi, whose
    driver the image must bring), VNC on the host's 127.0.0.1, no cloud-init seed, no
    virtio-only devices. Its serial console is logged like a Linux guest's."""
    dom, feats = _head(spec)
    hyperv = sub(feats, "hyperv", mode="custom")
    for name, extra in HYPERV:
        if spec.accel == "kvm" or name not in KVM_ONLY_HYPERV:
            sub(hyperv, name, state="on", **extra)
    _tcg_cache(feats, spec)
    # Windows 10+ needs CPU features QEMU's default qemu64 model lacks (e.g. POPCNT, SSE4.2):
    # the host's CPU under KVM, the most TCG can emulate otherwise.
    sub(dom, "cpu", mode="host-passthrough" if spec.accel == "kvm" else "maximum")
    clock = sub(dom, "clock", offset="localtime")  # Windows keeps the RTC in local time
    sub(clock, "timer", name="rtc", tickpolicy="catchup")
    sub(clock, "timer", name="pit", tickpolicy="delay")
    sub(clock, "timer", name="hpet", present="no")
    sub(clock, "timer", name="hypervclock", present="yes")
    dev = _lifecycle(dom)
    _os_disk(dev, spec, "sata")
    _data_disks(dev, spec, "sata")
    _interface(dev, spec, "e1000e")
    _console(dev, spec)
    # A USB tablet keeps the VNC pointer where the guest's is (Windows has xHCI drivers).
    xhci = sub(dev, "controller", type="usb", index="0", model="qemu-xhci")
    _pci_slot(xhci, spec, "rng")  # the slot the Linux guest's virtio-rng takes
    sub(dev, "input", type="tablet", bus="usb")
    graphics = sub(dev, "graphics", type="vnc", port="-1", autoport="yes", listen="127.0.0.1")
    sub(graphics, "listen", type="address", address="127.0.0.1")
    video = sub(dev, "video")
    sub(video, "model", type="vga", vram="16384", heads="1", primary="yes")
    _pci_slot(video, spec, "virtio-serial")  # free: no virtio-serial for Windows
    return _finish(dom, dev, spec, "e1000e")


def _driver(disk: ET.Element, spec: DomainSpec, fmt: str, **extra: str) -> None:
    io = {"io": spec.disk_io} if spec.disk_io else {}
    sub(disk, "driver", name="qemu", type=fmt, **extra, **io)


def _os_disk(dev: ET.Element, spec: DomainSpec, default_bus: str) -> None:
    """The OS disk (the linked clone) on its controller: the guest's default bus (virtio-blk
    vda; Windows: SATA sda), virtio-scsi sda on its own controller, or NVMe (defined as
    virtio-blk vda, see _nvme_override)."""
    disk = sub(dev, "disk", type="file", device="disk")
    _driver(disk, spec, "qcow2", discard="unmap")
    sub(disk, "source", file=str(spec.disk))
    _disk_backing(disk, spec.backing)
    if spec.disk_controller == "scsi":
        sub(disk, "target", dev="sda", bus="scsi")
        sub(disk, "address", type="drive", controller="0", bus="0", target="0", unit="0")
        ctl = sub(dev, "controller", type="scsi", index="0", model="virtio-scsi")
        _pci_slot(ctl, spec, "vda")
        return
    if spec.disk_controller == "virtio" and default_bus == "sata":
        sub(disk, "target", dev="sda", bus="sata")  # on q35's own AHCI (00:1f.2)
        return
    sub(disk, "target", dev="vda", bus="virtio")
    if spec.disk_controller == "nvme":
        sub(disk, "alias", name=OS_DISK_ALIAS)
    _pci_slot(disk, spec, "vda")


def _nvme_override(dom: ET.Element) -> None:
    """libvirt 9.0 has no emulated NVMe disk (no bus='nvme'; domcapabilities lists fdc, scsi,
    virtio, usb, sata), but QEMU 7.2 has the `nvme` device and libvirt (>= 8.2) lets a device's
    frontend properties be overridden: the OS disk is defined as virtio-blk (libvirt manages
    its image, backing chain and labels as for any disk) and QEMU is given an `nvme`
    controller for it, with the serial NVMe requires. The guest sees /dev/nvme0n1."""
    override = ET.SubElement(dom, f"{{{QEMU_NS}}}override")
    device = ET.SubElement(override, f"{{{QEMU_NS}}}device", alias=OS_DISK_ALIAS)
    frontend = ET.SubElement(device, f"{{{QEMU_NS}}}frontend")
    for name, value in (("driver", "nvme"), ("serial", "sigvirt-osdisk")):
        ET.SubElement(frontend, f"{{{QEMU_NS}}}property", name=name, type="string", value=value)


OS_DISK_DEVICES = ("vda", "sda")  # virtio-blk (and NVMe, see _nvme_override); SCSI, SATA


def os_disk_device(prov: Provenance) -> str:
    """libvirt's target name of a domain's OS disk: sda on SCSI and on Windows' SATA, vda on
    virtio-blk (NVMe is defined as virtio-blk)."""
    windows_sata = prov.os_type == "Windows" and not prov.disk_controller
    return "sda" if prov.disk_controller == "scsi" or windows_sata else "vda"


def with_os_disk(domain: str, disk: Path, backing: tuple[Backing, ...], prov: Provenance) -> str:
    """A domain's XML (as libvirt gives it) booting another OS disk: vda's source and backing
    chain replaced, and the provenance that says so. Everything else (MAC, port forward, seed,
    data disks, console) is left as it was."""
    root = ET.fromstring(domain)
    vda = next(
        (d for d in root.findall("./devices/disk") if d.find("target") is not None
         and d.find("target").get("dev") in OS_DISK_DEVICES),  # type: ignore[union-attr,operator]
        None,
    )  # fmt: skip
    if vda is None:
        raise InternalError(f"{root.findtext('name')}: the domain has no vda to reimage")
    for old in vda.findall("backingStore"):
        vda.remove(old)
    source = vda.find("source")
    if source is None:
        source = sub(vda, "source")
    source.attrib.clear()
    source.set("file", str(disk))
    for child in list(source):
        source.remove(child)
    holder = ET.Element("holder")
    _disk_backing(holder, backing)
    vda.insert(list(vda).index(source) + 1, holder[0])
    return with_provenance_element(root, prov)


def with_provenance(domain: str, prov: Provenance) -> str:
    """A domain's XML with its provenance replaced."""
    return with_provenance_element(ET.fromstring(domain), prov)


def with_provenance_element(root: ET.Element, prov: Provenance) -> str:
    meta = root.find("metadata")
    if meta is None:
        meta = ET.Element("metadata")
        name = root.find("name")
        root.insert(0 if name is None else list(root).index(name) + 1, meta)
    for child in list(meta):
        if child.tag == f"{{{XMLNS}}}guest":
            meta.remove(child)
    meta.append(prov.to_xml())
    return render(root)
