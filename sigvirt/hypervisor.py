"""The libvirt connection handle: every libvirt call enters here, errors translated by code."""

from __future__ import annotations

import contextlib
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import libvirt
import paramiko

from sigvirt import domxml, ssh
from sigvirt.errors import (
    Conflict,
    HostAccessDenied,
    NoSpace,
    NotFound,
    RegionUnavailable,
    SigvirtError,
)
from sigvirt.runner import Result

if TYPE_CHECKING:
    from sigvirt import transfer

T = TypeVar("T")

# libvirt prints every error to stderr through its default handler; sigvirt reports its own.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_NOT_FOUND = {
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_STORAGE_VOL,
    libvirt.VIR_ERR_NO_NETWORK,
}
_UNREACHABLE = {
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_INVALID_CONN,
}
# A pool that vanished or stopped between listing and reading it.
_GONE = {libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_OPERATION_INVALID}
_AUTH = {
    libvirt.VIR_ERR_AUTH_FAILED,
    libvirt.VIR_ERR_AUTH_CANCELLED,
    libvirt.VIR_ERR_AUTH_UNAVAILABLE,
}

LIBVIRT_ACCESS_HINT = (
    "lab hosts usually grant it by adding the user to the 'libvirt' group "
    "(usermod -aG libvirt USER, then log in again)"
)


def translate(err: libvirt.libvirtError, what: str, uri: str = "") -> SigvirtError:
    """Map a libvirt error to sigvirt's by its code, never by parsing English (except EACCES)."""
    code = err.get_error_code()
    msg = (err.get_error_message() or str(err)).strip()
    if code in _NOT_FOUND:
        return NotFound(f"{what}: not found")
    # Without polkit's bus (no systemd) libvirt reports a denied user as an internal error.
    no_polkit = "system bus" in msg or "polkit" in msg
    if code in _AUTH or no_polkit or ("Permission denied" in msg and "socket" in msg):
        return HostAccessDenied(
            f"{what}: libvirt at {uri or 'the host'} refused access ({msg})",
            hint=LIBVIRT_ACCESS_HINT,
        )
    if code in _UNREACHABLE or (code == libvirt.VIR_ERR_SYSTEM_ERROR and "connect" in msg):
        return RegionUnavailable(f"{what}: libvirt host {uri} unreachable: {msg}")
    if code in (libvirt.VIR_ERR_DOM_EXIST, libvirt.VIR_ERR_STORAGE_VOL_EXIST):
        return Conflict(f"{what}: already exists")
    if code == libvirt.VIR_ERR_OPERATION_INVALID and "pool" in msg and "not active" in msg:
        return RegionUnavailable(f"{what}: {msg}")
    if "No space left on device" in msg:
        return NoSpace(f"{what}: no space left on device")
    return SigvirtError(f"{what}: {msg}")


@dataclass(frozen=True)
class PoolInfo:
    name: str
    path: Path
    active: bool
    capacity: int
    allocation: int
    available: int


class Hypervisor:
    """One libvirt connection. Opened by the caller and passed in; closed by the caller."""

    def __init__(self, conn: libvirt.virConnect, uri: str) -> None:
        self.conn = conn
        self.uri = uri
        self._lock = threading.Lock()

    # -- connection -------------------------------------------------------------------------
    @classmethod
    def open(cls, uri: str) -> Hypervisor:
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as err:
            raise translate(err, "connect", uri) from None
        return cls(conn, uri)

    def close(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            self.conn.close()

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_local(self) -> bool:
        """True when the host's files are this machine's files (no transport needed)."""
        parts = urlsplit(self.uri)
        return "+" not in parts.scheme and not parts.hostname

    @property
    def ssh_target(self) -> tuple[str | None, str, int] | None:
        """(user, host, port) of a qemu+ssh URI: guests' loopback forwards are reached via it."""
        parts = urlsplit(self.uri)
        if not parts.scheme.endswith("+ssh") or not parts.hostname:
            return None
        return parts.username, parts.hostname, parts.port or 22

    def call(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except libvirt.libvirtError as err:
            raise translate(err, what, self.uri) from None

    @contextlib.contextmanager
    def translating(self, what: str) -> Iterator[None]:
        try:
            yield
        except libvirt.libvirtError as err:
            raise translate(err, what, self.uri) from None

    # -- host facts -------------------------------------------------------------------------
    def hostname(self) -> str:
        return self.call("hostname", self.conn.getHostname)

    def kvm_usable(self) -> bool:
        """KVM offered by libvirt *and* hardware virtualization in the host CPU.

        Nested "PVM" hosts expose /dev/kvm without vmx/svm; stock guest kernels die there in
        early boot, so such hosts count as TCG-only.
        """
        try:
            self.conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
        except libvirt.libvirtError:
            return False
        caps = ET.fromstring(self.call("capabilities", self.conn.getCapabilities))
        features = {f.get("name") for f in caps.findall("./host/cpu/feature")}
        return bool(features & {"vmx", "svm"})

    # -- storage pools ----------------------------------------------------------------------
    def pool(self, name: str) -> libvirt.virStoragePool:
        pool = self.call(f"pool {name}", self.conn.storagePoolLookupByName, name)
        if not pool.isActive():
            raise RegionUnavailable(
                f"pool {name} on {self.uri} is not active",
                hint=f"virsh -c {self.uri} pool-start {name}",
            )
        return pool

    def ensure_dir_pool(self, name: str, path: Path) -> libvirt.virStoragePool:
        """Look up pool `name`; define, build and start it as a dir pool at `path` if missing."""
        with self._lock, self.translating(f"pool {name}"):
            try:
                pool = self.conn.storagePoolLookupByName(name)
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                try:
                    pool = self.conn.storagePoolDefineXML(domxml.dir_pool_xml(name, path), 0)
                    pool.build(0)
                    pool.setAutostart(1)
                except libvirt.libvirtError:
                    # Another sigvirt process defined it first (both saw it missing).
                    pool = self.conn.storagePoolLookupByName(name)
            if not pool.isActive():
                try:
                    pool.create(0)
                except libvirt.libvirtError:
                    if not pool.isActive():
                        raise
            return pool

    def pool_info(self, name: str) -> PoolInfo:
        with self.translating(f"pool {name}"):
            pool = self.conn.storagePoolLookupByName(name)
            active = bool(pool.isActive())
            if active:
                pool.refresh(0)
            _state, cap, alloc, avail = pool.info()
            root = ET.fromstring(pool.XMLDesc(0))
            return PoolInfo(
                name, Path(root.findtext("./target/path") or ""), active, cap, alloc, avail
            )

    def pool_path(self, name: str) -> Path:
        root = ET.fromstring(self.call(f"pool {name}", self.pool(name).XMLDesc, 0))
        return Path(root.findtext("./target/path") or "")

    def delete_pool(self, name: str) -> None:
        """Stop and undefine a pool (volumes are the caller's business)."""
        with contextlib.suppress(NotFound), self.translating(f"pool {name}"):
            try:
                pool = self.conn.storagePoolLookupByName(name)
            except libvirt.libvirtError as err:
                raise translate(err, f"pool {name}") from None
            if pool.isActive():
                pool.destroy()
            pool.undefine()

    # -- volumes ----------------------------------------------------------------------------
    def volume(self, pool: str, name: str) -> libvirt.virStorageVol:
        return self.call(f"volume {pool}/{name}", self.pool(pool).storageVolLookupByName, name)

    def volume_path(self, pool: str, name: str) -> Path:
        return Path(self.volume(pool, name).path())

    def volume_exists(self, pool: str, name: str) -> bool:
        try:
            self.volume(pool, name)
        except NotFound:
            return False
        return True

    def create_volume(self, pool: str, xml: str) -> libvirt.virStorageVol:
        p = self.pool(pool)
        return self.call(f"create volume in {pool}", p.createXML, xml, 0)

    def upload_bytes(self, pool: str, name: str, data: bytes, mode: int = 0o600) -> Path:
        """A raw volume holding `data`, written through libvirt's stream (works on remote hosts)."""
        vol = self.create_volume(pool, domxml.raw_volume_xml(name, len(data), mode))
        with self.translating(f"upload {pool}/{name}"):
            stream = self.conn.newStream(0)
            vol.upload(stream, 0, len(data), 0)
            view = memoryview(data)
            sent = 0
            while sent < len(data):
                sent += stream.send(bytes(view[sent : sent + (1 << 20)]))
            stream.finish()
        return Path(vol.path())

    def download_tail(self, pool: str, name: str, max_bytes: int = 16384) -> bytes:
        """The last bytes of a volume (console logs on remote hosts)."""
        with self.translating(f"read {pool}/{name}"):
            p = self.pool(pool)
            p.refresh(0)
            vol = p.storageVolLookupByName(name)
            _type, capacity, _alloc = vol.info()
            if capacity == 0:
                return b""
            offset = max(0, capacity - max_bytes)
            stream = self.conn.newStream(0)
            vol.download(stream, offset, capacity - offset, 0)
            chunks: list[bytes] = []
            while True:
                got = stream.recv(65536)
                if not got or got in (-1, -2):
                    break
                chunks.append(bytes(got))
            stream.finish()
            return b"".join(chunks)

    def delete_volume(self, pool: str, name: str) -> bool:
        """Delete if present; True if something was deleted."""
        try:
            vol = self.volume(pool, name)
        except (NotFound, RegionUnavailable):
            return False
        self.call(f"delete volume {pool}/{name}", vol.delete, 0)
        return True

    def rename_volume(self, pool: str, old: str, new: str, mode: int = 0o644) -> None:
        """libvirt has no rename: on a qemu+ssh host `mv` runs there (metadata only, the bytes
        stay put); elsewhere the bytes are streamed into a new volume and the old one deleted.

        Not createXMLFrom: for a volume libvirt has probed as qcow2 it runs qemu-img convert,
        which rewrites the file (other bytes, another sha256).
        """
        src = self.volume(pool, old)
        if self.ssh_target is not None:
            directory = self.pool_path(pool)
            self.host_run(["mv", "-T", "-n", "--", str(directory / old), str(directory / new)])
            self.call(f"refresh pool {pool}", self.pool(pool).refresh, 0)
            if not self.volume_exists(pool, new) or self.volume_exists(pool, old):
                raise SigvirtError(f"rename {pool}/{old} → {new} on {self.uri} did not happen")
            return
        from sigvirt import transfer  # streams: only this fallback needs them

        size = transfer.file_size(src)
        dst = self.create_volume(pool, domxml.raw_volume_xml(new, size, mode))
        try:
            transfer.stream_copy(self.conn, src, self.conn, dst, size)
        except BaseException:
            self.delete_volume(pool, new)
            raise
        self.delete_volume(pool, old)

    def host_run(self, argv: list[str], timeout: float = 600.0) -> Result:
        """Run a command on a qemu+ssh host (file chores: mv, cp inside the host, sha256sum)."""
        target = self.ssh_target
        if target is None:
            raise SigvirtError(f"{argv[0]} on {self.uri}: only qemu+ssh hosts run commands")
        user, host, port = target
        try:
            return ssh.host_run(ssh.Jump(host, port, user, self.uri_keyfile), argv, timeout)
        except (paramiko.SSHException, OSError) as err:
            raise RegionUnavailable(
                f"{argv[0]} on {self.uri}: ssh to {host}:{port} failed: {err}"
            ) from None

    def host_copy(self, src: Path, pool: str, name: str) -> transfer.CopyResult:
        """A sparse copy of the host's file `src` as volume `name` of `pool`, made and hashed
        by the host itself (over SSH): the bytes never leave it."""
        from sigvirt import transfer

        dst = self.pool_path(pool) / name
        # --sparse=auto keeps the source's holes (SEEK_HOLE) and lets cp use the kernel's
        # copy_file_range, a reflink where the filesystem can.
        cp = ["cp", "--sparse=auto", "--reflink=auto", "-T", "--", str(src), str(dst)]
        self.host_run(cp)
        out = self.host_run(["sha256sum", "--", str(dst)]).stdout.split()
        self.call(f"refresh pool {pool}", self.pool(pool).refresh, 0)
        if not out or len(out[0]) != 64:
            raise SigvirtError(f"sha256sum {dst} on {self.uri}: unexpected output {out!r}")
        # bytes_moved 0: nothing crossed between hosts
        return transfer.CopyResult(out[0], transfer.file_size(self.volume(pool, name)), 0)

    @property
    def uri_keyfile(self) -> Path | None:
        keyfile = parse_qs(urlsplit(self.uri).query).get("keyfile", [None])[0]
        return Path(keyfile) if keyfile else None

    def volume_by_path(self, path: Path) -> libvirt.virStorageVol | None:
        try:
            return self.conn.storageVolLookupByPath(str(path))
        except libvirt.libvirtError:
            return None

    def all_volumes(self) -> Iterator[tuple[str, libvirt.virStorageVol]]:
        """(pool name, volume) for every volume in every active pool, refreshed first.

        Other tools share the daemon: a pool stopped or removed while we list it has no
        volumes left, and one whose refresh fails is listed as libvirt last saw it.
        """
        with self.translating("list volumes"):
            pools = self.conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
        for pool in pools:
            with contextlib.suppress(libvirt.libvirtError):
                pool.refresh(0)
            try:
                vols = pool.listAllVolumes(0)
            except libvirt.libvirtError as err:
                if err.get_error_code() in _GONE:
                    continue
                raise translate(err, f"list volumes of pool {pool.name()}", self.uri) from None
            for vol in vols:
                yield pool.name(), vol

    # -- domains ----------------------------------------------------------------------------
    def domain(self, name: str) -> libvirt.virDomain:
        return self.call(f"domain {name}", self.conn.lookupByName, name)

    def domain_exists(self, name: str) -> bool:
        try:
            self.domain(name)
        except NotFound:
            return False
        return True

    def define(self, xml: str) -> libvirt.virDomain:
        return self.call("define domain", self.conn.defineXML, xml)

    def domains(self) -> list[libvirt.virDomain]:
        return self.call("list domains", self.conn.listAllDomains, 0)

    def destroy_and_undefine(self, name: str) -> bool:
        """Stop (hard) and undefine a domain with its NVRAM; True if it existed."""
        try:
            dom = self.domain(name)
        except NotFound:
            return False
        with self.translating(f"delete domain {name}"):
            if dom.isActive():
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
            flags = libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
            try:
                dom.undefineFlags(flags)
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        return True

    def metadata(self, dom: libvirt.virDomain) -> str | None:
        """sigvirt's provenance element of a domain, or None for domains sigvirt didn't make."""
        try:
            return dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domxml.XMLNS, 0)
        except libvirt.libvirtError:
            return None
