"""`sigvirt sig space` (where the disk space went) and `sigvirt sig gc` (garbage collection).

JSON for scripts (stable keys, camelCase as az's are; sizes in bytes, null where a host
didn't answer), tables for people.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sigvirt.catalog.plans import Action, Plan
from sigvirt.cli import plans
from sigvirt.cli.common import ResourceGroupOpt, context
from sigvirt.cli.render import Output, OutputOpt, emit, for_people, note, warn

if TYPE_CHECKING:  # the library loads libvirt: only when a command runs
    from sigvirt.lifecycle.gc import GcPlan
    from sigvirt.lifecycle.space import SpaceReport

RegionOpt = Annotated[
    str | None, typer.Option("--location", "-l", help="only this region (default: every one)")
]


def register(app: typer.Typer) -> None:
    """Add `space` and `gc` to the `sig` group (once, however often it is called)."""
    have = {c.name for c in app.registered_commands}
    if "space" not in have:
        app.command("space")(space)
    if "gc" not in have:
        app.command("gc")(gc)


# -- sizes for people ---------------------------------------------------------------------------
def size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= scale:
            return f"{s // scale}{unit}"
    return f"{s}s"


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


# -- sig space ----------------------------------------------------------------------------------
def space_json(r: SpaceReport) -> dict[str, Any]:
    """The report's JSON shape (documented in the README; scripts rely on it)."""
    return {
        "versions": [
            {
                "version": v.version,
                "region": v.region,
                "reachable": v.reachable,
                "detail": v.detail,
                "virtualSize": v.virtual_size,
                "replicas": [
                    {
                        "volume": x.volume,
                        "pool": x.pool,
                        "path": x.path,
                        "state": x.state,
                        "present": x.present,
                        "allocated": x.allocated,
                        "fileSize": x.file_size,
                        "virtualSize": x.virtual_size,
                    }
                    for x in v.replicas
                ],
                "replicaBytes": v.replica_bytes,
                "clones": [
                    {
                        "path": c.path,
                        "volume": c.volume,
                        "replica": c.replica,
                        "domains": list(c.domains),
                        "allocated": c.allocated,
                    }
                    for c in v.clones
                ],
                "cloneBytes": v.clone_bytes,
                "state": v.state,
                "softDeleted": v.soft_deleted,
                "freedByDelete": v.freed_by_delete,
            }
            for v in r.versions
        ],
        "pools": [
            {
                "region": p.region,
                "pool": p.pool,
                "status": p.status,
                "path": p.path,
                "capacity": p.capacity,
                "allocation": p.allocation,
                "available": p.available,
                "detail": p.detail,
            }
            for p in r.pools
        ],
    }


def _space_tables(r: SpaceReport) -> None:
    versions = [
        {
            "version": v.version,
            "region": v.region,
            "virtual": size(v.virtual_size) if v.reachable else "",
            "replicas": f"{sum(bool(x.present) for x in v.replicas)}/{len(v.replicas)}"
            if v.reachable else "unreachable",
            "allocated": size(v.replica_bytes) if v.reachable else "",
            "clones": len(v.clones) if v.reachable else "",
            "clone_bytes": size(v.clone_bytes) if v.reachable else "",
            "delete_frees": size(v.freed_by_delete) if v.reachable else "",
            "detail": v.detail,
        }
        for v in r.versions
    ]  # fmt: skip
    emit(versions, Output.table, list(versions[0]) if versions else None, title="versions")
    pools = [
        {
            "region": p.region,
            "pool": p.pool,
            "status": p.status,
            "capacity": size(p.capacity),
            "used": size(p.allocation),
            "free": size(p.available),
            "detail": p.detail,
        }
        for p in r.pools
    ]
    emit(pools, Output.table, list(pools[0]) if pools else None, title="pools")


def space(
    scope: Annotated[
        str | None,
        typer.Argument(
            metavar="[GALLERY[/DEFINITION[/VERSION]]]",
            help="what to report on (default: every gallery you can see)",
        ),
    ] = None,
    location: RegionOpt = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Where the disk space went: replicas, the clones on them, pools (from the files)."""
    from sigvirt.lifecycle import space as lib

    with context() as ctx:
        r = lib.report(ctx, scope, location)
    for v in r.versions:
        if not v.reachable:
            warn(f"{v.version}: region {v.region} did not answer: {v.detail}")
    if for_people(output):
        _space_tables(r)
    else:
        emit(space_json(r), output, ready=True)


# -- sig gc -------------------------------------------------------------------------------------
def gc_json(p: GcPlan) -> dict[str, Any]:
    """The plan's JSON shape, the same with and without --yes (then with outcomes)."""
    return {
        "applied": p.applied,
        "time": _iso(p.now),
        "graceSeconds": p.grace,
        "reclaimable": p.reclaimable,
        "freed": p.freed,
        "items": [
            {
                "kind": i.kind,
                "region": i.region,
                "pool": i.pool,
                "volume": i.volume,
                "path": i.path,
                "version": i.version,
                "vm": i.vm,
                "action": i.action,
                "bytes": i.bytes,
                "modified": _iso(i.mtime),
                "ageSeconds": i.age,
                "outcome": i.outcome,
                "heldBy": list(i.held_by),
                "detail": i.detail,
            }
            for i in p.items
        ],
        "unreachable": [
            {"region": u.region, "pool": u.pool, "detail": u.detail} for u in p.unreachable
        ],
    }


# An item's action as a plan's verb (files are volumes; the recycle bin's purges and pending
# deletions remove records, and their files with them), and the outcomes that mean it was done.
GC_VERBS = {"delete": "delete-volume", "mark-corrupt": "update-record", "purge": "delete-record",
            "finish-delete": "delete-record"}  # fmt: skip
GC_DONE = ("removed", "marked", "purged")


def gc_plan(p: GcPlan) -> Plan:
    """A gc plan's planned items (or, once applied, the items it collected) as actions: the
    dry run's and the real run's are the same when gc did what it planned."""
    wanted = GC_DONE if p.applied else ("planned",)
    actions = []
    for i in p.items:
        if i.outcome not in wanted:
            continue
        verb = GC_VERBS.get(i.action, "update-record")
        on_file = i.action in ("delete", "mark-corrupt")
        target = i.volume if on_file else i.version
        kind = "replica" if i.action == "mark-corrupt" else i.kind
        detail = i.detail or ("mark corrupt" if i.action == "mark-corrupt" else i.action)
        actions.append(Action(verb, kind, target, i.region, i.pool, i.path, i.bytes, detail))
    return Plan("sig gc", "", tuple(actions), dry_run=not p.applied)


GC_COLUMNS = ["kind", "region", "volume", "owner", "size", "age", "action", "outcome", "detail"]


def gc(
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="collect what the plan lists (without: only list it)"),
    ] = False,
    grace: Annotated[
        str,
        typer.Option(
            "--grace",
            help="leave alone what changed more recently than this: seconds, or 90m, 1h, 2d",
        ),
    ] = "1h",
    location: RegionOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the plan as actions, change nothing "
                           "(wins over --yes)")
    ] = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:  # fmt: skip
    """Find (and with --yes remove) partials, orphan replicas, lost files, guests' leftovers.
    --dry-run prints what --yes would do as a plan (the same actions) and changes nothing."""
    from sigvirt.lifecycle import gc as lib

    seconds = lib.parse_grace(grace)
    with context() as ctx:
        p = lib.collect(ctx, yes=yes and not dry_run, region=location, grace=seconds)
    for u in p.unreachable:
        where = f"pool {u.pool} in region {u.region}" if u.pool else f"region {u.region}"
        warn(f"{where} was not collected: {u.detail}")
    if dry_run:
        plans.show(gc_plan(p), output)
        return
    if not for_people(output):
        emit(gc_json(p), output, ready=True)
        return
    rows = [
        {
            "kind": i.kind,
            "region": i.region,
            "volume": i.volume,
            "owner": i.version or i.vm,
            "size": size(i.bytes) if i.action == "delete" else "",
            "age": age(i.age),
            "action": i.action,
            "outcome": i.outcome,
            "detail": ", ".join(i.held_by) or i.detail,
        }
        for i in p.items
    ]
    emit(rows, output, GC_COLUMNS, title="garbage" if not p.applied else "collected")
    if p.applied:
        note(f"freed {size(p.freed)}")
    else:
        note(f"{size(p.reclaimable)} reclaimable; `sigvirt sig gc --yes` collects what is planned")
