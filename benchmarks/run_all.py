"""Run every benchmark in turn (`make bench`), each in its own process, and say which goals
were met. A benchmark exits 0 when its goal is met, 1 when it is not, other codes on error.

Run: /opt/sigvirt/venv/bin/python benchmarks/run_all.py [NAME ...]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Cheapest first; the guest benchmarks last (the scale-set one takes ~25 min on 2 cores).
ORDER = (
    "list_versions",
    "bench_replication_local",
    "bench_replication_remote",
    "bench_scrub",
    "bench_control_plane",
    "bench_boot",
    "bench_scaleset",
    "bench_gate",
    "bench_rollout",
)
VERDICT = {0: "goal met", 1: "goal NOT met"}


def main(argv: list[str]) -> int:
    names = argv or list(ORDER)
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(ORDER)}")
        return 2
    results = []
    for name in names:
        print(f"\n=== {name}", flush=True)
        start = time.perf_counter()
        code = subprocess.run([sys.executable, str(HERE / f"{name}.py")]).returncode
        results.append((name, code, time.perf_counter() - start))
    print("\n=== summary")
    for name, code, took in results:
        print(f"{name:28} {VERDICT.get(code, f'error (exit {code})'):16} {took:6.0f} s")
    return max((code for _, code, _ in results if code not in VERDICT), default=0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
