"""Density (issue 18 item 3): `memory: {merge: true}` in regions.yaml, the domain's
<nosharepages/> unless a region opts in, and what `doctor` says about KSM (a fake sysfs)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import libvirt
import pytest

from sigvirt.errors import ConfigError
from sigvirt.guests import domxml, guest
from sigvirt.guests.domxml import DomainSpec
from sigvirt.guests.guest import GuestSpec, PortAllocator
from sigvirt.hosts import doctor, ksm
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import RegionsConfig, parse, with_region
from tests.support.base import LabPool, SshKey, place_base, unique

REGION = "regions:\n  local:\n    uri: qemu:///system\n    pools: [a]\n"
ZONED = (
    "regions:\n"
    "  east:\n"
    "    pools: [a]\n"
    "    memory:\n"
    "      merge: true\n"
    "    zones:\n"
    "      '1':\n"
    "        uri: qemu:///system\n"
    "      '2':\n"
    "        uri: test:///default\n"
    "        memory: {merge: false}\n"
)


@pytest.mark.offline
def test_memory_merge_is_off_unless_a_region_opts_in() -> None:
    assert parse(REGION).region("local").memory_merge is False
    on = parse(REGION + "    memory:\n      merge: true\n")
    assert on.region("local").memory_merge is True
    assert parse(REGION + "    memory: {}\n").region("local").memory_merge is False


@pytest.mark.offline
def test_zones_inherit_their_regions_merge_and_may_turn_it_off() -> None:
    config = parse(ZONED)
    assert config.region("east/1").memory_merge is True
    assert config.region("east/2").memory_merge is False


@pytest.mark.offline
@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        pytest.param(
            "    memory:\n      merge: yes please\n",
            "regions.yaml:6: regions.local.memory.merge: must be true or false "
            "(got string 'yes please')",
            id="not-a-bool",
        ),
        pytest.param(
            "    memory:\n      merged: true\n",
            "regions.yaml:6: regions.local.memory: unknown key 'merged' (did you mean 'merge'?)",
            id="unknown-key",
        ),
        pytest.param(
            "    memory: true\n",
            "regions.yaml:5: regions.local.memory: must be a mapping (got boolean true)",
            id="not-a-mapping",
        ),
    ],
)
def test_bad_memory_settings_name_their_line(tail: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(REGION + tail)
    assert info.value.message == expected


@pytest.mark.offline
def test_merge_survives_writing_the_file_back() -> None:
    config = parse(ZONED)
    empty = RegionsConfig(None, config.gallery_root)
    back = with_region(empty, config.region("east"))
    assert back.region("east/1").memory_merge is True
    assert back.region("east/2").memory_merge is False
    solo = replace(parse(REGION).region("local"), memory_merge=True)
    assert with_region(empty, solo).region("local").memory_merge is True


def _spec(merge: bool) -> DomainSpec:
    return DomainSpec(
        name="dense-0", memory_mib=128, vcpus=1, disk=Path("/nonexistent/dense-0.qcow2"),
        memory_merge=merge,
    )  # fmt: skip


@pytest.mark.offline
def test_domain_forbids_sharing_its_pages_unless_merge_is_on() -> None:
    off = ET.fromstring(domxml.domain_xml(_spec(False)))
    assert off.find("./memoryBacking/nosharepages") is not None
    on = ET.fromstring(domxml.domain_xml(_spec(True)))
    assert on.find("./memoryBacking") is None
    windows = ET.fromstring(domxml.windows_domain_xml(_spec(False)))
    assert windows.find("./memoryBacking/nosharepages") is not None


def test_qemu_is_told_mem_merge_off_only_without_merge() -> None:
    """libvirt's own translation of the two forms into QEMU's command line (no guest runs)."""
    conn = libvirt.open("qemu:///system")
    try:
        off = conn.domainXMLToNative("qemu-argv", domxml.domain_xml(_spec(False)), 0)
        on = conn.domainXMLToNative("qemu-argv", domxml.domain_xml(_spec(True)), 0)
    finally:
        conn.close()
    assert "mem-merge=off" in off
    assert "mem-merge" not in on  # QEMU's default: guest RAM madvise()d MADV_MERGEABLE


def _ram_flags(name: str, mib: int) -> list[str]:
    """VmFlags of the running guest's RAM mapping in its QEMU (the anonymous `mib` MiB)."""
    pid = Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip()
    size, found = 0, []
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0]:
            low, high = (int(x, 16) for x in head[0].split("-"))
            size = (high - low) >> 20
        elif line.startswith("VmFlags:") and size == mib:
            found.append(head[1:])
    assert len(found) == 1, found
    return found[0]


@pytest.mark.guest
def test_only_a_merging_regions_guest_ram_is_offered_to_ksm(
    system_hv: Hypervisor, lab_pool: LabPool, tiny_image: Path, ssh_key: SshKey
) -> None:
    """QEMU madvise()s guest RAM MADV_MERGEABLE ("mg" in VmFlags) only with merge on. The
    guests are started, not waited for: QEMU maps the RAM before the guest runs."""
    base = place_base(system_hv, lab_pool, tiny_image, unique("dense-base.qcow2"))
    names = {True: unique("merge"), False: unique("nomerge")}
    try:
        for merge, name in names.items():
            spec = GuestSpec(
                name=name, pool=lab_pool.name, base=base, admin_user="labuser",
                ssh_public_keys=(ssh_key.public,), memory_mib=144, memory_merge=merge,
            )  # fmt: skip
            guest.create(system_hv, spec, ssh_key.private, ports=PortAllocator(), wait=False)
        assert "mg" in _ram_flags(names[True], 144)
        assert "mg" not in _ram_flags(names[False], 144)
    finally:
        for name in names.values():
            guest.delete(system_hv, name)
        system_hv.delete_volume(lab_pool.name, base.name)


def _sysfs(root: Path, **values: int) -> Path:
    root.mkdir()
    defaults = {"run": 0, "pages_shared": 0, "pages_sharing": 0, "full_scans": 0,
                "sleep_millisecs": 20, "pages_to_scan": 100}  # fmt: skip
    for name, value in {**defaults, **values}.items():
        (root / name).write_text(f"{value}\n")
    return root


@pytest.mark.offline
def test_doctor_says_how_to_start_ksm_when_it_is_stopped(tmp_path: Path) -> None:
    root = _sysfs(tmp_path / "ksm")
    check = doctor.check_ksm(root)
    assert check.status == "warn"
    assert check.detail == (
        "stopped: 0 MiB saved (pages_sharing 0, pages_shared 0), 0 scans; memory.merge needs it"
    )
    assert check.fix == f"echo 1 > {root}/run"


@pytest.mark.offline
def test_doctor_reports_what_running_ksm_saves(tmp_path: Path) -> None:
    pages = 25600 * 4096 // ksm.read(_sysfs(tmp_path / "probe")).page_size  # 100 MiB
    root = _sysfs(tmp_path / "ksm", run=1, pages_shared=1234, pages_sharing=pages, full_scans=7)
    check = doctor.check_ksm(root)
    assert (check.status, check.fix) == ("ok", "")
    assert check.detail == (
        f"running: 100 MiB saved (pages_sharing {pages}, pages_shared 1234), 7 scans"
    )


@pytest.mark.offline
def test_doctor_warns_when_the_kernel_has_no_ksm(tmp_path: Path) -> None:
    check = doctor.check_ksm(tmp_path / "absent")
    assert check.status == "warn" and "memory.merge saves nothing" in check.detail


@pytest.mark.offline
def test_an_unreadable_counter_reads_as_zero(tmp_path: Path) -> None:
    root = _sysfs(tmp_path / "ksm", run=1, pages_sharing=9)
    (root / "pages_sharing").write_text("garbage\n")
    state = ksm.read(root)
    assert state.available and state.running and state.pages_sharing == 0
