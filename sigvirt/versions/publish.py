"""Image versions: prepare the whole change as a plan, then claim, import, publish and
replicate; update and delete.

A version is created in three durable steps, each one atomic in the store:
  1. claim: the record appears in state `creating` while this process holds the version's
     op lock (a second creator gets Conflict; a killed creator leaves a claim whose lock
     is free, which the next writer recognizes as stale and cleans up);
  2. import: the source passes the gate, is converted to a standalone qcow2 under a
     temporary name in the source region, hashed, gated again, renamed;
  3. publish: the record becomes `succeeded` with its first replica completed; the other
     replicas follow (replication), now or in the background (--no-wait).
Nothing is written before the plan is whole: the source parsed and resolved, the regions
and targets checked, every replica's place computed (the way virtinst prepares, then
executes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sigvirt import faults
from sigvirt.catalog import dates, names
from sigvirt.catalog.fileio import fsync_dir
from sigvirt.catalog.names import ImageRef, shorten
from sigvirt.catalog.records import (
    BootTest,
    BootTestState,
    ImageVersion,
    Replica,
    ReplicaState,
    VersionState,
    aggregate,
    now,
)
from sigvirt.catalog.store import CorruptRecord
from sigvirt.context import Context
from sigvirt.errors import (
    Conflict,
    HasDependents,
    InvalidArgument,
    NoSpace,
    NotFound,
    RegionUnavailable,
    SigvirtError,
)
from sigvirt.hosts import hostshell, streams, xmlbuild
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import RegionsConfig
from sigvirt.sharing import share
from sigvirt.sharing.plan import protect_replica
from sigvirt.versions import copies, dependents, replication, sources, targets
from sigvirt.versions.sources import Imported, Source, copy_version, import_into, resolve_source
from sigvirt.versions.transfer import ChecksumMismatch


@dataclass(frozen=True)
class VersionInput:
    source: str
    source_format: str | None = None
    target_regions: list[str] | None = None
    replica_count: int | None = None
    exclude_from_latest: bool = False
    end_of_life: str | None = None
    location: str | None = None
    tags: dict[str, str] | None = None
    excluded_regions: tuple[str, ...] = ()  # not latest there
    replication_mode: str = "Full"  # Full | Shallow (only the source region, one replica)
    storage_type: str | None = None  # of every region --target-regions gives none (az default)


REPLICATION_MODES = ("Full", "Shallow")


def _replication_mode(mode: str) -> Literal["Full", "Shallow"]:
    for known in REPLICATION_MODES:
        if known.lower() == mode.lower():
            return "Full" if known == "Full" else "Shallow"
    raise InvalidArgument(f"--replication-mode must be Full or Shallow (got {shorten(mode)})")


def _shallow_check(mode: str, wanted: dict[str, int], source_region: str) -> None:
    """Azure's shallow replication keeps one copy in the source region only (for tests)."""
    if mode == "Shallow" and wanted != {source_region: 1}:
        raise InvalidArgument(
            f"--replication-mode Shallow keeps one replica in the source region "
            f"({source_region}) only; --target-regions and --replica-count can't ask for more"
        )


def _excluded(
    regions_: list[str] | tuple[str, ...], wanted: dict[str, int], config: RegionsConfig
) -> tuple[str, ...]:
    out = []
    for name in regions_:
        region = targets.normalize_region(name, config)
        if region not in wanted:
            raise InvalidArgument(
                f"--target-region-exclude-from-latest {shorten(name)}: not a target region of "
                f"this version ({', '.join(wanted)})"
            )
        out.append(region)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class CreatePlan:
    """Everything `image-version create` will do, checked before anything is written."""

    record: ImageVersion  # the claim: state creating, its first replica copying
    source: Source
    copy_of: ImageVersion | None  # for a version source: the version copied
    source_format: str | None
    replication: targets.Plan  # the other replicas, recorded as pending once published

    @property
    def first(self) -> Replica:
        return self.record.replicas[0]


# -- claims -----------------------------------------------------------------------------------
def _cleanup_stale(ctx: Context, rec: ImageVersion, *, keep_op_lock: bool = False) -> None:
    """Remove what a killed or failed creator left: partial and unfinished files, then the
    record. Caller holds the version's op lock and the definition lock."""
    for r in rec.replicas:
        if r.state == ReplicaState.COMPLETED:
            continue
        with contextlib.suppress(SigvirtError):
            hv = ctx.hv(r.region)
            # The files were written beside libvirt, not through it: it sees them only
            # after a refresh.
            hv.refresh_pool(r.pool)
            hv.delete_volume(r.pool, targets.partial_name(r.volume))
            hv.delete_volume(r.pool, r.volume)
    ctx.store.remove_version_record(
        rec.gallery, rec.definition, rec.name, keep_op_lock=keep_op_lock
    )


def clean_stale_claims(ctx: Context, gallery: str, definition: str) -> list[str]:
    """Every version of a definition stuck in `creating` with nobody holding it."""
    cleaned = []
    for rec in ctx.store.list_versions(gallery, definition):
        if rec.state != VersionState.CREATING:
            continue
        try:
            with (
                ctx.store.version_operation(gallery, definition, rec.name),
                ctx.store.definition_lock(gallery, definition),
            ):
                current = ctx.store.get_version(gallery, definition, rec.name)
                if current.state == VersionState.CREATING:
                    _cleanup_stale(ctx, current)
                    cleaned.append(rec.name)
        except (Conflict, NotFound):
            continue  # its creator is alive, or it is gone already
    return cleaned


@contextlib.contextmanager
def _claim(ctx: Context, rec: ImageVersion) -> Iterator[None]:
    """Hold the version's op lock and write its `creating` record; release at the end."""

    def busy() -> SigvirtError:
        return Conflict(f"image version {rec.ref} is being created by another process")

    with ctx.store.version_operation(rec.gallery, rec.definition, rec.name, busy):
        with ctx.store.definition_lock(rec.gallery, rec.definition):
            try:
                existing = ctx.store.get_version(rec.gallery, rec.definition, rec.name)
            except NotFound:
                existing = None
            if existing is not None and existing.state == VersionState.CREATING:
                # We hold its op lock, so its creator is gone; we keep the lock (and its file).
                _cleanup_stale(ctx, existing, keep_op_lock=True)
            elif existing is not None:
                unfinished = existing.published_ok and aggregate(existing)[0] != "Completed"
                raise Conflict(
                    f"image version {rec.ref} already exists",
                    hint="its replication was interrupted: sigvirt sig image-version replicate "
                    f"--gallery-name {rec.gallery} --gallery-image-definition {rec.definition} "
                    f"--gallery-image-version {rec.name}"
                    if unfinished
                    else None,
                )
            ctx.store.create_version(rec)
        faults.point("version.claimed")
        yield


# -- create -----------------------------------------------------------------------------------
def prepare_create(
    ctx: Context, gallery: str, definition: str, version: str, inp: VersionInput
) -> CreatePlan:
    """Check the whole request and compute what creating the version will do (read-only)."""
    names.gallery_name(gallery)
    names.definition_name(definition)
    version = str(names.Version.parse(version))
    gal = ctx.store.get_gallery(gallery)
    spec = ctx.store.get_definition(gallery, definition).test_spec
    ctx.store.require(gallery, "contributor", definition, "publish versions of")
    source_region = targets.normalize_region(inp.location or gal.location, ctx.regions)
    wanted = targets.parse_targets(
        inp.target_regions, inp.replica_count, source_region, ctx.regions
    )
    kinds = targets.resolve_types(inp.target_regions, wanted, ctx.regions, inp.storage_type)
    mode = _replication_mode(inp.replication_mode)
    _shallow_check(mode, wanted, source_region)
    excluded = _excluded(inp.excluded_regions, wanted, ctx.regions)
    eol = dates.parse_date(inp.end_of_life)
    src, copy_of = resolve_source(ctx, inp.source)
    hv = ctx.hv(source_region)
    pool = targets.pools_for(ctx.regions.region(source_region), kinds.get(source_region))[0]
    rec = ImageVersion(
        gallery=gallery,
        definition=definition,
        name=version,
        state=VersionState.CREATING,
        source=str(src),
        source_region=source_region,
        target_regions=wanted,
        replica_count=inp.replica_count or 1,
        exclude_from_latest=inp.exclude_from_latest,
        end_of_life=eol,
        created=now(),
        tags=dict(inp.tags or {}),
        excluded_regions=excluded,
        storage_types=kinds,
        replication_mode=mode,
        # The definition has a boot test: not eligible for latest until it passes.
        boot_test=BootTest(BootTestState.PENDING, spec.spec_sha256) if spec else BootTest(),
    )
    first_vol = targets.volume_name(rec, source_region, 0)
    first = Replica(source_region, pool.name, first_vol, str(hv.pool_path(pool.name) / first_vol))
    rec = dataclasses.replace(rec, replicas=(first.moved(ReplicaState.COPYING),))
    rest = targets.plan(rec, wanted, ctx.regions, {}, targets.pool_path_lookup(ctx))
    return CreatePlan(rec, src, copy_of, inp.source_format, rest)


def create_version(
    ctx: Context,
    gallery: str,
    definition: str,
    version: str,
    inp: VersionInput,
    *,
    progress: replication.ReplicaProgress | None = None,
    wait: bool = True,
) -> ImageVersion:
    """Publish a version: plan, claim, import into the source region, replicate."""
    p = prepare_create(ctx, gallery, definition, version, inp)
    clean_stale_claims(ctx, gallery, definition)
    rec = p.record
    with _claim(ctx, rec):
        try:
            rec = _publish_first(ctx, p)
        except BaseException:
            with ctx.store.definition_lock(gallery, definition):
                _cleanup_stale(ctx, rec)
            raise
        rec = replication.apply(ctx, rec, p.replication)
    if wait:
        rec = replication.run(ctx, rec, progress)
        _share_files(ctx, rec)
        return rec
    start_background(ctx, rec)
    return rec


def replicate(
    ctx: Context, ref: ImageRef, progress: replication.ReplicaProgress | None = None
) -> ImageVersion:
    """Resume: every missing or failed replica of a version to completed, then shared."""
    assert ref.version is not None
    rec = replication.run(
        ctx, ctx.store.get_version(ref.gallery, ref.definition, ref.version), progress
    )
    _share_files(ctx, rec)
    return rec


def _share_files(ctx: Context, rec: ImageVersion) -> None:
    """New replicas get the gallery's group and ACLs (through the root helper if needed)."""
    share.sync_files(ctx, rec.gallery)


def _direct(hv: Hypervisor, pool: str) -> Path | None:
    """The pool's directory when this process may write there itself; None: go through
    libvirt (a remote host, or a caller who isn't root)."""
    if not hv.is_local:
        return None
    directory = hv.pool_path(pool)
    return directory if os.access(directory, os.W_OK) else None


def _import(ctx: Context, p: CreatePlan, dest: Path) -> Imported:
    if p.copy_of is not None:
        imported = copy_version(ctx, p.copy_of, dest)
    else:
        imported = import_into(ctx, p.source, p.source_format, p.first.region, dest)
    faults.point("version.imported")
    return imported


def _publish_first(ctx: Context, p: CreatePlan) -> ImageVersion:
    first = p.first
    hv = ctx.hv(first.region)
    needed = sources.size_hint(ctx, p.source, p.copy_of, first.region)
    copies.ensure_room(hv, first.region, first.pool, needed)
    partial_vol = targets.partial_name(first.volume)
    direct = _direct(hv, first.pool)
    if direct is not None:
        partial = direct / partial_vol
        partial.unlink(missing_ok=True)
        try:
            imported = _import(ctx, p, partial)
            protect_replica(partial)
            os.rename(partial, first.path)
            fsync_dir(Path(first.path).parent)
        except OSError as err:
            partial.unlink(missing_ok=True)
            if err.errno == errno.ENOSPC:
                raise NoSpace(f"no space left on device writing {partial}") from None
            raise
        faults.point("version.renamed")
        hv.refresh_pool(first.pool)
    else:
        staging = ctx.tmpdir / f".sigvirt-import-{os.getpid()}-{first.volume}"
        try:
            imported = _import(ctx, p, staging)
            vol = hv.create_volume(
                first.pool,
                xmlbuild.raw_volume_xml(partial_vol, staging.stat().st_size, 0o644),
            )
            sent = streams.upload_file(vol, staging)
            if sent.sha256 != imported.sha256:
                raise ChecksumMismatch(volume=first.volume, got=sent.sha256, want=imported.sha256)
            hostshell.rename_volume(hv, first.pool, partial_vol, first.volume)
            faults.point("version.renamed")
        finally:
            staging.unlink(missing_ok=True)
    done = first.moved(ReplicaState.VERIFYING).moved(
        ReplicaState.COMPLETED, progress=100, **copies.verified_fields(ctx, first)
    )
    rec = p.record.moved(
        VersionState.SUCCEEDED,
        sha256=imported.sha256,
        virtual_size=imported.virtual_size,
        allocated_size=imported.allocated_size,
        warnings=imported.warnings,
        replicas=(done,),
        published=now(),
    )
    with ctx.store.definition_lock(rec.gallery, rec.definition):
        ctx.store.put_version(rec)
    faults.point("version.published")
    return rec


def start_background(ctx: Context, rec: ImageVersion) -> None:
    """Replication in a detached process (`--no-wait`); `image-version wait` follows it."""
    argv = [
        sys.executable, "-m", "sigvirt", "sig", "image-version", "replicate",
        "--gallery-name", rec.gallery, "--gallery-image-definition", rec.definition,
        "--gallery-image-version", rec.name, "--quiet",
    ]  # fmt: skip
    log = ctx.store.versions_dir(rec.gallery, rec.definition) / f".{rec.name}.replicate.log"
    ctx.runner.spawn_detached(argv, log)


# -- update / delete --------------------------------------------------------------------------
def update_version(
    ctx: Context,
    ref: ImageRef,
    *,
    target_regions: list[str] | None = None,
    replica_count: int | None = None,
    exclude_from_latest: bool | None = None,
    end_of_life: str | None = None,
    tags: dict[str, str] | None = None,
    excluded_regions: list[str] | None = None,
    storage_type: str | None = None,
    progress: replication.ReplicaProgress | None = None,
    wait: bool = True,
) -> ImageVersion:
    """Change target regions and counts (replicas are added or removed, then resumed),
    latest (everywhere, or per region), end of life, tags. Everything is checked before
    the record changes."""
    assert ref.version is not None
    rec = ctx.store.get_version(ref.gallery, ref.definition, ref.version)
    ctx.store.require(ref.gallery, "contributor", f"{ref.definition}/{rec.name}", "update")
    if rec.state != VersionState.SUCCEEDED:
        raise Conflict(f"image version {rec.ref} is {rec.state}; only published versions change")
    eol = dates.parse_date(end_of_life) if end_of_life is not None else None
    wanted = None
    kinds = dict(rec.storage_types)
    if target_regions is not None or replica_count is not None:
        # A region given without a count gets the version's own replica count, as in az.
        wanted = targets.parse_targets(
            target_regions, replica_count or rec.replica_count, rec.source_region,
            ctx.regions, rec.target_regions,
        )  # fmt: skip
        _shallow_check(rec.replication_mode, wanted, rec.source_region)
        kinds = targets.resolve_types(
            target_regions, wanted, ctx.regions, storage_type, rec.storage_types
        )
    excluded = None
    if excluded_regions is not None:
        excluded = _excluded(excluded_regions, wanted or rec.target_regions, ctx.regions)

    def change(cur: ImageVersion) -> ImageVersion:
        out = cur
        if exclude_from_latest is not None:
            out = dataclasses.replace(out, exclude_from_latest=exclude_from_latest)
        if eol is not None:
            out = dataclasses.replace(out, end_of_life=eol)
        if replica_count is not None:
            out = dataclasses.replace(out, replica_count=replica_count)
        if tags is not None:
            out = dataclasses.replace(out, tags=dict(tags))
        if excluded is not None:
            out = dataclasses.replace(out, excluded_regions=excluded)
        if wanted is not None:
            kept = tuple(r for r in out.excluded_regions if r in wanted)
            out = dataclasses.replace(out, storage_types=kinds, excluded_regions=kept)
        return out

    rec = ctx.store.update_version(ref.gallery, ref.definition, ref.version, change)
    faults.point("version.updated")
    if wanted is None:
        return rec
    with ctx.store.version_operation(rec.gallery, rec.definition, rec.name):
        deps = targets.dependents_for(ctx, rec, wanted)
        lookup = targets.pool_path_lookup(ctx)
        p = targets.plan(rec, wanted, ctx.regions, deps, lookup, copies.suspects(ctx, rec))
        rec = replication.apply(ctx, rec, p)
        if wait:
            rec = replication.run(ctx, rec, progress, lock_held=True)
    if wait:
        _share_files(ctx, rec)
        return rec
    start_background(ctx, rec)
    return rec


def delete_version(ctx: Context, ref: ImageRef, *, force: bool = False) -> ImageVersion | None:
    """Delete every replica and the record; refused while any clone depends on a replica.

    The record says `deleting` (and each replica too) before a byte is removed, so a killed
    delete leaves a version nothing deploys and that `latest` skips, which the next delete
    finishes. `force` removes a record that doesn't parse, with the replica files its name
    identifies (G-D-V-*.qcow2 in every pool of every region); it returns None then.
    """
    assert ref.version is not None
    clean_stale_claims(ctx, ref.gallery, ref.definition)
    try:
        rec = ctx.store.get_version(ref.gallery, ref.definition, ref.version)
    except CorruptRecord:
        if not force:
            raise
        _force_delete(ctx, ref)
        return None
    ctx.store.require(ref.gallery, "owner", f"{ref.definition}/{rec.name}", "delete")
    with ctx.store.version_operation(rec.gallery, rec.definition, rec.name):
        rec = ctx.store.get_version(ref.gallery, ref.definition, ref.version)
        live = [r for r in rec.replicas if r.state != ReplicaState.DELETING]
        deps = targets.find_dependents(ctx, live)
        if deps:
            found = [d for ds in deps.values() for d in ds]
            raise HasDependents(
                f"image version {rec.ref} has dependents: "
                + ", ".join(f"{d.kind} {d.name}" for d in found),
                hint=dependents.how_to_release(found),
            )
        rec = _mark_deleting(ctx, rec)
        faults.point("version.deleting")
        for r in rec.replicas:
            try:
                copies.remove_files(ctx.hv(r.region), r.pool, r.volume)
            except RegionUnavailable:
                if r.verified:  # bytes may be there: the host must answer before we forget it
                    raise
            faults.point("version.replica-removed")
        with ctx.store.definition_lock(ref.gallery, ref.definition):
            ctx.store.remove_version_record(ref.gallery, ref.definition, ref.version)
    return rec


def _mark_deleting(ctx: Context, rec: ImageVersion) -> ImageVersion:
    def change(cur: ImageVersion) -> ImageVersion:
        reps = tuple(
            r if r.state == ReplicaState.DELETING else replication.retire(r) for r in cur.replicas
        )
        if cur.state == VersionState.DELETING:
            return dataclasses.replace(cur, replicas=reps)
        return cur.moved(VersionState.DELETING, replicas=reps)

    return ctx.store.update_version(rec.gallery, rec.definition, rec.name, change)


def _force_delete(ctx: Context, ref: ImageRef) -> None:
    """A damaged record and the files its name identifies; nothing a clone still uses."""
    assert ref.version is not None
    ctx.store.require(ref.gallery, "owner", f"{ref.definition}/{ref.version}", "delete")
    prefix = f"{ref.gallery}-{ref.definition}-{ref.version}-"
    with ctx.store.version_operation(ref.gallery, ref.definition, ref.version):
        for name, cfg in ctx.regions.regions.items():
            hv = ctx.hv(name)
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
