"""Hardening: corrupt replicas found and never trusted, full disks, a vanished pool directory,
oversized custom data. Real pools under qemu:///system; small filesystems are tmpfs mounts."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sigvirt.catalog.records import ImageVersion, ReplicaState
from sigvirt.catalog.store import GalleryStore
from sigvirt.errors import ExitCode, NoSpace
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.runner import Runner
from sigvirt.versions import transfer
from tests.support.base import unique
from tests.support.catalog import SigEnv
from tests.support.replication import MiB, random_qcow2, spread_chunks

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small filesystem of its own at `path` (a full disk is then a matter of bytes)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                   check=True)  # fmt: skip
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@dataclass
class Site:
    """A gallery root and a regions.yaml of this test's own: region `local` with two pools,
    and whatever other regions the test adds."""

    root: Path
    regions: Path
    pools: dict[str, Path]  # pool name -> directory
    env: dict[str, str]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sigvirt", *argv], env=self.env, cwd=REPO,
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    def ok(self, *argv: str) -> subprocess.CompletedProcess[str]:
        ran = self.run(*argv)
        assert ran.returncode == 0, f"{argv}: {ran.returncode}\n{ran.stderr}"
        return ran

    def version(self, v: str = "1.0.0") -> ImageVersion:
        return GalleryStore(self.root / "galleries").get_version("g", "d", v)


VER = ["-r", "g", "-i", "d"]


@pytest.fixture
def site(scratch: Path, system_hv: Hypervisor) -> Iterator[Site]:
    tag = uuid.uuid4().hex[:6]
    root = scratch / f"hard-{tag}"
    root.mkdir(mode=0o755)
    pools = {unique(f"hd{tag}-{x}"): root / f"pool-{x}" for x in "abc"}
    names = list(pools)
    (root / "regions.yaml").write_text(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n"
        + "".join(f"      - name: {n}\n        path: {pools[n]}\n" for n in names[:2])
        + "  other:\n    uri: qemu:///system\n    pools:\n"
        f"      - name: {names[2]}\n        path: {pools[names[2]]}\n"
    )
    env = {
        **os.environ,
        "SIGVIRT_REGIONS": str(root / "regions.yaml"),
        "SIGVIRT_GALLERY_ROOT": str(root / "galleries"),
    }
    env.pop("SIGVIRT_FAULT", None)
    s = Site(root, root / "regions.yaml", pools, env)
    try:
        yield s
    finally:
        for name in pools:
            with contextlib.suppress(Exception):
                for vol in system_hv.volumes(name):
                    vol.delete()
            system_hv.delete_pool(name)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def image(scratch: Path) -> Path:
    path = scratch / f"hard-{uuid.uuid4().hex[:6]}.qcow2"
    return random_qcow2(path, 64 * MiB, spread_chunks(20 * MiB, 4 * MiB, 8 * MiB))


def publish(site: Site, image: Path, *targets: str) -> ImageVersion:
    site.ok("sig", "create", "-r", "g")
    site.ok("sig", "image-definition", "create", *VER, "--publisher", "p", "--offer", "o",
            "--sku", "s")  # fmt: skip
    site.ok("sig", "image-version", "create", *VER, "-e", "1.0.0", "--source", str(image),
            "--target-regions", *targets)  # fmt: skip
    return site.version()


def flip_data(path: Path) -> None:
    """Overwrite 4 KiB inside the image's first data cluster: the qcow2 structure stays
    sound (qemu-img check passes), only the disk's contents change."""
    out = Runner().run(["qemu-img", "map", "-f", "qcow2", "--output=json", str(path)]).stdout
    data = next(e for e in json.loads(out) if e["data"] and "offset" in e)
    with open(path, "r+b") as f:
        f.seek(data["offset"] + 8192)
        f.write(os.urandom(4096))


def sha(path: str) -> str:
    return transfer.sha256_file(Path(path))


# -- corruption ---------------------------------------------------------------------------------
@pytest.mark.hostb
def test_a_corrupt_source_is_caught_never_copied_and_scrub_heal_restore_it(
    site: Site, image: Path
) -> None:
    rec = publish(site, image, "local=2")
    first = rec.replicas[0]
    flip_data(Path(first.path))
    check = Runner().run(["qemu-img", "check", "-f", "qcow2", first.path], check=False)
    assert check.returncode == 0  # the format's own check sees nothing wrong

    # The copy into region `other` would take the first replica: its file changed since it
    # was verified, so it is hashed first, found corrupt, and the good one is used instead.
    site.ok("sig", "image-version", "update", *VER, "-e", "1.0.0",
            "--target-regions", "local=2", "other=1")  # fmt: skip
    rec = site.version()
    states = {r.volume: r.state for r in rec.replicas}
    assert states[first.volume] == ReplicaState.CORRUPT
    for r in rec.replicas:
        if r.state == ReplicaState.COMPLETED:
            assert sha(r.path) == rec.sha256, r

    # scrub lists it and exits 22; the others are verified again
    ran = site.run("sig", "image-version", "scrub", "-r", "g", "-o", "json")
    assert ran.returncode == ExitCode.CORRUPT_REPLICA
    rows = {r["volume"]: r["outcome"] for r in json.loads(ran.stdout)}
    assert rows.pop(first.volume) == "corrupt"  # known bad: listed, not hashed again
    assert set(rows.values()) == {"ok"}
    assert ran.stderr == f"sigvirt: error: g/d/1.0.0: replica {first.volume} in local is corrupt\n"

    # heal copies it again from a verified replica
    healed = json.loads(site.ok("sig", "image-version", "heal", "-r", "g", "-o", "json").stdout)
    assert [(h["volume"], h["outcome"]) for h in healed] == [(first.volume, "healed")]
    rec = site.version()
    assert all(r.state == ReplicaState.COMPLETED for r in rec.replicas)
    assert sha(first.path) == rec.sha256
    assert site.ok("sig", "image-version", "scrub", "-r", "g").returncode == 0


@pytest.mark.hostb
def test_scrub_marks_a_silently_changed_replica_corrupt(site: Site, image: Path) -> None:
    rec = publish(site, image, "local=2")
    victim = rec.replicas[1]
    flip_data(Path(victim.path))
    ran = site.run("sig", "image-version", "scrub", "-r", "g", "-i", "d", "-e", "1.0.0",
                   "--max-rate", "200")  # fmt: skip
    assert ran.returncode == ExitCode.CORRUPT_REPLICA, ran.stderr
    assert ran.stderr.strip() == (
        f"sigvirt: error: g/d/1.0.0: replica {victim.volume} in local is corrupt"
    )
    rec = site.version()
    assert [r.state for r in rec.replicas] == [ReplicaState.COMPLETED, ReplicaState.CORRUPT]
    # never cloned: a VM's placement only sees completed replicas
    assert [r.volume for r in rec.completed_replicas("local")] == [rec.replicas[0].volume]


@pytest.mark.hostb
def test_a_shrink_keeps_the_replicas_known_good(site: Site, image: Path) -> None:
    rec = publish(site, image, "local=3")
    # replica 0 changed on disk since it was verified; nothing has looked at it yet
    suspect = rec.replicas[0]
    flip_data(Path(suspect.path))
    site.ok("sig", "image-version", "update", *VER, "-e", "1.0.0", "--target-regions", "local=1")
    rec = site.version()
    (kept,) = rec.replicas
    assert kept.volume != suspect.volume
    assert sha(kept.path) == rec.sha256
    assert not Path(suspect.path).exists()


# -- full disks -------------------------------------------------------------------------------
@pytest.mark.hostb
def test_a_pool_without_room_is_refused_before_a_byte_is_written(site: Site, image: Path) -> None:
    small = site.pools[list(site.pools)[2]]
    with tmpfs(small, "64m"):
        publish(site, image, "local=1")
        ran = site.run("sig", "image-version", "update", *VER, "-e", "1.0.0",
                       "--target-regions", "local=1", "other=1")  # fmt: skip
        assert ran.returncode == ExitCode.NO_SPACE, ran.stderr
        pool = list(site.pools)[2]
        assert f"pool {pool} in region other has " in ran.stderr
        assert "GiB free; a replica needs" in ran.stderr
        assert list(small.iterdir()) == []  # nothing was written, not even a partial
        rec = site.version()
        (failed,) = [r for r in rec.replicas if r.region == "other"]
        assert (failed.state, failed.error) == (ReplicaState.FAILED, ExitCode.NO_SPACE)


def test_a_copy_into_a_full_filesystem_says_no_space(scratch: Path, image: Path) -> None:
    where = scratch / f"full-{uuid.uuid4().hex[:6]}"
    with tmpfs(where, "4m"):
        with pytest.raises(NoSpace, match="no space left on device"):
            transfer.local_copy(image, where / "copy.qcow2")
        assert list(where.iterdir()) == []  # the partial copy is gone too


@pytest.mark.hostb
def test_a_full_catalog_fails_the_command_instead_of_reporting_progress(
    site: Site, image: Path
) -> None:
    galleries = site.root / "galleries"
    with tmpfs(galleries, "1m"):
        publish(site, image, "local=1")
        filler = galleries / "filler"
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        ran = site.run("sig", "image-version", "update", *VER, "-e", "1.0.0",
                       "--target-regions", "local=2")  # fmt: skip
        assert ran.returncode == ExitCode.NO_SPACE, (ran.returncode, ran.stderr)
        assert "no space left on device" in ran.stderr
        filler.unlink()
        site.ok(
            "sig", "image-version", "update", *VER, "-e", "1.0.0", "--target-regions", "local=2"
        )
        rec = site.version()
        assert [r.state for r in rec.replicas] == [ReplicaState.COMPLETED] * 2
        for r in rec.replicas:
            assert sha(r.path) == rec.sha256


@pytest.mark.hostb
def test_a_vanished_pool_directory_is_a_region_error(
    site: Site, image: Path, system_hv: Hypervisor
) -> None:
    publish(site, image, "local=1")
    pool_a, pool_b = (site.pools[n] for n in list(site.pools)[:2])
    shutil.rmtree(pool_b)  # where the next replica would go
    ran = site.run("sig", "image-version", "update", *VER, "-e", "1.0.0",
                   "--target-regions", "local=2")  # fmt: skip
    assert ran.returncode == ExitCode.REGION_UNAVAILABLE, ran.stderr
    assert f"its directory {pool_b} is missing" in ran.stderr
    shutil.rmtree(pool_a)  # and where the version's replica is
    # The delete is done for users; the replica waits, pending, for a gc that can reach it.
    ran = site.run("sig", "image-version", "delete", *VER, "-e", "1.0.0")
    assert ran.returncode == 0, ran.stderr
    assert len(ran.stderr.splitlines()) == 1
    assert "directory is gone" in ran.stderr or "is missing" in ran.stderr
    assert "sig gc --yes" in ran.stderr
    assert site.run("sig", "image-version", "show", *VER, "-e", "1.0.0").returncode == (
        ExitCode.NOT_FOUND
    )


# -- inputs -----------------------------------------------------------------------------------
@pytest.mark.offline
def test_custom_data_is_capped_at_64_kb_and_never_read_past_it(
    offline_sig: SigEnv, tmp_path: Path
) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#cloud-config\n" + b"#" * (64 * 1024))
    for path, what in ((Path("/dev/zero"), "/dev/zero"), (big, str(big))):
        ran = offline_sig.cli("vm", "create", "-n", "x", "--image", "g/d", "--custom-data",
                              str(path))  # fmt: skip
        assert ran.code == ExitCode.INVALID_ARGUMENT
        assert ran.error == f"custom data: {what} is larger than 64 KB (Azure's limit too)"
