"""hostB: a second, independent libvirt "host" on this machine, as a session-scoped pytest fixture.

Runs ``tools/lab-hostb.sh start`` in a private state dir (``/var/tmp/sigvirt-test-hostb-<pid>``,
random free loopback ports), yields a :class:`HostB`, and always stops hostB and removes the
state dir at the end of the session, also when tests fail or the start itself fails.

How tests get it: ``tests/conftest.py`` registers this module as a plugin, so any test
just asks for ``hostb`` (type :class:`HostB`, importable from ``tests.support.hostb`` for
annotations and helpers); there is one hostB per session.

Domain names on hostB must differ from every domain name on the main daemon (both share the
cgroup tree ``machine/qemu-<id>-<name>.libvirt-qemu``): use :meth:`HostB.domain_name`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from xml.sax.saxutils import escape

import paramiko
import pytest

from sigvirt.catalog.liveness import pid_alive

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "lab-hostb.sh"
STATE_PREFIX = "/var/tmp/sigvirt-test-hostb-"
START_TIMEOUT = 180
STOP_TIMEOUT = 120
_POOL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclasses.dataclass(frozen=True)
class HostB:
    """A running hostB. ``uri`` is the realistic (qemu+ssh) one; ``tcp_uri`` skips SSH."""

    uri: str
    tcp_uri: str
    key_path: Path
    ssh_port: int
    tcp_port: int
    state_dir: Path
    start_seconds: float

    def pool(self, name: str) -> Path:
        """Define, build, start (and autostart) a dir pool ``name`` on hostB; return its path.

        The path is ``state_dir/pools/<name>``, mode 0755 (QEMU runs as libvirt-qemu and must
        traverse it). Idempotent for the same name. Pools go away with the state dir.
        """
        import libvirt

        if not _POOL_NAME.match(name):
            raise ValueError(f"pool name {name!r}: use letters, digits, '_', '.', '-'")
        path = self.state_dir / "pools" / name
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.chmod(0o755)
        conn = libvirt.open(self.tcp_uri)
        try:
            try:
                pool = conn.storagePoolLookupByName(name)
            except libvirt.libvirtError:
                pool = conn.storagePoolDefineXML(
                    "<pool type='dir'>"
                    f"<name>{escape(name)}</name>"
                    f"<target><path>{escape(str(path))}</path>"
                    "<permissions><mode>0755</mode></permissions></target>"
                    "</pool>",
                    0,
                )
                pool.build(0)
            else:
                have = re.search(r"<path>([^<]*)</path>", pool.XMLDesc(0))
                if not have or Path(have.group(1)) != path:
                    raise RuntimeError(f"pool {name} on hostB exists with another path: {have}")
            if not pool.isActive():
                pool.create(0)
            pool.setAutostart(1)
        finally:
            conn.close()
        return path

    def sha256sum(self, path: str) -> str:
        """sha256sum run on the host itself (its sshd runs in its mount namespace)."""
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(
            "127.0.0.1", port=self.ssh_port, username="root", look_for_keys=False,
            allow_agent=False, timeout=10,
            pkey=paramiko.Ed25519Key.from_private_key_file(str(self.key_path)),
        )  # fmt: skip
        try:
            _in, out, err = client.exec_command(f"sha256sum {path}", timeout=120)
            text = out.read().decode()
            assert text, err.read().decode()
            return text.split()[0]
        finally:
            client.close()

    @staticmethod
    def domain_name(prefix: str = "hostb") -> str:
        """A domain name unique on this machine (see the module doc: shared cgroup tree)."""
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    def libvirtd_pid(self) -> int:
        return int((self.state_dir / "libvirtd.pid").read_text().strip())

    @contextlib.contextmanager
    def daemon_stopped(self) -> Iterator[None]:
        """This host's libvirtd stopped for the block (SIGTERM to the pid this session started,
        waited for), as a host whose daemon went down: its sshd still answers, libvirt does
        not. Started again afterwards, also when the block fails (``lab-hostb.sh start`` first
        cleans up what the dead daemon left: its guests' QEMUs and the sshd)."""
        pid = self.libvirtd_pid()
        os.kill(pid, signal.SIGTERM)
        try:
            end = time.monotonic() + STOP_TIMEOUT
            while pid_alive(pid) and not _zombie(pid) and time.monotonic() < end:
                time.sleep(0.05)
            if pid_alive(pid) and not _zombie(pid):
                raise RuntimeError(f"libvirtd {pid} of {self.state_dir} did not stop")
            yield
        finally:
            r = lab_script("start", str(self.state_dir), timeout=START_TIMEOUT)
            if r.returncode != 0:
                raise RuntimeError(
                    f"tools/lab-hostb.sh start failed (rc {r.returncode}):\n{r.stderr}"
                )

    def script(self, *args: str, timeout: float = STOP_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """Run ``tools/lab-hostb.sh ARGS... STATE_DIR`` for this hostB (e.g. ``status``)."""
        return lab_script(*args, str(self.state_dir), timeout=timeout)


def lab_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``tools/lab-hostb.sh ARGS...`` (output captured, never raises on failure)."""
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, lo: int = 17000, hi: int = 19999) -> list[int]:
    """``count`` distinct loopback ports nobody listens on now: below the kernel's ephemeral
    range and clear of sigvirt's default guest forward range (22200-23199)."""
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < count:
        p = rng.randint(lo, hi)
        if p not in ports and _port_free(p):
            ports.append(p)
    return ports


def parse_env(text: str) -> dict[str, str]:
    """Parse ``lab-hostb.sh env`` output (``KEY='value'`` lines)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"([A-Z0-9_]+)='([^']*)'", line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().count("State:\tZ") > 0
    except OSError:
        return False


def reap_stale_state_dirs() -> None:
    """Stop and remove hostB state dirs of test sessions that died without tearing down."""
    for d in Path(STATE_PREFIX).parent.glob(Path(STATE_PREFIX).name + "*"):
        m = re.fullmatch(re.escape(Path(STATE_PREFIX).name) + r"(\d+)(?:-\d+)?", d.name)
        if not m or not d.is_dir() or pid_alive(int(m.group(1))):
            continue
        lab_script("stop", str(d), timeout=STOP_TIMEOUT)
        shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def running_hostb(state_dir: Path | None = None) -> Iterator[HostB]:
    """Start a hostB in ``state_dir`` (default: per-process dir), always stop and remove it."""
    if os.geteuid() != 0:
        pytest.skip("hostB (second libvirtd in a private mount namespace) needs root")
    if state_dir is None:
        state_dir = Path(f"{STATE_PREFIX}{os.getpid()}")
    tcp_port, ssh_port = free_ports(2)
    ports = ("--tcp-port", str(tcp_port), "--ssh-port", str(ssh_port))
    ok = False
    try:
        if state_dir.exists():  # left by an earlier session with our pid
            lab_script("stop", str(state_dir), timeout=STOP_TIMEOUT)
            shutil.rmtree(state_dir, ignore_errors=True)
        t0 = time.monotonic()
        r = lab_script(*ports, "start", str(state_dir), timeout=START_TIMEOUT)
        took = time.monotonic() - t0
        if r.returncode != 0:
            raise RuntimeError(
                f"tools/lab-hostb.sh start failed (rc {r.returncode}):\n{r.stderr}{r.stdout}"
            )
        env = parse_env(r.stdout)
        yield HostB(
            uri=env["SIGVIRT_HOSTB_URI"],
            tcp_uri=env["SIGVIRT_HOSTB_TCP_URI"],
            key_path=Path(env["SIGVIRT_HOSTB_KEY"]),
            ssh_port=int(env["SIGVIRT_HOSTB_SSH_PORT"]),
            tcp_port=int(env["SIGVIRT_HOSTB_TCP_PORT"]),
            state_dir=state_dir,
            start_seconds=took,
        )
        ok = True
    finally:
        r = lab_script("stop", str(state_dir), timeout=STOP_TIMEOUT)
        shutil.rmtree(state_dir, ignore_errors=True)
        if ok and r.returncode != 0:  # never mask the error that got us here
            raise RuntimeError(f"tools/lab-hostb.sh stop failed (rc {r.returncode}):\n{r.stderr}")


# One instance per session even if the fixture is registered twice (plugin + module import).
_active: list[HostB] = []


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM (CI timeouts, ``kill``) unwind like Ctrl-C, so pytest still runs the
    teardown that stops hostB; without it Python dies on the spot and leaves hostB running
    (the next session's :func:`reap_stale_state_dirs` would clean up then)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


LAB_HOSTS = int(os.environ.get("SIGVIRT_LAB_HOSTS", "3"))  # extra hosts the multihost tests get
_more: list[HostB] = []


@pytest.fixture(scope="session")
def lab_hosts(hostb: HostB) -> Iterator[list[HostB]]:
    """LAB_HOSTS (at least 3) independent libvirt hosts: hostB and more of its kind, each its
    own libvirtd, state, pools and loopback sshd, all reached over qemu+ssh; started one
    after another (each takes a few seconds), all stopped at the end of the session."""
    if len(_more) + 1 >= LAB_HOSTS:
        yield [hostb, *_more]
        return
    with _sigterm_as_interrupt(), contextlib.ExitStack() as stack:
        for n in range(1, max(LAB_HOSTS, 3)):
            state = Path(f"{STATE_PREFIX}{os.getpid()}-{n}")
            _more.append(stack.enter_context(running_hostb(state)))
        try:
            yield [hostb, *_more]
        finally:
            _more.clear()


@pytest.fixture(scope="session")
def hostb() -> Iterator[HostB]:
    """A running hostB for the whole test session (skipped unless root)."""
    if _active:
        yield _active[0]
        return
    with _sigterm_as_interrupt(), running_hostb() as hb:
        reap_stale_state_dirs()
        _active.append(hb)
        try:
            yield hb
        finally:
            _active.remove(hb)
