"""One replica copied: a trustworthy source, room for it, the cheapest honest route, the
sha256 of what landed, then the final name.

A source is trusted only while its file is the one that was verified (its fingerprint:
size, mtime and inode when it last hashed to the version's sha256); otherwise it is hashed
again first, and a source whose bytes differ is marked corrupt and never used again. A copy
that doesn't verify is blamed on its source only after the source itself is hashed.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path

from sigvirt import faults
from sigvirt.catalog.fileio import fsync_dir
from sigvirt.catalog.records import ImageVersion, Replica, ReplicaState, now
from sigvirt.context import Context, same_host
from sigvirt.errors import NoSpace, SigvirtError
from sigvirt.hosts import hostshell, sshpush, streams, xmlbuild
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.sharing.plan import protect_replica
from sigvirt.versions import imagecheck, transfer
from sigvirt.versions.targets import partial_name
from sigvirt.versions.transfer import ChecksumMismatch

# Room a pool must have beyond the replica's allocated bytes: the partial's metadata, and
# the running guests whose overlays share the filesystem must not be the ones to hit ENOSPC.
SPACE_MARGIN = 256 << 20
SPACE_MARGIN_FRACTION = 0.02


def fingerprint(path: Path) -> str:
    """size:mtime_ns:inode of a local file: changes when its bytes are rewritten."""
    st = os.stat(path, follow_symlinks=False)
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def trusted(ctx: Context, r: Replica) -> bool:
    """The replica's file is still the one that was verified (local replicas only; for a
    remote one, its verification is trusted until a copy from it fails to verify)."""
    if not r.verified:
        return False
    if not ctx.regions.region(r.location).is_local:
        return True
    try:
        return fingerprint(Path(r.path)) == r.fingerprint
    except OSError:
        return False


def suspects(ctx: Context, rec: ImageVersion) -> frozenset[tuple[str, str]]:
    """Completed replicas not known good now: never verified, or a local file that changed
    since (a shrink removes these first)."""
    return frozenset(
        r.key for r in rec.replicas if r.state == ReplicaState.COMPLETED and not trusted(ctx, r)
    )


def verify(ctx: Context, rec: ImageVersion, r: Replica) -> bool:
    """Hash a replica's bytes where they lie; True when they are the version's."""
    if ctx.regions.region(r.location).is_local:
        return transfer.sha256_file(Path(r.path)) == rec.sha256
    vol = ctx.hv(r.location).volume(r.pool, r.volume)
    return streams.hash_volume(vol).sha256 == rec.sha256


def verified_fields(ctx: Context, r: Replica) -> dict[str, str]:
    """What a replica's record says once its bytes were checked just now."""
    local = ctx.regions.region(r.location).is_local
    return {"verified": now(), "fingerprint": fingerprint(Path(r.path)) if local else ""}


def source_order(rec: ImageVersion, region: str, prefer: str | None = None) -> list[Replica]:
    """Completed replicas to copy from, best first: in the same region, then the region the
    fan-out scheduler chose (`prefer`), then the source region's, then any; verified ones
    before the others."""
    done = rec.completed_replicas()

    def rank(r: Replica) -> tuple[int, int, str]:
        if r.location == region:  # a location: a zone of a zoned region is its own host
            near = 0
        elif r.location == prefer:
            near = 1
        else:
            near = 2 if r.region == rec.source_region else 3
        return (near, 0 if r.verified else 1, r.volume)

    return sorted(done, key=rank)


def ensure_room(hv: Hypervisor, region: str, pool: str, needed: int) -> None:
    """Refuse a copy its pool can't hold (allocated bytes + margin), before a byte is written:
    filling the filesystem would fail the copy anyway, and every guest writing there with it."""
    info = hv.pool_info(pool)
    want = needed + SPACE_MARGIN + int(needed * SPACE_MARGIN_FRACTION)
    if info.available < want:
        raise NoSpace(
            f"pool {pool} in region {region} has {info.available / 2**30:.2f} GiB free; "
            f"a replica needs {want / 2**30:.2f} GiB (its {needed / 2**30:.2f} GiB and a margin)"
        )


def _no_space(err: OSError, where: str) -> SigvirtError | OSError:
    if err.errno == errno.ENOSPC:
        return NoSpace(f"no space left on device writing {where}")
    return err


def _finish_local(hv: Hypervisor, pool: str, partial: Path, final: Path) -> None:
    imagecheck.sniff(partial, "qcow2")  # the gate, again, on the copy itself
    protect_replica(partial)
    faults.point("replica.verified")
    os.rename(partial, final)
    fsync_dir(final.parent)
    faults.point("replica.renamed")
    hv.refresh_pool(pool)


def _nothing() -> None:
    return None


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
    src_cfg, dst_cfg = cfg.region(src.location), cfg.region(dst.location)
    dst_hv = ctx.hv(dst.location)
    partial = partial_name(dst.volume)
    remove_files(dst_hv, dst.pool, dst.volume)
    ensure_room(dst_hv, dst.location, dst.pool, rec.allocated_size)

    def check(result: streams.CopyResult) -> streams.CopyResult:
        faults.point("replica.copied")
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
                src_vol = ctx.hv(src.location).volume(src.pool, src.volume)
                result = check(streams.download_file(src_vol, tmp, progress))
            _finish_local(dst_hv, dst.pool, tmp, directory / dst.volume)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise _no_space(err, f"{tmp}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return result

    def accept(result: streams.CopyResult) -> streams.CopyResult:
        # Identical bytes (sha256) to the gated original, so the copy passes the gate too.
        check(result)
        faults.point("replica.verified")
        return result

    # The destination is a remote host: bytes reach it over its SSH or through libvirt.
    try:
        result = _copy_to_remote(ctx, rec, src, dst, progress, accept)
        faults.point("replica.renamed")
    except BaseException:
        with contextlib.suppress(SigvirtError):
            remove_partial(dst_hv, dst.pool, dst.volume)
        raise
    return result


def _copy_to_remote(
    ctx: Context,
    rec: ImageVersion,
    src: Replica,
    dst: Replica,
    progress: streams.Progress | None,
    accept: Callable[[streams.CopyResult], streams.CopyResult],
) -> streams.CopyResult:
    """Copy src to dst's partial on its remote host, `accept` the bytes, rename the partial
    to dst's volume."""
    src_cfg, dst_cfg = ctx.regions.region(src.location), ctx.regions.region(dst.location)
    src_hv, dst_hv = ctx.hv(src.location), ctx.hv(dst.location)
    partial = partial_name(dst.volume)

    def renamed(result: streams.CopyResult) -> streams.CopyResult:
        accept(result)
        hostshell.rename_volume(dst_hv, dst.pool, partial, dst.volume)
        return result

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
        return renamed(hostshell.host_copy(dst_hv, src_path, dst.pool, partial))
    if src_cfg.is_local and dst_hv.ssh_target is not None and ctx.regions.replication.direct_ssh:
        # A source verified as it is now (its fingerprint) is sent without hashing it again;
        # the rename rides in the same ssh session, once `accept` has taken the bytes.
        known = (rec.sha256, src.fingerprint) if src.verified and src.fingerprint else None
        return sshpush.push_file(
            dst_hv, ctx.runner, Path(src.path), dst.pool, partial, dst.volume, accept,
            progress, known,
        )  # fmt: skip
    if (
        src_hv.ssh_target is not None
        and dst_hv.ssh_target is not None
        and ctx.regions.replication.direct_ssh
    ):
        # Between two qemu+ssh hosts: read over one ssh, hashed here, written over another
        # (as `scp -3`); the rename rides in the writing session once `accept` took the bytes.
        src_path = src_hv.volume_path(src.pool, src.volume)
        return sshpush.relay_file(
            src_hv, src_path, size, dst_hv, ctx.runner, dst.pool, partial, dst.volume, accept,
            progress,
        )  # fmt: skip
    vol = dst_hv.create_volume(dst.pool, xmlbuild.raw_volume_xml(partial, size, mode=0o644))
    if src_cfg.is_local:
        return renamed(streams.upload_file(vol, Path(src.path), progress))
    # Between two remote hosts without SSH (or direct_ssh off): through this machine, sparse.
    src_vol = src_hv.volume(src.pool, src.volume)
    return renamed(streams.stream_copy(src_vol, vol, size, progress))
