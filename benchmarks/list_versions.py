"""`sigvirt sig image-version list` on a definition with 10,000 versions: the goal is a
median under 0.3 s, table and JSON.

Builds a throwaway gallery root under /var/tmp with N version records written through
GalleryStore (records only: state succeeded, one completed replica each, no image files),
then times, best and median of --runs:

  - the CLI end to end as a subprocess (`-o json` and the default table),
  - the library call `GalleryStore.list_versions` alone, in this process,
  - each of those with the listing index off (SIGVIRT_LIST_INDEX=off: every record read, as
    before the index) and warm (catalog/listindex.py), and their ratio; both without the
    kept text (SIGVIRT_LIST_CACHE=off): what the first listing after a record change costs,
  - the CLI a third time with the index and the text it printed kept (cli/listcache.py,
    warmed by one listing first): the same listing again, no record changed,
  - baselines over the same files: `ls -1 versions/ | wc -l`, `cat versions/*.json`, and
    `python -c pass` (the interpreter's own start).

Wall time is what a user waits for; CPU time (user+sys) is shown too because it is steadier on
a busy host. Run: /opt/sigvirt/venv/bin/python benchmarks/list_versions.py [--versions N]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sigvirt.catalog import listindex
from sigvirt.catalog.records import ImageVersion, Replica, ReplicaState, VersionState, now
from sigvirt.catalog.store import GalleryStore
from sigvirt.cli import listcache
from sigvirt.galleries import definitions, galleries

GOAL = 0.3  # seconds, the CLI's median with the index and the kept text
REGIONS = """\
regions:
  local:
    uri: qemu:///system
    pools:
      - name: sigvirt-bench-unused
        path: {root}/pool
"""


def build(root: Path, count: int) -> GalleryStore:
    store = GalleryStore(root / "galleries")
    galleries.create_gallery(store, "bench")
    definitions.create_definition(store, "bench", "big", definitions.DefinitionInput("P", "O", "S"))
    stamp = now()
    with store.definition_lock("bench", "big"):
        for i in range(count):
            name = f"1.{i // 1000}.{i % 1000}"
            volume = f"bench-big-{name}-local-0.qcow2"
            replica = Replica(
                "local", "pool", volume, f"{root}/pool/{volume}", ReplicaState.COMPLETED, 100
            )
            store.create_version(
                ImageVersion(
                    "bench", "big", name, state=VersionState.SUCCEEDED,
                    source="file:/images/web.qcow2",
                    target_regions={"local": 1}, sha256="ab" * 32, virtual_size=10 << 30,
                    allocated_size=1 << 30, replicas=(replica,), created=stamp, published=stamp,
                )
            )  # fmt: skip
    return store


def measure(fn: Callable[[], object], runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (this process and its children) seconds of each run."""
    walls, cpus = [], []
    for _ in range(runs):
        before = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
        after = (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
        cpus.append(
            sum(
                a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime
                for a, b in zip(after, before, strict=True)
            )
        )
    return walls, cpus


def shell(command: str, env: dict[str, str]) -> Callable[[], object]:
    return lambda: subprocess.run(command, shell=True, check=True, env=env)


def warmed(command: str, env: dict[str, str]) -> Callable[[], object]:
    """The command, run once now (it keeps its text) and then as `shell` runs it."""
    subprocess.run(command, shell=True, check=True, env=env)
    return shell(command, env)


def library(store: GalleryStore, index: bool) -> Callable[[], object]:
    def run() -> object:
        if index:
            os.environ.pop(listindex.ENV, None)
        else:
            os.environ[listindex.ENV] = "off"
        try:
            return store.list_versions("bench", "big")
        finally:
            os.environ.pop(listindex.ENV, None)

    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--versions", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="sigvirt-bench-", dir="/var/tmp"))
    try:
        started = time.perf_counter()
        store = build(root, args.versions)
        print(f"built {args.versions} version records in {time.perf_counter() - started:.1f} s")
        (root / "regions.yaml").write_text(REGIONS.format(root=root))
        kept = {
            **os.environ,
            "SIGVIRT_REGIONS": str(root / "regions.yaml"),
            "SIGVIRT_GALLERY_ROOT": str(root / "galleries"),
            listcache.ENV: str(root / "kept"),
        }
        env = {**kept, listcache.ENV: "off"}
        off = {**env, listindex.ENV: "off"}
        versions = store.versions_dir("bench", "big")
        cli = f"{sys.executable} -m sigvirt sig image-version list -r bench -i big"
        time.sleep(listindex.RACY_NS / 1e9)  # records this recent are read, never believed
        started = time.perf_counter()
        assert len(store.list_versions("bench", "big")) == args.versions  # writes the index
        print(f"index written by the first listing in {time.perf_counter() - started:.2f} s "
              f"({(versions / listindex.NAME).stat().st_size >> 20} MiB)")  # fmt: skip
        cases: list[tuple[str, Callable[[], object]]] = [
            ("baseline: ls -1 versions/ | wc -l", shell(f"ls -1 {versions} | wc -l >/dev/null",
                                                         env)),
            ("baseline: cat versions/*.json", shell(f"cat {versions}/*.json >/dev/null", env)),
            ("baseline: python -c pass", shell(f"{sys.executable} -c pass", env)),
            ("library, index off", library(store, False)),
            ("library, index", library(store, True)),
            ("cli -o json, index off", shell(f"{cli} -o json >/dev/null", off)),
            ("cli -o json, index", shell(f"{cli} -o json >/dev/null", env)),
            ("cli -o json, index + kept text", warmed(f"{cli} -o json >/dev/null", kept)),
            ("cli table, index off", shell(f"{cli} >/dev/null", off)),
            ("cli table, index", shell(f"{cli} >/dev/null", env)),
            ("cli table, index + kept text", warmed(f"{cli} >/dev/null", kept)),
        ]  # fmt: skip
        print(f"load average: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n")
        print(f"{'':36} {'best':>7} {'median':>7} {'cpu':>7} {'x cat':>7} {'off/on':>7}")
        cat_best = 0.0
        medians: dict[str, float] = {}
        for label, fn in cases:
            walls, cpus = measure(fn, args.runs)
            best, median = min(walls), statistics.median(walls)
            medians[label] = median
            if label.startswith("baseline: cat"):
                cat_best = best
            ratio = f"{best / cat_best:7.1f}" if cat_best else f"{'':>7}"
            before = medians.get(label.split(", ")[0] + ", index off")
            speedup = f"{before / median:6.1f}x" if not label.endswith(" off") and before else ""
            print(f"{label:36} {best:7.3f} {median:7.3f} {min(cpus):7.3f} {ratio} {speedup:>7}")
        warm = [medians[f"cli {f}, index + kept text"] for f in ("-o json", "table")]
        cold = [medians[f"cli {f}, index"] for f in ("-o json", "table")]
        verdicts = [m <= GOAL for m in warm]
        verdict = "met" if all(verdicts) else "NOT met"
        print(f"\ngoal: the CLI lists {args.versions} versions in {GOAL} s or less (median, "
              f"table and json, warm: index and kept text): {verdict}")  # fmt: skip
        print(f"the first listing after a record changes (index, no kept text): json "
              f"{cold[0]:.3f} s, table {cold[1]:.3f} s")  # fmt: skip
        return 0 if all(verdicts) else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
