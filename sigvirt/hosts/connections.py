"""One libvirt connection per host URI, opened on first use, its pools ensured.

Every method takes a location: a region's name, or REGION/ZONE for a zone of a zoned region
(each zone is a host of its own). A zoned region's name alone names no host and is refused,
so nothing resolves one zone's host for another zone's replica or VM."""

from __future__ import annotations

import threading
from collections.abc import Callable

from sigvirt.errors import RegionUnavailable, Unsupported
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.ports import PortAllocator
from sigvirt.hosts.regions import RegionConfig, RegionsConfig


class Connections:
    def __init__(
        self, config: RegionsConfig, opener: Callable[[str], Hypervisor] = Hypervisor.open
    ) -> None:
        self.config = config
        self.opener = opener
        self._open: dict[str, Hypervisor] = {}
        self._ready: set[str] = set()
        self._lock = threading.Lock()
        self._uri_locks: dict[str, threading.Lock] = {}
        self._ports: dict[str, PortAllocator] = {}

    def hv(self, region: str) -> Hypervisor:
        """The region's host, its pools made ready (created from regions.yaml if missing)."""
        return self._connect(region, ready=True)

    def host(self, region: str) -> Hypervisor:
        """The region's host as it is: for questions (what lives there) that must not create
        a pool on a host that is about to be dropped."""
        return self._connect(region, ready=False)

    def settings(self, region: str) -> RegionConfig:
        """The host settings of a location (a zoned region's name alone: Unsupported)."""
        cfg = self.config.region(region)
        if cfg.zones:
            raise Unsupported(
                f"region {region} has zones ({', '.join(cfg.zone_names)}): this command does "
                "not reach a zoned region's hosts yet"
            )
        return cfg

    def _connect(self, region: str, *, ready: bool) -> Hypervisor:
        cfg = self.settings(region)
        # One lock per URI: a host that takes its time to answer (or to time out) must not
        # hold up the regions replicating in parallel to other hosts.
        with self._lock:
            uri_lock = self._uri_locks.setdefault(cfg.uri, threading.Lock())
        with uri_lock:
            hv = self._open.get(cfg.uri)
            if hv is None:
                try:
                    hv = self.opener(cfg.uri)
                except RegionUnavailable as err:
                    raise RegionUnavailable(
                        f"region {region}: {err.message}", hint=err.hint
                    ) from None
                self._open[cfg.uri] = hv
            if ready and region not in self._ready:
                self._ensure_pools(hv, cfg)
                self._ready.add(region)
        return hv

    def _ensure_pools(self, hv: Hypervisor, cfg: RegionConfig) -> None:
        for pool in cfg.pools:
            if pool.path is not None:
                hv.ensure_dir_pool(pool.name, pool.path)
            else:
                hv.require_pool(pool.name)  # must exist and be active

    def ports(self, region: str) -> PortAllocator:
        cfg = self.settings(region)
        with self._lock:
            if cfg.uri not in self._ports:
                self._ports[cfg.uri] = PortAllocator(*cfg.port_range)
            return self._ports[cfg.uri]

    def close(self) -> None:
        with self._lock:
            opened = list(self._open.values())
            self._open.clear()
            self._ready.clear()
        for hv in opened:
            hv.close()
