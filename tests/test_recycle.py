"""Soft delete, undelete, the recycle bin's retention and pending deletions, on real pools under
qemu:///system (one real guest boots from an undeleted version).

A soft-deleted version is gone for users (not listed, not shown, not deployable, not latest)
while its record, replica files and their ACLs stay byte for byte; undelete brings back
exactly that; `sig gc` purges it once the gallery's retention has passed (the clock is
injected). A deletion whose region doesn't answer is pending: gone for users, finished by a
later gc when the region answers. Each delete's --dry-run changes nothing, and the real run
carries out the plan it printed.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from sigvirt.catalog.names import ImageRef
from sigvirt.catalog.plans import Journal
from sigvirt.catalog.records import ImageVersion, VersionState
from sigvirt.context import Context
from sigvirt.errors import ExitCode
from sigvirt.hosts.regions import load as load_regions
from sigvirt.lifecycle import gc
from sigvirt.versions import deletion, recycle
from tests.support import imagefactory as f
from tests.support.base import SshKey, unique
from tests.support.catalog import SigEnv, sha256sum, tree

MiB = 1 << 20
DAY = 86400.0
V = ("--gallery-name", "myGallery", "--gallery-image-definition", "myDef")
ACL = "system.posix_acl_access"
REPO = Path(__file__).resolve().parents[1]


def _version(v: str) -> tuple[str, ...]:
    return (*V, "--gallery-image-version", v)


def _soft_gallery(sig: SigEnv, *extra: str) -> None:
    ran = sig.cli("sig", "create", "--gallery-name", "myGallery", "--soft-delete", "true",
                  *extra, "-o", "json")  # fmt: skip
    assert ran.json["softDeletePolicy"] == {"isSoftDeleteEnabled": True}
    sig.definition()


def _files(sig: SigEnv) -> dict[str, tuple[str, bytes | None]]:
    """Every pool file: its sha256 and its access ACL (the kernel's sharing)."""
    out = {}
    for pool in sig.pools.replicas:
        for p in pool.path.iterdir():
            try:
                acl: bytes | None = os.getxattr(p, ACL)
            except OSError:
                acl = None
            out[f"{pool.name}/{p.name}"] = (sha256sum(p), acl)
    return out


def _record_bytes(sig: SigEnv, v: str) -> bytes:
    return sig.store.version_path("myGallery", "myDef", v).read_bytes()


def test_a_soft_deleted_version_is_gone_for_users_and_comes_back_exactly(
    sig: SigEnv, tmp_path: Path
) -> None:
    _soft_gallery(sig)
    src = f.qcow2(tmp_path / "src.qcow2", 32 * MiB, data=True)
    sig.version("1.0.0", src, "--target-regions", "local=2")
    sig.version("1.1.0", src)
    record, files = _record_bytes(sig, "1.1.0"), _files(sig)

    ran = sig.cli("sig", "image-version", "delete", *_version("1.1.0"))
    assert ran.code == 0, ran.err
    assert "soft" in ran.out
    # Gone for users: not listed, not shown, not latest, not deployable.
    listed = sig.cli("sig", "image-version", "list", *V, "-o", "json").json
    assert [x["name"] for x in listed] == ["1.0.0"]
    shown = sig.cli("sig", "image-version", "show", *_version("1.1.0"))
    assert shown.code == ExitCode.NOT_FOUND
    assert "is soft-deleted" in shown.error and "undelete" in shown.error
    latest = sig.cli("sig", "image-version", "show-latest", *V, "-o", "json").json
    assert latest["name"] == "1.0.0"
    vm = sig.cli("vm", "create", "-n", unique("binned"), "--image", "myGallery/myDef/1.1.0")
    assert vm.code == ExitCode.NOT_FOUND, vm.err
    assert "soft-deleted" in vm.error
    # Kept: every file, byte for byte, with its ACL; the name can't be reused.
    assert _files(sig) == files
    again = sig.cli("sig", "image-version", "create", *_version("1.1.0"), "--source", str(src))
    assert again.code == ExitCode.CONFLICT
    assert "soft-deleted" in again.error and "can't be reused" in again.error
    assert _files(sig) == files
    # The bin lists it, with when gc may purge it (7 days, Azure's default).
    binned = sig.cli("sig", "image-version", "list-soft-deleted", *V, "-o", "json").json
    assert [(x["ref"], x["replicas"]) for x in binned] == [("myGallery/myDef/1.1.0", 1)]
    deleted = sig.store.get_version("myGallery", "myDef", "1.1.0", hidden=True).soft_deleted
    assert binned[0]["deleted"] == deleted
    when = recycle.purge_after(sig.store.get_gallery("myGallery"), deleted)
    assert when is not None and binned[0]["purge_after"] == when.isoformat()
    assert (when - datetime.fromisoformat(deleted)).days == 7
    # space counts its bytes as soft-deleted
    rows = sig.cli("sig", "space", "myGallery/myDef/1.1.0", "-o", "json").json["versions"]
    assert rows[0]["state"] == "soft-deleted"
    assert rows[0]["softDeleted"] == rows[0]["replicaBytes"] > 0

    # Undelete: record, files and ACLs exactly as before.
    before = tree(sig.root)
    dry = sig.cli("sig", "image-version", "undelete", *_version("1.1.0"), "--dry-run", "-o",
                  "json").json  # fmt: skip
    assert tree(sig.root) == before
    assert [(a["verb"], a["target"]) for a in dry["actions"]] == [
        ("update-record", "myGallery/myDef/1.1.0")
    ]
    ran = sig.cli("sig", "image-version", "undelete", *_version("1.1.0"), "-o", "json")
    assert ran.json["name"] == "1.1.0"
    assert _record_bytes(sig, "1.1.0") == record
    assert _files(sig) == files
    latest = sig.cli("sig", "image-version", "show-latest", *V, "-o", "json").json
    assert latest["name"] == "1.1.0"
    assert sig.cli("sig", "image-version", "undelete", *_version("1.1.0")).code == (
        ExitCode.NOT_FOUND
    )


def test_gc_purges_the_bin_after_the_retention_and_the_name_is_free_again(
    sig: SigEnv, tmp_path: Path
) -> None:
    _soft_gallery(sig, "--soft-delete-retention-days", "2")
    src = f.qcow2(tmp_path / "src.qcow2", 32 * MiB, data=True)
    rec = sig.version("1.0.0", src, "--target-regions", "local=2")
    sig.version("2.0.0", src)
    assert sig.cli("sig", "image-version", "delete", *_version("1.0.0")).code == 0
    paths = [Path(r.path) for r in rec.replicas]
    ctx = sig.context()

    # Within the retention, gc lists it as young and leaves it.
    soon = gc.collect(ctx, yes=True, now=time.time() + 1 * DAY)
    (item,) = [i for i in soon.items if i.kind == "soft-deleted"]
    assert (item.outcome, item.version) == ("young", "myGallery/myDef/1.0.0")
    assert "in the recycle bin until" in item.detail
    assert all(p.exists() for p in paths)
    # Past it: planned without --yes (nothing changes), purged with it.
    later = time.time() + 3 * DAY
    listed = gc.plan(ctx, now=later)
    (item,) = [i for i in listed.items if i.kind == "soft-deleted"]
    assert item.outcome == "planned" and item.bytes == rec.allocated_size * 2
    assert all(p.exists() for p in paths)
    done = gc.apply(ctx, listed)
    (item,) = [i for i in done.items if i.kind == "soft-deleted"]
    assert item.outcome == "purged", item
    assert not any(p.exists() for p in paths)
    assert not sig.store.version_path("myGallery", "myDef", "1.0.0").exists()
    # The name is free: a new 1.0.0 can be published.
    sig.version("1.0.0", src)
    assert [v.name for v in sig.store.list_versions("myGallery", "myDef")] == ["1.0.0", "2.0.0"]


def test_definitions_go_to_the_bin_and_block_their_gallery_until_purged(
    sig: SigEnv, tmp_path: Path
) -> None:
    _soft_gallery(sig, "--soft-delete-retention-days", "1")
    src = f.qcow2(tmp_path / "src.qcow2", 16 * MiB, data=True)
    rec = sig.version("1.0.0", src)
    d = ("--gallery-name", "myGallery", "--gallery-image-definition", "myDef")
    held = sig.cli("sig", "image-definition", "delete", *d)
    assert held.code == ExitCode.HAS_DEPENDENTS and "1.0.0" in held.error
    assert sig.cli("sig", "image-version", "delete", *_version("1.0.0")).code == 0
    before = tree(sig.root)
    dry = sig.cli("sig", "image-definition", "delete", *d, "--dry-run", "-o", "json").json
    assert [(a["verb"], a["detail"]) for a in dry["actions"]] == [("update-record", "soft-deleted")]
    assert tree(sig.root) == before
    assert sig.cli("sig", "image-definition", "delete", *d).code == 0
    assert sig.cli("sig", "image-definition", "list", "-r", "myGallery", "-o", "json").json == []
    shown = sig.cli("sig", "image-definition", "show", *d)
    assert shown.code == ExitCode.NOT_FOUND and "soft-deleted" in shown.error
    binned = sig.cli("sig", "image-definition", "list-soft-deleted", "-r", "myGallery", "-o",
                     "json").json  # fmt: skip
    assert [x["ref"] for x in binned] == ["myGallery/myDef"]
    # Its name can't be reused, a version in it can't come back first, the gallery stays.
    redo = sig.cli("sig", "image-definition", "create", *d, "--publisher", "p", "--offer", "o",
                   "--sku", "s", "--os-type", "Linux")  # fmt: skip
    assert redo.code == ExitCode.CONFLICT and "soft-deleted" in redo.error
    early = sig.cli("sig", "image-version", "undelete", *_version("1.0.0"))
    assert early.code == ExitCode.NOT_FOUND and "image-definition undelete" in early.error
    dry = sig.cli("sig", "delete", "--gallery-name", "myGallery", "--dry-run")
    assert dry.code == ExitCode.HAS_DEPENDENTS and "myDef (soft-deleted)" in dry.error
    assert sig.cli("sig", "delete", "--gallery-name", "myGallery").code == ExitCode.HAS_DEPENDENTS
    # Undelete the definition, then its version: all back.
    assert sig.cli("sig", "image-definition", "undelete", *d).code == 0
    assert sig.cli("sig", "image-version", "undelete", *_version("1.0.0")).code == 0
    assert Path(rec.replicas[0].path).exists()
    # Delete both again; past the retention gc purges the definition with its version.
    assert sig.cli("sig", "image-version", "delete", *_version("1.0.0")).code == 0
    assert sig.cli("sig", "image-definition", "delete", *d).code == 0
    done = gc.collect(sig.context(), yes=True, now=time.time() + 2 * DAY)
    outcomes = {i.kind: i.outcome for i in done.items if i.kind.startswith("soft-deleted")}
    assert outcomes == {"soft-deleted": "purged", "soft-deleted-definition": "purged"}
    assert not Path(rec.replicas[0].path).exists()
    assert not sig.store.definition_dir("myGallery", "myDef").exists()
    assert sig.cli("sig", "delete", "--gallery-name", "myGallery").code == 0


def test_delete_dry_run_changes_nothing_and_the_real_run_carries_it_out(
    sig: SigEnv, tmp_path: Path
) -> None:
    sig.gallery()  # soft delete off: a hard delete
    sig.definition()
    src = f.qcow2(tmp_path / "src.qcow2", 16 * MiB, data=True)
    rec = sig.version("1.0.0", src, "--target-regions", "local=2")
    before, files = tree(sig.root), _files(sig)
    ran = sig.cli("sig", "image-version", "delete", *_version("1.0.0"), "--dry-run", "-o", "json")
    planned = ran.json
    assert tree(sig.root) == before and _files(sig) == files
    assert planned["dryRun"] is True and planned["command"] == "image-version delete"
    assert [(a["verb"], a["target"]) for a in planned["actions"]] == [
        ("update-record", rec.ref),
        *[("delete-volume", r.volume) for r in rec.replicas],
        ("delete-record", rec.ref),
    ]
    assert planned["bytesFreed"] == rec.allocated_size * 2
    people = sig.cli("sig", "image-version", "delete", *_version("1.0.0"), "--dry-run")
    assert (
        people.code == 0 and "delete-volume" in people.out and "nothing was changed" in people.err
    )
    # The real run, reporting what it did: the same actions.
    journal = Journal()
    ref = ImageRef("myGallery", "myDef", "1.0.0")
    p, _ = deletion.delete(sig.context(), ref, journal=journal)
    assert p is not None
    assert sorted(journal.actions) == sorted(p.to_plan().actions)
    assert [a.to_json() for a in p.to_plan().actions] == planned["actions"]
    assert not any(Path(r.path).exists() for r in rec.replicas)


def test_a_delete_whose_region_does_not_answer_is_pending_until_gc_finds_it(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sig.gallery()
    sig.definition()
    src = f.qcow2(tmp_path / "src.qcow2", 16 * MiB, data=True)
    rec = sig.version("1.0.0", src)
    # Region far: its replica is a real file in the second pool, but first the region's
    # host is a port nothing listens on.
    far_pool = sig.pools.replicas[1]
    far_file = far_pool.path / "myGallery-myDef-1.0.0-far-0.qcow2"
    f.qcow2(far_file, 16 * MiB, data=True)
    base = sig.pools.regions_file.read_text()
    regions = tmp_path / "regions.yaml"

    def far_is(uri: str) -> None:
        regions.write_text(
            base + f"  far:\n    uri: {uri}\n    pools:\n      - name: {far_pool.name}\n"
            f"        path: {far_pool.path}\n"
        )

    far_is("qemu+tcp://127.0.0.1:1/system")
    sig.env["SIGVIRT_REGIONS"] = str(regions)
    monkeypatch.setenv("SIGVIRT_REGIONS", str(regions))

    def add_far(v: ImageVersion) -> ImageVersion:
        r = dataclasses.replace(v.replicas[0], region="far", pool=far_pool.name,
                                path=str(far_file), volume=far_file.name)  # fmt: skip
        return dataclasses.replace(v, replicas=(*v.replicas, r), target_regions={
            **v.target_regions, "far": 1})  # fmt: skip

    sig.store.update_version("myGallery", "myDef", "1.0.0", add_far)
    ran = sig.cli("sig", "image-version", "delete", *_version("1.0.0"))
    assert ran.code == 0, ran.err
    assert "its replicas in far go when `sigvirt sig gc --yes` can reach them" in ran.err
    assert not Path(rec.replicas[0].path).exists()  # the region that answered: done
    assert far_file.exists()
    left = sig.store.get_version("myGallery", "myDef", "1.0.0", hidden=True)
    assert left.state == VersionState.PENDING_DELETION
    assert [r.region for r in left.replicas] == ["far"]
    assert sig.cli("sig", "image-version", "list", *V, "-o", "json").json == []
    shown = sig.cli("sig", "image-version", "show", *_version("1.0.0"))
    assert shown.code == ExitCode.NOT_FOUND and "sig gc" in shown.error
    # gc while far is still down: pending still; once it answers, finished.
    ctx = Context.from_config(load_regions(regions, env=sig.env))
    (item,) = [i for i in gc.collect(ctx, yes=True).items if i.kind == "pending-deletion"]
    assert item.outcome == "pending", item
    assert far_file.exists()
    far_is("qemu:///system")
    ctx = Context.from_config(load_regions(regions, env=sig.env))
    (item,) = [i for i in gc.collect(ctx, yes=True).items if i.kind == "pending-deletion"]
    assert item.outcome == "removed", item
    assert not far_file.exists()
    assert not sig.store.version_path("myGallery", "myDef", "1.0.0").exists()


@pytest.mark.guest
def test_an_undeleted_version_boots(sig: SigEnv, tiny_image: Path, ssh_key: SshKey) -> None:
    _soft_gallery(sig)
    sig.version("1.0.0", tiny_image)
    assert sig.cli("sig", "image-version", "delete", *_version("1.0.0")).code == 0
    assert sig.cli("sig", "image-version", "undelete", *_version("1.0.0")).code == 0
    name = unique("undeleted")
    try:
        ran = sig.cli("vm", "create", "-n", name, "--image", "myGallery/myDef/1.0.0",
                      "--size", "Lab_Tiny", "--ssh-key-value", f"{ssh_key.private}.pub",
                      "-o", "json")  # fmt: skip
        assert ran.code == 0, ran.err
        argv = sig.cli("vm", "ssh", "-n", name, "--print")
        assert argv.code == 0, argv.err
        out = subprocess.run([*shlex.split(argv.out.strip()), "cat /proc/version"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0 and "Linux" in out.stdout, out.stderr
    finally:
        sig.cli("vm", "delete", "-n", name, "--yes")


@pytest.mark.parametrize(
    "fault", ["version.deleting", "version.replica-removed@1", "version.replica-removed@2"]
)
def test_a_purge_killed_at_a_step_is_finished_by_the_next_gc(
    sig: SigEnv, tmp_path: Path, fault: str
) -> None:
    _soft_gallery(sig, "--soft-delete-retention-days", "0")
    src = f.qcow2(tmp_path / "src.qcow2", 16 * MiB, data=True)
    rec = sig.version("1.0.0", src, "--target-regions", "local=2")
    assert sig.cli("sig", "image-version", "delete", *_version("1.0.0")).code == 0
    env = {**sig.env, "SIGVIRT_FAULT": fault}
    killed = subprocess.run([sys.executable, "-m", "sigvirt", "sig", "gc", "--yes", "-o", "json"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Nothing anyone deploys, whatever step it died at: in the bin still, or listed as being
    # deleted (as Azure lists a version whose delete is under way).
    listed = sig.cli("sig", "image-version", "list", *V, "-o", "json").json
    assert [x["provisioningState"] for x in listed] in ([], ["Deleting"])
    done = sig.cli("sig", "gc", "--yes", "-o", "json").json
    kinds = {i["kind"]: i["outcome"] for i in done["items"]}
    assert kinds.get("pending-deletion", kinds.get("soft-deleted")) in ("removed", "purged"), kinds
    assert not any(Path(r.path).exists() for r in rec.replicas)
    assert not sig.store.version_path("myGallery", "myDef", "1.0.0").exists()
    assert not sig.cli("sig", "gc", "-o", "json").json["items"]


def test_definition_and_gallery_delete_dry_runs_change_nothing_and_are_what_runs(
    sig: SigEnv,
) -> None:
    sig.gallery()  # soft delete off: hard deletes
    sig.definition()
    d = ("--gallery-name", "myGallery", "--gallery-image-definition", "myDef")
    before = tree(sig.root)
    dry = sig.cli("sig", "image-definition", "delete", *d, "--dry-run", "-o", "json").json
    assert tree(sig.root) == before
    assert [(a["verb"], a["kind"], a["target"]) for a in dry["actions"]] == [
        ("delete-record", "definition", "myGallery/myDef")
    ]
    done = recycle.delete_definition(sig.context(), "myGallery", "myDef")
    assert [a.to_json() for a in done.actions] == dry["actions"] and done.dry_run is False
    assert not sig.store.definition_dir("myGallery", "myDef").exists()
    before = tree(sig.root)
    dry = sig.cli("sig", "delete", "--gallery-name", "myGallery", "--dry-run", "-o", "json").json
    assert tree(sig.root) == before
    assert [(a["verb"], a["kind"], a["target"]) for a in dry["actions"]] == [
        ("delete-record", "gallery", "myGallery")
    ]
    assert sig.cli("sig", "delete", "--gallery-name", "myGallery").code == 0
    assert not sig.store.gallery_dir("myGallery").exists()
