"""The catalog's records (frozen dataclasses) and their lifecycles as transition tables.

A record's state changes only through `moved()`, which refuses a step its table doesn't
list (tests/test_layers.py checks that no other code sets a state).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum, StrEnum
from functools import cache
from typing import Any, Literal, TypeVar

from sigvirt.errors import InternalError

T = TypeVar("T")

OsType = Literal["Linux", "Windows"]
OsState = Literal["Generalized", "Specialized"]
Firmware = Literal["bios", "uefi"]


class VersionState(StrEnum):
    """A version's provisioning state (Azure: provisioningState)."""

    CREATING = "creating"  # claimed: its creator holds the op lock while importing
    SUCCEEDED = "succeeded"  # published: its first replica is complete and verified
    FAILED = "failed"
    DELETING = "deleting"


VERSION_TRANSITIONS: dict[VersionState, frozenset[VersionState]] = {
    VersionState.CREATING: frozenset({VersionState.SUCCEEDED, VersionState.FAILED}),
    VersionState.SUCCEEDED: frozenset({VersionState.DELETING}),
    VersionState.FAILED: frozenset({VersionState.DELETING}),
    VersionState.DELETING: frozenset(),  # the record goes when its replicas are gone
}


class ReplicaState(StrEnum):
    """A replica's lifecycle (Azure: replicationStatus.summary[].state)."""

    PENDING = "pending"
    COPYING = "copying"
    VERIFYING = "verifying"
    COMPLETED = "completed"  # sha256 of its bytes equals the version's, final name
    FAILED = "failed"  # with the reason
    DELETING = "deleting"  # marked before a byte of it is removed


_R = ReplicaState
REPLICA_TRANSITIONS: dict[ReplicaState, frozenset[ReplicaState]] = {
    _R.PENDING: frozenset({_R.COPYING, _R.FAILED}),
    _R.COPYING: frozenset({_R.VERIFYING, _R.FAILED, _R.PENDING}),  # PENDING: resumed after a kill
    _R.VERIFYING: frozenset({_R.COMPLETED, _R.FAILED, _R.PENDING}),
    _R.COMPLETED: frozenset({_R.DELETING}),
    _R.FAILED: frozenset({_R.PENDING, _R.DELETING}),
    _R.DELETING: frozenset({_R.FAILED}),
}


class BadTransition(InternalError):
    template = "{what}: {detail}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Gallery:
    name: str
    description: str = ""
    location: str = "local"  # home region: default source region of its versions
    owner_group: str = ""
    created: str = ""


@dataclass(frozen=True)
class Definition:
    gallery: str
    name: str
    publisher: str
    offer: str
    sku: str
    os_type: OsType = "Linux"
    os_state: OsState = "Generalized"
    hyper_v_generation: Literal["V1", "V2"] = "V1"
    architecture: Literal["x64", "Arm64"] = "x64"
    min_vcpus: int | None = None
    max_vcpus: int | None = None
    min_memory_mib: int | None = None
    max_memory_mib: int | None = None
    end_of_life: str | None = None
    eula: str = ""
    release_note_uri: str = ""
    description: str = ""
    created: str = ""

    @property
    def firmware(self) -> Firmware:
        return "uefi" if self.hyper_v_generation == "V2" else "bios"


@dataclass(frozen=True)
class Replica:
    region: str
    pool: str
    volume: str
    path: str
    state: ReplicaState = ReplicaState.PENDING
    progress: int = 0  # percent, while copying
    reason: str = ""  # why it failed
    updated: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.region, self.volume)

    def moved(self, state: ReplicaState, **changes: Any) -> Replica:
        """The same replica in a new state, if the lifecycle allows that step."""
        if state != self.state and state not in REPLICA_TRANSITIONS[self.state]:
            raise BadTransition(
                f"{self.state} → {state} is not allowed", what=f"replica {self.volume}"
            )
        return dataclasses.replace(self, state=state, updated=now(), **changes)


@dataclass(frozen=True)
class ImageVersion:
    gallery: str
    definition: str
    name: str
    state: VersionState = VersionState.CREATING
    source: str = ""
    source_region: str = "local"
    target_regions: dict[str, int] = field(default_factory=dict)
    replica_count: int = 1
    exclude_from_latest: bool = False
    end_of_life: str | None = None
    sha256: str = ""
    virtual_size: int = 0
    allocated_size: int = 0
    format: str = "qcow2"
    replicas: tuple[Replica, ...] = ()
    reason: str = ""  # why creation failed
    warnings: tuple[str, ...] = ()
    created: str = ""
    published: str = ""

    @property
    def ref(self) -> str:
        return f"{self.gallery}/{self.definition}/{self.name}"

    @property
    def published_ok(self) -> bool:
        return self.state == VersionState.SUCCEEDED

    def moved(self, state: VersionState, **changes: Any) -> ImageVersion:
        """The same version in a new state, if the lifecycle allows that step."""
        if state != self.state and state not in VERSION_TRANSITIONS[self.state]:
            raise BadTransition(
                f"{self.state} → {state} is not allowed", what=f"image version {self.ref}"
            )
        return dataclasses.replace(self, state=state, **changes)

    def completed_replicas(self, region: str | None = None) -> list[Replica]:
        return [
            r
            for r in self.replicas
            if r.state == ReplicaState.COMPLETED and (region is None or r.region == region)
        ]


# -- status (pure: the CLI lists versions without loading libvirt) ------------------------
@dataclass(frozen=True)
class RegionStatus:
    region: str
    state: str  # Completed | Replicating | Failed | Pending
    completed: int
    wanted: int
    progress: int
    details: str


def aggregate(rec: ImageVersion) -> tuple[str, list[RegionStatus]]:
    """Azure's replicationStatus: an aggregated state and a summary per region."""
    rows = []
    by_region: dict[str, list[Replica]] = {}
    for r in rec.replicas:
        by_region.setdefault(r.region, []).append(r)
    for region, wanted in rec.target_regions.items():
        reps = by_region.get(region, [])
        done = sum(r.state == ReplicaState.COMPLETED for r in reps)
        failed = [r for r in reps if r.state == ReplicaState.FAILED]
        busy = [r for r in reps if r.state in (ReplicaState.COPYING, ReplicaState.VERIFYING)]
        if done >= wanted:
            state = "Completed"
        elif busy:
            state = "Replicating"
        elif failed:
            state = "Failed"
        else:
            state = "Pending"
        progress = sum(
            100 if r.state == ReplicaState.COMPLETED else r.progress for r in reps
        ) // max(1, len(reps))
        details = "; ".join(f"{r.volume}: {r.reason}" for r in failed)
        rows.append(RegionStatus(region, state, done, wanted, progress, details))
    states = {r.state for r in rows}
    if states <= {"Completed"}:
        agg = "Completed"
    elif "Replicating" in states or "Pending" in states:
        agg = "InProgress"
    else:
        agg = "Failed"
    return agg, rows


# -- (de)serialization: plain JSON-able dicts, tolerant of unknown keys from newer versions ---


def to_dict(record: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    result: dict[str, Any] = conv(record)
    return result


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """The record `data` describes; TypeError names what does not fit the record's shape."""
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, found {type(data).__name__}")
    shape = _shape(cls)  # type: ignore[arg-type]  # classes hash
    if shape.names.issuperset(data):
        values = dict(data)
    else:  # keys from a newer sigvirt: ignored
        values = {k: v for k, v in data.items() if k in shape.names}
    for name, decode in shape.decoders:
        if name in values:
            values[name] = decode(values[name])
    if len(values) < len(shape.names):
        if missing := shape.required - values.keys():
            raise TypeError(f"{cls.__name__} record has no {', '.join(sorted(missing))}")
        values = {**shape.defaults, **values}
        for name, factory in shape.factories:
            if name not in values:
                values[name] = factory()
    if not shape.plain:
        return cls(**values)
    # A frozen dataclass's __init__ sets each field through object.__setattr__, which made
    # it most of the cost of listing 10,000 versions; with every field present and no
    # __post_init__, filling __dict__ builds the same record.
    record: T = object.__new__(cls)
    record.__dict__.update(values)
    return record


Decoder = Callable[[Any], Any]


@dataclass(frozen=True)
class _Shape:
    names: frozenset[str]
    required: frozenset[str]
    defaults: dict[str, Any]
    factories: tuple[tuple[str, Callable[[], Any]], ...]
    decoders: tuple[tuple[str, Decoder], ...]  # fields whose JSON value needs converting
    plain: bool  # no __post_init__ or __slots__: __dict__ may be filled directly


@cache
def _shape(cls: Any) -> _Shape:
    # Resolved once per class: get_type_hints per record made listing 10,000 versions slow.
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    decoders = [(f.name, _decoder(hints[f.name])) for f in fields]
    return _Shape(
        names=frozenset(f.name for f in fields),
        required=frozenset(
            f.name
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ),
        defaults={f.name: f.default for f in fields if f.default is not dataclasses.MISSING},
        factories=tuple(
            (f.name, f.default_factory)
            for f in fields
            if f.default_factory is not dataclasses.MISSING
        ),
        decoders=tuple((name, d) for name, d in decoders if d is not None),
        plain=not hasattr(cls, "__post_init__") and "__slots__" not in vars(cls),
    )


def _decoder(hint: Any) -> Decoder | None:
    """How to turn the JSON value of a field into its Python value; None: as it is."""
    if typing.get_origin(hint) is tuple:
        inner = _decoder(typing.get_args(hint)[0])

        def to_tuple(value: Any) -> Any:
            if not isinstance(value, list):
                return value
            return tuple(value) if inner is None else tuple(inner(v) for v in value)

        return to_tuple
    if isinstance(hint, type) and issubclass(hint, Enum):
        members = hint._value2member_map_  # a dict lookup: 40,000 of these in a long listing

        def to_member(value: Any) -> Any:
            try:
                return members[value]
            except (KeyError, TypeError):
                allowed = ", ".join(map(str, members))
                raise ValueError(f"{value!r} is not one of {allowed}") from None

        return to_member
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        record: type[Any] = hint
        return lambda value: from_dict(record, value)
    return None
