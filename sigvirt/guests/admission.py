"""Admission of boots: how many guests one host boots at once, and a scheduler that keeps it.

Under TCG a boot is CPU-bound: a tiny guest burns ~5 s of QEMU CPU from start to SSH, on one
core. More boots at once than cores only stretch every boot, and a stretched boot costs more
CPU (benchmarks/bench_scaleset.py, 2 cores: 4.8-5.2 s per guest alone, 5.6-6.2 s with 3 or 4
in flight; the extra is in the vCPU thread, with page faults unchanged and involuntary
context switches up). One boot per core is too few: a slot idles while its guest is being
defined and while the SSH wait (2 s banner timeouts) notices a guest that is up, and other
work on the host takes the core meanwhile (N = 16 on a busy host: 2 at once 77-88 s, 3 at
once 51 s, 4 at once 52-65 s). So a host boots at most `limit()` guests at once and starts
the next as soon as one answers SSH. Under KVM a boot waits on I/O more than on a core.

Each host (a region, or each zone of a zoned region) has its own limit and its own workers:
a busy zone never holds up another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from sigvirt.context import Context
from sigvirt.guests import guest
from sigvirt.guests.vms import Prepared
from sigvirt.hosts import arches
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import Accel, AccelSetting, location

T = TypeVar("T")

# Boots in flight per host core. TCG: see the module docstring and TCG_EXTRA; KVM: the
# policy sigvirt had before admission (two per core), not measured here (no KVM on the
# machine the TCG numbers come from).
TCG_EXTRA = 1  # boots beyond one per core under TCG (the knee measured in bench_scaleset)
KVM_PER_CORE = 2


def limit(cores: int, accel: Accel) -> int:
    """How many guests a host with `cores` CPUs boots at once under `accel`."""
    cores = max(1, cores)
    if accel == "kvm":
        return KVM_PER_CORE * cores
    return cores + TCG_EXTRA


def for_host(hv: Hypervisor, setting: AccelSetting, architecture: str = "x64") -> int:
    """The limit of one host for guests of `architecture`, its region asking for `setting`
    (regions.yaml's accel: auto, kvm, tcg)."""
    if architecture != "x64":  # a foreign architecture runs under TCG whatever is asked
        accel = arches.accel_for(arches.support(hv, architecture), setting) or "tcg"
    else:
        accel = guest.detect_accel(hv) if setting == "auto" else setting
    return limit(hv.cpu_count(), accel)


def limits(ctx: Context, p: Prepared, hosts: Mapping[str, Hypervisor]) -> dict[str, int]:
    """Each zone's limit (one "" zone in a region without zones) for instances of `p`."""
    return {
        zone: for_host(hv, ctx.regions.region(location(p.region, zone)).accel,
                       p.definition.architecture)
        for zone, hv in hosts.items()
    }  # fmt: skip


class Boots:
    """Runs boots on their hosts, at most `limits[host]` at once on each; the others wait in
    submission order. Leaving the block waits for every boot submitted; leaving it on an
    exception (Ctrl-C) first drops those not started yet."""

    def __init__(self, limits: Mapping[str, int]) -> None:
        self._limits = {host: max(1, k) for host, k in limits.items()}
        self._pools: dict[str, ThreadPoolExecutor] = {}

    def submit(self, host: str, fn: Callable[..., T], *args: object) -> Future[T]:
        pool = self._pools.get(host)
        if pool is None:
            pool = ThreadPoolExecutor(self._limits[host], thread_name_prefix=f"boot-{host}")
            self._pools[host] = pool
        return pool.submit(fn, *args)

    def close(self, *, cancel: bool = False) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=cancel)


@contextmanager
def boots(limits: Mapping[str, int]) -> Iterator[Boots]:
    """A `Boots` for the block (see there)."""
    running = Boots(limits)
    try:
        yield running
    except BaseException:
        running.close(cancel=True)
        raise
    running.close()
