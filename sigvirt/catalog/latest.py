"""What `latest` means: the highest published version not excluded from it, and why each
version is or isn't (show-latest --explain)."""

from __future__ import annotations

from dataclasses import dataclass

from sigvirt.catalog.dates import past_end_of_life
from sigvirt.catalog.names import ImageRef, Version
from sigvirt.catalog.records import ImageVersion, VersionState
from sigvirt.catalog.store import GalleryStore
from sigvirt.errors import NotFound


@dataclass(frozen=True)
class Candidate:
    version: str
    chosen: bool
    why: str


def explain_latest(versions: list[ImageVersion]) -> list[Candidate]:
    """Each version and why it is or isn't latest: highest Major.Minor.Patch that is
    published and not excluded from latest."""
    eligible = [
        v for v in versions if v.state == VersionState.SUCCEEDED and not v.exclude_from_latest
    ]
    best = max(eligible, key=lambda v: Version.parse(v.name), default=None)
    out = []
    for v in sorted(versions, key=lambda v: Version.parse(v.name), reverse=True):
        if v is best:
            why = "highest published version not excluded from latest"
            if past_end_of_life(v.end_of_life):
                why += f" (past end of life {v.end_of_life})"
        elif v.state != VersionState.SUCCEEDED:
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
