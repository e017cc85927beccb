"""VMs and scale sets from a published version: real guests on linked clones, testinfra."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import testinfra

from sigvirt.catalog import azureid
from sigvirt.cli import main
from sigvirt.context import Context
from sigvirt.errors import Conflict
from sigvirt.guests import guest, inventory, lifecycle, vms
from sigvirt.hosts import ssh as sshlib
from sigvirt.hosts import xmlbuild
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import load
from sigvirt.runner import Runner
from tests.support.base import PREFIX, SshKey, unique
from tests.support.hostb import HostB

pytestmark = pytest.mark.guest
G, D = "vmGallery", "tiny"


@dataclass(frozen=True)
class Lab:
    root: Path
    pools: tuple[str, str]
    key: SshKey


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    code, out, err = cli(capsys, *argv, "-o", "json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def lab(scratch: Path, system_hv: Hypervisor, tiny_image: Path, ssh_key: SshKey) -> Iterator[Lab]:
    root = scratch / "vmlab"
    root.mkdir()
    pools = (unique("vm-a"), unique("vm-b"))
    (root / "regions.yaml").write_text(
        "regions:\n"
        "  local:\n"
        "    uri: qemu:///system\n"
        "    pools:\n"
        f"      - name: {pools[0]}\n        path: {root}/pool-a\n"
        f"      - name: {pools[1]}\n        path: {root}/pool-b\n"
        "    network:\n      type: user-forward\n      ports: 22400-22599\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGVIRT_REGIONS", str(root / "regions.yaml"))
        mp.setenv("SIGVIRT_GALLERY_ROOT", str(root / "galleries"))
        assert main(["sig", "create", "-r", G]) == 0
        assert main(["sig", "image-definition", "create", "-r", G, "-i", D, "--publisher", "sv",
                     "--offer", "tiny", "--sku", "1", "--minimum-memory", "128",
                     "--maximum-memory", "1024", "--maximum-cpu-core", "2"]) == 0  # fmt: skip
        code = main(["sig", "image-version", "create", "-r", G, "-i", D, "-e", "1.0.0",
                     "--source", str(tiny_image), "--target-regions", "local=2"])  # fmt: skip
        assert code == 0
        yield Lab(root, pools, ssh_key)
        for dom in system_hv.domains():
            if dom.name.startswith(PREFIX):
                main(["vm", "delete", "-n", dom.name])
        main(["sig", "image-version", "delete", "-r", G, "-i", D, "-e", "1.0.0"])
    for pool in pools:
        system_hv.delete_pool(pool)
    shutil.rmtree(root, ignore_errors=True)


def backing_of(overlay: str) -> str:
    info = Runner().run(["qemu-img", "info", "-U", "-f", "qcow2", "--output=json", overlay]).stdout
    return str(json.loads(info)["backing-filename"])


def host(vm: dict[str, Any], key: SshKey) -> testinfra.host.Host:
    """The guest of an az-shaped VM or scale-set instance (its address is sigvirt's)."""
    hostport = vm["sigvirt"]["address"]
    user = vm["osProfile"]["adminUsername"]
    return testinfra.get_host(f"paramiko://{user}@{hostport}", ssh_identity_file=str(key.private))


def use(monkeypatch: pytest.MonkeyPatch, lab: Lab, root: Path | None = None) -> None:
    monkeypatch.setenv("SIGVIRT_REGIONS", str(lab.root / "regions.yaml"))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(root or lab.root / "galleries"))


def volumes_named(hv: Hypervisor, lab: Lab, name: str) -> list[str]:
    return sorted(v.name for p in lab.pools for v in hv.volumes(p) if v.name.startswith(name + "."))


def overlay_of(hv: Hypervisor, name: str) -> str:
    from sigvirt.guests import guest

    prov = guest.provenance_of(hv.domain(name))
    assert prov is not None
    return str(hv.volume_path(prov.overlay_pool, prov.overlay))


def test_scale_set_spreads_over_replicas_and_scales(
    lab: Lab,
    capsys: pytest.CaptureFixture[str],
    system_hv: Hypervisor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use(monkeypatch, lab)
    name = unique("web")
    pub = str(lab.key.private) + ".pub"
    result = cli_json(capsys, "vmss", "create", "-n", name, "--image", f"{G}/{D}",
                      "--instance-count", "4", "--vm-sku", "Lab_Tiny", "--ssh-key-value", pub,
                      "--admin-username", "labuser", "-g", "rg2", "--tags", "env=lab")  # fmt: skip
    assert isinstance(result, dict)
    made = result["vmss"]
    assert len(made["sigvirt"]["created"]) == 4 and not made["sigvirt"]["failed"]
    assert (made["name"], made["sku"], made["resourceGroup"], made["tags"]) == (
        name,
        {"name": "Lab_Tiny", "tier": "Standard", "capacity": 4},
        "rg2",
        {"env": "lab"},
    )
    rows = cli_json(capsys, "vmss", "list-instances", "-n", name)
    assert isinstance(rows, list) and [r["instanceId"] for r in rows] == ["0", "1", "2", "3"]
    # Spread read from the real backing files, not from sigvirt's own bookkeeping.
    spread = Counter(backing_of(overlay_of(system_hv, r["name"])) for r in rows)
    assert sorted(spread.values()) == [2, 2], spread
    for r in rows:
        h = host(r, lab.key)
        assert h.check_output("hostname") == r["name"] == r["osProfile"]["computerName"]
        assert r["securityProfile"] is None
        # every disk on io_uring unless this kernel refuses it to QEMU (hosts/diskio.py)
        refused = IO_URING_KNOB.exists() and IO_URING_KNOB.read_text().strip() != "0"
        assert disk_engines(system_hv, r["name"]) == {None if refused else "io_uring"}

    cli_json(capsys, "vmss", "scale", "-n", name, "--new-capacity", "6")
    rows = cli_json(capsys, "vmss", "list-instances", "-n", name)
    assert isinstance(rows, list) and [r["instanceId"] for r in rows] == [
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
    ]
    spread = Counter(backing_of(overlay_of(system_hv, r["name"])) for r in rows)
    assert sorted(spread.values()) == [3, 3], spread
    assert host(rows[5], lab.key).check_output("hostname") == rows[5]["name"]
    # The model was read back from an instance: size, group, tags and admin are the same.
    assert {(r["sku"]["name"], r["resourceGroup"], r["tags"]["env"],
             r["osProfile"]["adminUsername"]) for r in rows} == {("Lab_Tiny", "rg2", "lab", "labuser")}  # fmt: skip

    result = cli_json(capsys, "vmss", "scale", "-n", name, "--new-capacity", "2")
    assert isinstance(result, dict) and result["sku"]["capacity"] == 2
    assert sorted(result["sigvirt"]["deleted"]) == sorted(f"{name}-{i}" for i in (2, 3, 4, 5))
    rows = cli_json(capsys, "vmss", "list-instances", "-n", name)
    assert isinstance(rows, list) and [r["instanceId"] for r in rows] == ["0", "1"]
    check_scale_set_verbs(capsys, name, rows)

    # The version can't go while clones depend on it; the refusal names them.
    code, _out, err = cli(capsys, "sig", "image-version", "delete", "-r", G, "-i", D, "-e", "1.0.0")
    assert code == 6
    assert f"domain {name}-0" in err and f"domain {name}-1" in err

    # Flatten one (live), delete the other: then the version has no dependents.
    cli_json(capsys, "vm", "flatten", "-n", f"{name}-0")
    overlay = overlay_of(system_hv, f"{name}-0")
    info = json.loads(
        Runner().run(["qemu-img", "info", "-U", "-f", "qcow2", "--output=json", overlay]).stdout
    )
    assert "backing-filename" not in info
    assert host(rows[0], lab.key).check_output("hostname") == f"{name}-0"
    deps = cli_json(capsys, "sig", "image-version", "dependents", "-r", G, "-i", D, "-e", "1.0.0")
    assert isinstance(deps, list)
    # The domain and its overlay volume (whose backingStore is the replica).
    assert [d["name"] for d in deps if d["kind"] == "domain"] == [f"{name}-1"]
    assert [d["name"].split("/")[1] for d in deps if d["kind"] == "volume"] == [f"{name}-1.qcow2"]
    done = cli_json(capsys, "vmss", "delete-instances", "-n", name, "--instance-ids", "1", "--yes")
    assert isinstance(done, dict) and done["deleted"] == [f"{name}-1"]
    rows = cli_json(capsys, "vmss", "list-instances", "-n", name)
    assert isinstance(rows, list) and [r["instanceId"] for r in rows] == ["0"]
    cli_json(capsys, "vmss", "delete", "--ids", made["id"], "--yes")
    deps = cli_json(capsys, "sig", "image-version", "dependents", "-r", G, "-i", D, "-e", "1.0.0")
    assert deps == []
    code, _out, err = cli(capsys, "vmss", "list-instances", "-n", name)
    assert code == 4 and err.strip() == f"sigvirt: error: scale set {name} not found"


def check_scale_set_verbs(
    capsys: pytest.CaptureFixture[str], name: str, rows: list[dict[str, Any]]
) -> None:
    """az vmss's verbs on a scale set of two running instances; leaves both running."""
    info = cli_json(capsys, "vmss", "list-instance-connection-info", "-n", name)
    assert info == {f"instance {r['instanceId']}": r["sigvirt"]["address"] for r in rows}
    assert isinstance(info, dict) and all(v.startswith("127.0.0.1:") for v in info.values())
    shown = cli_json(capsys, "vmss", "show", "-n", name)
    assert isinstance(shown, dict) and azureid.parse(shown["id"]).type == azureid.VMSS_TYPE
    image = azureid.parse(shown["virtualMachineProfile"]["storageProfile"]["imageReference"]["id"])
    # the model's image as it was named (the definition: latest); instances run 1.0.0
    assert (image.gallery, image.definition, image.version) == (G, D, "")
    assert {r["storageProfile"]["imageReference"]["exactVersion"] for r in rows} == {"1.0.0"}
    listed = cli_json(capsys, "vmss", "list")
    assert isinstance(listed, list) and name in [s["name"] for s in listed]

    stopped = cli_json(capsys, "vmss", "stop", "-n", name, "--instance-ids", "1")
    assert isinstance(stopped, list) and [s["instanceId"] for s in stopped] == ["1"]
    assert stopped[0]["instanceView"]["statuses"][1]["displayStatus"] == "VM deallocated"
    view = cli_json(capsys, "vmss", "get-instance-view", "-n", name)
    assert isinstance(view, dict)
    summary = {s["code"]: s["count"] for s in view["virtualMachine"]["statusesSummary"]}
    assert (summary["PowerState/running"], summary["PowerState/deallocated"]) == (1, 1)
    assert [i["powerState"] for i in view["sigvirt"]["instances"]] == [
        "VM running",
        "VM deallocated",
    ]
    one = cli_json(capsys, "vmss", "get-instance-view", "-n", name, "--instance-id", "1")
    assert isinstance(one, dict) and one["computerName"] == f"{name}-1"
    assert [s["code"] for s in one["statuses"]] == [
        "ProvisioningState/succeeded",
        "PowerState/deallocated",
    ]

    started = cli_json(capsys, "vmss", "start", "-n", name)  # all of them: 0 already runs
    assert isinstance(started, list)
    assert [s["instanceView"]["statuses"][1]["code"] for s in started] == ["PowerState/running"] * 2
    restarted = cli_json(capsys, "vmss", "restart", "--ids", shown["id"], "--instance-ids", "1")
    assert isinstance(restarted, list) and restarted[0]["sigvirt"]["state"] == "running"
    code, _out, err = cli(capsys, "vmss", "deallocate", "-n", name, "--instance-ids", "7")
    assert code == 4 and err.strip() == f"sigvirt: error: instance 7 of scale set {name} not found"


IO_URING_KNOB = Path("/proc/sys/kernel/io_uring_disabled")


def disk_engines(hv: Hypervisor, name: str, *, inactive: bool = False) -> set[str | None]:
    """The I/O engine of each of a domain's file disks, as libvirt started it (or will)."""
    root = ET.fromstring(hv.domain(name).xml(inactive=inactive))
    return {d.get("io") for d in root.findall("./devices/disk[@type='file']/driver")}


@pytest.fixture
def refuse_io_uring() -> Iterator[Callable[[], None]]:
    """Sets kernel.io_uring_disabled to 1 when called: io_uring refused to unprivileged
    processes (QEMU under qemu:///system; not this test, root). Back to 0 however it ends."""
    if not IO_URING_KNOB.exists() or IO_URING_KNOB.read_text().strip() != "0":
        pytest.skip("needs kernel.io_uring_disabled (Linux 6.6+), at 0")

    def refuse() -> None:
        IO_URING_KNOB.write_text("1")

    try:
        yield refuse
    finally:
        IO_URING_KNOB.write_text("0")


def test_guests_on_a_host_whose_kernel_refuses_io_uring_still_boot(
    lab: Lab,
    capsys: pytest.CaptureFixture[str],
    system_hv: Hypervisor,
    monkeypatch: pytest.MonkeyPatch,
    refuse_io_uring: Callable[[], None],
) -> None:
    """sigvirt gives guests' disks io_uring (hosts/diskio.py). When the kernel refuses it to
    QEMU after the host handle chose it, the start fails on it, and the guest is defined again
    with the thread pool and boots; a command that starts after the refusal reads it from the
    kernel and never tries. Guests made on io_uring before the refusal still start
    (guest.start_domain): moved to the thread pool after a failed start by a handle that chose
    io_uring, before it by one that knows."""
    use(monkeypatch, lab)
    pub = str(lab.key.private) + ".pub"
    first, second = unique("iou-a"), unique("iou-b")
    earlier, later = unique("iou-c"), unique("iou-d")  # made on io_uring, powered off
    regions = load(lab.root / "regions.yaml")
    try:
        with Context.from_config(regions) as ctx, Context.from_config(regions) as other:
            hv = ctx.hv("local")
            assert hv.disk_io.engine == "io_uring"
            for name in (earlier, later):
                vms.create(ctx, vms.VmRequest(name=name, image=f"{G}/{D}", memory_mib=128,
                                              ssh_key_value=pub, admin_user="labuser",
                                              wait=False))  # fmt: skip
                lifecycle.power(ctx, [name], "deallocate", force=True)  # no wait for its boot
                assert disk_engines(system_hv, name, inactive=True) == {"io_uring"}
            assert other.hv("local").disk_io.engine == "io_uring"
            refuse_io_uring()
            made = vms.create(ctx, vms.VmRequest(name=first, image=f"{G}/{D}", memory_mib=128,
                                                 ssh_key_value=pub, admin_user="labuser"))  # fmt: skip
            assert hv.disk_io.engine == ""
            lifecycle.start(other, earlier)  # a handle that still takes io_uring for allowed
            assert other.hv("local").disk_io.engine == ""
        log = Path(f"/var/log/libvirt/qemu/{first}.log").read_text()
        assert "Unable to use io_uring" in log  # it did try, and QEMU refused
        assert disk_engines(system_hv, first) == {None}
        assert testinfra.get_host(f"paramiko://labuser@{made.address}",
                                  ssh_identity_file=str(lab.key.private)).check_output("hostname") == first  # fmt: skip
        assert "Unable to use io_uring" in Path(f"/var/log/libvirt/qemu/{earlier}.log").read_text()
        assert system_hv.domain(earlier).is_active()
        assert disk_engines(system_hv, earlier) == {None}

        code, _out, err = cli(capsys, "vm", "create", "-n", second, "--image", f"{G}/{D}",
                              "--size", "Lab_Tiny", "--ssh-key-value", pub)  # fmt: skip
        assert code == 0, err
        assert "io_uring" not in Path(f"/var/log/libvirt/qemu/{second}.log").read_text()
        assert disk_engines(system_hv, second) == {None}
        code, _out, err = cli(capsys, "vm", "start", "-n", later)  # knows: moved, then started
        assert code == 0, err
        assert (
            "Unable to use io_uring" not in Path(f"/var/log/libvirt/qemu/{later}.log").read_text()
        )
        assert disk_engines(system_hv, later) == {None}
    finally:
        deleted = [main(["vm", "delete", "-n", name]) for name in (first, second, earlier, later)]
    assert deleted == [0, 0, 0, 0]


def test_vm_as_az_shows_it(
    lab: Lab, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    system_hv: Hypervisor,
) -> None:  # fmt: skip
    """One guest for az's view of a VM: -g, tags, disks, -d, --ids, ip addresses, deallocate,
    another installation on the same host, delete --yes."""
    use(monkeypatch, lab)
    name = unique("vm1")
    pub = str(lab.key.private) + ".pub"
    vm = cli_json(capsys, "vm", "create", "-n", name, "--image", f"{G}/{D}/1.0.0",
                  "--memory", "128", "--ssh-key-value", pub, "-g", "rg1", "--tags", "a=b", "c=d",
                  "--os-disk-size-gb", "1", "--data-disk-sizes-gb", "1", "2")  # fmt: skip
    assert isinstance(vm, dict)
    address = vm["sigvirt"]["address"]
    assert address.startswith("127.0.0.1:") and vm["sigvirt"]["ssh"].startswith(
        f"ssh -i {lab.key.private} -p {address.split(':')[1]} "
    )
    assert (vm["powerState"], vm["publicIps"], vm["publicIpAddress"]) == (
        "VM running",
        address,
        address,
    )
    assert vm["id"] == azureid.vm_id("rg1", name) and vm["resourceGroup"] == "rg1"
    assert (vm["name"], vm["type"], vm["location"]) == (name, azureid.VM_TYPE, "local")
    assert vm["tags"] == {"a": "b", "c": "d"} and vm["provisioningState"] == "Succeeded"
    assert vm["hardwareProfile"] == {"vmSize": "Custom"}  # --memory: the numbers are sigvirt's
    assert (vm["sigvirt"]["memory_mib"], vm["sigvirt"]["vcpus"]) == (128, 1)
    assert vm["osProfile"]["adminUsername"] == "azureuser"  # root's default, as in az
    assert vm["osProfile"]["computerName"] == name
    assert vm["securityProfile"] is None  # Standard: az shows none
    image = azureid.parse(vm["storageProfile"]["imageReference"]["id"])
    assert (image.type, image.gallery, image.definition, image.version) == (
        azureid.VERSION_TYPE,
        G,
        D,
        "1.0.0",
    )
    assert vm["sigvirt"]["image_request"] == f"{G}/{D}/1.0.0"
    assert vm["storageProfile"]["osDisk"]["diskSizeGb"] == 1
    data = vm["storageProfile"]["dataDisks"]
    assert [(d["lun"], d["name"], d["diskSizeGb"]) for d in data] == [
        (0, f"{name}.data0.qcow2", 1), (1, f"{name}.data1.qcow2", 2)
    ]  # fmt: skip

    shown = cli_json(capsys, "vm", "show", "-d", "-n", name)
    assert isinstance(shown, dict)
    assert (shown["powerState"], shown["publicIps"], shown["privateIps"], shown["fqdns"]) == (
        "VM running",
        address,
        "",
        "",
    )
    assert shown["sigvirt"]["ssh"] == vm["sigvirt"]["ssh"] and shown["tags"] == vm["tags"]
    plain = cli_json(capsys, "vm", "show", "--ids", vm["id"])  # without -d: no instance view
    assert isinstance(plain, dict) and plain["name"] == name and "powerState" not in plain
    listed = cli_json(capsys, "vm", "list", "-d")
    assert isinstance(listed, list)
    assert [(v["name"], v["powerState"]) for v in listed if v["name"] == name] == [
        (name, "VM running")
    ]
    ips = cli_json(capsys, "vm", "list-ip-addresses", "-n", name)
    assert isinstance(ips, list) and len(ips) == 1
    assert ips[0]["virtualMachine"]["name"] == name
    assert [p["ipAddress"] for p in ips[0]["virtualMachine"]["network"]["publicIpAddresses"]] == [
        address
    ]
    code, out, _err = cli(capsys, "vm", "ssh", "-n", name, "--print", "--", "hostname")
    assert code == 0 and out.strip().endswith("hostname")

    # In the guest: the OS disk grew to 1 GiB (the image is 513 MiB), the data disks are vdc
    # and vdd, empty, of their sizes.
    sizes = host(vm, lab.key).check_output(
        "for d in vda vdc vdd vde; do echo $d $(cat /sys/block/$d/size 2>/dev/null); done"
    )
    assert sizes.splitlines() == [f"vda {2 << 20}", f"vdc {2 << 20}", f"vdd {4 << 20}", "vde"]
    serials = host(vm, lab.key).check_output(
        "for d in vdc vdd; do cat /sys/block/$d/serial; echo; done"  # no newline of its own
    )
    assert serials.split() == ["sigvirt-lun0", "sigvirt-lun1"]  # what by-id names them by
    assert host(vm, lab.key).check_output("hostname") == name

    off = cli_json(capsys, "vm", "deallocate", "-n", name)
    assert isinstance(off, dict) and (off["powerState"], off["sigvirt"]["state"]) == (
        "VM deallocated",
        "stopped",
    )
    on = cli_json(capsys, "vm", "start", "--ids", vm["id"])
    assert isinstance(on, dict) and on["powerState"] == "VM running"

    # Another installation (gallery root) on the same libvirt host sees none of it.
    use(monkeypatch, lab, lab.root / "other-galleries")
    others = cli_json(capsys, "vm", "list")
    assert isinstance(others, list) and name not in [v["name"] for v in others]
    for argv in (["vm", "show", "-n", name], ["vm", "delete", "-n", name, "--yes"],
                 ["vm", "stop", "--ids", vm["id"]]):  # fmt: skip
        code, _out, err = cli(capsys, *argv)
        assert (code, err.strip()) == (4, f"sigvirt: error: VM {name} not found"), argv
    assert system_hv.domain(name).is_active()
    # ... nor reaps it as its own: the name is taken, by another installation.
    with pytest.raises(guest.OtherInstallation):
        guest.reap_interrupted(
            system_hv, name, (lab.root / "other-galleries" / ".installation").read_text().strip()
        )
    use(monkeypatch, lab)
    mine = (lab.root / "galleries" / ".installation").read_text().strip()
    with pytest.raises(Conflict) as taken:  # ours, and running: not an interrupted creation
        guest.reap_interrupted(system_hv, name, mine)
    assert not isinstance(taken.value, guest.OtherInstallation)

    gone = cli_json(capsys, "vm", "delete", "--ids", vm["id"], "--yes")
    assert isinstance(gone, dict) and gone["deleted"] == name
    assert sorted(gone["removed"]) == sorted(
        [f"domain {name}"]
        + [f"volume {vm['sigvirt']['pool']}/{v}" for v in vm["sigvirt"]["volumes"]]
    )
    assert len(vm["sigvirt"]["volumes"]) == 5
    assert volumes_named(system_hv, lab, name) == []
    code, _out, err = cli(capsys, "vm", "show", "-n", name)
    assert code == 4 and err.strip() == f"sigvirt: error: VM {name} not found"


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (["--image", "noGallery/tiny"], 4, "sigvirt: error: gallery noGallery not found"),
        (["--image", "bad-gallery/x"], 3, "sigvirt: error: gallery name 'bad-gallery' is invalid"),
        (
            ["--image", f"{G}/{D}", "--region", "mars"],
            4,
            "sigvirt: error: region 'mars' not found (known: local)",
        ),
        (
            ["--image", f"{G}/{D}", "--memory", "4096"],
            15,
            "sigvirt: error: 4096 MiB of memory is outside",
        ),
        (["--image", f"{G}/{D}", "--vcpus", "4"], 15, "sigvirt: error: 4 vCPUs is outside"),
        (
            ["--image", f"{G}/{D}/9.9.9"],
            4,
            f"sigvirt: error: image version {G}/{D}/9.9.9 not found",
        ),
    ],
)
def test_vm_create_refuses_bad_input_with_one_line(
    lab: Lab, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    args: list[str], code: int, line: str, system_hv: Hypervisor,
) -> None:  # fmt: skip
    use(monkeypatch, lab)
    name = unique("bad")
    got, _out, err = cli(capsys, "vm", "create", "-n", name, "--ssh-key-value",
                         str(lab.key.private) + ".pub", *args)  # fmt: skip
    assert got == code, err
    assert err.splitlines()[0].startswith(line), err
    assert len(err.strip().splitlines()) == 1
    assert not system_hv.domain_exists(name)


def test_region_without_completed_replica_is_refused(
    lab: Lab, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    regions = lab.root / "regions-two.yaml"
    text = (lab.root / "regions.yaml").read_text()
    regions.write_text(
        text + f"  west:\n    uri: qemu:///system\n    pools:\n      - name: {lab.pools[1]}\n"
    )
    monkeypatch.setenv("SIGVIRT_REGIONS", str(regions))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(lab.root / "galleries"))
    key = str(lab.key.private) + ".pub"
    got, _out, err = cli(capsys, "vm", "create", "-n", unique("west"), "--image", f"{G}/{D}",
                         "--region", "west", "--ssh-key-value", key)  # fmt: skip
    assert got == 4
    # The hint keeps the other regions' replicas: --target-regions replaces the whole list.
    assert err.splitlines() == [
        f"sigvirt: error: image version {G}/{D}/1.0.0 has no completed replica in region west",
        f"sigvirt: hint: sigvirt sig image-version update --gallery-name {G} "
        f"--gallery-image-definition {D} --gallery-image-version 1.0.0 "
        "--target-regions local=2 west=1",
    ]


REPO = Path(__file__).resolve().parents[1]


def killed_at(lab: Lab, fault: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SIGVIRT_REGIONS": str(lab.root / "regions.yaml"),
           "SIGVIRT_GALLERY_ROOT": str(lab.root / "galleries")}  # fmt: skip
    env.pop("SIGVIRT_FAULT", None)
    if fault:
        env["SIGVIRT_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "sigvirt", *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.mark.parametrize("fault", ["vm.console", "vm.data-disks"])
def test_create_with_data_disks_killed_leaves_a_domain_that_names_them(
    lab: Lab, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    system_hv: Hypervisor, fault: str,
) -> None:  # fmt: skip
    """Killed before or after its data disks were made, a create leaves a domain naming them
    (Failed: its creator is gone): the same create again reaps it, `vm wait --created`
    follows a --no-wait create, and delete leaves nothing."""
    use(monkeypatch, lab)
    name = unique(f"kill{fault[3:7]}")
    create = ["vm", "create", "-n", name, "--image", f"{G}/{D}", "--size", "Lab_Tiny",
              "--ssh-key-value", str(lab.key.private) + ".pub", "--data-disk-sizes-gb", "1", "3",
              "--no-wait"]  # fmt: skip
    try:
        ran = killed_at(lab, fault, *create)
        assert ran.returncode == -signal.SIGKILL, ran.stderr
        left = cli_json(capsys, "vm", "show", "-n", name)
        assert isinstance(left, dict) and left["provisioningState"] == "Failed"
        assert [d["name"] for d in left["storageProfile"]["dataDisks"]] == [
            f"{name}.data0.qcow2", f"{name}.data1.qcow2"
        ]  # fmt: skip
        made = volumes_named(system_hv, lab, name)
        assert (f"{name}.data0.qcow2" in made) == (fault == "vm.data-disks")
        if fault == "vm.data-disks":
            ran = killed_at(lab, "", *create)
            assert ran.returncode == 0, ran.stderr
            ran = killed_at(lab, "", "vm", "wait", "-n", name, "--created", "--timeout", "120")
            assert ran.returncode == 0, ran.stderr
            shown = cli_json(capsys, "vm", "show", "-d", "-n", name)
            assert isinstance(shown, dict)
            assert (shown["provisioningState"], shown["powerState"]) == ("Succeeded", "VM running")
    finally:
        cli(capsys, "vm", "delete", "-n", name, "--yes")
    assert not system_hv.domain_exists(name)
    assert volumes_named(system_hv, lab, name) == []
    ran = killed_at(lab, "", "vm", "wait", "-n", name, "--deleted")
    assert ran.returncode == 0, ran.stderr


def test_delete_sweeps_data_disks_an_older_sigvirt_left_without_a_domain(
    lab: Lab, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    system_hv: Hypervisor,
) -> None:  # fmt: skip
    use(monkeypatch, lab)
    name = unique("orphan")
    pool = lab.pools[1]
    system_hv.create_volume(pool, xmlbuild.data_disk_volume_xml(f"{name}.data0.qcow2", 1 << 30))
    system_hv.create_volume(pool, xmlbuild.raw_volume_xml(f"{name}.console.log", 0))
    try:
        gone = cli_json(capsys, "vm", "delete", "-n", name, "--yes")
        assert isinstance(gone, dict) and sorted(gone["removed"]) == [
            f"volume {pool}/{name}.console.log", f"volume {pool}/{name}.data0.qcow2"
        ]  # fmt: skip
        code, _out, err = cli(capsys, "vm", "delete", "-n", name, "--yes")
        assert code == 4, err
    finally:
        for vol in (f"{name}.data0.qcow2", f"{name}.console.log"):
            system_hv.delete_volume(pool, vol)


@pytest.mark.hostb
def test_vm_on_the_second_host_is_created_reached_and_deleted(
    lab: Lab, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, hostb: HostB
) -> None:
    pool = hostb.domain_name("vm-east")
    path = hostb.pool(pool)
    regions = lab.root / "regions-east.yaml"
    regions.write_text(
        (lab.root / "regions.yaml").read_text()
        + f"  east:\n    uri: {hostb.uri}\n    pools:\n      - name: {pool}\n        path: {path}\n"
        "    network:\n      type: user-forward\n      ports: 23400-23499\n"
    )
    monkeypatch.setenv("SIGVIRT_REGIONS", str(regions))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(lab.root / "galleries"))
    cli_json(capsys, "sig", "image-version", "update", "-r", G, "-i", D, "-e", "1.0.0",
             "--target-regions", "local=2", "east=1")  # fmt: skip
    name = hostb.domain_name("east1")
    key = str(lab.key.private) + ".pub"
    try:
        vm = cli_json(capsys, "vm", "create", "-n", name, "--image", f"{G}/{D}", "--region", "east",
                      "--memory", "128", "--ssh-key-value", key)  # fmt: skip
        assert isinstance(vm, dict) and vm["location"] == "east"
        assert vm["powerState"] == "VM running"
        # Its port forward listens on hostB's loopback; sigvirt reaches it through hostB's sshd.
        assert f"-J root@127.0.0.1:{hostb.ssh_port}" in vm["sigvirt"]["ssh"]
        code, out, err = cli(capsys, "vm", "list", "--region", "east", "-o", "json")
        assert code == 0 and name in [v["name"] for v in json.loads(out)], err
        with Context.from_config(load(regions)) as ctx:
            hv, _r, dom = inventory.find(ctx, name, "east")
            prov = guest.provenance_of(dom)
            assert prov is not None
            ep = inventory.endpoint_of(hv, prov)
            assert ep is not None
            assert sshlib.run(ep, "hostname").stdout.strip() == name
    finally:
        cli(capsys, "vm", "delete", "-n", name, "--region", "east")
    code, _o, err = cli(capsys, "vm", "show", "-n", name, "--region", "east")
    assert code == 4, err
    cli_json(capsys, "sig", "image-version", "update", "-r", G, "-i", D, "-e", "1.0.0",
             "--target-regions", "local=2", "--allow-replicated-location-deletion", "true")  # fmt: skip
