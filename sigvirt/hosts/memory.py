"""A region's (or zone's) `memory:` setting in regions.yaml: may its guests' RAM be merged?

    memory:
      merge: true     # default false

With merge on, guests' domains let QEMU mark their RAM mergeable, and KSM (hosts/ksm.py), once
running on the host, shares identical pages between them (guests of one replica share their
kernel and page cache). Off, the domain says <nosharepages/> (guests/memory.py): KSM running
for something else never scans them. Parsed here so regions.py only calls it.
"""

from __future__ import annotations

from typing import Any

import yaml

from sigvirt.hosts.yamlwalk import Walker

_MEMORY_KEYS = ("merge",)


def parse_merge(
    w: Walker, key: str, m: dict[str, tuple[yaml.Node, yaml.Node]], default: bool
) -> bool:
    """`m`'s memory.merge (a region's or zone's settings mapping); `default` when not set."""
    if "memory" not in m:
        return default
    mkey = f"{key}.memory"
    found = w.mapping(m["memory"][1], mkey, _MEMORY_KEYS)
    if "merge" not in found:
        return default
    return bool(w.scalar(found["merge"][1], f"{mkey}.merge", "bool", "true or false"))


def merge_doc(merge: bool, inherited: bool = False) -> dict[str, Any]:
    """The `memory` key regions.yaml needs for `merge` ({} when it is what's inherited)."""
    return {} if merge == inherited else {"memory": {"merge": merge}}
