"""The listing index of a definition's versions: one file beside the records,
`versions/.listindex`, holding every record that reads cleanly with the stamp (inode, size,
mtime_ns, ctime_ns) its file had, so `image-version list`, `show-latest` and `vm create
--image G/D` read one file instead of 10,000.

It is never trusted over a record:

- A listing still stats every record (one scandir, no reads). An entry is used only when
  its file has exactly the stamp recorded and changed more than a clock tick before the
  index was built (file times come from a coarse clock: a change in the same tick as the
  build could leave the stamp as it was; git's "racily clean" rule). Every other record is
  read from its file, as without an index; a record file the index lacks is read, an entry
  whose file is gone is dropped.
- It is read by the record codec, as strictly as a record (the document is a dataclass
  holding ImageVersion records), and every record is checked against where it lies. A file
  that fails any check is ignored as a whole, never believed, never an error.
- It is believed only when it belongs to root, to the caller, or to a user who may write
  the definition's versions now (contributor or owner by access.json): anyone else who owns
  it (a former contributor) could rewrite it in place. A file others may write is ignored.

Listings keep it in step: one that finds it missing, unbelievable or more than a few
entries behind writes it again from what it just read (each entry with the stamp taken
before its file was read, so a change meanwhile shows as a different stamp), under the
definition lock taken without waiting, and only if the caller may write there. Writers of
records pay nothing: an index rewritten on every record write would cost a 10,000-version
definition a 10 MB write per replication progress update.

Its permissions are the records': written beside them by atomic_write (the records' mode;
the directory's default ACL when new, the old index's group and ACL when rewritten), and
sharing's plan gives it the ACL of a version record without grants of its own, so exactly
those who may read every version may read it. Callers given single versions never use it.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import grp
import json
import os
import pwd
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sigvirt.catalog import codec
from sigvirt.catalog.fileio import FILE_MODE, atomic_write, file_lock
from sigvirt.catalog.policy import Caller, Policy, role_of
from sigvirt.catalog.records import ImageVersion
from sigvirt.errors import SigvirtError

NAME = ".listindex"
FORMAT = 1
# "off": every listing reads every record and no index is written (the benchmark's "before").
ENV = "SIGVIRT_LIST_INDEX"
# Smaller definitions list fast enough from their records: no index file for them.
MIN_VERSIONS = 32
# A record whose ctime is this close to the index's build time is read, never believed: file
# times lag the fine clock by up to a tick (4 ms at HZ=250, 10 ms at HZ=100).
RACY_NS = 50_000_000
# Per entry, what the index may hold beyond its record's own bytes (name, stamp, commas).
_ENTRY_SLACK = 256
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

Stamp = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


@dataclass(frozen=True)
class IndexFile:
    format: int
    gallery: str
    definition: str
    built_ns: int  # the fine clock before the records were statted
    stamps: dict[str, tuple[int, ...]]  # version -> its file's Stamp when it was read
    records: dict[str, ImageVersion]  # version -> its record


def enabled() -> bool:
    return os.environ.get(ENV, "").lower() not in ("off", "0", "no", "false")


def stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def scan(dir_fd: int) -> dict[str, Stamp]:
    """Every record file's stamp (`V.json`, not following links), without reading one."""
    out: dict[str, Stamp] = {}
    with os.scandir(dir_fd) as entries:
        for e in entries:
            name = e.name
            if name.endswith(".json") and not name.startswith("."):
                try:
                    out[name[:-5]] = stamp(e.stat(follow_symlinks=False))
                except FileNotFoundError:
                    continue  # removed meanwhile
    return out


def believed(
    dir_fd: int, g: str, d: str, stamps: dict[str, Stamp], policy: Callable[[], Policy]
) -> dict[str, ImageVersion] | None:
    """The index's records that may stand in for their files (see the module's rules); None
    when there is no index to believe: missing, unreadable, damaged, misplaced, foreign.
    `policy`: the gallery's sharing, asked only about an index the caller didn't write."""
    try:
        fd = os.open(NAME, _READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        # What it may weigh: its records, twice over (a record written by hand may hold raw
        # UTF-8 that the index escapes), and each entry's name and stamp.
        limit = 2 * sum(s[1] for s in stamps.values()) + _ENTRY_SLACK * (len(stamps) + 1)
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_mode & stat.S_IWOTH
            or st.st_size > limit
            or not owner_may_write(st.st_uid, policy, d)
        ):
            return None
        raw = _read_all(fd, st.st_size)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        doc = codec.loads(IndexFile, raw)
    except (ValueError, TypeError, RecursionError):
        return None
    if doc.format != FORMAT or doc.gallery != g or doc.definition != d:
        return None
    out: dict[str, ImageVersion] = {}
    racy = doc.built_ns - RACY_NS
    for name, rec in doc.records.items():
        if rec.gallery != g or rec.definition != d or rec.name != name:
            return None  # misplaced: nothing in it is believed
        was = doc.stamps.get(name)
        if was is not None and len(was) == 4 and was[3] < racy and stamps.get(name) == was:
            out[name] = rec
    return out


def _read_all(fd: int, size: int) -> bytes:
    chunks, total = [], 0
    while chunk := os.read(fd, max(size + 1 - total, 1 << 16)):
        chunks.append(chunk)
        total += len(chunk)
        if total > size:
            raise OSError(errno.EFBIG, "the index grew while it was read")
    return b"".join(chunks)


def stale(good: int, used: int, have_index: bool) -> bool:
    """Whether a listing that took `used` of the `good` records it found (those that read
    cleanly: a damaged one is never in the index) from the index writes it again: when it
    is missing or unbelievable, or more than a few entries behind."""
    if good < MIN_VERSIONS:
        return False
    return not have_index or good - used > max(8, good // 64)


def write(
    ddir: Path, g: str, d: str, built_ns: int, records: list[tuple[Stamp, ImageVersion]]
) -> None:
    """Write the index of the definition directory `ddir` again (atomically, keeping the old
    one's group and ACL), if its lock is free and the caller may write there: a listing
    never waits or fails because of its index. Records whose stamp is racy go in too: the
    next listing reads them from their files all the same."""
    doc = IndexFile(
        FORMAT, g, d, built_ns, {r.name: s for s, r in records}, {r.name: r for _s, r in records}
    )
    path = ddir / "versions" / NAME
    with contextlib.suppress(SigvirtError, OSError), file_lock(ddir / ".lock", blocking=False):
        data = json.dumps(codec.to_dict(doc), separators=(",", ":"), check_circular=False)
        with contextlib.suppress(FileNotFoundError):
            old = os.lstat(path)
            # A rewrite keeps the old file's group and ACL, or its mode: not those of a link,
            # a fifo or a file others may write, which would never be believed again.
            if not stat.S_ISREG(old.st_mode) or old.st_mode & stat.S_IWOTH:
                os.unlink(path)
        atomic_write(path, data.encode() + b"\n", FILE_MODE)


def owner_may_write(uid: int, policy: Callable[[], Policy], scope: str) -> bool:
    """Whether the user `uid` may write the records under `scope` (root and the caller may:
    an index they wrote is theirs to trust); `policy` is asked only for anyone else."""
    if uid in (0, os.geteuid()):
        return True
    try:
        return _writer(policy(), uid, scope)
    except SigvirtError:
        return False


def _writer(policy: Policy, uid: int, scope: str) -> bool:
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return False
    groups = set()
    for gid in os.getgrouplist(user.pw_name, user.pw_gid):
        with contextlib.suppress(KeyError):
            groups.add(grp.getgrgid(gid).gr_name)
    role = role_of(policy, Caller(uid, user.pw_name, frozenset(groups)), scope)
    return role in ("contributor", "owner")


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection while a long listing is built: it makes no cycles, and the
    collector walked its 100,000 new containers again and again (a third of the time of
    shaping 10,000 versions for `-o json`)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        # Straight into the oldest generation (freeze, then unfreeze): the young-generation
        # collection due at enable() would walk them all once more (80 ms for 10,000
        # versions). Reference counting frees them as before; full collections see them.
        gc.freeze()
        gc.unfreeze()
        if was:
            gc.enable()


def now_ns() -> int:
    """The fine clock, taken before a listing stats the records (the build time it writes)."""
    return time.time_ns()
