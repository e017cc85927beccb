"""Image versions: claim, import through the gate, first replica, then replication; delete.

A version is created in three durable steps, each one atomic in the store:
  1. claim: the record appears in state `creating` while this process holds the version's
     op lock (a second creator gets Conflict; a killed creator leaves a claim whose lock
     is free, which the next writer recognizes as stale and cleans up);
  2. import: the source passes the gate, is converted to a standalone qcow2 under a
     temporary name in the source region, hashed, gated again, renamed;
  3. publish: the record becomes `succeeded` with its first replica completed; the other
     replicas follow (replication), now or in the background (--no-wait).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import libvirt

from sigvirt import catalog, imagecheck, names, perms, replication, transfer
from sigvirt.context import Context
from sigvirt.errors import Conflict, HasDependents, InvalidName, NotFound, SigvirtError
from sigvirt.hypervisor import Hypervisor
from sigvirt.names import ImageRef
from sigvirt.records import (
    COMPLETED,
    COPYING,
    CREATING,
    SUCCEEDED,
    ImageVersion,
    Replica,
    now,
)
from sigvirt.store import fsync_dir

SourceKind = Literal["file", "volume", "vm", "version"]


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    ref: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.ref}"


def parse_source(text: str) -> Source:
    """A file, `pool/volume`, `vm:NAME`, or another version (`G/D/V` or an Azure id).
    Explicit prefixes (`file:`, `volume:`, `vm:`, `version:`) settle any ambiguity."""
    for kind in ("file", "volume", "vm", "version"):
        if text.startswith(kind + ":"):
            return Source(kind, text[len(kind) + 1 :])
    if text.startswith("/subscriptions/"):
        return Source("version", text)
    if os.path.lexists(text):
        return Source("file", text)
    parts = text.split("/")
    if len(parts) == 3:
        with contextlib.suppress(InvalidName):
            names.parse_image_ref(text)
            return Source("version", text)
    if len(parts) == 2 and all(parts) and not text.startswith("."):
        return Source("volume", text)
    raise NotFound(f"--source {text}: no such file, pool/volume, vm:NAME or image version")


@dataclass(frozen=True)
class VersionInput:
    source: str
    source_format: str | None = None
    target_regions: list[str] | None = None
    replica_count: int | None = None
    exclude_from_latest: bool = False
    end_of_life: str | None = None
    location: str | None = None


# -- claims -----------------------------------------------------------------------------------
def _cleanup_stale(ctx: Context, rec: ImageVersion, *, keep_op_lock: bool = False) -> None:
    """Remove what a killed or failed creator left: partial and unfinished files, then the
    record. Caller holds the version's op lock and the definition lock."""
    for r in rec.replicas:
        if r.state == COMPLETED:
            continue
        with contextlib.suppress(SigvirtError):
            hv = ctx.hv(r.region)
            # The files were written beside libvirt, not through it: it sees them only
            # after a refresh.
            hv.call(f"refresh pool {r.pool}", hv.pool(r.pool).refresh, 0)
            hv.delete_volume(r.pool, replication.partial_name(r.volume))
            hv.delete_volume(r.pool, r.volume)
    ctx.store.remove_version_record(
        rec.gallery, rec.definition, rec.name, keep_op_lock=keep_op_lock
    )


def clean_stale_claims(ctx: Context, gallery: str, definition: str) -> list[str]:
    """Every version of a definition stuck in `creating` with nobody holding it."""
    cleaned = []
    for rec in ctx.store.list_versions(gallery, definition):
        if rec.state != CREATING:
            continue
        try:
            with replication.op_lock(ctx, rec), ctx.store.definition_lock(gallery, definition):
                current = ctx.store.get_version(gallery, definition, rec.name)
                if current.state == CREATING:
                    _cleanup_stale(ctx, current)
                    cleaned.append(rec.name)
        except (Conflict, NotFound):
            continue  # its creator is alive, or it is gone already
    return cleaned


@contextlib.contextmanager
def _claim(ctx: Context, rec: ImageVersion) -> Iterator[None]:
    """Hold the version's op lock and write its `creating` record; release at the end."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(replication.op_lock(ctx, rec))
        except Conflict:
            raise Conflict(f"image version {rec.ref} is being created by another process") from None
        with ctx.store.definition_lock(rec.gallery, rec.definition):
            try:
                existing = ctx.store.get_version(rec.gallery, rec.definition, rec.name)
            except NotFound:
                existing = None
            if existing is not None and existing.state == CREATING:
                # We hold its op lock, so its creator is gone; we keep the lock (and its file).
                _cleanup_stale(ctx, existing, keep_op_lock=True)
            elif existing is not None:
                raise Conflict(f"image version {rec.ref} already exists")
            ctx.store.create_version(rec)
        yield


# -- import -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Imported:
    sha256: str
    virtual_size: int
    allocated_size: int
    warnings: tuple[str, ...]


def _local_source_path(
    ctx: Context, src: Source, region: str, staging: Path
) -> tuple[Path, str | None]:
    """A local file qemu-img can read for this source, and the format to declare (None = detect)."""
    if src.kind == "file":
        return Path(src.ref), None
    hv = ctx.hv(region)
    if src.kind == "volume":
        pool, _, vol = src.ref.partition("/")
        v = hv.volume(pool, vol)
        if hv.is_local:
            return Path(v.path()), None
        transfer.download_file(hv.conn, v, staging)
        return staging, None
    if src.kind == "vm":
        return _vm_disk(ctx, src.ref, region), "vm"
    raise AssertionError(src.kind)


def _vm_disk(ctx: Context, name: str, region: str) -> Path:
    hv = ctx.hv(region)
    if not hv.is_local:
        raise SigvirtError(f"vm:{name}: capturing a VM's disk works on local regions only")
    dom = hv.domain(name)
    if dom.isActive():
        raise Conflict(f"vm:{name} is running; stop it first (sigvirt vm stop --name {name})")
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    for disk in root.findall("./devices/disk[@device='disk']"):
        src = disk.find("source")
        driver = disk.find("driver")
        if (
            src is not None
            and src.get("file")
            and (driver is None or driver.get("type") == "qcow2")
        ):
            return Path(src.get("file", ""))
    raise NotFound(f"vm:{name} has no qcow2 file disk to capture")


def import_into(
    ctx: Context,
    src: Source,
    declared: str | None,
    region: str,
    pool: str,
    partial: Path,
) -> Imported:
    """Gate the source, convert it to a standalone qcow2 at `partial` (a local path)."""
    staging = ctx.tmpdir / f".sigvirt-staging-{os.getpid()}-{partial.name}"
    try:
        path, detected = _local_source_path(ctx, src, region, staging)
        if detected == "vm":
            # A VM's disk is an overlay: flatten the chain libvirt runs it with, then gate
            # the standalone result like any user image.
            ctx.qemu_img.convert(path, "qcow2", partial, "qcow2")
            warnings: tuple[str, ...] = ()
        else:
            verified = imagecheck.inspect(path, declared, ctx.qemu_img)
            ctx.qemu_img.convert(path, verified.format, partial, "qcow2")
            # convert opened the path again: refuse unless it still names the file the gate
            # passed (a swap to a qcow2 with a backing file would copy that file's bytes).
            imagecheck.verify(path, verified.facts, ctx.qemu_img)
            warnings = verified.warnings
        final = imagecheck.inspect(partial, "qcow2", ctx.qemu_img)
        sha = transfer.sha256_file(partial)
        st = partial.stat()
        return Imported(sha, final.virtual_size, st.st_blocks * 512, warnings + final.warnings)
    finally:
        staging.unlink(missing_ok=True)


# -- create -----------------------------------------------------------------------------------
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
    names.gallery_name(gallery)
    names.definition_name(definition)
    version = str(names.Version.parse(version))
    gal = ctx.store.get_gallery(gallery)
    ctx.store.get_definition(gallery, definition)
    ctx.store.require(gallery, "contributor", definition, "publish versions of")
    src = parse_source(inp.source)
    if src.kind == "volume" and _names_definition(ctx, src.ref):
        src = Source("version", src.ref)  # `G/D`: the latest version of that definition
    source_region = replication.normalize_region(inp.location or gal.location, ctx.regions)
    targets = replication.parse_targets(
        inp.target_regions, inp.replica_count, source_region, ctx.regions
    )
    eol = catalog.parse_date(inp.end_of_life)
    if src.kind == "version":
        copy_of = catalog.resolve(ctx.store, names.parse_image_ref(src.ref))
        if not copy_of.published_ok:
            raise Conflict(f"--source {src.ref}: version {copy_of.ref} is not published")
        src = Source("version", copy_of.ref)  # what `latest` means now, copied and recorded
    hv = ctx.hv(source_region)
    pool_cfg = ctx.regions.region(source_region).pools[0]
    rec = ImageVersion(
        gallery=gallery,
        definition=definition,
        name=version,
        state=CREATING,
        source=str(src),
        source_region=source_region,
        target_regions=targets,
        replica_count=inp.replica_count or 1,
        exclude_from_latest=inp.exclude_from_latest,
        end_of_life=eol,
        created=now(),
    )
    first_vol = replication.volume_name(rec, source_region, 0)
    first = Replica(
        source_region, pool_cfg.name, first_vol, str(hv.pool_path(pool_cfg.name) / first_vol)
    )
    rec = dataclasses.replace(rec, replicas=(first.moved(COPYING),))
    with _claim(ctx, rec):
        try:
            rec = _publish_first(ctx, rec, src, inp.source_format)
        except BaseException:
            with ctx.store.definition_lock(gallery, definition):
                _cleanup_stale(ctx, rec)
            raise
        p = replication.plan(rec, targets, ctx.regions, {}, replication.pool_path_lookup(ctx))
        rec = replication.apply(ctx, rec, p)
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
    from sigvirt import access

    access.sync_files(ctx.store, rec.gallery, ctx.runner)


def _names_definition(ctx: Context, ref: str) -> bool:
    g, _, d = ref.partition("/")
    try:
        names.gallery_name(g)
        names.definition_name(d)
        ctx.store.get_definition(g, d)
    except SigvirtError:
        return False
    return True


def _direct(hv: Hypervisor, pool: str) -> Path | None:
    """The pool's directory when this process may write there itself; None: go through
    libvirt (a remote host, or a caller who isn't root)."""
    if not hv.is_local:
        return None
    directory = hv.pool_path(pool)
    return directory if os.access(directory, os.W_OK) else None


def _publish_first(
    ctx: Context, rec: ImageVersion, src: Source, declared: str | None
) -> ImageVersion:
    first = rec.replicas[0]
    hv = ctx.hv(first.region)
    partial_vol = replication.partial_name(first.volume)
    direct = _direct(hv, first.pool)
    if direct is not None:
        partial = direct / partial_vol
        partial.unlink(missing_ok=True)
        if src.kind == "version":
            imported = _copy_version(ctx, src, partial)
        else:
            imported = import_into(ctx, src, declared, first.region, first.pool, partial)
        perms.protect_replica(partial, ctx.runner)
        os.rename(partial, first.path)
        fsync_dir(Path(first.path).parent)
        hv.call("refresh pool", hv.pool(first.pool).refresh, 0)
    else:
        staging = ctx.tmpdir / f".sigvirt-import-{os.getpid()}-{first.volume}"
        try:
            if src.kind == "version":
                imported = _copy_version(ctx, src, staging)
            else:
                imported = import_into(ctx, src, declared, first.region, first.pool, staging)
            vol = hv.create_volume(
                first.pool,
                replication.domxml.raw_volume_xml(partial_vol, staging.stat().st_size, 0o644),
            )
            sent = transfer.upload_file(hv.conn, vol, staging)
            if sent.sha256 != imported.sha256:
                raise replication.ChecksumMismatch(
                    volume=first.volume, got=sent.sha256, want=imported.sha256
                )
            hv.rename_volume(first.pool, partial_vol, first.volume)
        finally:
            staging.unlink(missing_ok=True)
    done = dataclasses.replace(first, state=COMPLETED, progress=100, updated=now())
    rec = dataclasses.replace(
        rec,
        state=SUCCEEDED,
        sha256=imported.sha256,
        virtual_size=imported.virtual_size,
        allocated_size=imported.allocated_size,
        warnings=imported.warnings,
        replicas=(done,),
        published=now(),
    )
    with ctx.store.definition_lock(rec.gallery, rec.definition):
        ctx.store.put_version(rec)
    return rec


def _copy_version(ctx: Context, src: Source, dest: Path) -> Imported:
    """Another version's bytes, from one of its completed replicas (already gated)."""
    other = catalog.resolve(ctx.store, names.parse_image_ref(src.ref))
    replicas = other.completed_replicas()
    if not replicas:
        raise NotFound(f"--source {src.ref}: version {other.ref} has no completed replica")
    local = [r for r in replicas if ctx.regions.region(r.region).is_local]
    if local:
        result = transfer.local_copy(Path(local[0].path), dest)
    else:
        r = replicas[0]
        hv = ctx.hv(r.region)
        result = transfer.download_file(hv.conn, hv.volume(r.pool, r.volume), dest)
    if result.sha256 != other.sha256:
        raise replication.ChecksumMismatch(volume=dest.name, got=result.sha256, want=other.sha256)
    return Imported(result.sha256, other.virtual_size, dest.stat().st_blocks * 512, ())


def start_background(ctx: Context, rec: ImageVersion) -> None:
    """Replication in a detached process (`--no-wait`); `image-version wait` follows it."""
    argv = [
        sys.executable, "-m", "sigvirt", "sig", "image-version", "replicate",
        "--gallery-name", rec.gallery, "--gallery-image-definition", rec.definition,
        "--gallery-image-version", rec.name, "--quiet",
    ]  # fmt: skip
    log = ctx.store.versions_dir(rec.gallery, rec.definition) / f".{rec.name}.replicate.log"
    with open(log, "ab") as out:
        subprocess.Popen(
            argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
        )


# -- update / delete --------------------------------------------------------------------------
@contextlib.contextmanager
def _version_op(ctx: Context, rec: ImageVersion) -> Iterator[None]:
    """The version's op lock, or Conflict naming the version while another process has it."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(replication.op_lock(ctx, rec))
        except Conflict:
            raise Conflict(
                f"image version {rec.ref} is busy: another sigvirt process is creating, "
                "replicating or deleting it"
            ) from None
        yield


def update_version(
    ctx: Context,
    ref: ImageRef,
    *,
    target_regions: list[str] | None = None,
    replica_count: int | None = None,
    exclude_from_latest: bool | None = None,
    end_of_life: str | None = None,
    progress: replication.ReplicaProgress | None = None,
    wait: bool = True,
) -> ImageVersion:
    assert ref.version is not None
    rec = ctx.store.get_version(ref.gallery, ref.definition, ref.version)
    ctx.store.require(ref.gallery, "contributor", f"{ref.definition}/{rec.name}", "update")
    if rec.state != SUCCEEDED:
        raise Conflict(f"image version {rec.ref} is {rec.state}; only published versions change")
    eol = catalog.parse_date(end_of_life) if end_of_life is not None else None

    def change(cur: ImageVersion) -> ImageVersion:
        out = cur
        if exclude_from_latest is not None:
            out = dataclasses.replace(out, exclude_from_latest=exclude_from_latest)
        if eol is not None:
            out = dataclasses.replace(out, end_of_life=eol)
        if replica_count is not None:
            out = dataclasses.replace(out, replica_count=replica_count)
        return out

    rec = ctx.store.update_version(ref.gallery, ref.definition, ref.version, change)
    if target_regions is None and replica_count is None:
        return rec
    targets = replication.parse_targets(
        target_regions, replica_count, rec.source_region, ctx.regions, rec.target_regions
    )
    with _version_op(ctx, rec):
        deps = replication.dependents_for(ctx, rec, targets)
        p = replication.plan(rec, targets, ctx.regions, deps, replication.pool_path_lookup(ctx))
        rec = replication.apply(ctx, rec, p)
        if wait:
            rec = replication.run(ctx, rec, progress, lock_held=True)
    if wait:
        _share_files(ctx, rec)
        return rec
    start_background(ctx, rec)
    return rec


def delete_version(ctx: Context, ref: ImageRef) -> ImageVersion:
    """Delete every replica and the record; refused while any clone depends on a replica."""
    assert ref.version is not None
    rec = ctx.store.get_version(ref.gallery, ref.definition, ref.version)
    ctx.store.require(ref.gallery, "owner", f"{ref.definition}/{rec.name}", "delete")
    with _version_op(ctx, rec):
        rec = ctx.store.get_version(ref.gallery, ref.definition, ref.version)
        deps = replication.find_dependents(ctx, list(rec.replicas))
        if deps:
            listing = ", ".join(f"{d.kind} {d.name}" for ds in deps.values() for d in ds)
            raise HasDependents(
                f"image version {rec.ref} has dependents: {listing}; delete them or flatten "
                "them (sigvirt vm flatten) first"
            )
        for r in rec.replicas:
            hv = ctx.hv(r.region)
            hv.delete_volume(r.pool, replication.partial_name(r.volume))
            hv.delete_volume(r.pool, r.volume)
        with ctx.store.definition_lock(ref.gallery, ref.definition):
            ctx.store.remove_version_record(ref.gallery, ref.definition, ref.version)
    return rec
