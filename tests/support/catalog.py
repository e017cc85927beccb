"""Fixtures for catalog and import tests: a regions file with real dir pools, a gallery root per
test, and the sigvirt CLI run in-process (`sigvirt.cli.main`) or as the real binary.

Registered once by tests/conftest.py. The pools live for the session under the scratch
directory (QEMU must be able to traverse it); every test gets
a fresh gallery root, and the pools are emptied after it, so tests don't see each other's files.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from sigvirt.catalog.records import ImageVersion
from sigvirt.catalog.store import GalleryStore
from sigvirt.cli import main
from sigvirt.context import Context
from sigvirt.errors import ExitCode, SigvirtError
from sigvirt.hosts import regions
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.runner import Runner
from tests.support.base import LabPool, unique

PYTHON = sys.executable  # the venv's python: `python -m sigvirt` is the real binary
_ROOTS = count()


@dataclass(frozen=True)
class Ran:
    """One sigvirt run: its exit code and what it printed."""

    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)

    @property
    def error(self) -> str:
        """The one line a refused command prints (and nothing else)."""
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("sigvirt: error: "), self.err
        return lines[0].removeprefix("sigvirt: error: ")


@dataclass(frozen=True)
class SigPools:
    regions_file: Path
    replicas: tuple[LabPool, ...]  # the region's pools, where versions land
    source: LabPool  # where tests put volumes to import from


@dataclass
class SigEnv:
    """One test's gallery root and regions, and ways to run sigvirt against them."""

    root: Path
    pools: SigPools
    capsys: pytest.CaptureFixture[str]
    hv: Hypervisor | None  # None: the offline tier (plain directories, no libvirt)
    env: dict[str, str] = field(default_factory=dict)
    owner_group: str = ""  # galleries made by gallery() belong to it (the caller's group)

    @property
    def store(self) -> GalleryStore:
        return GalleryStore(self.root)

    def context(self) -> Context:
        return Context.from_config(regions.load(self.pools.regions_file, env=self.env))

    def cli(self, *argv: str) -> Ran:
        """In-process, as the console script runs it."""
        self.capsys.readouterr()
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        return Ran(code, out, err)

    def popen(self, *argv: str, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [PYTHON, "-m", "sigvirt", *argv],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kw,
        )

    def run(self, *argv: str, timeout: float = 120) -> Ran:
        """The real binary in its own process."""
        proc = subprocess.run(
            [PYTHON, "-m", "sigvirt", *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Ran(proc.returncode, proc.stdout, proc.stderr)

    def refused(self, code: ExitCode, *argv: str) -> str:
        """Run a command that must be refused with `code` and write nothing; its error line."""
        before = tree(self.root)
        files = self.pool_files()
        ran = self.cli(*argv)
        assert ran.code == code, (ran.code, ran.err)
        assert ran.out == ""
        assert tree(self.root) == before, "a refused command changed the gallery root"
        assert self.pool_files() == files, "a refused command left files in a pool"
        return ran.error

    def pool_files(self) -> list[str]:
        """Every file in the region's pools, dot files (partials) included."""
        return sorted(p.name for pool in self.pools.replicas for p in pool.path.iterdir())

    def version_files(self, name: str) -> list[Path]:
        return sorted(p for pool in self.pools.replicas for p in pool.path.glob(f"*{name}*"))

    # -- shortcuts for the resources most tests need ------------------------------------------
    def gallery(self, name: str = "myGallery") -> None:
        group = ("--owner-group", self.owner_group) if self.owner_group else ()
        ran = self.cli("sig", "create", "--gallery-name", name, *group)
        assert ran.code == 0, ran.err

    def definition(self, gallery: str = "myGallery", name: str = "myDef", sku: str = "") -> None:
        ran = self.cli(
            "sig", "image-definition", "create", "--gallery-name", gallery,
            "--gallery-image-definition", name, "--publisher", "myPublisher",
            "--offer", "myOffer", "--sku", sku or f"sku-{name}", "--os-type", "Linux",
        )  # fmt: skip
        assert ran.code == 0, ran.err

    def version(self, version: str, source: Path | str, *extra: str) -> ImageVersion:
        ran = self.cli(*version_create(version, source), *extra)
        assert ran.code == 0, ran.err
        return self.store.get_version("myGallery", "myDef", version)


def version_create(version: str, source: Path | str, gallery: str = "myGallery") -> list[str]:
    return [
        "sig", "image-version", "create", "--gallery-name", gallery,
        "--gallery-image-definition", "myDef", "--gallery-image-version", version,
        "--source", str(source), "-o", "json",
    ]  # fmt: skip


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root with its content (None for directories)."""
    out: dict[str, bytes | None] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        out[str(path.relative_to(root))] = None if path.is_dir() else path.read_bytes()
    return out


def sha256sum(path: Path) -> str:
    return Runner().run(["sha256sum", str(path)]).stdout.split()[0]


def qemu_info(path: Path) -> dict[str, Any]:
    info: dict[str, Any] = json.loads(
        Runner().run(["qemu-img", "info", "-f", "qcow2", "--output=json", str(path)]).stdout
    )
    return info


@pytest.fixture(scope="session")
def sig_pools(system_hv: Hypervisor, scratch: Path) -> Iterator[SigPools]:
    base = scratch / "sig"
    pools = [LabPool(unique(f"sig-{n}"), base / n) for n in ("a", "b", "src")]
    regions_file = base / "regions.yaml"
    try:
        for pool in pools:
            system_hv.ensure_dir_pool(pool.name, pool.path)
        regions_file.write_text(
            textwrap.dedent(f"""\
                regions:
                  local:
                    uri: qemu:///system
                    pools:
                      - name: {pools[0].name}
                        path: {pools[0].path}
                      - name: {pools[1].name}
                        path: {pools[1].path}
                """)
        )
        yield SigPools(regions_file, tuple(pools[:2]), pools[2])
    finally:
        for pool in pools:
            system_hv.delete_pool(pool.name)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sig(
    sig_pools: SigPools,
    system_hv: Hypervisor,
    scratch: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[SigEnv]:
    root = scratch / "galleries" / str(next(_ROOTS))
    monkeypatch.setenv(regions.ENV_GALLERY_ROOT, str(root))
    monkeypatch.setenv(regions.ENV_REGIONS, str(sig_pools.regions_file))
    yield SigEnv(root, sig_pools, capsys, system_hv, dict(os.environ))
    for pool in (*sig_pools.replicas, sig_pools.source):
        for path in pool.path.iterdir():
            path.unlink()
        system_hv.refresh_pool(pool.name)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def offline_sig(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[SigEnv]:
    """A gallery root and regions.yaml in tmp_path whose pools are plain directories: for
    commands that are refused (or only touch metadata) before any libvirt host is asked.
    Galleries are made with the caller's own group as owner group, so the tier runs as any
    user, root or not. Some refusals come only after looking for VMs (a scale set that
    doesn't exist): run by root, that defines the pools in libvirt, so they go again."""
    yield _offline_sig(tmp_path, capsys, monkeypatch)
    if os.geteuid() == 0:
        with contextlib.suppress(SigvirtError), Hypervisor.open("qemu:///system") as hv:
            for name in ("offline-a", "offline-b"):
                with contextlib.suppress(SigvirtError):  # NotFound: it was never defined
                    if hv.pool_path(name).is_relative_to(tmp_path):
                        hv.delete_pool(name)


def _offline_sig(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> SigEnv:
    pools = tuple(LabPool(f"offline-{n}", tmp_path / "pools" / n) for n in ("a", "b", "src"))
    for pool in pools:
        pool.path.mkdir(parents=True)
    regions_file = tmp_path / "regions.yaml"
    regions_file.write_text(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n"
        + "".join(f"      - name: {p.name}\n        path: {p.path}\n" for p in pools[:2])
    )
    root = tmp_path / "galleries"
    monkeypatch.setenv(regions.ENV_GALLERY_ROOT, str(root))
    monkeypatch.setenv(regions.ENV_REGIONS, str(regions_file))
    group = grp.getgrgid(os.getegid()).gr_name
    return SigEnv(
        root, SigPools(regions_file, pools[:2], pools[2]), capsys, None, dict(os.environ), group
    )
