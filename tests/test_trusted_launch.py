"""Trusted Launch (issue 17 item 2): SecurityType=TrustedLaunch gives a VM Secure Boot firmware
with Microsoft's keys enrolled (SMM) and a vTPM 2.0 (swtpm), both removed with the VM.

Real guests: the Secure Boot Debian variant (images/debian-sb: shim → signed GRUB → signed
kernel) boots with Secure Boot on and sees its TPM; the tiny image's unsigned UKI is refused by
the firmware, and the boot fails at once with the console tail instead of waiting for SSH.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import testinfra

from sigvirt.catalog.records import Definition
from sigvirt.cli import main
from sigvirt.errors import ExitCode, InvalidArgument, Unsupported
from sigvirt.guests import devices, domxml, guest
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import Network
from tests.support.base import PREFIX, SshKey, _built, unique
from tests.test_domxml import _check, _spec

G, SB, TINY = "tlGallery", "debianSecureBoot", "tinyTrusted"
SWTPM_DIR = Path("/var/lib/libvirt/swtpm")
DEF = Definition("g", "d", "p", "o", "s", hyper_v_generation="V2")


# -- offline -------------------------------------------------------------------------------------
@pytest.mark.offline
def test_trusted_launch_domain_xml_matches_expected_file() -> None:
    _check("domain-tcg-uefi-sb-tpm", domxml.domain_xml(_spec(firmware="uefi", trusted_launch=True)))


@pytest.mark.offline
def test_security_type_decides_trusted_launch_and_refusals() -> None:
    def tl(feature: str, asked: str | None = None, base: Definition = DEF) -> bool:
        d = replace(base, features={"SecurityType": feature} if feature else {})
        return devices.choose(d, None, 1, Network(), asked).trusted_launch

    assert tl("TrustedLaunch") and tl("TrustedLaunch", "trustedlaunch")
    assert not tl("TrustedLaunchSupported") and tl("TrustedLaunchSupported", "TrustedLaunch")
    assert not tl("") and not tl("", "Standard")
    assert tl("TrustedLaunchAndConfidentialVmSupported", "TrustedLaunch")
    for feature, asked, line in (
        ("", "TrustedLaunch", "doesn't support it (its SecurityType is Standard)"),
        ("TrustedLaunch", "Standard", "requires TrustedLaunch"),
        ("TrustedLaunch", "ConfidentialVM", "expected Standard or TrustedLaunch"),
    ):
        with pytest.raises(InvalidArgument, match=re.escape(line)):
            tl(feature, asked)
    for base in (replace(DEF, hyper_v_generation="V1"), replace(DEF, architecture="Arm64")):
        with pytest.raises(InvalidArgument, match=r"needs a V2 \(UEFI\) x64 image definition"):
            tl("TrustedLaunch", base=base)
    with pytest.raises(Unsupported, match="no confidential guests"):
        tl("ConfidentialVM")


@pytest.mark.offline
def test_azs_uefi_flags_mean_trusted_launch_with_both_on() -> None:
    ask = devices.security_asked
    assert ask(None) is None and ask("Standard") == "Standard"
    assert ask(None, True, None) == ask("trustedlaunch", True, True) == "TrustedLaunch"
    for args, line in (
        (("TrustedLaunch", False, None), "--enable-secure-boot false: sigvirt's Trusted Launch"),
        ((None, True, False), "--enable-vtpm false"),
        (("Standard", None, True), "--enable-vtpm can only be used with --security-type Trus"),
    ):
        with pytest.raises(InvalidArgument, match=re.escape(line)):
            ask(*args)


@pytest.mark.offline
def test_firmware_refusal_lines_are_recognised() -> None:
    ovmf = 'BdsDxe: failed to load Boot0001 "UEFI Misc Device" from PciRoot(0x0): Access Denied'
    assert guest.firmware_refusal(f"BdsDxe: loading Boot0001\n{ovmf}\n") == ovmf
    assert "Security Violation" in guest.firmware_refusal(
        "Verification failed: (0x1A) Security Violation"
    )
    assert guest.firmware_refusal("[    0.000000] Linux version 6.1\nlogin:") == ""


# -- real guests ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lab:
    root: Path
    key: SshKey


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def lab(scratch: Path, system_hv: Hypervisor, tiny_image: Path, ssh_key: SshKey) -> Iterator[Lab]:
    """Two TrustedLaunch definitions: the Secure Boot Debian variant (built once through the
    recipe cache) and the tiny image (an unsigned UKI)."""
    debian_sb = _built("debian-sb")
    root = scratch / "tl"
    root.mkdir()
    pool = unique("tl")
    (root / "regions.yaml").write_text(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n"
        f"      - name: {pool}\n        path: {root}/pool\n"
        "    network:\n      type: user-forward\n      ports: 23150-23169\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGVIRT_REGIONS", str(root / "regions.yaml"))
        mp.setenv("SIGVIRT_GALLERY_ROOT", str(root / "galleries"))
        try:
            assert main(["sig", "create", "-r", G]) == 0
            for name, image in ((SB, debian_sb), (TINY, tiny_image)):
                assert main(["sig", "image-definition", "create", "-r", G, "-i", name,
                             "-p", "sv", "-f", "tl", "-s", name, "--hyper-v-generation", "V2",
                             "--features", "SecurityType=TrustedLaunch"]) == 0  # fmt: skip
                assert main(["sig", "image-version", "create", "-r", G, "-i", name, "-e",
                             "1.0.0", "--source", str(image), "-o", "none"]) == 0  # fmt: skip
            yield Lab(root, ssh_key)
        finally:
            for dom in system_hv.domains():
                if dom.name.startswith(PREFIX + "-tl"):
                    main(["vm", "delete", "-n", dom.name, "--yes"])
            for name in (SB, TINY):
                main(["sig", "image-version", "delete", "-r", G, "-i", name, "-e", "1.0.0"])
            system_hv.delete_pool(pool)
            shutil.rmtree(root, ignore_errors=True)


def _use(monkeypatch: pytest.MonkeyPatch, lab: Lab) -> None:
    monkeypatch.setenv("SIGVIRT_REGIONS", str(lab.root / "regions.yaml"))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(lab.root / "galleries"))


def _state(hv: Hypervisor, name: str) -> tuple[Path, Path]:
    """The domain's NVRAM file and swtpm state directory."""
    xml = ET.fromstring(hv.domain(name).xml())
    nvram = xml.findtext("./os/nvram") or "/nonexistent"
    return Path(nvram), SWTPM_DIR / (xml.findtext("uuid") or "nonexistent")


@pytest.mark.guest
def test_secure_boot_debian_boots_with_secure_boot_and_a_tpm_both_gone_after_delete(
    lab: Lab, capsys: pytest.CaptureFixture[str], system_hv: Hypervisor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    _use(monkeypatch, lab)
    name = unique("tl-sb")
    code, out, err = _run(capsys, "vm", "create", "-n", name, "--image", f"{G}/{SB}",
                          "--memory", "512", "--ssh-key-value", f"{lab.key.private}.pub",
                          "--security-type", "TrustedLaunch", "--enable-secure-boot", "true",
                          "--enable-vtpm", "true", "-o", "json")  # fmt: skip
    assert code == 0, err
    vm: dict[str, Any] = json.loads(out)
    on = {"secureBootEnabled": True, "vTpmEnabled": True}
    assert vm["securityProfile"] == {"securityType": "TrustedLaunch", "uefiSettings": on}
    xml = ET.fromstring(system_hv.domain(name).xml())
    assert (xml.findtext("./os/loader") or "").endswith("OVMF_CODE_4M.ms.fd")
    assert xml.find("./features/smm[@state='on']") is not None
    nvram, tpm_state = _state(system_hv, name)
    assert nvram.is_file() and tpm_state.is_dir(), (nvram, tpm_state)
    user = vm["osProfile"]["adminUsername"]
    host = testinfra.get_host(
        f"paramiko://{user}@{vm['sigvirt']['address']}", ssh_identity_file=str(lab.key.private)
    )
    assert "SecureBoot enabled" in host.check_output("mokutil --sb-state")
    assert host.run("test -c /dev/tpm0 || test -c /dev/tpmrm0").rc == 0
    assert _run(capsys, "vm", "delete", "-n", name, "--yes")[0] == 0
    assert not nvram.exists() and not tpm_state.exists()


@pytest.mark.guest
def test_an_unsigned_image_is_refused_by_secure_boot_fast_with_the_console_tail(
    lab: Lab, capsys: pytest.CaptureFixture[str], system_hv: Hypervisor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    _use(monkeypatch, lab)
    name = unique("tl-tiny")
    start = time.monotonic()
    code, _out, err = _run(capsys, "vm", "create", "-n", name, "--image", f"{G}/{TINY}",
                           "--ssh-key-value", f"{lab.key.private}.pub")  # fmt: skip
    took = time.monotonic() - start
    assert code == ExitCode.GUEST_FAILED, err
    assert "the firmware refused to boot the image" in err
    assert "last lines of the guest's serial console" in err
    assert "Access Denied" in err or "Security Violation" in err
    assert took < 120, took  # not the SSH timeout (300 s)
    assert name not in {d.name for d in system_hv.domains()}


@pytest.mark.guest
def test_a_scale_set_takes_azs_security_flags_and_refuses_before_anything_is_made(
    lab: Lab, capsys: pytest.CaptureFixture[str], system_hv: Hypervisor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """`vmss create` has vm create's --security-type, --enable-secure-boot and --enable-vtpm:
    what a TrustedLaunch image can't launch with is refused in one line, nothing made."""
    _use(monkeypatch, lab)
    name = unique("tl-ss")
    base = ["vmss", "create", "-n", name, "--image", f"{G}/{SB}", "--instance-count", "1",
            "--ssh-key-value", f"{lab.key.private}.pub"]  # fmt: skip
    refusals = [
        (["--security-type", "Standard"], "--security-type Standard: "),
        (["--enable-vtpm", "false"], "--enable-vtpm false: "),
        (["--security-type", "Standard", "--enable-secure-boot", "true"],
         "--enable-secure-boot can only be used with --security-type TrustedLaunch"),
        (["--security-type", "ConfidentialVM"], "--security-type ConfidentialVM: "),
    ]  # fmt: skip
    for extra, said in refusals:
        code, _out, err = _run(capsys, *base, *extra)
        assert code == ExitCode.INVALID_ARGUMENT, (extra, err)
        assert said in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert not [d for d in system_hv.domains() if d.name.startswith(name)]
    code, _out, err = _run(capsys, "vmss", "show", "-n", name)
    assert code == ExitCode.NOT_FOUND, err
