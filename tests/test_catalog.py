"""The catalog as a library: names, image references, `latest`, and the store's promises
(atomic writes, serialized writers, clear errors for unreadable metadata)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from sigvirt.catalog import latest, names
from sigvirt.catalog.codec import RecordError
from sigvirt.catalog.fileio import atomic_write, file_lock, lock_is_held
from sigvirt.catalog.names import ImageRef, Version, parse_image_ref
from sigvirt.catalog.records import (
    Gallery,
    ImageVersion,
    Replica,
    ReplicaState,
    VersionState,
    from_dict,
    to_dict,
)
from sigvirt.catalog.store import CorruptRecord, Damaged, GalleryStore
from sigvirt.errors import ExitCode, InvalidName, NotFound, SigvirtError
from sigvirt.galleries import definitions, galleries

pytestmark = pytest.mark.offline

GALLERY_RULE = "use letters, digits, '_' and '.', with '_' and '.' only in the middle (no '-')"
DEFINITION_RULE = (
    "use letters, digits, '-', '_' and '.', starting with a letter or digit and not ending with '.'"
)
AZURE = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Compute"
BAD_ID = "expected /subscriptions/…/galleries/GALLERY/images/DEFINITION[/versions/VERSION]"


def invalid(fn: object, value: str) -> str:
    with pytest.raises(InvalidName) as caught:
        fn(value)  # type: ignore[operator]
    assert caught.value.exit_code == ExitCode.INVALID_NAME
    return caught.value.message


# -- names ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["myGallery", "g", "my_gallery.v2", "G" * 80, "1"])
def test_gallery_names_azure_accepts(name: str) -> None:
    assert names.gallery_name(name) == name


@pytest.mark.parametrize("name", ["my-gallery", ".g", "g.", "_g", "g_", "", "gä", "a b"])
def test_gallery_names_azure_refuses(name: str) -> None:
    assert invalid(names.gallery_name, name) == f"gallery name {name!r} is invalid: {GALLERY_RULE}"


def test_gallery_name_longer_than_80_is_refused() -> None:
    assert invalid(names.gallery_name, "g" * 81) == (
        f"gallery name '{'g' * 81}' is longer than 80 characters"
    )


@pytest.mark.parametrize("name", ["myImageDefinition", "my-def", "d_1.0", "d-", "d_", "D" * 80])
def test_definition_names_azure_accepts(name: str) -> None:
    assert names.definition_name(name) == name


@pytest.mark.parametrize("name", ["d.", "-d", ".d", "_d", "", "a/b", "a b"])
def test_definition_names_azure_refuses(name: str) -> None:
    assert invalid(names.definition_name, name) == (
        f"image definition name {name!r} is invalid: {DEFINITION_RULE}"
    )


@pytest.mark.parametrize("text", ["0.0.0", "1.0.2", "2147483647.2147483647.2147483647"])
def test_versions_are_three_32_bit_numbers(text: str) -> None:
    assert str(Version.parse(text)) == text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1.0", "use Major.Minor.Patch, e.g. 1.0.2"),
        ("1.0.0.0", "use Major.Minor.Patch, e.g. 1.0.2"),
        ("a.b.c", "use Major.Minor.Patch, e.g. 1.0.2"),
        ("1..0", "use Major.Minor.Patch, e.g. 1.0.2"),
        ("-1.0.0", "use Major.Minor.Patch, e.g. 1.0.2"),
        ("1.0.0 ", "use Major.Minor.Patch, e.g. 1.0.2"),
        ("\uff11.0.0", "use Major.Minor.Patch, e.g. 1.0.2"),  # a fullwidth digit
        ("latest", "use Major.Minor.Patch, e.g. 1.0.2"),
        ("01.0.0", "no leading zeros"),
        ("1.00.0", "no leading zeros"),
        ("1.0.2147483648", "each part must be at most 2147483647"),
    ],
)
def test_malformed_versions_are_refused(text: str, why: str) -> None:
    assert invalid(Version.parse, text) == f"image version {text!r} is invalid: {why}"


def test_versions_order_by_number_not_text() -> None:
    texts = ["1.10.0", "1.9.0", "1.9.10", "10.0.0", "2.0.0", "1.9.9"]
    assert [str(v) for v in sorted(map(Version.parse, texts))] == [
        "1.9.0", "1.9.9", "1.9.10", "1.10.0", "2.0.0", "10.0.0",
    ]  # fmt: skip


# -- image references -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "ref"),
    [
        ("G/D", ImageRef("G", "D")),
        ("G/D/latest", ImageRef("G", "D")),
        ("G/D/LATEST", ImageRef("G", "D")),
        ("G/D/1.0.2", ImageRef("G", "D", "1.0.2")),
        (f"{AZURE}/galleries/G/images/D/versions/1.0.2", ImageRef("G", "D", "1.0.2")),
        (f"{AZURE}/galleries/G/images/D/versions/latest", ImageRef("G", "D")),
        (f"{AZURE}/galleries/G/images/D", ImageRef("G", "D")),
        (f"{AZURE}/Galleries/G/Images/D/Versions/1.0.2/", ImageRef("G", "D", "1.0.2")),
    ],
)
def test_image_references_in_every_form(text: str, ref: ImageRef) -> None:
    assert parse_image_ref(text) == ref


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("G", "image 'G' is invalid: use GALLERY/DEFINITION[/VERSION] or an Azure-style image id"),
        ("G/D/1.0.0/x", "image 'G/D/1.0.0/x' is invalid: use GALLERY/DEFINITION[/VERSION] "
         "or an Azure-style image id"),
        ("G//1.0.0", "image 'G//1.0.0' is invalid: use GALLERY/DEFINITION[/VERSION] "
         "or an Azure-style image id"),
        ("my-gallery/D", f"gallery name 'my-gallery' is invalid: {GALLERY_RULE}"),
        ("G/D./1.0.0", f"image definition name 'D.' is invalid: {DEFINITION_RULE}"),
        ("G/D/1.0", "image version '1.0' is invalid: use Major.Minor.Patch, e.g. 1.0.2"),
        (f"{AZURE}/galleries/G", f"image id '{AZURE}/galleries/G' is invalid: {BAD_ID}"),
        (f"{AZURE}/images/D", f"image id '{AZURE}/images/D' is invalid: {BAD_ID}"),
        (f"{AZURE}/galleries/G/imagez/D", f"image id '{AZURE}/galleries/G/imagez/D' is invalid: "
         f"{BAD_ID}"),
        (f"{AZURE}/galleries/G/images/D/versions", f"image id '{AZURE}/galleries/G/images/D/"
         f"versions' is invalid: {BAD_ID}"),
        (f"{AZURE}/galleries/G/images/D/versions/1.0.0/x", f"image id '{AZURE}/galleries/G/"
         f"images/D/versions/1.0.0/x' is invalid: {BAD_ID}"),
        (f"{AZURE}/galleries/my-g/images/D", f"gallery name 'my-g' is invalid: {GALLERY_RULE}"),
        (f"{AZURE}/galleries/G/images/D/versions/01.0.0",
         "image version '01.0.0' is invalid: no leading zeros"),
    ],
)  # fmt: skip
def test_bad_image_references_say_why(text: str, message: str) -> None:
    assert invalid(parse_image_ref, text) == message


# -- latest -----------------------------------------------------------------------------------
def _version(name: str, state: str = VersionState.SUCCEEDED, **kw: object) -> ImageVersion:
    return ImageVersion("G", "D", name, state=state, **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> GalleryStore:
    s = GalleryStore(tmp_path / "galleries")
    galleries.create_gallery(s, "G")
    definitions.create_definition(s, "G", "D", definitions.DefinitionInput("P", "O", "S"))
    return s


def _publish(store: GalleryStore, *records: ImageVersion) -> None:
    with store.definition_lock("G", "D"):
        for rec in records:
            store.create_version(rec)


def test_latest_is_the_highest_published_version_not_excluded(store: GalleryStore) -> None:
    _publish(
        store,
        _version("1.0.0"),
        _version("1.9.0"),
        _version("1.10.0"),
        _version("1.11.0", exclude_from_latest=True),
        _version("1.10.5", VersionState.CREATING),
        _version("2.0.0", VersionState.FAILED),
    )
    explained = latest.explain_latest(store.list_versions("G", "D"))
    assert [(c.version, c.chosen, c.why) for c in explained] == [
        ("2.0.0", False, "not published (state failed)"),
        ("1.11.0", False, "excluded from latest"),
        ("1.10.5", False, "not published (state creating)"),
        ("1.10.0", True, "highest published version not excluded from latest"),
        ("1.9.0", False, "lower than 1.10.0"),
        ("1.0.0", False, "lower than 1.10.0"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("G/D", "1.1.0"),
        ("G/D/latest", "1.1.0"),
        ("G/D/1.0.0", "1.0.0"),
        ("G/D/2.0.0", "2.0.0"),  # named exactly: excluded from latest, still resolvable
        (f"{AZURE}/galleries/G/images/D", "1.1.0"),
        (f"{AZURE}/galleries/G/images/D/versions/1.0.0", "1.0.0"),
    ],
)
def test_references_resolve_through_the_catalog(
    store: GalleryStore, text: str, expected: str
) -> None:
    _publish(
        store, _version("1.0.0"), _version("1.1.0"), _version("2.0.0", exclude_from_latest=True)
    )
    assert latest.resolve(store, parse_image_ref(text)).name == expected


def test_latest_past_end_of_life_is_still_chosen_and_says_so(store: GalleryStore) -> None:
    _publish(store, _version("1.0.0", end_of_life="2020-01-01"))
    (only,) = latest.explain_latest(store.list_versions("G", "D"))
    assert only.why == (
        "highest published version not excluded from latest (past end of life 2020-01-01)"
    )


def test_no_eligible_version_is_not_found(store: GalleryStore) -> None:
    _publish(
        store, _version("1.0.0", exclude_from_latest=True), _version("2.0.0", VersionState.CREATING)
    )
    with pytest.raises(NotFound) as caught:
        latest.resolve(store, parse_image_ref("G/D"))
    assert caught.value.message == (
        "image definition G/D has no published version that is not excluded from latest"
    )


def test_missing_levels_are_named(store: GalleryStore) -> None:
    for text, message in [
        ("G/D/1.0.0", "image version G/D/1.0.0 not found"),
        ("G/nope/1.0.0", "image definition G/nope not found"),
        ("nope/D", "gallery nope not found"),
    ]:
        with pytest.raises(NotFound) as caught:
            latest.resolve(store, parse_image_ref(text))
        assert caught.value.message == message


# -- records ----------------------------------------------------------------------------------
def test_records_round_trip_and_ignore_keys_from_newer_versions() -> None:
    rec = _version(
        "1.0.2",
        target_regions={"local": 2},
        replicas=(Replica("local", "p", "v", "/p/v", ReplicaState.COMPLETED, 100),),
        warnings=("1 leaked clusters",),
    )
    data = json.loads(json.dumps(to_dict(rec)))
    assert from_dict(ImageVersion, data) == rec
    data["from_the_future"] = {"x": 1}
    data["replicas"][0]["also_new"] = True
    assert from_dict(ImageVersion, data) == rec


def test_a_record_from_before_a_field_was_added_reads_as_its_default() -> None:
    rec = _version(
        "1.0.0", replicas=(Replica("local", "p", "v", "/p/v", ReplicaState.COMPLETED, 100),)
    )
    data = json.loads(json.dumps(to_dict(rec)))
    for replica in data["replicas"]:
        del replica["zone"]  # as a record written before zones holds it
    del data["reason"]
    assert from_dict(ImageVersion, data) == dataclasses.replace(rec, reason="")
    data["replicas"][0]["zone"] = 7  # a present field is still checked
    with pytest.raises(RecordError, match="zone"):
        from_dict(ImageVersion, data)


def test_soft_deleted_is_a_time_or_nothing() -> None:
    data = json.loads(json.dumps(to_dict(_version("1.0.0"))))
    for good in ("", "2026-12-06T00:15:00+00:00"):
        assert from_dict(ImageVersion, {**data, "soft_deleted": good}).soft_deleted == good
    with pytest.raises(RecordError, match="soft_deleted: expected an ISO date"):
        from_dict(ImageVersion, {**data, "soft_deleted": "0"})  # it would hide the record


def test_records_from_data_get_fresh_defaults() -> None:
    a = from_dict(ImageVersion, {"gallery": "G", "definition": "D", "name": "1.0.0"})
    b = from_dict(ImageVersion, {"gallery": "G", "definition": "D", "name": "1.0.0"})
    assert a == ImageVersion("G", "D", "1.0.0") and a.target_regions is not b.target_regions
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.name = "2.0.0"  # type: ignore[misc]


# -- the store --------------------------------------------------------------------------------
def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


def test_writes_leave_no_temp_files(store: GalleryStore) -> None:
    _publish(store, *(_version(f"1.0.{i}") for i in range(20)))
    for i in range(20):
        store.update_version("G", "D", f"1.0.{i}", lambda r: dataclasses.replace(r, reason="x"))
    store.update_gallery("G", lambda g: dataclasses.replace(g, description="d"))
    assert _temp_files(store.root) == []
    assert len(store.list_versions("G", "D")) == 20


def test_a_failed_write_removes_its_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    target.mkdir()  # rename onto a directory fails after the temp file is written
    with pytest.raises(IsADirectoryError):
        atomic_write(target, b"{}\n")
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


_WRITER = textwrap.dedent("""\
    import dataclasses, sys
    from pathlib import Path
    from sigvirt.catalog.store import GalleryStore
    store = GalleryStore(Path(sys.argv[1]))
    for _ in range(int(sys.argv[2])):
        store.update_version(
            "G", "D", "1.0.0",
            lambda r: dataclasses.replace(r, replica_count=r.replica_count + 1),
        )
""")


def test_concurrent_writers_serialize_and_readers_always_parse(store: GalleryStore) -> None:
    _publish(store, _version("1.0.0"))
    path = store.version_path("G", "D", "1.0.0")
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(store.root), "40"]) for _ in range(2)
    ]
    reads = 0
    while any(w.poll() is None for w in writers):
        json.loads(path.read_bytes())  # never a half-written file
        reads += 1
    assert [w.returncode for w in writers] == [0, 0]
    assert store.get_version("G", "D", "1.0.0").replica_count == 1 + 2 * 40  # no lost update
    assert reads > 0 and _temp_files(store.root) == []


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"{", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        (b"", "Expecting value: line 1 column 1 (char 0)"),
        (b"[]", "expected a JSON object, found list"),
        (b'{"gallery": "G"}', "ImageVersion record has no definition, name"),
        (b'{"gallery": "G", "definition": "D", "name": "1.0.0", "replicas": [1]}',
         "replicas[0]: expected a JSON object, found integer 1"),
        (b'{"a": "\xff"}',
         "'utf-8' codec can't decode byte 0xff in position 7: invalid start byte"),
    ],
)  # fmt: skip
def test_unreadable_record_is_a_clear_error(
    store: GalleryStore, content: bytes, detail: str
) -> None:
    """Asked for by name, a damaged record is the error; a listing skips it and hands it
    over in `damaged` (one bad file must not break commands on the others)."""
    _publish(store, _version("1.0.0"), _version("2.0.0"))
    path = store.version_path("G", "D", "1.0.0")
    path.write_bytes(content)
    with pytest.raises(CorruptRecord) as caught:
        store.get_version("G", "D", "1.0.0")
    assert caught.value.message == f"metadata file {path} is unreadable: {detail}"
    assert caught.value.exit_code == ExitCode.CORRUPT_METADATA
    damaged: list[Damaged] = []
    assert [v.name for v in store.list_versions("G", "D", damaged)] == ["2.0.0"]
    assert [(d.name, d.path, d.reason) for d in damaged] == [("1.0.0", str(path), detail)]
    assert [v.name for v in store.list_versions("G", "D")] == ["2.0.0"]


def test_update_of_a_missing_resource_is_not_found_and_creates_nothing(
    store: GalleryStore,
) -> None:
    before = sorted(store.root.rglob("*"))
    with pytest.raises(NotFound, match=r"^gallery nope not found$"):
        galleries.update_gallery(store, "nope", "text")
    with pytest.raises(NotFound, match=r"^image definition G/nope not found$"):
        definitions.update_definition(store, "G", "nope", description="text")
    assert sorted(store.root.rglob("*")) == before


def test_create_gallery_twice_is_a_conflict(store: GalleryStore) -> None:
    with pytest.raises(SigvirtError) as caught:
        store.create_gallery(Gallery("G"))
    assert (caught.value.exit_code, caught.value.message) == (
        ExitCode.CONFLICT,
        "gallery G already exists",
    )


def test_a_lock_whose_file_was_removed_is_taken_again(tmp_path: Path) -> None:
    """The last holder of a version's op lock removes its file; a process that was waiting on
    the removed file must not believe it holds the lock."""
    path = tmp_path / ".1.0.0.op"
    acquired, done = threading.Event(), threading.Event()

    def waiter() -> None:
        with file_lock(path):
            acquired.set()
            done.wait(10)

    with file_lock(path):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.2)  # the waiter blocks on the file we are about to remove
        path.unlink()
    assert acquired.wait(10)
    try:
        assert lock_is_held(path)  # a lock others can see, on the file now at the path
    finally:
        done.set()
        thread.join()
