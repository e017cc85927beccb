"""Vagrant boxes as a version source (`--source box:FILE.box`): the tarball is hostile until
proven otherwise. One test per refusal class, in the library (offline) and through the CLI
(exit 9, nothing written: no record, no pool file, no staging left)."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import tarfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from sigvirt.errors import ExitCode, ImageRejected, Unsupported
from sigvirt.versions import boxfile
from sigvirt.versions.boxfile import BoxLimits, read_box
from tests.support import imagefactory as f
from tests.support.catalog import SigEnv, qemu_info, version_create

MiB = f.MiB
GiB = 1 << 30
METADATA = {"provider": "libvirt", "format": "qcow2", "virtual_size": 1}

Member = tuple[tarfile.TarInfo, bytes | Path | None]


def info(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, **extra: object
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = size
    ti.mode = 0o644
    for key, value in extra.items():
        setattr(ti, key, value)
    return ti


def regular(name: str, data: bytes) -> Member:
    return info(name, size=len(data)), data


def metadata(doc: Mapping[str, object] | None = None) -> Member:
    return regular("metadata.json", json.dumps(METADATA if doc is None else doc).encode())


def image(path: Path, name: str = "box.img") -> Member:
    return info(name, size=path.stat().st_size), path


def write_box(path: Path, members: list[Member], compress: str = "") -> Path:
    """A tar of these members, as written; plain, gzip ("gz") or xz ("xz")."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for ti, data in members:
            if isinstance(data, Path):
                with data.open("rb") as src:
                    tar.addfile(ti, src)
            else:
                tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    path.write_bytes(
        gzip.compress(raw) if compress == "gz" else lzma.compress(raw) if compress == "xz" else raw
    )
    return path


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small qcow2 with data: what a good box carries."""
    return f.qcow2(tmp_path_factory.mktemp("disk") / "box.img", 64 * MiB, data=True)


def good_members(disk: Path) -> list[Member]:
    return [metadata(), regular("Vagrantfile", b'Vagrant.configure("2") do |c| end\n'),
            image(disk)]  # fmt: skip


# The hostile catalogue: each maker writes a box into a directory; the message is the refusal.
Maker = Callable[[Path, Path], Path]


def _traversal(d: Path, disk: Path) -> Path:
    return write_box(d / "t.box", [metadata(), image(disk, "../box.img")])


def _absolute(d: Path, disk: Path) -> Path:
    return write_box(d / "t.box", [metadata(), image(disk), regular("/etc/cron.d/x", b"x")])


def _symlink(d: Path, disk: Path) -> Path:
    link = info("box.img", tarfile.SYMTYPE, linkname="/etc/shadow")
    return write_box(d / "t.box", [metadata(), (link, None)])


def _hardlink(d: Path, disk: Path) -> Path:
    link = info("box.img", tarfile.LNKTYPE, linkname="metadata.json")
    return write_box(d / "t.box", [metadata(), (link, None)])


def _device(d: Path, disk: Path) -> Path:
    dev = info("box.img", tarfile.BLKTYPE, devmajor=8, devminor=0)
    return write_box(d / "t.box", [metadata(), (dev, None)])


def _fifo(d: Path, disk: Path) -> Path:
    return write_box(d / "t.box", [metadata(), (info("Vagrantfile", tarfile.FIFOTYPE), None),
                                   image(disk)])  # fmt: skip


def _backing(d: Path, disk: Path) -> Path:
    overlay = f.qcow2_with_backing(d)
    return write_box(d / "t.box", [metadata(), image(overlay)])


def _duplicate(d: Path, disk: Path) -> Path:
    return write_box(d / "t.box", [metadata(), image(disk), image(disk)])


def _stranger(d: Path, disk: Path) -> Path:
    return write_box(d / "t.box", [metadata(), image(disk), regular("install.sh", b"rm -rf /")])


def _subdirectory(d: Path, disk: Path) -> Path:
    return write_box(d / "t.box", [metadata(), image(disk, "disks/box.img")])


def _big_small_member(d: Path, disk: Path) -> Path:
    return write_box(d / "t.box", [metadata(), regular("Vagrantfile", b"#" * (65 << 10)),
                                   image(disk)])  # fmt: skip


def _virtualbox(d: Path, disk: Path) -> Path:
    return write_box(d / "t.box", [metadata({"provider": "virtualbox"}), image(disk)])


def _no_image(d: Path, disk: Path) -> Path:
    return write_box(d / "t.box", [metadata()])


def _not_a_tar(d: Path, disk: Path) -> Path:
    return disk


def _bomb(d: Path, disk: Path) -> Path:
    """A gzip tar whose box.img unpacks to 1.1 GiB of zeros (1 MiB compressed), more than a
    disk of 1 GiB (metadata.json) could hold: refused at its header, before a byte is read."""
    path = d / "bomb.box"
    size = 1100 * MiB
    data = json.dumps(METADATA).encode()
    with gzip.open(path, "wb", compresslevel=1) as gz:
        gz.write(info("metadata.json", size=len(data)).tobuf(format=tarfile.GNU_FORMAT))
        gz.write(data + bytes(-len(data) % tarfile.BLOCKSIZE))
        gz.write(info("box.img", size=size).tobuf(format=tarfile.GNU_FORMAT))
        zeros = bytes(8 * MiB)
        for _ in range(size // len(zeros)):
            gz.write(zeros)
        gz.write(bytes(2 * tarfile.BLOCKSIZE))
    return path


HOSTILE: dict[str, tuple[Maker, str]] = {
    "path-traversal": (_traversal, "member '../box.img': the path leaves the box ('..')"),
    "absolute-path": (_absolute, "member '/etc/cron.d/x': an absolute path"),
    "symlink-member": (_symlink, "member 'box.img': a symbolic link"),
    "hardlink-member": (_hardlink, "member 'box.img': a hard link"),
    "device-member": (_device, "member 'box.img': a block device"),
    "fifo-member": (_fifo, "member 'Vagrantfile': a fifo"),
    "duplicate-member": (_duplicate, "member box.img appears twice"),
    "unknown-member": (_stranger, "member 'install.sh': not part of a libvirt box "
                       "(metadata.json, box.img, Vagrantfile, info.json)"),
    "subdirectory": (_subdirectory, "member 'disks/box.img': in a subdirectory; a libvirt box "
                     "has files at its top only"),
    "small-member-over-limit": (_big_small_member, "member Vagrantfile: 66560 bytes, over the "
                                "limit of 65536"),
    "tar-bomb": (_bomb, "member box.img: 1153433600 bytes, more than a disk of 1 GiB "
                 "(metadata.json) can take (1107296256)"),
    "not-libvirt": (_virtualbox, "metadata.json: provider is 'virtualbox'; sigvirt takes "
                    "libvirt boxes"),
    "no-image": (_no_image, "t.box: no box.img; not a libvirt box"),
    "not-a-tar": (_not_a_tar, "box.img: not a tar archive (plain, gzip, bzip2 or xz)"),
    "backing-file": (_backing, 'qcow2 has a backing file ("base.img"); import a standalone '
                     "image (qemu-img convert -O qcow2 IMAGE standalone.qcow2)"),
}  # fmt: skip


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory, disk: Path) -> Path:
    return _bomb(tmp_path_factory.mktemp("bomb"), disk)


def _make(name: str, d: Path, disk: Path, bomb: Path) -> Path:
    return bomb if name == "tar-bomb" else HOSTILE[name][0](d, disk)


# -- the library (offline) ----------------------------------------------------------------------
@pytest.mark.offline
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_box_is_refused_before_anything_is_kept(
    name: str, tmp_path: Path, disk: Path, bomb: Path
) -> None:
    path = _make(name, tmp_path, disk, bomb)
    work = tmp_path / "work"
    with pytest.raises(ImageRejected) as err:
        read_box(path, work)
    message = err.value.message
    assert (
        message.removeprefix("box rejected: ").removeprefix("image rejected: ")
        == (HOSTILE[name][1])
    )
    assert not work.exists(), "a refused box left its work directory"


@pytest.mark.offline
def test_box_img_is_extracted_byte_for_byte_and_gated(tmp_path: Path, disk: Path) -> None:
    for compress in ("", "gz", "xz"):
        path = write_box(tmp_path / f"good{compress}.box", good_members(disk), compress)
        box = read_box(path, tmp_path / f"work{compress}")
        assert box.image.read_bytes() == disk.read_bytes()
        assert box.metadata == boxfile.BoxMetadata("libvirt", "qcow2", 1)
        assert box.verified.virtual_size == 64 * MiB
        assert sorted(os.listdir(box.image.parent)) == ["box.img"]  # nothing else extracted


@pytest.mark.offline
def test_image_limit_is_checked_before_extracting(tmp_path: Path, disk: Path) -> None:
    path = write_box(tmp_path / "good.box", good_members(disk))
    with pytest.raises(ImageRejected, match="over the limit of 1048576"):
        read_box(path, tmp_path / "work", limits=BoxLimits(image_bytes=1 * MiB))
    assert not (tmp_path / "work").exists()


@pytest.mark.offline
def test_metadata_smaller_than_the_disk_is_refused(tmp_path: Path) -> None:
    big = f.qcow2(tmp_path / "big.qcow2", 2 * GiB)
    path = write_box(tmp_path / "small.box", [metadata(), image(big)])
    with pytest.raises(ImageRejected, match=r"virtual_size 1 GiB, but box\.img is 2147483648"):
        read_box(path, tmp_path / "work")
    assert not (tmp_path / "work").exists()


@pytest.mark.offline
def test_a_box_with_several_disks_is_unsupported(tmp_path: Path, disk: Path) -> None:
    two = {"provider": "libvirt", "disks": [{"path": "box.img"}, {"path": "box_2.img"}]}
    path = write_box(tmp_path / "two.box", [metadata(two), image(disk)])
    with pytest.raises(Unsupported, match="several disks"):
        read_box(path, tmp_path / "work")


# -- through the CLI: exit 9, nothing written ----------------------------------------------------
@pytest.fixture
def definition(sig: SigEnv) -> SigEnv:
    sig.gallery()
    sig.definition()
    return sig


def _staging() -> list[str]:
    return [n for n in os.listdir("/var/tmp") if n.startswith(f".sigvirt-staging-{os.getpid()}-")]


@pytest.mark.parametrize(
    "name", ["path-traversal", "symlink-member", "device-member", "backing-file", "tar-bomb"]
)
def test_hostile_box_source_is_refused_and_leaves_nothing(
    name: str, definition: SigEnv, tmp_path: Path, disk: Path, bomb: Path
) -> None:
    path = _make(name, tmp_path, disk, bomb)
    line = definition.refused(ExitCode.IMAGE_REJECTED, *version_create("1.0.0", f"box:{path}"))
    prefix = "image rejected: " if name == "backing-file" else "box rejected: "
    assert line == prefix + HOSTILE[name][1]
    assert definition.store.list_versions("myGallery", "myDef") == []
    assert _staging() == []


def test_box_source_publishes_its_image(definition: SigEnv, tmp_path: Path, disk: Path) -> None:
    path = write_box(tmp_path / "good.box", good_members(disk), "gz")
    rec = definition.version("1.0.0", f"box:{path}")
    (replica,) = rec.replicas
    assert replica.state == "completed"
    assert rec.source == f"box:{path}"
    info = qemu_info(Path(replica.path))
    assert "backing-filename" not in info and info["virtual-size"] == 64 * MiB
    assert _staging() == []


@pytest.fixture
def unreadable_box(tmp_path: Path) -> Iterator[Path]:
    link = tmp_path / "link.box"
    link.symlink_to("/etc/passwd")
    yield link


def test_box_source_that_is_a_link_is_refused(definition: SigEnv, unreadable_box: Path) -> None:
    line = definition.refused(
        ExitCode.IMAGE_REJECTED, *version_create("1.0.0", f"box:{unreadable_box}")
    )
    assert (
        line
        == f"box rejected: {unreadable_box} is not a regular file (a link, device or directory)"
    )
