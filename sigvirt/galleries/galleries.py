"""Galleries: create (with the files' ACLs set at once), update."""

from __future__ import annotations

import dataclasses

from sigvirt.catalog import eol, names
from sigvirt.catalog.plans import Action, Plan
from sigvirt.catalog.policy import Policy
from sigvirt.catalog.records import Gallery, now
from sigvirt.catalog.store import GalleryStore
from sigvirt.errors import InvalidArgument

MAX_RETENTION_DAYS = 3650


def recycle_check(days: int) -> int:
    """A recycle bin's retention, in days (0: the next `sig gc` may purge)."""
    if not 0 <= days <= MAX_RETENTION_DAYS:
        raise InvalidArgument(
            f"--soft-delete-retention-days {days}: give 0 to {MAX_RETENTION_DAYS} days"
        )
    return days


def create_gallery(
    store: GalleryStore,
    name: str,
    description: str = "",
    location: str = "local",
    owner_group: str = "",
    resource_group: str = "",
    tags: dict[str, str] | None = None,
    eol_policy: str = "",
    soft_delete: bool = False,
    retention_days: int = 7,
) -> Gallery:
    """Create a gallery; with an owner group, its members own it (and the files say so).
    `eol_policy`: warn or deny ("" = warn), for the definitions that set none; `soft_delete`:
    deletes go to a recycle bin kept `retention_days` (versions/recycle.py)."""
    names.gallery_name(name)
    recycle_check(retention_days)
    policy = eol.parse_policy(eol_policy) if eol_policy else ""
    # Imported here: sharing loads libvirt (through the context), which `sig image-version
    # list` starts ~35 ms faster without (cli/sig.py imports this module).
    from sigvirt.sharing import share

    if resource_group:
        names.resource_group(resource_group)
    if owner_group:
        share.check_group(owner_group)
    rec = store.create_gallery(
        Gallery(
            name=name,
            description=description,
            location=location,
            owner_group=owner_group,
            created=now(),
            resource_group=resource_group,
            tags=dict(tags or {}),
            eol_policy=policy,
            soft_delete=soft_delete,
            soft_delete_retention_days=retention_days,
        )
    )
    store.save_policy(Policy(name, owner_group))
    # The creator owns every file just made, so the ACLs can be set without privileges.
    share.sync(store, name, {})  # nothing in it has replicas yet
    return rec


def delete_plan(store: GalleryStore, name: str) -> Plan:
    """What `sig delete` does (the store checks again under its lock as it deletes): refused
    while the gallery holds definitions, live or in the recycle bin."""
    store.get_gallery(name)
    store.require(name, "owner", "", "delete")
    store.refuse_nonempty(name)
    return Plan("sig delete", name, (Action("delete-record", "gallery", name),))


def update_gallery(
    store: GalleryStore,
    name: str,
    description: str | None = None,
    tags: dict[str, str] | None = None,
    eol_policy: str | None = None,
    soft_delete: bool | None = None,
    retention_days: int | None = None,
) -> Gallery:
    """Change a gallery's description, tags, eol policy, soft delete (None: as it is). Turning
    soft delete off leaves what is in the bin there until its retention ends."""
    if retention_days is not None:
        recycle_check(retention_days)
    policy = eol.parse_policy(eol_policy) if eol_policy else eol_policy  # "": back to warn

    def change(g: Gallery) -> Gallery:
        if description is not None:
            g = dataclasses.replace(g, description=description)
        if policy is not None:
            g = dataclasses.replace(g, eol_policy=policy)
        if tags is not None:
            g = dataclasses.replace(g, tags=dict(tags))
        if soft_delete is not None:
            g = dataclasses.replace(g, soft_delete=soft_delete)
        if retention_days is not None:
            g = dataclasses.replace(g, soft_delete_retention_days=retention_days)
        return g

    return store.update_gallery(name, change)
