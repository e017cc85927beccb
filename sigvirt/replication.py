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

from sigvirt import dependents, domxml, imagecheck, perms, transfer
from sigvirt.context import Context, same_host
from sigvirt.errors import HasDependents, InvalidName, NotFound, SigvirtError
from sigvirt.hypervisor import Hypervisor
from sigvirt.records import (
    COMPLETED,
    COPYING,
    DELETING,
    FAILED,
    PENDING,
    VERIFYING,
    ImageVersion,
    Replica,
)
from sigvirt.regions import RegionsConfig
from sigvirt.store import file_lock

MAX_REPLICAS_PER_REGION = 100
ReplicaProgress = Callable[[Replica, int, int], None]  # (replica, bytes done, total)


class ChecksumMismatch(SigvirtError):
    template = "replica {volume}: sha256 of the copy {got} differs from the version's {want}"


# -- naming and targets -----------------------------------------------------------------------
def volume_name(rec: ImageVersion, region: str, index: int) -> str:
    return f"{rec.gallery}-{rec.definition}-{rec.name}-{region}-{index}.qcow2"


def partial_name(volume: str) -> str:
    return f".{volume}.partial"


def replica_index(rec: ImageVersion, replica: Replica) -> int:
    return int(replica.volume.rsplit("-", 1)[1].split(".")[0])


def normalize_region(name: str, config: RegionsConfig) -> str:
    """Azure display names work too: 'West Central US' finds region 'westcentralus'."""
    if name in config.regions:
        return name
    squashed = name.replace(" ", "").lower()
    for known in config.regions:
        if known.replace(" ", "").lower() == squashed:
            return known
    config.region(name)  # raises NotFound naming the known regions
    return name


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
    pool_paths: Callable[[str, str], Path] | None = None,
) -> Plan:
    """What to add and remove so each target region holds its count of replicas.

    Removals prefer replicas that aren't completed, then completed ones without dependents;
    a replica that a clone depends on is never chosen, and if too few are free the plan
    lists the dependents that block it.
    """
    add: list[Replica] = []
    remove: list[Replica] = []
    blocked: list[dependents.Dependent] = []
    by_region: dict[str, list[Replica]] = {}
    for r in rec.replicas:
        by_region.setdefault(r.region, []).append(r)
    for region in [*targets, *(r for r in by_region if r not in targets)]:
        have = by_region.get(region, [])
        want = targets.get(region, 0)
        if len(have) < want:
            cfg = config.region(region)
            used = {replica_index(rec, r) for r in have}
            free = (i for i in range(MAX_REPLICAS_PER_REGION * 2) if i not in used)
            for _ in range(want - len(have)):
                i = next(free)
                pool = cfg.pools[i % len(cfg.pools)]
                vol = volume_name(rec, region, i)
                path = pool_paths(region, pool.name) / vol if pool_paths else Path(pool.name) / vol
                add.append(Replica(region, pool.name, vol, str(path)))
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
    for region in regions:
        paths = [r.path for r in replicas if r.region == region and r.state == COMPLETED]
        for dep in dependents.find(ctx.hv(region), paths):
            out.setdefault(dep.replica, []).append(dep)
    return out


def pool_path_lookup(ctx: Context) -> Callable[[str, str], Path]:
    return lambda region, pool: ctx.hv(region).pool_path(pool)


# -- applying changes to the record -----------------------------------------------------------
def _set_replica(
    ctx: Context, rec: ImageVersion, key: tuple[str, str], state: str, **changes: object
) -> ImageVersion:
    def change(cur: ImageVersion) -> ImageVersion:
        reps = tuple(r.moved(state, **changes) if r.key == key else r for r in cur.replicas)
        return dataclasses.replace(cur, replicas=reps)

    return ctx.store.update_version(rec.gallery, rec.definition, rec.name, change)


def apply(ctx: Context, rec: ImageVersion, p: Plan) -> ImageVersion:
    """Record new replicas as pending, delete removed ones (never one with dependents)."""
    if p.blocked:
        raise blocked_error(rec, p.blocked)

    def add(cur: ImageVersion) -> ImageVersion:
        gone = {r.key for r in p.remove}
        reps = tuple(r.moved(DELETING) if r.key in gone else r for r in cur.replicas)
        return dataclasses.replace(cur, replicas=reps + p.add, target_regions=dict(p.targets))

    rec = ctx.store.update_version(rec.gallery, rec.definition, rec.name, add)
    for r in p.remove:
        hv = ctx.hv(r.region)
        hv.delete_volume(r.pool, partial_name(r.volume))
        hv.delete_volume(r.pool, r.volume)

    def drop(cur: ImageVersion) -> ImageVersion:
        return dataclasses.replace(
            cur, replicas=tuple(r for r in cur.replicas if r.state != DELETING)
        )

    return ctx.store.update_version(rec.gallery, rec.definition, rec.name, drop)


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
    transfer_fsync_dir(final.parent)
    hv.call(f"refresh pool {pool}", hv.pool(pool).refresh, 0)


def transfer_fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_replica(
    ctx: Context,
    rec: ImageVersion,
    src: Replica,
    dst: Replica,
    progress: transfer.Progress | None = None,
) -> transfer.CopyResult:
    """Copy src to dst.partial by the cheapest honest route, verify, rename to dst."""
    cfg = ctx.regions
    src_cfg, dst_cfg = cfg.region(src.region), cfg.region(dst.region)
    src_hv, dst_hv = ctx.hv(src.region), ctx.hv(dst.region)
    partial = partial_name(dst.volume)
    dst_hv.delete_volume(dst.pool, partial)
    dst_hv.delete_volume(dst.pool, dst.volume)

    def check(result: transfer.CopyResult) -> transfer.CopyResult:
        if result.sha256 != rec.sha256:
            dst_hv.delete_volume(dst.pool, partial)
            raise ChecksumMismatch(volume=dst.volume, got=result.sha256[:12], want=rec.sha256[:12])
        return result

    if dst_cfg.is_local:
        directory = dst_hv.pool_path(dst.pool)
        tmp = directory / partial
        tmp.unlink(missing_ok=True)
        if src_cfg.is_local:
            result = check(transfer.local_copy(Path(src.path), tmp, progress))
        else:
            result = check(
                transfer.download_file(
                    src_hv.conn, src_hv.volume(src.pool, src.volume), tmp, progress
                )
            )
        perms.protect_replica(tmp, ctx.runner)
        _finish_local(dst_hv, dst.pool, tmp, directory / dst.volume)
        return result

    # The destination is a remote host: bytes reach it only through libvirt.
    size = (
        os.stat(src.path).st_size
        if src_cfg.is_local
        else transfer.file_size(src_hv.volume(src.pool, src.volume))
    )
    if same_host(src_cfg, dst_cfg):
        # Inside one remote host: the host copies; we read it back once to verify.
        src_vol = src_hv.volume(src.pool, src.volume)
        xml = domxml.raw_volume_xml(partial, size, mode=0o644)
        dst_hv.call("copy inside host", dst_hv.pool(dst.pool).createXMLFrom, xml, src_vol, 0)
        result = check(
            transfer.hash_volume(dst_hv.conn, dst_hv.volume(dst.pool, partial), progress)
        )
    else:
        vol = dst_hv.create_volume(dst.pool, domxml.raw_volume_xml(partial, size, mode=0o644))
        if src_cfg.is_local:
            result = check(transfer.upload_file(dst_hv.conn, vol, Path(src.path), progress))
        else:
            result = check(
                transfer.stream_copy(
                    src_hv.conn,
                    src_hv.volume(src.pool, src.volume),
                    dst_hv.conn,
                    vol,
                    size,
                    progress,
                )
            )
    # Identical bytes (sha256) to the gated original, so the copy passes the gate too.
    dst_hv.rename_volume(dst.pool, partial, dst.volume)
    return result


# -- running ----------------------------------------------------------------------------------
def op_lock(ctx: Context, rec: ImageVersion) -> contextlib.AbstractContextManager[None]:
    return file_lock(
        ctx.store.version_op_lock(rec.gallery, rec.definition, rec.name), blocking=False
    )


def reset_interrupted(ctx: Context, rec: ImageVersion) -> ImageVersion:
    """Replicas left copying/verifying by a killed run go back to pending (caller holds the
    op lock, so nobody is working on them)."""
    stale = [r for r in rec.replicas if r.state in (COPYING, VERIFYING, DELETING)]
    for r in stale:
        try:
            hv = ctx.hv(r.region)
            hv.delete_volume(r.pool, partial_name(r.volume))
        except SigvirtError:
            pass
        rec = _set_replica(ctx, rec, r.key, PENDING if r.state != DELETING else FAILED, progress=0)
    return rec


def run(
    ctx: Context,
    rec: ImageVersion,
    progress: ReplicaProgress | None = None,
    *,
    lock_held: bool = False,
) -> ImageVersion:
    """Bring every replica that isn't completed to completed (or failed, with the reason)."""
    if not lock_held:
        with op_lock(ctx, rec):
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


def _region_worker(
    ctx: Context, rec: ImageVersion, region: str, progress: ReplicaProgress | None
) -> None:
    todo = sorted(
        (r for r in rec.replicas if r.region == region and r.state in (PENDING, FAILED)),
        key=lambda r: replica_index(rec, r),
    )
    for replica in todo:
        current = ctx.store.get_version(rec.gallery, rec.definition, rec.name)
        if replica.state == FAILED:
            current = _set_replica(ctx, current, replica.key, PENDING, reason="", progress=0)
        try:
            ctx.hv(region)
        except SigvirtError as err:
            for r in todo[todo.index(replica) :]:
                if r.state == FAILED:
                    current = _set_replica(ctx, current, r.key, PENDING, reason="")
                current = _set_replica(ctx, current, r.key, FAILED, reason=err.message)
            return
        src = choose_source(current, region)
        if src is None:
            _set_replica(
                ctx, current, replica.key, FAILED, reason="no completed replica to copy from"
            )
            continue
        current = _set_replica(ctx, current, replica.key, COPYING, progress=0, reason="")
        reporter = _Reporter(ctx, current, replica, progress)
        try:
            copy_replica(ctx, current, src, replica, reporter)
            current = _set_replica(ctx, current, replica.key, VERIFYING, progress=100)
            _set_replica(ctx, current, replica.key, COMPLETED, progress=100)
        except Exception as err:  # one replica's failure must not stop the others
            reason = (
                err.message if isinstance(err, SigvirtError) else f"{type(err).__name__}: {err}"
            )
            _set_replica(
                ctx,
                ctx.store.get_version(rec.gallery, rec.definition, rec.name),
                replica.key,
                FAILED,
                reason=reason,
            )


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
        if now - self.last >= 2.0 and total:
            self.last = now
            pct = min(99, done * 100 // total)
            with contextlib.suppress(SigvirtError):
                self.rec = _set_replica(self.ctx, self.rec, self.replica.key, COPYING, progress=pct)


# -- status -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegionStatus:
    region: str
    state: str  # Completed | Replicating | Failed | Pending
    completed: int
    wanted: int
    progress: int
    details: str


def aggregate(rec: ImageVersion) -> tuple[str, list[RegionStatus]]:
    """Azure's replicationStatus: an aggregated state and a summary per region."""
    rows = []
    for region, wanted in rec.target_regions.items():
        reps = [r for r in rec.replicas if r.region == region]
        done = sum(r.state == COMPLETED for r in reps)
        failed = [r for r in reps if r.state == FAILED]
        busy = [r for r in reps if r.state in (COPYING, VERIFYING)]
        if done >= wanted:
            state = "Completed"
        elif busy:
            state = "Replicating"
        elif failed:
            state = "Failed"
        else:
            state = "Pending"
        progress = sum(100 if r.state == COMPLETED else r.progress for r in reps) // max(
            1, len(reps)
        )
        details = "; ".join(f"{r.volume}: {r.reason}" for r in failed)
        rows.append(RegionStatus(region, state, done, wanted, progress, details))
    states = {r.state for r in rows}
    if states <= {"Completed"}:
        agg = "Completed"
    elif "Replicating" in states or "Pending" in states:
        agg = "InProgress"
    else:
        agg = "Failed"
    return agg, rows


def wait(ctx: Context, rec: ImageVersion, timeout: float, poll: float = 1.0) -> ImageVersion:
    """Until no replica is pending/copying/verifying (or timeout): the state of --no-wait runs."""
    end = time.monotonic() + timeout
    while True:
        rec = ctx.store.get_version(rec.gallery, rec.definition, rec.name)
        busy = [r for r in rec.replicas if r.state in (PENDING, COPYING, VERIFYING)]
        if not busy:
            return rec
        if time.monotonic() >= end:
            raise NotFound(f"image version {rec.ref}: still replicating after {timeout:.0f}s")
        time.sleep(poll)
