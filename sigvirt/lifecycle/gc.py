"""Garbage collection: what killed runs, lost records and vanished domains leave in sigvirt's
pools, found as a plan, then removed only with --yes, only past a grace period, each item
checked again right before it goes.

Nova's image cache shows how to do this safely: mark from the real backing chains (libvirt's,
not a record's), leave young files alone (a copy or a boot in progress looks like garbage for
a moment), and re-check under the lock that the writers take. So:

- the plan is data: each item with its kind, file, bytes, age (the host's mtime) and what
  would happen to it; nothing is written while it is made;
- an item is acted on only if it is older than the grace period (the file's mtime as its
  host reports it, against this machine's clock: hosts keep time, and a skew well under the
  grace period changes nothing) and no domain or volume depends on it
  (versions/dependents.py, read from libvirt); right before each removal,
  under the version's op lock where it has one, the file is looked at again: still there,
  unchanged since the plan, still nobody's, still no dependents;
- a collector is a finder and an applier (COLLECTORS): soft-deleted items past their
  retention and deletions left pending in unreachable regions plug in as more of them.

A record whose completed replica's file is gone is marked corrupt ("its file is missing"),
exactly as a scrub marks it: `latest` and `vm create` stop choosing it at once, and
`image-version heal` copies it again from a good replica. gc doesn't copy (that is heal's
bandwidth, heal's locks and heal's report), and leaving the record as it is would keep a
replica deployable that can't be.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from sigvirt import faults
from sigvirt.catalog.fileio import CorruptRecord
from sigvirt.catalog.names import ImageRef
from sigvirt.catalog.records import Definition, Gallery, ImageVersion, ReplicaState, VersionState
from sigvirt.catalog.store import Damaged
from sigvirt.context import Context
from sigvirt.errors import (
    Conflict,
    HasDependents,
    InvalidArgument,
    NotFound,
    PermissionRefused,
    SigvirtError,
)
from sigvirt.hosts.hostrecords import VolumeFacts
from sigvirt.lifecycle.scan import (
    UNREACHABLE,
    RegionScan,
    guest_volume,
    host,
    partial_of,
    replica_name,
    scan_region,
)
from sigvirt.versions import deletion, dependents, recycle, targets

DEFAULT_GRACE = 3600.0  # seconds: no copy, import or boot leaves a file untouched that long
MISSING_REASON = "its file is missing (found by sig gc)"

# What becomes of an item. In a plan: planned (will be acted on), young (within the grace
# period), held (a domain or volume depends on it), kept (its record is damaged: who owns it
# can't be told). After --yes: removed, marked (a record), busy (another sigvirt process
# holds its version), gone (not there any more), owned (a record or domain claims it now),
# changed (rewritten since the plan), unreachable (its host stopped answering), failed
# (the host refused; the detail says why).
OUTCOMES = (
    "planned", "young", "held", "kept",
    "removed", "marked", "busy", "gone", "owned", "changed", "unreachable", "failed",
    "purged", "pending",
)  # fmt: skip
# Actions whose items wait out the grace period (a file's age); the recycle bin's purges wait
# out their gallery's retention instead, and a pending deletion waits for nothing.
GRACED = ("delete", "mark-corrupt")


@dataclass(frozen=True)
class Item:
    kind: str  # partial | orphan-replica | missing-file | guest-volume | soft-deleted | ...
    region: str
    pool: str
    volume: str
    path: str
    action: str  # delete | mark-corrupt | purge | finish-delete
    version: str = ""  # G/D/V the file or record belongs to (G/D: a definition)
    vm: str = ""  # guest-volume: the VM it was named after
    bytes: int = 0  # allocated on disk
    mtime: float | None = None  # the host's clock; for a record, when its replica last changed
    age: float | None = None  # seconds, at the plan's time
    outcome: str = "planned"
    held_by: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class Unreachable:
    region: str
    pool: str  # "" for the whole region
    detail: str


@dataclass(frozen=True)
class GcPlan:
    now: float  # when the plan was made (seconds since the epoch)
    grace: float
    applied: bool
    items: tuple[Item, ...]
    unreachable: tuple[Unreachable, ...] = ()

    @property
    def reclaimable(self) -> int:
        """Bytes the plan would free."""
        return sum(i.bytes for i in self.items if i.outcome == "planned" and i.action == "delete")

    @property
    def freed(self) -> int:
        return sum(i.bytes for i in self.items if i.outcome == "removed")


@dataclass
class Scan:
    """What the finders look at: every record, and the pools of every region in scope."""

    ctx: Context
    now: float
    grace: float
    regions: dict[str, RegionScan]
    versions: list[ImageVersion]
    damaged: tuple[str, ...] = ()  # name prefixes of damaged records: their files are kept
    owned: frozenset[str] = field(default_factory=frozenset)  # replica volumes records name
    binned: tuple[tuple[Gallery, Definition], ...] = ()  # definitions in a recycle bin
    region_only: bool = False  # gc limited to one region

    def configured(self, region: str) -> list[str]:
        return [p.name for p in self.ctx.regions.region(region).pools]

    def sigvirt_volumes(self) -> Iterator[tuple[RegionScan, str, VolumeFacts]]:
        """Every volume in the configured pools of each reachable region."""
        for region, rs in self.regions.items():
            if not rs.reachable:
                continue
            for pool in self.configured(region):
                for facts in rs.volumes.get(pool, {}).values():
                    yield rs, pool, facts

    def damaged_owner(self, volume: str) -> str:
        """The damaged record that may own `volume` or the partial of it ("" if none)."""
        name = partial_of(volume) or volume
        return next((p for p in self.damaged if name.startswith(p)), "")


def _age(scan: Scan, mtime: float | None) -> float | None:
    return None if mtime is None else round(scan.now - mtime, 3)


def _file_item(
    scan: Scan, kind: str, rs: RegionScan, facts: VolumeFacts, *, version: str = "", vm: str = ""
) -> Item:
    item = Item(
        kind, rs.region, facts.pool, facts.name, str(facts.path), "delete", version=version,
        vm=vm, bytes=facts.allocation, mtime=facts.mtime, age=_age(scan, facts.mtime),
    )  # fmt: skip
    if owner := scan.damaged_owner(facts.name):
        return replace(
            item, outcome="kept",
            detail=f"the record that may own it ({owner.rstrip('-')}) is damaged",
        )  # fmt: skip
    return item


# -- finders ------------------------------------------------------------------------------------
def find_partials(scan: Scan) -> Iterator[Item]:
    """`.NAME.partial` of a replica name: bytes of a copy or import that was killed."""
    for rs, _pool, facts in scan.sigvirt_volumes():
        base = partial_of(facts.name)
        name = replica_name(base, rs.region) if base else None
        if name is not None:
            yield _file_item(scan, "partial", rs, facts, version=name.ref)


def find_orphan_replicas(scan: Scan) -> Iterator[Item]:
    """Replica files no record names: what a lost or force-removed record left."""
    for rs, _pool, facts in scan.sigvirt_volumes():
        name = replica_name(facts.name, rs.region)
        if name is not None and facts.name not in scan.owned:
            yield _file_item(scan, "orphan-replica", rs, facts, version=name.ref)


def find_missing_files(scan: Scan) -> Iterator[Item]:
    """Completed replicas whose file is gone: deployable by the record, not on the disk."""
    for rec in scan.versions:
        for r in rec.replicas:
            rs = scan.regions.get(r.location)  # its host: each zone of a zoned region
            if r.state != ReplicaState.COMPLETED or rs is None or r.pool not in rs.volumes:
                continue  # a region or pool that wasn't read can't tell (listed unreachable)
            if r.volume in rs.volumes[r.pool]:
                continue
            when = _timestamp(r.updated or r.verified)
            yield Item(
                "missing-file", r.location, r.pool, r.volume, r.path, "mark-corrupt",
                version=rec.ref, mtime=when, age=_age(scan, when),
            )  # fmt: skip


def find_guest_volumes(scan: Scan) -> Iterator[Item]:
    """A guest's volumes whose domain is gone (any domain of that name keeps them). Only what
    the leftover sweep of `vm delete` would take as this installation's: in its pools, an
    overlay backed by a replica in them, a data disk backed by nothing, a seed, a console log."""
    for rs, _pool, facts in scan.sigvirt_volumes():
        found = guest_volume(facts.name)
        if found is None or found[0] in rs.domains:
            continue
        vm, what = found
        if what == "overlay":
            backing = Path(facts.backing) if facts.backing else None
            if backing is None or backing.parent not in rs.pool_dirs():
                continue
            if replica_name(backing.name, rs.region) is None:
                continue
        elif what == "data" and facts.backing is not None:
            continue
        yield _file_item(scan, "guest-volume", rs, facts, vm=vm)


def _timestamp(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


# -- appliers: each item checked again, right before it goes ------------------------------------
def _under_version(ctx: Context, item: Item, work: Callable[[], Item]) -> Item:
    """Run `work` holding the op lock of the item's version (creators, replicators and
    deleters hold it for the whole of their run). A version whose definition directory is
    gone has nobody at work on it: nothing to hold. The lock file of a version without a
    record is removed after (it would be litter)."""
    g, d, v = item.version.split("/")
    vdir = ctx.store.versions_dir(g, d)
    if not vdir.is_dir():
        return work()
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(ctx.store.version_operation(g, d, v))
            held = True
        except Conflict:
            return replace(item, outcome="busy", detail=f"image version {item.version} is busy")
        except NotFound:  # the definition went while we looked: nobody works on it
            held = False
        done = work()
        if held and not ctx.store.version_path(g, d, v).exists():
            # No record, and we hold its lock: nobody is at work on it (a lock is never
            # waited for, so nobody is about to be), as remove_version_record does.
            ctx.store.version_op_lock(g, d, v).unlink(missing_ok=True)
        return done


def _remove_file(ctx: Context, plan: GcPlan, item: Item) -> Item:
    """Delete the item's volume if it is still the file the plan saw and nobody's."""
    hv = host(ctx, item.region)
    try:
        facts = hv.volume(item.pool, item.volume).facts()
    except NotFound:
        return replace(item, outcome="gone", detail="not there any more")
    if facts.mtime != item.mtime or facts.mtime is None:
        return replace(item, outcome="changed", detail="written to since the plan")
    found = dependents.find(hv, [facts.path])
    if found:
        return replace(item, outcome="held", held_by=tuple(_who(found)))
    hv.volume(item.pool, item.volume).delete()
    faults.point("gc.removed")
    return replace(item, outcome="removed")


def remove_partial(ctx: Context, plan: GcPlan, item: Item) -> Item:
    return _under_version(ctx, item, lambda: _remove_file(ctx, plan, item))


def remove_orphan_replica(ctx: Context, plan: GcPlan, item: Item) -> Item:
    def work() -> Item:
        g, d, v = item.version.split("/")
        try:
            rec = ctx.store.get_version(g, d, v, hidden=True)
        except NotFound:
            rec = None
        except CorruptRecord as err:
            return replace(item, outcome="kept", detail=f"its record is damaged: {err.message}")
        if rec is not None and any(r.volume == item.volume for r in rec.replicas):
            return replace(item, outcome="owned", detail=f"image version {rec.ref} names it now")
        return _remove_file(ctx, plan, item)

    return _under_version(ctx, item, work)


def mark_missing(ctx: Context, plan: GcPlan, item: Item) -> Item:
    def work() -> Item:
        g, d, v = item.version.split("/")
        try:
            rec = ctx.store.get_version(g, d, v, hidden=True)
        except NotFound:
            return replace(item, outcome="gone", detail="its record is gone")
        except CorruptRecord as err:
            return replace(item, outcome="kept", detail=f"its record is damaged: {err.message}")
        key = (item.region, item.volume)  # the item's region is the replica's location
        now = next((r for r in rec.replicas if (r.location, r.volume) == key), None)
        if now is None or now.state != ReplicaState.COMPLETED:
            return replace(item, outcome="changed", detail="its record changed since the plan")
        hv = host(ctx, item.region)
        hv.refresh_pool(item.pool)
        if hv.volume_exists(item.pool, item.volume):
            return replace(item, outcome="changed", detail="its file is there again")

        def change(cur: ImageVersion) -> ImageVersion:
            reps = tuple(
                r.moved(ReplicaState.CORRUPT, reason=MISSING_REASON)
                if (r.location, r.volume) == key
                else r
                for r in cur.replicas
            )
            return dataclasses.replace(cur, replicas=reps)

        ctx.store.update_version(g, d, v, change, hidden=True)
        faults.point("gc.marked")
        return replace(item, outcome="marked", detail="corrupt: heal copies it again")

    return _under_version(ctx, item, work)


def find_binned_versions(scan: Scan) -> Iterator[Item]:
    """Soft-deleted versions: purged once their gallery's retention ends (a gc limited to
    one region leaves the recycle bin alone: a version spans regions)."""
    if scan.region_only:
        return
    for rec in scan.versions:
        if rec.state == VersionState.SOFT_DELETED:
            gallery = scan.ctx.store.get_gallery(rec.gallery)
            yield _bin_item(scan, "soft-deleted", rec.ref, gallery, rec.soft_deleted,
                            rec.allocated_size * len(rec.replicas))  # fmt: skip


def find_binned_definitions(scan: Scan) -> Iterator[Item]:
    if scan.region_only:
        return
    for gallery, d in scan.binned:
        yield _bin_item(scan, "soft-deleted-definition", f"{d.gallery}/{d.name}", gallery,
                        d.soft_deleted, 0)  # fmt: skip


def _bin_item(scan: Scan, kind: str, ref: str, gallery: Gallery, since: str, size: int) -> Item:
    when = recycle.purge_after(gallery, since)
    stamp = _timestamp(since)
    item = Item(kind, "", "", ref.rsplit("/", 1)[-1], "", "purge", version=ref, bytes=size,
                mtime=stamp, age=_age(scan, stamp))  # fmt: skip
    if when is None:
        return replace(item, outcome="kept", detail=f"its soft-delete time {since!r} is unreadable")
    if when.timestamp() > scan.now:
        return replace(item, outcome="young", detail=f"in the recycle bin until {when.isoformat()}")
    return replace(item, detail=f"retention ended {when.isoformat()}")


def find_pending(scan: Scan) -> Iterator[Item]:
    """Deletions that waited for a region, finished when it answers; and deletions a kill
    interrupted (`deleting`: a live one holds its op lock, and is left busy)."""
    for rec in scan.versions:
        if rec.state in (VersionState.PENDING_DELETION, VersionState.DELETING):
            regions = sorted({r.region for r in rec.replicas})
            yield Item(
                "pending-deletion", ",".join(regions), "", rec.name, "", "finish-delete",
                version=rec.ref, bytes=rec.allocated_size * len(rec.replicas),
                detail=rec.reason or f"a delete was interrupted (state {rec.state})",
            )  # fmt: skip


def purge_binned_version(ctx: Context, plan: GcPlan, item: Item) -> Item:
    at = datetime.fromtimestamp(plan.now, UTC)
    return _purged(item, lambda: recycle.purge_version(ctx, ImageRef(*item.version.split("/")), at))


def purge_binned_definition(ctx: Context, plan: GcPlan, item: Item) -> Item:
    g, d = item.version.split("/")
    at = datetime.fromtimestamp(plan.now, UTC)
    return _purged(item, lambda: recycle.purge_definition(ctx, g, d, at))


def _purged(item: Item, purge: Callable[[], str]) -> Item:
    """The item with what became of it: the purge's own outcome, or why there was none."""
    try:
        outcome = purge()
    except NotFound:
        return replace(item, outcome="gone", detail="its record is gone")
    except HasDependents as err:
        return replace(item, outcome="held", detail=err.message)
    except Conflict as err:
        return replace(item, outcome="busy", detail=err.message)
    return replace(item, outcome=outcome)


def finish_pending(ctx: Context, plan: GcPlan, item: Item) -> Item:
    g, d, v = item.version.split("/")
    try:
        rec = ctx.store.get_version(g, d, v, hidden=True)
    except NotFound:
        return replace(item, outcome="gone", detail="its record is gone")
    try:
        out = deletion.finish_pending(ctx, rec)
    except Conflict as err:
        return replace(item, outcome="busy", detail=err.message)
    if out is None:
        return replace(item, outcome="removed")
    if out.state not in (VersionState.PENDING_DELETION, VersionState.DELETING):
        return replace(item, outcome="changed", detail=f"it is {out.state} now")
    return replace(item, outcome="pending", detail=out.reason)


def remove_guest_volume(ctx: Context, plan: GcPlan, item: Item) -> Item:
    if host(ctx, item.region).domain_exists(item.vm):
        return replace(item, outcome="owned", detail=f"a domain {item.vm} exists now")
    return _remove_file(ctx, plan, item)


@dataclass(frozen=True)
class Collector:
    """One kind of garbage: how it is found (read-only) and how one item of it is collected."""

    kind: str
    find: Callable[[Scan], Iterable[Item]]
    apply: Callable[[Context, GcPlan, Item], Item]


COLLECTORS: tuple[Collector, ...] = (
    Collector("partial", find_partials, remove_partial),
    Collector("orphan-replica", find_orphan_replicas, remove_orphan_replica),
    Collector("missing-file", find_missing_files, mark_missing),
    Collector("guest-volume", find_guest_volumes, remove_guest_volume),
    Collector("soft-deleted", find_binned_versions, purge_binned_version),
    Collector("soft-deleted-definition", find_binned_definitions, purge_binned_definition),
    Collector("pending-deletion", find_pending, finish_pending),
)


# -- plan, then apply ---------------------------------------------------------------------------
def parse_grace(text: str) -> float:
    """`3600`, `90s`, `45m`, `1h30m`, `2d`, `1w`: seconds (a bare number is seconds)."""
    units = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    spec = text.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhdw]?)", spec)
    if not spec or "".join(n + u for n, u in parts) != spec:
        raise InvalidArgument(
            f"--grace {text!r}: give seconds or a duration such as 90m, 1h30m, 2d"
        )
    return sum(float(n) * units[u] for n, u in parts)


def _scan(ctx: Context, region: str | None, grace: float, now: float) -> Scan:
    caller = ctx.store.caller
    if caller is not None and not caller.is_root:
        raise PermissionRefused(
            "sig gc runs as root: a file is garbage only if no record of any gallery names it, "
            "and only root sees them all"
        )
    damaged: list[str] = []
    versions: list[ImageVersion] = []
    bad: list[Damaged] = []
    galleries = ctx.store.list_galleries(bad)
    damaged += [f"{b.name}-" for b in bad]
    binned: list[tuple[Gallery, Definition]] = []
    for gal in galleries:
        bad = []
        defs = ctx.store.list_definitions(gal.name, bad, hidden=True)
        binned += [(gal, d) for d in defs if d.soft_deleted]
        damaged += [f"{gal.name}-{b.name}-" for b in bad]
        for d in defs:
            bad = []
            try:
                versions += ctx.store.list_versions(gal.name, d.name, bad, hidden=True)
            except CorruptRecord:
                damaged.append(f"{gal.name}-{d.name}-")
            damaged += [f"{gal.name}-{d.name}-{b.name}-" for b in bad]
    in_scope = ctx.regions.locations(region)  # every host: each zone of a zoned region
    pools: dict[str, list[str]] = {r: [p.name for p in ctx.regions.region(r).pools]
                                   for r in in_scope}  # fmt: skip
    for rec in versions:
        for r in rec.replicas:
            if r.location in pools:
                pools[r.location].append(r.pool)
    regions = {r: scan_region(ctx, r, ps) for r, ps in pools.items()}
    owned = frozenset(r.volume for rec in versions for r in rec.replicas)
    return Scan(ctx, now, grace, regions, versions, tuple(damaged), owned, tuple(binned),
                region is not None)  # fmt: skip


def _who(found: list[dependents.Dependent]) -> list[str]:
    return list(dict.fromkeys(f"{d.kind} {d.name}" for d in found))


def _judge(scan: Scan, items: list[Item]) -> list[Item]:
    """Young or held, or planned: the grace period, then the dependents libvirt knows."""
    held: dict[str, list[dependents.Dependent]] = {}
    for region, rs in scan.regions.items():
        paths = [i.path for i in items if i.region == region and i.action == "delete"]
        if rs.hv is not None and paths:
            with contextlib.suppress(*UNREACHABLE):
                for dep in dependents.find(rs.hv, paths):
                    held.setdefault(dep.replica, []).append(dep)
    out = []
    for item in items:
        deps = held.get(str(Path(item.path)), []) if item.action == "delete" else []
        if item.outcome != "planned":
            out.append(item)
        elif deps:
            out.append(replace(item, outcome="held", held_by=tuple(_who(deps))))
        elif item.action in GRACED and (item.age is None or item.age < scan.grace):
            out.append(replace(item, outcome="young"))
        else:
            out.append(item)
    return out


def plan(
    ctx: Context,
    region: str | None = None,
    grace: float = DEFAULT_GRACE,
    now: float | None = None,
) -> GcPlan:
    """Everything gc would do, as data; nothing is written."""
    if grace < 0:
        raise InvalidArgument(f"--grace {grace:g}: must not be negative")
    only = targets.normalize_region(region, ctx.regions) if region else None
    scan = _scan(ctx, only, grace, time.time() if now is None else now)
    items = [item for c in COLLECTORS for item in c.find(scan)]
    unreachable = [Unreachable(r, "", rs.error) for r, rs in scan.regions.items() if rs.error]
    unreachable += [
        Unreachable(r, pool, why) for r, rs in scan.regions.items()
        for pool, why in rs.pool_errors.items()
    ]  # fmt: skip
    return GcPlan(scan.now, grace, False, tuple(_judge(scan, items)), tuple(unreachable))


def apply(ctx: Context, p: GcPlan) -> GcPlan:
    """Collect the plan's planned items, each checked again first; the plan with outcomes."""
    by_kind = {c.kind: c for c in COLLECTORS}
    faults.point("gc.planned")
    out = []
    for item in p.items:
        if item.outcome != "planned":
            out.append(item)
            continue
        try:
            out.append(by_kind[item.kind].apply(ctx, p, item))
        except UNREACHABLE as err:
            out.append(replace(item, outcome="unreachable", detail=err.message))
        except SigvirtError as err:
            out.append(replace(item, outcome="failed", detail=err.message))
    return replace(p, applied=True, items=tuple(out))


def collect(
    ctx: Context,
    *,
    yes: bool = False,
    region: str | None = None,
    grace: float = DEFAULT_GRACE,
    now: float | None = None,
) -> GcPlan:
    """`sig gc`: the plan; with yes, the plan carried out."""
    p = plan(ctx, region, grace, now)
    return apply(ctx, p) if yes else p
