"""hostB, the second libvirt "host" of the lab (tools/lab-hostb.sh, tests/lab/hostb.py), works:
its own daemon over qemu+ssh and qemu+tcp, its own domains and pools, SSH exec in its mount
namespace, direct-tcpip forwarding, idempotent start, and a clean restart after a crash."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import paramiko
import pytest

from tests.support.hostb import STATE_PREFIX, HostB, lab_script, parse_env, running_hostb

pytestmark = pytest.mark.hostb

MAIN_URI = "qemu:///system"
BINDS = (
    "/etc/libvirt",
    "/run/libvirt",
    "/var/lib/libvirt",
    "/var/cache/libvirt",
    "/var/log/libvirt",
)


def tiny_domain_xml(name: str) -> str:
    """A diskless TCG domain: enough to define, and to start (SeaBIOS finds nothing to boot)."""
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <features><tcg><tb-cache unit='MiB'>8</tb-cache></tcg></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <memballoon model='none'/>
  </devices>
</domain>"""


@contextlib.contextmanager
def connect(uri: str) -> Iterator[libvirt.virConnect]:
    conn = libvirt.open(uri)
    try:
        yield conn
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


@contextlib.contextmanager
def ssh(hb: HostB) -> Iterator[paramiko.SSHClient]:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            "127.0.0.1",
            port=hb.ssh_port,
            username="root",
            pkey=paramiko.Ed25519Key.from_private_key_file(str(hb.key_path)),
            look_for_keys=False,
            allow_agent=False,
            timeout=10,
            banner_timeout=10,
            auth_timeout=10,
        )
        yield client
    finally:
        client.close()


def run(client: paramiko.SSHClient, command: str) -> tuple[int, str, str]:
    _, out, err = client.exec_command(command, timeout=30)
    rc = out.channel.recv_exit_status()
    return rc, out.read().decode(), err.read().decode()


def mountinfo_binds(text: str) -> dict[str, str]:
    """mount point -> root of the mounted fs (field 4), for the libvirt dirs."""
    res = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) > 4 and f[4] in BINDS:
            res[f[4]] = f[3]
    return res


def domain_names(uri: str) -> set[str]:
    with connect(uri) as c:
        return {d.name() for d in c.listAllDomains(0)}


def hostb_pids(state: Path) -> list[int]:
    """Live processes that see ``state/run`` at /run/libvirt: hostB's own (its libvirtd, sshd
    and sessions, and its QEMUs, which libvirt puts in private namespaces cloned from hostB's)."""
    st = (state / "run").stat()
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                o = (d / "root" / "run" / "libvirt").stat()
                if (o.st_dev, o.st_ino) == (st.st_dev, st.st_ino) and alive(int(d.name)):
                    pids.append(int(d.name))
    return pids


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not re.search(r"^State:\s*Z", status, re.M)


# ------------------------------------------------------------------------------------ tests


def test_answers_over_ssh_and_tcp(hostb: HostB) -> None:
    assert hostb.uri == (
        f"qemu+ssh://root@127.0.0.1:{hostb.ssh_port}/system?keyfile={hostb.key_path}&no_verify=1"
    )
    assert hostb.tcp_uri == f"qemu+tcp://127.0.0.1:{hostb.tcp_port}/system"
    assert hostb.key_path.is_file()
    assert hostb.state_dir.name.startswith(Path(STATE_PREFIX).name)
    for uri in (hostb.uri, hostb.tcp_uri):
        with connect(uri) as c:
            assert c.getLibVersion() >= 9_000_000
            assert c.getType() == "QEMU"
            assert c.isAlive() == 1
            c.listAllDomains(0)
    for uri in (hostb.uri, hostb.tcp_uri):  # virsh too (what lab-hostb.sh waits on)
        r = subprocess.run(
            ["virsh", "-c", uri, "version"], capture_output=True, text=True, timeout=30
        )
        assert r.returncode == 0, r.stderr
    # Both listeners are on loopback only.
    r = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True)
    for port in (hostb.ssh_port, hostb.tcp_port):
        local = [f[3] for f in map(str.split, r.stdout.splitlines()) if f[3].endswith(f":{port}")]
        assert local == [f"127.0.0.1:{port}"], local


def test_script_status_env_and_idempotent_start(hostb: HostB) -> None:
    r = hostb.script("status")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "answers" in r.stdout
    env = parse_env(hostb.script("env").stdout)
    assert env["SIGVIRT_HOSTB_URI"] == hostb.uri
    assert env["SIGVIRT_HOSTB_TCP_URI"] == hostb.tcp_uri
    assert env["SIGVIRT_HOSTB_KEY"] == str(hostb.key_path)
    assert env["SIGVIRT_HOSTB_SSH_PORT"] == str(hostb.ssh_port)
    pids = [(hostb.state_dir / f).read_text().strip() for f in ("libvirtd.pid", "sshd.pid")]
    r = hostb.script("start")  # ports come from the state dir
    assert r.returncode == 0, r.stderr
    assert parse_env(r.stdout)["SIGVIRT_HOSTB_URI"] == hostb.uri
    assert [(hostb.state_dir / f).read_text().strip() for f in ("libvirtd.pid", "sshd.pid")] == pids
    repo = Path(__file__).resolve().parents[1]
    assert subprocess.run(["bash", "-n", str(repo / "tools" / "lab-hostb.sh")]).returncode == 0


def test_lists_only_its_own_domains(hostb: HostB) -> None:
    name = hostb.domain_name("sigvirt-test-hostb")
    with connect(hostb.uri) as b:
        dom = b.defineXML(tiny_domain_xml(name))
        try:
            assert name in domain_names(hostb.uri)
            assert name in domain_names(hostb.tcp_uri)
            assert name not in domain_names(MAIN_URI)
            with connect(MAIN_URI) as a, pytest.raises(libvirt.libvirtError):
                a.lookupByName(name)
            # hostB's config dir really is its own: the definition is under the state dir.
            assert (hostb.state_dir / "etc" / "qemu" / f"{name}.xml").is_file()
            assert not Path(f"/etc/libvirt/qemu/{name}.xml").exists()
        finally:
            dom.undefine()
    assert name not in domain_names(hostb.tcp_uri)


def test_pool_stream_roundtrip(hostb: HostB) -> None:
    pool_name = hostb.domain_name("sigvirt-test-pool")
    path = hostb.pool(pool_name)
    assert path == hostb.state_dir / "pools" / pool_name
    assert path.is_dir()
    assert (path.stat().st_mode & 0o777) == 0o755
    data = os.urandom(3 * 1024 * 1024 + 4321)
    vol_name = "payload.raw"
    with connect(hostb.uri) as c:
        pool = c.storagePoolLookupByName(pool_name)
        try:
            vol = pool.createXML(
                f"<volume><name>{vol_name}</name>"
                f"<capacity unit='bytes'>{len(data)}</capacity>"
                "<target><format type='raw'/></target></volume>",
                0,
            )
            st = c.newStream(0)
            vol.upload(st, 0, len(data), 0)
            for i in range(0, len(data), 256 * 1024):
                chunk = data[i : i + 256 * 1024]
                sent = 0
                while sent < len(chunk):
                    n = st.send(chunk[sent:])
                    assert n > 0
                    sent += n
            st.finish()
            pool.refresh(0)
            assert vol.path() == str(path / vol_name)
            assert (path / vol_name).read_bytes() == data  # it landed in hostB's pool dir

            st = c.newStream(0)
            vol.download(st, 0, len(data), 0)
            got = bytearray()
            while True:
                buf = st.recv(256 * 1024)
                assert isinstance(buf, bytes), buf
                if not buf:
                    break
                got += buf
            st.finish()
            assert bytes(got) == data
            vol.delete(0)
        finally:
            with contextlib.suppress(libvirt.libvirtError):
                for v in pool.listAllVolumes(0):
                    v.delete(0)
            with contextlib.suppress(libvirt.libvirtError):
                pool.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                pool.undefine()
    with connect(MAIN_URI) as a:
        assert pool_name not in {p.name() for p in a.listAllStoragePools(0)}


def test_ssh_exec_runs_in_hostb_namespace(hostb: HostB) -> None:
    libvirtd_pid = int((hostb.state_dir / "libvirtd.pid").read_text())
    hostb_ns = os.readlink(f"/proc/{libvirtd_pid}/ns/mnt")
    assert hostb_ns != os.readlink("/proc/self/ns/mnt")
    with ssh(hostb) as client:
        rc, out, err = run(client, "cat /proc/self/mountinfo")
        assert rc == 0, err
        binds = mountinfo_binds(out)
        assert set(binds) == set(BINDS), binds
        for mp, sub in zip(BINDS, ("etc", "run", "lib", "cache", "log"), strict=True):
            # field 4 is the path inside the source filesystem: .../<state dir>/<sub>
            assert binds[mp].endswith(f"/{hostb.state_dir.name}/{sub}"), (mp, binds[mp])
        # ... and it is hostB's namespace exactly, not merely some private one.
        rc, out, _ = run(client, "readlink /proc/self/ns/mnt")
        assert rc == 0 and out.strip() == hostb_ns
        # This process's own view has none of those mounts.
        here = mountinfo_binds(Path("/proc/self/mountinfo").read_text())
        assert not any(v.endswith(f"/{hostb.state_dir.name}/run") for v in here.values())
        # The libvirt socket sigvirt's qemu+ssh reaches is hostB's.
        rc, out, _ = run(client, "ls /run/libvirt/libvirt-sock && ls /var/lib/libvirt")
        assert rc == 0, out
        assert (hostb.state_dir / "run" / "libvirt-sock").is_socket()
        # Plain commands sigvirt runs on a host: mv, exit codes, stderr.
        src = hostb.state_dir / "pools" / "mv-src.txt"
        dst = hostb.state_dir / "pools" / "mv-dst.txt"
        src.write_text("moved\n")
        try:
            rc, _, err = run(client, f"mv {shlex.quote(str(src))} {shlex.quote(str(dst))}")
            assert rc == 0, err
            assert not src.exists() and dst.read_text() == "moved\n"
            rc, _, err = run(client, "ls /nonexistent-sigvirt-path")
            assert rc != 0 and "nonexistent-sigvirt-path" in err
        finally:
            src.unlink(missing_ok=True)
            dst.unlink(missing_ok=True)


def test_direct_tcpip_through_sshd(hostb: HostB) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(20)
    port = srv.getsockname()[1]
    seen: list[bytes] = []

    def echo_once() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(20)
                data = conn.recv(1024)
                seen.append(data)
                conn.sendall(b"echo:" + data)

    t = threading.Thread(target=echo_once, daemon=True)
    t.start()
    try:
        with ssh(hostb) as client:
            transport = client.get_transport()
            assert transport is not None
            chan = transport.open_channel(
                "direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=20
            )
            try:
                chan.settimeout(20)
                chan.sendall(b"ping-hostb")
                reply = b""
                while not reply.endswith(b"ping-hostb"):
                    buf = chan.recv(1024)
                    if not buf:
                        break
                    reply += buf
                assert reply == b"echo:ping-hostb"
            finally:
                chan.close()
        t.join(20)
        assert seen == [b"ping-hostb"]
    finally:
        srv.close()
        t.join(5)


def test_restart_after_crash_leaves_nothing_behind() -> None:
    """A separate hostB: run a QEMU on it, SIGKILL libvirtd and sshd, start again (must work),
    then stop: no process of its namespace, no pid files, no cgroup of its domain are left."""
    state = Path(f"{STATE_PREFIX}{os.getpid()}-2")
    name = HostB.domain_name("sigvirt-test-crash")
    with running_hostb(state) as hb:
        with connect(hb.tcp_uri) as c:
            dom = c.defineXML(tiny_domain_xml(name))
            dom.create()
            qemu_pid = int((state / "run" / "qemu" / f"{name}.pid").read_text())
        assert alive(qemu_pid)
        lpid = int((state / "libvirtd.pid").read_text())
        spid = int((state / "sshd.pid").read_text())
        old = hostb_pids(state)
        assert {qemu_pid, lpid, spid} <= set(old)
        main_pidfile = Path("/run/libvirtd.pid")  # the main daemon is never one of them
        if main_pidfile.exists():
            assert int(main_pidfile.read_text()) not in old
        os.kill(lpid, 9)
        os.kill(spid, 9)
        deadline = time.monotonic() + 10
        while (alive(lpid) or alive(spid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        r = hb.script("status")
        assert r.returncode == 3, r.stdout

        r = hb.script("start", timeout=180)  # after the crash: must come back
        assert r.returncode == 0, r.stderr
        assert not alive(qemu_pid), "start after a crash must clear the old host's QEMUs"
        assert [p for p in old if alive(p)] == []
        assert hb.script("status").returncode == 0
        with connect(hb.uri) as c:  # the definition survived, like on a rebooted host
            dom = c.lookupByName(name)
            assert not dom.isActive()
            dom.create()
            new_qemu = int((state / "run" / "qemu" / f"{name}.pid").read_text())
            assert new_qemu in hostb_pids(state)
        r = lab_script("stop", str(state), timeout=120)
        assert r.returncode == 0, r.stderr
        assert not alive(new_qemu)
        assert hostb_pids(state) == []
        assert not (state / "libvirtd.pid").exists() and not (state / "sshd.pid").exists()
        assert list((state / "run").iterdir()) == []
        assert list(Path("/sys/fs/cgroup").glob(f"*/machine/qemu-*-{name}.libvirt-qemu")) == []
        assert name not in domain_names(MAIN_URI)
    assert not state.exists()
