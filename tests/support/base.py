"""Shared fixtures: real libvirt pools in a scratch directory, built guest images, SSH keys.

Everything a test creates in libvirt is named with this run's prefix and is destroyed at
the end even when tests fail (a session finalizer sweeps whatever a test forgot).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sigvirt.errors import SigvirtError
from sigvirt.guests import sshkeys
from sigvirt.hosts import recipes
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.runner import Runner
from sigvirt.sharing.plan import protect_replica

SYSTEM_URI = "qemu:///system"
RUN_ID = uuid.uuid4().hex[:6]
PREFIX = f"svt{RUN_ID}"
SCRATCH = Path(os.environ.get("SIGVIRT_TEST_SCRATCH", "/var/tmp")) / f"sigvirt-test-{RUN_ID}"


def unique(name: str) -> str:
    """A libvirt-wide unique name for this test run."""
    return f"{PREFIX}-{name}"


@dataclass(frozen=True)
class SshKey:
    private: Path
    public: str


@pytest.fixture(scope="session")
def scratch() -> Iterator[Path]:
    # Under /var/tmp, not pytest's tmp_path: QEMU runs as libvirt-qemu and must traverse
    # the directories to reach backing files (tmp_path's parents are 0700).
    SCRATCH.mkdir(parents=True, mode=0o755)
    os.chmod(SCRATCH, 0o755)
    (SCRATCH / "pid").write_text(f"{os.getpid()}\n")  # a later run reaps us if we were killed
    yield SCRATCH
    shutil.rmtree(SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session")
def ssh_key(scratch: Path) -> SshKey:
    path = sshkeys.generate(scratch / "id_ed25519", comment="sigvirt-test")
    text = path.with_suffix(".pub").read_text().strip()
    return SshKey(path, text)


@pytest.fixture(scope="session")
def system_hv() -> Iterator[Hypervisor]:
    hv = Hypervisor.open(SYSTEM_URI)
    _reap_killed_runs(hv)
    yield hv
    _sweep(hv)
    hv.close()


def _sweep(hv: Hypervisor) -> None:
    """Destroy every domain and pool of this run, whatever a test left behind."""
    for dom in hv.domains():
        if dom.name.startswith(PREFIX):
            hv.destroy_and_undefine(dom.name)
    for pool in hv.pools():
        if pool.startswith(PREFIX):
            with contextlib.suppress(SigvirtError):
                hv.delete_pool(pool)


def _alive(run_id: str) -> bool:
    """Whether the test run `run_id` is still going (its scratch directory names its pid)."""
    scratch = SCRATCH.parent / f"sigvirt-test-{run_id}"
    try:
        pid = int((scratch / "pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _reap_killed_runs(hv: Hypervisor) -> None:
    """Domains and pools of runs that were killed before their finalizers ran (a SIGKILL, a
    CI timeout): a run whose pid is gone can't clean up any more, so the next one does."""
    dead: set[str] = set()
    for name in [d.name for d in hv.domains()] + list(hv.pools()):
        found = re.fullmatch(r"svt([0-9a-f]{6})-.*", name)
        if found and found[1] != RUN_ID and not _alive(found[1]):
            dead.add(found[1])
    for run_id in dead:
        for dom in hv.domains():
            if dom.name.startswith(f"svt{run_id}-"):
                hv.destroy_and_undefine(dom.name)
        for pool in hv.pools():
            if pool.startswith(f"svt{run_id}-"):
                with contextlib.suppress(SigvirtError):
                    hv.delete_pool(pool)
        shutil.rmtree(SCRATCH.parent / f"sigvirt-test-{run_id}", ignore_errors=True)


@dataclass(frozen=True)
class LabPool:
    name: str
    path: Path


@pytest.fixture(scope="session")
def lab_pool(system_hv: Hypervisor, scratch: Path) -> Iterator[LabPool]:
    name = unique("pool")
    path = scratch / "pool"
    system_hv.ensure_dir_pool(name, path)
    yield LabPool(name, path)
    system_hv.delete_pool(name)


def _built(recipe: str) -> Path:
    return recipes.ensure_built(recipes.recipe(recipe), Runner())


@pytest.fixture(scope="session")
def tiny_image() -> Path:
    return _built("tiny")


@pytest.fixture(scope="session")
def tiny_arm64_image() -> Path:
    """The tiny guest for aarch64 (images/tiny-arm64: Arm64 definitions, TCG on x86)."""
    return _built("tiny-arm64")


@pytest.fixture(scope="session")
def debian_image() -> Path:
    return _built("debian")


def place_base(hv: Hypervisor, pool: LabPool, image: Path, name: str) -> Path:
    """Copy a built image into a pool as a base (replica-like: 0640 + ACL for QEMU)."""
    dest = pool.path / name
    shutil.copyfile(image, dest)
    protect_replica(dest)
    hv.refresh_pool(pool.name)
    return dest
