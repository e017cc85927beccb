"""A lab for scale-set upgrade tests: a regions file with two dir pools of this run, a gallery
with a definition and version 1.0.0 of a built image, and ways to run sigvirt against it (in
process, or the real binary) and to look at what it left in libvirt.

Not a plugin: test modules make their own module-scoped lab with `open_lab` and clean up with
`close_lab` (every domain and pool of it goes, even when a test failed).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sigvirt.cli import main
from sigvirt.context import Context
from sigvirt.guests import guest
from sigvirt.hosts import regions
from sigvirt.hosts import ssh as sshlib
from sigvirt.hosts.hypervisor import Hypervisor
from tests.support.base import SshKey, unique

REPO = Path(__file__).resolve().parents[2]
G, D = "fleetGallery", "tiny"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """sigvirt run in this process, as the console script runs it: exit code, out, err."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """What a run that must succeed printed with `-o json`."""
    code, out, err = cli(capsys, *argv, "-o", "json")
    assert code == 0, err
    return json.loads(out)


@dataclass(frozen=True)
class FleetLab:
    root: Path
    pools: tuple[str, str]
    key: SshKey
    hv: Hypervisor

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, regions.ENV_REGIONS: str(self.root / "regions.yaml"),
               regions.ENV_GALLERY_ROOT: str(self.root / "galleries")}  # fmt: skip
        env.pop("SIGVIRT_FAULT", None)
        return env

    def context(self) -> Context:
        return Context.from_config(regions.load(self.root / "regions.yaml", env=self.env))

    # -- running sigvirt ------------------------------------------------------------------
    def cli(self, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
        """In process (the environment names this lab: see open_lab)."""
        return cli(capsys, *argv)

    def json(self, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
        return cli_json(capsys, *argv)

    def run(
        self, *argv: str, fault: str = "", timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """The real binary, in its own process (SIGVIRT_FAULT=fault when given)."""
        env = self.env
        if fault:
            env["SIGVIRT_FAULT"] = fault
        return subprocess.run(
            [sys.executable, "-m", "sigvirt", *argv], env=env, cwd=REPO, capture_output=True,
            text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    # -- looking at what is there --------------------------------------------------------
    def volumes(self, prefix: str) -> list[str]:
        """Every volume of the lab's pools whose name starts with `prefix`."""
        return sorted(
            v.name for p in self.pools for v in self.hv.volumes(p) if v.name.startswith(prefix)
        )

    def owned(self, domain: str) -> list[str]:
        """The volumes a domain's provenance names (a reimage's second overlay too)."""
        prov = guest.provenance_of(self.hv.domain(domain))
        assert prov is not None
        return sorted(prov.volumes)

    def endpoint(self, name: str) -> sshlib.Endpoint:
        """The SSH endpoint of a VM or instance of this lab, by name."""
        prov = guest.provenance_of(self.hv.domain(name))
        assert prov is not None
        return sshlib.Endpoint("127.0.0.1", prov.ssh_port, prov.admin_user, self.key.private)

    def ssh(self, instance: dict[str, Any], command: str, timeout: float = 60) -> str:
        """Run a command in an az-shaped instance over its forward, as its admin user."""
        host, port = instance["sigvirt"]["address"].split(":")
        ep = sshlib.Endpoint(host, int(port), instance["osProfile"]["adminUsername"],
                             self.key.private)  # fmt: skip
        sshlib.wait_ready(ep, timeout)
        done = sshlib.run(ep, command)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


def write_regions(root: Path, pools: tuple[str, str], ports: str) -> None:
    (root / "regions.yaml").write_text(
        "regions:\n"
        "  local:\n"
        "    uri: qemu:///system\n"
        "    pools:\n"
        f"      - name: {pools[0]}\n        path: {root}/pool-a\n"
        f"      - name: {pools[1]}\n        path: {root}/pool-b\n"
        f"    network:\n      type: user-forward\n      ports: {ports}\n"
    )


@contextmanager
def open_lab(
    scratch: Path, hv: Hypervisor, image: Path, key: SshKey, name: str, ports: str
) -> Iterator[FleetLab]:
    """The lab, with the environment naming it for in-process runs while it is open."""
    root = scratch / name
    root.mkdir()
    pools = (unique(f"{name}-a"), unique(f"{name}-b"))
    write_regions(root, pools, ports)
    lab = FleetLab(root, pools, key, hv)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(regions.ENV_REGIONS, str(root / "regions.yaml"))
        mp.setenv(regions.ENV_GALLERY_ROOT, str(root / "galleries"))
        try:
            for argv in (
                ["sig", "create", "-r", G],
                ["sig", "image-definition", "create", "-r", G, "-i", D, "--publisher", "sv",
                 "--offer", name, "--sku", "1"],
                ["sig", "image-version", "create", "-r", G, "-i", D, "-e", "1.0.0", "--source",
                 str(image), "--target-regions", "local=2", "-o", "none"],
            ):  # fmt: skip
                assert main(argv) == 0, argv
            yield lab
        finally:
            close_lab(lab)


def close_lab(lab: FleetLab) -> None:
    prefixes = tuple(lab.pools)
    for dom in lab.hv.domains():
        prov = guest.provenance_of(dom)
        if prov is not None and prov.overlay_pool in prefixes:
            guest.delete(lab.hv, dom.name)
    for pool in lab.pools:
        for vol in lab.hv.volumes(pool):
            vol.delete()
        lab.hv.delete_pool(pool)
    shutil.rmtree(lab.root, ignore_errors=True)
