"""`sigvirt doctor`: each check against real host state, fixes printed, exit codes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from sigvirt.cli import main
from sigvirt.errors import ExitCode
from sigvirt.hosts import doctor


def test_dev_kvm_with_wrong_mode_fails_and_names_the_fix(tmp_path: Path) -> None:
    fake = tmp_path / "kvm"
    fake.write_text("")
    fake.chmod(0o600)
    check = doctor.check_dev_kvm(fake)
    assert check.status == "fail"
    assert check.fix == "chgrp kvm /dev/kvm && chmod 0660 /dev/kvm"
    assert "re-probes QEMU" in check.detail


def test_missing_dev_kvm_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    check = doctor.check_dev_kvm(tmp_path / "absent")
    assert check.status == "warn" and "TCG" in check.detail


def test_unreachable_libvirtd_fails_with_the_command_that_starts_it() -> None:
    check, hv = doctor.check_libvirtd("qemu+tcp://127.0.0.1:1/system")
    assert hv is None and check.status == "fail"
    assert check.fix in ("libvirtd -d", "systemctl start libvirtd")


def test_free_space_is_measured_on_the_nearest_existing_parent(tmp_path: Path) -> None:
    (check,) = doctor.check_free_space([tmp_path / "not" / "yet"])
    free = shutil.disk_usage(tmp_path).free / (1 << 30)
    assert check.name.endswith("not/yet")
    assert abs(float(check.detail.split()[0]) - free) < 0.5
    assert check.status == ("ok" if free >= 2 else "fail")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs the host's libvirtd")
def test_doctor_on_this_host_reports_accelerator_and_exits_by_failures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["doctor", "-o", "json"])
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"]: r for r in rows}
    assert names["libvirtd"]["status"] == "ok"
    assert names["accelerator"]["detail"].startswith(("KVM", "TCG"))
    failed = [r for r in rows if r["status"] == "fail"]
    assert code == (ExitCode.HOST_NOT_READY if failed else ExitCode.OK)
    assert all(r["fix"] for r in failed)


def _descriptor(d: Path, name: str, features: list[str], code: Path) -> None:
    doc = {
        "interface-types": ["uefi"],
        "mapping": {"device": "flash", "executable": {"filename": str(code), "format": "raw"}},
        "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
        "features": features,
    }
    (d / name).write_text(json.dumps(doc))


@pytest.mark.offline
def test_trusted_launch_needs_firmware_with_enrolled_keys(tmp_path: Path) -> None:
    code = tmp_path / "OVMF_CODE.ms.fd"
    code.write_bytes(b"\0")
    _descriptor(tmp_path, "50-secure.json", ["secure-boot", "requires-smm"], code)
    (tmp_path / "10-broken.json").write_text("{not json")
    assert doctor.secure_boot_firmware((tmp_path,)) is None
    _descriptor(tmp_path, "40-enrolled.json", ["secure-boot", "enrolled-keys"], tmp_path / "gone")
    assert doctor.secure_boot_firmware((tmp_path,)) is None  # its code file isn't there
    _descriptor(tmp_path, "41-enrolled.json", ["enrolled-keys", "secure-boot"], code)
    assert doctor.secure_boot_firmware((tmp_path / "none", tmp_path)) == code


@pytest.mark.offline
def test_a_swtpm_ca_owned_by_another_user_is_named_with_its_fix(tmp_path: Path) -> None:
    if not (shutil.which("swtpm") and doctor.secure_boot_firmware()):
        pytest.skip("swtpm or OVMF's MS-keys firmware is not installed here")
    ca = tmp_path / "swtpm-localca"
    ca.mkdir()
    me = os.geteuid()
    ok = doctor.check_trusted_launch(ca=ca, uid=me)
    assert ok.status == "ok" and "ms.fd" in ok.detail
    bad = doctor.check_trusted_launch(ca=ca, uid=me + 1)
    assert bad.status == "warn" and f"uid {me}" in bad.detail
    assert bad.fix == f"chown -R {me + 1}:root {ca}"
    none = doctor.check_trusted_launch(dirs=(tmp_path,), ca=ca, uid=me)
    assert none.status == "warn" and "Secure Boot firmware" in none.detail
