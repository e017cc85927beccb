"""Guest image recipes under images/: built from Debian packages, cached by a hash of the recipe."""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from sigvirt.errors import NotFound
from sigvirt.runner import Runner

DEFAULT_CACHE = Path(os.environ.get("SIGVIRT_IMAGE_CACHE", "/var/cache/sigvirt/images"))


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

    def digest(self) -> str:
        """Hash of every file of the recipe (names and contents): a changed recipe rebuilds."""
        h = hashlib.sha256()
        for path in sorted(p for p in self.directory.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts:
                continue
            h.update(str(path.relative_to(self.directory)).encode() + b"\0")
            h.update(path.read_bytes() + b"\0")
        return h.hexdigest()[:16]


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
        # Images of earlier versions of the recipe are never used again.
        for old in cache.glob(f"{r.name}-*.qcow2"):
            if old != final:
                old.unlink(missing_ok=True)
    return final
