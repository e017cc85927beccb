"""Replicas across regions: apply a plan, then copy, verify and rename each replica.

A replica counts only once the sha256 of what was written equals the version's and it sits
under its final name; until then it lives as `.NAME.partial`. The first copy into a region
comes from another region (bytes cross hosts once), further copies in that region come
from a replica already there. Regions replicate in parallel; a failing region fails only
its own replicas, and running again resumes whatever is not completed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sigvirt.catalog.fileio import fsync_dir, lock_is_held
from sigvirt.catalog.records import (
    REPLICA_TRANSITIONS,
    ImageVersion,
    Replica,
    ReplicaState,
)
from sigvirt.context import Context, same_host
from sigvirt.errors import Conflict, RegionUnavailable, ReplicationFailed, SigvirtError
from sigvirt.hosts import hostshell, streams, xmlbuild
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.sharing.plan import protect_replica
from sigvirt.versions import imagecheck, transfer
from sigvirt.versions.targets import Plan, blocked_error, partial_name, replica_index
from sigvirt.versions.transfer import ChecksumMismatch

ReplicaProgress = Callable[[Replica, int, int], None]  # (replica, bytes done, total)


class StillReplicating(Conflict):
    template = "image version {ref}: {detail}"


# -- applying changes to the record -----------------------------------------------------------
def _set_replica(
    ctx: Context, rec: ImageVersion, key: tuple[str, str], state: ReplicaState, **changes: object
) -> ImageVersion:
    def change(cur: ImageVersion) -> ImageVersion:
        reps = tuple(r.moved(state, **changes) if r.key == key else r for r in cur.replicas)
        return dataclasses.replace(cur, replicas=reps)

    return ctx.store.update_version(rec.gallery, rec.definition, rec.name, change)


def _retire(r: Replica) -> Replica:
    """The replica marked `deleting`; the lifecycle reaches that only from completed or
    failed, so an unfinished one (pending, or left copying by a killed run) fails first."""
    if ReplicaState.DELETING not in REPLICA_TRANSITIONS[r.state]:
        r = r.moved(ReplicaState.FAILED, reason="removed from the target regions")
    return r.moved(ReplicaState.DELETING)


def remove_partial(hv: Hypervisor, pool: str, volume: str) -> None:
    """Delete a replica's partial. Copies are written beside libvirt (local files, `cp` on
    a remote host), so the pool is refreshed first: libvirt deletes only volumes it knows."""
    with contextlib.suppress(SigvirtError):
        hv.refresh_pool(pool)
    hv.delete_volume(pool, partial_name(volume))


def remove_files(hv: Hypervisor, pool: str, volume: str) -> None:
    """Delete a replica's volume and its partial."""
    remove_partial(hv, pool, volume)
    hv.delete_volume(pool, volume)


def _drop_deleting(ctx: Context, rec: ImageVersion, keys: set[tuple[str, str]]) -> ImageVersion:
    def drop(cur: ImageVersion) -> ImageVersion:
        reps = tuple(
            r for r in cur.replicas if not (r.state == ReplicaState.DELETING and r.key in keys)
        )
        return dataclasses.replace(cur, replicas=reps)

    return ctx.store.update_version(rec.gallery, rec.definition, rec.name, drop)


def apply(ctx: Context, rec: ImageVersion, p: Plan) -> ImageVersion:
    """Record new replicas as pending, delete removed ones (never one with dependents).

    Removed replicas are marked `deleting` before their files go, so a run killed in
    between finishes the deletion instead of copying them again (reset_interrupted).
    """
    if p.blocked:
        raise blocked_error(rec, p.blocked)

    def add(cur: ImageVersion) -> ImageVersion:
        gone = {r.key for r in p.remove}
        reps = tuple(_retire(r) if r.key in gone else r for r in cur.replicas)
        return dataclasses.replace(cur, replicas=reps + p.add, target_regions=dict(p.targets))

    rec = ctx.store.update_version(rec.gallery, rec.definition, rec.name, add)
    for r in p.remove:
        try:
            remove_files(ctx.hv(r.region), r.pool, r.volume)
        except RegionUnavailable:
            # A replica that never completed left at most a `.partial` there, which nothing
            # mistakes for a replica: forget it. A completed one stays `deleting` until its
            # host answers again (the next run finishes it).
            if r.state == ReplicaState.COMPLETED:
                raise
    return _drop_deleting(ctx, rec, {r.key for r in p.remove})


# -- copying ----------------------------------------------------------------------------------
def choose_source(rec: ImageVersion, region: str) -> Replica | None:
    """A replica in the same region if there is one, else the source region's, else any."""
    done = rec.completed_replicas()
    for pick in (
        [r for r in done if r.region == region],
        [r for r in done if r.region == rec.source_region],
        done,
    ):
        if pick:
            return pick[0]
    return None


def _finish_local(hv: Hypervisor, pool: str, partial: Path, final: Path) -> None:
    imagecheck.sniff(partial, "qcow2")  # the gate, again, on the copy itself
    os.rename(partial, final)
    fsync_dir(final.parent)
    hv.refresh_pool(pool)


def _nothing() -> None:
    return None


def copy_replica(
    ctx: Context,
    rec: ImageVersion,
    src: Replica,
    dst: Replica,
    progress: streams.Progress | None = None,
    verifying: Callable[[], None] = _nothing,
) -> streams.CopyResult:
    """Copy src to dst.partial by the cheapest honest route, verify, rename to dst.

    `verifying` is called when the bytes are all written and checking them begins. On any
    failure the partial is removed again; the final name appears only after the check.
    """
    cfg = ctx.regions
    src_cfg, dst_cfg = cfg.region(src.region), cfg.region(dst.region)
    src_hv, dst_hv = ctx.hv(src.region), ctx.hv(dst.region)
    partial = partial_name(dst.volume)
    remove_files(dst_hv, dst.pool, dst.volume)

    def check(result: transfer.CopyResult) -> streams.CopyResult:
        verifying()
        if result.sha256 != rec.sha256:
            raise ChecksumMismatch(volume=dst.volume, got=result.sha256[:12], want=rec.sha256[:12])
        return result

    if dst_cfg.is_local:
        directory = dst_hv.pool_path(dst.pool)
        tmp = directory / partial
        tmp.unlink(missing_ok=True)
        try:
            if src_cfg.is_local:
                result = check(transfer.local_copy(Path(src.path), tmp, progress))
            else:
                src_vol = src_hv.volume(src.pool, src.volume)
                result = check(streams.download_file(src_vol, tmp, progress))
            protect_replica(tmp)
            _finish_local(dst_hv, dst.pool, tmp, directory / dst.volume)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return result

    # The destination is a remote host: bytes reach it only through libvirt.
    try:
        result = check(_copy_to_remote(ctx, src, dst, progress))
        # Identical bytes (sha256) to the gated original, so the copy passes the gate too.
        hostshell.rename_volume(dst_hv, dst.pool, partial, dst.volume)
    except BaseException:
        with contextlib.suppress(SigvirtError):
            remove_partial(dst_hv, dst.pool, dst.volume)
        raise
    return result


def _copy_to_remote(
    ctx: Context, src: Replica, dst: Replica, progress: streams.Progress | None
) -> streams.CopyResult:
    src_cfg, dst_cfg = ctx.regions.region(src.region), ctx.regions.region(dst.region)
    src_hv, dst_hv = ctx.hv(src.region), ctx.hv(dst.region)
    partial = partial_name(dst.volume)
    size = (
        os.stat(src.path).st_size
        if src_cfg.is_local
        else src_hv.volume(src.pool, src.volume).file_size()
    )
    if same_host(src_cfg, dst_cfg) and dst_hv.ssh_target is not None:
        # Inside one remote host the host copies (a sparse cp; reflink where it can) and
        # hashes the copy: no byte leaves it. libvirt's own in-host copy (createXMLFrom)
        # can't be used: for a qcow2 source it runs qemu-img convert, which rewrites the
        # file, so the copy's sha256 would never match.
        src_path = dst_hv.volume_path(src.pool, src.volume)
        return hostshell.host_copy(dst_hv, src_path, dst.pool, partial)
    vol = dst_hv.create_volume(dst.pool, xmlbuild.raw_volume_xml(partial, size, mode=0o644))
    if src_cfg.is_local:
        return streams.upload_file(vol, Path(src.path), progress)
    # Between two remote hosts (or within one without SSH): through this machine, sparse.
    src_vol = src_hv.volume(src.pool, src.volume)
    return streams.stream_copy(src_vol, vol, size, progress)


# -- running ----------------------------------------------------------------------------------
def reset_interrupted(ctx: Context, rec: ImageVersion) -> ImageVersion:
    """Clean up after a killed run (caller holds the op lock, so nobody works on these):
    replicas left copying/verifying lose their partial and go back to pending; removals
    left half done are finished (if their host answers; else they wait for the next run)."""
    gone: set[tuple[str, str]] = set()
    for r in rec.replicas:
        if r.state not in (ReplicaState.COPYING, ReplicaState.VERIFYING, ReplicaState.DELETING):
            continue
        try:
            hv = ctx.hv(r.region)
            if r.state == ReplicaState.DELETING:
                remove_files(hv, r.pool, r.volume)
                gone.add(r.key)
            else:
                remove_partial(hv, r.pool, r.volume)
        except SigvirtError:
            pass  # unreachable now: the partial is removed when the copy is retried
        if r.state != ReplicaState.DELETING:
            rec = _set_replica(ctx, rec, r.key, ReplicaState.PENDING, progress=0)
    return _drop_deleting(ctx, rec, gone) if gone else rec


def run(
    ctx: Context,
    rec: ImageVersion,
    progress: ReplicaProgress | None = None,
    *,
    lock_held: bool = False,
) -> ImageVersion:
    """Bring every replica that isn't completed to completed (or failed, with the reason)."""
    if not lock_held:

        def busy() -> SigvirtError:
            return StillReplicating(
                "another sigvirt process is replicating it (sigvirt sig image-version wait)",
                ref=rec.ref,
            )

        with ctx.store.version_operation(rec.gallery, rec.definition, rec.name, busy):
            return run(ctx, rec, progress, lock_held=True)
    rec = reset_interrupted(ctx, ctx.store.get_version(rec.gallery, rec.definition, rec.name))
    regions = sorted(
        {r.region for r in rec.replicas if r.state in (ReplicaState.PENDING, ReplicaState.FAILED)}
    )
    threads = [
        threading.Thread(
            target=_region_worker, args=(ctx, rec, region, progress), name=f"replicate-{region}"
        )
        for region in regions
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return ctx.store.get_version(rec.gallery, rec.definition, rec.name)


def _fail_all(
    ctx: Context, rec: ImageVersion, replicas: list[Replica], reason: str
) -> ImageVersion:
    for r in replicas:
        rec = _set_replica(ctx, rec, r.key, ReplicaState.FAILED, reason=reason, progress=0)
    return rec


def _region_worker(
    ctx: Context, rec: ImageVersion, region: str, progress: ReplicaProgress | None
) -> None:
    """The region's missing replicas, one after another; every failure is recorded."""
    todo = sorted(
        (
            r
            for r in rec.replicas
            if r.region == region and r.state in (ReplicaState.PENDING, ReplicaState.FAILED)
        ),
        key=lambda r: replica_index(rec, r),
    )
    try:
        hv = ctx.hv(region)
    except SigvirtError as err:  # the whole region is down: each replica says why
        _fail_all(ctx, rec, todo, err.message)
        return
    for replica in todo:
        current = ctx.store.get_version(rec.gallery, rec.definition, rec.name)
        try:
            src = choose_source(current, region)
            if src is None:
                raise ReplicationFailed("no completed replica to copy from")
            # The pool's directory as the host says now (unknown when planned while down).
            path = str(hv.pool_path(replica.pool) / replica.volume)
            if replica.state == ReplicaState.FAILED:  # a retry starts over, as the lifecycle says
                current = _set_replica(ctx, current, replica.key, ReplicaState.PENDING, reason="")
            current = _set_replica(
                ctx, current, replica.key, ReplicaState.COPYING, progress=0, reason="", path=path
            )
            dst = dataclasses.replace(replica, path=path)
            reporter = _Reporter(ctx, current, dst, progress)
            copy_replica(ctx, current, src, dst, reporter, reporter.verifying)
            _set_replica(ctx, reporter.rec, replica.key, ReplicaState.COMPLETED, progress=100)
        except Exception as err:  # one replica's failure must not stop the others
            reason = (
                err.message if isinstance(err, SigvirtError) else f"{type(err).__name__}: {err}"
            )
            with contextlib.suppress(SigvirtError):
                _set_replica(ctx, current, replica.key, ReplicaState.FAILED, reason=reason)


class _Reporter:
    """Progress to the caller's callback always, into the record every few seconds."""

    def __init__(
        self, ctx: Context, rec: ImageVersion, replica: Replica, cb: ReplicaProgress | None
    ) -> None:
        self.ctx, self.rec, self.replica, self.cb = ctx, rec, replica, cb
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        if self.cb:
            self.cb(self.replica, done, total)
        now = time.monotonic()
        if now - self.last >= RECORD_PROGRESS_EVERY and total:
            self.last = now
            pct = min(99, done * 100 // total)
            with contextlib.suppress(SigvirtError):
                self.rec = _set_replica(
                    self.ctx, self.rec, self.replica.key, ReplicaState.COPYING, progress=pct
                )

    def verifying(self) -> None:
        """All bytes written: the record says so while the copy is checked."""
        self.rec = _set_replica(
            self.ctx, self.rec, self.replica.key, ReplicaState.VERIFYING, progress=100
        )


RECORD_PROGRESS_EVERY = 2.0  # seconds: each record write is an fsync'd rename
REPLICATOR_GONE_AFTER = 10.0  # seconds without a replicator before `wait` gives up


# -- waiting ----------------------------------------------------------------------------------
def wait(ctx: Context, rec: ImageVersion, timeout: float, poll: float = 1.0) -> ImageVersion:
    """Until no replica is pending/copying/verifying (or timeout): the state of --no-wait runs.

    Gives up early when nobody has held the version's op lock for a while although work is
    left: the background replicator died, and waiting longer can't help.
    """
    end = time.monotonic() + timeout
    lock = ctx.store.version_op_lock(rec.gallery, rec.definition, rec.name)
    idle_since: float | None = None
    while True:
        rec = ctx.store.get_version(rec.gallery, rec.definition, rec.name)
        busy = [
            r
            for r in rec.replicas
            if r.state in (ReplicaState.PENDING, ReplicaState.COPYING, ReplicaState.VERIFYING)
        ]
        if not busy:
            return rec
        now = time.monotonic()
        if lock_is_held(lock):
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since >= REPLICATOR_GONE_AFTER:
            raise StillReplicating(
                f"{len(busy)} replica(s) unfinished and no replicator is running; "
                "resume with sigvirt sig image-version replicate",
                ref=rec.ref,
            )
        if now >= end:
            raise StillReplicating(f"still replicating after {timeout:.0f}s", ref=rec.ref)
        time.sleep(poll)
