"""`sigvirt sig share …`, `sig check-access`, `sig access-sync`: sharing through Unix groups."""

from __future__ import annotations

from typing import Annotated

import typer

from sigvirt.catalog.policy import Caller, Policy, scope_of
from sigvirt.cli.common import GalleryOpt, ResourceGroupOpt, context
from sigvirt.cli.render import Output, OutputOpt, emit
from sigvirt.errors import ExitCode
from sigvirt.sharing import check, share

app = typer.Typer(
    help="Share galleries, definitions and versions with Unix groups.", no_args_is_help=True
)

DefOpt = Annotated[
    str | None, typer.Option("--gallery-image-definition", "-i", help="share only this definition")
]
VerOpt = Annotated[
    str | None, typer.Option("--gallery-image-version", "-e", help="share only this version")
]
GroupOpt = Annotated[str, typer.Option("--group", help="Unix group")]
RoleOpt = Annotated[str, typer.Option("--role", help="reader, contributor or owner")]
SHARE_COLUMNS = ["group", "role", "scope"]


def _scope_rows(policy: Policy, scope: str) -> list[dict[str, str]]:
    rows = (
        [{"group": policy.owner_group, "role": "owner", "scope": "(owner group)"}]
        if policy.owner_group
        else []
    )
    rows += [
        {"group": g.group, "role": g.role, "scope": g.scope or "(gallery)"}
        for g in policy.grants
        if not scope or g.scope == scope
    ]
    return rows


@app.command("add")
def share_add(
    gallery: GalleryOpt, group: GroupOpt, role: RoleOpt,
    definition: DefOpt = None, version: VerOpt = None, resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Give a group a role on a gallery, a definition or a version (files follow at once)."""
    with context() as ctx:
        policy = share.share(ctx, Caller.current(), gallery, definition, version, group, role)
    emit(_scope_rows(policy, ""), output, SHARE_COLUMNS, title=f"shares of {gallery}")


@app.command("remove")
def share_remove(
    gallery: GalleryOpt, group: GroupOpt,
    definition: DefOpt = None, version: VerOpt = None, resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Take a group's share away (files follow at once)."""
    with context() as ctx:
        policy = share.share(ctx, Caller.current(), gallery, definition, version, group, None)
    emit(_scope_rows(policy, ""), output, SHARE_COLUMNS, title=f"shares of {gallery}")


@app.command("list")
def share_list(
    gallery: GalleryOpt, definition: DefOpt = None, version: VerOpt = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """List the shares of a gallery (or those made on one definition or version)."""
    with context() as ctx:
        policy = ctx.store.policy(gallery)
    scope = scope_of(definition, version) if definition else ""
    emit(_scope_rows(policy, scope), output, SHARE_COLUMNS, title=f"shares of {gallery}")


def check_access(
    gallery: GalleryOpt,
    definition: Annotated[str, typer.Option("--gallery-image-definition", "-i")],
    version: Annotated[str, typer.Option("--gallery-image-version", "-e")],
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """For each replica: can QEMU and each shared group read it, and what fixes it."""
    with context() as ctx:
        rows = check.check_access(ctx.store, gallery, definition, version)
    emit(rows, output, ["path", "principal", "can_read", "why", "fix"], title="access")
    if not all(r.can_read for r in rows):
        raise typer.Exit(ExitCode.PERMISSION)


def access_sync(
    gallery: GalleryOpt, resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table
) -> None:
    """Make the gallery's file ACLs match its shares (root, or through the sudo helper)."""
    with context() as ctx:
        problems = share.sync_files(ctx, gallery)
    emit({"gallery": gallery, "problems": problems}, output)
    if problems:
        raise typer.Exit(ExitCode.HOST_ACCESS)
