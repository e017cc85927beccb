"""`sigvirt region …`: the regions of regions.yaml, and whether their hosts can hold replicas."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sigvirt.cli import render
from sigvirt.cli.common import ResourceGroupOpt, YesOpt, context, present
from sigvirt.cli.render import Output, OutputOpt, emit
from sigvirt.errors import ExitCode, InvalidArgument
from sigvirt.hosts import regioncheck, regions

if TYPE_CHECKING:
    from sigvirt.regionadmin import RegionChange

app = typer.Typer(
    help="Regions: libvirt hosts and their storage pools (regions.yaml).", no_args_is_help=True
)

LIST_COLUMNS = ["name", "uri", "pools", "accel", "network", "description"]
CHECK_COLUMNS = ["region", "status", "accel", "architectures", "libvirt", "pools", "detail"]

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
    """Check each region: reachable, pools active, free space, accel, Arm64 support, libvirt."""
    rows = regioncheck.check(regions.load(), names)
    emit(rows, output, CHECK_COLUMNS, title="regions")
    if regioncheck.unavailable(rows):
        raise typer.Exit(ExitCode.REGION_UNAVAILABLE)


# -- editing regions.yaml ---------------------------------------------------------------------
PoolOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--pool", help="NAME, NAME=PATH or NAME=PATH=STORAGE_TYPE (repeat for several pools)"
    ),
]
AccelOpt = Annotated[
    str | None, typer.Option("--accel", help="auto (KVM where usable), kvm or tcg")
]
BudgetOpt = Annotated[
    int | None, typer.Option("--clones-per-replica", help="clones one replica may back (0: any)")
]
PortsOpt = Annotated[
    str | None, typer.Option("--ports", help="LOW-HIGH: the host ports of SSH forwards")
]
NetworkOpt = Annotated[
    str | None,
    typer.Option("--network", help="user-forward, or network:NAME / bridge:NAME for real labs"),
]
DescriptionOpt = Annotated[str | None, typer.Option("--description")]
MergeOpt = Annotated[
    bool | None,
    typer.Option(
        "--memory-merge/--no-memory-merge",
        help="let KSM merge its guests' identical memory pages (regions.yaml memory.merge)",
    ),
]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="print the change to regions.yaml; write nothing")
]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="skip the clone check of a host that doesn't answer"),
]


def _network(value: str | None, ports: str | None) -> dict[str, Any] | None:
    if value is None and ports is None:
        return None
    kind, _, name = (value or "user-forward").partition(":")
    out: dict[str, Any] = {"type": kind}
    if name:
        out["name"] = name
    if ports is not None:
        out["ports"] = ports
    return out


def _settings(
    uri: str | None, accel: str | None, budget: int | None, network: dict[str, Any] | None,
    description: str | None, merge: bool | None = None,
) -> dict[str, Any]:  # fmt: skip
    out: dict[str, Any] = {}
    for key, value in (
        ("uri", uri), ("accel", accel), ("clones_per_replica", budget), ("network", network),
        ("description", description), ("memory", None if merge is None else {"merge": merge}),
    ):  # fmt: skip
        if value is not None:
            out[key] = value
    return out


def _show(change: RegionChange, dry_run: bool, output: Output) -> None:
    from sigvirt import regionadmin

    if not dry_run:
        regionadmin.apply(change)
    if not change.edit.layout_kept:
        render.warn(f"{change.edit.path}: its layout could not be kept exactly (ruamel rewrote it)")
    az = {
        "action": change.action, "region": change.region, "path": str(change.edit.path),
        "dryRun": dry_run, "diff": change.diff,
    }  # fmt: skip
    if render.for_people(output):
        if dry_run:
            print(change.diff or "(no change)", end="")
        elif change.action == "remove":
            print(f"removed region {change.region} from {change.edit.path}")
        else:
            emit(regioncheck.describe(change.edit.config, change.region), output)
        return
    present(az, az, output)


@app.command("add")
def region_add(
    name: Annotated[str, typer.Argument(help="the new region's name")],
    uri: Annotated[
        str | None, typer.Option("--uri", help="libvirt URI: qemu:///system, qemu+ssh://…")
    ] = None,
    zone: Annotated[
        list[str] | None,
        typer.Option(
            "--zone",
            help="a zone and its host, NAME=URI (repeat: a region of zones, "
            "no --uri; the other flags are its zones' defaults)",
        ),
    ] = None,
    pool: PoolOpt = None,
    accel: AccelOpt = None,
    clones_per_replica: BudgetOpt = None,
    ports: PortsOpt = None,
    network: NetworkOpt = None,
    description: DescriptionOpt = None,
    memory_merge: MergeOpt = None,
    dry_run: DryRunOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Add a region to regions.yaml (comments and layout kept; checked before it is written)."""
    from sigvirt import regionadmin

    net = _network(network, ports)
    doc = _settings(uri, accel, clones_per_replica, net, description, memory_merge)
    if pool or not zone:
        doc["pools"] = [regionadmin.pool_doc(p) for p in pool or []]
    if zone:
        doc["zones"] = regionadmin.zones_doc(zone)
    elif uri is None:
        raise InvalidArgument("give the region's host: --uri URI, or its zones: --zone 1=URI …")
    _show(regionadmin.add(regions.load(), name, doc), dry_run, output)


@app.command("update")
def region_update(
    name: NameArg,
    uri: Annotated[str | None, typer.Option("--uri", help="a new libvirt URI")] = None,
    add_pool: Annotated[
        list[str] | None, typer.Option("--add-pool", help="NAME, NAME=PATH or NAME=PATH=TYPE")
    ] = None,
    remove_pool: Annotated[
        list[str] | None, typer.Option("--remove-pool", help="refused while replicas live there")
    ] = None,
    accel: AccelOpt = None,
    clones_per_replica: BudgetOpt = None,
    ports: PortsOpt = None,
    network: NetworkOpt = None,
    description: DescriptionOpt = None,
    memory_merge: MergeOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="change --uri although replicas or clones live there")
    ] = False,
    dry_run: DryRunOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Change a region's settings in regions.yaml (untouched keys keep their comments)."""
    from sigvirt import regionadmin

    net = _network(network, ports)
    changes = _settings(uri, accel, clones_per_replica, net, description, memory_merge)
    with context() as ctx:
        config = regions.load()
        name = regioncheck.resolve(config, name).name
        change = regionadmin.update(
            ctx, config, name, changes, tuple(remove_pool or ()), tuple(add_pool or ()),
            force=force,
        )  # fmt: skip
    _show(change, dry_run, output)


@app.command("remove")
def region_remove(
    name: NameArg,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Remove a region from regions.yaml: refused while a replica or a clone lives there."""
    from sigvirt import regionadmin

    with context() as ctx:
        config = regions.load()
        name = regioncheck.resolve(config, name).name
        change = regionadmin.remove(ctx, config, name, force=force)
    _show(change, dry_run, output)
