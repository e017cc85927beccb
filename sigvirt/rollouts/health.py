"""An instance's health: SSH answers, then the scale set's probe passes (a command run over
SSH that exits 0, and/or a testinfra spec).

A spec is code. Run by root, a spec another user stored runs as that user (specrun's
`run_as`), with a copy of the instance's key only that user can read, made for the run and
removed after it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko

from sigvirt.catalog.fleet import HealthProbe
from sigvirt.context import Context
from sigvirt.errors import CommandFailed, SigvirtError
from sigvirt.guests import guest, inventory, specrun
from sigvirt.guests.inventory import Vm
from sigvirt.hosts import ssh

SSH_TIMEOUT = 60.0  # how long a running instance's sshd gets to answer, unless told


@dataclass(frozen=True)
class Health:
    healthy: bool
    reason: str = ""  # why not ("" when healthy)


def check(ctx: Context, vm: Vm, probe: HealthProbe, *, timeout: float | None = None) -> Health:
    """SSH answers within `timeout` (a booting instance gets that long), then the probe's
    command and spec pass."""
    try:
        hv, _region, dom = inventory.find(ctx, vm.name, vm.region)
        prov = guest.provenance_of(dom)
        ep = inventory.endpoint_of(hv, prov) if prov else None
        if ep is None:
            return Health(False, "it has no SSH forward to check it through")
        if not dom.is_active():
            return Health(False, "it is not running")
        wait = SSH_TIMEOUT if timeout is None else timeout
        key_known = bool(prov and prov.key_path) and ep.key_path.exists()
        try:
            if key_known:
                ssh.wait_ready(ep, wait, dom.is_active)
            else:
                ssh.wait_banner(ep, wait)
        except TimeoutError as err:
            return Health(False, f"SSH does not answer: {err}")
        if probe.empty:
            return Health(True)
        if not key_known:
            return Health(False, "no private key is known to run its health probe with")
        return _probe(ctx, ep, probe)
    except SigvirtError as err:
        return Health(False, err.message)


def _probe(ctx: Context, ep: ssh.Endpoint, probe: HealthProbe) -> Health:
    if probe.command:
        try:
            done = ssh.run(ep, probe.command, timeout=probe.timeout)
        except (OSError, EOFError, TimeoutError, CommandFailed, paramiko.SSHException) as err:
            return Health(False, f"health probe command did not run: {err}")
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            last = f": {lines[-1][:200]}" if lines else ""
            return Health(False, f"health probe command exited {done.returncode}{last}")
    if probe.spec:
        with _key_for(ep.key_path, probe.owner) as (key, run_as):
            result = specrun.run_spec(
                ctx.runner, probe.spec, ep, key=key, run_as=run_as, timeout=probe.timeout
            )
        if not result.passed:
            return Health(False, f"health probe spec failed: {result.summary}")
    return Health(True)


@contextlib.contextmanager
def _key_for(key: Path, owner: str) -> Iterator[tuple[Path, str | None]]:
    """The key to run a spec with, and the user to run it as: root runs another user's spec
    as that user, with a throwaway copy of the key that user can read."""
    if os.geteuid() != 0 or not owner or owner == "root":
        yield key, None
        return
    user = pwd.getpwnam(owner)
    work = Path(tempfile.mkdtemp(prefix="sigvirt-probe-key-"))
    try:
        copy = work / "key"
        fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.read_bytes())
        for path in (work, copy):
            os.chown(path, user.pw_uid, user.pw_gid)
        yield copy, owner
    finally:
        shutil.rmtree(work, ignore_errors=True)
