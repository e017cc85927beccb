"""What every command shares: option types, the context it runs in, progress display."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sigvirt.catalog import azureid, names
from sigvirt.catalog import tags as tag_rules
from sigvirt.catalog.names import ImageRef
from sigvirt.catalog.policy import Caller
from sigvirt.catalog.store import GalleryStore
from sigvirt.cli import render
from sigvirt.cli.render import Output, emit
from sigvirt.errors import InvalidArgument, InvalidName, Unsupported
from sigvirt.hosts import regions

# Commands that only read or write metadata must start fast (`image-version list` on 10,000
# versions answers in under a second): libvirt, paramiko and rich.progress load on use.
if TYPE_CHECKING:
    from sigvirt.catalog.records import Replica
    from sigvirt.context import Context
    from sigvirt.versions.replication import ReplicaProgress

GalleryOpt = Annotated[str, typer.Option("--gallery-name", "-r", help="gallery name")]
DefinitionOpt = Annotated[
    str, typer.Option("--gallery-image-definition", "-i", help="image definition name")
]
VersionOpt = Annotated[
    str, typer.Option("--gallery-image-version", "-e", help="version, Major.Minor.Patch")
]
OptGallery = Annotated[str | None, typer.Option("--gallery-name", "-r", help="gallery name")]
OptDefinition = Annotated[
    str | None, typer.Option("--gallery-image-definition", "-i", help="image definition")
]
OptVersion = Annotated[
    str | None, typer.Option("--gallery-image-version", "-e", help="version, Major.Minor.Patch")
]
ResourceGroupOpt = Annotated[
    str | None,
    typer.Option(
        "--resource-group",
        "-g",
        help="resource group, as az takes it: sigvirt has none, it is a name in resource ids",
    ),
]
DescriptionOpt = Annotated[str | None, typer.Option("--description", help="free text")]
IdsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--ids",
        help="one or more resource ids (several after one --ids), instead of the names",
    ),
]
YesOpt = Annotated[
    bool,
    typer.Option("--yes", "-y", help="don't prompt for confirmation (sigvirt never prompts)"),
]
TagsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--tags", help='space-separated tags: key[=value] [key[=value] ...]; "" clears them'
    ),
]
NoWaitOpt = Annotated[
    bool, typer.Option("--no-wait", help="return at once; `wait` follows the operation")
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="update a property: PATH=VALUE (tags.KEY=VALUE, ...)"),
]
AddOpt = Annotated[
    list[str] | None, typer.Option("--add", help="add to a list property: PATH VALUE")
]
RemoveOpt = Annotated[
    list[str] | None, typer.Option("--remove", help="remove a property: tags.KEY, ...")
]


def store() -> GalleryStore:
    """The gallery store alone, for commands that touch metadata only."""
    return GalleryStore(regions.load().gallery_root, Caller.current())


@contextmanager
def context() -> Iterator[Context]:
    """The context of one command: regions.yaml, the gallery store, libvirt on demand."""
    from sigvirt.context import Context

    cfg = regions.load()
    ctx = Context.from_config(cfg)
    ctx.store.caller = Caller.current()  # the CLI acts for a person: their roles apply
    try:
        yield ctx
    finally:
        ctx.close()


@contextmanager
def replica_progress(enabled: bool = True) -> Iterator[ReplicaProgress | None]:
    """A rich progress bar per replica on a terminal; nothing when piped."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TransferSpeedColumn,
    )

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=False,
    )
    tasks: dict[str, TaskID] = {}

    def update(replica: Replica, done: int, total: int) -> None:
        key = f"{replica.region}/{replica.volume}"
        if key not in tasks:
            tasks[key] = bars.add_task(f"{replica.region:>10} {replica.volume}", total=total)
        bars.update(tasks[key], completed=done, total=total)

    with bars:
        yield update


# -- names or --ids -----------------------------------------------------------------------------
def _ids_and_names(ids: list[str] | None, names_given: bool, what: str) -> None:
    if ids and names_given:
        raise InvalidArgument(
            f"give either --ids or the {what} names, not both (az's rule: with --ids, no "
            "other resource name arguments)"
        )
    if not ids and not names_given:
        raise typer.BadParameter(f"give the {what} names, or --ids")


def gallery_targets(ids: list[str] | None, gallery: str | None) -> list[str]:
    """The galleries a command acts on: by name, or by id (several ids, several galleries)."""
    _ids_and_names(ids, gallery is not None, "gallery")
    if gallery is not None:
        return [names.gallery_name(gallery)]
    return [_parsed(i, azureid.GALLERY_TYPE).gallery for i in ids or []]


def definition_targets(
    ids: list[str] | None, gallery: str | None, definition: str | None
) -> list[tuple[str, str]]:
    _ids_and_names(ids, gallery is not None or definition is not None, "gallery and definition")
    if ids:
        return [
            (r.gallery, r.definition) for r in (_parsed(i, azureid.DEFINITION_TYPE) for i in ids)
        ]
    if gallery is None or definition is None:
        raise typer.BadParameter("give --gallery-name and --gallery-image-definition, or --ids")
    return [(names.gallery_name(gallery), names.definition_name(definition))]


def version_targets(
    ids: list[str] | None, gallery: str | None, definition: str | None, version: str | None
) -> list[ImageRef]:
    """Exact versions (an update or delete never means `latest`)."""
    given = any(x is not None for x in (gallery, definition, version))
    _ids_and_names(ids, given, "gallery, definition and version")
    if ids:
        refs = []
        for i in ids:
            r = _parsed(i, azureid.VERSION_TYPE)
            if not r.version or r.version.lower() == "latest":
                raise InvalidName(f"resource id {names.shorten(i, 200)} names no exact version")
            refs.append(ImageRef(r.gallery, r.definition, r.version))
        return refs
    if gallery is None or definition is None or version is None:
        raise typer.BadParameter(
            "give --gallery-name, --gallery-image-definition and --gallery-image-version, or --ids"
        )
    return [
        ImageRef(
            names.gallery_name(gallery),
            names.definition_name(definition),
            str(names.Version.parse(version)),
        )
    ]


def _parsed(text: str, kind: str) -> azureid.ResourceId:
    rid = azureid.parse(text)
    if rid.type != kind:
        raise InvalidArgument(f"--ids {names.shorten(text, 200)} names a {rid.type}, not a {kind}")
    return rid


def one_or_many(items: list[Any]) -> Any:
    """az prints one resource as an object, several (from several --ids) as a list."""
    return items[0] if len(items) == 1 else items


# -- generic update (--set / --remove), as az has on every update --------------------------------
def generic_update(
    set_items: list[str] | None,
    remove_items: list[str] | None,
    paths: dict[str, str],
    tags: dict[str, str],
) -> tuple[dict[str, str], dict[str, str] | None]:
    """`--set PATH=VALUE` and `--remove PATH` for the properties in `paths` (az path → the
    library's parameter name) and for `tags.KEY`: the parameters to change (as text) and the
    new tags (None: unchanged). Any other path is refused, naming the ones that work."""
    changes: dict[str, str] = {}
    new_tags: dict[str, str] | None = None
    known = {p.lower(): name for p, name in paths.items()}
    for item in set_items or []:
        path, sep, value = item.partition("=")
        if not sep:
            raise InvalidArgument(f"--set {names.shorten(item)}: expected PATH=VALUE")
        if path.lower().startswith("tags."):
            new_tags = dict(tags if new_tags is None else new_tags)
            new_tags[tag_rules.check_name(path[5:])] = tag_rules.check_value(path[5:], value)
        elif path.lower() in known:
            changes[known[path.lower()]] = value
        else:
            raise Unsupported(
                f"--set {names.shorten(path)}: sigvirt can set tags.KEY"
                + "".join(f", {p}" for p in paths)
            )
    for path in remove_items or []:
        if not path.lower().startswith("tags."):
            raise Unsupported(f"--remove {names.shorten(path)}: sigvirt can remove tags.KEY")
        new_tags = dict(tags if new_tags is None else new_tags)
        new_tags.pop(path[5:], None)
    return changes, new_tags


def present(
    az: Any,
    people: Any,
    output: Output,
    columns: Sequence[str] | None = None,
    title: str = "",
) -> None:
    """One command's result: az's shape for scripts (json, yaml, tsv, and any --query), the
    people's rows for a table."""
    if render.for_people(output):
        emit(people, output, columns, title)
    else:
        emit(az, output, columns, title)
