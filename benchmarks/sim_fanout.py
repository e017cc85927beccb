"""Fan-out of one version to many regions, simulated: the real scheduler, simulated time.

`sigvirt.versions.fanout.Fanout` (the class `replication.run` uses) decides who copies from
whom; this script plays the copies out under a bandwidth model instead of moving bytes, for
10 and 100 regions (one host each), against the baseline "every region copies from the
source region at once" (what sigvirt did before the scheduler).

Bandwidth model (stated, not measured): every host has a full-duplex link of LINK bytes/s;
a host's uplink is shared equally by the streams it sends, its downlink by the streams it
receives; a stream runs at the smaller of its two shares (recomputed at every start and end,
i.e. max-min fairness per link end, ignoring the network core). Disk reads are assumed to
keep up with the link. Only first copies into a region cross hosts; copies inside a region
are the region's own business and not simulated.

Prints, per case: rounds (the depth of the copy tree: the longest chain of copies),
makespan, the most bytes one host sent, and the ratio against the baseline.
Run: /opt/sigvirt/venv/bin/python benchmarks/sim_fanout.py [--gib 10] [--gbit 1]
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass

from sigvirt.versions.fanout import Fanout, FanoutPolicy

GiB = 1024**3


@dataclass(frozen=True)
class Result:
    makespan: float  # seconds until the last region has its first replica
    rounds: int  # depth of the copy tree
    max_sent: int  # bytes the busiest sender sent
    streams: int  # copies made


def simulate(
    regions: int, size: int, link: float, policy: FanoutPolicy, stream: float = 0.0
) -> Result:
    """Regions r0 (the source) … r{n-1}; each first copy planned by Fanout, played out with
    the bandwidth model above; `stream` > 0 caps each stream (one ssh cipher's speed)."""
    names = [f"r{i}" for i in range(regions)]
    fan = Fanout([names[0]], policy)
    for name in names[1:]:
        fan.want(name)
    depth = {names[0]: 0}
    left: dict[str, float] = {}  # dst → bytes still to copy
    sent: Counter[str] = Counter()
    now = 0.0
    streams = 0
    while True:
        for a in fan.assign():
            left[a.dst] = float(size)
            depth[a.dst] = depth[a.src] + 1
            streams += 1
        if not left:
            break
        out = Counter(fan.host(fan.flying[d]) for d in left)
        inn = Counter(fan.host(d) for d in left)
        cap = stream or link
        rate = {
            d: min(link / out[fan.host(fan.flying[d])], link / inn[fan.host(d)], cap) for d in left
        }
        step = min(left[d] / rate[d] for d in left)
        now += step
        for d in list(left):
            moved = rate[d] * step
            sent[fan.flying[d]] += int(moved)
            left[d] -= moved
            if left[d] <= 1e-6 * size:
                del left[d]
                fan.finished(d, ok=True)
    assert not fan.waiting and len(fan.sources) == regions
    return Result(now, max(depth.values()), max(sent.values()), streams)


def baseline(regions: int, size: int, link: float, stream: float = 0.0) -> float:
    """Everyone from the source at once: its uplink carries every copy."""
    return max((regions - 1) * size / link, size / (stream or link))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=10.0, help="image size (allocated), GiB")
    ap.add_argument("--gbit", type=float, default=1.0, help="each host's link, Gbit/s")
    ap.add_argument("--stream-gbit", type=float, default=0.0, help="cap per stream, Gbit/s")
    args = ap.parse_args()
    size = int(args.gib * GiB)
    link = args.gbit * 1e9 / 8
    stream = args.stream_gbit * 1e9 / 8
    cap = f", each stream at most {args.stream_gbit:g} Gbit/s" if stream else ""
    print(f"image {args.gib:g} GiB, every host's link {args.gbit:g} Gbit/s full duplex{cap}")
    print(f"{'regions':>7} {'out/in':>6} {'rounds':>6} {'makespan':>10} {'busiest sends':>14} "
          f"{'all-from-source':>16} {'speed-up':>8}")  # fmt: skip
    for n in (10, 100):
        base = baseline(n, size, link, stream)
        for out, inn in ((1, 1), (2, 2), (4, 4)):
            r = simulate(n, size, link, FanoutPolicy(max_out=out, max_in=inn), stream)
            print(
                f"{n:>7} {f'{out}/{inn}':>6} {r.rounds:>6} {r.makespan / 60:>8.1f} m "
                f"{r.max_sent / GiB:>10.0f} GiB {base / 60:>14.1f} m {base / r.makespan:>7.1f}x"
            )


if __name__ == "__main__":
    main()
