"""Definitions that shape the guest's devices (issue 17 item 3): az's `--features` on image
definitions, `--disk-controller-type` on vm/vmss create (the OS disk on virtio-scsi or NVMe:
the guest's root is /dev/sda or /dev/nvme0n1), and IsAcceleratedNetworkSupported (virtio-net
multiqueue where the network kind has queues)."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import testinfra

from sigvirt.catalog import features
from sigvirt.catalog.records import Definition
from sigvirt.cli import main
from sigvirt.errors import ExitCode, InvalidArgument, Unsupported
from sigvirt.guests import devices, domxml
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import Network
from tests.support.base import PREFIX, SshKey, unique
from tests.support.catalog import SigEnv

G, D, NARROW = "devGallery", "tinyDevices", "tinyScsiOnly"
FEATURES = "DiskControllerTypes=SCSI,NVMe IsAcceleratedNetworkSupported=True"
DEFINE = [
    "sig", "image-definition", "create", "--gallery-name", "myGallery",
    "--gallery-image-definition", "feat", "--publisher", "p", "--offer", "o", "--sku", "feat",
]  # fmt: skip


# -- --features on image definitions (offline) --------------------------------------------------
@pytest.mark.offline
def test_features_are_stored_and_shown_in_azures_shape(offline_sig: SigEnv) -> None:
    sig = offline_sig
    sig.gallery()
    ran = sig.cli(*DEFINE, "--hyper-v-generation", "V2", "--features",
                  "diskcontrollertypes=nvme,scsi,NVMe isacceleratednetworksupported=true",
                  "SecurityType=TrustedLaunchSupported", "-o", "json")  # fmt: skip
    assert ran.code == 0 and ran.err == ""
    want = [
        {"name": "DiskControllerTypes", "value": "NVMe,SCSI"},  # Azure's spelling, no repeats
        {"name": "IsAcceleratedNetworkSupported", "value": "True"},
        {"name": "SecurityType", "value": "TrustedLaunchSupported"},
    ]
    assert sorted(ran.json["features"], key=lambda f: f["name"]) == want
    shown = sig.cli("sig", "image-definition", "show", "--gallery-name", "myGallery",
                    "--gallery-image-definition", "feat", "--query", "features", "-o", "json")  # fmt: skip
    assert sorted(shown.json, key=lambda f: f["name"]) == want
    plain = sig.cli("sig", "image-definition", "create", "--gallery-name", "myGallery",
                    "--gallery-image-definition", "plain", "-p", "p", "-f", "o", "-s", "plain",
                    "-o", "json")  # fmt: skip
    assert plain.json["features"] is None  # as az shows a definition without features


@pytest.mark.offline
def test_bad_features_are_refused_with_one_line_and_nothing_written(offline_sig: SigEnv) -> None:
    sig = offline_sig
    sig.gallery()
    known = ", ".join(features.KNOWN)
    cases = [
        ("DiskControlerTypes=SCSI", f"--features: unknown feature 'DiskControlerTypes' "
         f"(did you mean DiskControllerTypes?); known: {known}"),
        ("Colour=Blue", f"--features: unknown feature 'Colour'; known: {known}"),
        ("DiskControllerTypes=IDE", "--features DiskControllerTypes=IDE: the value must be "
         "one of SCSI, NVMe"),
        ("IsAcceleratedNetworkSupported=yes", "--features IsAcceleratedNetworkSupported=yes: "
         "the value must be one of True, False"),
        ("SecurityType=Secure", "--features SecurityType=Secure: the value must be one of "
         f"{', '.join(features.SECURITY_TYPES)}"),
        ("IsHibernateSupported", "--features 'IsHibernateSupported': expected Name=Value, e.g. "
         "DiskControllerTypes=SCSI,NVMe"),
        ("DiskControllerTypes=SCSI diskcontrollertypes=NVMe",
         "--features: DiskControllerTypes is given twice"),
    ]  # fmt: skip
    problems = []
    for given, line in cases:
        got = sig.refused(ExitCode.INVALID_ARGUMENT, *DEFINE, "--features", given)
        if got != line:
            problems.append(f"{given}:\n   got {got}\n  want {line}")
    assert problems == [], "\n".join(problems)


@pytest.mark.offline
def test_features_sigvirt_cant_honour_are_stored_with_a_warning(offline_sig: SigEnv) -> None:
    sig = offline_sig
    sig.gallery()
    ran = sig.cli(*DEFINE, "--features", "SecurityType=ConfidentialVM IsHibernateSupported=True")
    assert ran.code == 0
    warnings = [line for line in ran.err.splitlines() if line.startswith("sigvirt: warning: ")]
    assert len(warnings) == 2
    assert "SecurityType=ConfidentialVM is stored" in warnings[0]
    assert "vm create will refuse" in warnings[0]
    assert "IsHibernateSupported=True is stored" in warnings[1]


@pytest.mark.offline
def test_features_change_only_with_allow_update_image(offline_sig: SigEnv) -> None:
    sig = offline_sig
    sig.gallery()
    assert sig.cli(*DEFINE, "--features", "DiskControllerTypes=SCSI").code == 0
    update = ["sig", "image-definition", "update", "--gallery-name", "myGallery",
              "--gallery-image-definition", "feat", "--features", "DiskControllerTypes=NVMe"]  # fmt: skip
    line = sig.refused(ExitCode.INVALID_ARGUMENT, *update)
    assert line == (
        "--features can change only with --allow-update-image true, as in "
        "Azure (existing VMs keep their devices; new ones follow the new features)"
    )
    ran = sig.cli(*update, "--allow-update-image", "true", "--query", "features", "-o", "json")
    assert ran.json == [{"name": "DiskControllerTypes", "value": "NVMe"}]  # replaced, as a PUT
    assert sig.store.get_definition("myGallery", "feat").features == {"DiskControllerTypes": "NVMe"}


# -- what the features make of a VM's devices (pure) ---------------------------------------------
DEF = Definition("g", "d", "p", "o", "s", hyper_v_generation="V2")
BRIDGE = Network(kind="bridge", source="br0")


@pytest.mark.offline
def test_the_controller_must_be_listed_by_a_v2_definition() -> None:
    both = replace(DEF, features={"DiskControllerTypes": "SCSI,NVMe"})
    assert devices.choose(both, None, 1, Network()).disk_controller == "virtio"
    assert devices.choose(both, "scsi", 1, Network()).disk_controller == "scsi"
    assert devices.choose(both, "NVME", 1, Network()).disk_controller == "nvme"
    nvme_only = replace(DEF, features={"DiskControllerTypes": "NVMe"})
    assert devices.choose(nvme_only, None, 1, Network()).disk_controller == "nvme"
    with pytest.raises(InvalidArgument, match=r"doesn't list it in its DiskControllerTypes \(NVMe"):
        devices.choose(nvme_only, "SCSI", 1, Network())
    with pytest.raises(InvalidArgument, match=r"DiskControllerTypes \(none\)"):
        devices.choose(DEF, "NVMe", 1, Network())
    with pytest.raises(InvalidArgument, match="needs a V2 \\(UEFI\\) image definition"):
        devices.choose(replace(both, hyper_v_generation="V1"), "SCSI", 1, Network())
    with pytest.raises(InvalidArgument, match="expected one of SCSI, NVMe"):
        devices.choose(both, "IDE", 1, Network())


@pytest.mark.offline
def test_accelerated_networking_gives_a_queue_per_vcpu_where_there_are_queues() -> None:
    fast = replace(DEF, features={"IsAcceleratedNetworkSupported": "True"})
    assert devices.choose(fast, None, 4, BRIDGE) == devices.Devices("virtio", 4)
    assert devices.choose(fast, None, 1, BRIDGE).net_queues == 0  # one vCPU: one queue
    user = devices.choose(fast, None, 4, Network())
    assert user.net_queues == 0 and "QEMU slirp) has one queue" in user.notes[0]
    windows = devices.choose(replace(fast, os_type="Windows"), None, 4, BRIDGE)
    assert windows.net_queues == 0 and "e1000e" in windows.notes[0]
    assert devices.choose(DEF, None, 4, BRIDGE) == devices.Devices()  # not asked for


@pytest.mark.offline
def test_security_types_sigvirt_cant_launch_are_refused_at_deploy() -> None:
    confidential = replace(DEF, features={"SecurityType": "ConfidentialVM"})
    with pytest.raises(Unsupported, match="requires SecurityType=ConfidentialVM"):
        devices.choose(confidential, None, 1, Network())
    ok = replace(DEF, features={"SecurityType": "TrustedLaunchSupported"})
    assert devices.choose(ok, None, 1, Network()) == devices.Devices()


@pytest.mark.offline
def test_nvme_needs_a_libvirt_with_qemu_override() -> None:
    nvme = devices.Devices("nvme")
    devices.check_host(nvme, "9.0.0", "local")
    devices.check_host(devices.Devices("scsi"), "6.0.0", "local")
    with pytest.raises(Unsupported, match=r"runs libvirt 8\.1\.0; an NVMe OS disk needs libvirt"):
        devices.check_host(nvme, "8.1.0", "old")


# -- real guests (tiny image) -------------------------------------------------------------------
@dataclass(frozen=True)
class Lab:
    root: Path
    pool: str
    key: SshKey


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = _run(capsys, *argv, "-o", "json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def lab(scratch: Path, system_hv: Hypervisor, tiny_image: Path, ssh_key: SshKey) -> Iterator[Lab]:
    """A V2 definition listing SCSI and NVMe (and accelerated networking), one listing only
    SCSI; each with a version of the tiny image (whose initramfs has virtio_scsi and sd_mod;
    the cloud kernel has NVMe built in)."""
    root = scratch / "devlab"
    root.mkdir()
    pool = unique("dev")
    (root / "regions.yaml").write_text(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n"
        f"      - name: {pool}\n        path: {root}/pool\n"
        "    network:\n      type: user-forward\n      ports: 23100-23149\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGVIRT_REGIONS", str(root / "regions.yaml"))
        mp.setenv("SIGVIRT_GALLERY_ROOT", str(root / "galleries"))
        try:
            assert main(["sig", "create", "-r", G]) == 0
            for name, feats in ((D, FEATURES), (NARROW, "DiskControllerTypes=SCSI")):
                assert main(["sig", "image-definition", "create", "-r", G, "-i", name,
                             "-p", "sv", "-f", "tiny", "-s", name, "--hyper-v-generation", "V2",
                             "--features", feats]) == 0  # fmt: skip
                assert main(["sig", "image-version", "create", "-r", G, "-i", name, "-e",
                             "1.0.0", "--source", str(tiny_image), "-o", "none"]) == 0  # fmt: skip
            yield Lab(root, pool, ssh_key)
        finally:
            for dom in system_hv.domains():
                if dom.name.startswith(PREFIX + "-dc"):
                    main(["vm", "delete", "-n", dom.name, "--yes"])
            for name in (D, NARROW):
                main(["sig", "image-version", "delete", "-r", G, "-i", name, "-e", "1.0.0"])
            system_hv.delete_pool(pool)
            shutil.rmtree(root, ignore_errors=True)


def _use(monkeypatch: pytest.MonkeyPatch, lab: Lab) -> None:
    monkeypatch.setenv("SIGVIRT_REGIONS", str(lab.root / "regions.yaml"))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(lab.root / "galleries"))


def _guest(vm: dict[str, Any], key: SshKey) -> testinfra.host.Host:
    user = vm["osProfile"]["adminUsername"]
    return testinfra.get_host(
        f"paramiko://{user}@{vm['sigvirt']['address']}", ssh_identity_file=str(key.private)
    )


def _root_device(host: testinfra.host.Host) -> str:
    """The block device mounted on / (busybox has no findmnt)."""
    return str(host.check_output("awk '$2 == \"/\" && $1 ~ /^\\/dev/ {print $1}' /proc/mounts"))


def _os_disk_target(hv: Hypervisor, name: str) -> tuple[str | None, str | None]:
    target = ET.fromstring(hv.domain(name).xml()).find("./devices/disk/target")
    assert target is not None
    return target.get("dev"), target.get("bus")


@pytest.mark.guest
def test_a_vm_on_scsi_roots_on_sda_and_slirp_keeps_one_queue(
    lab: Lab, capsys: pytest.CaptureFixture[str], system_hv: Hypervisor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    _use(monkeypatch, lab)
    name = unique("dc-scsi")
    code, out, err = _run(capsys, "vm", "create", "-n", name, "--image", f"{G}/{D}",
                          "--disk-controller-type", "scsi", "--vcpus", "2", "--memory", "256",
                          "--data-disk-sizes-gb", "1",
                          "--ssh-key-value", f"{lab.key.private}.pub", "-o", "json")  # fmt: skip
    assert code == 0, err
    vm = json.loads(out)
    assert vm["storageProfile"]["diskControllerType"] == "SCSI"
    # the data disk follows the seed (vda) here, not a virtio OS disk: vdb, as reported
    (data,) = vm["sigvirt"]["data_disks"]
    assert data["device"] == "vdb"
    assert _os_disk_target(system_hv, name) == ("sda", "scsi")
    # the definition asks for accelerated networking; this region's slirp NIC has one queue
    assert "QEMU slirp) has one queue" in err
    host = _guest(vm, lab.key)
    assert _root_device(host) == "/dev/sda2"
    assert host.check_output("cat /sys/block/sda/device/vendor").strip() == "QEMU"
    assert host.check_output(f"cat /sys/block/{data['device']}/serial") == "sigvirt-lun0"
    assert host.check_output("ls /sys/class/net/eth0/queues").split() == ["rx-0", "tx-0"]
    # a live flatten pulls the replica into the OS disk, which is sda here, not vda
    _json(capsys, "vm", "flatten", "-n", name)
    disk = ET.fromstring(system_hv.domain(name).xml(inactive=True)).find("./devices/disk")
    assert disk is not None and disk.find("target").get("dev") == "sda"  # type: ignore[union-attr]
    backing = disk.find("backingStore")
    assert backing is not None and len(backing) == 0  # standalone now: no replica under it
    assert _root_device(host) == "/dev/sda2"
    assert _run(capsys, "vm", "delete", "-n", name, "--yes")[0] == 0


@pytest.mark.guest
def test_a_scale_set_on_nvme_roots_on_nvme0n1(
    lab: Lab, capsys: pytest.CaptureFixture[str], system_hv: Hypervisor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    _use(monkeypatch, lab)
    name = unique("dc-nvme")
    made = _json(capsys, "vmss", "create", "-n", name, "--image", f"{G}/{D}",
                 "--instance-count", "1", "--vm-sku", "Lab_Small", "--disk-controller-type",
                 "NVMe", "--ssh-key-value", f"{lab.key.private}.pub")  # fmt: skip
    try:
        assert made["vmss"]["sigvirt"]["created"] == [f"{name}-0"]
        (inst,) = _json(capsys, "vmss", "list-instances", "-n", name)
        assert inst["storageProfile"]["diskControllerType"] == "NVMe"
        assert f"{domxml.QEMU_NS}" in system_hv.domain(inst["name"]).xml()
        host = _guest(inst, lab.key)
        assert _root_device(host) == "/dev/nvme0n1p2"
        assert host.check_output("cat /sys/block/nvme0n1/device/serial").strip() == (
            "sigvirt-osdisk"
        )
    finally:
        assert _run(capsys, "vmss", "delete", "-n", name, "--yes")[0] == 0


def test_a_controller_the_definition_does_not_list_is_refused_before_anything_is_made(
    lab: Lab, capsys: pytest.CaptureFixture[str], system_hv: Hypervisor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    _use(monkeypatch, lab)
    name = unique("dc-refused")
    before = sorted(v.name for v in system_hv.volumes(lab.pool))
    code, out, err = _run(capsys, "vm", "create", "-n", name, "--image", f"{G}/{NARROW}",
                          "--disk-controller-type", "NVMe", "--generate-ssh-keys")  # fmt: skip
    assert (code, out) == (ExitCode.INVALID_ARGUMENT, "")
    assert err.strip() == (
        f"sigvirt: error: --disk-controller-type NVMe: image definition {G}/{NARROW} doesn't "
        "list it in its DiskControllerTypes (SCSI)"
    )
    assert not system_hv.domain_exists(name)
    assert sorted(v.name for v in system_hv.volumes(lab.pool)) == before


def test_multiqueue_is_defined_by_this_hosts_libvirt(system_hv: Hypervisor, scratch: Path) -> None:
    """The network kinds with queues can't be booted here (no bridge or NAT network may be
    made), so the multiqueue domain is only defined (libvirt checks its XML) and undefined."""
    name = unique("dc-mq")
    spec = domxml.DomainSpec(
        name=name, memory_mib=128, vcpus=2, disk=scratch / f"{name}.qcow2",
        network=Network(kind="bridge", source="sigvirt-no-such-br"), net_queues=2,
    )  # fmt: skip
    dom = system_hv.define(domxml.domain_xml(spec))
    try:
        assert "queues='2'" in dom.xml()
    finally:
        system_hv.destroy_and_undefine(name)
