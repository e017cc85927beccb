"""Editing regions.yaml in place: `region add|update|remove` change one region and keep the
rest of the file as its author wrote it (comments, order, quoting, indentation).

ruamel.yaml's round-trip mode carries comments and layout through a load and a dump; every
edit is a pure function text -> text, and its result is read back by regions.parse (the one
parser) before anything is written, so an edit can't leave a file sigvirt would refuse. The
file is replaced atomically under a lock, and only if nobody changed it since it was read.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from sigvirt.catalog.fileio import atomic_write, file_lock
from sigvirt.errors import ConfigError, Conflict, HostAccessDenied, NotFound
from sigvirt.hosts import regions
from sigvirt.hosts.regions import RegionConfig, RegionsConfig


@dataclass(frozen=True)
class Edit:
    """An edit as data: the file, its text before and after (what --dry-run shows)."""

    path: Path
    before: str
    after: str
    config: RegionsConfig  # the file after the edit, as sigvirt reads it
    layout_kept: bool  # False when ruamel could not reproduce the untouched text exactly


def guess_indent(text: str) -> tuple[int, int, int]:
    """The file's (mapping, sequence, offset) indentation in ruamel's terms, from its first
    nested mapping and first nested list (ruamel's own guess reads mixed files wrongly);
    sigvirt's own style, (2, 4, 2), where the file shows none."""
    mapping = offset = None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for line, nxt in itertools.pairwise(lines):
        head = line.split("#", 1)[0].rstrip()
        if not head.endswith(":") or head.lstrip().startswith("- "):
            continue
        step = (len(nxt) - len(nxt.lstrip())) - (len(line) - len(line.lstrip()))
        if nxt.lstrip().startswith("- "):
            offset = step if offset is None and step >= 0 else offset
        elif step > 0 and mapping is None:
            mapping = step
    mapping = mapping or 2
    offset = 2 if offset is None else offset
    return mapping, offset + 2, offset


def _yaml(text: str) -> tuple[YAML, Any]:
    y = YAML()  # round-trip
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap a long line
    mapping, sequence, offset = guess_indent(text)
    y.indent(mapping=mapping, sequence=sequence, offset=offset)
    try:
        return y, y.load(text)
    except YAMLError as err:
        raise ConfigError(f"regions.yaml does not parse: {err}") from None


def _dump(y: YAML, doc: Any) -> str:
    out = io.StringIO()
    y.dump(doc, out)
    return out.getvalue()


def _node(value: Any) -> Any:
    """Plain dicts and lists as ruamel's commented types (so they dump in block style)."""
    if isinstance(value, dict):
        m = CommentedMap()
        for k, v in value.items():
            m[k] = _node(v)
        return m
    if isinstance(value, list):
        s = CommentedSeq()
        s.extend(_node(v) for v in value)
        return s
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def edit_text(text: str, change: Callable[[CommentedMap], None]) -> tuple[str, bool]:
    """Apply `change` to the `regions` mapping of the file; the new text, and whether the
    untouched parts came through byte for byte (they do for files ruamel can reproduce)."""
    y, doc = _yaml(text)
    layout_kept = _dump(y, doc) == text
    if not isinstance(doc, CommentedMap) or not isinstance(doc.get("regions"), CommentedMap):
        raise ConfigError("regions.yaml has no `regions:` mapping to edit")
    change(doc["regions"])
    return _dump(y, doc), layout_kept


def add_region(text: str, region: RegionConfig) -> str:
    def change(m: CommentedMap) -> None:
        if region.name in m:
            raise Conflict(f"region {region.name} exists already; use sigvirt region update")
        m[region.name] = _node(regions.region_doc(region))

    return edit_text(text, change)[0]


def update_region(text: str, region: RegionConfig) -> str:
    """Change what differs from the region as the file has it now; a key whose value stays
    (however the file spells it, or leaves it to its default) is not touched."""
    old = regions.region_doc(regions.parse(text).region(region.name))
    new = regions.region_doc(region)

    def change(m: CommentedMap) -> None:
        node = m[region.name]
        for key in [k for k in old if k not in new and k in node]:
            del node[key]
        for key, value in new.items():
            if old.get(key) != value:
                node[key] = _node(value)

    return edit_text(text, change)[0]


def remove_region(text: str, name: str) -> str:
    def change(m: CommentedMap) -> None:
        if name not in m:
            raise NotFound(f"region {name} not found in regions.yaml")
        del m[name]

    return edit_text(text, change)[0]


def plan(path: Path, edit: Callable[[str], str]) -> Edit:
    """Read the file, edit its text, and check the result as sigvirt will read it."""
    try:
        before = path.read_text()
    except FileNotFoundError:
        raise NotFound(f"{path} not found; create it with sigvirt region init") from None
    except PermissionError:
        raise HostAccessDenied(f"cannot read {path}: permission denied") from None
    after = edit(before)
    config = regions.parse(after, source=str(path))
    kept = edit_text(before, lambda _m: None)[1]
    return Edit(path, before, after, config, kept)


def apply(e: Edit) -> None:
    """Write the edit, unless the file changed since it was read (then nothing is written)."""
    lock = e.path.with_name(f".{e.path.name}.lock")
    try:
        with file_lock(lock):
            if e.path.read_text() != e.before:
                raise Conflict(f"{e.path} changed while it was being edited; run the command again")
            atomic_write(e.path, e.after.encode(), 0o644, replace=True, inherit=True)
    except PermissionError:
        raise HostAccessDenied(f"cannot write {e.path}: permission denied") from None
