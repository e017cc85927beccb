"""`sigvirt sig …`: galleries (az sig), and the `sig` group the definitions, versions and
sharing commands hang from."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

import typer

from sigvirt.catalog import tags as tag_rules
from sigvirt.catalog.records import Gallery
from sigvirt.catalog.store import Damaged, GalleryStore
from sigvirt.cli import azshape, safetyargs, waiter
from sigvirt.cli.common import (
    DescriptionOpt,
    GalleryOpt,
    IdsOpt,
    NoWaitOpt,
    OptGallery,
    RemoveOpt,
    ResourceGroupOpt,
    SetOpt,
    TagsOpt,
    YesOpt,
    context,
    gallery_targets,
    generic_update,
    one_or_many,
    present,
    store,
)
from sigvirt.cli.plans import DryRunOpt
from sigvirt.cli.render import Output, OutputOpt, emit, warn
from sigvirt.galleries import galleries

app = typer.Typer(help="Shared image galleries (az sig).", no_args_is_help=True)

COLUMNS = ["name", "location", "description", "owner_group", "created"]
UPDATE_PATHS = {"description": "description"}


def shape(s: GalleryStore, rec: Gallery, sharing: bool = False) -> dict[str, Any]:
    out = azshape.gallery(rec)
    if sharing:
        policy = s.policy(rec.name)
        groups = [policy.owner_group] if policy.owner_group else []
        groups += sorted({g.group for g in policy.grants} - set(groups))
        out["sharingProfile"] = {
            "permissions": "Groups",
            "groups": [{"type": "UnixGroups", "ids": groups}],
        }
        out["sigvirt"]["shares"] = [
            {"group": g.group, "role": g.role, "scope": g.scope or "(gallery)"}
            for g in policy.grants
        ]
    return out


SoftDeleteOpt = Annotated[
    str | None,
    typer.Option("--soft-delete", metavar="true|false",
                 help="deleted versions and definitions go to a recycle bin (undelete restores "
                 "them) until `sig gc` purges them after the retention; off by default"),
]  # fmt: skip
RetentionOpt = Annotated[
    int,
    typer.Option("--soft-delete-retention-days", min=0, max=3650,
                 help="days the recycle bin keeps what is deleted (sigvirt's; Azure's is 7)"),
]  # fmt: skip


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
    tags: TagsOpt = None,
    permissions: Annotated[str | None, typer.Option("--permissions", hidden=True)] = None,
    soft_delete: SoftDeleteOpt = None,
    retention: RetentionOpt = 7,
    eol_policy: safetyargs.EolPolicyOpt = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Create a gallery (-g names its resource group in the ids it gets); --eol-policy deny
    keeps versions past their end of life from new deployments and from latest."""
    from sigvirt.errors import Unsupported
    from sigvirt.versions import targets

    if permissions and permissions.lower() != "private":
        raise Unsupported(
            f"--permissions {permissions}: sigvirt shares with Unix groups (sig share)"
        )
    with context() as ctx:
        location = targets.normalize_region(location, ctx.regions)
        rec = galleries.create_gallery(
            ctx.store, gallery, description or "", location, owner_group,
            resource_group or "", tag_rules.parse(tags), eol_policy or "",
            bool(safetyargs.flag(soft_delete, "--soft-delete")), retention,
        )  # fmt: skip
        present(shape(ctx.store, rec), rec, output, COLUMNS)


@app.command("list")
def gallery_list(resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table) -> None:
    """List galleries (damaged ones: a warning each, and an entry marked `damaged`)."""
    s = store()
    damaged: list[Damaged] = []
    recs = s.list_galleries(damaged)
    for item in damaged:
        warn(f"skipped damaged metadata file {item.path}: {item.reason}")
    if output is Output.table:
        emit(recs, output, COLUMNS, title="galleries")
        return
    rows: list[Any] = [shape(s, r) for r in recs]
    rows += [{"name": d.name, "damaged": d.reason} for d in damaged]
    emit(rows, output, COLUMNS, title="galleries")


@app.command("list-shared")
def gallery_list_shared(
    resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table
) -> None:
    """Galleries shared with you through a Unix group, with the role it gives and where."""
    from sigvirt.catalog.policy import Caller
    from sigvirt.sharing import share

    rows = share.shared_with(store(), Caller.current())
    emit(rows, output, ["gallery", "role", "groups", "scopes"], title="shared with you")


@app.command("show")
def gallery_show(
    gallery: OptGallery = None,
    ids: IdsOpt = None,
    sharing_groups: Annotated[
        bool, typer.Option("--sharing-groups", help="also who it is shared with")
    ] = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Show a gallery."""
    s = store()
    recs = [s.get_gallery(g) for g in gallery_targets(ids, gallery)]
    az = [shape(s, r, sharing_groups) for r in recs]
    people: list[Any] = recs
    if sharing_groups:
        people = [{**dataclasses.asdict(r), "shared_with": a["sharingProfile"]["groups"][0]["ids"]}
                  for r, a in zip(recs, az, strict=True)]  # fmt: skip
    present(one_or_many(az), one_or_many(people), output)


@app.command("update")
def gallery_update(
    gallery: OptGallery = None,
    ids: IdsOpt = None,
    description: DescriptionOpt = None,
    tags: TagsOpt = None,
    eol_policy: safetyargs.EolPolicyOpt = None,
    soft_delete: SoftDeleteOpt = None,
    retention: Annotated[
        int | None,
        typer.Option(
            "--soft-delete-retention-days",
            min=0,
            max=3650,
            help="days the recycle bin keeps what is deleted",
        ),
    ] = None,
    set_: SetOpt = None,
    remove: RemoveOpt = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Change a gallery's description, tags (az's --set/--remove for tags.KEY too) or eol
    policy."""
    s = store()
    done = []
    for g in gallery_targets(ids, gallery):
        current = s.get_gallery(g)
        new_tags = tag_rules.parse(tags)
        changes, set_tags = generic_update(
            set_, remove, UPDATE_PATHS, new_tags if new_tags is not None else current.tags
        )
        new_description = changes.get("description", description)
        final_tags = set_tags if set_tags is not None else new_tags
        done.append(galleries.update_gallery(
            s, g, new_description, final_tags, eol_policy,
            safetyargs.flag(soft_delete, "--soft-delete"), retention,
        ))  # fmt: skip
    present(one_or_many([shape(s, r) for r in done]), one_or_many(done), output)


@app.command("wait")
def gallery_wait(
    gallery: OptGallery = None,
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
    """Wait for a condition on a gallery (az's --created, --deleted, ...)."""
    s = store()
    (g,) = gallery_targets(ids, gallery)
    waiter.until(
        lambda: shape(s, s.get_gallery(g)), created=created, updated=updated, deleted=deleted,
        exists=exists, custom=custom, interval=interval, timeout=timeout,
    )  # fmt: skip


@app.command("delete")
def gallery_delete(
    gallery: OptGallery = None,
    ids: IdsOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    no_wait: NoWaitOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Delete an empty gallery (refused while it has image definitions, live or in the
    recycle bin)."""
    s = store()
    if dry_run:
        from sigvirt.cli import plans

        for g in gallery_targets(ids, gallery):
            plans.show(galleries.delete_plan(s, g), output)
        return
    gone = []
    for g in gallery_targets(ids, gallery):
        s.delete_gallery(g)
        gone.append({"deleted": g})
    if output is Output.table:
        emit(one_or_many(gone), output)


def assemble(sub: str | None = None) -> typer.Typer:
    """`sig` with only the group being run (typer builds every registered command's parser
    on each run: listing 10,000 versions shouldn't pay for thirty of them)."""
    sig = typer.Typer(help=app.info.help, no_args_is_help=True)
    for info in app.registered_commands:
        sig.registered_commands.append(info)
    every = sub not in ("image-definition", "image-version", "share")
    if every or sub == "image-definition":
        from sigvirt.cli import definitions, recycle

        recycle.register_definitions(definitions.app)
        sig.add_typer(definitions.app, name="image-definition")
    if every or sub == "image-version":
        from sigvirt.cli import recycle, retire, versions

        retire.register(versions.app)
        recycle.register_versions(versions.app)
        sig.add_typer(versions.app, name="image-version")
    if every or sub == "share":
        from sigvirt.cli import share

        sig.add_typer(share.app, name="share")
        sig.command("check-access")(share.check_access)
        sig.command("access-sync")(share.access_sync)
    if every:
        from sigvirt.cli import space

        space.register(sig)
    return sig
