"""What `latest` means: the highest published version not excluded from it, and why each
version is or isn't (show-latest --explain). A damaged version record is never latest: it is
skipped, and explained as damaged.

In a region, latest is the highest such version that has a completed replica there and is
not excluded from latest there (Azure's targetRegions[].excludeFromLatest): `vm create -l R
--image G/D` takes it, where the global latest may not have reached R yet.
"""

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


def _unfit(v: ImageVersion, region: str | None) -> str | None:
    """Why `v` can't be latest (in `region`, if given); None when it can."""
    if v.state != VersionState.SUCCEEDED:
        return f"not published (state {v.state})"
    if v.exclude_from_latest:
        return "excluded from latest"
    if region is not None:
        if region in v.excluded_regions:
            return f"excluded from latest in region {region}"
        if not v.completed_replicas(region):
            return f"no completed replica in region {region}"
    return None


def explain_latest(
    versions: list[ImageVersion], damaged: Sequence[Damaged] = (), region: str | None = None
) -> list[Candidate]:
    """Each version and why it is or isn't latest (in `region`, if given): highest
    Major.Minor.Patch that is published and not excluded from latest (and, in a region,
    complete there and not excluded there). Damaged records (from list_versions) are listed
    with why they are, in their file name's place."""
    eligible = [v for v in versions if _unfit(v, region) is None]
    best = max(eligible, key=lambda v: Version.parse(v.name), default=None)
    where = f" in region {region}" if region else ""
    out = []
    for v in versions:
        unfit = _unfit(v, region)
        if v is best:
            why = f"highest published version not excluded from latest{where}"
            if past_end_of_life(v.end_of_life):
                why += f" (past end of life {v.end_of_life})"
        elif unfit is not None:
            why = unfit
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
    store: GalleryStore,
    ref: ImageRef,
    damaged: list[Damaged] | None = None,
    region: str | None = None,
) -> ImageVersion:
    """The version a reference names; `latest` (in `region`, if given) when it names none
    (damaged version records skipped, and handed to `damaged`). When nothing is eligible
    and a record is damaged, the damaged record is the error: it may well have been latest."""
    if ref.version is not None:
        return store.get_version(ref.gallery, ref.definition, ref.version)
    broken: list[Damaged] = []
    versions = store.list_versions(ref.gallery, ref.definition, broken)
    if damaged is not None:
        damaged += broken
    chosen = [c for c in explain_latest(versions, region=region) if c.chosen]
    if not chosen:
        if broken:
            raise broken[-1].error  # the highest-named one
        if region is None:
            raise NotFound(
                f"image definition {ref.definition_ref} has no published version that is not "
                "excluded from latest"
            )
        raise NotFound(
            f"image definition {ref.definition_ref} has no published version complete in "
            f"region {region} and not excluded from latest there",
            hint=f"sigvirt sig image-version show-latest --gallery-name {ref.gallery} "
            f"--gallery-image-definition {ref.definition} --location {region} --explain",
        )
    return next(v for v in versions if v.name == chosen[0].version)
