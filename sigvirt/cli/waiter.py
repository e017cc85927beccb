"""`wait` as az has it on every resource: poll until a condition holds or the timeout.

--created / --updated  provisioningState is Succeeded (for a version: its replication ended;
                       a replication that ended Failed ends the wait with its exit code)
--deleted              the resource is gone
--exists               the resource is there
--custom JMESPATH      the expression is true on the resource as `-o json` shows it
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from sigvirt.errors import ExitCode, NotFound, SigvirtError

CreatedOpt = Annotated[bool, typer.Option("--created", help="until it is created (Succeeded)")]
UpdatedOpt = Annotated[bool, typer.Option("--updated", help="until an update is done")]
DeletedOpt = Annotated[bool, typer.Option("--deleted", help="until it is gone")]
ExistsOpt = Annotated[bool, typer.Option("--exists", help="until it exists")]
CustomOpt = Annotated[
    str | None, typer.Option("--custom", help="until this JMESPath query is true on it")
]
IntervalOpt = Annotated[float, typer.Option("--interval", help="seconds between polls")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="seconds to wait at most")]


class WaitTimedOut(SigvirtError):
    exit_code = ExitCode.TIMED_OUT


def until(
    fetch: Callable[[], dict[str, Any]],
    *,
    created: bool = False,
    updated: bool = False,
    deleted: bool = False,
    exists: bool = False,
    custom: str | None = None,
    interval: float = 30,
    timeout: float = 3600,
    failed: Callable[[dict[str, Any]], ExitCode | None] = lambda _: None,
) -> dict[str, Any] | None:
    """Poll `fetch` (the resource as az shows it; NotFound when it is gone) until the
    condition holds; the last state seen (None when deleted). `failed` says whether the
    resource ended in a state that makes waiting pointless, and with which exit code."""
    if not (created or updated or deleted or exists or custom):
        raise typer.BadParameter(
            "give one of --created, --updated, --deleted, --exists or --custom"
        )
    expression = None
    if custom:
        import jmespath  # loaded only for --custom

        try:
            expression = jmespath.compile(custom)
        except jmespath.exceptions.JMESPathError as err:
            raise typer.BadParameter(f"--custom: {err}") from None
    end = time.monotonic() + timeout
    while True:
        try:
            state: dict[str, Any] | None = fetch()
        except NotFound:
            state = None
        if state is None:
            if deleted:
                return None
        else:
            if exists and not deleted:
                return state
            code = failed(state)
            if code is not None:
                raise typer.Exit(code)
            ok = state.get("provisioningState") == "Succeeded"
            if (created or updated) and ok:
                return state
            if expression is not None and expression.search(state):
                return state
        if time.monotonic() >= end:
            raise WaitTimedOut(f"wait: the condition did not hold within {timeout:g}s")
        time.sleep(interval)
