"""`image-definition export-boxes`: a definition as a Vagrant box catalog.

DIR holds one box per published version (`D-V.box`, made by export-box) and `catalog.json`,
Vagrant's box metadata format: the box's name (`G/D`), and per version one `libvirt`
provider with its url and sha256, so `vagrant box add DIR/catalog.json`, `vagrant box
outdated` and `vagrant box update` follow the gallery.

Plan, then apply. The plan compares the gallery's published versions with catalog.json:
versions it lists whose box is there (same size) are kept; new versions are exported;
versions gone from the gallery (deleted, or no longer published) are dropped with their box.
catalog.json is rewritten (atomically) after every box, so a killed run keeps what it
finished; a box a killed run wrote but did not list yet is adopted when the exported-boxes
index names it and its sha256 still matches, and refused otherwise (never overwritten).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sigvirt.catalog import names
from sigvirt.catalog.fileio import CorruptRecord, atomic_write, file_lock
from sigvirt.catalog.records import ImageVersion
from sigvirt.context import Context
from sigvirt.errors import Conflict, InvalidArgument, InvalidName, NotFound
from sigvirt.vagrant import export, index
from sigvirt.versions import transfer

CATALOG = "catalog.json"
LOCK = ".catalog.lock"
MAX_CATALOG_BYTES = 4 << 20
_SHA = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Entry:
    version: str
    file: str  # a name in DIR
    sha256: str
    size: int
    region: str = ""  # an adopted box: where the killed export ran (its clone may be there)


@dataclass(frozen=True)
class CatalogPlan:
    gallery: str
    definition: str
    directory: Path
    base_url: str  # "" = file:// URLs of DIR
    region: str | None
    keep: tuple[Entry, ...]
    adopt: tuple[Entry, ...]  # boxes a killed run wrote and the index vouches for
    export: tuple[str, ...]  # versions to export, oldest first
    drop: tuple[Entry, ...]  # listed, but gone from the gallery

    @property
    def name(self) -> str:
        return f"{self.gallery}/{self.definition}"

    def box_file(self, version: str) -> str:
        return box_file(self.definition, version)

    def actions(self) -> list[str]:
        return (
            [f"keep {e.version} ({e.file})" for e in self.keep]
            + [f"adopt {e.version} ({e.file}, written by an earlier run)" for e in self.adopt]
            + [f"export {v} to {self.box_file(v)}" for v in self.export]
            + [
                f"drop {e.version} (not in the gallery any more): remove {e.file}"
                for e in self.drop
            ]
        )


@dataclass(frozen=True)
class CatalogResult:
    plan: CatalogPlan
    catalog: dict[str, Any]
    exported: tuple[export.Exported, ...] = ()
    warnings: tuple[str, ...] = field(default=())


def box_file(definition: str, version: str) -> str:
    return f"{definition}-{version}.box"


def url_for(directory: Path, base_url: str, file: str) -> str:
    if base_url:
        return base_url.rstrip("/") + "/" + file
    return (directory / file).as_uri()


def document(plan: CatalogPlan, entries: list[Entry]) -> dict[str, Any]:
    """catalog.json as Vagrant reads it (box metadata: name, versions → providers)."""
    ordered = sorted(entries, key=lambda e: names.Version.parse(e.version).key)
    return {
        "name": plan.name,
        "description": f"sigvirt image definition {plan.name}, one box per published version",
        "versions": [
            {
                "version": e.version,
                "providers": [
                    {
                        "name": "libvirt",
                        "url": url_for(plan.directory, plan.base_url, e.file),
                        "checksum_type": "sha256",
                        "checksum": e.sha256,
                    }
                ],
            }
            for e in ordered
        ],
    }


def read_catalog(directory: Path, name: str) -> list[Entry]:
    """The entries of DIR/catalog.json (none when it is absent); a file that isn't a catalog
    sigvirt wrote for this definition is a CorruptRecord naming it."""
    path = directory / CATALOG
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise CorruptRecord(f"cannot be read ({err.strerror})", path=path) from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_CATALOG_BYTES + 1)
    if len(data) > MAX_CATALOG_BYTES:
        raise CorruptRecord(f"is over {MAX_CATALOG_BYTES} bytes", path=path)
    try:
        doc = json.loads(data)
    except ValueError:
        raise CorruptRecord("is not JSON", path=path) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("versions"), list):
        raise CorruptRecord('is not a Vagrant box catalog ({"name", "versions": [...]})', path=path)
    if doc.get("name") != name:
        raise Conflict(
            f"{path} is the catalog of {names.shorten(str(doc.get('name')), 100)}, not {name}",
            hint="give each definition a directory of its own",
        )
    out = []
    for i, item in enumerate(doc["versions"]):
        try:
            version = str(names.Version.parse(item["version"]))
            (provider,) = item["providers"]
            sha = provider["checksum"]
            file = provider["url"].rsplit("/", 1)[-1]
        except (KeyError, TypeError, ValueError, AttributeError, InvalidName) as err:
            raise CorruptRecord(
                f"versions[{i}] is not one libvirt box ({err})", path=path
            ) from None
        if (
            not isinstance(sha, str)
            or not _SHA.fullmatch(sha)
            or file != box_file(name.split("/")[1], version)
        ):
            raise CorruptRecord(f"versions[{i}] names another file or a bad sha256", path=path)
        try:
            size = os.lstat(directory / file).st_size
        except FileNotFoundError:
            size = -1
        out.append(Entry(version, file, sha, size))
    return out


def _published(ctx: Context, gallery: str, definition: str) -> list[ImageVersion]:
    return [v for v in ctx.store.list_versions(gallery, definition) if v.published_ok]


def _recorded(ctx: Context, rec: ImageVersion, path: Path) -> index.ExportedBox | None:
    try:
        found = index.exported_boxes(ctx.store.root, rec.gallery, rec.definition, rec.name)
    except CorruptRecord:
        return None
    return next((b for b in found if b.file == str(path.resolve()) and b.present), None)


def plan_catalog(
    ctx: Context,
    gallery: str,
    definition: str,
    directory: Path,
    base_url: str = "",
    region: str | None = None,
) -> CatalogPlan:
    """What an export-boxes run would do (read-only)."""
    g, d = names.gallery_name(gallery), names.definition_name(definition)
    ctx.store.get_definition(g, d)
    directory = Path(os.path.abspath(directory))
    if not directory.is_dir():
        raise NotFound(f"--dir {names.shorten(str(directory), 200)}: no such directory")
    if base_url and not re.match(r"^(https?|file)://\S+$", base_url):
        raise InvalidArgument(
            f"--base-url {names.shorten(base_url)}: expected http(s):// or file://"
        )
    listed = {e.version: e for e in read_catalog(directory, f"{g}/{d}")}
    published = {v.name: v for v in _published(ctx, g, d)}
    keep, adopt, todo = [], [], []
    for name in sorted(published, key=lambda v: names.Version.parse(v).key):
        entry = listed.get(name)
        path = directory / box_file(d, name)
        on_disk = os.path.lexists(path)
        if entry is not None and on_disk and entry.size == path.stat().st_size:
            keep.append(entry)
            continue
        if on_disk:
            found = _recorded(ctx, published[name], path)
            if found is None or found.sha256 != (entry.sha256 if entry else found.sha256):
                raise Conflict(
                    f"{path} is not the box catalog.json lists for {name}",
                    hint="remove it (export-boxes never overwrites a file) and run again",
                )
            adopt.append(Entry(name, path.name, found.sha256, found.size, found.region))
            continue
        todo.append(name)
    drop = [e for v, e in listed.items() if v not in published]
    return CatalogPlan(g, d, directory, base_url, region, tuple(keep), tuple(adopt), tuple(todo),
                       tuple(drop))  # fmt: skip


def apply_catalog(
    ctx: Context,
    plan: CatalogPlan,
    *,
    timeout: float = 900.0,
    on_step: Callable[[str], None] | None = None,
) -> CatalogResult:
    """Export the new versions, drop the gone ones, write catalog.json after each change."""
    step = on_step or (lambda _s: None)
    path = plan.directory / CATALOG
    with file_lock(plan.directory / LOCK):
        entries = list(plan.keep)
        warnings: list[str] = []
        for e in plan.adopt:
            if transfer.sha256_file(plan.directory / e.file) != e.sha256:
                raise Conflict(f"{plan.directory / e.file} changed since it was exported",
                               hint="remove it and run again")  # fmt: skip
            entries.append(e)
            if e.region in ctx.regions.regions:
                # the run that wrote it was killed before removing its clone
                export.reap(ctx, f"{plan.name}/{e.version}", e.region)
        _write(path, plan, entries)
        for e in plan.drop:
            step(f"dropping {e.version}: {e.file}")
            (plan.directory / e.file).unlink(missing_ok=True)
            _write(path, plan, entries)
            try:
                index.forget(ctx.store.root, plan.gallery, plan.definition, e.version,
                             str(plan.directory / e.file))  # fmt: skip
            except (OSError, NotFound) as err:
                warnings.append(f"{e.version}: the exported-boxes index was not updated: {err}")
        done = []
        for version in plan.export:
            step(f"exporting {plan.name}/{version}")
            dest = plan.directory / plan.box_file(version)
            p = export.plan_export(ctx, plan.gallery, plan.definition, version, dest,
                                   plan.region, box_name=plan.name)  # fmt: skip
            made = export.export_box(ctx, p, timeout=timeout, on_step=step)
            done.append(made)
            warnings += made.warnings
            entries.append(Entry(version, dest.name, made.sha256, made.size))
            _write(path, plan, entries)
        doc = _write(path, plan, entries)
    return CatalogResult(plan, doc, tuple(done), tuple(warnings))


def _write(path: Path, plan: CatalogPlan, entries: list[Entry]) -> dict[str, Any]:
    doc = document(plan, entries)
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode(), 0o644, inherit=False)
    return doc
