"""The catalog's file toolkit: atomic writes, directory fsyncs, flocks, plain reads.

A reader sees the old file or the new one, never a part; concurrent writers serialize on
flocks; a rewritten record keeps the group and ACL of the file it replaces.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from sigvirt.errors import Conflict, HostAccessDenied, HostError, NoSpace, NotFound, SigvirtError

DIR_MODE = 0o2770  # setgid: new files take the gallery's group
FILE_MODE = 0o660


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_ACL_XATTR = "system.posix_acl_access"


def _keep_permissions(fd: int, old: Path) -> None:
    """A rewritten record keeps the group and ACL of the file it replaces (a version shared
    on its own must stay shared after every status update)."""
    try:
        st = os.stat(old, follow_symlinks=False)
    except FileNotFoundError:
        return
    with contextlib.suppress(OSError):
        os.fchown(fd, -1, st.st_gid)
    try:
        os.setxattr(fd, _ACL_XATTR, os.getxattr(old, _ACL_XATTR, follow_symlinks=False))
    except OSError:
        with contextlib.suppress(OSError):
            os.fchmod(fd, st.st_mode & 0o7777)


def atomic_write(
    path: Path, data: bytes, mode: int = FILE_MODE, *, replace: bool = True, inherit: bool = True
) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never a part.

    inherit: a rewritten file keeps the group and ACL of the one it replaces. replace=False:
    an existing file, even one created meanwhile, is never replaced (FileExistsError).
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        if inherit:
            _keep_permissions(fd, path)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        if replace:
            os.rename(tmp, path)
        else:
            os.link(tmp, path)  # fails if the name exists: no window for a race
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def access_error(path: Path | str, err: OSError) -> SigvirtError:
    if err.errno in (errno.EACCES, errno.EPERM):
        return HostAccessDenied(f"permission denied: {path}")
    if err.errno == errno.ENOSPC:
        return NoSpace(f"no space left on device writing {path}")
    return HostError(f"{path}: {err.strerror}")


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[None]:
    """An exclusive flock on `path` (created if needed); Conflict if not blocking and held."""
    fd = _locked_fd(path, blocking)
    try:
        yield
    finally:
        os.close(fd)


def _locked_fd(path: Path, blocking: bool) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, FILE_MODE)
        except FileNotFoundError:
            raise NotFound(f"{path.parent} no longer exists (deleted meanwhile)") from None
        except OSError as err:
            raise access_error(path, err) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise Conflict(f"{path.name}: busy (held by another sigvirt process)") from None
        # The holder before us may have removed the file as it finished (a deleted version's
        # op lock): a lock on an unlinked inode excludes nobody, so lock the file now there.
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        held = os.fstat(fd)
        if st is not None and (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)


def lock_is_held(path: Path) -> bool:
    """True while some process holds the flock (e.g. a version being imported)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_bytes(path: Path | str) -> bytes:
    # Plain os calls: Path.read_bytes' buffered file object cost a third of listing 10,000
    # versions.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def remove_tree(path: Path) -> None:
    """Remove a resource directory that holds only sigvirt's own files (locks, temp files)."""
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if child.is_dir() and not child.is_symlink():
            child.rmdir()
        else:
            child.unlink()
    path.rmdir()
    fsync_dir(path.parent)
