"""Vagrant boxes as a version source: a vagrant-libvirt box tarball, read as hostile input.

A libvirt box is a tar (plain, gzip, bzip2 or xz) of `metadata.json` and `box.img`, maybe a
`Vagrantfile` and an `info.json`, and nothing else. The tar headers are parsed here, not by
`tarfile` (which reads a pax or GNU long-name header whole into memory, whatever size it
claims, and follows links when asked to extract). Two passes over one open file:

1. headers only: every member's type, name and size is checked — regular files at the top
   level only (no absolute path, no `..`, no link, device, fifo, sparse or long-name entry),
   only the four names above, none twice, each within its limit, box.img within the free
   space of the work directory — and metadata.json (at most 64 KiB) is read and validated.
   Nothing is written in this pass.
2. extract: box.img alone is written into the work directory, exactly the bytes its header
   declares, every header compared with the first pass (a box that changes in between is
   refused). Then box.img goes through the import gate (`imagecheck`) as any image does.

A refusal removes what was written, and the work directory if this module made it. Member
names from a box reach messages only sanitized (printable, shortened).
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import json
import lzma
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sigvirt.errors import HostAccessDenied, ImageRejected, NoSpace, NotFound, Unsupported
from sigvirt.hosts.qemuimg import QemuImg
from sigvirt.runner import Runner
from sigvirt.versions import imagecheck

BLOCK = 512
GiB = 1 << 30
METADATA, IMAGE, VAGRANTFILE, INFO = "metadata.json", "box.img", "Vagrantfile", "info.json"
MEMBERS = (METADATA, IMAGE, VAGRANTFILE, INFO)
SPACE_MARGIN = 64 << 20  # what extracting leaves free at least on the work directory's disk


class BoxRejected(ImageRejected):
    """The box file is not a libvirt box sigvirt takes (exit 9, as any refused image)."""

    template = "box rejected: {detail}"


@dataclass(frozen=True)
class BoxLimits:
    small_bytes: int = 64 << 10  # metadata.json, Vagrantfile, info.json, a pax header
    image_bytes: int = imagecheck.MAX_VIRTUAL_SIZE  # box.img: no larger than a disk may be
    headers: int = 16  # tar headers in all (members, pax headers, the ./ entry)


DEFAULT_LIMITS = BoxLimits()


@dataclass(frozen=True)
class BoxMetadata:
    """What metadata.json says (v1 format, or v2 with its one disk being box.img)."""

    provider: str
    format: str
    virtual_size_gb: int | None  # Vagrant's unit: GiB (None: a v2 box that leaves it out)


@dataclass(frozen=True)
class Box:
    image: Path  # box.img, extracted and through the import gate
    metadata: BoxMetadata
    verified: imagecheck.VerifiedImage


@dataclass(frozen=True)
class _Member:
    name: str  # one of MEMBERS, or "." for the archive's own directory entry
    size: int
    offset: int  # of its header, in the uncompressed stream: both passes must agree


# -- names and numbers from hostile headers -----------------------------------------------------
def shown(raw: str, limit: int = 60) -> str:
    """A name from a box, safe to put on one line between quotes."""
    clean = "".join(c if c.isprintable() and c not in "'\\" else "?" for c in raw)
    return clean if len(clean) <= limit else clean[:limit] + "..."


def _cstr(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _number(field: bytes, what: str) -> int:
    """A tar number: octal text, or GNU's base-256 (first byte 0x80) for sizes past 8 GiB."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    if field[:1] == b"\xff":
        raise BoxRejected(f"a tar header has a negative {what}")
    text = _cstr(field).strip(b" ")
    if text and not all(48 <= c <= 55 for c in text):
        raise BoxRejected(f"a tar header's {what} is not an octal number")
    return int(text, 8) if text else 0


_KINDS = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"6": "a fifo",
    b"7": "a contiguous file",
    b"S": "a sparse file",
    b"L": "a GNU long name",
    b"K": "a GNU long link name",
    b"V": "a volume label",
    b"M": "a multi-volume continuation",
}


def _check_name(raw: str, directory: bool) -> str:
    """The member a name denotes, or a refusal: only top-level names of a libvirt box."""
    what = f"member '{shown(raw)}'"
    if "\\" in raw or any(ord(c) < 32 for c in raw):
        raise BoxRejected(f"{what}: control characters or backslashes in its name")
    if raw.startswith("/"):
        raise BoxRejected(f"{what}: an absolute path")
    parts = raw.split("/")
    if ".." in parts:
        raise BoxRejected(f"{what}: the path leaves the box ('..')")
    parts = [p for p in parts if p not in ("", ".")]
    if directory:
        if parts:
            raise BoxRejected(f"{what}: a directory; a libvirt box has files at its top only")
        return "."
    if len(parts) != 1:
        raise BoxRejected(f"{what}: in a subdirectory; a libvirt box has files at its top only")
    if parts[0] not in MEMBERS:
        raise BoxRejected(f"{what}: not part of a libvirt box ({', '.join(MEMBERS)})")
    return parts[0]


# -- the stream ---------------------------------------------------------------------------------
class _Stream:
    """The uncompressed tar, read forward only, counting its offset."""

    def __init__(self, f: BinaryIO, name: str) -> None:
        self.f = f
        self.name = name
        self.offset = 0

    def read(self, n: int) -> bytes:
        chunks = []
        left = n
        while left:
            try:
                data = self.f.read(min(left, 1 << 20))
            except (OSError, EOFError, lzma.LZMAError) as err:
                raise BoxRejected(
                    f"{self.name}: the compressed stream is damaged ({err})"
                ) from None
            if not data:
                break
            chunks.append(data)
            left -= len(data)
        out = b"".join(chunks)
        self.offset += len(out)
        return out

    def exact(self, n: int, what: str) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise BoxRejected(f"{self.name}: the tar ends inside {what} (truncated)")
        return data

    def copy(self, n: int, sink: Callable[[bytes], object], what: str) -> None:
        """n bytes of a member to sink (or skipped: sink=len), then the block padding."""
        left = n
        while left:
            data = self.read(min(left, 1 << 20))
            if not data:
                raise BoxRejected(f"{self.name}: the tar ends inside {what} (truncated)")
            sink(data)
            left -= len(data)
        self.exact(-n % BLOCK, f"the padding of {what}")


def _decompressed(f: BinaryIO, name: str) -> BinaryIO:
    f.seek(0)
    head = f.read(265)
    f.seek(0)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(f, mode="rb")  # type: ignore[return-value]
    if head.startswith(b"BZh"):
        return bz2.BZ2File(f, mode="rb")  # type: ignore[return-value]
    if head[257:262] == b"ustar":
        return f
    if head.startswith(b"PK\x03\x04"):
        raise Unsupported(f"{name}: a zip box; sigvirt takes tar boxes (plain, gz, bz2, xz)")
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        raise Unsupported(f"{name}: a zstd-compressed box; decompress it first (zstd -d)")
    raise BoxRejected(f"{name}: not a tar archive (plain, gzip, bzip2 or xz)")


def _headers(s: _Stream, limits: BoxLimits) -> Iterator[tuple[bytes, str, int, int]]:
    """(type, name, size, header offset) of each member, pax headers applied, after checking
    the header itself; stops at the end-of-archive block (or a clean end of the stream)."""
    pax: dict[str, str] = {}
    for _count in range(limits.headers + 1):
        offset = s.offset
        block = s.read(BLOCK)
        if not block or block == bytes(BLOCK):
            return
        if len(block) != BLOCK:
            raise BoxRejected(f"{s.name}: the tar ends inside a header (truncated)")
        stored = _number(block[148:156], "checksum")
        unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
        signed = unsigned - sum(2 * c for c in block[:148] + block[156:] if c > 127)
        if stored not in (unsigned, signed):
            raise BoxRejected(f"{s.name}: a tar header at offset {offset} has a bad checksum")
        magic = block[257:263]
        if magic not in (b"ustar\x00", b"ustar "):
            raise BoxRejected(f"{s.name}: a tar header at offset {offset} is not ustar or GNU")
        kind = block[156:157]
        size = _number(block[124:136], "size")
        if kind in (b"x", b"g"):
            if size > limits.small_bytes:
                raise BoxRejected(f"{s.name}: a pax header of {size} bytes (at most "
                                  f"{limits.small_bytes})")  # fmt: skip
            data = s.exact(size, "a pax header")
            s.exact(-size % BLOCK, "the padding of a pax header")
            if kind == b"x":
                pax = _pax_records(data, s.name)
            continue
        raw_name = _cstr(block[0:100])
        if magic == b"ustar\x00" and (prefix := _cstr(block[345:500])):
            raw_name = prefix + b"/" + raw_name
        try:
            name = pax.pop("path", None) or raw_name.decode()
        except UnicodeDecodeError:
            raise BoxRejected(f"{s.name}: a member name is not UTF-8") from None
        if "size" in pax:
            size = int(pax.pop("size"))
        pax = {}
        yield kind, name, size, offset
    raise BoxRejected(f"{s.name}: more than {limits.headers} tar headers; not a libvirt box")


def _pax_records(data: bytes, name: str) -> dict[str, str]:
    """`LEN key=value\\n` records; only path and size matter here (others are ignored)."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos : pos + 1] != b"\0":
        space = data.find(b" ", pos)
        length_text = data[pos:space]
        if space < 0 or not length_text.isdigit() or int(length_text) <= space - pos + 1:
            raise BoxRejected(f"{name}: a malformed pax header")
        end = pos + int(length_text)
        record = data[space + 1 : end]
        if end > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise BoxRejected(f"{name}: a malformed pax header")
        key, _, value = record[:-1].partition(b"=")
        if key in (b"path", b"size"):
            try:
                out[key.decode()] = value.decode()
            except UnicodeDecodeError:
                raise BoxRejected(f"{name}: a pax {key.decode()} is not UTF-8") from None
        pos = end
    if "size" in out and not out["size"].isdigit():
        raise BoxRejected(f"{name}: a pax size is not a number")
    return out


def _member(kind: bytes, name: str, size: int, offset: int, limits: BoxLimits) -> _Member:
    if kind in _KINDS:
        raise BoxRejected(f"member '{shown(name)}': {_KINDS[kind]}")
    if kind not in (b"0", b"\0", b"5"):
        raise BoxRejected(f"member '{shown(name)}': unknown tar entry type {kind!r}")
    member = _check_name(name, directory=kind == b"5")
    limit = limits.image_bytes if member == IMAGE else limits.small_bytes
    if member == "." and size:
        raise BoxRejected(f"member '{shown(name)}': a directory with {size} bytes of data")
    if size > limit:
        raise BoxRejected(f"member {member}: {size} bytes, over the limit of {limit}")
    return _Member(member, size, offset)


# -- metadata.json ------------------------------------------------------------------------------
def parse_metadata(data: bytes) -> BoxMetadata:
    """metadata.json of a libvirt box: provider libvirt, format qcow2, virtual_size in GiB."""

    def refuse(why: str) -> BoxRejected:
        return BoxRejected(f"metadata.json: {why}")

    def no_constants(name: str) -> object:
        raise refuse(f"{name} is not JSON")

    try:
        doc = json.loads(data.decode(), parse_constant=no_constants)
    except (UnicodeDecodeError, ValueError) as err:
        raise refuse(f"not valid JSON ({shown(str(err), 80)})") from None
    if not isinstance(doc, dict):
        raise refuse("not a JSON object")
    provider = doc.get("provider")
    if provider != "libvirt":
        said = f"'{shown(provider)}'" if isinstance(provider, str) else "no provider"
        raise refuse(f"provider is {said}; sigvirt takes libvirt boxes")
    disks = doc.get("disks")
    fmt = doc.get("format")
    if disks is not None:
        # v2: a list of disks; a version is one disk, so only [{"path": "box.img"}] is taken
        if not (isinstance(disks, list) and len(disks) == 1 and isinstance(disks[0], dict)):
            raise Unsupported("metadata.json: a box with several disks; a version has one")
        if disks[0].get("path") != IMAGE:
            raise refuse(f"its disk is not {IMAGE}")
        fmt = disks[0].get("format", fmt or "qcow2")
    if fmt != "qcow2":
        said = f"'{shown(fmt)}'" if isinstance(fmt, str) else "missing"
        raise refuse(f"format is {said}; vagrant-libvirt boxes are qcow2")
    size = doc.get("virtual_size")
    if size is None and disks is not None:
        return BoxMetadata("libvirt", "qcow2", None)
    # Vagrant writes whole GiB, some tools a float: a number within a disk's range.
    if isinstance(size, bool) or not isinstance(size, int | float) or not 0 < size <= 65536:
        raise refuse("virtual_size must be a number of GiB from 1 to 65536")
    return BoxMetadata("libvirt", "qcow2", int(-(-size // 1)))


# -- the two passes -----------------------------------------------------------------------------
def _open_box(path: Path) -> tuple[BinaryIO, os.stat_result]:
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        raise NotFound(f"box file not found: {path}") from None
    except PermissionError:
        raise HostAccessDenied(f"cannot read box file {path}: permission denied") from None
    if stat.S_ISLNK(before.st_mode) or not stat.S_ISREG(before.st_mode):
        raise BoxRejected(f"{path} is not a regular file (a link, device or directory)")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise HostAccessDenied(f"cannot read box file {path}: permission denied") from None
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise BoxRejected(f"{path} was replaced while it was being opened")
    return os.fdopen(fd, "rb"), st


def image_bytes_allowed(meta: BoxMetadata, limits: BoxLimits) -> int:
    """The most bytes a box.img may have: a qcow2 of virtual_size GiB holds at most that
    much data plus its tables (L2 and refcounts: well under 1/64 of it), whatever its
    compression; a v2 box without virtual_size gets the general limit."""
    if meta.virtual_size_gb is None:
        return limits.image_bytes
    virtual = meta.virtual_size_gb * GiB
    return min(limits.image_bytes, virtual + virtual // 64 + (16 << 20))


def _check_image_size(image: _Member, meta: BoxMetadata, limits: BoxLimits) -> None:
    allowed = image_bytes_allowed(meta, limits)
    if image.size > allowed:
        raise BoxRejected(
            f"member {IMAGE}: {image.size} bytes, more than a disk of "
            f"{meta.virtual_size_gb} GiB (metadata.json) can take ({allowed})"
        )


def _scan(f: BinaryIO, name: str, limits: BoxLimits) -> tuple[list[_Member], bytes, BoxMetadata]:
    """Pass 1: every header checked, metadata.json read and parsed, box.img's declared size
    checked against it (before its data is read when metadata.json comes first, as boxes
    have it); nothing written."""
    s = _Stream(_decompressed(f, name), name)
    members: list[_Member] = []
    seen: set[str] = set()
    metadata = b""
    meta: BoxMetadata | None = None
    for kind, raw, size, offset in _headers(s, limits):
        m = _member(kind, raw, size, offset, limits)
        if m.name != "." and m.name in seen:
            raise BoxRejected(f"member {m.name} appears twice")
        seen.add(m.name)
        members.append(m)
        if m.name == METADATA:
            metadata = s.exact(size, METADATA)
            s.exact(-size % BLOCK, f"the padding of {METADATA}")
            meta = parse_metadata(metadata)
        else:
            if m.name == IMAGE and meta is not None:
                _check_image_size(m, meta, limits)
            s.copy(size, len, m.name)
    for required in (METADATA, IMAGE):
        if required not in seen:
            raise BoxRejected(f"{name}: no {required}; not a libvirt box")
    assert meta is not None
    _check_image_size(next(m for m in members if m.name == IMAGE), meta, limits)
    return members, metadata, meta


def _extract(
    f: BinaryIO, name: str, limits: BoxLimits, first: list[_Member], metadata: bytes, dfd: int
) -> None:
    """Pass 2: the same headers again, box.img written (exactly its declared bytes)."""
    s = _Stream(_decompressed(f, name), name)
    again: list[_Member] = []
    for kind, raw, size, offset in _headers(s, limits):
        m = _member(kind, raw, size, offset, limits)
        i = len(again)
        if i >= len(first) or first[i] != m:
            raise BoxRejected(f"{name} changed while it was being read")
        again.append(m)
        if m.name == METADATA:
            if s.exact(size, METADATA) != metadata:
                raise BoxRejected(f"{name} changed while it was being read")
            s.exact(-size % BLOCK, f"the padding of {METADATA}")
        elif m.name == IMAGE:
            fd = os.open(IMAGE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                         dir_fd=dfd)  # fmt: skip
            with os.fdopen(fd, "wb") as out:
                s.copy(size, out.write, IMAGE)
                out.flush()
                os.fsync(out.fileno())
        else:
            s.copy(size, len, m.name)
    if len(again) != len(first):
        raise BoxRejected(f"{name} changed while it was being read")


def _room(workdir: Path, image_bytes: int) -> None:
    vfs = os.statvfs(workdir)
    free = vfs.f_bavail * vfs.f_frsize
    if free < image_bytes + SPACE_MARGIN:
        raise NoSpace(
            f"extracting box.img ({image_bytes} bytes) needs more than the {free} bytes free "
            f"under {workdir}"
        )


def read_box(
    path: Path,
    workdir: Path,
    qemu_img: QemuImg | None = None,
    limits: BoxLimits = DEFAULT_LIMITS,
) -> Box:
    """Check a box, extract its box.img into workdir and gate it; refusals leave nothing.

    workdir: a directory that doesn't exist yet (made here, 0700, removed on a refusal) or
    an empty one (emptied again on a refusal)."""
    made = not workdir.exists()
    if not made and (not workdir.is_dir() or workdir.is_symlink() or any(workdir.iterdir())):
        raise BoxRejected(f"work directory {workdir} is not a new or empty directory")
    f, st = _open_box(path)
    with contextlib.ExitStack() as stack:
        stack.enter_context(f)
        name = path.name
        members, metadata_bytes, metadata = _scan(f, name, limits)
        image = next(m for m in members if m.name == IMAGE)
        if made:
            workdir.mkdir(mode=0o700)
        try:
            _room(workdir, image.size)
            dfd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            stack.callback(os.close, dfd)
            try:
                _extract(f, name, limits, members, metadata_bytes, dfd)
            except OSError as err:
                if err.errno == errno.ENOSPC:
                    raise NoSpace(
                        f"no space left on device extracting box.img into {workdir}"
                    ) from None
                raise
            now = os.fstat(f.fileno())
            if (now.st_size, now.st_mtime_ns, now.st_ctime_ns) != (
                st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            ):  # fmt: skip
                raise BoxRejected(f"{name} changed while it was being read")
            img = workdir / IMAGE
            verified = imagecheck.inspect(img, "qcow2", qemu_img or QemuImg(Runner()))
            want = metadata.virtual_size_gb
            if want is not None and want * GiB < verified.virtual_size:
                raise BoxRejected(
                    f"metadata.json says virtual_size {want} GiB, but box.img is "
                    f"{verified.virtual_size} bytes: the disk would be cut short"
                )
        except BaseException:
            _clean(workdir, made)
            raise
    return Box(img, metadata, verified)


def _clean(workdir: Path, made: bool) -> None:
    if made:
        shutil.rmtree(workdir, ignore_errors=True)
        return
    with contextlib.suppress(FileNotFoundError):
        (workdir / IMAGE).unlink()


def extract_image(path: Path, workdir: Path) -> Path:
    """The box's box.img, checked and extracted into workdir (see read_box)."""
    return read_box(path, workdir).image
