"""The XML generators against expected files (SIGVIRT_REGEN_XML=1 rewrites them)."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import libvirt
import pytest

from sigvirt.guests import domxml
from sigvirt.guests.domxml import Backing, DomainSpec, Network, Provenance
from sigvirt.guests.guest import vnc_display
from sigvirt.guests.osdisk import BadStep, Intent, OsDisk, Step
from sigvirt.hosts import xmlbuild

pytestmark = pytest.mark.offline

EXPECTED = Path(__file__).parent / "data" / "xml"
REGEN = os.environ.get("SIGVIRT_REGEN_XML") == "1"

PROV = Provenance(
    kind="vmss-instance",
    region="local",
    image="myGallery/myImageDefinition/1.0.2",
    replica_pool="sigvirt-local-a",
    replica_path="/var/lib/sigvirt/pools/local-a/myGallery-myImageDefinition-1.0.2-local-0.qcow2",
    overlay_pool="sigvirt-local-a",
    overlay="web-0.qcow2",
    seed="web-0.cidata.iso",
    console="web-0.console.log",
    admin_user="azureuser",
    ssh_port=22201,
    scale_set="web",
    instance=0,
    created="2026-11-25T22:00:00+00:00",
)


def _spec(**kw: object) -> DomainSpec:
    base = dict(
        name="web-0",
        memory_mib=256,
        vcpus=1,
        disk=Path("/var/lib/sigvirt/pools/local-a/web-0.qcow2"),
        backing=(Backing(Path(PROV.replica_path)),),
        seed=Path("/var/lib/sigvirt/pools/local-a/web-0.cidata.iso"),
        console_log=Path("/var/lib/sigvirt/pools/local-a/web-0.console.log"),
        network=Network(host_port=22201),
        provenance=PROV,
    )
    base.update(kw)
    return DomainSpec(**base)  # type: ignore[arg-type]


CASES = {
    "domain-tcg-user-forward": _spec(),
    "domain-kvm-uefi-bridge": _spec(
        accel="kvm", firmware="uefi", network=Network(kind="bridge", source="br0"), vcpus=2
    ),
    "domain-tcg-network-noseed": _spec(
        network=Network(kind="network", source="default"),
        seed=None,
        console_log=None,
        provenance=None,
    ),
    "domain-unrestricted-forward": _spec(network=Network(host_port=22999, restrict=False)),
    "domain-tcg-data-disks": _spec(
        data_disks=(
            Path("/var/lib/sigvirt/pools/local-a/web-0.data0.qcow2"),
            Path("/var/lib/sigvirt/pools/local-a/web-0.data1.qcow2"),
        ),
        provenance=replace(
            PROV,
            resource_group="rg1",
            installation="0123456789abcdef0123456789abcdef",
            tags=domxml.encode_tags({"env": "lab", "team": "a b"}),
            size="Lab_Small",
            image_id="/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/"
            "sigvirt/providers/Microsoft.Compute/galleries/myGallery/images/"
            "myImageDefinition/versions/1.0.2",
            os_disk_gb=2,
            os_disk_bytes=2 << 30,
            data_disks=domxml.encode_data_disks(
                [("web-0.data0.qcow2", 1), ("web-0.data1.qcow2", 4)]
            ),
        ),
    ),
    "domain-kvm-data-disks": _spec(
        accel="kvm", data_disks=(Path("/var/lib/sigvirt/pools/local-a/web-0.data0.qcow2"),)
    ),
    # issue 17: the OS disk's controller, virtio-net multiqueue
    "domain-tcg-uefi": _spec(firmware="uefi"),
    "domain-uefi-scsi": _spec(firmware="uefi", disk_controller="scsi"),
    "domain-uefi-nvme": _spec(firmware="uefi", disk_controller="nvme"),
    "domain-kvm-uefi-scsi": _spec(accel="kvm", firmware="uefi", disk_controller="scsi"),
    "domain-tcg-bridge-multiqueue": _spec(
        network=Network(kind="bridge", source="br0"), vcpus=4, net_queues=4
    ),
    "domain-kvm-network-multiqueue": _spec(
        accel="kvm", network=Network(kind="network", source="lab"), vcpus=2, net_queues=2
    ),
    # issue 18: a region with memory: {merge: true} (no <nosharepages/>)
    "domain-tcg-memory-merge": _spec(memory_mib=128, memory_merge=True),
    # issue 18: io_uring for every disk (hosts/diskio.py); a redefinition keeps its UUID
    "domain-tcg-io-uring": _spec(
        disk_io="io_uring",
        data_disks=(Path("/var/lib/sigvirt/pools/local-a/web-0.data0.qcow2"),),
        uuid="6a1e0b6c-3f8e-4c55-9d0e-2b7f4f1a9c01",
    ),
}
WINDOWS_CASES = {
    "domain-windows-gen2": _spec(
        accel="kvm",
        firmware="uefi",
        network=Network(kind="bridge", source="br0"),
        vcpus=2,
        memory_mib=4096,
        seed=None,
        data_disks=(Path("/var/lib/sigvirt/pools/local-a/web-0.data0.qcow2"),),
    ),
    "domain-windows-gen1": _spec(memory_mib=2048, seed=None),
    "domain-windows-gen2-nvme": _spec(
        firmware="uefi", disk_controller="nvme", memory_mib=2048, seed=None
    ),
}


def _check(name: str, text: str) -> None:
    path = EXPECTED / f"{name}.xml"
    if REGEN or not path.exists():
        path.write_text(text)
        if not REGEN:
            pytest.fail(f"{path} did not exist; written now, review and commit it")
    assert text == path.read_text()


@pytest.mark.parametrize("case", sorted(CASES))
def test_domain_xml_matches_expected_file(case: str) -> None:
    _check(case, domxml.domain_xml(CASES[case]))


@pytest.mark.parametrize("case", sorted(WINDOWS_CASES))
def test_windows_domain_xml_matches_expected_file(case: str) -> None:
    _check(case, domxml.windows_domain_xml(WINDOWS_CASES[case]))


def _all_xml() -> dict[str, str]:
    out = {k: domxml.domain_xml(v) for k, v in CASES.items()}
    out.update({k: domxml.windows_domain_xml(v) for k, v in WINDOWS_CASES.items()})
    return out


@pytest.mark.parametrize("case", sorted([*CASES, *WINDOWS_CASES]))
def test_domain_xml_is_accepted_by_libvirt_test_driver(case: str) -> None:
    conn = libvirt.open("test:///default")
    try:
        dom = conn.defineXML(_all_xml()[case])
        assert dom.name() == "web-0"
        dom.undefine()
    finally:
        conn.close()


def test_backing_chain_is_explicit_and_never_relabelled() -> None:
    root = ET.fromstring(domxml.domain_xml(_spec()))
    bs = root.find("./devices/disk/backingStore")
    assert bs is not None
    assert bs.find("format").get("type") == "qcow2"  # type: ignore[union-attr]
    assert bs.find("source/seclabel").get("relabel") == "no"  # type: ignore[union-attr]
    end = bs.find("backingStore")
    assert end is not None and len(end) == 0  # chain terminated: libvirt must not probe


def test_tcg_bounds_translation_cache_and_kvm_does_not() -> None:
    tcg = ET.fromstring(domxml.domain_xml(_spec(tb_cache_mib=48)))
    assert tcg.get("type") == "qemu"
    assert tcg.findtext("./features/tcg/tb-cache") == "48"
    kvm = ET.fromstring(domxml.domain_xml(_spec(accel="kvm")))
    assert kvm.get("type") == "kvm"
    assert kvm.find("./features/tcg") is None


def test_port_forward_binds_loopback_only() -> None:
    text = domxml.domain_xml(_spec())
    assert "hostfwd=tcp:127.0.0.1:22201-:22" in text
    assert "restrict=on" in text


def test_provenance_round_trips_through_metadata() -> None:
    root = ET.fromstring(domxml.domain_xml(_spec()))
    meta = root.find(f"./metadata/{{{domxml.XMLNS}}}guest")
    assert meta is not None
    assert Provenance.from_xml(ET.tostring(meta, encoding="unicode")) == PROV


def test_mac_is_stable_and_distinct_per_name() -> None:
    assert domxml.mac_for("web-0") == domxml.mac_for("web-0")
    assert domxml.mac_for("web-0") != domxml.mac_for("web-1")
    assert domxml.mac_for("x").startswith("52:54:00:")


def test_provenance_with_every_field_round_trips() -> None:
    spec = CASES["domain-tcg-data-disks"]
    assert spec.provenance is not None
    root = ET.fromstring(domxml.domain_xml(spec))
    meta = root.find(f"./metadata/{{{domxml.XMLNS}}}guest")
    assert meta is not None
    back = Provenance.from_xml(ET.tostring(meta, encoding="unicode"))
    assert back == spec.provenance
    assert back.tag_map == {"env": "lab", "team": "a b"}
    assert back.data_disk_list == (("web-0.data0.qcow2", 1), ("web-0.data1.qcow2", 4))
    assert back.volumes == (
        "web-0.qcow2", "web-0.cidata.iso", "web-0.console.log",
        "web-0.data0.qcow2", "web-0.data1.qcow2",
    )  # fmt: skip


def test_provenance_of_older_sigvirt_reads_with_defaults() -> None:
    """Domains made before tags, groups and installations keep reading: as made by this
    installation, with no tags and no data disks."""
    old = "<guest><kind>vm</kind><region>local</region><overlay>a.qcow2</overlay></guest>"
    prov = Provenance.from_xml(old)
    assert (prov.installation, prov.tag_map, prov.data_disk_list) == ("", {}, ())
    assert Provenance(tags="[1, 2]").tag_map == {}  # a hand-edited value: no tags, no crash


def test_data_disks_are_vdc_onwards_in_pci_order() -> None:
    root = ET.fromstring(domxml.domain_xml(CASES["domain-tcg-data-disks"]))
    disks = root.findall("./devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb", "vdc", "vdd"]  # type: ignore[union-attr]
    slots = [int(d.find("address").get("slot"), 16) for d in disks]  # type: ignore[union-attr,arg-type]
    assert slots == sorted(slots)  # the guest names virtio disks in PCI order
    data = disks[2]
    assert data.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    bs = data.find("backingStore")
    assert bs is not None and len(bs) == 0  # no backing file: nothing to probe
    assert len(domxml.DATA_SLOTS) == domxml.MAX_DATA_DISKS == 16
    assert not set(domxml.DATA_SLOTS) & {*domxml.FLAT_SLOTS.values(), domxml.USER_NIC_SLOT}
    assert max(domxml.DATA_SLOTS) < 0x1F
    assert [domxml.data_device(i) for i in (0, 1, 15)] == ["vdc", "vdd", "vdr"]
    # Fewer virtio disks before them, earlier letters: no seed (specialized, Windows), or an
    # OS disk on SCSI or NVMe; Windows' are SATA. The serial names lun N in every layout.
    assert domxml.data_device(0, "virtio", seeded=False) == "vdb"
    assert [domxml.data_device(0, c) for c in ("scsi", "nvme")] == ["vdb", "vdb"]
    assert domxml.data_device(1, "nvme", seeded=False) == "vdb"
    assert domxml.data_device(1, "", seeded=False, sata=True) == "sdc"
    assert [d.findtext("serial") for d in disks[2:]] == ["sigvirt-lun0", "sigvirt-lun1"]


def test_data_disk_volume_is_empty_qcow2_without_backing() -> None:
    _check("volume-data-disk", xmlbuild.data_disk_volume_xml("web-0.data0.qcow2", 4 << 30))


def test_overlay_volume_states_backing_format() -> None:
    text = xmlbuild.overlay_volume_xml("c.qcow2", 1 << 30, Path("/p/base.qcow2"))
    _check("volume-overlay", text)


def test_dir_pool_xml() -> None:
    _check("pool-dir", xmlbuild.dir_pool_xml("sigvirt-local-a", Path("/var/lib/sigvirt/pools/a")))


# -- reimage: another OS disk, and the intent recorded in the provenance -----------------------
NEW_REPLICA = "/var/lib/sigvirt/pools/local-b/myGallery-myImageDefinition-1.1.0-local-1.qcow2"
OLD_DISK = OsDisk("web-0.qcow2", "myGallery/myImageDefinition/1.0.2", "", "sigvirt-local-a",
                  PROV.replica_path, 1 << 30, 1)  # fmt: skip
NEW_DISK = OsDisk("web-0.os1.qcow2", "myGallery/myImageDefinition/1.1.0", "", "sigvirt-local-b",
                  NEW_REPLICA, 1 << 30, 2)  # fmt: skip


def _prov(domain: str) -> Provenance:
    meta = ET.fromstring(domain).find(f"./metadata/{{{domxml.XMLNS}}}guest")
    assert meta is not None
    return Provenance.from_xml(ET.tostring(meta, encoding="unicode"))


def _reimaged() -> tuple[str, str, Intent]:
    before = domxml.domain_xml(CASES["domain-tcg-data-disks"])
    prov = _prov(before)
    intent = Intent(Step.SWAPPED, prov.os_disk, NEW_DISK, running=True, creator="host:boot:42")
    after = domxml.with_os_disk(
        before, Path("/var/lib/sigvirt/pools/local-a/web-0.os1.qcow2"),
        (Backing(Path(NEW_REPLICA)),), prov.booting(NEW_DISK, intent),
    )  # fmt: skip
    return before, after, intent


def test_reimaged_domain_xml_matches_expected_file() -> None:
    _before, after, _intent = _reimaged()
    _check("domain-reimaged-swapped", after)


def test_a_reimage_changes_only_vda_and_the_provenance() -> None:
    before, after, intent = _reimaged()

    def strip(text: str) -> ET.Element:
        root = ET.fromstring(text)
        for d in root.findall("./devices/disk"):
            target = d.find("target")
            if target is not None and target.get("dev") == "vda":
                root.find("devices").remove(d)  # type: ignore[union-attr]
        meta = root.find("metadata")
        if meta is not None:
            root.remove(meta)
        return root

    assert ET.tostring(strip(before)) == ET.tostring(strip(after))  # MAC, forward, seed, data
    prov = _prov(after)
    assert prov.intent == intent
    assert (prov.overlay, prov.image, prov.model_generation) == (
        "web-0.os1.qcow2",
        NEW_DISK.image,
        2,
    )
    # every volume the domain may own while the reimage is under way: both overlays
    assert prov.volumes[:2] == ("web-0.os1.qcow2", "web-0.qcow2")
    # the intent gone: the old overlay is no longer the domain's
    done = _prov(domxml.with_provenance(after, prov.booting(NEW_DISK, None)))
    assert done.intent is None and "web-0.qcow2" not in done.volumes
    conn = libvirt.open("test:///default")
    try:
        conn.defineXML(after).undefine()
    finally:
        conn.close()


def test_the_reimage_steps_follow_their_table() -> None:
    planned = Intent(Step.PLANNED, OLD_DISK, NEW_DISK)
    assert planned.moved(Step.SWAPPED).moved(Step.KEPT).moved(Step.REVERTING).step == "reverting"
    assert planned.moved(Step.SWAPPED).moved(Step.COMMITTING).step == "committing"
    for bad in ((Step.PLANNED, Step.COMMITTING), (Step.PLANNED, Step.KEPT),
                (Step.COMMITTING, Step.REVERTING), (Step.REVERTING, Step.SWAPPED)):  # fmt: skip
        with pytest.raises(BadStep):
            replace(planned, step=bad[0]).moved(bad[1])
    assert Intent.decode(planned.encode()) == planned


@pytest.mark.parametrize("text", ["", "[]", "{}", '{"step":"flying"}', "not json",
                                  '{"step":"planned","old":{},"new":{},"running":1,"keep":false}'])  # fmt: skip
def test_a_hand_edited_intent_is_none_not_a_crash(text: str) -> None:
    prov = replace(PROV, reimage=text)
    assert prov.intent is None
    assert prov.volumes[0] == PROV.overlay


# -- issue 17: disk controllers, multiqueue, Windows ------------------------------------------
def _os_disk_target(root: ET.Element) -> tuple[str | None, str | None]:
    target = root.find("./devices/disk/target")
    assert target is not None
    return target.get("dev"), target.get("bus")


def test_scsi_os_disk_is_sda_on_a_virtio_scsi_controller_in_vdas_slot() -> None:
    root = ET.fromstring(domxml.domain_xml(_spec(disk_controller="scsi")))
    assert _os_disk_target(root) == ("sda", "scsi")
    ctl = root.find("./devices/controller[@type='scsi']")
    assert ctl is not None and ctl.get("model") == "virtio-scsi"
    assert ctl.find("address").get("slot") == f"0x{domxml.FLAT_SLOTS['vda']:02x}"  # type: ignore[union-attr]
    seed = root.findall("./devices/disk")[1].find("target")
    assert seed is not None and (seed.get("dev"), seed.get("bus")) == ("vdb", "virtio")


def test_nvme_os_disk_is_a_virtio_disk_whose_qemu_device_is_nvme() -> None:
    root = ET.fromstring(domxml.domain_xml(_spec(disk_controller="nvme")))
    disk = root.find("./devices/disk")
    assert disk is not None and disk.find("alias").get("name") == domxml.OS_DISK_ALIAS  # type: ignore[union-attr]
    q = f"{{{domxml.QEMU_NS}}}"
    device = root.find(f"./{q}override/{q}device")
    assert device is not None and device.get("alias") == domxml.OS_DISK_ALIAS
    props = {p.get("name"): p.get("value") for p in device.iter(f"{q}property")}
    assert props == {"driver": "nvme", "serial": "sigvirt-osdisk"}  # QEMU requires a serial
    # only the OS disk: a default guest has neither the alias nor the override
    plain = domxml.domain_xml(_spec())
    assert "override" not in plain and domxml.OS_DISK_ALIAS not in plain


def test_multiqueue_is_only_given_where_the_network_has_queues() -> None:
    kvm = ET.fromstring(domxml.domain_xml(CASES["domain-kvm-network-multiqueue"]))
    assert kvm.find("./devices/interface/driver").attrib == {"name": "vhost", "queues": "2"}  # type: ignore[union-attr]
    tcg = ET.fromstring(domxml.domain_xml(CASES["domain-tcg-bridge-multiqueue"]))
    assert tcg.find("./devices/interface/driver").attrib == {"queues": "4"}  # type: ignore[union-attr]
    # slirp has one queue: a user-forward NIC stays as it was
    user = domxml.domain_xml(_spec(vcpus=4, net_queues=4))
    assert user == domxml.domain_xml(_spec(vcpus=4)) and "queues" not in user


def test_windows_boots_stock_devices_without_seed_or_virtio() -> None:
    spec = _spec(seed=Path("/p/web-0.cidata.iso"), provenance=None)  # a seed given by mistake
    root = ET.fromstring(domxml.windows_domain_xml(spec))
    assert _os_disk_target(root) == ("sda", "sata")
    assert len(root.findall("./devices/disk")) == 1  # not attached
    text = domxml.windows_domain_xml(spec)
    assert "virtio" not in text and "cidata" not in text and "e1000e" in text
    assert root.find("./clock").get("offset") == "localtime"  # type: ignore[union-attr]
    assert root.find("./clock/timer[@name='hypervclock']") is not None
    graphics = root.find("./devices/graphics")
    assert graphics is not None and graphics.get("listen") == "127.0.0.1"
    assert graphics.find("listen").get("address") == "127.0.0.1"  # type: ignore[union-attr]
    # under TCG QEMU refuses vpindex (and synic, stimer need it); KVM gets them all
    tcg = {e.tag for e in root.find("./features/hyperv")}  # type: ignore[union-attr]
    kvm = ET.fromstring(domxml.windows_domain_xml(_spec(accel="kvm")))
    assert {e.tag for e in kvm.find("./features/hyperv")} - tcg == domxml.KVM_ONLY_HYPERV  # type: ignore[union-attr]


def test_vnc_display_is_read_from_the_running_domain() -> None:
    defined = domxml.windows_domain_xml(_spec())
    assert vnc_display(defined) is None  # autoport: no port until it runs
    live = defined.replace('port="-1"', 'port="5901"')
    assert vnc_display(live) == "127.0.0.1:5901"
    assert vnc_display(domxml.domain_xml(_spec())) is None  # Linux: no VNC


@pytest.mark.parametrize("controller", ["scsi", "nvme"])
def test_a_reimage_keeps_the_os_disks_controller(controller: str) -> None:
    before = domxml.domain_xml(_spec(disk_controller=controller, provenance=PROV))
    after = domxml.with_os_disk(
        before, Path("/p/web-0.os1.qcow2"), (Backing(Path(NEW_REPLICA)),), PROV
    )
    root = ET.fromstring(after)
    disk = root.find("./devices/disk")
    assert disk is not None and disk.find("source").get("file") == "/p/web-0.os1.qcow2"  # type: ignore[union-attr]
    assert _os_disk_target(root) == _os_disk_target(ET.fromstring(before))
    assert ("override" in after) == (controller == "nvme")
