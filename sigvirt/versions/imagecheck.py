"""The import gate: user images are hostile until their headers and qemu-img both vouch for them.

Two passes, in this order:

1. `sniff` parses headers in pure Python before any qemu code sees the file. It finds the
   real format whatever the user declared, refuses every format but qcow2 (v2/v3) and raw,
   refuses polyglots (files carrying a second format's signature), and refuses qcow2
   features that reach outside the file (backing files, external data files) or that qemu
   would have to trust blindly (encryption, unknown incompatible bits, dirty/corrupt).
2. `verify` asks qemu-img (under CPU/memory rlimits) for the same facts and refuses any
   disagreement, then runs `qemu-img check` on qcow2.

Reads are bounded: the first 64 KiB, the last 512 bytes, and for qcow2 its header cluster
(at most 2 MiB), L1 table (at most 32 MiB, qemu's own cap) and refcount table (at most
8 MiB). A typical image costs well under 1 MiB of reads; the file is never read whole.

Every refusal is one `ImageRejected` line starting with "image rejected: ".
"""

from __future__ import annotations

import json
import os
import stat
import struct
import sys
from array import array
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from sigvirt.errors import CommandFailed, HostAccessDenied, ImageRejected, NotFound
from sigvirt.hosts.qemuimg import QemuImg
from sigvirt.runner import Runner

ACCEPTED_FORMATS = ("qcow2", "raw")

# Azure's largest managed disk is 32 TiB; twice that leaves room for growth while still
# refusing headers that claim exabytes (which would make qemu allocate huge tables).
MAX_VIRTUAL_SIZE = 64 << 40

SECTOR = 512
HEAD_BYTES = 64 << 10  # covers ISO9660/UDF descriptors at 0x8001..0x9001 and the qcow2 header
REPAIR_HINT = "run 'qemu-img check -r all IMAGE' and import the result"
STANDALONE_HINT = "import a standalone image (qemu-img convert -O qcow2 IMAGE standalone.qcow2)"

# qcow2 layout, from qemu's docs/interop/qcow2.txt.
QCOW2_MAGIC = b"QFI\xfb"
_V2_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")  # 72 bytes, common to versions 2 and 3
_V3_HEADER = struct.Struct(">QQQII")  # bytes 72..103: feature bitmaps, refcount_order, length
V2_HEADER_LENGTH = 72
V3_MIN_HEADER_LENGTH = 104
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTENDED_L2 = 1 << 4
INCOMPAT_KNOWN = (1 << 5) - 1
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

EXT_END = 0x00000000
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

# qemu's own ceilings (block/qcow2.h): anything above them qemu refuses, or worse, allocates.
MAX_L1_BYTES = 32 << 20
MAX_REFTABLE_BYTES = 8 << 20
MAX_SNAPSHOTS = 65536
MAX_BACKING_NAME = 1023
L1_OFFSET_MASK = 0x00FFFFFFFFFFFE00
REFTABLE_MASK = 0xFFFFFFFFFFFFFE00

_CRYPT_METHODS = {1: "AES", 2: "LUKS"}
_ISO_OFFSETS = (0x8001, 0x8801, 0x9001)
_ISO_IDS = (b"CD001", b"BEA01", b"NSR02", b"NSR03")


@dataclass(frozen=True)
class ImageFacts:
    """What the headers say. qcow2-only fields stay None/0/() for raw."""

    format: str
    virtual_size: int
    file_size: int
    version: int | None = None
    cluster_size: int | None = None
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    header_extensions: tuple[int, ...] = ()
    # (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns) at sniff time: verify refuses a file
    # that changed between the passes, so qemu-img vouches for the bytes we parsed.
    identity: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)


@dataclass(frozen=True)
class VerifiedImage:
    path: Path
    facts: ImageFacts
    leaked_clusters: int = 0
    warnings: tuple[str, ...] = ()

    @property
    def format(self) -> str:
        return self.facts.format

    @property
    def virtual_size(self) -> int:
        return self.facts.virtual_size


def _reject(reason: str) -> ImageRejected:
    return ImageRejected(f"image rejected: {reason}")


def _printable(raw: bytes, limit: int = 64) -> str:
    """A name from a hostile header, safe to put inside quotes on one line."""
    text = raw.decode("utf-8", "replace")
    clean = "".join(c if c.isprintable() and c not in '"\\' else "?" for c in text)
    return clean if len(clean) <= limit else clean[:limit] + "..."


_FILE_TYPES = {
    stat.S_IFDIR: "a directory",
    stat.S_IFBLK: "a block device",
    stat.S_IFCHR: "a character device",
    stat.S_IFIFO: "a fifo",
    stat.S_IFSOCK: "a socket",
}


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _lstat_regular(path: Path) -> os.stat_result:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotFound(f"image file not found: {path}") from None
    except PermissionError:
        raise HostAccessDenied(f"cannot read image file {path}: permission denied") from None
    if stat.S_ISLNK(st.st_mode):
        raise _reject("the path is a symbolic link; pass the image file itself")
    if not stat.S_ISREG(st.st_mode):
        kind = _FILE_TYPES.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise _reject(f"the path is {kind}, not a regular file")
    return st


def _open_regular(path: Path) -> tuple[int, os.stat_result]:
    # lstat first so that devices and fifos are never opened (opening can have side effects);
    # O_NOFOLLOW and the fstat comparison close the race with a swap after the lstat.
    before = _lstat_regular(path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise HostAccessDenied(f"cannot read image file {path}: permission denied") from None
    except OSError as exc:
        raise _reject(f"the path cannot be opened as a regular file ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise _reject("the file was replaced while it was being opened")
    return fd, st


def _be_u64s(data: bytes) -> array[int]:
    table = array("Q")
    table.frombytes(data[: len(data) - len(data) % 8])
    if sys.byteorder == "little":
        table.byteswap()
    return table


def _vmdk_text_descriptor(head: bytes) -> str | None:
    """Where a VMDK text descriptor shows itself: anywhere in the head, or qemu's own probe."""
    found = head.lower().find(b"# disk descriptorfile")
    if found >= 0:
        return f'descriptor "# Disk DescriptorFile" at offset {found:#x}'
    # qemu's vmdk_probe: comment and blank lines, then "version=N" makes it a descriptor.
    for line in head[:4096].split(b"\n"):
        line = line.rstrip(b"\r")
        if line.startswith(b"#") or not line.strip(b" "):
            continue
        if line.strip() in (b"version=1", b"version=2", b"version=3"):
            return 'descriptor line "version=N" at the start of the file'
        break
    return None


def _signatures(head: bytes, tail: bytes) -> list[tuple[str, str]]:
    """Every format whose signature is present, with where it was seen."""
    found: list[tuple[str, str]] = []
    if head.startswith(QCOW2_MAGIC):
        found.append(("qcow2", '"QFI\\xfb" at offset 0'))
    if head.startswith(b"QED\x00"):
        found.append(("qed", '"QED\\0" at offset 0'))
    if head[:4] in (b"KDMV", b"COWD"):
        found.append(("vmdk", f'sparse extent magic "{head[:4].decode()}" at offset 0'))
    elif (where := _vmdk_text_descriptor(head)) is not None:
        found.append(("vmdk", where))
    places = (("at offset 0", head), ("in the footer (last 512 bytes)", tail))
    if vhd := [where for where, data in places if data.startswith(b"conectix")]:
        found.append(("vhd", f'"conectix" {" and ".join(vhd)}'))
    if head.startswith(b"vhdxfile"):
        found.append(("vhdx", '"vhdxfile" at offset 0'))
    if len(head) >= 0x44 and struct.unpack_from("<I", head, 0x40)[0] == 0xBEDA107F:
        found.append(("vdi", "magic 0xbeda107f at offset 0x40"))
    if head.startswith(b"LUKS\xba\xbe"):
        found.append(("luks", '"LUKS\\xba\\xbe" at offset 0'))
    for off in _ISO_OFFSETS:
        ident = head[off : off + 5]
        if ident in _ISO_IDS:
            found.append(("iso9660", f'"{ident.decode()}" at offset {off:#x}'))
            break
    if head[:16] in (b"WithoutFreeSpace", b"WithouFreSpacExt"):
        found.append(("parallels", f'"{head[:16].decode()}" at offset 0'))
    if tail.startswith(b"koly"):
        found.append(("dmg", '"koly" trailer at the end of the file'))
    if head.startswith(b"Bochs Virtual HD Image"):
        found.append(("bochs", '"Bochs Virtual HD Image" at offset 0'))
    if head.startswith(b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop"):
        found.append(("cloop", "cloop V2.0 script header at offset 0"))
    return found


def sniff(path: Path, declared: str | None = None) -> ImageFacts:
    """Parse the headers of a user image and refuse anything but plain qcow2 or raw.

    `declared` is what the user said the format is (None: detect). Raises ImageRejected.
    """
    if declared is not None and declared not in ACCEPTED_FORMATS:
        raise _reject(
            f'format "{_printable(declared.encode())}" is not accepted; import qcow2 or raw'
        )
    fd, st = _open_regular(path)
    try:
        size = st.st_size
        if size == 0:
            raise _reject("the file is empty")
        head = os.pread(fd, HEAD_BYTES, 0)
        tail = os.pread(fd, SECTOR, size - SECTOR) if size >= SECTOR else b""
        found = _signatures(head, tail)
        if len(found) > 1:
            both = "; ".join(f"{fmt}: {where}" for fmt, where in found)
            raise _reject(
                f"the file matches more than one image format ({both}); refusing an ambiguous image"
            )
        actual, where = found[0] if found else ("raw", "")
        said = f"declared {declared}, but the file" if declared else "the file"
        said += " is an" if actual[0] in "aeiou" else " is a"
        if actual not in ACCEPTED_FORMATS:
            raise _reject(
                f"{said} {actual} image ({where}); only qcow2 and raw images are accepted"
            )
        if declared == "raw" and actual == "qcow2":
            raise _reject(f"{said} qcow2 image ({where}); declare it as qcow2")
        if declared == "qcow2" and actual != "qcow2":
            raise _reject(
                'declared qcow2, but the file has no qcow2 header ("QFI\\xfb" missing at offset 0)'
            )
        facts = _sniff_qcow2(fd, size, head) if actual == "qcow2" else _sniff_raw(size)
        return replace(facts, identity=_identity(st))
    finally:
        os.close(fd)


def _sniff_raw(size: int) -> ImageFacts:
    # qemu rounds a raw disk up to whole sectors, so the guest would see bytes that are not in
    # the file and qemu-img's virtual size would disagree with the file: refuse instead.
    if size % SECTOR:
        raise _reject(
            f"raw image size {size} bytes is not a multiple of {SECTOR}; "
            f"a disk is whole sectors (pad it: truncate -s %{SECTOR} IMAGE)"
        )
    if size > MAX_VIRTUAL_SIZE:
        raise _reject(
            f"raw image size {size} bytes is above the {MAX_VIRTUAL_SIZE >> 40} TiB limit"
        )
    return ImageFacts(format="raw", virtual_size=size, file_size=size)


def _implausible(what: str) -> ImageRejected:
    return _reject(f"qcow2 header is implausible: {what}")


def _past_eof(what: str, offset: int, length: int, size: int) -> ImageRejected:
    return _reject(
        f"qcow2 {what} at offset {offset:#x} ({length} bytes) lies past the end of the file "
        f"({size} bytes); the file is truncated or its header is corrupt"
    )


@dataclass(frozen=True)
class _Qcow2Header:
    version: int
    backing_offset: int
    backing_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_offset: int
    reftable_offset: int
    reftable_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible: int = 0
    compatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4  # implicit in version 2
    header_length: int = V2_HEADER_LENGTH
    compression_type: int = 0


_FIELDS = [f.name for f in fields(_Qcow2Header)]
_V2_NAMES, _V3_NAMES = _FIELDS[:12], _FIELDS[12:17]


def _truncated(needed: int, size: int) -> ImageRejected:
    return _reject(f"qcow2 file is truncated: the header needs {needed} bytes, the file has {size}")


def _parse_qcow2_header(head: bytes, size: int) -> _Qcow2Header:
    if size < V2_HEADER_LENGTH:
        raise _truncated(V2_HEADER_LENGTH, size)
    values = dict(zip(_V2_NAMES, _V2_HEADER.unpack_from(head, 0)[1:], strict=True))
    version = values["version"]
    if version not in (2, 3):
        raise _reject(f"qcow2 version {version} is not accepted (only versions 2 and 3)")
    if version == 3:
        if size < V3_MIN_HEADER_LENGTH:
            raise _truncated(V3_MIN_HEADER_LENGTH, size)
        values.update(zip(_V3_NAMES, _V3_HEADER.unpack_from(head, V2_HEADER_LENGTH), strict=True))
    hdr = _Qcow2Header(**values)
    if not MIN_CLUSTER_BITS <= hdr.cluster_bits <= MAX_CLUSTER_BITS:
        raise _implausible(f"cluster_bits {hdr.cluster_bits} is outside 9..21")
    cluster = 1 << hdr.cluster_bits
    if version == 3:
        length = hdr.header_length
        if length < V3_MIN_HEADER_LENGTH or length % 8 or length > cluster:
            raise _implausible(
                f"header_length {length} (must be a multiple of 8 between {V3_MIN_HEADER_LENGTH} "
                f"and the cluster size {cluster})"
            )
        if length > size:
            raise _truncated(length, size)
        if length > V3_MIN_HEADER_LENGTH:
            hdr = replace(hdr, compression_type=head[V3_MIN_HEADER_LENGTH])
    return hdr


def _read_extensions(area: bytes, start: int, end: int) -> dict[int, bytes]:
    """Header extensions between the header and `end`; qemu's own bounds, not a byte more."""
    found: dict[int, bytes] = {}
    offset = start
    while offset < end:
        if end - offset < 8:
            raise _implausible(f"header extension at offset {offset:#x} overruns the header area")
        ext_type, ext_len = struct.unpack_from(">II", area, offset)
        offset += 8
        if ext_type == EXT_END:
            break
        if ext_len > end - offset:
            raise _implausible(f"header extension {ext_type:#010x} overruns the header area")
        found.setdefault(ext_type, area[offset : offset + ext_len])
        offset += (ext_len + 7) & ~7
    return found


def _sniff_qcow2(fd: int, size: int, head: bytes) -> ImageFacts:
    hdr = _parse_qcow2_header(head, size)
    cluster = 1 << hdr.cluster_bits
    area = head if cluster <= len(head) else os.pread(fd, cluster, 0)
    area = area[:cluster]

    if hdr.backing_offset or hdr.backing_size:
        name = "name unreadable"
        if hdr.backing_offset < len(area) and hdr.backing_size:
            raw = area[
                hdr.backing_offset : hdr.backing_offset + min(hdr.backing_size, MAX_BACKING_NAME)
            ]
            name = f'"{_printable(raw)}"'
        raise _reject(f"qcow2 has a backing file ({name}); {STANDALONE_HINT}")

    exts = _read_extensions(area, hdr.header_length, len(area))
    data_file = exts.get(EXT_DATA_FILE)
    if hdr.incompatible & INCOMPAT_DATA_FILE:
        name = f'"{_printable(data_file)}", ' if data_file is not None else ""
        raise _reject(
            f"qcow2 uses an external data file ({name}incompatible feature bit 2); "
            + STANDALONE_HINT
        )
    if data_file is not None:
        raise _reject(
            f'qcow2 names an external data file ("{_printable(data_file)}", header extension '
            f"{EXT_DATA_FILE:#010x}); {STANDALONE_HINT}"
        )
    if hdr.autoclear & AUTOCLEAR_DATA_FILE_RAW:
        raise _reject(f'qcow2 has the "raw external data" autoclear bit set; {STANDALONE_HINT}')
    if hdr.crypt_method or EXT_CRYPTO in exts:
        method = _CRYPT_METHODS.get(hdr.crypt_method, f"method {hdr.crypt_method}")
        raise _reject(f"qcow2 is encrypted ({method}); import an unencrypted image")
    unknown = hdr.incompatible & ~INCOMPAT_KNOWN
    if unknown:
        bits = ", ".join(str(b) for b in range(64) if unknown >> b & 1)
        raise _reject(
            f"qcow2 has unknown incompatible feature bits ({bits}); only bits 0-4 are understood"
        )
    if hdr.incompatible & INCOMPAT_CORRUPT:
        raise _reject(
            "qcow2 is marked corrupt (incompatible feature bit 1); repair it before importing"
        )
    if hdr.incompatible & INCOMPAT_DIRTY:
        raise _reject(f"qcow2 was not closed cleanly (dirty bit set); {REPAIR_HINT}")

    _check_qcow2_geometry(hdr, size)
    _check_qcow2_tables(fd, hdr, size)
    return ImageFacts(
        format="qcow2",
        virtual_size=hdr.size,
        file_size=size,
        version=hdr.version,
        cluster_size=cluster,
        incompatible_features=hdr.incompatible,
        compatible_features=hdr.compatible,
        autoclear_features=hdr.autoclear,
        header_extensions=tuple(exts),
    )


def _check_qcow2_geometry(hdr: _Qcow2Header, size: int) -> None:
    cluster = 1 << hdr.cluster_bits
    if hdr.size == 0:
        raise _implausible("virtual size is 0")
    if hdr.size % SECTOR:
        raise _implausible(f"virtual size {hdr.size} is not a multiple of {SECTOR}")
    if hdr.size > MAX_VIRTUAL_SIZE:
        raise _implausible(
            f"virtual size {hdr.size} bytes is above the {MAX_VIRTUAL_SIZE >> 40} TiB limit"
        )
    if hdr.version == 3 and not 0 <= hdr.refcount_order <= 6:
        raise _implausible(f"refcount_order {hdr.refcount_order} is outside 0..6")
    compressed = bool(hdr.incompatible & INCOMPAT_COMPRESSION)
    if hdr.compression_type not in (0, 1) or compressed != (hdr.compression_type != 0):
        raise _implausible(f"compression type {hdr.compression_type} does not match feature bit 3")

    l2_entry = 16 if hdr.incompatible & INCOMPAT_EXTENDED_L2 else 8
    l1_span = cluster * (cluster // l2_entry)
    l1_needed = -(-hdr.size // l1_span)
    if hdr.l1_size < l1_needed or hdr.l1_size * 8 > MAX_L1_BYTES:
        raise _implausible(
            f"L1 table of {hdr.l1_size} entries for a virtual size of {hdr.size} bytes"
        )
    tables = [("L1 table", hdr.l1_offset, hdr.l1_size * 8)]
    reftable_bytes = hdr.reftable_clusters * cluster
    if not 0 < reftable_bytes <= MAX_REFTABLE_BYTES:
        raise _implausible(f"refcount table of {hdr.reftable_clusters} clusters")
    tables.append(("refcount table", hdr.reftable_offset, reftable_bytes))
    if hdr.nb_snapshots > MAX_SNAPSHOTS:
        raise _implausible(f"{hdr.nb_snapshots} snapshots (qemu's limit is {MAX_SNAPSHOTS})")
    if hdr.nb_snapshots:
        # 40 bytes is the fixed part of one snapshot header; the real table is longer.
        tables.append(("snapshot table", hdr.snapshots_offset, hdr.nb_snapshots * 40))
    for what, offset, length in tables:
        if length and (offset % cluster or offset == 0):
            raise _implausible(
                f"{what} offset {offset:#x} is not a cluster boundary after the header"
            )
        if length and offset + length > size:
            raise _past_eof(what, offset, length, size)


def _check_qcow2_tables(fd: int, hdr: _Qcow2Header, size: int) -> None:
    """L2 tables and refcount blocks must start inside the file (a cut file fails here)."""
    cluster = 1 << hdr.cluster_bits
    reftable_bytes = hdr.reftable_clusters * cluster
    for what, offset, length, mask in (
        ("L2 table (from L1", hdr.l1_offset, hdr.l1_size * 8, L1_OFFSET_MASK),
        ("refcount block (from refcount table", hdr.reftable_offset, reftable_bytes, REFTABLE_MASK),
    ):
        for index, entry in enumerate(_be_u64s(os.pread(fd, length, offset))):
            if entry & mask >= size:
                raise _past_eof(f"{what} entry {index})", entry & mask, cluster, size)


def _unchanged(path: Path, facts: ImageFacts) -> None:
    st = _lstat_regular(path)
    if _identity(st) != facts.identity:
        raise _reject(
            "the file changed while it was being inspected; "
            "import from a file nothing else writes to"
        )


def _refuse_failure(exc: CommandFailed) -> ImageRejected:
    """qemu-img failing, timing out or hitting its rlimits on a hostile file is a refusal."""
    if exc.message.endswith("command not found"):
        raise exc
    detail = exc.message.removeprefix("qemu-img failed: ").removeprefix("qemu-img: ")
    return _reject(f"qemu-img cannot read the image: {detail}")


def _qemu_info(path: Path, fmt: str, qemu_img: QemuImg) -> dict[str, Any]:
    try:
        return qemu_img.info(path, fmt)
    except CommandFailed as exc:
        raise _refuse_failure(exc) from None
    except ValueError:
        raise CommandFailed("qemu-img info printed output that is not JSON") from None


def _cross_check(info: dict[str, Any], facts: ImageFacts) -> None:
    def disagree(what: str, qemu: object, ours: object) -> ImageRejected:
        return _reject(f"qemu-img disagrees with the header: {what} {qemu} (headers say {ours})")

    if info.get("format") != facts.format:
        raise disagree("format", info.get("format"), facts.format)
    backing = info.get("backing-filename") or info.get("full-backing-filename")
    if backing or "backing-filename-format" in info:
        raise _reject(
            f'qemu-img reports a backing file ("{_printable(str(backing).encode())}"); '
            + STANDALONE_HINT
        )
    if info.get("encrypted"):
        raise _reject("qemu-img reports the image is encrypted; import an unencrypted image")
    if info.get("dirty-flag"):
        raise _reject(f"qemu-img reports the dirty flag set; {REPAIR_HINT}")
    if info.get("virtual-size") != facts.virtual_size:
        raise disagree("virtual size", info.get("virtual-size"), facts.virtual_size)
    specific = info.get("format-specific") or {}
    data = specific.get("data") or {}
    if "data-file" in data or "data-file-raw" in data:
        name = _printable(str(data.get("data-file", "")).encode())
        raise _reject(f'qemu-img reports an external data file ("{name}"); {STANDALONE_HINT}')
    if facts.format != "qcow2":
        return
    if specific.get("type") != "qcow2":
        raise disagree("format-specific type", specific.get("type"), "qcow2")
    if data.get("corrupt"):  # only version 3 reports the bit at all
        raise _reject("qemu-img reports the image corrupt; repair it before importing")
    compat = {2: "0.10", 3: "1.1"}.get(facts.version or 0)
    if data.get("compat") != compat:
        raise disagree("compat", data.get("compat"), compat)
    if info.get("cluster-size") != facts.cluster_size:
        raise disagree("cluster size", info.get("cluster-size"), facts.cluster_size)


def _qemu_check(path: Path, qemu_img: QemuImg) -> tuple[int, tuple[str, ...]]:
    """Leaked clusters and warnings; refuses corruptions and failed checks."""
    try:
        res = qemu_img.check(path, "qcow2")
    except CommandFailed as exc:  # the runner raises on timeouts even with check=False
        raise _refuse_failure(exc) from None
    try:
        report: dict[str, Any] = json.loads(res.stdout) if res.stdout.strip() else {}
    except ValueError:
        report = {}
    if res.returncode == 0:
        return 0, ()
    if res.returncode == 3:
        leaks = int(report.get("leaks", 0))
        warning = (
            f"{leaks} leaked clusters (wasted space only; 'qemu-img check -r leaks' reclaims it)"
        )
        return leaks, (warning,)
    if res.returncode == 2:
        count = report.get("corruptions", "some")
        raise _reject(
            f"qemu-img check found {count} corruptions; repair the image before importing"
        )
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    last = _printable(lines[-1].encode(), 200) if lines else "no message"
    if res.returncode < 0:
        raise _reject(f"qemu-img check was killed by signal {-res.returncode} ({last})")
    raise _reject(f"qemu-img check failed with exit status {res.returncode} ({last})")


def verify(path: Path, facts: ImageFacts, qemu_img: QemuImg) -> VerifiedImage:
    """Ask qemu-img (rlimited) for the same facts as `sniff` and refuse any disagreement."""
    _unchanged(path, facts)
    info = _qemu_info(path, facts.format, qemu_img)
    _cross_check(info, facts)
    leaks, warnings = _qemu_check(path, qemu_img) if facts.format == "qcow2" else (0, ())
    _unchanged(path, facts)
    return VerifiedImage(path=path, facts=facts, leaked_clusters=leaks, warnings=warnings)


def inspect(
    path: Path, declared: str | None = None, qemu_img: QemuImg | None = None
) -> VerifiedImage:
    """The whole gate: `sniff`, then `verify`."""
    facts = sniff(path, declared)
    return verify(path, facts, qemu_img or QemuImg(Runner()))
