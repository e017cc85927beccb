"""Vagrant labs with the real vagrant and vagrant-libvirt: a gallery version exported as a box
(`export-box`), the box imported back (`--source box:`), and the lab Vagrantfile
(vagrant/Vagrantfile) bringing up two tiny machines reachable on 127.0.0.1 only, checked with
`vagrant ssh` and with testinfra through `vagrant ssh-config`, then destroyed to the last
volume. VAGRANT_HOME is a directory of the test's own: the user's boxes are never touched."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra

from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.runner import Runner
from tests.support.base import SshKey, unique
from tests.support.catalog import qemu_info
from tests.support.fleetlab import REPO, D, FleetLab, G, open_lab

pytestmark = pytest.mark.guest

VAGRANT = shutil.which("vagrant")
needs_vagrant = pytest.mark.skipif(
    VAGRANT is None,
    reason="vagrant is not installed (apt-get install --no-install-recommends vagrant "
    "vagrant-libvirt)",
)
MACHINE_PORTS = range(25650, 25700)  # the lab machines' forwards (sigvirt's own: 25600-25649)


@dataclass(frozen=True)
class Exported:
    file: Path
    doc: dict[str, object]
    seconds: float


@pytest.fixture(scope="module")
def lab(
    scratch: Path, system_hv: Hypervisor, tiny_image: Path, ssh_key: SshKey
) -> Iterator[FleetLab]:
    with open_lab(scratch, system_hv, tiny_image, ssh_key, "vagrant", "25600-25649") as lab:
        yield lab


def export(lab: FleetLab, version: str, dest: Path, definition: str = D) -> Exported:
    start = time.monotonic()
    ran = lab.run("sig", "image-version", "export-box", "-r", G, "-i", definition, "-e", version,
                  "--file", str(dest), "-o", "json", timeout=900)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    return Exported(dest, json.loads(ran.stdout), time.monotonic() - start)


@pytest.fixture(scope="module")
def tiny_box(lab: FleetLab) -> Exported:
    done = export(lab, "1.0.0", lab.root / "tiny.box")
    return done


def members(box: Path) -> dict[str, bytes]:
    with tarfile.open(box) as tar:
        out = {}
        for m in tar.getmembers():
            assert m.isfile(), m.name
            data = tar.extractfile(m)
            assert data is not None
            out[m.name] = data.read() if m.name != "box.img" else b""
        return out


def extract_image(box: Path, dest: Path) -> Path:
    Runner().run(["tar", "-xf", str(box), "-C", str(dest), "box.img"])
    return dest / "box.img"


def leftovers(lab: FleetLab, prefix: str) -> list[str]:
    """Domains and volumes (in the lab's pools) whose names start with prefix."""
    doms = [d.name for d in lab.hv.domains() if d.name.startswith(prefix)]
    return doms + lab.volumes(prefix)


# -- export-box ---------------------------------------------------------------------------------
def test_export_box_writes_a_vagrant_libvirt_box_and_prints_its_sha256(
    lab: FleetLab, tiny_box: Exported, tmp_path: Path
) -> None:
    box, doc = tiny_box.file, tiny_box.doc
    assert doc["sha256"] == hashlib.sha256(box.read_bytes()).hexdigest()
    assert doc["file"] == str(box) and doc["size"] == box.stat().st_size
    assert doc["version"] == f"{G}/{D}/1.0.0" and doc["location"] == "local"
    found = members(box)
    assert list(found) == ["metadata.json", "Vagrantfile", "info.json", "box.img"]
    assert json.loads(found["metadata.json"]) == {
        "provider": "libvirt", "format": "qcow2", "virtual_size": 1,
    }  # fmt: skip
    vagrantfile = found["Vagrantfile"].decode()
    assert 'config.ssh.shell = "sh"' in vagrantfile  # the tiny image has no bash
    assert json.loads(found["info.json"])["Image version"] == f"{G}/{D}/1.0.0"
    image = extract_image(box, tmp_path)
    info = qemu_info(image)
    assert "backing-filename" not in info
    assert info["format-specific"]["data"]["compression-type"] == "zlib"
    assert image.stat().st_size < qemu_info(Path(lab.context().store.get_version(
        G, D, "1.0.0").replicas[0].path))["actual-size"]  # fmt: skip
    # the clone, its seed and console, the work directory and the partial are gone
    assert leftovers(lab, "svbox-") == []
    assert sorted(p.name for p in box.parent.iterdir() if p.name.startswith(".tiny.box")) == []
    # the version lists the boxes made from it
    ran = lab.run(
        "sig", "image-version", "list-boxes", "-r", G, "-i", D, "-e", "1.0.0", "-o", "json"
    )
    assert ran.returncode == 0, ran.stderr
    listed = {b["file"]: b for b in json.loads(ran.stdout)}
    assert listed[str(box)]["sha256"] == doc["sha256"] and listed[str(box)]["present"] is True
    # and `show` says the same, under sigvirt's key
    ran = lab.run("sig", "image-version", "show", "-r", G, "-i", D, "-e", "1.0.0", "-o", "json")
    assert ran.returncode == 0, ran.stderr
    shown = {b["file"]: b for b in json.loads(ran.stdout)["sigvirt"]["boxes"]}
    assert shown[str(box)]["sha256"] == doc["sha256"] and shown[str(box)]["present"] is True


def test_export_box_never_overwrites_a_file(lab: FleetLab, tiny_box: Exported) -> None:
    ran = lab.run("sig", "image-version", "export-box", "-r", G, "-i", D, "-e", "1.0.0",
                  "--file", str(tiny_box.file))  # fmt: skip
    assert ran.returncode == 5, ran.stderr
    assert ran.stderr.splitlines() == [
        f"sigvirt: error: --file '{tiny_box.file}' already exists",
        "sigvirt: hint: remove it or name another file: a box is never overwritten",
    ]
    assert leftovers(lab, "svbox-") == []


def test_exported_box_round_trips_into_a_version(
    lab: FleetLab, tiny_box: Exported, tmp_path: Path
) -> None:
    ran = lab.run("sig", "image-version", "create", "-r", G, "-i", D, "-e", "1.0.1",
                  "--source", f"box:{tiny_box.file}", "-o", "json")  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    replica = Path(lab.context().store.get_version(G, D, "1.0.1").replicas[0].path)
    image = extract_image(tiny_box.file, tmp_path)
    compare = ["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(image), str(replica)]
    assert Runner().run(compare, check=False).returncode == 0, "content differs"


def test_export_box_killed_at_a_step_is_cleaned_up_by_the_next(
    lab: FleetLab, tiny_box: Exported, tmp_path: Path
) -> None:
    """SIGKILL after the disk was flattened: the stopped clone and the work directory stay
    behind; the next export of the version removes them (their process is dead) and works."""
    dest = tmp_path / "killed.box"
    argv = ["sig", "image-version", "export-box", "-r", G, "-i", D, "-e", "1.0.0",
            "--file", str(dest)]  # fmt: skip
    killed = lab.run(*argv, fault="box.converted")
    assert killed.returncode == -9, killed.stderr
    assert len(leftovers(lab, "svbox-")) == 4  # the domain, its overlay, seed and console
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".killed.box.work-")]
    assert not dest.exists()
    again = lab.run(*argv, "-o", "json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["sha256"] == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert leftovers(lab, "svbox-") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.box"]


# -- the lab ------------------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    out = []
    for port in MACHINE_PORTS:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            out.append(port)
        if len(out) == n:
            return out
    raise AssertionError("no free ports for the lab machines")


@dataclass
class Vagrant:
    cwd: Path
    env: dict[str, str]

    def __call__(self, *argv: str, timeout: float = 600) -> str:
        done = subprocess.run(
            [VAGRANT or "vagrant", *argv], cwd=self.cwd, env=self.env, capture_output=True,
            text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert done.returncode == 0, (
            f"vagrant {' '.join(argv)}:\n{done.stdout[-3000:]}\n{done.stderr}"
        )
        return done.stdout


@pytest.fixture
def vagrant(lab: FleetLab, tmp_path: Path) -> Iterator[Vagrant]:
    """A lab directory (the repository's Vagrantfile and helper, a lab.yaml) and a
    VAGRANT_HOME of its own; whatever the test left is destroyed afterwards."""
    work = tmp_path / "lab"
    work.mkdir()
    for name in ("Vagrantfile", "sigvirt_lab.rb"):
        shutil.copy(REPO / "vagrant" / name, work / name)
    # lab.yaml next to the Vagrantfile, as a user has it (written by the test that brings
    # machines up; without it the lab has none and `vagrant box ...` works as anywhere)
    env = {**lab.env, "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
           "VAGRANT_CHECKPOINT_DISABLE": "1"}  # fmt: skip
    env.pop("SIGVIRT_LAB", None)
    v = Vagrant(work, env)
    yield v
    subprocess.run([VAGRANT or "vagrant", "destroy", "-f"], cwd=work, env=env,
                   capture_output=True, timeout=300, check=False)  # fmt: skip


@needs_vagrant
@pytest.mark.vagrant
def test_vagrant_up_two_machines_from_an_exported_box(
    lab: FleetLab,
    tiny_box: Exported,
    vagrant: Vagrant,
) -> None:
    prefix = unique("vg") + "-"
    box = f"{prefix}tiny"
    ports = free_ports(2)
    (vagrant.cwd / "lab.yaml").write_text(
        f"prefix: {prefix}\nmachines:\n"
        + "".join(f"  - {{name: m{i}, box: {box}, ssh_port: {p}}}\n" for i, p in enumerate(ports))
    )
    vagrant("box", "add", "--name", box, "--checksum-type", "sha256",
            "--checksum", str(tiny_box.doc["sha256"]), str(tiny_box.file))  # fmt: skip
    vagrant("up", timeout=900)
    try:
        assert [d for d in lab.hv.domains() if d.name.startswith(prefix)], "no domain defined"
        for i in range(2):
            assert vagrant("ssh", f"m{i}", "-c", "hostname").strip() == f"m{i}"
        config = vagrant.cwd / "ssh-config"
        config.write_text(vagrant("ssh-config"))
        for i in range(2):
            host = testinfra.get_host(f"ssh://m{i}", ssh_config=str(config))
            assert host.check_output("echo $USER") == "vagrant"  # who vagrant logs in as
            assert host.run("sudo -n true").rc == 0, "vagrant has no passwordless sudo"
            assert host.check_output("sudo -n id -u") == "0"
            keys = host.run("sudo -n sh -c 'cat /root/.ssh/authorized_keys "
                            "/home/*/.ssh/authorized_keys 2>/dev/null'").stdout  # fmt: skip
            assert "sigvirt" not in keys, "the export's own key is still in the image"
            assert "vagrant insecure public key" not in keys, "vagrant did not replace its key"
            assert host.file("/var/lib/sigvirt-box").exists is False
            # the NIC is QEMU's user-mode one (qemuargs): libvirt knows of no interface
            assert "<interface" not in lab.hv.domain(f"{prefix}m{i}").xml()
        nets = Runner().run(["virsh", "-c", "qemu:///system", "net-list", "--all", "--name"])
        assert "vagrant-libvirt" not in nets.stdout
    finally:
        vagrant("destroy", "-f", timeout=300)
    assert [d.name for d in lab.hv.domains() if d.name.startswith(prefix)] == []
    vagrant("box", "remove", box)
    # vagrant-libvirt leaves the box's volume in the pool: doctor reports it (nothing uses
    # it any more) with the command that removes it; removed, nothing is left
    stale = [v for v in lab.volumes("") if v.startswith(box.replace("/", "-VAGRANTSLASH-"))]
    assert len(stale) == 1, lab.volumes("")
    checks = json.loads(lab.run("doctor", "-o", "json").stdout)
    (warned,) = [c for c in checks if c["name"].startswith("vagrant box volume")]
    assert warned["status"] == "warn" and warned["name"].endswith(f"/{stale[0]}")
    assert warned["fix"].endswith(f" vol-delete --pool {lab.pools[0]} {stale[0]}")
    for pool in lab.pools:
        for vol in lab.hv.volumes(pool):
            if vol.name in stale:
                vol.delete()
    assert leftovers(lab, prefix) == []
    assert leftovers(lab, box.replace("/", "-VAGRANTSLASH-")) == []


# -- Debian (real cloud-init): ~90 s under TCG --------------------------------------------------
@pytest.fixture(scope="module")
def debian_version(lab: FleetLab, debian_image: Path) -> str:
    for argv in (
        ["sig", "image-definition", "create", "-r", G, "-i", "debian", "--publisher", "sv",
         "--offer", "vagrant", "--sku", "debian", "--os-type", "Linux"],
        ["sig", "image-version", "create", "-r", G, "-i", "debian", "-e", "1.0.0", "--source",
         str(debian_image), "-o", "none"],
    ):  # fmt: skip
        ran = lab.run(*argv)
        assert ran.returncode == 0, ran.stderr
    return "1.0.0"


def test_export_box_of_a_cloud_init_image_generalizes_it(
    lab: FleetLab,
    debian_version: str,
    tmp_path: Path,
) -> None:
    """The Debian recipe's image (real cloud-init, openssh, sudo): ~90 s under TCG, the one
    slow test here. The box says what the guest has (bash, an OS Vagrant knows)."""
    done = export(lab, debian_version, tmp_path / "debian.box", definition="debian")
    found = members(done.file)
    assert json.loads(found["metadata.json"])["provider"] == "libvirt"
    vagrantfile = found["Vagrantfile"].decode()
    assert "config.ssh.shell" not in vagrantfile  # bash is there
    assert "config.vm.guest" not in vagrantfile  # Vagrant knows Debian
    assert "Debian GNU/Linux 12" in json.loads(found["info.json"])["Guest OS"]
    assert leftovers(lab, "svbox-") == []
    os.unlink(done.file)


# -- a definition as a box catalog ---------------------------------------------------------------
@needs_vagrant
@pytest.mark.vagrant
def test_box_catalog_follows_the_gallery(lab: FleetLab, vagrant: Vagrant, tmp_path: Path) -> None:
    """export-boxes 1.0.0 → `vagrant box add catalog.json` → publish 1.1.0 → export-boxes
    again (1.0.0 kept, 1.1.0 exported) → `vagrant box outdated` reports 1.1.0 and `vagrant
    box update` fetches it; a version deleted from the gallery leaves the catalog."""
    definition, name = "boxes", f"{G}/boxes"
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    for argv in (
        ["sig", "image-definition", "create", "-r", G, "-i", definition, "--publisher", "sv",
         "--offer", "vagrant", "--sku", "boxes", "--os-type", "Linux"],
        ["sig", "image-version", "create", "-r", G, "-i", definition, "-e", "1.0.0",
         "--source", f"{G}/{D}/1.0.0", "-o", "none"],
    ):  # fmt: skip
        ran = lab.run(*argv)
        assert ran.returncode == 0, ran.stderr

    def export_boxes() -> dict[str, object]:
        ran = lab.run("sig", "image-definition", "export-boxes", "-r", G, "-i", definition,
                      "--dir", str(boxes), "-o", "json", timeout=900)  # fmt: skip
        assert ran.returncode == 0, ran.stderr
        doc: dict[str, object] = json.loads(ran.stdout)
        return doc

    first = export_boxes()
    assert first["actions"] == ["export 1.0.0 to boxes-1.0.0.box"]
    catalog = boxes / "catalog.json"
    vagrant("box", "add", str(catalog))
    assert f"{name} (libvirt, 1.0.0)" in vagrant("box", "list")

    ran = lab.run("sig", "image-version", "create", "-r", G, "-i", definition, "-e", "1.1.0",
                  "--source", f"{G}/{D}/1.0.0", "-o", "none")  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    second = export_boxes()
    assert second["actions"] == ["keep 1.0.0 (boxes-1.0.0.box)", "export 1.1.0 to boxes-1.1.0.box"]
    listed = json.loads(catalog.read_text())
    assert listed["name"] == name
    assert [v["version"] for v in listed["versions"]] == ["1.0.0", "1.1.0"]
    for v in listed["versions"]:
        (provider,) = v["providers"]
        box = boxes / f"boxes-{v['version']}.box"
        assert provider["url"] == box.as_uri() and provider["checksum_type"] == "sha256"
        assert provider["checksum"] == hashlib.sha256(box.read_bytes()).hexdigest()

    outdated = vagrant("box", "outdated", "--global")
    assert f"'{name}' for 'libvirt' is outdated! Current: 1.0.0. Latest: 1.1.0" in outdated
    vagrant("box", "update", "--box", name)
    assert f"{name} (libvirt, 1.1.0)" in vagrant("box", "list")

    ran = lab.run("sig", "image-version", "delete", "-r", G, "-i", definition, "-e", "1.0.0",
                  "--yes", "-o", "none")  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    third = export_boxes()
    assert third["actions"] == [
        "keep 1.1.0 (boxes-1.1.0.box)",
        "drop 1.0.0 (not in the gallery any more): remove boxes-1.0.0.box",
    ]
    assert [v["version"] for v in json.loads(catalog.read_text())["versions"]] == ["1.1.0"]
    assert sorted(p.name for p in boxes.iterdir() if not p.name.startswith(".")) == [
        "boxes-1.1.0.box", "catalog.json",
    ]  # fmt: skip
    assert leftovers(lab, "svbox-") == []


def test_export_boxes_killed_after_a_box_adopts_it_on_the_next_run(
    lab: FleetLab, tmp_path: Path
) -> None:
    """Killed after the box was written and indexed but before catalog.json listed it: the
    next run hashes the box, finds the index vouching for it, and lists it without exporting
    again. A box the index doesn't know is refused, never overwritten."""
    for argv in (
        ["sig", "image-definition", "create", "-r", G, "-i", "adopted", "--publisher", "sv",
         "--offer", "vagrant", "--sku", "adopted", "--os-type", "Linux"],
        ["sig", "image-version", "create", "-r", G, "-i", "adopted", "-e", "1.0.0",
         "--source", f"{G}/{D}/1.0.0", "-o", "none"],
    ):  # fmt: skip
        ran = lab.run(*argv)
        assert ran.returncode == 0, ran.stderr
    argv = ["sig", "image-definition", "export-boxes", "-r", G, "-i", "adopted",
            "--dir", str(tmp_path), "-o", "json"]  # fmt: skip
    killed = lab.run(*argv, fault="box.recorded")
    assert killed.returncode == -9, killed.stderr
    box = tmp_path / "adopted-1.0.0.box"
    assert box.exists() and json.loads((tmp_path / "catalog.json").read_text())["versions"] == []
    again = lab.run(*argv)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert doc["actions"] == ["adopt 1.0.0 (adopted-1.0.0.box, written by an earlier run)"]
    assert doc["exported"] == []
    (listed,) = doc["catalog"]["versions"]
    assert listed["providers"][0]["checksum"] == hashlib.sha256(box.read_bytes()).hexdigest()
    assert leftovers(lab, "svbox-") == []

    stranger = tmp_path / "other"
    stranger.mkdir()
    (stranger / "adopted-1.0.0.box").write_bytes(b"not the box")
    refused = lab.run(*argv[:-4], "--dir", str(stranger))
    assert refused.returncode == 5, refused.stderr
    assert "is not the box catalog.json lists for 1.0.0" in refused.stderr
    assert (stranger / "adopted-1.0.0.box").read_bytes() == b"not the box"
