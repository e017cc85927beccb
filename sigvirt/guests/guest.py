"""Booting real guests from linked clones: overlay, seed, domain, port forward, SSH wait.

Everything a guest owns (domain, overlay, seed, console log, data disks) is named after the
domain and recorded in its <metadata>; a guest that fails to come up leaves none of it behind.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from sigvirt import faults
from sigvirt.catalog import liveness
from sigvirt.catalog.records import Firmware
from sigvirt.errors import Conflict, GuestFailed, HostError, NotFound, OutOfRange, SigvirtError
from sigvirt.guests import domxml
from sigvirt.guests.domxml import Backing, DiskController, DomainSpec, Provenance
from sigvirt.guests.seed import SeedSpec, seed_iso
from sigvirt.hosts import arches, ssh, streams, xmlbuild
from sigvirt.hosts.hypervisor import Domain, Hypervisor
from sigvirt.hosts.libvirterrors import PortInUse
from sigvirt.hosts.ports import PortAllocator
from sigvirt.hosts.regions import Accel, Network


@dataclass(frozen=True)
class GuestSpec:
    name: str
    pool: str  # where the overlay, seed and console log go: the base's own pool
    base: Path
    admin_user: str
    ssh_public_keys: tuple[str, ...]
    base_format: str = "qcow2"
    memory_mib: int = 256
    vcpus: int = 1
    firmware: Firmware = "bios"
    network: Network = field(default_factory=Network)
    hostname: str = ""  # default: the domain name
    custom_data: bytes | None = None
    provenance: Provenance = field(default_factory=Provenance)
    tb_cache_mib: int = 0  # 0: by guest RAM (guests/memory.py)
    os_disk_gib: int = 0  # the overlay's capacity; 0: the base's virtual size
    data_disk_gib: tuple[int, ...] = ()  # empty data disks, lun 0 first
    # False: no NoCloud seed at all, the image keeps its own hostname, users and keys
    # (specialized images, Windows): Azure gives such a VM no osProfile either
    seeded: bool = True
    os_type: str = "Linux"  # Windows: its own domain XML (domxml), no seed, no SSH wait
    disk_controller: DiskController = "virtio"  # the OS disk's (guests/devices.py)
    net_queues: int = 0  # > 1: virtio-net multiqueue
    architecture: str = "x64"  # the definition's: Arm64 boots aarch64 `virt` (domxml)
    trusted_launch: bool = False  # Secure Boot + vTPM (guests/devices.py)
    memory_merge: bool = False  # the region's memory.merge: KSM may share its RAM


@dataclass(frozen=True)
class Guest:
    name: str
    endpoint: ssh.Endpoint | None  # None until an address is known (bridged, --no-wait)
    overlay: Path
    provenance: Provenance
    boot_seconds: float | None = None


def provenance_of(dom: Domain) -> Provenance | None:
    text = dom.metadata(domxml.XMLNS)
    return Provenance.from_xml(text) if text else None


def ports_in_use(hv: Hypervisor) -> set[int]:
    ports = set()
    for dom in hv.domains():
        prov = provenance_of(dom)
        if prov and prov.ssh_port:
            ports.add(prov.ssh_port)
    return ports


def jump_for(hv: Hypervisor) -> ssh.Jump | None:
    """Guests of a qemu+ssh host listen on *that* host's loopback: tunnel through its sshd."""
    target = hv.ssh_target
    if target is None:
        return None
    user, host, port = target
    return ssh.Jump(host=host, port=port, user=user, key_path=hv.uri_keyfile)


_accel_cache: dict[str, Accel] = {}


def detect_accel(hv: Hypervisor) -> Accel:
    if hv.uri not in _accel_cache:
        _accel_cache[hv.uri] = hv.accel()
    return _accel_cache[hv.uri]


def volume_names(name: str) -> tuple[str, str, str]:
    """A guest's overlay, seed and console log: named after the domain, nothing else is."""
    return _names(name)


def _names(name: str) -> tuple[str, str, str]:
    return f"{name}.qcow2", f"{name}.cidata.iso", f"{name}.console.log"


def data_disk_name(name: str, lun: int) -> str:
    return f"{name}.data{lun}.qcow2"


def os_disk_name(name: str, serial: int) -> str:
    """The overlay a reimage gives a guest: NAME.osN.qcow2 (the first disk is NAME.qcow2), so
    the old and the new overlay coexist until one of them goes."""
    return f"{name}.os{serial}.qcow2" if serial else f"{name}.qcow2"


def os_disk_serial(name: str, volume: str) -> int:
    """N of NAME.osN.qcow2; 0 for NAME.qcow2 (or anything else)."""
    found = re.fullmatch(re.escape(name) + r"\.os([0-9]{1,9})\.qcow2", volume)
    return int(found[1]) if found else 0


GiB = 1 << 30


def console_tail(hv: Hypervisor, pool: str, console_vol: str, lines: int = 25) -> str:
    try:
        data = streams.download_tail(hv, pool, console_vol)
    except SigvirtError:
        return ""
    text = data.decode(errors="replace").replace("\r", "")
    return "\n".join(text.splitlines()[-lines:])


def creator_id() -> str:
    """Who is creating a domain: host, boot and process, so the next command can tell a
    creation in progress from one that was killed."""
    return liveness.tag()


def creator_alive(creator: str) -> bool:
    """Whether the process a provenance names as its creator may still be at work (a
    creator on another machine can't be asked: it counts as alive)."""
    return liveness.tag_alive(creator)


def interrupted(dom: Domain) -> bool:
    """A domain whose creation was killed before it started: defined, not running, and its
    creator is gone."""
    prov = provenance_of(dom)
    return (
        prov is not None
        and bool(prov.creator)
        and not creator_alive(prov.creator)
        and not dom.is_active()
    )


def start_domain(hv: Hypervisor, dom: Domain) -> None:
    """Start a defined guest. One made while its host allowed io_uring, on a host that now
    refuses it (hosts/diskio.py), is defined again with its disks on the thread pool first
    when the host handle already knows, else after the start fails on it; then started."""
    if not hv.disk_io.engine:
        dom = _off_io_uring(hv, dom)
    try:
        dom.start()
    except HostError as err:
        moved = _off_io_uring(hv, dom) if hv.disk_io.refused(err.message) else dom
        if moved is dom:
            raise
        moved.start()


def _off_io_uring(hv: Hypervisor, dom: Domain) -> Domain:
    text = without_io_uring(dom.xml(inactive=True, secure=True))
    return dom if text is None else hv.define(text)


def without_io_uring(domain: str) -> str | None:
    """A domain's XML (as libvirt gives it) with each disk on QEMU's thread pool instead of
    io_uring, everything else as it was; None when no disk was on io_uring."""
    root = ET.fromstring(domain)
    drivers = [d for d in root.findall("./devices/disk/driver") if d.get("io") == "io_uring"]
    for driver in drivers:
        del driver.attrib["io"]
    return xmlbuild.render(root) if drivers else None


class OtherInstallation(Conflict):
    """The name is taken by a domain another sigvirt installation (gallery root) made."""


def mine(prov: Provenance, installation: str) -> bool:
    """Whether a domain belongs to this installation: one made before domains named theirs
    belongs to every installation, so labs made then keep working."""
    return not prov.installation or prov.installation == installation


def reap_interrupted(hv: Hypervisor, name: str, installation: str = "") -> list[str]:
    """Remove what a killed creation of `name` by this installation left (its domain names all
    of it); a domain of that name that is anything else is a Conflict."""
    try:
        dom = hv.domain(name)
    except NotFound:
        return []
    prov = provenance_of(dom)
    if prov is not None and not mine(prov, installation):
        raise OtherInstallation(
            f"a domain named {name} already exists on {hv.uri} (another sigvirt installation's)"
        )
    if interrupted(dom):
        return delete(hv, name)
    raise Conflict(f"a domain named {name} already exists on {hv.uri}")


def create(
    hv: Hypervisor,
    spec: GuestSpec,
    key_path: Path,
    *,
    ports: PortAllocator,
    accel: Accel | None = None,
    wait: bool = True,
    timeout: float = 300.0,
    on_defined: Callable[[str], None] | None = None,
    before_start: Callable[[], object] | None = None,
) -> Guest:
    """Create and start a guest on a linked clone of spec.base; wait for SSH unless told not to.

    The domain is defined first, naming every volume it will own and the process creating
    it (`creator` in its provenance); then the volumes are made; then it starts, and only
    then does its provenance stop naming a creator. A creation killed at any step leaves a
    domain that says so: the next create of that name (or a scale) reaps it, `vm delete`
    removes it with whatever volumes exist. On any failure everything created so far is
    removed and GuestFailed carries the tail of the serial console. `before_start` runs when
    everything is made, right before the domain starts.
    """
    reap_interrupted(hv, spec.name, spec.provenance.installation)
    overlay_name, seed_name, console_name = _names(spec.name)
    if not spec.seeded:
        seed_name = ""
    data_names = [data_disk_name(spec.name, lun) for lun in range(len(spec.data_disk_gib))]
    for vol in (overlay_name, seed_name, console_name, *data_names):
        if vol and hv.volume_exists(spec.pool, vol):
            raise Conflict(
                f"volume {spec.pool}/{vol} already exists (left from an earlier guest?)",
                hint=f"sigvirt vm delete -n {spec.name} removes what a VM of that name left",
            )
    base_vol = hv.volume_by_path(spec.base)
    if base_vol is None:
        raise NotFound(f"base image {spec.base} is not a volume of any pool on {hv.uri}")
    capacity = base_vol.capacity
    if spec.os_disk_gib:
        # A qcow2 overlay may be larger than its base (the guest sees the rest as unused),
        # never smaller: the image's own data would be cut off.
        if spec.os_disk_gib * GiB < capacity:
            raise OutOfRange(
                f"--os-disk-size-gb {spec.os_disk_gib} is smaller than the image "
                f"({-(-capacity // GiB)} GiB): the OS disk can only grow"
            )
        capacity = spec.os_disk_gib * GiB
    directory = hv.pool_path(spec.pool)
    chosen_accel = accel or (
        detect_accel(hv)
        if spec.architecture == "x64"
        else arches.support(hv, spec.architecture).accel  # KVM only for the host's own arch
    )
    prov = replace(
        spec.provenance,
        overlay_pool=spec.pool,
        overlay=overlay_name,
        seed=seed_name,
        console=console_name,
        admin_user=spec.admin_user,
        created=spec.provenance.created or datetime.now(UTC).isoformat(timespec="seconds"),
        creator=creator_id(),
        os_disk_gb=spec.os_disk_gib,
        os_disk_bytes=capacity,
        data_disks=domxml.encode_data_disks(list(zip(data_names, spec.data_disk_gib, strict=True))),
    )
    port = 0
    avoid: set[int] = set()
    dom_uuid = ""  # once defined: defined again (another port, no io_uring) it keeps its UUID

    def define() -> Domain:
        nonlocal port, dom_uuid
        if spec.network.kind == "user-forward":
            if port:
                ports.release(port)
                avoid.add(port)
            port = ports.allocate(ports_in_use(hv) | avoid, local=hv.is_local, where=hv.uri)
        dom_spec = DomainSpec(
            name=spec.name,
            memory_mib=spec.memory_mib,
            vcpus=spec.vcpus,
            disk=directory / overlay_name,
            backing=(Backing(spec.base, spec.base_format),),
            seed=directory / seed_name if seed_name else None,
            data_disks=tuple(directory / d for d in data_names),
            console_log=directory / console_name,
            network=replace(spec.network, host_port=port),
            accel=chosen_accel,
            firmware=spec.firmware,
            tb_cache_mib=spec.tb_cache_mib,
            provenance=replace(prov, ssh_port=port),
            disk_controller=spec.disk_controller,
            net_queues=spec.net_queues,
            trusted_launch=spec.trusted_launch,
            memory_merge=spec.memory_merge,
            disk_io=hv.disk_io.engine,
            uuid=dom_uuid,
        )
        if spec.architecture == "Arm64":
            dom_spec = domxml.aarch64_spec(dom_spec)
        try:
            defined = hv.define(domain_xml_for(dom_spec, spec.os_type))
        except HostError as err:
            if not (dom_spec.disk_io and hv.disk_io.refused(err.message)):
                raise
            return define()  # with QEMU's thread pool for its disks
        dom_uuid = defined.uuid()
        return defined

    undo: list[Callable[[], object]] = []
    try:
        dom = define()
        undo.append(lambda: hv.destroy_and_undefine(spec.name))
        faults.point("vm.defined")
        if on_defined:
            on_defined(spec.name)
        hv.create_volume(
            spec.pool,
            xmlbuild.overlay_volume_xml(overlay_name, capacity, spec.base, spec.base_format),
        )
        undo.append(lambda: hv.delete_volume(spec.pool, overlay_name))
        faults.point("vm.overlay")
        if seed_name:
            seed = SeedSpec(
                instance_id=f"{spec.name}-{uuid.uuid4().hex[:12]}",
                hostname=spec.hostname or spec.name,
                admin_user=spec.admin_user,
                ssh_public_keys=spec.ssh_public_keys,
                custom_data=spec.custom_data,
            )
            streams.upload_bytes(hv, spec.pool, seed_name, seed_iso(seed), mode=0o600)
            undo.append(lambda: hv.delete_volume(spec.pool, seed_name))
        faults.point("vm.seed")
        streams.upload_bytes(hv, spec.pool, console_name, b"", mode=0o600)
        undo.append(lambda: hv.delete_volume(spec.pool, console_name))
        faults.point("vm.console")
        for data_name, gib in zip(data_names, spec.data_disk_gib, strict=True):
            hv.create_volume(spec.pool, xmlbuild.data_disk_volume_xml(data_name, gib * GiB))
            undo.append(functools.partial(hv.delete_volume, spec.pool, data_name))
        faults.point("vm.data-disks")
        if before_start:
            before_start()  # e.g. wait for a boot slot (admission.py): made, not yet running
        for _attempt in range(5):
            try:
                dom.start()
                break
            except PortInUse as err:
                if spec.network.kind != "user-forward":
                    raise GuestFailed(f"{spec.name}: libvirt could not start it: {err}") from None
                # Another process took the port between our check and QEMU's bind: next one.
                dom = define()
            except HostError as err:
                if not hv.disk_io.refused(err.message):
                    raise GuestFailed(
                        f"{spec.name}: libvirt could not start it: {err.message}"
                    ) from None
                dom = define()  # this host's QEMU can't use io_uring: the thread pool
        else:
            raise GuestFailed(f"{spec.name}: no loopback port could be bound after 5 attempts")
        faults.point("vm.started")
        prov = replace(prov, ssh_port=port, creator="")  # started: no longer being created
        dom.set_metadata(domxml.XMLNS, "sigvirt", domxml.provenance_xml(prov))
        faults.point("vm.recorded")

        endpoint = None
        if spec.network.kind == "user-forward":
            endpoint = ssh.Endpoint("127.0.0.1", port, spec.admin_user, key_path, jump_for(hv))
        guest = Guest(spec.name, endpoint, directory / overlay_name, prov)
        if wait:
            guest = wait_for_ssh(hv, guest, timeout)
        return guest
    except BaseException as err:
        tail = console_tail(hv, spec.pool, console_name)
        for step in reversed(undo):
            with contextlib.suppress(Exception):
                step()
        if port:
            ports.release(port)
        if isinstance(err, GuestFailed):
            raise GuestFailed(err.message, console_tail=tail or err.console_tail) from None
        if isinstance(err, SigvirtError | KeyboardInterrupt):
            raise
        raise GuestFailed(f"{spec.name}: {err}", console_tail=tail) from err


def domain_xml_for(spec: DomainSpec, os_type: str) -> str:
    """The domain a guest of this OS type boots in: Windows gets its firmware, enlightenments
    and devices (domxml.windows_domain_xml), every other guest the Linux domain."""
    if os_type == "Windows":
        return domxml.windows_domain_xml(spec)
    return domxml.domain_xml(spec)


def wait_running(hv: Hypervisor, guest: Guest, timeout: float) -> Guest:
    """Until libvirt reports the domain running (a guest sigvirt can't log in to, such as
    Windows: there is no SSH to wait for)."""
    dom = hv.domain(guest.name)
    start = time.monotonic()
    while True:
        state = dom.info().state
        if state == "running":
            return replace(guest, boot_seconds=time.monotonic() - start)
        if state in ("stopped", "crashed") or time.monotonic() - start > timeout:
            raise GuestFailed(f"{guest.name}: the domain is {state}, not running")
        time.sleep(0.2)


def vnc_display(domain: str) -> str | None:
    """`ADDRESS:PORT` of a running domain's VNC console (libvirt fills the port in at start);
    None when it has none."""
    graphics = ET.fromstring(domain).find("./devices/graphics[@type='vnc']")
    if graphics is None or graphics.get("port", "-1") in ("-1", ""):
        return None
    return f"{graphics.get('listen') or '127.0.0.1'}:{graphics.get('port')}"


def console_way(hv: Hypervisor, name: str) -> str:
    """How a person reaches a running guest's screen: its VNC display (on the host's
    loopback, as every forward here), else its serial console."""
    display = vnc_display(hv.domain(name).xml())
    if display is None:
        return f"serial console: virsh -c {hv.uri} console {name}"
    way = f"VNC on {display} (virsh -c {hv.uri} domdisplay {name})"
    target = hv.ssh_target
    if target is not None:
        user, host, ssh_port = target
        login = f"{user}@{host}" if user else host
        port = display.rpartition(":")[2]
        way += f"; on {host}'s loopback: ssh -p {ssh_port} -L {port}:{display} {login}"
    return way


# What firmware and shim print on the serial console when they refuse to run the boot loader
# (Secure Boot: an unsigned or untrusted image), after which the guest never boots: OVMF's
# BdsDxe ("failed to load Boot0001 ...: Access Denied"), shim ("Verification failed: (0x1A)
# Security Violation"), GRUB ("bad shim signature").
FIRMWARE_REFUSALS = ("Access Denied", "Security Violation", "bad shim signature")
CONSOLE_CHECK_EVERY = 2.0  # seconds between console reads while waiting for SSH


def firmware_refusal(console: str) -> str:
    """The console line in which firmware refused to boot the image ("" when none)."""
    for line in console.splitlines():
        if any(mark.lower() in line.lower() for mark in FIRMWARE_REFUSALS):
            return line.strip()
    return ""


def _booting(hv: Hypervisor, guest: Guest, dom: Domain) -> Callable[[], bool]:
    """wait_ready's still_booting: the domain runs, and, under Secure Boot, (every few
    seconds) its console shows no firmware refusal; one fails the wait at once with the
    console tail (GuestFailed). Without Secure Boot nothing refuses, and the reads (a libvirt
    stream each) would only take CPU from the guests booting."""
    prov = guest.provenance
    last = [time.monotonic()]
    watch = bool(prov.console and prov.security_type)

    def still_booting() -> bool:
        if not dom.is_active():
            return False
        if watch and time.monotonic() - last[0] >= CONSOLE_CHECK_EVERY:
            last[0] = time.monotonic()
            tail = console_tail(hv, prov.overlay_pool, prov.console)
            refused = firmware_refusal(tail)
            if refused:
                raise GuestFailed(
                    f"{guest.name}: the firmware refused to boot the image ({refused})",
                    console_tail=tail,
                )
        return True

    return still_booting


def wait_for_ssh(hv: Hypervisor, guest: Guest, timeout: float, dense_after: float = 0.0) -> Guest:
    """The guest once it runs a command over SSH (`dense_after`: ssh.await_banner)."""
    if guest.endpoint is None:
        raise GuestFailed(f"{guest.name}: no SSH endpoint known (bridged guest without address)")
    dom = hv.domain(guest.name)
    try:
        seconds = ssh.wait_ready(guest.endpoint, timeout, _booting(hv, guest, dom), dense_after)
    except TimeoutError as err:
        raise GuestFailed(f"{guest.name}: {err}") from None
    return replace(guest, boot_seconds=seconds)


def delete(hv: Hypervisor, name: str) -> list[str]:
    """Remove a guest's domain and every volume its provenance names; what was removed.

    Powered off first, then its volumes go, and the domain last: a delete killed half-way
    leaves a domain that still names what is left, for the next `vm delete` to finish."""
    removed: list[str] = []
    try:
        dom = hv.domain(name)
    except NotFound:
        return removed
    prov = provenance_of(dom)
    if prov and prov.overlay_pool:
        dom.destroy()
        for vol in prov.volumes:
            if hv.delete_volume(prov.overlay_pool, vol):
                removed.append(f"volume {prov.overlay_pool}/{vol}")
    if hv.destroy_and_undefine(name):
        removed.insert(0, f"domain {name}")
    return removed


def wait_until_stopped(hv: Hypervisor, name: str, timeout: float) -> bool:
    dom = hv.domain(name)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not dom.is_active():
            return True
        time.sleep(0.1)  # a virDomainIsActive round trip costs ~1 ms; 0.5 s cost 0.25 s a stop
    return False
