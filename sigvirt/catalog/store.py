"""The gallery store: one directory per gallery, a JSON file per resource.

    ROOT/G/gallery.json
    ROOT/G/images/D/definition.json
    ROOT/G/images/D/versions/1.0.2.json

Every write is atomic (temp file, fsync, rename, fsync of the directory) and made under a
file lock, so the metadata always parses and concurrent writers serialize. Each resource
has its own file and directory, so a gallery, a definition and a version can carry
different Unix groups and ACLs.

Every read is checked: the JSON against the record's dataclass (records.from_dict), and the
record against where it lies (a version record must name the gallery, definition and version
of its path; sharing/plan.py computes ACLs from records, so one that claims another gallery is
refused). A damaged record is a CorruptRecord (exit 17) for whoever asks for it by name, and
listings skip it (handing it to the caller in `damaged`), so one bad file breaks no command
on the others.

Soft-deleted records (and versions whose deletion waits for a region) stay where they are,
in their state: every read hides them — NotFound by name, skipped by listings — unless the
caller asks with `hidden=True` (the recycle bin, gc, space, sharing and region admin do).

A definition's versions are listed through its listing index (listindex.py) where it may
stand in for their files: a cache that is never believed over a record.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sigvirt.catalog import listindex, names
from sigvirt.catalog.codec import loads, to_dict
from sigvirt.catalog.damage import Damaged as Damaged
from sigvirt.catalog.damage import Place, is_name, keep, misplaced
from sigvirt.catalog.fileio import (
    DIR_MODE,
    FILE_MODE,
    CorruptRecord,
    access_error,
    atomic_write,
    file_lock,
    fsync_dir,
    lock_error,
    open_dir,
    read_record,
    remove_stale_temps,
    remove_tree,
)
from sigvirt.catalog.policy import Caller, Policy, Role, can_see, require, role_of
from sigvirt.catalog.records import (
    HIDDEN,
    Definition,
    Gallery,
    ImageVersion,
    hidden_line,
    reuse_line,
)
from sigvirt.errors import (
    Conflict,
    HasDependents,
    HostAccessDenied,
    NotFound,
    PermissionRefused,
    SigvirtError,
)

T = TypeVar("T")
# A version file's name: Major.Minor.Patch without leading zeros (32-bit parts: checked apart).
_VERSION_FILE = re.compile(r"(0|[1-9][0-9]{0,9})\.(0|[1-9][0-9]{0,9})\.(0|[1-9][0-9]{0,9})\.json")


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
                self._policies[g] = self._read(
                    Policy, path, f"gallery {g}", (("gallery", "gallery", g),)
                )
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
    def _read(self, cls: type[T], path: Path, what: str, place: Place) -> T:
        """The record at `path`, a file under the root, checked against where it lies."""
        try:
            dfd = open_dir(self.root, path.parent.relative_to(self.root).parts)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{what} not found") from None
        except OSError as err:
            raise access_error(path.parent, err) from None
        try:
            return self._load(cls, dfd, path.name, path.parent, what, place)
        finally:
            os.close(dfd)

    @staticmethod
    def _load(cls: type[T], dfd: int, name: str, where: Path, what: str, place: Place = ()) -> T:
        """The record in file `name` of the directory `dfd` (whose path is `where`)."""
        try:
            raw = read_record(dfd, name, where)
        except FileNotFoundError:
            raise NotFound(f"{what} not found") from None
        except OSError as err:
            raise access_error(where / name, err) from None
        try:
            rec = loads(cls, raw)
        except (TypeError, ValueError) as err:  # JSON, UTF-8 and the record's shape
            raise CorruptRecord(str(err), path=where / name) from None
        if place and (wrong := misplaced(rec, place)):
            raise CorruptRecord(wrong, path=where / name)
        return rec

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
            raise lock_error(path / ".lock", err) from None

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

    def installation(self) -> str:
        """This installation's identity (a catalog, its gallery root): recorded in every
        domain sigvirt makes, so two setups sharing one libvirt host each see only their own
        VMs. Made on first use; every reader agrees on it (created with no-clobber link)."""
        path = self.root / ".installation"
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        except OSError as err:
            raise access_error(path, err) from None
        self.ensure_root()
        with contextlib.suppress(FileExistsError):
            try:
                atomic_write(path, (uuid.uuid4().hex + "\n").encode(), 0o644, replace=False)
            except OSError as err:
                if isinstance(err, FileExistsError):
                    raise
                raise access_error(path, err) from None
        return path.read_text().strip()

    # -- galleries --------------------------------------------------------------------------
    def get_gallery(self, g: str) -> Gallery:
        self._need_see(g)
        path = self.gallery_dir(g) / "gallery.json"
        return self._read(Gallery, path, f"gallery {g}", (("name", "gallery", g),))

    def list_galleries(self, damaged: list[Damaged] | None = None) -> list[Gallery]:
        """The galleries the caller may see, by name; damaged ones go to `damaged`. A
        directory whose name no gallery can have (lost+found) is not a gallery."""
        if not self.root.is_dir():
            return []
        out = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            name = entry.name
            if name.startswith(".") or not entry.is_dir() or not is_name(names.gallery_name, name):
                continue
            try:
                out.append(self.get_gallery(name))
            except (NotFound, HostAccessDenied, PermissionRefused):
                continue
            except CorruptRecord as err:
                keep(damaged, name, err)
        return out

    def create_gallery(self, rec: Gallery) -> Gallery:
        self.ensure_root()
        # Made now, by someone who can write the root: a reader's first `vm create` can't.
        self.installation()
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

    def refuse_nonempty(self, g: str) -> None:
        """HasDependents while the gallery holds definitions, live or in the recycle bin; a
        damaged one's error (removing the tree would remove it unread)."""
        broken: list[Damaged] = []
        defs = [
            f"{d.name} (soft-deleted)" if d.soft_deleted else d.name
            for d in self.list_definitions(g, broken, hidden=True)
        ]
        if broken:
            raise broken[0].error
        if defs:
            binned = any(d.endswith("(soft-deleted)") for d in defs)
            raise HasDependents(
                f"gallery {g} still has image definitions: {', '.join(defs)}; delete them first"
                + (" (soft-deleted ones go when `sig gc` purges them)" if binned else "")
            )

    def delete_gallery(self, g: str) -> None:
        self.get_gallery(g)
        self.require(g, "owner", "", "delete")
        with file_lock(self.root / ".lock"), file_lock(self.gallery_dir(g) / ".lock"):
            self.refuse_nonempty(g)
            gdir = self.gallery_dir(g)
            (gdir / "gallery.json").unlink()
            remove_tree(gdir)

    # -- definitions ------------------------------------------------------------------------
    def get_definition(self, g: str, d: str, *, hidden: bool = False) -> Definition:
        path = self.definition_dir(g, d) / "definition.json"
        self._need_see(g, d)
        place = (("gallery", "gallery", g), ("name", "image definition", d))
        try:
            rec = self._read(Definition, path, f"image definition {g}/{d}", place)
        except NotFound:
            self.get_gallery(g)  # say which level is missing
            raise
        if rec.soft_deleted and not hidden:
            raise NotFound(
                f"image definition {g}/{d} is soft-deleted (since {rec.soft_deleted}); "
                "`sigvirt sig image-definition undelete` restores it"
            )
        return rec

    def list_definitions(
        self, g: str, damaged: list[Damaged] | None = None, *, hidden: bool = False
    ) -> list[Definition]:
        """A gallery's definitions the caller may see, by name; damaged ones go to `damaged`.
        A caller with no access to the gallery at all is refused by sharing's rules first
        (exit 10), before the kernel refuses them the directory."""
        images = self.gallery_dir(g) / "images"
        if self.caller is not None and not self.caller.is_root:
            self._need_see(g)
            policy = self.policy(g)
            if role_of(policy, self.caller, "") is None:
                # Shared below the gallery only: the kernel lets them through images/, not
                # list it; the definitions they were given are the ones their grants name.
                given = sorted(
                    {x.scope.split("/")[0] for x in policy.grants if x.group in self.caller.groups}
                )
                return self._read_definitions(g, given, damaged, hidden)
        try:
            dfd = open_dir(self.root, (g, "images"), readable=True)
        except (FileNotFoundError, NotADirectoryError):
            self.get_gallery(g)
            return []
        except OSError as err:
            raise access_error(images, err) from None
        try:
            found = sorted(
                e.name
                for e in os.scandir(dfd)
                if not e.name.startswith(".") and e.is_dir()
                and is_name(names.definition_name, e.name)
            )  # fmt: skip
        finally:
            os.close(dfd)
        return self._read_definitions(g, found, damaged, hidden)

    def _read_definitions(
        self, g: str, found: list[str], damaged: list[Damaged] | None, hidden: bool
    ) -> list[Definition]:
        out = []
        for name in found:
            try:
                out.append(self.get_definition(g, name, hidden=hidden))
            except (NotFound, HostAccessDenied, PermissionRefused):
                continue
            except CorruptRecord as err:
                keep(damaged, name, err)
        return out

    def create_definition(self, rec: Definition) -> Definition:
        self.get_gallery(rec.gallery)
        self.require(rec.gallery, "contributor", "", "create image definitions in")
        with file_lock(self.gallery_dir(rec.gallery) / "images" / ".lock"):
            ddir = self.definition_dir(rec.gallery, rec.name)
            if (ddir / "definition.json").exists():
                old: Definition | None = None
                with contextlib.suppress(SigvirtError):
                    old = self.get_definition(rec.gallery, rec.name, hidden=True)
                if old is not None and old.soft_deleted:
                    raise Conflict(
                        f"image definition {rec.gallery}/{rec.name} is soft-deleted: its name "
                        "can't be reused until it is purged (undelete it instead)"
                    )
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
        self, g: str, d: str, change: Callable[[Definition], Definition], *, hidden: bool = False
    ) -> Definition:
        self.get_definition(g, d, hidden=hidden)  # NotFound before a lock file is made for it
        self.require(g, "contributor", d, "update")
        with file_lock(self.definition_dir(g, d) / ".lock"):
            rec = change(self.get_definition(g, d, hidden=hidden))
            self._write(self.definition_dir(g, d) / "definition.json", rec)
        return rec

    def delete_definition(self, g: str, d: str, *, hidden: bool = False) -> None:
        """Remove a definition without versions (`hidden`: one in the recycle bin, whose own
        soft-deleted versions were purged first)."""
        self.get_definition(g, d, hidden=hidden)
        self.require(g, "owner", d, "delete")
        with (
            file_lock(self.gallery_dir(g) / "images" / ".lock"),
            file_lock(self.definition_dir(g, d) / ".lock"),
        ):
            broken: list[Damaged] = []
            versions = self.list_versions(g, d, broken, hidden=True)
            if broken:  # removing the tree would remove it unread
                raise broken[0].error
            if versions:
                binned = any(v.state in HIDDEN for v in versions)
                raise HasDependents(
                    f"image definition {g}/{d} still has versions: "
                    + ", ".join(f"{v.name} ({v.state})" if v.state in HIDDEN else v.name
                                for v in versions)
                    + ("; delete them first" if not binned else
                       "; soft-deleted ones go when `sig gc` purges them")
                )  # fmt: skip
            ddir = self.definition_dir(g, d)
            (ddir / "definition.json").unlink()
            remove_tree(ddir)

    # -- versions ---------------------------------------------------------------------------
    def get_version(self, g: str, d: str, v: str, *, hidden: bool = False) -> ImageVersion:
        v = str(names.Version.parse(v))
        self.require(g, "reader", f"{d}/{v}", "read")
        place = (("gallery", "gallery", g), ("definition", "image definition", d))
        try:
            rec = self._read(
                ImageVersion,
                self.version_path(g, d, v),
                f"image version {g}/{d}/{v}",
                (*place, ("name", "version", v)),
            )
        except NotFound:
            self.get_definition(g, d, hidden=hidden)
            raise
        if rec.state in HIDDEN and not hidden:
            raise NotFound(hidden_line(rec))
        return rec

    def list_versions(
        self, g: str, d: str, damaged: list[Damaged] | None = None, *, hidden: bool = False
    ) -> list[ImageVersion]:
        """A definition's versions the caller may see, oldest first; damaged ones (a file
        that does not parse, does not fit, or names another place) go to `damaged`;
        soft-deleted and pending-deletion ones only with `hidden`."""
        vdir = self.versions_dir(g, d)
        try:
            dfd = open_dir(self.root, (g, "images", d, "versions"), readable=True)
        except FileNotFoundError:
            self.get_definition(g, d, hidden=hidden)
            return []
        except NotADirectoryError:
            self.get_definition(g, d, hidden=hidden)
            raise CorruptRecord("is not a directory", path=vdir) from None
        except OSError as err:
            raise access_error(vdir, err) from None
        found: list[tuple[tuple[int, int, int], ImageVersion]] = []
        bad: list[tuple[tuple[int, int, int], Damaged]] = []
        good: list[tuple[listindex.Stamp, ImageVersion]] = []  # every record that read cleanly
        try:
            self._need_see(g, d)
            every = self.caller is None or role_of(self.policy(g), self.caller, d) is not None
            # What users list may come from the index; what acts on the records (gc, sharing,
            # space, the recycle bin: hidden) reads every one.
            indexed = every and not hidden and listindex.enabled()
            built = listindex.now_ns()
            stamps = listindex.scan(dfd) if indexed else {}
            policy = lambda: self.policy(g)  # noqa: E731  (asked only of a foreign index)
            cached = listindex.believed(dfd, g, d, stamps, policy) if indexed else None
            used = 0
            in_gallery, in_definition = (
                ("gallery", "gallery", g),
                ("definition", "image definition", d),
            )
            for name in [f"{v}.json" for v in stamps] if indexed else os.listdir(dfd):
                if not name.endswith(".json") or name.startswith("."):
                    continue
                stem = name[:-5]
                if not every and not self._role_on(g, f"{d}/{stem}"):
                    continue
                try:
                    match = _VERSION_FILE.fullmatch(name)
                    key = (int(match[1]), int(match[2]), int(match[3])) if match else (-1, 0, 0)
                    if max(key) > names.INT32_MAX or key[0] < 0:
                        raise CorruptRecord(
                            "its name is not a version (Major.Minor.Patch.json)", path=vdir / name
                        )
                    rec = cached.get(stem) if cached else None
                    used += rec is not None
                    if rec is None:  # _load, inlined: this loop runs 10,000 times
                        try:
                            rec = loads(ImageVersion, read_record(dfd, name, vdir))
                        except (TypeError, ValueError) as err:
                            raise CorruptRecord(str(err), path=vdir / name) from None
                        if rec.gallery != g or rec.definition != d or rec.name != stem:
                            place = (in_gallery, in_definition, ("name", "version", stem))
                            raise CorruptRecord(misplaced(rec, place) or "", path=vdir / name)
                    if indexed:
                        good.append((stamps[stem], rec))
                    if hidden or rec.state not in HIDDEN:
                        found.append((key, rec))
                except (FileNotFoundError, PermissionError):
                    continue  # removed meanwhile, or not the caller's to read
                except OSError as err:
                    raise access_error(vdir / name, err) from None
                except CorruptRecord as err:
                    bad.append((key, Damaged(stem, err)))
        finally:
            os.close(dfd)
        if indexed and listindex.stale(len(good), used, cached is not None):
            listindex.write(self.definition_dir(g, d), g, d, built, good)
        by_version = operator.itemgetter(0)  # keys are unique but for names that are none
        if damaged is not None:
            damaged += [item for _key, item in sorted(bad, key=by_version)]
        found.sort(key=by_version)
        return [rec for _key, rec in found]

    def _role_on(self, g: str, scope: str) -> bool:
        return self.caller is None or role_of(self.policy(g), self.caller, scope) is not None

    def definition_lock(self, g: str, d: str) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.definition_dir(g, d) / ".lock")

    def create_version(self, rec: ImageVersion) -> None:
        """Write a new version record; Conflict if one exists. Caller holds definition_lock."""
        self.require(rec.gallery, "contributor", rec.definition, "publish versions of")
        path = self.version_path(rec.gallery, rec.definition, rec.name)
        if path.exists():
            taken: ImageVersion | None = None
            with contextlib.suppress(SigvirtError):
                taken = self.get_version(rec.gallery, rec.definition, rec.name, hidden=True)
            if taken is not None and taken.state in HIDDEN:
                raise Conflict(reuse_line(taken))
            raise Conflict(f"image version {rec.ref} already exists")
        self._write(path, rec)

    def put_version(self, rec: ImageVersion) -> None:
        """Overwrite a version record. Caller holds definition_lock."""
        self._write(self.version_path(rec.gallery, rec.definition, rec.name), rec)

    def update_version(
        self,
        g: str,
        d: str,
        v: str,
        change: Callable[[ImageVersion], ImageVersion],
        *,
        hidden: bool = False,
    ) -> ImageVersion:
        self.require(g, "contributor", f"{d}/{v}", "update")
        with self.definition_lock(g, d):
            rec = change(self.get_version(g, d, v, hidden=hidden))
            self.put_version(rec)
        return rec

    def remove_version_record(self, g: str, d: str, v: str, *, keep_op_lock: bool = False) -> None:
        """Caller holds definition_lock, and the op lock, which it gives up unless it keeps
        working on the version (keep_op_lock: the file stays so its flock stays meaningful)."""
        path = self.version_path(g, d, v)
        path.unlink(missing_ok=True)
        remove_stale_temps(path)
        # the logs of its background replication and boot test, and the boot test's lock
        for extra in ("replicate.log", "test.log", "gate"):
            (path.parent / f".{path.stem}.{extra}").unlink(missing_ok=True)
        if not keep_op_lock:
            self.version_op_lock(g, d, v).unlink(missing_ok=True)
        fsync_dir(path.parent)
