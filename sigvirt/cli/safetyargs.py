"""Options of the safety profile and the end-of-life policy, as az spells them, and how their
values are read (az's three-state flags take true or false)."""

from __future__ import annotations

from typing import Annotated

import typer

from sigvirt.errors import InvalidArgument

AllowDeletionOpt = Annotated[
    str | None,
    typer.Option(
        "--allow-replicated-location-deletion",
        metavar="true|false",
        help="safety profile: may an update drop a region that holds replicas (default false)",
    ),
]
BlockDeletionOpt = Annotated[
    str | None,
    typer.Option(
        "--block-deletion-before-end-of-life",
        metavar="true|false",
        help="safety profile: refuse deleting the version before its --end-of-life-date",
    ),
]
EolPolicyOpt = Annotated[
    str | None,
    typer.Option(
        "--eol-policy",
        metavar="warn|deny",
        help="a version past its end of life: warn (deploys, with a warning) or deny (never "
        "latest, no new VM or instance); a definition's own wins over its gallery's",
    ),
]

ALLOW_PATH = "safetyProfile.allowDeletionOfReplicatedLocations"
BLOCK_PATH = "safetyProfile.blockDeletionBeforeEndOfLife"
UPDATE_PATHS = {
    ALLOW_PATH: "allow_replicated_location_deletion",
    BLOCK_PATH: "block_deletion_before_end_of_life",
}


def flag(text: str | None, name: str) -> bool | None:
    """An az three-state flag's value: true or false (any case); None when not given."""
    if text is None:
        return None
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise InvalidArgument(f"{name} {text!r}: expected true or false")
    return value == "true"


def profile(
    allow: str | None, block: str | None, changes: dict[str, str] | None = None
) -> tuple[bool | None, bool | None]:
    """Both safety flags from the options and az's --set (which wins, as in az)."""
    changes = changes or {}
    allow = changes.get(UPDATE_PATHS[ALLOW_PATH], allow)
    block = changes.get(UPDATE_PATHS[BLOCK_PATH], block)
    return (
        flag(allow, "--allow-replicated-location-deletion"),
        flag(block, "--block-deletion-before-end-of-life"),
    )


def settings(allow: str | None, block: str | None) -> tuple[bool, bool]:
    """Both safety flags of a new version (not given: false, as in Azure)."""
    a, b = profile(allow, block)
    return bool(a), bool(b)
