"""The gallery store: one directory per gallery, a JSON file per resource.

    ROOT/G/gallery.json
    ROOT/G/images/D/definition.json
    ROOT/G/images/D/versions/1.0.2.json

Every write is atomic (temp file, fsync, rename, fsync of the directory) and made under a
file lock, so the metadata always parses and concurrent writers serialize. Each resource
has its own file and directory, so a gallery, a definition and a version can carry
different Unix groups and ACLs.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sigvirt.catalog import names
from sigvirt.catalog.fileio import (
    DIR_MODE,
    FILE_MODE,
    access_error,
    atomic_write,
    file_lock,
    fsync_dir,
    read_bytes,
    remove_tree,
)
from sigvirt.catalog.policy import Caller, Policy, Role, can_see, require, role_of
from sigvirt.catalog.records import Definition, Gallery, ImageVersion, from_dict, to_dict
from sigvirt.errors import (
    Conflict,
    ExitCode,
    HasDependents,
    HostAccessDenied,
    NotFound,
    PermissionRefused,
    SigvirtError,
)

T = TypeVar("T")


class CorruptRecord(SigvirtError):
    template = "metadata file {path} is unreadable: {detail}"
    exit_code = ExitCode.CORRUPT_METADATA


class GalleryStore:
    """The files of the catalog. With a caller, every method first checks that caller's role
    (from the gallery's access.json); without one (root's own tools, tests) it doesn't."""

    def __init__(self, root: Path, caller: Caller | None = None) -> None:
        self.root = root
        self.caller = caller
        self._policies: dict[str, Policy] = {}

    # -- sharing ----------------------------------------------------------------------------
    def policy(self, g: str) -> Policy:
        if g not in self._policies:
            path = self.gallery_dir(g) / "access.json"
            try:
                self._policies[g] = self._read(Policy, path, f"gallery {g}")
            except NotFound:
                if not (self.gallery_dir(g) / "gallery.json").exists():
                    raise
                self._policies[g] = Policy(g)
            except HostAccessDenied:
                raise PermissionRefused(
                    f"permission denied: you have no access to gallery {g}"
                ) from None
        return self._policies[g]

    def save_policy(self, policy: Policy) -> None:
        path = self.gallery_dir(policy.gallery) / "access.json"
        try:
            self._write(path, policy)
        except HostAccessDenied:
            raise PermissionRefused(
                f"permission denied: only owners of gallery {policy.gallery} change its sharing"
            ) from None
        self._policies[policy.gallery] = policy

    def require(self, g: str, role: Role, scope: str, action: str) -> None:
        if self.caller is not None:
            require(self.policy(g), self.caller, role, scope, action)

    def _sees(self, g: str, scope: str = "") -> bool:
        if self.caller is None or self.caller.is_root:
            return True
        try:
            return can_see(self.policy(g), self.caller, scope)
        except PermissionRefused:
            return False

    def _need_see(self, g: str, scope: str = "") -> None:
        if not self._sees(g, scope):
            self.require(g, "reader", scope, "read")

    # -- paths ------------------------------------------------------------------------------
    def gallery_dir(self, g: str) -> Path:
        return self.root / names.gallery_name(g)

    def definition_dir(self, g: str, d: str) -> Path:
        return self.gallery_dir(g) / "images" / names.definition_name(d)

    def versions_dir(self, g: str, d: str) -> Path:
        return self.definition_dir(g, d) / "versions"

    def version_path(self, g: str, d: str, v: str) -> Path:
        return self.versions_dir(g, d) / f"{names.Version.parse(v)}.json"

    def version_op_lock(self, g: str, d: str, v: str) -> Path:
        """Held for the whole of a long operation on one version (import, replication)."""
        return self.versions_dir(g, d) / f".{v}.op"

    @contextlib.contextmanager
    def version_operation(
        self, g: str, d: str, v: str, busy: Callable[[], SigvirtError] | None = None
    ) -> Iterator[None]:
        """Hold the version's op lock for a long operation. While another process holds it,
        raise `busy()` (by default a Conflict saying the version is busy)."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(file_lock(self.version_op_lock(g, d, v), blocking=False))
            except Conflict:
                if busy is not None:
                    raise busy() from None
                raise Conflict(
                    f"image version {g}/{d}/{v} is busy: another sigvirt process is creating, "
                    "replicating or deleting it"
                ) from None
            yield

    # -- generic record IO ------------------------------------------------------------------
    def _read(self, cls: type[T], path: Path | str, what: str) -> T:
        try:
            data = json.loads(read_bytes(path))
        except FileNotFoundError:
            raise NotFound(f"{what} not found") from None
        except NotADirectoryError:
            raise NotFound(f"{what} not found") from None
        except OSError as err:
            raise access_error(path, err) from None
        except ValueError as err:
            raise CorruptRecord(str(err), path=path) from None
        try:
            return from_dict(cls, data)
        except (TypeError, ValueError) as err:
            raise CorruptRecord(str(err), path=path) from None

    def _write(self, path: Path, record: Any) -> None:
        data = json.dumps(to_dict(record), indent=2, sort_keys=True).encode() + b"\n"
        try:
            atomic_write(path, data)
        except OSError as err:
            raise access_error(path, err) from None

    def _mkdir_locked(self, path: Path) -> None:
        """A resource directory with its lock file, so later refused commands write nothing."""
        self._mkdir(path)
        try:
            os.close(os.open(path / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE))
        except OSError as err:
            raise access_error(path / ".lock", err) from None

    def _mkdir(self, path: Path) -> None:
        try:
            path.mkdir(mode=DIR_MODE)
            os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask
        except FileExistsError:
            pass
        except OSError as err:
            raise access_error(path, err) from None

    def ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise access_error(self.root, err) from None

    # -- galleries --------------------------------------------------------------------------
    def get_gallery(self, g: str) -> Gallery:
        self._need_see(g)
        return self._read(Gallery, self.gallery_dir(g) / "gallery.json", f"gallery {g}")

    def list_galleries(self) -> list[Gallery]:
        if not self.root.is_dir():
            return []
        out = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.is_dir() and not entry.name.startswith("."):
                with contextlib.suppress(NotFound, HostAccessDenied, PermissionRefused):
                    out.append(self.get_gallery(entry.name))
        return out

    def create_gallery(self, rec: Gallery) -> Gallery:
        self.ensure_root()
        with file_lock(self.root / ".lock"):
            gdir = self.gallery_dir(rec.name)
            if (gdir / "gallery.json").exists():
                raise Conflict(f"gallery {rec.name} already exists")
            self._mkdir_locked(gdir)
            self._mkdir_locked(gdir / "images")
            self._write(gdir / "gallery.json", rec)
        return rec

    def update_gallery(self, g: str, change: Callable[[Gallery], Gallery]) -> Gallery:
        self.get_gallery(g)  # NotFound before a lock file is made for it
        self.require(g, "owner", "", "update")
        with file_lock(self.gallery_dir(g) / ".lock"):
            rec = change(self.get_gallery(g))
            self._write(self.gallery_dir(g) / "gallery.json", rec)
        return rec

    def delete_gallery(self, g: str) -> None:
        self.get_gallery(g)
        self.require(g, "owner", "", "delete")
        with file_lock(self.root / ".lock"), file_lock(self.gallery_dir(g) / ".lock"):
            defs = [d.name for d in self.list_definitions(g)]
            if defs:
                raise HasDependents(
                    f"gallery {g} still has image definitions: {', '.join(defs)}; delete them first"
                )
            gdir = self.gallery_dir(g)
            (gdir / "gallery.json").unlink()
            remove_tree(gdir)

    # -- definitions ------------------------------------------------------------------------
    def get_definition(self, g: str, d: str) -> Definition:
        path = self.definition_dir(g, d) / "definition.json"
        self._need_see(g, d)
        try:
            return self._read(Definition, path, f"image definition {g}/{d}")
        except NotFound:
            self.get_gallery(g)  # say which level is missing
            raise

    def list_definitions(self, g: str) -> list[Definition]:
        images = self.gallery_dir(g) / "images"
        if not images.is_dir():
            self.get_gallery(g)
            return []
        out = []
        for entry in sorted(os.scandir(images), key=lambda e: e.name):
            if entry.is_dir() and not entry.name.startswith("."):
                with contextlib.suppress(NotFound, HostAccessDenied, PermissionRefused):
                    out.append(self.get_definition(g, entry.name))
        return out

    def create_definition(self, rec: Definition) -> Definition:
        self.get_gallery(rec.gallery)
        self.require(rec.gallery, "contributor", "", "create image definitions in")
        with file_lock(self.gallery_dir(rec.gallery) / "images" / ".lock"):
            ddir = self.definition_dir(rec.gallery, rec.name)
            if (ddir / "definition.json").exists():
                raise Conflict(f"image definition {rec.gallery}/{rec.name} already exists")
            triple = (rec.publisher.lower(), rec.offer.lower(), rec.sku.lower())
            for other in self.list_definitions(rec.gallery):
                if (other.publisher.lower(), other.offer.lower(), other.sku.lower()) == triple:
                    raise Conflict(
                        f"publisher/offer/sku {rec.publisher}/{rec.offer}/{rec.sku} is already "
                        f"used by image definition {other.name} in gallery {rec.gallery}"
                    )
            self._mkdir_locked(ddir)
            self._mkdir(ddir / "versions")
            self._write(ddir / "definition.json", rec)
        return rec

    def update_definition(
        self, g: str, d: str, change: Callable[[Definition], Definition]
    ) -> Definition:
        self.get_definition(g, d)  # NotFound before a lock file is made for it
        self.require(g, "contributor", d, "update")
        with file_lock(self.definition_dir(g, d) / ".lock"):
            rec = change(self.get_definition(g, d))
            self._write(self.definition_dir(g, d) / "definition.json", rec)
        return rec

    def delete_definition(self, g: str, d: str) -> None:
        self.get_definition(g, d)
        self.require(g, "owner", d, "delete")
        with (
            file_lock(self.gallery_dir(g) / "images" / ".lock"),
            file_lock(self.definition_dir(g, d) / ".lock"),
        ):
            versions = [v.name for v in self.list_versions(g, d)]
            if versions:
                raise HasDependents(
                    f"image definition {g}/{d} still has versions: {', '.join(versions)}; "
                    "delete them first"
                )
            ddir = self.definition_dir(g, d)
            (ddir / "definition.json").unlink()
            remove_tree(ddir)

    # -- versions ---------------------------------------------------------------------------
    def get_version(self, g: str, d: str, v: str) -> ImageVersion:
        self.require(g, "reader", f"{d}/{names.Version.parse(v)}", "read")
        try:
            return self._read(
                ImageVersion, self.version_path(g, d, v), f"image version {g}/{d}/{v}"
            )
        except NotFound:
            self.get_definition(g, d)
            raise

    def list_versions(self, g: str, d: str) -> list[ImageVersion]:
        vdir = self.versions_dir(g, d)
        try:
            entries = list(os.scandir(vdir))
        except FileNotFoundError:
            self.get_definition(g, d)
            return []
        except OSError as err:
            raise access_error(vdir, err) from None
        self._need_see(g, d)
        every = self.caller is None or role_of(self.policy(g), self.caller, d) is not None
        out = []
        for entry in entries:
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                if not every and not self._role_on(g, f"{d}/{entry.name[:-5]}"):
                    continue
                with contextlib.suppress(NotFound, HostAccessDenied):
                    out.append(self._read(ImageVersion, entry.path, entry.name))
        # Names were validated when written; the file name is the version. Tuples sort in C.
        out.sort(key=lambda r: tuple(map(int, r.name.split("."))))
        return out

    def _role_on(self, g: str, scope: str) -> bool:
        return self.caller is None or role_of(self.policy(g), self.caller, scope) is not None

    def definition_lock(self, g: str, d: str) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.definition_dir(g, d) / ".lock")

    def create_version(self, rec: ImageVersion) -> None:
        """Write a new version record; Conflict if one exists. Caller holds definition_lock."""
        self.require(rec.gallery, "contributor", rec.definition, "publish versions of")
        path = self.version_path(rec.gallery, rec.definition, rec.name)
        if path.exists():
            raise Conflict(f"image version {rec.ref} already exists")
        self._write(path, rec)

    def put_version(self, rec: ImageVersion) -> None:
        """Overwrite a version record. Caller holds definition_lock."""
        self._write(self.version_path(rec.gallery, rec.definition, rec.name), rec)

    def update_version(
        self, g: str, d: str, v: str, change: Callable[[ImageVersion], ImageVersion]
    ) -> ImageVersion:
        self.require(g, "contributor", f"{d}/{v}", "update")
        with self.definition_lock(g, d):
            rec = change(self.get_version(g, d, v))
            self.put_version(rec)
        return rec

    def remove_version_record(self, g: str, d: str, v: str, *, keep_op_lock: bool = False) -> None:
        """Caller holds definition_lock, and the op lock, which it gives up unless it keeps
        working on the version (keep_op_lock: the file stays so its flock stays meaningful)."""
        path = self.version_path(g, d, v)
        path.unlink(missing_ok=True)
        if not keep_op_lock:
            self.version_op_lock(g, d, v).unlink(missing_ok=True)
        fsync_dir(path.parent)
