"""The libvirt host handle: every libvirt call enters here, errors translated where they do.

`Hypervisor` is one connection, opened by the caller and passed in. What it hands out are
sigvirt's own small handles (`Domain`, `Volume`), never a libvirt object, so nothing
outside `hosts/` can call libvirt behind this boundary (tests/test_layers.py checks it).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import libvirt

from sigvirt.errors import HostError, NotFound, RegionUnavailable
from sigvirt.hosts import xmlbuild
from sigvirt.hosts.channels import Channel, Channels
from sigvirt.hosts.diskio import DiskIo
from sigvirt.hosts.hostrecords import DomainInfo, HostFacts, PoolInfo, VolumeFacts
from sigvirt.hosts.libvirterrors import GONE, translate
from sigvirt.hosts.regions import Accel
from sigvirt.hosts.uri import LibvirtUri

T = TypeVar("T")
REFRESH_PATIENCE = 120.0  # seconds a pool refresh waits out another process's stream into it

# libvirt prints every error to stderr through its default handler; sigvirt reports its own.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

DOMAIN_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "stopping",
    libvirt.VIR_DOMAIN_SHUTOFF: "stopped",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


def _version(v: int) -> str:
    return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"


class Hypervisor:
    """One libvirt connection. Opened by the caller and passed in; closed by the caller."""

    def __init__(self, conn: libvirt.virConnect, uri: str) -> None:
        self._conn = conn
        self.uri = uri
        self.parsed = LibvirtUri.parse(uri)
        self._lock = threading.Lock()
        self.channels = Channels(uri, conn)  # every stream on a connection of its own
        self.disk_io = DiskIo(self.parsed.is_local)  # QEMU's engine for guest disks here

    # -- connection -------------------------------------------------------------------------
    @classmethod
    def open(cls, uri: str) -> Hypervisor:
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as err:
            raise translate(err, "connect", uri) from None
        return cls(conn, uri)

    def close(self) -> None:
        self.channels.close()
        with contextlib.suppress(libvirt.libvirtError):
            self._conn.close()

    def alive(self) -> bool:
        """Whether the connection still reaches the daemon (False once it died under us)."""
        try:
            return bool(self._conn.isAlive())
        except libvirt.libvirtError:
            return False

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_local(self) -> bool:
        """True when the host's files are this machine's files (no transport needed)."""
        return self.parsed.is_local

    @property
    def ssh_target(self) -> tuple[str | None, str, int] | None:
        """(user, host, port) of a qemu+ssh URI: guests' loopback forwards are reached via it."""
        return self.parsed.ssh_target

    @property
    def uri_keyfile(self) -> Path | None:
        return self.parsed.keyfile

    def _call(self, what: str, fn: Callable[..., T], *args: object) -> T:
        try:
            return fn(*args)
        except libvirt.libvirtError as err:
            raise translate(err, what, self.uri) from None

    @contextlib.contextmanager
    def _translating(self, what: str) -> Iterator[None]:
        try:
            yield
        except libvirt.libvirtError as err:
            raise translate(err, what, self.uri) from None

    # -- host facts -------------------------------------------------------------------------
    def hostname(self) -> str:
        return self._call("hostname", self._conn.getHostname)

    def facts(self) -> HostFacts:
        with self._translating("host facts"):
            return HostFacts(
                hostname=self._conn.getHostname(),
                libvirt=_version(self._conn.getLibVersion()),
                hypervisor=f"{self._conn.getType()} {_version(self._conn.getVersion())}",
                cpus=int(self._conn.getInfo()[2]),
            )

    def libvirt_version(self) -> str:
        return _version(self._call("libvirt version", self._conn.getLibVersion))

    def cpu_count(self) -> int:
        """The host's CPUs (not this machine's, for a remote region)."""
        try:
            return int(self._conn.getInfo()[2])
        except libvirt.libvirtError:
            return os.cpu_count() or 2

    def kvm_usable(self) -> bool:
        """KVM offered by libvirt *and* hardware virtualization in the host CPU.

        Nested "PVM" hosts expose /dev/kvm without vmx/svm; stock guest kernels die there in
        early boot, so such hosts count as TCG-only.
        """
        try:
            self._conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
        except libvirt.libvirtError:
            return False
        caps = ET.fromstring(self._call("capabilities", self._conn.getCapabilities))
        features = {f.get("name") for f in caps.findall("./host/cpu/feature")}
        return bool(features & {"vmx", "svm"})

    def accel(self) -> Accel:
        return "kvm" if self.kvm_usable() else "tcg"

    def domain_capabilities(self, arch: str, machine: str, virttype: str) -> str | None:
        """libvirt's domain capabilities XML for guests of `arch` (e.g. aarch64) on this host,
        None when libvirt has no emulator (or no `virttype`: kvm, qemu) for it."""
        try:
            return str(self._conn.getDomainCapabilities(None, arch, machine, virttype, 0))
        except libvirt.libvirtError:
            return None

    def host_arch(self) -> str:
        """The host CPU's architecture as libvirt names it (x86_64, aarch64)."""
        caps = ET.fromstring(self._call("capabilities", self._conn.getCapabilities))
        return caps.findtext("./host/cpu/arch") or ""

    # -- storage pools ----------------------------------------------------------------------
    def _pool(self, name: str) -> libvirt.virStoragePool:
        pool = self._call(f"pool {name}", self._conn.storagePoolLookupByName, name)
        if not self._call(f"pool {name}", pool.isActive):
            path = ET.fromstring(self._call(f"pool {name}", pool.XMLDesc, 0)).findtext(
                "./target/path"
            )
            if self.is_local and path and not os.path.isdir(path):
                # libvirt stops a pool whose directory vanished: say so, or the hint
                # (pool-start) would only fail again.
                raise RegionUnavailable(
                    f"pool {name} on {self.uri} is not active: its directory {path} is "
                    "missing, and the replicas that were in it with it"
                )
            raise RegionUnavailable(
                f"pool {name} on {self.uri} is not active",
                hint=f"virsh -c {self.uri} pool-start {name}",
            )
        return pool

    def require_pool(self, name: str) -> None:
        """The pool exists and is active (RegionUnavailable/NotFound otherwise)."""
        self._pool(name)

    def refresh_pool(self, name: str, patience: float = REFRESH_PATIENCE) -> None:
        """libvirt sees files written beside it (local copies, `cp` on a host) only after this.

        libvirt refuses to refresh a pool while a stream writes into it ("has asynchronous
        jobs running"): a seed upload of another VM being created lasts milliseconds, so
        the refresh is tried again for up to `patience` seconds before that is an error."""
        pool = self._pool(name)
        end, pause = time.monotonic() + patience, 0.02
        while True:
            try:
                pool.refresh(0)
                return
            except libvirt.libvirtError as err:
                busy = "asynchronous jobs" in (err.get_error_message() or "")
                if not busy or time.monotonic() + pause > end:
                    raise translate(err, f"refresh pool {name}", self.uri) from None
            time.sleep(pause)
            pause = min(pause * 2, 1.0)

    def ensure_dir_pool(self, name: str, path: Path) -> None:
        """Look up pool `name`; define, build and start it as a dir pool at `path` if missing."""
        with self._lock, self._translating(f"pool {name}"):
            try:
                pool = self._conn.storagePoolLookupByName(name)
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                try:
                    pool = self._conn.storagePoolDefineXML(xmlbuild.dir_pool_xml(name, path), 0)
                    pool.build(0)
                    pool.setAutostart(1)
                except libvirt.libvirtError:
                    # Another sigvirt process defined it first (both saw it missing).
                    pool = self._conn.storagePoolLookupByName(name)
            if not pool.isActive():
                try:
                    pool.create(0)
                except libvirt.libvirtError:
                    if not pool.isActive():
                        raise

    def pool_info(self, name: str) -> PoolInfo:
        with self._translating(f"pool {name}"):
            pool = self._conn.storagePoolLookupByName(name)
            active = bool(pool.isActive())
            if active:
                pool.refresh(0)
            _state, cap, alloc, avail = pool.info()
            root = ET.fromstring(pool.XMLDesc(0))
            return PoolInfo(
                name, Path(root.findtext("./target/path") or ""), active, cap, alloc, avail
            )

    def pools(self) -> list[str]:
        """Every pool the host defines, active or not."""
        return sorted(p.name() for p in self._call("list pools", self._conn.listAllStoragePools, 0))

    def volumes(self, pool: str) -> list[Volume]:
        """The volumes of one pool, refreshed first (files written beside libvirt count)."""
        p = self._pool(pool)
        with self._translating(f"volumes of pool {pool}"):
            p.refresh(0)
            return [Volume(self, pool, v) for v in p.listAllVolumes(0)]

    def pool_path(self, name: str) -> Path:
        root = ET.fromstring(self._call(f"pool {name}", self._pool(name).XMLDesc, 0))
        return Path(root.findtext("./target/path") or "")

    def delete_pool(self, name: str) -> None:
        """Stop and undefine a pool (volumes are the caller's business)."""
        try:
            pool = self._conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return
            raise translate(err, f"pool {name}", self.uri) from None
        with self._translating(f"pool {name}"):
            if pool.isActive():
                pool.destroy()
            pool.undefine()

    # -- volumes ----------------------------------------------------------------------------
    def volume(self, pool: str, name: str) -> Volume:
        vol = self._call(f"volume {pool}/{name}", self._pool(pool).storageVolLookupByName, name)
        return Volume(self, pool, vol)

    def volume_path(self, pool: str, name: str) -> Path:
        return self.volume(pool, name).path

    def volume_exists(self, pool: str, name: str) -> bool:
        try:
            self.volume(pool, name)
        except NotFound:
            return False
        return True

    def create_volume(self, pool: str, xml: str) -> Volume:
        p = self._pool(pool)
        return Volume(self, pool, self._call(f"create volume in {pool}", p.createXML, xml, 0))

    def delete_volume(self, pool: str, name: str) -> bool:
        """Delete if present; True if something was deleted.

        A file libvirt has not listed yet (a console log QEMU opened at start) is not a
        volume until the pool is refreshed: a miss refreshes once and looks again."""
        try:
            vol = self.listed_volume(pool, name)
        except (NotFound, RegionUnavailable):
            return False
        vol.delete()
        return True

    def listed_volume(self, pool: str, name: str) -> Volume:
        """The volume; a file libvirt has not listed yet (a console log QEMU opened at start)
        is found by refreshing the pool once (a listed one needs no refresh: its sizes are
        read from the file)."""
        try:
            return self.volume(pool, name)
        except NotFound:
            self.refresh_pool(pool)
            return self.volume(pool, name)

    def volume_by_path(self, path: Path) -> Volume | None:
        try:
            vol = self._conn.storageVolLookupByPath(str(path))
        except libvirt.libvirtError:
            return None
        with self._translating(f"volume {path}"):
            pool = vol.storagePoolLookupByVolume().name()
        return Volume(self, pool, vol)

    def all_volumes(self) -> Iterator[Volume]:
        """Every volume in every active pool, refreshed first.

        Other tools share the daemon: a pool stopped or removed while we list it has no
        volumes left, and one whose refresh fails is listed as libvirt last saw it.
        """
        with self._translating("list volumes"):
            pools = self._conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
        for pool in pools:
            with contextlib.suppress(libvirt.libvirtError):
                pool.refresh(0)
            try:
                vols = pool.listAllVolumes(0)
                name = pool.name()
            except libvirt.libvirtError as err:
                if err.get_error_code() in GONE:
                    continue
                raise translate(err, "list volumes of a pool", self.uri) from None
            for vol in vols:
                yield Volume(self, name, vol)

    # -- domains ----------------------------------------------------------------------------
    def domain(self, name: str) -> Domain:
        return Domain(self, self._call(f"domain {name}", self._conn.lookupByName, name))

    def domain_exists(self, name: str) -> bool:
        try:
            self.domain(name)
        except NotFound:
            return False
        return True

    def define(self, xml: str) -> Domain:
        return Domain(self, self._call("define domain", self._conn.defineXML, xml))

    def domains(self) -> list[Domain]:
        return [Domain(self, d) for d in self._call("list domains", self._conn.listAllDomains, 0)]

    def destroy_and_undefine(self, name: str) -> bool:
        """Stop (hard) and undefine a domain with its NVRAM and TPM state; True if it existed."""
        try:
            dom = self.domain(name)
        except NotFound:
            return False
        dom.remove()
        return True


class Volume:
    """A storage volume of one pool on one host."""

    def __init__(self, hv: Hypervisor, pool: str, vol: libvirt.virStorageVol) -> None:
        self.hv = hv
        self.pool = pool
        self._vol = vol
        self.name: str = vol.name()

    def __repr__(self) -> str:
        return f"Volume({self.pool}/{self.name} on {self.hv.uri})"

    @property
    def what(self) -> str:
        return f"volume {self.pool}/{self.name}"

    def channel(self) -> contextlib.AbstractContextManager[Channel]:
        """A stream for this volume on a connection of its own (see hosts/channels.py)."""
        return self.hv.channels.open(self.pool, self.name)

    @property
    def path(self) -> Path:
        return Path(self.hv._call(self.what, self._vol.path))

    @property
    def capacity(self) -> int:
        """The virtual size (for a qcow2 file, what the guest sees)."""
        return int(self.hv._call(self.what, self._vol.info)[1])

    @property
    def allocation(self) -> int:
        return int(self.hv._call(self.what, self._vol.info)[2])

    def file_size(self) -> int:
        """The bytes to move: the file's own length (libvirt's "physical" size); for a file
        volume libvirt's capacity is the qcow2 virtual size."""
        try:
            return int(self._vol.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2])
        except libvirt.libvirtError as err:
            if err.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise translate(err, f"size of {self.what}", self.hv.uri) from None
        return int(self.hv._call(f"size of {self.what}", self._vol.info)[2])

    def xml(self) -> str:
        return self.hv._call(self.what, self._vol.XMLDesc, 0)

    def backing_path(self) -> str | None:
        """The backing file this volume's header names (libvirt reads it), if any."""
        return ET.fromstring(self.xml()).findtext("./backingStore/path")

    def facts(self) -> VolumeFacts:
        root = ET.fromstring(self.xml())

        def size(tag: str) -> int:
            return int(root.findtext(tag) or 0)

        mtime = root.findtext("./target/timestamps/mtime")
        return VolumeFacts(
            pool=self.pool,
            name=self.name,
            path=Path(root.findtext("./target/path") or ""),
            capacity=size("capacity"),
            allocation=size("allocation"),
            physical=size("physical") or size("allocation"),
            mtime=float(mtime) if mtime else None,
            backing=root.findtext("./backingStore/path"),
        )

    def delete(self) -> None:
        self.hv._call(f"delete {self.what}", self._vol.delete, 0)


class Domain:
    """A libvirt domain on one host."""

    def __init__(self, hv: Hypervisor, dom: libvirt.virDomain) -> None:
        self.hv = hv
        self._dom = dom
        self.name: str = dom.name()

    def __repr__(self) -> str:
        return f"Domain({self.name} on {self.hv.uri})"

    def _call(self, what: str, fn: Callable[..., T], *args: object) -> T:
        return self.hv._call(f"{what} {self.name}", fn, *args)

    def is_active(self) -> bool:
        """Running (or paused); False for a domain that is gone meanwhile."""
        try:
            return bool(self._dom.isActive())
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise translate(err, f"domain {self.name}", self.hv.uri) from None

    def uuid(self) -> str:
        """libvirt's UUID of the domain (az's vmId)."""
        return self._call("uuid of", self._dom.UUIDString)

    def info(self) -> DomainInfo:
        state, _max, mem_kib, vcpus, _cpu = self._call("domain", self._dom.info)
        return DomainInfo(DOMAIN_STATES.get(state, "unknown"), mem_kib // 1024, vcpus)

    def start(self) -> None:
        self._call("start", self._dom.create)

    def shutdown(self) -> None:
        """Ask the guest to power off (ACPI); it may ignore it."""
        self._call("shutdown", self._dom.shutdown)

    def destroy(self) -> None:
        """Power off at once; nothing to do if it isn't running."""
        try:
            self._dom.destroy()
        except libvirt.libvirtError as err:
            if err.get_error_code() not in (
                libvirt.VIR_ERR_OPERATION_INVALID,
                libvirt.VIR_ERR_NO_DOMAIN,
            ):
                raise translate(err, f"power off {self.name}", self.hv.uri) from None

    def reboot(self) -> None:
        self._call("reboot", self._dom.reboot, 0)

    def xml(self, *, inactive: bool = False, secure: bool = False) -> str:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        if secure:
            flags |= libvirt.VIR_DOMAIN_XML_SECURE
        return self._call("domain", self._dom.XMLDesc, flags)

    def metadata(self, namespace: str) -> str | None:
        """The domain's <metadata> element of `namespace`, or None when it has none."""
        try:
            return self._dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, namespace, 0)
        except libvirt.libvirtError:
            return None

    def set_metadata(self, namespace: str, prefix: str, xml: str) -> None:
        """Replace the domain's <metadata> element of `namespace`, live and persistent."""
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if self.is_active():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        self._call(
            "metadata",
            self._dom.setMetadata,
            libvirt.VIR_DOMAIN_METADATA_ELEMENT,
            xml,
            prefix,
            namespace,
            flags,
        )

    def block_pull(self, disk: str) -> None:
        """Start pulling the backing chain's data into `disk` (live flatten)."""
        self._call("block pull", self._dom.blockPull, disk, 0, 0)

    def block_job_active(self, disk: str) -> bool:
        return bool(self._call("block job", self._dom.blockJobInfo, disk, 0))

    def backup_begin(self, disk: str, target: Path, skip: tuple[str, ...] = ()) -> None:
        """Start a full push-mode backup of `disk` (its target dev) into a new standalone
        qcow2 at `target`: a point-in-time copy of a running guest's disk, its backing chain
        read through (`skip`: the other disks' targets, left out)."""
        root = ET.Element("domainbackup", mode="push")
        disks = ET.SubElement(root, "disks")
        el = ET.SubElement(disks, "disk", name=disk, backup="yes", type="file")
        ET.SubElement(el, "driver", type="qcow2")
        ET.SubElement(el, "target", file=str(target))
        for other in skip:
            ET.SubElement(disks, "disk", name=other, backup="no")
        self._call("backup", self._dom.backupBegin, ET.tostring(root, encoding="unicode"), None)

    def backup_wait(self, timeout: float) -> None:
        """Until the backup job ends; HostError if it failed or outlived `timeout` (then it is
        aborted)."""
        end = time.monotonic() + timeout
        try:
            while self._call("job", self._dom.jobInfo)[0] != libvirt.VIR_DOMAIN_JOB_NONE:
                if time.monotonic() > end:
                    raise HostError(f"backup of {self.name}: still running after {timeout:.0f}s")
                time.sleep(0.2)
        except BaseException:  # given up, or interrupted: QEMU stops writing the copy
            with contextlib.suppress(libvirt.libvirtError):
                self._dom.abortJob()
            raise
        stats = self._call("job", self._dom.jobStats, libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        if stats.get("type") != libvirt.VIR_DOMAIN_JOB_COMPLETED:
            detail = stats.get("errmsg") or "the job did not complete"
            raise HostError(f"backup of {self.name}: {detail}")

    def remove(self) -> None:
        """Power off and undefine, with NVRAM, vTPM state (swtpm's directory) and managed
        save. libvirt removes the TPM state by default too; the flag says so, not KEEP_TPM."""
        with self.hv._translating(f"delete domain {self.name}"):
            if self._dom.isActive():
                with contextlib.suppress(libvirt.libvirtError):
                    self._dom.destroy()
            flags = (
                libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                | libvirt.VIR_DOMAIN_UNDEFINE_TPM
            )
            try:
                self._dom.undefineFlags(flags)
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
