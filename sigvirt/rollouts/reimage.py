"""Reimage one scale-set instance: a fresh OS disk from another version, kept only if the
instance comes up healthy on it; otherwise it goes back to its old disk and version.

The instance keeps its name, hostname, SSH port (the domain is redefined, not recreated: the
MAC and the port forward stay), admin user and keys (the NoCloud seed stays: a fresh disk runs
cloud-init's first boot again from it) and data disks. The new overlay is NAME.osN.qcow2 in the
instance's own pool, on the least-used completed replica of the target in its region.

Before any side effect the domain's provenance records the intent (guests/osdisk.py): both
disks, the step, and this process. The steps, each a kill point `reimage.<step>`:

    planned       the intent is recorded; nothing else has changed
    overlay       the new overlay exists
    stopped       the instance is shut down (ACPI, then powered off)
    swapped       the domain boots the new disk (one define: the disk and the provenance)
    started       it runs
    healthy       SSH answered and the health probe passed
    committing    (recorded) the old overlay is to go
    old-removed   it is gone
    done          the intent is cleared
    kept          keep_previous: the old overlay stays, recorded, until commit() or revert()
    reverting     (recorded) going back: unhealthy, revert(), or an undo
    restored      the domain boots the old disk again
    discarded     the new overlay is gone (then the intent)

resume() reads the intent of a reimage whose process died and finishes or undoes it: before
the swap the new overlay is removed; after it, until the new disk was found healthy, the
instance goes back to the old one; once committing, the old overlay is removed. So no instance
is left without a bootable disk and no overlay without a domain that names it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from sigvirt import faults
from sigvirt.catalog import azureid
from sigvirt.catalog.fleet import HealthProbe
from sigvirt.catalog.records import ImageVersion, Replica
from sigvirt.context import Context
from sigvirt.errors import Conflict, GuestFailed, HostError, NotFound, OutOfRange, SigvirtError
from sigvirt.guests import domxml, guest, inventory, lifecycle, vms
from sigvirt.guests.domxml import Backing, Provenance
from sigvirt.guests.inventory import Vm
from sigvirt.guests.osdisk import Intent, OsDisk, Step
from sigvirt.guests.vms import Placement
from sigvirt.hosts import xmlbuild
from sigvirt.hosts.hypervisor import Domain, Hypervisor
from sigvirt.rollouts import health
from sigvirt.rollouts.health import Health

STOP_TIMEOUT = 30.0  # seconds a guest gets to shut down on ACPI before it is powered off


@dataclass(frozen=True)
class ReimageResult:
    instance: str
    ok: bool
    version: str  # G/D/V the instance runs afterwards
    previous: str  # G/D/V before
    reason: str = ""  # why it failed ("" when ok)
    seconds: float = 0.0


# Instances a thread of this process is reimaging: a second call on one of them is refused,
# and resume() leaves their intent (which names this process) alone.
_busy: set[str] = set()
_busy_lock = threading.Lock()


@contextlib.contextmanager
def _claim(name: str) -> Iterator[None]:
    with _busy_lock:
        if name in _busy:
            raise Conflict(f"instance {name} is being reimaged (by this process)")
        _busy.add(name)
    try:
        yield
    finally:
        with _busy_lock:
            _busy.discard(name)


@dataclass(frozen=True)
class _At:
    """Where an instance lives: its host, region, domain and the directory of its pool."""

    hv: Hypervisor
    region: str
    dom: Domain
    pool: str
    directory: Path

    @property
    def prov(self) -> Provenance:
        prov = guest.provenance_of(self.dom)
        if prov is None:
            raise NotFound(f"instance {self.dom.name} has no sigvirt provenance")
        return prov


def _locate(ctx: Context, vm: Vm) -> _At:
    hv, region, dom = inventory.find(ctx, vm.name, vm.region)
    prov = guest.provenance_of(dom)
    if prov is None or not prov.overlay_pool or not prov.overlay:
        raise NotFound(f"instance {vm.name} has no OS disk sigvirt made")
    return _At(hv, region, dom, prov.overlay_pool, hv.pool_path(prov.overlay_pool))


# -- reimage ----------------------------------------------------------------------------------
def reimage(
    ctx: Context,
    vm: Vm,
    target: ImageVersion,
    probe: HealthProbe,
    *,
    generation: int | None = None,
    keep_previous: bool = False,
    timeout: float = 300,
    placement: Placement | None = None,
) -> ReimageResult:
    """Reimage `vm` onto `target`; health-checked, and back on its old disk and version
    (booted, the new overlay removed, ok=False) when the new one fails. With keep_previous the
    old overlay is kept, recorded, until commit() or revert(). `generation`: the model
    generation the instance has once on the new disk (None: the one it has)."""
    start = time.monotonic()
    with _claim(vm.name):
        at = _locate(ctx, vm)
        intent = at.prov.intent
        if intent is not None and intent.step == Step.KEPT:
            raise Conflict(
                f"instance {vm.name} keeps the disk of its previous version "
                f"{intent.old.image}: commit or revert that first"
            )
        was_running = at.dom.is_active()
        if at.prov.reimage:  # a killed one: undone (not booted again: this one stops it)
            was_running = intent.running if intent is not None else was_running
            _resume(at, start=False)
        placement = placement or Placement()
        intent, replica = _plan(ctx, at, target, generation, keep_previous, placement)
        intent = replace(intent, running=was_running or intent.running)
        try:
            return _apply(ctx, at, intent, probe, timeout, start)
        finally:
            placement.done(replica)


def _plan(
    ctx: Context, at: _At, target: ImageVersion, generation: int | None, keep: bool,
    placement: Placement,
) -> tuple[Intent, Replica]:  # fmt: skip
    """The intent, computed read-only: the replica, the new overlay's name and size."""
    if not target.published_ok:
        raise Conflict(f"image version {target.ref} is {target.state}, not published")
    vms.check_end_of_life(ctx, target)  # under an eol policy deny (model.resolve_image too)
    prov = at.prov
    budget = ctx.regions.region(at.region).clones_per_replica
    replica = placement.pick(at.hv, target, at.region, budget)
    try:
        base = at.hv.volume_by_path(Path(replica.path))
        if base is None:
            raise NotFound(f"replica {replica.path} is not a volume of any pool on {at.hv.uri}")
        capacity = base.capacity
        if prov.os_disk_gb:
            if prov.os_disk_gb * guest.GiB < capacity:
                raise OutOfRange(
                    f"{at.dom.name} has a {prov.os_disk_gb} GiB OS disk, smaller than image "
                    f"version {target.ref} ({-(-capacity // guest.GiB)} GiB)"
                )
            capacity = prov.os_disk_gb * guest.GiB
        serial = guest.os_disk_serial(at.dom.name, prov.overlay) + 1
        while at.hv.volume_exists(at.pool, guest.os_disk_name(at.dom.name, serial)):
            serial += 1
        gallery = ctx.store.get_gallery(target.gallery)
    except BaseException:
        placement.done(replica)
        raise
    new = OsDisk(
        overlay=guest.os_disk_name(at.dom.name, serial),
        image=target.ref,
        image_id=azureid.version_id(
            gallery.resource_group, target.gallery, target.definition, target.name
        ),
        replica_pool=replica.pool,
        replica_path=replica.path,
        bytes=capacity,
        generation=prov.model_generation if generation is None else generation,
    )
    running = at.dom.is_active()
    return Intent(Step.PLANNED, prov.os_disk, new, running, keep, guest.creator_id()), replica


def _apply(
    ctx: Context, at: _At, intent: Intent, probe: HealthProbe, timeout: float, start: float
) -> ReimageResult:
    old, new = intent.old, intent.new
    _record(at, at.prov, intent)
    faults.point("reimage.planned")
    verdict: Health
    try:
        at.hv.create_volume(
            at.pool, xmlbuild.overlay_volume_xml(new.overlay, new.bytes, Path(new.replica_path))
        )
        faults.point("reimage.overlay")
        _stop(at)
        faults.point("reimage.stopped")
        intent = intent.moved(Step.SWAPPED)
        _boot_disk(at, new, intent)
        faults.point("reimage.swapped")
        _start(at)
        faults.point("reimage.started")
        verdict = health.check(ctx, _vm(at), probe, timeout=timeout)
    except SigvirtError as err:
        verdict = Health(False, err.message)
    except BaseException:
        with contextlib.suppress(Exception):
            _go_back(at, intent)
        raise
    if not verdict.healthy:
        _go_back(at, intent)
        reason = verdict.reason
        if intent.running:  # booted again on the old disk: say so if that isn't healthy
            again = health.check(ctx, _vm(at), probe, timeout=timeout)
            if not again.healthy:
                reason += f" (the old disk is not healthy either: {again.reason})"
        return ReimageResult(at.dom.name, False, old.image, old.image, reason, _since(start))
    faults.point("reimage.healthy")
    if intent.keep:
        _record(at, at.prov, intent.moved(Step.KEPT, creator=""))
        faults.point("reimage.kept")
    else:
        _commit(at, intent.moved(Step.COMMITTING))
    return ReimageResult(at.dom.name, True, new.image, old.image, "", _since(start))


# -- commit, revert, resume ---------------------------------------------------------------------
def commit(ctx: Context, vm: Vm) -> None:
    """Drop a kept previous disk (a no-op when there is none)."""
    with _claim(vm.name):
        at = _locate(ctx, vm)
        intent = at.prov.intent
        if intent is None:
            return
        if intent.step == Step.KEPT:
            _commit(at, intent.moved(Step.COMMITTING, creator=guest.creator_id()))
            return
        _resume(at)


def revert(ctx: Context, vm: Vm, probe: HealthProbe, *, timeout: float = 300) -> ReimageResult:
    """Back onto the kept disk and its version (booted, health-checked); the newer overlay
    goes. ok: the instance is healthy on it."""
    start = time.monotonic()
    with _claim(vm.name):
        at = _locate(ctx, vm)
        intent = at.prov.intent
        if intent is None or intent.step not in (Step.KEPT, Step.REVERTING):
            if intent is not None:
                _resume(at)
            raise Conflict(f"instance {vm.name} keeps no previous disk to go back to")
        if intent.step == Step.REVERTING:
            _check_orphaned(at, intent)
        mine = replace(intent, creator=guest.creator_id(), running=True)
        _go_back(at, mine)
        verdict = health.check(ctx, _vm(at), probe, timeout=timeout)
        return ReimageResult(
            vm.name, verdict.healthy, intent.old.image, intent.new.image, verdict.reason,
            _since(start),
        )  # fmt: skip


def resume(ctx: Context, vm: Vm) -> Vm:
    """Finish or undo a reimage whose process died (idempotent; a kept disk stays kept)."""
    with _claim(vm.name):
        at = _locate(ctx, vm)
        if at.prov.reimage:
            _resume(at)
        return _vm(at)


def _check_orphaned(at: _At, intent: Intent) -> None:
    """An intent another live process is working on is refused (Conflict)."""
    mine = guest.creator_id()
    if intent.creator and intent.creator != mine and guest.creator_alive(intent.creator):
        raise Conflict(
            f"instance {at.dom.name} is being reimaged by another sigvirt process "
            f"({intent.creator})"
        )


def _resume(at: _At, *, start: bool = True) -> None:
    prov = at.prov
    intent = prov.intent
    if intent is None:
        raise HostError(
            f"instance {at.dom.name}: its reimage record can't be read (edited by hand?)",
            hint="`virsh metadata` shows it; the volumes named NAME.osN.qcow2 are its disks",
        )
    if intent.step == Step.KEPT:
        return
    _check_orphaned(at, intent)
    mine = replace(intent, creator=guest.creator_id())
    if intent.step == Step.COMMITTING:
        _commit(at, mine)
    else:  # planned, swapped, reverting: the old disk is the one known to work
        _go_back(at, mine, start=start)


def _commit(at: _At, intent: Intent) -> None:
    """The new disk stays: the intent says committing, the old overlay goes, then the intent."""
    prov = at.prov
    if prov.overlay != intent.new.overlay:
        raise HostError(f"{at.dom.name}: boots {prov.overlay}, not {intent.new.overlay}")
    _record(at, prov, intent)
    faults.point("reimage.committing")
    if intent.old.overlay != prov.overlay:
        at.hv.delete_volume(at.pool, intent.old.overlay)
    faults.point("reimage.old-removed")
    _record(at, at.prov, None)
    faults.point("reimage.done")


def _go_back(at: _At, intent: Intent, *, start: bool = True) -> None:
    """Back on the old disk, whatever the step: the intent says reverting; the domain is
    redefined on the old disk if it boots the new one, started if it ran before (unless the
    caller is about to stop it again), and the new overlay goes, then the intent."""
    intent = intent if intent.step == Step.REVERTING else intent.moved(Step.REVERTING)
    prov = at.prov
    _record(at, prov, intent)
    faults.point("reimage.reverting")
    if prov.overlay != intent.old.overlay:
        _stop(at)
        _boot_disk(at, intent.old, intent)
    faults.point("reimage.restored")
    if start and intent.running and not at.dom.is_active():
        _start(at)
    if intent.new.overlay != intent.old.overlay:
        at.hv.delete_volume(at.pool, intent.new.overlay)
    faults.point("reimage.discarded")
    _record(at, at.prov, None)


def _since(start: float) -> float:
    return round(time.monotonic() - start, 1)


# -- the libvirt side -------------------------------------------------------------------------
def _record(at: _At, prov: Provenance, intent: Intent | None) -> None:
    """The provenance with `intent` (None: cleared), live and persistent."""
    text = domxml.provenance_xml(replace(prov, reimage=intent.encode() if intent else ""))
    at.dom.set_metadata(domxml.XMLNS, "sigvirt", text)


def _boot_disk(at: _At, disk: OsDisk, intent: Intent) -> None:
    """Redefine the (stopped) domain on `disk`: vda and the provenance in one define."""
    prov = at.prov.booting(disk, intent)
    chain = () if disk.flattened else (Backing(Path(disk.replica_path)),)
    text = domxml.with_os_disk(
        at.dom.xml(inactive=True, secure=True), at.directory / disk.overlay, chain, prov
    )
    at.hv.define(text)


def _stop(at: _At) -> None:
    lifecycle.power_domain(at.hv, at.dom, "stop", timeout=STOP_TIMEOUT)


def _start(at: _At) -> None:
    try:
        guest.start_domain(at.hv, at.dom)
    except HostError as err:
        raise GuestFailed(f"{at.dom.name}: libvirt could not start it: {err.message}") from None


def _vm(at: _At) -> Vm:
    return inventory.describe(at.hv, at.region, at.hv.domain(at.dom.name))


def record_generation(ctx: Context, vm: Vm, generation: int) -> Vm:
    """The instance already runs what the model says: it now has the model's generation."""
    with _claim(vm.name):
        at = _locate(ctx, vm)
        prov = at.prov
        if prov.reimage:
            raise Conflict(f"instance {vm.name} is being reimaged")
        text = domxml.provenance_xml(replace(prov, model_generation=generation))
        at.dom.set_metadata(domxml.XMLNS, "sigvirt", text)
        return _vm(at)
