"""Rolling upgrades (az vmss rolling-upgrade): a scale set's instances moved to a version
batch by batch, each instance reimaged and health-checked, a failing batch put back.

    start → plan (batches of max(1, N x maxBatchInstancePercent ÷ 100) instances, the ones
            already on the target skipped, unhealthy ones first if the policy says so)
          → for each batch: cancel asked? → Cancelled
                            unhealthy share of all instances > maxUnhealthyInstancePercent?
                                → Faulted
                            reimage the batch concurrently, keeping each previous disk
                            failed share of upgraded instances > maxUnhealthyUpgradedPercent?
                                → the reason recorded, the whole batch reverted, Faulted
                            else the previous disks dropped; pause (cancellable)
          → Completed

The record (catalog/rollouts.py) is written after every instance step, so `get-latest` in
another terminal follows it. The process applying a rollout holds its op lock and names
itself in the record (`runner`); a RollingForward rollout whose runner is gone was killed,
and the next `start` (or `cancel`) takes it over: the interrupted reimages are finished or
undone first (`reimage.resume`), then the batches go on. Kill points: `rollout.<step>`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sigvirt import faults
from sigvirt.catalog.fileio import lock_is_held
from sigvirt.catalog.fleet import HealthProbe, ScaleSetModel, user_name
from sigvirt.catalog.names import parse_image_ref
from sigvirt.catalog.records import ImageVersion, now
from sigvirt.catalog.rollouts import (
    InstanceProgress,
    InstanceState,
    PolicySnapshot,
    Rollout,
    RolloutStore,
)
from sigvirt.catalog.rollouts import RollingUpgradeStatusCode as Code
from sigvirt.context import Context
from sigvirt.errors import Conflict, ExitCode, NotFound, PermissionRefused, SigvirtError
from sigvirt.guests import guest, scalesets
from sigvirt.guests.inventory import Vm
from sigvirt.guests.vms import Placement
from sigvirt.rollouts import health, reimage
from sigvirt.rollouts.model import model_of, target_version

HANDOVER_TIMEOUT = 30.0  # seconds a --no-wait start waits for its background runner to begin
PAUSE_POLL = 0.5  # seconds between looks for a cancel request while pausing


class RolloutRunning(Conflict):
    template = "scale set {scale_set} has a rolling upgrade running (id {rollout}): {detail}"


class NothingToCancel(Conflict):
    template = "scale set {scale_set}: {detail}"


class RolloutFaulted(SigvirtError):
    """The rollout stopped because a health limit was exceeded (the failing batch is back
    on its version); the exit code of a Faulted rolling upgrade."""

    template = "rolling upgrade of {scale_set} faulted: {detail}"
    exit_code = ExitCode.ROLLOUT_FAULTED


# -- the plan (pure) --------------------------------------------------------------------------
@dataclass(frozen=True)
class Member:
    """What planning needs to know of one instance."""

    name: str
    instance: int
    version: str  # G/D/V it runs
    healthy: bool = True


@dataclass(frozen=True)
class Plan:
    batch_size: int
    batches: tuple[tuple[str, ...], ...]
    skipped: tuple[str, ...]  # already on the target


def batch_size(total: int, percent: int) -> int:
    """Azure's batch: maxBatchInstancePercent of all instances, rounded down, at least one."""
    return max(1, total * percent // 100)


def plan(members: list[Member], policy: PolicySnapshot, target: str) -> Plan:
    """Batches of the instances not on `target`, by instanceId; unhealthy ones first when
    the policy prioritizes them. The batch size counts every instance of the scale set."""
    size = batch_size(len(members), policy.max_batch_instance_percent)
    todo = [m for m in members if m.version != target]
    if policy.prioritize_unhealthy_instances:
        todo.sort(key=lambda m: (m.healthy, m.instance))
    else:
        todo.sort(key=lambda m: m.instance)
    batches = tuple(tuple(m.name for m in todo[i : i + size]) for i in range(0, len(todo), size))
    skipped = tuple(m.name for m in sorted(members, key=lambda m: m.instance) if m not in todo)
    return Plan(size, batches, skipped)


def exceeds(part: int, whole: int, percent: int) -> bool:
    """Whether part/whole is above percent (integers: no rounding at the limit)."""
    return whole > 0 and part * 100 > percent * whole


# -- where rollouts live ----------------------------------------------------------------------
def store_of(ctx: Context, name: str) -> RolloutStore:
    """Where the scale set's rollouts are recorded (FleetStore.dir_for(name)/rollouts)."""
    return RolloutStore(ctx.store.root, name)


def may_change(model: ScaleSetModel) -> None:
    """Rolling upgrades are changes of the scale set: its owner's or root's to make."""
    if os.geteuid() not in (0, model.owner_uid):
        raise PermissionRefused(
            f"scale set {model.name} belongs to user {user_name(model.owner_uid)}: only they "
            "or root may upgrade it"
        )


def runner_alive(store: RolloutStore, rec: Rollout) -> bool:
    """Whether the process applying `rec` may still be at work: it holds the op lock, or it
    is the process named in the record and still exists (a --no-wait start hands over to
    its background process before that one has the lock)."""
    if rec.done:
        return False
    return lock_is_held(store.op_lock) or (bool(rec.runner) and guest.creator_alive(rec.runner))


def latest(ctx: Context, name: str) -> Rollout:
    """The scale set's latest rolling upgrade (NotFound: it never had one)."""
    rec = store_of(ctx, name).latest()
    if rec is None:
        model_of(ctx, name)  # NotFound for a scale set that doesn't exist
        raise NotFound(f"scale set {name} has had no rolling upgrade")
    return rec


# -- start, cancel ----------------------------------------------------------------------------
def start(
    ctx: Context,
    name: str,
    *,
    target: ImageVersion | None = None,
    wait: bool = True,
    automatic: bool = False,
) -> Rollout:
    """Plan a rolling upgrade of the scale set to `target` (default: its model's image, a
    definition meaning latest in its region) and apply it, here or (wait=False) in a
    background process. A rollout whose runner was killed is taken over instead."""
    model = model_of(ctx, name)
    may_change(model)
    store = store_of(ctx, name)
    me = guest.creator_id()
    with store.locked():
        current = store.latest()
        if current is not None and not current.done:
            if runner_alive(store, current):
                raise RolloutRunning(
                    "cancel it, or wait for it to finish",
                    scale_set=name,
                    rollout=current.id,
                    hint=f"sigvirt vmss rolling-upgrade get-latest -n {name}",
                )
            rec = dataclasses.replace(current, runner=me, resumed=current.resumed + 1)
        else:
            version = target or target_version(ctx, model)
            rec = _new(ctx, store, name, model, version, me, automatic)
        store.put(rec)
    faults.point("rollout.planned")
    if not wait:
        return _hand_over(ctx, store, rec)
    return run(ctx, name, rec.id)


def _new(
    ctx: Context, store: RolloutStore, name: str, model: ScaleSetModel, version: ImageVersion,
    me: str, automatic: bool,
) -> Rollout:  # fmt: skip
    region = model.region
    if not version.published_ok or not version.completed_replicas(region):
        raise Conflict(
            f"image version {version.ref} has no completed replica in region {region}",
            hint="sigvirt sig image-version replicate adds one",
        )
    found = scalesets.members(ctx, name)
    policy = PolicySnapshot.of(model.rolling)
    healthy = _health(ctx, found, model.health) if policy.prioritize_unhealthy_instances else {}
    members = [
        Member(v.name, v.instance or 0, v.image, healthy.get(v.name, health.Health(True)).healthy)
        for v in found
    ]
    p = plan(members, policy, version.ref)
    batch_of = {n: b for b, names in enumerate(p.batches) for n in names}
    at = now()
    return Rollout(
        id=store.next_id(),
        scale_set=name,
        target=version.ref,
        start_time=at,
        policy=policy,
        instances=tuple(
            InstanceProgress(v.name, v.instance or 0, v.image, batch_of[v.name])
            for v in found
            if v.name in batch_of
        ),
        batches=p.batches,
        skipped=p.skipped,
        generation=model.generation,
        region=region,
        last_action_time=at,
        runner=me,
        automatic=automatic,
    )


def _hand_over(ctx: Context, store: RolloutStore, rec: Rollout) -> Rollout:
    """Start the background runner, name it in the record, and return once it holds the
    op lock (or has already finished): a second start then sees it running."""
    argv = [sys.executable, "-m", "sigvirt", "vmss", "rolling-upgrade", "run",
            "--name", rec.scale_set, "--rollout-id", str(rec.id)]  # fmt: skip
    pid = ctx.runner.spawn_detached(argv, store.log_path(rec.id))
    host, boot, _pid = guest.creator_id().rsplit(":", 2)
    rec = store.update(rec.id, lambda r: dataclasses.replace(r, runner=f"{host}:{boot}:{pid}"))
    end = time.monotonic() + HANDOVER_TIMEOUT
    while time.monotonic() < end:
        rec = store.get(rec.id)
        if rec.done or lock_is_held(store.op_lock) or not guest.creator_alive(rec.runner):
            break
        time.sleep(0.05)
    return rec


def cancel(ctx: Context, name: str, *, wait: bool = False, timeout: float = 3600) -> Rollout:
    """Ask the running rollout to stop after its current batch (az: lastAction Cancel).
    With wait, until it has stopped. A rollout whose runner was killed is taken over here
    (its interrupted reimages finished or undone) and stopped."""
    may_change(model_of(ctx, name))
    store = store_of(ctx, name)
    with store.locked():
        rec = store.latest()
        if rec is None or rec.done:
            raise NothingToCancel("no rolling upgrade is running", scale_set=name)
        rec = dataclasses.replace(
            rec, cancel_requested=True, last_action="Cancel", last_action_time=now()
        )
        orphaned = not runner_alive(store, rec)
        if orphaned:
            rec = dataclasses.replace(rec, runner=guest.creator_id(), resumed=rec.resumed + 1)
        store.put(rec)
    if orphaned:
        return run(ctx, name, rec.id) if wait else _hand_over(ctx, store, rec)
    if not wait:
        return rec
    end = time.monotonic() + timeout
    while not rec.done and time.monotonic() < end:
        time.sleep(PAUSE_POLL)
        rec = store.get(rec.id)
        if not rec.done and not runner_alive(store, rec):
            break  # its runner died meanwhile: the next start or cancel takes it over
    return rec


# -- the engine -------------------------------------------------------------------------------
def run(ctx: Context, name: str, rollout_id: int) -> Rollout:
    """Apply rollout `rollout_id` to its end (the background runner's entry point too):
    resume what a killed run left, then batch after batch."""
    store = store_of(ctx, name)

    def busy() -> SigvirtError:
        return RolloutRunning(
            "another sigvirt process is applying it", scale_set=name, rollout=rollout_id
        )

    with store.operation(busy):
        me = guest.creator_id()
        rec = store.update(rollout_id, lambda r: dataclasses.replace(r, runner=me))
        if rec.done:
            return rec
        engine = _Engine(ctx, store, rec)
        engine.recover()
        faults.point("rollout.resumed")
        return engine.drive()


class _Engine:
    """One process applying one rollout; every change goes to the record at once."""

    def __init__(self, ctx: Context, store: RolloutStore, rec: Rollout) -> None:
        self.ctx, self.store, self.rec = ctx, store, rec
        self.model = model_of(ctx, rec.scale_set)
        self.probe: HealthProbe = self.model.health
        ref = parse_image_ref(rec.target)
        assert ref.version is not None
        self.target = ctx.store.get_version(ref.gallery, ref.definition, ref.version)
        self.lock = threading.Lock()  # one record update at a time from the batch's threads

    # -- the record
    def _update(self, change: Callable[[Rollout], Rollout]) -> Rollout:
        with self.lock:
            self.rec = self.store.update(self.rec.id, change)
            return self.rec

    def _instance(self, name: str, state: InstanceState, **changes: object) -> None:
        self._update(lambda r: r.with_instance(name, state, **changes))

    def _finish(self, code: Code, **changes: object) -> Rollout:
        return self._update(lambda r: r.moved(code, **changes))

    # -- the instances as libvirt has them
    def _vms(self) -> dict[str, Vm]:
        return {v.name: v for v in scalesets.instances(self.ctx, self.rec.scale_set)}

    def recover(self) -> None:
        """After a kill: the current batch's instances have any interrupted reimage, revert
        or commit finished or undone (reimage.resume is idempotent); one left InProgress
        that ends on the target and healthy counts as upgraded, any other goes again; one
        whose revert completed counts as rolled back."""
        touched = [i for i in self.rec.batch(self.rec.current_batch)
                   if i.state != InstanceState.PENDING]  # fmt: skip
        if not touched:
            return
        vms = self._vms()
        for item in touched:
            vm = vms.get(item.name)
            if vm is None:  # deleted meanwhile (vmss delete-instances): nothing to upgrade
                if item.state in (InstanceState.IN_PROGRESS, InstanceState.SUCCEEDED):
                    self._instance(item.name, InstanceState.FAILED, reason="instance deleted")
                continue
            vm = reimage.resume(self.ctx, vm)
            if item.state == InstanceState.SUCCEEDED and vm.image != self.rec.target:
                self._instance(item.name, InstanceState.ROLLED_BACK, version=vm.image,
                               reason="its batch was rolled back")  # fmt: skip
            elif item.state == InstanceState.IN_PROGRESS:
                self._settle(item, vm)

    def _settle(self, item: InstanceProgress, vm: Vm) -> None:
        """An instance whose reimage a kill interrupted, once resumed."""
        if vm.image != self.rec.target:
            self._instance(item.name, InstanceState.PENDING, version="")
            return
        verdict = health.check(self.ctx, vm, self.probe)
        if verdict.healthy:
            self._instance(item.name, InstanceState.SUCCEEDED, version=vm.image)
            return
        back = reimage.revert(self.ctx, vm, self.probe)
        self._instance(
            item.name, InstanceState.FAILED, version=back.version,
            reason=f"unhealthy on {self.rec.target}: {verdict.reason}",
        )  # fmt: skip

    def drive(self) -> Rollout:
        while True:
            rec = self.rec = self.store.get(self.rec.id)  # a cancel may have come meanwhile
            if rec.error:  # decided to fault, killed while reverting: finish reverting
                self._revert_batch(rec.current_batch)
                return self._finish(Code.FAULTED)
            if rec.current_batch >= len(rec.batches):
                return self._finish(Code.COMPLETED)
            batch = rec.batch(rec.current_batch)
            if all(i.state == InstanceState.PENDING for i in batch):
                if rec.cancel_requested:
                    return self._finish(Code.CANCELLED)
                if reason := self._unhealthy_before_batch():
                    return self._finish(Code.FAULTED, error=reason)
            self._upgrade([i for i in batch if i.state == InstanceState.PENDING])
            if reason := self._upgraded_limit():
                self._update(lambda r: dataclasses.replace(r, error=reason))
                faults.point("rollout.reverting")
                self._revert_batch(self.rec.current_batch)
                return self._finish(Code.FAULTED)
            self._commit_batch(self.rec.current_batch)
            self._update(lambda r: dataclasses.replace(r, current_batch=r.current_batch + 1))
            faults.point("rollout.batch-done")
            if self.rec.current_batch < len(self.rec.batches):
                self._pause()

    def _unhealthy_before_batch(self) -> str:
        """Why the next batch must not start: more of all instances unhealthy than the
        policy allows; "" when it may."""
        found = scalesets.instances(self.ctx, self.rec.scale_set)
        verdicts = _health(self.ctx, found, self.probe)
        sick = sorted(n for n, h in verdicts.items() if not h.healthy)
        limit = self.rec.policy.max_unhealthy_instance_percent
        if not exceeds(len(sick), len(found), limit):
            return ""
        detail = "; ".join(f"{n}: {verdicts[n].reason}" for n in sick)
        return (
            f"{len(sick)} of {len(found)} instances unhealthy before batch "
            f"{self.rec.current_batch + 1} (maxUnhealthyInstancePercent {limit}): {detail}"
        )

    def _upgraded_limit(self) -> str:
        """Why the batch just done must be put back: more of the upgraded instances failed
        than the policy allows; "" when it stands."""
        failed = [i for i in self.rec.instances if i.state == InstanceState.FAILED]
        upgraded = self.rec.count(InstanceState.SUCCEEDED, InstanceState.FAILED)
        limit = self.rec.policy.max_unhealthy_upgraded_instance_percent
        if not exceeds(len(failed), upgraded, limit):
            return ""
        detail = "; ".join(f"{i.name}: {i.reason}" for i in failed)
        return (
            f"{len(failed)} of {upgraded} upgraded instances failed in batch "
            f"{self.rec.current_batch + 1} (maxUnhealthyUpgradedInstancePercent {limit}): "
            f"{detail}"
        )

    def _upgrade(self, items: list[InstanceProgress]) -> None:
        if not items:
            return
        vms = self._vms()
        placement = Placement()  # the batch's new disks spread over the target's replicas

        def one(item: InstanceProgress) -> None:
            vm = vms.get(item.name)
            if vm is None:
                self._instance(item.name, InstanceState.IN_PROGRESS)
                self._instance(item.name, InstanceState.FAILED, reason="instance deleted")
                return
            self._instance(item.name, InstanceState.IN_PROGRESS)
            faults.point("rollout.instance-started")
            try:
                result = reimage.reimage(
                    self.ctx, vm, self.target, self.probe,
                    generation=self.rec.generation, keep_previous=True, placement=placement,
                )  # fmt: skip
            except SigvirtError as err:  # refused, or its undo failed: settle what is left
                with contextlib.suppress(SigvirtError):
                    vm = reimage.resume(self.ctx, vm)
                self._instance(item.name, InstanceState.FAILED, version=vm.image,
                               reason=err.message)  # fmt: skip
                return
            if result.ok:
                self._instance(item.name, InstanceState.SUCCEEDED, version=result.version,
                               seconds=result.seconds)  # fmt: skip
            else:
                self._instance(item.name, InstanceState.FAILED, version=result.version,
                               reason=result.reason, seconds=result.seconds)  # fmt: skip
            faults.point("rollout.instance-done")

        with ThreadPoolExecutor(max_workers=len(items)) as pool:
            for fut in [pool.submit(one, i) for i in items]:
                fut.result()

    def _revert_batch(self, index: int) -> None:
        """Every instance of the batch that was upgraded goes back to its version."""
        vms = self._vms()
        todo = [i for i in self.rec.batch(index) if i.state == InstanceState.SUCCEEDED]

        def one(item: InstanceProgress) -> None:
            vm = vms.get(item.name)
            if vm is None:
                self._instance(item.name, InstanceState.FAILED, reason="instance deleted")
                return
            try:
                back = reimage.revert(self.ctx, vm, self.probe)
            except SigvirtError as err:
                back = reimage.ReimageResult(item.name, False, vm.image, vm.image, err.message)
            if back.ok:
                self._instance(item.name, InstanceState.ROLLED_BACK, version=back.version,
                               reason="its batch was rolled back")  # fmt: skip
            else:
                self._instance(item.name, InstanceState.FAILED, version=back.version,
                               reason=f"rolling back failed: {back.reason}")  # fmt: skip
            faults.point("rollout.reverted")

        if todo:
            with ThreadPoolExecutor(max_workers=len(todo)) as pool:
                for fut in [pool.submit(one, i) for i in todo]:
                    fut.result()

    def _commit_batch(self, index: int) -> None:
        """The batch stands: the previous disks of its upgraded instances go."""
        vms = self._vms()
        for item in self.rec.batch(index):
            vm = vms.get(item.name)
            if item.state == InstanceState.SUCCEEDED and vm is not None:
                reimage.commit(self.ctx, vm)
                faults.point("rollout.committed")

    def _pause(self) -> None:
        """The policy's pause between batches; a cancel request ends it early."""
        end = time.monotonic() + self.rec.policy.pause_time_between_batches
        while (left := end - time.monotonic()) > 0:
            if self.store.get(self.rec.id).cancel_requested:
                return
            time.sleep(min(PAUSE_POLL, left))


def _health(ctx: Context, found: list[Vm], probe: HealthProbe) -> dict[str, health.Health]:
    """Every instance's health, checked concurrently."""
    if not found:
        return {}

    def one(vm: Vm) -> health.Health:
        if vm.state != "running":
            return health.Health(False, f"{vm.state}")
        try:
            return health.check(ctx, vm, probe)
        except SigvirtError as err:
            return health.Health(False, err.message)

    with ThreadPoolExecutor(max_workers=min(len(found), 8)) as pool:
        return dict(zip([v.name for v in found], pool.map(one, found), strict=True))
