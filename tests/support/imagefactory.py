"""Real images for import-gate tests: qemu-img where it can make them, byte edits where it won't.

Every maker takes a directory, writes one file with a fixed name into it and returns its path.
`HOSTILE` lists one maker per refusal class with the format a user would declare and the
stable start of the refusal message, so CLI tests can reuse the same catalogue.
"""

from __future__ import annotations

import io
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pycdlib

from sigvirt.errors import CommandFailed
from sigvirt.runner import Result, Runner

MiB = 1 << 20
Maker = Callable[[Path], Path]
SECRET = ["--object", "secret,id=sec0,data=hunter2"]

# qcow2 header offsets (docs/interop/qcow2.txt)
VERSION = 4
CLUSTER_BITS = 20
SIZE = 24
L1_OFFSET = 40
REFTABLE_OFFSET = 48
INCOMPATIBLE = 72
AUTOCLEAR = 88
HEADER_LENGTH = 100


def run(*argv: str | Path) -> Result:
    return Runner().run(list(argv))


def qemu_img(*args: str | Path) -> Result:
    # Creating a LUKS image, QEMU times PBKDF2 on the thread's CPU clock; on a busy host
    # that clock sometimes doesn't advance and it gives up ("Unable to get accurate CPU
    # usage"): a flake of making the test input, not of what is tested, so try again. Seen
    # failing 4 times in a row while CI's guests booted: wait a little longer each time.
    for attempt in range(10):
        try:
            return run("qemu-img", *args)
        except CommandFailed as err:
            if "Unable to get accurate CPU usage" not in err.message:
                raise
        time.sleep(0.2 * (attempt + 1))
    return run("qemu-img", *args)


# --- byte edits -----------------------------------------------------------------------------


def patch(path: Path, offset: int, data: bytes) -> Path:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)
    return path


def read_u32(path: Path, offset: int) -> int:
    with path.open("rb") as f:
        f.seek(offset)
        value: int = struct.unpack(">I", f.read(4))[0]
    return value


def read_u64(path: Path, offset: int) -> int:
    with path.open("rb") as f:
        f.seek(offset)
        value: int = struct.unpack(">Q", f.read(8))[0]
    return value


def patch_u32(path: Path, offset: int, value: int) -> Path:
    return patch(path, offset, struct.pack(">I", value))


def patch_u64(path: Path, offset: int, value: int) -> Path:
    return patch(path, offset, struct.pack(">Q", value))


def set_incompatible(path: Path, bits: int) -> Path:
    return patch_u64(path, INCOMPATIBLE, read_u64(path, INCOMPATIBLE) | bits)


def clear_incompatible(path: Path, bits: int) -> Path:
    return patch_u64(path, INCOMPATIBLE, read_u64(path, INCOMPATIBLE) & ~bits)


def set_autoclear(path: Path, bits: int) -> Path:
    return patch_u64(path, AUTOCLEAR, read_u64(path, AUTOCLEAR) | bits)


# --- acceptable images ----------------------------------------------------------------------


def qcow2(
    path: Path, size: int = 16 * MiB, *, compat: str = "1.1", options: str = "", data: bool = False
) -> Path:
    """A qcow2; with data=True, 1 MiB of 0xab written at offset 0 through qemu-io."""
    opts = f"compat={compat}" + (f",{options}" if options else "")
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, path, str(size))
    if data:
        run("qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 1M", path)
    return path


def qcow2_v3_with_data(d: Path) -> Path:
    return qcow2(d / "v3.qcow2", data=True)


def qcow2_v2(d: Path) -> Path:
    return qcow2(d / "v2.qcow2", compat="0.10", data=True)


def raw(path: Path, size: int) -> Path:
    """A sparse raw file: no data blocks are written."""
    with path.open("wb") as f:
        f.truncate(size)
    return path


def raw_with_mbr(d: Path, size: int = 8 * MiB) -> Path:
    """A raw disk with one Linux partition from 1 MiB to the end, as fdisk would write."""
    path = raw(d / "mbr.raw", size)
    sectors = size // 512
    entry = struct.pack(
        "<B3sB3sII", 0x00, b"\x00\x02\x00", 0x83, b"\xfe\xff\xff", 2048, sectors - 2048
    )
    patch(path, 446, entry)
    patch(path, 510, b"\x55\xaa")
    return patch(path, 1 * MiB, b"\xab" * 4096)


def compressed_qcow2(d: Path) -> Path:
    src = raw_with_mbr(d)
    dst = d / "compressed.qcow2"
    qemu_img("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", src, dst)
    return dst


def leaky_qcow2(d: Path) -> Path:
    """A qcow2 whose refcounts claim one cluster nothing references: qemu-img check exits 3."""
    path = qcow2(d / "leaky.qcow2", data=True)
    cluster = 1 << read_u32(path, CLUSTER_BITS)
    refblock = read_u64(path, read_u64(path, REFTABLE_OFFSET))
    spare = -(-path.stat().st_size // cluster)
    patch(path, refblock + 2 * spare, struct.pack(">H", 1))
    with path.open("r+b") as f:
        f.truncate((spare + 1) * cluster)
    return path


# --- hostile qcow2 --------------------------------------------------------------------------


def qcow2_with_backing(d: Path) -> Path:
    raw(d / "base.img", 16 * MiB)
    path = d / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "raw", path)
    return path


def qcow2_with_data_file(d: Path) -> Path:
    """What CVE-2024-32498 abused: qcow2 metadata over someone else's file."""
    path = d / "datafile.qcow2"
    # qemu-img creates a relative data file in its working directory: run it inside d.
    opts = "data_file=data.raw"
    run("env", "-C", d, "qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, path.name, "16M")
    return path


def qcow2_data_file_extension_only(d: Path) -> Path:
    """The data-file header extension with the incompatible bit cleared."""
    return clear_incompatible(qcow2_with_data_file(d), 1 << 2)


def qcow2_raw_external_data_bit(d: Path) -> Path:
    return set_autoclear(qcow2(d / "rawbit.qcow2"), 1 << 1)


def encrypted_qcow2(d: Path, encryption: str = "luks") -> Path:
    """qcow2 encrypted with LUKS (~2 s: qemu benchmarks PBKDF2) or legacy AES (instant)."""
    path = d / f"{encryption}.qcow2"
    opts = f"encrypt.format={encryption},encrypt.key-secret=sec0"
    if encryption == "luks":
        opts += ",encrypt.iter-time=10"
    qemu_img("create", "-q", "-f", "qcow2", *SECRET, "-o", opts, path, str(16 * MiB))
    return path


def aes_qcow2(d: Path) -> Path:
    return encrypted_qcow2(d, "aes")


def qcow2_corrupt(d: Path) -> Path:
    return set_incompatible(qcow2(d / "corrupt.qcow2", data=True), 1 << 1)


def qcow2_dirty(d: Path) -> Path:
    return set_incompatible(qcow2(d / "dirty.qcow2", data=True), 1 << 0)


def qcow2_unknown_incompatible(d: Path) -> Path:
    return set_incompatible(qcow2(d / "unknown.qcow2"), 1 << 5)


def qcow2_version_4(d: Path) -> Path:
    return patch_u32(qcow2(d / "v4.qcow2"), VERSION, 4)


def qcow1(d: Path) -> Path:
    path = d / "old.qcow"
    qemu_img("create", "-q", "-f", "qcow", path, str(16 * MiB))
    return path


def qcow2_cluster_bits_30(d: Path) -> Path:
    return patch_u32(qcow2(d / "bits30.qcow2"), CLUSTER_BITS, 30)


def qcow2_bad_header_length(d: Path) -> Path:
    return patch_u32(qcow2(d / "hdrlen.qcow2"), HEADER_LENGTH, 100)


def qcow2_huge(d: Path) -> Path:
    """Claims 128 TiB: above the gate's 64 TiB limit."""
    return patch_u64(qcow2(d / "huge.qcow2"), SIZE, 128 << 40)


def qcow2_truncated_header(d: Path) -> Path:
    path = qcow2(d / "cut-header.qcow2")
    with path.open("r+b") as f:
        f.truncate(50)
    return path


def qcow2_l1_past_eof(d: Path) -> Path:
    return patch_u64(qcow2(d / "l1eof.qcow2"), L1_OFFSET, 1 << 40)


def qcow2_l2_past_eof(d: Path) -> Path:
    """Cut before the L2 table the L1 table points at."""
    path = qcow2(d / "cut-l2.qcow2", data=True)
    l2 = read_u64(path, read_u64(path, L1_OFFSET)) & 0x00FFFFFFFFFFFE00
    with path.open("r+b") as f:
        f.truncate(l2 - 4096)
    return path


def qcow2_cut_in_data(d: Path) -> Path:
    """Cut inside the data clusters: metadata is whole, qemu-img check counts corruptions."""
    path = qcow2(d / "cut-data.qcow2", data=True)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 4)
    return path


def qcow2_bad_bitmaps_extension(d: Path) -> Path:
    """A bitmaps extension of the wrong length: harmless to sniff, qemu-img refuses to open it."""
    path = qcow2(d / "bitmaps.qcow2")
    ext = struct.pack(">II", 0x23852875, 8) + bytes(8) + struct.pack(">II", 0, 0)
    return patch(path, read_u32(path, HEADER_LENGTH), ext)


# --- other formats and polyglots ------------------------------------------------------------


def foreign(d: Path, fmt: str, *options: str) -> Path:
    """An image made by qemu-img in another format (vmdk, vpc, vhdx, vdi, qed, parallels, luks)."""
    path = d / f"disk.{fmt}"
    extra = [*SECRET, "-o", "key-secret=sec0,iter-time=10"] if fmt == "luks" else []
    opts = ["-o", ",".join(options)] if options else []
    qemu_img("create", "-q", "-f", fmt, *extra, *opts, path, str(16 * MiB))
    return path


def vmdk_descriptor(d: Path) -> Path:
    """A monolithicFlat vmdk: a text descriptor naming an extent file."""
    return foreign(d, "vmdk", "subformat=monolithicFlat")


def fixed_vhd(d: Path) -> Path:
    """A fixed vpc: raw data followed by a 512-byte footer; only the footer says vhd."""
    return foreign(d, "vpc", "subformat=fixed")


def iso(d: Path, name: str = "disk.iso") -> Path:
    image = pycdlib.PyCdlib()
    image.new()
    image.add_fp(io.BytesIO(b"hello\n"), 6, "/HELLO.TXT;1")
    path = d / name
    image.write(str(path))
    image.close()
    return path


def luks_header(d: Path) -> Path:
    """A LUKS1 header magic over raw data; `foreign(d, "luks")` makes a real one in ~2 s."""
    return _raw_then(d, "disk.luks", head=b"LUKS\xba\xbe\x00\x01aes\x00")


def _raw_then(d: Path, name: str, head: bytes = b"", tail: bytes = b"") -> Path:
    path = raw(d / name, 1 * MiB)
    if head:
        patch(path, 0, head)
    if tail:
        patch(path, 1 * MiB - 512, tail.ljust(512, b"\x00"))
    return path


def raw_with_vhd_footer(d: Path) -> Path:
    return _raw_then(d, "footer.raw", tail=b"conectix\x00\x00\x00\x02\x00\x01\x00\x00")


def dmg(d: Path) -> Path:
    return _raw_then(d, "disk.dmg", tail=b"koly\x00\x00\x00\x04\x00\x00\x02\x00")


def bochs(d: Path) -> Path:
    return _raw_then(d, "disk.bochs", head=b"Bochs Virtual HD Image\x00Redolog\x00Growing\x00")


def cloop(d: Path) -> Path:
    script = (
        b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
    )
    return _raw_then(d, "disk.cloop", head=script)


def polyglot_qcow2_iso(d: Path) -> Path:
    """An ISO9660 primary volume descriptor inside the (unused) rest of the header cluster."""
    return patch(qcow2(d / "iso.qcow2", data=True), 0x8000, b"\x01CD001\x01")


def polyglot_qcow2_vmdk(d: Path) -> Path:
    text = (
        b'# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\n'
        b'RW 32768 FLAT "/etc/shadow" 0\n'
    )
    return patch(qcow2(d / "vmdk.qcow2", data=True), 0x1000, text)


def polyglot_qcow2_vhd(d: Path) -> Path:
    path = qcow2(d / "vhd.qcow2", data=True)
    with path.open("ab") as f:
        f.write(b"conectix".ljust(512, b"\x00"))
    return path


def directory(d: Path) -> Path:
    (d / "adir").mkdir()
    return d / "adir"


def symlink(d: Path) -> Path:
    target = qcow2(d / "target.qcow2")
    (d / "link.qcow2").symlink_to(target.name)
    return d / "link.qcow2"


def fifo(d: Path) -> Path:
    os.mkfifo(d / "pipe")
    return d / "pipe"


def empty(d: Path) -> Path:
    (d / "empty.img").touch()
    return d / "empty.img"


def odd_size_raw(d: Path) -> Path:
    path = d / "odd.raw"
    path.write_bytes(b"\xab" * 1000)
    return path


@dataclass(frozen=True)
class HostileCase:
    make: Maker
    declared: str | None
    refusal: str  # stable start of the ImageRejected message


def _fmt(fmt: str, *options: str) -> Maker:
    return lambda d: foreign(d, fmt, *options)


_QCOW2 = "image rejected: qcow2 "
_IMPLAUSIBLE = "image rejected: qcow2 header is implausible: "
_AMBIGUOUS = "image rejected: the file matches more than one image format (qcow2: "

HOSTILE: dict[str, HostileCase] = {
    "backing-file": HostileCase(
        qcow2_with_backing, "qcow2", _QCOW2 + 'has a backing file ("base.img")'
    ),
    "data-file": HostileCase(
        qcow2_with_data_file, "qcow2", _QCOW2 + 'uses an external data file ("data.raw"'
    ),
    "data-file-extension": HostileCase(
        qcow2_data_file_extension_only, "qcow2", _QCOW2 + 'names an external data file ("data.raw"'
    ),
    "raw-external-data-bit": HostileCase(
        qcow2_raw_external_data_bit, "qcow2", _QCOW2 + 'has the "raw external data" autoclear bit'
    ),
    "encrypted-luks": HostileCase(encrypted_qcow2, "qcow2", _QCOW2 + "is encrypted (LUKS)"),
    "encrypted-aes": HostileCase(aes_qcow2, "qcow2", _QCOW2 + "is encrypted (AES)"),
    "corrupt-bit": HostileCase(qcow2_corrupt, "qcow2", _QCOW2 + "is marked corrupt"),
    "dirty-bit": HostileCase(qcow2_dirty, "qcow2", _QCOW2 + "was not closed cleanly"),
    "unknown-incompatible-bit": HostileCase(
        qcow2_unknown_incompatible, "qcow2", _QCOW2 + "has unknown incompatible feature bits (5)"
    ),
    "version-4": HostileCase(qcow2_version_4, "qcow2", _QCOW2 + "version 4 is not accepted"),
    "qcow-version-1": HostileCase(qcow1, None, _QCOW2 + "version 1 is not accepted"),
    "cluster-bits-30": HostileCase(
        qcow2_cluster_bits_30, "qcow2", _IMPLAUSIBLE + "cluster_bits 30"
    ),
    "header-length": HostileCase(
        qcow2_bad_header_length, "qcow2", _IMPLAUSIBLE + "header_length 100"
    ),
    "virtual-size-limit": HostileCase(
        qcow2_huge, "qcow2", _IMPLAUSIBLE + "virtual size 140737488355328"
    ),
    "truncated-header": HostileCase(qcow2_truncated_header, "qcow2", _QCOW2 + "file is truncated"),
    "l1-past-eof": HostileCase(
        qcow2_l1_past_eof, "qcow2", _QCOW2 + "L1 table at offset 0x10000000000"
    ),
    "l2-past-eof": HostileCase(qcow2_l2_past_eof, "qcow2", _QCOW2 + "L2 table (from L1 entry 0)"),
    "vmdk-as-raw": HostileCase(
        _fmt("vmdk"), "raw", "image rejected: declared raw, but the file is a vmdk"
    ),
    "vmdk-descriptor": HostileCase(
        vmdk_descriptor, None, "image rejected: the file is a vmdk image"
    ),
    "vhd-dynamic": HostileCase(
        _fmt("vpc"), "raw", "image rejected: declared raw, but the file is a vhd"
    ),
    "vhd-fixed": HostileCase(
        fixed_vhd, "raw", "image rejected: declared raw, but the file is a vhd"
    ),
    "vhdx": HostileCase(
        _fmt("vhdx"), "raw", "image rejected: declared raw, but the file is a vhdx"
    ),
    "vdi": HostileCase(_fmt("vdi"), "raw", "image rejected: declared raw, but the file is a vdi"),
    "qed": HostileCase(_fmt("qed"), "raw", "image rejected: declared raw, but the file is a qed"),
    "luks": HostileCase(luks_header, "raw", "image rejected: declared raw, but the file is a luks"),
    "parallels": HostileCase(
        _fmt("parallels"), "raw", "image rejected: declared raw, but the file is a parallels"
    ),
    "iso": HostileCase(iso, "raw", "image rejected: declared raw, but the file is an iso9660"),
    "dmg": HostileCase(dmg, "raw", "image rejected: declared raw, but the file is a dmg"),
    "bochs": HostileCase(bochs, "raw", "image rejected: declared raw, but the file is a bochs"),
    "cloop": HostileCase(cloop, "raw", "image rejected: declared raw, but the file is a cloop"),
    "qcow2-as-raw": HostileCase(
        qcow2_v3_with_data, "raw", "image rejected: declared raw, but the file is a qcow2"
    ),
    "raw-as-qcow2": HostileCase(
        raw_with_mbr, "qcow2", "image rejected: declared qcow2, but the file has no"
    ),
    "polyglot-qcow2-iso": HostileCase(polyglot_qcow2_iso, "qcow2", _AMBIGUOUS),
    "polyglot-qcow2-vmdk": HostileCase(polyglot_qcow2_vmdk, "qcow2", _AMBIGUOUS),
    "polyglot-qcow2-vhd": HostileCase(polyglot_qcow2_vhd, "qcow2", _AMBIGUOUS),
    "raw-vhd-footer": HostileCase(
        raw_with_vhd_footer, "raw", "image rejected: declared raw, but the file is a vhd"
    ),
    "empty": HostileCase(empty, None, "image rejected: the file is empty"),
    "directory": HostileCase(directory, None, "image rejected: the path is a directory"),
    "symlink": HostileCase(symlink, "qcow2", "image rejected: the path is a symbolic link"),
    "fifo": HostileCase(fifo, None, "image rejected: the path is a fifo"),
    "odd-size-raw": HostileCase(odd_size_raw, "raw", "image rejected: raw image size 1000 bytes"),
}
