"""A version's safety profile (Azure's GalleryImageVersionSafetyProfile): what it refuses.

- allowReplicatedLocationDeletion off (the default): an update whose target regions leave out
  a region holding completed replicas is refused, naming the replicas it would delete. A
  region whose replicas never completed (a typo's failed region) can always go.
- blockDeletionBeforeEndOfLife on: deleting the version before its end-of-life date is
  refused, with the date. It needs a date to wait for (settings() checks that).

Checked before anything changes; the caller passes the record as the command would leave it
(a flag given in the same update counts, as in az, whose update sends both).
"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime

from sigvirt.catalog import eol
from sigvirt.catalog.records import ImageVersion, Replica, ReplicaState, VersionState
from sigvirt.errors import InvalidArgument, SafetyProfileRefused

ALLOW_FLAG = "--allow-replicated-location-deletion"
BLOCK_FLAG = "--block-deletion-before-end-of-life"


def settings(
    rec: ImageVersion,
    allow_replicated_location_deletion: bool | None = None,
    block_deletion_before_end_of_life: bool | None = None,
) -> ImageVersion:
    """`rec` with the safety flags a command gives (None: as it is), checked: blocking
    deletion before the end of life needs an end-of-life date."""
    out = rec
    if allow_replicated_location_deletion is not None:
        out = dataclasses.replace(
            out, allow_replicated_location_deletion=allow_replicated_location_deletion
        )
    if block_deletion_before_end_of_life is not None:
        out = dataclasses.replace(
            out, block_deletion_before_end_of_life=block_deletion_before_end_of_life
        )
    require_date(out.block_deletion_before_end_of_life, out.end_of_life)
    return out


def require_date(block: bool, end_of_life: str | None) -> None:
    """Blocking deletion before the end of life needs a date to block until."""
    if block and not end_of_life:
        raise InvalidArgument(f"{BLOCK_FLAG} true needs an --end-of-life-date to block until")


def doomed_replicas(rec: ImageVersion, wanted: dict[str, int]) -> list[Replica]:
    """The completed replicas in the regions `wanted` leaves out."""
    return [r for r in rec.replicas if r.region not in wanted and r.state == ReplicaState.COMPLETED]


def check_dropped_regions(rec: ImageVersion, wanted: dict[str, int]) -> None:
    """Refuse (SafetyProfileRefused) target regions that leave out a region holding
    completed replicas, unless the version allows replicated location deletion."""
    if rec.allow_replicated_location_deletion:
        return
    doomed = doomed_replicas(rec, wanted)
    if not doomed:
        return
    regions = sorted({r.region for r in doomed})
    raise SafetyProfileRefused(
        f"image version {rec.ref}: dropping region{'s' if len(regions) > 1 else ''} "
        f"{', '.join(regions)} would delete replica{'s' if len(doomed) > 1 else ''} "
        f"{', '.join(r.volume for r in doomed)}; its safety profile does not allow replicated "
        f"location deletion ({ALLOW_FLAG} true allows it)"
    )


def check_delete(rec: ImageVersion, today: date | datetime | None = None) -> None:
    """Refuse (SafetyProfileRefused) deleting a published version that blocks deletion before
    its end of life while that date hasn't come. One that never published (failed), or whose
    deletion already began (deleting, pending deletion), goes: nothing was deployable."""
    if not rec.block_deletion_before_end_of_life or rec.state != VersionState.SUCCEEDED:
        return
    if rec.end_of_life is None:
        raise SafetyProfileRefused(
            f"image version {rec.ref} blocks deletion before its end of life and has no "
            f"end-of-life date (update it with {BLOCK_FLAG} false to delete it)"
        )
    if not eol.past(rec.end_of_life, today):
        raise SafetyProfileRefused(
            f"image version {rec.ref} blocks deletion before its end of life {rec.end_of_life} "
            f"(update it with {BLOCK_FLAG} false to delete it sooner)"
        )
