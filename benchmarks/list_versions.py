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
    `python -c pass` (the interpreter's own start),
  - then the kept listing's scenarios, each as a median of --runs: (a) nothing changed since
    the last listing, (b) 1 record changed, (c) 100 records changed, (d) cold (no kept file:
    as the first listing after all records changed), for json and the table, side by side:
    the index alone (SIGVIRT_LIST_CACHE=off), --before (another checkout's sigvirt, e.g. one
    that kept whole listings: `git archive b5c97e0 sigvirt | tar -x -C DIR`), and this one.
    Records are changed between runs (not timed) through GalleryStore.update_version, as a
    replication progress update rewrites them, a clock tick before the listing.

Wall time is what a user waits for; CPU time (user+sys) is shown too because it is steadier on
a busy host. Run: /opt/sigvirt/venv/bin/python benchmarks/list_versions.py [--versions N]
"""

from __future__ import annotations

import argparse
import dataclasses
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
    """The command, run from / (`python -m` looks for sigvirt in the working directory first:
    a --before checkout on PYTHONPATH would not be what it runs from the repository)."""
    return lambda: subprocess.run(command, shell=True, check=True, env=env, cwd="/")


def warmed(command: str, env: dict[str, str]) -> Callable[[], object]:
    """The command, run once now (it keeps its text) and then as `shell` runs it."""
    shell(command, env)()
    return shell(command, env)


SCENARIOS = [("(a) nothing changed", 0), ("(b) 1 changed", 1), ("(c) 100 changed", 100),
             ("(d) cold", -1)]  # fmt: skip


def progress(store: GalleryStore, names: list[str], step: int) -> None:
    """Rewrite the records `names` as a replication progress update does (its replica copying,
    a new percentage), then wait out a clock tick (listindex.RACY_NS)."""
    for name in names:
        store.update_version(
            "bench", "big", name,
            lambda r: dataclasses.replace(r, replicas=tuple(
                dataclasses.replace(rep, state=ReplicaState.COPYING, progress=step % 100)
                for rep in r.replicas)),
        )  # fmt: skip
    time.sleep(listindex.RACY_NS / 1e9)


def scenarios(
    store: GalleryStore, cli: str, variants: dict[str, dict[str, str]], runs: int, count: int
) -> dict[tuple[str, str, str], tuple[float, float]]:
    """(format, scenario, variant) -> median wall and CPU seconds of the CLI."""
    out = {}
    step = 0
    for fmt, flag in (("json", " -o json"), ("table", "")):
        command = f"{cli}{flag} >/dev/null"
        for label, changed in SCENARIOS:
            for variant, env in variants.items():
                kept = env.get(listcache.ENV, "off")
                shell(command, env)()  # the last listing (and bytecode written)
                walls, cpus = [], []
                for _ in range(runs):
                    step += 1
                    if changed > 0:
                        first = (step * 7919) % count
                        picks = [(first + i * 97) % count for i in range(changed)]
                        progress(store, [f"1.{i // 1000}.{i % 1000}" for i in picks], step)
                    elif changed < 0 and kept != "off":
                        shutil.rmtree(kept, ignore_errors=True)
                    wall, cpu = measure(shell(command, env), 1)
                    walls += wall
                    cpus += cpu
                out[fmt, label, variant] = statistics.median(walls), statistics.median(cpus)
    return out


def kept_sizes(folder: Path) -> str:
    sizes = sorted(p.stat().st_size for p in folder.iterdir()) if folder.is_dir() else []
    return ", ".join(f"{size / 2**20:.1f} MiB" for size in sizes) or "none"


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
    parser.add_argument(
        "--before", type=Path, help="a directory holding another sigvirt package, to compare"
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="sigvirt-bench-", dir="/var/tmp"))
    try:
        started = time.perf_counter()
        store = build(root, args.versions)
        print(f"built {args.versions} version records in {time.perf_counter() - started:.1f} s")
        (root / "regions.yaml").write_text(REGIONS.format(root=root))
        # as installed: the modules' bytecode cached (compiling changed modules on every run
        # would be timed too)
        kept = {
            **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
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
        variants = {"index only": env, "after": kept}
        if args.before:
            old = {**kept, listcache.ENV: str(root / "kept-before")}
            old["PYTHONPATH"] = str(args.before.resolve())
            variants = {"index only": env, "before": old, "after": kept}
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        print(f"\nkept listings: CLI median wall / CPU s of {args.runs} runs ({load})")
        found = scenarios(store, cli, variants, args.runs, args.versions)
        names = list(variants)
        print(f"{'':28}" + "".join(f"{n:>17}" for n in names) + f"{'after/first':>13}")
        for fmt in ("json", "table"):
            for label, _changed in SCENARIOS:
                times = [found[fmt, label, n] for n in names]
                speed = times[-1][0] / times[0][0]
                row = "".join(f"{w:9.3f} /{c:6.3f}" for w, c in times)
                print(f"{fmt + ' ' + label:28}{row}{speed:12.2f}x")
        for flag in (" -o json", ""):  # one of each format kept again, to weigh them
            shell(f"{cli}{flag} >/dev/null", kept)()
        print(f"kept files (after; table, json): {kept_sizes(root / 'kept')}")
        goal = [found[f, label, "after"][0] <= GOAL for f in ("json", "table")
                for label, changed in SCENARIOS if changed >= 0]  # fmt: skip
        cold = [found[f, "(d) cold", "after"][0] / found[f, "(d) cold", "index only"][0]
                for f in ("json", "table")]  # fmt: skip
        print(f"goal: (a)-(c) in {GOAL} s or less (median, json and table): "
              f"{'met' if all(goal) else 'NOT met'}; (d) cold against the index alone: "
              f"json {cold[0]:.2f}x, table {cold[1]:.2f}x (at most ~1.1x)")  # fmt: skip
        return 0 if all(verdicts) and all(goal) else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
