"""`sigvirt sig image-definition …`, shaped like `az sig image-definition`."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import typer

from sigvirt.catalog import features as feature_rules
from sigvirt.catalog import tags as tag_rules
from sigvirt.catalog.records import Definition
from sigvirt.catalog.store import Damaged, GalleryStore
from sigvirt.cli import azshape, safetyargs, waiter
from sigvirt.cli.common import (
    DefinitionOpt,
    DescriptionOpt,
    GalleryOpt,
    IdsOpt,
    OptDefinition,
    OptGallery,
    RemoveOpt,
    ResourceGroupOpt,
    SetOpt,
    TagsOpt,
    definition_targets,
    generic_update,
    one_or_many,
    present,
    store,
)
from sigvirt.cli.render import Output, OutputOpt, emit, warn
from sigvirt.errors import Unsupported
from sigvirt.galleries import definitions
from sigvirt.galleries.definitions import DefinitionInput

app = typer.Typer(help="Image definitions (az sig image-definition).", no_args_is_help=True)

COLUMNS = [
    "name", "publisher", "offer", "sku", "os_type", "os_state", "hyper_v_generation",
    "architecture", "end_of_life", "eol_policy", "features",
]  # fmt: skip
UPDATE_PATHS = {
    "description": "description",
    "endOfLifeDate": "end_of_life",
    "eula": "eula",
    "releaseNoteUri": "release_note_uri",
    "privacyStatementUri": "privacy_statement_uri",
    "recommended.vCPUs.min": "min_vcpus",
    "recommended.vCPUs.max": "max_vcpus",
    "recommended.memory.min": "min_memory_mib",
    "recommended.memory.max": "max_memory_mib",
}


TestSpecOpt = Annotated[
    str | None,
    typer.Option(
        "--test-spec",
        help="boot test: a testinfra spec file (def test_x(host): ...) a new version must pass "
        'before it can be latest; "" removes it',
    ),
]


FeaturesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--features",
        help="az's Name=Value pairs, e.g. DiskControllerTypes=SCSI,NVMe "
        "IsAcceleratedNetworkSupported=True SecurityType=TrustedLaunchSupported",
    ),
]
AllowUpdateImageOpt = Annotated[
    str | None,
    typer.Option(
        "--allow-update-image",
        metavar="true|false",
        help="Azure's allowUpdateImage: needed to change --features (new VMs follow them)",
    ),
]


def _features(given: list[str] | None) -> dict[str, str] | None:
    """--features parsed (None when not given)."""
    return None if given is None else feature_rules.parse(given)


def _feature_notes(rec: Definition) -> None:
    """What a stored feature doesn't do here, once per feature."""
    for line in feature_rules.notes(rec.features):
        warn(line)


def row(rec: Definition) -> dict[str, Any]:
    """A definition as people read it: the test spec as its identity, never its code."""
    out = dataclasses.asdict(rec)
    out["features"] = " ".join(f"{k}={v}" for k, v in rec.features.items()) or None
    spec = rec.test_spec
    out["test_spec"] = (
        f"{spec.file_name} ({spec.size} bytes, sha256 {spec.spec_sha256[:16]}…, by {spec.owner})"
        if spec
        else None
    )
    return out


def shape(s: GalleryStore, rec: Definition) -> dict[str, Any]:
    g = s.get_gallery(rec.gallery)
    return azshape.definition(rec, g.resource_group, g.location, g)


@app.command("create")
def definition_create(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    publisher: Annotated[str, typer.Option("--publisher", "-p", help="e.g. myPublisher")],
    offer: Annotated[str, typer.Option("--offer", "-f", help="e.g. myOffer")],
    sku: Annotated[str, typer.Option("--sku", "-s", help="e.g. myLinux1")],
    os_type: Annotated[str, typer.Option("--os-type", help="Linux or Windows")] = "Linux",
    os_state: Annotated[
        str, typer.Option("--os-state", help="Generalized or Specialized")
    ] = "Generalized",
    hyper_v_generation: Annotated[
        str, typer.Option("--hyper-v-generation", help="V1 (BIOS) or V2 (UEFI)")
    ] = "V1",
    architecture: Annotated[str, typer.Option("--architecture", help="x64 or Arm64")] = "x64",
    min_cpu: Annotated[int | None, typer.Option("--minimum-cpu-core")] = None,
    max_cpu: Annotated[int | None, typer.Option("--maximum-cpu-core")] = None,
    min_mem: Annotated[int | None, typer.Option("--minimum-memory", help="MiB")] = None,
    max_mem: Annotated[int | None, typer.Option("--maximum-memory", help="MiB")] = None,
    end_of_life: Annotated[str | None, typer.Option("--end-of-life-date")] = None,
    eula: Annotated[str, typer.Option("--eula")] = "",
    release_note_uri: Annotated[str, typer.Option("--release-note-uri")] = "",
    privacy_statement_uri: Annotated[str, typer.Option("--privacy-statement-uri")] = "",
    description: DescriptionOpt = "",
    tags: TagsOpt = None,
    location: Annotated[
        str | None, typer.Option("--location", "-l", help="accepted: a definition has no region")
    ] = None,
    features: FeaturesOpt = None,
    plan_name: Annotated[str | None, typer.Option("--plan-name", hidden=True)] = None,
    test_spec: TestSpecOpt = None,
    eol_policy: safetyargs.EolPolicyOpt = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create an image definition (publisher/offer/sku unique within the gallery)."""
    if plan_name:
        raise Unsupported("--plan-name: there is no marketplace here")
    spec = DefinitionInput(
        publisher, offer, sku, os_type, os_state, hyper_v_generation, architecture,
        min_cpu, max_cpu, min_mem, max_mem, end_of_life, eula, release_note_uri,
        description or "", privacy_statement_uri, tag_rules.parse(tags) or {}, eol_policy or "",
        _features(features) or {},
    )  # fmt: skip
    s = store()
    rec = definitions.create_definition(s, gallery, definition, spec, test_spec)
    _feature_notes(rec)
    present(shape(s, rec), row(rec), output, [*COLUMNS, "test_spec"])


@app.command("list")
def definition_list(
    gallery: GalleryOpt, resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table
) -> None:
    """List a gallery's image definitions (damaged ones: as `sig list` shows them)."""
    s = store()
    damaged: list[Damaged] = []
    recs = s.list_definitions(gallery, damaged)
    for item in damaged:
        warn(f"skipped damaged metadata file {item.path}: {item.reason}")
    if output is Output.table:
        emit(recs, output, COLUMNS, title="image definitions")
        return
    rows: list[Any] = [shape(s, r) for r in recs]
    rows += [{"name": d.name, "damaged": d.reason} for d in damaged]
    emit(rows, output, COLUMNS, title="image definitions")


@app.command("show")
def definition_show(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    ids: IdsOpt = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Show an image definition."""
    s = store()
    recs = [s.get_definition(g, d) for g, d in definition_targets(ids, gallery, definition)]
    present(one_or_many([shape(s, r) for r in recs]), one_or_many([row(r) for r in recs]), output)


@app.command("update")
def definition_update(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    ids: IdsOpt = None,
    min_cpu: Annotated[int | None, typer.Option("--minimum-cpu-core")] = None,
    max_cpu: Annotated[int | None, typer.Option("--maximum-cpu-core")] = None,
    min_mem: Annotated[int | None, typer.Option("--minimum-memory", help="MiB")] = None,
    max_mem: Annotated[int | None, typer.Option("--maximum-memory", help="MiB")] = None,
    end_of_life: Annotated[str | None, typer.Option("--end-of-life-date")] = None,
    eula: Annotated[str | None, typer.Option("--eula")] = None,
    release_note_uri: Annotated[str | None, typer.Option("--release-note-uri")] = None,
    privacy_statement_uri: Annotated[str | None, typer.Option("--privacy-statement-uri")] = None,
    description: DescriptionOpt = None,
    tags: TagsOpt = None,
    set_: SetOpt = None,
    remove: RemoveOpt = None,
    test_spec: TestSpecOpt = None,
    eol_policy: safetyargs.EolPolicyOpt = None,
    features: FeaturesOpt = None,
    allow_update_image: AllowUpdateImageOpt = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Change a definition's recommendations, end of life, EULA, notes, description, tags
    (az's --set/--remove for tags.KEY and these properties), its boot-test spec, its eol
    policy ("" = its gallery's), its features (with --allow-update-image true)."""
    s = store()
    spec = definitions.read_spec(test_spec) if test_spec is not None else None
    allow = safetyargs.flag(allow_update_image, "--allow-update-image") or False
    new_features = _features(features)
    done = []
    for g, d in definition_targets(ids, gallery, definition):
        current = s.get_definition(g, d)
        new_tags = tag_rules.parse(tags)
        changes, set_tags = generic_update(
            set_, remove, UPDATE_PATHS, new_tags if new_tags is not None else current.tags
        )
        ints = {k: int(v) for k, v in changes.items() if k.startswith(("min_", "max_"))}
        texts = {k: v for k, v in changes.items() if k not in ints}
        given: dict[str, Any] = {
            "min_vcpus": min_cpu, "max_vcpus": max_cpu, "min_memory_mib": min_mem,
            "max_memory_mib": max_mem, "end_of_life": end_of_life, "eula": eula,
            "release_note_uri": release_note_uri, "privacy_statement_uri": privacy_statement_uri,
            "description": description, "eol_policy": eol_policy,
            "tags": set_tags if set_tags is not None else new_tags, "features": new_features,
        }  # fmt: skip
        rec = definitions.update_definition(s, g, d, allow, **{**given, **ints, **texts})
        if new_features is not None:
            _feature_notes(rec)
        if spec is not None:
            rec = definitions.set_test_spec(s, g, d, spec)
        done.append(rec)
    present(one_or_many([shape(s, r) for r in done]), one_or_many([row(r) for r in done]), output)


@app.command("wait")
def definition_wait(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    ids: IdsOpt = None,
    created: waiter.CreatedOpt = False,
    updated: waiter.UpdatedOpt = False,
    deleted: waiter.DeletedOpt = False,
    exists: waiter.ExistsOpt = False,
    custom: waiter.CustomOpt = None,
    interval: waiter.IntervalOpt = 5,
    timeout: waiter.TimeoutOpt = 3600,
    resource_group: ResourceGroupOpt = None,
) -> None:
    """Wait for a condition on a definition (az's --created, --deleted, ...)."""
    s = store()
    ((g, d),) = definition_targets(ids, gallery, definition)
    waiter.until(
        lambda: shape(s, s.get_definition(g, d)), created=created, updated=updated,
        deleted=deleted, exists=exists, custom=custom, interval=interval, timeout=timeout,
    )  # fmt: skip


from sigvirt.cli import boxes  # noqa: E402  (export-boxes, in its own module)

boxes.register_definitions(app)
