"""The Vagrant pieces that need no guest: the box sigvirt writes is one sigvirt's own hostile
reader takes back, the box's Vagrantfile says what the image needs, the seed is cloud-config
every reader parses, the catalog reader refuses what it did not write, and the CLI refuses
bad arguments before anything happens."""

from __future__ import annotations

import base64
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from sigvirt.catalog.fileio import CorruptRecord
from sigvirt.errors import Conflict, ExitCode
from sigvirt.vagrant import box, catalog, guestprep, index
from sigvirt.versions.boxfile import BoxMetadata, read_box
from tests.support import imagefactory as f
from tests.support.catalog import SigEnv

pytestmark = pytest.mark.offline

MiB = f.MiB
SHA = "ab" * 32


def test_a_box_sigvirt_writes_is_one_sigvirt_reads_back(tmp_path: Path) -> None:
    image = f.qcow2(tmp_path / "disk.qcow2", 1536 * MiB, data=True)
    spec = box.BoxSpec(name="G/D/1.0.0", virtual_size=1536 * MiB, info={"Author": "test"})
    sha = box.write_box(tmp_path / "x.box", image, spec)
    import hashlib

    assert sha == hashlib.sha256((tmp_path / "x.box").read_bytes()).hexdigest()
    with tarfile.open(tmp_path / "x.box") as tar:
        assert tar.getnames() == ["metadata.json", "Vagrantfile", "info.json", "box.img"]
    got = read_box(tmp_path / "x.box", tmp_path / "work")
    assert got.metadata == BoxMetadata("libvirt", "qcow2", 2)  # 1.5 GiB, rounded up
    assert got.image.read_bytes() == image.read_bytes()
    with pytest.raises(FileExistsError):  # a box is never overwritten
        box.write_box(tmp_path / "x.box", image, spec)


def test_the_box_vagrantfile_says_what_the_image_needs() -> None:
    plain = box.vagrantfile(box.BoxSpec(name="G/D/1", virtual_size=1))
    assert "config.ssh.shell" not in plain and "config.vm.guest" not in plain
    assert "libvirt.loader" not in plain
    assert 'config.vm.synced_folder ".", "/vagrant", disabled: true' in plain
    odd = box.vagrantfile(
        box.BoxSpec(name="G/D/1", virtual_size=1, firmware="uefi", shell="sh", guest="linux")
    )
    assert 'config.ssh.shell = "sh"' in odd
    assert "config.vm.guest = :linux" in odd
    assert f'libvirt.loader = "{box.OVMF_CODE}"' in odd


def test_facts_decide_shell_and_guest() -> None:
    tiny = guestprep.parse_facts("have=sudo\nos=sigvirt tiny\nid=sigvirt-tiny\n")
    assert "bash" not in tiny.have and not tiny.vagrant_knows
    debian = guestprep.parse_facts(
        'have=bash\nhave=sudo\nhave=cloud-init\nos="Debian GNU/Linux 12 (bookworm)"\nid=debian\n'
    )
    assert debian.os_name == "Debian GNU/Linux 12 (bookworm)" and debian.vagrant_knows


def test_the_seed_is_cloud_config_that_runs_the_preparation_once() -> None:
    data = guestprep.seed_user_data()
    assert data.startswith(b"#cloud-config\n")
    doc = yaml.safe_load(data)
    (written,) = doc["write_files"]
    assert written["path"] == guestprep.PREPARE_PATH and written["encoding"] == "b64"
    assert base64.b64decode(written["content"]).decode() == guestprep.PREPARE
    assert doc["runcmd"] == [f"sh {guestprep.PREPARE_PATH}"]
    # one line per value: tiny-cloud-init's reader takes no folded scalars
    assert all(len(line) < 1 << 20 for line in data.decode().splitlines())


def test_generalizing_empties_machine_id_and_drops_the_export_key() -> None:
    script = guestprep.generalize_script()
    assert ": > /etc/machine-id" in script  # emptied, never removed (systemd-firstboot)
    assert "rm -f /etc/machine-id" not in script
    assert f"/{guestprep.KEY_TAG}/d" in script
    assert "cloud-init clean --logs" in script and "--machine-id" not in script


# -- the catalog ---------------------------------------------------------------------------------
def _catalog(directory: Path, doc: object) -> None:
    (directory / catalog.CATALOG).write_text(json.dumps(doc))


def _entry(version: str, url: str, sha: str = SHA) -> dict[str, object]:
    return {"version": version, "providers": [
        {"name": "libvirt", "url": url, "checksum_type": "sha256", "checksum": sha}]}  # fmt: skip


def test_catalog_reader_takes_what_export_boxes_writes(tmp_path: Path) -> None:
    (tmp_path / "D-1.0.0.box").write_bytes(b"x" * 10)
    plan = catalog.CatalogPlan("G", "D", tmp_path, "", None, (), (), (), ())
    entries = [
        catalog.Entry("1.0.0", "D-1.0.0.box", SHA, 10),
        catalog.Entry("1.2.0", "D-1.2.0.box", SHA, -1),
    ]
    (tmp_path / catalog.CATALOG).write_text(json.dumps(catalog.document(plan, entries[::-1])))
    assert catalog.read_catalog(tmp_path, "G/D") == entries
    doc = json.loads((tmp_path / catalog.CATALOG).read_text())
    assert [v["version"] for v in doc["versions"]] == ["1.0.0", "1.2.0"]  # oldest first
    with_url = catalog.document(
        catalog.CatalogPlan("G", "D", tmp_path, "https://boxes.example/x/", None, (), (), (), ()),
        entries[:1],
    )
    assert with_url["versions"][0]["providers"][0]["url"] == "https://boxes.example/x/D-1.0.0.box"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("not json{", "is not JSON"),
        ({"name": "G/D"}, "is not a Vagrant box catalog"),
        ({"name": "G/D", "versions": [_entry("1.0.0", "file:///etc/../../etc/passwd")]},
         "versions[0] names another file or a bad sha256"),
        ({"name": "G/D", "versions": [_entry("1.0.0", "file:///x/D-1.0.0.box", "nope")]},
         "versions[0] names another file or a bad sha256"),
        ({"name": "G/D", "versions": [_entry("01.0.0", "file:///x/D-01.0.0.box")]},
         "versions[0] is not one libvirt box"),
        ({"name": "G/D", "versions": [{"version": "1.0.0", "providers": []}]},
         "versions[0] is not one libvirt box"),
    ],
)  # fmt: skip
def test_catalog_reader_refuses_what_it_did_not_write(
    doc: object, message: str, tmp_path: Path
) -> None:
    if isinstance(doc, str):
        (tmp_path / catalog.CATALOG).write_text(doc)
    else:
        _catalog(tmp_path, doc)
    with pytest.raises(CorruptRecord) as err:
        catalog.read_catalog(tmp_path, "G/D")
    assert message in err.value.message


def test_a_directory_holds_the_catalog_of_one_definition(tmp_path: Path) -> None:
    _catalog(tmp_path, {"name": "G/Other", "versions": []})
    with pytest.raises(Conflict, match="the catalog of 'G/Other', not G/D"):
        catalog.read_catalog(tmp_path, "G/D")


def test_catalog_json_that_is_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / catalog.CATALOG).symlink_to("/etc/passwd")
    with pytest.raises(CorruptRecord):
        catalog.read_catalog(tmp_path, "G/D")


# -- the exported-boxes index ----------------------------------------------------------------------
def test_the_index_lists_boxes_and_whether_they_are_still_there(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    made = tmp_path / "a.box"
    made.write_bytes(b"box")
    entry = index.new_entry(made, SHA, SHA, "local")
    index.record(root, "G", "D", "1.0.0", entry)
    index.record(root, "G", "D", "1.0.0", entry)  # the same file again: one entry
    (found,) = index.exported_boxes(root, "G", "D", "1.0.0")
    assert found.file == str(made) and found.present
    made.write_bytes(b"another box")
    assert not index.exported_boxes(root, "G", "D", "1.0.0")[0].present
    index.forget(root, "G", "D", "1.0.0", str(made))
    assert index.exported_boxes(root, "G", "D", "1.0.0") == []
    assert index.exported_boxes(root, "G", "D", "2.0.0") == []


def test_a_damaged_index_is_a_corrupt_record(tmp_path: Path) -> None:
    d = tmp_path / index.DIR / "G" / "D"
    d.mkdir(parents=True)
    (d / "1.0.0.json").write_text('{"boxes": [{"file": "relative.box"}]}')
    with pytest.raises(CorruptRecord):
        index.exported_boxes(tmp_path, "G", "D", "1.0.0")


# -- the CLI's refusals --------------------------------------------------------------------------
def test_export_boxes_refuses_a_missing_directory(offline_sig: SigEnv, tmp_path: Path) -> None:
    offline_sig.gallery()
    offline_sig.definition()
    line = offline_sig.refused(
        ExitCode.NOT_FOUND, "sig", "image-definition", "export-boxes", "-r", "myGallery",
        "-i", "myDef", "--dir", str(tmp_path / "nowhere"),
    )  # fmt: skip
    assert line == f"--dir '{tmp_path / 'nowhere'}': no such directory"


def test_export_boxes_refuses_a_base_url_that_is_not_one(
    offline_sig: SigEnv, tmp_path: Path
) -> None:
    offline_sig.gallery()
    offline_sig.definition()
    line = offline_sig.refused(
        ExitCode.INVALID_ARGUMENT, "sig", "image-definition", "export-boxes", "-r", "myGallery",
        "-i", "myDef", "--dir", str(tmp_path), "--base-url", "ftp://x",
    )  # fmt: skip
    assert line == "--base-url 'ftp://x': expected http(s):// or file://"


def test_export_box_of_a_missing_version_is_not_found(offline_sig: SigEnv, tmp_path: Path) -> None:
    offline_sig.gallery()
    offline_sig.definition()
    line = offline_sig.refused(
        ExitCode.NOT_FOUND, "sig", "image-version", "export-box", "-r", "myGallery",
        "-i", "myDef", "-e", "1.0.0", "--file", str(tmp_path / "x.box"),
    )  # fmt: skip
    assert "1.0.0" in line
    assert not (tmp_path / "x.box").exists()
