"""Replicas across regions: plan the change as data, then copy, verify and rename.

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
from dataclasses import dataclass
from pathlib import Path

from sigvirt import dependents, domxml, imagecheck, perms, regioncheck, transfer
from sigvirt.context import Context, same_host
from sigvirt.errors import Conflict, HasDependents, InvalidName, RegionUnavailable, SigvirtError
from sigvirt.hypervisor import Hypervisor
from sigvirt.records import (
    COMPLETED,
    COPYING,
    DELETING,
    FAILED,
    PENDING,
    REPLICA_TRANSITIONS,
    VERIFYING,
    ImageVersion,
    RegionStatus,
    Replica,
    aggregate,
)
from sigvirt.regions import RegionsConfig
from sigvirt.store import file_lock, fsync_dir, lock_is_held

__all__ = ["RegionStatus", "aggregate"]  # status lives in records (the CLI lists without libvirt)

MAX_REPLICAS_PER_REGION = 100
ReplicaProgress = Callable[[Replica, int, int], None]  # (replica, bytes done, total)


class ChecksumMismatch(SigvirtError):
    template = "replica {volume}: sha256 of the copy {got} differs from the version's {want}"


class StillReplicating(Conflict):
    template = "image version {ref}: {detail}"


# -- naming and targets -----------------------------------------------------------------------
def volume_name(rec: ImageVersion, region: str, index: int) -> str:
    return f"{rec.gallery}-{rec.definition}-{rec.name}-{region}-{index}.qcow2"


def partial_name(volume: str) -> str:
    return f".{volume}.partial"


def replica_index(rec: ImageVersion, replica: Replica) -> int:
    return int(replica.volume.rsplit("-", 1)[1].split(".")[0])


def normalize_region(name: str, config: RegionsConfig) -> str:
    """Azure display names work too: 'West Central US' finds region 'westcentralus'."""
    return regioncheck.resolve(config, name).name


def parse_targets(
    items: list[str] | None,
    replica_count: int | None,
    source_region: str,
    config: RegionsConfig,
    current: dict[str, int] | None = None,
) -> dict[str, int]:
    """`--target-regions "local" "east=2"` plus `--replica-count N` as `az sig` reads them:
    N is the default for regions given without a count; the source region is always a target."""
    default = 1 if replica_count is None else replica_count
    if not 1 <= default <= MAX_REPLICAS_PER_REGION:
        raise InvalidName(f"--replica-count must be 1..{MAX_REPLICAS_PER_REGION} (got {default})")
    targets: dict[str, int] = {}
    if items is None and current:
        targets = dict(current)
        if replica_count is not None:
            targets = {r: replica_count for r in targets}
    for item in items or []:
        name, sep, count_text = item.rpartition("=") if "=" in item else (item, "", "")
        if not sep:
            name = item
        region = normalize_region(name.strip(), config)
        if sep:
            if not count_text.strip().isdigit():
                raise InvalidName(
                    f"--target-regions {item!r}: the count after '=' must be a number"
                )
            count = int(count_text)
            if not 1 <= count <= MAX_REPLICAS_PER_REGION:
                raise InvalidName(
                    f"--target-regions {item!r}: replica count must be 1..{MAX_REPLICAS_PER_REGION}"
                )
        else:
            count = default
        targets[region] = count
    source_region = normalize_region(source_region, config)
    targets.setdefault(source_region, default)
    return targets


# -- planning ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    targets: dict[str, int]
    add: tuple[Replica, ...]
    remove: tuple[Replica, ...]
    blocked: tuple[dependents.Dependent, ...] = ()  # why a wanted removal can't happen

    @property
    def empty(self) -> bool:
        return not self.add and not self.remove


def plan(
    rec: ImageVersion,
    targets: dict[str, int],
    config: RegionsConfig,
    deps: dict[str, list[dependents.Dependent]],
    pool_paths: Callable[[str, str], Path | None] | None = None,
) -> Plan:
    """What to add and remove so each target region holds its count of replicas.

    New replicas take the lowest free indexes and go round-robin over the region's pools
    (index i lands in pool i mod n). Removals prefer replicas that aren't completed, then
    the highest index; a replica that a clone depends on is never chosen, and if too few
    are free the plan lists the dependents that block it. `pool_paths` gives a pool's
    directory, or None while its host is unreachable (the path is then filled in when the
    copy starts).
    """
    add: list[Replica] = []
    remove: list[Replica] = []
    blocked: list[dependents.Dependent] = []
    by_region: dict[str, list[Replica]] = {}
    for r in rec.replicas:
        if r.state != DELETING:  # on its way out already (an interrupted removal)
            by_region.setdefault(r.region, []).append(r)
    for region in [*targets, *(r for r in by_region if r not in targets)]:
        have = by_region.get(region, [])
        want = targets.get(region, 0)
        if len(have) < want:
            cfg = config.region(region)
            # Indexes of replicas still being deleted stay taken: a volume name is a key.
            used = {replica_index(rec, r) for r in rec.replicas if r.region == region}
            free = (i for i in range(MAX_REPLICAS_PER_REGION * 2) if i not in used)
            for _ in range(want - len(have)):
                i = next(free)
                pool = cfg.pools[i % len(cfg.pools)]
                vol = volume_name(rec, region, i)
                directory = pool_paths(region, pool.name) if pool_paths else None
                path = str(directory / vol) if directory is not None else ""
                add.append(Replica(region, pool.name, vol, path))
        elif len(have) > want:
            excess = len(have) - want
            order = sorted(
                have,
                key=lambda r: (r.state == COMPLETED, -replica_index(rec, r)),
            )
            for r in order:
                if excess == 0:
                    break
                if deps.get(r.path):
                    continue
                remove.append(r)
                excess -= 1
            if excess:
                for r in have:
                    blocked.extend(deps.get(r.path, []))
    return Plan(targets, tuple(add), tuple(remove), tuple(blocked))


def blocked_error(rec: ImageVersion, blocked: tuple[dependents.Dependent, ...]) -> HasDependents:
    listing = ", ".join(f"{d.kind} {d.name} (on {Path(d.replica).name})" for d in blocked)
    return HasDependents(
        f"image version {rec.ref}: can't remove replicas that clones depend on: {listing}"
    )


def find_dependents(ctx: Context, replicas: list[Replica]) -> dict[str, list[dependents.Dependent]]:
    """Dependents per replica path, read from each region's libvirt."""
    out: dict[str, list[dependents.Dependent]] = {}
    regions = {r.region for r in replicas if r.state == COMPLETED}
    for region in sorted(regions):
        paths = [r.path for r in replicas if r.region == region and r.state == COMPLETED]
        for dep in dependents.find(ctx.hv(region), paths):
            out.setdefault(dep.replica, []).append(dep)
    return out


def dependents_for(
    ctx: Context, rec: ImageVersion, targets: dict[str, int]
) -> dict[str, list[dependents.Dependent]]:
    """Dependents of the replicas that `targets` may remove: only regions whose count goes
    down are asked, so a host that is down blocks only reductions there, not additions."""
    live = [r for r in rec.replicas if r.state != DELETING]
    shrinking = {
        region
        for region in {r.region for r in live}
        if sum(r.region == region for r in live) > targets.get(region, 0)
    }
    return find_dependents(ctx, [r for r in live if r.region in shrinking])


def pool_path_lookup(ctx: Context) -> Callable[[str, str], Path | None]:
    """A pool's directory from its host; from regions.yaml (or None) if the host is down,
    so an unreachable region still gets its replicas recorded (and failed, with why)."""

    def lookup(region: str, pool: str) -> Path | None:
        try:
            return ctx.hv(region).pool_path(pool)
        except SigvirtError:
            configured = {p.name: p.path for p in ctx.regions.region(region).pools}
            return configured.get(pool)

    return lookup


# -- applying changes to the record -----------------------------------------------------------
def _set_replica(
    ctx: Context, rec: ImageVersion, key: tuple[str, str], state: str, **changes: object
) -> ImageVersion:
    def change(cur: ImageVersion) -> ImageVersion:
        reps = tuple(r.moved(state, **changes) if r.key == key else r for r in cur.replicas)
        return dataclasses.replace(cur, replicas=reps)

    return ctx.store.update_version(rec.gallery, rec.definition, rec.name, change)


def _retire(r: Replica) -> Replica:
    """The replica marked `deleting`; the lifecycle reaches that only from completed or
    failed, so an unfinished one (pending, or left copying by a killed run) fails first."""
    if DELETING not in REPLICA_TRANSITIONS[r.state]:
        r = r.moved(FAILED, reason="removed from the target regions")
    return r.moved(DELETING)


def remove_partial(hv: Hypervisor, pool: str, volume: str) -> None:
    """Delete a replica's partial. Copies are written beside libvirt (local files, `cp` on
    a remote host), so the pool is refreshed first: libvirt deletes only volumes it knows."""
    with contextlib.suppress(SigvirtError):
        hv.call(f"refresh pool {pool}", hv.pool(pool).refresh, 0)
    hv.delete_volume(pool, partial_name(volume))


def remove_files(hv: Hypervisor, pool: str, volume: str) -> None:
    """Delete a replica's volume and its partial."""
    remove_partial(hv, pool, volume)
    hv.delete_volume(pool, volume)


def _drop_deleting(ctx: Context, rec: ImageVersion, keys: set[tuple[str, str]]) -> ImageVersion:
    def drop(cur: ImageVersion) -> ImageVersion:
        reps = tuple(r for r in cur.replicas if not (r.state == DELETING and r.key in keys))
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
            if r.state == COMPLETED:
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
    hv.call(f"refresh pool {pool}", hv.pool(pool).refresh, 0)


def _nothing() -> None:
    return None


def copy_replica(
    ctx: Context,
    rec: ImageVersion,
    src: Replica,
    dst: Replica,
    progress: transfer.Progress | None = None,
    verifying: Callable[[], None] = _nothing,
) -> transfer.CopyResult:
    """Copy src to dst.partial by the cheapest honest route, verify, rename to dst.

    `verifying` is called when the bytes are all written and checking them begins. On any
    failure the partial is removed again; the final name appears only after the check.
    """
    cfg = ctx.regions
    src_cfg, dst_cfg = cfg.region(src.region), cfg.region(dst.region)
    src_hv, dst_hv = ctx.hv(src.region), ctx.hv(dst.region)
    partial = partial_name(dst.volume)
    remove_files(dst_hv, dst.pool, dst.volume)

    def check(result: transfer.CopyResult) -> transfer.CopyResult:
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
                result = check(transfer.download_file(src_hv.conn, src_vol, tmp, progress))
            perms.protect_replica(tmp, ctx.runner)
            _finish_local(dst_hv, dst.pool, tmp, directory / dst.volume)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return result

    # The destination is a remote host: bytes reach it only through libvirt.
    try:
        result = check(_copy_to_remote(ctx, src, dst, progress))
        # Identical bytes (sha256) to the gated original, so the copy passes the gate too.
        dst_hv.rename_volume(dst.pool, partial, dst.volume)
    except BaseException:
        with contextlib.suppress(SigvirtError):
            remove_partial(dst_hv, dst.pool, dst.volume)
        raise
    return result


def _copy_to_remote(
    ctx: Context, src: Replica, dst: Replica, progress: transfer.Progress | None
) -> transfer.CopyResult:
    src_cfg, dst_cfg = ctx.regions.region(src.region), ctx.regions.region(dst.region)
    src_hv, dst_hv = ctx.hv(src.region), ctx.hv(dst.region)
    partial = partial_name(dst.volume)
    size = (
        os.stat(src.path).st_size
        if src_cfg.is_local
        else transfer.file_size(src_hv.volume(src.pool, src.volume))
    )
    if same_host(src_cfg, dst_cfg) and dst_hv.ssh_target is not None:
        # Inside one remote host the host copies (a sparse cp; reflink where it can) and
        # hashes the copy: no byte leaves it. libvirt's own in-host copy (createXMLFrom)
        # can't be used: for a qcow2 source it runs qemu-img convert, which rewrites the
        # file, so the copy's sha256 would never match.
        src_path = dst_hv.volume_path(src.pool, src.volume)
        return dst_hv.host_copy(src_path, dst.pool, partial)
    vol = dst_hv.create_volume(dst.pool, domxml.raw_volume_xml(partial, size, mode=0o644))
    if src_cfg.is_local:
        return transfer.upload_file(dst_hv.conn, vol, Path(src.path), progress)
    # Between two remote hosts (or within one without SSH): through this machine, sparse.
    src_vol = src_hv.volume(src.pool, src.volume)
    return transfer.stream_copy(src_hv.conn, src_vol, dst_hv.conn, vol, size, progress)


# -- running ----------------------------------------------------------------------------------
def op_lock(ctx: Context, rec: ImageVersion) -> contextlib.AbstractContextManager[None]:
    return file_lock(
        ctx.store.version_op_lock(rec.gallery, rec.definition, rec.name), blocking=False
    )


def reset_interrupted(ctx: Context, rec: ImageVersion) -> ImageVersion:
    """Clean up after a killed run (caller holds the op lock, so nobody works on these):
    replicas left copying/verifying lose their partial and go back to pending; removals
    left half done are finished (if their host answers; else they wait for the next run)."""
    gone: set[tuple[str, str]] = set()
    for r in rec.replicas:
        if r.state not in (COPYING, VERIFYING, DELETING):
            continue
        try:
            hv = ctx.hv(r.region)
            if r.state == DELETING:
                remove_files(hv, r.pool, r.volume)
                gone.add(r.key)
            else:
                remove_partial(hv, r.pool, r.volume)
        except SigvirtError:
            pass  # unreachable now: the partial is removed when the copy is retried
        if r.state != DELETING:
            rec = _set_replica(ctx, rec, r.key, PENDING, progress=0)
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
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(op_lock(ctx, rec))
            except Conflict:
                raise StillReplicating(
                    "another sigvirt process is replicating it (sigvirt sig image-version wait)",
                    ref=rec.ref,
                ) from None
            return run(ctx, rec, progress, lock_held=True)
    rec = reset_interrupted(ctx, ctx.store.get_version(rec.gallery, rec.definition, rec.name))
    regions = sorted({r.region for r in rec.replicas if r.state in (PENDING, FAILED)})
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
        rec = _set_replica(ctx, rec, r.key, FAILED, reason=reason, progress=0)
    return rec


def _region_worker(
    ctx: Context, rec: ImageVersion, region: str, progress: ReplicaProgress | None
) -> None:
    """The region's missing replicas, one after another; every failure is recorded."""
    todo = sorted(
        (r for r in rec.replicas if r.region == region and r.state in (PENDING, FAILED)),
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
                raise SigvirtError("no completed replica to copy from")
            # The pool's directory as the host says now (unknown when planned while down).
            path = str(hv.pool_path(replica.pool) / replica.volume)
            if replica.state == FAILED:  # a retry starts over, as the lifecycle says
                current = _set_replica(ctx, current, replica.key, PENDING, reason="")
            current = _set_replica(
                ctx, current, replica.key, COPYING, progress=0, reason="", path=path
            )
            dst = dataclasses.replace(replica, path=path)
            reporter = _Reporter(ctx, current, dst, progress)
            copy_replica(ctx, current, src, dst, reporter, reporter.verifying)
            _set_replica(ctx, reporter.rec, replica.key, COMPLETED, progress=100)
        except Exception as err:  # one replica's failure must not stop the others
            reason = (
                err.message if isinstance(err, SigvirtError) else f"{type(err).__name__}: {err}"
            )
            with contextlib.suppress(SigvirtError):
                _set_replica(ctx, current, replica.key, FAILED, reason=reason)


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
                self.rec = _set_replica(self.ctx, self.rec, self.replica.key, COPYING, progress=pct)

    def verifying(self) -> None:
        """All bytes written: the record says so while the copy is checked."""
        self.rec = _set_replica(self.ctx, self.rec, self.replica.key, VERIFYING, progress=100)


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
        busy = [r for r in rec.replicas if r.state in (PENDING, COPYING, VERIFYING)]
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
