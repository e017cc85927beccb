"""A reimage killed at every step (SIGVIRT_FAULT=reimage.<step>, the real binary): running
`vmss reimage` again finishes it, the instance boots a disk that SSH answers on, and no
overlay is left that its domain doesn't name. Real tiny guests."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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
# One instance per step, each killed in a reimage of its own; then one `vmss reimage` of the
# scale set finishes them all (concurrently, each from the state its kill left): the same
# kills and checks as one instance killed step after step, in about half the wall time.
EVERY = os.environ.get("SIGVIRT_TEST_ALL_STEPS") == "1"
FORWARD = ALL_FORWARD if EVERY else ("planned", "overlay", "started", "committing")
BACK = ALL_BACK if EVERY else ("restored", "discarded")


@pytest.fixture(scope="module")
def lab(
    scratch: Path, system_hv: Hypervisor, tiny_image: Path, ssh_key: SshKey
) -> Iterator[FleetLab]:
    with open_lab(scratch, system_hv, tiny_image, ssh_key, "reimagek", "25300-25399") as lab:
        yield lab


def create(lab: FleetLab, name: str, count: int, *extra: str) -> None:
    pub = f"{lab.key.private}.pub"
    code = main(["vmss", "create", "-n", name, "--image", V100, "--instance-count", str(count),
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


def kill_each(lab: FleetLab, name: str, steps: tuple[str, ...]) -> None:
    """Instance i's own reimage (the real binary, in its own process) killed at steps[i]; the
    processes run side by side, as each touches only its own instance."""
    with ThreadPoolExecutor(max_workers=len(steps)) as pool:
        killed = list(pool.map(lambda i, step: lab.run(
            "vmss", "reimage", "-n", name, "--instance-ids", str(i), "-o", "none",
            fault=f"reimage.{step}",
        ), range(len(steps)), steps))  # fmt: skip
    for step, ran in zip(steps, killed, strict=True):
        assert ran.returncode == -signal.SIGKILL, f"{step}: rc {ran.returncode}\n{ran.stderr}"


def test_a_reimage_killed_at_every_step_is_finished_by_the_next(lab: FleetLab) -> None:
    name = unique("kill")
    instances = [f"{name}-{i}" for i in range(len(FORWARD))]
    create(lab, name, len(FORWARD))
    disks = [whole(lab, instance, "create") for instance in instances]
    kill_each(lab, name, FORWARD)
    again = lab.run("vmss", "reimage", "-n", name, "-o", "none")
    assert again.returncode == 0, again.stderr
    for instance, step, before in zip(instances, FORWARD, disks, strict=True):
        assert whole(lab, instance, step) != before, f"after {step}: still on the old overlay"
    assert main(["vmss", "delete", "-n", name, "--yes", "-o", "none"]) == 0
    assert lab.volumes(f"{name}-") == []


def test_a_rollback_killed_at_every_step_is_finished_by_the_next(lab: FleetLab) -> None:
    """The probe wants a file only the first disk has: every reimage fails and goes back."""
    name = unique("killb")
    instances = [f"{name}-{i}" for i in range(len(BACK))]
    create(lab, name, len(BACK), "--health-probe-command", "test -e ~/keep")
    for instance in instances:
        assert sshlib.run(lab.endpoint(instance), "touch ~/keep && sync").returncode == 0
    disks = [whole(lab, instance, "create") for instance in instances]
    kill_each(lab, name, BACK)
    again = lab.run("vmss", "reimage", "-n", name, "-o", "none")
    assert again.returncode == 26, again.stderr
    for instance, step, before in zip(instances, BACK, disks, strict=True):
        assert f"{instance}: " in again.stderr and "back on" in again.stderr
        assert whole(lab, instance, step) == before  # the first disk, ~/keep and all
        assert sshlib.run(lab.endpoint(instance), "test -e ~/keep").returncode == 0
    assert main(["vmss", "delete", "-n", name, "--yes", "-o", "none"]) == 0
    assert lab.volumes(f"{name}-") == []
