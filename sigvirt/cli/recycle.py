"""Deleting and the recycle bin: `image-version delete|undelete|list-soft-deleted` and
`image-definition delete|undelete|list-soft-deleted`, each delete and undelete with
`--dry-run` (the plan the real run carries out: versions/deletion.py, versions/recycle.py)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from sigvirt.catalog.plans import Journal, Plan
from sigvirt.catalog.records import VersionState
from sigvirt.cli import plans
from sigvirt.cli.common import (
    DefinitionOpt,
    GalleryOpt,
    IdsOpt,
    NoWaitOpt,
    OptDefinition,
    OptGallery,
    OptVersion,
    ResourceGroupOpt,
    YesOpt,
    context,
    definition_targets,
    one_or_many,
    present,
    version_targets,
)
from sigvirt.cli.render import Output, OutputOpt, emit, for_people, warn

ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="also remove a record that doesn't parse, with the replica files its name identifies",
    ),
]
BIN_COLUMNS = ["kind", "ref", "deleted", "purge_after", "replicas", "bytes"]


def register_versions(app: typer.Typer) -> None:
    """Add the commands to `image-version` once (main() runs many times in one process)."""
    have = {c.name for c in app.registered_commands}
    for name, fn in (("delete", version_delete), ("undelete", version_undelete),
                     ("list-soft-deleted", version_list_soft_deleted)):  # fmt: skip
        if name not in have:
            app.command(name)(fn)


def register_definitions(app: typer.Typer) -> None:
    have = {c.name for c in app.registered_commands}
    for name, fn in (("delete", definition_delete), ("undelete", definition_undelete),
                     ("list-soft-deleted", definition_list_soft_deleted)):  # fmt: skip
        if name not in have:
            app.command(name)(fn)


def _done(rows: list[dict[str, Any]], output: Output) -> None:
    if output is Output.table:  # az prints nothing for a delete
        emit(one_or_many(rows), output)


def _dry(found: list[Plan], output: Output) -> None:
    if len(found) == 1 or for_people(output):
        for p in found:
            plans.show(p, output)
        return
    emit([p.to_json() for p in found], output, ready=True)


def version_delete(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    version: OptVersion = None,
    ids: IdsOpt = None,
    force: ForceOpt = False,
    dry_run: plans.DryRunOpt = False,
    yes: YesOpt = False,
    no_wait: NoWaitOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Delete a version (refused while clones depend on its replicas). With the gallery's soft
    delete on, it goes to the recycle bin with its replicas (undelete restores it); a region
    that doesn't answer keeps its replicas until `sig gc` finds it answering."""
    from sigvirt.versions import deletion

    refs = version_targets(ids, gallery, definition, version)
    with context() as ctx:
        if dry_run:
            _dry([deletion.dry_run(ctx, r).to_plan() for r in refs], output)
            return
        rows = []
        for ref in refs:
            p, rec = deletion.delete(ctx, ref, force=force, journal=Journal())
            # None: a damaged record removed unread, whose replicas it could not count
            row = {"deleted": str(ref), "replicas": len(rec.replicas) if rec else 0,
                   "mode": p.mode if p else "forced"}  # fmt: skip
            if rec is not None and rec.state == VersionState.PENDING_DELETION:
                waiting = sorted({r.region for r in rec.replicas})
                row["pending"] = waiting
                warn(
                    f"{ref}: deleted; its replicas in {', '.join(waiting)} go when "
                    f"`sigvirt sig gc --yes` can reach them ({rec.reason})"
                )
            rows.append(row)
    _done(rows, output)


def version_undelete(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    version: OptVersion = None,
    ids: IdsOpt = None,
    dry_run: plans.DryRunOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Restore a soft-deleted version exactly: its record, replicas and sharing."""
    from sigvirt.cli.versions import row, shape
    from sigvirt.rollouts import automatic
    from sigvirt.versions import recycle

    refs = version_targets(ids, gallery, definition, version)
    with context() as ctx:
        if dry_run:
            _dry([recycle.undelete_plan(ctx, r)[1] for r in refs], output)
            return
        done = [recycle.undelete_version(ctx, r)[0] for r in refs]
        for g, d in dict.fromkeys((r.gallery, r.definition) for r in done):
            automatic.on_latest_changed(ctx, g, d)  # it may be latest again
        az = one_or_many([shape(ctx.store, r) for r in done])
    present(az, one_or_many([row(r) for r in done]), output)


def version_list_soft_deleted(
    gallery: GalleryOpt,
    definition: DefinitionOpt,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The definition's versions in the recycle bin, with when `sig gc` may purge each."""
    from sigvirt.versions import recycle

    with context() as ctx:
        found = recycle.list_versions(ctx, gallery, definition)
    emit([_bin_row(e) for e in found], output, BIN_COLUMNS, title="soft-deleted versions")


def definition_delete(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    ids: IdsOpt = None,
    dry_run: plans.DryRunOpt = False,
    yes: YesOpt = False,
    no_wait: NoWaitOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Delete an image definition (refused while it has versions); with the gallery's soft
    delete on, it goes to the recycle bin."""
    from sigvirt.versions import recycle

    targets = definition_targets(ids, gallery, definition)
    with context() as ctx:
        if dry_run:
            _dry([recycle.delete_definition_plan(ctx, g, d) for g, d in targets], output)
            return
        rows = []
        for g, d in targets:
            p = recycle.delete_definition(ctx, g, d)
            soft = p.actions[0].verb == "update-record"
            rows.append({"deleted": f"{g}/{d}", "mode": "soft" if soft else "hard"})
    _done(rows, output)


def definition_undelete(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    ids: IdsOpt = None,
    dry_run: plans.DryRunOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Restore a soft-deleted definition (its soft-deleted versions stay in the bin until each
    is undeleted)."""
    from sigvirt.cli.definitions import shape
    from sigvirt.versions import recycle

    targets = definition_targets(ids, gallery, definition)
    with context() as ctx:
        if dry_run:
            _dry([recycle.undelete_definition_plan(ctx, g, d)[1] for g, d in targets], output)
            return
        done = [recycle.undelete_definition(ctx, g, d)[0] for g, d in targets]
        az = one_or_many([shape(ctx.store, x) for x in done])
    present(az, one_or_many([{"definition": f"{x.gallery}/{x.name}"} for x in done]), output)


def definition_list_soft_deleted(
    gallery: GalleryOpt,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The gallery's definitions in the recycle bin."""
    from sigvirt.versions import recycle

    with context() as ctx:
        found = recycle.list_definitions(ctx, gallery)
    emit([_bin_row(e) for e in found], output, BIN_COLUMNS, title="soft-deleted definitions")


def _bin_row(e: Any) -> dict[str, Any]:
    return {"kind": e.kind, "ref": e.ref, "deleted": e.deleted, "purge_after": e.purge_after,
            "replicas": e.replicas, "bytes": e.bytes}  # fmt: skip
