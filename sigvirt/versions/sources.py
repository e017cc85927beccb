"""Where a new version's bytes come from: a file, a pool volume, a VM's disk or another
version; parsed once, then gated and converted into a standalone qcow2."""

from __future__ import annotations

import contextlib
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sigvirt.catalog import latest, names
from sigvirt.catalog.records import ImageVersion
from sigvirt.context import Context
from sigvirt.errors import Conflict, InvalidName, NotFound, Unsupported
from sigvirt.hosts import streams
from sigvirt.versions import boxfile, imagecheck, transfer
from sigvirt.versions.transfer import ChecksumMismatch

SourceKind = Literal["file", "volume", "vm", "version", "box"]


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    ref: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.ref}"


def parse_source(text: str) -> Source:
    """A file, `pool/volume`, `vm:NAME`, another version (`G/D/V` or an Azure id) or a
    vagrant-libvirt box (`box:FILE.box`). Explicit prefixes (`file:`, `volume:`, `vm:`,
    `version:`) settle any ambiguity."""
    for kind in ("file", "volume", "vm", "version", "box"):
        if text.startswith(kind + ":"):
            return Source(kind, text[len(kind) + 1 :])
    if text.startswith("/subscriptions/"):
        return Source("version", text)
    if os.path.lexists(text):
        return Source("file", text)
    parts = text.split("/")
    if len(parts) == 3:
        with contextlib.suppress(InvalidName):
            names.parse_image_ref(text)
            return Source("version", text)
    if len(parts) == 2 and all(parts) and not text.startswith("."):
        return Source("volume", text)
    raise NotFound(f"--source {text}: no such file, pool/volume, vm:NAME or image version")


def resolve_source(ctx: Context, text: str) -> tuple[Source, ImageVersion | None]:
    """The source as it will be read, and the version it copies (for a version source):
    `G/D` names the latest version of that definition, resolved now and recorded."""
    src = parse_source(text)
    if src.kind == "volume" and _names_definition(ctx, src.ref):
        src = Source("version", src.ref)
    if src.kind != "version":
        return src, None
    copy_of = latest.resolve(ctx.store, names.parse_image_ref(src.ref))
    if not copy_of.published_ok:
        raise Conflict(f"--source {src.ref}: version {copy_of.ref} is not published")
    return Source("version", copy_of.ref), copy_of


def _names_definition(ctx: Context, ref: str) -> bool:
    g, _, d = ref.partition("/")
    try:
        names.gallery_name(g)
        names.definition_name(d)
        ctx.store.get_definition(g, d)
    except (InvalidName, NotFound):
        return False
    return True


def size_hint(ctx: Context, src: Source, copy_of: ImageVersion | None, region: str) -> int:
    """About how many bytes importing `src` writes (its allocated bytes), for the free-space
    check; 0 when that isn't known cheaply (a VM's disk chain)."""
    try:
        if copy_of is not None:
            return copy_of.allocated_size
        if src.kind in ("file", "box"):
            return os.stat(src.ref).st_blocks * 512
        if src.kind == "volume":
            pool, _, vol = src.ref.partition("/")
            return ctx.hv(region).volume(pool, vol).allocation
    except (OSError, NotFound):
        pass  # the import itself says what is wrong with the source
    return 0


@dataclass(frozen=True)
class Imported:
    sha256: str
    virtual_size: int
    allocated_size: int
    warnings: tuple[str, ...]


def _local_source_path(
    ctx: Context, src: Source, region: str, staging: Path, live: bool = False
) -> tuple[Path, str | None]:
    """A local file qemu-img can read for this source, and the format to declare (None = detect)."""
    if src.kind == "file":
        return Path(src.ref), None
    if src.kind == "box":
        # the tarball is checked member by member, box.img alone extracted and gated
        return boxfile.read_box(Path(src.ref), staging, ctx.qemu_img).image, "qcow2"
    hv = ctx.hv(region)
    if src.kind == "volume":
        pool, _, vol = src.ref.partition("/")
        v = hv.volume(pool, vol)
        if hv.is_local:
            return v.path, None
        streams.download_file(v, staging)
        return staging, None
    if src.kind == "vm":
        return _vm_disk(ctx, src.ref, region, staging if live else None), "vm"
    raise AssertionError(src.kind)


# A running VM's disk is copied by libvirt's backup job at QEMU's pace; this is only the bound
# after which a stuck job is given up.
LIVE_CAPTURE_TIMEOUT = 3600.0


def _vm_disk(ctx: Context, name: str, region: str, live_copy: Path | None = None) -> Path:
    """The VM's OS disk to capture. A running VM is refused, unless `live_copy` is given
    (a specialized definition: the VM's identity is the image): then libvirt's push backup
    writes a point-in-time copy of the running disk there (crash-consistent, as a power cut
    would leave it: the guest's journal replays at the copy's first boot)."""
    hv = ctx.hv(region)
    if not hv.is_local:
        raise Unsupported(f"vm:{name}: capturing a VM's disk works on local regions only")
    dom = hv.domain(name)
    running = dom.is_active()
    if running and live_copy is None:
        raise Conflict(
            f"vm:{name} is running; stop it first (sigvirt vm stop --name {name}): a "
            "generalized image is captured from a stopped VM (a specialized one may run)"
        )
    root = ET.fromstring(dom.xml(inactive=not running))
    targets = [t.get("dev", "") for t in root.findall("./devices/disk/target")]
    for disk in root.findall("./devices/disk[@device='disk']"):
        src = disk.find("source")
        driver = disk.find("driver")
        target = disk.find("target")
        if (
            src is not None
            and src.get("file")
            and (driver is None or driver.get("type") == "qcow2")
        ):
            if not running or live_copy is None or target is None:
                return Path(src.get("file", ""))
            dev = target.get("dev", "")
            dom.backup_begin(dev, live_copy, skip=tuple(t for t in targets if t != dev))
            dom.backup_wait(LIVE_CAPTURE_TIMEOUT)
            return live_copy
    raise NotFound(f"vm:{name} has no qcow2 file disk to capture")


def import_into(
    ctx: Context, src: Source, declared: str | None, region: str, partial: Path,
    *, live: bool = False,
) -> Imported:  # fmt: skip
    """Gate the source, convert it to a standalone qcow2 at `partial` (a local path). `live`:
    a `vm:NAME` source may be running (a specialized definition's version)."""
    staging = ctx.tmpdir / f".sigvirt-staging-{os.getpid()}-{partial.name}"
    try:
        path, detected = _local_source_path(ctx, src, region, staging, live)
        if detected == "vm":
            # A VM's disk is an overlay: flatten the chain libvirt runs it with, then gate
            # the standalone result like any user image.
            ctx.qemu_img.convert(path, "qcow2", partial, "qcow2")
            warnings: tuple[str, ...] = ()
        else:
            verified = imagecheck.inspect(path, detected or declared, ctx.qemu_img)
            ctx.qemu_img.convert(path, verified.format, partial, "qcow2")
            # convert opened the path again: refuse unless it still names the file the gate
            # passed (a swap to a qcow2 with a backing file would copy that file's bytes).
            imagecheck.verify(path, verified.facts, ctx.qemu_img)
            warnings = verified.warnings
        final = imagecheck.inspect(partial, "qcow2", ctx.qemu_img)
        sha = transfer.sha256_file(partial)
        st = partial.stat()
        return Imported(sha, final.virtual_size, st.st_blocks * 512, warnings + final.warnings)
    finally:
        if staging.is_dir() and not staging.is_symlink():
            shutil.rmtree(staging, ignore_errors=True)  # a box's work directory
        else:
            staging.unlink(missing_ok=True)


def copy_version(ctx: Context, other: ImageVersion, dest: Path) -> Imported:
    """Another version's bytes, from one of its completed replicas (already gated)."""
    replicas = other.completed_replicas()
    if not replicas:
        raise NotFound(f"--source {other.ref}: version {other.ref} has no completed replica")
    local = [r for r in replicas if ctx.regions.region(r.location).is_local]
    if local:
        result = transfer.local_copy(Path(local[0].path), dest)
    else:
        r = replicas[0]
        result = streams.download_file(ctx.hv(r.location).volume(r.pool, r.volume), dest)
    if result.sha256 != other.sha256:
        raise ChecksumMismatch(volume=dest.name, got=result.sha256, want=other.sha256)
    return Imported(result.sha256, other.virtual_size, dest.stat().st_blocks * 512, ())
