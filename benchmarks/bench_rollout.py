"""Rolling upgrade of N = 4 tiny guests from 1.0.0 to 1.1.0, at max batch 25 % and 50 %,
against deleting the scale set and creating it again on 1.1.0.

sigvirt: a scale set made through the CLI (Rolling policy, the batch percent under test) on a
throwaway gallery (regions.yaml with two pools of this run, 1.0.0 and 1.1.0 both the cached
tiny image, two replicas each), its model pointed at 1.1.0, then `rolling.start` timed from
the call to its return (every instance reimaged, health-checked, the previous disks dropped).
Baseline: `vmss delete` then `vmss create` of the same scale set on 1.1.0, timed from the
delete to the return of the create (every instance answered SSH).

During each, a thread per instance port checks every 0.2 s whether sshd sends its banner:
the most instances surely unavailable at once is reported (down from a failing probe's start
to the start of the last failing probe before it answers again).
Goals: most unavailable ≤ the batch size; wall time ≤ 1.3 x batches x one reimage, where one
reimage is the median of the 25 % run's reimages (one at a time, nothing else running).

Run: /opt/sigvirt/venv/bin/python benchmarks/bench_rollout.py [--runs 1] [--instances 4]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import guestlab

from sigvirt.catalog.fleet import FleetStore, changed
from sigvirt.cli import main as sigvirt_main
from sigvirt.context import Context
from sigvirt.guests import scalesets
from sigvirt.hosts.regions import load as load_regions
from sigvirt.rollouts import rolling

# The sampler the rollout tests use: the same rule for "down" in both (tests/support is not
# installed, so the checkout's root goes on the path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.availability import Sampler

G, D = guestlab.GALLERY, guestlab.DEFINITION
V1, V2 = f"{G}/{D}/1.0.0", f"{G}/{D}/1.1.0"
TIME_GOAL = 1.3


def sigvirt(*argv: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = sigvirt_main(list(argv))
    if code != 0:
        raise RuntimeError(f"sigvirt {' '.join(argv)} failed ({code}): {err.getvalue()}")


# -- phases -----------------------------------------------------------------------------------
@dataclass
class Phase:
    what: str
    wall: float
    most_down: int
    batches: int = 0
    batch_size: int = 0
    reimages: tuple[float, ...] = ()


def make(ctx: Context, name: str, n: int, key: Path, percent: int, image: str = V1) -> list[int]:
    sigvirt("vmss", "create", "-n", name, "--image", image, "--instance-count", str(n),
            "--vcpus", "1", "--memory", "128", "--ssh-key-value", f"{key}.pub",
            "--upgrade-policy-mode", "Rolling", "--max-batch-instance-percent", str(percent),
            "--max-unhealthy-instance-percent", str(max(percent, 20)), "--force")  # fmt: skip
    return [v.ssh_port for v in scalesets.instances(ctx, name)]


def rolling_phase(lab: guestlab.Lab, ctx: Context, n: int, percent: int, run: int) -> Phase:
    name = lab.name(f"ro{percent}r{run}")
    try:
        ports = make(ctx, name, n, lab.key, percent)
        FleetStore(ctx.store.root).update(name, lambda m: changed(m, image=V2))
        guestlab.wait_quiet(1.0, 60)
        with Sampler(ports) as sampler:
            start = time.perf_counter()
            rec = rolling.start(ctx, name, wait=True)
            wall = time.perf_counter() - start
        if rec.code != "Completed":
            raise RuntimeError(f"rollout {name}: {rec.code} {rec.error}")
        if {v.image for v in scalesets.instances(ctx, name)} != {V2}:
            raise RuntimeError(f"rollout {name}: not every instance is on {V2}")
        size = max(len(b) for b in rec.batches)
        seconds = tuple(i.seconds for i in rec.instances)
        return Phase(f"rolling {percent} %", wall, sampler.most_down(), len(rec.batches), size,
                     seconds)  # fmt: skip
    finally:
        with contextlib.suppress(Exception):
            sigvirt("vmss", "delete", "-n", name, "--yes")


def recreate_phase(lab: guestlab.Lab, ctx: Context, n: int, run: int) -> Phase:
    name = lab.name(f"rc{run}")
    try:
        ports = make(ctx, name, n, lab.key, 25)
        guestlab.wait_quiet(1.0, 60)
        with Sampler(ports) as sampler:
            start = time.perf_counter()
            sigvirt("vmss", "delete", "-n", name, "--yes")
            make(ctx, name, n, lab.key, 25, image=V2)
            wall = time.perf_counter() - start
        return Phase("delete + create", wall, sampler.most_down(), 1, n)
    finally:
        with contextlib.suppress(Exception):
            sigvirt("vmss", "delete", "-n", name, "--yes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--instances", type=int, default=4)
    parser.add_argument("--max-load", type=float, default=1.0, help="wait for a quieter host")
    args = parser.parse_args()
    n = args.instances
    phases: list[Phase] = []
    with guestlab.lab("ro") as lab:
        regions = lab.gallery()
        sigvirt("sig", "image-version", "create", "-r", G, "-i", D, "-e", "1.1.0",
                "--source", str(lab.tiny_image), "--target-regions", "local=2")  # fmt: skip
        print(f"start: {guestlab.wait_quiet(args.max_load, 120)}\n")
        with Context.from_config(load_regions(regions)) as ctx:
            for run in range(args.runs):
                for what in ("25", "50", "recreate"):
                    guestlab.wait_quiet(args.max_load, 90)
                    if what == "recreate":
                        p = recreate_phase(lab, ctx, n, run)
                    else:
                        p = rolling_phase(lab, ctx, n, int(what), run)
                    phases.append(p)
                    per = ", ".join(f"{s:.1f}" for s in p.reimages)
                    print(f"run {run + 1} {p.what:16} {p.wall:7.1f} s  most down {p.most_down}"
                          f"  batches {p.batches} of {p.batch_size}"
                          + (f"  reimages: {per}" if per else ""), flush=True)  # fmt: skip
        print(f"\nend: {guestlab.load()}")
    return 0 if report(phases, n) else 1


def report(phases: list[Phase], n: int) -> bool:
    """Print the table and the verdicts; True when every goal was met."""
    one = statistics.median(s for p in phases if p.what == "rolling 25 %" for s in p.reimages)
    base = statistics.median(p.wall for p in phases if p.what == "delete + create")
    print(f"\nN = {n} tiny guests, 128 MiB, 1 vCPU, TCG; one reimage (25 % run, median) "
          f"{one:.1f} s; delete + create {base:.1f} s")  # fmt: skip
    print(f"{'':16} {'wall s':>7} {'batches':>7} {'B x T1':>7} {'ratio':>6} {'most down':>9} "
          f"{'batch':>5} {'vs recreate':>11}")  # fmt: skip
    verdicts = []
    for what in ("rolling 25 %", "rolling 50 %", "delete + create"):
        rows = [p for p in phases if p.what == what]
        wall = statistics.median(p.wall for p in rows)
        down = max(p.most_down for p in rows)
        size = rows[0].batch_size
        batches = rows[0].batches
        limit = batches * one
        ratio = wall / limit
        print(f"{what:16} {wall:7.1f} {batches:7} {limit:7.1f} {ratio:6.2f} {down:9} {size:5} "
              f"{wall / base:11.2f}")  # fmt: skip
        if what != "delete + create":
            verdicts.append((what, "most down ≤ batch", down <= size))
            verdicts.append((what, f"ratio ≤ {TIME_GOAL}", ratio <= TIME_GOAL))
    print("\nratio = wall ÷ (batches x one reimage); most down = the most instances whose sshd "
          "surely did not answer at one moment (probed every 0.2 s per instance; down from a "
          "failing probe's start to the start of the last failing one)")  # fmt: skip
    for what, goal, ok in verdicts:
        print(f"{what}: {goal}: {'met' if ok else 'NOT met'}")
    return all(ok for _w, _g, ok in verdicts)


if __name__ == "__main__":
    sys.exit(main())
