"""What a libvirt host reports, as frozen records: its pools, volumes, domains and itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PoolInfo:
    name: str
    path: Path
    active: bool
    capacity: int
    allocation: int
    available: int


@dataclass(frozen=True)
class VolumeFacts:
    """One volume as its host sees it now, read in one call (the volume's XML, which libvirt
    refreshes from the file first): sizes, modification time, backing file."""

    pool: str
    name: str
    path: Path
    capacity: int  # the virtual size (for a qcow2 file, what a guest sees)
    allocation: int  # bytes the file takes on disk (st_blocks * 512 for a file)
    physical: int  # the file's length
    mtime: float | None  # seconds since the epoch, by the host's clock (None: not a file)
    backing: str | None  # the backing file its header names


@dataclass(frozen=True)
class DomainInfo:
    state: str  # running | paused | stopping | stopped | crashed | suspended | unknown
    memory_mib: int
    vcpus: int


@dataclass(frozen=True)
class HostFacts:
    hostname: str
    libvirt: str  # the daemon's libvirt version, e.g. 9.0.0
    hypervisor: str  # e.g. "QEMU 7.2.22"
    cpus: int
