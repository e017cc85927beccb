"""What every command shares: option types, the context it runs in, progress display."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from sigvirt.catalog.policy import Caller
from sigvirt.catalog.store import GalleryStore
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
ResourceGroupOpt = Annotated[
    str | None,
    typer.Option(
        "--resource-group", "-g", help="accepted for `az` compatibility; sigvirt has none"
    ),
]
DescriptionOpt = Annotated[str | None, typer.Option("--description", help="free text")]


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
