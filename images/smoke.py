"""Boot-test a guest image the way sigvirt uses it: a qcow2 overlay on top of IMAGE plus a
cloud-init NoCloud seed, under plain QEMU/TCG with slirp port forwarding on 127.0.0.1.

    /opt/sigvirt/venv/bin/python images/smoke.py IMAGE [uefi] [--runs N] [--mem MiB]
        [--timeout S] [--seed iso|vfat|none] [--runcmd CMD] [--exec CMD] [--powerdown] [--keep]

Checks, over SSH as the seed's user `labuser` (throwaway ed25519 key): hostname equals the
seed's local-hostname, the seed's runcmd ran, a 10 MiB write grows the overlay while the base
image stays byte-identical. Prints the time from QEMU start to the READY console marker and to
the first successful SSH command. With --seed none only the READY marker is awaited.
With --powerdown, an ACPI power button press (QEMU system_powerdown, as `virsh shutdown`)
must make the guest power off. Exit status 0 only if every run passed.
Needs paramiko and pycdlib (the sigvirt venv has both), qemu-system-x86_64, qemu-img, and for
--seed vfat mkfs.fat + mcopy.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paramiko
import pycdlib
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
READY = re.compile(rb"SIGVIRT-GUEST-READY(?: ([0-9.]+))?")


def make_key() -> tuple[paramiko.PKey, str]:
    priv = Ed25519PrivateKey.generate()
    pem = priv.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    pub = priv.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return paramiko.Ed25519Key.from_private_key(
        io.StringIO(pem.decode())
    ), pub.decode() + " smoke@sigvirt"


def make_seed_iso(path: Path, files: dict[str, str]) -> None:
    """ISO9660 volume "cidata" with Rock Ridge and Joliet names (as the sigvirt lead builds it)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident="cidata", joliet=3, rock_ridge="1.09")
    for i, (name, text) in enumerate(files.items()):
        data = text.encode()
        iso.add_fp(
            io.BytesIO(data), len(data), f"/FILE{i}.;1", rr_name=name, joliet_path="/" + name
        )
    iso.write(str(path))
    iso.close()


def make_seed_vfat(path: Path, files: dict[str, str]) -> None:
    """FAT volume labelled CIDATA, written with mtools (no mount)."""
    subprocess.run(
        ["mkfs.fat", "-n", "CIDATA", "-C", str(path), "2048"], check=True, stdout=subprocess.DEVNULL
    )
    for name, text in files.items():
        src = path.parent / name
        src.write_text(text)
        subprocess.run(
            ["mcopy", "-i", str(path), str(src), "::/" + name],
            check=True,
            env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def connect(port: int, key: paramiko.PKey, banner_timeout: float = 15) -> paramiko.SSHClient:
    """labuser@127.0.0.1:port with only `key` (a context manager: closes on exit)."""
    c = paramiko.SSHClient()
    c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        c.connect(
            "127.0.0.1",
            port=port,
            username="labuser",
            pkey=key,
            look_for_keys=False,
            allow_agent=False,
            timeout=5,
            banner_timeout=banner_timeout,
            auth_timeout=15,
        )
    except BaseException:
        c.close()
        raise
    return c


def ssh_run(
    port: int, key: paramiko.PKey, cmd: str, timeout: float = 60, banner_timeout: float = 15
) -> tuple[int, str, str]:
    with connect(port, key, banner_timeout) as c:
        _, out, err = c.exec_command(cmd, timeout=timeout)
        rc = out.channel.recv_exit_status()
        return rc, out.read().decode(errors="replace"), err.read().decode(errors="replace")


def sftp_ok(port: int, key: paramiko.PKey) -> tuple[bool, str]:
    try:
        with connect(port, key) as c, c.open_sftp() as sftp:
            with sftp.open("sftp-test", "w") as f:
                f.write("sftp works\n")
            with sftp.open("sftp-test") as f:
                data = f.read().decode()
        return data == "sftp works\n", data.strip()
    except Exception as e:
        return False, f"{type(e).__name__}: {e}"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def one_run(image: Path, a: argparse.Namespace, mem: int, timeout: float) -> bool:
    uefi = a.firmware == "uefi"
    work = Path(tempfile.mkdtemp(prefix="smoke.", dir="/var/tmp"))
    pid = None
    ok = False
    try:
        key, pub = make_key()
        name = "smoke-" + secrets.token_hex(3)
        runcmds = [f"echo runcmd-{name} > /var/tmp/smoke-runcmd", *a.runcmd]
        files = {
            "meta-data": f"instance-id: iid-{name}\nlocal-hostname: {name}\n",
            "user-data": "#cloud-config\n"
            "users:\n"
            "  - default\n"
            "  - name: labuser\n"
            "    shell: /bin/sh\n"
            "    sudo: ALL=(ALL) NOPASSWD:ALL\n"
            "    ssh_authorized_keys:\n"
            f"      - {pub}\n"
            "runcmd:\n" + "".join(f"  - {json.dumps(c)}\n" for c in runcmds),  # JSON string = YAML
        }
        seed: Path | None = None
        if a.seed == "iso":
            seed = work / "seed.iso"
            make_seed_iso(seed, files)
        elif a.seed == "vfat":
            seed = work / "seed.img"
            make_seed_vfat(seed, files)
        overlay = work / "overlay.qcow2"
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                str(image.resolve()),
                str(overlay),
            ],
            check=True,
        )
        base_sum = sha256(image)
        port = free_port()
        serial = work / "serial.log"
        cmd = [
            "qemu-system-x86_64",
            "-machine",
            "q35,accel=tcg",
            "-smp",
            "1",
            "-m",
            str(mem),
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            f"file:{serial}",
            "-monitor",
            f"unix:{work / 'monitor.sock'},server=on,wait=off",
            "-drive",
            f"file={overlay},if=none,id=d0,format=qcow2",
            "-device",
            "virtio-blk-pci,drive=d0,bootindex=0",
            "-netdev",
            f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device",
            "virtio-net-pci,netdev=n0,romfile=",
            "-device",
            "virtio-rng-pci",
            "-pidfile",
            str(work / "qemu.pid"),
            "-daemonize",
        ]
        if seed:
            cmd += [
                "-drive",
                f"file={seed},if=none,id=d1,format=raw,readonly=on",
                "-device",
                "virtio-blk-pci,drive=d1",
            ]
        if uefi:
            shutil.copy(OVMF_VARS, work / "vars.fd")
            cmd += [
                "-drive",
                f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive",
                f"if=pflash,format=raw,unit=1,file={work / 'vars.fd'}",
            ]
        t0 = time.monotonic()
        subprocess.run(cmd, check=True)
        pid = int((work / "qemu.pid").read_text().strip())

        # the console is watched by a thread so that the READY time is not skewed by SSH
        # attempts (slirp accepts the TCP connection before the guest listens; paramiko then
        # waits for a banner)
        ready: dict[str, float | str] = {}

        def watch() -> None:
            while time.monotonic() < t0 + timeout:
                if serial.exists():
                    m = READY.search(serial.read_bytes())
                    if m:
                        ready["t"] = time.monotonic() - t0
                        ready["uptime"] = m.group(1).decode() if m.group(1) else "?"
                        return
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t_ssh = None
        last_err = ""
        deadline = t0 + timeout
        while seed and time.monotonic() < deadline and t_ssh is None:
            try:
                # short banner timeout while polling: slirp accepts connections before the
                # guest listens, and such a connection never sees a banner
                rc, out, _ = ssh_run(port, key, "true", timeout=20, banner_timeout=1.0)
                if rc == 0:
                    t_ssh = time.monotonic() - t0
                    break
            except Exception as e:
                last_err = f"{type(e).__name__}: {e}"
            time.sleep(0.2)
        watcher.join(timeout=max(0.0, deadline - time.monotonic()))
        t_ready = ready.get("t")
        if t_ready is None or (seed and t_ssh is None):
            print(
                f"FAIL: not ready within {timeout:.0f} s (ready marker: {t_ready}, "
                f"ssh: {t_ssh}, last: {last_err})"
            )
            return False

        checks = []
        if seed:
            rc, out, err = ssh_run(port, key, "hostname; cat /var/tmp/smoke-runcmd; id -un")
            lines = out.split()
            checks.append(("hostname", lines[:1] == [name], lines[:1]))
            checks.append(("runcmd", f"runcmd-{name}" in lines, lines[1:2]))
            checks.append(("user", lines[-1:] == ["labuser"], lines[-1:]))
            before = overlay.stat().st_size
            rc, out, err = ssh_run(
                port,
                key,
                "dd if=/dev/urandom of=$HOME/big bs=1M count=10 2>/dev/null && sync"
                " && ls -l $HOME/big",
            )
            time.sleep(0.5)
            after = overlay.stat().st_size
            checks.append(("write 10 MiB", rc == 0, (out + err).strip()))
            checks.append(("sftp", *sftp_ok(port, key)))
            checks.append(
                (
                    "overlay grew >= 10 MiB",
                    after - before >= 10 * 1024 * 1024,
                    f"{before} -> {after}",
                )
            )
            for x in a.extra:
                rc, out, err = ssh_run(port, key, x)
                print(
                    f"  $ {x}  (exit {rc})\n"
                    + "\n".join("    " + ln for ln in (out + err).splitlines())
                )
        if a.powerdown:
            t1 = time.monotonic()
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(work / "monitor.sock"))
                s.sendall(b"system_powerdown\n")
                time.sleep(0.5)
            while alive(pid) and time.monotonic() - t1 < 120:
                time.sleep(0.2)
            down = not alive(pid)
            checks.append(("ACPI power button -> poweroff", down, f"{time.monotonic() - t1:.1f} s"))
        checks.append(("base unchanged", sha256(image) == base_sum, base_sum[:16]))
        text = serial.read_bytes().decode(errors="replace")
        markers = [
            ln.strip()
            for ln in text.splitlines()
            if "sigvirt-tiny:" in ln or "SIGVIRT-GUEST-READY" in ln
        ]
        ok = all(c[1] for c in checks)
        for c in checks:
            print(f"  {'ok ' if c[1] else 'BAD'} {c[0]}: {c[2]}")
        for m in markers:
            print(f"  console: {m}")
        ssh_txt = f", SSH {t_ssh:.2f} s" if t_ssh is not None else ""
        print(
            f"{'PASS' if ok else 'FAIL'} {image.name} {a.firmware} seed={a.seed} mem={mem}: "
            f"READY marker {t_ready:.2f} s (guest uptime {ready.get('uptime')} s){ssh_txt}"
        )
        return ok
    finally:
        if pid and alive(pid):
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        if not ok and (work / "serial.log").exists():
            print("---- serial log (tail) ----")
            print(
                "\n".join(
                    (work / "serial.log").read_bytes().decode(errors="replace").splitlines()[-40:]
                )
            )
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("image", type=Path)
    ap.add_argument("firmware", nargs="?", choices=["bios", "uefi"], default="bios")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument(
        "--mem",
        type=int,
        default=0,
        help="MiB (default: small images 128, 192 with uefi; else 512)",
    )
    ap.add_argument(
        "--timeout", type=float, default=0, help="seconds (default 90 for small images, else 400)"
    )
    ap.add_argument("--seed", choices=["iso", "vfat", "none"], default="iso")
    ap.add_argument(
        "--runcmd",
        action="append",
        default=[],
        metavar="CMD",
        help="extra runcmd entry (repeatable)",
    )
    ap.add_argument(
        "--exec",
        dest="extra",
        action="append",
        default=[],
        metavar="CMD",
        help="also run CMD as labuser and print its output (repeatable)",
    )
    ap.add_argument("--powerdown", action="store_true", help="finally press the ACPI power button")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args()
    if not a.image.is_file():
        ap.error(f"{a.image}: no such file")
    small = a.image.stat().st_size < 100 * 1024 * 1024
    # the tiny image needs >= 160 MiB under OVMF (its 14 MB kernel wants 51 MiB to unpack)
    mem = a.mem or ((192 if a.firmware == "uefi" else 128) if small else 512)
    timeout = a.timeout or (90 if small else 400)
    results = [one_run(a.image, a, mem, timeout) for _ in range(a.runs)]
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
