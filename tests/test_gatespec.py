"""The boot-test gate, offline: test specs stored with their definition (checked, shown by
their identity, refused when they are not the stored one), boot-test records and their
transitions, and `latest` skipping versions the gate holds (no libvirt, no guests)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from sigvirt.catalog import latest, specs
from sigvirt.catalog.fileio import CorruptRecord, file_lock
from sigvirt.catalog.names import ImageRef
from sigvirt.catalog.records import (
    BadTransition,
    BootTest,
    BootTestState,
    Definition,
    ImageVersion,
    Replica,
    ReplicaState,
    VersionState,
)
from sigvirt.catalog.store import GalleryStore
from sigvirt.errors import ExitCode, NotFound
from sigvirt.galleries import definitions
from sigvirt.guests import specrun
from sigvirt.rollouts import gate
from tests.support.catalog import Ran, SigEnv

PASSING = "def test_boots(host):\n    assert host.file('/bin/busybox').exists\n"


def _define(sig: SigEnv, *extra: str) -> Ran:
    return sig.cli(
        "sig", "image-definition", "create", "--gallery-name", "myGallery",
        "--gallery-image-definition", "myDef", "--publisher", "p", "--offer", "o", "--sku", "s",
        *extra,
    )  # fmt: skip


@pytest.mark.offline
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"#" * (specrun.MAX_SPEC_BYTES + 1), "--test-spec: larger than 256 KiB"),
        (b"def test_x(host):\n    assert (\n", "--test-spec: not a Python test file ("),
        (b"\xff\xfe def test_x", "--test-spec: not a Python test file ("),
        (b"x = 1\n", "--test-spec: has no test functions (def test_...(host))"),
    ],
    ids=["too-big", "syntax", "not-utf8", "no-tests"],
)
def test_bad_specs_are_refused_before_anything_is_written(
    offline_sig: SigEnv, tmp_path: Path, content: bytes, message: str
) -> None:
    offline_sig.gallery()
    spec = tmp_path / "spec.py"
    spec.write_bytes(content)
    line = offline_sig.refused(ExitCode.INVALID_ARGUMENT, *_create(spec))
    assert line.startswith(message)
    offline_sig.definition()
    line = offline_sig.refused(ExitCode.INVALID_ARGUMENT, *_update(spec))
    assert line.startswith(message)


def _create(spec: Path | str) -> list[str]:
    return [
        "sig", "image-definition", "create", "--gallery-name", "myGallery",
        "--gallery-image-definition", "other", "--publisher", "p", "--offer", "o", "--sku", "t",
        "--test-spec", str(spec),
    ]  # fmt: skip


def _update(spec: Path | str) -> list[str]:
    return ["sig", "image-definition", "update", "--gallery-name", "myGallery",
            "--gallery-image-definition", "myDef", "--test-spec", str(spec)]  # fmt: skip


@pytest.mark.offline
def test_a_spec_that_is_no_file_is_refused(offline_sig: SigEnv, tmp_path: Path) -> None:
    offline_sig.gallery()
    missing = tmp_path / "nope.py"
    assert offline_sig.refused(ExitCode.NOT_FOUND, *_create(missing)) == (
        f"--test-spec '{missing}': no such file"
    )
    assert offline_sig.refused(ExitCode.INVALID_ARGUMENT, *_create(tmp_path)) == (
        f"--test-spec '{tmp_path}': not a regular file"
    )


@pytest.mark.offline
def test_a_stored_spec_is_shown_by_its_identity_and_removed_with_an_empty_name(
    offline_sig: SigEnv, tmp_path: Path
) -> None:
    sig = offline_sig
    sig.gallery()
    spec = tmp_path / "spec.py"
    spec.write_text(PASSING)
    ran = _define(sig, "--test-spec", str(spec), "-o", "json")
    stored = ran.json["sigvirt"]["testSpec"]
    sha = specs.sha256(PASSING.encode())
    assert stored == {
        "sha256": sha, "owner": specs.current_user(), "size": len(PASSING),
        "stored": stored["stored"], "file": f"test-spec.{sha[:16]}.py",
    }  # fmt: skip
    ddir = sig.store.definition_dir("myGallery", "myDef")
    path = ddir / stored["file"]
    assert path.read_text() == PASSING and path.stat().st_mode & 0o777 == 0o644
    table = sig.cli("sig", "image-definition", "show", "-r", "myGallery", "-i", "myDef").out
    assert f"test-spec.{sha[:16]}.py ({len(PASSING)} bytes, sha256 {sha[:16]}…" in table
    assert "assert" not in table  # never the code itself

    # A new spec replaces the old file; "" removes it.
    spec.write_text(PASSING + "\n# v2\n")
    second = sig.cli(*_update(spec), "-o", "json").json["sigvirt"]["testSpec"]
    assert sorted(p.name for p in ddir.glob("test-spec.*")) == [second["file"]]
    assert sig.cli(*_update(""), "-o", "json").json["sigvirt"]["testSpec"] is None
    assert list(ddir.glob("test-spec.*")) == []
    assert sig.store.get_definition("myGallery", "myDef").test_spec is None


def published(store: GalleryStore, v: str, test: BootTest | None = None) -> ImageVersion:
    replica = Replica("local", "pool", f"G-D-{v}-local-0.qcow2", f"/p/G-D-{v}-local-0.qcow2",
                      ReplicaState.COMPLETED)  # fmt: skip
    rec = ImageVersion("myGallery", "myDef", v, VersionState.SUCCEEDED, target_regions={"local": 1},
                       replicas=(replica,), boot_test=test or BootTest())  # fmt: skip
    with store.definition_lock("myGallery", "myDef"):
        store.create_version(rec)
    return rec


@pytest.mark.offline
def test_the_gate_refuses_a_spec_that_is_not_the_stored_one(
    offline_sig: SigEnv, tmp_path: Path
) -> None:
    sig = offline_sig
    sig.gallery()
    sig.definition()
    store = sig.store
    published(store, "1.0.0")
    args = ["sig", "image-version", "test", "-r", "myGallery", "-i", "myDef", "-e", "1.0.0"]
    ran = sig.cli(*args)
    assert ran.code == ExitCode.NOT_FOUND and ran.out == ""
    assert ran.err.splitlines() == [
        "sigvirt: error: image definition myGallery/myDef has no test spec",
        "sigvirt: hint: sigvirt sig image-definition update --gallery-name myGallery "
        "--gallery-image-definition myDef --test-spec FILE",
    ]
    spec = tmp_path / "spec.py"
    spec.write_text(PASSING)
    rec = definitions.set_test_spec(store, "myGallery", "myDef", spec.read_bytes())
    assert rec.test_spec is not None
    path = specs.path_of(store, "myGallery", "myDef", rec.test_spec)
    assert specs.read(store, rec).source == PASSING

    path.write_text(PASSING.replace("busybox", "busyb0x"))  # edited by hand, same size
    assert sig.refused(ExitCode.CORRUPT_METADATA, *args).startswith(
        f"test spec {path} does not match its record (sha256 {rec.test_spec.spec_sha256[:16]}…"
    )
    # Put back, but recorded as someone else's: the file's owner must be whoever stored it.
    path.write_text(PASSING)
    other = "nobody" if os.geteuid() == 0 else "root"
    claimed = dataclasses.replace(rec.test_spec, owner=other)
    store.update_definition(
        "myGallery", "myDef", lambda cur: dataclasses.replace(cur, test_spec=claimed)
    )
    uid = os.stat(path).st_uid
    assert sig.refused(ExitCode.CORRUPT_METADATA, *args) == (
        f"test spec {path} belongs to uid {uid}, not to {other} who stored it: refused"
    )
    path.unlink()
    assert sig.refused(ExitCode.CORRUPT_METADATA, *args) == (
        f"test spec {path} is missing (removed by hand?): store it again"
    )


@pytest.mark.offline
def test_versions_wait_for_a_spec_and_removing_it_releases_them(
    offline_sig: SigEnv, tmp_path: Path
) -> None:
    sig = offline_sig
    sig.gallery()
    sig.definition()
    store = sig.store
    published(store, "1.0.0")
    published(store, "1.1.0", BootTest(BootTestState.PENDING, "a" * 64))
    published(store, "1.2.0", BootTest(BootTestState.FAILED, "a" * 64, ("test_x: boom",), 1))
    killed = f"{socket.gethostname()}:{_boot_id()}:999999999"  # a run killed midway
    published(store, "1.0.1", BootTest(BootTestState.RUNNING, "a" * 64, vm="gate-1", runner=killed))
    spec = tmp_path / "spec.py"
    spec.write_text(PASSING)
    definitions.set_test_spec(store, "myGallery", "myDef", spec.read_bytes())
    assert latest.resolve(store, ImageRef("myGallery", "myDef")).name == "1.0.0"
    assert [(c.version, c.why) for c in latest.explain_latest(store.list_versions(
        "myGallery", "myDef"))] == [
        ("1.2.0", "boot test failed: test_x: boom"),
        ("1.1.0", "boot test pending"),
        ("1.0.1", "boot test pending"),
        ("1.0.0", "highest published version not excluded from latest"),
    ]  # fmt: skip
    # Without a spec there is nothing to wait for; a result already recorded stays.
    definitions.set_test_spec(store, "myGallery", "myDef", b"")
    tests = {v.name: v.boot_test for v in store.list_versions("myGallery", "myDef")}
    assert {v: t.state for v, t in tests.items()} == {
        "1.0.0": "none", "1.0.1": "none", "1.1.0": "none", "1.2.0": "failed",
    }  # fmt: skip
    assert (tests["1.0.1"].vm, tests["1.0.1"].runner) == ("", "")
    assert latest.resolve(store, ImageRef("myGallery", "myDef")).name == "1.1.0"


@pytest.mark.offline
def test_no_latest_because_of_the_gate_says_so(offline_sig: SigEnv) -> None:
    sig = offline_sig
    sig.gallery()
    sig.definition()
    published(sig.store, "1.0.0", BootTest(BootTestState.FAILED, failures=("test_x: boom",)))
    ref = ImageRef("myGallery", "myDef")
    for region, where in [(None, "that is not excluded from latest and not held by its boot test"),
                          ("local", "complete in region local and not excluded from latest "
                           "there")]:  # fmt: skip
        with pytest.raises(NotFound) as err:
            latest.resolve(sig.store, ref, region=region)
        assert err.value.message == (
            f"image definition myGallery/myDef has no published version {where} (version "
            "1.0.0: boot test failed: test_x: boom)"
        )


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


@pytest.mark.offline
def test_a_running_test_nobody_holds_is_due_again(offline_sig: SigEnv) -> None:
    """`running` under a live pid that is not the run's (the pid was reused): the gate lock,
    which a run holds throughout, is free, so the next replicate runs the test again."""
    sig = offline_sig
    sig.gallery()
    sig.definition()
    mine = f"{socket.gethostname()}:{_boot_id()}:{os.getpid()}"
    rec = published(sig.store, "1.0.0", BootTest(BootTestState.RUNNING, runner=mine, vm="gate-1"))
    ctx = sig.context()
    try:
        assert latest.boot_test_now(rec.boot_test).state == BootTestState.RUNNING
        assert gate.due(ctx, rec)
        with file_lock(gate.lock_path(ctx, rec)):  # a live run holds it
            assert not gate.due(ctx, rec)
        assert not gate.due(ctx, published(sig.store, "1.1.0"))  # none: never due by itself
        assert gate.due(ctx, published(sig.store, "1.2.0", BootTest(BootTestState.PENDING)))
    finally:
        ctx.close()


@pytest.mark.offline
def test_latest_skips_gated_versions_and_names_the_gate() -> None:
    def v(name: str, state: BootTestState, **kw: Any) -> ImageVersion:
        return ImageVersion("G", "D", name, VersionState.SUCCEEDED,
                            boot_test=BootTest(state, **kw))  # fmt: skip

    alive = f"{socket.gethostname()}:{_boot_id()}"
    versions = [
        v("1.0.0", BootTestState.NONE),
        v("1.1.0", BootTestState.PASSED),
        v("1.2.0", BootTestState.FAILED, failures=("test_a: one", "test_b: two")),
        v("1.3.0", BootTestState.RUNNING, vm="gate-1234abcd", runner=f"{alive}:{os.getpid()}"),
        v("1.4.0", BootTestState.RUNNING, vm="gate-1234abcd", runner=f"{alive}:999999999"),
        v("1.5.0", BootTestState.PENDING),
    ]
    why = {c.version: c.why for c in latest.explain_latest(versions)}
    assert why == {
        "1.5.0": "boot test pending",
        "1.4.0": "boot test pending",  # its runner is gone
        "1.3.0": "boot test running (VM gate-1234abcd)",
        "1.2.0": "boot test failed: test_a: one (and 1 more)",
        "1.1.0": "highest published version not excluded from latest",
        "1.0.0": "lower than 1.1.0",
    }


@pytest.mark.offline
def test_boot_test_records_are_checked_and_move_by_their_table(offline_sig: SigEnv) -> None:
    with pytest.raises(BadTransition):
        BootTest(BootTestState.FAILED).moved(BootTestState.PASSED)
    with pytest.raises(BadTransition):
        BootTest(BootTestState.NONE).moved(BootTestState.PENDING)
    assert BootTest().moved(BootTestState.RUNNING).gated

    sig = offline_sig
    sig.gallery()
    sig.definition()
    store = sig.store
    rec = published(store, "1.0.0")
    path = store.version_path("myGallery", "myDef", "1.0.0")
    good = json.loads(path.read_text())
    for field, value, problem in [
        ("state", "maybe", "boot_test.state: 'maybe' is not one of none, pending, running, passed, "
         "failed"),
        ("spec_sha256", "../../etc", "boot_test.spec_sha256: expected a sha256 (64 hex digits), "
         "found string '../../etc'"),
        ("failures", "x", "boot_test.failures: expected a list, found string 'x'"),
    ]:  # fmt: skip
        path.write_text(json.dumps({**good, "boot_test": {**good["boot_test"], field: value}}))
        with pytest.raises(CorruptRecord) as err:
            store.get_version("myGallery", "myDef", "1.0.0")
        assert err.value.fields["detail"] == problem
    path.write_text(json.dumps({k: x for k, x in good.items() if k != "boot_test"}))
    assert store.get_version("myGallery", "myDef", "1.0.0") == rec  # older records: no test

    dpath = store.definition_dir("myGallery", "myDef") / "definition.json"
    spec = {"spec_sha256": "a" * 64, "owner": "x y", "size": 1, "stored": ""}
    dpath.write_text(json.dumps({**json.loads(dpath.read_text()), "test_spec": spec}))
    with pytest.raises(CorruptRecord) as err:
        store.get_definition("myGallery", "myDef")
    assert err.value.fields["detail"] == "test_spec.owner: expected a user name, found string 'x y'"
    assert Definition("G", "D", "p", "o", "s").test_spec is None
