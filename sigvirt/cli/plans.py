"""`--dry-run`: a command's plan printed instead of carried out. JSON (stable, sorted keys:
command, subject, dryRun, actions with verb/kind/target/region/pool/path/bytes/detail,
bytesCopied, bytesFreed) for scripts; a table, one action a row, for people."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from sigvirt.cli.render import Output, emit, for_people, note

if TYPE_CHECKING:
    from sigvirt.catalog.plans import Plan

DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="print the plan (what would be copied, created, "
                       "deleted), change nothing")
]  # fmt: skip


def size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def show(plan: Plan, output: Output) -> None:
    """Print a plan: its JSON, or a table and a line of totals."""
    from sigvirt.catalog.plans import ROW_COLUMNS

    if not for_people(output):
        emit(plan.to_json(), output, ready=True)
        return
    rows = [a.row() for a in plan.actions]
    for r in rows:
        r["bytes"] = size(r["bytes"]) if r["bytes"] else ""
    title = f"{plan.command} {plan.subject}".strip() + " (dry run)"
    emit(rows, output, ROW_COLUMNS, title=title, ready=True)
    if not plan.actions:
        note("nothing to do")
        return
    note(
        f"{len(plan.actions)} action(s); {size(plan.bytes_copied)} to copy, "
        f"{size(plan.bytes_freed)} to free; nothing was changed"
    )
