"""Manual upgrades: `vmss reimage` (instances onto the model's version, whatever they run)
and `vmss update-instances` (the model applied: instances whose version or model generation
differ), each instance health-checked and rolled back on failure; and the health of every
instance, for `vmss get-instance-view`."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sigvirt.catalog.fleet import HealthProbe
from sigvirt.context import Context
from sigvirt.errors import SigvirtError
from sigvirt.guests import scalesets
from sigvirt.guests.inventory import Vm
from sigvirt.guests.vms import Placement
from sigvirt.rollouts import health, reimage
from sigvirt.rollouts.health import Health
from sigvirt.rollouts.model import model_of, target_version
from sigvirt.rollouts.reimage import ReimageResult


def reimage_instances(
    ctx: Context, name: str, instance_ids: list[str] | None, *, only_outdated: bool = False,
    timeout: float = 300,
) -> list[ReimageResult]:  # fmt: skip
    """Reimage the chosen instances (all by default) onto the model's version, concurrently,
    each with its own undo; with only_outdated (update-instances) only those whose version
    differs, the others just take the model's generation."""
    model, found = scalesets.members_of(ctx, name)
    chosen = scalesets.select(name, found, instance_ids)
    target = target_version(ctx, model)
    placement = Placement()

    def one(vm: Vm) -> ReimageResult:
        try:
            if vm.reimage_step and vm.reimage_step != "kept":
                vm = reimage.resume(ctx, vm)  # a killed reimage: finished or undone first
            if only_outdated and vm.image == target.ref and not vm.reimage_step:
                if max(1, vm.model_generation) != model.generation:
                    reimage.record_generation(ctx, vm, model.generation)
                return ReimageResult(vm.name, True, vm.image, vm.image)
            return reimage.reimage(
                ctx, vm, target, model.health, generation=model.generation,
                placement=placement, timeout=timeout,
            )  # fmt: skip
        except SigvirtError as err:
            return ReimageResult(vm.name, False, vm.image, vm.image, err.message)

    if not chosen:
        return []
    workers = min(len(chosen), scalesets.concurrency(ctx.hv(chosen[0].location)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, chosen))


def start_background(ctx: Context, name: str, verb: str, instance_ids: list[str] | None) -> Path:
    """`--no-wait`: the same command in a detached process; its log's path."""
    model_of(ctx, name)  # NotFound now, not in the background
    argv = [sys.executable, "-m", "sigvirt", "vmss", verb, "--name", name, "-o", "none"]
    for i in instance_ids or []:
        argv += ["--instance-ids", i]
    log = scalesets.fleet(ctx).dir_for(name) / f".{verb}.log"
    try:
        with open(log, "ab"):
            pass
    except OSError:
        log = ctx.tmpdir / f"sigvirt-vmss-{name}-{verb}.log"
    ctx.runner.spawn_detached(argv, log)
    return log


def healths(
    ctx: Context, probe: HealthProbe, found: list[Vm], timeout: float = 10.0
) -> dict[str, Health]:
    """Each running instance's health now (a stopped one has none to report)."""
    running = [v for v in found if v.state == "running"]
    if not running:
        return {}
    with ThreadPoolExecutor(max_workers=min(len(running), 8)) as pool:
        checked = pool.map(lambda v: health.check(ctx, v, probe, timeout=timeout), running)
        return {v.name: h for v, h in zip(running, checked, strict=True)}
