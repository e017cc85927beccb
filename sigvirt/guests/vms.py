"""VMs from image versions: a linked clone of the least-used completed replica, booted.

The domains themselves are the record: each carries its provenance (image, replica,
scale set, index, admin user, port) in <metadata>, which is what placement, listing and
dependents read. There is no second copy of that state to drift.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import os
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from sigvirt import faults
from sigvirt.catalog import dates, latest, names
from sigvirt.catalog.records import Definition, ImageVersion, Replica
from sigvirt.context import Context
from sigvirt.errors import (
    CapacityExhausted,
    Conflict,
    GuestFailed,
    HostError,
    InvalidArgument,
    InvalidName,
    NotFound,
    OutOfRange,
    RegionUnavailable,
    SigvirtError,
    Unsupported,
)
from sigvirt.guests import domxml, guest, sshkeys
from sigvirt.guests.domxml import Provenance
from sigvirt.hosts import ssh
from sigvirt.hosts.hypervisor import Domain, Hypervisor
from sigvirt.versions import dependents, targets
from sigvirt.versions.dependents import Dependent

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


@dataclass(frozen=True)
class Vm:
    name: str
    region: str
    state: str
    image: str
    replica: str
    admin_user: str
    address: str
    ssh: str  # the command a person types
    vcpus: int
    memory_mib: int
    scale_set: str = ""
    instance: int | None = None
    boot_seconds: float | None = None
    warnings: tuple[str, ...] = ()


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
                more = rec.target_regions.get(region, len(replicas)) + 1
                raise CapacityExhausted(
                    f"every replica in region {region} is at its budget of {budget} clones "
                    f"({listing}); add a replica or raise clones_per_replica in regions.yaml",
                    hint=targets.update_command(rec, region, more),
                )
            choice = min(open_, key=lambda r: (counts[r.path], r.volume))
            self._inflight[choice.path] += 1
            return choice

    def done(self, replica: Replica) -> None:
        with self._lock:
            self._inflight[replica.path] -= 1


def sigvirt_domains(hv: Hypervisor) -> list[tuple[Domain, Provenance]]:
    out = []
    for dom in hv.domains():
        prov = guest.provenance_of(dom)
        if prov is not None:
            out.append((dom, prov))
    return out


def clones_per_replica(hv: Hypervisor, paths: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter({p: 0 for p in paths})
    for _dom, prov in sigvirt_domains(hv):
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


def prepare(ctx: Context, req: VmRequest) -> Prepared:
    names.vm_name(req.name)
    ref = names.parse_image_ref(req.image)
    rec = latest.resolve(ctx.store, ref)
    if not rec.published_ok:
        raise Conflict(f"image version {rec.ref} is {rec.state}, not published")
    d = ctx.store.get_definition(rec.gallery, rec.definition)
    warnings = []
    for what, eol in (
        (f"image version {rec.ref}", rec.end_of_life),
        (f"image definition {d.name}", d.end_of_life),
    ):
        if dates.past_end_of_life(eol):
            warnings.append(f"{what} is past its end of life ({eol})")
    region = pick_region(ctx, rec, req.region)
    vcpus, mem = choose_size(req, d)
    admin = admin_name(req.admin_user or default_admin())
    keys, private = sshkeys.resolve(req.ssh_key_value, req.generate_ssh_keys)
    return Prepared(req, rec, d, region, vcpus, mem, admin, keys, private, tuple(warnings))


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


def create_prepared(
    ctx: Context,
    p: Prepared,
    placement: Placement | None = None,
    *,
    kind: str = "vm",
    scale_set: str = "",
    instance: int = -1,
) -> Vm:
    placement = placement or Placement()
    hv = ctx.hv(p.region)
    try:
        guest.reap_interrupted(hv, p.request.name)  # what a killed create of it left
    except Conflict:
        raise Conflict(f"a VM named {p.request.name} already exists in region {p.region}") from None
    cfg = ctx.regions.region(p.region)
    replica = placement.pick(hv, p.version, p.region, cfg.clones_per_replica)
    try:
        prov = Provenance(
            kind=kind,
            region=p.region,
            image=p.version.ref,
            replica_pool=replica.pool,
            replica_path=replica.path,
            scale_set=scale_set,
            instance=instance,
            image_request=p.request.image,
            ssh_keys="\n".join(p.public_keys),
            key_path=str(p.private_key or ""),
            custom_data=base64.b64encode(p.request.custom_data).decode()
            if p.request.custom_data
            else "",
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
        )
        accel = None if cfg.accel == "auto" else cfg.accel
        key = p.private_key
        g = guest.create(
            hv,
            spec,
            key or Path("/nonexistent"),
            ports=ctx.conns.ports(p.region),  # type: ignore[union-attr]
            accel=accel,
            wait=False,
            timeout=p.request.timeout,
        )
        if p.request.wait:
            g = _wait(hv, g, key, p.request.timeout)
    finally:
        placement.done(replica)
    return replace(
        describe(hv, p.region, hv.domain(g.name)), boot_seconds=g.boot_seconds, warnings=p.warnings
    )


def _wait(hv: Hypervisor, g: guest.Guest, key: Path | None, timeout: float) -> guest.Guest:
    try:
        if key is not None and g.endpoint is not None:
            return guest.wait_for_ssh(hv, g, timeout)
        # Only a public key was given: the best sign of life is sshd's banner.
        if g.endpoint is not None:
            seconds = ssh.wait_banner(g.endpoint, timeout)
            return replace(g, boot_seconds=seconds)
        return g
    except BaseException as err:
        prov = g.provenance
        tail = guest.console_tail(hv, prov.overlay_pool, prov.console)
        guest.delete(hv, g.name)
        if isinstance(err, GuestFailed):
            raise GuestFailed(err.message, console_tail=tail) from None
        raise


# -- reading ----------------------------------------------------------------------------------
def describe(hv: Hypervisor, region: str, dom: Domain) -> Vm:
    prov = guest.provenance_of(dom) or Provenance()
    info = dom.info()
    endpoint = endpoint_of(hv, prov)
    return Vm(
        name=dom.name,
        region=region,
        state=info.state,
        image=prov.image,
        replica=Path(prov.replica_path).name if prov.replica_path and not prov.flattened else "",
        admin_user=prov.admin_user,
        address=f"{endpoint.host}:{endpoint.port}" if endpoint else "",
        ssh=" ".join(endpoint.ssh_argv()) if endpoint else "",
        vcpus=info.vcpus,
        memory_mib=info.memory_mib,
        scale_set=prov.scale_set,
        instance=prov.instance if prov.scale_set else None,
    )


def endpoint_of(hv: Hypervisor, prov: Provenance) -> ssh.Endpoint | None:
    if not prov.ssh_port:
        return None
    key = Path(prov.key_path) if prov.key_path else sshkeys.default_private_key()
    return ssh.Endpoint("127.0.0.1", prov.ssh_port, prov.admin_user, key, guest.jump_for(hv))


def list_vms(
    ctx: Context, kind: str | None = "vm", region: str | None = None
) -> tuple[list[Vm], list[str]]:
    """VMs in every region (or one); second value: regions that could not be reached."""
    out: list[Vm] = []
    unreachable = []
    for name in [region] if region else list(ctx.regions.regions):
        try:
            hv = ctx.hv(name)
            for dom, prov in sigvirt_domains(hv):
                if prov.region == name and (kind is None or prov.kind == kind):
                    out.append(describe(hv, name, dom))
        except RegionUnavailable as err:
            unreachable.append(f"{name}: {err.message}")
    return sorted(
        out, key=lambda v: (v.scale_set, -1 if v.instance is None else v.instance, v.name)
    ), unreachable


def find(ctx: Context, name: str, region: str | None = None) -> tuple[Hypervisor, str, Domain]:
    for r in [region] if region else list(ctx.regions.regions):
        with contextlib.suppress(RegionUnavailable, NotFound):
            hv = ctx.hv(r)
            dom = hv.domain(name)
            prov = guest.provenance_of(dom)
            if prov is not None and prov.region == r:
                return hv, r, dom
    raise NotFound(f"VM {name} not found" + (f" in region {region}" if region else ""))


# -- lifecycle --------------------------------------------------------------------------------
def start(ctx: Context, name: str, region: str | None = None) -> Vm:
    hv, r, dom = find(ctx, name, region)
    if not dom.is_active():
        dom.start()
    return describe(hv, r, dom)


def stop(
    ctx: Context, name: str, region: str | None = None, force: bool = False, timeout: float = 60
) -> Vm:
    """ACPI shutdown, then power off if the guest doesn't stop in time (or at once with force)."""
    hv, r, dom = find(ctx, name, region)
    if dom.is_active():
        if not force:
            with contextlib.suppress(HostError):  # a guest without ACPI: powered off below
                dom.shutdown()
            if guest.wait_until_stopped(hv, name, timeout):
                return describe(hv, r, dom)
        dom.destroy()
    return describe(hv, r, dom)


def restart(ctx: Context, name: str, region: str | None = None) -> Vm:
    hv, r, dom = find(ctx, name, region)
    if dom.is_active():
        dom.reboot()
    else:
        dom.start()
    return describe(hv, r, dom)


def delete(ctx: Context, name: str, region: str | None = None) -> list[str]:
    """Delete a VM with its disk, seed and console log; what was removed.

    A `vm create` killed before its domain was defined leaves volumes and no domain: with no
    VM of that name, its leftovers (NAME.qcow2 backed by a replica of a configured pool,
    NAME.cidata.iso, NAME.console.log) are removed instead."""
    names.vm_name(name)
    try:
        hv, _r, _dom = find(ctx, name, region)
    except NotFound:
        removed = remove_leftovers(ctx, name, region)
        if not removed:
            raise
        return removed
    removed = guest.delete(hv, name)
    faults.point("vm.deleted")
    return removed


def remove_leftovers(ctx: Context, name: str, region: str | None = None) -> list[str]:
    """The volumes a VM's interrupted creation left in the pools of the region (or all)."""
    overlay, seed, console = guest.volume_names(name)
    removed: list[str] = []
    for r in [region] if region else list(ctx.regions.regions):
        with contextlib.suppress(RegionUnavailable):
            hv = ctx.hv(r)
            if hv.domain_exists(name):
                continue  # a domain sigvirt doesn't own: its volumes are not ours either
            pools = {p.name: hv.pool_path(p.name) for p in ctx.regions.region(r).pools}
            for pool in pools:
                for vol in hv.volumes(pool):
                    if vol.name in (seed, console):
                        ours = True
                    elif vol.name == overlay:
                        backing = vol.backing_path()
                        ours = backing is not None and Path(backing).parent in pools.values()
                    else:
                        ours = False
                    if ours:
                        vol.delete()
                        removed.append(f"volume {pool}/{vol.name}")
    return removed


def ssh_argv(ctx: Context, name: str, region: str | None, command: list[str]) -> list[str]:
    hv, _r, dom = find(ctx, name, region)
    prov = guest.provenance_of(dom) or Provenance()
    ep = endpoint_of(hv, prov)
    if ep is None:
        raise NotFound(f"VM {name} has no SSH forward (bridged VMs: ssh to its address)")
    return [*ep.ssh_argv(), *command]


# -- flatten ----------------------------------------------------------------------------------
def flatten(ctx: Context, name: str, region: str | None = None, timeout: float = 3600) -> Vm:
    """Pull the replica's data into the VM's own disk so the version can be retired: live via
    libvirt's block pull when the VM runs, offline via qemu-img otherwise."""
    hv, r, dom = find(ctx, name, region)
    prov = guest.provenance_of(dom) or Provenance()
    if prov.flattened:
        return describe(hv, r, dom)
    if dom.is_active():
        dom.block_pull("vda")
        end = time.monotonic() + timeout
        while True:
            if not dom.block_job_active("vda"):
                break
            if time.monotonic() > end:
                raise HostError(f"flatten {name}: block pull still running after {timeout:.0f}s")
            time.sleep(0.5)
    else:
        if not hv.is_local:
            raise Unsupported(f"flatten {name}: start the VM to flatten it live on a remote host")
        overlay = hv.volume_path(prov.overlay_pool, prov.overlay)
        ctx.qemu_img.rebase_flatten(overlay)
    _redefine_without_backing(hv, dom, prov)
    return describe(hv, r, hv.domain(name))


def _redefine_without_backing(hv: Hypervisor, dom: Domain, prov: Provenance) -> None:
    root = ET.fromstring(dom.xml(inactive=True, secure=True))
    for disk in root.findall("./devices/disk"):
        bs = disk.find("backingStore")
        target = disk.find("target")
        if bs is not None and target is not None and target.get("dev") == "vda":
            disk.remove(bs)
            ET.SubElement(disk, "backingStore")
    meta = root.find("metadata")
    if meta is not None:
        for child in list(meta):
            if child.tag == f"{{{domxml.XMLNS}}}guest":
                meta.remove(child)
        flat = replace(prov, flattened=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        meta.append(flat.to_xml())
    hv.define(ET.tostring(root, encoding="unicode"))
    with contextlib.suppress(SigvirtError):
        hv.refresh_pool(prov.overlay_pool)


# -- dependents -------------------------------------------------------------------------------
def version_dependents(
    ctx: Context, gallery: str, definition: str, version: str
) -> list[Dependent]:
    """Every domain and volume whose backing chain reaches one of the version's replicas, read
    from libvirt in each region that holds one (whoever created them)."""
    rec = ctx.store.get_version(gallery, definition, version)
    found: list[Dependent] = []
    for region in sorted({r.region for r in rec.replicas}):
        paths = [r.path for r in rec.replicas if r.region == region]
        found.extend(dependents.find(ctx.hv(region), paths))
    return found
