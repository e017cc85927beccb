"""`sigvirt sig …`: galleries, image definitions and image versions, shaped like `az sig`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from sigvirt.catalog import latest, names
from sigvirt.catalog.names import ImageRef
from sigvirt.catalog.records import ImageVersion, aggregate
from sigvirt.catalog.store import Damaged
from sigvirt.cli.common import (
    DefinitionOpt,
    DescriptionOpt,
    GalleryOpt,
    ResourceGroupOpt,
    VersionOpt,
    context,
    replica_progress,
    store,
)
from sigvirt.cli.render import Output, OutputOpt, emit, note, plain, warn
from sigvirt.errors import ExitCode
from sigvirt.galleries import definitions, galleries
from sigvirt.galleries.definitions import DefinitionInput

# publish and replication (libvirt, paramiko) are imported by the commands that use them:
# metadata-only commands start without them.

app = typer.Typer(help="Shared image galleries (az sig).", no_args_is_help=True)
definition_app = typer.Typer(
    help="Image definitions (az sig image-definition).", no_args_is_help=True
)
version_app = typer.Typer(help="Image versions (az sig image-version).", no_args_is_help=True)

GALLERY_COLUMNS = ["name", "location", "description", "owner_group", "created"]
DEFINITION_COLUMNS = [
    "name", "publisher", "offer", "sku", "os_type", "os_state", "hyper_v_generation",
    "architecture", "end_of_life",
]  # fmt: skip
VERSION_COLUMNS = [
    "name", "state", "replication", "regions", "exclude_from_latest", "end_of_life", "published",
]  # fmt: skip


def warn_damaged(damaged: list[Damaged]) -> None:
    for item in damaged:
        warn(f"skipped damaged metadata file {item.path}: {item.reason}")


def with_damaged(rows: list[Any], damaged: list[Damaged], output: Output) -> list[Any]:
    """A listing's rows and, for scripts (json, yaml), an entry per damaged record after
    them, `{"name": ..., "damaged": why}`; each damaged record is one warning line on stderr.
    The listing succeeds: one bad file must not hide the others."""
    warn_damaged(damaged)
    if output is Output.table or not damaged:
        return rows
    return [*plain(rows), *({"name": d.name, "damaged": d.reason} for d in damaged)]


# -- galleries --------------------------------------------------------------------------------
@app.command("create")
def gallery_create(
    gallery: GalleryOpt,
    description: DescriptionOpt = "",
    location: Annotated[
        str, typer.Option("--location", "-l", help="home region (source of new versions)")
    ] = "local",
    owner_group: Annotated[
        str, typer.Option("--owner-group", help="Unix group whose members own the gallery")
    ] = "",
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create a gallery."""
    from sigvirt.versions import targets

    with context() as ctx:
        location = targets.normalize_region(location, ctx.regions)
        rec = galleries.create_gallery(ctx.store, gallery, description or "", location, owner_group)
    emit(rec, output, GALLERY_COLUMNS)


@app.command("list")
def gallery_list(resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table) -> None:
    """List galleries (damaged ones: a warning each, and an entry marked `damaged`)."""
    damaged: list[Damaged] = []
    rows = store().list_galleries(damaged)
    emit(with_damaged(rows, damaged, output), output, GALLERY_COLUMNS, title="galleries")


@app.command("show")
def gallery_show(
    gallery: GalleryOpt, resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table
) -> None:
    """Show a gallery."""
    rec = store().get_gallery(gallery)
    emit(rec, output)


@app.command("update")
def gallery_update(
    gallery: GalleryOpt,
    description: DescriptionOpt = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Change a gallery's description."""
    rec = galleries.update_gallery(store(), gallery, description)
    emit(rec, output)


@app.command("delete")
def gallery_delete(
    gallery: GalleryOpt, resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table
) -> None:
    """Delete an empty gallery (refused while it has image definitions)."""
    store().delete_gallery(gallery)
    emit({"deleted": gallery}, output)


# -- definitions ------------------------------------------------------------------------------
@definition_app.command("create")
def definition_create(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    publisher: Annotated[str, typer.Option("--publisher", help="e.g. myPublisher")],
    offer: Annotated[str, typer.Option("--offer", help="e.g. myOffer")],
    sku: Annotated[str, typer.Option("--sku", help="e.g. myLinux1")],
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
    description: DescriptionOpt = "",
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create an image definition (publisher/offer/sku unique within the gallery)."""
    spec = DefinitionInput(
        publisher, offer, sku, os_type, os_state, hyper_v_generation, architecture,
        min_cpu, max_cpu, min_mem, max_mem, end_of_life, eula, release_note_uri,
        description or "",
    )  # fmt: skip
    rec = definitions.create_definition(store(), gallery, definition, spec)
    emit(rec, output, DEFINITION_COLUMNS)


@definition_app.command("list")
def definition_list(
    gallery: GalleryOpt, resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table
) -> None:
    """List a gallery's image definitions (damaged ones: as `sig list` shows them)."""
    damaged: list[Damaged] = []
    rows = store().list_definitions(gallery, damaged)
    emit(with_damaged(rows, damaged, output), output, DEFINITION_COLUMNS, title="image definitions")


@definition_app.command("show")
def definition_show(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Show an image definition."""
    rec = store().get_definition(gallery, definition)
    emit(rec, output)


@definition_app.command("update")
def definition_update(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    min_cpu: Annotated[int | None, typer.Option("--minimum-cpu-core")] = None,
    max_cpu: Annotated[int | None, typer.Option("--maximum-cpu-core")] = None,
    min_mem: Annotated[int | None, typer.Option("--minimum-memory", help="MiB")] = None,
    max_mem: Annotated[int | None, typer.Option("--maximum-memory", help="MiB")] = None,
    end_of_life: Annotated[str | None, typer.Option("--end-of-life-date")] = None,
    eula: Annotated[str | None, typer.Option("--eula")] = None,
    release_note_uri: Annotated[str | None, typer.Option("--release-note-uri")] = None,
    description: DescriptionOpt = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Change a definition's recommendations, end of life, EULA or description."""
    rec = definitions.update_definition(
        store(), gallery, definition,
        min_vcpus=min_cpu, max_vcpus=max_cpu, min_memory_mib=min_mem, max_memory_mib=max_mem,
        end_of_life=end_of_life, eula=eula, release_note_uri=release_note_uri,
        description=description,
    )  # fmt: skip
    emit(rec, output)


@definition_app.command("delete")
def definition_delete(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Delete an image definition (refused while it has versions)."""
    store().delete_definition(gallery, definition)
    emit({"deleted": f"{gallery}/{definition}"}, output)


# -- versions ---------------------------------------------------------------------------------
def version_row(rec: ImageVersion, expand: bool = False) -> dict[str, Any]:
    agg, regions = aggregate(rec)
    row: dict[str, Any] = {
        "name": rec.name,
        "id": rec.ref,
        "state": rec.state,
        "replication": agg,
        "regions": {r.region: f"{r.completed}/{r.wanted}" for r in regions},
        "exclude_from_latest": rec.exclude_from_latest,
        "end_of_life": rec.end_of_life,
        "published": rec.published,
        "source": rec.source,
        "source_region": rec.source_region,
        "sha256": rec.sha256,
        "virtual_size": rec.virtual_size,
        "allocated_size": rec.allocated_size,
    }
    if rec.warnings:
        row["warnings"] = list(rec.warnings)
    if expand:
        row["replication_status"] = {
            "aggregated_state": agg,
            "summary": regions,
            "replicas": rec.replicas,
        }
    return row


def _exit_if_failed(rec: ImageVersion) -> None:
    """Replicas that failed (a region down, a disk full) make the command fail too, with
    their own exit code and one line each; running it again resumes them."""
    from sigvirt.versions import replication

    failed = replication.failure(rec)
    if failed is not None:
        code, lines = failed
        for line in lines:
            note(f"sigvirt: error: {line}")
        raise typer.Exit(code)


def _ref(gallery: str, definition: str, version: str) -> ImageRef:
    """One exact version: update and delete never mean `latest`."""
    return ImageRef(
        names.gallery_name(gallery),
        names.definition_name(definition),
        str(names.Version.parse(version)),
    )


TargetsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--target-regions",
        help='regions to replicate to, each "name" or "name=count" (repeat the option, '
        "or give several after one)",
    ),
]
ReplicaCountOpt = Annotated[
    int | None, typer.Option("--replica-count", help="default replicas per target region")
]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="return before replication ends")]
ExpandOpt = Annotated[
    str | None, typer.Option("--expand", help="ReplicationStatus: include per-replica status")
]


@version_app.command("create")
def version_create(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    version: VersionOpt,
    source: Annotated[
        str | None,
        typer.Option(
            "--source", help="qcow2/raw file, pool/volume, vm:NAME, or another version id"
        ),
    ] = None,
    managed_image: Annotated[
        str | None, typer.Option("--managed-image", help="alias of --source (az compatibility)")
    ] = None,
    source_format: Annotated[
        str | None, typer.Option("--source-format", help="declare qcow2 or raw (checked)")
    ] = None,
    target_regions: TargetsOpt = None,
    replica_count: ReplicaCountOpt = None,
    location: Annotated[
        str | None, typer.Option("--location", "-l", help="source region (default: gallery's)")
    ] = None,
    exclude_from_latest: Annotated[bool, typer.Option("--exclude-from-latest")] = False,
    end_of_life: Annotated[str | None, typer.Option("--end-of-life-date")] = None,
    no_wait: NoWaitOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Publish a version: gate the source, store it in the source region, replicate it."""
    from sigvirt.versions import publish

    src = source or managed_image
    if not src:
        raise typer.BadParameter("give --source (or --managed-image)", param_hint="--source")
    inp = publish.VersionInput(
        src, source_format, target_regions, replica_count, exclude_from_latest, end_of_life,
        location,
    )  # fmt: skip
    with context() as ctx, replica_progress(output is Output.table) as bars:
        rec = publish.create_version(
            ctx,
            gallery,
            definition,
            version,
            inp,
            progress=bars,
            wait=not no_wait,
        )
    emit(version_row(rec, expand=output is not Output.table), output)
    _exit_if_failed(rec)


@version_app.command("list")
def version_list(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """List a definition's versions, oldest first (damaged ones: as `sig list` shows them)."""
    damaged: list[Damaged] = []
    rows = [version_row(v) for v in store().list_versions(gallery, definition, damaged)]
    rows = with_damaged(rows, damaged, output)
    emit(rows, output, VERSION_COLUMNS, title="image versions", ready=not damaged)


@version_app.command("show")
def version_show(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    version: VersionOpt,
    expand: ExpandOpt = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Show a version; --expand ReplicationStatus adds every replica's state."""
    rec = store().get_version(gallery, definition, version)
    expanded = (expand or "").lower() == "replicationstatus"
    if output is not Output.table:
        emit(version_row(rec, expand=expanded), output)
        return
    emit(version_row(rec), output)
    if expanded:
        _agg, summary = aggregate(rec)
        emit(summary, output, title="replication status")
        emit(rec.replicas, output, ["region", "pool", "volume", "state", "progress", "reason"])


@version_app.command("show-latest")
def version_show_latest(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    explain: Annotated[
        bool, typer.Option("--explain", help="why each version is or isn't latest")
    ] = False,
    output: OutputOpt = Output.table,
) -> None:
    """The version `latest` resolves to: highest Major.Minor.Patch not excluded from latest
    (damaged version records are skipped, each with a warning; --explain lists them)."""
    gallery_store = store()
    damaged: list[Damaged] = []
    if explain:
        versions = gallery_store.list_versions(gallery, definition, damaged)
        rows = latest.explain_latest(versions, damaged)
        emit(rows, output, ["version", "chosen", "why"], title="latest candidates")
        return
    rec = latest.resolve(gallery_store, ImageRef(gallery, definition), damaged)
    warn_damaged(damaged)
    emit(version_row(rec), output)


@version_app.command("update")
def version_update(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    version: VersionOpt,
    target_regions: TargetsOpt = None,
    replica_count: ReplicaCountOpt = None,
    exclude_from_latest: Annotated[
        bool | None, typer.Option("--exclude-from-latest/--include-in-latest")
    ] = None,
    end_of_life: Annotated[str | None, typer.Option("--end-of-life-date")] = None,
    no_wait: NoWaitOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Change target regions and replica counts (resumes missing replicas), latest, end of life."""
    from sigvirt.versions import publish

    with context() as ctx, replica_progress(output is Output.table) as bars:
        rec = publish.update_version(
            ctx, _ref(gallery, definition, version),
            target_regions=target_regions, replica_count=replica_count,
            exclude_from_latest=exclude_from_latest, end_of_life=end_of_life,
            progress=bars, wait=not no_wait,
        )  # fmt: skip
    emit(version_row(rec), output)
    _exit_if_failed(rec)


@version_app.command("replicate")
def version_replicate(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    version: VersionOpt,
    quiet: Annotated[bool, typer.Option("--quiet", help="no output (background runs)")] = False,
    output: OutputOpt = Output.table,
) -> None:
    """Bring every missing or failed replica to completed (what --no-wait runs, and resume)."""
    from sigvirt.versions import publish

    with context() as ctx, replica_progress(not quiet) as bars:
        rec = publish.replicate(ctx, _ref(gallery, definition, version), bars)
    if not quiet:
        emit(version_row(rec, expand=output is not Output.table), output)
    _exit_if_failed(rec)


@version_app.command("wait")
def version_wait(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    version: VersionOpt,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds")] = 3600,
    output: OutputOpt = Output.table,
) -> None:
    """Wait until no replica of the version is pending or copying."""
    from sigvirt.versions import replication

    with context() as ctx:
        rec = replication.wait(ctx, ctx.store.get_version(gallery, definition, version), timeout)
    emit(version_row(rec), output)


@version_app.command("delete")
def version_delete(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    version: VersionOpt,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="also remove a record that doesn't parse, with the replica files its name "
            "identifies",
        ),
    ] = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Delete a version and its replicas (refused while clones depend on them)."""
    from sigvirt.versions import publish

    ref = _ref(gallery, definition, version)
    with context() as ctx:
        rec = publish.delete_version(ctx, ref, force=force)
    # None: a record removed unread (publish's `force`), whose replicas it could not count.
    emit({"deleted": str(ref), "replicas": len(rec.replicas) if rec else 0}, output)


OptGallery = Annotated[str | None, typer.Option("--gallery-name", "-r", help="gallery")]
OptDefinition = Annotated[
    str | None, typer.Option("--gallery-image-definition", "-i", help="image definition")
]
OptVersion = Annotated[str | None, typer.Option("--gallery-image-version", "-e", help="version")]
SCRUB_COLUMNS = ["version", "region", "volume", "outcome", "bytes", "seconds", "detail"]


@version_app.command("scrub")
def version_scrub(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    version: OptVersion = None,
    max_rate: Annotated[
        float | None, typer.Option("--max-rate", help="MB/s to read at most (default: no limit)")
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Re-hash replicas where they lie; a mismatch is marked corrupt (exit 22, listed)."""
    from sigvirt.versions import scrub

    with context() as ctx:
        rows = scrub.scrub(ctx, gallery, definition, version, max_rate_mb=max_rate)
    emit(rows, output, SCRUB_COLUMNS, title="scrub")
    bad = [r for r in rows if r.outcome in ("corrupt", "missing")]
    for r in bad:
        note(f"sigvirt: error: {r.version}: replica {r.volume} in {r.region} is {r.outcome}")
    if bad:
        raise typer.Exit(ExitCode.CORRUPT_REPLICA)


@version_app.command("heal")
def version_heal(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    version: OptVersion = None,
    output: OutputOpt = Output.table,
) -> None:
    """Copy corrupt replicas again from verified ones (not one that clones depend on)."""
    from sigvirt.versions import scrub

    with context() as ctx:
        rows = scrub.heal(ctx, gallery, definition, version)
    emit(rows, output, SCRUB_COLUMNS, title="heal")
    if any(r.outcome != "healed" for r in rows):
        raise typer.Exit(ExitCode.CORRUPT_REPLICA)


@version_app.command("dependents")
def version_dependents(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    version: VersionOpt,
    output: OutputOpt = Output.table,
) -> None:
    """Domains and volumes whose backing chain reaches one of the version's replicas."""
    from sigvirt.guests import vms

    with context() as ctx:
        rows = vms.version_dependents(ctx, gallery, definition, version)
    emit(rows, output, ["kind", "name", "replica"], title="dependents")


def assemble(sub: str | None = None) -> typer.Typer:
    """`sig` with only the group being run (typer builds every registered command's parser
    on each run: listing 10,000 versions shouldn't pay for thirty of them)."""
    sig = typer.Typer(help=app.info.help, no_args_is_help=True)
    for info in app.registered_commands:
        sig.registered_commands.append(info)
    every = sub not in ("image-definition", "image-version", "share")
    if every or sub == "image-definition":
        sig.add_typer(definition_app, name="image-definition")
    if every or sub == "image-version":
        sig.add_typer(version_app, name="image-version")
    if every or sub == "share":
        from sigvirt.cli import share

        sig.add_typer(share.app, name="share")
        sig.command("check-access")(share.check_access)
        sig.command("access-sync")(share.access_sync)
    return sig
