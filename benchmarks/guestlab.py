"""Shared scaffolding of the guest benchmarks (bench_boot, bench_scaleset, bench_control_plane).

A `Lab` is one benchmark run's private corner of the shared qemu:///system daemon: a scratch
directory /var/tmp/sigvirt-bench-<id> (0755, so QEMU can traverse it), one dir pool, the cached
tiny image placed there as a base (0640 + ACL for QEMU, like a replica), an ed25519 key pair,
and, for scale sets, a throwaway gallery (regions.yaml, definition, version with 2 replicas)
made through the CLI. Every domain, pool and volume carries the run's prefix and is destroyed
when the Lab closes, whatever happened: Ctrl-C, and SIGTERM too (`timeout`, `kill`), which
`lab()` turns into an exception while it runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import statistics
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import libvirt

from sigvirt.guests import guest, sshkeys
from sigvirt.hosts import recipes
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.runner import Runner
from sigvirt.sharing.plan import protect_replica

URI = "qemu:///system"
GALLERY, DEFINITION, VERSION = "benchGallery", "tiny", "1.0.0"


def load() -> str:
    one, five, _fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} (1/5 min) on {os.cpu_count()} CPUs"


def wait_quiet(max_load: float, patience: float) -> str:
    """Wait (up to `patience` s) until the 1-minute load drops below `max_load`; the load then."""
    end = time.monotonic() + patience
    while os.getloadavg()[0] >= max_load and time.monotonic() < end:
        time.sleep(5)
    return load()


def summary(values: Iterable[float]) -> tuple[float, float, float]:
    vals = list(values)
    return min(vals), statistics.median(vals), max(vals)


def _qemu_pid(name: str) -> int:
    return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())


def qemu_rss_mib(names: Iterable[str]) -> dict[str, float]:
    """Resident memory of each running domain's QEMU (pid file written by libvirt)."""
    out = {}
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{_qemu_pid(name)}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[name] = int(line.split()[1]) / 1024
    return out


def qemu_cpu_seconds(names: Iterable[str]) -> dict[str, float]:
    """CPU time (user + system) each running domain's QEMU has used so far."""
    out = {}
    for name in names:
        with contextlib.suppress(OSError, ValueError):
            stat = Path(f"/proc/{_qemu_pid(name)}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
    return out


@dataclass(frozen=True)
class QemuStats:
    """One QEMU process so far: CPU seconds (all threads, and its vCPU threads alone), page
    faults and context switches (all threads)."""

    cpu: float
    vcpu: float
    minflt: int
    majflt: int
    voluntary: int
    involuntary: int


def qemu_stats(name: str) -> QemuStats | None:
    """The running domain's QEMU counters (/proc; None when it is gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        pid = _qemu_pid(name)
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        vcpu, switches = 0.0, [0, 0]
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                comm = (task / "comm").read_text().strip()
                if comm.startswith("CPU "):  # "CPU 0/TCG", "CPU 0/KVM"
                    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                    vcpu += (int(fields[11]) + int(fields[12])) / tick
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        switches[0] += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        switches[1] += int(line.split()[1])
    except (OSError, ValueError):
        return None
    cpu = (int(stat[11]) + int(stat[12])) / tick
    return QemuStats(cpu, vcpu, int(stat[7]), int(stat[9]), switches[0], switches[1])


def _process_ticks() -> dict[int, tuple[str, int]]:
    """Every process's name and CPU ticks so far (user + system, its threads included)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                head, tail = (entry / "stat").read_text().rsplit(")", 1)
                fields = tail.split()
                out[int(entry.name)] = (head.split("(", 1)[1], int(fields[11]) + int(fields[12]))
    return out


def _kind(pid: int, comm: str) -> str:
    if pid == os.getpid():
        return "sigvirt"  # this benchmark: sigvirt's library and its libvirt client
    if comm.startswith("qemu-system"):
        return "qemu"
    return comm if comm in ("libvirtd", "virtlogd") else "other"


class CpuMeter:
    """How busy all cores were between start and stop (from /proc/stat; iowait counts idle),
    and whose work it was (`breakdown`)."""

    def __init__(self) -> None:
        self._start = self._read()
        self._procs = _process_ticks()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields[:8]), idle

    def busy_cores(self) -> float:
        """Average number of cores busy (with anything: ours or other people's)."""
        total, idle = self._read()
        t0, i0 = self._start
        ticks = total - t0
        return (os.cpu_count() or 1) * (ticks - (idle - i0)) / ticks if ticks else 0.0

    def breakdown(self) -> dict[str, float]:
        """CPU seconds since the start by whom: qemu (every QEMU, also after its guest
        answered), libvirtd, virtlogd, sigvirt (this process), other (the rest of the busy
        time: processes that ended, e.g. qemu-img, sshd, the kernel's own threads)."""
        tick = os.sysconf("SC_CLK_TCK")
        total, idle = self._read()
        t0, i0 = self._start
        busy = (total - t0 - (idle - i0)) / tick  # /proc/stat counts each core's ticks
        out = dict.fromkeys(("qemu", "libvirtd", "virtlogd", "sigvirt"), 0.0)
        for pid, (comm, ticks) in _process_ticks().items():
            before = self._procs.get(pid)
            kind = _kind(pid, comm)
            if kind != "other":
                out[kind] += (ticks - (before[1] if before and before[0] == comm else 0)) / tick
        out["other"] = max(0.0, busy - sum(out.values()))
        return out


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Lab:
    def __init__(self, tag: str) -> None:
        self.id = uuid.uuid4().hex[:6]
        self.prefix = f"svb{self.id}"
        self.tag = tag
        self.root = Path(f"/var/tmp/sigvirt-bench-{tag}-{self.id}")
        self.hv: Hypervisor | None = None
        self.pool = self.name("pool")
        self.extra_pools: list[str] = []

    def name(self, what: str) -> str:
        return f"{self.prefix}-{what}"

    # -- setup -------------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        self.root.mkdir(mode=0o755)
        os.chmod(self.root, 0o755)
        self.hv = Hypervisor.open(URI)
        self.key = self.root / "id_ed25519"
        self._write_key()
        self.tiny_image = recipes.ensure_built(recipes.recipe("tiny"), Runner())
        return self

    def _write_key(self) -> None:
        sshkeys.generate(self.key, comment="sigvirt-bench")
        self.public_key = self.key.with_suffix(".pub").read_text().strip()

    def base_in_pool(self) -> Path:
        """The tiny image as a base in the lab's own pool, protected like a replica."""
        assert self.hv is not None
        self.hv.ensure_dir_pool(self.pool, self.root / "pool")
        dest = self.root / "pool" / self.name("tiny-base.qcow2")
        shutil.copyfile(self.tiny_image, dest)
        protect_replica(dest)
        self.hv.refresh_pool(self.pool)
        return dest

    def gallery(self) -> Path:
        """A regions.yaml with two pools of this lab, and a published tiny version with a
        replica in each, made through the CLI as a user would (output swallowed)."""
        from sigvirt.cli import main

        pools = (self.name("rep-a"), self.name("rep-b"))
        self.extra_pools.extend(pools)
        regions = self.root / "regions.yaml"
        regions.write_text(
            "regions:\n"
            "  local:\n"
            f"    uri: {URI}\n"
            "    accel: tcg\n"
            "    pools:\n"
            f"      - name: {pools[0]}\n        path: {self.root}/rep-a\n"
            f"      - name: {pools[1]}\n        path: {self.root}/rep-b\n"
            "    network:\n      type: user-forward\n      ports: 24000-24999\n"
        )
        os.environ["SIGVIRT_REGIONS"] = str(regions)
        os.environ["SIGVIRT_GALLERY_ROOT"] = str(self.root / "galleries")
        steps = [
            ["sig", "create", "-r", GALLERY],
            ["sig", "image-definition", "create", "-r", GALLERY, "-i", DEFINITION,
             "--publisher", "bench", "--offer", "tiny", "--sku", "1",
             "--minimum-memory", "128", "--maximum-memory", "1024"],
            ["sig", "image-version", "create", "-r", GALLERY, "-i", DEFINITION, "-e", VERSION,
             "--source", str(self.tiny_image), "--target-regions", "local=2"],
        ]  # fmt: skip
        for argv in steps:
            out, err = io.StringIO(), io.StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                code = main(argv)
            if code != 0:
                raise RuntimeError(f"sigvirt {' '.join(argv)} failed ({code}): {err.getvalue()}")
        return regions

    # -- teardown ----------------------------------------------------------------------------
    def domains(self) -> list[str]:
        assert self.hv is not None
        return [d.name for d in self.hv.domains() if d.name.startswith(self.prefix)]

    def sweep_domains(self) -> None:
        """Destroy and undefine every domain of this run, with the volumes sigvirt recorded."""
        assert self.hv is not None
        for name in self.domains():
            with contextlib.suppress(Exception):
                guest.delete(self.hv, name)
            with contextlib.suppress(Exception):
                self.hv.destroy_and_undefine(name)

    def _pool_is_ours(self, pool: libvirt.virStoragePool) -> bool:
        try:
            path = ET.fromstring(pool.XMLDesc(0)).findtext("./target/path") or ""
        except libvirt.libvirtError:
            return False
        return Path(path).is_relative_to(self.root)

    def __exit__(self, *exc: object) -> None:
        try:
            if self.hv is not None:
                # A fresh connection: the shared daemon may have been restarted under us.
                self.hv.close()
                self.hv = Hypervisor.open(URI)
                self.sweep_domains()
                conn = libvirt.open(URI)  # pools by path: virt-install's are not sigvirt's
                for pool in conn.listAllStoragePools(0):
                    # virt-install (the scale-set baseline) defines a pool per disk directory,
                    # named after the directory: sweep by path as well as by prefix.
                    if pool.name().startswith(self.prefix) or self._pool_is_ours(pool):
                        with contextlib.suppress(libvirt.libvirtError):
                            if pool.isActive():
                                pool.destroy()
                            pool.undefine()
                conn.close()
                self.hv.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds the benchmark as Ctrl-C does (sigvirt undoes what it was
    making), so its Lab cleans up."""


@contextlib.contextmanager
def lab(tag: str) -> Iterator[Lab]:
    """A Lab for the block; SIGTERM raises Terminated in the main thread meanwhile (its
    default would end the process with the run's domains, pools and files left behind)."""

    def terminated(signum: int, frame: object) -> None:
        # once: `timeout` signals both the process and its group, and a second one would
        # break into the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(f"signal {signum}")

    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, terminated) if main else None
    try:
        with Lab(tag) as it:
            yield it
    finally:
        if main:
            signal.signal(signal.SIGTERM, before)
