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

Then the Debian guest (images/debian: BIOS, systemd, real cloud-init from sigvirt's NoCloud
seed), --debian-runs times: define→SSH, and define→cloud-init done (the console line cloud-init's
final stage prints, "Cloud-init v. … finished at": read from the console log on the host, so the
guest spends nothing on it). With --debian-before FILE (an earlier build of the recipe, e.g. the
cache's previous debian-*.qcow2 copied aside before a rebuild) each run boots that image too,
alternating, and the rows compare them (before / after). --debian-stock-keys adds a third arm:
the current image told to make cloud-init's default host keys (rsa, ecdsa, ed25519) through
custom data, i.e. what the seed's ssh_genkeytypes spares a stock image. --debian-phases prints,
once per arm, `systemd-analyze` and the slowest cloud-init steps (`cloud-init analyze blame`).

Run: /opt/sigvirt/venv/bin/python benchmarks/bench_boot.py [--runs 5] [--memory 128]
     [--arm64-runs 3] [--arm64-memory 256] [--sb-runs 2] [--sb-memory 512]
     [--debian-runs 0] [--debian-memory 512] [--debian-before FILE] [--debian-stock-keys]
     [--debian-phases]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import guestlab

from sigvirt.guests import guest
from sigvirt.guests.guest import GuestSpec, PortAllocator
from sigvirt.hosts import recipes, ssh
from sigvirt.runner import Runner
from sigvirt.sharing.plan import protect_replica


def boot(
    lab: guestlab.Lab, base: Path, name: str, ports: PortAllocator, memory: int,
    architecture: str = "x64", trusted_launch: bool = False, custom_data: bytes | None = None,
) -> dict:  # fmt: skip
    assert lab.hv is not None
    marks: dict[str, float] = {}
    spec = GuestSpec(
        name=name, pool=lab.pool, base=base, admin_user="bench",
        ssh_public_keys=(lab.public_key,), memory_mib=memory, architecture=architecture,
        firmware="uefi" if trusted_launch else "bios", trusted_launch=trusted_launch,
        custom_data=custom_data,
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
        "guest": g,
    }


CLOUD_INIT_DONE = re.compile(r"Cloud-init v\. \S+ finished at")
# What a stock image does unless the seed says otherwise (cloud-init's default ssh_genkeytypes)
STOCK_KEYS = b"#cloud-config\nssh_genkeytypes: [rsa, ecdsa, ed25519]\n"


def boot_debian(
    lab: guestlab.Lab, base: Path, name: str, ports: PortAllocator, memory: int,
    custom_data: bytes | None = None, phases: bool = False,
) -> dict:  # fmt: skip
    """boot() of a cloud-init guest, then until its console shows cloud-init's final line."""
    one = boot(lab, base, name, ports, memory, custom_data=custom_data)
    defined = one["end"] - one["define"]
    console = lab.root / "pool" / f"{name}.console.log"
    deadline = time.perf_counter() + 300
    while not CLOUD_INIT_DONE.search(console.read_text(errors="replace")):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{name}: no 'Cloud-init … finished' on the console in 300 s")
        time.sleep(0.25)
    one["done"] = time.perf_counter() - defined
    if phases:
        endpoint = one["guest"].endpoint
        for command in ("systemd-analyze | head -1", "sudo cloud-init analyze blame | sed -n 2,7p"):
            print(f"  $ {command}\n" + ssh.run(endpoint, command).stdout.rstrip(), flush=True)
    return one


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
    parser.add_argument("--debian-runs", type=int, default=0, help="Debian cloud-init boots")
    parser.add_argument("--debian-memory", type=int, default=512, help="MiB for the Debian guest")
    parser.add_argument("--debian-before", type=Path, help="an earlier build of images/debian")
    parser.add_argument(
        "--debian-stock-keys", action="store_true", help="also boot with rsa+ecdsa+ed25519 keys"
    )
    parser.add_argument("--debian-phases", action="store_true", help="systemd/cloud-init phases")
    args = parser.parse_args()
    debian: dict[str, dict[str, list[float]]] = {}
    secure: dict[str, list[float]] = {"call": [], "define": [], "wait": [], "cpu": []}
    arm64: dict[str, list[float]] = {"call": [], "define": [], "wait": [], "cpu": []}

    single: dict[str, list[float]] = {"call": [], "define": [], "wait": [], "cpu": []}
    four: dict[str, list[float]] = {"call": [], "define": [], "wait": [], "cpu": [], "wall": []}
    loads = []
    with guestlab.lab("boot") as lab:
        base = lab.base_in_pool()
        ports = PortAllocator(24000, 24999)
        print(f"start: {guestlab.wait_quiet(args.max_load, 120)}")
        if args.runs:  # One unmeasured boot first: caches (accel, page cache of the base) warm.
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
        if args.debian_runs:
            debian = debian_arms(lab, ports, args, loads)
        print(f"end: {guestlab.load()}")

    if args.runs:
        print_tiny(single, four, loads, args)
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
    if debian:
        print_debian(debian, args)
    return 0


def print_tiny(
    single: dict[str, list[float]], four: dict[str, list[float]], loads: list[float],
    args: argparse.Namespace,
) -> None:  # fmt: skip
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


def debian_arms(
    lab: guestlab.Lab, ports: PortAllocator, args: argparse.Namespace, loads: list[float]
) -> dict[str, dict[str, list[float]]]:
    """The Debian arms, alternating within each run: before (--debian-before), after, and
    stock keys (--debian-stock-keys); define→SSH, define→cloud-init done, QEMU CPU s."""
    after = recipe_base_in_pool(lab, "debian")
    arms: dict[str, tuple[Path, bytes | None]] = {}
    if args.debian_before:
        arms["before"] = (copy_base_in_pool(lab, args.debian_before, "debian-before"), None)
    arms["after"] = (after, None)
    if args.debian_stock_keys:
        arms["stock keys"] = (after, STOCK_KEYS)
    rows: dict[str, dict[str, list[float]]] = {
        arm: {"define": [], "done": [], "cpu": []} for arm in arms
    }
    for r in range(args.debian_runs):
        for arm, (base, custom) in arms.items():
            guestlab.wait_quiet(args.max_load, 300)  # a minute-long boot: worth waiting for
            loads.append(os.getloadavg()[0])
            phases = args.debian_phases and r == 0
            if phases:
                print(f"debian {arm}, run 1:")
            name = lab.name(f"deb{r}-{arm.replace(' ', '')}")
            one = boot_debian(lab, base, name, ports, args.debian_memory, custom, phases)
            for k in rows[arm]:
                rows[arm][k].append(one[k])
            print(
                f"debian {arm} run {r + 1}: define→SSH {one['define']:.2f} s, "
                f"define→cloud-init done {one['done']:.2f} s (load {loads[-1]:.2f})",
                flush=True,
            )
            delete_all(lab)
    return rows


def print_debian(rows: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    print(f"\nDebian + cloud-init, {args.debian_memory} MiB, 1 vCPU, TCG; {args.debian_runs} runs")
    print(f"{'seconds':40} {'min':>7} {'median':>7} {'max':>7}")
    for arm, row in rows.items():
        print(f"{'Debian ' + arm + ': define→SSH':40} {fmt(row['define'])}")
        print(f"{'Debian ' + arm + ': define→cloud-init':40} {fmt(row['done'])}")
        print(f"{'Debian ' + arm + ': QEMU CPU s to SSH':40} {fmt(row['cpu'])}")
    for other in ("before", "stock keys"):
        if other not in rows:
            continue
        for k, what in (("define", "define→SSH"), ("done", "define→cloud-init")):
            ratio = [a / b for a, b in zip(rows["after"][k], rows[other][k], strict=True)]
            print(f"{'ratio after/' + other + ': ' + what:40} {fmt(ratio)}")


def arm64_base_in_pool(lab: guestlab.Lab) -> Path:
    """The Arm64 tiny image (built if its recipe changed) as a base in the lab's pool."""
    return recipe_base_in_pool(lab, "tiny-arm64")


def recipe_base_in_pool(lab: guestlab.Lab, recipe: str) -> Path:
    """A recipe's image (built if the recipe changed) as a base in the lab's pool."""
    assert lab.hv is not None
    return copy_base_in_pool(lab, recipes.ensure_built(recipes.recipe(recipe), Runner()), recipe)


def copy_base_in_pool(lab: guestlab.Lab, image: Path, tag: str) -> Path:
    """A copy of an image file as a base in the lab's pool, protected like a replica."""
    assert lab.hv is not None
    lab.hv.ensure_dir_pool(lab.pool, lab.root / "pool")
    dest = lab.root / "pool" / lab.name(f"{tag}-base.qcow2")
    shutil.copyfile(image, dest)
    protect_replica(dest)
    lab.hv.refresh_pool(lab.pool)
    return dest


if __name__ == "__main__":
    sys.exit(main())
