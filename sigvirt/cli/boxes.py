"""Vagrant boxes: `sig image-version export-box` (a version as a vagrant-libvirt box) and
`sig image-definition export-boxes` (a definition as a versioned box catalog).

Mounted by `register()` on the image-version and image-definition apps; the library is
sigvirt/vagrant/.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sigvirt.catalog import azureid
from sigvirt.cli.common import (
    IdsOpt,
    OptDefinition,
    OptGallery,
    OptVersion,
    ResourceGroupOpt,
    context,
    definition_targets,
    version_targets,
)
from sigvirt.cli.plans import DryRunOpt
from sigvirt.cli.render import Output, OutputOpt, emit, for_people, note, warn

if TYPE_CHECKING:
    from sigvirt.vagrant.catalog import CatalogPlan, CatalogResult
    from sigvirt.vagrant.export import Exported

FileOpt = Annotated[Path, typer.Option("--file", help="the .box to write (never overwritten)")]
RegionOpt = Annotated[
    str | None,
    typer.Option(
        "--region", "-l", help="region whose replica is booted (default: the source region)"
    ),
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="seconds the boot, preparation and power-off may take")
]
DirOpt = Annotated[
    Path, typer.Option("--dir", help="where the boxes and catalog.json go (one per definition)")
]
BaseUrlOpt = Annotated[
    str,
    typer.Option(
        "--base-url",
        help="the URL DIR is served at (http(s)://...); default: file:// URLs of DIR",
    ),
]
COLUMNS = ["file", "sha256", "size", "version", "region", "seconds"]


def register(versions_app: typer.Typer) -> None:
    """Add `export-box` to the image-version commands once (main() runs many times in one
    process)."""
    if not any(c.name == "export-box" for c in versions_app.registered_commands):
        versions_app.command("export-box")(export_box)
        versions_app.command("list-boxes")(list_boxes)


def register_definitions(definitions_app: typer.Typer) -> None:
    """Add `export-boxes` to the image-definition commands once."""
    if not any(c.name == "export-boxes" for c in definitions_app.registered_commands):
        definitions_app.command("export-boxes")(export_boxes)


def shape(e: Exported, group: str) -> dict[str, Any]:
    g, d, v = e.version.split("/")
    return {
        "id": azureid.version_id(group, g, d, v),
        "version": e.version,
        "file": str(e.file),
        "sha256": e.sha256,
        "size": e.size,
        "location": e.region,
        "seconds": e.seconds,
        "warnings": list(e.warnings),
    }


def export_box(
    file: FileOpt,
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    version: OptVersion = None,
    ids: IdsOpt = None,
    region: RegionOpt = None,
    timeout: TimeoutOpt = 900.0,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Export a version as a vagrant-libvirt box: boot a clone, add user vagrant (Vagrant's
    insecure key, passwordless sudo), generalize, power off, flatten and compress. Prints
    the box's sha256 (`vagrant box add --checksum-type sha256 --checksum ...`)."""
    from sigvirt.errors import InvalidArgument
    from sigvirt.vagrant import export

    refs = version_targets(ids, gallery, definition, version)
    if len(refs) != 1:
        raise InvalidArgument("export-box takes one version: give one --ids")
    ref = refs[0]
    people = for_people(output)
    with context() as ctx:
        plan = export.plan_export(ctx, ref.gallery, ref.definition, ref.version or "", file,
                                  region)  # fmt: skip
        done = export.export_box(ctx, plan, timeout=timeout, on_step=note if people else None)
        group = resource_group or ctx.store.get_gallery(ref.gallery).resource_group
    for line in done.warnings:
        warn(line)
    if people:
        emit({k: v for k, v in _row(done).items() if k in COLUMNS}, output, COLUMNS)
    else:
        emit(shape(done, group), output)


def list_boxes(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    version: OptVersion = None,
    ids: IdsOpt = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The boxes exported from a version (export-box, export-boxes), oldest first; `present`
    says whether the file is still there with the size it was written with."""
    from dataclasses import asdict

    from sigvirt.cli.common import store
    from sigvirt.vagrant import index

    s = store()
    rows = []
    for ref in version_targets(ids, gallery, definition, version):
        rec = s.get_version(ref.gallery, ref.definition, ref.version or "")
        found = index.exported_boxes(s.root, rec.gallery, rec.definition, rec.name)
        rows += [{"version": rec.ref, **asdict(b)} for b in found]
    emit(rows, output, ["version", "file", "sha256", "exported", "present"], title="boxes")


def _row(e: Exported) -> dict[str, Any]:
    return {
        "file": str(e.file),
        "sha256": e.sha256,
        "size": e.size,
        "version": e.version,
        "region": e.region,
        "seconds": e.seconds.get("total", 0.0),
    }


def export_boxes(
    directory: DirOpt,
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    ids: IdsOpt = None,
    base_url: BaseUrlOpt = "",
    region: RegionOpt = None,
    dry_run: DryRunOpt = False,
    timeout: TimeoutOpt = 900.0,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Export a definition as a Vagrant box catalog: one box per published version and
    DIR/catalog.json (`vagrant box add DIR/catalog.json`, then `vagrant box outdated` and
    `vagrant box update` follow the gallery). A rerun exports only new versions and drops
    the boxes of versions deleted from the gallery. --dry-run prints the plan only."""
    from sigvirt.vagrant import catalog

    ((g, d),) = definition_targets(ids, gallery, definition)
    people = for_people(output)
    with context() as ctx:
        plan = catalog.plan_catalog(ctx, g, d, directory, base_url, region)
        result = (
            None
            if dry_run
            else catalog.apply_catalog(ctx, plan, timeout=timeout, on_step=note if people else None)
        )
    if result is not None:
        for line in result.warnings:
            warn(line)
    rows = [{"step": i + 1, "action": a} for i, a in enumerate(plan.actions())]
    if people:
        title = f"export-boxes {plan.name}" + (" (dry run)" if result is None else "")
        emit(rows, output, ["step", "action"], title=title)
        if result is not None:
            note(f"vagrant box add {plan.directory / catalog.CATALOG}")
    else:
        emit(_catalog_shape(plan, result), output)


def _catalog_shape(plan: CatalogPlan, result: CatalogResult | None) -> dict[str, Any]:
    return {
        "name": plan.name,
        "directory": str(plan.directory),
        "dryRun": result is None,
        "actions": plan.actions(),
        "catalog": None if result is None else result.catalog,
        "exported": [] if result is None else [_row(e) for e in result.exported],
    }
