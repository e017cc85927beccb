"""Boot-test specs stored with their definition: `test-spec.SHA16.py` beside definition.json.

The file is named by its sha256 (the first 16 hex digits) and the definition's record holds
the whole sha256, its size and who stored it, so storing a new spec is one atomic step: the
file is written first under its own name, then the record names it (a kill in between leaves
an unnamed file, which the next store removes). A spec is code that runs against guests, as
its owner: every read checks the bytes against the record and the file's owner against the
recorded one, and a file that differs is refused (a hand edit, or someone else's file put
in its place), never run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pwd
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from sigvirt.catalog.fileio import (
    NOT_FOLLOWED,
    CorruptRecord,
    access_error,
    fsync_dir,
    remove_stale_temps,
)
from sigvirt.catalog.records import Definition, StoredSpec, now
from sigvirt.catalog.store import GalleryStore
from sigvirt.errors import NotFound

SPEC_MODE = 0o644
PREFIX = "test-spec."
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class SpecMismatch(CorruptRecord):
    """The stored spec is not the one the record names: refused, never run (exit 17)."""

    template = "test spec {path} {detail}"


@dataclass(frozen=True)
class SpecFile:
    source: str  # the spec's text, as checked
    sha256: str
    owner: str  # the user who stored it
    uid: int  # the owner's uid (the file's, checked)
    path: Path


def current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def path_of(store: GalleryStore, g: str, d: str, spec: StoredSpec) -> Path:
    return store.definition_dir(g, d) / spec.file_name


def write(store: GalleryStore, g: str, d: str, data: bytes) -> StoredSpec:
    """Write the spec's file (atomically, mode 0644, owned by the caller); the record does
    not name it yet."""
    spec = StoredSpec(sha256(data), current_user(), len(data), now())
    path = path_of(store, g, d, spec)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, SPEC_MODE)
        try:
            os.fchmod(fd, SPEC_MODE)  # whatever the umask said: everyone may read a spec
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise access_error(path, err) from None
    remove_stale_temps(path)
    fsync_dir(path.parent)
    return spec


def prune(store: GalleryStore, g: str, d: str, keep: StoredSpec | None) -> list[str]:
    """Remove the definition's spec files but the one its record names (`keep`)."""
    ddir = store.definition_dir(g, d)
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(ddir):
            name = entry.name
            if not (name.startswith(PREFIX) and name.endswith(".py")):
                continue
            if keep is not None and name == keep.file_name:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ddir / name)
                removed.append(name)
    return removed


def read(store: GalleryStore, rec: Definition) -> SpecFile:
    """The definition's spec, checked against its record: same sha256 and size, owned by the
    user the record names. NotFound if it has none; SpecMismatch (exit 17) otherwise."""
    spec = rec.test_spec
    if spec is None:
        raise NotFound(
            f"image definition {rec.gallery}/{rec.name} has no test spec",
            hint=f"sigvirt sig image-definition update --gallery-name {rec.gallery} "
            f"--gallery-image-definition {rec.name} --test-spec FILE",
        )
    path = path_of(store, rec.gallery, rec.name, spec)
    try:
        fd = os.open(path, _READ)
    except FileNotFoundError:
        raise SpecMismatch("is missing (removed by hand?): store it again", path=path) from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise SpecMismatch(NOT_FOLLOWED, path=path) from None
        raise access_error(path, err) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecMismatch("is not a regular file", path=path)
        data = os.read(fd, spec.size + 1) if st.st_size == spec.size else b""
    finally:
        os.close(fd)
    if st.st_size != spec.size or sha256(data) != spec.spec_sha256:
        raise SpecMismatch(
            f"does not match its record (sha256 {spec.spec_sha256[:16]}…, {spec.size} bytes): "
            "changed by hand? store it again with image-definition update --test-spec",
            path=path,
        )
    try:
        uid = pwd.getpwnam(spec.owner).pw_uid
    except KeyError:
        raise SpecMismatch(f"was stored by {spec.owner}, who is no user here", path=path) from None
    if st.st_uid != uid:
        raise SpecMismatch(
            f"belongs to uid {st.st_uid}, not to {spec.owner} who stored it: refused", path=path
        )
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecMismatch("is not UTF-8 text", path=path) from None
    return SpecFile(source, spec.spec_sha256, spec.owner, uid, path)
