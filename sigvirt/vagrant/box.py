"""Writing a vagrant-libvirt box: metadata.json, the box's Vagrantfile, info.json and box.img
in one tar, hashed as it is written.

The tar is not compressed: box.img is a qcow2 whose clusters are already zlib-compressed,
and `vagrant box add` takes plain tars as well as gzipped ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sigvirt.catalog import names
from sigvirt.catalog.records import Firmware
from sigvirt.errors import Conflict, NotFound
from sigvirt.versions import boxfile

GiB = 1 << 30
# Where Debian's ovmf puts the firmware vagrant-libvirt needs for a UEFI (V2) box.
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"


@dataclass(frozen=True)
class BoxSpec:
    """What a box says about itself beyond its disk."""

    name: str  # the version it came from: G/D/V
    virtual_size: int  # bytes
    memory_mib: int = 512
    vcpus: int = 1
    firmware: Firmware = "bios"
    shell: str = ""  # config.ssh.shell when the image has no bash ("sh"); "" = Vagrant's
    guest: str = ""  # config.vm.guest for an OS Vagrant doesn't detect ("linux"); "" = detect
    info: dict[str, Any] = field(default_factory=dict)  # `vagrant box list -i` shows it


def metadata(spec: BoxSpec) -> dict[str, Any]:
    """vagrant-libvirt's v1 box format: provider, format and the disk's size in whole GiB."""
    return {
        "provider": "libvirt",
        "format": "qcow2",
        "virtual_size": max(1, -(-spec.virtual_size // GiB)),
    }


def vagrantfile(spec: BoxSpec) -> str:
    """The box's own Vagrantfile: the provider defaults this image needs on a libvirt host.

    Networking is the lab Vagrantfile's business (vagrant/Vagrantfile): a box can't know
    which loopback port its machine gets."""
    lines = [
        f"# Written by sigvirt for image version {spec.name}: the defaults this box needs.",
        'Vagrant.configure("2") do |config|',
        "  # neither rsync nor NFS is assumed in the guest; a Vagrantfile may turn it back on",
        '  config.vm.synced_folder ".", "/vagrant", disabled: true',
    ]
    if spec.shell:
        lines.append(f'  config.ssh.shell = "{spec.shell}"  # the image has no bash')
    if spec.guest:
        lines.append(
            f"  config.vm.guest = :{spec.guest}  # an OS Vagrant does not detect by itself"
        )
    lines += [
        "  config.vm.provider :libvirt do |libvirt|",
        '    libvirt.disk_bus = "virtio"',
        '    libvirt.nic_model_type = "virtio"',
        f"    libvirt.memory = {spec.memory_mib}",
        f"    libvirt.cpus = {spec.vcpus}",
        '    libvirt.graphics_type = "none"',
        '    libvirt.video_type = "none"',
    ]
    if spec.firmware == "uefi":
        lines.append(f'    libvirt.loader = "{OVMF_CODE}"  # a V2 (UEFI) image definition')
    lines += ["  end", "end", ""]
    return "\n".join(lines)


class _Hashing(io.RawIOBase):
    """A file being written, hashed on the way (the box's sha256 without reading it back)."""

    def __init__(self, f: io.BufferedWriter) -> None:
        self.f = f
        self.h = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.h.update(view)
        self.f.write(view)
        return len(view)


def _small(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def destination(path: Path) -> Path:
    """`--file` of a box to make: its directory exists and the file does not (a box is
    never overwritten); the absolute path."""
    dest = Path(os.path.abspath(path))
    if not dest.parent.is_dir():
        raise NotFound(f"--file {names.shorten(str(path), 200)}: no such directory {dest.parent}")
    if os.path.lexists(dest):
        raise Conflict(
            f"--file {names.shorten(str(path), 200)} already exists",
            hint="remove it or name another file: a box is never overwritten",
        )
    return dest


def write_box(dest: Path, image: Path, spec: BoxSpec) -> str:
    """The box at dest (created, never replaced: O_EXCL); its sha256."""
    mtime = int(time.time())
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as raw:
        hashing = _Hashing(raw)
        with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.GNU_FORMAT) as tar:
            _small(tar, boxfile.METADATA, json.dumps(metadata(spec), indent=2).encode(), mtime)
            _small(tar, boxfile.VAGRANTFILE, vagrantfile(spec).encode(), mtime)
            if spec.info:
                _small(tar, boxfile.INFO, json.dumps(spec.info, indent=2).encode(), mtime)
            info = tar.gettarinfo(str(image), arcname=boxfile.IMAGE)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o644
            with open(image, "rb") as img:
                tar.addfile(info, img)
        raw.flush()
        os.fsync(raw.fileno())
    return hashing.h.hexdigest()
