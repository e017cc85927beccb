"""What `latest` means: the highest published version not excluded from it, and why each
version is or isn't (show-latest --explain). A damaged version record is never latest: it is
skipped, and explained as damaged."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sigvirt.catalog.dates import past_end_of_life
from sigvirt.catalog.names import ImageRef, Version
from sigvirt.catalog.records import ImageVersion, VersionState
from sigvirt.catalog.store import Damaged, GalleryStore
from sigvirt.errors import InvalidName, NotFound


@dataclass(frozen=True)
class Candidate:
    version: str
    chosen: bool
    why: str


def explain_latest(
    versions: list[ImageVersion], damaged: Sequence[Damaged] = ()
) -> list[Candidate]:
    """Each version and why it is or isn't latest: highest Major.Minor.Patch that is
    published and not excluded from latest. Damaged records (from list_versions) are listed
    with why they are, in their file name's place."""
    eligible = [
        v for v in versions if v.state == VersionState.SUCCEEDED and not v.exclude_from_latest
    ]
    best = max(eligible, key=lambda v: Version.parse(v.name), default=None)
    out = []
    for v in versions:
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
        out.append((_order(v.name), Candidate(v.name, v is best, why)))
    out += [(_order(d.name), Candidate(d.name, False, f"damaged: {d.reason}")) for d in damaged]
    out.sort(key=lambda pair: pair[0], reverse=True)
    return [candidate for _order_key, candidate in out]


def _order(name: str) -> tuple[int, ...]:
    """Highest first; a damaged file whose name is no version goes last."""
    try:
        return Version.parse(name).key
    except InvalidName:
        return (-1,)


def resolve(
    store: GalleryStore, ref: ImageRef, damaged: list[Damaged] | None = None
) -> ImageVersion:
    """The version a reference names; `latest` when it names none (damaged version records
    skipped, and handed to `damaged`). When nothing is eligible and a record is damaged, the
    damaged record is the error: it may well have been latest."""
    if ref.version is not None:
        return store.get_version(ref.gallery, ref.definition, ref.version)
    broken: list[Damaged] = []
    versions = store.list_versions(ref.gallery, ref.definition, broken)
    if damaged is not None:
        damaged += broken
    chosen = [c for c in explain_latest(versions) if c.chosen]
    if not chosen:
        if broken:
            raise broken[-1].error  # the highest-named one
        raise NotFound(
            f"image definition {ref.definition_ref} has no published version that is not "
            "excluded from latest"
        )
    return next(v for v in versions if v.name == chosen[0].version)
