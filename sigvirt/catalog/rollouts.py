"""Rolling upgrades of a scale set, as records: one JSON file per rollout under the scale
set's directory (`FleetStore.dir_for(NAME)/rollouts/000001.json`, …), the highest id being
the latest (what `vmss rolling-upgrade get-latest` shows).

A rollout's status is Azure's RollingUpgradeStatusCode and each instance has its own state;
both change only through `moved()` and their transition tables:

    RollingForward → Completed | Cancelled | Faulted       (the last three are final)
    instance: Pending → InProgress → Succeeded | Failed | Pending (a killed step, resumed)
              Succeeded → RolledBack (its batch was reverted) | Failed (the revert failed)

Records are hostile until parsed: the codec checks every field's type, `check()` what the
types can't say (names, versions, batches that name the rollout's own instances, ids that
match the file), and a file whose owner is neither root nor the owner of the scale set's
directory is refused (another user could plant one). Writes are atomic, under a flock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from sigvirt.catalog import names
from sigvirt.catalog.codec import RecordError, loads, to_dict
from sigvirt.catalog.fileio import (
    CorruptRecord,
    access_error,
    lock_error,
    open_dir,
    read_record,
    write_record,
)
from sigvirt.catalog.fleet import SCALESETS
from sigvirt.catalog.records import BadTransition, now
from sigvirt.errors import Conflict, InvalidName, NotFound, SigvirtError


class RollingUpgradeStatusCode(StrEnum):
    """Azure's RollingUpgradeStatusCode: runningStatus.code of a rolling upgrade."""

    ROLLING_FORWARD = "RollingForward"  # batches are being applied (or a killed run waits)
    CANCELLED = "Cancelled"  # stopped after the batch that was running when asked
    COMPLETED = "Completed"  # every batch applied (failed instances within the limits)
    FAULTED = "Faulted"  # a health limit was exceeded: the failing batch was reverted


_S = RollingUpgradeStatusCode
STATUS_TRANSITIONS: dict[RollingUpgradeStatusCode, frozenset[RollingUpgradeStatusCode]] = {
    _S.ROLLING_FORWARD: frozenset({_S.COMPLETED, _S.CANCELLED, _S.FAULTED}),
    _S.CANCELLED: frozenset(),
    _S.COMPLETED: frozenset(),
    _S.FAULTED: frozenset(),
}


class InstanceState(StrEnum):
    """Where one instance is in a rollout."""

    PENDING = "Pending"  # not started yet
    IN_PROGRESS = "InProgress"  # being reimaged onto the target
    SUCCEEDED = "Succeeded"  # on the target and healthy
    FAILED = "Failed"  # the reimage failed: the instance is back on its version
    ROLLED_BACK = "RolledBack"  # upgraded, then put back with the rest of its batch


_I = InstanceState
INSTANCE_TRANSITIONS: dict[InstanceState, frozenset[InstanceState]] = {
    _I.PENDING: frozenset({_I.IN_PROGRESS}),
    _I.IN_PROGRESS: frozenset({_I.SUCCEEDED, _I.FAILED, _I.PENDING}),  # PENDING: killed, redone
    _I.SUCCEEDED: frozenset({_I.ROLLED_BACK, _I.FAILED}),  # FAILED: its revert failed
    _I.FAILED: frozenset(),
    _I.ROLLED_BACK: frozenset(),
}


@dataclass(frozen=True)
class PolicySnapshot:
    """The rolling upgrade policy the rollout started with (Azure's RollingUpgradePolicy):
    a copy, so a model changed meanwhile doesn't change a rollout under way."""

    max_batch_instance_percent: int = 20
    max_unhealthy_instance_percent: int = 20
    max_unhealthy_upgraded_instance_percent: int = 20
    pause_time_between_batches: float = 0.0  # seconds
    prioritize_unhealthy_instances: bool = False

    @classmethod
    def of(cls, policy: Any) -> PolicySnapshot:
        """From the scale set model's RollingPolicy (the same field names)."""
        return cls(**{f.name: getattr(policy, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class InstanceProgress:
    name: str  # the instance's domain (= hostname)
    instance: int  # az's instanceId
    from_version: str  # G/D/V it ran when the rollout planned it
    batch: int  # index into Rollout.batches
    state: InstanceState = InstanceState.PENDING
    version: str = ""  # G/D/V it runs after its step ("" until then)
    reason: str = ""  # why it failed or was rolled back
    seconds: float = 0.0  # its reimage's duration
    updated: str = ""

    def moved(self, state: InstanceState, **changes: Any) -> InstanceProgress:
        """The same instance in a new state, if the table allows that step."""
        if state != self.state and state not in INSTANCE_TRANSITIONS[self.state]:
            raise BadTransition(f"{self.state} → {state} is not allowed", what=self.name)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return InstanceProgress(**{**values, **changes, "state": state, "updated": now()})


@dataclass(frozen=True)
class Rollout:
    id: int
    scale_set: str
    target: str  # G/D/V every instance is moved to
    start_time: str
    policy: PolicySnapshot = dataclasses.field(default_factory=PolicySnapshot)
    code: RollingUpgradeStatusCode = RollingUpgradeStatusCode.ROLLING_FORWARD
    instances: tuple[InstanceProgress, ...] = ()
    batches: tuple[tuple[str, ...], ...] = ()  # instance names, in the order they go
    current_batch: int = 0  # the batch under way (len(batches) once all are through)
    skipped: tuple[str, ...] = ()  # instances already on the target when it was planned
    generation: int = 0  # the model generation instances get
    region: str = ""
    last_action: Literal["Start", "Cancel"] = "Start"
    last_action_time: str = ""
    runner: str = ""  # host:boot:pid of the process applying it
    cancel_requested: bool = False
    error: str = ""  # why it faulted (set before the failing batch is reverted)
    end_time: str = ""
    automatic: bool = False  # started by a new latest version (automatic OS upgrade)
    resumed: int = 0  # times a killed run was taken over

    @property
    def done(self) -> bool:
        return self.code != RollingUpgradeStatusCode.ROLLING_FORWARD

    def moved(self, code: RollingUpgradeStatusCode, **changes: Any) -> Rollout:
        """The same rollout with a new status, if the table allows that step."""
        if code != self.code and code not in STATUS_TRANSITIONS[self.code]:
            raise BadTransition(
                f"{self.code} → {code} is not allowed", what=f"rollout {self.scale_set}/{self.id}"
            )
        at = now()
        return dataclasses.replace(self, code=code, last_action_time=at, end_time=at, **changes)

    def instance(self, name: str) -> InstanceProgress:
        for i in self.instances:
            if i.name == name:
                return i
        raise NotFound(f"instance {name} is not part of rollout {self.scale_set}/{self.id}")

    def with_instance(self, name: str, state: InstanceState, **changes: Any) -> Rollout:
        """The rollout with one instance moved to `state`."""
        moved = tuple(i.moved(state, **changes) if i.name == name else i for i in self.instances)
        return dataclasses.replace(self, instances=moved)

    def count(self, *states: InstanceState) -> int:
        return sum(i.state in states for i in self.instances)

    def batch(self, index: int) -> list[InstanceProgress]:
        return [i for i in self.instances if i.batch == index]


# -- what the types can't say -----------------------------------------------------------------
_RUNNER = re.compile(r"[^:\s]{1,255}:[0-9a-f-]{0,36}:[0-9]{1,10}")


def _exact_version(text: str, where: str) -> None:
    try:
        ref = names.parse_image_ref(text)
    except InvalidName as err:
        raise RecordError(err.message, where) from None
    if ref.version is None or text.startswith("/"):
        raise RecordError(
            f"expected GALLERY/DEFINITION/VERSION, found {names.shorten(text)}", where
        )


def check(r: Rollout) -> Rollout:
    """A parsed rollout whose parts fit together; RecordError says where one doesn't."""
    if r.id < 1:
        raise RecordError("a rollout id counts from 1", "id")
    try:
        names.vm_name(r.scale_set)
    except InvalidName as err:
        raise RecordError(err.message, "scale_set") from None
    _exact_version(r.target, "target")
    p = r.policy
    for f in ("max_batch_instance_percent", "max_unhealthy_instance_percent",
              "max_unhealthy_upgraded_instance_percent"):  # fmt: skip
        if getattr(p, f) > 100:
            raise RecordError("a percentage is 0..100", f"policy.{f}")
    if not 0 <= p.pause_time_between_batches <= 86400 * 7:
        raise RecordError("expected 0 to 604800 seconds", "policy.pause_time_between_batches")
    seen: set[str] = set()
    for n, i in enumerate(r.instances):
        where = f"instances[{n}]"
        try:
            names.vm_name(i.name)
        except InvalidName as err:
            raise RecordError(err.message, f"{where}.name") from None
        if i.name in seen:
            raise RecordError(f"instance {i.name} is listed twice", where)
        seen.add(i.name)
        _exact_version(i.from_version, f"{where}.from_version")
        if i.version:
            _exact_version(i.version, f"{where}.version")
        if i.batch >= len(r.batches) or i.name not in r.batches[i.batch]:
            raise RecordError(f"batch {i.batch} does not hold {i.name}", f"{where}.batch")
    planned = [n for b in r.batches for n in b]
    if sorted(planned) != sorted(seen):
        raise RecordError("the batches must hold each instance of the rollout once", "batches")
    if r.current_batch > len(r.batches):
        raise RecordError(f"there are {len(r.batches)} batches", "current_batch")
    if r.runner and not _RUNNER.fullmatch(r.runner):
        raise RecordError("expected HOST:BOOT:PID", "runner")
    return r


# -- the store --------------------------------------------------------------------------------
_FILE = re.compile(r"(0*[1-9][0-9]{0,9})\.json")
ROLLOUTS = "rollouts"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _give(dfd: int, name: str, owner_of: int) -> None:
    """What root makes in a user's scale set directory becomes theirs (the directory and the
    lock files), so their own rollouts still work after root ran one. Records stay root's:
    a record is trusted when root or the scale set's owner wrote it."""
    if os.geteuid() == 0:
        uid = os.fstat(owner_of).st_uid
        if uid != 0:
            os.chown(name, uid, -1, dir_fd=dfd, follow_symlinks=False)


def file_name(rollout_id: int) -> str:
    return f"{rollout_id:06d}.json"


class RolloutStore:
    """The rollouts of one scale set: ROOT/scalesets/NAME/rollouts (FleetStore.dir_for(NAME)
    /rollouts). NAME/ belongs to the scale set's owner, and root applies rollouts too: every
    path is reached through directory descriptors that follow no link, so an owner can't
    turn root's writes into writes somewhere else."""

    def __init__(self, root: Path, scale_set: str) -> None:
        self.root = root
        self.scale_set = names.vm_name(scale_set)
        self.parts = (SCALESETS, self.scale_set, ROLLOUTS)
        self.dir = root.joinpath(*self.parts)

    @property
    def op_lock(self) -> Path:
        """Held by the process applying a rollout for as long as it runs: free while the
        record says RollingForward means that process was killed."""
        return self.dir / ".op"

    def log_path(self, rollout_id: int) -> Path:
        """Where a rollout run in the background (--no-wait) writes."""
        return self.dir / f".{rollout_id:06d}.log"

    # -- directories and locks
    @contextlib.contextmanager
    def _opened(self, *, create: bool = False) -> Iterator[tuple[int, int]]:
        """(descriptor of NAME/, descriptor of NAME/rollouts/); NotFound if there is none."""
        try:
            sfd = open_dir(self.root, self.parts[:2])
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"scale set {self.scale_set} not found") from None
        except OSError as err:
            raise access_error(self.dir.parent, err) from None
        try:
            if create:
                try:
                    os.mkdir(ROLLOUTS, 0o755, dir_fd=sfd)
                    _give(sfd, ROLLOUTS, sfd)
                except FileExistsError:
                    pass
                except OSError as err:
                    raise access_error(self.dir, err) from None
            try:
                rfd = os.open(ROLLOUTS, _DIR_FLAGS, dir_fd=sfd)
            except FileNotFoundError:
                raise NotFound(f"scale set {self.scale_set} has no rollouts") from None
            except OSError as err:
                raise lock_error(self.dir, err) from None
            try:
                yield sfd, rfd
            finally:
                os.close(rfd)
        finally:
            os.close(sfd)

    @contextlib.contextmanager
    def _flock(self, name: str, *, blocking: bool) -> Iterator[None]:
        with self._opened(create=True) as (sfd, rfd):
            try:
                fd = os.open(name, _LOCK_FLAGS, 0o644, dir_fd=rfd)
                _give(rfd, name, sfd)
            except OSError as err:
                raise lock_error(self.dir / name, err) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CorruptRecord("is not a lock file", path=self.dir / name)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                raise Conflict(f"{self.dir / name}: busy") from None
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The records' lock: held while one is read and rewritten."""
        with self._flock(".lock", blocking=True):
            yield

    @contextlib.contextmanager
    def operation(self, busy: Callable[[], SigvirtError]) -> Iterator[None]:
        """Hold the op lock while a rollout runs; `busy()` is raised if another holds it."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self._flock(".op", blocking=False))
            except Conflict:
                raise busy() from None
            yield

    # -- reading
    def ids(self) -> list[int]:
        try:
            with self._opened() as (_sfd, rfd):
                entries = os.listdir(rfd)
        except NotFound:
            return []
        return sorted({int(m[1]) for e in entries if (m := _FILE.fullmatch(e))})

    def get(self, rollout_id: int) -> Rollout:
        what = f"rollout {self.scale_set}/{rollout_id}"
        name = file_name(rollout_id)
        path = self.dir / name
        try:
            with self._opened() as (sfd, rfd):
                try:
                    raw = read_record(rfd, name, self.dir)
                    owner = os.stat(name, dir_fd=rfd, follow_symlinks=False).st_uid
                except FileNotFoundError:
                    raise NotFound(f"{what} not found") from None
                except OSError as err:
                    raise access_error(path, err) from None
                trusted = {0, os.fstat(sfd).st_uid}
        except NotFound:
            raise NotFound(f"{what} not found") from None
        if owner not in trusted:
            raise CorruptRecord(
                f"belongs to uid {owner}, neither root nor the scale set's owner", path=path
            )
        try:
            rec = check(loads(Rollout, raw))
        except (TypeError, ValueError) as err:
            raise CorruptRecord(str(err), path=path) from None
        if rec.id != rollout_id or rec.scale_set != self.scale_set:
            raise CorruptRecord(
                f"names rollout {names.shorten(rec.scale_set, 40)}/{rec.id}, not "
                f"{self.scale_set}/{rollout_id}",
                path=path,
            )
        return rec

    def latest(self) -> Rollout | None:
        """The newest rollout (a damaged newest one is the error: it may be running)."""
        ids = self.ids()
        return self.get(ids[-1]) if ids else None

    def list(self) -> list[Rollout]:
        return [self.get(i) for i in self.ids()]

    # -- writing (the caller holds `locked()`)
    def next_id(self) -> int:
        """The id a new rollout gets (call it holding `locked()`, then `put` the rollout)."""
        ids = self.ids()
        return (ids[-1] if ids else 0) + 1

    def put(self, rec: Rollout) -> None:
        """Write a rollout atomically (the caller holds `locked()`)."""
        check(rec)
        data = json.dumps(to_dict(rec), indent=2, sort_keys=True).encode() + b"\n"
        with self._opened(create=True) as (_sfd, rfd):
            write_record(rfd, file_name(rec.id), data, 0o644, self.dir)

    def update(self, rollout_id: int, change: Callable[[Rollout], Rollout]) -> Rollout:
        with self.locked():
            rec = change(self.get(rollout_id))
            self.put(rec)
            return rec


# -- az's spelling of a duration --------------------------------------------------------------
def iso_duration(seconds: float) -> str:
    """Seconds as ISO 8601 (az's pauseTimeBetweenBatches): 0 → PT0S, 90 → PT1M30S."""
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    out = "PT" + (f"{h}H" if h else "") + (f"{m}M" if m else "")
    return out + (f"{s}S" if s or out == "PT" else "")
