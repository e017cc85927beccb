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

Then the Arm64 tiny guest (images/tiny-arm64: aarch64 `virt`, AAVMF UEFI, TCG on an x86 host),
one at a time, --arm64-runs times: define→SSH, SSH wait and QEMU CPU s as above, next to the
x86 single-guest rows of the same run (0 runs skips it).

Then the Secure Boot Debian guest (images/debian-sb under Trusted Launch: OVMF with Microsoft's
keys, SMM, a vTPM; shim → GRUB → the signed kernel, cloud-init), --sb-runs times, the same
columns (0 runs skips it).

Run: /opt/sigvirt/venv/bin/python benchmarks/bench_boot.py [--runs 5] [--memory 128]
     [--arm64-runs 3] [--arm64-memory 256] [--sb-runs 2] [--sb-memory 512]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import guestlab

from sigvirt.guests import guest
from sigvirt.guests.guest import GuestSpec, PortAllocator
from sigvirt.hosts import recipes
from sigvirt.runner import Runner
from sigvirt.sharing.plan import protect_replica


def boot(
    lab: guestlab.Lab, base: Path, name: str, ports: PortAllocator, memory: int,
    architecture: str = "x64", trusted_launch: bool = False,
) -> dict:  # fmt: skip
    assert lab.hv is not None
    marks: dict[str, float] = {}
    spec = GuestSpec(
        name=name, pool=lab.pool, base=base, admin_user="bench",
        ssh_public_keys=(lab.public_key,), memory_mib=memory, architecture=architecture,
        firmware="uefi" if trusted_launch else "bios", trusted_launch=trusted_launch,
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
    parser.add_argument("--arm64-runs", type=int, default=3, help="Arm64 tiny boots (0: none)")
    # AAVMF and the arm64 kernel: 256 MiB as the tests' Lab_Small (untried below that)
    parser.add_argument("--arm64-memory", type=int, default=256, help="MiB for the Arm64 guest")
    parser.add_argument("--sb-runs", type=int, default=2, help="Secure Boot Debian boots")
    parser.add_argument("--sb-memory", type=int, default=512, help="MiB for the SB Debian guest")
    args = parser.parse_args()
    secure: dict[str, list[float]] = {"call": [], "define": [], "wait": [], "cpu": []}
    arm64: dict[str, list[float]] = {"call": [], "define": [], "wait": [], "cpu": []}

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
        if args.arm64_runs:
            arm_base = arm64_base_in_pool(lab)
            boot(lab, arm_base, lab.name("armwarm"), ports, args.arm64_memory, "Arm64")
            delete_all(lab)
        for r in range(args.arm64_runs):
            guestlab.wait_quiet(args.max_load, 60)
            loads.append(os.getloadavg()[0])
            one = boot(lab, arm_base, lab.name(f"arm{r}"), ports, args.arm64_memory, "Arm64")
            for k in arm64:
                arm64[k].append(one[k])
            print(f"arm64 run {r + 1}: define→SSH {one['define']:.2f} s", flush=True)
            delete_all(lab)
        sb_base = recipe_base_in_pool(lab, "debian-sb") if args.sb_runs else base
        for r in range(args.sb_runs):
            guestlab.wait_quiet(args.max_load, 60)
            loads.append(os.getloadavg()[0])
            one = boot(lab, sb_base, lab.name(f"sb{r}"), ports, args.sb_memory, trusted_launch=True)
            for k in secure:
                secure[k].append(one[k])
            print(f"secure boot run {r + 1}: define→SSH {one['define']:.2f} s", flush=True)
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
    if args.arm64_runs:
        print(f"\nArm64 tiny guest, {args.arm64_memory} MiB, 1 vCPU, TCG; {args.arm64_runs} runs")
        print(f"{'Arm64 1 guest: define→SSH':34} {fmt(arm64['define'])}")
        print(f"{'Arm64 1 guest: SSH wait after start':34} {fmt(arm64['wait'])}")
        print(f"{'Arm64 1 guest: QEMU CPU s until SSH':34} {fmt(arm64['cpu'])}")
    if args.sb_runs:
        print(f"\nSB Debian + vTPM, {args.sb_memory} MiB, 1 vCPU, TCG; {args.sb_runs} runs")
        print(f"{'SB Debian: define→SSH':34} {fmt(secure['define'])}")
        print(f"{'SB Debian: SSH wait after start':34} {fmt(secure['wait'])}")
        print(f"{'SB Debian: QEMU CPU s until SSH':34} {fmt(secure['cpu'])}")
    return 0


def arm64_base_in_pool(lab: guestlab.Lab) -> Path:
    """The Arm64 tiny image (built if its recipe changed) as a base in the lab's pool."""
    return recipe_base_in_pool(lab, "tiny-arm64")


def recipe_base_in_pool(lab: guestlab.Lab, recipe: str) -> Path:
    """A recipe's image (built if the recipe changed) as a base in the lab's pool."""
    assert lab.hv is not None
    image = recipes.ensure_built(recipes.recipe(recipe), Runner())
    dest = lab.root / "pool" / lab.name(f"{recipe}-base.qcow2")
    shutil.copyfile(image, dest)
    protect_replica(dest)
    lab.hv.refresh_pool(lab.pool)
    return dest


if __name__ == "__main__":
    sys.exit(main())
