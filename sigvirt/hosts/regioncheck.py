"""Regions as configured and as found: `region list|show` read regions.yaml, `region init`
writes one, `region check` asks every host whether it can hold replicas.

A region that can't be reached is a finding, not an error of the check: its row says why,
and the other regions are still checked (in parallel, each with its own connection).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sigvirt.catalog.fileio import access_error, atomic_write
from sigvirt.errors import Conflict, HostAccessDenied, SigvirtError
from sigvirt.hosts import regions
from sigvirt.hosts.regions import PoolConfig, RegionConfig, RegionsConfig

if TYPE_CHECKING:  # libvirt loads only for `check`: list/show/init are metadata
    from sigvirt.hosts.hypervisor import Hypervisor

Status = Literal["ok", "warn", "fail"]
LOW_SPACE = 2 << 30  # below this a pool (or doctor's paths) can't take a typical replica
CHECK_TIMEOUT = 60.0  # seconds a host may take to answer (an ssh that hangs, a dead route)
GiB = 1 << 30


# -- names ------------------------------------------------------------------------------------
def resolve(config: RegionsConfig, name: str) -> RegionConfig:
    """The region `name` names; Azure display names work too ('West Central US' finds
    region 'westcentralus'). NotFound lists the known regions."""
    if name in config.regions:
        return config.regions[name]
    squashed = name.replace(" ", "").lower()
    for known, region in config.regions.items():
        if known.replace(" ", "").lower() == squashed:
            return region
    return config.region(name)  # raises NotFound naming the known regions


# -- list / show ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RegionSummary:
    name: str
    uri: str
    transport: str  # local | ssh | tcp | tls | ...: how sigvirt reaches the host
    pools: tuple[str, ...]  # "name" (must exist) or "name at PATH" (created when missing)
    accel: str
    network: str
    clones_per_replica: int  # 0: unlimited
    description: str
    source: str  # the regions.yaml it came from
    memory_merge: bool = False  # memory: {merge: true}: KSM may merge its guests' RAM


def _pool_text(pool: PoolConfig) -> str:
    return pool.name if pool.path is None else f"{pool.name} at {pool.path}"


def summarize(config: RegionsConfig) -> list[RegionSummary]:
    """Every region of the configuration, in file order; a zoned region is followed by its
    zones, each a host (named REGION/ZONE)."""
    source = str(config.path) if config.path else "<text>"
    rows = []
    hosts = [h for r in config.regions.values() for h in ((r, *r.zones) if r.zones else (r,))]
    for r in hosts:
        scheme = r.uri.split(":", 1)[0]
        transport = "local" if r.is_local else scheme.partition("+")[2] or scheme
        if r.zones:  # its zones follow it, each a host named REGION/ZONE
            transport = "zones"
        if r.network.kind == "user-forward":
            low, high = r.port_range
            net = f"user-forward, ports {low}-{high}"
            net += ", restricted" if r.network.restrict else ""
        else:
            net = f"{r.network.kind} {r.network.source}"
        pools = tuple(_pool_text(p) for p in r.pools)
        summary = RegionSummary(
            r.location, r.uri, transport, pools, r.accel, net, r.clones_per_replica,
            r.description, source, r.memory_merge,
        )  # fmt: skip
        rows.append(summary)
    return rows


def describe(config: RegionsConfig, name: str) -> RegionSummary:
    """One region's settings."""
    wanted = resolve(config, name).location
    return next(s for s in summarize(config) if s.name == wanted)


# -- init -------------------------------------------------------------------------------------
def init_file(
    path: Path,
    *,
    force: bool = False,
    uri: str | None = None,
    pools_dir: Path | None = None,
    gallery_root: Path | None = None,
) -> RegionsConfig:
    """Write the regions.yaml sigvirt ships (the `local` region) to `path`, as it is or with
    the given changes; an existing file is replaced only with `force`."""
    text = regions.shipped_text()
    if uri is not None or pools_dir is not None or gallery_root is not None:
        config = regions.parse(text, source=str(regions.SHIPPED_REGIONS))
        local = config.regions["local"]
        if uri is not None:
            local = replace(local, uri=uri)
        if pools_dir is not None:
            pools = tuple(
                replace(p, path=pools_dir / p.name.removeprefix("sigvirt-")) for p in local.pools
            )
            local = replace(local, pools=pools)
        if gallery_root is not None:
            config = replace(config, gallery_root=gallery_root)
        config = regions.with_region(config, local)  # checked as a file would be
        text = regions.dump(config)
    _write_new(path, text, force)
    return replace(regions.parse(text, source=str(path)), path=path)


def _write_new(path: Path, text: str, force: bool) -> None:
    """Atomically: a reader sees the old file or the new one; without `force` an existing
    file (even one created meanwhile) is never replaced."""
    if not force and path.exists():
        raise Conflict(f"{path} exists already; add --force to replace it")
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(path, text.encode(), 0o644, replace=force, inherit=False)
    except FileExistsError:
        raise Conflict(f"{path} exists already; add --force to replace it") from None
    except PermissionError:
        raise HostAccessDenied(f"cannot write {path}: permission denied") from None
    except OSError as err:
        raise access_error(path, err) from None


# -- check ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolCheck:
    name: str
    status: Status
    active: bool
    path: str
    capacity: int  # bytes
    available: int  # bytes
    detail: str


@dataclass(frozen=True)
class RegionCheck:
    region: str
    status: Status  # fail: unreachable, or a pool it needs is missing/inactive, or no KVM
    uri: str
    reachable: bool
    hostname: str
    libvirt: str  # the daemon's libvirt version
    hypervisor: str  # e.g. "QEMU 7.2.22"
    accel: str  # what guests get there: kvm or tcg ("" when unreachable)
    pools: str  # one line for tables; pool_checks has the details
    detail: str  # what is wrong, or "" when all is well
    seconds: float
    pool_checks: tuple[PoolCheck, ...] = ()
    # what it boots: "x64 (tcg), Arm64 (tcg)"; an architecture it can't is named with why
    architectures: str = ""


def _check_pool(hv: Hypervisor, cfg: RegionConfig, pool: PoolConfig) -> PoolCheck:
    from sigvirt.errors import NotFound

    try:
        info = hv.pool_info(pool.name)
    except NotFound:
        if pool.path is not None:
            return PoolCheck(
                pool.name, "warn", False, str(pool.path), 0, 0,
                f"not defined yet: sigvirt creates it at {pool.path} on first use",
            )  # fmt: skip
        return PoolCheck(
            pool.name, "fail", False, "", 0, 0,
            f"pool {pool.name} is not defined on {cfg.uri} (define it, or give a path for "
            "it in regions.yaml)",
        )  # fmt: skip
    except SigvirtError as err:
        return PoolCheck(pool.name, "fail", False, "", 0, 0, err.message)
    if not info.active:
        return PoolCheck(
            pool.name, "fail", False, str(info.path), info.capacity, info.available,
            f"pool {pool.name} is not active (virsh -c {cfg.uri} pool-start {pool.name})",
        )  # fmt: skip
    status: Status = "ok"
    detail = f"{info.available / GiB:.1f} GiB free"
    if info.available < LOW_SPACE:
        status, detail = "warn", f"only {info.available / GiB:.1f} GiB free"
    return PoolCheck(pool.name, status, True, str(info.path), info.capacity, info.available, detail)


def _worst(statuses: list[Status]) -> Status:
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


def _unreachable(cfg: RegionConfig, reason: str, seconds: float) -> RegionCheck:
    return RegionCheck(
        cfg.location, "fail", cfg.uri, False, "", "", "", "", "", reason, round(seconds, 2)
    )


def check_region(
    cfg: RegionConfig, opener: Callable[[str], Hypervisor] | None = None
) -> RegionCheck:
    """Reachable? Pools defined, active, with room? Which accel, which libvirt? Which
    architectures (the Arm64 emulator and firmware)?"""
    from sigvirt.hosts import arches
    from sigvirt.hosts.hypervisor import Hypervisor

    start = time.monotonic()
    try:
        hv = (opener or Hypervisor.open)(cfg.uri)
    except SigvirtError as err:
        reason = err.message + (f" ({err.hint})" if err.hint else "")
        return _unreachable(cfg, reason, time.monotonic() - start)
    try:
        facts = hv.facts()
        kvm = hv.kvm_usable()
        pools = tuple(_check_pool(hv, cfg, p) for p in cfg.pools)
        arm64 = arches.support(hv, "Arm64")
    except SigvirtError as err:  # the host went away in the middle
        return _unreachable(cfg, err.message, time.monotonic() - start)
    finally:
        hv.close()
    accel = "kvm" if kvm and cfg.accel != "tcg" else "tcg"
    problems = [f"{p.name}: {p.detail}" for p in pools if p.status != "ok"]
    statuses = [p.status for p in pools]
    if cfg.accel == "kvm" and not kvm:
        problems.append("accel kvm is configured but this host offers TCG only")
        statuses.append("fail")
    served = [f"x64 ({accel})"]
    if arm64.problem:
        served.append(f"Arm64: {arm64.problem}")
        if "Arm64" in cfg.architectures:  # declared in regions.yaml, so a failure
            problems.append(f"architectures lists Arm64, but the host has {arm64.problem}")
            statuses.append("fail")
    else:
        served.append(f"Arm64 ({arches.accel_for(arm64, cfg.accel)})")
    if cfg.architectures:
        served = [s for s in served if s.split(" ")[0].rstrip(":") in cfg.architectures]
    summary = ", ".join(
        f"{p.name} ({p.detail})" if p.status == "ok" else f"{p.name} ({p.status})" for p in pools
    )
    return RegionCheck(
        cfg.location, _worst(statuses), cfg.uri, True, facts.hostname, facts.libvirt,
        facts.hypervisor, accel, summary, "; ".join(problems),
        round(time.monotonic() - start, 2), pools, ", ".join(served),
    )  # fmt: skip


def check(
    config: RegionsConfig,
    names: list[str] | None = None,
    *,
    opener: Callable[[str], Hypervisor] | None = None,
    timeout: float = CHECK_TIMEOUT,
) -> list[RegionCheck]:
    """Check the named regions (default: all) in parallel; a host that doesn't answer within
    `timeout` seconds gets a failed row (its check thread is left to finish on its own)."""
    named = [resolve(config, n) for n in names] if names else list(config.regions.values())
    chosen = [host for r in named for host in (r.zones or (r,))]  # a zoned region: each zone
    results: dict[str, RegionCheck] = {}

    def one(cfg: RegionConfig) -> None:
        row = check_region(cfg, opener)
        results[cfg.location] = row

    threads = [
        threading.Thread(target=one, args=(cfg,), name=f"check-{cfg.location}", daemon=True)
        for cfg in chosen
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    late = f"no answer within {timeout:.0f}s"
    return [results.get(c.location) or _unreachable(c, f"{c.uri}: {late}", timeout) for c in chosen]


def unavailable(rows: list[RegionCheck]) -> list[str]:
    """Regions that can't take replicas now (the CLI exits REGION_UNAVAILABLE for them)."""
    return [r.region for r in rows if r.status == "fail"]
