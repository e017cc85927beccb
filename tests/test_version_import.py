"""`sigvirt sig image-version create`: hostile images refused at the gate with nothing left
behind, every kind of source published as a standalone verified qcow2, and the import's
promises under concurrency: a two-process race, a kill, an interrupt."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sigvirt.catalog.records import ImageVersion, VersionState
from sigvirt.errors import ExitCode
from sigvirt.guests import domxml
from sigvirt.hosts import qemuconf as perms
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.runner import Runner
from tests.support import imagefactory as f
from tests.support.base import unique
from tests.support.catalog import (
    PYTHON,
    SigEnv,
    qemu_info,
    sha256sum,
    version_create,
)
from tests.test_imagecheck import EXPECTED

MiB = f.MiB
AZURE = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Compute/galleries"


@pytest.fixture
def definition(sig: SigEnv) -> SigEnv:
    sig.gallery()
    sig.definition()
    return sig


@pytest.fixture(scope="session")
def big_source(scratch: Path) -> Path:
    """200 MiB of random data as a raw disk: importing it takes long enough to race or kill."""
    path = scratch / "big-random.raw"
    with path.open("wb") as out:
        for _ in range(200):
            out.write(os.urandom(MiB))
    return path


def assert_published(sig: SigEnv, rec: ImageVersion, source: Path, source_fmt: str) -> Path:
    """The version is published with one standalone, verified, protected qcow2 replica whose
    guest-visible content equals the source's."""
    assert rec.state == VersionState.SUCCEEDED and rec.published
    (replica,) = rec.replicas
    path = Path(replica.path)
    assert replica.state == "completed" and path.parent == sig.pools.replicas[0].path
    assert sig.version_files(f"-{rec.name}-") == [path]
    assert not [name for name in sig.pool_files() if name.endswith(".partial")]
    info = qemu_info(path)
    assert info["format"] == "qcow2" and "backing-filename" not in info
    assert "data-file" not in info["format-specific"]["data"]
    assert rec.sha256 == sha256sum(path)
    assert rec.virtual_size == info["virtual-size"]
    assert rec.allocated_size == info["actual-size"] == path.stat().st_blocks * 512
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    acl = Runner().run(["getfacl", "--omit-header", str(path)]).stdout.split()
    assert f"user:{perms.qemu_user()}:r--" in acl
    compare = ["qemu-img", "compare", "-f", source_fmt, "-F", "qcow2", str(source), str(path)]
    assert Runner().run(compare, check=False).returncode == 0, "content differs"
    return path


# -- the gate ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(f.HOSTILE))
def test_hostile_image_is_refused_and_leaves_nothing(
    name: str, definition: SigEnv, tmp_path: Path
) -> None:
    case = f.HOSTILE[name]
    path = case.make(tmp_path)
    declared = ["--source-format", case.declared] if case.declared else []
    line = definition.refused(ExitCode.IMAGE_REJECTED, *version_create("1.0.0", path), *declared)
    assert line == EXPECTED[name].format(size=path.lstat().st_size)
    assert definition.store.list_versions("myGallery", "myDef") == []
    assert definition.pool_files() == []


@pytest.mark.parametrize(
    ("maker", "message"),
    [
        (f.qcow2_cut_in_data, "qemu-img check found 15 corruptions; repair the image before "
         "importing"),
        (f.qcow2_bad_bitmaps_extension, "qemu-img cannot read the image: Could not open "
         "'{path}': bitmaps_ext: Invalid extension length"),
    ],
)  # fmt: skip
def test_images_qemu_img_refuses_leave_nothing(
    maker: f.Maker, message: str, definition: SigEnv, tmp_path: Path
) -> None:
    path = maker(tmp_path)
    line = definition.refused(ExitCode.IMAGE_REJECTED, *version_create("1.0.0", path))
    assert line == "image rejected: " + message.format(path=path)


# -- sources ----------------------------------------------------------------------------------
def test_qcow2_file(definition: SigEnv, tmp_path: Path) -> None:
    image = f.qcow2_v3_with_data(tmp_path)
    rec = definition.version("1.0.0", image)
    assert (rec.source, rec.virtual_size) == (f"file:{image}", 16 * MiB)
    assert_published(definition, rec, image, "qcow2")


def test_qcow2_v2_file_with_leaked_clusters_warns(definition: SigEnv, tmp_path: Path) -> None:
    image = f.leaky_qcow2(tmp_path)
    rec = definition.version("1.0.0", image)
    assert rec.warnings == (
        "1 leaked clusters (wasted space only; 'qemu-img check -r leaks' reclaims it)",
    )
    assert_published(definition, rec, image, "qcow2")


@pytest.mark.parametrize("declared", [["--source-format", "raw"], []])
def test_raw_file(declared: list[str], definition: SigEnv, tmp_path: Path) -> None:
    image = f.raw_with_mbr(tmp_path)
    rec = definition.version("1.0.0", image, *declared)
    assert rec.virtual_size == 8 * MiB
    assert_published(definition, rec, image, "raw")


def test_pool_volume(definition: SigEnv, tmp_path: Path) -> None:
    pool = definition.pools.source
    image = f.qcow2(pool.path / "golden.qcow2", data=True)
    assert definition.hv is not None
    definition.hv.refresh_pool(pool.name)
    rec = definition.version("1.0.0", f"{pool.name}/golden.qcow2")
    assert rec.source == f"volume:{pool.name}/golden.qcow2"
    assert_published(definition, rec, image, "qcow2")
    assert image.exists()  # the source volume stays


@pytest.fixture
def stopped_vm(system_hv: Hypervisor, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A shut-off domain whose disk is a qcow2 overlay on a base, as sigvirt defines guests."""
    base = f.qcow2(tmp_path / "base.qcow2", data=True)  # 0xab in the first MiB
    overlay = tmp_path / "overlay.qcow2"
    f.qemu_img("create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, overlay)
    f.run("qemu-io", "-f", "qcow2", "-c", "write -P 0xcd 512k 1M", overlay)
    name = unique("capture")
    spec = domxml.DomainSpec(name, 64, 1, overlay, backing=(domxml.Backing(base),))
    system_hv.define(domxml.domain_xml(spec))
    try:
        yield name, overlay
    finally:
        system_hv.destroy_and_undefine(name)


def test_stopped_vm_is_flattened(definition: SigEnv, stopped_vm: tuple[str, Path]) -> None:
    name, overlay = stopped_vm
    rec = definition.version("1.0.0", f"vm:{name}")
    assert rec.source == f"vm:{name}"
    # the overlay's view (its own clusters over the base's) is what the version holds
    assert_published(definition, rec, overlay, "qcow2")


@pytest.mark.parametrize(
    "source",
    [
        "myGallery/myDef/1.0.0",
        "myGallery/myDef/latest",
        "version:myGallery/myDef",
        f"{AZURE}/myGallery/images/myDef/versions/1.0.0",
        f"{AZURE}/myGallery/images/myDef",
    ],
)
def test_another_version(source: str, definition: SigEnv, tmp_path: Path) -> None:
    image = f.qcow2_v3_with_data(tmp_path)
    first = definition.version("1.0.0", image)
    definition.version("0.9.0", image, "--exclude-from-latest")
    rec = definition.version("2.0.0", source)
    assert rec.source == "version:myGallery/myDef/1.0.0"  # what `latest` meant, recorded
    assert (rec.sha256, rec.virtual_size) == (first.sha256, first.virtual_size)
    assert_published(definition, rec, Path(first.replicas[0].path), "qcow2")


# -- concurrency ------------------------------------------------------------------------------
_BARRIER = textwrap.dedent("""\
    import os, sys, time
    from sigvirt.cli import main  # imported before the barrier: both start the command at once
    go = sys.argv[1]
    open(f"{go}.{os.getpid()}", "w").close()
    while not os.path.exists(go):
        time.sleep(0.001)
    sys.exit(main(sys.argv[2:]))
""")


def test_two_processes_race_for_one_version(
    definition: SigEnv, big_source: Path, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    argv = version_create("1.0.0", big_source)
    procs = [
        subprocess.Popen(
            [PYTHON, "-c", _BARRIER, str(go), *argv],
            env=definition.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    record = definition.store.version_path("myGallery", "myDef", "1.0.0")
    while any(p.poll() is None for p in procs):
        if record.exists():
            json.loads(record.read_bytes())  # the metadata always parses
        time.sleep(0.005)
    results = sorted((p.returncode, *p.communicate()) for p in procs)
    assert [code for code, _out, _err in results] == [ExitCode.OK, ExitCode.CONFLICT]
    assert json.loads(results[0][1])["sigvirt"]["state"] == VersionState.SUCCEEDED
    assert results[1][1:] in [
        ("", f"sigvirt: error: image version myGallery/myDef/1.0.0 {why}\n")
        for why in ("is being created by another process", "already exists")
    ]
    rec = definition.store.get_version("myGallery", "myDef", "1.0.0")
    assert_published(definition, rec, big_source, "raw")


def _partial(sig: SigEnv, version: str) -> Path:
    return sig.pools.replicas[0].path / f".myGallery-myDef-{version}-local-0.qcow2.partial"


def _start_and_wait_for_partial(sig: SigEnv, version: str, source: Path) -> subprocess.Popen[str]:
    proc = sig.popen(*version_create(version, source), start_new_session=True)
    partial = _partial(sig, version)
    deadline = time.monotonic() + 60
    while not partial.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the import never started writing"
        time.sleep(0.005)
    return proc


def test_killed_import_is_not_published_and_a_retry_cleans_up(
    definition: SigEnv, big_source: Path, tmp_path: Path
) -> None:
    definition.version("1.0.0", f.qcow2_v3_with_data(tmp_path))
    proc = _start_and_wait_for_partial(definition, "2.0.0", big_source)
    os.killpg(proc.pid, signal.SIGKILL)  # sigvirt and the qemu-img it runs
    proc.communicate()

    listed = definition.cli("sig", "image-version", "list", "--gallery-name", "myGallery",
                            "--gallery-image-definition", "myDef", "-o", "json").json  # fmt: skip
    assert [(v["name"], v["sigvirt"]["state"]) for v in listed] == [
        ("1.0.0", VersionState.SUCCEEDED),
        ("2.0.0", VersionState.CREATING),
    ]
    latest = ["sig", "image-version", "show-latest", "--gallery-name", "myGallery",
              "--gallery-image-definition", "myDef", "-o", "json"]  # fmt: skip
    assert definition.cli(*latest).json["name"] == "1.0.0"
    assert definition.cli(*latest, "--explain").json[0] == {
        "version": "2.0.0", "chosen": False, "why": "not published (state creating)",
        "end_of_life": None, "eol_policy": "warn (default)",
    }  # fmt: skip
    assert _partial(definition, "2.0.0").exists()  # what the killed run left

    ran = definition.run(*version_create("2.0.0", big_source))
    assert ran.code == ExitCode.OK, ran.err
    rec = definition.store.get_version("myGallery", "myDef", "2.0.0")
    assert_published(definition, rec, big_source, "raw")
    assert definition.cli(*latest).json["name"] == "2.0.0"


def test_interrupted_import_removes_its_partial_file_and_record(
    definition: SigEnv, big_source: Path
) -> None:
    proc = _start_and_wait_for_partial(definition, "1.0.0", big_source)
    proc.send_signal(signal.SIGINT)  # Ctrl-C reaches sigvirt; it stops qemu-img itself
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (ExitCode.INTERRUPTED, "")
    assert "Traceback" not in err
    assert definition.store.list_versions("myGallery", "myDef") == []
    assert definition.pool_files() == []
    versions = definition.store.versions_dir("myGallery", "myDef")
    assert list(versions.iterdir()) == []  # no record, no op lock


def test_source_swapped_during_conversion_is_refused(
    definition: SigEnv, big_source: Path, scratch: Path, tmp_path: Path
) -> None:
    source = scratch / f"swap-{os.getpid()}.raw"
    os.link(big_source, source)  # the same bytes under a name this test may replace
    try:
        proc = _start_and_wait_for_partial(definition, "1.0.0", source)
        # qemu-img converts what it opened; a qcow2 reaching for another file now has the name
        os.replace(f.qcow2_with_backing(tmp_path), source)
        out, err = proc.communicate(timeout=60)
    finally:
        source.unlink(missing_ok=True)
    assert (proc.returncode, out) == (ExitCode.IMAGE_REJECTED, "")
    assert err == (
        "sigvirt: error: image rejected: the file changed while it was being inspected; "
        "import from a file nothing else writes to\n"
    )
    assert definition.store.list_versions("myGallery", "myDef") == []
    assert definition.pool_files() == []
