"""Which boxes were exported from which version: ROOT/.boxes/G/D/V.json.

sigvirt's own small index beside the catalog (the records themselves stay as they are):
export-box adds an entry, `image-version show` lists them (`exported_boxes`). Read back with
the catalog's guarded reads (no links followed, size-bounded) and validated field by field;
an entry that doesn't validate is a CorruptRecord naming the file. Files deleted or changed
since their export are still listed, marked so (`present`).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sigvirt.catalog import names
from sigvirt.catalog.fileio import CorruptRecord, atomic_write, file_lock, open_dir, read_record
from sigvirt.catalog.records import now

DIR = ".boxes"
MAX_ENTRIES = 1000  # an index longer than this keeps its newest entries


@dataclass(frozen=True)
class ExportedBox:
    file: str  # absolute path of the .box
    sha256: str  # of the .box file
    size: int
    exported: str  # ISO time
    image_sha256: str  # the version's bytes it was made from
    region: str = ""
    box_name: str = ""  # in a catalog (export-boxes): the name in catalog.json
    present: bool = True  # read back: the file is still there with that size

    def checked(self) -> ExportedBox:
        try:
            st = os.stat(self.file)
        except OSError:
            return replace(self, present=False)
        return replace(self, present=st.st_size == self.size)


_FIELDS: dict[str, type] = {
    "file": str, "sha256": str, "size": int, "exported": str, "image_sha256": str,
    "region": str, "box_name": str,
}  # fmt: skip


def _parts(gallery: str, definition: str, version: str) -> tuple[list[str], str]:
    names.gallery_name(gallery)
    names.definition_name(definition)
    return [DIR, gallery, definition], f"{names.Version.parse(version)}.json"


def _parse(data: bytes, where: Path) -> list[ExportedBox]:
    def bad(why: str) -> CorruptRecord:
        return CorruptRecord(why, path=where)

    try:
        doc = json.loads(data)
    except ValueError as err:
        raise bad(f"not JSON ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("boxes"), list):
        raise bad('expected {"boxes": [...]}')
    out = []
    for i, item in enumerate(doc["boxes"]):
        if not isinstance(item, dict):
            raise bad(f"boxes[{i}] is not an object")
        for key, kind in _FIELDS.items():
            value = item.get(key, "" if kind is str and key in ("region", "box_name") else None)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise bad(f"boxes[{i}].{key} is missing or not a {kind.__name__}")
        if not os.path.isabs(item["file"]) or len(item["sha256"]) != 64 or item["size"] < 0:
            raise bad(f"boxes[{i}] has a relative file, a bad sha256 or a negative size")
        out.append(ExportedBox(**{k: item.get(k, "") for k in _FIELDS}))
    return out


def exported_boxes(root: Path, gallery: str, definition: str, version: str) -> list[ExportedBox]:
    """The boxes exported from a version, oldest first, each checked for its file."""
    parts, name = _parts(gallery, definition, version)
    try:
        dfd = open_dir(root, parts)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        data = read_record(dfd, name, root.joinpath(*parts))
    except FileNotFoundError:
        return []
    finally:
        os.close(dfd)
    return [b.checked() for b in _parse(data, root.joinpath(*parts, name))]


def record(root: Path, gallery: str, definition: str, version: str, box: ExportedBox) -> None:
    """Add (or replace: same file) an exported box. OSErrors (a gallery root this user may
    not write) pass through for the caller to turn into a warning."""
    parts, name = _parts(gallery, definition, version)
    directory = root.joinpath(*parts)
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    with file_lock(directory / ".lock"):
        old: list[ExportedBox] = []
        with contextlib.suppress(FileNotFoundError, CorruptRecord):
            old = exported_boxes(root, gallery, definition, version)
        kept = [b for b in old if b.file != box.file][-(MAX_ENTRIES - 1) :]
        rows = [_row(b) for b in [*kept, box]]
        atomic_write(directory / name, json.dumps({"boxes": rows}, indent=2).encode(), 0o644)


def forget(root: Path, gallery: str, definition: str, version: str, file: str) -> None:
    """Drop the entry of a box file that was removed (export-boxes dropping a version)."""
    parts, name = _parts(gallery, definition, version)
    directory = root.joinpath(*parts)
    if not (directory / name).exists():
        return
    with file_lock(directory / ".lock"):
        try:
            old = exported_boxes(root, gallery, definition, version)
        except CorruptRecord:
            return
        rows = [_row(b) for b in old if b.file != file]
        atomic_write(directory / name, json.dumps({"boxes": rows}, indent=2).encode(), 0o644)


def _row(box: ExportedBox) -> dict[str, Any]:
    row = asdict(box)
    row.pop("present")
    return row


def new_entry(
    file: Path, sha256: str, image_sha256: str, region: str, box_name: str = ""
) -> ExportedBox:
    return ExportedBox(
        file=str(file.resolve()),
        sha256=sha256,
        size=file.stat().st_size,
        exported=now(),
        image_sha256=image_sha256,
        region=region,
        box_name=box_name,
    )
