"""Guest image recipes under images/: built from Debian packages, cached by a hash of the recipe.

A recipe is a directory images/NAME/ with a build.sh; the recipes share shell functions in
images/lib/, so the cache key covers both the recipe's own files and the shared library. A
recipe may build on another one's files (BUILDS_ON): the key covers those too.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from sigvirt.errors import NotFound
from sigvirt.runner import Runner

DEFAULT_CACHE = Path(os.environ.get("SIGVIRT_IMAGE_CACHE", "/var/cache/sigvirt/images"))
# The recipes whose files a recipe's build.sh uses besides its own and images/lib/: labhost
# (a lab host for vagrant/lab/) is the debian recipe's system without cloud-init, plus libvirt;
# tiny-arm64 is the tiny guest (tiny/files/) from Debian's arm64 packages; debian-sb is the
# debian recipe's system booting through shim + signed GRUB + the signed kernel (Secure Boot).
BUILDS_ON: dict[str, tuple[str, ...]] = {
    "labhost": ("debian",),
    "tiny-arm64": ("tiny",),
    "debian-sb": ("debian",),
}


def recipes_dir() -> Path:
    """images/ of the checkout (or SIGVIRT_IMAGES_DIR for an installed copy)."""
    env = os.environ.get("SIGVIRT_IMAGES_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "images"


@dataclass(frozen=True)
class Recipe:
    name: str
    directory: Path

    @property
    def script(self) -> Path:
        return self.directory / "build.sh"

    @property
    def lib(self) -> Path:
        """The shared library of the recipes (images/lib/), sourced by every build.sh."""
        return self.directory.parent / "lib"

    @property
    def builds_on(self) -> tuple[Path, ...]:
        """The other recipes' directories this one's build.sh uses (BUILDS_ON)."""
        return tuple(self.directory.parent / name for name in BUILDS_ON.get(self.name, ()))

    def digest(self) -> str:
        """Hash of every file of the recipe, of the recipes it builds on and of the shared
        library (names and contents): a changed recipe, or a change in images/lib/ or in a
        recipe it builds on, rebuilds.

        Recipe files are named relative to the recipe directory, library files and those of
        the recipes it builds on relative to images/ (lib/..., debian/...). A missing lib/ adds
        nothing.
        """
        h = hashlib.sha256()
        files = [(p, p.relative_to(self.directory)) for p in _files(self.directory)]
        for directory in (*self.builds_on, self.lib):
            files += [(p, p.relative_to(directory.parent)) for p in _files(directory)]
        for path, name in files:
            h.update(str(name).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
        return h.hexdigest()[:16]


def _files(directory: Path) -> list[Path]:
    """The files under directory (recursively, sorted; none if it does not exist), without
    __pycache__."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def recipe(name: str, root: Path | None = None) -> Recipe:
    directory = (root or recipes_dir()) / name
    r = Recipe(name, directory)
    if not r.script.is_file():
        available = sorted(p.parent.name for p in (root or recipes_dir()).glob("*/build.sh"))
        raise NotFound(f"image recipe {name!r} not found (available: {', '.join(available)})")
    return r


def cached_path(r: Recipe, cache: Path = DEFAULT_CACHE) -> Path:
    return cache / f"{r.name}-{r.digest()}.qcow2"


def ensure_built(r: Recipe, runner: Runner, cache: Path = DEFAULT_CACHE) -> Path:
    """The cached image for this recipe, building it first when the recipe changed.

    Built into a temporary name and renamed, under a lock, so a killed or concurrent build
    never leaves a half image under the final name.
    """
    cache.mkdir(parents=True, exist_ok=True)
    final = cached_path(r, cache)
    if final.exists():
        return final
    with open(cache / f".{r.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.exists():
            return final
        tmp = final.with_name(f".{final.name}.building")
        tmp.unlink(missing_ok=True)
        try:
            runner.run(["bash", r.script, tmp], timeout=1800)
            os.chmod(tmp, 0o644)
            os.rename(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        # Images of earlier versions of the recipe are never used again (NAME-DIGEST only:
        # tiny's are not tiny-arm64's).
        for old in cache.glob(f"{r.name}-*.qcow2"):
            digest = old.name.removeprefix(f"{r.name}-").removesuffix(".qcow2")
            if old != final and len(digest) == 16 and "-" not in digest:
                old.unlink(missing_ok=True)
    return final
