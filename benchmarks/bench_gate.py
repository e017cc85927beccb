"""One boot test (`image-version test`, rollouts/gate.py) of a tiny version, against the same
work done by hand: what the gate adds around booting a clone and running a spec.

Gate: `gate.run` on a published tiny version whose definition has a one-test spec (a file
exists in the guest), timed from the call to its return: lock, leftover check, record
`running`, throwaway key, `vms.create` of a linked clone (waits for SSH), the spec in a
child pytest over SSH (testinfra, paramiko), the clone deleted, record `passed`.
By hand: `vms.create` of a VM of the same version with the same settings, `specrun.run_spec`
of the same spec against it, `lifecycle.delete`, each timed.
Runs alternate (gate, by hand, gate, ...) after one unmeasured run of each; min / median /
max over runs. Goal: gate ≤ 1.15 x by hand (medians): the gate's own bookkeeping is small
next to the boot and the spec.

Run: /opt/sigvirt/venv/bin/python benchmarks/bench_gate.py [--runs 3] [--max-load 1.0]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from contextlib import redirect_stderr, redirect_stdout

import guestlab

from sigvirt.catalog.names import ImageRef
from sigvirt.catalog.records import BootTestState
from sigvirt.cli import main as sigvirt_main
from sigvirt.context import Context
from sigvirt.errors import NotFound
from sigvirt.guests import guest, inventory, lifecycle, specrun, vms
from sigvirt.hosts.regions import load as load_regions
from sigvirt.rollouts import gate

G, D, V = guestlab.GALLERY, guestlab.DEFINITION, guestlab.VERSION
SPEC = "def test_boots(host):\n    assert host.file('/bin/busybox').exists\n"
GOAL = 1.15


def sigvirt(*argv: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = sigvirt_main(list(argv))
    if code != 0:
        raise RuntimeError(f"sigvirt {' '.join(argv)} failed ({code}): {err.getvalue()}")


def by_gate(ctx: Context) -> dict[str, float]:
    start = time.perf_counter()
    rec = gate.run(ctx, ImageRef(G, D, V))
    wall = time.perf_counter() - start
    if rec.boot_test.state != BootTestState.PASSED:
        raise RuntimeError(f"the boot test did not pass: {rec.boot_test}")
    return {"wall": wall, "inner": rec.boot_test.seconds}


def by_hand(lab: guestlab.Lab, ctx: Context, name: str) -> dict[str, float]:
    req = vms.VmRequest(
        name=name, image=f"{G}/{D}/{V}", region="local", admin_user=gate.ADMIN_USER,
        ssh_key_value=str(lab.key.with_suffix(".pub")), timeout=gate.BOOT_TIMEOUT,
    )  # fmt: skip
    t0 = time.perf_counter()
    vms.create(ctx, req)
    t1 = time.perf_counter()
    hv, _region, dom = inventory.find(ctx, name, "local")
    prov = guest.provenance_of(dom)
    endpoint = inventory.endpoint_of(hv, prov) if prov is not None else None
    if endpoint is None:
        raise RuntimeError(f"VM {name} has no SSH endpoint")
    result = specrun.run_spec(ctx.runner, SPEC, endpoint, key=lab.key, timeout=gate.SPEC_TIMEOUT)
    t2 = time.perf_counter()
    lifecycle.delete(ctx, name, "local")
    t3 = time.perf_counter()
    if not result.passed:
        raise RuntimeError(f"the spec did not pass by hand: {result.summary}")
    return {"create": t1 - t0, "spec": t2 - t1, "delete": t3 - t2, "wall": t3 - t0}


def fmt(values: list[float]) -> str:
    lo, med, hi = guestlab.summary(values)
    return f"{lo:7.2f} {med:7.2f} {hi:7.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-load", type=float, default=1.0, help="wait for a quieter host")
    args = parser.parse_args()
    gates: dict[str, list[float]] = {"wall": [], "inner": []}
    hand: dict[str, list[float]] = {"create": [], "spec": [], "delete": [], "wall": []}
    with guestlab.lab("gate") as lab:
        regions = lab.gallery()
        spec_file = lab.root / "spec.py"
        spec_file.write_text(SPEC)
        sigvirt("sig", "image-definition", "update", "-r", G, "-i", D, "--test-spec",
                str(spec_file))  # fmt: skip
        with Context.from_config(load_regions(regions)) as ctx:
            test_vm = gate.vm_name(ctx, ctx.store.get_version(G, D, V))
            try:
                print(f"start: {guestlab.wait_quiet(args.max_load, 120)}", flush=True)
                by_gate(ctx)  # unmeasured: caches warm
                by_hand(lab, ctx, lab.name("warm"))
                for run in range(args.runs):
                    guestlab.wait_quiet(args.max_load, 60)
                    g = by_gate(ctx)
                    guestlab.wait_quiet(args.max_load, 60)
                    h = by_hand(lab, ctx, lab.name(f"hand{run}"))
                    for k in gates:
                        gates[k].append(g[k])
                    for k in hand:
                        hand[k].append(h[k])
                    print(f"run {run + 1}: gate {g['wall']:.2f} s; by hand {h['wall']:.2f} s "
                          f"(create→SSH {h['create']:.2f}, spec {h['spec']:.2f}, delete "
                          f"{h['delete']:.2f})", flush=True)  # fmt: skip
            finally:
                with contextlib.suppress(NotFound):
                    lifecycle.delete(ctx, test_vm, "local")
        print(f"end: {guestlab.load()}")

    print(f"\ntiny version, one-test spec, TCG; {args.runs} runs")
    print(f"{'seconds':36} {'min':>7} {'median':>7} {'max':>7}")
    print(f"{'gate: call → recorded':36} {fmt(gates['wall'])}")
    print(f"{'gate: its record (boot+spec+delete)':36} {fmt(gates['inner'])}")
    print(f"{'by hand: create → SSH':36} {fmt(hand['create'])}")
    print(f"{'by hand: spec (child pytest, SSH)':36} {fmt(hand['spec'])}")
    print(f"{'by hand: delete':36} {fmt(hand['delete'])}")
    print(f"{'by hand: total':36} {fmt(hand['wall'])}")
    ratio = guestlab.summary(gates["wall"])[1] / guestlab.summary(hand["wall"])[1]
    met = ratio <= GOAL
    print(f"gate / by hand (medians) {ratio:.2f}: goal ≤ {GOAL} {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
