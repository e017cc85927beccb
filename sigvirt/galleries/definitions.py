"""Image definitions: create and update, every field checked the way az checks it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sigvirt.catalog import names
from sigvirt.catalog.dates import parse_date
from sigvirt.catalog.records import Definition, now
from sigvirt.catalog.store import GalleryStore
from sigvirt.errors import InvalidArgument


@dataclass(frozen=True)
class DefinitionInput:
    publisher: str
    offer: str
    sku: str
    os_type: str = "Linux"
    os_state: str = "Generalized"
    hyper_v_generation: str = "V1"
    architecture: str = "x64"
    min_vcpus: int | None = None
    max_vcpus: int | None = None
    min_memory_mib: int | None = None
    max_memory_mib: int | None = None
    end_of_life: str | None = None
    eula: str = ""
    release_note_uri: str = ""
    description: str = ""
    privacy_statement_uri: str = ""
    tags: dict[str, str] = dataclasses.field(default_factory=dict)


_CHOICES = {
    "os_type": ("Linux", "Windows"),
    "os_state": ("Generalized", "Specialized"),
    "hyper_v_generation": ("V1", "V2"),
    "architecture": ("x64", "Arm64"),
}


def _validated(fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    for key, allowed in _CHOICES.items():
        if key in out:
            match = [a for a in allowed if a.lower() == str(out[key]).lower()]
            if not match:
                flag = "--" + key.replace("_", "-")
                raise InvalidArgument(
                    f"{flag} must be one of {', '.join(allowed)} (got {out[key]!r})"
                )
            out[key] = match[0]
    for kind in ("publisher", "offer", "sku"):
        if kind in out:
            names.identifier(kind, out[kind])
    for lo, hi, flag in (
        ("min_vcpus", "max_vcpus", "cpu-core"),
        ("min_memory_mib", "max_memory_mib", "memory"),
    ):
        a, b = out.get(lo), out.get(hi)
        for v, which in ((a, "minimum"), (b, "maximum")):
            if v is not None and v <= 0:
                raise InvalidArgument(f"--{which}-{flag} must be a positive number (got {v})")
        if a is not None and b is not None and a > b:
            raise InvalidArgument(f"--minimum-{flag} {a} is greater than --maximum-{flag} {b}")
    if "end_of_life" in out:
        out["end_of_life"] = parse_date(out["end_of_life"])
    return out


def create_definition(
    store: GalleryStore, gallery: str, name: str, spec: DefinitionInput
) -> Definition:
    names.gallery_name(gallery)
    names.definition_name(name)
    fields = _validated(dataclasses.asdict(spec))
    return store.create_definition(Definition(gallery=gallery, name=name, created=now(), **fields))


def update_definition(store: GalleryStore, gallery: str, name: str, **changes: Any) -> Definition:
    """Change the mutable properties (publisher/offer/sku and OS facts are fixed, as in Azure)."""
    fixed = {
        "publisher",
        "offer",
        "sku",
        "os_type",
        "os_state",
        "hyper_v_generation",
        "architecture",
    }
    if fixed & changes.keys():
        raise InvalidArgument(
            f"{', '.join(sorted(fixed & changes.keys()))} can't change after creation"
        )
    given = {k: v for k, v in changes.items() if v is not None}

    def change(d: Definition) -> Definition:
        merged = _validated({**dataclasses.asdict(d), **given})
        return Definition(**merged)

    return store.update_definition(gallery, name, change)
