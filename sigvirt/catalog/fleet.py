"""Scale-set models: what a scale set's instances are made from, and how they are upgraded.

    ROOT/scalesets/                 1777 (sticky, like /tmp): anyone who may create VMs may
                                    create a scale set; nobody removes another's
    ROOT/scalesets/NAME/            0755, owned by the scale set's creator
    ROOT/scalesets/NAME/model.json  the model (0644); NAME/.lock serializes its writers
    ROOT/scalesets/NAME/rollouts/   rollout records (catalog/rollouts.py)

libvirt stays the record of instances (each domain's provenance says which version it runs
and which model generation it got); this is the record of the model: image as the user named
it (a definition means latest), size, admin user and keys, disks, upgrade policy (az's
UpgradePolicy and RollingUpgradePolicy) and health probe, with a generation that every change
of the virtual-machine profile bumps.

A record is hostile until parsed: every field is checked (types by the codec, values here), it
is read through a directory descriptor without following links, and it counts only when its
file and its directory belong to root or to the user the record names as owner (another user
could plant one: the sticky directory lets anyone create a NAME/). Only the owner or root may
change or delete it. A health-probe spec is code: it runs as the user who wrote it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from sigvirt.catalog import names
from sigvirt.catalog.codec import loads, to_dict
from sigvirt.catalog.fileio import (
    MAX_RECORD_BYTES,
    CorruptRecord,
    access_error,
    open_dir,
    write_record,
)
from sigvirt.catalog.fleetmodel import (
    HealthProbe,
    RollingPolicy,
    ScaleSetModel,
    UpgradeMode,
    changed,
    checked,
    format_duration,
    parse_duration,
    problem,
    rolling_policy,
    upgrade_mode,
    user_name,
)
from sigvirt.catalog.records import now
from sigvirt.errors import (
    Conflict,
    HostAccessDenied,
    InvalidArgument,
    InvalidName,
    NotFound,
    PermissionRefused,
)

SCALESETS = "scalesets"
MODEL = "model.json"
LOCK = ".lock"
BASE_MODE = 0o1777  # sticky: a user's NAME/ can't be removed or renamed by another
DIR_MODE = 0o755
FILE_MODE = 0o644

# The records and their rules live in fleetmodel.py; this module names them for its users.
__all__ = [
    "FleetStore", "HealthProbe", "RollingPolicy", "ScaleSetModel", "UpgradeMode", "changed",
    "checked", "format_duration", "parse_duration", "problem", "rolling_policy", "upgrade_mode",
    "user_name",
]  # fmt: skip
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# -- the store ---------------------------------------------------------------------------------
class FleetStore:
    """Scale-set models under ROOT/scalesets/. Every path below the gallery root is reached
    through directory descriptors opened without following links, so a user who owns a NAME/
    can't turn root's write or delete into one somewhere else."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def base(self) -> Path:
        return self.root / SCALESETS

    def dir_for(self, name: str) -> Path:
        return self.base / names.vm_name(name)

    # -- reading --------------------------------------------------------------------------
    def get(self, name: str) -> ScaleSetModel:
        names.vm_name(name)
        with self._set_dir(name) as dfd:
            return self._load(dfd, name)

    def list(self, damaged: list[tuple[str, CorruptRecord]] | None = None) -> list[ScaleSetModel]:
        """Every readable model, by name; damaged or planted ones go to `damaged`."""
        try:
            bfd = self._open_base()
        except NotFound:
            return []
        try:
            found = sorted(e.name for e in os.scandir(bfd) if not e.name.startswith("."))
        finally:
            os.close(bfd)
        out = []
        for name in found:
            try:
                out.append(self.get(name))
            except (NotFound, InvalidName, HostAccessDenied):
                continue
            except CorruptRecord as err:
                if damaged is not None:
                    damaged.append((name, err))
        return out

    def _load(self, dfd: int, name: str) -> ScaleSetModel:
        where = self.dir_for(name)
        path = where / MODEL
        try:
            fd = os.open(MODEL, _READ, dir_fd=dfd)
        except FileNotFoundError:
            raise NotFound(f"scale set {name} has no model") from None
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise CorruptRecord("is a symbolic link", path=path) from None
            raise access_error(path, err) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptRecord("is not a regular file", path=path)
            if st.st_size > MAX_RECORD_BYTES:
                raise CorruptRecord("is larger than a record may be", path=path)
            raw = os.read(fd, MAX_RECORD_BYTES + 1)
        finally:
            os.close(fd)
        try:
            model = loads(ScaleSetModel, raw)
        except (TypeError, ValueError) as err:
            raise CorruptRecord(str(err), path=path) from None
        if model.name != name:
            raise CorruptRecord(
                f"says scale set {names.shorten(model.name)} but is the file of {name!r}",
                path=path,
            )
        if (why := problem(model)) is not None:
            raise CorruptRecord(why, path=path)
        trusted = {0, model.owner_uid}
        dir_uid = os.fstat(dfd).st_uid
        for what, uid in (("its file", st.st_uid), ("its directory", dir_uid)):
            if uid not in trusted:
                raise CorruptRecord(
                    f"{what} belongs to user {user_name(uid)}, but a model counts only when "
                    f"root or its owner ({user_name(model.owner_uid)}) wrote it",
                    path=path,
                )
        # A spec is code that root may run: it runs as whoever wrote the file (root: anyone
        # it names), never as a user a planted record claims.
        if model.health.spec and st.st_uid != 0 and model.health.owner != user_name(st.st_uid):
            raise CorruptRecord(
                f"health.owner {names.shorten(model.health.owner, 40)} is not "
                f"{user_name(st.st_uid)}, who wrote the file",
                path=path,
            )
        return model

    # -- writing --------------------------------------------------------------------------
    def create(self, model: ScaleSetModel) -> ScaleSetModel:
        """Record a new scale set's model, owned by the caller; Conflict if it exists."""
        uid = os.geteuid()
        model = self._owned(
            dataclasses.replace(model, owner_uid=uid, created=model.created or now()), uid
        )
        checked(model)
        bfd = self._open_base(create=True)
        try:
            try:
                os.mkdir(model.name, DIR_MODE, dir_fd=bfd)
                os.chmod(model.name, DIR_MODE, dir_fd=bfd, follow_symlinks=False)
            except FileExistsError:
                pass
            except OSError as err:
                raise access_error(self.dir_for(model.name), err) from None
            dfd = self._open_set(bfd, model.name)
        finally:
            os.close(bfd)
        try:
            owner = os.fstat(dfd).st_uid
            if owner not in (0, uid):
                raise Conflict(
                    f"{self.dir_for(model.name)} belongs to user {user_name(owner)}: "
                    f"scale set {model.name} is theirs to create (or remove the directory)"
                )
            with self._locked(dfd, model.name):
                if _exists(dfd, MODEL):
                    raise Conflict(f"scale set {model.name} already exists")
                self._write(dfd, model)
        finally:
            os.close(dfd)
        return model

    def update(self, name: str, change: Callable[[ScaleSetModel], ScaleSetModel]) -> ScaleSetModel:
        """Change a model under its lock; only its owner or root may."""
        self._may_change(self.get(name))
        with self._set_dir(name) as dfd, self._locked(dfd, name):
            current = self._load(dfd, name)
            new = change(current)
            if new.name != current.name or new.owner_uid != current.owner_uid:
                raise InvalidArgument(f"scale set {name}: its name and owner don't change")
            new = self._owned(dataclasses.replace(new, updated=now()), os.geteuid())
            checked(new)
            self._write(dfd, new)
        return new

    def delete(self, name: str) -> None:
        """Remove the model and everything in its directory (rollout records). A damaged or
        planted model goes too, when root or the directory's owner asks."""
        with self._set_dir(name) as dfd:
            try:
                self._may_change(self._load(dfd, name))
            except CorruptRecord:
                owner = os.fstat(dfd).st_uid
                if os.geteuid() not in (0, owner):
                    raise
            with self._locked(dfd, name):
                _remove_contents(dfd)
        bfd = self._open_base()
        try:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(name, dir_fd=bfd)
            os.fsync(bfd)
        except OSError as err:
            raise access_error(self.dir_for(name), err) from None
        finally:
            os.close(bfd)

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """An exclusive flock on NAME/.lock (the model's writers, and C's rollout records)."""
        with self._set_dir(name) as dfd, self._locked(dfd, name):
            yield

    # -- the parts --------------------------------------------------------------------------
    @staticmethod
    def _owned(model: ScaleSetModel, uid: int) -> ScaleSetModel:
        """A spec written by a user other than root runs as that user from now on."""
        if uid != 0 and model.health.spec:
            return dataclasses.replace(
                model, health=dataclasses.replace(model.health, owner=user_name(uid))
            )
        return model

    @staticmethod
    def _may_change(model: ScaleSetModel) -> None:
        uid = os.geteuid()
        if uid not in (0, model.owner_uid):
            raise PermissionRefused(
                f"scale set {model.name} belongs to user {user_name(model.owner_uid)}: only "
                "they or root may change it"
            )

    def _open_base(self, *, create: bool = False) -> int:
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                os.mkdir(self.base, BASE_MODE)
                os.chmod(self.base, BASE_MODE)  # mkdir's mode went through the umask
            except FileExistsError:
                pass
            except OSError as err:
                if err.errno not in (errno.EACCES, errno.EPERM):
                    raise access_error(self.base, err) from None
                raise HostAccessDenied(
                    f"{self.base} does not exist and you may not create it",
                    hint="run any `sigvirt vmss` command as the gallery root's owner once",
                ) from None
        try:
            fd = open_dir(self.root, (SCALESETS,), readable=True)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{self.base} does not exist (no scale set has a model)") from None
        except OSError as err:
            raise access_error(self.base, err) from None
        mode = os.fstat(fd).st_mode
        if mode & 0o002 and not mode & stat.S_ISVTX:
            os.close(fd)
            raise CorruptRecord("is writable by everyone but not sticky", path=self.base)
        return fd

    def _open_set(self, bfd: int, name: str) -> int:
        try:
            return os.open(name, _DIR, dir_fd=bfd)
        except FileNotFoundError:
            raise NotFound(f"scale set {name} has no model") from None
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                raise CorruptRecord(
                    "is not a directory (sigvirt follows no links)", path=self.dir_for(name)
                ) from None
            raise access_error(self.dir_for(name), err) from None

    @contextlib.contextmanager
    def _set_dir(self, name: str) -> Iterator[int]:
        bfd = self._open_base()
        try:
            dfd = self._open_set(bfd, names.vm_name(name))
        finally:
            os.close(bfd)
        try:
            yield dfd
        finally:
            os.close(dfd)

    @contextlib.contextmanager
    def _locked(self, dfd: int, name: str) -> Iterator[None]:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(LOCK, flags, FILE_MODE, dir_fd=dfd)
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EPERM):
                raise PermissionRefused(
                    f"scale set {name}: you may not change it (its directory is another user's)"
                ) from None
            raise CorruptRecord(
                f"{LOCK} can't be opened: {err.strerror}", path=self.dir_for(name)
            ) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CorruptRecord(f"{LOCK} is not a regular file", path=self.dir_for(name))
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, dfd: int, model: ScaleSetModel) -> None:
        data = json.dumps(to_dict(model), indent=2, sort_keys=True).encode() + b"\n"
        write_record(dfd, MODEL, data, FILE_MODE, self.dir_for(model.name))


def _exists(dfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _remove_contents(dfd: int) -> None:
    """Everything below a directory, through descriptors: a link is removed, never followed."""
    for _top, dirs, files, fd in os.fwalk(".", topdown=False, dir_fd=dfd):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f, dir_fd=fd)
        for d in dirs:
            try:
                os.rmdir(d, dir_fd=fd)
            except NotADirectoryError:  # a link to a directory: fwalk lists it as one
                os.unlink(d, dir_fd=fd)
            except FileNotFoundError:
                pass
