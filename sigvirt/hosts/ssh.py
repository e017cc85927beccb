"""The one SSH helper (paramiko): wait for a guest's sshd, run commands, tunnel through a host."""

from __future__ import annotations

import contextlib
import logging
import selectors
import shlex
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from sigvirt.errors import CommandFailed
from sigvirt.runner import Result

# A guest's first answers are often "connection reset" while sshd starts; paramiko logs each.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Jump:
    """An SSH host to tunnel through (the libvirt host of a qemu+ssh region)."""

    host: str
    port: int = 22
    user: str | None = None
    key_path: Path | None = None


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str
    key_path: Path
    jump: Jump | None = None

    def ssh_argv(self) -> list[str]:
        """The `ssh` command a person types to reach this guest."""
        argv = ["ssh", "-i", str(self.key_path), "-p", str(self.port)]
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        if self.jump is not None:
            j = self.jump
            hop = f"{j.user + '@' if j.user else ''}{j.host}:{j.port}"
            argv += ["-J", hop]
        # no user known (a specialized image's VM): ssh's own default, or `-l`, decides
        return [*argv, f"{self.user}@{self.host}" if self.user else self.host]


class _Policy(paramiko.MissingHostKeyPolicy):
    # Every clone generates its own host key at first boot and ports are reused, so a
    # known_hosts entry would be wrong the next time; trust on first use, per connection.
    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        return None


def _load_key(path: Path) -> paramiko.PKey:
    return paramiko.PKey.from_path(str(path))


def _connect_host(host: Jump, timeout: float) -> paramiko.SSHClient:
    """SSH to a libvirt host itself (its user's keys, or the URI's keyfile)."""
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_Policy())
    client.connect(
        host.host,
        port=host.port,
        username=host.user,
        key_filename=str(host.key_path) if host.key_path else None,
        timeout=timeout,
        banner_timeout=timeout,
        auth_timeout=timeout,
    )
    return client


def _jump_socket(jump: Jump, host: str, port: int, timeout: float) -> paramiko.Channel:
    client = _connect_host(jump, timeout)
    transport = client.get_transport()
    assert transport is not None
    chan = transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0), timeout=timeout)
    chan._sigvirt_jump_client = client  # type: ignore[attr-defined]  # keep the hop alive
    return chan


@contextlib.contextmanager
def connect(ep: Endpoint, timeout: float = 10.0) -> Iterator[paramiko.SSHClient]:
    sock = _jump_socket(ep.jump, ep.host, ep.port, timeout) if ep.jump else None
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(_Policy())
    try:
        client.connect(
            ep.host,
            port=ep.port,
            username=ep.user,
            pkey=_load_key(ep.key_path),
            sock=sock,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            look_for_keys=False,
            allow_agent=False,
        )
        yield client
    finally:
        client.close()
        if sock is not None:
            sock.close()


def run(ep: Endpoint, command: str, timeout: float = 60.0) -> Result:
    with connect(ep) as client:
        _stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        rc = stdout.channel.recv_exit_status()
    return Result(("ssh", ep.host, command), rc, out, err)


# Noticing a guest's sshd (await_banner). QEMU's user networking accepts a forwarded
# connection at once and holds it while the guest can't be reached, retrying its SYN to the
# guest on TCP's backoff, so one long-held socket sees a guest late; logins with a 2 s banner
# timeout then a pause (the old wait) saw guests up to ~2.3 s late, which held a boot slot of
# admission.py idle (benchmarks/bench_scaleset.py). Until the guest first answers TCP (a
# probe ends in EOF: its port is closed), fresh probes start every PROBE_EVERY, each held
# PROBE_LIFE, at most FAST_OPEN at once. One patient probe is always open besides, held up
# to PATIENT_LIFE: OpenSSH re-executes itself for each connection before it sends its banner,
# which under TCG takes seconds; once the guest answered TCP it is the only probe, so sshd is
# never sprayed with connections (each one a re-exec in the guest).
#
# Each probe given up before the guest was reachable is not gone: slirp goes on retrying its
# SYN (the first retry ~5.5-6 s after the probe opened, measured) and, once the guest is up,
# connects it to sshd with nobody at the host end, so sshd forks (OpenSSH: re-executes) for
# nothing. That retry is also why one held probe sees a guest up to ~6 s late. A tiny guest
# got ~20 of these in the ~6 s after it answered: 0.35-0.45 s of its QEMU's CPU, against
# 0.07-0.1 s with the patient probe alone. So a caller that knows the guest can't answer for
# a while (`dense_after`: scale-set boots after the first, admission.Slot) has only the
# patient probe until then.
PROBE_EVERY = 0.2
PROBE_LIFE = 1.0
FAST_OPEN = 5
PATIENT_LIFE = 15.0


def _probe(
    family: int, sockaddr: Any, sel: selectors.BaseSelector, until: float, patient: bool
) -> None:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.connect_ex(sockaddr)  # in progress; a refusal shows as readable with an error
    sel.register(sock, selectors.EVENT_READ, (until, patient))


def await_banner(
    host: str,
    port: int,
    timeout: float,
    still_booting: Callable[[], bool] = lambda: True,
    dense_after: float = 0.0,
) -> bool:
    """True as soon as an SSH banner arrives at host:port; False after `timeout` or once
    `still_booting` (asked about once a second) says no. Plain-socket probes: see PROBE_EVERY;
    for the first `dense_after` seconds only the patient one."""
    family, _type, _proto, _name, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    )[0]
    start = time.monotonic()
    end = start + timeout
    next_ask = 0.0
    next_probe = start + max(0.0, dense_after)
    answered = False  # the guest answered TCP once: patient probes only from then on
    with selectors.DefaultSelector() as sel:

        def drop(sock: Any) -> None:
            sel.unregister(sock)
            sock.close()

        try:
            while (now := time.monotonic()) < end:
                if now >= next_ask:
                    if not still_booting():
                        return False
                    next_ask = now + 1.0
                probes = [key.data for key in sel.get_map().values()]
                if not any(patient for _until, patient in probes):
                    _probe(family, sockaddr, sel, now + PATIENT_LIFE, True)
                if now >= next_probe and not answered:
                    if len(probes) < FAST_OPEN:  # else the next one when one has ended
                        _probe(family, sockaddr, sel, now + PROBE_LIFE, False)
                    next_probe = now + PROBE_EVERY
                wake = min([end, next_ask, *(key.data[0] for key in sel.get_map().values())])
                if not answered:
                    wake = min(wake, next_probe)
                for key, _ in sel.select(max(0.0, wake - time.monotonic())):
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        if sock.recv(4) == b"SSH-":
                            return True
                    except OSError:
                        pass  # refused or reset: sshd isn't up yet
                    if not answered:  # the guest answers TCP: held probes may be in backoff
                        answered = True
                        for held in list(sel.get_map().values()):
                            drop(held.fileobj)
                        next_probe = time.monotonic() + PROBE_EVERY
                        break
                    drop(sock)
                    time.sleep(PROBE_EVERY)  # a closed port: the next patient probe, later
                for key in list(sel.get_map().values()):
                    if key.data[0] <= time.monotonic():
                        drop(key.fileobj)
            return False
        finally:
            for key in list(sel.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]


def wait_ready(
    ep: Endpoint,
    timeout: float,
    still_booting: Callable[[], bool] = lambda: True,
    dense_after: float = 0.0,
) -> float:
    """Poll until the guest runs a command over SSH; seconds waited, or raise TimeoutError.

    `still_booting` is asked between attempts, so a guest that died is reported at once
    instead of after the whole timeout. A direct endpoint is logged into only once its
    banner was seen (await_banner, sparse for `dense_after` s); one behind a jump host is
    tried every 2.3 s.
    """
    start = time.monotonic()
    last: Exception | None = None
    while (left := timeout - (time.monotonic() - start)) > 0:
        if not still_booting():
            raise TimeoutError("the guest stopped while booting")
        if ep.jump is None:
            sparse = dense_after - (time.monotonic() - start)
            if not await_banner(ep.host, ep.port, left, still_booting, sparse):
                continue  # the loop's own checks say which
            login_timeout = 10.0  # sshd answered: a slow login is a busy guest, not a dead one
        else:
            login_timeout = 2.0  # a short banner timeout: slirp accepts before sshd listens
        try:
            with connect(ep, timeout=login_timeout) as client:
                _i, out, _e = client.exec_command("true", timeout=10)
                if out.channel.recv_exit_status() == 0:
                    return time.monotonic() - start
        except (TimeoutError, paramiko.SSHException, OSError, EOFError) as err:
            last = err  # e.g. sshd up before the key is in place
        time.sleep(0.3)
    why = f"last: {last}" if last else "no SSH banner"
    raise TimeoutError(f"no SSH answer within {timeout:.0f}s ({why})")


def wait_banner(ep: Endpoint, timeout: float, dense_after: float = 0.0) -> float:
    """Seconds until sshd sends its banner (used when we hold no private key to log in)."""
    start = time.monotonic()
    while (left := timeout - (time.monotonic() - start)) > 0:
        sparse = dense_after - (time.monotonic() - start)
        if ep.jump is None and not await_banner(ep.host, ep.port, left, dense_after=sparse):
            break
        try:
            sock: socket.socket | paramiko.Channel
            if ep.jump:
                sock = _jump_socket(ep.jump, ep.host, ep.port, 5.0)
            else:
                sock = socket.create_connection((ep.host, ep.port), timeout=5.0)
            with contextlib.closing(sock):
                transport = paramiko.Transport(sock)
                try:
                    transport.start_client(timeout=3.0)
                    return time.monotonic() - start
                finally:
                    transport.close()
        except (paramiko.SSHException, OSError, EOFError):
            time.sleep(0.5)
    raise TimeoutError(f"no SSH banner within {timeout:.0f}s")


def host_run(host: Jump, argv: list[str], timeout: float = 120.0) -> Result:
    """Run a command on a libvirt host over SSH (metadata chores only; never image bytes)."""
    client = _connect_host(host, timeout)
    try:
        _i, stdout, stderr = client.exec_command(shlex.join(argv), timeout=timeout)
        out = stdout.read().decode(errors="replace")
        err = stderr.read().decode(errors="replace")
        rc = stdout.channel.recv_exit_status()
    finally:
        client.close()
    result = Result(("ssh", host.host, *argv), rc, out, err)
    if rc != 0:
        raise CommandFailed(f"{argv[0]} on {host.host} failed: {err.strip() or rc}")
    return result
