"""`sig space` and `sig gc` on real pools under qemu:///system.

The space report's numbers are the files' (stat, qemu-img info), a clone's overlay is counted
under the version it depends on, and a region that doesn't answer is a row that says so. The
garbage collector, on pools seeded with every kind of leftover, lists them without touching
anything, then removes exactly those past the grace period, never a file a domain's backing
chain reaches; killed at any of its steps, the next run finds a consistent state and
finishes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sigvirt.catalog.policy import Caller
from sigvirt.catalog.records import ImageVersion, ReplicaState
from sigvirt.errors import ExitCode, InvalidArgument, PermissionRefused
from sigvirt.guests import guest
from sigvirt.guests.guest import GuestSpec, PortAllocator
from sigvirt.hosts import xmlbuild
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.lifecycle import gc, scan, space
from tests.support import imagefactory as f
from tests.support.base import SshKey, unique
from tests.support.catalog import SigEnv, qemu_info, tree
from tests.support.replication import Gallery, Lab

MiB = 1 << 20
HOURS_AGO = time.time() - 2 * 3600
REPO = Path(__file__).resolve().parents[1]


# -- names and durations (no host needed) -----------------------------------------------------
@pytest.mark.offline
def test_replica_names_are_taken_apart_only_when_they_are_sigvirts() -> None:
    name = scan.replica_name("myGallery-my-def.x-1.0.2-local-3.qcow2", "local")
    assert name == scan.ReplicaName("myGallery", "my-def.x", "1.0.2", "local", 3)
    assert name.ref == "myGallery/my-def.x/1.0.2"
    for other in (
        "myGallery-myDef-1.0.2-east-0.qcow2",  # another region's name in this region's pool
        "myGallery-myDef-1.0-local-0.qcow2",
        "myGallery-myDef-01.0.2-local-0.qcow2",
        "myGallery-myDef-1.0.2-local-0.raw",
        "myGallery-1.0.2-local-0.qcow2",  # no definition
        "vm1.qcow2",
        "notes.txt",
    ):
        assert scan.replica_name(other, "local") is None, other
    # A gallery name has no '-': the first one ends it, whatever the definition holds.
    assert scan.replica_name("my-Gallery-1.0.2-local-0.qcow2", "local") == scan.ReplicaName(
        "my", "Gallery", "1.0.2", "local", 0
    )
    assert scan.partial_of(".myGallery-myDef-1.0.2-local-0.qcow2.partial") == (
        "myGallery-myDef-1.0.2-local-0.qcow2"
    )
    assert scan.partial_of("myGallery-myDef-1.0.2-local-0.qcow2") is None
    assert scan.guest_volume("web-3.qcow2") == ("web-3", "overlay")
    assert scan.guest_volume("web-3.cidata.iso") == ("web-3", "seed")
    assert scan.guest_volume("web-3.console.log") == ("web-3", "console")
    assert scan.guest_volume("web-3.data12.qcow2") == ("web-3", "data")
    assert scan.guest_volume("myGallery-myDef-1.0.2-local-0.qcow2") is None  # dots: a version


@pytest.mark.offline
def test_grace_is_seconds_or_a_duration() -> None:
    assert gc.parse_grace("3600") == 3600
    assert gc.parse_grace("90m") == 5400
    assert gc.parse_grace("1h30m") == 5400
    assert gc.parse_grace("2d") == 172800
    assert gc.parse_grace("0") == 0
    for bad in ("", "1y", "-5", "1 hour", "h"):
        with pytest.raises(InvalidArgument):
            gc.parse_grace(bad)


@pytest.mark.offline
def test_gc_is_for_root_only(offline_sig: SigEnv) -> None:
    ctx = offline_sig.context()
    ctx.store.caller = Caller(4242, "someone", frozenset({"users"}))
    with pytest.raises(PermissionRefused, match="sig gc runs as root"):
        gc.plan(ctx)


@pytest.mark.offline
def test_space_and_gc_refuse_bad_arguments(offline_sig: SigEnv) -> None:
    assert offline_sig.refused(ExitCode.INVALID_NAME, "sig", "space", "a/b/c/d") == (
        "'a/b/c/d' is not GALLERY, GALLERY/DEFINITION or GALLERY/DEFINITION/VERSION"
    )
    assert offline_sig.refused(ExitCode.INVALID_ARGUMENT, "sig", "gc", "--grace", "soon") == (
        "--grace 'soon': give seconds or a duration such as 90m, 1h30m, 2d"
    )


# -- helpers ------------------------------------------------------------------------------------
def _published(sig: SigEnv, tmp_path: Path, *versions: str, extra: tuple[str, ...] = ()) -> None:
    sig.gallery()
    sig.definition()
    src = f.qcow2(tmp_path / "src.qcow2", 64 * MiB, data=True)
    for v in versions:
        sig.version(v, src, *extra)


def _overlay(hv: Hypervisor, pool: str, name: str, backing: str | Path) -> Path:
    vol = hv.create_volume(pool, xmlbuild.overlay_volume_xml(name, 64 * MiB, Path(backing)))
    return vol.path


def _domain_xml(name: str, disk: Path, backing: str | Path) -> str:
    """A domain (never started) whose disk's backing chain reaches `backing`: what
    dependents.py reads from libvirt for a clone."""
    return f"""<domain type='qemu'>
  <name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='{backing}'/>
        <backingStore/>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>"""


@pytest.fixture
def domains(system_hv: Hypervisor) -> Iterator[list[str]]:
    """Domains a test defines: undefined at the end, whatever happened."""
    made: list[str] = []
    yield made
    for name in made:
        system_hv.destroy_and_undefine(name)


def _write(path: Path, data: bytes) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {len(data)}", str(path)],
                   check=True, capture_output=True)  # fmt: skip


def _blocks(path: Path) -> int:
    return os.stat(path).st_blocks * 512


# -- sig space ----------------------------------------------------------------------------------
def test_space_numbers_are_the_files(
    sig: SigEnv, tmp_path: Path, system_hv: Hypervisor, domains: list[str]
) -> None:
    _published(sig, tmp_path, "1.0.0", extra=("--target-regions", "local=2"))
    rec = sig.store.get_version("myGallery", "myDef", "1.0.0")
    r0, r1 = rec.replicas
    # A VM's overlay on replica 0, with 3 MiB written into it: its bytes count under 1.0.0.
    vm = unique("spaceclone")
    overlay = _overlay(system_hv, r0.pool, f"{vm}.qcow2", r0.path)
    _write(overlay, b"x" * (3 * MiB))
    system_hv.refresh_pool(r0.pool)
    system_hv.define(_domain_xml(vm, overlay, r0.path))
    domains.append(vm)

    out = sig.cli("sig", "space", "myGallery", "-o", "json").json
    (row,) = out["versions"]
    assert row["version"] == "myGallery/myDef/1.0.0"
    assert row["region"] == "local"
    assert row["reachable"] is True
    info = qemu_info(Path(r0.path))
    assert row["virtualSize"] == info["virtual-size"] == 64 * MiB
    by_volume = {x["volume"]: x for x in row["replicas"]}
    assert set(by_volume) == {r0.volume, r1.volume}
    for r in (r0, r1):
        x = by_volume[r.volume]
        info = qemu_info(Path(r.path))
        assert x["present"] is True
        assert x["allocated"] == _blocks(Path(r.path)) == info["actual-size"]
        assert x["fileSize"] == os.stat(r.path).st_size
        assert x["virtualSize"] == info["virtual-size"]
    assert row["replicaBytes"] == _blocks(Path(r0.path)) + _blocks(Path(r1.path))
    assert row["freedByDelete"] == row["replicaBytes"]
    assert row["softDeleted"] == 0
    (clone,) = row["clones"]
    assert clone == {
        "path": str(overlay),
        "volume": f"{r0.pool}/{vm}.qcow2",
        "replica": r0.volume,
        "domains": [vm],
        "allocated": _blocks(overlay),
    }
    assert _blocks(overlay) >= 3 * MiB
    assert row["cloneBytes"] == _blocks(overlay)

    pools = {p["pool"]: p for p in out["pools"]}
    assert set(pools) == {p.name for p in sig.pools.replicas}
    for pool in sig.pools.replicas:
        p, st = pools[pool.name], os.statvfs(pool.path)
        assert p["status"] == "ok"
        assert p["path"] == str(pool.path)
        assert p["capacity"] == st.f_blocks * st.f_frsize
        # libvirt's "available" is the free blocks (f_bfree, root's reserve included); the
        # filesystem is shared with everything else running, so it moves a little meanwhile
        assert abs(p["available"] - st.f_bfree * st.f_frsize) < 256 * MiB
        assert p["allocation"] + p["available"] == p["capacity"]

    # Narrower scopes give the same row; a table for people says the same.
    one = sig.cli("sig", "space", "myGallery/myDef/1.0.0", "-l", "local", "-o", "json").json
    assert [v["replicaBytes"] for v in one["versions"]] == [row["replicaBytes"]]
    table = sig.cli("sig", "space", "myGallery/myDef")
    assert table.code == 0, table.err
    assert "myGallery/myDef/1.0.0" in table.out and "pools" in table.out
    query = sig.cli("sig", "space", "--query", "versions[0].replicaBytes", "-o", "tsv")
    assert query.out == f"{row['replicaBytes']}\n"
    assert sig.cli("sig", "space", "nope", "-o", "json").code == ExitCode.NOT_FOUND


def test_space_reports_a_region_that_does_not_answer(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _published(sig, tmp_path, "1.0.0")
    # A second region on a port nothing listens on, and a record that has a replica there.
    text = sig.pools.regions_file.read_text()
    far = tmp_path / "regions.yaml"
    far.write_text(text + "  far:\n    uri: qemu+tcp://127.0.0.1:1/system\n    pools: [faraway]\n")
    sig.env["SIGVIRT_REGIONS"] = str(far)
    monkeypatch.setenv("SIGVIRT_REGIONS", str(far))

    def add_far(v: ImageVersion) -> ImageVersion:
        r = dataclasses.replace(v.replicas[0], region="far", pool="faraway", path="/x/y.qcow2",
                                volume="myGallery-myDef-1.0.0-far-0.qcow2")  # fmt: skip
        return dataclasses.replace(v, replicas=(*v.replicas, r))

    sig.store.update_version("myGallery", "myDef", "1.0.0", add_far)
    ran = sig.cli("sig", "space", "-o", "json")
    assert ran.code == 0, ran.err
    rows = {v["region"]: v for v in ran.json["versions"]}
    assert rows["local"]["reachable"] is True
    assert rows["local"]["replicaBytes"] > 0
    assert rows["far"]["reachable"] is False
    assert "127.0.0.1:1" in rows["far"]["detail"] or "far" in rows["far"]["detail"]
    assert rows["far"]["replicaBytes"] is None
    assert [x["present"] for x in rows["far"]["replicas"]] == [None]
    far_pools = [p for p in ran.json["pools"] if p["region"] == "far"]
    assert [(p["pool"], p["status"]) for p in far_pools] == [("faraway", "unreachable")]
    assert "region far did not answer" in ran.err
    # gc lists the region it could not look at, and collects the others
    plan = sig.cli("sig", "gc", "-o", "json").json
    assert [u["region"] for u in plan["unreachable"]] == ["far"]


# -- sig gc -------------------------------------------------------------------------------------
def _pool_state(sig: SigEnv) -> dict[str, tuple[int, int, int]]:
    """Every file of the pools with its size, mtime and inode."""
    out = {}
    for pool in sig.pools.replicas:
        for p in pool.path.iterdir():
            st = p.stat()
            out[f"{pool.name}/{p.name}"] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def _old(path: Path) -> Path:
    os.utime(path, (HOURS_AGO, HOURS_AGO))
    return path


@dataclasses.dataclass
class Seeded:
    """Every kind of leftover, and the files that must survive."""

    garbage: dict[str, str]  # volume -> kind, old enough to go
    young: set[str]  # garbage too, but within the grace period
    held: str  # an orphan replica a domain's chain reaches
    keep: set[str]  # not garbage at all
    missing: tuple[str, str]  # (version, volume) of a record whose file is gone


def _seed(sig: SigEnv, tmp_path: Path, hv: Hypervisor, domains: list[str]) -> Seeded:
    # two replicas each: heal has a good one to copy a lost one from
    _published(sig, tmp_path, "1.0.0", "1.1.0", extra=("--target-regions", "local=2"))
    rec = sig.store.get_version("myGallery", "myDef", "1.0.0")
    r0 = rec.replicas[0]
    a, b = sig.pools.replicas
    src = Path(r0.path)

    def put(pool: Path, name: str, old: bool = True) -> str:
        f.qcow2(pool / name, 16 * MiB, data=True)
        if old:
            _old(pool / name)
        return name

    garbage = {
        put(b.path, ".myGallery-myDef-1.0.0-local-5.qcow2.partial"): "partial",
        put(a.path, "myGallery-myDef-9.9.9-local-0.qcow2"): "orphan-replica",
        put(b.path, "otherGallery-a-b-2.0.0-local-1.qcow2"): "orphan-replica",
    }
    young = {
        put(a.path, ".myGallery-myDef-1.0.0-local-6.qcow2.partial", old=False),
        put(b.path, "myGallery-myDef-9.9.8-local-0.qcow2", old=False),
    }
    keep = {
        r0.volume,
        put(a.path, "notes.qcow2"),  # no sigvirt name
        put(a.path, "myGallery-myDef-1.0.0-east-0.qcow2"),  # another region's name
    }
    (a.path / "README.txt").write_text("not sigvirt's\n")
    _old(a.path / "README.txt")
    keep.add("README.txt")
    # An orphan replica that a domain's backing chain reaches: never removed.
    held = put(a.path, "myGallery-myDef-7.0.0-local-0.qcow2")
    vm_held = unique("gcheld")
    hv.refresh_pool(a.name)
    disk = _overlay(hv, a.name, f"{vm_held}.qcow2", a.path / held)
    hv.define(_domain_xml(vm_held, disk, a.path / held))
    domains.append(vm_held)
    _old(disk)
    keep.add(disk.name)  # its domain exists: it is a VM's disk, not a leftover
    # A guest whose domain is gone: overlay (on 1.0.0's replica), seed, console log, data disk.
    gone = unique("gcgone")
    hv.refresh_pool(r0.pool)
    _old(_overlay(hv, r0.pool, f"{gone}.qcow2", src))
    pool_dir = Path(src).parent
    for name in (f"{gone}.cidata.iso", f"{gone}.console.log"):
        (pool_dir / name).write_bytes(b"\0" * 4096)
        _old(pool_dir / name)
    put(pool_dir, f"{gone}.data0.qcow2")
    garbage.update({f"{gone}.{x}": "guest-volume" for x in
                    ("qcow2", "cidata.iso", "console.log", "data0.qcow2")})  # fmt: skip
    fresh = f"{unique('gcnew')}.console.log"  # a guest's leftover too, but a fresh one
    (pool_dir / fresh).write_bytes(b"")
    young.add(fresh)
    # 1.1.0's file is gone, its record still says completed (an hour ago and more).
    v11 = sig.store.get_version("myGallery", "myDef", "1.1.0")
    Path(v11.replicas[0].path).unlink()
    long_ago = (datetime.now(UTC) - timedelta(hours=2)).isoformat(timespec="seconds")

    def backdate(v: ImageVersion) -> ImageVersion:
        reps = tuple(dataclasses.replace(r, updated=long_ago) for r in v.replicas)
        return dataclasses.replace(v, replicas=reps)

    sig.store.update_version("myGallery", "myDef", "1.1.0", backdate)
    for pool in sig.pools.replicas:
        hv.refresh_pool(pool.name)
    return Seeded(garbage, young, held, keep, ("myGallery/myDef/1.1.0", v11.replicas[0].volume))


def _by_volume(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["volume"]: i for i in plan["items"]}


def test_gc_lists_without_yes_and_collects_exactly_the_garbage_past_grace(
    sig: SigEnv, tmp_path: Path, system_hv: Hypervisor, domains: list[str]
) -> None:
    seeded = _seed(sig, tmp_path, system_hv, domains)
    before_tree, before_pools = tree(sig.root), _pool_state(sig)

    ran = sig.cli("sig", "gc", "-o", "json")
    assert ran.code == 0, ran.err
    planned = ran.json
    assert tree(sig.root) == before_tree, "gc without --yes changed the catalog"
    assert _pool_state(sig) == before_pools, "gc without --yes changed the pools"
    assert planned["applied"] is False
    items = _by_volume(planned)
    for volume, kind in seeded.garbage.items():
        assert items[volume]["kind"] == kind, volume
        assert items[volume]["outcome"] == "planned", items[volume]
        assert items[volume]["ageSeconds"] >= 3600
    for volume in seeded.young:
        assert items[volume]["outcome"] == "young", items[volume]
    held = items[seeded.held]
    assert (held["kind"], held["outcome"]) == ("orphan-replica", "held")
    assert held["heldBy"] == [f"domain {domains[0]}", f"volume {sig.pools.replicas[0].name}/"
                              f"{domains[0]}.qcow2"]  # fmt: skip
    version, volume = seeded.missing
    assert items[volume]["kind"] == "missing-file"
    assert (items[volume]["action"], items[volume]["outcome"]) == ("mark-corrupt", "planned")
    assert items[volume]["version"] == version
    assert not seeded.keep & set(items), seeded.keep & set(items)
    assert planned["reclaimable"] == sum(items[v]["bytes"] for v in seeded.garbage) > 0
    table = sig.cli("sig", "gc")
    assert table.code == 0 and "reclaimable" in table.err
    assert _pool_state(sig) == before_pools

    done = sig.cli("sig", "gc", "--yes", "-o", "json").json
    assert done["applied"] is True
    after = _by_volume(done)
    assert set(after) == set(items), "the real run acted on another plan"
    for volume in seeded.garbage:
        assert after[volume]["outcome"] == "removed", after[volume]
    assert after[seeded.missing[1]]["outcome"] == "marked"
    assert after[seeded.held]["outcome"] == "held"
    assert {v: after[v]["outcome"] for v in seeded.young} == dict.fromkeys(seeded.young, "young")
    assert done["freed"] == planned["reclaimable"]
    left = {name.split("/", 1)[1] for name in _pool_state(sig)}
    assert not set(seeded.garbage) & left
    assert seeded.young | seeded.keep | {seeded.held} <= left
    v11 = sig.store.get_version("myGallery", "myDef", "1.1.0").replicas[0]
    assert (v11.state, v11.reason) == (ReplicaState.CORRUPT, gc.MISSING_REASON)
    assert not list(sig.store.versions_dir("myGallery", "myDef").glob(".9.9.9.op"))
    assert sig.store.get_version("myGallery", "myDef", "1.0.0").replicas[0].state == "completed"

    again = sig.cli("sig", "gc", "--yes", "-o", "json").json
    assert [i["outcome"] for i in again["items"] if i["outcome"] not in ("young", "held")] == []
    # The marked replica is heal's to copy again, from the one that is whole.
    healed = sig.cli("sig", "image-version", "heal", "--gallery-name", "myGallery",
                     "--gallery-image-definition", "myDef", "--gallery-image-version", "1.1.0",
                     "-o", "json")  # fmt: skip
    assert [r["outcome"] for r in healed.json] == ["healed"]
    v11 = sig.store.get_version("myGallery", "myDef", "1.1.0").replicas[0]
    assert v11.state == ReplicaState.COMPLETED and Path(v11.path).exists()


def _gc(sig: SigEnv, *argv: str, fault: str = "") -> subprocess.CompletedProcess[str]:
    env = dict(sig.env)
    env.pop("SIGVIRT_FAULT", None)
    if fault:
        env["SIGVIRT_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "sigvirt", "sig", "gc", *argv, "-o", "json"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize("fault", ["gc.planned", "gc.removed", "gc.removed@3", "gc.marked"])
def test_gc_killed_at_a_step_leaves_what_the_next_run_finishes(
    sig: SigEnv, tmp_path: Path, system_hv: Hypervisor, domains: list[str], fault: str
) -> None:
    seeded = _seed(sig, tmp_path, system_hv, domains)
    killed = _gc(sig, "--yes", fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # What the kill left is consistent: every item is either gone or still found as it was,
    # the record is either completed or marked, nothing else moved.
    plan = json_of(_gc(sig))
    items = _by_volume(plan)
    left = {name.split("/", 1)[1] for name in _pool_state(sig)}
    for volume, kind in seeded.garbage.items():
        assert (volume not in left) or items[volume]["kind"] == kind, volume
    assert seeded.young | seeded.keep | {seeded.held} <= left
    v11 = sig.store.get_version("myGallery", "myDef", "1.1.0").replicas[0]
    assert v11.state in (ReplicaState.COMPLETED, ReplicaState.CORRUPT)
    assert (seeded.missing[1] in items) == (v11.state == ReplicaState.COMPLETED)

    finished = json_of(_gc(sig, "--yes"))
    assert all(i["outcome"] in ("removed", "marked", "young", "held") for i in finished["items"])
    left = {name.split("/", 1)[1] for name in _pool_state(sig)}
    assert not set(seeded.garbage) & left
    assert seeded.young | seeded.keep | {seeded.held} <= left
    v11 = sig.store.get_version("myGallery", "myDef", "1.1.0").replicas[0]
    assert v11.state == ReplicaState.CORRUPT
    leftover_locks = {p.name for p in sig.store.versions_dir("myGallery", "myDef").glob(".*.op")}
    assert leftover_locks <= {".1.0.0.op", ".1.1.0.op"}, leftover_locks


def json_of(ran: subprocess.CompletedProcess[str]) -> Any:
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


def test_each_removal_is_checked_again_right_before_it(
    sig: SigEnv, tmp_path: Path, system_hv: Hypervisor, domains: list[str]
) -> None:
    """Between the plan and the removal: a new dependent holds a file, a rewrite makes it
    another file, a version at work is busy; each is left, and says why."""
    _published(sig, tmp_path, "1.0.0")
    a = sig.pools.replicas[0]
    names = {
        "depended": "myGallery-myDef-5.0.0-local-0.qcow2",
        "rewritten": "myGallery-myDef-5.0.1-local-0.qcow2",
        "busy": ".myGallery-myDef-5.0.2-local-0.qcow2.partial",
        "removed": "myGallery-myDef-5.0.3-local-0.qcow2",
    }
    for name in names.values():
        _old(f.qcow2(a.path / name, 16 * MiB))
    system_hv.refresh_pool(a.name)
    ctx = sig.context()
    plan = gc.plan(ctx)
    assert {i.volume: i.outcome for i in plan.items} == dict.fromkeys(names.values(), "planned")

    vm = unique("gclate")
    disk = _overlay(system_hv, a.name, f"{vm}.qcow2", a.path / names["depended"])
    system_hv.define(_domain_xml(vm, disk, a.path / names["depended"]))
    domains.append(vm)
    os.utime(a.path / names["rewritten"])  # written to now
    with ctx.store.version_operation("myGallery", "myDef", "5.0.2"):
        done = gc.apply(sig.context(), plan)
    outcome = {i.volume: (i.outcome, i.held_by) for i in done.items}
    assert outcome == {
        names["depended"]: ("held", (f"domain {vm}", f"volume {a.name}/{vm}.qcow2")),
        names["rewritten"]: ("changed", ()),
        names["busy"]: ("busy", ()),
        names["removed"]: ("removed", ()),
    }
    left = {p.name for p in a.path.iterdir()}
    assert {names["depended"], names["rewritten"], names["busy"]} <= left
    assert names["removed"] not in left


def test_files_a_damaged_record_may_own_are_kept(
    sig: SigEnv, tmp_path: Path, system_hv: Hypervisor
) -> None:
    """A record that doesn't parse can't say which files are its own: gc keeps every file its
    name could own (`image-version delete --force` is the way to remove them)."""
    _published(sig, tmp_path, "1.0.0")
    rec = sig.store.get_version("myGallery", "myDef", "1.0.0")
    sig.store.version_path("myGallery", "myDef", "1.0.0").write_text("{not json")
    _old(Path(rec.replicas[0].path))
    system_hv.refresh_pool(rec.replicas[0].pool)
    done = sig.cli("sig", "gc", "--yes", "-o", "json").json
    (item,) = done["items"]
    assert (item["volume"], item["kind"], item["outcome"]) == (
        rec.replicas[0].volume,
        "orphan-replica",
        "kept",
    )
    assert item["detail"] == "the record that may own it (myGallery-myDef-1.0.0) is damaged"
    assert Path(rec.replicas[0].path).exists()


@pytest.mark.guest
def test_a_running_clone_holds_its_replica_and_is_counted_under_its_version(
    sig: SigEnv, system_hv: Hypervisor, tiny_image: Path, ssh_key: SshKey
) -> None:
    sig.gallery()
    sig.definition()
    rec = sig.version("1.0.0", tiny_image)
    r0 = rec.replicas[0]
    name = unique("gcrun")
    spec = GuestSpec(name=name, pool=r0.pool, base=Path(r0.path), admin_user="labuser",
                     ssh_public_keys=(ssh_key.public,), memory_mib=128)  # fmt: skip
    try:
        g = guest.create(system_hv, spec, ssh_key.private, ports=PortAllocator(), timeout=120)
        assert g.endpoint is not None
        row = sig.cli("sig", "space", "myGallery/myDef/1.0.0", "-o", "json").json["versions"][0]
        (clone,) = row["clones"]
        assert (clone["path"], clone["domains"]) == (str(g.overlay), [name])
        # a running guest writes its overlay now and then: the two reads are a moment apart
        assert abs(clone["allocated"] - _blocks(g.overlay)) <= 4 * MiB
        assert row["replicaBytes"] == _blocks(Path(r0.path))

        # The record is lost: the replica is an orphan file now, but a running guest's
        # chain reaches it. gc with no grace at all keeps it, and the guest's own volumes.
        sig.store.remove_version_record("myGallery", "myDef", "1.0.0")
        done = sig.cli("sig", "gc", "--yes", "--grace", "0", "-o", "json").json
        by_volume = {i["volume"]: i for i in done["items"]}
        assert by_volume[r0.volume]["outcome"] == "held"
        assert f"domain {name}" in by_volume[r0.volume]["heldBy"]
        assert not [v for v in by_volume if v.startswith(f"{name}.")]
        assert Path(r0.path).exists() and g.overlay.exists()
        ssh = subprocess.run([*g.endpoint.ssh_argv(), "md5sum /bin/busybox"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert ssh.returncode == 0, ssh.stderr
    finally:
        guest.delete(system_hv, name)


@pytest.mark.hostb
def test_a_remote_region_is_read_and_collected_through_libvirt(lab: Lab, gallery: Gallery) -> None:
    """hostB over qemu+ssh: the numbers, the mtime and the removal all come through its
    libvirt; region west never answers and is reported, not fatal."""
    image = f.qcow2(lab.root / f"{gallery.gallery}.qcow2", 64 * MiB, data=True)
    rec = gallery.publish("1.0.0", image, ["local", "east"])
    (east,) = [r for r in rec.replicas if r.region == "east"]
    east_file = lab.pool_path("east", east.pool) / east.volume  # hostB's pools are dirs here
    stale = _old(f.qcow2(east_file.parent / f".{gallery.gallery}-img-1.0.0-east-9.qcow2.partial",
                         16 * MiB, data=True))  # fmt: skip
    ctx = gallery.ctx

    report = space.report(ctx, gallery.gallery)
    rows = {v.region: v for v in report.versions}
    assert set(rows) == {"local", "east"}
    (replica,) = rows["east"].replicas
    assert replica.allocated == _blocks(east_file) == qemu_info(east_file)["actual-size"]
    assert rows["east"].virtual_size == 64 * MiB
    assert {(p.region, p.status) for p in report.pools} >= {("east", "ok"), ("west", "unreachable")}

    plan = gc.plan(ctx)
    (item,) = [i for i in plan.items if i.region == "east"]
    assert (item.volume, item.kind, item.outcome) == (stale.name, "partial", "planned")
    assert item.mtime == pytest.approx(HOURS_AGO, abs=1)
    assert [u.region for u in plan.unreachable] == ["west"]
    done = gc.apply(ctx, plan)
    assert [i.outcome for i in done.items if i.region == "east"] == ["removed"]
    assert not stale.exists() and east_file.exists()
