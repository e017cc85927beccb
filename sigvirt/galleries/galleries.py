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
) -> Gallery:
    """Create a gallery; with an owner group, its members own it (and the files say so)."""
    names.gallery_name(name)
    if owner_group:
        share.check_group(owner_group)
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
    share.sync(store, name, {})  # nothing in it has replicas yet
    return rec


def update_gallery(store: GalleryStore, name: str, description: str | None) -> Gallery:
    def change(g: Gallery) -> Gallery:
        return g if description is None else dataclasses.replace(g, description=description)

    return store.update_gallery(name, change)
