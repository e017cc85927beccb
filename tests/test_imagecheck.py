"""The import gate against real images: made by qemu-img, or byte-edited where it won't go."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest

from sigvirt.errors import ExitCode, ImageRejected, NotFound
from sigvirt.hosts.qemuimg import QemuImg
from sigvirt.runner import Runner
from sigvirt.versions.imagecheck import MAX_VIRTUAL_SIZE, ImageFacts, inspect, sniff, verify
from tests.support import imagefactory as f

pytestmark = pytest.mark.offline

R = "image rejected: "
STANDALONE = "; import a standalone image (qemu-img convert -O qcow2 IMAGE standalone.qcow2)"
IMPLAUSIBLE = R + "qcow2 header is implausible: "
PAST_EOF = (
    "lies past the end of the file ({size} bytes); the file is truncated or its header is corrupt"
)
RAW_IS = R + "declared raw, but the file is "
ONLY = "; only qcow2 and raw images are accepted"
AMBIGUOUS = R + 'the file matches more than one image format (qcow2: "QFI\\xfb" at offset 0; '
FOOTER = '"conectix" in the footer (last 512 bytes)'

# The exact refusal for every class in the shared catalogue; {size} is the file's size.
EXPECTED = {
    "backing-file": R + 'qcow2 has a backing file ("base.img")' + STANDALONE,
    "data-file": R
    + 'qcow2 uses an external data file ("data.raw", incompatible feature bit 2)'
    + STANDALONE,
    "data-file-extension": R
    + 'qcow2 names an external data file ("data.raw", header extension 0x44415441)'
    + STANDALONE,
    "raw-external-data-bit": R + 'qcow2 has the "raw external data" autoclear bit set' + STANDALONE,
    "encrypted-luks": R + "qcow2 is encrypted (LUKS); import an unencrypted image",
    "encrypted-aes": R + "qcow2 is encrypted (AES); import an unencrypted image",
    "corrupt-bit": R + "qcow2 is marked corrupt (incompatible feature bit 1); "
    "repair it before importing",
    "dirty-bit": R + "qcow2 was not closed cleanly (dirty bit set); "
    "run 'qemu-img check -r all IMAGE' and import the result",
    "unknown-incompatible-bit": R + "qcow2 has unknown incompatible feature bits (5); "
    "only bits 0-4 are understood",
    "version-4": R + "qcow2 version 4 is not accepted (only versions 2 and 3)",
    "qcow-version-1": R + "qcow2 version 1 is not accepted (only versions 2 and 3)",
    "cluster-bits-30": IMPLAUSIBLE + "cluster_bits 30 is outside 9..21",
    "header-length": IMPLAUSIBLE + "header_length 100 "
    "(must be a multiple of 8 between 104 and the cluster size 65536)",
    "virtual-size-limit": IMPLAUSIBLE
    + "virtual size 140737488355328 bytes is above the 64 TiB limit",
    "truncated-header": R + "qcow2 file is truncated: the header needs 72 bytes, the file has 50",
    "l1-past-eof": R + "qcow2 L1 table at offset 0x10000000000 (8 bytes) " + PAST_EOF,
    "l2-past-eof": R
    + "qcow2 L2 table (from L1 entry 0) at offset 0x40000 (65536 bytes) "
    + PAST_EOF,
    "vmdk-as-raw": RAW_IS + 'a vmdk image (sparse extent magic "KDMV" at offset 0)' + ONLY,
    "vmdk-descriptor": R
    + 'the file is a vmdk image (descriptor "# Disk DescriptorFile" at offset 0x0)'
    + ONLY,
    "vhd-dynamic": RAW_IS + 'a vhd image ("conectix" at offset 0 and in the footer '
    "(last 512 bytes))" + ONLY,
    "vhd-fixed": RAW_IS + f"a vhd image ({FOOTER})" + ONLY,
    "vhdx": RAW_IS + 'a vhdx image ("vhdxfile" at offset 0)' + ONLY,
    "vdi": RAW_IS + "a vdi image (magic 0xbeda107f at offset 0x40)" + ONLY,
    "qed": RAW_IS + 'a qed image ("QED\\0" at offset 0)' + ONLY,
    "luks": RAW_IS + 'a luks image ("LUKS\\xba\\xbe" at offset 0)' + ONLY,
    "parallels": RAW_IS + 'a parallels image ("WithouFreSpacExt" at offset 0)' + ONLY,
    "iso": RAW_IS + 'an iso9660 image ("CD001" at offset 0x8001)' + ONLY,
    "dmg": RAW_IS + 'a dmg image ("koly" trailer at the end of the file)' + ONLY,
    "bochs": RAW_IS + 'a bochs image ("Bochs Virtual HD Image" at offset 0)' + ONLY,
    "cloop": RAW_IS + "a cloop image (cloop V2.0 script header at offset 0)" + ONLY,
    "qcow2-as-raw": RAW_IS + 'a qcow2 image ("QFI\\xfb" at offset 0); declare it as qcow2',
    "raw-as-qcow2": R
    + 'declared qcow2, but the file has no qcow2 header ("QFI\\xfb" missing at offset 0)',
    "polyglot-qcow2-iso": AMBIGUOUS
    + 'iso9660: "CD001" at offset 0x8001); refusing an ambiguous image',
    "polyglot-qcow2-vmdk": AMBIGUOUS
    + 'vmdk: descriptor "# Disk DescriptorFile" at offset 0x1000); refusing an ambiguous image',
    "polyglot-qcow2-vhd": AMBIGUOUS + f"vhd: {FOOTER}); refusing an ambiguous image",
    "raw-vhd-footer": RAW_IS + f"a vhd image ({FOOTER})" + ONLY,
    "empty": R + "the file is empty",
    "directory": R + "the path is a directory, not a regular file",
    "symlink": R + "the path is a symbolic link; pass the image file itself",
    "fifo": R + "the path is a fifo, not a regular file",
    "odd-size-raw": R + "raw image size 1000 bytes is not a multiple of 512; "
    "a disk is whole sectors (pad it: truncate -s %512 IMAGE)",
}


@pytest.fixture
def qemu_img() -> QemuImg:
    return QemuImg(Runner())


def refusal(path: Path, declared: str | None = None) -> str:
    with pytest.raises(ImageRejected) as caught:
        sniff(path, declared)
    assert caught.value.exit_code == ExitCode.IMAGE_REJECTED
    assert "\n" not in caught.value.message
    return caught.value.message


def test_every_catalogue_case_has_an_exact_message() -> None:
    assert set(EXPECTED) == set(f.HOSTILE)


@pytest.mark.parametrize("name", list(f.HOSTILE))
def test_hostile_image_is_refused_before_qemu_sees_it(name: str, tmp_path: Path) -> None:
    case = f.HOSTILE[name]
    path = case.make(tmp_path)
    size = path.lstat().st_size
    message = refusal(path, case.declared)
    assert message == EXPECTED[name].format(size=size)
    assert message.startswith(case.refusal)


# --- accepted images --------------------------------------------------------------------------


def test_qcow2_v3_with_data_is_accepted(tmp_path: Path, qemu_img: QemuImg) -> None:
    path = f.qcow2_v3_with_data(tmp_path)
    image = inspect(path, "qcow2", qemu_img)
    assert (image.format, image.virtual_size) == ("qcow2", 16 * f.MiB)
    assert (image.facts.version, image.facts.cluster_size) == (3, 65536)
    assert image.facts.file_size == path.stat().st_size
    assert image.facts.incompatible_features == 0
    assert 0x6803F857 in image.facts.header_extensions  # qemu's feature-name table
    assert (image.leaked_clusters, image.warnings) == (0, ())


def test_format_is_detected_when_not_declared(tmp_path: Path, qemu_img: QemuImg) -> None:
    assert inspect(f.qcow2_v3_with_data(tmp_path), None, qemu_img).format == "qcow2"


def test_qcow2_v2_is_accepted(tmp_path: Path, qemu_img: QemuImg) -> None:
    image = inspect(f.qcow2_v2(tmp_path), "qcow2", qemu_img)
    assert (image.format, image.facts.version, image.warnings) == ("qcow2", 2, ())


def test_compressed_qcow2_is_accepted(tmp_path: Path, qemu_img: QemuImg) -> None:
    image = inspect(f.compressed_qcow2(tmp_path), "qcow2", qemu_img)
    assert (image.format, image.virtual_size) == ("qcow2", 8 * f.MiB)


@pytest.mark.parametrize("declared", ["raw", None])
def test_raw_disk_with_mbr_is_accepted(
    declared: str | None, tmp_path: Path, qemu_img: QemuImg
) -> None:
    image = inspect(f.raw_with_mbr(tmp_path), declared, qemu_img)
    assert (image.format, image.virtual_size, image.facts.version) == ("raw", 8 * f.MiB, None)


def test_qcow2_at_the_size_limit_is_accepted(tmp_path: Path, qemu_img: QemuImg) -> None:
    image = inspect(f.qcow2(tmp_path / "64t.qcow2", MAX_VIRTUAL_SIZE), "qcow2", qemu_img)
    assert image.virtual_size == 64 << 40


def test_leaked_clusters_are_accepted_with_a_warning(tmp_path: Path, qemu_img: QemuImg) -> None:
    image = inspect(f.leaky_qcow2(tmp_path), "qcow2", qemu_img)
    assert image.leaked_clusters == 1
    assert image.warnings == (
        "1 leaked clusters (wasted space only; 'qemu-img check -r leaks' reclaims it)",
    )


def _bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.parametrize(
    ("name", "size", "budget"),
    [("sparse.raw", 100 << 30, 128 << 10), ("huge.qcow2", MAX_VIRTUAL_SIZE, 2 << 20)],
)
def test_sniff_reads_headers_not_the_file(
    name: str, size: int, budget: int, tmp_path: Path
) -> None:
    path = f.raw(tmp_path / name, size) if name.endswith(".raw") else f.qcow2(tmp_path / name, size)
    before, start = _bytes_read(), time.monotonic()
    facts = sniff(path)
    elapsed, read = time.monotonic() - start, _bytes_read() - before
    assert facts.virtual_size == size
    assert read < budget  # a 100 GiB raw costs 64 KiB + 512 bytes; a 64 TiB qcow2 its 1 MiB L1
    assert elapsed < 0.5


# --- refusals outside the catalogue ---------------------------------------------------------


def test_device_is_refused() -> None:
    assert (
        refusal(Path("/dev/null"))
        == "image rejected: the path is a character device, not a regular file"
    )


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="image file not found"):
        sniff(tmp_path / "nope.qcow2")


def test_other_declared_formats_are_refused(tmp_path: Path) -> None:
    path = f.foreign(tmp_path, "vmdk")
    assert (
        refusal(path, "vmdk")
        == 'image rejected: format "vmdk" is not accepted; import qcow2 or raw'
    )


def test_vhd_footer_is_refused_when_detecting(tmp_path: Path) -> None:
    assert refusal(f.raw_with_vhd_footer(tmp_path)).startswith(
        "image rejected: the file is a vhd image"
    )


# --- verify: qemu-img's second opinion ------------------------------------------------------


def test_corruptions_found_by_qemu_img_check_are_refused(tmp_path: Path, qemu_img: QemuImg) -> None:
    path = f.qcow2_cut_in_data(tmp_path)
    facts = sniff(path, "qcow2")  # the metadata tables are whole: only check sees the cut data
    with pytest.raises(ImageRejected) as caught:
        verify(path, facts, qemu_img)
    assert caught.value.message == (
        "image rejected: qemu-img check found 15 corruptions; repair the image before importing"
    )


def test_image_qemu_img_cannot_open_is_refused(tmp_path: Path, qemu_img: QemuImg) -> None:
    path = f.qcow2_bad_bitmaps_extension(tmp_path)
    with pytest.raises(ImageRejected) as caught:
        inspect(path, "qcow2", qemu_img)
    assert caught.value.message == (
        f"image rejected: qemu-img cannot read the image: Could not open '{path}': "
        "bitmaps_ext: Invalid extension length"
    )


def test_file_changed_after_sniff_is_refused(tmp_path: Path, qemu_img: QemuImg) -> None:
    path = f.qcow2_v3_with_data(tmp_path)
    facts = sniff(path, "qcow2")
    with path.open("ab") as out:
        out.write(b"\0" * 512)
    with pytest.raises(ImageRejected) as caught:
        verify(path, facts, qemu_img)
    assert caught.value.message == (
        "image rejected: the file changed while it was being inspected; "
        "import from a file nothing else writes to"
    )


def test_disagreement_with_qemu_img_is_refused(tmp_path: Path, qemu_img: QemuImg) -> None:
    path = f.qcow2_v3_with_data(tmp_path)
    facts = dataclasses.replace(sniff(path, "qcow2"), virtual_size=32 * f.MiB)
    with pytest.raises(ImageRejected) as caught:
        verify(path, facts, qemu_img)
    assert caught.value.message == (
        "image rejected: qemu-img disagrees with the header: virtual size 16777216 "
        "(headers say 33554432)"
    )


def _unsniffed(path: Path) -> ImageFacts:
    """Facts as a caller that skipped sniff might claim them: verify must still refuse."""
    st = os.lstat(path)
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return ImageFacts("qcow2", 16 * f.MiB, st.st_size, 3, 65536, identity=identity)


@pytest.mark.parametrize(
    ("maker", "message"),
    [
        (f.qcow2_with_backing, 'image rejected: qemu-img reports a backing file ("base.img")'),
        (
            f.qcow2_with_data_file,
            'image rejected: qemu-img reports an external data file ("data.raw")',
        ),
    ],
)
def test_verify_alone_refuses_references_outside_the_image(
    maker: f.Maker, message: str, tmp_path: Path, qemu_img: QemuImg
) -> None:
    path = maker(tmp_path)
    with pytest.raises(ImageRejected) as caught:
        verify(path, _unsniffed(path), qemu_img)
    assert caught.value.message == message + STANDALONE
