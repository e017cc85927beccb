"""`sigvirt-access-sync`: the one thing lab hosts let every user run as root (via sudo):
make a gallery's file ACLs match its access.json. It reads only what owners wrote and
refuses gallery roots that a non-root user could have prepared."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sigvirt.errors import SigvirtError
from sigvirt.sharing import share


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sigvirt-access-sync", description=__doc__)
    parser.add_argument("--gallery-root", type=Path, required=True)
    parser.add_argument(
        "--regions", type=Path, help="a regions.yaml only root can write (default: the system's)"
    )
    parser.add_argument("gallery")
    args = parser.parse_args(argv)
    try:
        for line in share.sync_as_root_helper(args.gallery_root, args.gallery, args.regions):
            print(line)
    except SigvirtError as err:
        print(f"sigvirt-access-sync: {err.message}", file=sys.stderr)
        return int(err.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
