"""az fidelity: every command takes the flags a pasted az script uses, resources come out in
az's shape (checked against the keys of Azure's REST reference in tests/data/azure), ids go
in and out, and the az-only commands a script runs first do nothing, successfully."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main

from sigvirt import cli
from sigvirt.catalog import azureid
from sigvirt.errors import ExitCode, InvalidArgument
from sigvirt.hosts.regions import parse
from sigvirt.versions.targets import (
    parse_items,
    parse_targets,
    pools_for,
    resolve_types,
    storage_types,
)
from tests.support.catalog import SigEnv

AZURE = Path(__file__).parent / "data" / "azure"
G = ["--gallery-name", "myGallery"]
D = ["--gallery-image-definition", "myDef"]


def _commands() -> Iterator[tuple[str, Any]]:
    """(full name, click command) of every leaf command (typer carries its own click)."""
    root = typer.main.get_command(cli.build())

    def walk(prefix: str, cmd: Any) -> Iterator[tuple[str, Any]]:
        subs = getattr(cmd, "commands", None)
        if subs is not None:
            for name, sub in sorted(subs.items()):
                yield from walk(f"{prefix} {name}".strip(), sub)
        elif not cmd.hidden:  # sigvirt's own background entry points: nobody pastes those
            yield prefix, cmd

    yield from walk("", root)


def _flags(cmd: Any) -> set[str]:
    return {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}


COMMANDS = list(_commands())
NO_GROUP = ("feature ", "provider ", "group list")  # az has no -g there either
WITH_IDS = ("sig ", "vm ", "vmss ")  # resources that have ids


@pytest.mark.offline
def test_the_walk_found_the_command_tree() -> None:
    names = {n for n, _ in COMMANDS}
    assert {"sig create", "sig image-version show", "vm create", "vmss scale"} <= names
    assert len(names) > 60


@pytest.mark.offline
@pytest.mark.parametrize(("name", "cmd"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_command_takes_what_pasted_scripts_pass(name: str, cmd: Any) -> None:
    flags = _flags(cmd)
    if not name.startswith(NO_GROUP):
        assert {"-g", "--resource-group"} <= flags, f"{name} refuses -g"
    if name.split()[-1].startswith("delete"):
        assert {"--yes", "-y"} <= flags, f"{name} refuses --yes"
    if name.split()[-1] == "show" and name.startswith(WITH_IDS):
        assert "--ids" in flags, f"{name} has no --ids"
    assert cmd.help, f"{name} has no help"


# -- az's shape ---------------------------------------------------------------------------------
def _paths(value: Any, prefix: str = "") -> Iterator[str]:
    """Every key path of a JSON value, as tests/data/azure writes them."""
    if isinstance(value, dict):
        for k, v in value.items():
            path = f"{prefix}.{k}" if prefix else k
            yield path
            if k != "tags":
                yield from _paths(v, path)
    elif isinstance(value, list):
        for item in value:
            yield from _paths(item, prefix + "[]")


def assert_az_shape(resource: dict[str, Any], kind: str) -> None:
    """Every key sigvirt prints (but its own, under `sigvirt`) is one az prints for that
    resource type, and the keys scripts rely on are all there."""
    spec = json.loads((AZURE / f"{kind}.json").read_text())
    allowed = set(spec["az_printed_keys"])
    printed = {p for p in _paths(resource) if not p.startswith("sigvirt")}
    assert printed - allowed == set(), f"keys az doesn't print for {kind}"
    missing = {k for k in spec["core_keys"] if k not in printed}
    assert missing == set(), f"keys az prints for {kind} that sigvirt doesn't"


@pytest.mark.offline
def test_galleries_and_definitions_have_azs_shape(offline_sig: SigEnv) -> None:
    sig = offline_sig
    made = sig.cli("sig", "create", *G, "-g", "labRG", "--tags", "a=1", "--owner-group",
                   sig.owner_group, "-o", "json").json  # fmt: skip
    assert_az_shape(made, "gallery")
    assert made["id"] == azureid.gallery_id("labRG", "myGallery")
    assert (made["resourceGroup"], made["tags"]) == ("labRG", {"a": "1"})
    sig.definition()
    shown = sig.cli("sig", "image-definition", "show", *G, *D, "-o", "json").json
    assert_az_shape(shown, "gallery_image")
    # ids of everything in a gallery carry its resource group
    assert shown["id"] == azureid.definition_id("labRG", "myGallery", "myDef")
    assert azureid.parse(shown["id"]).definition == "myDef"


def test_versions_have_azs_shape(populated: SigEnv) -> None:
    shown = populated.cli("sig", "image-version", "show", *G, *D, "-e", "1.0.0", "-o", "json")
    assert_az_shape(shown.json, "gallery_image_version")
    listed = populated.cli("sig", "image-version", "list", *G, *D, "-o", "json").json
    for version in listed:
        assert_az_shape(version, "gallery_image_version")


@pytest.fixture
def populated(sig: SigEnv, tmp_path: Path) -> SigEnv:
    from tests.support import imagefactory as f

    sig.gallery()
    sig.definition()
    sig.version("1.0.0", f.qcow2_v3_with_data(tmp_path))
    return sig


def test_ids_go_in_where_names_do(populated: SigEnv) -> None:
    vid = populated.cli("sig", "image-version", "show", *G, *D, "-e", "1.0.0", "--query", "id",
                        "-o", "tsv").out.strip()  # fmt: skip
    assert azureid.parse(vid).version == "1.0.0"
    for argv in (
        ["sig", "image-version", "show", "--ids", vid],
        ["sig", "image-version", "update", "--ids", vid, "--tags", "x=y"],
    ):
        ran = populated.cli(*argv, "-o", "json")
        assert ran.code == 0, ran.err
        assert ran.json["id"] == vid
    both = populated.cli("sig", "image-version", "show", "--ids", vid, *G, "-o", "json")
    assert both.code == ExitCode.INVALID_ARGUMENT
    assert "either --ids or the gallery, definition and version names" in both.error
    wrong = populated.cli("sig", "show", "--ids", vid)
    assert wrong.code == ExitCode.INVALID_ARGUMENT
    assert "names a Microsoft.Compute/galleries/images/versions, not a" in wrong.error


# -- what a pasted script runs first ------------------------------------------------------------
@pytest.mark.offline
@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["feature", "register", "--namespace", "Microsoft.Compute", "--name", "GalleryPreview"],
         "nothing to register"),
        (["provider", "register", "-n", "Microsoft.Compute"], "nothing to register"),
        (["group", "create", "-n", "myRG", "-l", "westus"], "nothing to create"),
        (["group", "delete", "-n", "myRG", "--yes"], "nothing to delete"),
    ],
)  # fmt: skip
def test_az_only_commands_do_nothing_and_say_so(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert said in err and len(err.splitlines()) == 1


# -- --target-regions as az parses it -------------------------------------------------------------
REGIONS = parse(
    "regions:\n"
    "  westcentralus:\n    uri: qemu:///system\n    pools: [a, b]\n"
    "  eastus2:\n    uri: qemu:///system\n    pools:\n"
    "      - {name: c, storage_type: standard_zrs}\n      - {name: d, storage_type: Premium_LRS}\n"
)


@pytest.mark.offline
def test_target_regions_take_a_count_and_a_storage_type() -> None:
    items = ["westcentralus", "eastus2=1=standard_zrs"]
    assert parse_targets(items, 3, "westcentralus", REGIONS) == {"westcentralus": 3, "eastus2": 1}
    assert storage_types(items, REGIONS) == {"eastus2": "Standard_ZRS"}
    assert [t.storage_type for t in parse_items(items, REGIONS)] == [None, "Standard_ZRS"]


@pytest.mark.offline
def test_every_target_region_gets_a_storage_type_its_pools_have() -> None:
    wanted = {"westcentralus": 1, "eastus2": 2}
    items = ["westcentralus", "eastus2=2=premium_lrs"]
    kinds = resolve_types(items, wanted, REGIONS)
    assert kinds == {"westcentralus": "Standard_LRS", "eastus2": "Premium_LRS"}
    # The replicas go to the pools of that type only: unlabelled pools are Standard_LRS.
    assert [p.name for p in pools_for(REGIONS.region("eastus2"), kinds["eastus2"])] == ["d"]
    assert [p.name for p in pools_for(REGIONS.region("westcentralus"), None)] == ["a", "b"]
    # An update keeps a region's type unless the item names another.
    assert resolve_types(["eastus2=3"], wanted, REGIONS, None, kinds) == kinds
    # eastus2 has no Standard_LRS pool: az's default can't be met silently elsewhere.
    with pytest.raises(InvalidArgument) as err:
        resolve_types(["eastus2"], {"eastus2": 1}, REGIONS)
    assert err.value.message == (
        "--target-regions eastus2: region eastus2 has no pool of storage type Standard_LRS "
        "(its pools' types: Premium_LRS, Standard_ZRS; label one with storage_type in "
        "regions.yaml)"
    )
    with pytest.raises(InvalidArgument) as err:
        resolve_types(None, {"westcentralus": 1}, REGIONS, "premium_lrs")
    assert err.value.message.startswith(
        "--storage-account-type: region westcentralus has no pool of storage type Premium_LRS"
    )
    assert resolve_types(None, {"eastus2": 1}, REGIONS, "standard_zrs") == {
        "eastus2": "Standard_ZRS"
    }


@pytest.mark.offline
@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["eastus2=1=standard_lrs"],
         "--target-regions 'eastus2=1=standard_lrs': region eastus2 has no pool of storage type "
         "Standard_LRS (its pools' types: Premium_LRS, Standard_ZRS; label one with storage_type "
         "in regions.yaml)"),
        (["eastus2=1=gold"],
         "--target-regions 'eastus2=1=gold': storage type 'gold' is not one of Standard_LRS, "
         "Standard_ZRS, Premium_LRS, PremiumV2_LRS"),
        (["eastus2", "East US 2=2"],
         "--target-regions: region eastus2 is given twice ('eastus2' and 'East US 2=2')"),
        (["eastus2=1=premium_lrs=x"],
         "--target-regions 'eastus2=1=premium_lrs=x': expected name, name=count or "
         "name=count=storage_type"),
    ],
)  # fmt: skip
def test_bad_target_regions_are_one_line(items: list[str], message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_targets(items, None, "westcentralus", REGIONS)
    assert err.value.message == message


# -- sharing views --------------------------------------------------------------------------------
@pytest.mark.offline
def test_shared_galleries_are_listed_with_the_role(offline_sig: SigEnv) -> None:
    sig = offline_sig
    sig.gallery()  # owned through the caller's own group
    rows = sig.cli("sig", "list-shared", "-o", "json").json
    assert rows == [
        {"gallery": "myGallery", "role": "owner", "groups": [sig.owner_group],
         "scopes": ["(gallery)"]},
    ]  # fmt: skip
    shown = sig.cli("sig", "show", *G, "--sharing-groups", "-o", "json").json
    assert shown["sharingProfile"] == {
        "permissions": "Groups", "groups": [{"type": "UnixGroups", "ids": [sig.owner_group]}],
    }  # fmt: skip
