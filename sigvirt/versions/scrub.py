"""Scrub and heal: replicas re-hashed where they lie, a corrupt one marked so (never copied
from, never cloned), and healed by a fresh copy from a verified replica.

`qemu-img check` can't see flipped data bytes, and nothing else reads a replica end to end,
so without a scrub a corrupt replica would be cloned and copied from until someone noticed
inside a guest. A replica that clones depend on is reported with them and left in place:
replacing a backing file under a running overlay would corrupt the overlay too.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from sigvirt.catalog.records import ImageVersion, Replica, ReplicaState
from sigvirt.context import Context
from sigvirt.errors import Conflict, NotFound, SigvirtError
from sigvirt.hosts import streams
from sigvirt.versions import copies, replication, targets, transfer

Outcome = Literal["ok", "corrupt", "missing", "unreachable", "busy", "healed", "kept"]
MiB = 1 << 20


@dataclass(frozen=True)
class ScrubRow:
    version: str  # G/D/V
    region: str
    volume: str
    outcome: Outcome
    bytes: int = 0
    seconds: float = 0.0
    detail: str = ""


class Throttle:
    """A progress callback that sleeps to keep reading under `rate` bytes per second."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.start = time.monotonic()

    def __call__(self, done: int, _total: int) -> None:
        if not self.rate:
            return
        ahead = done / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


def versions_in(
    ctx: Context,
    gallery: str | None,
    definition: str | None,
    version: str | None,
    *,
    hidden: bool = False,
) -> Iterator[ImageVersion]:
    """The versions a scrub or heal covers: one, a definition's, a gallery's, or all (with
    `hidden`, those in the recycle bin or pending deletion too)."""
    store = ctx.store
    if gallery is not None and definition is not None and version is not None:
        yield store.get_version(gallery, definition, version, hidden=hidden)
        return
    galleries = [gallery] if gallery else [g.name for g in store.list_galleries()]
    for g in galleries:
        defs = (
            [definition]
            if definition
            else [d.name for d in store.list_definitions(g, hidden=hidden)]
        )
        for d in defs:
            yield from store.list_versions(g, d, hidden=hidden)


def _hash(ctx: Context, r: Replica, rate: float | None) -> tuple[str, int]:
    throttle = Throttle(rate)
    if ctx.regions.region(r.location).is_local:
        path = ctx.hv(r.location).volume_path(r.pool, r.volume)
        return transfer.sha256_file(path, throttle), path.stat().st_size
    result = streams.hash_volume(ctx.hv(r.location).volume(r.pool, r.volume), throttle)
    return result.sha256, result.size


def scrub(
    ctx: Context,
    gallery: str | None = None,
    definition: str | None = None,
    version: str | None = None,
    *,
    max_rate_mb: float | None = None,
) -> list[ScrubRow]:
    """Re-hash every completed replica in scope; record it verified, or corrupt."""
    rate = max_rate_mb * MiB if max_rate_mb else None
    rows: list[ScrubRow] = []
    for rec in versions_in(ctx, gallery, definition, version):
        try:
            with ctx.store.version_operation(rec.gallery, rec.definition, rec.name):
                rows += _scrub_version(ctx, rec, rate)
        except Conflict:
            rows.append(ScrubRow(rec.ref, "", "", "busy", detail="another process works on it"))
    return rows


def _scrub_version(ctx: Context, rec: ImageVersion, rate: float | None) -> list[ScrubRow]:
    rows = []
    for r in rec.replicas:
        if r.state == ReplicaState.CORRUPT:  # known bad: listed until healed
            rows.append(ScrubRow(rec.ref, r.region, r.volume, "corrupt", detail=r.reason))
            continue
        if r.state != ReplicaState.COMPLETED:
            continue
        start = time.monotonic()
        try:
            sha, size = _hash(ctx, r, rate)
        except NotFound:
            row = ScrubRow(rec.ref, r.region, r.volume, "missing", detail="the file is gone")
            rows.append(row)
            rec = _mark(ctx, rec, r, ReplicaState.CORRUPT, reason="its file is missing")
            continue
        except (SigvirtError, OSError) as err:
            detail = err.message if isinstance(err, SigvirtError) else str(err)
            rows.append(ScrubRow(rec.ref, r.region, r.volume, "unreachable", detail=detail))
            continue
        seconds = round(time.monotonic() - start, 3)
        if sha == rec.sha256:
            rec = _mark(ctx, rec, r, ReplicaState.COMPLETED, **copies.verified_fields(ctx, r))
            rows.append(ScrubRow(rec.ref, r.region, r.volume, "ok", size, seconds))
        else:
            why = f"sha256 {sha[:12]} differs from the version's {rec.sha256[:12]}"
            rec = _mark(ctx, rec, r, ReplicaState.CORRUPT, reason=f"scrub: {why}")
            rows.append(ScrubRow(rec.ref, r.region, r.volume, "corrupt", size, seconds, why))
    return rows


def _mark(
    ctx: Context, rec: ImageVersion, r: Replica, state: ReplicaState, **fields: object
) -> ImageVersion:
    def change(cur: ImageVersion) -> ImageVersion:
        reps = tuple(x.moved(state, **fields) if x.key == r.key else x for x in cur.replicas)
        return dataclasses.replace(cur, replicas=reps)

    return ctx.store.update_version(rec.gallery, rec.definition, rec.name, change)


def heal(
    ctx: Context,
    gallery: str | None = None,
    definition: str | None = None,
    version: str | None = None,
) -> list[ScrubRow]:
    """Copy every corrupt replica again from a verified one; one that clones depend on is
    kept, and its row names them."""
    rows: list[ScrubRow] = []
    for rec in versions_in(ctx, gallery, definition, version):
        corrupt = [r for r in rec.replicas if r.state == ReplicaState.CORRUPT]
        if not corrupt:
            continue
        with ctx.store.version_operation(rec.gallery, rec.definition, rec.name):
            deps = targets.find_dependents(ctx, corrupt)
            healable = []
            for r in corrupt:
                if deps.get(r.path):
                    names = ", ".join(f"{d.kind} {d.name}" for d in deps[r.path])
                    rows.append(ScrubRow(rec.ref, r.region, r.volume, "kept", detail=names))
                    continue
                copies.remove_files(ctx.hv(r.location), r.pool, r.volume)
                rec = _mark(ctx, rec, r, ReplicaState.PENDING, reason="", progress=0)
                healable.append(r)
            if healable:
                rec = replication.run(ctx, rec, lock_held=True)
        for r in healable:
            now = next(x for x in rec.replicas if x.key == r.key)
            outcome: Outcome = "healed" if now.state == ReplicaState.COMPLETED else "corrupt"
            rows.append(ScrubRow(rec.ref, r.region, r.volume, outcome, detail=now.reason))
    return rows
