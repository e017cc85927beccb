"""`sigvirt sig …` as a user types it: the exact error line and exit code for every bad input
(with nothing written), and the happy paths with `--output json` parsed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sigvirt.catalog.records import ImageVersion, VersionState
from sigvirt.errors import ExitCode
from tests.support import imagefactory as f
from tests.support.catalog import SigEnv, tree, version_create

GALLERY_RULE = "use letters, digits, '_' and '.', with '_' and '.' only in the middle (no '-')"
DEFINITION_RULE = (
    "use letters, digits, '-', '_' and '.', starting with a letter or digit and not ending with '.'"
)
MMP = "use Major.Minor.Patch, e.g. 1.0.2"
AZURE = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Compute/galleries"
BAD_ID = "expected /subscriptions/…/galleries/GALLERY/images/DEFINITION[/versions/VERSION]"
G, D = ["--gallery-name", "myGallery"], ["--gallery-image-definition", "myDef"]
DEFINE = [
    "sig", "image-definition", "create", *G, "--gallery-image-definition", "other",
    "--publisher", "myPublisher", "--offer", "myOffer", "--sku", "other",
]  # fmt: skip
VERSION = ["sig", "image-version", "create", *G, *D]


@pytest.fixture
def populated(sig: SigEnv, tmp_path: Path) -> SigEnv:
    """myGallery/myDef with version 1.0.0 from a small qcow2."""
    sig.gallery()
    sig.definition()
    sig.version("1.0.0", f.qcow2_v3_with_data(tmp_path))
    return sig


def check_refusals(sig: SigEnv, cases: list[tuple[list[str], ExitCode, str]]) -> None:
    """Every case refused with its exact line and code, and nothing written; all mismatches
    are reported together."""
    problems = []
    for argv, code, message in cases:
        try:
            line = sig.refused(code, *argv)
        except AssertionError as err:
            problems.append(f"{' '.join(argv)}: {err}")
            continue
        if line != message:
            problems.append(f"{' '.join(argv)}:\n   got {line}\n  want {message}")
    assert problems == [], "\n".join(problems)


# -- refusals ---------------------------------------------------------------------------------
@pytest.mark.offline
def test_bad_galleries_are_refused(offline_sig: SigEnv) -> None:
    sig = offline_sig
    sig.gallery()
    sig.definition()
    sig.definition(name="second")
    cases = [
        *(
            (["sig", "create", "--gallery-name", name], ExitCode.INVALID_NAME,
             f"gallery name {name!r} is invalid: {GALLERY_RULE}")
            for name in ["my-gallery", ".g", "g.", "_g", "g_", "my gallery"]
        ),
        (["sig", "create", "--gallery-name", "g" * 81], ExitCode.INVALID_NAME,
         f"gallery name '{'g' * 81}' is longer than 80 characters"),
        (["sig", "create", *G], ExitCode.CONFLICT, "gallery myGallery already exists"),
        (["sig", "create", "--gallery-name", "g2", "--location", "mars"], ExitCode.NOT_FOUND,
         "region 'mars' not found (known: local)"),
        (["sig", "show", "--gallery-name", "nope"], ExitCode.NOT_FOUND, "gallery nope not found"),
        (["sig", "update", "--gallery-name", "nope", "--description", "x"], ExitCode.NOT_FOUND,
         "gallery nope not found"),
        (["sig", "delete", "--gallery-name", "nope"], ExitCode.NOT_FOUND,
         "gallery nope not found"),
        (["sig", "delete", *G], ExitCode.HAS_DEPENDENTS,
         "gallery myGallery still has image definitions: myDef, second; delete them first"),
        (["sig", "image-definition", "list", "--gallery-name", "my-g"], ExitCode.INVALID_NAME,
         f"gallery name 'my-g' is invalid: {GALLERY_RULE}"),
    ]  # fmt: skip
    check_refusals(sig, cases)


@pytest.mark.offline
def test_bad_definitions_are_refused(offline_sig: SigEnv) -> None:
    sig = offline_sig
    sig.gallery()
    sig.definition(sku="mySku")
    sig.cli("sig", "create", "--gallery-name", "empty")

    def define(*extra: str, name: str = "other", gallery: str = "myGallery") -> list[str]:
        argv = [*DEFINE, *extra]
        argv[argv.index("other")] = name
        argv[argv.index("myGallery")] = gallery
        return argv

    cases = [
        *(
            (define(name=name), ExitCode.INVALID_NAME,
             f"image definition name {name!r} is invalid: {DEFINITION_RULE}")
            for name in ["d.", "-d", ".d", "_d", "a/b"]
        ),
        (define(name="d" * 81), ExitCode.INVALID_NAME,
         f"image definition name '{'d' * 81}' is longer than 80 characters"),
        (define(gallery="nope"), ExitCode.NOT_FOUND, "gallery nope not found"),
        (define(name="myDef"), ExitCode.CONFLICT,
         "image definition myGallery/myDef already exists"),
        ([*DEFINE[:-1], "MYSKU"], ExitCode.CONFLICT,  # publisher/offer/sku ignore case
         "publisher/offer/sku myPublisher/myOffer/MYSKU is already used by image definition "
         "myDef in gallery myGallery"),
        (define("--os-state", "Sleepy"), ExitCode.INVALID_ARGUMENT,
         "--os-state must be one of Generalized, Specialized (got 'Sleepy')"),
        (define("--hyper-v-generation", "V3"), ExitCode.INVALID_ARGUMENT,
         "--hyper-v-generation must be one of V1, V2 (got 'V3')"),
        (define("--os-type", "Plan9"), ExitCode.INVALID_ARGUMENT,
         "--os-type must be one of Linux, Windows (got 'Plan9')"),
        (define("--architecture", "riscv"), ExitCode.INVALID_ARGUMENT,
         "--architecture must be one of x64, Arm64 (got 'riscv')"),
        (define("--minimum-cpu-core", "4", "--maximum-cpu-core", "2"), ExitCode.INVALID_ARGUMENT,
         "--minimum-cpu-core 4 is greater than --maximum-cpu-core 2"),
        (define("--minimum-memory", "2048", "--maximum-memory", "1024"), ExitCode.INVALID_ARGUMENT,
         "--minimum-memory 2048 is greater than --maximum-memory 1024"),
        (define("--minimum-cpu-core", "0"), ExitCode.INVALID_ARGUMENT,
         "--minimum-cpu-core must be a positive number (got 0)"),
        (define("--end-of-life-date", "2030-13-01"), ExitCode.INVALID_ARGUMENT,
         "--end-of-life-date '2030-13-01' is not a date (use YYYY-MM-DD)"),
        (define("--end-of-life-date", "next year"), ExitCode.INVALID_ARGUMENT,
         "--end-of-life-date 'next year' is not a date (use YYYY-MM-DD)"),
        ([*DEFINE[:-5], "my publisher", *DEFINE[-4:]], ExitCode.INVALID_NAME,
         "publisher 'my publisher' is invalid: use letters, digits, '-', '_' and '.' "
         "(at most 128)"),
        (["sig", "image-definition", "show", *G, "--gallery-image-definition", "nope"],
         ExitCode.NOT_FOUND, "image definition myGallery/nope not found"),
        (["sig", "image-definition", "show", "--gallery-name", "nope", *D],
         ExitCode.NOT_FOUND, "gallery nope not found"),
        (["sig", "image-definition", "update", *G, *D, "--minimum-cpu-core", "8",
          "--maximum-cpu-core", "4"], ExitCode.INVALID_ARGUMENT,
         "--minimum-cpu-core 8 is greater than --maximum-cpu-core 4"),
        (["sig", "image-definition", "update", *G, *D, "--end-of-life-date", "2030-02-30"],
         ExitCode.INVALID_ARGUMENT, "--end-of-life-date '2030-02-30' is not a date (use YYYY-MM-DD)"),
        (["sig", "image-definition", "update", *G, "--gallery-image-definition", "nope",
          "--description", "x"], ExitCode.NOT_FOUND, "image definition myGallery/nope not found"),
        (["sig", "image-definition", "delete", *G, "--gallery-image-definition", "nope"],
         ExitCode.NOT_FOUND, "image definition myGallery/nope not found"),
    ]  # fmt: skip
    check_refusals(sig, cases)


def test_definition_delete_names_its_versions(populated: SigEnv, tmp_path: Path) -> None:
    populated.version("1.0.10", tmp_path / "v3.qcow2")
    populated.version("1.0.9", tmp_path / "v3.qcow2")
    line = populated.refused(ExitCode.HAS_DEPENDENTS, "sig", "image-definition", "delete", *G, *D)
    assert line == (
        "image definition myGallery/myDef still has versions: 1.0.0, 1.0.9, 1.0.10; "
        "delete them first"
    )


def test_bad_versions_are_refused(populated: SigEnv, tmp_path: Path) -> None:
    def create(
        version: str = "2.0.0", *extra: str, source: str = "myGallery/myDef/1.0.0"
    ) -> list[str]:
        return [*VERSION, "--gallery-image-version", version, "--source", source, *extra]

    cases = [
        *(
            (create(version), ExitCode.INVALID_NAME, f"image version {version!r} is invalid: {why}")
            for version, why in [
                ("1.0", MMP), ("1.0.0.0", MMP), ("a.b.c", MMP), ("latest", MMP),
                ("01.0.0", "no leading zeros"),
                ("1.0.2147483648", "each part must be at most 2147483647"),
            ]
        ),
        (create("1.0.0"), ExitCode.CONFLICT, "image version myGallery/myDef/1.0.0 already exists"),
        ([*create(), "--gallery-name", "nope"], ExitCode.NOT_FOUND, "gallery nope not found"),
        ([*create(), "--gallery-image-definition", "nope"], ExitCode.NOT_FOUND,
         "image definition myGallery/nope not found"),
        (create("2.0.0", "--target-regions", "east"), ExitCode.NOT_FOUND,
         "region 'east' not found (known: local)"),
        (create("2.0.0", "--target-regions", "local=0"), ExitCode.INVALID_ARGUMENT,
         "--target-regions 'local=0': replica count must be 1..100"),
        (create("2.0.0", "--target-regions", "local=x"), ExitCode.INVALID_ARGUMENT,
         "--target-regions 'local=x': the count after '=' must be a number"),
        (create("2.0.0", "--target-regions", "local=101"), ExitCode.INVALID_ARGUMENT,
         "--target-regions 'local=101': replica count must be 1..100"),
        (create("2.0.0", "--replica-count", "0"), ExitCode.INVALID_ARGUMENT,
         "--replica-count must be 1..100 (got 0)"),
        (create("2.0.0", "--location", "mars"), ExitCode.NOT_FOUND,
         "region 'mars' not found (known: local)"),
        (create("2.0.0", "--end-of-life-date", "31/12/2030"), ExitCode.INVALID_ARGUMENT,
         "--end-of-life-date '31/12/2030' is not a date (use YYYY-MM-DD)"),
        # image references given as the source: our own form and Azure resource ids
        (create(source="/nonexistent/disk.qcow2"), ExitCode.NOT_FOUND,
         "--source /nonexistent/disk.qcow2: no such file, pool/volume, vm:NAME or image version"),
        (create(source="myGallery/myDef/1.0"), ExitCode.NOT_FOUND,
         "--source myGallery/myDef/1.0: no such file, pool/volume, vm:NAME or image version"),
        (create(source="version:myGallery/myDef/1.0"), ExitCode.INVALID_NAME,
         f"image version '1.0' is invalid: {MMP}"),
        (create(source="version:my-g/myDef"), ExitCode.INVALID_NAME,
         f"gallery name 'my-g' is invalid: {GALLERY_RULE}"),
        (create(source="myGallery/myDef/9.9.9"), ExitCode.NOT_FOUND,
         "image version myGallery/myDef/9.9.9 not found"),
        (create(source="myGallery/nope/latest"), ExitCode.NOT_FOUND,
         "image definition myGallery/nope not found"),
        (create(source=f"{AZURE}/myGallery/images/myDef/versions/1.0"), ExitCode.INVALID_NAME,
         f"image version '1.0' is invalid: {MMP}"),
        (create(source=f"{AZURE}/myGallery/imagez/myDef"), ExitCode.INVALID_NAME,
         f"image id '{AZURE}/myGallery/imagez/myDef' is invalid: {BAD_ID}"),
        (create(source=f"{AZURE}/myGallery"), ExitCode.INVALID_NAME,
         f"image id '{AZURE}/myGallery' is invalid: {BAD_ID}"),
        (create(source=f"{AZURE}/myGallery/images/myDef/versions/3.0.0"), ExitCode.NOT_FOUND,
         "image version myGallery/myDef/3.0.0 not found"),
        (create(source="nopool/disk.qcow2"), ExitCode.NOT_FOUND, "pool nopool: not found"),
        (create(source="vm:nope"), ExitCode.NOT_FOUND, "domain nope: not found"),
        (create("2.0.0", "--source-format", "vmdk", source=str(tmp_path / "v3.qcow2")),
         ExitCode.IMAGE_REJECTED,
         'image rejected: format "vmdk" is not accepted; import qcow2 or raw'),
        # show / update / delete
        (["sig", "image-version", "show", *G, *D, "--gallery-image-version", "9.9.9"],
         ExitCode.NOT_FOUND, "image version myGallery/myDef/9.9.9 not found"),
        (["sig", "image-version", "show", *G, *D, "--gallery-image-version", "1.0"],
         ExitCode.INVALID_NAME, f"image version '1.0' is invalid: {MMP}"),
        (["sig", "image-version", "update", *G, *D, "--gallery-image-version", "9.9.9",
          "--exclude-from-latest"], ExitCode.NOT_FOUND,
         "image version myGallery/myDef/9.9.9 not found"),
        (["sig", "image-version", "update", *G, *D, "--gallery-image-version", "latest",
          "--exclude-from-latest"], ExitCode.INVALID_NAME,
         f"image version 'latest' is invalid: {MMP}"),
        (["sig", "image-version", "update", *G, *D, "--gallery-image-version", "1.0.0",
          "--end-of-life-date", "soon"], ExitCode.INVALID_ARGUMENT,
         "--end-of-life-date 'soon' is not a date (use YYYY-MM-DD)"),
        (["sig", "image-version", "delete", *G, *D, "--gallery-image-version", "9.9.9"],
         ExitCode.NOT_FOUND, "image version myGallery/myDef/9.9.9 not found"),
        (["sig", "image-version", "list", *G, "--gallery-image-definition", "nope"],
         ExitCode.NOT_FOUND, "image definition myGallery/nope not found"),
    ]  # fmt: skip
    check_refusals(populated, cases)


def test_show_latest_without_a_candidate_is_not_found(populated: SigEnv) -> None:
    populated.cli("sig", "image-version", "update", *G, *D, "--gallery-image-version", "1.0.0",
                  "--exclude-from-latest")  # fmt: skip
    line = populated.refused(ExitCode.NOT_FOUND, "sig", "image-version", "show-latest", *G, *D)
    assert line == (
        "image definition myGallery/myDef has no published version that is not excluded from latest"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["sig", "create"],  # --gallery-name missing
        ["sig", "show", *G, "--output", "xml"],
        [*DEFINE, "--minimum-cpu-core", "two"],
        [*VERSION, "--gallery-image-version", "2.0.0"],  # no --source
        ["sig", "image-version", "frobnicate"],
    ],
)
@pytest.mark.offline
def test_usage_errors_exit_2_and_write_nothing(offline_sig: SigEnv, argv: list[str]) -> None:
    sig = offline_sig
    sig.gallery()
    sig.definition()
    before = tree(sig.root)
    ran = sig.cli(*argv)
    assert (ran.code, ran.out) == (ExitCode.USAGE, "")
    assert "Usage: sigvirt sig" in ran.err
    assert tree(sig.root) == before


def test_the_real_binary_says_the_same(populated: SigEnv) -> None:
    for argv in (
        ["sig", "delete", *G],
        [*VERSION, "--gallery-image-version", "01.0.0", "--source", "x"],
        [*VERSION, "--gallery-image-version", "2.0.0", "--source", "myGallery/myDef/1.0.0",
         "--target-regions", "local=x"],
    ):  # fmt: skip
        inside, real = populated.cli(*argv), populated.run(*argv)
        assert (real.code, real.out, real.err) == (inside.code, inside.out, inside.err)
        assert real.code not in (ExitCode.OK, ExitCode.GENERIC, ExitCode.USAGE)
    listed = populated.run("sig", "image-version", "list", *G, *D, "-o", "json")
    assert [v["name"] for v in listed.json] == ["1.0.0"]


def test_corrupt_metadata_is_one_line_not_a_traceback(populated: SigEnv) -> None:
    path = populated.store.version_path("myGallery", "myDef", "1.0.0")
    path.write_text('{"name": ')
    why = "Expecting value: line 1 column 10 (char 9)"
    line = f"metadata file {path} is unreadable: {why}"
    for argv in (
        ["sig", "image-version", "show-latest", *G, *D],
        ["sig", "image-definition", "delete", *G, *D],
    ):
        ran = populated.cli(*argv)
        assert (ran.code, ran.out, ran.error) == (ExitCode.CORRUPT_METADATA, "", line)
    # A list skips the damaged record with one warning, and JSON marks it.
    ran = populated.run("sig", "image-version", "list", *G, *D, "-o", "json")
    assert ran.code == 0
    assert ran.err == f"sigvirt: warning: skipped damaged metadata file {path}: {why}\n"
    assert ran.json == [{"name": "1.0.0", "damaged": why}]
    gallery_json = populated.root / "myGallery" / "gallery.json"
    gallery_json.write_text("[]")
    ran = populated.cli("sig", "list")
    assert ran.code == 0
    assert ran.err == (
        f"sigvirt: warning: skipped damaged metadata file {gallery_json}: "
        "expected a JSON object, found list\n(no galleries)\n"
    )


# -- happy paths ------------------------------------------------------------------------------
def test_gallery_lifecycle(sig: SigEnv) -> None:
    made = sig.cli("sig", "create", *G, "--description", "images for all", "-o", "json").json
    assert {k: made[k] for k in ("name", "description", "location")} == {
        "name": "myGallery", "description": "images for all", "location": "local",
    }  # fmt: skip
    sig.cli("sig", "create", "--gallery-name", "other.gallery_2")
    listed = sig.cli("sig", "list", "-o", "json").json
    assert [g["name"] for g in listed] == ["myGallery", "other.gallery_2"]
    assert sig.cli("sig", "show", *G, "-o", "json").json == made
    updated = sig.cli("sig", "update", *G, "--description", "new words", "-o", "json").json
    assert updated == {**made, "description": "new words"}
    assert sig.cli("sig", "show", *G, "-o", "yaml").out.startswith("id: /subscriptions/")
    assert (sig.cli("sig", "delete", *G, "-o", "json").out) == ""
    assert [g["name"] for g in sig.cli("sig", "list", "-o", "json").json] == ["other.gallery_2"]
    assert not (sig.root / "myGallery").exists()


@pytest.mark.offline
def test_definition_lifecycle(offline_sig: SigEnv) -> None:
    sig = offline_sig
    sig.gallery()
    made = sig.cli(
        "sig", "image-definition", "create", *G, *D, "-p", "myPublisher",
        "-f", "myOffer", "-s", "myLinux1", "--os-type", "linux",
        "--os-state", "specialized", "--hyper-v-generation", "v2", "--architecture", "x64",
        "--minimum-cpu-core", "1", "--maximum-cpu-core", "4", "--minimum-memory", "512",
        "--maximum-memory", "4096", "--end-of-life-date", "2030-12-31", "--eula", "be nice",
        "--release-note-uri", "https://example.com/notes", "--description", "web",
        "--tags", "team=web", "tier=1", "-g", "ignoredHere", "-o", "json",
    ).json  # fmt: skip
    # az's shape: the REST resource with `properties` flattened, sigvirt's facts aside
    assert made["id"] == (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sigvirt/providers/"
        "Microsoft.Compute/galleries/myGallery/images/myDef"
    )
    assert {k: made[k] for k in made if k not in ("id", "sigvirt")} == {
        "name": "myDef", "type": "Microsoft.Compute/galleries/images", "location": "local",
        "resourceGroup": "sigvirt", "tags": {"team": "web", "tier": "1"},
        "identifier": {"publisher": "myPublisher", "offer": "myOffer", "sku": "myLinux1"},
        "osType": "Linux", "osState": "Specialized", "hyperVGeneration": "V2",
        "architecture": "x64",
        "recommended": {"vCPUs": {"min": 1, "max": 4}, "memory": {"min": 512, "max": 4096}},
        "endOfLifeDate": "2030-12-31", "eula": "be nice",
        "releaseNoteUri": "https://example.com/notes", "privacyStatementUri": None,
        "description": "web", "features": None, "disallowed": None, "purchasePlan": None,
        "provisioningState": "Succeeded",
    }  # fmt: skip
    assert sig.store.get_definition("myGallery", "myDef").firmware == "uefi"
    assert sig.cli("sig", "image-definition", "show", *G, *D, "-o", "json").json == made
    by_id = sig.cli("sig", "image-definition", "show", "--ids", made["id"], "-o", "json").json
    assert by_id == made
    updated = sig.cli(
        "sig", "image-definition", "update", *G, *D, "--description", "web servers",
        "--end-of-life-date", "2031-06-30T12:00:00Z", "--maximum-cpu-core", "8",
        "--set", "tags.tier=2", "--remove", "tags.team", "-o", "json",
    ).json  # fmt: skip
    assert updated == {
        **made, "description": "web servers", "endOfLifeDate": "2031-06-30T12:00:00+00:00",
        "recommended": {"vCPUs": {"min": 1, "max": 8}, "memory": {"min": 512, "max": 4096}},
        "tags": {"tier": "2"},
    }  # fmt: skip
    listed = sig.cli("sig", "image-definition", "list", *G, "-o", "json").json
    assert listed == [updated]
    table = sig.cli("sig", "image-definition", "list", *G).out
    assert "myDef" in table and "myPublisher" in table
    # az prints nothing for a delete; --yes is accepted (sigvirt never prompts)
    deleted = sig.cli("sig", "image-definition", "delete", *G, *D, "--yes", "-o", "json")
    assert (deleted.code, deleted.out) == (0, "")
    assert sig.cli("sig", "image-definition", "list", *G, "-o", "json").json == []
    assert sig.cli("sig", "delete", *G, "-y").code == 0


def test_version_lifecycle(sig: SigEnv, tmp_path: Path) -> None:
    sig.gallery()
    sig.definition()
    image = f.qcow2_v3_with_data(tmp_path)
    made = sig.cli(*version_create("1.0.0", image), "--end-of-life-date", "2031-01-01",
                   "--tags", "build=42").json  # fmt: skip
    # az's shape (the Azure REST keys), sigvirt's own facts under "sigvirt"
    assert made["id"].endswith("/galleries/myGallery/images/myDef/versions/1.0.0")
    assert (made["name"], made["type"], made["provisioningState"]) == (
        "1.0.0", "Microsoft.Compute/galleries/images/versions", "Succeeded",
    )  # fmt: skip
    assert made["tags"] == {"build": "42"}
    profile = made["publishingProfile"]
    assert (profile["endOfLifeDate"], profile["replicaCount"]) == ("2031-01-01", 1)
    assert profile["targetRegions"] == [
        {"name": "local", "regionalReplicaCount": 1, "storageAccountType": "Standard_LRS",
         "excludeFromLatest": False, "encryption": None},
    ]  # fmt: skip
    assert made["replicationStatus"] == {
        "aggregatedState": "Completed",
        "summary": [{"region": "local", "state": "Completed", "progress": 100, "details": None}],
    }
    assert made["storageProfile"]["source"]["id"] == str(image)
    assert made["sigvirt"]["state"] == VersionState.SUCCEEDED
    assert made["sigvirt"]["source"] == f"file:{image}"
    (replica,) = made["sigvirt"]["replicas"]
    assert Path(replica["path"]).is_file() and replica["state"] == "completed"
    sig.version("1.1.0", image)
    sig.version("1.2.0", image, "--exclude-from-latest")

    def latest() -> str:
        return str(
            sig.cli("sig", "image-version", "show-latest", *G, *D, "-o", "json").json["name"]
        )

    listed = sig.cli("sig", "image-version", "list", *G, *D, "-o", "json").json
    assert [(v["name"], v["publishingProfile"]["excludeFromLatest"]) for v in listed] == [
        ("1.0.0", False), ("1.1.0", False), ("1.2.0", True),
    ]  # fmt: skip
    # the az idiom: an id by --query, then --ids
    ran = sig.cli("sig", "image-version", "show", *G, *D, "-e", "1.1.0", "--query", "id",
                  "-o", "tsv")  # fmt: skip
    the_id = ran.out.strip()
    assert the_id.endswith("/versions/1.1.0") and "\n" not in the_id
    assert (
        sig.cli("sig", "image-version", "show", "--ids", the_id, "-o", "json").json["name"]
        == "1.1.0"
    )
    assert latest() == "1.1.0"
    shown = sig.cli("sig", "image-version", "show", *G, *D, "--gallery-image-version", "1.0.0",
                    "--expand", "ReplicationStatus", "-o", "json").json  # fmt: skip
    assert shown["replicationStatus"]["summary"] == [
        {"region": "local", "state": "Completed", "progress": 100, "details": None},
    ]
    update = ["sig", "image-version", "update", *G, *D, "-o", "json"]
    changed = sig.cli(*update, "--gallery-image-version", "1.2.0", "--include-in-latest").json
    assert changed["publishingProfile"]["excludeFromLatest"] is False and latest() == "1.2.0"
    changed = sig.cli(*update, "--gallery-image-version", "1.2.0",
                      "--set", "publishingProfile.excludeFromLatest=true",
                      "--end-of-life-date", "2032-02-29").json  # fmt: skip
    profile = changed["publishingProfile"]
    assert (profile["excludeFromLatest"], profile["endOfLifeDate"]) == (True, "2032-02-29")
    assert latest() == "1.1.0"
    table = sig.cli("sig", "image-version", "list", *G, *D).out
    assert [line.split()[0] for line in table.splitlines()[2:]] == ["1.0.0", "1.1.0", "1.2.0"]
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        files = sig.version_files(f"-{version}-")
        deleted = sig.cli("sig", "image-version", "delete", *G, *D, "--gallery-image-version",
                          version, "-o", "json")  # fmt: skip
        assert (deleted.code, deleted.out) == (0, "")  # az prints nothing for a delete
        assert len(files) == 1 and not files[0].exists()
    assert sig.pool_files() == []
    assert sig.cli("sig", "image-definition", "delete", *G, *D).code == 0
    assert sig.cli("sig", "delete", *G).code == 0
    # The installation id outlives every gallery: the VMs this catalog made still carry it.
    assert sorted(p.name for p in sig.root.iterdir()) == [".installation", ".lock"]


def test_show_latest_explains_every_candidate(populated: SigEnv, tmp_path: Path) -> None:
    image = tmp_path / "v3.qcow2"
    populated.version("1.1.0", image)
    populated.version("2.0.0", image, "--exclude-from-latest")
    with populated.store.definition_lock("myGallery", "myDef"):  # a failed import's record
        populated.store.create_version(
            ImageVersion("myGallery", "myDef", "3.0.0", state=VersionState.FAILED)
        )
    explained = populated.cli("sig", "image-version", "show-latest", *G, *D, "--explain",
                              "-o", "json").json  # fmt: skip
    # with each version's end of life and the eol policy that rules it (catalog/eol.py)
    eol = {"end_of_life": None, "eol_policy": "warn (default)"}
    assert explained == [
        {"version": "3.0.0", "chosen": False, "why": "not published (state failed)", **eol},
        {"version": "2.0.0", "chosen": False, "why": "excluded from latest", **eol},
        {"version": "1.1.0", "chosen": True,
         "why": "highest published version not excluded from latest", **eol},
        {"version": "1.0.0", "chosen": False, "why": "lower than 1.1.0", **eol},
    ]  # fmt: skip
    table = populated.cli("sig", "image-version", "show-latest", *G, *D, "--explain").out
    rows = [line.split(maxsplit=2) for line in table.splitlines()[2:]]
    assert rows[2][:2] == ["1.1.0", "yes"]
    assert rows[2][2].startswith("highest published version not excluded from latest")


def test_a_long_list_is_printed_without_rich(populated: SigEnv) -> None:
    rec = populated.store.get_version("myGallery", "myDef", "1.0.0")
    with populated.store.definition_lock("myGallery", "myDef"):
        for i in range(600):
            populated.store.create_version(dataclasses.replace(rec, name=f"1.1.{i}"))
    lines = populated.cli("sig", "image-version", "list", *G, *D).out.splitlines()
    assert lines[0].strip() == "image versions"
    assert lines[1].split() == ["name", "state", "replication", "regions", "test", "exclude",
                                "from", "latest", "end", "of", "life", "published"]  # fmt: skip
    assert len(lines) == 2 + 601
    assert lines[2].split()[:6] == ["1.0.0", "succeeded", "Completed", "local=1/1", "none", "no"]
    assert lines[-1].split()[0] == "1.1.599"
    columns = {line.index("Completed") for line in lines[2:]}
    assert len(columns) == 1  # aligned
