"""VMs from image versions: a linked clone of the least-used completed replica, booted.

The domains themselves are the record: each carries its provenance (image, replica,
scale set, index, admin user, port, tags, resource group, installation) in <metadata>,
which is what placement, listing and dependents read. There is no second copy of that state
to drift. Reading them back: inventory.py; what happens to them after: lifecycle.py; az's
shapes of them: vmviews.py.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from sigvirt.catalog import azureid, dates, eol, features, latest, names
from sigvirt.catalog.records import Definition, ImageVersion, Replica
from sigvirt.context import Context
from sigvirt.errors import (
    CapacityExhausted,
    Conflict,
    EndOfLife,
    GuestFailed,
    InvalidArgument,
    InvalidName,
    NotFound,
    OutOfRange,
    RegionUnavailable,
    Unsupported,
)
from sigvirt.guests import devices, domxml, guest, inventory, seed, sshkeys
from sigvirt.guests.devices import Devices
from sigvirt.guests.domxml import Provenance
from sigvirt.guests.inventory import Vm
from sigvirt.hosts import arches, ssh
from sigvirt.hosts.arches import ARCHITECTURES
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import location
from sigvirt.versions import dependents, targets
from sigvirt.versions.dependents import Dependent

ARCHS = " and ".join(ARCHITECTURES)
# Azure sizes people type, plus the lab's own small ones: (vCPUs, MiB).
SIZES: dict[str, tuple[int, int]] = {
    "Lab_Tiny": (1, 128),
    "Lab_Small": (1, 256),
    "Standard_B1ls": (1, 512),
    "Standard_B1s": (1, 1024),
    "Standard_B1ms": (1, 2048),
    "Standard_B2s": (2, 4096),
    "Standard_B2ms": (2, 8192),
    "Standard_D2s_v3": (2, 8192),
    "Standard_D4s_v3": (4, 16384),
}
DEFAULT_VCPUS, DEFAULT_MEMORY = 1, 512
CUSTOM_SIZE = "Custom"  # hardwareProfile.vmSize of a VM sized by --vcpus/--memory
MAX_OS_DISK_GB = 4095  # Azure's limits, so that what a script asks here would work there
MAX_DATA_DISK_GB = 32767


@dataclass(frozen=True)
class VmRequest:
    name: str
    image: str
    region: str | None = None
    vcpus: int | None = None
    memory_mib: int | None = None
    size: str | None = None
    admin_user: str | None = None
    ssh_key_value: str | None = None  # a public key file, or the key text itself
    generate_ssh_keys: bool = False
    custom_data: bytes | None = None
    force: bool = False
    wait: bool = True
    timeout: float = 300.0
    resource_group: str = ""  # -g: kept, to form the VM's ids
    tags: dict[str, str] = field(default_factory=dict)
    os_disk_gb: int | None = None  # None: the image's own virtual size
    data_disk_gb: tuple[int, ...] = ()  # empty data disks, lun 0 first
    # keys already resolved (a scale set's model): used as they are, no file is read
    ssh_public_keys: tuple[str, ...] = ()
    ssh_private_key: str = ""  # the private key to wait for SSH with ("" if none is known)
    admin_password: str | None = None  # az's flag: refused (sigvirt's guests take keys only)
    computer_name: str | None = None  # az's flag: the hostname (default: the VM's name)
    zone: str | None = None  # az's --zone: which zone of a zoned region it runs in
    disk_controller_type: str | None = None  # az's --disk-controller-type: SCSI | NVMe
    security_type: str | None = None  # az's --security-type: Standard | TrustedLaunch


# -- sizes, users, keys -----------------------------------------------------------------------
def choose_size(req: VmRequest, d: Definition) -> tuple[int, int]:
    if req.size:
        if req.size not in SIZES:
            raise InvalidArgument(f"--size {req.size!r} is unknown (known: {', '.join(SIZES)})")
        vcpus, mem = SIZES[req.size]
    else:
        vcpus = req.vcpus or max(DEFAULT_VCPUS, d.min_vcpus or 0)
        mem = req.memory_mib or max(DEFAULT_MEMORY, d.min_memory_mib or 0)
        if d.max_memory_mib and not req.memory_mib:
            mem = min(mem, d.max_memory_mib)
    if vcpus < 1 or mem < 64:
        raise OutOfRange(f"size {vcpus} vCPU / {mem} MiB is too small")
    if not req.force:
        for value, lo, hi, what in (
            (vcpus, d.min_vcpus, d.max_vcpus, "vCPUs"),
            (mem, d.min_memory_mib, d.max_memory_mib, "MiB of memory"),
        ):
            if (lo is not None and value < lo) or (hi is not None and value > hi):
                raise OutOfRange(
                    f"{value} {what} is outside image definition {d.gallery}/{d.name}'s "
                    f"recommended range {lo or 1}-{hi or '∞'} (use --force to go ahead)"
                )
    return vcpus, mem


def size_name(req: VmRequest, vcpus: int, memory_mib: int) -> str:
    """hardwareProfile.vmSize: the size asked for; Custom for --vcpus/--memory; without
    either, the size the defaults amount to (Custom when no named size matches)."""
    if req.size:
        return req.size
    if req.vcpus or req.memory_mib:
        return CUSTOM_SIZE
    return next((n for n, v in SIZES.items() if v == (vcpus, memory_mib)), CUSTOM_SIZE)


def check_definition(d: Definition) -> None:
    """What the definition says sigvirt can't boot (yet) is refused, not silently ignored."""
    where = f"image definition {d.gallery}/{d.name}"
    if d.os_type not in ("Linux", "Windows"):
        raise Unsupported(f"{where} is --os-type {d.os_type}: sigvirt boots Linux and Windows")
    if d.architecture not in ARCHITECTURES:
        raise Unsupported(f"{where} is --architecture {d.architecture}: sigvirt boots {ARCHS}")
    if d.architecture == "Arm64" and d.os_type == "Windows":
        raise Unsupported(f"{where} is Windows on Arm64: sigvirt boots Windows on x64 only")


def identity_flags(req: VmRequest) -> list[str]:
    """The identity flags the request gives, as the user typed them."""
    given = (
        ("--admin-username", req.admin_user),
        ("--admin-password", req.admin_password),
        ("--ssh-key-value", req.ssh_key_value or req.ssh_public_keys),
        ("--generate-ssh-keys", req.generate_ssh_keys),
        ("--custom-data", req.custom_data),
        ("--computer-name", req.computer_name),
    )
    return [flag for flag, value in given if value]


def check_end_of_life(ctx: Context, rec: ImageVersion, d: Definition | None = None) -> None:
    """A version past its end of life is refused (EndOfLife) where its eol policy is deny."""
    d = d or ctx.store.get_definition(rec.gallery, rec.definition)
    line = eol.refusal(rec, d, ctx.store.get_gallery(rec.gallery))
    if line is not None:
        raise EndOfLife(line)


def check_disks(req: VmRequest, rec: ImageVersion) -> None:
    """--os-disk-size-gb and --data-disk-sizes-gb, against Azure's limits and the image."""
    if req.os_disk_gb is not None:
        if not 1 <= req.os_disk_gb <= MAX_OS_DISK_GB:
            raise InvalidArgument(
                f"--os-disk-size-gb must be 1..{MAX_OS_DISK_GB} (got {req.os_disk_gb})"
            )
        if req.os_disk_gb * guest.GiB < rec.virtual_size:
            have = -(-rec.virtual_size // guest.GiB)
            raise OutOfRange(
                f"--os-disk-size-gb {req.os_disk_gb} is smaller than image version {rec.ref} "
                f"({have} GiB): the OS disk can only grow"
            )
    if len(req.data_disk_gb) > domxml.MAX_DATA_DISKS:
        raise InvalidArgument(
            f"--data-disk-sizes-gb: at most {domxml.MAX_DATA_DISKS} data disks "
            f"(got {len(req.data_disk_gb)})"
        )
    for gb in req.data_disk_gb:
        if not 1 <= gb <= MAX_DATA_DISK_GB:
            raise InvalidArgument(f"--data-disk-sizes-gb must be 1..{MAX_DATA_DISK_GB} (got {gb})")


def computer_name(name: str) -> str:
    """--computer-name: a hostname, by the rules VM names follow (they are hostnames too)."""
    try:
        return names.vm_name(name)
    except InvalidName:
        raise InvalidName(
            f"--computer-name {name[:70]!r} is invalid: use letters, digits and '-', "
            "starting with a letter or digit, at most 63 characters"
        ) from None


def default_admin() -> str:
    """The caller's user name, as `az vm create` does; root is reserved there, and here."""
    user = os.environ.get("SUDO_USER") or getpass.getuser()
    return "azureuser" if user == "root" else user


def admin_name(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", name) or name == "root":
        raise InvalidName(
            f"--admin-username {name!r} is invalid: lowercase letters, digits, '_' and '-', "
            "at most 32, not root"
        )
    return name


# -- placement --------------------------------------------------------------------------------
class Placement:
    """Counts clones per replica (from libvirt) plus this process's in-flight picks, so
    concurrent instances of a scale set spread evenly and respect the budget."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inflight: Counter[str] = Counter()

    def pick(self, hv: Hypervisor, rec: ImageVersion, region: str, budget: int) -> Replica:
        replicas = rec.completed_replicas(region)
        with self._lock:
            counts = clones_per_replica(hv, [r.path for r in replicas])
            for path, n in self._inflight.items():
                counts[path] += n
            open_ = [r for r in replicas if not budget or counts[r.path] < budget]
            if not open_:
                listing = ", ".join(f"{Path(r.path).name}={counts[r.path]}" for r in replicas)
                name = region.partition("/")[0]  # a zone's location: its region's count
                more = rec.target_regions.get(name, len(replicas)) + 1
                raise CapacityExhausted(
                    f"every replica in region {region} is at its budget of {budget} clones "
                    f"({listing}); add a replica or raise clones_per_replica in regions.yaml",
                    hint=targets.update_command(rec, name, more),
                )
            choice = min(open_, key=lambda r: (counts[r.path], r.volume))
            self._inflight[choice.path] += 1
            return choice

    def done(self, replica: Replica) -> None:
        with self._lock:
            self._inflight[replica.path] -= 1


def clones_per_replica(hv: Hypervisor, paths: list[str]) -> Counter[str]:
    """Clones per replica on the host, whichever installation made them: a replica's load
    is physical."""
    counts: Counter[str] = Counter({p: 0 for p in paths})
    for _dom, prov in inventory.sigvirt_domains(hv):
        if prov.replica_path in counts and not prov.flattened:
            counts[prov.replica_path] += 1
    return counts


def pick_region(ctx: Context, rec: ImageVersion, region: str | None) -> str:
    if region:
        region = targets.normalize_region(region, ctx.regions)
        if not rec.completed_replicas(region):
            raise NotFound(
                f"image version {rec.ref} has no completed replica in region {region}",
                hint=targets.update_command(rec, region, rec.target_regions.get(region, 1)),
            )
        return region
    gallery = ctx.store.get_gallery(rec.gallery)
    for candidate in [gallery.location, rec.source_region, *rec.target_regions]:
        if rec.completed_replicas(candidate):
            return candidate
    raise NotFound(f"image version {rec.ref} has no completed replica in any region")


def pick_zone(ctx: Context, rec: ImageVersion, region: str, zone: str | None) -> str:
    """The zone a VM of `region` runs in: the one asked for (it must exist and hold a
    completed replica); in a zoned region asked for none, of the zones holding one, the one
    whose host answers and runs the fewest sigvirt guests; "" in a region without zones
    (where asking for one is refused)."""
    zones = ctx.regions.region(region).zone_names
    if zone is not None and zone not in zones:
        have = f"has zones {', '.join(zones)}" if zones else "has no zones"
        raise InvalidArgument(f"--zone {names.shorten(zone)}: region {region} {have}")
    held = [z for z in ([zone] if zone else zones) if rec.completed_replicas(location(region, z))]
    if held:
        return held[0] if zone else _least_loaded(ctx, region, held)
    if not zones:
        return ""
    where = f"zone {zone} of region {region}" if zone else f"any zone of region {region}"
    raise NotFound(
        f"image version {rec.ref} has no completed replica in {where}",
        hint=targets.update_command(rec, region, max(len(zones), len(rec.replicas))),
    )


def _least_loaded(ctx: Context, region: str, zones: list[str]) -> str:
    """The zone whose host runs the fewest sigvirt guests (ties: the first listed); a zone
    that doesn't answer is passed over (none answering: the first, whose create says why)."""
    load: dict[str, int] = {}
    for z in zones:
        with contextlib.suppress(RegionUnavailable):
            load[z] = len(inventory.sigvirt_domains(ctx.host(location(region, z))))
    return min(load, key=lambda z: (load[z], zones.index(z))) if load else zones[0]


# -- create -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prepared:
    """Everything checked read-only before anything is created (virt-clone's prepare step)."""

    request: VmRequest
    version: ImageVersion
    definition: Definition
    region: str
    vcpus: int
    memory_mib: int
    admin_user: str
    public_keys: tuple[str, ...]
    private_key: Path | None
    warnings: tuple[str, ...]
    size: str = CUSTOM_SIZE
    seeded: bool = True  # False: no seed, admin_user "" and no keys (the image's own)
    zone: str = ""  # the zone of a zoned region ("" in a region without zones)
    devices: Devices = field(default_factory=Devices)  # OS disk controller, NIC queues


def _resolve(ctx: Context, ref: names.ImageRef, region: str | None) -> ImageVersion:
    """The version an image reference names; `latest` in the region asked for (complete
    there and not excluded there). When none is, but the overall latest merely lacks a
    replica there, that version is returned so that pick_region says how to add one."""
    where = targets.normalize_region(region, ctx.regions) if region else None
    try:
        return latest.resolve(ctx.store, ref, region=where)
    except NotFound:
        if where is None or ref.version is not None:
            raise
        overall = latest.resolve(ctx.store, ref)
        if overall.completed_replicas(where):
            raise  # it is there but excluded: the region's own answer stands
        return overall


def prepare(ctx: Context, req: VmRequest) -> Prepared:
    names.vm_name(req.name)
    if req.computer_name is not None:  # a name is checked before any host is asked
        computer_name(req.computer_name)
    ref = names.parse_image_ref(req.image)
    rec = _resolve(ctx, ref, req.region)
    if not rec.published_ok:
        raise Conflict(f"image version {rec.ref} is {rec.state}, not published")
    d = ctx.store.get_definition(rec.gallery, rec.definition)
    check_definition(d)
    seed.check_identity(d, identity_flags(req), req.name)
    check_end_of_life(ctx, rec, d)
    check_disks(req, rec)
    warnings = []
    for what, ends in (
        (f"image version {rec.ref}", rec.end_of_life),
        (f"image definition {d.name}", d.end_of_life),
    ):
        if dates.past_end_of_life(ends):
            warnings.append(f"{what} is past its end of life ({ends})")
    region = pick_region(ctx, rec, req.region)
    zone = pick_zone(ctx, rec, region, req.zone)
    vcpus, mem = choose_size(req, d)
    size = size_name(req, vcpus, mem)
    network = ctx.regions.region(region).network
    dev = devices.choose(d, req.disk_controller_type, vcpus, network, req.security_type)
    host = ctx.regions.region(location(region, zone))
    arches.check_declared(host, d.architecture)  # before any connection: regions.yaml says
    devices.check_host(dev, ctx.hv(location(region, zone)).libvirt_version(), region)
    if d.architecture != "x64":  # an x64 host runs x64 guests: nothing to ask libvirt
        arches.require(ctx.hv(location(region, zone)), host, d.architecture)
    warnings += dev.notes
    # seedless (specialized, Windows): no admin user or keys, sigvirt holds none of them
    admin = ""
    keys: tuple[str, ...] = ()
    private: Path | None = None
    if seed.seeded(d):
        admin = admin_name(req.admin_user or default_admin())
        if req.ssh_public_keys:
            keys = req.ssh_public_keys
            private = Path(req.ssh_private_key) if req.ssh_private_key else None
        else:
            keys, private = sshkeys.resolve(req.ssh_key_value, req.generate_ssh_keys)
    return Prepared(
        req, rec, d, region, vcpus, mem, admin, keys, private, tuple(warnings), size,
        seeded=seed.seeded(d), zone=zone, devices=dev,
    )  # fmt: skip


def create(
    ctx: Context,
    req: VmRequest,
    placement: Placement | None = None,
    *,
    kind: str = "vm",
    scale_set: str = "",
    instance: int = -1,
) -> Vm:
    """Create and boot one VM; returns when SSH answers (unless req.wait is False)."""
    return create_prepared(
        ctx, prepare(ctx, req), placement, kind=kind, scale_set=scale_set, instance=instance
    )


class BootSlot(Protocol):
    """What create_prepared holds from the domain's start until the guest is up; it learns
    how long boots take there (`booted`) and says how long the next can't answer (`quiet`)."""

    def acquire(self) -> None: ...
    def release(self) -> None: ...
    def booted(self, seconds: float) -> None: ...
    def quiet(self) -> float: ...


def create_prepared(
    ctx: Context,
    p: Prepared,
    placement: Placement | None = None,
    *,
    kind: str = "vm",
    scale_set: str = "",
    instance: int = -1,
    generation: int = 0,
    boot_slot: BootSlot | None = None,
) -> Vm:
    """Create and start the VM `p` describes; with `boot_slot`, everything is made first and
    the slot is held from its start until it is up (admission.py: boots in flight per host)."""
    placement = placement or Placement()
    slot_held = False

    def take_slot() -> None:
        nonlocal slot_held
        if boot_slot is not None:
            boot_slot.acquire()
            slot_held = True

    where = location(p.region, p.zone)  # the zone's host in a zoned region
    hv = ctx.hv(where)
    mine = inventory.installation(ctx)
    try:
        guest.reap_interrupted(hv, p.request.name, mine)  # what a killed create of it left
    except Conflict as err:
        theirs = (
            " (another sigvirt installation's)" if isinstance(err, guest.OtherInstallation) else ""
        )
        raise Conflict(
            f"a VM named {p.request.name} already exists in region {where}{theirs}"
        ) from None
    warnings = p.warnings
    if not mine:
        warnings += (
            f"{ctx.store.root} has no installation id yet and you may not create it: this VM "
            "is visible to every sigvirt setup on the host (running any sigvirt vm command "
            "as the gallery root's owner once creates the id)",
        )
    cfg = ctx.regions.region(where)
    replica = placement.pick(hv, p.version, where, cfg.clones_per_replica)
    req = p.request
    gallery = ctx.store.get_gallery(p.version.gallery)
    try:
        prov = Provenance(
            kind=kind,
            region=p.region,
            image=p.version.ref,
            replica_pool=replica.pool,
            replica_path=replica.path,
            scale_set=scale_set,
            instance=instance,
            model_generation=generation,
            image_request=p.request.image,
            ssh_keys="\n".join(p.public_keys),
            key_path=str(p.private_key or ""),
            custom_data=base64.b64encode(req.custom_data).decode() if req.custom_data else "",
            resource_group=req.resource_group,
            installation=mine,
            tags=domxml.encode_tags(req.tags),
            size=p.size,
            os_type="" if p.definition.os_type == "Linux" else p.definition.os_type,
            computer_name=req.computer_name or "",
            disk_controller=p.devices.recorded,
            security_type=features.TRUSTED_LAUNCH if p.devices.trusted_launch else "",
            image_id=azureid.version_id(
                gallery.resource_group, p.version.gallery, p.version.definition, p.version.name
            ),
        )
        spec = guest.GuestSpec(
            name=p.request.name,
            pool=replica.pool,
            base=Path(replica.path),
            admin_user=p.admin_user,
            ssh_public_keys=p.public_keys,
            memory_mib=p.memory_mib,
            vcpus=p.vcpus,
            firmware=p.definition.firmware,
            network=cfg.network,
            custom_data=p.request.custom_data,
            provenance=prov,
            os_disk_gib=req.os_disk_gb or 0,
            data_disk_gib=req.data_disk_gb,
            hostname=req.computer_name or "",
            seeded=p.seeded,
            os_type=p.definition.os_type,
            disk_controller=p.devices.disk_controller,
            net_queues=p.devices.net_queues,
            architecture=p.definition.architecture,
            trusted_launch=p.devices.trusted_launch,
            memory_merge=cfg.memory_merge,
        )
        accel = None if cfg.accel == "auto" else cfg.accel
        if p.definition.architecture != "x64":
            accel = arches.accel_for(arches.support(hv, p.definition.architecture), cfg.accel)
        key = p.private_key
        g = guest.create(
            hv,
            spec,
            key or Path("/nonexistent"),
            ports=ctx.conns.ports(where),  # type: ignore[union-attr]
            accel=accel,
            wait=False,
            timeout=p.request.timeout,
            before_start=take_slot,
        )
        if p.request.wait:
            quiet = boot_slot.quiet() if boot_slot is not None else 0.0
            g = _wait(hv, g, key, p.request.timeout, quiet,
                      windows=p.definition.os_type == "Windows")  # fmt: skip
            if boot_slot is not None and g.boot_seconds is not None:
                boot_slot.booted(g.boot_seconds)
    finally:
        if boot_slot is not None and slot_held:
            boot_slot.release()
        placement.done(replica)
    vm = inventory.describe(hv, where, hv.domain(g.name))
    return replace(vm, boot_seconds=g.boot_seconds, warnings=warnings)


def _wait(
    hv: Hypervisor, g: guest.Guest, key: Path | None, timeout: float, quiet: float = 0.0, *,
    windows: bool = False,
) -> guest.Guest:  # fmt: skip
    """Until the guest is up as far as sigvirt can tell: it runs a command over SSH (a key
    sigvirt holds), its sshd answers (no key: a specialized image's credentials are the
    image's own), or, for Windows, the domain runs (no SSH to ask). For the first `quiet`
    seconds sshd is asked sparsely (ssh.await_banner's dense_after)."""
    try:
        if windows:
            return guest.wait_running(hv, g, timeout)
        if key is not None and g.endpoint is not None:
            return guest.wait_for_ssh(hv, g, timeout, quiet)
        # Only a public key was given: the best sign of life is sshd's banner.
        if g.endpoint is not None:
            seconds = ssh.wait_banner(g.endpoint, timeout, quiet)
            return replace(g, boot_seconds=seconds)
        return g
    except BaseException as err:
        prov = g.provenance
        tail = guest.console_tail(hv, prov.overlay_pool, prov.console)
        guest.delete(hv, g.name)
        if isinstance(err, GuestFailed):
            raise GuestFailed(err.message, console_tail=tail) from None
        raise


# -- dependents -------------------------------------------------------------------------------
def version_dependents(
    ctx: Context, gallery: str, definition: str, version: str
) -> list[Dependent]:
    """Every domain and volume whose backing chain reaches one of the version's replicas, read
    from libvirt in each region that holds one (whoever created them)."""
    rec = ctx.store.get_version(gallery, definition, version)
    found: list[Dependent] = []
    for region in sorted({r.location for r in rec.replicas}):  # each zone's host
        paths = [r.path for r in rec.replicas if r.location == region]
        found.extend(dependents.find(ctx.hv(region), paths))
    return found
