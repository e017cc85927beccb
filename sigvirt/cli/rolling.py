"""`sigvirt vmss rolling-upgrade start|cancel|get-latest` (az vmss rolling-upgrade).

JSON is az's RollingUpgradeStatusInfo (`policy`, `runningStatus`, `progress`, `error`, with
the resource's id, name, type and location), sigvirt's own account of the rollout (its
batches, each instance's state and reason, the process applying it) under `sigvirt`.
A rollout that ends Faulted makes `start` exit with ROLLOUT_FAULTED after printing it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from sigvirt.catalog import azureid
from sigvirt.catalog.rollouts import InstanceState, Rollout, iso_duration
from sigvirt.catalog.rollouts import RollingUpgradeStatusCode as Code
from sigvirt.cli.common import IdsOpt, NoWaitOpt, ResourceGroupOpt, context, present
from sigvirt.cli.render import Output, OutputOpt
from sigvirt.errors import InvalidArgument

if TYPE_CHECKING:
    from sigvirt.context import Context

app = typer.Typer(
    help="Rolling upgrades: a scale set's instances moved to its model's image batch by batch, "
    "health-checked, a failing batch rolled back (az vmss rolling-upgrade).",
    no_args_is_help=True,
)

NameOpt = Annotated[
    str | None, typer.Option("--name", "-n", help="scale set name (or --ids)", show_default=False)
]
TYPE = "Microsoft.Compute/virtualMachineScaleSets/rollingUpgrades"
COLUMNS = ["scale_set", "rollout", "status", "target", "progress", "batch", "started",
           "last_action", "error", "instances", "runner"]  # fmt: skip


def register(vmss: typer.Typer) -> None:
    """Mount `rolling-upgrade` under `vmss` once (main() runs many times in one process)."""
    if not any(group.typer_instance is app for group in vmss.registered_groups):
        vmss.add_typer(app, name="rolling-upgrade")


def _one(name: str | None, ids: list[str] | None) -> str:
    from sigvirt.guests import inventory

    found = inventory.scale_set_names(name, ids)
    if len(found) != 1:
        raise InvalidArgument("this command takes one scale set: give one --ids")
    return found[0]


# -- az's shape -------------------------------------------------------------------------------
def progress(rec: Rollout) -> dict[str, int]:
    """az's RollingUpgradeProgressInfo: rolled-back instances count as failed upgrades."""
    return {
        "successfulInstanceCount": rec.count(InstanceState.SUCCEEDED),
        "failedInstanceCount": rec.count(InstanceState.FAILED, InstanceState.ROLLED_BACK),
        "inProgressInstanceCount": rec.count(InstanceState.IN_PROGRESS),
        "pendingInstanceCount": rec.count(InstanceState.PENDING),
    }


def _error(rec: Rollout) -> dict[str, Any] | None:
    """az's ApiError for a faulted rollout: the reason, and one detail per failed instance."""
    if rec.code != Code.FAULTED:
        return None
    before = "before batch" in rec.error
    return {
        "code": "MaxUnhealthyInstancePercentExceeded" if before
        else "MaxUnhealthyUpgradedInstancePercentExceeded",
        "message": rec.error,
        "target": None,
        "details": [
            {"code": i.state.value, "target": i.name, "message": i.reason}
            for i in rec.instances if i.reason
        ],
        "innererror": None,
    }  # fmt: skip


def status(rec: Rollout, group: str, alive: bool) -> dict[str, Any]:
    """`az vmss rolling-upgrade get-latest`."""
    p = rec.policy
    return {
        "id": azureid.vmss_id(group, rec.scale_set) + "/rollingUpgrades/latest",
        "name": "latest",
        "type": TYPE,
        "location": rec.region,
        "resourceGroup": group or azureid.DEFAULT_GROUP,
        "tags": {},
        "policy": {
            "maxBatchInstancePercent": p.max_batch_instance_percent,
            "maxUnhealthyInstancePercent": p.max_unhealthy_instance_percent,
            "maxUnhealthyUpgradedInstancePercent": p.max_unhealthy_upgraded_instance_percent,
            "pauseTimeBetweenBatches": iso_duration(p.pause_time_between_batches),
            "prioritizeUnhealthyInstances": p.prioritize_unhealthy_instances,
            "rollbackFailedInstancesOnPolicyBreach": True,
            "enableCrossZoneUpgrade": None,
            "maxSurge": False,
        },
        "runningStatus": {
            "code": rec.code.value,
            "startTime": rec.start_time,
            "lastAction": rec.last_action,
            "lastActionTime": rec.last_action_time or rec.start_time,
        },
        "progress": progress(rec),
        "error": _error(rec),
        "sigvirt": {
            "rollout": rec.id,
            "target": rec.target,
            "batches": [list(b) for b in rec.batches],
            "currentBatch": rec.current_batch,
            "skipped": list(rec.skipped),
            "instances": [
                {
                    "name": i.name,
                    "instanceId": str(i.instance),
                    "batch": i.batch,
                    "state": i.state.value,
                    "fromVersion": i.from_version,
                    "version": i.version or None,
                    "reason": i.reason,
                    "seconds": i.seconds,
                    "updated": i.updated or None,
                }
                for i in rec.instances
            ],
            "generation": rec.generation,
            "cancelRequested": rec.cancel_requested,
            "automatic": rec.automatic,
            "runner": rec.runner,
            "runnerAlive": alive,
            "resumed": rec.resumed,
            "endTime": rec.end_time or None,
            "reason": rec.error,
        },
    }


def people(rec: Rollout, alive: bool) -> dict[str, Any]:
    """The rollout for a table."""
    c = progress(rec)
    runner = rec.runner if alive else (f"{rec.runner} (gone)" if not rec.done else "")
    return {
        "scale_set": rec.scale_set,
        "rollout": rec.id,
        "status": rec.code.value
        + (" (cancel requested)" if rec.cancel_requested and not rec.done else ""),
        "target": rec.target,
        "progress": f"{c['successfulInstanceCount']} succeeded, {c['failedInstanceCount']} "
        f"failed, {c['inProgressInstanceCount']} in progress, {c['pendingInstanceCount']} pending",
        "batch": f"{min(rec.current_batch + 1, len(rec.batches))} of {len(rec.batches)}",
        "started": rec.start_time,
        "last_action": f"{rec.last_action} {rec.last_action_time}",
        "error": rec.error,
        "instances": [
            f"{i.name} {i.state.value}" + (f" ({i.reason})" if i.reason else "")
            for i in rec.instances
        ],
        "runner": runner,
    }


def _show(ctx: Context, rec: Rollout, group: str | None, output: Output) -> None:
    from sigvirt.rollouts import rolling
    from sigvirt.rollouts.model import model_of

    alive = rolling.runner_alive(rolling.store_of(ctx, rec.scale_set), rec)
    recorded = model_of(ctx, rec.scale_set).resource_group
    present(status(rec, group or recorded, alive), people(rec, alive), output, COLUMNS)


# -- commands ---------------------------------------------------------------------------------
@app.command("start")
def rolling_start(
    name: NameOpt = None,
    ids: IdsOpt = None,
    no_wait: NoWaitOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Upgrade the instances to the model's image (a definition: its latest in the scale
    set's region), batch by batch as the rolling upgrade policy says; a batch that breaks the
    health limits is rolled back and the upgrade stops (Faulted, exit 25). Rerun after a
    killed upgrade: it is taken over and finished."""
    from sigvirt.rollouts import rolling

    target = _one(name, ids)
    with context() as ctx:
        rec = rolling.start(ctx, target, wait=not no_wait)
        _show(ctx, rec, resource_group, output)
    if rec.code == Code.FAULTED:
        raise rolling.RolloutFaulted(rec.error, scale_set=rec.scale_set)


@app.command("cancel")
def rolling_cancel(
    name: NameOpt = None,
    ids: IdsOpt = None,
    no_wait: NoWaitOpt = False,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Stop the running rolling upgrade after its current batch (waits for that unless
    --no-wait)."""
    from sigvirt.rollouts import rolling

    target = _one(name, ids)
    with context() as ctx:
        rec = rolling.cancel(ctx, target, wait=not no_wait)
        _show(ctx, rec, resource_group, output)


@app.command("get-latest")
def rolling_get_latest(
    name: NameOpt = None,
    ids: IdsOpt = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """The latest rolling upgrade: its status, progress, policy and each instance's state."""
    from sigvirt.rollouts import rolling

    target = _one(name, ids)
    with context() as ctx:
        _show(ctx, rolling.latest(ctx, target), resource_group, output)


@app.command("run", hidden=True)
def rolling_run(
    name: Annotated[str, typer.Option("--name", "-n")],
    rollout_id: Annotated[int, typer.Option("--rollout-id")],
) -> None:
    """Apply a recorded rollout (what a --no-wait start runs in the background)."""
    from sigvirt.rollouts import rolling

    with context() as ctx:
        rolling.run(ctx, name, rollout_id)
