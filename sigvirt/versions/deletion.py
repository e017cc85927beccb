"""Deleting a version: the plan (what `--dry-run` prints), then the same plan carried out.

A delete is one of two things, decided by the version's gallery:
- **soft** (the gallery has soft delete on, and the version is published): the record moves
  to `soft-deleted` — not listed, not deployable, not latest — and every replica stays, with
  its ACLs, until `undelete` restores it or `sig gc` purges it after the gallery's retention;
- **hard**: the record says `deleting` (and each replica too) before a byte is removed, so a
  killed delete leaves a version nothing deploys and that `latest` skips, which the next
  delete finishes. A region that does not answer keeps its replicas: the record moves to
  `pending-deletion` (gone for users) and `sig gc` removes them there when it answers.

Refused, before anything changes: while a clone depends on a replica (asked of each region's
libvirt: a region that doesn't answer can't tell, so its replicas wait — a later gc asks
again before it removes them), and by the version's safety profile (versions/safety.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass

from sigvirt import faults
from sigvirt.catalog.names import ImageRef
from sigvirt.catalog.plans import Action, Journal, Plan, note
from sigvirt.catalog.records import ImageVersion, Replica, ReplicaState, VersionState, now
from sigvirt.catalog.store import CorruptRecord
from sigvirt.context import Context
from sigvirt.errors import HasDependents, RegionUnavailable
from sigvirt.versions import copies, dependents, replication
from sigvirt.versions.publish import clean_stale_claims

# Errors that mean "this region did not answer" (its replicas wait; nothing else does).
UNREACHABLE = (RegionUnavailable,)
_COMMAND = "image-version delete"


def _deleting(ref: str) -> Action:
    return Action("update-record", "version", ref, detail="deleting")


def _removed(r: Replica, size: int) -> Action:
    return Action("delete-volume", "replica", r.volume, r.region, r.pool, r.path, size)


def _waits(r: Replica) -> Action:
    return Action("update-record", "replica", r.volume, r.region, r.pool, r.path,
                  detail="pending: its region does not answer")  # fmt: skip


def _pending(ref: str) -> Action:
    return Action("update-record", "version", ref, detail="pending-deletion")


def _gone(ref: str) -> Action:
    return Action("delete-record", "version", ref)


@dataclass(frozen=True)
class DeletePlan:
    """What deleting one version does. `mode` is soft or hard; `replicas` are the files a
    hard delete removes (a soft one keeps them); `unreachable` are regions whose replicas
    would stay, pending, because their host did not answer while the plan was made."""

    version: str  # G/D/V
    mode: str  # soft | hard
    state: str  # the version's state now
    replicas: tuple[Replica, ...]
    unreachable: tuple[str, ...] = ()
    retention_days: int = 0  # soft: how long the recycle bin keeps it
    allocated: int = 0  # bytes of one replica (the record's)

    def to_plan(self, *, dry_run: bool = True) -> Plan:
        """The plan as data (catalog/plans.py): one action per change, in order."""
        ref = self.version
        if self.mode == "soft":
            keep = f"soft-deleted; {len(self.replicas)} replica(s) kept"
            return Plan(_COMMAND, ref, (Action("update-record", "version", ref, detail=keep),),
                        dry_run)  # fmt: skip
        out = [_deleting(ref)]
        for r in self.replicas:
            if r.location not in self.unreachable:
                out.append(_removed(r, self.allocated))
            elif r.verified:  # unverified: no bytes anyone trusts to wait for
                out.append(_waits(r))
        out.append(_pending(ref) if self.pending else _gone(ref))
        return Plan(_COMMAND, ref, tuple(out), dry_run)

    @property
    def pending(self) -> bool:
        return any(r.location in self.unreachable and r.verified for r in self.replicas)


def plan(ctx: Context, rec: ImageVersion, *, purge: bool = False) -> DeletePlan:
    """The delete of `rec` as it would happen now; raises what would refuse it. `purge`: a
    hard delete whatever the gallery says (gc purging the recycle bin)."""
    from sigvirt.versions import safety

    gallery = ctx.store.get_gallery(rec.gallery)
    live = tuple(r for r in rec.replicas if r.state != ReplicaState.DELETING)
    unreachable: list[str] = []
    found: list[dependents.Dependent] = []
    for region in sorted({r.location for r in live}):  # each zone's host is asked
        paths = [r.path for r in live if r.location == region]
        try:
            found += dependents.find(ctx.hv(region), paths)
        except UNREACHABLE:
            unreachable.append(region)
    if found:
        raise HasDependents(
            f"image version {rec.ref} has dependents: "
            + ", ".join(f"{d.kind} {d.name}" for d in found),
            hint=dependents.how_to_release(found),
        )
    if not purge and rec.state != VersionState.SOFT_DELETED:
        safety.check_delete(rec)
    soft = gallery.soft_delete and not purge and rec.state == VersionState.SUCCEEDED
    if soft:
        return DeletePlan(
            rec.ref, "soft", rec.state.value, live, (), gallery.soft_delete_retention_days,
            rec.allocated_size,
        )  # fmt: skip
    # Replicas never verified hold no bytes anyone trusts: in an unreachable region they are
    # forgotten (their partials are gc's to find) and don't keep the record.
    return DeletePlan(
        rec.ref, "hard", rec.state.value, rec.replicas, tuple(unreachable),
        allocated=rec.allocated_size,
    )  # fmt: skip


def apply(
    ctx: Context, rec: ImageVersion, p: DeletePlan, journal: Journal | None = None
) -> ImageVersion:
    """Carry out `p` on `rec` (the caller holds the version's op lock and made `p` under it),
    reporting each change to `journal`; the record as it is left: soft-deleted,
    pending-deletion, or as it was before its removal."""
    g, d, v = rec.gallery, rec.definition, rec.name
    if p.mode == "soft":
        stamp = now()
        out = ctx.store.update_version(
            g, d, v, lambda cur: cur.moved(VersionState.SOFT_DELETED, soft_deleted=stamp)
        )
        note(journal, p.to_plan().actions[0])
        faults.point("version.soft-deleted")
        return out
    rec = _mark_deleting(ctx, rec)
    note(journal, _deleting(rec.ref))
    faults.point("version.deleting")
    return remove_replicas(ctx, rec, {r.key for r in rec.replicas}, journal)


def remove_replicas(
    ctx: Context, rec: ImageVersion, keys: set[tuple[str, str]], journal: Journal | None = None
) -> ImageVersion:
    """Remove the files of a `deleting` (or `pending-deletion`) version's replicas in `keys`,
    then its record; a region that doesn't answer keeps its replicas on the record, which
    becomes (or stays) `pending-deletion`. Caller holds the op lock."""
    g, d, v = rec.gallery, rec.definition, rec.name
    left = [r for r in rec.replicas if r.key not in keys]  # held: they wait too
    why = ["a clone still depends on it"] if left else []
    for r in rec.replicas:
        if r.key not in keys:
            continue
        try:
            copies.remove_files(ctx.hv(r.location), r.pool, r.volume)
            note(journal, _removed(r, rec.allocated_size))
        except UNREACHABLE as err:
            if r.verified:  # bytes may be there: the host must answer before we forget it
                left.append(r)
                why.append(err.message)
                note(journal, _waits(r))
        faults.point("version.replica-removed")
    if left:
        reason = "; ".join(dict.fromkeys(why))

        def pending(cur: ImageVersion) -> ImageVersion:
            return cur.moved(VersionState.PENDING_DELETION, replicas=tuple(left), reason=reason)

        out = ctx.store.update_version(g, d, v, pending, hidden=True)
        note(journal, _pending(rec.ref))
        faults.point("version.pending")
        return out
    with ctx.store.definition_lock(g, d):
        ctx.store.remove_version_record(g, d, v)
    note(journal, _gone(rec.ref))
    return rec


def _mark_deleting(ctx: Context, rec: ImageVersion) -> ImageVersion:
    def change(cur: ImageVersion) -> ImageVersion:
        reps = tuple(
            r if r.state == ReplicaState.DELETING else replication.retire(r) for r in cur.replicas
        )
        if cur.state == VersionState.DELETING:
            return dataclasses.replace(cur, replicas=reps)
        return cur.moved(VersionState.DELETING, replicas=reps)

    return ctx.store.update_version(rec.gallery, rec.definition, rec.name, change, hidden=True)


def finish_pending(ctx: Context, rec: ImageVersion) -> ImageVersion | None:
    """Try a pending deletion again (gc), or finish one a kill interrupted (`deleting`, its op
    lock free): each remaining replica goes if its region answers and nothing depends on it;
    the record goes with the last. None when it is gone."""
    with ctx.store.version_operation(rec.gallery, rec.definition, rec.name):
        cur = ctx.store.get_version(rec.gallery, rec.definition, rec.name, hidden=True)
        if cur.state not in (VersionState.PENDING_DELETION, VersionState.DELETING):
            return cur
        keys = set()
        for r in cur.replicas:
            with contextlib.suppress(*UNREACHABLE):
                if not dependents.find(ctx.hv(r.location), [r.path]):
                    keys.add(r.key)
        if not keys and cur.replicas:
            return cur
        cur = ctx.store.update_version(
            cur.gallery, cur.definition, cur.name,
            lambda c: c.moved(VersionState.DELETING), hidden=True,
        )  # fmt: skip
        out = remove_replicas(ctx, cur, keys)
        return None if out.state == VersionState.DELETING else out


def delete(
    ctx: Context,
    ref: ImageRef,
    *,
    force: bool = False,
    purge: bool = False,
    journal: Journal | None = None,
) -> tuple[DeletePlan | None, ImageVersion | None]:
    """`image-version delete`: the plan made under the version's op lock, then carried out;
    the plan and the record as left. `force` removes a record that doesn't parse, with the
    replica files its name identifies (the plan is None then)."""
    assert ref.version is not None
    clean_stale_claims(ctx, ref.gallery, ref.definition)
    try:
        rec = ctx.store.get_version(ref.gallery, ref.definition, ref.version, hidden=purge)
    except CorruptRecord:
        if not force:
            raise
        force_delete(ctx, ref)
        return None, None
    ctx.store.require(ref.gallery, "owner", f"{ref.definition}/{rec.name}", "delete")
    with ctx.store.version_operation(rec.gallery, rec.definition, rec.name):
        rec = ctx.store.get_version(ref.gallery, ref.definition, ref.version, hidden=purge)
        p = plan(ctx, rec, purge=purge)
        return p, apply(ctx, rec, p, journal)


def dry_run(ctx: Context, ref: ImageRef) -> DeletePlan:
    """The plan `delete` would carry out now; nothing is written."""
    assert ref.version is not None
    rec = ctx.store.get_version(ref.gallery, ref.definition, ref.version)
    ctx.store.require(ref.gallery, "owner", f"{ref.definition}/{rec.name}", "delete")
    return plan(ctx, rec)


def force_delete(ctx: Context, ref: ImageRef) -> None:
    """A damaged record and the files its name identifies; nothing a clone still uses."""
    assert ref.version is not None
    ctx.store.require(ref.gallery, "owner", f"{ref.definition}/{ref.version}", "delete")
    prefix = f"{ref.gallery}-{ref.definition}-{ref.version}-"
    with ctx.store.version_operation(ref.gallery, ref.definition, ref.version):
        for name in ctx.regions.locations():
            hv, cfg = ctx.hv(name), ctx.regions.region(name)
            for pool in cfg.pools:
                for vol in hv.volumes(pool.name):
                    base = vol.name.removeprefix(".").removesuffix(".partial")
                    if base.startswith(prefix) and base.endswith(".qcow2"):
                        if dependents.find(hv, [vol.path]):
                            raise HasDependents(
                                f"{vol.path} is still a backing file; release its clones first"
                            )
                        vol.delete()
        with ctx.store.definition_lock(ref.gallery, ref.definition):
            ctx.store.remove_version_record(ref.gallery, ref.definition, ref.version)
