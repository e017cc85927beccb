"""The recycle bin (Azure's gallery soft delete): what is in it, undelete, and when it may
be purged.

A gallery with soft delete on keeps what its owners delete — a published version with all
its replicas, or a definition — in its place, in state soft-deleted (store.py hides it from
every read). Undelete puts the record back as it was: the replicas never moved and kept
their ACLs, so records, files and sharing are exactly what they were. After the gallery's
retention, `sig gc` purges it (versions/deletion.py, a hard delete). While it is in the bin
its name can't be reused (Azure's rule).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta

from sigvirt.catalog.names import ImageRef
from sigvirt.catalog.plans import Action, Plan
from sigvirt.catalog.records import Definition, Gallery, ImageVersion, VersionState, now
from sigvirt.context import Context
from sigvirt.errors import Conflict, HasDependents, NotFound
from sigvirt.versions import deletion


def purge_after(gallery: Gallery, since: str) -> datetime | None:
    """When an item soft-deleted at `since` may be purged (None: the stamp doesn't parse,
    so gc keeps it and says why)."""
    try:
        return datetime.fromisoformat(since) + timedelta(days=gallery.soft_delete_retention_days)
    except ValueError:
        return None


@dataclass(frozen=True)
class BinEntry:
    """One item of a gallery's recycle bin."""

    kind: str  # version | definition
    ref: str  # G/D/V or G/D
    deleted: str  # when it was soft-deleted
    purge_after: str  # when gc may purge it
    replicas: int = 0
    bytes: int = 0  # the record's allocated bytes times its replicas


def _entry(gallery: Gallery, kind: str, ref: str, since: str, reps: int, size: int) -> BinEntry:
    when = purge_after(gallery, since)
    return BinEntry(kind, ref, since, when.isoformat() if when else "unknown", reps, size)


def list_versions(ctx: Context, g: str, d: str) -> list[BinEntry]:
    """`image-version list-soft-deleted`: the definition's versions in the bin."""
    gallery = ctx.store.get_gallery(g)
    ctx.store.get_definition(g, d)
    return [
        _entry(
            gallery,
            "version",
            v.ref,
            v.soft_deleted,
            len(v.replicas),
            v.allocated_size * len(v.replicas),
        )
        for v in ctx.store.list_versions(g, d, hidden=True)
        if v.state == VersionState.SOFT_DELETED
    ]


def list_definitions(ctx: Context, g: str) -> list[BinEntry]:
    """`image-definition list-soft-deleted`: the gallery's definitions in the bin."""
    gallery = ctx.store.get_gallery(g)
    return [
        _entry(gallery, "definition", f"{g}/{d.name}", d.soft_deleted, 0, 0)
        for d in ctx.store.list_definitions(g, hidden=True)
        if d.soft_deleted
    ]


# -- versions ---------------------------------------------------------------------------------
def undelete_plan(ctx: Context, ref: ImageRef) -> tuple[ImageVersion, Plan]:
    """The version in the bin and what undeleting it does; raises what would refuse it."""
    assert ref.version is not None
    ctx.store.get_definition(ref.gallery, ref.definition)  # a binned definition first
    rec = ctx.store.get_version(ref.gallery, ref.definition, ref.version, hidden=True)
    ctx.store.require(ref.gallery, "owner", f"{ref.definition}/{rec.name}", "undelete")
    if rec.state != VersionState.SOFT_DELETED:
        raise NotFound(f"image version {rec.ref} is not soft-deleted (it is {rec.state})")
    act = Action("update-record", "version", rec.ref,
                 detail=f"succeeded; {len(rec.replicas)} replica(s) deployable again")  # fmt: skip
    return rec, Plan("image-version undelete", rec.ref, (act,))


def undelete_version(ctx: Context, ref: ImageRef) -> tuple[ImageVersion, Plan]:
    """Put a soft-deleted version back exactly as it was; the record and the plan carried
    out. (A replica gc found gone while it was in the bin was marked corrupt, and stays so:
    heal copies it again.)"""
    rec, p = undelete_plan(ctx, ref)
    with ctx.store.version_operation(rec.gallery, rec.definition, rec.name):
        rec, p = undelete_plan(ctx, ref)  # again, under the lock
        out = ctx.store.update_version(
            rec.gallery, rec.definition, rec.name,
            lambda cur: cur.moved(VersionState.SUCCEEDED, soft_deleted=""), hidden=True,
        )  # fmt: skip
    return out, dataclasses.replace(p, dry_run=False)


# -- definitions ------------------------------------------------------------------------------
def delete_definition_plan(ctx: Context, g: str, d: str) -> Plan:
    """What `image-definition delete` does: into the bin (soft delete on), or removed."""
    gallery = ctx.store.get_gallery(g)
    ctx.store.get_definition(g, d)
    ctx.store.require(g, "owner", d, "delete")
    live = [v.name for v in ctx.store.list_versions(g, d)]
    if live:
        raise HasDependents(
            f"image definition {g}/{d} still has versions: {', '.join(live)}; delete them first"
        )
    ref = f"{g}/{d}"
    if gallery.soft_delete:
        act = Action("update-record", "definition", ref, detail="soft-deleted")
    else:
        act = Action("delete-record", "definition", ref)
    return Plan("image-definition delete", ref, (act,))


def delete_definition(ctx: Context, g: str, d: str) -> Plan:
    """`image-definition delete`: the plan, carried out (the store re-checks under its lock
    that no version appeared meanwhile)."""
    p = delete_definition_plan(ctx, g, d)
    if p.actions[0].verb == "delete-record":
        ctx.store.delete_definition(g, d)
    else:
        stamp = now()

        def binned(cur: Definition) -> Definition:
            if any(v.state not in (VersionState.SOFT_DELETED, VersionState.PENDING_DELETION)
                   for v in ctx.store.list_versions(g, d, hidden=True)):  # fmt: skip
                raise HasDependents(f"image definition {g}/{d} got a version meanwhile")
            return dataclasses.replace(cur, soft_deleted=stamp)

        ctx.store.update_definition(g, d, binned)
    return dataclasses.replace(p, dry_run=False)


def undelete_definition_plan(ctx: Context, g: str, d: str) -> tuple[Definition, Plan]:
    rec = ctx.store.get_definition(g, d, hidden=True)
    ctx.store.require(g, "owner", d, "undelete")
    if not rec.soft_deleted:
        raise NotFound(f"image definition {g}/{d} is not soft-deleted")
    triple = (rec.publisher.lower(), rec.offer.lower(), rec.sku.lower())
    for other in ctx.store.list_definitions(g):
        if (other.publisher.lower(), other.offer.lower(), other.sku.lower()) == triple:
            raise Conflict(
                f"image definition {g}/{d} can't come back: its publisher/offer/sku "
                f"{rec.publisher}/{rec.offer}/{rec.sku} is now used by {other.name}"
            )
    act = Action("update-record", "definition", f"{g}/{d}", detail="restored")
    return rec, Plan("image-definition undelete", f"{g}/{d}", (act,))


def undelete_definition(ctx: Context, g: str, d: str) -> tuple[Definition, Plan]:
    """Put a soft-deleted definition back; its soft-deleted versions stay in the bin (each
    is undeleted on its own, as in Azure)."""
    _rec, p = undelete_definition_plan(ctx, g, d)
    out = ctx.store.update_definition(
        g, d, lambda cur: dataclasses.replace(cur, soft_deleted=""), hidden=True
    )
    return out, dataclasses.replace(p, dry_run=False)


# -- purge (sig gc) ---------------------------------------------------------------------------
def purge_version(ctx: Context, ref: ImageRef, at: datetime) -> str:
    """Purge a soft-deleted version whose retention ended by `at`, checked again under its
    op lock; what became of it: purged, pending (a region didn't answer), changed (it is no
    longer in the bin), young (its retention runs on)."""
    assert ref.version is not None
    with ctx.store.version_operation(ref.gallery, ref.definition, ref.version):
        rec = ctx.store.get_version(ref.gallery, ref.definition, ref.version, hidden=True)
        if rec.state != VersionState.SOFT_DELETED:
            return "changed"
        until = purge_after(ctx.store.get_gallery(ref.gallery), rec.soft_deleted)
        if until is None or until > at:
            return "young"
        p = deletion.plan(ctx, rec, purge=True)  # HasDependents: a clone appeared
        out = deletion.apply(ctx, rec, p)
    return "pending" if out.state == VersionState.PENDING_DELETION else "purged"


def purge_definition(ctx: Context, g: str, d: str, at: datetime) -> str:
    """Purge a soft-deleted definition whose retention ended by `at`: its versions in the
    bin first (whatever their own retention), then the definition, unless a version waits
    for a region (pending) or is live again (changed)."""
    rec = ctx.store.get_definition(g, d, hidden=True)
    until = purge_after(ctx.store.get_gallery(g), rec.soft_deleted)
    if not rec.soft_deleted:
        return "changed"
    if until is None or until > at:
        return "young"
    for v in ctx.store.list_versions(g, d, hidden=True):
        if v.state == VersionState.SOFT_DELETED:
            with ctx.store.version_operation(g, d, v.name):
                cur = ctx.store.get_version(g, d, v.name, hidden=True)
                if cur.state == VersionState.SOFT_DELETED:
                    deletion.apply(ctx, cur, deletion.plan(ctx, cur, purge=True))
    left = ctx.store.list_versions(g, d, hidden=True)
    if any(v.state == VersionState.PENDING_DELETION for v in left):
        return "pending"
    if left:
        return "changed"
    ctx.store.delete_definition(g, d, hidden=True)
    return "purged"
