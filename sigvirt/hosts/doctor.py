"""Host checks: is this machine ready to run sigvirt guests, and what fixes it if not."""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sigvirt.errors import SigvirtError
from sigvirt.hosts import arches, ksm, recipes
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regioncheck import LOW_SPACE, Status
from sigvirt.runner import Runner


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def _daemon_fix(unit: str, binary: str) -> str:
    if Path("/run/systemd/system").is_dir():
        return f"systemctl start {unit}"
    return f"{binary} -d"


def check_libvirtd(uri: str) -> tuple[Check, Hypervisor | None]:
    try:
        hv = Hypervisor.open(uri)
    except SigvirtError as err:
        fix = err.hint or _daemon_fix("libvirtd", "libvirtd")
        return Check("libvirtd", "fail", err.message, fix), None
    return Check("libvirtd", "ok", f"{uri} answers (libvirt {hv.libvirt_version()})"), hv


def check_virtlogd() -> Check:
    sock = Path("/run/libvirt/virtlogd-sock")
    if sock.is_socket():
        return Check("virtlogd", "ok", f"{sock} present")
    return Check(
        "virtlogd",
        "fail",
        "virtlogd is not running: guests fail to start",
        _daemon_fix("virtlogd", "virtlogd"),
    )


def check_dev_kvm(path: Path = Path("/dev/kvm")) -> Check:
    if not path.exists():
        return Check(
            "/dev/kvm", "warn", "absent: guests run under TCG (slow)", "load kvm_intel or kvm_amd"
        )
    st = path.stat()
    mode = stat.S_IMODE(st.st_mode)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    if group == "kvm" and mode & 0o060 == 0o060:
        return Check("/dev/kvm", "ok", f"root:{group} {mode:04o}")
    return Check(
        "/dev/kvm",
        "fail",
        f"{group} {mode:04o}: libvirt re-probes QEMU on every call (defines take ~1 min)",
        "chgrp kvm /dev/kvm && chmod 0660 /dev/kvm",
    )


def check_accel(hv: Hypervisor | None) -> Check:
    if hv is None:
        return Check("accelerator", "warn", "unknown (libvirtd not reachable)")
    if hv.kvm_usable():
        return Check("accelerator", "ok", "KVM: hardware virtualization available")
    return Check(
        "accelerator",
        "warn",
        "TCG fallback: no usable KVM (no vmx/svm in the host CPU, or libvirt offers no kvm)",
        "enable VT-x/AMD-V (or nested virtualization) for this host",
    )


def check_arm64(hv: Hypervisor | None) -> Check:
    """Can this host boot --architecture Arm64 guests (emulator and AAVMF firmware)?"""
    if hv is None:
        return Check("Arm64 guests", "warn", "unknown (libvirtd not reachable)")
    found = arches.support(hv, "Arm64")
    if found.problem:
        return Check(
            "Arm64 guests", "warn", f"{found.problem}: x64 guests only",
            "apt-get install " + " ".join(arches.PACKAGES["Arm64"]),
        )  # fmt: skip
    firmware = next((f for f in found.loaders if "CODE.fd" in f), found.loaders[0])
    return Check("Arm64 guests", "ok", f"{found.emulator}, {firmware} ({found.accel.upper()})")


FIRMWARE_DIRS = (Path("/etc/qemu/firmware"), Path("/usr/share/qemu/firmware"))
SWTPM_CA = Path("/var/lib/swtpm-localca")
QEMU_CONF = Path("/etc/libvirt/qemu.conf")


def secure_boot_firmware(dirs: tuple[Path, ...] = FIRMWARE_DIRS) -> Path | None:
    """The x86_64 firmware libvirt's auto-selection gives a Trusted Launch domain (secure-boot
    with enrolled-keys, domxml.py): the code file of the first descriptor that offers both
    and is there. Descriptors are QEMU's firmware interop JSON (docs/interop/firmware.json)."""
    for d in dirs:
        for f in sorted(d.glob("*.json")) if d.is_dir() else ():
            try:
                doc = json.loads(f.read_text())
                code = Path(doc["mapping"]["executable"]["filename"])
                arches = {t["architecture"] for t in doc["targets"]}
                features = set(doc["features"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a descriptor we can read: libvirt skips it too
            wanted = {"secure-boot", "enrolled-keys"} <= features and "x86_64" in arches
            if wanted and code.is_file():
                return code
    return None


def swtpm_uid(conf: Path = QEMU_CONF) -> int:
    """The user libvirt runs swtpm as: qemu.conf's swtpm_user, else tss where it exists."""
    name = "tss"
    try:
        found = re.search(r'^\s*swtpm_user\s*=\s*"([^"]+)"', conf.read_text(), re.M)
        name = found[1] if found else name
    except OSError:
        pass
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return 0


def check_trusted_launch(
    dirs: tuple[Path, ...] = FIRMWARE_DIRS, ca: Path = SWTPM_CA, uid: int | None = None
) -> Check:
    """Can TrustedLaunch definitions boot here: swtpm, Secure Boot firmware with Microsoft's
    keys, and swtpm's local CA owned by the user swtpm runs as (a CA first made by root
    locks `tss` out and every vTPM start fails)."""
    missing = [b for b in ("swtpm", "swtpm_setup") if not shutil.which(b)]
    code = secure_boot_firmware(dirs)
    if missing or code is None:
        what = ", ".join([*missing, *([] if code else ["Secure Boot firmware with MS keys"])])
        return Check(
            "Trusted Launch", "warn", f"missing {what}: TrustedLaunch definitions can't boot",
            "apt-get install --no-install-recommends swtpm swtpm-tools ovmf",
        )  # fmt: skip
    want = swtpm_uid() if uid is None else uid
    try:
        owner = ca.stat().st_uid
    except FileNotFoundError:
        owner = want  # made on the first vTPM start, by the user swtpm runs as
    if owner != want:
        return Check(
            "Trusted Launch", "warn",
            f"{ca} belongs to uid {owner}, swtpm runs as uid {want}: vTPM starts fail",
            f"chown -R {want}:root {ca}",
        )  # fmt: skip
    return Check("Trusted Launch", "ok", f"swtpm, {code}")


def check_qemu_img(runner: Runner) -> Check:
    if not shutil.which("qemu-img"):
        return Check("qemu-img", "fail", "not installed", "apt-get install qemu-utils")
    out = runner.run(["qemu-img", "--version"]).stdout
    m = re.search(r"version (\d+)\.(\d+)", out)
    if not m or (int(m[1]), int(m[2])) < (6, 0):
        return Check(
            "qemu-img", "fail", f"too old: {out.splitlines()[0]}", "apt-get install qemu-utils"
        )
    return Check("qemu-img", "ok", out.splitlines()[0])


def check_image_cache(cache: Path = recipes.DEFAULT_CACHE) -> list[Check]:
    checks = []
    root = recipes.recipes_dir()
    for script in sorted(root.glob("*/build.sh")):
        r = recipes.recipe(script.parent.name, root)
        path = recipes.cached_path(r, cache)
        if path.exists():
            checks.append(
                Check(f"image {r.name}", "ok", f"{path} ({path.stat().st_size >> 20} MiB)")
            )
        else:
            checks.append(
                Check(
                    f"image {r.name}",
                    "warn",
                    "not built for the current recipe",
                    f"sigvirt image build {r.name}",
                )
            )
    return checks


def check_ksm(root: Path = ksm.SYSFS) -> Check:
    """KSM, which regions with `memory: {merge: true}` rely on: there? running? saving what?
    Never a failure: without it guests just don't share memory."""
    state = ksm.read(root)
    if not state.available:
        return Check(
            "KSM", "warn", f"not in this kernel ({root} absent): memory.merge saves nothing",
            "a kernel built with CONFIG_KSM",
        )  # fmt: skip
    detail = (
        f"{state.run_state}: {state.saved_mib:.0f} MiB saved (pages_sharing "
        f"{state.pages_sharing}, pages_shared {state.pages_shared}), {state.full_scans} scans"
    )
    if state.running:
        return Check("KSM", "ok", detail)
    return Check("KSM", "warn", f"{detail}; memory.merge needs it", ksm.turn_on_hint(root))


def check_free_space(paths: list[Path]) -> list[Check]:
    checks = []
    for path in paths:
        probe = path
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        status: Status = "ok" if free >= LOW_SPACE else "fail"
        fix = "" if status == "ok" else f"free space on the filesystem of {probe}"
        checks.append(Check(f"free space {path}", status, f"{free / (1 << 30):.1f} GiB free", fix))
    return checks


def run_checks(uri: str, runner: Runner, paths: list[Path]) -> list[Check]:
    libvirtd, hv = check_libvirtd(uri)
    steps: list[Callable[[], Check | list[Check]]] = [
        check_virtlogd,
        check_dev_kvm,
        lambda: check_accel(hv),
        lambda: check_arm64(hv),
        check_trusted_launch,
        lambda: check_qemu_img(runner),
        check_ksm,
        check_image_cache,
        lambda: check_free_space(paths),
    ]
    checks = [libvirtd]
    try:
        for step in steps:
            got = step()
            checks.extend(got if isinstance(got, list) else [got])
    finally:
        if hv is not None:
            hv.close()
    if os.geteuid() != 0:
        checks.append(Check("user", "ok", f"running as uid {os.geteuid()} (sharing rules apply)"))
    return checks
