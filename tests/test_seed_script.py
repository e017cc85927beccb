"""The announcement's az commands (docs/seed-script.sh) run through sigvirt, end to end: three
regions on this machine's libvirtd, a version with 5 + 1 + 1 replicas, a VM and a two-instance
scale set booted from it and reached over SSH, and the queries the Azure docs use."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra

from sigvirt.hosts.hypervisor import Hypervisor
from tests.support.base import unique

pytestmark = pytest.mark.guest

SCRIPT = Path(__file__).parent.parent / "docs" / "seed-script.sh"
REGIONS = {"westcentralus": 2, "southcentralus": 1, "eastus2": 1}  # pools per region
PORTS = {"westcentralus": "23600-23649", "southcentralus": "23650-23699", "eastus2": "23700-23749"}


@dataclass(frozen=True)
class Seeded:
    env: dict[str, str]
    run: subprocess.CompletedProcess[str]
    pools: dict[str, list[Path]]

    def sigvirt(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sigvirt", *argv],
            env=self.env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    def json(self, *argv: str) -> object:
        ran = self.sigvirt(*argv, "-o", "json")
        assert ran.returncode == 0, ran.stderr
        return json.loads(ran.stdout)


@pytest.fixture(scope="module")
def seeded(scratch: Path, system_hv: Hypervisor, tiny_image: Path) -> Iterator[Seeded]:
    root = scratch / "seed"
    home = root / "home"
    home.mkdir(parents=True)
    lines = ["regions:"]
    pools: dict[str, list[Path]] = {}
    names: list[str] = []
    for region, count in REGIONS.items():
        lines += [f"  {region}:", "    uri: qemu:///system", "    pools:"]
        for n in range(count):
            name, path = unique(f"seed-{region[:5]}{n}"), root / "pools" / f"{region}-{n}"
            names.append(name)
            pools.setdefault(region, []).append(path)
            lines += [f"      - name: {name}", f"        path: {path}"]
        lines += ["    network:", "      type: user-forward", f"      ports: {PORTS[region]}"]
    (root / "regions.yaml").write_text("\n".join(lines) + "\n")
    env = {
        **os.environ,
        "HOME": str(home),
        "SIGVIRT": f"{sys.executable} -m sigvirt",
        "SIGVIRT_REGIONS": str(root / "regions.yaml"),
        "SIGVIRT_GALLERY_ROOT": str(root / "galleries"),
    }
    env.pop("SIGVIRT_OUTPUT", None)  # the script's queries pick their own -o
    seeded = Seeded(env, subprocess.CompletedProcess([], 0), pools)
    try:
        run = subprocess.run(
            ["bash", str(SCRIPT), str(tiny_image)],
            env=env, capture_output=True, text=True, timeout=1500, check=False,
        )  # fmt: skip
        yield Seeded(env, run, pools)
    finally:
        # Everything the script made, in the order that lets each go.
        seeded.sigvirt("vmss", "delete", "-g", "myResourceGroup", "-n", "myScaleSet", "--yes")
        seeded.sigvirt("vm", "delete", "-g", "rg", "-n", "rg-vm", "--yes")
        seeded.sigvirt(
            "sig", "image-version", "delete", "-g", "myGalleryRG", "--gallery-name", "myGallery",
            "--gallery-image-definition", "myImageDefinition", "--gallery-image-version", "1.0.2",
        )  # fmt: skip
        for name in names:
            system_hv.delete_pool(name)
        shutil.rmtree(root, ignore_errors=True)


def test_the_announcement_runs_as_written(seeded: Seeded) -> None:
    assert seeded.run.returncode == 0, seeded.run.stderr[-3000:]
    found = re.search(
        r"^id: (?P<id>.*)\ntarget regions: (?P<regions>.*)\nreplication: (?P<state>.*)$",
        seeded.run.stdout,
        re.MULTILINE | re.DOTALL,
    )
    assert found, seeded.run.stdout
    out = {
        "id": found["id"],
        "target regions": found["regions"],
        "replication": found["state"].strip(),
    }
    assert out["id"] == (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/myGalleryRG/"
        "providers/Microsoft.Compute/galleries/myGallery/images/myImageDefinition/versions/1.0.2"
    )
    regions = {r["n"]: r["c"] for r in json.loads(out["target regions"])}
    assert regions == {"westcentralus": 5, "southcentralus": 1, "eastus2": 1}
    assert out["replication"] == "Completed"


def test_replicas_are_full_copies_in_their_regions(seeded: Seeded) -> None:
    assert seeded.run.returncode == 0
    files = {
        region: [p for path in paths for p in path.glob("myGallery-myImageDefinition-1.0.2*")]
        for region, paths in seeded.pools.items()
    }
    assert {region: len(found) for region, found in files.items()} == {
        "westcentralus": 5, "southcentralus": 1, "eastus2": 1,
    }  # fmt: skip


def test_the_vm_and_the_scale_set_answer_over_ssh(seeded: Seeded) -> None:
    assert seeded.run.returncode == 0
    key = Path(seeded.env["HOME"]) / ".ssh" / "id_ed25519"
    assert key.exists(), "--generate-ssh-keys made no key"
    vm = seeded.json("vm", "show", "-g", "rg", "-n", "rg-vm")
    assert isinstance(vm, dict)
    assert vm["storageProfile"]["imageReference"]["id"].endswith("/versions/1.0.2")
    instances = seeded.json("vmss", "list-instances", "-g", "myResourceGroup", "-n", "myScaleSet")
    assert isinstance(instances, list) and len(instances) == 2
    for doc in [vm, *instances]:
        user = doc["osProfile"]["adminUsername"]
        host = testinfra.get_host(
            f"paramiko://{user}@{doc['sigvirt']['address']}", ssh_identity_file=str(key)
        )
        assert host.run("true").rc == 0
