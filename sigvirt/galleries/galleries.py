"""Galleries: create (with the files' ACLs set at once), update."""

from __future__ import annotations

import dataclasses

from sigvirt.catalog import names
from sigvirt.catalog.policy import Policy
from sigvirt.catalog.records import Gallery, now
from sigvirt.catalog.store import GalleryStore
from sigvirt.sharing import share


def create_gallery(
    store: GalleryStore,
    name: str,
    description: str = "",
    location: str = "local",
    owner_group: str = "",
    resource_group: str = "",
    tags: dict[str, str] | None = None,
) -> Gallery:
    """Create a gallery; with an owner group, its members own it (and the files say so)."""
    names.gallery_name(name)
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
        )
    )
    store.save_policy(Policy(name, owner_group))
    # The creator owns every file just made, so the ACLs can be set without privileges.
    share.sync(store, name, {})  # nothing in it has replicas yet
    return rec


def update_gallery(
    store: GalleryStore,
    name: str,
    description: str | None = None,
    tags: dict[str, str] | None = None,
) -> Gallery:
    def change(g: Gallery) -> Gallery:
        if description is not None:
            g = dataclasses.replace(g, description=description)
        if tags is not None:
            g = dataclasses.replace(g, tags=dict(tags))
        return g

    return store.update_gallery(name, change)
