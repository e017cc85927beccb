"""A scale set's model as use cases need it: read (or synthesized for a scale set made before
models), the version it means now, and changed by `vmss update`."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sigvirt.catalog import latest, names
from sigvirt.catalog.fleet import (
    HealthProbe,
    RollingPolicy,
    ScaleSetModel,
    UpgradeMode,
    changed,
    rolling_policy,
)
from sigvirt.catalog.records import ImageVersion
from sigvirt.context import Context
from sigvirt.errors import Conflict, NotFound
from sigvirt.guests import scalesets, vms
from sigvirt.versions import targets


def model_of(ctx: Context, name: str) -> ScaleSetModel:
    """The scale set's model; one made before models existed gets one synthesized from its
    first instance and stored (NotFound: no such scale set)."""
    return scalesets.model_of(ctx, name)


def target_version(ctx: Context, model: ScaleSetModel) -> ImageVersion:
    """The version the model means now: the one it names, or the definition's latest in the
    model's region (which honours the boot-test gate). Published and complete there."""
    return resolve_image(ctx, model.image, model.region)


def resolve_image(ctx: Context, image: str, region: str) -> ImageVersion:
    """An image reference as a scale set in `region` would boot it; refused (NotFound,
    Conflict, Unsupported) when it couldn't."""
    ref = names.parse_image_ref(image)
    rec = latest.resolve(ctx.store, ref, region=region)
    if not rec.published_ok:
        raise Conflict(f"image version {rec.ref} is {rec.state}, not published")
    d = ctx.store.get_definition(rec.gallery, rec.definition)
    vms.check_definition(d)
    vms.check_end_of_life(ctx, rec, d)
    if not rec.completed_replicas(region):
        raise NotFound(
            f"image version {rec.ref} has no completed replica in region {region}",
            hint=targets.update_command(rec, region, rec.target_regions.get(region, 1)),
        )
    return rec


@dataclass(frozen=True)
class ModelChange:
    """What `vmss update` asks; None (or unset) leaves a part as it is."""

    image: str | None = None
    upgrade_mode: UpgradeMode | None = None
    max_batch: int | None = None
    max_unhealthy: int | None = None
    max_unhealthy_upgraded: int | None = None
    pause: str | None = None  # ISO 8601 or seconds, as az takes it
    prioritize_unhealthy: bool | None = None
    health_command: str | None = None  # "" removes it
    health_spec: str | None = None  # the spec's source, checked; "" removes it
    tags: dict[str, str] | None = None  # the whole set, as --tags replaces it

    def policy(self, base: RollingPolicy) -> RollingPolicy:
        return rolling_policy(
            base, max_batch=self.max_batch, max_unhealthy=self.max_unhealthy,
            max_unhealthy_upgraded=self.max_unhealthy_upgraded, pause=self.pause,
            prioritize_unhealthy=self.prioritize_unhealthy,
        )  # fmt: skip


def probe(base: HealthProbe, command: str | None, spec: str | None, owner: str) -> HealthProbe:
    """The health probe with a new command and/or spec (a new spec runs as `owner`)."""
    out = base
    if command is not None:
        out = replace(out, command=command)
    if spec is not None:
        out = replace(out, spec=spec, owner=owner if spec else "")
    return out


def update(ctx: Context, name: str, change: ModelChange, owner: str) -> ScaleSetModel:
    """Change the model only (instances move with update-instances, reimage or a rolling
    upgrade): everything is checked first, the image against the model's region; a change of
    what instances are made from bumps the generation."""
    current = model_of(ctx, name)
    change.policy(RollingPolicy())  # the flags' own checks, before anything is read further
    if change.image is not None:
        resolve_image(ctx, change.image, current.region)

    def apply(model: ScaleSetModel) -> ScaleSetModel:
        return changed(
            model,
            image=model.image if change.image is None else change.image,
            upgrade_mode=change.upgrade_mode or model.upgrade_mode,
            rolling=change.policy(model.rolling),
            health=probe(model.health, change.health_command, change.health_spec, owner),
            tags=model.tags if change.tags is None else dict(change.tags),
        )

    return scalesets.fleet(ctx).update(name, apply)
