"""Admission of boots: how many guests one host boots at once, and a scheduler that keeps it.

Under TCG a boot is CPU-bound: a tiny guest burns ~5 s of QEMU CPU from start to SSH, on one
core. More boots at once than cores only stretch every boot (benchmarks/bench_scaleset.py, 2
cores, N = 4: 3 in flight took 1.23x N x T1 / cores, 4 took 1.31-1.45x, 2 took 1.06-1.18x):
the last guests then boot alone while a core idles, and each boot costs more CPU (5.4-5.6 s
per guest at 2 in flight, 5.9-6.6 s at 4). At N = 8 and 16 one per core is as fast as 4
(26.5 s against 25.9, 50.7 against 50.6), and a third boot only while a full wave waits
behind gained nothing (26.3 s, 52.7 s). A slot only has to be kept busy: the guest waiting for
it is already made (volumes, seed, domain: PREPARED_AHEAD), and ssh.wait_ready notices sshd
within ~0.2 s (it used to take up to 2.3 s, which is why cores + 1 were admitted then). So a
host boots at most `limit()` guests at once and starts the next as soon as one answers SSH.
Under KVM a boot waits on I/O more than on a core.

A host's slot also learns how long its boots take (Slot.booted), and the next guests there
are asked for SSH sparsely until QUIET_SHARE of the fastest (Slot.quiet): each probe given up
while a guest can't be reached yet reaches its sshd seconds after it is up, for nothing
(ssh.await_banner).

Each host (a region, or each zone of a zoned region) has its own limit and its own workers:
a busy zone never holds up another.
"""

from __future__ import annotations

import threading
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
TCG_EXTRA = 0  # boots beyond one per core under TCG (the knee measured in bench_scaleset)
KVM_PER_CORE = 2
# Guests made ahead per boot slot, waiting to start (Boots): one wave.
PREPARED_AHEAD = 1
# The share of the fastest boot seen on a host during which the next boots there are asked
# for SSH sparsely (Slot.quiet, ssh.await_banner): the guests of one scale set are alike, and
# a boot under contention varies by ~±10 %.
QUIET_SHARE = 0.8


class Slot:
    """A host's boot slots (see Boots): a boot acquires one right before its domain starts and
    releases it once the guest is up. Once the boots are closed on an exception (Ctrl-C), a
    guest still waiting for a slot raises KeyboardInterrupt instead: its create undoes what it
    made rather than start it."""

    def __init__(self, k: int) -> None:
        self._free = threading.BoundedSemaphore(k)
        self.closed = threading.Event()
        self._fastest: float | None = None
        self._lock = threading.Lock()

    def acquire(self) -> None:
        while not self._free.acquire(timeout=0.2):
            if self.closed.is_set():
                raise KeyboardInterrupt
        if self.closed.is_set():
            self._free.release()
            raise KeyboardInterrupt

    def release(self) -> None:
        self._free.release()

    def booted(self, seconds: float) -> None:
        """A guest here answered `seconds` after its start."""
        with self._lock:
            if seconds > 0 and (self._fastest is None or seconds < self._fastest):
                self._fastest = seconds

    def quiet(self) -> float:
        """Seconds after its start that the next guest here surely doesn't answer: a share of
        the fastest boot seen (0 before any)."""
        with self._lock:
            return QUIET_SHARE * self._fastest if self._fastest is not None else 0.0


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
    """Runs boots on their hosts, at most `limits[host]` guests booting at once on each: a
    boot takes `slot(host)` from its domain's start until it is up. Up to `limits[host]` more
    are made meanwhile (volumes, seed, domain) and wait for a slot, so a freed slot starts
    the next guest at once instead of idling while it is made (PREPARED_AHEAD). The others
    wait in submission order. Leaving the block waits for every boot submitted; leaving it
    on an exception (Ctrl-C) first drops those not started yet, and those made but still
    waiting for a slot undo what they made (Slot)."""

    def __init__(self, limits: Mapping[str, int]) -> None:
        self._limits = {host: max(1, k) for host, k in limits.items()}
        self._slots = {host: Slot(k) for host, k in self._limits.items()}
        self._pools: dict[str, ThreadPoolExecutor] = {}

    def slot(self, host: str) -> Slot:
        """What a boot on `host` holds from its start until it is up."""
        return self._slots[host]

    def submit(self, host: str, fn: Callable[..., T], *args: object) -> Future[T]:
        pool = self._pools.get(host)
        if pool is None:
            workers = self._limits[host] * (1 + PREPARED_AHEAD)
            pool = ThreadPoolExecutor(workers, thread_name_prefix=f"boot-{host}")
            self._pools[host] = pool
        return pool.submit(fn, *args)

    def close(self, *, cancel: bool = False) -> None:
        for slot in self._slots.values() if cancel else ():
            slot.closed.set()
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
