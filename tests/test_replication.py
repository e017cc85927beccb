"""Replication between two real libvirt daemons: `local` (qemu:///system, two pools) and
`east` (hostB over qemu+ssh, two pools); `west` never answers.

Every replica file is checked byte for byte (sha256) against the version: a replica marked
completed whose file is incomplete would fail these tests whenever it happened.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sigvirt import cli
from sigvirt.catalog.names import ImageRef
from sigvirt.catalog.records import ImageVersion, ReplicaState, aggregate
from sigvirt.context import Context
from sigvirt.errors import ExitCode, HasDependents, RegionUnavailable
from sigvirt.hosts.xmlbuild import overlay_volume_xml
from sigvirt.versions import publish, replication, targets
from tests.support.replication import Gallery, Lab, MiB, random_qcow2, sha256, spread_chunks

pytestmark = pytest.mark.hostb

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_image(lab: Lab) -> Path:
    """24 MiB of random data in a 64 MiB disk, holes between the chunks."""
    return random_qcow2(lab.root / "small.qcow2", 64 * MiB, spread_chunks(24 * MiB, 8 * MiB))


@pytest.fixture(scope="module")
def big_image(lab: Lab) -> Path:
    """~400 MiB of random data: long enough a copy to be killed in the middle."""
    return random_qcow2(lab.root / "big.qcow2", 1024 * MiB, spread_chunks(400 * MiB, 50 * MiB))


def _ref(g: Gallery, version: str) -> ImageRef:
    return ImageRef(g.gallery, g.definition, version)


def _partials(lab: Lab) -> list[Path]:
    return [
        f for p in (*lab.local, *lab.east) for f in p.path.iterdir() if f.name.endswith(".partial")
    ]


def assert_completed_replicas_are_whole(
    lab: Lab, rec: ImageVersion, checked: set[str] | None = None
) -> None:
    """The invariant: a replica is completed only if its file is the version, byte for byte.
    `checked` skips replicas verified before (a completed replica's file never changes)."""
    for r in rec.replicas:
        if r.state == ReplicaState.COMPLETED and (checked is None or r.volume not in checked):
            path = lab.pool_path(r.region, r.pool) / r.volume
            assert r.path == str(path)
            assert sha256(path) == rec.sha256, f"{r.volume} completed but its bytes differ"
            if checked is not None:
                checked.add(r.volume)


# -- two regions, counts 2 and 3 --------------------------------------------------------------
def test_replicates_to_two_regions_with_counts_2_and_3(
    lab: Lab, gallery: Gallery, small_image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = gallery.publish("1.0.0", small_image, ["local=2", "east=3"])

    assert rec.target_regions == {"local": 2, "east": 3}
    got = sorted((r.region, r.volume, r.pool, r.state, r.progress) for r in rec.replicas)
    la, lb = (p.name for p in lab.local)
    ea, eb = (p.name for p in lab.east)
    base = f"{gallery.gallery}-img-1.0.0"
    assert got == [
        ("east", f"{base}-east-0.qcow2", ea, ReplicaState.COMPLETED, 100),
        ("east", f"{base}-east-1.qcow2", eb, ReplicaState.COMPLETED, 100),
        ("east", f"{base}-east-2.qcow2", ea, ReplicaState.COMPLETED, 100),
        ("local", f"{base}-local-0.qcow2", la, ReplicaState.COMPLETED, 100),
        ("local", f"{base}-local-1.qcow2", lb, ReplicaState.COMPLETED, 100),
    ]
    assert_completed_replicas_are_whole(lab, rec)
    assert _partials(lab) == []
    # libvirt on each host sees its replicas, as qcow2 (the bytes are a gated qcow2)
    for r in rec.replicas:
        vol = gallery.ctx.hv(r.region).volume(r.pool, r.volume)
        assert "<format type='qcow2'/>" in vol.xml()
        assert str(vol.path) == r.path

    agg, rows = aggregate(rec)
    assert agg == "Completed"
    assert sorted((s.region, s.state, s.completed, s.wanted, s.progress) for s in rows) == [
        ("east", "Completed", 3, 3, 100),
        ("local", "Completed", 2, 2, 100),
    ]

    args = ["sig", "image-version", "show", *gallery.cli_args("1.0.0")]
    assert cli.main([*args, "--expand", "ReplicationStatus", "--output", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    status = shown["replicationStatus"]
    assert status["aggregatedState"] == "Completed"
    summary = sorted((s["region"], s["state"], s["progress"]) for s in status["summary"])
    assert summary == [("east", "Completed", 100), ("local", "Completed", 100)]
    counts = {
        t["name"]: t["regionalReplicaCount"] for t in shown["publishingProfile"]["targetRegions"]
    }
    assert counts == {"local": 2, "east": 3}
    replicas = shown["sigvirt"]["replicas"]
    assert len(replicas) == 5
    assert {r["state"] for r in replicas} == {"completed"}
    assert shown["sigvirt"]["sha256"] == rec.sha256


def test_count_changes_add_and_remove_replicas(
    lab: Lab, gallery: Gallery, small_image: Path
) -> None:
    gallery.publish("1.0.0", small_image, ["local"])
    rec = publish.update_version(
        gallery.ctx, _ref(gallery, "1.0.0"), target_regions=["local", "east=2"]
    )
    assert sorted((r.region, r.state) for r in rec.replicas) == [
        ("east", ReplicaState.COMPLETED), ("east", ReplicaState.COMPLETED), ("local", ReplicaState.COMPLETED)
    ]  # fmt: skip
    assert_completed_replicas_are_whole(lab, rec)

    gone = next(r for r in rec.replicas if r.volume.endswith("east-1.qcow2"))
    rec = publish.update_version(gallery.ctx, _ref(gallery, "1.0.0"), replica_count=1)
    assert rec.target_regions == {"local": 1, "east": 1}
    assert sorted(r.volume.rsplit("-", 2)[1] for r in rec.replicas) == ["east", "local"]
    assert not Path(gone.path).exists()
    assert not gallery.ctx.hv("east").volume_exists(gone.pool, gone.volume)

    rec = publish.update_version(
        gallery.ctx, _ref(gallery, "1.0.0"), target_regions=["local"],
        allow_replicated_location_deletion=True,
    )  # fmt: skip
    assert [r.region for r in rec.replicas] == ["local"]
    assert rec.target_regions == {"local": 1}
    assert list(lab.east[0].path.glob(f"{gallery.gallery}*")) == []


def test_no_wait_replicates_in_the_background(
    lab: Lab, gallery: Gallery, small_image: Path
) -> None:
    inp = publish.VersionInput(str(small_image), target_regions=["local=2", "east=1"])
    rec = publish.create_version(
        gallery.ctx, gallery.gallery, gallery.definition, "1.0.0", inp, wait=False
    )
    assert rec.completed_replicas() == [rec.replicas[0]]  # only the source replica so far
    rec = replication.wait(gallery.ctx, rec, timeout=120, poll=0.2)
    assert aggregate(rec)[0] == "Completed"
    assert_completed_replicas_are_whole(lab, rec)


# -- a killed replicator ----------------------------------------------------------------------
@contextlib.contextmanager
def replicator(
    argv: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m sigvirt ARGV` in its own session (its ssh children die with it)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sigvirt", *argv],
            env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _copying(rec: ImageVersion) -> list[str]:
    return [r.volume for r in rec.replicas if r.state == ReplicaState.COPYING and r.progress > 0]


def test_killed_mid_copy_never_completes_a_partial_and_a_rerun_finishes(
    lab: Lab, gallery: Gallery, big_image: Path
) -> None:
    rec = gallery.publish("1.0.0", big_image, ["local"])
    assert rec.allocated_size > 300 * MiB
    argv = ["sig", "image-version", "update", *gallery.cli_args("1.0.0")]
    argv += ["--target-regions", "local=2", "east=2"]  # az style: several after one flag
    log = lab.root / f"{gallery.gallery}-kill.log"
    checked: set[str] = set()
    with replicator(argv, lab.env(gallery.root), log) as proc:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            rec = gallery.get("1.0.0")  # records are replaced atomically: always whole
            assert_completed_replicas_are_whole(lab, rec, checked)
            if _copying(rec):
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, log.read_text()

    killed = gallery.get("1.0.0")
    assert _copying(killed), [(r.volume, r.state, r.progress) for r in killed.replicas]
    assert not all(r.state == ReplicaState.COMPLETED for r in killed.replicas)
    assert_completed_replicas_are_whole(lab, killed)
    for r in killed.replicas:
        if r.state == ReplicaState.COPYING:  # its bytes are under the temporary name only
            pool = lab.pool_path(r.region, r.pool)
            assert not (pool / r.volume).exists()
            # Recorded copying before its file is made (a region may wait for a stream):
            # bytes written means a partial exists.
            if r.progress > 0:
                assert (pool / targets.partial_name(r.volume)).exists()

    with replicator(["sig", "image-version", "replicate", *gallery.cli_args("1.0.0"), "--quiet"],
                    lab.env(gallery.root), log) as proc:  # fmt: skip
        assert proc.wait(timeout=300) == 0, log.read_text()
    rec = gallery.get("1.0.0")
    assert sorted((r.region, r.state) for r in rec.replicas) == [
        ("east", ReplicaState.COMPLETED), ("east", ReplicaState.COMPLETED), ("local", ReplicaState.COMPLETED), ("local", ReplicaState.COMPLETED)
    ]  # fmt: skip
    assert aggregate(rec)[0] == "Completed"
    assert_completed_replicas_are_whole(lab, rec)
    assert _partials(lab) == []


# -- failures ---------------------------------------------------------------------------------
def test_delete_is_not_blocked_by_a_region_that_never_got_a_byte(
    lab: Lab, gallery: Gallery, small_image: Path
) -> None:
    rec = gallery.publish("1.0.0", small_image, ["local", "west=2"])
    assert [r.state for r in rec.replicas if r.region == "west"] == [ReplicaState.FAILED] * 2
    ran = cli.main(["sig", "image-version", "delete", *gallery.cli_args("1.0.0")])
    assert ran == 0  # nothing was ever written where the host doesn't answer
    assert gallery.ctx.store.list_versions(gallery.gallery, gallery.definition) == []
    assert list(lab.local[0].path.glob(f"{gallery.gallery}*")) == []


def test_an_unreachable_region_fails_alone_with_its_reason(
    lab: Lab, gallery: Gallery, small_image: Path
) -> None:
    rec = gallery.publish("1.0.0", small_image, ["local=2", "east=1", "west=2"])

    by_region = {
        reg: [r for r in rec.replicas if r.region == reg] for reg in ("local", "east", "west")
    }
    assert [r.state for r in by_region["local"]] == [ReplicaState.COMPLETED, ReplicaState.COMPLETED]
    assert [r.state for r in by_region["east"]] == [ReplicaState.COMPLETED]
    assert [r.state for r in by_region["west"]] == [ReplicaState.FAILED, ReplicaState.FAILED]
    for r in by_region["west"]:
        assert r.reason.startswith(
            "region west: connect: libvirt host qemu+tcp://127.0.0.1:1/system unreachable"
        )
        assert "Connection refused" in r.reason
    assert_completed_replicas_are_whole(lab, rec)
    agg, rows = aggregate(rec)
    assert agg == "Failed"
    summary = {s.region: s for s in rows}
    assert {r: s.state for r, s in summary.items()} == {
        "local": "Completed", "east": "Completed", "west": "Failed"
    }  # fmt: skip
    assert "unreachable" in summary["west"].details

    # Running again retries only what is missing; the others are left alone.
    before = {r.volume: r.updated for r in rec.replicas if r.state == ReplicaState.COMPLETED}
    rec = replication.run(gallery.ctx, rec)
    assert [r.state for r in rec.replicas if r.region == "west"] == [
        ReplicaState.FAILED,
        ReplicaState.FAILED,
    ]
    assert {
        r.volume: r.updated for r in rec.replicas if r.state == ReplicaState.COMPLETED
    } == before

    # Dropping the dead region forgets its never-completed replicas.
    rec = publish.update_version(
        gallery.ctx, _ref(gallery, "1.0.0"), target_regions=["local=2", "east"]
    )
    assert sorted(r.region for r in rec.replicas) == ["east", "local", "local"]
    assert aggregate(rec)[0] == "Completed"


def test_copies_from_a_corrupt_only_replica_fail_and_leave_nothing(
    lab: Lab, gallery: Gallery, small_image: Path
) -> None:
    rec = gallery.publish("1.0.0", small_image, ["local"])
    (only,) = rec.replicas
    with open(only.path, "r+b") as f:  # bytes flipped behind sigvirt's back
        f.seek(Path(only.path).stat().st_size - 4096)
        f.write(b"\xff" * 16)
    ctx = gallery.ctx
    rec = publish.update_version(ctx, _ref(gallery, "1.0.0"), target_regions=["local=2", "east"])
    states = sorted((r.region, r.state) for r in rec.replicas)
    assert states == [
        ("east", ReplicaState.FAILED), ("local", ReplicaState.CORRUPT),
        ("local", ReplicaState.FAILED),
    ]  # fmt: skip
    for r in rec.replicas:
        if r.state == ReplicaState.FAILED:
            assert r.reason == "no completed replica to copy from"
            assert r.error == ExitCode.REPLICATION_FAILED
            assert not (lab.pool_path(r.region, r.pool) / r.volume).exists()
    (corrupt,) = [r for r in rec.replicas if r.state == ReplicaState.CORRUPT]
    assert "its bytes differ from the version's sha256" in corrupt.reason
    assert _partials(lab) == []
    # nothing corrupt is ever a base for a VM: no completed replica remains
    assert rec.completed_replicas() == []


def test_an_interrupted_removal_is_finished_not_copied_again(
    lab: Lab, gallery: Gallery, small_image: Path
) -> None:
    rec = gallery.publish("1.0.0", small_image, ["local=2"])
    doomed = rec.replicas[1]

    def half_removed(v: ImageVersion) -> ImageVersion:
        reps = tuple(
            r.moved(ReplicaState.DELETING) if r.key == doomed.key else r for r in v.replicas
        )
        return dataclasses.replace(v, replicas=reps, target_regions={"local": 1})

    gallery.ctx.store.update_version(gallery.gallery, "img", "1.0.0", half_removed)
    rec = replication.run(gallery.ctx, rec)
    assert [r.volume for r in rec.replicas] == [rec.replicas[0].volume]
    assert not Path(doomed.path).exists()


# -- dependents -------------------------------------------------------------------------------
def _overlay(gallery: Gallery, region: str, pool: str, backing: str, tag: str) -> str:
    """A qcow2 volume whose backing store is `backing`, made through libvirt (no domain)."""
    name = f"{gallery.gallery}-{tag}.qcow2"
    xml = overlay_volume_xml(name, 64 * MiB, Path(backing))
    gallery.ctx.hv(region).create_volume(pool, xml)
    return f"{pool}/{name}"


def test_a_replica_with_a_live_dependent_survives_count_reductions(
    lab: Lab, gallery: Gallery, small_image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = gallery.publish("1.0.0", small_image, ["local", "east=3"])
    east = {
        int(r.volume.rsplit("-", 1)[1].split(".")[0]): r for r in rec.replicas if r.region == "east"
    }
    # Replica 2 is the one a reduction would pick first (the highest index).
    clone = _overlay(gallery, "east", lab.east[1].name, east[2].path, "clone")

    rec = publish.update_version(
        gallery.ctx, _ref(gallery, "1.0.0"), target_regions=["local", "east=2"]
    )
    kept = sorted(r.volume for r in rec.replicas if r.region == "east")
    assert kept == [east[0].volume, east[2].volume]
    assert not Path(east[1].path).exists()
    assert Path(east[2].path).exists()

    # Removing the region would remove the depended-on replica: refused, nothing changes.
    with pytest.raises(HasDependents) as err:
        publish.update_version(
            gallery.ctx, _ref(gallery, "1.0.0"), target_regions=["local"],
            allow_replicated_location_deletion=True,
        )  # fmt: skip
    assert err.value.message == (
        f"image version {rec.ref}: can't remove replicas that clones depend on: "
        f"volume {clone} (on {east[2].volume})"
    )
    assert gallery.get("1.0.0").replicas == rec.replicas

    # Two depended-on replicas can't go down to one; the CLI says which clones hold them.
    clone0 = _overlay(gallery, "east", lab.east[0].name, east[0].path, "clone0")
    argv = ["sig", "image-version", "update", *gallery.cli_args("1.0.0")]
    targets = ["--target-regions", "local", "east=1"]
    assert cli.main([*argv, *targets]) == ExitCode.HAS_DEPENDENTS
    stderr = capsys.readouterr().err
    assert f"volume {clone0} (on {east[0].volume})" in stderr
    assert f"volume {clone} (on {east[2].volume})" in stderr
    rec = gallery.get("1.0.0")
    assert sorted(r.volume for r in rec.replicas if r.region == "east") == kept
    assert_completed_replicas_are_whole(lab, rec)


def test_only_regions_that_shrink_are_asked_for_dependents(
    lab: Lab, gallery: Gallery, small_image: Path
) -> None:
    rec = gallery.publish("1.0.0", small_image, ["local", "east"])
    # the same records, but east's host now down
    down = dataclasses.replace(lab.config.regions["east"], uri=lab.config.regions["west"].uri)
    config = dataclasses.replace(lab.config, regions={**lab.config.regions, "east": down})
    with Context(store=gallery.ctx.store, regions=config) as ctx:
        assert targets.dependents_for(ctx, rec, {"local": 2, "east": 1, "west": 1}) == {}
        with pytest.raises(RegionUnavailable, match="region east: connect: libvirt host"):
            targets.dependents_for(ctx, rec, {"local": 1})
    assert targets.dependents_for(gallery.ctx, rec, {"local": 1}) == {}


# -- the direct path and the libvirt relay ----------------------------------------------------
@pytest.mark.parametrize("direct", [True, False], ids=["direct-ssh", "libvirt-relay"])
def test_a_copy_to_a_remote_host_takes_the_configured_path_and_is_whole(
    lab: Lab, gallery: Gallery, small_image: Path, direct: bool
) -> None:
    """By default a local replica reaches a qemu+ssh host over one ssh into `cat`
    (hosts/sshpush.py); `replication: {direct_ssh: false}` sends it through libvirt's
    stream. Either way the replica is the version's bytes, and each path is the one taken:
    the other's copy function is never called (counted, not replaced)."""
    from sigvirt.hosts import regions as regions_mod
    from sigvirt.hosts import sshpush, streams

    config = dataclasses.replace(
        gallery.ctx.regions, replication=regions_mod.ReplicationConfig(direct_ssh=direct)
    )
    gallery.ctx = dataclasses.replace(gallery.ctx, regions=config)
    calls: dict[str, int] = {"push_file": 0, "upload_file": 0}
    real = {"push_file": sshpush.push_file, "upload_file": streams.upload_file}

    def counted(name: str) -> object:
        def call(*args: object, **kwargs: object) -> object:
            calls[name] += 1
            return real[name](*args, **kwargs)  # type: ignore[operator]

        return call

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sshpush, "push_file", counted("push_file"))
        mp.setattr(streams, "upload_file", counted("upload_file"))
        rec = gallery.publish("1.0.0", small_image, ["local", "east=2"])
    assert [r.state for r in rec.replicas] == [ReplicaState.COMPLETED] * 3
    assert_completed_replicas_are_whole(lab, rec)
    assert calls == ({"push_file": 1, "upload_file": 0} if direct else
                     {"push_file": 0, "upload_file": 1})  # fmt: skip
    assert _partials(lab) == []
