"""A Vagrant lab of real libvirt hosts (vagrant/lab/): the labhost recipe's image as a box
(`sigvirt image box labhost`), three machines brought up from it by vagrant-libvirt on 127.0.0.1
forwards, each written into regions.yaml as a region reached over qemu+ssh (`lab.sh regions`),
`region check` seeing all three, and a version replicated to all of them, each replica's sha256
checked on its lab host over ssh. Everything goes at the end, also on failure: the machines,
the box and the volume vagrant-libvirt made of it, the regions.

VAGRANT_HOME is the test's own. The machines' disks go to the fleet lab's first pool."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import testinfra

from sigvirt.cli import main
from sigvirt.hosts import recipes
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.runner import Runner
from sigvirt.vagrant import guestprep, imagebox
from tests.support.base import SshKey, unique
from tests.support.fleetlab import REPO, D, FleetLab, G, open_lab

VAGRANT = shutil.which("vagrant")
HOSTS = 3
MEMORY_MIB = 768  # a lab host runs libvirtd and nothing else here (boot: ~200 MiB used)
PORTS = range(25700, 25750)  # the lab hosts' SSH forwards (test_vagrant's: 25650-25699)
SIGVIRT = str(Path(sys.executable).parent / "sigvirt")
log = logging.getLogger(__name__)


@pytest.mark.offline
def test_labhost_image_has_vagrants_insecure_key() -> None:
    """The key the labhost recipe builds in is the one export-box's boxes ship."""
    key = (REPO / "images" / "labhost" / "files" / "vagrant.pub").read_text().strip()
    assert key == guestprep.INSECURE_PUBLIC_KEY


@pytest.mark.offline
def test_labhost_recipe_key_covers_the_debian_recipe_it_builds_on() -> None:
    labhost = recipes.recipe("labhost")
    assert labhost.builds_on == (REPO / "images" / "debian",)
    assert recipes.recipe("tiny").builds_on == ()
    assert set(imagebox.BOXABLE) == {"labhost"}


@pytest.mark.offline
def test_image_box_refuses_a_recipe_without_a_vagrant_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before anything is built or written: exit 21, one line."""
    code = main(["image", "box", "tiny", "--file", str(tmp_path / "tiny.box")])
    assert code == 21
    assert capsys.readouterr().err.splitlines() == [
        "sigvirt: error: image recipe 'tiny' has no vagrant user built in (boxes as built: "
        "labhost); publish it as a version and use `sig image-version export-box`"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.offline
def test_image_box_never_overwrites_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    there = tmp_path / "labhost.box"
    there.write_bytes(b"mine")
    code = main(["image", "box", "labhost", "--file", str(there)])
    assert code == 5
    assert capsys.readouterr().err.splitlines() == [
        f"sigvirt: error: --file '{there}' already exists",
        "sigvirt: hint: remove it or name another file: a box is never overwritten",
    ]
    assert there.read_bytes() == b"mine"


@dataclass
class Lab:
    cwd: Path  # a copy of vagrant/lab/ (and ../sigvirt_lab.rb)
    env: dict[str, str]
    prefix: str  # the machines' domain names and the box's name start with it
    seconds: dict[str, float] = field(default_factory=dict)

    def __call__(self, step: str, *argv: str, timeout: float = 900) -> str:
        """./lab.sh ARGV, timed as `step`; it must succeed."""
        start = time.monotonic()
        done = subprocess.run(
            ["./lab.sh", *argv], cwd=self.cwd, env=self.env, capture_output=True, text=True,
            timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.seconds[step] = round(time.monotonic() - start, 1)
        assert done.returncode == 0, (
            f"lab.sh {' '.join(argv)}:\n{done.stdout[-3000:]}\n{done.stderr}"
        )
        return done.stdout

    @property
    def box(self) -> str:
        return self.env["SIGVIRT_LAB_BOX"]

    @property
    def box_volume(self) -> str:
        """How vagrant-libvirt names the box's volume in the pool."""
        return self.box.replace("/", "-VAGRANTSLASH-")


def free_ports(n: int) -> int:
    """The first of n consecutive free ports on 127.0.0.1 (the Vagrantfile counts up)."""
    for first in range(PORTS.start, PORTS.stop - n + 1):
        with contextlib.ExitStack() as stack:
            try:
                for port in range(first, first + n):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return first
    raise AssertionError("no free ports for the lab hosts")


@pytest.fixture(scope="module")
def fleet(
    scratch: Path, system_hv: Hypervisor, tiny_image: Path, ssh_key: SshKey
) -> Iterator[FleetLab]:
    with open_lab(scratch, system_hv, tiny_image, ssh_key, "vlab", "25750-25799") as lab:
        yield lab


@pytest.fixture
def lab(fleet: FleetLab, tmp_path: Path) -> Iterator[Lab]:
    """vagrant/lab/ copied with its helper; afterwards the machines, the box, its volume and
    the lab's regions are gone whatever the test did."""
    work = tmp_path / "vagrant"
    (work / "lab").mkdir(parents=True)
    shutil.copy(REPO / "vagrant" / "sigvirt_lab.rb", work)
    for name in ("Vagrantfile", "lab.sh"):
        shutil.copy(REPO / "vagrant" / "lab" / name, work / "lab")
    prefix = unique("vlab") + "-"
    env = {
        **fleet.env,
        "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "SIGVIRT": SIGVIRT,
        "SIGVIRT_LAB_HOSTS": str(HOSTS),
        "SIGVIRT_LAB_PORT_BASE": str(free_ports(HOSTS)),
        "SIGVIRT_LAB_MEMORY": str(MEMORY_MIB),
        "SIGVIRT_LAB_PREFIX": prefix,
        "SIGVIRT_LAB_BOX": f"{prefix}labhost",
        "SIGVIRT_LAB_INSERT_KEY": "0",  # ~16 s per machine under TCG; the lab is loopback only
    }
    for name in ("SIGVIRT_LAB", "SIGVIRT_LAB_REGION", "SIGVIRT_LAB_POOL", "SIGVIRT_LAB_ACCEL"):
        env.pop(name, None)
    lab = Lab(work / "lab", env, prefix)
    yield lab
    for argv in (["vagrant", "destroy", "-f"], ["vagrant", "box", "remove", "--force", lab.box]):
        subprocess.run(argv, cwd=lab.cwd, env=env, capture_output=True, timeout=300,
                       check=False)  # fmt: skip
    for dom in fleet.hv.domains():
        if dom.name.startswith(prefix):
            fleet.hv.destroy_and_undefine(dom.name)
    for pool in fleet.pools:
        for vol in fleet.hv.volumes(pool):
            if vol.name.startswith((prefix, lab.box_volume)):
                vol.delete()
    for name in lab_regions(fleet):  # what the test didn't remove
        fleet.run("region", "remove", name, "--force", "-o", "none")


def lab_regions(fleet: FleetLab) -> list[str]:
    ran = fleet.run("region", "list", "-o", "json")
    assert ran.returncode == 0, ran.stderr
    return sorted(r["name"] for r in json.loads(ran.stdout) if r["name"].startswith("lab"))


@pytest.mark.guest
@pytest.mark.vagrant
@pytest.mark.multihost
@pytest.mark.skipif(VAGRANT is None, reason="vagrant is not installed")
def test_lab_of_three_libvirt_hosts_takes_a_version_replicated_to_each(
    fleet: FleetLab, lab: Lab, tiny_image: Path
) -> None:
    start = time.monotonic()
    recipes.ensure_built(recipes.recipe("labhost"), Runner())
    lab.seconds["image build"] = round(time.monotonic() - start, 1)
    box_dir = fleet.root / "box"
    box_dir.mkdir()
    file, sha = lab("box", "box", str(box_dir)).split()[-2:]
    assert hashlib.sha256(Path(file).read_bytes()).hexdigest() == sha
    lab("vagrant up", "up")
    lab("region add x3", "regions")
    assert lab_regions(fleet) == [f"lab{i}" for i in range(1, HOSTS + 1)]

    start = time.monotonic()
    ran = fleet.run("region", "check", "-o", "json")
    lab.seconds["region check"] = round(time.monotonic() - start, 1)
    assert ran.returncode == 0, ran.stderr
    checked = {r["region"]: r for r in json.loads(ran.stdout)}
    for i in range(1, HOSTS + 1):
        assert checked[f"lab{i}"]["status"] == "ok", checked[f"lab{i}"]

    start = time.monotonic()
    targets = ["local", *(f"lab{i}" for i in range(1, HOSTS + 1))]
    ran = fleet.run("sig", "image-version", "create", "-r", G, "-i", D, "-e", "2.0.0",
                    "--source", str(tiny_image), "--target-regions", *targets, "-o", "json",
                    timeout=900)  # fmt: skip
    lab.seconds["replication"] = round(time.monotonic() - start, 1)
    assert ran.returncode == 0, ran.stderr
    version = json.loads(ran.stdout)
    assert version["provisioningState"] == "Succeeded"
    replicas = {r["region"]: r for r in version["sigvirt"]["replicas"]}
    assert sorted(replicas) == sorted(targets)
    local = hashlib.sha256(Path(replicas["local"]["path"]).read_bytes()).hexdigest()
    assert version["sigvirt"]["sha256"] == local

    # each lab host's replica, hashed there (testinfra through `vagrant ssh-config`)
    config = lab.cwd / "ssh-config"
    config.write_text(subprocess.run(["vagrant", "ssh-config"], cwd=lab.cwd, env=lab.env,
                                     capture_output=True, text=True, check=True).stdout)  # fmt: skip
    for i in range(1, HOSTS + 1):
        host = testinfra.get_host(f"ssh://lab{i}", ssh_config=str(config))
        path = replicas[f"lab{i}"]["path"]
        assert path.startswith("/var/lib/sigvirt/pools/lab/")
        assert host.check_output(f"sha256sum {path}").split()[0] == local, f"lab{i}"
        assert host.check_output("hostname") == f"lab{i}"
        # no libvirt network inside the lab host either (the image removes `default`)
        assert host.check_output("virsh -c qemu:///system net-list --all --name") == ""

    # down again: the version, the regions, the machines, the box and its volume
    ran = fleet.run("sig", "image-version", "delete", "-r", G, "-i", D, "-e", "2.0.0", "--yes",
                    "-o", "none")  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    lab("region remove x3", "unregions")
    assert lab_regions(fleet) == []
    lab("vagrant destroy", "down")
    lab("box remove", "unbox")
    assert [d.name for d in fleet.hv.domains() if d.name.startswith(lab.prefix)] == []
    stale = [v for v in fleet.volumes("") if v.startswith(lab.box_volume)]
    assert len(stale) == 1, fleet.volumes("")  # vagrant-libvirt leaves it; the fixture deletes it
    lab.seconds["total"] = round(sum(lab.seconds.values()), 1)
    # the CI cost by step (pytest --log-cli-level=INFO shows it)
    log.info("vagrant lab of %d hosts, seconds: %s", HOSTS, json.dumps(lab.seconds))
    assert os.path.exists(file)
