"""The catalog's records (frozen dataclasses) and the replication lifecycle as a table."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from sigvirt.errors import SigvirtError

T = TypeVar("T")

OsType = Literal["Linux", "Windows"]
OsState = Literal["Generalized", "Specialized"]
Firmware = Literal["bios", "uefi"]

# provisioning state of a version (Azure: provisioningState)
CREATING, SUCCEEDED, FAILED, DELETING = "creating", "succeeded", "failed", "deleting"

# replica lifecycle (Azure: replicationStatus.summary[].state)
PENDING, COPYING, VERIFYING, COMPLETED = "pending", "copying", "verifying", "completed"
REPLICA_TRANSITIONS: dict[str, frozenset[str]] = {
    PENDING: frozenset({COPYING, FAILED}),
    COPYING: frozenset({VERIFYING, FAILED, PENDING}),  # PENDING: resumed after a kill
    VERIFYING: frozenset({COMPLETED, FAILED, PENDING}),
    COMPLETED: frozenset({DELETING}),
    FAILED: frozenset({PENDING, DELETING}),
    DELETING: frozenset({FAILED}),
}


class BadTransition(SigvirtError):
    template = "replica {replica}: {detail}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Share:
    group: str
    role: Literal["reader", "contributor", "owner"]


@dataclass(frozen=True)
class Gallery:
    name: str
    description: str = ""
    location: str = "local"  # home region: default source region of its versions
    owner_group: str = ""
    shares: tuple[Share, ...] = ()
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
    shares: tuple[Share, ...] = ()
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
    state: str = PENDING
    progress: int = 0  # percent, while copying
    reason: str = ""  # why it failed
    updated: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.region, self.volume)

    def moved(self, state: str, **changes: Any) -> Replica:
        """The same replica in a new state, if the lifecycle allows that step."""
        if state != self.state and state not in REPLICA_TRANSITIONS[self.state]:
            raise BadTransition(f"{self.state} → {state} is not allowed", replica=self.volume)
        return dataclasses.replace(self, state=state, updated=now(), **changes)


@dataclass(frozen=True)
class ImageVersion:
    gallery: str
    definition: str
    name: str
    state: str = CREATING
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
    shares: tuple[Share, ...] = ()
    reason: str = ""  # why creation failed
    warnings: tuple[str, ...] = ()
    created: str = ""
    published: str = ""

    @property
    def ref(self) -> str:
        return f"{self.gallery}/{self.definition}/{self.name}"

    @property
    def published_ok(self) -> bool:
        return self.state == SUCCEEDED

    def completed_replicas(self, region: str | None = None) -> list[Replica]:
        return [
            r
            for r in self.replicas
            if r.state == COMPLETED and (region is None or r.region == region)
        ]


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
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        kwargs[f.name] = _coerce(hints[f.name], data[f.name])
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        (inner, *_rest) = typing.get_args(hint)
        return tuple(_coerce(inner, v) for v in value)
    if origin in (typing.Union, types.UnionType):
        return value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value)  # type: ignore[arg-type]
    return value
