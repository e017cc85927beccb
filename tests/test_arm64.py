"""Arm64 guests (issue 17 item 1): an image definition with --architecture Arm64 boots its
versions with qemu-system-aarch64 (`virt`, AAVMF UEFI, TCG on this x86 host, PL011 console),
from the tiny image built from Debian's arm64 packages (images/tiny-arm64); a region that
can't run Arm64, or says it doesn't, refuses with one line."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import testinfra

from sigvirt.cli import main
from sigvirt.errors import ConfigError, ExitCode, Unsupported
from sigvirt.guests import domxml, guest
from sigvirt.hosts import arches, doctor, recipes, regioncheck, regions
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import RegionConfig
from sigvirt.runner import Runner
from tests.support.base import PREFIX, SshKey, unique
from tests.test_domxml import _check, _spec

G, D = "armGallery", "tinyArm"


# -- pure: the domain, regions.yaml, the refusal lines ------------------------------------------
@pytest.mark.offline
def test_aarch64_domain_xml_matches_expected_file() -> None:
    spec = domxml.aarch64_spec(_spec())
    text = domxml.domain_xml(spec)
    _check("domain-tcg-aarch64", text)
    root = ET.fromstring(text)
    assert root.find("./os/type").attrib == {"arch": "aarch64", "machine": "virt"}  # type: ignore[union-attr]
    assert root.find("./os").get("firmware") == "efi"  # type: ignore[union-attr]
    assert root.find("./features/apic") is None  # x86 only
    assert root.findtext("./cpu/model") == "cortex-a57"
    assert root.find("./devices/serial/target/model").get("name") == "pl011"  # type: ignore[union-attr]
    kvm = ET.fromstring(domxml.domain_xml(domxml.aarch64_spec(_spec(accel="kvm"))))
    assert kvm.find("./cpu").attrib == {"mode": "host-passthrough"}  # type: ignore[union-attr]


@pytest.mark.offline
def test_regions_yaml_declares_architectures(tmp_path: Path) -> None:
    path = tmp_path / "regions.yaml"
    path.write_text(
        "regions:\n"
        "  arm:\n    uri: qemu:///system\n    pools: [{name: p}]\n"
        "    architectures: [x64, Arm64, Arm64]\n"
        "  plain:\n    uri: qemu:///system\n    pools: [{name: q}]\n"
    )
    config = regions.load(path)
    assert config.region("arm").architectures == ("x64", "Arm64")
    assert config.region("plain").architectures == ()  # not declared: whatever the host runs
    assert regions.parse(regions.dump(config)).regions == config.regions  # dump keeps it
    path.write_text(
        "regions:\n  arm:\n    uri: qemu:///system\n    pools: [{name: p}]\n"
        "    architectures: [arm64]\n"
    )
    with pytest.raises(ConfigError) as err:
        regions.load(path)
    assert err.value.message == (
        f"{path}:5: regions.arm.architectures: must be one of x64, Arm64 (got 'arm64')"
    )


@pytest.mark.offline
def test_a_region_refuses_an_architecture_it_does_not_declare_or_cannot_run() -> None:
    x64_only = RegionConfig("east", "qemu:///system", (), architectures=("x64",))
    with pytest.raises(Unsupported) as err:
        arches.check_declared(x64_only, "Arm64")
    assert err.value.message == (
        "region east does not run --architecture Arm64 guests (regions.yaml architectures: x64)"
    )
    arches.check_declared(RegionConfig("any", "qemu:///system", ()), "Arm64")
    assert arches.ArchSupport("Arm64").problem == "no aarch64 emulator (install qemu-system-arm)"
    no_firmware = arches.ArchSupport("Arm64", "/usr/bin/qemu-system-aarch64")
    assert no_firmware.problem == "no UEFI firmware for aarch64 (install qemu-efi-aarch64)"
    # TCG for a foreign architecture whatever the region asks; KVM where the host has it
    assert arches.accel_for(no_firmware, "kvm") == "tcg"
    native = arches.ArchSupport("Arm64", "/usr/bin/qemu-system-aarch64", ("/a.fd",), kvm=True)
    assert (arches.accel_for(native, "auto"), arches.accel_for(native, "tcg")) == ("kvm", "tcg")


def test_this_host_runs_arm64_under_tcg(system_hv: Hypervisor) -> None:
    found = arches.support(system_hv, "Arm64")
    assert found.problem is None, found.problem
    assert found.emulator.endswith("qemu-system-aarch64")
    assert "/usr/share/AAVMF/AAVMF_CODE.fd" in found.loaders
    assert found.kvm is (system_hv.host_arch() == "aarch64")
    check = doctor.check_arm64(system_hv)
    assert (check.name, check.status) == ("Arm64 guests", "ok")
    assert "qemu-system-aarch64, /usr/share/AAVMF/AAVMF_CODE.fd" in check.detail
    region = RegionConfig("local", "qemu:///system", (), architectures=("x64", "Arm64"))
    row = regioncheck.check_region(region)
    assert row.architectures == f"x64 ({row.accel}), Arm64 ({found.accel})"


@pytest.mark.offline
def test_a_rebuilt_tiny_image_leaves_the_arm64_one_in_the_cache(tmp_path: Path) -> None:
    root, cache = tmp_path / "images", tmp_path / "cache"
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "build.sh").write_text('echo new > "$1"\n')
    cache.mkdir()
    old, arm = cache / "tiny-0123456789abcdef.qcow2", cache / "tiny-arm64-0123456789abcdef.qcow2"
    old.write_text("old")
    arm.write_text("arm")
    built = recipes.ensure_built(recipes.recipe("tiny", root), Runner(), cache)
    assert built.read_text() == "new\n"
    assert not old.exists() and arm.read_text() == "arm"


# -- real guests (the tiny arm64 image under TCG) -----------------------------------------------
@dataclass(frozen=True)
class Lab:
    root: Path
    pools: tuple[str, str]
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


def _regions(root: Path, pools: tuple[str, str], extra: str = "") -> str:
    return (
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n"
        + "".join(f"      - name: {p}\n        path: {root}/{p}\n" for p in pools)
        + "    network:\n      type: user-forward\n      ports: 23150-23179\n"
        + extra
    )


@pytest.fixture(scope="module")
def lab(
    scratch: Path, system_hv: Hypervisor, tiny_arm64_image: Path, ssh_key: SshKey
) -> Iterator[Lab]:
    """One Arm64 definition whose version has two replicas in the region (one per pool)."""
    root = scratch / "armlab"
    root.mkdir()
    pools = (unique("arm-a"), unique("arm-b"))
    (root / "regions.yaml").write_text(_regions(root, pools))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGVIRT_REGIONS", str(root / "regions.yaml"))
        mp.setenv("SIGVIRT_GALLERY_ROOT", str(root / "galleries"))
        try:
            assert main(["sig", "create", "-r", G]) == 0
            assert main(["sig", "image-definition", "create", "-r", G, "-i", D, "-p", "sv",
                         "-f", "tiny", "-s", "arm64", "--hyper-v-generation", "V2",
                         "--architecture", "Arm64"]) == 0  # fmt: skip
            assert main(["sig", "image-version", "create", "-r", G, "-i", D, "-e", "1.0.0",
                         "--source", str(tiny_arm64_image), "--target-regions", "local=2",
                         "-o", "none"]) == 0  # fmt: skip
            yield Lab(root, pools, ssh_key)
        finally:
            for dom in system_hv.domains():
                if dom.name.startswith(PREFIX + "-arm"):
                    main(["vm", "delete", "-n", dom.name, "--yes"])
            main(["sig", "image-version", "delete", "-r", G, "-i", D, "-e", "1.0.0"])
            for pool in pools:
                system_hv.delete_pool(pool)
            shutil.rmtree(root, ignore_errors=True)


def _use(monkeypatch: pytest.MonkeyPatch, lab: Lab, regions_file: str = "regions.yaml") -> None:
    monkeypatch.setenv("SIGVIRT_REGIONS", str(lab.root / regions_file))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(lab.root / "galleries"))


def _backing(hv: Hypervisor, name: str) -> str:
    prov = guest.provenance_of(hv.domain(name))
    assert prov is not None
    overlay = hv.volume_path(prov.overlay_pool, prov.overlay)
    info = Runner().run(["qemu-img", "info", "-U", "-f", "qcow2", "--output=json", str(overlay)])
    return str(json.loads(info.stdout)["backing-filename"])


@pytest.mark.guest
def test_an_arm64_scale_set_boots_aarch64_under_tcg_and_spreads_over_replicas(
    lab: Lab, capsys: pytest.CaptureFixture[str], system_hv: Hypervisor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Two instances (one boot per replica), both reached over SSH: `uname -m` is aarch64."""
    _use(monkeypatch, lab)
    name = unique("arm")
    made = _json(capsys, "vmss", "create", "-n", name, "--image", f"{G}/{D}",
                 "--instance-count", "2", "--vm-sku", "Lab_Small",
                 "--ssh-key-value", f"{lab.key.private}.pub")  # fmt: skip
    try:
        assert made["vmss"]["sigvirt"]["created"] == [f"{name}-0", f"{name}-1"]
        rows = _json(capsys, "vmss", "list-instances", "-n", name)
        spread = Counter(_backing(system_hv, r["name"]) for r in rows)
        assert sorted(spread.values()) == [1, 1], spread
        for r in rows:
            xml = ET.fromstring(system_hv.domain(r["name"]).xml())
            assert xml.find("./os/type").get("arch") == "aarch64"  # type: ignore[union-attr]
            loader = xml.findtext("./os/loader") or ""
            nvram = xml.findtext("./os/nvram") or ""
            assert loader.endswith("AAVMF_CODE.fd") and Path(nvram).is_file(), (loader, nvram)
            user = r["osProfile"]["adminUsername"]
            host = testinfra.get_host(
                f"paramiko://{user}@{r['sigvirt']['address']}",
                ssh_identity_file=str(lab.key.private),
            )
            assert host.check_output("uname -m") == "aarch64"
            assert host.check_output("cat /sys/class/tty/console/active") == "ttyAMA0"  # PL011
            assert host.check_output("hostname") == r["name"]
    finally:
        assert _run(capsys, "vmss", "delete", "-n", name, "--yes")[0] == 0
    assert not Path(nvram).exists()  # the per-VM firmware variables went with the VM


def test_vm_create_on_a_region_without_arm64_is_refused_before_anything_is_made(
    lab: Lab, capsys: pytest.CaptureFixture[str], system_hv: Hypervisor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    (lab.root / "x64.yaml").write_text(_regions(lab.root, lab.pools, "    architectures: [x64]\n"))
    _use(monkeypatch, lab, "x64.yaml")
    name = unique("arm-refused")
    before = sorted(v.name for p in lab.pools for v in system_hv.volumes(p))
    code, out, err = _run(capsys, "vm", "create", "-n", name, "--image", f"{G}/{D}",
                          "--generate-ssh-keys")  # fmt: skip
    assert (code, out) == (ExitCode.UNSUPPORTED, "")
    assert err.strip() == (
        "sigvirt: error: region local does not run --architecture Arm64 guests "
        "(regions.yaml architectures: x64)"
    )
    assert not system_hv.domain_exists(name)
    assert sorted(v.name for p in lab.pools for v in system_hv.volumes(p)) == before
