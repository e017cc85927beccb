"""Define → SSH-ready for one tiny guest, and for 4 started at once (issue 2's closing numbers).

Each guest is a linked clone of the cached tiny image (128 MiB, 1 vCPU, TCG) made by
`guest.create(..., wait=True)` on this run's own pool of the shared qemu:///system daemon.
Per guest it records:

  call→SSH    from calling guest.create to its return (overlay, seed, define, start, wait)
  define→SSH  from the domain being defined (guest.create's on_defined callback) to SSH-ready
  SSH wait    guest.boot_seconds: from the end of dom.create to the first `true` over SSH
  CPU s       user+system time the guest's QEMU used until then (steadier than wall time
              when others share the cores)

and for the 4-at-once case the wall time from starting all four (threads) to the last one
answering. Several runs, alternating single and 4; min / median / max over runs. The ratio
column compares 4-at-once wall time with one guest's define→SSH (4 guests on 2 cores: 2.0
would be perfect CPU-bound scaling, 4.0 no overlap at all).

Run: /opt/sigvirt/venv/bin/python benchmarks/bench_boot.py [--runs 5] [--memory 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import guestlab

from sigvirt.guests import guest
from sigvirt.guests.guest import GuestSpec, PortAllocator


def boot(lab: guestlab.Lab, base: Path, name: str, ports: PortAllocator, memory: int) -> dict:
    assert lab.hv is not None
    marks: dict[str, float] = {}
    spec = GuestSpec(
        name=name, pool=lab.pool, base=base, admin_user="bench",
        ssh_public_keys=(lab.public_key,), memory_mib=memory,
    )  # fmt: skip
    start = time.perf_counter()
    g = guest.create(
        lab.hv, spec, lab.key, ports=ports, timeout=300,
        on_defined=lambda _n: marks.__setitem__("defined", time.perf_counter()),
    )  # fmt: skip
    end = time.perf_counter()
    return {
        "call": end - start,
        "define": end - marks["defined"],
        "wait": g.boot_seconds or 0.0,
        "cpu": guestlab.qemu_cpu_seconds([name]).get(name, 0.0),
        "end": end,
        "start": start,
    }


def delete_all(lab: guestlab.Lab) -> None:
    assert lab.hv is not None
    for name in lab.domains():
        guest.delete(lab.hv, name)


def fmt(values: list[float]) -> str:
    lo, med, hi = guestlab.summary(values)
    return f"{lo:7.2f} {med:7.2f} {hi:7.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--memory", type=int, default=128, help="MiB per guest")
    parser.add_argument("--max-load", type=float, default=1.0, help="wait for a quieter host")
    args = parser.parse_args()

    single: dict[str, list[float]] = {"call": [], "define": [], "wait": [], "cpu": []}
    four: dict[str, list[float]] = {"call": [], "define": [], "wait": [], "cpu": [], "wall": []}
    loads = []
    with guestlab.lab("boot") as lab:
        base = lab.base_in_pool()
        ports = PortAllocator(24000, 24999)
        print(f"start: {guestlab.wait_quiet(args.max_load, 120)}")
        # One unmeasured boot first: caches (accel detection, page cache of the base) warm.
        boot(lab, base, lab.name("warm"), ports, args.memory)
        delete_all(lab)
        for r in range(args.runs):
            guestlab.wait_quiet(args.max_load, 60)
            loads.append(os.getloadavg()[0])
            one = boot(lab, base, lab.name(f"one{r}"), ports, args.memory)
            for k in single:
                single[k].append(one[k])
            delete_all(lab)
            guestlab.wait_quiet(args.max_load, 60)
            loads.append(os.getloadavg()[0])
            with ThreadPoolExecutor(max_workers=4) as pool:
                futures = [
                    pool.submit(boot, lab, base, lab.name(f"four{r}-{i}"), ports, args.memory)
                    for i in range(4)
                ]
                rows = [f.result() for f in futures]
            four["wall"].append(max(x["end"] for x in rows) - min(x["start"] for x in rows))
            for k in ("call", "define", "wait", "cpu"):
                four[k].extend(x[k] for x in rows)
            print(
                f"run {r + 1}: one guest define→SSH {one['define']:.2f} s; 4 at once: "
                + ", ".join(f"{x['define']:.2f}" for x in rows)
                + f" s each, wall {four['wall'][-1]:.2f} s (load {loads[-1]:.2f})",
                flush=True,
            )
            delete_all(lab)
        print(f"end: {guestlab.load()}")

    print(
        f"\ntiny guest, {args.memory} MiB, 1 vCPU, TCG; {args.runs} runs "
        f"(1-min load at run starts: {min(loads):.2f}-{max(loads):.2f})"
    )
    print(f"{'seconds':34} {'min':>7} {'median':>7} {'max':>7}")
    print(f"{'1 guest: define→SSH':34} {fmt(single['define'])}")
    print(f"{'1 guest: call→SSH':34} {fmt(single['call'])}")
    print(f"{'1 guest: SSH wait after start':34} {fmt(single['wait'])}")
    print(f"{'1 guest: QEMU CPU s until SSH':34} {fmt(single['cpu'])}")
    print(f"{'4 at once: each define→SSH':34} {fmt(four['define'])}")
    print(f"{'4 at once: each call→SSH':34} {fmt(four['call'])}")
    print(f"{'4 at once: each QEMU CPU s':34} {fmt(four['cpu'])}")
    print(f"{'4 at once: wall (start → last SSH)':34} {fmt(four['wall'])}")
    ratio = [w / s for w, s in zip(four["wall"], single["define"], strict=True)]
    print(f"{'ratio 4-wall / 1-define→SSH':34} {fmt(ratio)}   (2.0 = CPU-bound on 2 cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
