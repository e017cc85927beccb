"""The environment a use case runs in: store, regions, libvirt connections, runners.

Built once by the CLI (or a test) and passed in; nothing below opens its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sigvirt.catalog.store import GalleryStore
from sigvirt.hosts.connections import Connections
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.qemuimg import QemuImg
from sigvirt.hosts.regions import RegionConfig, RegionsConfig
from sigvirt.runner import Runner


@dataclass
class Context:
    store: GalleryStore
    regions: RegionsConfig
    runner: Runner = field(default_factory=Runner)
    conns: Connections | None = None
    tmpdir: Path = Path("/var/tmp")

    def __post_init__(self) -> None:
        if self.conns is None:
            self.conns = Connections(self.regions)

    @property
    def qemu_img(self) -> QemuImg:
        return QemuImg(self.runner)

    def hv(self, region: str) -> Hypervisor:
        assert self.conns is not None
        return self.conns.hv(region)

    def host(self, region: str) -> Hypervisor:
        """The region's host without making its pools ready (see Connections.host)."""
        assert self.conns is not None
        return self.conns.host(region)

    def close(self) -> None:
        if self.conns is not None:
            self.conns.close()

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def from_config(cls, regions: RegionsConfig) -> Context:
        return cls(store=GalleryStore(regions.gallery_root), regions=regions)


def same_host(a: RegionConfig, b: RegionConfig) -> bool:
    """Two regions whose files are on one machine: a local copy moves the bytes."""
    return a.libvirt_uri.same_host(b.libvirt_uri)
