"""Admission of boots: how many guests a host boots at once (per accelerator and core count),
and a scheduler that never has more than that in flight on a host, keeps each boot's own
result or failure, and drops the boots not started yet when interrupted."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from sigvirt.guests import admission
from sigvirt.hosts.hypervisor import Hypervisor

pytestmark = pytest.mark.offline


def test_tcg_boots_about_one_guest_per_core() -> None:
    assert [admission.limit(c, "tcg") for c in (1, 2, 4, 16)] == [
        c + admission.TCG_EXTRA for c in (1, 2, 4, 16)
    ]
    assert admission.limit(2, "tcg") < 2 * 2  # fewer than the old two per core


def test_kvm_boots_more_at_once_than_tcg() -> None:
    for cores in (2, 8):  # (one core: two either way)
        assert admission.limit(cores, "kvm") == 2 * cores > admission.limit(cores, "tcg")


def test_a_host_reporting_no_cores_still_boots_one() -> None:
    assert admission.limit(0, "tcg") >= 1
    assert admission.limit(0, "kvm") >= 1


def test_limit_follows_the_regions_accel_setting() -> None:
    hv = Hypervisor.open("test:///default")  # libvirt's in-process test driver: 16 CPUs
    try:
        cores = hv.cpu_count()
        assert admission.for_host(hv, "tcg") == admission.limit(cores, "tcg")
        assert admission.for_host(hv, "kvm") == admission.limit(cores, "kvm")
    finally:
        hv.close()


class Tracker:
    """A fake boot: made (outside the slot), then booting while it holds its host's slot;
    counts what is in flight per host and holds each step a little."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.made: Counter[str] = Counter()  # made or booting, not yet done
        self.made_peak: Counter[str] = Counter()
        self.started: list[tuple[str, int]] = []

    def boot(self, host: str, i: int, slot: admission.Slot | None = None) -> str:
        with self.lock:
            self.made[host] += 1
            self.made_peak[host] = max(self.made_peak[host], self.made[host])
        time.sleep(0.01)  # making it: volumes, seed, domain
        if slot is not None:
            slot.acquire()  # as vms.create_prepared does right before the domain starts
        with self.lock:
            self.now[host] += 1
            self.peak[host] = max(self.peak[host], self.now[host])
            self.started.append((host, i))
        try:
            time.sleep(0.02)
        finally:
            with self.lock:
                self.now[host] -= 1
                self.made[host] -= 1
            if slot is not None:
                slot.release()
        if i == 3:
            raise RuntimeError(f"{host}-{i} failed")
        return f"{host}-{i}"


def test_boots_never_exceed_each_hosts_limit_and_keep_their_own_results() -> None:
    t = Tracker()
    with admission.boots({"a": 2, "b": 3}) as pool:
        futures = {(h, i): pool.submit(h, t.boot, h, i, pool.slot(h)) for h in "ab"
                   for i in range(12)}  # fmt: skip
        results = {}
        for key, fut in futures.items():
            try:
                results[key] = fut.result()
            except RuntimeError as err:
                results[key] = str(err)
    assert dict(t.peak) == {"a": 2, "b": 3}  # reached, never passed
    # the next ones are made meanwhile, one wave ahead and no more
    limit = {"a": 2, "b": 3}
    assert all(
        limit[h] < t.made_peak[h] <= limit[h] * (1 + admission.PREPARED_AHEAD) for h in "ab"
    ), t.made_peak
    assert results[("a", 3)] == "a-3 failed" and results[("b", 3)] == "b-3 failed"
    assert results[("a", 11)] == "a-11" and len(results) == 24
    for host in "ab":  # every boot ran
        assert sorted(i for h, i in t.started if h == host) == list(range(12))


def test_an_interrupt_drops_the_boots_not_started() -> None:
    t = Tracker()
    release = threading.Event()

    def slow(host: str, i: int) -> str:
        release.wait(5)
        return t.boot(host, i)

    with pytest.raises(KeyboardInterrupt), admission.boots({"a": 1}) as pool:
        futures = [pool.submit("a", slow, "a", i) for i in range(10)]
        release.set()
        raise KeyboardInterrupt
    assert futures[0].done() and not futures[0].cancelled()  # the one running finished
    assert sum(f.cancelled() for f in futures) >= 8
    assert len(t.started) <= 2


def test_an_interrupt_stops_the_guests_made_and_waiting_for_a_slot() -> None:
    t = Tracker()
    up = threading.Event()

    def first(slot: admission.Slot) -> str:
        slot.acquire()
        try:
            up.wait(5)  # booting, until the interrupt is under way
        finally:
            slot.release()
        return "first"

    with pytest.raises(KeyboardInterrupt), admission.boots({"a": 1}) as pool:
        f0 = pool.submit("a", first, pool.slot("a"))
        f1 = pool.submit("a", t.boot, "a", 1, pool.slot("a"))  # made ahead, waits for a slot
        time.sleep(0.1)
        threading.Timer(0.5, up.set).start()
        raise KeyboardInterrupt
    assert f0.result() == "first"  # the boot under way finished
    assert isinstance(f1.exception(), KeyboardInterrupt)  # made, never started
    assert t.made["a"] == 1 and t.started == []


def test_a_slot_is_quiet_for_a_share_of_the_fastest_boot_seen() -> None:
    slot = admission.Slot(2)
    assert slot.quiet() == 0.0  # nothing seen: the first boots are probed from their start
    for seconds in (6.0, 5.0, 7.5, 0.0):  # (0: a boot not timed, ignored)
        slot.booted(seconds)
    assert slot.quiet() == pytest.approx(admission.QUIET_SHARE * 5.0)
    assert 0 < slot.quiet() < 5.0  # the next one may be a little faster: probed before
