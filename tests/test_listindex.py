"""The listing index (catalog/listindex.py): a cache of a definition's version records that a
listing uses only where each record's file still has the stamp the index recorded; never
believed over a record, never believed when damaged or foreign, kept by listings, readable
exactly as a version record without grants of its own is. Offline: plain files, any user."""

from __future__ import annotations

import dataclasses
import grp
import json
import os
import pwd
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sigvirt.catalog import latest, listindex
from sigvirt.catalog.names import ImageRef
from sigvirt.catalog.policy import Grant, Policy
from sigvirt.catalog.records import (
    ImageVersion,
    Replica,
    ReplicaState,
    VersionState,
    now,
)
from sigvirt.catalog.store import Damaged, GalleryStore
from sigvirt.galleries import definitions, galleries
from sigvirt.sharing import acl as posixacl
from sigvirt.sharing import share
from tests.support.catalog import SigEnv

pytestmark = pytest.mark.offline

COUNT = 8
ACL = "system.posix_acl_access"


@pytest.fixture(autouse=True)
def small_definitions(monkeypatch: pytest.MonkeyPatch) -> None:
    """An index from 4 versions on, so a test needs no 32 records; and the index on."""
    monkeypatch.setattr(listindex, "MIN_VERSIONS", 4)
    monkeypatch.delenv(listindex.ENV, raising=False)


def _record(name: str, **kw: object) -> ImageVersion:
    volume = f"G-D-{name}-local-0.qcow2"
    replica = Replica("local", "a", volume, f"/pools/a/{volume}", ReplicaState.COMPLETED, 100)
    fields: dict[str, object] = {
        "state": VersionState.SUCCEEDED,
        "sha256": "ab" * 32,
        "target_regions": {"local": 1},
        "replicas": (replica,),
        "published": now(),
        **kw,
    }
    return ImageVersion("G", "D", name, **fields)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> GalleryStore:
    s = GalleryStore(tmp_path / "galleries")
    group = grp.getgrgid(os.getegid()).gr_name
    galleries.create_gallery(s, "G", owner_group=group)
    definitions.create_definition(s, "G", "D", definitions.DefinitionInput("P", "O", "S"))
    with s.definition_lock("G", "D"):
        for i in range(COUNT):
            s.create_version(_record(f"1.0.{i}"))
    _settle()
    return s


def _settle() -> None:
    """Past the window in which a record's stamp may not show a change (listindex.RACY_NS)."""
    time.sleep(listindex.RACY_NS / 1e9 + 0.02)


def _index(s: GalleryStore) -> Path:
    return s.versions_dir("G", "D") / listindex.NAME


def _believed(s: GalleryStore) -> dict[str, ImageVersion] | None:
    fd = os.open(s.versions_dir("G", "D"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        return listindex.believed(fd, "G", "D", listindex.scan(fd), lambda: s.policy("G"))
    finally:
        os.close(fd)


def _from_files(s: GalleryStore, monkeypatch: pytest.MonkeyPatch) -> list[ImageVersion]:
    with monkeypatch.context() as m:
        m.setenv(listindex.ENV, "off")
        return s.list_versions("G", "D")


def _agrees(s: GalleryStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the index makes believed is what the record files say, and a listing through
    the index is the listing from the files."""
    for name, rec in (_believed(s) or {}).items():
        assert rec == s.get_version("G", "D", name, hidden=True)
    assert s.list_versions("G", "D") == _from_files(s, monkeypatch)


def test_a_listing_writes_the_index_and_the_next_one_believes_it(store: GalleryStore) -> None:
    assert not _index(store).exists()
    first = store.list_versions("G", "D")
    assert [v.name for v in first] == [f"1.0.{i}" for i in range(COUNT)]
    believed = _believed(store)
    assert believed is not None and sorted(believed) == sorted(v.name for v in first)
    written = _index(store).stat().st_mtime_ns
    assert store.list_versions("G", "D") == first
    assert _index(store).stat().st_mtime_ns == written  # nothing stale: not written again


def test_no_index_below_the_size_that_needs_one(
    store: GalleryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listindex, "MIN_VERSIONS", COUNT + 1)
    store.list_versions("G", "D")
    assert not _index(store).exists()


def test_index_kept_in_step_across_create_update_delete_soft_delete_undelete(
    store: GalleryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.list_versions("G", "D")
    bump = lambda r: dataclasses.replace(r, replica_count=r.replica_count + 1)  # noqa: E731
    steps = [
        lambda: _create(store, "2.0.0"),
        lambda: store.update_version("G", "D", "1.0.1", bump),
        lambda: store.update_version(
            "G", "D", "1.0.2", lambda r: r.moved(VersionState.SOFT_DELETED, soft_deleted=now())
        ),
        lambda: store.update_version(
            "G", "D", "1.0.2", lambda r: r.moved(VersionState.SUCCEEDED, soft_deleted=""),
            hidden=True,
        ),
        lambda: _remove(store, "1.0.3"),
    ]  # fmt: skip
    for step in steps:
        step()
        _agrees(store, monkeypatch)  # at once: the changed record is read from its file
        _settle()
        _agrees(store, monkeypatch)
    names = [v.name for v in store.list_versions("G", "D")]
    assert "2.0.0" in names and "1.0.3" not in names and "1.0.2" in names
    assert store.get_version("G", "D", "1.0.1").replica_count == 2


def _create(s: GalleryStore, name: str) -> None:
    with s.definition_lock("G", "D"):
        s.create_version(_record(name))


def _remove(s: GalleryStore, name: str) -> None:
    with s.definition_lock("G", "D"):
        s.remove_version_record("G", "D", name)


def test_a_record_newer_than_the_index_wins(
    store: GalleryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Edited in place, same size, its mtime put back: the ctime still tells."""
    store.list_versions("G", "D")
    path = store.version_path("G", "D", "1.0.4")
    before = path.stat()
    text = path.read_text()
    edited = text.replace('"sha256": "' + "ab" * 32, '"sha256": "' + "cd" * 32)
    assert len(edited) == len(text) and edited != text
    with path.open("r+") as f:
        f.write(edited)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    listed = {v.name: v for v in store.list_versions("G", "D")}
    assert listed["1.0.4"].sha256 == "cd" * 32
    _agrees(store, monkeypatch)


@pytest.mark.parametrize(
    "damage",
    [
        "garbage",
        "truncated",
        "wrong shape",
        "NUL in a string",
        "another gallery",
        "a record that lies elsewhere",
        "a record that differs, stamped as its file",
        "a fifo",
        "a symbolic link",
    ],
)
def test_a_damaged_index_is_never_believed_and_is_rebuilt(
    store: GalleryStore, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    truth = store.list_versions("G", "D")
    index = _index(store)
    doc = json.loads(index.read_bytes())
    if damage == "garbage":
        index.write_bytes(b"\x00\xff not json")
    elif damage == "truncated":
        index.write_bytes(index.read_bytes()[:-100])
    elif damage == "wrong shape":
        doc["stamps"] = [1, 2, 3]
    elif damage == "NUL in a string":
        doc["records"]["1.0.0"]["source"] = "a\x00b"
    elif damage == "another gallery":
        doc["gallery"] = "Other"
    elif damage == "a record that lies elsewhere":
        doc["records"]["1.0.0"]["name"] = "1.0.1"
    elif damage == "a record that differs, stamped as its file":
        # A record changed after the index was built, within the clock tick of its build:
        # the stamp can't tell, so the entry is read from its file all the same.
        doc["records"]["1.0.0"]["sha256"] = "ef" * 32
        doc["built_ns"] = doc["stamps"]["1.0.0"][3]
    elif damage == "a fifo":
        index.unlink()
        os.mkfifo(index)
    elif damage == "a symbolic link":
        decoy = index.with_name("decoy")
        decoy.write_bytes(index.read_bytes())
        index.unlink()
        index.symlink_to(decoy)
    if damage in (
        "wrong shape",
        "NUL in a string",
        "another gallery",
        "a record that lies elsewhere",
        "a record that differs, stamped as its file",
    ):
        index.write_text(json.dumps(doc))  # fmt: skip
    damaged: list[Damaged] = []
    assert store.list_versions("G", "D", damaged) == truth
    assert damaged == []
    if damage == "a record that differs, stamped as its file":
        believed = _believed(store)
        assert believed is not None and "1.0.0" not in believed
        return
    assert _believed(store) is not None  # written again by that listing
    _agrees(store, monkeypatch)


def test_a_foreign_index_is_ignored(store: GalleryStore) -> None:
    """Only root, the caller and those who may write the versions are believed: a former
    contributor who still owns the file could rewrite it in place."""
    store.list_versions("G", "D")
    daemon = pwd.getpwnam("daemon")
    if os.geteuid() == 0:
        os.chown(_index(store), daemon.pw_uid, -1)
        assert _believed(store) is None
    no_role = Policy("G")
    contributor = Policy("G", grants=(Grant("daemon", "contributor", "D"),))
    reader = Policy("G", grants=(Grant("daemon", "reader", ""),))
    uid = daemon.pw_uid
    assert not listindex.owner_may_write(uid, lambda: no_role, "D")
    assert not listindex.owner_may_write(uid, lambda: reader, "D")
    assert listindex.owner_may_write(uid, lambda: contributor, "D")
    assert not listindex.owner_may_write(uid, lambda: contributor, "E")
    assert listindex.owner_may_write(os.geteuid(), lambda: no_role, "D")


def test_an_index_others_may_write_is_ignored(store: GalleryStore) -> None:
    store.list_versions("G", "D")
    os.chmod(_index(store), 0o666)
    assert _believed(store) is None
    store.list_versions("G", "D")  # written again, as the records are
    assert (
        _index(store).stat().st_mode & 0o7777
        == store.version_path("G", "D", "1.0.0").stat().st_mode & 0o7777
    )
    assert _believed(store) is not None


_WRITER = """
import dataclasses, sys
from pathlib import Path
from sigvirt.catalog.store import GalleryStore
s = GalleryStore(Path(sys.argv[1]))
for i in range(int(sys.argv[2])):
    s.update_version("G", "D", f"1.0.{i % 8}",
                     lambda r: dataclasses.replace(r, replica_count=r.replica_count + 1))
"""


def test_concurrent_writers_never_leave_the_index_disagreeing(
    store: GalleryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.list_versions("G", "D")
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(store.root), "24"]) for _ in range(2)
    ]
    seen = {f"1.0.{i}": 1 for i in range(COUNT)}
    listings = 0
    while any(w.poll() is None for w in writers):
        # Writers only count up: a listing that showed an older record than one before it
        # would have believed a stale entry. Listings write the index meanwhile.
        for rec in store.list_versions("G", "D"):
            assert rec.replica_count >= seen[rec.name], rec.name
            seen[rec.name] = rec.replica_count
        listings += 1
    assert [w.returncode for w in writers] == [0, 0] and listings > 0
    _agrees(store, monkeypatch)
    _settle()
    _agrees(store, monkeypatch)
    assert sum(v.replica_count for v in store.list_versions("G", "D")) == COUNT + 48


def _acl(path: Path) -> bytes:
    try:
        return os.getxattr(path, ACL)
    except OSError:
        return b""  # none: the mode bits alone


def _access(path: Path) -> tuple[int, int, tuple[tuple[int, int, int], ...]]:
    """Who may do what to a file: its group, its owner's and others' mode bits, and each
    ACL entry's effective permission (masked: what the kernel grants)."""
    st, raw = path.stat(), _acl(path)
    entries = [struct.unpack_from("<HHI", raw, off) for off in range(4, len(raw), 8)]
    mask = next((perm for tag, perm, _q in entries if tag == posixacl.MASK), 7)
    masked = (posixacl.GROUP, posixacl.GROUP_OBJ)
    effective = tuple(
        sorted((tag, q, perm & mask if tag in masked else perm) for tag, perm, q in entries)
    )
    return st.st_gid, st.st_mode & 0o7707, effective


def test_index_permissions_equal_the_records(store: GalleryStore) -> None:
    """Who may read and write it is who may a version record without grants of its own,
    when new (the directory's default ACL), and after sharing changes (sharing's plan sets
    both alike); a version shared on its own reaches further than the index."""
    policy = store.policy("G")
    grants = (Grant("daemon", "reader", "D"), Grant("bin", "reader", "D/1.0.5"))
    store.save_policy(dataclasses.replace(policy, grants=grants))
    share.sync(store, "G", {})
    store.list_versions("G", "D")
    index, plain = _index(store), store.version_path("G", "D", "1.0.4")
    shared = store.version_path("G", "D", "1.0.5")
    assert _access(index) == _access(plain) != _access(shared)
    for kept in (grants[1:], ()):  # daemon loses D, then bin its version
        store.save_policy(dataclasses.replace(policy, grants=kept))
        share.sync(store, "G", {})
        assert _acl(index) == _acl(plain)  # exactly the same entries
        assert _access(index) == _access(plain)


def test_show_latest_and_resolve_use_the_same_listing(store: GalleryStore) -> None:
    store.list_versions("G", "D")
    store.update_version(
        "G", "D", "1.0.7", lambda r: dataclasses.replace(r, exclude_from_latest=True)
    )
    assert latest.resolve(store, ImageRef("G", "D")).name == "1.0.6"


def test_cli_output_is_byte_identical_with_and_without_the_index(
    offline_sig: SigEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Soft-deleted, damaged and shared versions among them; table, json, tsv, show-latest."""
    sig = offline_sig
    sig.gallery("G")
    sig.definition("G", "D")
    s = sig.store
    with s.definition_lock("G", "D"):
        for i in range(COUNT):
            s.create_version(
                dataclasses.replace(_record(f"1.0.{i}"), tags={"n": str(i)}, definition="D")
            )
    s.update_version(
        "G", "D", "1.0.6", lambda r: r.moved(VersionState.SOFT_DELETED, soft_deleted=now())
    )
    s.version_path("G", "D", "1.0.2").write_text("{")
    policy = s.policy("G")
    s.save_policy(dataclasses.replace(policy, grants=(Grant("daemon", "reader", "D/1.0.3"),)))
    _settle()
    base = ("-r", "G", "-i", "D")
    commands = [
        ("sig", "image-version", "list", *base),
        ("sig", "image-version", "list", *base, "-o", "json"),
        ("sig", "image-version", "list", *base, "-o", "tsv"),
        ("sig", "image-version", "show-latest", *base, "-o", "json"),
        ("sig", "image-version", "show-latest", *base, "--explain"),
    ]
    monkeypatch.setenv(listindex.ENV, "off")
    without = [sig.cli(*c) for c in commands]
    assert not _index(s).exists()
    monkeypatch.delenv(listindex.ENV)
    sig.cli(*commands[0])  # writes the index
    assert _believed(s) is not None
    with_index = [sig.cli(*c) for c in commands]
    assert with_index == without
    assert '"damaged"' in without[1].out and "1.0.6" not in without[1].out


def test_damaged_records_do_not_make_every_listing_write_the_index(
    store: GalleryStore,
) -> None:
    for i in range(10):  # more than a few: never in the index, read every time
        store.version_path("G", "D", f"3.0.{i}").write_text("{")
    damaged: list[Damaged] = []
    assert len(store.list_versions("G", "D", damaged)) == COUNT and len(damaged) == 10
    written = _index(store).stat().st_mtime_ns
    damaged.clear()
    assert len(store.list_versions("G", "D", damaged)) == COUNT and len(damaged) == 10
    assert _index(store).stat().st_mtime_ns == written


def test_scans_that_act_on_records_read_every_file(store: GalleryStore) -> None:
    """gc, sharing, space and the recycle bin list with hidden=True: from the files, even
    where an index its writer may write would stand in for them."""
    store.list_versions("G", "D")
    doc = json.loads(_index(store).read_bytes())
    doc["records"]["1.0.0"]["source"] = "forged"
    doc["built_ns"] = time.time_ns() + 10**9
    _index(store).write_text(json.dumps(doc))
    assert store.list_versions("G", "D")[0].source == "forged"  # a writer's word, believed
    assert store.list_versions("G", "D", hidden=True)[0].source == ""
