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
from typing import Any, Literal

from sigvirt import faults
from sigvirt.catalog import dates, names
from sigvirt.catalog.fileio import fsync_dir
from sigvirt.catalog.names import ImageRef, shorten
from sigvirt.catalog.plans import Action, Journal, Plan, note
from sigvirt.catalog.records import (
    HIDDEN,
    BootTest,
    BootTestState,
    ImageVersion,
    Replica,
    ReplicaState,
    VersionState,
    aggregate,
    now,
    reuse_line,
)
from sigvirt.context import Context
from sigvirt.errors import (
    Conflict,
    InvalidArgument,
    NoSpace,
    NotFound,
    SigvirtError,
)
from sigvirt.hosts import hostshell, streams, xmlbuild
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import RegionsConfig
from sigvirt.sharing import share
from sigvirt.sharing.plan import protect_replica
from sigvirt.versions import copies, replication, safety, sources, targets
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
    # the safety profile (versions/safety.py)
    allow_replicated_location_deletion: bool = False
    block_deletion_before_end_of_life: bool = False


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

    def actions(self, size: int) -> list[Action]:
        """The plan as actions (`size`: about what the import writes, and each copy)."""
        return [
            Action("create-record", "version", self.record.ref),
            targets.import_action(self.first, size, self.record.source),
            *(targets.copy_action(r, size) for r in self.replication.add),
        ]


# -- claims -----------------------------------------------------------------------------------
def _cleanup_stale(ctx: Context, rec: ImageVersion, *, keep_op_lock: bool = False) -> None:
    """Remove what a killed or failed creator left: partial and unfinished files, then the
    record. Caller holds the version's op lock and the definition lock."""
    for r in rec.replicas:
        if r.state == ReplicaState.COMPLETED:
            continue
        with contextlib.suppress(SigvirtError):
            hv = ctx.hv(r.location)
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
                existing = ctx.store.get_version(rec.gallery, rec.definition, rec.name, hidden=True)
            except NotFound:
                existing = None
            if existing is not None and existing.state in HIDDEN:
                raise Conflict(reuse_line(existing))
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
    safety.require_date(inp.block_deletion_before_end_of_life, eol)
    src, copy_of = resolve_source(ctx, inp.source)
    home = ctx.regions.locations(source_region)[0]  # a zoned region's first zone
    hv = ctx.hv(home)
    pool = targets.pools_for(ctx.regions.region(home), kinds.get(source_region))[0]
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
    rec = safety.settings(
        rec, inp.allow_replicated_location_deletion, inp.block_deletion_before_end_of_life
    )
    first_vol = targets.volume_name(rec, source_region, 0)
    first = Replica(
        source_region, pool.name, first_vol, str(hv.pool_path(pool.name) / first_vol),
        zone=ctx.regions.region(home).zone,
    )  # fmt: skip
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
    journal: Journal | None = None,
    dry_run: bool = False,
) -> ImageVersion:
    """Publish a version: plan, claim, import into the source region, replicate. Each
    action taken is reported to `journal`; with `dry_run`, the plan's actions are, and
    nothing changes (the claim it would write is returned)."""
    p = prepare_create(ctx, gallery, definition, version, inp)
    if dry_run:
        _refuse_taken(ctx, p.record)
        if journal is not None:
            journal.extend(p.actions(sources.size_hint(ctx, p.source, p.copy_of, p.first.location)))
        return p.record
    clean_stale_claims(ctx, gallery, definition)
    rec = p.record
    with _claim(ctx, rec):
        note(journal, Action("create-record", "version", rec.ref))
        try:
            rec = _publish_first(ctx, p)
        except BaseException:
            with ctx.store.definition_lock(gallery, definition):
                _cleanup_stale(ctx, rec)
            raise
        note(journal, targets.import_action(rec.replicas[0], rec.allocated_size, rec.source))
        rec = replication.apply(ctx, rec, p.replication, journal)
    if wait:
        rec = replication.run(ctx, rec, progress, journal=journal)
        _share_files(ctx, rec)
        return rec
    start_background(ctx, rec)
    return rec


def _refuse_taken(ctx: Context, rec: ImageVersion) -> None:
    """What _claim refuses, read-only: a version of that name that is no stale claim."""
    try:
        existing = ctx.store.get_version(rec.gallery, rec.definition, rec.name, hidden=True)
    except NotFound:
        return
    if existing.state in HIDDEN:
        raise Conflict(reuse_line(existing))
    if existing.state != VersionState.CREATING:
        raise Conflict(f"image version {rec.ref} already exists")


def plan_create(
    ctx: Context, gallery: str, definition: str, version: str, inp: VersionInput
) -> Plan:
    """What `image-version create` would do, as data; nothing changes."""
    j = Journal()
    create_version(ctx, gallery, definition, version, inp, journal=j, dry_run=True)
    return j.plan("image-version create", f"{gallery}/{definition}/{version}", dry_run=True)


def replicate(
    ctx: Context,
    ref: ImageRef,
    progress: replication.ReplicaProgress | None = None,
    journal: Journal | None = None,
) -> ImageVersion:
    """Resume: every missing or failed replica of a version to completed, then shared."""
    assert ref.version is not None
    rec = replication.run(
        ctx, ctx.store.get_version(ref.gallery, ref.definition, ref.version), progress,
        journal=journal,
    )  # fmt: skip
    _share_files(ctx, rec)
    return rec


def plan_replicate(ctx: Context, ref: ImageRef) -> Plan:
    """What `image-version replicate` would do, as data; nothing changes."""
    assert ref.version is not None
    rec = ctx.store.get_version(ref.gallery, ref.definition, ref.version)
    actions = replication.plan_actions(ctx, rec)
    return Plan("image-version replicate", rec.ref, tuple(actions))


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
        d = ctx.store.get_definition(p.record.gallery, p.record.definition)
        live = d.os_state == "Specialized"  # its VM's identity is the image: it may run
        imported = import_into(ctx, p.source, p.source_format, p.first.location, dest, live=live)
    faults.point("version.imported")
    return imported


def _publish_first(ctx: Context, p: CreatePlan) -> ImageVersion:
    first = p.first
    hv = ctx.hv(first.location)
    needed = sources.size_hint(ctx, p.source, p.copy_of, first.location)
    copies.ensure_room(hv, first.location, first.pool, needed)
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
    allow_replicated_location_deletion: bool | None = None,
    block_deletion_before_end_of_life: bool | None = None,
    progress: replication.ReplicaProgress | None = None,
    wait: bool = True,
    journal: Journal | None = None,
    dry_run: bool = False,
) -> ImageVersion:
    """Change target regions and counts (replicas are added or removed, then resumed),
    latest (everywhere, or per region), end of life, tags. Everything is checked before
    the record changes. Each action taken is reported to `journal`; with `dry_run`, the
    plan's actions are, and nothing changes (the record as it would be is returned)."""
    assert ref.version is not None
    rec = ctx.store.get_version(ref.gallery, ref.definition, ref.version)
    ctx.store.require(ref.gallery, "contributor", f"{ref.definition}/{rec.name}", "update")
    if rec.state != VersionState.SUCCEEDED:
        raise Conflict(f"image version {rec.ref} is {rec.state}; only published versions change")
    eol = dates.parse_date(end_of_life) if end_of_life is not None else None
    # The safety profile as this update leaves it (az's update sends both flags at once).
    profile = safety.settings(
        dataclasses.replace(rec, end_of_life=eol or rec.end_of_life),
        allow_replicated_location_deletion, block_deletion_before_end_of_life,
    )  # fmt: skip
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
    if wanted is not None:  # refused by the safety profile only once the request is sound
        safety.check_dropped_regions(profile, wanted)

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
        out = safety.settings(
            out, allow_replicated_location_deletion, block_deletion_before_end_of_life
        )
        if wanted is not None:
            kept = tuple(r for r in out.excluded_regions if r in wanted)
            out = dataclasses.replace(out, storage_types=kinds, excluded_regions=kept)
        return out

    if dry_run:
        return _plan_update(ctx, change(rec), wanted, journal)
    rec = ctx.store.update_version(ref.gallery, ref.definition, ref.version, change)
    note(journal, Action("update-record", "version", rec.ref))
    faults.point("version.updated")
    if wanted is None:
        return rec
    with ctx.store.version_operation(rec.gallery, rec.definition, rec.name):
        deps = targets.dependents_for(ctx, rec, wanted)
        lookup = targets.pool_path_lookup(ctx)
        p = targets.plan(rec, wanted, ctx.regions, deps, lookup, copies.suspects(ctx, rec))
        rec = replication.apply(ctx, rec, p, journal)
        if wait:
            rec = replication.run(ctx, rec, progress, lock_held=True, journal=journal)
    if wait:
        _share_files(ctx, rec)
        return rec
    start_background(ctx, rec)
    return rec


def _plan_update(
    ctx: Context, rec: ImageVersion, wanted: dict[str, int] | None, journal: Journal | None
) -> ImageVersion:
    """The update's actions (read-only): `rec` is the record as the update leaves it."""
    actions = [Action("update-record", "version", rec.ref)]
    if wanted is not None:
        replication.refuse_busy(ctx, rec)
        deps = targets.dependents_for(ctx, rec, wanted)
        lookup = targets.pool_path_lookup(ctx)
        p = targets.plan(rec, wanted, ctx.regions, deps, lookup, copies.suspects(ctx, rec))
        if p.blocked:
            raise targets.blocked_error(rec, p.blocked)
        actions += targets.replication_actions(rec, p, lookup)
    if journal is not None:
        journal.extend(actions)
    return rec


def plan_update(ctx: Context, ref: ImageRef, **changes: Any) -> Plan:
    """What `image-version update` would do with these changes (update_version's keywords),
    as data; nothing changes."""
    j = Journal()
    rec = update_version(ctx, ref, **changes, journal=j, dry_run=True)
    return j.plan("image-version update", rec.ref, dry_run=True)
