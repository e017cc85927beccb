"""`sigvirt-access-sync`: the one thing lab hosts let every user run as root (via sudo):
make a gallery's file ACLs match its access.json. It reads only what owners wrote and
refuses gallery roots that a non-root user could have prepared."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from sigvirt import access, names
from sigvirt.errors import SigvirtError
from sigvirt.store import GalleryStore


def trusted(path: Path) -> str | None:
    """Why a directory can't be trusted as root's, or None: every component owned by root
    and writable only by root (sticky world-writable dirs like /var/tmp are fine)."""
    for p in [*reversed(path.parents), path]:
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            return f"{p} is a symbolic link"
        if st.st_uid != 0:
            return f"{p} is not owned by root"
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable and not st.st_mode & stat.S_ISVTX:
            return f"{p} is writable by others"
    return None


def _made_by_root(gallery: Path) -> str | None:
    """A gallery directory is root's (only root can create one in a trusted root); its
    owners may write in it, which is how they change its sharing."""
    st = os.lstat(gallery)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return f"{gallery} is not a directory"
    if st.st_uid != 0:
        return f"{gallery} is not owned by root"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sigvirt-access-sync", description=__doc__)
    parser.add_argument("--gallery-root", type=Path, required=True)
    parser.add_argument("gallery")
    args = parser.parse_args(argv)
    try:
        names.gallery_name(args.gallery)
        root = args.gallery_root.resolve()
        problem = trusted(root) or _made_by_root(root / args.gallery)
        if problem:
            print(f"sigvirt-access-sync: refused: {problem}", file=sys.stderr)
            return 10
        for line in access.sync(GalleryStore(root), args.gallery):
            print(line)
    except SigvirtError as err:
        print(f"sigvirt-access-sync: {err.message}", file=sys.stderr)
        return int(err.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
