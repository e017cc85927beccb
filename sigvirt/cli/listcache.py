"""What a long `image-version list` printed, kept for the caller who printed it: the same
listing again (no record changed) is written out from one file instead of decoding, shaping
and encoding 10,000 versions (0.5 to 0.7 s) again.

It is keyed by everything the text is made from, and nothing else is believed:

- every record file's stamp (inode, size, mtime_ns, ctime_ns: one scandir, no reads, as the
  listing index is checked), the listing index's, the versions directory itself, the
  gallery's resource group (in ids), the caller's user and groups (which records they may
  read), the output format, and the code that makes the text (the stamps of sigvirt's
  catalog and cli modules). The key's BLAKE2b digest heads the file; any difference is a
  miss and the listing is made as without a cache.
- A listing is kept only when every record changed more than a clock tick before it began
  (listindex.RACY_NS), so a record rewritten within one tick of being read can't go on
  showing its old text under a stamp that didn't move; only when it found no damaged
  record (those are warned about on every listing); and only when no boot test in it is
  running (shown `pending` once its runner is gone, which no stamp shows).
- Only a caller who sees every version of the definition (listindex's rule) and lists it
  without `--query`, as `-o json` or the default table, past formats.LONG_LIST rows.
- The files are the caller's own: `$SIGVIRT_LIST_CACHE`, else `$XDG_CACHE_HOME/sigvirt/
  lists`, else `~/.cache/sigvirt/lists` (those two only when the home directory is the
  caller's), a directory that must belong to the caller and let no one else in (0700),
  each file theirs and written by no one else. A cache others could
  write is not used: its writer could make a listing show what no record holds. What is in
  it the caller could read when it was written. `SIGVIRT_LIST_CACHE=off`, or the listing
  index off (`SIGVIRT_LIST_INDEX=off`), turns it off. At most KEEP files are kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sigvirt.catalog import listindex
from sigvirt.catalog.fileio import open_dir
from sigvirt.catalog.policy import role_of
from sigvirt.catalog.store import GalleryStore
from sigvirt.cli import formats, render
from sigvirt.cli.render import Output
from sigvirt.errors import SigvirtError

FORMAT = 1
ENV = "SIGVIRT_LIST_CACHE"  # a directory, or "off"
KEEP = 8  # listings kept per user: the longest few, each up to ~2 KB per version
_MAGIC = b"sigvirt-list-cache"
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = {Output.json: "json", Output.table: "table"}


@dataclass(frozen=True)
class Key:
    folder: Path
    name: str  # the listing's file in folder: one per gallery root, definition and format
    digest: str  # of everything the text is made from
    kind: str  # json | table
    group: str  # the gallery's resource group, as the key has it
    settled: bool  # no record changed within a clock tick of the scan: it may be kept


def key(s: GalleryStore, g: str, d: str, output: Output) -> Key | None:
    """The key of this listing as it stands, taken before any record is read; None when it
    is not one to keep or replay (see the module's rules) or anything is in doubt: the
    listing then goes its usual way, which raises the errors there are."""
    kind = _KINDS.get(output)
    folder = _folder()
    if kind is None or folder is None or render.settings().query is not None:
        return None
    if not listindex.enabled():
        return None
    try:
        s.versions_dir(g, d)  # the names are names, before they become paths
        group = s.get_gallery(g).resource_group if kind == "json" else ""
        if s.caller is not None and role_of(s.policy(g), s.caller, d) is None:
            return None  # a caller given single versions: the listing reads each one
        built = listindex.now_ns()
        dfd = open_dir(s.root, (g, "images", d, "versions"), readable=True)
    except (SigvirtError, OSError):
        return None
    try:
        here = os.fstat(dfd)
        stamps = listindex.scan(dfd)
        index = _stamp(dfd, listindex.NAME)  # what a listing may believe in place of records
    except OSError:
        return None
    finally:
        os.close(dfd)
    if len(stamps) <= formats.LONG_LIST:
        return None
    caller = None if s.caller is None else (s.caller.uid, s.caller.user, sorted(s.caller.groups))
    who = (os.geteuid(), os.getegid(), sorted(os.getgroups()), caller)
    place = (str(s.root), here.st_dev, here.st_ino, g, d)
    digest = hashlib.blake2b(
        repr((FORMAT, sys.version, _code(), who, place, kind, group, index)).encode(),
        digest_size=32,
    )
    digest.update(repr(stamps).encode())  # scandir's order: a new order is only a miss
    name = hashlib.blake2b(repr((place, kind)).encode(), digest_size=16).hexdigest()
    racy = built - listindex.RACY_NS
    settled = max(st[3] for st in stamps.values()) < racy
    return Key(folder, name, digest.hexdigest(), kind, group, settled)


def replay(k: Key) -> bool:
    """Print the kept listing of `k`, as it was printed; False (nothing printed) if there
    is none to believe."""
    text = _read(k)
    if text is None:
        return False
    _print(k.kind, text)
    return True


def keep_and_print(
    k: Key, rows: list[dict[str, Any]], columns: list[str], title: str, *, timeless: bool
) -> None:
    """Print rows as render.emit prints a long listing (ready, no query), and keep the text
    if the listing may be kept. `timeless`: the rows are the records' alone, not also the
    moment's (a boot test shown `running` until its runner is gone is not)."""
    if k.kind == "json":
        text = formats.json_text(rows)
    else:  # title and header are one line each: the rows follow the second newline
        text = "\n".join(render.long_table(rows, columns, title))
    if k.settled and timeless:
        _write(k, text)
    _print(k.kind, text)


def _print(kind: str, text: str) -> None:
    if kind == "json":
        sys.stdout.write(text)
    else:
        render.print_long_table(*text.split("\n", 2))


def _folder() -> Path | None:
    where = os.environ.get(ENV, "")
    if where.lower() in ("off", "0", "no", "false"):
        return None
    if where:
        return Path(where)
    cache = os.environ.get("XDG_CACHE_HOME", "")
    try:
        home = Path.home()
        # not in someone else's home (sudo keeping HOME): root's files there would be theirs
        # to trip over
        if os.stat(home).st_uid != os.geteuid():
            return None
    except (RuntimeError, OSError):  # no home
        return None
    return (Path(cache) if os.path.isabs(cache) else home / ".cache") / "sigvirt" / "lists"


def _code() -> list[tuple[str, int, int]]:
    """What identifies the code that makes a listing's text: its modules' stamps."""
    top = Path(__file__).parent.parent
    out = []
    for sub in (top, top / "catalog", top / "cli"):
        with os.scandir(sub) as entries:
            for e in entries:
                if e.name.endswith(".py"):
                    st = e.stat()
                    out.append((e.path, st.st_mtime_ns, st.st_size))
    return sorted(out)


def _stamp(dfd: int, name: str) -> listindex.Stamp | None:
    try:
        return listindex.stamp(os.stat(name, dir_fd=dfd, follow_symlinks=False))
    except FileNotFoundError:
        return None


def _own_folder(folder: Path) -> int:
    """The cache directory, opened; OSError unless it is the caller's alone."""
    fd = os.open(folder, _FOLDER_FLAGS)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise PermissionError(f"{folder} is not the caller's alone")
    return fd


def _head(k: Key, size: int) -> bytes:
    return b"%s %d %s %d\n" % (_MAGIC, FORMAT, k.digest.encode(), size)


def _read(k: Key) -> str | None:
    try:
        dfd = _own_folder(k.folder)
        try:
            fd = os.open(k.name, _READ_FLAGS, dir_fd=dfd)
        finally:
            os.close(dfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return None
            with open(fd, "rb", closefd=False) as f:
                raw = f.read()
        finally:
            os.close(fd)
    except OSError:
        return None
    head, _, body = raw.partition(b"\n")
    if head + b"\n" != _head(k, len(body)):  # another key, or a file cut short
        return None
    try:
        return body.decode()
    except UnicodeDecodeError:
        return None


def _write(k: Key, text: str) -> None:
    body = text.encode()
    with contextlib.suppress(OSError):
        os.makedirs(k.folder, mode=0o700, exist_ok=True)
        dfd = _own_folder(k.folder)
        try:
            temp = f".{k.name}.{os.getpid()}"
            fd = os.open(
                temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=dfd
            )
            try:
                with open(fd, "wb", closefd=False) as f:
                    f.write(_head(k, len(body)))
                    f.write(body)
                os.rename(temp, k.name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                os.unlink(temp, dir_fd=dfd)
                raise
            finally:
                os.close(fd)
            _prune(dfd)
        finally:
            os.close(dfd)


def _prune(dfd: int) -> None:
    """At most KEEP listings: the least recently written go."""
    with os.scandir(dfd) as entries:
        kept = sorted(
            ((e.stat(follow_symlinks=False).st_mtime_ns, e.name) for e in entries),
            reverse=True,
        )
    for _mtime, name in kept[KEEP:]:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dfd)
