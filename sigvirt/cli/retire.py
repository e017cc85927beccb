"""`sigvirt sig image-version retire`: move everything off a version, then delete it.

The plan comes first (scale sets to move and where, VMs to flatten, replicas to delete, the
bytes that frees); `--dry-run` prints it and changes nothing, the real run prints the same
plan with the actions it took (`done`), which are the plan's `actions`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from sigvirt.catalog import azureid
from sigvirt.cli.common import (
    IdsOpt,
    OptDefinition,
    OptGallery,
    OptVersion,
    ResourceGroupOpt,
    YesOpt,
    context,
    present,
    version_targets,
)
from sigvirt.cli.plans import DryRunOpt
from sigvirt.cli.render import Output, OutputOpt, for_people, note

if TYPE_CHECKING:
    from sigvirt.rollouts.retire import RetirePlan


def register(app: typer.Typer) -> None:
    """Add `retire` to the image-version commands once (main() runs many times in one
    process, and assemble() with it)."""
    if not any(c.name == "retire" for c in app.registered_commands):
        app.command("retire")(version_retire)


def shape(p: RetirePlan, group: str, done: tuple[str, ...] | None) -> dict[str, Any]:
    """The plan as JSON; `done` (the actions taken) is null in a dry run."""
    g, d, v = p.version.split("/")
    return {
        "id": azureid.version_id(group, g, d, v),
        "version": p.version,
        "dryRun": done is None,
        "scaleSets": [
            {
                "name": m.scale_set,
                "location": m.region,
                "toVersion": m.to_version,
                "instances": list(m.instances),
                "repointModel": m.repin,
            }
            for m in p.moves
        ],
        "flatten": [{"name": f.vm, "location": f.region} for f in p.flattens],
        "replicas": [
            {"location": r.region, "pool": r.pool, "volume": r.volume, "bytes": r.bytes}
            for r in p.replicas
        ],
        "bytesFreed": p.bytes_freed,
        "actions": p.actions(),
        "done": None if done is None else list(done),
    }


def version_retire(
    gallery: OptGallery = None,
    definition: OptDefinition = None,
    version: OptVersion = None,
    ids: IdsOpt = None,
    dry_run: DryRunOpt = False,
    yes: YesOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Retire a version: move its scale sets to the newest version above it (rolling
    upgrades), flatten the VMs on it, then delete it and its replicas. --dry-run prints
    the plan only. Refused when a scale set has no newer version to go to."""
    from sigvirt.rollouts import retire

    refs = version_targets(ids, gallery, definition, version)
    if len(refs) != 1:
        from sigvirt.errors import InvalidArgument

        raise InvalidArgument("retire takes one version: give one --ids")
    with context() as ctx:
        p = retire.plan(ctx, refs[0])
        group = resource_group or ctx.store.get_gallery(refs[0].gallery).resource_group
        done = None if dry_run else retire.apply(ctx, p).done
    rows = [{"step": i + 1, "action": a, "done": done is not None and a in done}
            for i, a in enumerate(p.actions())]  # fmt: skip
    present(shape(p, group, done), rows, output, ["step", "action", "done"],
            title=f"retire {p.version}" + (" (dry run)" if done is None else ""))  # fmt: skip
    if for_people(output):
        note(f"{p.bytes_freed} bytes freed" + (" (when applied)" if done is None else ""))
