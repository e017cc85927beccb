"""Errors with their message and exit code; the CLI translates them once, at its edge."""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar


class ExitCode(IntEnum):
    OK = 0
    GENERIC = 1  # unexpected failure (a bug): traceback with --debug
    USAGE = 2  # bad command line (typer/click uses 2 as well)
    INVALID_NAME = 3  # gallery/definition/version name or image reference malformed
    NOT_FOUND = 4  # the named resource does not exist
    CONFLICT = 5  # exists already, in use, or busy (another process holds it)
    HAS_DEPENDENTS = 6  # refused: children or clones depend on it
    CONFIG = 7  # regions.yaml or another configuration file is wrong
    REGION_UNAVAILABLE = 8  # libvirt host unreachable, pool inactive
    IMAGE_REJECTED = 9  # the import gate refused a user image
    PERMISSION = 10  # sigvirt's sharing rules refuse the caller
    HOST_ACCESS = 11  # the OS/libvirt refuses the caller (no libvirt socket access, EACCES)
    NO_SPACE = 12  # pool or disk full
    GUEST_FAILED = 13  # a guest did not boot or did not answer SSH
    CAPACITY = 14  # every replica is at its clones-per-replica budget
    OUT_OF_RANGE = 15  # size outside the definition's recommendation
    HOST_NOT_READY = 16  # doctor found problems
    CORRUPT_METADATA = 17  # a catalog file doesn't parse (not a bug: the file is damaged)
    INVALID_ARGUMENT = 18  # a value that is not a name: a date, a count, a choice, a size
    HOST_ERROR = 19  # libvirt or a host tool failed in a way sigvirt can't classify further
    REPLICATION_FAILED = 20  # replicas failed (each one's reason is in the status)
    UNSUPPORTED = 21  # a request sigvirt understands but can't carry out here (and says why)
    CORRUPT_REPLICA = 22  # a scrub found replicas whose bytes differ from the version's
    TIMED_OUT = 23  # `wait` (or another bounded wait) gave up before its condition held
    BOOT_TEST_FAILED = 24  # a version's boot test (its definition's spec) failed
    ROLLOUT_FAULTED = 25  # a rolling upgrade stopped at a health limit (batch rolled back)
    REIMAGE_FAILED = 26  # a reimage failed its health check: the instance is back on its old one
    END_OF_LIFE = 27  # the version is past its end of life and its eol policy is deny
    SAFETY_PROFILE = 28  # the version's safety profile refuses the deletion
    INTERRUPTED = 130


class SigvirtError(Exception):
    """Base error: a message template filled from keyword arguments, and an exit code."""

    template: ClassVar[str] = "{detail}"
    exit_code: ClassVar[ExitCode] = ExitCode.GENERIC
    hint: str | None = None

    def __init__(self, detail: str = "", *, hint: str | None = None, **fields: Any) -> None:
        self.fields = {"detail": detail, **fields}
        self.hint = hint
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return self.template.format(**self.fields)


class InternalError(SigvirtError):
    """A rule of sigvirt's own was broken: a bug, reported with exit 1."""


class InvalidName(SigvirtError):
    exit_code = ExitCode.INVALID_NAME


class InvalidArgument(SigvirtError):
    """A value that is not a name is malformed or out of its range."""

    exit_code = ExitCode.INVALID_ARGUMENT


class NotFound(SigvirtError):
    exit_code = ExitCode.NOT_FOUND


class Conflict(SigvirtError):
    exit_code = ExitCode.CONFLICT


class HasDependents(SigvirtError):
    exit_code = ExitCode.HAS_DEPENDENTS


class ConfigError(SigvirtError):
    exit_code = ExitCode.CONFIG


class RegionUnavailable(SigvirtError):
    exit_code = ExitCode.REGION_UNAVAILABLE


class ImageRejected(SigvirtError):
    exit_code = ExitCode.IMAGE_REJECTED


class PermissionRefused(SigvirtError):
    exit_code = ExitCode.PERMISSION


class HostAccessDenied(SigvirtError):
    exit_code = ExitCode.HOST_ACCESS


class NoSpace(SigvirtError):
    exit_code = ExitCode.NO_SPACE


class GuestFailed(SigvirtError):
    """A guest did not come up; carries the tail of its serial console."""

    exit_code = ExitCode.GUEST_FAILED

    def __init__(self, detail: str = "", *, console_tail: str = "", **kw: Any) -> None:
        self.console_tail = console_tail
        super().__init__(detail, **kw)


class CapacityExhausted(SigvirtError):
    exit_code = ExitCode.CAPACITY


class OutOfRange(SigvirtError):
    exit_code = ExitCode.OUT_OF_RANGE


class HostError(SigvirtError):
    """libvirt reported a failure that no code of ours classifies; its message is kept."""

    exit_code = ExitCode.HOST_ERROR


class CommandFailed(HostError):
    """An external program (qemu-img, ...) failed; message names the program and its stderr."""


class ReplicationFailed(SigvirtError):
    exit_code = ExitCode.REPLICATION_FAILED


class Unsupported(SigvirtError):
    """Understood, but not possible here; the message says why."""

    exit_code = ExitCode.UNSUPPORTED


class BootTestFailed(SigvirtError):
    """A version's boot test failed: its clone did not boot, or the spec's tests failed."""

    exit_code = ExitCode.BOOT_TEST_FAILED


class ReimageFailed(SigvirtError):
    """Instances whose new disk did not come up healthy: each is back on its old version."""

    exit_code = ExitCode.REIMAGE_FAILED


class EndOfLife(SigvirtError):
    """A version past its end-of-life date, where the definition's (or gallery's) eol policy
    is deny: nothing new is deployed from it."""

    exit_code = ExitCode.END_OF_LIFE


class SafetyProfileRefused(SigvirtError):
    """The version's safety profile (Azure's) refuses the change: removing replicated regions
    without allowReplicatedLocationDeletion, or deleting before its end of life."""

    exit_code = ExitCode.SAFETY_PROFILE
