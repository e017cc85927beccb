"""SIGTERM ends a command as Ctrl-C does: through its undo paths, with exit 130 and one line
(a CI job's timeout, `kill`, a service stopping), never half-way through a step."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sigvirt.errors import ExitCode
from sigvirt.hosts.hypervisor import Hypervisor
from tests.support.base import SshKey, unique
from tests.support.fleetlab import REPO, D, G, open_lab

pytestmark = pytest.mark.guest


def test_a_terminated_vm_create_removes_the_vm_it_was_waiting_for(
    scratch: Path, system_hv: Hypervisor, tiny_image: Path, ssh_key: SshKey
) -> None:
    with open_lab(scratch, system_hv, tiny_image, ssh_key, "term", "23300-23399") as lab:
        name = unique("term")
        create = [
            sys.executable,
            "-m",
            "sigvirt",
            "vm",
            "create",
            "-n",
            name,
            "--image",
            f"{G}/{D}",
            "--size",
            "Lab_Tiny",
            "--ssh-key-value",
            f"{ssh_key.private}.pub",
        ]
        proc = subprocess.Popen(
            create, env=lab.env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            # the domain runs: the create now waits for SSH, as a user's would when killed
            end = time.monotonic() + 120
            while not (system_hv.domain_exists(name) and system_hv.domain(name).is_active()):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < end, "the VM never ran"
                time.sleep(0.05)
            assert lab.volumes(name), "its volumes exist while it boots"
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == ExitCode.INTERRUPTED, err
        assert err.strip().splitlines()[-1:] == ["sigvirt: interrupted"], err
        assert not system_hv.domain_exists(name)
        assert lab.volumes(name) == []  # overlay, seed and console went with it
