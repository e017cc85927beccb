"""`image box NAME --file X.box`: a recipe's image as a vagrant-libvirt box, without a boot.

For recipes whose image already is a Vagrant box inside (BOXABLE: user `vagrant` with Vagrant's
insecure key and passwordless sudo, made at build time, no cloud-init to apply a seed): the
labhost recipe of vagrant/lab/. The image is a standalone zlib-compressed qcow2 already, so the
box is the image as it is, gated like an import (imagecheck), tarred with the same metadata
`export-box` writes (box.write_box), under a `.partial` name and then linked to its name
(never replacing a file). A gallery version takes `export-box`, which boots it and adds the
user through the seed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from sigvirt.errors import Conflict, Unsupported
from sigvirt.hosts import recipes
from sigvirt.hosts.qemuimg import QemuImg
from sigvirt.vagrant import box
from sigvirt.versions import imagecheck

# The recipes whose image is ready for Vagrant as built, and the machine size their box asks for
# (a lab host runs libvirtd and, under KVM, guests of its own).
BOXABLE: dict[str, tuple[int, int]] = {"labhost": (1024, 1)}  # name: (memory MiB, vCPUs)


@dataclass(frozen=True)
class ImageBox:
    file: Path
    sha256: str
    size: int
    recipe: str
    digest: str
    image: Path
    seconds: float


def spec(r: recipes.Recipe, virtual_size: int) -> box.BoxSpec:
    """The box's metadata: the recipe's image is a Debian Vagrant knows, with bash."""
    memory, vcpus = BOXABLE[r.name]
    info = {"Author": "sigvirt image box", "Recipe": r.name, "Recipe digest": r.digest()}
    return box.BoxSpec(
        name=f"recipe {r.name} {r.digest()}",
        virtual_size=virtual_size,
        memory_mib=memory,
        vcpus=vcpus,
        info=info,
    )


def check(r: recipes.Recipe, dest: Path) -> Path:
    """Read-only: the recipe makes a box, and dest's directory exists and dest does not."""
    if r.name not in BOXABLE:
        raise Unsupported(
            f"image recipe {r.name!r} has no vagrant user built in (boxes as built: "
            f"{', '.join(sorted(BOXABLE))}); publish it as a version and use "
            "`sig image-version export-box`"
        )
    return box.destination(dest)


def write(r: recipes.Recipe, image: Path, dest: Path, qemu_img: QemuImg) -> ImageBox:
    """The box of the recipe's built image at dest (checked by `check` first)."""
    start = time.monotonic()
    target = check(r, dest)
    verified = imagecheck.inspect(image, "qcow2", qemu_img)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        sha = box.write_box(partial, image, spec(r, verified.virtual_size))
        try:
            os.link(partial, target)  # never replaces a file that appeared meanwhile
        except FileExistsError:
            raise Conflict(f"{target} appeared while the box was being made") from None
    finally:
        partial.unlink(missing_ok=True)
    seconds = round(time.monotonic() - start, 2)
    return ImageBox(target, sha, target.stat().st_size, r.name, r.digest(), image, seconds)
