"""Fixtures for replication: region `local` (qemu:///system, two dir pools) and region `east`
(hostB over qemu+ssh, two pools), a regions.yaml naming them, a gallery per test, and qcow2
images with random data written by qemu-io.

Every pool is unique to this run and destroyed at the end, also when tests fail; pool
directories live under the session's /var/tmp/sigvirt-test-… scratch dir (0755).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest

from sigvirt.catalog.records import ImageVersion
from sigvirt.catalog.store import GalleryStore
from sigvirt.context import Context
from sigvirt.errors import SigvirtError
from sigvirt.galleries import definitions, galleries
from sigvirt.hosts import regions
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import Network, PoolConfig, RegionConfig, RegionsConfig
from sigvirt.runner import Runner
from sigvirt.versions import publish
from tests.support.base import unique
from tests.support.hostb import HostB

MiB = 1 << 20
UNREACHABLE_URI = "qemu+tcp://127.0.0.1:1/system"  # nothing listens on port 1


# -- images -------------------------------------------------------------------------------
def random_qcow2(path: Path, virtual: int, chunks: list[tuple[int, int]]) -> Path:
    """A qcow2 of `virtual` bytes with fresh random data at each (offset, length), written
    through qemu-io; everything else unallocated."""
    Runner().run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(virtual)])
    pattern = path.with_name(path.name + ".pattern")
    try:
        for off, length in chunks:
            # A new pattern per chunk: equal chunks could hide data landing at wrong offsets.
            pattern.write_bytes(os.urandom(length))
            Runner().run(
                ["qemu-io", "-f", "qcow2", "-c", f"write -q -s {pattern} {off} {length}", str(path)]
            )
    finally:
        pattern.unlink(missing_ok=True)
    return path


def spread_chunks(total: int, chunk: int = 32 * MiB, gap: int = 16 * MiB) -> list[tuple[int, int]]:
    """Chunks of `chunk` bytes with `gap` unallocated bytes between them, `total` in all."""
    return [(i * (chunk + gap), chunk) for i in range(total // chunk)]


def sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


# -- the lab ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pool:
    name: str
    path: Path


@dataclass(frozen=True)
class Lab:
    """Two regions on two real libvirt daemons, and the regions.yaml that names them."""

    config: RegionsConfig
    regions_path: Path
    local: tuple[Pool, ...]
    east: tuple[Pool, ...]
    hostb: HostB
    root: Path  # scratch directory of this lab

    def pool_path(self, region: str, pool: str) -> Path:
        pools = self.local if region == "local" else self.east
        return next(p.path for p in pools if p.name == pool)

    def new_gallery_root(self) -> Path:
        path = self.root / f"galleries-{uuid.uuid4().hex[:8]}"
        path.mkdir(mode=0o755)
        return path

    def env(self, gallery_root: Path) -> dict[str, str]:
        return {
            **os.environ,
            regions.ENV_REGIONS: str(self.regions_path),
            regions.ENV_GALLERY_ROOT: str(gallery_root),
        }


def lab_config(
    gallery_root: Path, local: tuple[Pool, ...], east: tuple[Pool, ...], east_uri: str
) -> RegionsConfig:
    local_region = RegionConfig(
        "local",
        "qemu:///system",
        tuple(PoolConfig(p.name, p.path) for p in local),
        network=Network(),
        port_range=(22200, 23199),
        description="this machine",
    )
    east_region = RegionConfig(
        "east",
        east_uri,
        tuple(PoolConfig(p.name) for p in east),
        network=Network(),
        port_range=(23200, 23999),
        description="hostB, the second libvirtd (qemu+ssh)",
    )
    west_region = RegionConfig(
        "west",
        UNREACHABLE_URI,
        (PoolConfig("nowhere"),),
        network=Network(),
        port_range=(24000, 24099),
        description="a host that never answers",
    )
    regions_ = {"local": local_region, "east": east_region, "west": west_region}
    return RegionsConfig(None, gallery_root, regions_)


def _destroy_pool(conn: libvirt.virConnect, name: str) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        pool = conn.storagePoolLookupByName(name)
        if pool.isActive():
            with contextlib.suppress(libvirt.libvirtError):
                pool.refresh(0)
            for vol in pool.listAllVolumes(0):
                with contextlib.suppress(libvirt.libvirtError):
                    vol.delete(0)
            pool.destroy()
        pool.undefine()


@contextlib.contextmanager
def running_lab(scratch: Path, system_hv: Hypervisor, hostb: HostB) -> Iterator[Lab]:
    tag = uuid.uuid4().hex[:6]
    root = scratch / f"repl-{tag}"
    root.mkdir(mode=0o755)
    local = tuple(Pool(unique(f"rl{tag}-{x}"), root / f"local-{x}") for x in "ab")
    east = tuple(Pool(unique(f"re{tag}-{x}"), Path()) for x in "ab")
    try:
        for p in local:
            system_hv.ensure_dir_pool(p.name, p.path)
        east = tuple(Pool(p.name, hostb.pool(p.name)) for p in east)
        config = lab_config(root / "galleries", local, east, hostb.uri)
        path = root / "regions.yaml"
        path.write_text(regions.dump(config))
        yield Lab(regions.load(path, env={}), path, local, east, hostb, root)
    finally:
        for p in local:
            system_hv.delete_pool(p.name)
        conn = libvirt.open(hostb.tcp_uri)
        try:
            for p in east:
                _destroy_pool(conn, p.name)
        finally:
            conn.close()
        for p in east:
            if p.path != Path():
                shutil.rmtree(p.path, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(scratch: Path, system_hv: Hypervisor, hostb: HostB) -> Iterator[Lab]:
    with running_lab(scratch, system_hv, hostb) as lab_:
        yield lab_


@dataclass
class Gallery:
    """A gallery and definition of one test, in its own gallery root."""

    ctx: Context
    root: Path
    gallery: str
    definition: str

    def publish(
        self, version: str, source: Path, targets: list[str] | None, count: int | None = None
    ) -> ImageVersion:
        inp = publish.VersionInput(str(source), target_regions=targets, replica_count=count)
        return publish.create_version(self.ctx, self.gallery, self.definition, version, inp)

    def get(self, version: str) -> ImageVersion:
        return self.ctx.store.get_version(self.gallery, self.definition, version)

    def cli_args(self, version: str) -> list[str]:
        return [
            "--gallery-name", self.gallery, "--gallery-image-definition", self.definition,
            "--gallery-image-version", version,
        ]  # fmt: skip


@pytest.fixture
def gallery(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gallery]:
    """A fresh gallery root, gallery and definition; every replica of it removed at the end."""
    root = lab.new_gallery_root()
    monkeypatch.setenv(regions.ENV_REGIONS, str(lab.regions_path))
    monkeypatch.setenv(regions.ENV_GALLERY_ROOT, str(root))
    config = regions.load(lab.regions_path, env={regions.ENV_GALLERY_ROOT: str(root)})
    ctx = Context(store=GalleryStore(root), regions=config, tmpdir=lab.root)
    name = "g" + uuid.uuid4().hex[:8]
    galleries.create_gallery(ctx.store, name, "", "local")
    definitions.create_definition(
        ctx.store, name, "img", definitions.DefinitionInput("pub", "off", "sku")
    )
    try:
        yield Gallery(ctx, root, name, "img")
    finally:
        _remove_replicas(ctx, lab, name)
        ctx.close()
        shutil.rmtree(root, ignore_errors=True)


def _remove_replicas(ctx: Context, lab: Lab, gallery: str) -> None:
    """Whatever the test left in the lab's pools under this gallery's name (volumes named
    GALLERY-…, partials .GALLERY-…), through libvirt, and overlays the test made."""
    for region, pools in (("local", lab.local), ("east", lab.east)):
        with contextlib.suppress(Exception):
            hv = ctx.hv(region)
            for p in pools:
                for vol in hv.volumes(p.name):
                    if gallery in vol.name:
                        with contextlib.suppress(SigvirtError):
                            vol.delete()
    for p in lab.local:
        for f in p.path.glob(f"*{gallery}*"):
            f.unlink(missing_ok=True)
