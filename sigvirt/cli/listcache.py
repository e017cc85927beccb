"""What a long `image-version list` printed, kept row by row for the caller who printed it:
the same listing again is written out from one file, and one made after k records changed
reads, shapes and encodes those k records only, splicing their rows in among the kept rows
of all the others, instead of decoding, shaping and encoding 10,000 versions (0.5 to 0.7 s).

It is keyed by everything the text is made from, and nothing else is believed:

- A kept listing belongs to one gallery root, definition and format, and is used only under
  the same listing-wide key: the versions directory itself, the gallery's resource group
  (in ids), the caller's user and groups (which records they may read), the output format
  and columns, and the code that makes the text (Python's version, the stamps of sigvirt's
  catalog and cli modules). Its BLAKE2b digest heads the file; any difference and nothing
  in it is used.
- Each row is kept with the stamp its record file had (inode, size, mtime_ns, ctime_ns)
  before it was read, and used only while the file has exactly that stamp: one scandir, no
  reads, as the listing index is checked. A record whose stamp moved is read from its file
  with the checks a listing makes (past a quarter of them, the listing reads them through
  the listing index as without a cache, using the kept rows whose stamps match); one that
  fails any is not spliced: the listing is then made from the records as without a cache
  (warning of damaged records, keeping nothing). The listing is kept again once more
  than LAZY rows (or one in 256) moved; till then, the next listings read those again.
  The order and the set of versions are the scan's: a new record is read, a gone one
  dropped. A soft-deleted record is kept as one that shows no row.
- A row is kept only when its record changed more than a clock tick before the listing
  began (listindex.RACY_NS), so a record rewritten within one tick of being read can't go
  on showing its old text under a stamp that didn't move; and only when it shows no
  running boot test (shown `pending` once its runner is gone, which no stamp shows). Rows
  not kept are made again by every listing.
- Only a caller who sees every version of the definition (listindex's rule) and lists it
  without `--query`, as `-o json` or the default table, past formats.LONG_LIST rows.
- The files are the caller's own: `$SIGVIRT_LIST_CACHE`, else `$XDG_CACHE_HOME/sigvirt/
  lists`, else `~/.cache/sigvirt/lists` (those two only when the home directory is the
  caller's), a directory that must belong to the caller and let no one else in (0700),
  each file theirs and written by no one else. A cache others could write is not used: its
  writer could make a listing show what no record holds. What is in it the caller could
  read when it was written. `SIGVIRT_LIST_CACHE=off`, or the listing index off
  (`SIGVIRT_LIST_INDEX=off`), turns it off.

A kept file (one per gallery root, definition and format, replaced atomically; at most KEEP
of them, the least recently used go) is read with one read: a header line, the versions'
names, a block of 64-bit integers (per row its stamp, its text's length and, for tables,
its cells' lengths; then the columns' widths) and the rows' texts, each ended as the
listing ends it: a json row is its compact object (ASCII) and `,\\n`; a table row its line,
padded to the kept widths. A table whose widths change is laid out again from the cells.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import hashlib
import itertools
import os
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sigvirt.catalog import codec, listindex
from sigvirt.catalog.fileio import open_dir, read_record
from sigvirt.catalog.names import Version
from sigvirt.catalog.policy import role_of
from sigvirt.catalog.records import HIDDEN, BootTestState, ImageVersion
from sigvirt.catalog.store import GalleryStore
from sigvirt.cli import formats, render
from sigvirt.cli.render import Output
from sigvirt.errors import InvalidName, SigvirtError

FORMAT = 2
ENV = "SIGVIRT_LIST_CACHE"  # a directory, or "off"
KEEP = 8  # listings kept per user: the longest few, each up to ~2 KB per version
LAZY = 32  # rows moved since a listing was kept that make it kept again (or 1 in 256)
_MAGIC = b"sigvirt-list-cache"
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = {Output.json: "json", Output.table: "table"}
_NEVER = (-1, -1, -1, -1)  # the stamp of a row every listing makes again (racy, running)
_NO_ROW = -1  # the length of a record that shows no row (soft-deleted, pending deletion)
_FEW = 256  # records read one by one at most (else a quarter of them): past it, the index

Shape = Callable[[ImageVersion], dict[str, Any]]


@dataclass(frozen=True)
class Key:
    folder: Path
    name: str  # the listing's file in folder: one per gallery root, definition and format
    digest: str  # of everything the text is made from but the records
    kind: str  # json | table
    group: str  # the gallery's resource group, as the key has it
    gallery: str
    definition: str
    directory: tuple[int, int]  # the versions directory's device and inode
    racy: int  # a record whose ctime is not before this is read, and its row not kept
    stamps: dict[str, listindex.Stamp]  # every record file's, before any was read

    @property
    def settled(self) -> bool:
        """No record changed within a clock tick of the scan: every row may be kept."""
        return max(st[3] for st in self.stamps.values()) < self.racy


def key(
    s: GalleryStore, g: str, d: str, output: Output, columns: tuple[str, ...] = ()
) -> Key | None:
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
    except OSError:
        return None
    finally:
        os.close(dfd)
    if len(stamps) <= formats.LONG_LIST:
        return None
    caller = None if s.caller is None else (s.caller.uid, s.caller.user, sorted(s.caller.groups))
    who = (os.geteuid(), os.getegid(), sorted(os.getgroups()), caller)
    place = (str(s.root), here.st_dev, here.st_ino, g, d)
    code = (FORMAT, sys.version, sys.byteorder, _code(), formats.LONG_LIST)
    frame = (code, who, place, kind, group, columns if kind == "table" else ())
    digest = hashlib.blake2b(repr(frame).encode(), digest_size=32).hexdigest()
    name = hashlib.blake2b(repr((place, kind)).encode(), digest_size=16).hexdigest()
    racy = built - listindex.RACY_NS
    return Key(folder, name, digest, kind, group, g, d, (here.st_dev, here.st_ino), racy, stamps)


@dataclass(frozen=True)
class _Kept:
    """A kept listing, as read: its entries in the listing's order."""

    names: list[str]
    index: dict[str, int]  # name -> its entry
    stamps: list[tuple[int, ...]]
    offsets: list[int]  # of each row's text in body
    lengths: list[int]  # of each row's text, its end not counted (_NO_ROW: no row)
    cells: list[list[int]]  # per column, each row's cell's length (tables)
    widths: list[int]  # the columns' widths its lines are padded to (tables)
    body: Any  # memoryview of bytes (json) or str (table)
    numbers: list[int]  # each entry's integers as the file has them, `width` apiece
    width: int


class _Doubt(Exception):
    """A record the listing would warn about or fail on: it is made as without a cache."""


# An entry of a listing being made: its stamp as it will be kept, and its text's source: a
# kept entry's number, a new text (json: bytes) or cells (table: list), or None (no row).
_Entry = tuple[tuple[int, ...], Any]


class Listing:
    """One long listing: its key, what was kept of it, and how a record becomes a row."""

    def __init__(
        self, k: Key, s: GalleryStore, shape: Shape, columns: list[str], title: str
    ) -> None:
        self.k, self.store, self.shape, self.title = k, s, shape, title
        self.columns = columns if k.kind == "table" else []
        self.old: _Kept | None = None

    def replay(self) -> bool:
        """Print the listing from what was kept, reading only the records whose stamp moved;
        False (nothing printed) when there is nothing to believe or it would read too many
        records or any of them is in doubt: the listing is then made from the records."""
        old = self.old = _read(self.k, len(self.columns))
        if old is None:
            return False
        stamps, index, was = self.k.stamps, old.index, old.stamps
        fresh = [n for n, st in stamps.items() if (i := index.get(n)) is None or was[i] != st]
        if not fresh and len(stamps) == len(old.names):  # the listing as it was kept
            if len(old.names) - old.lengths.count(_NO_ROW) <= formats.LONG_LIST:
                return False
            self._print(old.widths, [old.body])
            return True
        if len(fresh) > max(_FEW, len(stamps) // 4):
            return False
        try:
            made = self._load(fresh, strict=True)
        except _Doubt:
            return False
        added = sorted((n for n in made if n not in index), key=_version_key)
        gone = len(stamps) - sum(n not in index for n in fresh) < len(old.names)
        order = old.names
        if gone or added or len(made) < len(fresh):
            # the versions' order: the kept one, less those gone (or now unreadable), plus
            # the new ones in their places
            order = [n for n in old.names if n in stamps and (n in made or n not in fresh)]
            for n in added:
                bisect.insort(order, n, key=_version_key)
        return self._finish(order, made, old, replay=True)

    def print_and_keep(self, versions: list[ImageVersion]) -> None:
        """Print the listing of `versions` (what list_versions found: no damaged record, past
        formats.LONG_LIST), each row made anew unless kept under its record's stamp, and
        keep what may be kept."""
        old, stamps = self.old, self.k.stamps
        made = {v.name: v for v in versions if not _same(old, v.name, stamps.get(v.name), True)}
        order = [v.name for v in versions]
        hidden, unknown = [], []  # soft-deleted and pending deletion: kept as showing no row
        for n in stamps.keys() - set(order):
            if _same(old, n, stamps[n], False):
                hidden.append(n)
            elif not _same(old, n, stamps[n], True):  # (else gone, or unreadable, since)
                unknown.append(n)
        for n, rec in self._load(unknown, strict=False).items():
            if rec.state in HIDDEN:
                made[n] = rec
                hidden.append(n)
        for n in sorted(hidden, key=_version_key):
            bisect.insort(order, n, key=_version_key)
        self._finish(order, made, old, replay=False)

    def _load(self, wanted: list[str], *, strict: bool) -> dict[str, ImageVersion]:
        """The records `wanted`, read from their files as list_versions reads them; those it
        would skip (gone, not the caller's to read) left out, and those it would warn about
        or fail on too, or (strict) _Doubt for them."""
        if not wanted:
            return {}
        k = self.k
        vdir = self.store.versions_dir(k.gallery, k.definition)
        out = {}
        try:
            dfd = open_dir(
                self.store.root, (k.gallery, "images", k.definition, "versions"), readable=True
            )
        except (SigvirtError, OSError):
            raise _Doubt() from None
        try:
            here = os.fstat(dfd)
            if (here.st_dev, here.st_ino) != k.directory:
                raise _Doubt()
            for name in wanted:
                try:
                    if _version_key(name)[0] < 0:
                        raise _Doubt()
                    try:
                        rec = codec.loads(ImageVersion, read_record(dfd, f"{name}.json", vdir))
                    except (FileNotFoundError, PermissionError):
                        continue
                    except (OSError, SigvirtError, TypeError, ValueError):
                        raise _Doubt() from None
                    if (rec.gallery, rec.definition, rec.name) != (k.gallery, k.definition, name):
                        raise _Doubt()
                except _Doubt:
                    if strict:
                        raise
                    continue
                out[name] = rec
        finally:
            os.close(dfd)
        return out

    def _finish(
        self, order: list[str], made: dict[str, ImageVersion], old: _Kept | None, *, replay: bool
    ) -> bool:
        """Print the listing of `order` (the rows of `made` made anew, the others as kept)
        and keep it if anything in it moved; False (nothing printed) on a replay that turns
        out too short to be a long listing."""
        k, table = self.k, self.k.kind == "table"
        entries: list[_Entry] = []
        rows = moved = present = 0  # rows shown; entries kept anew; of the kept ones, here
        for name in order:
            rec = made.get(name)
            if rec is None:
                assert old is not None
                i = old.index[name]
                entries.append((old.stamps[i], i))
                rows += old.lengths[i] >= 0
                present += 1
                continue
            st = k.stamps.get(name, _NEVER)
            running = rec.boot_test.state == BootTestState.RUNNING
            stamp = _NEVER if st[3] >= k.racy or running else st
            j = None if old is None else old.index.get(name)
            moved += old is None or j is None or old.stamps[j] != stamp
            present += j is not None
            if rec.state in HIDDEN:
                entries.append((stamp, None))
                continue
            row = self.shape(rec)
            if table:
                entries.append((stamp, render.long_cells(row, self.columns)))
            else:
                entries.append((stamp, formats.long_row(row).encode()))
            rows += 1
        if replay and rows <= formats.LONG_LIST:
            return False
        widths = self._widths(entries, old) if table else []
        relaid = old is not None and widths != old.widths
        pieces, ints = self._pieces(entries, old, widths, relaid)
        pieces = self._print(widths, pieces)
        # A few rows moved (or gone): read again by the next listings rather than the whole
        # text written again (18 MB for 10,000 versions in json) after each one.
        gone = 0 if old is None else len(old.names) - present
        again = old is None or relaid or moved + gone > max(LAZY, len(order) >> 8)
        if again and any(st != _NEVER for st, _src in entries):
            _write(k, order, ints + widths, len(self.columns), pieces)
        return True

    def _print(self, widths: list[int], pieces: list[Any]) -> list[Any]:
        """Print the rows: json between `[` and `]`, a table under its title and header;
        the pieces as a kept file holds them."""
        if self.k.kind == "json":
            _print_json(pieces)
            return pieces
        heads = render.long_heads(self.columns)
        body = "".join(pieces)
        render.print_long_table(*render.long_top(heads, widths, self.title), body)
        return [body.encode()]

    def _widths(self, entries: list[_Entry], old: _Kept | None) -> list[int]:
        widths = [len(h) for h in render.long_heads(self.columns)]
        new = [src for _st, src in entries if type(src) is list]
        kept = [src for _st, src in entries if type(src) is int]
        if old is not None:
            kept = [i for i in kept if old.lengths[i] >= 0]
        for c in range(len(widths)):
            if kept and old is not None:
                widths[c] = max(widths[c], *map(old.cells[c].__getitem__, kept))
            if new:
                widths[c] = max(widths[c], *(len(r[c]) for r in new))
        return widths

    def _pieces(
        self, entries: list[_Entry], old: _Kept | None, widths: list[int], relaid: bool
    ) -> tuple[list[Any], list[int]]:
        """The listing's rows as pieces of text, each row ended (runs of kept rows that lie
        together in the kept body: one piece), and the integers the new kept file has of
        each entry: its stamp, its text's length and its cells' lengths."""
        table = self.k.kind == "table"
        sep: Any = "\n" if table else b",\n"
        ncols = len(widths)
        blank = [0] * ncols
        pieces: list[Any] = []
        ints: list[int] = []
        body = None if old is None else old.body
        start = end = -1  # the run of kept text being gathered
        for st, src in entries:
            lens = None
            if type(src) is int:
                assert old is not None and body is not None
                n = old.lengths[src]
                if n < 0 or not relaid:
                    ints += old.numbers[src * old.width : (src + 1) * old.width]
                if n < 0:
                    continue
                if not relaid:
                    off = old.offsets[src]
                    if off != end:
                        if end > start:
                            pieces.append(body[start:end])
                        start = off
                    end = off + n + len(sep)
                    continue
                lens = [col[src] for col in old.cells]  # its cells' own lengths, and cells
                src = _cells_of(old, src)  # (cut at the line's end): laid out again
            if end > start:
                assert body is not None
                pieces.append(body[start:end])
            start = end = -1
            ints += st
            if src is None:
                ints.append(_NO_ROW)
                ints += blank
            elif table:
                line = render.long_line(src, widths)
                ints.append(len(line))
                ints += map(len, src) if lens is None else lens
                pieces.append(line + sep)
            else:
                ints.append(len(src))
                pieces.append(src + sep)
        if end > start:
            assert body is not None
            pieces.append(body[start:end])
        return pieces, ints


def _same(old: _Kept | None, name: str, stamp: listindex.Stamp | None, row: bool) -> bool:
    """Whether `old` kept `name` under `stamp`, as a row (row) or as showing none."""
    i = None if old is None else old.index.get(name)
    if old is None or i is None:
        return False
    return old.stamps[i] == stamp and (old.lengths[i] >= 0) == row


def _cells_of(old: _Kept, i: int) -> list[str]:
    """A kept table row's cells, from its line and their lengths (a cell's trailing blanks
    cut off at the line's end come back as the padding they were)."""
    at = old.offsets[i]
    line = old.body[at : at + old.lengths[i]]
    out, at = [], 0
    for col, w in zip(old.cells, old.widths, strict=True):
        out.append(line[at : at + col[i]])
        at += w + 2
    return out


def _version_key(name: str) -> tuple[int, int, int]:
    """Where a version goes in a listing, as list_versions sorts them; (-1, 0, 0) for a name
    that is not a version's (which list_versions calls damaged)."""
    try:
        return Version.parse(name).key
    except InvalidName:
        return (-1, 0, 0)


def _print_json(pieces: list[Any]) -> None:
    """`[`, the rows (the last without its comma) and `]`, as formats.json_text writes a long
    list: bytes straight to stdout's buffer where it has one (the text is ASCII)."""
    last = pieces[-1][:-2]
    out = sys.stdout
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        text = b"".join([b"[\n", *pieces[:-1], last, b"\n]\n"])
        out.write(text.decode())
        return
    out.flush()
    buffer.write(b"[\n")
    for p in pieces[:-1]:
        buffer.write(p)
    buffer.write(last)
    buffer.write(b"\n]\n")
    buffer.flush()


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


def _own_folder(folder: Path) -> int:
    """The cache directory, opened; OSError unless it is the caller's alone."""
    fd = os.open(folder, _FOLDER_FLAGS)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise PermissionError(f"{folder} is not the caller's alone")
    return fd


def _head(k: Key, rows: int, cols: int, names: int, body: int) -> bytes:
    return b"%s %d %s %s %d %d %d %d\n" % (
        _MAGIC, FORMAT, k.kind.encode(), k.digest.encode(), rows, cols, names, body
    )  # fmt: skip


def _read(k: Key, cols: int) -> _Kept | None:
    """The kept listing of `k`, if there is one to believe (see the module's rules)."""
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
            with contextlib.suppress(OSError):
                os.utime(fd)  # used: the least recently used go first
        finally:
            os.close(fd)
    except OSError:
        return None
    try:
        return _parse(k, cols, raw)
    except (ValueError, IndexError, UnicodeDecodeError):
        return None


def _parse(k: Key, cols: int, raw: bytes) -> _Kept | None:
    end = raw.find(b"\n", 0, 256)
    words = raw[:end].split(b" ")
    if end < 0 or len(words) != 8:
        return None
    rows, ncols, names_size, body_size = map(int, words[4:])
    if raw[: end + 1] != _head(k, rows, ncols, names_size, body_size) or ncols != cols:
        return None
    data = memoryview(raw)[end + 1 :]
    width = 5 + cols
    ints_size = 8 * (rows * width + cols)
    if rows < 1 or len(data) != names_size + ints_size + body_size:
        return None
    names = bytes(data[:names_size]).decode("ascii").split("\n")
    ints = array.array("q")
    ints.frombytes(data[names_size : names_size + ints_size])
    flat = ints.tolist()
    last = rows * width
    stamps = list(zip(*(flat[f:last:width] for f in range(4)), strict=True))
    lengths = flat[4:last:width]
    body: Any = data[names_size + ints_size :]
    if cols:
        body = bytes(body).decode()
    sep = 1 if cols else 2
    offsets = list(itertools.accumulate((n + sep if n >= 0 else 0 for n in lengths), initial=0))
    index = dict(zip(names, range(rows), strict=True))
    if len(index) != rows or min(lengths) < _NO_ROW or offsets[-1] != len(body):
        return None
    cells = [flat[5 + c : last : width] for c in range(cols)]
    return _Kept(names, index, stamps, offsets, lengths, cells, flat[last:], body, flat, width)


def _write(k: Key, order: list[str], ints: list[int], cols: int, pieces: list[Any]) -> None:
    """Keep the listing: its names, integers and text, in one file replaced atomically."""
    try:
        numbers = array.array("q", ints).tobytes()
    except OverflowError:  # an inode past 2**63: not kept
        return
    names = "\n".join(order).encode()
    head = _head(k, len(order), cols, len(names), sum(map(len, pieces)))
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
                    for part in (head, names, numbers, *pieces):
                        f.write(part)
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
    """At most KEEP listings: the least recently used go."""
    with os.scandir(dfd) as entries:
        kept = sorted(
            ((e.stat(follow_symlinks=False).st_mtime_ns, e.name) for e in entries),
            reverse=True,
        )
    for _mtime, name in kept[KEEP:]:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dfd)
