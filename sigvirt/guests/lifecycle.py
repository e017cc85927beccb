"""What happens to a VM after it is created: power, delete, flatten, SSH.

Power states as az names them: a domain that runs is "VM running"; one that is shut off holds
no memory or CPU on the host, which is what Azure calls deallocated, so `stop` and
`deallocate` both leave a VM "VM deallocated" here (stop asks the guest first, as az does).
"""

from __future__ import annotations

import contextlib
import re
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from sigvirt import faults
from sigvirt.catalog import names
from sigvirt.context import Context
from sigvirt.errors import (
    Conflict,
    GuestFailed,
    HostError,
    NotFound,
    RegionUnavailable,
    SigvirtError,
    Unsupported,
)
from sigvirt.guests import domxml, guest
from sigvirt.guests.domxml import Provenance
from sigvirt.guests.inventory import Vm, describe, endpoint_of, find, hosts
from sigvirt.hosts import ssh
from sigvirt.hosts.hypervisor import Domain, Hypervisor

PowerAction = Literal["start", "stop", "deallocate", "restart"]
STOP_TIMEOUT = 60.0  # seconds a guest gets to shut down on ACPI before it is powered off


@dataclass(frozen=True)
class Deleted:
    deleted: str  # the VM's name
    removed: tuple[str, ...]  # "domain NAME", "volume POOL/VOLUME", ...


# -- power ------------------------------------------------------------------------------------
def power_domain(
    hv: Hypervisor,
    dom: Domain,
    action: PowerAction,
    *,
    force: bool = False,
    wait: bool = True,
    timeout: float = STOP_TIMEOUT,
) -> None:
    """start | stop | deallocate (ACPI, then power off after `timeout`; at once with force;
    with wait=False the guest is asked and left to it) | restart (a reset with force)."""
    if action in ("start", "restart") and guest.interrupted(dom):
        raise Conflict(
            f"VM {dom.name}: its creation was interrupted, it never ran",
            hint=f"sigvirt vm delete -n {dom.name} removes what is left of it",
        )
    if action == "start":
        if not dom.is_active():
            guest.start_domain(hv, dom)
    elif action == "restart":
        if dom.is_active() and not force:
            dom.reboot()
        else:  # az's --force redeploys an unresponsive VM: here, power it off and on
            dom.destroy()
            guest.start_domain(hv, dom)
    elif dom.is_active():
        if not force:
            with contextlib.suppress(HostError):  # a guest without ACPI: powered off below
                dom.shutdown()
            if not wait or guest.wait_until_stopped(hv, dom.name, timeout):
                return
        dom.destroy()


def power(
    ctx: Context,
    vm_names: list[str],
    action: PowerAction,
    region: str | None = None,
    *,
    force: bool = False,
    wait: bool = True,
) -> list[Vm]:
    """Each VM started, stopped, deallocated or restarted; each as it is afterwards."""
    found = [find(ctx, name, region) for name in vm_names]  # all known before any is touched
    out = []
    for hv, r, dom in found:
        power_domain(hv, dom, action, force=force, wait=wait)
        out.append(describe(hv, r, dom))
    return out


def start(ctx: Context, name: str, region: str | None = None) -> Vm:
    return power(ctx, [name], "start", region)[0]


def stop(ctx: Context, name: str, region: str | None = None, force: bool = False) -> Vm:
    return power(ctx, [name], "stop", region, force=force)[0]


def restart(ctx: Context, name: str, region: str | None = None) -> Vm:
    return power(ctx, [name], "restart", region)[0]


# -- delete -----------------------------------------------------------------------------------
def delete(ctx: Context, name: str, region: str | None = None) -> list[str]:
    """Delete a VM with its disks, seed and console log; what was removed.

    Older sigvirt made volumes before the domain and removed the domain before the volumes,
    so a create or delete it was killed in left volumes and no domain: with no VM of that
    name, those leftovers are removed instead."""
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


def delete_many(ctx: Context, vm_names: list[str], region: str | None = None) -> list[Deleted]:
    """Each VM deleted; of several, one that is not there is NotFound before any goes."""
    if len(vm_names) > 1:
        for name in vm_names:
            find(ctx, name, region)
    return [Deleted(n, tuple(delete(ctx, n, region))) for n in vm_names]


def remove_leftovers(ctx: Context, name: str, region: str | None = None) -> list[str]:
    """The volumes a VM's interrupted creation or deletion left in the pools of the region
    (or all): NAME.qcow2 (or a reimage's NAME.osN.qcow2) backed by a replica of a configured
    pool, NAME.cidata.iso,
    NAME.console.log and NAME.dataN.qcow2. A domain of that name (another installation's,
    or not sigvirt's) owns them: they are left alone."""
    overlay, seed, console = guest.volume_names(name)
    data = re.compile(re.escape(name) + r"\.data[0-9]+\.qcow2")
    reimaged = re.compile(re.escape(name) + r"\.os[0-9]+\.qcow2")  # a reimage's overlays
    removed: list[str] = []
    for r in hosts(ctx, region):  # every host: each zone of a zoned region too
        with contextlib.suppress(RegionUnavailable):
            hv = ctx.hv(r)
            if hv.domain_exists(name):
                continue
            pools = {p.name: hv.pool_path(p.name) for p in ctx.regions.region(r).pools}
            for pool in pools:
                for vol in hv.volumes(pool):
                    if vol.name in (seed, console):
                        ours = True
                    elif vol.name == overlay or reimaged.fullmatch(vol.name):
                        backing = vol.backing_path()
                        ours = backing is not None and Path(backing).parent in pools.values()
                    else:
                        ours = bool(data.fullmatch(vol.name)) and vol.backing_path() is None
                    if ours:
                        vol.delete()
                        removed.append(f"volume {pool}/{vol.name}")
    return removed


# -- wait -------------------------------------------------------------------------------------
def wait(
    ctx: Context,
    vm_names: list[str],
    region: str | None = None,
    *,
    deleted: bool = False,
    timeout: float = 300.0,
    interval: float = 1.0,
) -> None:
    """`vm wait --created` (after `vm create --no-wait`: until each VM's sshd answers, a
    Windows VM until it runs) or `--deleted` (until none of them is found)."""
    end = time.monotonic() + timeout
    for name in vm_names:
        if deleted:
            while True:
                try:
                    find(ctx, name, region)
                except NotFound:
                    break
                if time.monotonic() > end:
                    raise Conflict(f"VM {name} still exists after {timeout:.0f}s")
                time.sleep(interval)
            continue
        hv, _r, dom = find(ctx, name, region)
        prov = guest.provenance_of(dom) or Provenance()
        if prov.os_type == "Windows":  # nothing answers SSH there: running is created
            g = guest.Guest(name, None, Path(), prov)
            guest.wait_running(hv, g, max(0.0, end - time.monotonic()))
            continue
        ep = endpoint_of(hv, prov)
        if ep is None:
            raise NotFound(f"VM {name} has no SSH forward to wait for")
        try:
            ssh.wait_banner(ep, max(0.0, end - time.monotonic()))
        except TimeoutError as err:
            raise GuestFailed(f"{name}: {err}") from None


# -- ssh --------------------------------------------------------------------------------------
def ssh_argv(
    ctx: Context, name: str, region: str | None, command: list[str], *,
    user: str | None = None, key: Path | None = None,
) -> list[str]:  # fmt: skip
    """The ssh command that reaches the VM: as its admin user with sigvirt's key, or with
    the credentials given (a specialized image's own users: sigvirt holds none of them)."""
    hv, _r, dom = find(ctx, name, region)
    prov = guest.provenance_of(dom) or Provenance()
    ep = endpoint_of(hv, prov)
    if ep is None:
        raise NotFound(f"VM {name} has no SSH forward (bridged VMs: ssh to its address)")
    if key is not None and not key.is_file():
        raise NotFound(f"--private-key-file {key}: no such file")
    ep = replace(ep, user=user or ep.user, key_path=key or ep.key_path)
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
        os_disk = domxml.os_disk_device(prov)  # sda on SCSI
        dom.block_pull(os_disk)
        end = time.monotonic() + timeout
        while True:
            if not dom.block_job_active(os_disk):
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
    os_disk = domxml.os_disk_device(prov)
    for disk in root.findall("./devices/disk"):
        bs = disk.find("backingStore")
        target = disk.find("target")
        if bs is not None and target is not None and target.get("dev") == os_disk:
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
