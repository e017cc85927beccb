"""The catalog's file toolkit: atomic writes, directory fsyncs, flocks, guarded reads.

A reader sees the old file or the new one, never a part; concurrent writers serialize on
flocks; a rewritten record keeps the group and ACL of the file it replaces. Reads follow no
symbolic link below the gallery root, never block on a fifo and never read more than a record
may hold: whatever is not a plain file of sane size where a record or lock belongs is a
CorruptRecord (exit 17), one line saying what it is.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from sigvirt.catalog.liveness import pid_alive
from sigvirt.errors import (
    Conflict,
    ExitCode,
    HostAccessDenied,
    HostError,
    NoSpace,
    NotFound,
    SigvirtError,
)

DIR_MODE = 0o2770  # setgid: new files take the gallery's group
FILE_MODE = 0o660
# A version record with a hundred replicas is ~50 KiB: anything past this is not a record,
# and is refused before it is read whole.
MAX_RECORD_BYTES = 4 << 20
NOT_FOLLOWED = "is a symbolic link (sigvirt follows no links in its catalog)"


class CorruptRecord(SigvirtError):
    template = "metadata file {path} is unreadable: {detail}"
    exit_code = ExitCode.CORRUPT_METADATA


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
    remove_stale_temps(path)
    fsync_dir(path.parent)


def remove_stale_temps(path: Path) -> list[str]:
    """The temporary files of writes to `path` whose writer died (killed between writing and
    renaming); a live writer's are left alone. Each write to a file sweeps its own."""
    prefix = f".{path.name}.tmp-"
    removed: list[str] = []
    try:
        entries = [e.name for e in os.scandir(path.parent) if e.name.startswith(prefix)]
    except OSError:
        return removed
    for name in entries:
        pid = name[len(prefix) :].partition("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(path.parent / name)
                removed.append(name)
    return removed


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
            fd = os.open(path, _LOCK_FLAGS, FILE_MODE)
        except FileNotFoundError:
            raise NotFound(f"{path.parent} no longer exists (deleted meanwhile)") from None
        except OSError as err:
            raise lock_error(path, err) from None
        held = os.fstat(fd)
        if not stat.S_ISREG(held.st_mode):
            os.close(fd)
            raise CorruptRecord(f"is {_kind(held.st_mode)}, not a lock file", path=path)
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
        if st is not None and (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)


# O_NONBLOCK: a fifo put where a lock or record belongs must not hang the command (flock
# itself still waits: it ignores O_NONBLOCK).
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def lock_error(path: Path, err: OSError) -> SigvirtError:
    """Opening a lock file failed: something else is in its place, or the OS said no."""
    if err.errno == errno.ELOOP:
        return CorruptRecord(NOT_FOLLOWED, path=path)
    if err.errno == errno.EISDIR:
        return CorruptRecord("is a directory, not a lock file", path=path)
    if err.errno == errno.ENOTDIR:
        return CorruptRecord("something on its path is not a directory", path=path)
    if err.errno == errno.ENXIO:
        return CorruptRecord("is a socket, not a lock file", path=path)
    return access_error(path, err)


def lock_is_held(path: Path) -> bool:
    """True while some process holds the flock (e.g. a version being imported)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise lock_error(path, err) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CorruptRecord(f"is {_kind(mode)}, not a lock file", path=path)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a fifo",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFLNK: "a symbolic link",
}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def open_dir(root: Path, parts: Sequence[str], *, readable: bool = False) -> int:
    """A descriptor of root/parts[0]/..., reached without following a symbolic link below
    `root` (the root itself may be one: that is the administrator's choice).

    The way down is opened O_PATH, which needs the search permission a grant on a version
    gives on the directories above it, not read permission; `readable`: the last directory
    is opened for listing. FileNotFoundError, NotADirectoryError and PermissionError pass
    through; a symbolic link on the way is a CorruptRecord.
    """
    flags = os.O_DIRECTORY | os.O_CLOEXEC
    fd = os.open(root, flags | (os.O_RDONLY if readable and not parts else os.O_PATH))
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            mode = os.O_RDONLY if readable and last else os.O_PATH
            try:
                inner = os.open(part, flags | mode | os.O_NOFOLLOW, dir_fd=fd)
            except NotADirectoryError:  # a file, or a symbolic link (O_NOFOLLOW says ENOTDIR)
                if _is_link(part, fd):
                    raise CorruptRecord(NOT_FOLLOWED, path=root.joinpath(*parts[: i + 1])) from None
                raise
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def read_record(dir_fd: int, name: str, where: Path) -> bytes:
    """The bytes of the record file `name` in the directory `dir_fd` (`where` is its path, for
    messages). A symbolic link, a directory, a fifo, a device or a file over MAX_RECORD_BYTES
    is a CorruptRecord, found without reading it; OSErrors of the open pass through."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise CorruptRecord(NOT_FOLLOWED, path=where / name) from None
        if err.errno == errno.ENXIO:
            raise CorruptRecord("is a socket, not a file", path=where / name) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CorruptRecord(f"is {_kind(st.st_mode)}, not a file", path=where / name)
        if st.st_size > MAX_RECORD_BYTES:
            raise _too_big(where / name)
        # One read takes a regular file whole (the fstat said how big); more means it grew.
        data = os.read(fd, st.st_size + 1)
        if len(data) > st.st_size:
            chunks, total = [data], len(data)
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
                total += len(chunk)
                if total > MAX_RECORD_BYTES:
                    raise _too_big(where / name)
            data = b"".join(chunks)
    finally:
        os.close(fd)
    return data


def write_record(dir_fd: int, name: str, data: bytes, mode: int, where: Path) -> None:
    """Write the record file `name` in the directory `dir_fd` atomically (`where` is its
    path, for messages): a temporary file opened O_EXCL|O_NOFOLLOW beside it, written,
    fsynced, renamed over it, the directory fsynced; the temporary file goes on failure.
    The counterpart of read_record for stores that hold their directory open."""
    tmp = f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                     dir_fd=dir_fd)  # fmt: skip
        try:
            os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise access_error(where / name, err) from None


def _too_big(path: Path) -> CorruptRecord:
    return CorruptRecord(
        f"is larger than a record may be ({MAX_RECORD_BYTES >> 20} MiB)", path=path
    )


def remove_tree(path: Path) -> None:
    """Remove a resource directory that holds only sigvirt's own files (locks, temp files)."""
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if child.is_dir() and not child.is_symlink():
            child.rmdir()
        else:
            child.unlink()
    path.rmdir()
    fsync_dir(path.parent)
