"""The catalog's records (frozen dataclasses) and their lifecycles as transition tables.

A record's state changes only through `moved()`, which refuses a step its table doesn't
list (tests/test_layers.py checks that no other code sets a state).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

# Reading and writing records is the codec's (catalog/codec.py); its functions are named here
# too, where callers have always found them.
from sigvirt.catalog.codec import MAX_INT as MAX_INT
from sigvirt.catalog.codec import RecordError as RecordError
from sigvirt.catalog.codec import from_dict as from_dict
from sigvirt.catalog.codec import loads as loads
from sigvirt.catalog.codec import to_dict as to_dict
from sigvirt.errors import InternalError

OsType = Literal["Linux", "Windows"]
OsState = Literal["Generalized", "Specialized"]
Firmware = Literal["bios", "uefi"]


class VersionState(StrEnum):
    """A version's provisioning state (Azure: provisioningState)."""

    CREATING = "creating"  # claimed: its creator holds the op lock while importing
    SUCCEEDED = "succeeded"  # published: its first replica is complete and verified
    FAILED = "failed"
    DELETING = "deleting"
    # In the recycle bin (its gallery has soft delete on): not listed, not deployable, not
    # latest, replicas kept until undelete, or purge after the gallery's retention.
    SOFT_DELETED = "soft-deleted"
    # Deleted for users (not listed, not deployable); some region holding a replica did not
    # answer, so the record stays until a later `sig gc` removes the files there.
    PENDING_DELETION = "pending-deletion"


_V = VersionState
VERSION_TRANSITIONS: dict[VersionState, frozenset[VersionState]] = {
    _V.CREATING: frozenset({_V.SUCCEEDED, _V.FAILED}),
    _V.SUCCEEDED: frozenset({_V.DELETING, _V.SOFT_DELETED}),
    _V.FAILED: frozenset({_V.DELETING}),
    _V.SOFT_DELETED: frozenset({_V.SUCCEEDED, _V.DELETING}),  # undelete, purge
    _V.DELETING: frozenset({_V.PENDING_DELETION}),  # or the record goes with its replicas
    _V.PENDING_DELETION: frozenset({_V.DELETING}),  # gc retries when the region answers
}
HIDDEN = frozenset({_V.SOFT_DELETED, _V.PENDING_DELETION})  # gone, for users


class ReplicaState(StrEnum):
    """A replica's lifecycle (Azure: replicationStatus.summary[].state)."""

    PENDING = "pending"
    COPYING = "copying"
    VERIFYING = "verifying"
    COMPLETED = "completed"  # sha256 of its bytes equals the version's, final name
    FAILED = "failed"  # with the reason
    CORRUPT = "corrupt"  # a scrub found bytes that differ: never copied from, never cloned
    DELETING = "deleting"  # marked before a byte of it is removed


_R = ReplicaState
REPLICA_TRANSITIONS: dict[ReplicaState, frozenset[ReplicaState]] = {
    _R.PENDING: frozenset({_R.COPYING, _R.FAILED}),
    _R.COPYING: frozenset({_R.VERIFYING, _R.FAILED, _R.PENDING}),  # PENDING: resumed after a kill
    _R.VERIFYING: frozenset({_R.COMPLETED, _R.FAILED, _R.PENDING}),
    _R.COMPLETED: frozenset({_R.DELETING, _R.CORRUPT}),
    _R.FAILED: frozenset({_R.PENDING, _R.DELETING}),
    _R.CORRUPT: frozenset({_R.PENDING, _R.DELETING}),  # PENDING: healed, copied again
    _R.DELETING: frozenset({_R.FAILED}),
}


class BootTestState(StrEnum):
    """A version's boot test (the gate before `latest`): a linked clone of it boots in its
    source region and the definition's testinfra spec passes against it over SSH."""

    NONE = "none"  # published while its definition had no spec: the gate doesn't apply
    PENDING = "pending"  # waiting for its first run (or its last run was killed)
    RUNNING = "running"  # a test VM is up; `runner` names the process
    PASSED = "passed"
    FAILED = "failed"  # with the failing assertions


_T = BootTestState
BOOT_TEST_TRANSITIONS: dict[BootTestState, frozenset[BootTestState]] = {
    _T.NONE: frozenset({_T.RUNNING}),  # `image-version test` run on it explicitly
    _T.PENDING: frozenset({_T.RUNNING, _T.NONE}),  # NONE: its definition's spec was removed
    # PENDING, or back to NONE: a run that could not judge (no room, a region down)
    _T.RUNNING: frozenset({_T.PASSED, _T.FAILED, _T.PENDING, _T.NONE}),
    _T.PASSED: frozenset({_T.RUNNING}),  # rerun
    _T.FAILED: frozenset({_T.RUNNING}),  # rerun
}
GATED = frozenset({_T.PENDING, _T.RUNNING, _T.FAILED})  # not eligible for latest


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
    resource_group: str = ""  # as created with -g: a name in its Azure-style ids only
    tags: dict[str, str] = field(default_factory=dict)
    # Azure's softDeletePolicy.isSoftDeleteEnabled; retention before `sig gc` purges
    soft_delete: bool = False
    soft_delete_retention_days: int = 7
    eol_policy: str = ""  # warn | deny; "" = warn (a definition's own policy wins)


@dataclass(frozen=True)
class StoredSpec:
    """A definition's boot-test spec: the file (test-spec.SHA16.py beside definition.json)
    is named and checked by its sha256; `owner` is the user who stored it, whom it runs as
    when root runs the gate."""

    spec_sha256: str
    owner: str
    size: int
    stored: str = ""

    @property
    def file_name(self) -> str:
        return f"test-spec.{self.spec_sha256[:16]}.py"


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
    privacy_statement_uri: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    test_spec: StoredSpec | None = None  # the boot test new versions must pass
    eol_policy: str = ""  # warn | deny; "" = the gallery's
    soft_deleted: str = ""  # when it went to the recycle bin ("" = it is live)
    # az --features: Azure's feature name → canonical value, in the order given
    # (catalog/features.py checks them; guests/devices.py says what they do on QEMU)
    features: dict[str, str] = field(default_factory=dict)

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
    error: int = 0  # the exit code of the failure (8 unreachable, 12 no space, ...)
    verified: str = ""  # when its bytes last hashed to the version's sha256
    fingerprint: str = ""  # size:mtime_ns:inode of the file then (local replicas)
    zone: str = ""  # the zone (host) of a zoned region it lives in; "" in a region without

    @property
    def key(self) -> tuple[str, str]:
        return (self.region, self.volume)

    @property
    def location(self) -> str:
        """Its host: the region, or REGION/ZONE (what connections are opened for)."""
        return f"{self.region}/{self.zone}" if self.zone else self.region

    def moved(self, state: ReplicaState, **changes: Any) -> Replica:
        """The same replica in a new state, if the lifecycle allows that step."""
        if state != self.state and state not in REPLICA_TRANSITIONS[self.state]:
            raise BadTransition(
                f"{self.state} → {state} is not allowed", what=f"replica {self.volume}"
            )
        return dataclasses.replace(self, state=state, updated=now(), **changes)


@dataclass(frozen=True)
class BootTest:
    """A version's boot-test status (the gate before `latest`)."""

    state: BootTestState = BootTestState.NONE
    spec_sha256: str = ""  # the spec it was (or is to be) tested with
    failures: tuple[str, ...] = ()  # "test_name: assertion", from the spec's run
    tests: int = 0  # how many ran
    started: str = ""
    finished: str = ""  # when the result was recorded
    seconds: float = 0.0
    vm: str = ""  # the test VM, while running
    runner: str = ""  # host:boot:pid of the process running it, while running

    @property
    def gated(self) -> bool:
        """Whether it keeps its version out of `latest`."""
        return self.state in GATED

    def moved(self, state: BootTestState, **changes: Any) -> BootTest:
        """The same status in a new state, if the lifecycle allows that step."""
        if state != self.state and state not in BOOT_TEST_TRANSITIONS[self.state]:
            raise BadTransition(f"{self.state} → {state} is not allowed", what="boot test")
        return dataclasses.replace(self, state=state, **changes)


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
    tags: dict[str, str] = field(default_factory=dict)
    excluded_regions: tuple[str, ...] = ()  # not latest there (targetRegions[].excludeFromLatest)
    storage_types: dict[str, str] = field(default_factory=dict)  # region -> Standard_LRS, ...
    replication_mode: Literal["Full", "Shallow"] = "Full"
    boot_test: BootTest = field(default_factory=BootTest)
    # Azure's safetyProfile
    allow_replicated_location_deletion: bool = False
    block_deletion_before_end_of_life: bool = False
    soft_deleted: str = ""  # when it went to the recycle bin (state soft-deleted)

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
        """Completed replicas, all or in a region (every zone of it) or a location R/Z."""
        return [
            r
            for r in self.replicas
            if r.state == ReplicaState.COMPLETED
            and (region is None or r.region == region or r.location == region)
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


def reuse_line(rec: ImageVersion) -> str:
    """Why a hidden version's name can't be published again (Azure's rule)."""
    return f"{hidden_line(rec)}; its name can't be reused until then"


def hidden_line(rec: ImageVersion) -> str:
    """What a user asking for a hidden version is told."""
    if rec.state == VersionState.SOFT_DELETED:
        return (
            f"image version {rec.ref} is soft-deleted (since {rec.soft_deleted}); "
            "`sigvirt sig image-version undelete` restores it until `sig gc` purges it"
        )
    regions = sorted({r.region for r in rec.replicas})
    return (
        f"image version {rec.ref} is deleted; its files in {', '.join(regions) or 'no region'} "
        "go when `sigvirt sig gc --yes` finds the region answering"
    )
