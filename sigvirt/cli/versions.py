"""`sigvirt sig image-version …`, shaped like `az sig image-version`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from sigvirt.catalog import latest, listindex
from sigvirt.catalog import tags as tag_rules
from sigvirt.catalog.names import ImageRef
from sigvirt.catalog.plans import Journal
from sigvirt.catalog.records import BootTestState, ImageVersion, aggregate
from sigvirt.catalog.store import Damaged, GalleryStore
from sigvirt.cli import azshape, formats, listcache, plans, render, safetyargs, waiter
from sigvirt.cli.common import (
    DefinitionOpt,
    GalleryOpt,
    IdsOpt,
    NoWaitOpt,
    OptDefinition,
    OptGallery,
    OptVersion,
    RemoveOpt,
    ResourceGroupOpt,
    SetOpt,
    TagsOpt,
    VersionOpt,
    context,
    generic_update,
    one_or_many,
    present,
    replica_progress,
    store,
    version_targets,
)
from sigvirt.cli.render import Output, OutputOpt, emit, note, warn
from sigvirt.errors import BootTestFailed, ExitCode, Unsupported

# publish and replication (libvirt, paramiko) are imported by the commands that use them:
# metadata-only commands start without them.

app = typer.Typer(help="Image versions (az sig image-version).", no_args_is_help=True)

COLUMNS = [
    "name", "state", "replication", "regions", "test", "exclude_from_latest", "end_of_life",
    "published",
]  # fmt: skip
TargetsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--target-regions",
        help='regions to replicate to, each "name", "name=count" or "name=count=storage_type" '
        "(several after one flag)",
    ),
]
ReplicaCountOpt = Annotated[
    int | None, typer.Option("--replica-count", help="replicas of regions given without a count")
]
ExcludedOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--target-region-exclude-from-latest",
        help="target regions where this version is not latest (several after one flag)",
    ),
]
ExpandOpt = Annotated[
    str | None, typer.Option("--expand", help="ReplicationStatus: every replica's state too")
]
LocationOpt = Annotated[
    str | None, typer.Option("--location", "-l", help="region (default: the gallery's)")
]
UPDATE_PATHS = {
    "publishingProfile.excludeFromLatest": "exclude_from_latest",
    "publishingProfile.endOfLifeDate": "end_of_life",
    "publishingProfile.replicaCount": "replica_count",
    **safetyargs.UPDATE_PATHS,
}


def row(rec: ImageVersion) -> dict[str, Any]:
    """A version as people read it in a table."""
    agg, regions = aggregate(rec)
    test = latest.boot_test_now(rec.boot_test)
    out: dict[str, Any] = {
        "name": rec.name,
        "state": rec.state,
        "replication": agg,
        "regions": {r.region: f"{r.completed}/{r.wanted}" for r in regions},
        "test": str(test.state),
        "exclude_from_latest": rec.exclude_from_latest,
        "end_of_life": rec.end_of_life,
        "published": rec.published,
        "source": rec.source,
        "source_region": rec.source_region,
        "sha256": rec.sha256,
        "virtual_size": rec.virtual_size,
        "allocated_size": rec.allocated_size,
        "tags": rec.tags,
    }
    if test.failures and test.state == BootTestState.FAILED:
        out["test_failures"] = "; ".join(test.failures)
    if rec.warnings:
        out["warnings"] = list(rec.warnings)
    return out


def _group(s: GalleryStore, gallery: str) -> str:
    return s.get_gallery(gallery).resource_group


def shape(s: GalleryStore, rec: ImageVersion) -> dict[str, Any]:
    return azshape.version(rec, _group(s, rec.gallery))


def exit_if_failed(rec: ImageVersion) -> None:
    """Replicas that failed (a region down, a disk full) make the command fail too, with
    their own exit code and one line each; running it again resumes them."""
    from sigvirt.versions import replication

    failed = replication.failure(rec)
    if failed is not None:
        code, lines = failed
        for line in lines:
            note(f"sigvirt: error: {line}")
        raise typer.Exit(code)


def exit_if_test_failed(rec: ImageVersion) -> None:
    """A boot test that failed fails the command that ran it (exit 24), in one line."""
    if rec.boot_test.state == BootTestState.FAILED:
        summary = "; ".join(rec.boot_test.failures) or "no test passed"
        raise BootTestFailed(f"image version {rec.ref} failed its boot test: {summary}")


def _refuse(flag: str, value: object, why: str) -> None:
    if value:
        raise Unsupported(f"{flag}: {why}")


@app.command("create")
def version_create(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    version: VersionOpt,
    source: Annotated[
        str | None,
        typer.Option("--source", help="qcow2/raw file, pool/volume, vm:NAME, or a version id"),
    ] = None,
    managed_image: Annotated[
        str | None, typer.Option("--managed-image", help="az's name for the source image")
    ] = None,
    virtual_machine: Annotated[
        str | None, typer.Option("--virtual-machine", help="a stopped VM (name or id) as source")
    ] = None,
    image_version: Annotated[
        str | None, typer.Option("--image-version", help="another version (id) as source")
    ] = None,
    source_format: Annotated[
        str | None, typer.Option("--source-format", help="declare qcow2 or raw (checked)")
    ] = None,
    target_regions: TargetsOpt = None,
    replica_count: ReplicaCountOpt = None,
    excluded: ExcludedOpt = None,
    storage_account_type: Annotated[
        str | None,
        typer.Option("--storage-account-type", help="storage type of regions given without one"),
    ] = None,
    replication_mode: Annotated[
        str, typer.Option("--replication-mode", help="Full, or Shallow: the source region only")
    ] = "Full",
    location: LocationOpt = None,
    exclude_from_latest: Annotated[bool, typer.Option("--exclude-from-latest")] = False,
    end_of_life: Annotated[str | None, typer.Option("--end-of-life-date")] = None,
    allow_deletion: safetyargs.AllowDeletionOpt = None,
    block_deletion: safetyargs.BlockDeletionOpt = None,
    tags: TagsOpt = None,
    os_snapshot: Annotated[str | None, typer.Option("--os-snapshot", hidden=True)] = None,
    data_snapshots: Annotated[
        list[str] | None, typer.Option("--data-snapshots", hidden=True)
    ] = None,
    no_wait: NoWaitOpt = False,
    dry_run: plans.DryRunOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Publish a version: gate the source, store it in the source region, replicate it; if
    its definition has a test spec, boot-test it (exit 24 when that fails). --dry-run prints
    the plan (import, copies) and changes nothing."""
    from sigvirt.rollouts import automatic, gate
    from sigvirt.versions import publish

    _refuse("--os-snapshot", os_snapshot, "sigvirt has no snapshots; give the disk as --source")
    _refuse("--data-snapshots", data_snapshots, "sigvirt versions hold an OS disk only")
    picks = [x for x in (source, managed_image, virtual_machine, image_version) if x]
    if len(picks) != 1:
        raise typer.BadParameter(
            "give exactly one of --source, --managed-image, --virtual-machine, --image-version",
            param_hint="--source",
        )
    src = picks[0]
    if virtual_machine:
        src = "vm:" + virtual_machine.rstrip("/").rsplit("/", 1)[-1]
    inp = publish.VersionInput(
        src, source_format, target_regions, replica_count, exclude_from_latest, end_of_life,
        location, tag_rules.parse(tags), tuple(excluded or ()), replication_mode,
        storage_account_type, *safetyargs.settings(allow_deletion, block_deletion),
    )  # fmt: skip
    if dry_run:
        with context() as ctx:
            plans.show(publish.plan_create(ctx, gallery, definition, version, inp), output)
        return
    with context() as ctx, replica_progress(output is Output.table) as bars:
        rec = publish.create_version(
            ctx, gallery, definition, version, inp, progress=bars, wait=not no_wait
        )
        if not no_wait:  # with --no-wait, the background process does both after replicating
            rec = gate.settle(ctx, rec)
            automatic.on_latest_changed(ctx, rec.gallery, rec.definition)
        az = shape(ctx.store, rec)
    present(az, row(rec), output)
    exit_if_failed(rec)
    exit_if_test_failed(rec)


@app.command("list")
def version_list(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """List a definition's versions, oldest first (damaged ones: as `sig list` shows them)."""
    s = store()
    damaged: list[Damaged] = []
    with listindex.gc_paused():  # 10,000 versions make ~300,000 objects and no cycle
        kept = _kept_listing(s, gallery, definition, output)  # before any record is read
        if kept is not None and kept.replay():
            return
        versions = s.list_versions(gallery, definition, damaged)
        for item in damaged:
            warn(f"skipped damaged metadata file {item.path}: {item.reason}")
        if kept is not None and not damaged and len(versions) > formats.LONG_LIST:
            kept.print_and_keep(versions)
            return
        if output is Output.table:
            rows = [row(v) for v in versions]
        else:
            group = _group(s, gallery)
            rows = [azshape.version(v, group) for v in versions]
            rows += [{"name": d.name, "damaged": d.reason} for d in damaged]
        emit(rows, output, COLUMNS, title="image versions", ready=True)


def _kept_listing(
    s: GalleryStore, gallery: str, definition: str, output: Output
) -> listcache.Listing | None:
    """A long listing kept row by row (cli/listcache.py), or None when it is not one."""
    k = listcache.key(s, gallery, definition, output, tuple(COLUMNS))
    if k is None:
        return None
    group = k.group
    shape = row if k.kind == "table" else lambda v: azshape.version(v, group)
    return listcache.Listing(k, s, shape, COLUMNS, "image versions")


@app.command("show")
def version_show(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    version: OptVersion = None,
    ids: IdsOpt = None,
    expand: ExpandOpt = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Show a version; --expand ReplicationStatus adds every replica's state to the table."""
    s = store()
    recs = [
        s.get_version(r.gallery, r.definition, r.version or "")
        for r in version_targets(ids, gallery, definition, version)
    ]
    boxes = [_boxes(s, r) for r in recs]
    az = [{**shape(s, r), "sigvirt": {**shape(s, r)["sigvirt"], "boxes": b}}
          for r, b in zip(recs, boxes, strict=True)]  # fmt: skip
    present(one_or_many(az), one_or_many([row(r) for r in recs]), output)
    if render.for_people(output) and any(boxes):
        emit([x for b in boxes for x in b], output, ["file", "sha256", "exported", "present"],
             title="vagrant boxes")  # fmt: skip
    if render.for_people(output) and (expand or "").lower() == "replicationstatus":
        for rec in recs:
            _agg, summary = aggregate(rec)
            emit(summary, output, title="replication status")
            emit(rec.replicas, output, ["region", "pool", "volume", "state", "progress", "reason"])


def _boxes(s: GalleryStore, rec: ImageVersion) -> list[dict[str, Any]]:
    """The Vagrant boxes exported from a version (`export-box`, `export-boxes`), each with
    whether its file is still there; a damaged index is a warning, not a failed show."""
    import dataclasses

    from sigvirt.errors import SigvirtError
    from sigvirt.vagrant import index

    try:
        found = index.exported_boxes(s.root, rec.gallery, rec.definition, rec.name)
    except SigvirtError as err:
        warn(f"{rec.ref}: its box index is unreadable: {err.message}")
        return []
    return [dataclasses.asdict(b) for b in found]


@app.command("show-latest")
def version_show_latest(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    location: LocationOpt = None,
    explain: Annotated[
        bool, typer.Option("--explain", help="why each version is or isn't latest")
    ] = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The version `latest` resolves to (in a region, with -l): the highest Major.Minor.Patch
    published and not excluded from latest (there). Damaged records are skipped, each with a
    warning; --explain lists every version and why."""
    with context() as ctx, listindex.gc_paused():
        region = None
        if location:
            from sigvirt.versions import targets

            region = targets.normalize_region(location, ctx.regions)
        s = ctx.store
        damaged: list[Damaged] = []
        if explain:
            versions = s.list_versions(gallery, definition, damaged)
            policy = latest.policy_for(s, gallery, definition)
            rows = latest.explain_latest(versions, damaged, region, policy)
            columns = ["version", "chosen", "why", "end_of_life", "eol_policy"]
            emit(rows, output, columns, title="latest candidates")
            return
        rec = latest.resolve(s, ImageRef(gallery, definition), damaged, region)
        for item in damaged:
            warn(f"skipped damaged metadata file {item.path}: {item.reason}")
        present(shape(s, rec), row(rec), output)


@app.command("update")
def version_update(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    version: OptVersion = None,
    ids: IdsOpt = None,
    target_regions: TargetsOpt = None,
    replica_count: ReplicaCountOpt = None,
    excluded: ExcludedOpt = None,
    exclude_from_latest: Annotated[
        bool | None, typer.Option("--exclude-from-latest/--include-in-latest")
    ] = None,
    end_of_life: Annotated[str | None, typer.Option("--end-of-life-date")] = None,
    allow_deletion: safetyargs.AllowDeletionOpt = None,
    block_deletion: safetyargs.BlockDeletionOpt = None,
    tags: TagsOpt = None,
    set_: SetOpt = None,
    remove: RemoveOpt = None,
    no_wait: NoWaitOpt = False,
    dry_run: plans.DryRunOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Change target regions and replica counts (resumes missing replicas), latest (also per
    region), end of life, tags; az's --set/--remove for tags.KEY and a few properties.
    --dry-run prints the plan (copies, replicas deleted) and changes nothing."""
    from sigvirt.rollouts import automatic
    from sigvirt.versions import publish

    refs = version_targets(ids, gallery, definition, version)
    done = []
    journal = Journal()
    with context() as ctx, replica_progress(output is Output.table and not dry_run) as bars:
        for ref in refs:
            assert ref.version is not None
            current = ctx.store.get_version(ref.gallery, ref.definition, ref.version)
            new_tags = tag_rules.parse(tags)
            changes, set_tags = generic_update(
                set_, remove, UPDATE_PATHS, new_tags if new_tags is not None else current.tags
            )
            excl = changes.get("exclude_from_latest")
            allow, block = safetyargs.profile(allow_deletion, block_deletion, changes)
            rec = publish.update_version(
                ctx, ref,
                target_regions=target_regions,
                replica_count=int(changes["replica_count"]) if "replica_count" in changes
                else replica_count,
                exclude_from_latest=excl.lower() == "true" if excl else exclude_from_latest,
                end_of_life=changes.get("end_of_life", end_of_life),
                tags=set_tags if set_tags is not None else new_tags,
                excluded_regions=excluded, allow_replicated_location_deletion=allow,
                block_deletion_before_end_of_life=block,
                progress=bars, wait=not no_wait, journal=journal, dry_run=dry_run,
            )  # fmt: skip
            done.append(rec)
        if dry_run:
            subject = " ".join(r.ref for r in done)
            plans.show(journal.plan("image-version update", subject, dry_run=True), output)
            return
        for g, d in dict.fromkeys((r.gallery, r.definition) for r in done):
            automatic.on_latest_changed(ctx, g, d)  # replicas or latest flags may have moved it
        present(
            one_or_many([shape(ctx.store, r) for r in done]),
            one_or_many([row(r) for r in done]),
            output,
        )
    for rec in done:
        exit_if_failed(rec)


@app.command("replicate")
def version_replicate(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    version: VersionOpt,
    quiet: Annotated[bool, typer.Option("--quiet", help="no output (background runs)")] = False,
    dry_run: plans.DryRunOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Bring every missing or failed replica to completed (what --no-wait runs, and resume),
    then run the boot test if the version is waiting for one, then start the rolling upgrades
    of Automatic scale sets if that changed their latest. --dry-run prints the copies and
    removals it would make and changes nothing."""
    from sigvirt.rollouts import automatic, gate
    from sigvirt.versions import publish

    (ref,) = version_targets(None, gallery, definition, version)
    if dry_run:
        with context() as ctx:
            plans.show(publish.plan_replicate(ctx, ref), output)
        return
    with context() as ctx, replica_progress(not quiet) as bars:
        rec = publish.replicate(ctx, ref, bars)
        rec = gate.settle(ctx, rec)
        automatic.on_latest_changed(ctx, rec.gallery, rec.definition)
        az = shape(ctx.store, rec)
    if not quiet:
        present(az, row(rec), output)
    exit_if_failed(rec)
    exit_if_test_failed(rec)


@app.command("test")
def version_test(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    version: OptVersion = None,
    ids: IdsOpt = None,
    no_wait: NoWaitOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Run a version's boot test (again): a linked clone boots in its source region, its
    definition's test spec runs against it over SSH, the clone is deleted; the result
    decides whether the version may be latest. Exit 24 when it fails."""
    from sigvirt.rollouts import automatic, gate

    refs = version_targets(ids, gallery, definition, version)
    with context() as ctx:
        done = [gate.start(ctx, r) if no_wait else gate.run(ctx, r) for r in refs]
        if not no_wait:  # with --no-wait, the background `test` run does it
            for g, d in dict.fromkeys((r.gallery, r.definition) for r in done):
                automatic.on_latest_changed(ctx, g, d)
        az = one_or_many([shape(ctx.store, r) for r in done])
    present(az, one_or_many([row(r) for r in done]), output)
    for rec in done:
        exit_if_test_failed(rec)


@app.command("wait")
def version_wait(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    version: OptVersion = None,
    ids: IdsOpt = None,
    created: waiter.CreatedOpt = False,
    updated: waiter.UpdatedOpt = False,
    deleted: waiter.DeletedOpt = False,
    exists: waiter.ExistsOpt = False,
    custom: waiter.CustomOpt = None,
    interval: waiter.IntervalOpt = 5,
    timeout: waiter.TimeoutOpt = 3600,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Wait for a condition (az's --created, --updated, --deleted, --exists, --custom: prints
    nothing, as az); with none, until replication ends, and shows the version. A
    replication that ends Failed exits with its code."""
    from sigvirt.versions import replication

    (ref,) = version_targets(ids, gallery, definition, version)
    assert ref.version is not None
    version_ref: str = ref.version
    with context() as ctx:
        if not (created or updated or deleted or exists or custom):
            rec = replication.wait(
                ctx, ctx.store.get_version(ref.gallery, ref.definition, version_ref), timeout
            )
            present(shape(ctx.store, rec), row(rec), output)
            exit_if_failed(rec)
            return
        records: dict[str, ImageVersion] = {}

        def fetch() -> dict[str, Any]:
            rec = ctx.store.get_version(ref.gallery, ref.definition, version_ref)
            records["last"] = rec
            return shape(ctx.store, rec)

        def failed(_state: dict[str, Any]) -> ExitCode | None:
            rec = records["last"]
            verdict = replication.failure(rec)
            return None if verdict is None or exists or deleted else verdict[0]

        waiter.until(
            fetch, created=created, updated=updated, deleted=deleted, exists=exists,
            custom=custom, interval=interval, timeout=timeout, failed=failed,
        )  # fmt: skip


SCRUB_COLUMNS = ["version", "region", "volume", "outcome", "bytes", "seconds", "detail"]


@app.command("scrub")
def version_scrub(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    version: OptVersion = None,
    max_rate: Annotated[
        float | None, typer.Option("--max-rate", help="MB/s to read at most (default: no limit)")
    ] = None,
    resource_group: ResourceGroupOpt = None,
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


@app.command("heal")
def version_heal(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    version: OptVersion = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Copy corrupt replicas again from verified ones (not one that clones depend on)."""
    from sigvirt.versions import scrub

    with context() as ctx:
        rows = scrub.heal(ctx, gallery, definition, version)
    emit(rows, output, SCRUB_COLUMNS, title="heal")
    if any(r.outcome != "healed" for r in rows):
        raise typer.Exit(ExitCode.CORRUPT_REPLICA)


@app.command("dependents")
def version_dependents(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    version: VersionOpt,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Domains and volumes whose backing chain reaches one of the version's replicas."""
    from sigvirt.guests import vms

    with context() as ctx:
        rows = vms.version_dependents(ctx, gallery, definition, version)
    emit(rows, output, ["kind", "name", "replica"], title="dependents")


from sigvirt.cli import boxes  # noqa: E402  (export-box, in its own module)

boxes.register(app)
