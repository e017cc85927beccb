"""Plans as data: what a command that copies or deletes will do, one action per file, record
or domain, computed before anything changes (what `--dry-run` prints), and what its real run
did, reported in the same terms so the two can be compared.

An action's identity is its verb, kind, target, region, pool and path; `bytes` and `detail`
say how much and why (a plan's estimate of a copy's size may differ from the bytes the copy
wrote), so they take no part in equality or order. A dry run's actions sorted equal the real
run's sorted: that is the test that the real run executed the plan.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# The verbs, each one kind of change; a plan uses no others.
VERBS = (
    "copy",  # bytes into a new file (a replica copied from another)
    "import",  # a source gated, converted and stored as a version's first replica
    "create-record",  # a catalog record (a version, a scale set's model)
    "update-record",  # a catalog record changed (target regions, a replica marked)
    "delete-record",  # a catalog record removed
    "delete-file",  # a file that is no volume of a pool
    "create-volume",  # a volume in a pool (an overlay, a seed, a console log, a data disk)
    "delete-volume",  # a volume removed from a pool (a replica, a partial, a guest's disk)
    "define-domain",  # a libvirt domain defined (and started)
    "undefine-domain",  # a libvirt domain stopped and undefined
)


@dataclass(frozen=True, order=True)
class Action:
    """One change, as a dry run plans it and a real run reports it."""

    verb: str
    kind: str  # version | replica | partial | scale-set | vmss-instance | overlay | seed | ...
    target: str  # a volume, a domain, a record (G/D/V, a scale set's name)
    region: str = ""
    pool: str = ""
    path: str = ""
    bytes: int = field(default=0, compare=False)  # what it copies or frees (allocated)
    detail: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.verb not in VERBS:
            raise ValueError(f"unknown plan verb {self.verb!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "detail": self.detail,
            "kind": self.kind,
            "path": self.path,
            "pool": self.pool,
            "region": self.region,
            "target": self.target,
            "verb": self.verb,
        }

    def row(self) -> dict[str, Any]:
        """For a table: where in one column."""
        where = "/".join(x for x in (self.region, self.pool) if x)
        return {"verb": self.verb, "kind": self.kind, "target": self.target, "where": where,
                "bytes": self.bytes, "detail": self.detail}  # fmt: skip


ROW_COLUMNS = ["verb", "kind", "target", "where", "bytes", "detail"]


@dataclass(frozen=True)
class Plan:
    """A command's actions, in the order it takes them."""

    command: str  # e.g. "image-version update"
    subject: str  # what it acts on: G/D/V, a scale set's name, "" for sig gc
    actions: tuple[Action, ...] = ()
    dry_run: bool = True

    @property
    def bytes_copied(self) -> int:
        return sum(a.bytes for a in self.actions if a.verb in ("copy", "import"))

    @property
    def bytes_freed(self) -> int:
        return sum(a.bytes for a in self.actions if a.verb in ("delete-volume", "delete-file"))

    def sorted_actions(self) -> list[Action]:
        return sorted(self.actions)

    def to_json(self) -> dict[str, Any]:
        """Stable keys, sorted: scripts diff a dry run against a later one."""
        return {
            "actions": [a.to_json() for a in self.actions],
            "bytesCopied": self.bytes_copied,
            "bytesFreed": self.bytes_freed,
            "command": self.command,
            "dryRun": self.dry_run,
            "subject": self.subject,
        }


class Journal:
    """Where an apply path reports each action as it takes it (threads may share one); None
    in its place means nobody asked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actions: list[Action] = []

    def done(self, action: Action) -> None:
        with self._lock:
            self._actions.append(action)

    def extend(self, actions: Iterable[Action]) -> None:
        with self._lock:
            self._actions.extend(actions)

    @property
    def actions(self) -> tuple[Action, ...]:
        with self._lock:
            return tuple(self._actions)

    def plan(self, command: str, subject: str, *, dry_run: bool = False) -> Plan:
        return Plan(command, subject, self.actions, dry_run)


def note(journal: Journal | None, action: Action) -> None:
    """Report `action` to the journal, if there is one."""
    if journal is not None:
        journal.done(action)
