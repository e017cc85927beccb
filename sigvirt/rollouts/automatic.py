"""Automatic OS image upgrades: when a definition's latest changes, every scale set whose
model is in Automatic mode and names the definition without a version (latest) starts a
rolling upgrade to it, in the background, recorded like any other.

Called after whatever can change latest (a version published, replicated, re-included in
latest, its boot test passed). It never fails the command that called it: a scale set that
can't be upgraded now is left for the next change, or for `vmss rolling-upgrade start`.
"""

from __future__ import annotations

import contextlib

from sigvirt.catalog import latest
from sigvirt.catalog.fleet import FleetStore, ScaleSetModel, UpgradeMode
from sigvirt.catalog.names import ImageRef, parse_image_ref
from sigvirt.catalog.records import ImageVersion
from sigvirt.catalog.rollouts import Rollout
from sigvirt.context import Context
from sigvirt.errors import InvalidName, SigvirtError
from sigvirt.guests import scalesets
from sigvirt.rollouts import rolling
from sigvirt.rollouts.model import model_of, target_version


def follows(model: ScaleSetModel, gallery: str, definition: str) -> bool:
    """Whether the model's image is the definition's latest (named without a version)."""
    try:
        ref = parse_image_ref(model.image)
    except InvalidName:
        return False
    return ref.version is None and (ref.gallery, ref.definition) == (gallery, definition)


def due(ctx: Context, model: ScaleSetModel) -> ImageVersion | None:
    """The version an Automatic scale set should move to now: the latest in its region,
    when some instance isn't on it and no rollout of it is running; else None."""
    ref = parse_image_ref(model.image)
    try:
        target = latest.resolve(
            ctx.store, ImageRef(ref.gallery, ref.definition), region=model.region
        )
    except SigvirtError:  # nothing eligible in its region (yet)
        return None
    found = scalesets.instances(ctx, model.name, model.region)
    if not found or all(v.image == target.ref for v in found):
        return None
    store = rolling.store_of(ctx, model.name)
    current = store.latest()
    if current is not None and rolling.runner_alive(store, current):
        return None
    return target


def on_latest_changed(ctx: Context, gallery: str, definition: str) -> list[str]:
    """Start a background rolling upgrade of every Automatic scale set that follows the
    definition's latest and isn't on it; the names of those whose upgrade started."""
    started = []
    for model in FleetStore(ctx.store.root).list():
        if model.upgrade_mode != UpgradeMode.AUTOMATIC or not follows(model, gallery, definition):
            continue
        with contextlib.suppress(SigvirtError):  # one scale set's trouble stops no other
            target = due(ctx, model)
            if target is not None:
                rolling.start(ctx, model.name, target=target, wait=False, automatic=True)
                started.append(model.name)
    return started


def on_model_changed(ctx: Context, name: str) -> Rollout | None:
    """After `vmss update`: an Automatic or Rolling scale set whose instances aren't on the
    model's image any more starts a background rolling upgrade to it (as Azure applies a
    model change under those policies); Manual waits for update-instances or reimage. None
    when nothing started (Manual, already there, or a rollout already running)."""
    model = model_of(ctx, name)
    if model.upgrade_mode == UpgradeMode.MANUAL:
        return None
    target = target_version(ctx, model)
    found = scalesets.instances(ctx, model.name, model.region)
    if not found or all(v.image == target.ref for v in found):
        return None
    store = rolling.store_of(ctx, model.name)
    current = store.latest()
    if current is not None and rolling.runner_alive(store, current):
        return None
    automatic = model.upgrade_mode == UpgradeMode.AUTOMATIC
    return rolling.start(ctx, model.name, target=target, wait=False, automatic=automatic)
