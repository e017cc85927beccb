"""Damaged catalog records, as the CLI meets them: whoever asks for one by name gets one line and
exit 17; a listing skips it with a warning (and an entry marked `damaged` for scripts) and
exits 0, so one bad file breaks no command on the others; `latest` skips it.

The version record myGallery/myDef/1.0.0 is damaged in every way a file can be (the bar is the
tester's list: wrong JSON, wrong types, wrong place, wrong kind of file); 2.0.0 stays good.
"""

from __future__ import annotations

import json
import os
import signal
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sigvirt.catalog import latest
from sigvirt.catalog.codec import MAX_INT
from sigvirt.catalog.names import parse_image_ref
from sigvirt.catalog.policy import Caller
from sigvirt.catalog.records import ImageVersion, VersionState
from sigvirt.catalog.store import CorruptRecord, Damaged, GalleryStore
from sigvirt.errors import ExitCode
from tests.support.catalog import SigEnv, tree

pytestmark = pytest.mark.offline

G, D = ["--gallery-name", "myGallery"], ["--gallery-image-definition", "myDef"]
LIST = ["sig", "image-version", "list", *G, *D]
STATES = "creating, succeeded, failed, deleting, soft-deleted, pending-deletion"
REPLICA_STATES = "pending, copying, verifying, completed, failed, corrupt, deleting"
LINK = "is a symbolic link (sigvirt follows no links in its catalog)"
RANGE = f"expected an integer from 0 to {MAX_INT}"


@pytest.fixture(autouse=True)
def no_hang() -> Iterator[None]:
    """A read that blocks (a fifo opened without O_NONBLOCK) fails the test instead."""

    def hung(signum: int, frame: object) -> None:
        raise TimeoutError("the command hung")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def catalog(offline_sig: SigEnv) -> SigEnv:
    """myGallery/myDef with versions 1.0.0 and 2.0.0 (published, one region)."""
    offline_sig.gallery()
    offline_sig.definition()
    store = offline_sig.store
    with store.definition_lock("myGallery", "myDef"):
        for v in ("1.0.0", "2.0.0"):
            rec = ImageVersion(
                "myGallery", "myDef", v, state=VersionState.SUCCEEDED, target_regions={"local": 1}
            )
            store.create_version(rec)
    return offline_sig


def version_path(sig: SigEnv, v: str = "1.0.0") -> Path:
    return sig.store.version_path("myGallery", "myDef", v)


def edited(**changes: Any) -> Callable[[Path, dict[str, Any]], None]:
    def damage(path: Path, good: dict[str, Any]) -> None:
        path.write_text(json.dumps({**good, **changes}, indent=2))

    return damage


def written(data: bytes) -> Callable[[Path, dict[str, Any]], None]:
    def damage(path: Path, good: dict[str, Any]) -> None:
        path.write_bytes(data)

    return damage


def replaced_by(make: Callable[[Path], object]) -> Callable[[Path, dict[str, Any]], None]:
    def damage(path: Path, good: dict[str, Any]) -> None:
        path.unlink()
        make(path)

    return damage


def _without(key: str) -> Callable[[Path, dict[str, Any]], None]:
    def damage(path: Path, good: dict[str, Any]) -> None:
        path.write_text(json.dumps({k: good[k] for k in good if k != key}))

    return damage


def _huge(path: Path) -> None:
    with path.open("wb") as f:
        f.truncate((4 << 20) + 1)  # sparse: refused by its size, never read


def _replica(**changes: Any) -> list[dict[str, Any]]:
    return [{"region": "local", "pool": "p", "volume": "v", "path": "/p/v", **changes}]


# (what, how the file is damaged, the reason every command gives)
KINDS: list[tuple[str, Callable[[Path, dict[str, Any]], None], str]] = [
    ("empty file", written(b""), "Expecting value: line 1 column 1 (char 0)"),
    ("truncated JSON", written(b'{"name": '), "Expecting value: line 1 column 10 (char 9)"),
    ("not an object", written(b"[]"), "expected a JSON object, found list"),
    ("a required field missing", _without("name"), "ImageVersion record has no name"),
    ("replica_count a string", edited(replica_count="x"),
     "replica_count: expected an integer, found string 'x'"),
    ("replica_count a boolean", edited(replica_count=True),
     "replica_count: expected an integer, found true"),
    ("replicas an object", edited(replicas={}), "replicas: expected a list, found an object"),
    ("target_regions a list", edited(target_regions=[1]),
     "target_regions: expected an object, found a list"),
    ("state a number", edited(state=3), f"state: expected one of {STATES}, found integer 3"),
    ("state unknown", edited(state="bogus"), f"state: 'bogus' is not one of {STATES}"),
    ("a replica that is not an object", edited(replicas=["x"]),
     "replicas[0]: expected a JSON object, found string 'x'"),
    ("a replica in an unknown state", edited(replicas=_replica(state="lost")),
     f"replicas[0].state: 'lost' is not one of {REPLICA_STATES}"),
    ("a negative size", edited(virtual_size=-1), f"virtual_size: {RANGE}, found integer -1"),
    ("a negative replica count in a region", edited(target_regions={"local": -2}),
     f"target_regions['local']: {RANGE}, found integer -2"),
    ("end of life not a date", edited(end_of_life="soon"),
     "end_of_life: expected an ISO date, found 'soon'"),
    ("another version's name", edited(name="9.9.9"),
     "says version '9.9.9' but is the file of version '1.0.0'"),
    ("another gallery", edited(gallery="victim"),
     "says gallery 'victim' but lies in gallery 'myGallery'"),
    ("another definition", edited(definition="other"),
     "says image definition 'other' but lies in image definition 'myDef'"),
    ("a symbolic link", replaced_by(lambda p: p.symlink_to("2.0.0.json")), LINK),
    ("a dangling symbolic link", replaced_by(lambda p: p.symlink_to("/nonexistent")), LINK),
    ("a directory", replaced_by(lambda p: p.mkdir()), "is a directory, not a file"),
    ("a fifo", replaced_by(lambda p: os.mkfifo(p)), "is a fifo, not a file"),
    ("a huge file", replaced_by(_huge), "is larger than a record may be (4 MiB)"),
    ("deep nesting", written(b"[" * 100_000), "JSON nested too deeply"),
    ("invalid UTF-8", written(b'{"name": "\xff"}'),
     "'utf-8' codec can't decode byte 0xff in position 10: invalid start byte"),
    ("a NUL byte", written(b'{"name": "1.0.0\x00"}'),
     "Invalid control character at: line 1 column 16 (char 15)"),
    ("an escaped NUL", edited(reason="a\x00b"), "reason: holds a NUL character"),
    ("a lone surrogate", written(b'{"name": "\\ud800"}'),
     "name: holds a lone surrogate (not Unicode text)"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "damage", "reason"), KINDS, ids=[k[0] for k in KINDS])
def test_a_damaged_version_is_exit_17_by_name_and_skipped_by_the_rest(
    catalog: SigEnv, what: str, damage: Callable[[Path, dict[str, Any]], None], reason: str
) -> None:
    sig, path = catalog, version_path(catalog)
    damage(path, json.loads(path.read_text()))
    line = f"metadata file {path} is unreadable: {reason}"
    warning = f"sigvirt: warning: skipped damaged metadata file {path}: {reason}\n"

    shown = sig.cli("sig", "image-version", "show", *G, *D, "--gallery-image-version", "1.0.0")
    assert (shown.code, shown.out, shown.error) == (ExitCode.CORRUPT_METADATA, "", line)

    listed = sig.cli(*LIST, "-o", "json")
    assert (listed.code, listed.err) == (0, warning)
    assert [row["name"] for row in listed.json] == ["2.0.0", "1.0.0"]
    assert listed.json[1] == {"name": "1.0.0", "damaged": reason}
    as_yaml = sig.cli(*LIST, "-o", "yaml")
    assert (as_yaml.code, as_yaml.err, yaml.safe_load(as_yaml.out)) == (0, warning, listed.json)
    table = sig.cli(*LIST)
    assert (table.code, table.err) == (0, warning)
    assert "2.0.0" in table.out and "1.0.0" not in table.out

    chosen = sig.cli("sig", "image-version", "show-latest", *G, *D, "-o", "json")
    assert (chosen.code, chosen.err, chosen.json["name"]) == (0, warning, "2.0.0")
    explained = sig.cli("sig", "image-version", "show-latest", *G, *D, "--explain", "-o", "json")
    assert explained.json[1] == {"version": "1.0.0", "chosen": False, "why": f"damaged: {reason}",
                                 "end_of_life": None, "eol_policy": "warn (default)"}  # fmt: skip

    # what the other commands read: the good version, as if nothing were wrong
    store = sig.store
    assert latest.resolve(store, parse_image_ref("myGallery/myDef")).name == "2.0.0"
    damaged: list[Damaged] = []
    assert [v.name for v in store.list_versions("myGallery", "myDef", damaged)] == ["2.0.0"]
    assert [(d.name, d.path, d.reason) for d in damaged] == [("1.0.0", str(path), reason)]
    with pytest.raises(CorruptRecord):
        store.get_version("myGallery", "myDef", "1.0.0")


def test_there_are_at_least_nineteen_kinds() -> None:
    assert len(KINDS) >= 19


def test_duplicate_keys_take_the_last_and_are_checked_as_read(catalog: SigEnv) -> None:
    """json keeps the last of duplicate keys, and so does sigvirt: a record is checked as it is
    read, so a duplicated "gallery" cannot name two galleries to two readers."""
    sig, path = catalog, version_path(catalog)
    text = path.read_text()
    path.write_text(
        text.replace('"gallery": "myGallery"', '"gallery": "victim", "gallery": "myGallery"')
    )
    assert sig.store.get_version("myGallery", "myDef", "1.0.0").gallery == "myGallery"
    path.write_text(
        text.replace('"gallery": "myGallery"', '"gallery": "myGallery", "gallery": "victim"')
    )
    assert sig.cli("sig", "image-version", "show", *G, *D, "-e", "1.0.0").error == (
        f"metadata file {path} is unreadable: says gallery 'victim' but lies in gallery 'myGallery'"
    )


@pytest.mark.parametrize(
    ("name", "listed"), [("abc.json", "abc"), ("01.0.0.json", "01.0.0"), ("1.0.9999999999.json",
                                                                              "1.0.9999999999")]
)  # fmt: skip
def test_a_file_whose_name_is_no_version_is_listed_as_damaged(
    catalog: SigEnv, name: str, listed: str
) -> None:
    path = version_path(catalog).with_name(name)
    path.write_text(version_path(catalog).read_text())
    ran = catalog.cli(*LIST, "-o", "json")
    reason = "its name is not a version (Major.Minor.Patch.json)"
    assert ran.err == f"sigvirt: warning: skipped damaged metadata file {path}: {reason}\n"
    assert ran.json[-1] == {"name": listed, "damaged": reason}
    assert [row["name"] for row in ran.json[:-1]] == ["1.0.0", "2.0.0"]


def test_latest_when_the_highest_version_is_damaged(catalog: SigEnv) -> None:
    sig = catalog
    path = version_path(sig, "2.0.0")
    path.write_text("{")
    reason = "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    chosen = sig.cli("sig", "image-version", "show-latest", *G, *D, "-o", "json")
    assert chosen.json["name"] == "1.0.0"  # the highest one that can be read
    assert chosen.err == f"sigvirt: warning: skipped damaged metadata file {path}: {reason}\n"
    explained = sig.cli("sig", "image-version", "show-latest", *G, *D, "--explain", "-o", "json")
    eol = {"end_of_life": None, "eol_policy": "warn (default)"}
    assert explained.json == [
        {"version": "2.0.0", "chosen": False, "why": f"damaged: {reason}", **eol},
        {"version": "1.0.0", "chosen": True,
         "why": "highest published version not excluded from latest", **eol},
    ]  # fmt: skip
    # Nothing readable is eligible: the damaged record is the error (it may have been latest).
    version_path(sig, "1.0.0").unlink()
    refused = sig.cli("sig", "image-version", "show-latest", *G, *D)
    assert (refused.code, refused.out, refused.error) == (
        ExitCode.CORRUPT_METADATA, "", f"metadata file {path} is unreadable: {reason}",
    )  # fmt: skip


def test_deleting_a_definition_with_a_damaged_version_is_refused(catalog: SigEnv) -> None:
    sig, path = catalog, version_path(catalog, "2.0.0")
    version_path(sig).unlink()
    path.write_text("[]")
    before = tree(sig.root)
    ran = sig.cli("sig", "image-definition", "delete", *G, *D)
    assert (ran.code, ran.error) == (
        ExitCode.CORRUPT_METADATA,
        f"metadata file {path} is unreadable: expected a JSON object, found list",
    )
    assert tree(sig.root) == before  # removing the tree would have removed it unread


# -- galleries and definitions ----------------------------------------------------------------
def test_a_damaged_gallery_is_skipped_by_sig_list(catalog: SigEnv) -> None:
    sig = catalog
    sig.gallery("other")
    path = sig.root / "myGallery" / "gallery.json"
    good = path.read_text()
    for content, reason in [
        ("[]", "expected a JSON object, found list"),
        (good.replace('"name": "myGallery"', '"name": "other"'),
         "says gallery 'other' but is the file of gallery 'myGallery'"),
        (good.replace('"owner_group": "', '"owner_group": 7, "x": "'),
         "owner_group: expected a string, found integer 7"),
    ]:  # fmt: skip
        path.write_text(content)
        ran = sig.cli("sig", "list", "-o", "json")
        assert ran.err == f"sigvirt: warning: skipped damaged metadata file {path}: {reason}\n"
        assert [g["name"] for g in ran.json] == ["other", "myGallery"]
        assert ran.json[1] == {"name": "myGallery", "damaged": reason}
        table = sig.cli("sig", "list")
        assert (table.code, "other" in table.out, "myGallery" in table.out) == (0, True, False)
        shown = sig.cli("sig", "show", *G)
        assert (shown.code, shown.error) == (
            ExitCode.CORRUPT_METADATA, f"metadata file {path} is unreadable: {reason}",
        )  # fmt: skip


def test_what_is_no_gallery_in_the_root(catalog: SigEnv) -> None:
    sig = catalog
    (sig.root / "lost+found").mkdir()  # no gallery has such a name: not one
    (sig.root / "stray.txt").write_text("x")
    (sig.root / "linked").symlink_to("myGallery")
    ran = sig.cli("sig", "list", "-o", "json")
    assert ran.err == (
        f"sigvirt: warning: skipped damaged metadata file {sig.root}/linked: {LINK}\n"
    )
    assert [g["name"] for g in ran.json] == ["myGallery", "linked"]
    assert ran.json[1] == {"name": "linked", "damaged": LINK}


def test_a_damaged_definition_is_skipped_by_its_listing(catalog: SigEnv) -> None:
    sig = catalog
    sig.definition(name="second")
    path = sig.root / "myGallery" / "images" / "myDef" / "definition.json"
    good = path.read_text()
    for content, reason in [
        (good.replace('"gallery": "myGallery"', '"gallery": "victim"'),
         "says gallery 'victim' but lies in gallery 'myGallery'"),
        (good.replace('"name": "myDef"', '"name": "second"'),
         "says image definition 'second' but is the file of image definition 'myDef'"),
        (good.replace('"os_type": "Linux"', '"os_type": "BeOS"'),
         "os_type: expected one of Linux, Windows, found string 'BeOS'"),
        (good.replace('"min_vcpus": null', '"min_vcpus": -4'),
         f"min_vcpus: {RANGE}, found integer -4"),
    ]:  # fmt: skip
        path.write_text(content)
        ran = sig.cli("sig", "image-definition", "list", *G, "-o", "json")
        assert ran.err == f"sigvirt: warning: skipped damaged metadata file {path}: {reason}\n"
        assert [d["name"] for d in ran.json] == ["second", "myDef"]
        assert ran.json[1] == {"name": "myDef", "damaged": reason}
        shown = sig.cli("sig", "image-definition", "show", *G, *D)
        assert (shown.code, shown.error) == (
            ExitCode.CORRUPT_METADATA, f"metadata file {path} is unreadable: {reason}",
        )  # fmt: skip
        deleted = sig.cli("sig", "delete", *G)  # a gallery is never removed with it unread
        assert (deleted.code, deleted.error) == (
            ExitCode.CORRUPT_METADATA, f"metadata file {path} is unreadable: {reason}",
        )  # fmt: skip


def test_symbolic_links_on_the_way_to_a_record_are_refused(catalog: SigEnv) -> None:
    sig = catalog
    gdir = sig.root / "myGallery"
    for rel, argv in [
        ("images", ["sig", "image-definition", "list", *G]),
        ("images/myDef", ["sig", "image-definition", "show", *G, *D]),
        ("images/myDef/versions", LIST),
        ("images/myDef/versions", ["sig", "image-version", "show", *G, *D, "-e", "2.0.0"]),
    ]:
        real = gdir / (rel + ".real")
        os.rename(gdir / rel, real)
        (gdir / rel).symlink_to(real.name)
        ran = sig.cli(*argv)
        assert (ran.code, ran.out, ran.error) == (
            ExitCode.CORRUPT_METADATA, "", f"metadata file {gdir / rel} is unreadable: {LINK}",
        )  # fmt: skip
        (gdir / rel).unlink()
        os.rename(real, gdir / rel)


@pytest.mark.parametrize(
    ("lock", "argv"),
    [
        ("myGallery/images/myDef/.lock",
         ["sig", "image-definition", "update", *G, *D, "--description", "x"]),
        ("myGallery/.lock", ["sig", "update", *G, "--description", "x"]),
        ("myGallery/images/.lock",
         ["sig", "image-definition", "create", *G, "-i", "third", "--publisher", "p", "--offer",
          "o", "--sku", "third"]),
    ],
)  # fmt: skip
@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("symlink", LINK),
        ("dangling", LINK),
        ("directory", "is a directory, not a lock file"),
        ("fifo", "is a fifo, not a lock file"),
    ],
)
def test_something_else_in_a_locks_place_is_exit_17(
    catalog: SigEnv, lock: str, argv: list[str], how: str, reason: str
) -> None:
    path = catalog.root / lock
    path.unlink()
    {
        "symlink": lambda: path.symlink_to("/etc/passwd"),
        "dangling": lambda: path.symlink_to("nowhere"),
        "directory": path.mkdir,
        "fifo": lambda: os.mkfifo(path),
    }[how]()
    ran = catalog.cli(*argv)
    assert (ran.code, ran.out, ran.error) == (
        ExitCode.CORRUPT_METADATA, "", f"metadata file {path} is unreadable: {reason}",
    )  # fmt: skip
    assert how != "dangling" or not (catalog.root / "myGallery" / "images" / "nowhere").exists()


def test_a_caller_who_cannot_read_the_sharing_file_sees_the_gallery_damaged(
    catalog: SigEnv,
) -> None:
    """A non-root caller's listing reads each gallery's access.json: a damaged one is that
    gallery's damage, not the listing's."""
    sig = catalog
    sig.gallery("other")
    access = sig.root / "myGallery" / "access.json"
    access.write_text('{"gallery": "myGallery", "grants": [{"group": "g", "role": "admin"}]}')
    caller = Caller(uid=54321, user="someone", groups=frozenset({"staff"}))
    store = GalleryStore(sig.root, caller)
    damaged: list[Damaged] = []
    store.list_galleries(damaged)
    assert [(d.name, d.path, d.reason) for d in damaged] == [
        ("myGallery", str(access),
         "grants[0].role: expected one of reader, contributor, owner, found string 'admin'"),
    ]  # fmt: skip


def test_a_record_naming_another_gallery_never_reaches_the_acl_plan(catalog: SigEnv) -> None:
    """sharing/plan.py computes ACLs from list_definitions and list_versions: a record that
    claims another gallery's replicas must not be among them."""
    sig, path = catalog, version_path(catalog)
    good = json.loads(path.read_text())
    path.write_text(json.dumps({**good, "gallery": "victim", "replicas": _replica(
        path="/var/lib/sigvirt/pools/victim-replica.qcow2")}))  # fmt: skip
    assert [v.name for v in sig.store.list_versions("myGallery", "myDef")] == ["2.0.0"]
    assert stat.S_ISREG(path.lstat().st_mode)
