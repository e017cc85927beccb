"""Scrub against `sha256sum` of the same files: goal sha256sum / scrub >= 0.9.

A version with ~1 GiB of random data (holes between the chunks, as real images have) gets
three replicas in region `local`; each run then times, in alternating order:

  - sha256sum: `sha256sum` of the three replica files (one process, one core);
  - scrub:     `sig image-version scrub` through the library: per replica a hole-aware
               sha256 of the file, compared with the version's, the record updated
               (verified, fingerprint) under the version's op lock.

Both read warm page caches (they can't be dropped in this sandbox). --max-rate is not used:
the benchmark measures the scrub's own speed.
Run: /opt/sigvirt/venv/bin/python benchmarks/bench_scrub.py [--gib 1] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_replication_local import GiB, bench_lab, flush, load, random_qcow2

from sigvirt.versions import replication, scrub

GOAL = 0.9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="GiB of random data")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with bench_lab() as lab:
        image = random_qcow2(lab.root / "source.qcow2", int(args.gib * GiB))
        rec = lab.publish(image)
        for _ in range(2):
            rec, _added = lab.add_replica(rec, "local")
        rec = replication.run(lab.ctx, rec)
        files = [r.path for r in rec.replicas]
        total = sum(Path(f).stat().st_size for f in files)
        print(f"{len(files)} replicas, {total / GiB:.2f} GiB of files; {load()}")
        rows = []
        for i in range(args.runs):
            order = ("sha256sum", "scrub") if i % 2 == 0 else ("scrub", "sha256sum")
            took = {}
            for what in order:
                flush()
                start = time.perf_counter()
                if what == "sha256sum":
                    subprocess.run(["sha256sum", *files], check=True, capture_output=True)
                else:
                    got = scrub.scrub(lab.ctx, lab.gallery)
                    assert {r.outcome for r in got} == {"ok"}, got
                took[what] = time.perf_counter() - start
            ratio = took["sha256sum"] / took["scrub"]
            rows.append((took["sha256sum"], took["scrub"], ratio))
            print(
                f"run {i + 1}: sha256sum {took['sha256sum']:6.2f} s  scrub {took['scrub']:6.2f} s"
                f"  ({total / GiB / took['scrub']:.2f} GiB/s)  sha256sum/scrub {ratio:5.2f}"
            )
        t_sum, t_scrub, ratio = (statistics.median(c) for c in zip(*rows, strict=True))
        print(
            f"\nmedian: sha256sum {t_sum:.2f} s, scrub {t_scrub:.2f} s, "
            f"ratio sha256sum/scrub {ratio:.2f} (goal >= {GOAL}: "
            f"{'met' if ratio >= GOAL else 'NOT met'})"
        )
        return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
