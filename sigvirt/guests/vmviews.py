"""VMs, scale sets and their instances in the shape `az vm` / `az vmss` print them.

Pure functions from sigvirt's records to JSON-able dicts, so that a script written against
az (`--query hardwareProfile.vmSize`, `… | jq .powerState`) reads sigvirt's output unchanged.
Key names follow Azure's REST API as az prints it (properties flattened into the object,
camelCase); what is sigvirt's own (region, replica, pool, volumes, ssh command, port, boot
time…) stays, under one extra key, `sigvirt`. Tables for people are rendered from the
records themselves, not from these.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping
from typing import Any

from sigvirt.catalog import azureid
from sigvirt.catalog.fleet import ScaleSetModel, format_duration
from sigvirt.errors import InvalidName
from sigvirt.guests import domxml
from sigvirt.guests.inventory import Vm
from sigvirt.guests.scalesets import ScaleSet

EXTRA = "sigvirt"  # the one key that is not Azure's
OS_TYPE = "Linux"  # vms.check_definition refuses every other

# libvirt's state → az's PowerState code. A shut-off domain holds no memory or CPU on the
# host: that is Azure's "deallocated". A paused one keeps its memory without running: Azure's
# "stopped" (allocated, not running).
_POWER = {
    "running": "running",
    "paused": "stopped",
    "stopping": "stopping",
    "stopped": "deallocated",
    "crashed": "stopped",
    "suspended": "stopped",
}


def power_code(vm: Vm) -> str:
    if vm.provisioning_state == "Creating":
        return "starting"
    return _POWER.get(vm.state, "unknown")


def power_state(vm: Vm) -> str:
    """az's powerState: "VM running", "VM deallocated", ..."""
    return f"VM {power_code(vm)}"


def group_of(resource_group: str, hint: str | None = None) -> str:
    """The group in a resource's ids: the one it was created with, else the -g the command
    was given, else sigvirt's default."""
    return resource_group or hint or azureid.DEFAULT_GROUP


def mac_address(name: str) -> str:
    return domxml.mac_for(name).replace(":", "-").upper()  # as az prints NICs' MACs


# -- pieces -----------------------------------------------------------------------------------
# az prints SDK models through azure-cli's todict: attribute names camel-cased, so the REST
# API's diskSizeGB is printed diskSizeGb (and `--query storageProfile.osDisk.diskSizeGb` is
# what az scripts say).
DISK_SIZE = "diskSizeGb"


def _linux(admin: str, keys: tuple[str, ...]) -> dict[str, Any]:
    public = [{"path": f"/home/{admin}/.ssh/authorized_keys", "keyData": k} for k in keys]
    return {
        "disablePasswordAuthentication": True,
        "provisionVMAgent": False,
        "ssh": {"publicKeys": public},
    }


def _disk_id(group: str, name: str) -> str:
    """A managed disk's id: sigvirt's disks are volumes, named here as az names disks."""
    base = f"/subscriptions/{azureid.SUBSCRIPTION}/resourceGroups/{group}"
    return f"{base}/providers/{azureid.PROVIDER}/disks/{name}"


def _image_reference(image_id: str, image: str) -> dict[str, Any]:
    version = image.rsplit("/", 1)[-1] if image.count("/") == 2 else None
    ref: dict[str, Any] = {"id": image_id or None, "exactVersion": version}
    if image_id:  # az adds the group next to every id it prints
        with contextlib.suppress(InvalidName):  # a hand-edited one: the id alone
            ref["resourceGroup"] = azureid.parse(image_id).group
    return ref


def _storage_profile(
    image_id: str,
    image: str,
    os_disk: str,
    os_disk_gb: int,
    data: list[tuple[str, int]],
    group: str | None,
) -> dict[str, Any]:
    """storageProfile; `group` names the disks' group (None: a scale set's model, whose disks
    have no ids)."""

    def managed(name: str) -> dict[str, Any]:
        return (
            {"managedDisk": {"id": _disk_id(group, name), "resourceGroup": group}}
            if (group and name)
            else {}
        )

    return {
        "imageReference": _image_reference(image_id, image),
        "osDisk": {
            "osType": OS_TYPE,
            "name": os_disk or None,
            "createOption": "FromImage",
            "caching": "ReadWrite",
            DISK_SIZE: os_disk_gb or None,
            "deleteOption": "Delete",
            **managed(os_disk),
        },
        "dataDisks": [
            {
                "lun": lun,
                "name": name or None,
                "createOption": "Empty",
                "caching": "None",
                DISK_SIZE: gb,
                "deleteOption": "Delete",
                **managed(name),
            }
            for lun, (name, gb) in enumerate(data)
        ],
    }


def _vm_storage(vm: Vm, group: str) -> dict[str, Any]:
    os_disk = vm.volumes[0] if vm.volumes else ""
    data = [(d.volume, d.size_gb) for d in vm.data_disks]
    out = _storage_profile(vm.image_id, vm.image, os_disk, vm.os_disk_gb, data, group)
    out["osDisk"]["osType"] = vm.os_type
    # az's SCSI or NVMe (--disk-controller-type); null for sigvirt's default virtio-blk
    out["diskControllerType"] = {"scsi": "SCSI", "nvme": "NVMe"}.get(vm.disk_controller)
    return out


def _os_profile(vm: Vm) -> dict[str, Any] | None:
    """None for a VM booted without a seed (a specialized image, Windows): as in Azure, it
    has no osProfile (no admin user or keys were given to it)."""
    if not vm.admin_user:
        return None
    return {
        "computerName": vm.computer_name or vm.name,
        "adminUsername": vm.admin_user,
        "linuxConfiguration": _linux(vm.admin_user, vm.ssh_public_keys),
    }


def security_profile(security_type: str) -> dict[str, Any] | None:
    """az's securityProfile: a Trusted Launch VM's always has Secure Boot and a vTPM here;
    a Standard VM has none (null, as az shows one created with --security-type Standard)."""
    if not security_type:
        return None
    on = {"secureBootEnabled": True, "vTpmEnabled": True}
    return {"securityType": security_type, "uefiSettings": on}


def _statuses(vm: Vm) -> list[dict[str, Any]]:
    state = vm.provisioning_state.lower()
    return [
        {
            "code": f"ProvisioningState/{state}",
            "level": "Error" if state == "failed" else "Info",
            "displayStatus": f"Provisioning {state}",
            "time": vm.created or None,
        },
        {"code": f"PowerState/{power_code(vm)}", "level": "Info", "displayStatus": power_state(vm)},
    ]


def sigvirt_facts(vm: Vm) -> dict[str, Any]:
    """What sigvirt knows that az has no key for."""
    return {
        "region": vm.region,
        "state": vm.state,
        "image": vm.image,
        "image_request": vm.image_request,
        "replica": vm.replica,
        "replica_pool": vm.replica_pool,
        "pool": vm.pool,
        "volumes": list(vm.volumes),
        "data_disks": [
            {"lun": d.lun, "device": d.device, "volume": d.volume, "size_gb": d.size_gb}
            for d in vm.data_disks
        ],
        "admin_user": vm.admin_user,
        "address": vm.address,
        "ssh": vm.ssh,
        "ssh_port": vm.ssh_port or None,
        "console": vm.console or None,  # a Windows VM's way in (VNC on the host's loopback)
        "vcpus": vm.vcpus,
        "memory_mib": vm.memory_mib,
        "scale_set": vm.scale_set,
        "instance": vm.instance,
        "created": vm.created,
        "flattened": vm.flattened,
        "boot_seconds": vm.boot_seconds,
        "warnings": list(vm.warnings),
    }


def _details(vm: Vm) -> dict[str, Any]:
    """What `az vm show -d` adds: the instance view's power state and the addresses."""
    return {
        "powerState": power_state(vm),
        "publicIps": vm.address,  # the SSH forward: what reaches the guest from here
        "privateIps": "",
        "fqdns": "",
        "macAddresses": mac_address(vm.name),
    }


# -- VMs --------------------------------------------------------------------------------------
def vm_resource(vm: Vm, *, details: bool = False, group: str | None = None) -> dict[str, Any]:
    """`az vm show [-d]`."""
    rg = group_of(vm.resource_group, group)
    out: dict[str, Any] = {
        "id": azureid.vm_id(rg, vm.name),
        "name": vm.name,
        "type": azureid.VM_TYPE,
        "location": vm.region,
        "resourceGroup": rg,
        "tags": dict(vm.tags),
        "provisioningState": vm.provisioning_state,
        "vmId": vm.vm_id,
        "timeCreated": vm.created or None,
        "zones": [vm.zone] if vm.zone else None,  # a zoned region's VMs: az's ["2"]
        "hardwareProfile": {"vmSize": vm.size},
        "storageProfile": _vm_storage(vm, rg),
        "osProfile": _os_profile(vm),
        "securityProfile": security_profile(vm.security_type),
        "networkProfile": {"networkInterfaces": []},  # user-mode networking: no NIC resource
    }
    if details:
        out.update(_details(vm))
    out[EXTRA] = sigvirt_facts(vm)
    return out


def vm_created(vm: Vm, group: str | None = None) -> dict[str, Any]:
    """`az vm create`: the VM, plus the summary keys az prints after a create
    (publicIpAddress, privateIpAddress, macAddress) that scripts query."""
    out = vm_resource(vm, details=True, group=group)
    extra = out.pop(EXTRA)
    out.update(publicIpAddress=vm.address, privateIpAddress="", macAddress=mac_address(vm.name))
    out[EXTRA] = extra
    return out


def ip_addresses(vms: list[Vm], group: str | None = None) -> list[dict[str, Any]]:
    """`az vm list-ip-addresses`: a VM's public address here is its SSH forward."""
    out = []
    for vm in vms:
        rg = group_of(vm.resource_group, group)
        public = []
        if vm.address:
            public.append(
                {
                    "id": None,
                    "name": f"{vm.name}-ssh",
                    "ipAddress": vm.address,
                    "ipAllocationMethod": "Static",
                }
            )
        network = {"privateIpAddresses": [], "publicIpAddresses": public}
        out.append({"virtualMachine": {"name": vm.name, "resourceGroup": rg, "network": network}})
    return out


# -- scale sets -------------------------------------------------------------------------------
# An instance's health as the health probe found it: (healthy, why not); None: not asked.
HealthView = tuple[bool, str] | None


def vm_health(health: HealthView, vm: Vm) -> dict[str, Any]:
    """Azure's vmHealth of a scale-set instance (what its application health probe says)."""
    if health is None or vm.state != "running":
        code, level, text = "unknown", "Info", "The VM health is unknown"
        reason = "" if health is None else f"the VM is {vm.state}"
    elif health[0]:
        code, level, text, reason = "healthy", "Info", "The VM is reporting itself as healthy", ""
    else:
        code, level, text = "unhealthy", "Warning", "The VM is reporting itself as unhealthy"
        reason = health[1]
    status: dict[str, Any] = {"code": f"HealthState/{code}", "level": level, "displayStatus": text}
    if reason:
        status["message"] = reason
    return {"status": status}


def instance_view(vm: Vm, health: HealthView = None) -> dict[str, Any]:
    """`az vmss get-instance-view --instance-id N` (vmHealth when the health was checked)."""
    out: dict[str, Any] = {
        "computerName": vm.name,
        "osName": OS_TYPE,
        "statuses": _statuses(vm),
    }
    if health is not None:
        out["vmHealth"] = vm_health(health, vm)
    out[EXTRA] = {"name": vm.name, "address": vm.address, "state": vm.state}
    return out


def latest_model_applied(vm: Vm, model_generation: int | None) -> bool:
    """az's latestModelApplied: the instance got the model's current generation (one made
    before generations were recorded got the first)."""
    return model_generation is None or max(1, vm.model_generation) == model_generation


def instance_resource(
    vm: Vm, *, group: str | None = None, expand: bool = False,
    model_generation: int | None = None, health: HealthView = None,
) -> dict[str, Any]:  # fmt: skip
    """`az vmss list-instances [--expand instanceView]`: one scale-set VM. Its name is its
    domain's (what `sigvirt vm ssh -n` takes), where Azure says SCALESET_N."""
    rg = group_of(vm.resource_group, group)
    index = -1 if vm.instance is None else vm.instance
    out: dict[str, Any] = {
        "id": azureid.instance_id(rg, vm.scale_set, index),
        "name": vm.name,
        "type": azureid.INSTANCE_TYPE,
        "location": vm.region,
        "resourceGroup": rg,
        "tags": dict(vm.tags),
        "instanceId": str(index),
        "latestModelApplied": latest_model_applied(vm, model_generation),
        "vmId": vm.vm_id,
        "provisioningState": vm.provisioning_state,
        "timeCreated": vm.created or None,
        "zones": [vm.zone] if vm.zone else None,
        "sku": {"name": vm.size, "tier": "Standard"},
        "hardwareProfile": {"vmSize": vm.size},
        "storageProfile": _vm_storage(vm, rg),
        "osProfile": _os_profile(vm),
        "securityProfile": security_profile(vm.security_type),
    }
    if expand:
        out["instanceView"] = {k: v for k, v in instance_view(vm, health).items() if k != EXTRA}
    out[EXTRA] = {**sigvirt_facts(vm), **instance_facts(vm)}
    return out


def instance_facts(vm: Vm) -> dict[str, Any]:
    """A scale-set instance's own: the model generation it got, a reimage under way or kept."""
    return {
        "version": vm.image.rsplit("/", 1)[-1] if vm.image.count("/") == 2 else "",
        "model_generation": max(1, vm.model_generation),
        "reimage": vm.reimage_step or None,
        "previous_image": vm.previous_image or None,
    }


def vmss_resource(ss: ScaleSet, group: str | None = None) -> dict[str, Any]:
    """`az vmss show`."""
    rg = group_of(ss.resource_group, group)
    data = [("", gb) for gb in ss.data_disk_gb]
    vmss_id = azureid.vmss_id(rg, ss.name)
    return {
        "id": vmss_id,
        "name": ss.name,
        "type": azureid.VMSS_TYPE,
        "location": ss.region,
        "resourceGroup": rg,
        "tags": dict(ss.tags),
        "zones": list(ss.model.zones) if ss.model and ss.model.zones else None,
        "sku": {"name": ss.size, "tier": "Standard", "capacity": ss.capacity},
        "provisioningState": ss.provisioning_state,
        # Azure's is a GUID made once at creation; this one is as stable as the set itself
        "uniqueId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{vmss_id}@{ss.created}")),
        "timeCreated": ss.created or None,
        "orchestrationMode": "Uniform",
        "overprovision": False,
        "singlePlacementGroup": True,
        "upgradePolicy": upgrade_policy(ss.model),
        "virtualMachineProfile": {
            "osProfile": {
                "computerNamePrefix": f"{ss.name}-",
                "adminUsername": ss.admin_user,
                "linuxConfiguration": _linux(ss.admin_user, ss.ssh_public_keys),
            }
            if ss.admin_user  # a specialized or Windows image: none (no seed)
            else None,
            "storageProfile": _storage_profile(
                ss.image_id, ss.image, "", ss.os_disk_gb, data, None
            ),
            "securityProfile": security_profile(ss.model.security_type if ss.model else ""),
        },
        EXTRA: {
            "region": ss.region,
            "image": ss.image,
            "image_request": ss.image_request,
            "vcpus": ss.vcpus,
            "memory_mib": ss.memory_mib,
            "states": dict(ss.states),
            "instances": list(ss.instances),
            **model_facts(ss.model),
        },
    }


def upgrade_policy(model: ScaleSetModel | None) -> dict[str, Any]:
    """az's upgradePolicy with its rollingUpgradePolicy (Azure's defaults without a model)."""
    if model is None:
        return {"mode": "Manual", "rollingUpgradePolicy": None}
    p = model.rolling
    return {
        "mode": model.upgrade_mode.value,
        "rollingUpgradePolicy": {
            "maxBatchInstancePercent": p.max_batch_instance_percent,
            "maxUnhealthyInstancePercent": p.max_unhealthy_instance_percent,
            "maxUnhealthyUpgradedInstancePercent": p.max_unhealthy_upgraded_instance_percent,
            "pauseTimeBetweenBatches": format_duration(p.pause_time_between_batches),
            "prioritizeUnhealthyInstances": p.prioritize_unhealthy_instances,
        },
    }


def model_facts(model: ScaleSetModel | None) -> dict[str, Any]:
    """The model's own under the extra key: its generation and health probe (a spec is
    shown by size and owner, not printed back)."""
    if model is None:
        return {"model_generation": None, "health_probe": None}
    h = model.health
    probe = None
    if not h.empty:
        probe = {
            "command": h.command or None,
            "spec": f"{len(h.spec.encode())} bytes" if h.spec else None,
            "spec_runs_as": (h.owner or None) if h.spec else None,
            "timeout": h.timeout,
        }
    return {"model_generation": model.generation, "health_probe": probe}


def connection_info(found: list[Vm]) -> dict[str, str]:
    """`az vmss list-instance-connection-info`: "instance N" → the address SSH reaches."""
    return {f"instance {vm.instance}": vm.address for vm in found if vm.address}


def vmss_instance_view(
    ss: ScaleSet, found: list[Vm], health: Mapping[str, HealthView] | None = None
) -> dict[str, Any]:
    """`az vmss get-instance-view`: the scale set's status and a count per status of its
    instances; each instance's power state (and health, when checked) under the extra key."""
    health = health or {}
    counts: dict[str, int] = {}
    for vm in found:
        for status in _statuses(vm):
            counts[status["code"]] = counts.get(status["code"], 0) + 1
    state = ss.provisioning_state.lower()
    return {
        "statuses": [
            {
                "code": f"ProvisioningState/{state}",
                "level": "Error" if state == "failed" else "Info",
                "displayStatus": f"Provisioning {state}",
                "time": None,
            }
        ],
        "virtualMachine": {
            "statusesSummary": [{"code": c, "count": n} for c, n in sorted(counts.items())]
        },
        EXTRA: {
            "instances": [
                {
                    "instanceId": str(vm.instance),
                    "name": vm.name,
                    "powerState": power_state(vm),
                    **({"vmHealth": vm_health(health[vm.name], vm)} if vm.name in health else {}),
                }
                for vm in found
            ]
        },
    }
