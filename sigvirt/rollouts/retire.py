"""Retiring a version (`sig image-version retire`): move everything off it, then delete it.

The plan, computed as data before anything changes (what `--dry-run` prints):
  - scale sets with instances on the version: each moves, by a rolling upgrade, to the
    newest version above it that is eligible for latest in the scale set's region (a model
    that names the retired version exactly is repointed to that one); refused when there
    is none;
  - standalone VMs on the version: flattened (they keep running, and no longer need it);
  - its replicas: deleted, the bytes they hold on disk freed;
  - anything else that depends on a replica (another installation's domain, a volume
    sigvirt didn't make): the retire is refused, naming it.
Apply: the plan is made again and must be the same; then the rolling upgrades (one after
another, each to its end), the flattens, and the version's delete (versions/deletion.py,
which checks for dependents once more). Each action taken is reported as the plan spells it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sigvirt import faults
from sigvirt.catalog import latest
from sigvirt.catalog.fleet import changed
from sigvirt.catalog.names import ImageRef, Version, parse_image_ref
from sigvirt.catalog.records import ImageVersion, ReplicaState
from sigvirt.catalog.rollouts import InstanceState, Rollout
from sigvirt.catalog.rollouts import RollingUpgradeStatusCode as Code
from sigvirt.context import Context
from sigvirt.errors import Conflict, HasDependents, InvalidName, NotFound
from sigvirt.guests import inventory, lifecycle, scalesets
from sigvirt.guests.inventory import Vm
from sigvirt.rollouts import rolling
from sigvirt.rollouts.model import model_of
from sigvirt.versions import deletion, dependents, safety, targets


class NoNewerVersion(HasDependents):
    """A scale set on the version has nowhere to go: it keeps depending on the version."""


class PlanChanged(Conflict):
    template = "retire {version}: {detail}"


@dataclass(frozen=True)
class Move:
    scale_set: str
    region: str
    to_version: str  # G/D/V
    instances: tuple[str, ...]  # what the rolling upgrade reimages: those not on to_version
    repin: bool = False  # the model names the retired version: it is given to_version

    @property
    def action(self) -> str:
        return f"move scale set {self.scale_set} to {self.to_version}"


@dataclass(frozen=True)
class Flatten:
    vm: str
    region: str

    @property
    def action(self) -> str:
        return f"flatten VM {self.vm}"


@dataclass(frozen=True)
class ReplicaRemoval:
    region: str
    pool: str
    volume: str
    bytes: int  # allocated on disk (what deleting it frees)

    @property
    def action(self) -> str:
        return f"delete replica {self.region}/{self.pool}/{self.volume}"


@dataclass(frozen=True)
class RetirePlan:
    version: str  # G/D/V
    moves: tuple[Move, ...]
    flattens: tuple[Flatten, ...]
    replicas: tuple[ReplicaRemoval, ...]

    @property
    def bytes_freed(self) -> int:
        return sum(r.bytes for r in self.replicas)

    def actions(self) -> list[str]:
        """What applying the plan does, in order, one line each."""
        return [
            *(m.action for m in self.moves),
            *(f.action for f in self.flattens),
            *(r.action for r in self.replicas),
            f"delete image version {self.version}",
        ]


@dataclass(frozen=True)
class RetireResult:
    plan: RetirePlan
    done: tuple[str, ...]  # the actions taken, as the plan spells them
    rollouts: tuple[Rollout, ...] = ()


# -- the plan ---------------------------------------------------------------------------------
def _exact(ref: ImageRef) -> tuple[str, str, str]:
    if ref.version is None:
        raise InvalidName(f"retire names one version: {ref} names none")
    return ref.gallery, ref.definition, ref.version


def _depends(vm: Vm, ref: str) -> bool:
    """A domain whose disk is a linked clone of the version (not flattened)."""
    return vm.image == ref and not vm.flattened


def destination(versions: list[ImageVersion], retired: str, region: str) -> ImageVersion | None:
    """The newest version above `retired` eligible for latest in `region`."""
    floor = Version.parse(retired)
    above = [v for v in versions if Version.parse(v.name) > floor]
    chosen = [c.version for c in latest.explain_latest(above, region=region) if c.chosen]
    return next((v for v in above if v.name in chosen), None)


def plan(ctx: Context, ref: ImageRef) -> RetirePlan:
    """What retiring the version takes; nothing changes."""
    g, d, v = _exact(ref)
    rec = ctx.store.get_version(g, d, v)
    safety.check_delete(rec)  # its delete comes last: refused before an instance moves
    versions = ctx.store.list_versions(g, d)
    instances, _unreachable = inventory.list_vms(ctx, "vmss-instance")
    vms, _unreachable = inventory.list_vms(ctx, "vm")
    moves = []
    for name in sorted({i.scale_set for i in instances if _depends(i, rec.ref)}):
        members = [i for i in instances if i.scale_set == name]
        region = members[0].region
        dest = destination(versions, v, region)
        if dest is None:
            raise NoNewerVersion(
                f"no newer version to move scale set {name} to",
                hint=f"publish a version of {g}/{d} above {v} complete in region {region}",
            )
        # read only (a dry run writes nothing): a scale set made before models has none yet
        model = scalesets.stored_model(ctx, name)
        named = model.image if model is not None else members[0].image_request
        moves.append(Move(
            name, region, dest.ref,
            tuple(i.name for i in members if i.image != dest.ref), _pins(named, rec.ref),
        ))  # fmt: skip
    flattens = tuple(Flatten(vm.name, vm.region) for vm in vms if _depends(vm, rec.ref))
    _refuse_others(ctx, rec, {n for m in moves for n in m.instances} | {f.vm for f in flattens})
    return RetirePlan(rec.ref, tuple(moves), flattens, _replicas(ctx, rec))


def _pins(image: str, ref: str) -> bool:
    """Whether a model's image names the version exactly (not its definition's latest)."""
    try:
        return str(parse_image_ref(image)) == ref
    except InvalidName:
        return False


def _refuse_others(ctx: Context, rec: ImageVersion, covered: set[str]) -> None:
    """Whatever depends on a replica and the plan won't release refuses the retire (the
    delete at its end would refuse it after the upgrades had run)."""
    live = [r for r in rec.replicas if r.state != ReplicaState.DELETING]
    found = [d for deps in targets.find_dependents(ctx, live).values() for d in deps]

    def released(dep: dependents.Dependent) -> bool:
        if dep.kind == "domain":
            return dep.name in covered
        volume = dep.name.partition("/")[2]
        return any(volume.startswith(f"{name}.") for name in covered)

    blocked = [dep for dep in found if not released(dep)]
    if blocked:
        raise HasDependents(
            f"image version {rec.ref} has dependents retire can't move: "
            + ", ".join(f"{dep.kind} {dep.name}" for dep in blocked),
            hint=dependents.how_to_release(blocked),
        )


def _replicas(ctx: Context, rec: ImageVersion) -> tuple[ReplicaRemoval, ...]:
    out = []
    for r in rec.replicas:
        try:
            size = ctx.hv(r.location).volume(r.pool, r.volume).allocation
        except NotFound:  # its file is gone already: nothing to free
            size = 0
        out.append(ReplicaRemoval(r.region, r.pool, r.volume, size))
    return tuple(out)


# -- applying it ------------------------------------------------------------------------------
def apply(ctx: Context, p: RetirePlan) -> RetireResult:
    """Carry the plan out: rolling upgrades first (each to its end), then the flattens, then
    the version's delete. Refused if the plan no longer holds."""
    ref = parse_image_ref(p.version)
    g, d, v = _exact(ref)
    ctx.store.require(g, "owner", f"{d}/{v}", "delete")
    if (fresh := plan(ctx, ref)).actions() != p.actions():
        raise PlanChanged(
            "the plan no longer holds (something moved meanwhile): " + "; ".join(fresh.actions()),
            version=p.version,
        )
    done: list[str] = []
    rollouts = []
    for move in p.moves:
        rollouts.append(_move(ctx, move))
        done.append(move.action)
        faults.point("retire.moved")
    for flat in p.flattens:
        lifecycle.flatten(ctx, flat.vm, flat.region)
        done.append(flat.action)
        faults.point("retire.flattened")
    deletion.delete(ctx, ref)
    done += [r.action for r in p.replicas]
    done.append(f"delete image version {p.version}")
    return RetireResult(p, tuple(done), tuple(rollouts))


def _move(ctx: Context, move: Move) -> Rollout:
    to = parse_image_ref(move.to_version)
    g, d, v = _exact(to)
    target = ctx.store.get_version(g, d, v)
    model_of(ctx, move.scale_set)  # one made before models gets its model stored now
    if move.repin:
        scalesets.fleet(ctx).update(move.scale_set, lambda m: changed(m, image=move.to_version))
    rec = rolling.start(ctx, move.scale_set, target=target, wait=True)
    stuck = [i.name for i in rec.instances if i.state != InstanceState.SUCCEEDED]
    if rec.code != Code.COMPLETED or stuck:
        detail = rec.error or f"{', '.join(stuck)} not moved ({rec.code})"
        raise rolling.RolloutFaulted(
            detail, scale_set=move.scale_set,
            hint=f"sigvirt vmss rolling-upgrade get-latest -n {move.scale_set}",
        )  # fmt: skip
    return rec
