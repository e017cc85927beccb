"""Scale sets of N = 1, 4, 8, 16 tiny guests: create → all SSH-ready, against two baselines.

sigvirt: `scalesets.create` on a throwaway gallery (regions.yaml with two pools of this run,
a definition, a version of the cached tiny image with 2 replicas, made through the CLI), tiny
guests of 128 MiB / 1 vCPU under TCG, timed from the call to its return (every instance
answered SSH), then the scale set is deleted.

(a) CPU-bound limit: N x T1 ÷ cores, T1 = the N=1 scale set's time in the same run.
    Goal: sigvirt ≤ 1.25 x limit. For N < cores the formula asks for more parallelism than
    there are guests (one guest cannot use two cores), so the table also shows
    max(N ÷ cores, 1) x T1.
(b) N sequential `virt-install --import` runs of the same image with the same settings: the
    same tiny image (its own copy, since libvirt chowns the backing files of what
    virt-install starts), a qcow2 overlay from `qemu-img create -f qcow2 -F qcow2 -b BASE`,
    128 MiB, 1 vCPU, --virt-type qemu, q35, tb-cache 48 MiB (as sigvirt gives it), a NoCloud
    seed made by sigvirt.seed.seed_iso as a second read-only virtio disk, the same slirp user
    network with a loopback hostfwd (--network none + --qemu-commandline), serial to a file, virtio
    rng, guest-agent channel, no balloon; then sigvirt's own SSH wait (ssh.wait_ready).
    Each guest's define→SSH (overlay + seed + virt-install + SSH wait) is timed; they run one
    after another (earlier ones keep running) and the times are summed.
    Goal: sigvirt faster by at least cores x 0.9.

Everything is destroyed and undefined at the end of each phase and again when the run ends.
Run: /opt/sigvirt/venv/bin/python benchmarks/bench_scaleset.py [--sizes 1 4 8 16] [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import guestlab

from sigvirt.context import Context
from sigvirt.guests import guest, scalesets
from sigvirt.guests.seed import SeedSpec, seed_iso
from sigvirt.guests.vms import VmRequest
from sigvirt.hosts import ssh
from sigvirt.hosts.ports import PortAllocator
from sigvirt.hosts.regions import load as load_regions

RSS_PER_GUEST_MIB = 220  # tiny guest under TCG with a 48 MiB tb-cache (bench_density.py)
CPU_GOAL = 1.25
MEMORY = 128


@dataclass
class Phase:
    wall: float  # sigvirt: create → all SSH; virt-install: sum of define → SSH
    per_guest: list[float] = field(default_factory=list)
    tool: list[float] = field(default_factory=list)  # virt-install process alone
    rss_mib: float = 0.0
    cpu: float = 0.0  # QEMU CPU seconds of all guests when the last answered
    load: float = 0.0
    busy: float = 0.0  # cores busy on average during the phase (everyone's work)


def sigvirt_phase(lab: guestlab.Lab, ctx: Context, n: int, run: int) -> Phase:
    name = lab.name(f"ss{n}r{run}")
    req = VmRequest(
        name=name, image=f"{guestlab.GALLERY}/{guestlab.DEFINITION}", memory_mib=MEMORY,
        vcpus=1, admin_user="bench", ssh_key_value=str(lab.key) + ".pub", timeout=600,
    )  # fmt: skip
    load = os.getloadavg()[0]
    meter = guestlab.CpuMeter()
    start = time.perf_counter()
    try:
        result = scalesets.create(ctx, name, n, req)
        wall = time.perf_counter() - start
        busy = meter.busy_cores()
        if result.failed:
            raise RuntimeError(f"scale set {name}: {'; '.join(result.failed)}")
        names = [v.name for v in result.created]
        cpu = sum(guestlab.qemu_cpu_seconds(names).values())
        rss = sum(guestlab.qemu_rss_mib(names).values())
        boots = [v.boot_seconds or 0.0 for v in result.created]
    finally:
        lab.sweep_domains()
    return Phase(wall, boots, rss_mib=rss, cpu=cpu, load=load, busy=busy)


def virt_install_phase(lab: guestlab.Lab, base: Path, n: int, run: int) -> Phase:
    assert lab.hv is not None
    hv = lab.hv
    work = lab.root / f"vi{n}r{run}"
    work.mkdir(mode=0o755)
    ports = PortAllocator(25000, 25999)
    phase = Phase(0.0, load=os.getloadavg()[0])
    meter = guestlab.CpuMeter()
    names = []
    try:
        for i in range(n):
            name = lab.name(f"vi{n}r{run}-{i}")
            names.append(name)
            overlay, seed, console = (work / f"{name}{s}" for s in (".qcow2", ".iso", ".log"))
            start = time.perf_counter()
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base),
                 str(overlay)], check=True,
            )  # fmt: skip
            spec = SeedSpec(f"{name}-1", name, "bench", (lab.public_key,))
            seed.write_bytes(seed_iso(spec))
            port = ports.allocate(guest.ports_in_use(hv), local=True)
            netdev = f"user,id=vinet0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22"
            device = "virtio-net-pci,netdev=vinet0,id=vinic0,bus=pcie.0,addr=0x10"
            argv = [
                "virt-install", "--connect", guestlab.URI, "--name", name, "--import",
                "--virt-type", "qemu", "--memory", str(MEMORY), "--vcpus", "1",
                "--osinfo", "detect=on,require=off", "--machine", "q35",
                "--disk", f"path={overlay},format=qcow2,bus=virtio",
                "--disk", f"path={seed},format=raw,bus=virtio,readonly=on",
                "--network", "none", f"--qemu-commandline=-netdev {netdev} -device {device}",
                "--serial", f"file,path={console}", "--rng", "/dev/urandom",
                "--channel", "unix,target.type=virtio,name=org.qemu.guest_agent.0",
                "--memballoon", "none", "--xml", "./features/tcg/tb-cache=48",
                "--xml", "./features/tcg/tb-cache/@unit=MiB",
                "--noautoconsole", "--graphics", "none",
            ]  # fmt: skip
            tool_start = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            phase.tool.append(time.perf_counter() - tool_start)
            ep = ssh.Endpoint("127.0.0.1", port, "bench", lab.key)
            dom = hv.domain(name)
            ssh.wait_ready(ep, 600, dom.is_active)
            phase.per_guest.append(time.perf_counter() - start)
            phase.cpu += guestlab.qemu_cpu_seconds([name]).get(name, 0.0)
            ports.release(port)
        phase.wall = sum(phase.per_guest)
        phase.busy = meter.busy_cores()
        phase.rss_mib = sum(guestlab.qemu_rss_mib(names).values())
    finally:
        for name in names:
            hv.destroy_and_undefine(name)
        shutil.rmtree(work, ignore_errors=True)
    return phase


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--max-load", type=float, default=1.0, help="wait for a quieter host")
    parser.add_argument("--no-virt-install", action="store_true")
    args = parser.parse_args()
    if 1 not in args.sizes:
        args.sizes.insert(0, 1)  # T1 comes from the N=1 scale set
    if not args.no_virt_install and shutil.which("virt-install") is None:
        print("virt-install not found: apt-get install --no-install-recommends virtinst")
        return 2
    cores = os.cpu_count() or 1
    biggest = max(args.sizes)
    need, avail = biggest * RSS_PER_GUEST_MIB, guestlab.mem_available_mib()
    print(
        f"memory: {biggest} guests x ~{RSS_PER_GUEST_MIB} MiB RSS ≈ {need / 1024:.1f} GiB "
        f"needed, {avail / 1024:.1f} GiB available: "
        + ("fits comfortably" if need < 0.5 * avail else "TIGHT")
    )

    sig: dict[int, list[Phase]] = {n: [] for n in args.sizes}
    vi: dict[int, list[Phase]] = {n: [] for n in args.sizes}
    with guestlab.lab("ss") as lab:
        regions = lab.gallery()
        vi_base = lab.root / "virt-install-base.qcow2"
        shutil.copyfile(lab.tiny_image, vi_base)
        os.chmod(vi_base, 0o644)
        print(f"start: {guestlab.wait_quiet(args.max_load, 120)}\n")
        with Context.from_config(load_regions(regions)) as ctx:
            for run in range(args.runs):
                for n in args.sizes:
                    order = ["sigvirt", "virt-install"]
                    if run % 2:
                        order.reverse()
                    for what in order:
                        if what == "virt-install" and args.no_virt_install:
                            continue
                        guestlab.wait_quiet(args.max_load, 90)
                        if what == "sigvirt":
                            p = sigvirt_phase(lab, ctx, n, run)
                            sig[n].append(p)
                        else:
                            p = virt_install_phase(lab, vi_base, n, run)
                            vi[n].append(p)
                        per = ", ".join(f"{x:.1f}" for x in p.per_guest)
                        print(
                            f"run {run + 1} N={n:2} {what:12} {p.wall:7.1f} s  "
                            f"(load {p.load:.2f}; cores busy {p.busy:.2f}, ours "
                            f"{p.cpu / p.wall:.2f}; QEMU RSS {p.rss_mib:.0f} MiB, "
                            f"CPU {p.cpu / n:.1f} s/guest; per guest: {per})",
                            flush=True,
                        )
        print(f"\nend: {guestlab.load()}")

    return 0 if report(args.sizes, sig, vi, cores) else 1


def report(
    sizes: list[int], sig: dict[int, list[Phase]], vi: dict[int, list[Phase]], cores: int
) -> bool:
    """Print the table and the verdicts; True when every goal was met."""
    runs = len(sig[1])
    t1 = [p.wall for p in sig[1]]
    print(
        f"\ntiny guests, {MEMORY} MiB, 1 vCPU, TCG, {cores} cores; {runs} runs; medians over "
        "runs of per-run ratios (each run against its own N=1 time)"
    )
    head = (
        f"{'N':>3} {'sigvirt s':>10} {'N·T1/cores':>11} {'ratio':>6} {'floor':>6} "
        f"{'virt-inst Σ':>12} {'speedup':>8} {'vi tool':>8} {'CPU/g':>6} {'vi CPU/g':>8} "
        f"{'RSS MiB':>8}"
    )
    print(head)
    verdicts = []
    for n in sizes:
        walls = [p.wall for p in sig[n]]
        limit = [n * t / cores for t in t1]
        floor = [max(n / cores, 1) * t for t in t1]
        ratio = statistics.median(w / lim for w, lim in zip(walls, limit, strict=True))
        fratio = statistics.median(w / f for w, f in zip(walls, floor, strict=True))
        line = (
            f"{n:>3} {statistics.median(walls):10.1f} "
            f"{statistics.median(limit):11.1f} {ratio:6.2f} {fratio:6.2f}"
        )
        if vi[n]:
            sums = [p.wall for p in vi[n]]
            speed = statistics.median(s / w for s, w in zip(sums, walls, strict=True))
            tool = statistics.median(t for p in vi[n] for t in p.tool)
            line += f" {statistics.median(sums):12.1f} {speed:8.2f} {tool:8.2f}"
            if n >= cores:
                verdicts.append(("speedup", n, speed >= cores * 0.9))
        else:
            line += f" {'':>12} {'':>8} {'':>8}"
        line += f" {statistics.median(p.cpu / n for p in sig[n]):6.1f}"
        vcpu = f"{statistics.median(p.cpu / n for p in vi[n]):8.1f}" if vi[n] else f"{'':>8}"
        line += f" {vcpu}"
        line += f" {max(p.rss_mib for p in sig[n]):8.0f}"
        print(line)
        if n >= cores:
            verdicts.append(("cpu", n, ratio <= CPU_GOAL))
    print(
        "\nratio = sigvirt ÷ (N x T1 ÷ cores), goal ≤ 1.25; floor = sigvirt ÷ (max(N ÷ cores, 1)"
        " x T1); speedup = Σ virt-install define→SSH ÷ sigvirt, goal ≥ "
        f"{cores * 0.9:.1f}; vi tool = the virt-install process alone (median, s); CPU/g = "
        "QEMU CPU seconds per guest until SSH (sigvirt, virt-install)"
    )
    for kind, n, ok in verdicts:
        goal = f"ratio ≤ {CPU_GOAL}" if kind == "cpu" else f"speedup ≥ {cores * 0.9:.1f}"
        print(f"N={n:2} {goal}: {'met' if ok else 'NOT met'}")
    return all(ok for _, _, ok in verdicts)


if __name__ == "__main__":
    sys.exit(main())
