"""`sigvirt region …`: the regions of regions.yaml, and whether their hosts can hold replicas."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sigvirt.cli.common import ResourceGroupOpt
from sigvirt.cli.render import Output, OutputOpt, emit
from sigvirt.errors import ExitCode
from sigvirt.hosts import regioncheck, regions

app = typer.Typer(
    help="Regions: libvirt hosts and their storage pools (regions.yaml).", no_args_is_help=True
)

LIST_COLUMNS = ["name", "uri", "pools", "accel", "network", "description"]
CHECK_COLUMNS = ["region", "status", "accel", "libvirt", "pools", "detail"]

NameArg = Annotated[str, typer.Argument(help="region name (Azure display names work too)")]


@app.command("list")
def region_list(resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table) -> None:
    """List the regions of regions.yaml ($SIGVIRT_REGIONS, /etc/sigvirt, or the default)."""
    rows = regioncheck.summarize(regions.load())
    emit(rows, output, LIST_COLUMNS, title="regions")


@app.command("show")
def region_show(
    name: NameArg, resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table
) -> None:
    """Show one region's settings."""
    emit(regioncheck.describe(regions.load(), name), output)


@app.command("init")
def region_init(
    path: Annotated[
        Path, typer.Argument(help="where to write it", show_default=True)
    ] = regions.SYSTEM_REGIONS,
    force: Annotated[bool, typer.Option("--force", help="replace an existing file")] = False,
    uri: Annotated[str | None, typer.Option("--uri", help="libvirt URI of `local`")] = None,
    pools_dir: Annotated[
        Path | None, typer.Option("--pools-dir", help="directory for the two local pools")
    ] = None,
    gallery_root: Annotated[
        Path | None, typer.Option("--gallery-root", help="where gallery metadata lives")
    ] = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Write a regions.yaml holding the `local` region (never replaces one without --force)."""
    cfg = regioncheck.init_file(
        path, force=force, uri=uri, pools_dir=pools_dir, gallery_root=gallery_root
    )
    emit({"written": path, "regions": list(cfg.regions), "gallery_root": cfg.gallery_root}, output)


@app.command("check")
def region_check(
    names: Annotated[
        list[str] | None, typer.Argument(help="regions to check (default: all)")
    ] = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Check each region: reachable, pools active, free space, accel (kvm/tcg), libvirt."""
    rows = regioncheck.check(regions.load(), names)
    emit(rows, output, CHECK_COLUMNS, title="regions")
    if regioncheck.unavailable(rows):
        raise typer.Exit(ExitCode.REGION_UNAVAILABLE)
