"""A reimage killed at every step (SIGVIRT_FAULT=reimage.<step>, the real binary): running
`vmss reimage` again finishes it, the instance boots a disk that SSH answers on, and no
overlay is left that its domain doesn't name. Real tiny guests."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from sigvirt.cli import main
from sigvirt.hosts import ssh as sshlib
from sigvirt.hosts.hypervisor import Hypervisor
from tests.support.base import SshKey, unique
from tests.support.fleetlab import D, FleetLab, G, open_lab

pytestmark = pytest.mark.guest
V100 = f"{G}/{D}/1.0.0"
# Where a reimage that works passes, and where one that fails its probe goes back.
ALL_FORWARD = ("planned", "overlay", "stopped", "swapped", "started", "healthy", "committing",
               "old-removed", "done")  # fmt: skip
ALL_BACK = ("reverting", "restored", "discarded")
# Each step costs two to four boots: the suite kills at one step of each kind of state the
# domain's recorded intent can be in (nothing done yet, a new overlay beside the old disk,
# the new disk booting but not yet healthy, the old disk half removed; going back: the old
# disk booting again, the new one half removed). SIGVIRT_TEST_ALL_STEPS=1 kills at every one.
EVERY = os.environ.get("SIGVIRT_TEST_ALL_STEPS") == "1"
FORWARD = ALL_FORWARD if EVERY else ("planned", "overlay", "started", "committing")
BACK = ALL_BACK if EVERY else ("restored", "discarded")


@pytest.fixture(scope="module")
def lab(
    scratch: Path, system_hv: Hypervisor, tiny_image: Path, ssh_key: SshKey
) -> Iterator[FleetLab]:
    with open_lab(scratch, system_hv, tiny_image, ssh_key, "reimagek", "25300-25399") as lab:
        yield lab


def create(lab: FleetLab, name: str, *extra: str) -> None:
    pub = f"{lab.key.private}.pub"
    code = main(["vmss", "create", "-n", name, "--image", V100, "--instance-count", "1",
                 "--vm-sku", "Lab_Tiny", "--ssh-key-value", pub, "--admin-username", "labuser",
                 *extra, "-o", "none"])  # fmt: skip
    assert code == 0


def whole(lab: FleetLab, instance: str, step: str) -> list[str]:
    """The instance boots a disk SSH answers on, every overlay of it is one its domain names,
    and no reimage is under way; its volumes."""
    found = lab.volumes(instance + ".")
    assert found == lab.owned(instance), f"after {step}: orphan overlay"
    ep = lab.endpoint(instance)
    sshlib.wait_ready(ep, 120)
    assert sshlib.run(ep, "true").returncode == 0, f"after {step}: no SSH"
    return found


def test_a_reimage_killed_at_every_step_is_finished_by_the_next(lab: FleetLab) -> None:
    name = unique("kill")
    instance = f"{name}-0"
    create(lab, name)
    disks = whole(lab, instance, "create")
    for step in FORWARD:
        killed = lab.run("vmss", "reimage", "-n", name, "-o", "none", fault=f"reimage.{step}")
        assert killed.returncode == -signal.SIGKILL, (
            f"{step}: rc {killed.returncode}\n{killed.stderr}"
        )
        again = lab.run("vmss", "reimage", "-n", name, "-o", "none")
        assert again.returncode == 0, f"after {step}: {again.stderr}"
        now = whole(lab, instance, step)
        assert now != disks, f"after {step}: still on the old overlay"
        disks = now
    assert main(["vmss", "delete", "-n", name, "--yes", "-o", "none"]) == 0
    assert lab.volumes(instance) == []


def test_a_rollback_killed_at_every_step_is_finished_by_the_next(lab: FleetLab) -> None:
    """The probe wants a file only the first disk has: every reimage fails and goes back."""
    name = unique("killb")
    instance = f"{name}-0"
    create(lab, name, "--health-probe-command", "test -e ~/keep")
    ep = lab.endpoint(instance)
    assert sshlib.run(ep, "touch ~/keep && sync").returncode == 0
    disks = whole(lab, instance, "create")
    for step in BACK:
        killed = lab.run("vmss", "reimage", "-n", name, "-o", "none", fault=f"reimage.{step}")
        assert killed.returncode == -signal.SIGKILL, (
            f"{step}: rc {killed.returncode}\n{killed.stderr}"
        )
        again = lab.run("vmss", "reimage", "-n", name, "-o", "none")
        assert again.returncode == 26, f"after {step}: {again.stderr}"
        assert "back on" in again.stderr
        assert whole(lab, instance, step) == disks  # the first disk, ~/keep and all
        assert sshlib.run(ep, "test -e ~/keep").returncode == 0
    assert main(["vmss", "delete", "-n", name, "--yes", "-o", "none"]) == 0
    assert lab.volumes(instance) == []
