"""Which VMs there are, read from libvirt: finding, listing and describing them.

A VM is a domain whose <metadata> carries sigvirt's provenance. Two setups (gallery roots)
may share one libvirt host: each sees and touches only the domains its own installation made
(and those made before domains named an installation). What is physical — clones counted for
placement, a replica's dependents, ports taken — counts every domain, whoever made it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from sigvirt.catalog import azureid, names
from sigvirt.context import Context
from sigvirt.errors import HostAccessDenied, InvalidArgument, NotFound, RegionUnavailable
from sigvirt.guests import domxml, guest, sshkeys
from sigvirt.guests.domxml import Provenance
from sigvirt.hosts import ssh
from sigvirt.hosts.hypervisor import Domain, Hypervisor
from sigvirt.hosts.regions import location, split_location


@dataclass(frozen=True)
class DataDisk:
    lun: int
    device: str  # the guest's name for it: vdc, vdd, ... (domxml.data_device)
    volume: str
    size_gb: int


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
    # az's model of it (the views in vmviews.py turn these into az's shape)
    resource_group: str = ""  # as created with -g ("" if none was given)
    tags: dict[str, str] = field(default_factory=dict)
    size: str = ""
    image_id: str = ""
    image_request: str = ""  # the image as the user named it at create
    ssh_public_keys: tuple[str, ...] = ()  # the admin user's authorized keys, as seeded
    os_disk_gb: int = 0  # the OS disk's size (GiB, rounded up)
    data_disks: tuple[DataDisk, ...] = ()
    provisioning_state: str = "Succeeded"  # Creating while being made, Failed if that died
    vm_id: str = ""  # libvirt's UUID of the domain
    created: str = ""
    # where it lives
    pool: str = ""  # the pool of its own volumes
    volumes: tuple[str, ...] = ()
    replica_pool: str = ""
    ssh_port: int = 0
    flattened: str = ""
    # scale-set instances: the model generation it got, and a reimage under way or kept
    model_generation: int = 0
    reimage_step: str = ""  # planned | swapped | committing | kept | reverting ("" if none)
    previous_image: str = ""  # the version of the disk a reimage kept (or is leaving)
    zone: str = ""  # the zone of a zoned region whose host it runs on
    os_type: str = "Linux"  # the definition's, when it was created (Windows: no SSH)
    computer_name: str = ""  # its hostname when --computer-name gave one ("": its name)
    console: str = ""  # how to reach a guest without SSH (Windows: its VNC display)
    security_type: str = ""  # TrustedLaunch (Secure Boot + vTPM) or "" (Standard)
    disk_controller: str = ""  # the OS disk's: scsi | nvme ("" = virtio-blk)

    @property
    def location(self) -> str:
        """Its host: the region, or REGION/ZONE (what ctx.hv takes)."""
        return location(self.region, self.zone)


def installation(ctx: Context) -> str:
    """This installation's id; "" when it has none yet and the caller may not make it (then
    no domain carries one of its own, and only domains that name none are its)."""
    try:
        return ctx.store.installation()
    except HostAccessDenied:
        return ""


def sigvirt_domains(hv: Hypervisor) -> list[tuple[Domain, Provenance]]:
    """Every domain sigvirt made on the host, whichever installation made it."""
    out = []
    for dom in hv.domains():
        prov = guest.provenance_of(dom)
        if prov is not None:
            out.append((dom, prov))
    return out


def own_domains(hv: Hypervisor, installation: str) -> list[tuple[Domain, Provenance]]:
    return [(d, p) for d, p in sigvirt_domains(hv) if guest.mine(p, installation)]


# -- reading one ------------------------------------------------------------------------------
def describe(hv: Hypervisor, where: str, dom: Domain) -> Vm:
    """The VM `dom` on the host of location `where` (a region, or REGION/ZONE)."""
    region, zone = split_location(where)
    prov = guest.provenance_of(dom) or Provenance()
    info = dom.info()
    endpoint = endpoint_of(hv, prov)
    name = partial(domxml.data_device, controller=prov.disk_controller, seeded=bool(prov.seed))
    sata = prov.os_type == "Windows"
    data = tuple(
        DataDisk(lun, name(lun, sata=sata), vol, gib)
        for lun, (vol, gib) in enumerate(prov.data_disk_list)
    )
    image_id = prov.image_id
    if not image_id and prov.image.count("/") == 2:  # made before ids were recorded
        image_id = azureid.version_id("", *prov.image.split("/"))
    provisioning = "Succeeded"
    if prov.creator and info.state != "running":
        provisioning = "Failed" if guest.interrupted(dom) else "Creating"
    intent = prov.intent
    if intent is not None and intent.step != "kept":
        # az's provisioningState of an instance being reimaged; one whose reimage was killed
        # failed until the next reimage (or `vmss reimage`) finishes or undoes it
        provisioning = "Updating" if guest.creator_alive(intent.creator) else "Failed"
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
        resource_group=prov.resource_group,
        tags=prov.tag_map,
        size=prov.size or "Custom",
        image_id=image_id,
        image_request=prov.image_request,
        ssh_public_keys=tuple(prov.ssh_keys.splitlines()),
        os_disk_gb=-(-prov.os_disk_bytes // guest.GiB),
        data_disks=data,
        provisioning_state=provisioning,
        vm_id=dom.uuid(),
        created=prov.created,
        pool=prov.overlay_pool,
        volumes=prov.volumes,
        replica_pool=prov.replica_pool if not prov.flattened else "",
        ssh_port=prov.ssh_port,
        flattened=prov.flattened,
        model_generation=prov.model_generation,
        reimage_step=intent.step.value if intent else "",
        previous_image=intent.old.image if intent else "",
        zone=zone,
        os_type=prov.os_type or "Linux",
        computer_name=prov.computer_name,
        disk_controller=prov.disk_controller,
        security_type=prov.security_type,
        # no SSH to show for Windows: its screen (VNC on the host's loopback) instead
        console=guest.console_way(hv, dom.name)
        if prov.os_type == "Windows" and info.state == "running"
        else "",
    )


def endpoint_of(hv: Hypervisor, prov: Provenance) -> ssh.Endpoint | None:
    if not prov.ssh_port:
        return None
    key = Path(prov.key_path) if prov.key_path else sshkeys.default_private_key()
    return ssh.Endpoint("127.0.0.1", prov.ssh_port, prov.admin_user, key, guest.jump_for(hv))


# -- finding and listing ----------------------------------------------------------------------
def list_vms(
    ctx: Context, kind: str | None = "vm", region: str | None = None
) -> tuple[list[Vm], list[str]]:
    """This installation's VMs in every region (or one); second value: regions that could
    not be reached."""
    mine = installation(ctx)
    out: list[Vm] = []
    unreachable = []
    for name in hosts(ctx, region):
        try:
            hv = ctx.hv(name)
            for dom, prov in own_domains(hv, mine):
                if prov.region == split_location(name)[0] and kind in (None, prov.kind):
                    with contextlib.suppress(NotFound):  # deleted while we looked
                        out.append(describe(hv, name, dom))
        except RegionUnavailable as err:
            unreachable.append(f"{name}: {err.message}")
    return sorted(
        out, key=lambda v: (v.scale_set, -1 if v.instance is None else v.instance, v.name)
    ), unreachable


def hosts(ctx: Context, region: str | None = None) -> list[str]:
    """The locations to look in: every host (each zone of a zoned region), or one region's;
    a region regions.yaml doesn't know is looked for as it is (its lookup says why not)."""
    try:
        return ctx.regions.locations(region)
    except NotFound:
        return [region] if region else []


def find(ctx: Context, name: str, region: str | None = None) -> tuple[Hypervisor, str, Domain]:
    """This installation's VM of that name (another installation's is not found here); the
    second value is its location (a region, or REGION/ZONE)."""
    mine = installation(ctx)
    for r in hosts(ctx, region):
        with contextlib.suppress(RegionUnavailable, NotFound):
            hv = ctx.hv(r)
            dom = hv.domain(name)
            prov = guest.provenance_of(dom)
            if prov is not None and prov.region == split_location(r)[0] and guest.mine(prov, mine):
                return hv, r, dom
    raise NotFound(f"VM {name} not found" + (f" in region {region}" if region else ""))


def show(ctx: Context, vm_names: list[str], region: str | None = None) -> list[Vm]:
    out = []
    for name in vm_names:
        hv, r, dom = find(ctx, name, region)
        out.append(describe(hv, r, dom))
    return out


# -- which resources a command names: --name or --ids -----------------------------------------
def _one_of(name: str | None, ids: list[str] | None, what: str) -> None:
    if name and ids:
        raise InvalidArgument(f"give the {what} by --name or by --ids, not both")
    if not name and not ids:
        raise InvalidArgument(f"give the {what} by --name NAME or --ids ID ...")


def vm_names(name: str | None, ids: list[str] | None) -> list[str]:
    """VM names from `-n NAME` or `--ids ID ...` (az: one or the other). A scale-set
    instance's id names its domain, SCALESET-INDEX."""
    _one_of(name, ids, "VM")
    if name:
        return [names.vm_name(name)]
    out = []
    for text in ids or []:
        rid = azureid.parse(text)
        if rid.type == azureid.VM_TYPE:
            out.append(rid.name)
        elif rid.type == azureid.INSTANCE_TYPE:
            out.append(names.vm_name(f"{rid.name}-{rid.instance}"))
        else:
            raise InvalidArgument(
                f"--ids {names.shorten(text, 200)} is a {rid.type}, not a virtual machine"
            )
    return list(dict.fromkeys(out))


def scale_set_names(name: str | None, ids: list[str] | None) -> list[str]:
    """Scale set names from `-n NAME` or `--ids ID ...`."""
    _one_of(name, ids, "scale set")
    if name:
        return [names.vm_name(name)]
    out = []
    for text in ids or []:
        rid = azureid.parse(text)
        if rid.type != azureid.VMSS_TYPE:
            raise InvalidArgument(
                f"--ids {names.shorten(text, 200)} is a {rid.type}, not a scale set"
            )
        out.append(rid.name)
    return list(dict.fromkeys(out))
