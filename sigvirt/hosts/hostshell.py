"""File chores on a libvirt host that libvirt has no call for: rename a volume, copy one
inside the host, hash it there. On a qemu+ssh host they run over that host's SSH (metadata
and in-host copies only: image bytes between hosts go through libvirt's streams)."""

from __future__ import annotations

from pathlib import Path

import paramiko

from sigvirt.errors import HostError, RegionUnavailable, Unsupported
from sigvirt.hosts import ssh, streams, xmlbuild
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.runner import Result


def host_run(hv: Hypervisor, argv: list[str], timeout: float = 600.0) -> Result:
    """Run a command on a qemu+ssh host (mv, cp inside the host, sha256sum)."""
    target = hv.ssh_target
    if target is None:
        raise Unsupported(f"{argv[0]} on {hv.uri}: only qemu+ssh hosts run commands")
    user, host, port = target
    try:
        return ssh.host_run(ssh.Jump(host, port, user, hv.uri_keyfile), argv, timeout)
    except (paramiko.SSHException, OSError) as err:
        raise RegionUnavailable(
            f"{argv[0]} on {hv.uri}: ssh to {host}:{port} failed: {err}"
        ) from None


def rename_volume(hv: Hypervisor, pool: str, old: str, new: str, mode: int = 0o644) -> None:
    """libvirt has no rename: on a qemu+ssh host `mv` runs there (metadata only, the bytes
    stay put); elsewhere the bytes are streamed into a new volume and the old one deleted.

    Not createXMLFrom: for a volume libvirt has probed as qcow2 it runs qemu-img convert,
    which rewrites the file (other bytes, another sha256).
    """
    src = hv.volume(pool, old)
    if hv.ssh_target is not None:
        directory = hv.pool_path(pool)
        host_run(hv, ["mv", "-T", "-n", "--", str(directory / old), str(directory / new)])
        hv.refresh_pool(pool)
        if not hv.volume_exists(pool, new) or hv.volume_exists(pool, old):
            raise HostError(f"rename {pool}/{old} → {new} on {hv.uri} did not happen")
        return
    size = src.file_size()
    dst = hv.create_volume(pool, xmlbuild.raw_volume_xml(new, size, mode))
    try:
        streams.stream_copy(src, dst, size)
    except BaseException:
        hv.delete_volume(pool, new)
        raise
    hv.delete_volume(pool, old)


def host_copy(hv: Hypervisor, src: Path, pool: str, name: str) -> streams.CopyResult:
    """A sparse copy of the host's file `src` as volume `name` of `pool`, made and hashed
    by the host itself (over SSH): the bytes never leave it."""
    dst = hv.pool_path(pool) / name
    # --sparse=auto keeps the source's holes (SEEK_HOLE) and lets cp use the kernel's
    # copy_file_range, a reflink where the filesystem can.
    host_run(hv, ["cp", "--sparse=auto", "--reflink=auto", "-T", "--", str(src), str(dst)])
    out = host_run(hv, ["sha256sum", "--", str(dst)]).stdout.split()
    hv.refresh_pool(pool)
    if not out or len(out[0]) != 64:
        raise HostError(f"sha256sum {dst} on {hv.uri}: unexpected output {out!r}")
    # bytes_moved 0: nothing crossed between hosts
    return streams.CopyResult(out[0], hv.volume(pool, name).file_size(), 0)
