"""Host memory per tiny guest (PSS of its QEMU) at N = 1, 8, 16, with KSM off and on, in one run.

Per count N and translation-cache size (--tb-sizes; 0: sigvirt's own), N tiny guests (linked
clones of the cached tiny image, --memory MiB, 1 vCPU, TCG) are booted at once by
`guest.create(wait=True)` with memory merging allowed (the domain without <nosharepages/>, as
a region with `memory: {merge: true}` makes them), then left --settle seconds. Then:

  off   KSM not running: each QEMU's Pss and Rss (/proc/PID/smaps_rollup)
  on    KSM running (`echo 1 > /sys/kernel/mm/ksm/run`, faster scanning for the run) until it
        has done --scans more full scans: Pss and Rss again, and pages_sharing / pages_shared

and prints host MiB per guest (Pss mean, what 16 guests really cost the host) against guest
RAM, what KSM saved, and each guest's define→SSH (min / median / max) for the boot-time cost of
a smaller translation cache. KSM's settings as found (run, sleep_millisecs, pages_to_scan) are
put back at the end, whatever happened; a KSM found running is stopped with unmerging (run=2)
for the off measurement and restarted afterwards.

--breakdown prints the largest mappings (Pss) of the first N=1 guest's QEMU: what it costs
beyond guest RAM.

Goal (issue 18): at N = 16, Pss per guest ≤ guest RAM + 48 MiB with merging on (exit 1 if not).

Run: /opt/sigvirt/venv/bin/python benchmarks/bench_density.py [--counts 1,8,16] [--memory 128]
     [--tb-sizes 0,64] [--settle 20] [--scans 3] [--breakdown]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import guestlab

from sigvirt.guests import guest
from sigvirt.guests.guest import GuestSpec, PortAllocator
from sigvirt.guests.memory import tb_cache_mib
from sigvirt.hosts import ksm
from sigvirt.runner import Runner

GOAL_EXTRA_MIB = 48
KSM = ksm.SYSFS
# Faster than the kernel's defaults (100 pages every 20 ms: ~20 MiB/s) so that a few full scans
# of 16 guests take seconds, not minutes.
FAST = {"sleep_millisecs": "10", "pages_to_scan": "4000"}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(",", " ").split()]


def smaps_rollup(pid: int) -> dict[str, float]:
    """Pss and Rss (MiB) of a process, from /proc/PID/smaps_rollup."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Rss", "Pss_Anon", "Pss_File"):
            out[key] = int(rest.split()[0]) / 1024
    return out


def qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())


def measure(names: list[str]) -> dict[str, list[float]]:
    rows: dict[str, list[float]] = {"Pss": [], "Rss": [], "Pss_Anon": [], "Pss_File": []}
    for name in names:
        got = smaps_rollup(qemu_pid(name))
        for key in rows:
            rows[key].append(got.get(key, 0.0))
    return rows


def breakdown(name: str, top: int = 12) -> list[tuple[float, str]]:
    """The largest mappings of a guest's QEMU by Pss (MiB, what it maps)."""
    found: list[tuple[float, str]] = []
    what = ""
    for line in Path(f"/proc/{qemu_pid(name)}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0]:
            size = head[0].split("-")
            mib = (int(size[1], 16) - int(size[0], 16)) >> 20
            what = f"{' '.join(head[5:]) or '[anon]'} ({mib} MiB mapped)"
        elif line.startswith("Pss:"):
            found.append((int(head[1]) / 1024, what))
    return sorted(found, reverse=True)[:top]


def jit_stats(name: str) -> str:
    """QEMU's own account of its translation cache (HMP `info jit`): code size, flushes."""
    argv = ["virsh", "-c", guestlab.URI, "qemu-monitor-command", name, "--hmp", "info jit"]
    out = Runner().run(argv, check=False).stdout
    keep = ("gen code size", "TB count", "TB flush count", "TB invalidate count")
    return "; ".join(" ".join(x.split()) for x in out.splitlines() if x.strip().startswith(keep))


def _write(name: str, value: str) -> None:
    (KSM / name).write_text(value + "\n")


def _wait_scans(scans: int, timeout: float) -> tuple[int, float]:
    """Until KSM has done `scans` more full scans (or `timeout`): (scans done, seconds)."""
    start, t0 = ksm.read(KSM).full_scans, time.monotonic()
    while time.monotonic() - t0 < timeout:
        done = ksm.read(KSM).full_scans - start
        if done >= scans:
            return done, time.monotonic() - t0
        time.sleep(0.5)
    return ksm.read(KSM).full_scans - start, time.monotonic() - t0


@contextlib.contextmanager
def ksm_restored() -> Iterator[ksm.KsmState]:
    """KSM's run, sleep_millisecs and pages_to_scan as found, put back on the way out."""
    found = ksm.read(KSM)
    if not found.available:
        raise SystemExit(f"{KSM}: no KSM in this kernel")
    try:
        if found.run != 0:
            _write("run", "2")  # unmerge: the off measurement must start from nothing merged
        yield found
    finally:
        _write("sleep_millisecs", str(found.sleep_millisecs))
        _write("pages_to_scan", str(found.pages_to_scan))
        _write("run", str(found.run))


def boot_all(
    lab: guestlab.Lab, base: Path, ports: PortAllocator, names: list[str], memory: int, tb: int
) -> list[tuple[float, float]]:
    """Boot `names` at once (merging allowed); each one's define→SSH seconds and the CPU
    seconds its QEMU used until then (steadier than wall time on a shared host)."""
    assert lab.hv is not None

    def one(name: str) -> tuple[float, float]:
        marks: dict[str, float] = {}
        spec = GuestSpec(
            name=name, pool=lab.pool, base=base, admin_user="bench",
            ssh_public_keys=(lab.public_key,), memory_mib=memory, tb_cache_mib=tb,
            memory_merge=True,
        )  # fmt: skip
        assert lab.hv is not None
        guest.create(
            lab.hv, spec, lab.key, ports=ports, timeout=900,
            on_defined=lambda _n: marks.__setitem__("defined", time.perf_counter()),
        )  # fmt: skip
        seconds = time.perf_counter() - marks["defined"]
        return seconds, guestlab.qemu_cpu_seconds([name]).get(name, 0.0)

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        return list(pool.map(one, names))


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def run_count(
    lab: guestlab.Lab, base: Path, ports: PortAllocator, n: int, tb: int, args: argparse.Namespace
) -> dict[str, float]:
    names = [lab.name(f"d{tb}-{n}-{i}") for i in range(n)]
    booted = boot_all(lab, base, ports, names, args.memory, tb)
    boots, cpus = [b for b, _ in booted], [c for _, c in booted]
    time.sleep(args.settle)
    if args.breakdown and n == 1:
        print(f"  largest mappings of {names[0]}'s QEMU (Pss MiB):")
        for pss, what in breakdown(names[0]):
            print(f"    {pss:7.1f}  {what}")
        print(f"  info jit: {jit_stats(names[0])}")
    _write("run", "0")
    off = measure(names)
    before = ksm.read(KSM)
    for key, value in FAST.items():
        _write(key, value)
    _write("run", "1")
    scans, seconds = _wait_scans(args.scans, args.scan_timeout)
    on = measure(names)
    after = ksm.read(KSM)
    _write("run", "0")  # merged pages stay merged until their guests go
    row = {
        "n": n, "tb": tb or tb_cache_mib(args.memory),
        "boot_min": min(boots), "boot_med": statistics.median(boots),
        "boot_max": max(boots), "cpu_med": statistics.median(cpus),
        "pss_off": mean(off["Pss"]), "rss_off": mean(off["Rss"]),
        "anon_off": mean(off["Pss_Anon"]), "pss_on": mean(on["Pss"]), "rss_on": mean(on["Rss"]),
        "anon_on": mean(on["Pss_Anon"]), "sharing": after.pages_sharing - before.pages_sharing,
        "shared": after.pages_shared - before.pages_shared, "saved": after.saved_mib,
        "scans": scans, "scan_s": seconds,
    }  # fmt: skip
    print(
        f"N={n:2} tb={row['tb']:3} MiB: Pss/guest off {row['pss_off']:6.1f}  "
        f"on {row['pss_on']:6.1f} MiB; "
        f"pages_sharing {after.pages_sharing} ({after.saved_mib:.0f} MiB saved, {scans} scans in "
        f"{seconds:.0f} s); define→SSH median {row['boot_med']:.1f} s, QEMU CPU "
        f"{row['cpu_med']:.1f} s ({guestlab.load()})",
        flush=True,
    )
    for name in names:
        guest.delete(lab.hv, name)  # type: ignore[arg-type]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=_ints, default=[1, 8, 16], help="e.g. 1,8,16")
    parser.add_argument("--memory", type=int, default=128, help="MiB per guest")
    tb_help = "TCG cache MiB to compare, e.g. 0,64 (0: sigvirt's own choice by RAM)"
    parser.add_argument("--tb-sizes", type=_ints, default=[0], help=tb_help)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds after SSH answers")
    parser.add_argument("--scans", type=int, default=3, help="KSM full scans before 'on'")
    parser.add_argument("--scan-timeout", type=float, default=180.0)
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for a quieter host")
    parser.add_argument("--breakdown", action="store_true", help="largest mappings at N=1")
    args = parser.parse_args()
    rows = []
    with guestlab.lab("density") as lab, ksm_restored() as found:
        base = lab.base_in_pool()
        ports = PortAllocator(25000, 25999)  # apart from bench_boot's 24000-24999
        print(f"KSM as found: {found.run_state}, sleep {found.sleep_millisecs} ms, "
              f"{found.pages_to_scan} pages/scan")  # fmt: skip
        print(f"start: {guestlab.wait_quiet(args.max_load, 120)}", flush=True)
        for n in args.counts:
            for tb in args.tb_sizes:  # the sizes side by side at each count
                rows.append(run_count(lab, base, ports, n, tb, args))
        print(f"end: {guestlab.load()}")
    print(f"\ntiny guest, {args.memory} MiB RAM, 1 vCPU, TCG; MiB per guest (means)")
    print(
        f"{'N':>3} {'tb':>4} {'Pss off':>8} {'Pss on':>8} {'anon off':>8} {'anon on':>8} "
        f"{'Rss off':>8} {'Rss on':>8} {'on-RAM':>7} {'saved':>7} {'boot min/med/max s':>20} "
        f"{'CPU s':>6}"
    )
    for r in rows:
        print(
            f"{r['n']:3d} {r['tb']:4d} {r['pss_off']:8.1f} {r['pss_on']:8.1f} {r['anon_off']:8.1f} "
            f"{r['anon_on']:8.1f} {r['rss_off']:8.1f} {r['rss_on']:8.1f} "
            f"{r['pss_on'] - args.memory:7.1f} {r['pss_off'] - r['pss_on']:7.1f} "
            f"{r['boot_min']:6.1f} {r['boot_med']:6.1f} {r['boot_max']:6.1f} {r['cpu_med']:6.1f}"
        )
    if len(args.tb_sizes) > 1:
        print(f"ratios to the first tb size ({args.tb_sizes[0] or 'sigvirt'}'s row at each N):")
        for r in rows:
            first = next(x for x in rows if x["n"] == r["n"])
            if r is not first:
                off, on = r["pss_off"] / first["pss_off"], r["pss_on"] / first["pss_on"]
                cpu = r["cpu_med"] / first["cpu_med"]
                print(
                    f"  N={r['n']:2} tb {r['tb']} / {first['tb']}: Pss off {off:.2f}, "
                    f"on {on:.2f}, QEMU CPU to SSH {cpu:.2f}"
                )
    big = [r for r in rows if r["n"] == max(args.counts)]
    best = min(r["pss_on"] for r in big)
    met = best <= args.memory + GOAL_EXTRA_MIB
    print(
        f"goal: N={max(args.counts)} Pss/guest with merging on ≤ {args.memory} + "
        f"{GOAL_EXTRA_MIB} MiB: {best:.1f} MiB, {'met' if met else 'not met'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
