"""`--dry-run` plans: each command's dry run leaves every file (content and stat), pool
volume list and domain as it was, and its real run reports the same actions as the plan.

Real pools under qemu:///system: the `sig` fixture's two pools for the version commands and
`sig gc`; a fleet lab with the tiny image for `vmss scale` and `vmss delete` (real guests).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sigvirt.catalog.names import ImageRef
from sigvirt.catalog.plans import Action, Journal, Plan
from sigvirt.catalog.records import ImageVersion, ReplicaState
from sigvirt.cli import main
from sigvirt.cli.space import gc_plan
from sigvirt.context import Context
from sigvirt.guests import scalesets
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.lifecycle import gc
from sigvirt.versions import publish
from tests.support import imagefactory as f
from tests.support.base import SshKey, unique
from tests.support.catalog import SigEnv, version_create
from tests.support.fleetlab import D, FleetLab, G, open_lab

MiB = 1 << 20
REF = ImageRef("myGallery", "myDef", "1.0.0")


# -- what "unchanged" means -------------------------------------------------------------------
def _files(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under root: its sha256 (files) and its stat (mode, owner, size, times)."""
    out: dict[str, tuple[Any, ...]] = {}
    if not root.exists():
        return out
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path)] = (digest, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_ino,
                          st.st_mtime_ns, st.st_ctime_ns)  # fmt: skip
    return out


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """What differs between two snapshots, for the assertion message."""
    out = []
    for part in a:
        for key in sorted(set(a[part]) | set(b[part])):
            if a[part].get(key) != b[part].get(key):
                out.append(f"{part} {key}: {a[part].get(key)} -> {b[part].get(key)}")
    return out


def snapshot(hv: Hypervisor, root: Path, pools: dict[str, Path]) -> dict[str, Any]:
    """Files under the gallery root and the pools, the pools' volumes as libvirt lists them,
    and the XML of every domain whose disks live in those pools."""
    dirs = [str(p) for p in pools.values()]
    domains = {}
    for dom in hv.domains():
        xml = dom.xml(inactive=True)
        if any(d in xml for d in dirs):
            domains[dom.name] = xml
    return {
        "files": {**_files(root), **{k: v for p in pools.values() for k, v in _files(p).items()}},
        "volumes": {name: sorted(v.name for v in hv.volumes(name)) for name in pools},
        "domains": domains,
    }


def cli_plan(*argv: str) -> Plan:
    """A dry run through the CLI (in process), its JSON read back as a Plan."""
    return _plan_of(_json(*argv, "--dry-run", "-o", "json"))


_capsys: pytest.CaptureFixture[str] | None = None


@pytest.fixture(autouse=True)
def _capture(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    global _capsys
    _capsys = capsys
    yield
    _capsys = None


def _json(*argv: str) -> Any:
    assert _capsys is not None
    _capsys.readouterr()
    code = main(list(argv))
    out, err = _capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def _plan_of(data: dict[str, Any]) -> Plan:
    assert list(data) == sorted(data), "plan JSON keys are sorted"
    actions = []
    for a in data["actions"]:
        assert list(a) == sorted(a)
        actions.append(Action(**a))
    return Plan(data["command"], data["subject"], tuple(actions), data["dryRun"])


def same(planned: Plan, done: Journal | Plan) -> None:
    got = sorted(done.actions)
    assert got == planned.sorted_actions(), (got, planned.sorted_actions())


def _sig_pools(sig: SigEnv) -> dict[str, Path]:
    return {p.name: p.path for p in sig.pools.replicas}


def _unchanged(sig: SigEnv, before: dict[str, Any]) -> None:
    assert sig.hv is not None
    after = snapshot(sig.hv, sig.root, _sig_pools(sig))
    assert after == before, _diff(before, after)


def _snap(sig: SigEnv) -> dict[str, Any]:
    assert sig.hv is not None
    return snapshot(sig.hv, sig.root, _sig_pools(sig))


def _published(sig: SigEnv, tmp_path: Path, *extra: str) -> ImageVersion:
    sig.gallery()
    sig.definition()
    src = f.qcow2(tmp_path / "src.qcow2", 64 * MiB, data=True)
    return sig.version("1.0.0", src, *extra)


# -- the plan as data (no host) ---------------------------------------------------------------
@pytest.mark.offline
def test_an_actions_identity_leaves_out_its_bytes_and_detail() -> None:
    planned = Action("copy", "replica", "g-d-1.0.0-local-1.qcow2", "local", "a", "/p/x", 100)
    done = dataclasses.replace(planned, bytes=4096, detail="from east")
    assert planned == done and hash(planned) == hash(done)
    assert planned != dataclasses.replace(planned, pool="b")
    with pytest.raises(ValueError, match="unknown plan verb"):
        Action("frobnicate", "replica", "x")
    p = Plan("image-version update", "g/d/1.0.0", (planned,))
    data = p.to_json()
    assert list(data) == sorted(data)
    assert data["bytesCopied"] == 100 and data["bytesFreed"] == 0
    assert json.loads(json.dumps(data)) == data


# -- image-version create ---------------------------------------------------------------------
def test_create_dry_run_changes_nothing_and_the_real_run_follows_the_plan(
    sig: SigEnv, tmp_path: Path
) -> None:
    sig.gallery()
    sig.definition()
    src = f.qcow2(tmp_path / "src.qcow2", 64 * MiB, data=True)
    before = _snap(sig)
    planned = cli_plan(*version_create("1.0.0", src)[:-2], "--target-regions", "local=3")
    _unchanged(sig, before)
    assert planned.command == "image-version create" and planned.dry_run
    assert [a.verb for a in planned.actions] == ["create-record", "import", "copy", "copy"]
    assert {a.pool for a in planned.actions[1:]} == set(_sig_pools(sig))  # round-robin
    assert planned.actions[1].bytes == os.stat(src).st_blocks * 512  # the estimate
    table = sig.cli(*version_create("1.0.0", src)[:-2], "--dry-run")
    assert table.code == 0 and "(dry run)" in table.out and "import" in table.out
    _unchanged(sig, before)

    inp = publish.VersionInput(str(src), target_regions=["local=3"])
    with sig.context() as ctx:
        assert publish.plan_create(ctx, "myGallery", "myDef", "1.0.0", inp) == planned
        journal = Journal()
        rec = publish.create_version(ctx, "myGallery", "myDef", "1.0.0", inp, journal=journal)
    same(planned, journal)
    assert sorted(r.path for r in rec.replicas) == sorted(a.path for a in planned.actions[1:])
    # A dry run of a version that exists is refused as the real one is.
    assert sig.cli(*version_create("1.0.0", src)[:-2], "--dry-run").code == 5


# -- image-version update ---------------------------------------------------------------------
def test_update_dry_runs_grow_and_shrink_as_the_real_runs_do(sig: SigEnv, tmp_path: Path) -> None:
    _published(sig, tmp_path)
    args = ["sig", "image-version", "update", "-r", "myGallery", "-i", "myDef", "-e", "1.0.0"]
    for count, verbs in ((3, ["copy", "copy"]), (1, ["delete-volume", "delete-volume"])):
        before = _snap(sig)
        planned = cli_plan(*args, "--target-regions", f"local={count}")
        _unchanged(sig, before)
        assert [a.verb for a in planned.actions] == ["update-record", *verbs]
        with sig.context() as ctx:
            assert publish.plan_update(ctx, REF, target_regions=[f"local={count}"]) == planned
            journal = Journal()
            rec = publish.update_version(
                ctx, REF, target_regions=[f"local={count}"], journal=journal
            )
        same(planned, journal)
        assert len(rec.completed_replicas()) == count
    # Shrinking frees what the replicas held on disk: the plan says how much.
    assert planned.bytes_freed > 0


# -- image-version replicate ------------------------------------------------------------------
def test_replicate_dry_run_finishes_and_resumes_what_the_real_run_does(
    sig: SigEnv, tmp_path: Path
) -> None:
    rec = _published(sig, tmp_path, "--target-regions", "local=2")
    # A killed removal (replica 1 left `deleting`) and targets that ask one more (a run
    # killed before recording it): replicate finishes the one and copies the other two.
    r1 = rec.replicas[1]

    def killed(cur: ImageVersion) -> ImageVersion:
        reps = tuple(r.moved(ReplicaState.DELETING) if r.key == r1.key else r
                     for r in cur.replicas)  # fmt: skip
        return dataclasses.replace(cur, replicas=reps, target_regions={"local": 3})

    sig.store.update_version("myGallery", "myDef", "1.0.0", killed)
    before = _snap(sig)
    args = ["sig", "image-version", "replicate", "-r", "myGallery", "-i", "myDef", "-e", "1.0.0"]
    planned = cli_plan(*args)
    _unchanged(sig, before)
    assert sorted(a.verb for a in planned.actions) == ["copy", "copy", "delete-volume"]
    assert r1.volume in {a.target for a in planned.actions if a.verb == "copy"}  # index reused
    with sig.context() as ctx:
        assert publish.plan_replicate(ctx, REF) == planned
        journal = Journal()
        after = publish.replicate(ctx, REF, journal=journal)
    same(planned, journal)
    assert len(after.completed_replicas()) == 3
    # Nothing left to do: the plan is empty.
    assert cli_plan(*args).actions == ()
    # While another process replicates it, the dry run is refused as the real run would be.
    with sig.store.version_operation("myGallery", "myDef", "1.0.0"):
        refused = sig.cli(*args, "--dry-run")
        assert refused.code == 5 and "another sigvirt process is replicating it" in refused.error


# -- sig gc -----------------------------------------------------------------------------------
def test_gc_dry_run_wins_over_yes_and_the_real_run_collects_the_plan(
    sig: SigEnv, tmp_path: Path
) -> None:
    rec = _published(sig, tmp_path)
    pool, directory = next(iter(_sig_pools(sig).items()))
    old = time.time() - 2 * 3600
    leftovers = [
        directory / ".myGallery-myDef-1.0.0-local-7.qcow2.partial",
        directory / "myGallery-myDef-9.9.9-local-0.qcow2",  # no record names it
    ]
    for path in leftovers:
        path.write_bytes(b"\0" * 65536)
        os.utime(path, (old, old))
    young = directory / ".myGallery-myDef-1.0.0-local-8.qcow2.partial"
    young.write_bytes(b"\0" * 4096)
    assert sig.hv is not None
    sig.hv.refresh_pool(pool)
    before = _snap(sig)
    assert sum(k.endswith(".partial") for k in before["files"]) == 2
    planned = cli_plan("sig", "gc", "--yes")
    _unchanged(sig, before)
    table = sig.cli("sig", "gc", "--dry-run", "--yes")
    assert table.code == 0 and "sig gc (dry run)" in table.out
    _unchanged(sig, before)
    assert planned.command == "sig gc"
    assert sorted(a.path for a in planned.actions) == sorted(str(p) for p in leftovers)
    assert {a.verb for a in planned.actions} == {"delete-volume"}

    with sig.context() as ctx:
        p = gc.plan(ctx)
        assert gc_plan(p) == planned
        done = gc.apply(ctx, p)
    same(planned, gc_plan(done))
    assert not any(p.exists() for p in leftovers) and young.exists()
    assert Path(rec.replicas[0].path).exists()


# -- vmss scale and delete (real guests) ------------------------------------------------------
@pytest.fixture(scope="module")
def fleet(
    scratch: Path, system_hv: Hypervisor, tiny_image: Path, ssh_key: SshKey
) -> Iterator[FleetLab]:
    with open_lab(scratch, system_hv, tiny_image, ssh_key, "dryrun", "25500-25549") as lab:
        yield lab


def _fleet_snap(lab: FleetLab) -> dict[str, Any]:
    pools = {name: lab.hv.pool_path(name) for name in lab.pools}
    return snapshot(lab.hv, lab.root / "galleries", pools)


def quiet(ctx: Context, name: str) -> None:
    """Power the instances off: a running guest writes its own overlay and console log,
    which would hide (or fake) a change the dry run made."""
    scalesets.power(ctx, name, "stop", force=True)


@pytest.mark.guest
def test_vmss_scale_and_delete_dry_runs_match_the_real_runs(fleet: FleetLab) -> None:
    name = unique("dry")
    pub = f"{fleet.key.private}.pub"
    assert main(["vmss", "create", "-n", name, "--image", f"{G}/{D}", "--instance-count", "1",
                 "--vm-sku", "Lab_Tiny", "--ssh-key-value", pub, "--admin-username", "labuser",
                 "-o", "none"]) == 0  # fmt: skip
    ctx = fleet.context()
    try:
        for capacity, verb in ((2, "create-volume"), (1, "delete-volume")):
            quiet(ctx, name)
            before = _fleet_snap(fleet)
            assert f"{name}-0" in before["domains"]
            planned = cli_plan("vmss", "scale", "-n", name, "--new-capacity", str(capacity))
            assert _fleet_snap(fleet) == before, _diff(before, _fleet_snap(fleet))
            second = f"{name}-1"
            domain_verb = "define-domain" if verb == "create-volume" else "undefine-domain"
            assert {(a.verb, a.target) for a in planned.actions if a.kind == "vmss-instance"} == {
                (domain_verb, second)
            }
            assert sorted(a.kind for a in planned.actions if a.verb == verb) == [
                "console", "overlay", "seed",
            ]  # fmt: skip
            assert scalesets.plan_scale(ctx, name, capacity) == planned
            journal = Journal()
            result = scalesets.scale(ctx, name, capacity, journal=journal)
            assert not result.failed, result.failed
            same(planned, journal)
        quiet(ctx, name)
        before = _fleet_snap(fleet)
        planned = cli_plan("vmss", "delete", "-n", name)
        assert _capsys is not None and main(["vmss", "delete", "-n", name, "--dry-run"]) == 0
        assert "vmss delete " + name + " (dry run)" in _capsys.readouterr().out
        assert _fleet_snap(fleet) == before, _diff(before, _fleet_snap(fleet))
        assert {a.verb for a in planned.actions} == {
            "undefine-domain", "delete-volume", "delete-record",
        }  # fmt: skip
        journal = Journal()
        scalesets.delete(ctx, name, journal=journal)
        same(planned, journal)
        assert fleet.volumes(name) == []
    finally:
        main(["vmss", "delete", "-n", name, "--yes", "-o", "none"])
        ctx.close()
