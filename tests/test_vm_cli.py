"""`sigvirt vm` / `sigvirt vmss` as az users paste them, without booting anything: the flags
every command accepts, refusals before libvirt is asked (offline tier), and az's JSON shapes
checked on records built in memory.

az's shapes: the key paths below were checked against Azure's REST reference
(VirtualMachine, VirtualMachineScaleSet, VirtualMachineScaleSetVM, their instance views) and
azure-cli's vm module (custom.py: get_vm_details adds powerState/publicIps/privateIps/fqdns/
macAddresses; list_vm_ip_addresses; list_vmss_instance_connection_info; _format.py:
transform_vm_create_output), and every path sigvirt prints is checked against the key lists
in tests/data/azure/*.json (az_printed_keys; core_keys must all be there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer

from sigvirt import cli
from sigvirt.catalog import azureid
from sigvirt.catalog.fleet import FleetStore, ScaleSetModel
from sigvirt.catalog.records import ImageVersion, Replica, ReplicaState, VersionState
from sigvirt.errors import ExitCode
from sigvirt.guests import vmviews
from sigvirt.guests.inventory import DataDisk, Vm
from sigvirt.guests.scalesets import ScaleSet
from tests.support.catalog import SigEnv

AZURE = Path(__file__).parent / "data" / "azure"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxq3Q9v2mC8pF0eX3YkWm1y1C1sQ5lqG6iZ0Xj5bH8P x"
GiB = 1 << 30

# -- the key paths (dotted; a list is entered at its first element) ----------------------------
VM_KEYS = [
    "id", "name", "type", "location", "tags", "provisioningState", "vmId", "timeCreated",
    "zones", "hardwareProfile.vmSize", "storageProfile.imageReference.id",
    "storageProfile.imageReference.resourceGroup", "storageProfile.osDisk.managedDisk.id",
    "storageProfile.imageReference.exactVersion", "storageProfile.osDisk.osType",
    "storageProfile.osDisk.name", "storageProfile.osDisk.createOption",
    "storageProfile.osDisk.caching", "storageProfile.osDisk.diskSizeGb",
    "storageProfile.dataDisks.lun", "storageProfile.dataDisks.name",
    "storageProfile.dataDisks.createOption", "storageProfile.dataDisks.diskSizeGb",
    "osProfile.computerName", "osProfile.adminUsername",
    "osProfile.linuxConfiguration.disablePasswordAuthentication",
    "osProfile.linuxConfiguration.ssh.publicKeys.path",
    "osProfile.linuxConfiguration.ssh.publicKeys.keyData", "networkProfile.networkInterfaces",
    "securityProfile",
]  # fmt: skip
AZ_VM_KEYS = ["resourceGroup"]  # az adds it (parsed from the id); the REST object has none
VM_DETAIL_KEYS = ["powerState", "publicIps", "privateIps", "fqdns", "macAddresses"]
VM_CREATE_KEYS = ["publicIpAddress", "privateIpAddress", "macAddress"]
INSTANCE_KEYS = [
    "id", "name", "type", "location", "tags", "instanceId", "latestModelApplied", "vmId",
    "zones", "provisioningState", "sku.name", "sku.tier", "hardwareProfile.vmSize",
    "storageProfile.imageReference.id", "storageProfile.osDisk.createOption",
    "osProfile.computerName", "osProfile.adminUsername", "securityProfile",
]  # fmt: skip
VMSS_KEYS = [
    "id", "name", "type", "location", "tags", "sku.name", "sku.tier", "sku.capacity",
    "provisioningState", "orchestrationMode", "overprovision", "upgradePolicy.mode", "zones",
    "uniqueId", "timeCreated", "singlePlacementGroup",
    "virtualMachineProfile.osProfile.computerNamePrefix",
    "virtualMachineProfile.osProfile.adminUsername",
    "virtualMachineProfile.storageProfile.imageReference.id",
    "virtualMachineProfile.storageProfile.osDisk.createOption",
]  # fmt: skip
INSTANCE_VIEW_KEYS = ["computerName", "statuses.code", "statuses.displayStatus", "statuses.level"]
VMSS_VIEW_KEYS = ["statuses.code", "virtualMachine.statusesSummary.code",
                  "virtualMachine.statusesSummary.count"]  # fmt: skip
SIGVIRT_KEYS = ["region", "state", "image", "image_request", "replica", "pool", "volumes",
                "data_disks", "address", "ssh", "ssh_port", "vcpus", "memory_mib",
                "boot_seconds"]  # fmt: skip


def lookup(doc: Any, path: str) -> Any:
    """The value at a dotted path (KeyError if absent); lists are entered at [0]."""
    for part in path.split("."):
        if isinstance(doc, list):
            doc = doc[0]
        doc = doc[part]
    return doc


def has(doc: Any, path: str) -> bool:
    try:
        lookup(doc, path)
    except (KeyError, IndexError, TypeError):
        return False
    return True


VERSION_ID = azureid.version_id("", "G", "D", "1.0.2")


def a_vm(**kw: Any) -> Vm:
    base: dict[str, Any] = dict(
        name="web1", region="local", state="running", image="G/D/1.0.2",
        replica="G-D-1.0.2-local-0.qcow2", admin_user="azureuser", address="127.0.0.1:22201",
        ssh="ssh -p 22201 azureuser@127.0.0.1", vcpus=1, memory_mib=128,
        resource_group="rg1", tags={"a": "b"}, size="Lab_Tiny", image_id=VERSION_ID,
        image_request="G/D", os_disk_gb=1,
        data_disks=(DataDisk(0, "vdc", "web1.data0.qcow2", 2),),
        vm_id="a8a74805-7eaa-414a-a685-96f671d3cbae", created="2026-01-01T00:00:00+00:00",
        ssh_public_keys=(KEY,),
        pool="pool-a", volumes=("web1.qcow2", "web1.cidata.iso", "web1.console.log",
                                "web1.data0.qcow2"),
        replica_pool="pool-a", ssh_port=22201,
    )  # fmt: skip
    base.update(kw)
    return Vm(**base)


def a_scale_set() -> ScaleSet:
    return ScaleSet(
        "web", "local", "G/D/1.0.2", 2, 1, 128, "azureuser", {"running": 2},
        resource_group="rg2", tags={"x": "y"}, size="Lab_Tiny", image_id=VERSION_ID,
        image_request="G/D", data_disk_gb=(2,), instances=("web-0", "web-1"),
        ssh_public_keys=(KEY,), created="2026-01-01T00:00:00+00:00",
    )  # fmt: skip


# -- az's shapes ------------------------------------------------------------------------------
@pytest.mark.offline
def test_vm_shape_has_azs_keys_and_sigvirts_under_one_key() -> None:
    vm = a_vm()
    shown = vmviews.vm_resource(vm)
    missing = [k for k in [*VM_KEYS, *AZ_VM_KEYS] if not has(shown, k)]
    assert missing == []
    assert not any(has(shown, k) for k in VM_DETAIL_KEYS)  # only with -d
    assert [k for k in SIGVIRT_KEYS if k not in shown["sigvirt"]] == []
    assert set(shown) - {k.split(".")[0] for k in [*VM_KEYS, *AZ_VM_KEYS]} == {"sigvirt"}
    rid = azureid.parse(shown["id"])
    assert (rid.type, rid.group, rid.name) == (azureid.VM_TYPE, "rg1", "web1")
    image = azureid.parse(lookup(shown, "storageProfile.imageReference.id"))
    assert (image.type, image.gallery, image.definition, image.version) == (
        azureid.VERSION_TYPE,
        "G",
        "D",
        "1.0.2",
    )
    assert shown["hardwareProfile"] == {"vmSize": "Lab_Tiny"}
    assert shown["tags"] == {"a": "b"} and shown["provisioningState"] == "Succeeded"
    disk = azureid.vm_id("rg1", "x").replace("virtualMachines/x", "disks/web1.data0.qcow2")
    assert lookup(shown, "storageProfile.dataDisks") == [
        {"lun": 0, "name": "web1.data0.qcow2", "createOption": "Empty", "caching": "None",
         "diskSizeGb": 2, "deleteOption": "Delete",
         "managedDisk": {"id": disk, "resourceGroup": "rg1"}}
    ]  # fmt: skip
    assert lookup(shown, "osProfile.linuxConfiguration.ssh.publicKeys") == [
        {"path": "/home/azureuser/.ssh/authorized_keys", "keyData": KEY}
    ]
    json.dumps(shown)  # JSON-able as it is


@pytest.mark.offline
def test_vm_details_and_create_summary() -> None:
    detailed = vmviews.vm_resource(a_vm(), details=True)
    assert {k: detailed[k] for k in VM_DETAIL_KEYS} == {
        "powerState": "VM running", "publicIps": "127.0.0.1:22201", "privateIps": "",
        "fqdns": "", "macAddresses": vmviews.mac_address("web1"),
    }  # fmt: skip
    created = vmviews.vm_created(a_vm())
    assert [k for k in [*VM_KEYS, *VM_DETAIL_KEYS, *VM_CREATE_KEYS] if not has(created, k)] == []
    assert created["publicIpAddress"] == "127.0.0.1:22201"
    assert list(created)[-1] == "sigvirt"


@pytest.mark.offline
@pytest.mark.parametrize(
    ("state", "provisioning", "power"),
    [
        ("running", "Succeeded", "VM running"),
        ("stopped", "Succeeded", "VM deallocated"),  # shut off: nothing held on the host
        ("paused", "Succeeded", "VM stopped"),  # memory held, not running
        ("stopping", "Succeeded", "VM stopping"),
        ("stopped", "Creating", "VM starting"),
        ("unknown", "Succeeded", "VM unknown"),
    ],
)
def test_power_states_are_azs(state: str, provisioning: str, power: str) -> None:
    vm = a_vm(state=state, provisioning_state=provisioning)
    assert vmviews.power_state(vm) == power
    assert vmviews.instance_view(vm)["statuses"][1]["code"] == "PowerState/" + power[3:]


@pytest.mark.offline
def test_group_comes_from_the_vm_then_the_command_then_the_default() -> None:
    assert "/resourceGroups/rg1/" in vmviews.vm_resource(a_vm(), group="other")["id"]
    older = a_vm(resource_group="")
    assert "/resourceGroups/other/" in vmviews.vm_resource(older, group="other")["id"]
    assert "/resourceGroups/sigvirt/" in vmviews.vm_resource(older)["id"]


@pytest.mark.offline
def test_scale_set_and_instance_shapes() -> None:
    ss = vmviews.vmss_resource(a_scale_set())
    assert [k for k in VMSS_KEYS if not has(ss, k)] == []
    assert ss["sku"] == {"name": "Lab_Tiny", "tier": "Standard", "capacity": 2}
    assert azureid.parse(ss["id"]).type == azureid.VMSS_TYPE
    inst = vmviews.instance_resource(a_vm(scale_set="web", instance=1, name="web-1"))
    assert [k for k in INSTANCE_KEYS if not has(inst, k)] == []
    assert (inst["instanceId"], inst["latestModelApplied"]) == ("1", True)
    rid = azureid.parse(inst["id"])
    assert (rid.type, rid.name, rid.instance) == (azureid.INSTANCE_TYPE, "web", "1")
    expanded = vmviews.instance_resource(a_vm(scale_set="web", instance=1), expand=True)
    assert [k for k in INSTANCE_VIEW_KEYS if not has(expanded["instanceView"], k)] == []
    view = vmviews.vmss_instance_view(
        a_scale_set(), [a_vm(instance=0), a_vm(instance=1, state="stopped")]
    )
    assert [k for k in VMSS_VIEW_KEYS if not has(view, k)] == []
    assert {s["code"]: s["count"] for s in view["virtualMachine"]["statusesSummary"]} == {
        "PowerState/deallocated": 1, "PowerState/running": 1, "ProvisioningState/succeeded": 2,
    }  # fmt: skip
    assert [i["powerState"] for i in view["sigvirt"]["instances"]] == [
        "VM running", "VM deallocated"
    ]  # fmt: skip


@pytest.mark.offline
def test_ip_addresses_and_connection_info_shapes() -> None:
    ips = vmviews.ip_addresses([a_vm()])
    assert lookup(ips, "virtualMachine.name") == "web1"
    assert lookup(ips, "virtualMachine.network.publicIpAddresses.ipAddress") == "127.0.0.1:22201"
    assert lookup(ips, "virtualMachine.network.privateIpAddresses") == []
    info = vmviews.connection_info([a_vm(instance=0), a_vm(instance=1, address="127.0.0.1:9")])
    assert info == {"instance 0": "127.0.0.1:22201", "instance 1": "127.0.0.1:9"}


def paths(doc: Any, prefix: str = "") -> set[str]:
    """Every key path of a document, as tests/data/azure/*.json spell them: dotted, `[]` for
    the items of a list of objects, parents included."""
    out: set[str] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            path = f"{prefix}{key}"
            out.add(path)
            out |= paths(value, path + ".")
    elif isinstance(doc, list) and doc and all(isinstance(d, dict) for d in doc):
        for item in doc:
            out |= paths(item, prefix[:-1] + "[].")
    return out


def _golden(name: str) -> dict[str, Any]:
    path = AZURE / name
    if not path.exists():
        pytest.skip(f"{path} is not there (yet)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _printed(
    doc: dict[str, Any], golden: dict[str, Any], extra: frozenset[str] = frozenset()
) -> set[str]:
    """sigvirt's paths that az doesn't print: none, but for the extra key, what is inside a
    user's map (tags) or an object az prints whole (instanceView), and `extra`. Compared
    without case: az prints the SDK's camel-cased attribute names (diskSizeGb), the REST API
    (which the golden files follow) says diskSizeGB."""
    known = {k.lower() for k in golden["az_printed_keys"]}
    loose = tuple(k.lower() + "." for k in [*golden["free_form_keys"], *golden["opaque_keys"]])
    return {
        p for p in paths(doc) - extra
        if p != "sigvirt" and not p.startswith("sigvirt.") and p.lower() not in known
        and not p.lower().startswith(loose)
    }  # fmt: skip


def _core_missing(doc: dict[str, Any], golden: dict[str, Any], optional: set[str]) -> set[str]:
    have = {p.lower() for p in paths(doc)}
    return {k for k in golden["core_keys"] if k.lower() not in have and k not in optional}


@pytest.mark.offline
def test_vm_keys_are_keys_az_prints() -> None:
    golden = _golden("virtual_machine.json")
    assert _printed(vmviews.vm_resource(a_vm(), details=True), golden) == set()
    created = vmviews.vm_created(a_vm())
    assert _printed(created, golden, extra=frozenset(VM_CREATE_KEYS)) == set()
    assert _core_missing(vmviews.vm_resource(a_vm(), details=True), golden, set()) == set()


@pytest.mark.offline
def test_scale_set_keys_are_keys_az_prints() -> None:
    golden = _golden("virtual_machine_scale_set.json")
    shown = vmviews.vmss_resource(a_scale_set())
    assert _printed(shown, golden) == set()
    assert _core_missing(shown, golden, set()) == set()


@pytest.mark.offline
def test_instance_keys_are_keys_az_prints() -> None:
    golden = _golden("virtual_machine_scale_set_vm.json")
    vm = a_vm(scale_set="web", instance=1, name="web-1")
    shown = vmviews.instance_resource(vm, expand=True)
    assert _printed(shown, golden) == set()
    assert _core_missing(shown, golden, set()) == set()


# -- flags az scripts pass --------------------------------------------------------------------
def _commands() -> dict[str, Any]:
    """Every vm and vmss command by its words (`vmss rolling-upgrade start` too)."""
    root = typer.main.get_command(cli.build())
    out = {}
    todo: list[tuple[str, Any]] = [(n, root.commands[n]) for n in ("vm", "vmss")]  # type: ignore[attr-defined]
    while todo:
        words, group = todo.pop()
        for verb, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                todo.append((f"{words} {verb}", cmd))
            elif not cmd.hidden:  # a hidden command is sigvirt's own (a background worker)
                out[f"{words} {verb}"] = cmd
    return out


COMMANDS = _commands()


def _opts(cmd: Any) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


WITH_IDS = [
    "vm show", "vm start", "vm stop", "vm restart", "vm delete", "vm deallocate", "vm flatten",
    "vm list-ip-addresses", "vm wait", "vm ssh", "vmss show", "vmss start", "vmss stop",
    "vmss restart", "vmss deallocate", "vmss delete", "vmss delete-instances",
    "vmss list-instances", "vmss scale", "vmss get-instance-view",
    "vmss list-instance-connection-info",
]  # fmt: skip
WITH_NO_WAIT = [
    "vm create", "vm start", "vm stop", "vm restart", "vm deallocate", "vm delete",
    "vmss create", "vmss scale", "vmss start", "vmss stop", "vmss restart", "vmss deallocate",
    "vmss delete", "vmss delete-instances",
]  # fmt: skip


@pytest.mark.offline
def test_every_vm_and_vmss_command_takes_the_az_flags() -> None:
    need = {
        "--resource-group": list(COMMANDS),
        "-g": list(COMMANDS),
        "--ids": WITH_IDS,
        "--no-wait": WITH_NO_WAIT,
        "--yes": ["vm delete", "vmss delete", "vmss delete-instances"],
        "-y": ["vm delete", "vmss delete", "vmss delete-instances"],
        "--tags": ["vm create", "vmss create"],
        "--os-disk-size-gb": ["vm create", "vmss create"],
        "--data-disk-sizes-gb": ["vm create", "vmss create"],
        "--vm-sku": ["vmss create"],
        "--show-details": ["vm show", "vm list"],
        "-d": ["vm show", "vm list"],
        "--instance-ids": [
            "vmss start",
            "vmss stop",
            "vmss restart",
            "vmss deallocate",
            "vmss delete-instances",
        ],
        "--instance-id": ["vmss get-instance-view", "vmss show"],
        "--skip-shutdown": ["vm stop", "vmss stop"],
    }
    missing = [f"{c} {flag}" for flag, cmds in need.items() for c in cmds
               if flag not in _opts(COMMANDS[c])]  # fmt: skip
    assert missing == []


@pytest.mark.offline
def test_the_az_verbs_are_there() -> None:
    for verb in ("vm deallocate", "vm list-ip-addresses", "vm wait", "vmss start", "vmss stop",
                 "vmss restart", "vmss deallocate", "vmss delete-instances",
                 "vmss list-instance-connection-info", "vmss get-instance-view"):  # fmt: skip
        assert verb in COMMANDS


@pytest.mark.offline
def test_help_says_what_names_what(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["vmss", "create", "--help"]) == 0
    out = capsys.readouterr().out
    name_help = out[out.index("--name") :].split("--image")[0]
    assert "scale set" in name_help and "VM name" not in name_help
    assert cli.main(["vm", "deallocate", "--help"]) == 0
    assert "deallocated" in capsys.readouterr().out


# -- refusals before libvirt ------------------------------------------------------------------
def _version(sig: SigEnv, definition: str, virtual_size: int = 600 << 20) -> str:
    """A published version record whose replica is a plain file (nothing boots here)."""
    store = sig.store
    volume = f"myGallery-{definition}-1.0.0-local-0.qcow2"
    path = sig.pools.replicas[0].path / volume
    path.write_bytes(b"")
    replica = Replica("local", sig.pools.replicas[0].name, volume, str(path),
                      state=ReplicaState.COMPLETED)  # fmt: skip
    rec = ImageVersion("myGallery", definition, "1.0.0", state=VersionState.SUCCEEDED,
                       target_regions={"local": 1}, sha256="0" * 64, virtual_size=virtual_size,
                       replicas=(replica,))  # fmt: skip
    with store.definition_lock("myGallery", definition):
        store.create_version(rec)
    return f"myGallery/{definition}/1.0.0"


def _define(sig: SigEnv, name: str, *extra: str) -> None:
    ran = sig.cli("sig", "image-definition", "create", "--gallery-name", "myGallery",
                  "--gallery-image-definition", name, "--publisher", "p", "--offer", name,
                  "--sku", name, *extra)  # fmt: skip
    assert ran.code == 0, ran.err


@pytest.fixture
def catalog(offline_sig: SigEnv) -> SigEnv:
    offline_sig.gallery()
    _define(offline_sig, "linux")
    _define(offline_sig, "win", "--os-type", "Windows")
    _define(offline_sig, "arm", "--architecture", "Arm64")
    _define(offline_sig, "spec", "--os-state", "Specialized")
    for d in ("linux", "win", "arm", "spec"):
        _version(offline_sig, d, virtual_size=3 * GiB if d == "linux" else 600 << 20)
    return offline_sig


# Windows and specialized definitions boot without a seed: tests/test_specialized.py refuses
# their identity flags, tests/test_windows_vm.py boots one.
# Arm64 boots (tests/test_arm64.py), except in a region whose regions.yaml says it serves x64
# only: refused before any host is asked.
UNSUPPORTED = [
    ("arm", "region local does not run --architecture Arm64 guests "
     "(regions.yaml architectures: x64)"),
]  # fmt: skip


@pytest.mark.offline
@pytest.mark.parametrize("noun", ["vm", "vmss"])
@pytest.mark.parametrize(("definition", "line"), UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_what_sigvirt_cannot_boot_is_refused_not_ignored(
    catalog: SigEnv, noun: str, definition: str, line: str
) -> None:
    regions_file = catalog.pools.regions_file
    regions_file.write_text(regions_file.read_text() + "    architectures: [x64]\n")
    got = catalog.refused(ExitCode.UNSUPPORTED, noun, "create", "-n", "x", "--image",
                          f"myGallery/{definition}/1.0.0", "--ssh-key-value", KEY)  # fmt: skip
    assert got == line


DISKS = [
    (["--os-disk-size-gb", "2"], ExitCode.OUT_OF_RANGE,
     "--os-disk-size-gb 2 is smaller than image version myGallery/linux/1.0.0 (3 GiB): "
     "the OS disk can only grow"),
    (["--os-disk-size-gb", "0"], ExitCode.INVALID_ARGUMENT,
     "--os-disk-size-gb must be 1..4095 (got 0)"),
    (["--os-disk-size-gb", "4096"], ExitCode.INVALID_ARGUMENT,
     "--os-disk-size-gb must be 1..4095 (got 4096)"),
    (["--data-disk-sizes-gb", "1", "0"], ExitCode.INVALID_ARGUMENT,
     "--data-disk-sizes-gb must be 1..32767 (got 0)"),
    (["--data-disk-sizes-gb", *["1"] * 17], ExitCode.INVALID_ARGUMENT,
     "--data-disk-sizes-gb: at most 16 data disks (got 17)"),
    (["--tags", "ok=1", "bad<name=2"], ExitCode.INVALID_ARGUMENT,
     "tag name 'bad<name' is invalid: 1-512 printable characters, none of < > % & \\ ? /"),
    (["--size", "Huge"], ExitCode.INVALID_ARGUMENT, "--size 'Huge' is unknown (known: "),
]  # fmt: skip


@pytest.mark.offline
@pytest.mark.parametrize(("args", "code", "line"), DISKS, ids=[" ".join(d[0][:2]) for d in DISKS])
def test_bad_disk_sizes_and_tags_are_refused(
    catalog: SigEnv, args: list[str], code: ExitCode, line: str
) -> None:
    for noun in ("vm", "vmss"):
        got = catalog.refused(code, noun, "create", "-n", "x", "--image",
                              "myGallery/linux/1.0.0", "--ssh-key-value", KEY, *args)  # fmt: skip
        assert got.startswith(line), (noun, got)


VM_ID = azureid.vm_id("rg1", "web1")
GALLERY_ID = azureid.gallery_id("rg1", "myGallery")
NAMING = [
    (["vm", "show"], ExitCode.INVALID_ARGUMENT, "give the VM by --name NAME or --ids ID ..."),
    (["vm", "delete", "-n", "web1", "--ids", VM_ID, "--yes"], ExitCode.INVALID_ARGUMENT,
     "give the VM by --name or by --ids, not both"),
    # both values after one --ids reach it: the second is looked at (and refused)
    (["vm", "show", "--ids", VM_ID, GALLERY_ID], ExitCode.INVALID_ARGUMENT,
     f"--ids '{GALLERY_ID}' is a Microsoft.Compute/galleries, not a virtual machine"),
    (["vm", "start", "--ids", "/subscriptions/x"], ExitCode.INVALID_NAME,
     "resource id '/subscriptions/x' is invalid"),
    (["vmss", "show", "--ids", VM_ID], ExitCode.INVALID_ARGUMENT,
     f"--ids '{VM_ID}' is a Microsoft.Compute/virtualMachines, not a scale set"),
    (["vmss", "delete"], ExitCode.INVALID_ARGUMENT,
     "give the scale set by --name NAME or --ids ID ..."),
    (["vm", "wait", "-n", "web1"], ExitCode.INVALID_ARGUMENT, "give one of --created or --deleted"),
    (["vmss", "list-instances", "-n", "web", "--expand", "everything"],
     ExitCode.INVALID_ARGUMENT, "--expand 'everything': only instanceView can be expanded"),
    (["vm", "show", "-n", "bad_name"], ExitCode.INVALID_NAME, "VM name 'bad_name' is invalid"),
]  # fmt: skip


@pytest.mark.offline
@pytest.mark.parametrize(("argv", "code", "line"), NAMING, ids=[" ".join(n[0]) for n in NAMING])
def test_names_and_ids_are_checked_first(
    offline_sig: SigEnv, argv: list[str], code: ExitCode, line: str
) -> None:
    assert offline_sig.refused(code, *argv).startswith(line)


# -- scale-set models: upgrade policy and health probe flags ---------------------------------
POLICY = [
    (["--max-batch-instance-percent", "4"], ExitCode.INVALID_ARGUMENT,
     "--max-batch-instance-percent must be 5..100 (got 4)"),
    (["--max-batch-instance-percent", "101"], ExitCode.INVALID_ARGUMENT,
     "--max-batch-instance-percent must be 5..100 (got 101)"),
    (["--max-unhealthy-instance-percent", "0"], ExitCode.INVALID_ARGUMENT,
     "--max-unhealthy-instance-percent must be 5..100 (got 0)"),
    (["--max-unhealthy-upgraded-instance-percent", "-1"], ExitCode.INVALID_ARGUMENT,
     "--max-unhealthy-upgraded-instance-percent must be 0..100 (got -1)"),
    (["--max-batch-instance-percent", "50", "--max-unhealthy-instance-percent", "30"],
     ExitCode.INVALID_ARGUMENT,
     "--max-batch-instance-percent 50 is more than --max-unhealthy-instance-percent 30"),
    (["--pause-time-between-batches", "30S"], ExitCode.INVALID_ARGUMENT,
     "--pause-time-between-batches '30S' is not a duration: ISO 8601"),
    (["--pause-time-between-batches", "PT"], ExitCode.INVALID_ARGUMENT,
     "--pause-time-between-batches 'PT' is not a duration"),
    (["--pause-time-between-batches", "P1M"], ExitCode.INVALID_ARGUMENT,
     "--pause-time-between-batches 'P1M' is not a duration"),
    (["--pause-time-between-batches", "P2D"], ExitCode.INVALID_ARGUMENT,
     "--pause-time-between-batches 'P2D' is longer than a day"),
    (["--upgrade-policy-mode", "Sometimes"], ExitCode.INVALID_ARGUMENT,
     "--upgrade-policy-mode 'Sometimes' is not one of Manual, Automatic, Rolling"),
]  # fmt: skip


@pytest.mark.offline
@pytest.mark.parametrize(("args", "code", "line"), POLICY, ids=[" ".join(p[0]) for p in POLICY])
def test_bad_upgrade_policies_are_refused(
    catalog: SigEnv, args: list[str], code: ExitCode, line: str
) -> None:
    got = catalog.refused(code, "vmss", "create", "-n", "x", "--image", "myGallery/linux/1.0.0",
                          "--ssh-key-value", KEY, *args)  # fmt: skip
    assert got.startswith(line), got


@pytest.mark.offline
def test_bad_health_probes_are_refused(catalog: SigEnv, tmp_path: Path) -> None:
    create = ["vmss", "create", "-n", "x", "--image", "myGallery/linux/1.0.0",
              "--ssh-key-value", KEY]  # fmt: skip
    not_python = tmp_path / "spec.py"
    not_python.write_text("def test_x(host:\n")
    got = catalog.refused(ExitCode.INVALID_ARGUMENT, *create, "--health-probe-spec",
                          str(not_python))  # fmt: skip
    assert got.startswith("--health-probe-spec: not a Python test file ("), got
    got = catalog.refused(ExitCode.NOT_FOUND, *create, "--health-probe-spec",
                          str(tmp_path / "missing.py"))  # fmt: skip
    assert "missing.py" in got, got


def test_unknown_scale_sets_are_refused(catalog: SigEnv) -> None:
    """Not offline: a scale set made before models existed is found in libvirt, so "not
    found" is an answer only a user libvirt lets in can get (others get exit 11)."""
    for argv in (
        ["vmss", "update", "-n", "nosuch", "--image", "myGallery/linux/1.0.0"],
        ["vmss", "update", "-n", "nosuch", "--max-batch-instance-percent", "10"],
        ["vmss", "reimage", "-n", "nosuch"],
        ["vmss", "update-instances", "-n", "nosuch", "--instance-ids", "*"],
    ):
        got = catalog.refused(ExitCode.NOT_FOUND, *argv)
        assert got == "scale set nosuch not found", (argv, got)


@pytest.mark.offline
def test_vmss_update_checks_the_image_before_the_model_changes(catalog: SigEnv) -> None:
    store = FleetStore(catalog.root)
    store.create(ScaleSetModel(name="web", region="local", image="myGallery/linux/1.0.0"))
    before = store.get("web")
    failed = ImageVersion("myGallery", "linux", "2.0.0", state=VersionState.FAILED,
                          target_regions={"local": 1})  # fmt: skip
    with catalog.store.definition_lock("myGallery", "linux"):
        catalog.store.create_version(failed)
    for image, code, line in (
        ("myGallery/linux/2.0.0", ExitCode.CONFLICT,
         "image version myGallery/linux/2.0.0 is failed, not published"),
        ("myGallery/linux/9.9.9", ExitCode.NOT_FOUND, "image version myGallery/linux/9.9.9 not found"),
        ("noGallery/linux", ExitCode.NOT_FOUND, "gallery noGallery not found"),
        ("myGallery/nodef", ExitCode.NOT_FOUND, "image definition myGallery/nodef not found"),
    ):  # fmt: skip
        ran = catalog.cli("vmss", "update", "-n", "web", "--image", image)
        assert (ran.code, ran.out) == (code, ""), ran.err
        assert ran.error.startswith(line), ran.error
        assert store.get("web") == before
    ran = catalog.cli("vmss", "update", "-n", "web", "--set", "upgradePolicy.mode=Rolling",
                      "--set", "upgradePolicy.rollingUpgradePolicy.maxBatchInstancePercent=x")  # fmt: skip
    assert ran.code == ExitCode.INVALID_ARGUMENT and "expected a whole number" in ran.error
    assert store.get("web") == before
