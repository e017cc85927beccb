"""Galleries and image definitions, and `latest` resolution: the catalog's use cases."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sigvirt import names
from sigvirt.errors import InvalidName, NotFound, SigvirtError
from sigvirt.names import ImageRef, Version
from sigvirt.records import SUCCEEDED, Definition, Gallery, ImageVersion, now
from sigvirt.roles import Policy
from sigvirt.store import GalleryStore


class InvalidValue(SigvirtError):
    exit_code = InvalidName.exit_code


def parse_date(text: str | None, what: str = "--end-of-life-date") -> str | None:
    """ISO date or datetime (as az accepts); stored as given, normalized to ISO."""
    if text is None or text == "":
        return None
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
        return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
    except ValueError:
        raise InvalidValue(f"{what} {text!r} is not a date (use YYYY-MM-DD)") from None


def past_end_of_life(eol: str | None, today: datetime | None = None) -> bool:
    if not eol:
        return False
    moment = datetime.fromisoformat(eol if "T" in eol else eol + "T00:00:00+00:00")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment <= (today or datetime.now(UTC))


# -- galleries --------------------------------------------------------------------------------
def create_gallery(
    store: GalleryStore,
    name: str,
    description: str = "",
    location: str = "local",
    owner_group: str = "",
) -> Gallery:
    """Create a gallery; with an owner group, its members own it (and the files say so)."""
    from sigvirt import access

    names.gallery_name(name)
    if owner_group:
        access.check_group(owner_group)
    rec = store.create_gallery(
        Gallery(
            name=name,
            description=description,
            location=location,
            owner_group=owner_group,
            created=now(),
        )
    )
    store.save_policy(Policy(name, owner_group))
    # The creator owns every file just made, so the ACLs can be set without privileges.
    access.sync(store, name)
    return rec


def update_gallery(store: GalleryStore, name: str, description: str | None) -> Gallery:
    def change(g: Gallery) -> Gallery:
        return g if description is None else dataclasses.replace(g, description=description)

    return store.update_gallery(name, change)


# -- definitions ------------------------------------------------------------------------------
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
                raise InvalidValue(f"{flag} must be one of {', '.join(allowed)} (got {out[key]!r})")
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
                raise InvalidValue(f"--{which}-{flag} must be a positive number (got {v})")
        if a is not None and b is not None and a > b:
            raise InvalidValue(f"--minimum-{flag} {a} is greater than --maximum-{flag} {b}")
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
        raise InvalidValue(
            f"{', '.join(sorted(fixed & changes.keys()))} can't change after creation"
        )
    given = {k: v for k, v in changes.items() if v is not None}

    def change(d: Definition) -> Definition:
        merged = _validated({**dataclasses.asdict(d), **given})
        merged["shares"] = d.shares
        return Definition(**merged)

    return store.update_definition(gallery, name, change)


# -- latest -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    version: str
    chosen: bool
    why: str


def explain_latest(versions: list[ImageVersion]) -> list[Candidate]:
    """Each version and why it is or isn't latest: highest Major.Minor.Patch that is
    published and not excluded from latest."""
    eligible = [v for v in versions if v.state == SUCCEEDED and not v.exclude_from_latest]
    best = max(eligible, key=lambda v: Version.parse(v.name), default=None)
    out = []
    for v in sorted(versions, key=lambda v: Version.parse(v.name), reverse=True):
        if v is best:
            why = "highest published version not excluded from latest"
            if past_end_of_life(v.end_of_life):
                why += f" (past end of life {v.end_of_life})"
        elif v.state != SUCCEEDED:
            why = f"not published (state {v.state})"
        elif v.exclude_from_latest:
            why = "excluded from latest"
        else:
            why = f"lower than {best.name}" if best else "not eligible"
        out.append(Candidate(v.name, v is best, why))
    return out


def resolve(store: GalleryStore, ref: ImageRef) -> ImageVersion:
    """The version a reference names; `latest` when it names none."""
    if ref.version is not None:
        return store.get_version(ref.gallery, ref.definition, ref.version)
    versions = store.list_versions(ref.gallery, ref.definition)
    chosen = [c for c in explain_latest(versions) if c.chosen]
    if not chosen:
        raise NotFound(
            f"image definition {ref.definition_ref} has no published version that is not "
            "excluded from latest"
        )
    return next(v for v in versions if v.name == chosen[0].version)
