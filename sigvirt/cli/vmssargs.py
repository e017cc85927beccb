"""`sigvirt vmss` arguments: the upgrade-policy and health-probe options as az spells them,
and what they become (an upgrade mode, a rolling policy, a health probe, a model change)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sigvirt.catalog.fleet import HealthProbe, RollingPolicy, UpgradeMode, rolling_policy
from sigvirt.catalog.fleet import upgrade_mode as parse_mode
from sigvirt.catalog.policy import Caller
from sigvirt.errors import InvalidArgument, NotFound
from sigvirt.guests import specrun
from sigvirt.rollouts import model

VmssNameOpt = Annotated[
    str,
    typer.Option(
        "--name", "-n", help="scale set name; its instances are NAME-0, NAME-1, … (hostnames)"
    ),
]
VmssOpt = Annotated[
    str | None,
    typer.Option("--name", "-n", help="scale set name (or --ids)", show_default=False),
]
SkuOpt = Annotated[
    str | None,
    typer.Option("--vm-sku", "--size", help="instances' size, e.g. Standard_B1s, Lab_Tiny"),
]
ZonesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--zones",
        "-z",
        help="availability zones of the region to spread the instances over, balanced (several "
        "after one flag: --zones 1 2 3; default for a zoned region: all its zones)",
    ),
]
InstanceIdsOpt = Annotated[
    list[str] | None,
    typer.Option("--instance-ids", help="instance ids (az's instanceId), or * for all"),
]
ModeOpt = Annotated[
    str | None,
    typer.Option(
        "--upgrade-policy-mode",
        help="how instances follow the model: Manual (update-instances, reimage; the "
        "default), Automatic (a new latest is rolled out on its own) or Rolling (rolling "
        "upgrades in batches)",
    ),
]
BatchOpt = Annotated[
    int | None,
    typer.Option(
        "--max-batch-instance-percent",
        help="rolling upgrades: at most this % of the instances at once (5-100, default 20)",
    ),
]
UnhealthyOpt = Annotated[
    int | None,
    typer.Option(
        "--max-unhealthy-instance-percent",
        help="rolling upgrades stop when more than this % of all instances are unhealthy "
        "(5-100, default 20; not below the batch %)",
    ),
]
UpgradedOpt = Annotated[
    int | None,
    typer.Option(
        "--max-unhealthy-upgraded-instance-percent",
        help="rolling upgrades stop when more than this % of upgraded instances are unhealthy "
        "(0-100, default 20)",
    ),
]
PauseOpt = Annotated[
    str | None,
    typer.Option(
        "--pause-time-between-batches",
        help="rolling upgrades: wait between batches, ISO 8601 as az (PT30S, PT1M) or seconds",
    ),
]
PrioritizeOpt = Annotated[
    str | None,
    typer.Option(
        "--prioritize-unhealthy-instances",
        help="true|false: rolling upgrades take unhealthy instances first",
    ),
]
ProbeCommandOpt = Annotated[
    str | None,
    typer.Option(
        "--health-probe-command",
        help='an instance is healthy when this command, run in it over SSH, exits 0 ("" '
        "removes it)",
    ),
]
ProbeSpecOpt = Annotated[
    Path | None,
    typer.Option(
        "--health-probe-spec",
        help="an instance is healthy when this testinfra spec file passes against it (stored "
        'with the model; run as whoever stored it; "" removes it)',
    ),
]
# `vmss update --set PATH=VALUE`: az's paths of what the model holds.
UPDATE_PATHS = {
    "virtualMachineProfile.storageProfile.imageReference.id": "image",
    "upgradePolicy.mode": "upgrade_mode",
    "upgradePolicy.rollingUpgradePolicy.maxBatchInstancePercent": "max_batch",
    "upgradePolicy.rollingUpgradePolicy.maxUnhealthyInstancePercent": "max_unhealthy",
    "upgradePolicy.rollingUpgradePolicy.maxUnhealthyUpgradedInstancePercent":
        "max_unhealthy_upgraded",
    "upgradePolicy.rollingUpgradePolicy.pauseTimeBetweenBatches": "pause",
    "upgradePolicy.rollingUpgradePolicy.prioritizeUnhealthyInstances": "prioritize",
}  # fmt: skip


def boolean(text: str, flag: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise InvalidArgument(f"{flag} {text!r}: expected true or false")
    return text.lower() == "true"


def whole(text: str, flag: str) -> int:
    if not text.strip().isdigit():
        raise InvalidArgument(f"{flag} {text!r}: expected a whole number")
    return int(text)


def spec_source(path: Path | None) -> str | None:
    """The spec file's source, checked (None: not given; "": `--health-probe-spec ""`)."""
    if path is None:
        return None
    if str(path) in ("", "."):
        return ""
    try:
        with open(path, "rb") as f:
            data = f.read(specrun.MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise NotFound(f"--health-probe-spec {path}: no such file") from None
    except OSError as err:
        raise InvalidArgument(f"--health-probe-spec {path}: {err.strerror or err}") from None
    return specrun.check_spec(data, "--health-probe-spec")


def policy(
    mode: str | None, batch: int | None, unhealthy: int | None, upgraded: int | None,
    pause: str | None, prioritize: str | None, command: str | None, spec: Path | None,
) -> tuple[UpgradeMode, RollingPolicy, HealthProbe]:  # fmt: skip
    """What `vmss create` says about upgrades and health, checked as Azure checks it."""
    flag = "--prioritize-unhealthy-instances"
    rolling = rolling_policy(
        RollingPolicy(), max_batch=batch, max_unhealthy=unhealthy,
        max_unhealthy_upgraded=upgraded, pause=pause,
        prioritize_unhealthy=None if prioritize is None else boolean(prioritize, flag),
    )  # fmt: skip
    probe = model.probe(HealthProbe(), command, spec_source(spec), Caller.current().user)
    return parse_mode(mode) if mode else UpgradeMode.MANUAL, rolling, probe


def change(
    given: dict[str, str], image: str | None, batch: int | None, unhealthy: int | None,
    upgraded: int | None, pause: str | None, prioritize: str | None, command: str | None,
    spec: str | None, tags: dict[str, str] | None,
) -> model.ModelChange:  # fmt: skip
    """The flags and `--set` paths as one change (a flag and a --set of one property must
    agree)."""
    flags: dict[str, object] = {
        "image": image, "max_batch": batch, "max_unhealthy": unhealthy,
        "max_unhealthy_upgraded": upgraded, "pause": pause, "prioritize": prioritize,
    }  # fmt: skip
    for key, text in given.items():
        value: object = text
        if key in ("max_batch", "max_unhealthy", "max_unhealthy_upgraded"):
            value = whole(text, f"--set {key}")
        if flags.get(key) is not None and flags[key] != value:
            raise InvalidArgument(f"--set gives {key} another value than its own flag does")
        flags[key] = value
    prio = flags["prioritize"]
    mode = given.get("upgrade_mode")
    return model.ModelChange(
        image=flags["image"],  # type: ignore[arg-type]
        upgrade_mode=parse_mode(mode, "upgradePolicy.mode") if mode else None,
        max_batch=flags["max_batch"],  # type: ignore[arg-type]
        max_unhealthy=flags["max_unhealthy"],  # type: ignore[arg-type]
        max_unhealthy_upgraded=flags["max_unhealthy_upgraded"],  # type: ignore[arg-type]
        pause=flags["pause"],  # type: ignore[arg-type]
        prioritize_unhealthy=None if prio is None else boolean(str(prio), "prioritizeUnhealthy"),
        health_command=command, health_spec=spec, tags=tags,
    )  # fmt: skip
