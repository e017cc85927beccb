"""An instance's OS disk, and the intent a reimage records in the domain before it touches
anything (rollouts/reimage.py does the work; this is what the domain carries).

A reimage moves a domain from one OS disk (an overlay on a replica of one version) to another.
Both disks and where the move stands are written into the domain's provenance first, as one
JSON element, so that whoever finds the domain after a SIGKILL knows every volume that may
exist and whether to finish or undo. The steps, as a transition table:

    planned     the new overlay may exist; the domain still boots the old disk
    swapped     the domain boots the new disk; not yet found healthy
    committing  the new disk is healthy; the old overlay is being removed
    kept        the new disk is healthy; the old one is kept for a revert (keep_previous)
    reverting   going back to the old disk (failed health, a revert, or an undo)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

from sigvirt.errors import InternalError


class Step(StrEnum):
    PLANNED = "planned"
    SWAPPED = "swapped"
    COMMITTING = "committing"
    KEPT = "kept"
    REVERTING = "reverting"


STEP_TRANSITIONS: dict[Step, frozenset[Step]] = {
    Step.PLANNED: frozenset({Step.SWAPPED, Step.REVERTING}),
    Step.SWAPPED: frozenset({Step.COMMITTING, Step.KEPT, Step.REVERTING}),
    Step.COMMITTING: frozenset(),  # the intent goes once the old overlay is gone
    Step.KEPT: frozenset({Step.COMMITTING, Step.REVERTING}),
    Step.REVERTING: frozenset(),  # the intent goes once the new overlay is gone
}


class BadStep(InternalError):
    template = "reimage of {what}: {detail}"


@dataclass(frozen=True)
class OsDisk:
    """One OS disk: an overlay volume (in the instance's own pool) on a replica."""

    overlay: str
    image: str  # G/D/V
    image_id: str = ""
    replica_pool: str = ""
    replica_path: str = ""
    bytes: int = 0  # the overlay's capacity
    generation: int = 0  # the model generation the instance has on this disk
    flattened: str = ""  # when this disk stopped depending on its replica

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Any) -> OsDisk:
        if not isinstance(data, dict):
            raise ValueError("not an object")
        out: dict[str, Any] = {}
        for f in fields(cls):
            value = data.get(f.name, getattr(cls, f.name, None))
            kind = int if f.type in ("int", int) else str
            if value is None or type(value) is not kind:
                raise ValueError(f"{f.name}: expected {kind.__name__}")
            out[f.name] = value
        return cls(**out)


@dataclass(frozen=True)
class Intent:
    step: Step
    old: OsDisk
    new: OsDisk
    running: bool = True  # the domain ran before: an undo starts it again
    keep: bool = False  # keep_previous: the old disk stays until commit or revert
    creator: str = ""  # host:boot:pid of the process at work ("" while kept)

    def moved(self, step: Step, **changes: Any) -> Intent:
        if step != self.step and step not in STEP_TRANSITIONS[self.step]:
            raise BadStep(f"{self.step} → {step} is not allowed", what=self.new.overlay)
        return replace(self, step=step, **changes)

    @property
    def overlays(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(o for o in (self.old.overlay, self.new.overlay) if o))

    def encode(self) -> str:
        return json.dumps(
            {
                "step": self.step.value,
                "old": self.old.to_dict(),
                "new": self.new.to_dict(),
                "running": self.running,
                "keep": self.keep,
                "creator": self.creator,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str) -> Intent:
        """ValueError if the text is not an intent (a hand-edited domain)."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        running, keep, creator = data.get("running"), data.get("keep"), data.get("creator", "")
        if type(running) is not bool or type(keep) is not bool or type(creator) is not str:
            raise ValueError("running, keep or creator malformed")
        return cls(
            Step(str(data.get("step"))),
            OsDisk.from_dict(data.get("old")),
            OsDisk.from_dict(data.get("new")),
            running,
            keep,
            creator,
        )
