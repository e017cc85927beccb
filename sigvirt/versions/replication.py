"""Replicas across regions: apply a plan to the record, then bring every replica to
completed, region by region in parallel; resume whatever a killed run left.

A replica counts only once the sha256 of what was written equals the version's and it sits
under its final name; until then it lives as `.NAME.partial`. The first copy into a region
comes from another region (bytes cross hosts once), further copies in that region come
from a replica already there. Which region a first copy comes from, and how many streams
a host sends and receives at once, is the fan-out scheduler's choice (`fanout.py`): every
region with a completed replica serves the others, so many regions fill like a tree rather
than all from the source host. A failing region fails only its own replicas, each with its
reason and exit code; running again re-plans from the target regions and resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable

from sigvirt import faults
from sigvirt.catalog.fileio import lock_is_held
from sigvirt.catalog.plans import Action, Journal, note
from sigvirt.catalog.records import (
    REPLICA_TRANSITIONS,
    ImageVersion,
    Replica,
    ReplicaState,
    aggregate,
)
from sigvirt.context import Context
from sigvirt.errors import (
    Conflict,
    ExitCode,
    NotFound,
    RegionUnavailable,
    ReplicationFailed,
    SigvirtError,
)
from sigvirt.hosts.regions import split_location
from sigvirt.versions import copies, targets
from sigvirt.versions.copies import remove_files, remove_partial
from sigvirt.versions.fanout import Fanout, FanoutGate, FanoutPolicy
from sigvirt.versions.targets import Plan, blocked_error, replica_index
from sigvirt.versions.transfer import ChecksumMismatch

ReplicaProgress = Callable[[Replica, int, int], None]  # (replica, bytes done, total)
BUSY = (ReplicaState.PENDING, ReplicaState.COPYING, ReplicaState.VERIFYING)
RECORD_PROGRESS_EVERY = 2.0  # seconds: each record write is an fsync'd rename
REPLICATOR_GONE_AFTER = 10.0  # seconds without a replicator before `wait` gives up


class StillReplicating(Conflict):
    template = "image version {ref}: {detail}"


class ReplicationTimedOut(StillReplicating):
    exit_code = ExitCode.TIMED_OUT


class RecordWriteFailed(Exception):
    """A record update failed (the catalog's disk is full, its files unreadable): the run
    must fail with that error, never carry on as if the state were written."""

    def __init__(self, err: SigvirtError) -> None:
        super().__init__(err.message)
        self.err = err


# -- applying changes to the record -----------------------------------------------------------
def _set_replica(
    ctx: Context, rec: ImageVersion, key: tuple[str, str], state: ReplicaState, **changes: object
) -> ImageVersion:
    def change(cur: ImageVersion) -> ImageVersion:
        reps = tuple(r.moved(state, **changes) if r.key == key else r for r in cur.replicas)
        return dataclasses.replace(cur, replicas=reps)

    try:
        return ctx.store.update_version(rec.gallery, rec.definition, rec.name, change)
    except SigvirtError as err:
        raise RecordWriteFailed(err) from None


def retire(r: Replica) -> Replica:
    """The replica marked `deleting`; the lifecycle reaches that only from completed, failed
    or corrupt, so an unfinished one (pending, or left copying by a killed run) fails first."""
    if ReplicaState.DELETING not in REPLICA_TRANSITIONS[r.state]:
        r = r.moved(ReplicaState.FAILED, reason="removed from the target regions")
    return r.moved(ReplicaState.DELETING)


def _drop_deleting(ctx: Context, rec: ImageVersion, keys: set[tuple[str, str]]) -> ImageVersion:
    def drop(cur: ImageVersion) -> ImageVersion:
        reps = tuple(
            r for r in cur.replicas if not (r.state == ReplicaState.DELETING and r.key in keys)
        )
        return dataclasses.replace(cur, replicas=reps)

    return ctx.store.update_version(rec.gallery, rec.definition, rec.name, drop)


def apply(ctx: Context, rec: ImageVersion, p: Plan, journal: Journal | None = None) -> ImageVersion:
    """Record new replicas as pending, delete removed ones (never one with dependents);
    each removal is reported to `journal` as the plan's action.

    Removed replicas are marked `deleting` before their files go, so a run killed in
    between finishes the deletion instead of copying them again (reset_interrupted).
    """
    if p.blocked:
        raise blocked_error(rec, p.blocked)

    def add(cur: ImageVersion) -> ImageVersion:
        gone = {r.key for r in p.remove}
        reps = tuple(retire(r) if r.key in gone else r for r in cur.replicas)
        return dataclasses.replace(cur, replicas=reps + p.add, target_regions=dict(p.targets))

    rec = ctx.store.update_version(rec.gallery, rec.definition, rec.name, add)
    faults.point("replicas.planned")
    for r in p.remove:
        try:
            remove_files(ctx.hv(r.location), r.pool, r.volume)
            note(journal, targets.removal_action(r, rec.allocated_size))
            faults.point("replica.removed")
        except RegionUnavailable:
            # A replica that never completed left at most a `.partial` there, which nothing
            # mistakes for a replica: forget it. A completed one stays `deleting` until its
            # host answers again (the next run finishes it).
            if r.state in (ReplicaState.COMPLETED, ReplicaState.CORRUPT):
                raise
    return _drop_deleting(ctx, rec, {r.key for r in p.remove})


# -- running ----------------------------------------------------------------------------------
def reset_interrupted(
    ctx: Context, rec: ImageVersion, journal: Journal | None = None
) -> ImageVersion:
    """Clean up after a killed run (caller holds the op lock, so nobody works on these):
    replicas left copying/verifying lose their partial and go back to pending; removals
    left half done are finished (if their host answers; else they wait for the next run)."""
    gone: set[tuple[str, str]] = set()
    for r in rec.replicas:
        if r.state not in (ReplicaState.COPYING, ReplicaState.VERIFYING, ReplicaState.DELETING):
            continue
        try:
            hv = ctx.hv(r.location)
            if r.state == ReplicaState.DELETING:
                remove_files(hv, r.pool, r.volume)
                note(journal, targets.removal_action(r, rec.allocated_size))
                gone.add(r.key)
            else:
                remove_partial(hv, r.pool, r.volume)
        except SigvirtError:
            pass  # unreachable now: the partial is removed when the copy is retried
        if r.state != ReplicaState.DELETING:
            rec = _set_replica(ctx, rec, r.key, ReplicaState.PENDING, progress=0)
    return _drop_deleting(ctx, rec, gone) if gone else rec


def replan(ctx: Context, rec: ImageVersion, journal: Journal | None = None) -> ImageVersion:
    """The replicas the target regions ask for, recorded: a run killed between publishing
    a version and recording its other replicas left fewer than the targets want."""
    deps = targets.dependents_for(ctx, rec, rec.target_regions)
    lookup = targets.pool_path_lookup(ctx)
    p = targets.plan(rec, rec.target_regions, ctx.regions, deps, lookup, copies.suspects(ctx, rec))
    return rec if p.empty else apply(ctx, rec, p, journal)


def refuse_busy(ctx: Context, rec: ImageVersion) -> None:
    """What taking the op lock refuses, read-only (a dry run): another process at work."""
    if lock_is_held(ctx.store.version_op_lock(rec.gallery, rec.definition, rec.name)):
        raise StillReplicating(
            "another sigvirt process is replicating it (sigvirt sig image-version wait)",
            ref=rec.ref,
        )


def plan_actions(ctx: Context, rec: ImageVersion) -> list[Action]:
    """What `run` would do to `rec`, as actions (read-only): removals a killed run left
    finished, unfinished copies started again, and whatever the target regions still ask."""
    if not rec.published_ok:
        raise Conflict(f"image version {rec.ref} is {rec.state}; only published versions replicate")
    refuse_busy(ctx, rec)
    resumed = tuple(
        r.moved(ReplicaState.PENDING, progress=0)
        if r.state in (ReplicaState.COPYING, ReplicaState.VERIFYING) else r
        for r in rec.replicas if r.state != ReplicaState.DELETING
    )  # fmt: skip
    after = dataclasses.replace(rec, replicas=resumed)  # as reset_interrupted leaves it
    deps = targets.dependents_for(ctx, after, after.target_regions)
    lookup = targets.pool_path_lookup(ctx)
    p = targets.plan(
        after, after.target_regions, ctx.regions, deps, lookup, copies.suspects(ctx, after)
    )
    if p.blocked:
        raise blocked_error(after, p.blocked)
    finishing = [targets.removal_action(r, rec.allocated_size)
                 for r in rec.replicas if r.state == ReplicaState.DELETING]  # fmt: skip
    return finishing + targets.replication_actions(after, p, lookup)


def run(
    ctx: Context,
    rec: ImageVersion,
    progress: ReplicaProgress | None = None,
    *,
    lock_held: bool = False,
    journal: Journal | None = None,
) -> ImageVersion:
    """Bring every replica that isn't completed to completed (or failed, with the reason);
    each removal and each completed copy is reported to `journal`."""
    if not lock_held:

        def busy() -> SigvirtError:
            return StillReplicating(
                "another sigvirt process is replicating it (sigvirt sig image-version wait)",
                ref=rec.ref,
            )

        with ctx.store.version_operation(rec.gallery, rec.definition, rec.name, busy):
            return run(ctx, rec, progress, lock_held=True, journal=journal)
    current = ctx.store.get_version(rec.gallery, rec.definition, rec.name)
    rec = reset_interrupted(ctx, current, journal)
    if not rec.published_ok:
        raise Conflict(f"image version {rec.ref} is {rec.state}; only published versions replicate")
    rec = replan(ctx, rec, journal)
    wanted = (ReplicaState.PENDING, ReplicaState.FAILED)
    # One worker per host: each zone of a zoned region is a location of its own.
    regions = sorted({r.location for r in rec.replicas if r.state in wanted})
    fatal: list[SigvirtError] = []
    gate = FanoutGate(Fanout(_have(rec), fanout_policy(ctx), hosts_of(ctx)))
    threads = [
        threading.Thread(
            target=_region_worker,
            args=(ctx, rec, region, progress, fatal, gate, journal),
            name=f"replicate-{region}",
        )
        for region in regions
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if fatal:
        raise fatal[0]
    return ctx.store.get_version(rec.gallery, rec.definition, rec.name)


def _have(rec: ImageVersion) -> list[str]:
    """Locations that can serve others now: those with a completed replica, source first."""
    done = {r.location for r in rec.completed_replicas()}
    return sorted(done, key=lambda r: (split_location(r)[0] != rec.source_region, r))


def fanout_policy(ctx: Context) -> FanoutPolicy:
    """The limits and costs regions.yaml's `replication:` section sets (defaults if none)."""
    conf = ctx.regions.replication
    return FanoutPolicy(conf.max_streams_out, conf.max_streams_in, dict(conf.costs))


def hosts_of(ctx: Context) -> dict[str, str]:
    """Location (a region, or each zone of a zoned one) → the host whose disk and link it
    uses: locations on one libvirtd share limits."""
    config = ctx.regions
    return {where: config.region(where).libvirt_uri.host_key for where in config.locations()}


def _failed(err: BaseException) -> dict[str, object]:
    """The record's account of a failure: the reason, and the exit code it would have had."""
    if isinstance(err, SigvirtError):
        return {"reason": err.message, "error": int(err.exit_code)}
    return {"reason": f"{type(err).__name__}: {err}", "error": int(ExitCode.REPLICATION_FAILED)}


def _region_worker(
    ctx: Context,
    rec: ImageVersion,
    region: str,
    progress: ReplicaProgress | None,
    fatal: list[SigvirtError],
    gate: FanoutGate,
    journal: Journal | None = None,
) -> None:
    """The region's missing replicas, one after another (the first one into a region from
    the region the fan-out gate gives); every failure is recorded, and a failure to record
    one stops the run (the caller re-raises it)."""
    wanted = (ReplicaState.PENDING, ReplicaState.FAILED)
    todo = sorted(
        (r for r in rec.replicas if r.location == region and r.state in wanted),
        key=lambda r: replica_index(rec, r),
    )
    try:
        try:
            hv = ctx.hv(region)
        except SigvirtError as err:  # the whole region is down: each replica says why
            for r in todo:
                rec = _set_replica(ctx, rec, r.key, ReplicaState.FAILED, progress=0, **_failed(err))
            return
        for replica in todo:
            current = ctx.store.get_version(rec.gallery, rec.definition, rec.name)
            try:
                # The pool's directory as the host says now (unknown when planned while down).
                path = str(hv.pool_path(replica.pool) / replica.volume)
                if replica.state == ReplicaState.FAILED:  # a retry starts over, as the table says
                    current = _set_replica(ctx, current, replica.key, ReplicaState.PENDING)
                current = _set_replica(
                    ctx, current, replica.key, ReplicaState.COPYING,
                    progress=0, reason="", error=0, path=path,
                )  # fmt: skip
                faults.point("replica.copying")
                dst = dataclasses.replace(replica, path=path)
                current = _first_or_next(ctx, current, dst, progress, gate)
                note(journal, targets.copy_action(dst, current.allocated_size))
                faults.point("replica.completed")
            except (RecordWriteFailed, KeyboardInterrupt):
                raise
            except Exception as err:  # one replica's failure must not stop the others
                _set_replica(ctx, current, replica.key, ReplicaState.FAILED, **_failed(err))
    except RecordWriteFailed as err:
        fatal.append(err.err)


def _first_or_next(
    ctx: Context,
    rec: ImageVersion,
    dst: Replica,
    progress: ReplicaProgress | None,
    gate: FanoutGate,
) -> ImageVersion:
    """A copy inside a region that has a completed replica; otherwise the region's first
    copy, from the region the fan-out gate gives once a stream is free there."""
    if any(r.location == dst.location for r in rec.completed_replicas()):
        return _copy_from_a_good_source(ctx, rec, dst, progress)
    src = gate.acquire(dst.location)
    if src is None:
        raise ReplicationFailed("no completed replica to copy from")
    ok = False
    try:
        rec = _copy_from_a_good_source(ctx, rec, dst, progress, prefer=src)
        ok = True
        return rec
    finally:
        gate.release(dst.location, ok)


def _copy_from_a_good_source(
    ctx: Context,
    rec: ImageVersion,
    dst: Replica,
    progress: ReplicaProgress | None,
    prefer: str | None = None,
) -> ImageVersion:
    """Copy into `dst` from the best source that proves good; a source whose bytes turn out
    not to be the version's is marked corrupt and the next one is tried."""
    tried: set[tuple[str, str]] = set()
    while True:
        sources = [r for r in copies.source_order(rec, dst.location, prefer) if r.key not in tried]
        if not sources:
            raise ReplicationFailed("no completed replica to copy from")
        src = sources[0]
        tried.add(src.key)
        if not copies.trusted(ctx, src):
            rec = _check_source(ctx, rec, src)
            if not any(
                r.key == src.key and r.state == ReplicaState.COMPLETED for r in rec.replicas
            ):
                continue  # it was corrupt: marked so, never a source again
        reporter = _Reporter(ctx, rec, dst, progress)
        try:
            copies.copy_replica(ctx, rec, src, dst, reporter, reporter.verifying)
        except ChecksumMismatch:
            # The copy or the source is bad: hash the source to know which.
            rec = _check_source(ctx, reporter.rec, src)
            if any(r.key == src.key and r.state == ReplicaState.COMPLETED for r in rec.replicas):
                raise  # the source is good: the copy went wrong (a bad disk there?)
            rec = _set_replica(ctx, rec, dst.key, ReplicaState.PENDING, progress=0)
            rec = _set_replica(ctx, rec, dst.key, ReplicaState.COPYING, progress=0)
            continue
        return _set_replica(
            ctx, reporter.rec, dst.key, ReplicaState.COMPLETED,
            progress=100, **copies.verified_fields(ctx, dst),
        )  # fmt: skip


def _check_source(ctx: Context, rec: ImageVersion, src: Replica) -> ImageVersion:
    """Hash a would-be source: record it verified, or corrupt (its file gone counts)."""
    try:
        good = copies.verify(ctx, rec, src)
    except (FileNotFoundError, NotFound):
        return _set_replica(ctx, rec, src.key, ReplicaState.CORRUPT, reason="its file is missing")
    if good:
        state, fields = ReplicaState.COMPLETED, copies.verified_fields(ctx, src)
    else:
        state = ReplicaState.CORRUPT
        fields = {"reason": "its bytes differ from the version's sha256 (found copying from it)"}
    return _set_replica(ctx, rec, src.key, state, **fields)


class _Reporter:
    """Progress to the caller's callback always, into the record every few seconds."""

    def __init__(
        self, ctx: Context, rec: ImageVersion, replica: Replica, cb: ReplicaProgress | None
    ) -> None:
        self.ctx, self.rec, self.replica, self.cb = ctx, rec, replica, cb
        self.last = 0.0
        self.recorded = 0  # the percentage the record says

    def __call__(self, done: int, total: int) -> None:
        if self.cb:
            self.cb(self.replica, done, total)
        if not total:
            return
        pct = min(99, done * 100 // total)
        now = time.monotonic()
        # The first percent goes to the record at once (a reader sees the copy has begun),
        # then one update every few seconds: each record write is an fsync'd rename.
        if pct > self.recorded and (self.recorded == 0 or now - self.last >= RECORD_PROGRESS_EVERY):
            self.last, self.recorded = now, pct
            with contextlib.suppress(RecordWriteFailed):  # a progress figure can be lost
                self.rec = _set_replica(
                    self.ctx, self.rec, self.replica.key, ReplicaState.COPYING, progress=pct
                )

    def verifying(self) -> None:
        """All bytes written: the record says so while the copy is checked."""
        self.rec = _set_replica(
            self.ctx, self.rec, self.replica.key, ReplicaState.VERIFYING, progress=100
        )


def failure(rec: ImageVersion) -> tuple[ExitCode, list[str]] | None:
    """When replication ended with failed replicas: the exit code they share (else 20,
    replication failed) and one line per failed replica; None when nothing failed."""
    failed = [r for r in rec.replicas if r.state == ReplicaState.FAILED]
    if not failed or aggregate(rec)[0] != "Failed":
        return None
    codes = {r.error or int(ExitCode.REPLICATION_FAILED) for r in failed}
    code = ExitCode(codes.pop()) if len(codes) == 1 else ExitCode.REPLICATION_FAILED
    lines = [f"replica {r.volume} in region {r.location} failed: {r.reason}" for r in failed]
    return code, lines


# -- waiting ----------------------------------------------------------------------------------
def wait(ctx: Context, rec: ImageVersion, timeout: float, poll: float = 1.0) -> ImageVersion:
    """Until replication is over, Completed or Failed (or timeout): what --no-wait started.

    Gives up early when nobody has held the version's op lock for a while although work is
    left: the background replicator died, and waiting longer can't help.
    """
    end = time.monotonic() + timeout
    lock = ctx.store.version_op_lock(rec.gallery, rec.definition, rec.name)
    idle_since: float | None = None
    while True:
        rec = ctx.store.get_version(rec.gallery, rec.definition, rec.name)
        busy = [r for r in rec.replicas if r.state in BUSY]
        if not busy and aggregate(rec)[0] != "InProgress":
            return rec
        wanted = sum(rec.target_regions.values()) - len(rec.completed_replicas())
        missing = max(len(busy), wanted)
        now = time.monotonic()
        if lock_is_held(lock):
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since >= REPLICATOR_GONE_AFTER:
            raise StillReplicating(
                f"{missing} replica(s) unfinished and no replicator is running; "
                "resume with sigvirt sig image-version replicate",
                ref=rec.ref,
            )
        if now >= end:
            raise ReplicationTimedOut(f"still replicating after {timeout:.0f}s", ref=rec.ref)
        time.sleep(poll)
