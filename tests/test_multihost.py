"""Three extra libvirt hosts (hostB, hostC, hostD: each its own libvirtd, pools and loopback
sshd, reached over qemu+ssh) and this machine's daemon: a version replicated to all of them,
a host dying mid-copy, and regions that can't be removed while replicas live there."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from sigvirt.errors import ExitCode
from sigvirt.hosts import regions
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import Network, PoolConfig, RegionConfig, RegionsConfig
from tests.support.base import unique
from tests.support.hostb import HostB, lab_script
from tests.support.replication import MiB, random_qcow2, sha256, spread_chunks

pytestmark = pytest.mark.multihost
NAMES = ("hostB", "hostC", "hostD")


@dataclass(frozen=True)
class World:
    hosts: dict[str, HostB]
    pools: dict[str, list[tuple[str, Path]]]  # region -> (pool, path as this machine sees it)
    regions_file: Path
    env: dict[str, str]
    root: Path

    def sigvirt(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sigvirt", *argv],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def popen(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "sigvirt", *argv],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def version(self, version: str) -> dict[str, object]:
        ran = self.sigvirt("sig", "image-version", "show", *GD, "-e", version, "-o", "json")
        assert ran.returncode == 0, ran.stderr
        doc: dict[str, object] = json.loads(ran.stdout)
        return doc


GD = ("-r", "multi", "-i", "img")


def _drop_pool(uri: str, name: str) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        conn = libvirt.open(uri)
        try:
            pool = conn.storagePoolLookupByName(name)
            if pool.isActive():
                pool.refresh(0)
                for vol in pool.listAllVolumes(0):
                    vol.delete(0)
                pool.destroy()
            pool.undefine()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def world(scratch: Path, system_hv: Hypervisor, lab_hosts: list[HostB]) -> Iterator[World]:
    hosts = dict(zip(NAMES, lab_hosts[:3], strict=True))
    tag = uuid.uuid4().hex[:6]
    root = scratch / f"multi-{tag}"
    root.mkdir(mode=0o755)
    pools: dict[str, list[tuple[str, Path]]] = {
        "local": [(unique(f"ml{tag}-{x}"), root / f"local-{x}") for x in "ab"]
    }
    try:
        for name, path in pools["local"]:
            system_hv.ensure_dir_pool(name, path)
        for region, hb in hosts.items():
            name = unique(f"m{region[-1].lower()}{tag}")
            pools[region] = [(name, hb.pool(name))]
        local = RegionConfig(
            "local", "qemu:///system", tuple(PoolConfig(n, p) for n, p in pools["local"]),
            network=Network(), port_range=(22200, 23199),
        )  # fmt: skip
        config = {"local": local}
        for i, (region, hb) in enumerate(hosts.items()):
            config[region] = RegionConfig(
                region, hb.uri, tuple(PoolConfig(n) for n, _p in pools[region]),
                network=Network(), port_range=(24000 + 100 * i, 24099 + 100 * i),
            )  # fmt: skip
        path = root / "regions.yaml"
        path.write_text(regions.dump(RegionsConfig(None, root / "galleries", config)))
        env = {
            **os.environ,
            regions.ENV_REGIONS: str(path),
            regions.ENV_GALLERY_ROOT: str(root / "galleries"),
        }
        w = World(hosts, pools, path, env, root)
        assert w.sigvirt("sig", "create", "-r", "multi").returncode == 0
        made = w.sigvirt("sig", "image-definition", "create", *GD, "-p", "p", "-f", "o", "-s", "s",
                         "--os-type", "Linux")  # fmt: skip
        assert made.returncode == 0, made.stderr
        yield w
    finally:
        for name, _path in pools.get("local", []):
            system_hv.delete_pool(name)
        for region, hb in hosts.items():
            for name, path in pools.get(region, []):
                _drop_pool(hb.tcp_uri, name)
                shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def replicas_by_region(doc: dict[str, object]) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for r in doc["sigvirt"]["replicas"]:  # type: ignore[index]
        out.setdefault(r["region"], []).append(r)
    return out


def test_a_version_reaches_every_host_byte_for_byte(world: World) -> None:
    image = random_qcow2(world.root / "small.qcow2", 64 * MiB, spread_chunks(24 * MiB, 8 * MiB))
    made = world.sigvirt(
        "sig", "image-version", "create", *GD, "-e", "1.0.0", "--source", str(image),
        "--target-regions", "local=2", "hostB", "hostC", "hostD=2", "-o", "json",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    doc = json.loads(made.stdout)
    assert doc["replicationStatus"]["aggregatedState"] == "Completed"
    found = replicas_by_region(doc)
    assert {r: len(v) for r, v in found.items()} == {"local": 2, "hostB": 1, "hostC": 1, "hostD": 2}
    want = doc["sigvirt"]["sha256"]
    for r in found["local"]:
        assert sha256(r["path"]) == want
    for region in NAMES:
        for r in found[region]:
            assert r["state"] == "completed"
            assert world.hosts[region].sha256sum(r["path"]) == want, (region, r)


def test_regions_holding_replicas_cannot_be_removed(world: World) -> None:
    if "1.0.0" not in world.sigvirt("sig", "image-version", "list", *GD, "-o", "tsv",
                                    "--query", "[].name").stdout.split():  # fmt: skip
        pytest.skip("needs the version of the test above")
    before = world.regions_file.read_text()
    ran = world.sigvirt("region", "remove", "hostD")
    assert ran.returncode == ExitCode.HAS_DEPENDENTS, ran.stderr
    assert "region hostD still holds: replica multi/img/1.0.0" in ran.stderr
    assert world.regions_file.read_text() == before


def _libvirtd_pid(hb: HostB) -> int:
    return int((hb.state_dir / "libvirtd.pid").read_text().strip())


def test_a_host_dying_mid_copy_fails_alone_and_a_rerun_completes_it(world: World) -> None:
    """hostC's libvirtd is SIGKILLed while its copy streams: hostC's replica fails with the
    reason, the other hosts complete; once hostC is back, `replicate` finishes it and no
    partial file is left on hostC."""
    image = random_qcow2(world.root / "big.qcow2", 1024 * MiB, spread_chunks(400 * MiB, 50 * MiB))
    hc = world.hosts["hostC"]
    proc = world.popen(
        "sig", "image-version", "create", *GD, "-e", "2.0.0", "--source", str(image),
        "--target-regions", "local", "hostB", "hostC", "hostD", "-o", "json",
    )  # fmt: skip
    killed = threading.Event()

    def kill_when_copying() -> None:
        record = world.root / "galleries" / "multi" / "images" / "img" / "versions" / "2.0.0.json"
        end = time.monotonic() + 300
        while time.monotonic() < end and proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                rec = json.loads(record.read_text())
                if any(
                    r["region"] == "hostC" and r["state"] == "copying" and r.get("progress", 0) > 0
                    for r in rec["replicas"]
                ):
                    os.kill(_libvirtd_pid(hc), signal.SIGKILL)
                    killed.set()
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_when_copying)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        watcher.join()
        restarted = lab_script("start", str(hc.state_dir), timeout=180)
    assert killed.is_set(), f"hostC's copy was never seen in progress: {err}"
    assert restarted.returncode == 0, restarted.stderr
    assert proc.returncode in (ExitCode.REPLICATION_FAILED, ExitCode.REGION_UNAVAILABLE), err
    found = replicas_by_region(json.loads(out))
    assert [r["state"] for r in found["hostC"]] == ["failed"]
    assert all(r["state"] == "completed" for reg in ("local", "hostB", "hostD")
               for r in found[reg])  # fmt: skip

    rerun = world.sigvirt("sig", "image-version", "replicate", *GD, "-e", "2.0.0", "-o", "json")
    assert rerun.returncode == 0, rerun.stderr
    doc = world.version("2.0.0")
    assert doc["replicationStatus"]["aggregatedState"] == "Completed"  # type: ignore[index]
    (hc_replica,) = replicas_by_region(doc)["hostC"]
    assert hc.sha256sum(hc_replica["path"]) == doc["sigvirt"]["sha256"]  # type: ignore[index]
    pool_dir = world.pools["hostC"][0][1]
    assert sorted(p.name for p in pool_dir.iterdir() if p.name.startswith(".")) == []
