"""Who copies from whom when a version goes to many regions: the fan-out scheduler.

The first copy into a region must come from another region; the rest of that region's
replicas are copied inside it. Started all at once, ten regions would all read the source
host's disk and uplink together, each at a tenth of its speed, and the last one would end
only when everything had crossed that one link. Instead, every region that has a completed
replica becomes a source as soon as it has one, and each host serves at most `max_out`
streams and receives at most `max_in` at a time: the copies spread like a tree, and 100
regions take about log2(100) rounds instead of 99 copies' worth of one uplink. A region on
the same host as a source copies from it at once, outside the limits: no link is crossed.

Pure: no threads, no I/O. `replication.run` drives it from its region workers (through
`FanoutGate`) and `benchmarks/sim_fanout.py` drives the very same class in simulated time.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FanoutPolicy:
    """Limits per host (not per region: two regions on one host share its disk and link)
    and the cost of copying between two regions (lower is nearer; default 1.0)."""

    max_out: int = 2  # streams one host sends to other hosts at once
    max_in: int = 2  # first copies one host receives at once
    costs: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (src, dst) → cost

    def cost(self, src: str, dst: str) -> float:
        """Costs are per region: the zones of one (locations REGION/ZONE) share them, and two
        zones of one region are near each other (0.5) unless regions.yaml says otherwise."""
        (sr, _, _), (dr, _, _) = src.partition("/"), dst.partition("/")
        if sr == dr and src != dst:
            return self.costs.get((sr, dr), 0.5)
        return self.costs.get((sr, dr), 1.0)


@dataclass(frozen=True)
class Assignment:
    dst: str  # the region that gets its first copy
    src: str  # the region it copies from


class Fanout:
    """The state of one fan-out: regions that have a completed replica (sources), regions
    waiting for their first copy, and the copies in flight.

    `assign()` hands out every copy that may start now; `finished()` reports one's end.
    A region whose copy failed may ask again (`want()`); it never becomes a source."""

    def __init__(
        self,
        have: Iterable[str],
        policy: FanoutPolicy,
        host_of: Mapping[str, str] | None = None,
    ) -> None:
        self.policy = policy
        self._host_of = dict(host_of or {})
        self.sources: list[str] = list(dict.fromkeys(have))  # in the order they became sources
        self.waiting: list[str] = []
        self.flying: dict[str, str] = {}  # dst → src
        self._local: set[str] = set()  # dsts copying from a source on their own host
        self._out: Counter[str] = Counter()  # host → streams it sends
        self._in: Counter[str] = Counter()  # host → streams it receives
        self.served: Counter[str] = Counter()  # region → copies it has served (least busy first)

    def host(self, region: str) -> str:
        return self._host_of.get(region, region)

    def want(self, region: str) -> None:
        """`region` needs its first copy (again, after a failure)."""
        if region in self.sources or region in self.flying or region in self.waiting:
            return
        self.waiting.append(region)

    def assign(self) -> list[Assignment]:
        """Every copy that may start now, marked in flight: each waiting region (in the
        order they asked) gets the nearest source whose host has a free out slot, the least
        busy one among equals, if its own host has a free in slot."""
        started: list[Assignment] = []
        for dst in list(self.waiting):
            near = [s for s in self.sources if self.host(s) == self.host(dst)]
            if near:
                self._start(dst, near[0], counted=False)
                started.append(Assignment(dst, near[0]))
                continue
            if self._in[self.host(dst)] >= self.policy.max_in:
                continue
            free = [s for s in self.sources if self._out[self.host(s)] < self.policy.max_out]
            if not free:
                break  # no source can send anything now; nothing later in the queue either
            src = min(
                free,
                key=lambda s: (
                    self.policy.cost(s, dst),
                    self._out[self.host(s)],
                    self.served[s],
                    self.sources.index(s),
                ),
            )
            self._start(dst, src, counted=True)
            started.append(Assignment(dst, src))
        return started

    def _start(self, dst: str, src: str, *, counted: bool) -> None:
        self.waiting.remove(dst)
        self.flying[dst] = src
        self.served[src] += 1
        if counted:
            self._out[self.host(src)] += 1
            self._in[self.host(dst)] += 1
        else:
            self._local.add(dst)

    def streams(self, host: str) -> tuple[int, int]:
        """(out, in): the cross-host streams `host` sends and receives now."""
        return self._out[host], self._in[host]

    def finished(self, dst: str, ok: bool) -> None:
        """The first copy into `dst` ended; if it completed, `dst` is a source from now on."""
        src = self.flying.pop(dst)
        if dst in self._local:
            self._local.discard(dst)
        else:
            self._out[self.host(src)] -= 1
            self._in[self.host(dst)] -= 1
        if ok and dst not in self.sources:
            self.sources.append(dst)

    @property
    def stuck(self) -> bool:
        """Regions wait, nothing is in flight and no source exists: none will ever come."""
        return bool(self.waiting) and not self.flying and not self.sources


class FanoutGate:
    """`Fanout` shared by a replication run's region workers (one thread per region): a
    worker about to make its region's first copy blocks in `acquire` until the scheduler
    gives it a source region, and reports the copy's end with `release`."""

    def __init__(self, fanout: Fanout) -> None:
        self._fanout = fanout
        self._cond = threading.Condition()
        self._given: dict[str, str] = {}

    def acquire(self, dst: str) -> str | None:
        """The region to copy `dst`'s first replica from; None when there will be none."""
        with self._cond:
            self._fanout.want(dst)
            while dst not in self._given:
                for a in self._fanout.assign():
                    self._given[a.dst] = a.src
                if dst in self._given:
                    break
                if self._fanout.stuck:
                    self._fanout.waiting.remove(dst)
                    return None
                self._cond.notify_all()  # someone else's assignment may have come out
                self._cond.wait()
            self._cond.notify_all()
            return self._given.pop(dst)

    def release(self, dst: str, ok: bool) -> None:
        with self._cond:
            self._fanout.finished(dst, ok)
            self._cond.notify_all()
