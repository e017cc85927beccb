"""Kill sigvirt at every named step of every long operation, then check what it left.

Each case runs the real CLI with SIGVIRT_FAULT=STEP[@N]: sigvirt SIGKILLs itself the Nth
time it passes STEP (sigvirt/faults.py), as a power cut or the OOM killer would. After each
kill the invariants hold:

  I1  no replica is marked completed whose bytes differ from the version's sha256;
  I2  nothing is deployable that can't be: `latest` resolves only to a published version
      whose completed replicas exist;
  I3  the command that recovers (the same one again, or the one its hint names) finishes;
  I4  after it, no file without a record and no record without its file: every file of
      the gallery in every pool is a completed replica a record names, and every completed
      replica's file is there.

The cases span import, replication inside a host and across hosts (hostB over qemu+ssh),
update, delete, `vm create` and `vmss scale`: more than fifty kill points.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sigvirt.catalog import latest
from sigvirt.catalog.names import ImageRef
from sigvirt.catalog.records import ImageVersion, ReplicaState, VersionState
from sigvirt.errors import NotFound, SigvirtError
from sigvirt.guests import guest
from sigvirt.hosts import streams
from sigvirt.versions import transfer
from tests.support.base import PREFIX, SshKey
from tests.support.replication import Gallery, Lab, MiB, random_qcow2, spread_chunks

pytestmark = pytest.mark.hostb

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image(lab: Lab) -> Path:
    """Big enough that copies take several chunks (the mid-copy kill points), small enough
    that fifty cases stay quick."""
    return random_qcow2(
        lab.root / "faults.qcow2", 64 * MiB, spread_chunks(20 * MiB, 4 * MiB, 8 * MiB)
    )


def sigvirt(
    lab: Lab, gallery: Gallery, *argv: str, fault: str = "", timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = lab.env(gallery.root)
    env.pop("SIGVIRT_FAULT", None)
    if fault:
        env["SIGVIRT_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "sigvirt", *argv],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def killed(lab: Lab, gallery: Gallery, fault: str, *argv: str) -> None:
    ran = sigvirt(lab, gallery, *argv, fault=fault)
    assert ran.returncode == -signal.SIGKILL, (
        f"{fault}: expected to die there, got rc {ran.returncode}\n{ran.stderr}"
    )


def ok(lab: Lab, gallery: Gallery, *argv: str) -> subprocess.CompletedProcess[str]:
    ran = sigvirt(lab, gallery, *argv)
    assert ran.returncode == 0, f"{' '.join(argv)}: rc {ran.returncode}\n{ran.stderr}"
    return ran


# -- the invariants ---------------------------------------------------------------------------
def _versions(gallery: Gallery) -> list[ImageVersion]:
    try:
        return gallery.ctx.store.list_versions(gallery.gallery, gallery.definition)
    except NotFound:
        return []


def _hash(gallery: Gallery, rec: ImageVersion, region: str, pool: str, volume: str) -> str:
    if gallery.ctx.regions.region(region).is_local:
        return transfer.sha256_file(gallery.ctx.hv(region).volume_path(pool, volume))
    return streams.hash_volume(gallery.ctx.hv(region).volume(pool, volume)).sha256


def completed_are_whole(gallery: Gallery) -> None:
    """I1."""
    for rec in _versions(gallery):
        for r in rec.replicas:
            if r.state == ReplicaState.COMPLETED:
                assert _hash(gallery, rec, r.region, r.pool, r.volume) == rec.sha256, r


def latest_is_deployable(gallery: Gallery) -> None:
    """I2."""
    ref = ImageRef(gallery.gallery, gallery.definition)
    try:
        rec = latest.resolve(gallery.ctx.store, ref)
    except (NotFound, SigvirtError):
        return
    assert rec.state == VersionState.SUCCEEDED
    done = rec.completed_replicas()
    assert done
    for r in done:
        assert gallery.ctx.hv(r.region).volume_exists(r.pool, r.volume), r


def files_and_records_agree(lab: Lab, gallery: Gallery) -> None:
    """I4: every file of this gallery in any pool is a completed (or corrupt) replica a
    record names, and every completed replica's file exists."""
    named = {
        (r.region, r.pool, r.volume)
        for rec in _versions(gallery)
        for r in rec.replicas
        if r.state in (ReplicaState.COMPLETED, ReplicaState.CORRUPT)
    }
    found = set()
    for region, pools in (("local", lab.local), ("east", lab.east)):
        hv = gallery.ctx.hv(region)
        for p in pools:
            for vol in hv.volumes(p.name):
                if gallery.gallery in vol.name:
                    found.add((region, p.name, vol.name))
    assert found == named


def invariants_after_kill(gallery: Gallery) -> None:
    completed_are_whole(gallery)
    latest_is_deployable(gallery)


def invariants_after_recovery(lab: Lab, gallery: Gallery) -> None:
    completed_are_whole(gallery)
    latest_is_deployable(gallery)
    files_and_records_agree(lab, gallery)
    leftovers = [p for p in gallery.root.rglob("*.tmp-*")]
    assert leftovers == [], "a record write's temporary file stayed behind"


@dataclass(frozen=True)
class Case:
    fault: str
    command: tuple[str, ...]  # what is killed
    recover: tuple[str, ...]  # what must then finish (rc 0)


def _version_args(gallery: Gallery, v: str) -> list[str]:
    return ["--gallery-name", gallery.gallery, "--gallery-image-definition", gallery.definition,
            "--gallery-image-version", v]  # fmt: skip


# -- import and replication (local and across hosts) ------------------------------------------
CREATE_STEPS = [
    # before it is published: the rerun cleans the stale claim and creates it again
    ("version.claimed", "create"),
    ("version.imported", "create"),
    ("version.renamed", "create"),
    # published: its other replicas are resumed by `replicate`
    ("version.published", "replicate"),
    ("replicas.planned", "replicate"),
    ("replica.copying@1", "replicate"),
    ("replica.copying@2", "replicate"),
    ("replica.copying@3", "replicate"),
    ("copy.chunk@1", "replicate"),
    ("copy.chunk@3", "replicate"),
    ("replica.copied@1", "replicate"),
    ("replica.copied@2", "replicate"),
    ("replica.copied@3", "replicate"),
    ("replica.verified@1", "replicate"),
    ("replica.verified@2", "replicate"),
    ("replica.verified@3", "replicate"),
    ("replica.renamed@1", "replicate"),
    ("replica.renamed@2", "replicate"),
    ("replica.renamed@3", "replicate"),
    ("replica.completed@1", "replicate"),
    ("replica.completed@3", "replicate"),
    ("stream.chunk@1", "replicate"),
    ("stream.chunk@4", "replicate"),
]


@pytest.mark.parametrize(("fault", "then"), CREATE_STEPS, ids=[c[0] for c in CREATE_STEPS])
def test_create_killed_at_every_step_recovers(
    lab: Lab, gallery: Gallery, image: Path, fault: str, then: str
) -> None:
    create = ["sig", "image-version", "create", *_version_args(gallery, "1.0.0"),
              "--source", str(image), "--target-regions", "local=2", "east=2"]  # fmt: skip
    killed(lab, gallery, fault, *create)
    invariants_after_kill(gallery)
    if then == "create":
        ok(lab, gallery, *create)
    else:
        ok(lab, gallery, "sig", "image-version", "replicate", *_version_args(gallery, "1.0.0"))
    rec = gallery.get("1.0.0")
    # three copies: local to local, local to hostB (a stream), and inside hostB (cp there)
    assert sorted((r.region, r.state) for r in rec.replicas) == [
        ("east", ReplicaState.COMPLETED), ("east", ReplicaState.COMPLETED),
        ("local", ReplicaState.COMPLETED), ("local", ReplicaState.COMPLETED),
    ]  # fmt: skip
    invariants_after_recovery(lab, gallery)


# -- update: grow and shrink ------------------------------------------------------------------
GROW_STEPS = [
    "version.updated", "replicas.planned", "replica.copying@1", "replica.copying@2",
    "replica.copied@1", "replica.copied@2", "replica.verified@2", "replica.renamed@1",
    "replica.renamed@2", "replica.completed@1", "copy.chunk@2", "stream.chunk@2",
]  # fmt: skip
SHRINK_STEPS = [
    "version.updated", "replicas.planned", "replica.removed@1", "replica.removed@2",
    "replica.removed@3",
]  # fmt: skip


@pytest.mark.parametrize("fault", GROW_STEPS)
def test_update_that_grows_killed_at_every_step_recovers(
    lab: Lab, gallery: Gallery, image: Path, fault: str
) -> None:
    gallery.publish("1.0.0", image, ["local"])
    update = ["sig", "image-version", "update", *_version_args(gallery, "1.0.0"),
              "--target-regions", "local=2", "east=1"]  # fmt: skip
    killed(lab, gallery, fault, *update)
    invariants_after_kill(gallery)
    ok(lab, gallery, *update)
    counts = {r: 0 for r in ("local", "east")}
    for r in gallery.get("1.0.0").replicas:
        assert r.state == ReplicaState.COMPLETED, r
        counts[r.region] += 1
    assert counts == {"local": 2, "east": 1}
    invariants_after_recovery(lab, gallery)


@pytest.mark.parametrize("fault", SHRINK_STEPS)
def test_update_that_shrinks_killed_at_every_step_recovers(
    lab: Lab, gallery: Gallery, image: Path, fault: str
) -> None:
    gallery.publish("1.0.0", image, ["local=2", "east=2"])
    update = ["sig", "image-version", "update", *_version_args(gallery, "1.0.0"),
              "--target-regions", "local=1", "--allow-replicated-location-deletion", "true"]  # fmt: skip
    killed(lab, gallery, fault, *update)
    invariants_after_kill(gallery)
    ok(lab, gallery, *update)
    rec = gallery.get("1.0.0")
    assert [(r.region, r.state) for r in rec.replicas] == [("local", ReplicaState.COMPLETED)]
    invariants_after_recovery(lab, gallery)


# -- delete -----------------------------------------------------------------------------------
DELETE_STEPS = [
    "version.deleting", "version.replica-removed@1", "version.replica-removed@2",
    "version.replica-removed@3",
]  # fmt: skip


@pytest.mark.parametrize("fault", DELETE_STEPS)
def test_delete_killed_at_every_step_recovers(
    lab: Lab, gallery: Gallery, image: Path, fault: str
) -> None:
    gallery.publish("1.0.0", image, ["local=2", "east=1"])
    gallery.publish("0.9.0", image, ["local"])
    delete = ["sig", "image-version", "delete", *_version_args(gallery, "1.0.0")]
    killed(lab, gallery, fault, *delete)
    invariants_after_kill(gallery)
    # A half-deleted version is nothing anyone deploys: latest is the older one now.
    ref = ImageRef(gallery.gallery, gallery.definition)
    assert latest.resolve(gallery.ctx.store, ref).name == "0.9.0"
    ok(lab, gallery, *delete)
    assert [v.name for v in _versions(gallery)] == ["0.9.0"]
    invariants_after_recovery(lab, gallery)


# -- VMs and scale sets -----------------------------------------------------------------------
VM_STEPS = [
    # killed before it started: the same create again reaps what is left and succeeds
    ("vm.defined", "create"),
    ("vm.overlay", "create"),
    ("vm.seed", "create"),
    ("vm.console", "create"),
    # killed after it started: the VM exists; deleting it removes every part of it
    ("vm.started", "delete"),
    ("vm.recorded", "delete"),
]


@pytest.fixture
def vm_gallery(lab: Lab, gallery: Gallery, tiny_image: Path) -> Iterator[Gallery]:
    gallery.publish("1.0.0", tiny_image, ["local"])
    yield gallery
    hv = gallery.ctx.hv("local")
    for dom in hv.domains():
        if dom.name.startswith(f"{PREFIX}-f"):
            guest.delete(hv, dom.name)


def _vm_leftovers(lab: Lab, gallery: Gallery, name: str) -> list[str]:
    hv = gallery.ctx.hv("local")
    found = [f"domain {name}"] if hv.domain_exists(name) else []
    for p in lab.local:
        found += [f"volume {v.name}" for v in hv.volumes(p.name) if v.name.startswith(name)]
    return found


@pytest.mark.guest
@pytest.mark.parametrize(("fault", "then"), VM_STEPS, ids=[c[0] for c in VM_STEPS])
def test_vm_create_killed_at_every_step_recovers(
    lab: Lab, vm_gallery: Gallery, ssh_key: SshKey, fault: str, then: str
) -> None:
    name = f"{PREFIX}-f{os.getpid() % 1000}-{fault.split('.')[1][:4]}"
    image = f"{vm_gallery.gallery}/{vm_gallery.definition}"
    create = ["vm", "create", "-n", name, "--image", image, "--size", "Lab_Tiny",
              "--ssh-key-value", str(ssh_key.private) + ".pub", "--no-wait"]  # fmt: skip
    killed(lab, vm_gallery, fault, *create)
    if then == "create":
        ok(lab, vm_gallery, *create)
    ok(lab, vm_gallery, "vm", "delete", "-n", name)
    assert _vm_leftovers(lab, vm_gallery, name) == []
    # Nothing holds the version now: it deletes.
    ok(lab, vm_gallery, "sig", "image-version", "delete", *_version_args(vm_gallery, "1.0.0"))


SCALE_STEPS = [
    ("vm.defined@1", 3), ("vm.overlay@2", 3), ("vm.console@2", 3), ("vm.started@1", 3),
    ("vmss.instance@1", 3), ("vmss.instance-deleted@1", 1), ("vm.deleted@1", 1),
]  # fmt: skip


@pytest.mark.guest
@pytest.mark.parametrize(("fault", "capacity"), SCALE_STEPS, ids=[c[0] for c in SCALE_STEPS])
def test_vmss_scale_killed_at_every_step_recovers(
    lab: Lab, vm_gallery: Gallery, ssh_key: SshKey, fault: str, capacity: int
) -> None:
    name = f"{PREFIX}-fs{os.getpid() % 1000}"
    image = f"{vm_gallery.gallery}/{vm_gallery.definition}"
    key = str(ssh_key.private) + ".pub"
    start = 1 if capacity > 1 else 3
    ok(lab, vm_gallery, "vmss", "create", "-n", name, "--image", image, "--size", "Lab_Tiny",
       "--instance-count", str(start), "--ssh-key-value", key, "--no-wait")  # fmt: skip
    scale = ["vmss", "scale", "-n", name, "--new-capacity", str(capacity), "--no-wait"]
    killed(lab, vm_gallery, fault, *scale)
    ok(lab, vm_gallery, *scale)
    listed = ok(lab, vm_gallery, "vmss", "list-instances", "-n", name, "-o", "json")
    instances = json.loads(listed.stdout)
    assert len(instances) == capacity
    ok(lab, vm_gallery, "vmss", "delete", "-n", name)
    assert _vm_leftovers(lab, vm_gallery, name) == []


def test_the_matrix_has_more_than_fifty_kill_points() -> None:
    points = len(CREATE_STEPS) + len(GROW_STEPS) + len(SHRINK_STEPS) + len(DELETE_STEPS)
    points += len(VM_STEPS) + len(SCALE_STEPS)
    assert points >= 50
