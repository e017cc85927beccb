"""libvirt errors translated to sigvirt's, where they enter: by error code and domain.

Codes decide everything libvirt classifies. A few failures reach us with a code that says
nothing (VIR_ERR_INTERNAL_ERROR, VIR_ERR_SYSTEM_ERROR): for those, and only those, the
message is read, and every such reading is a row of MESSAGE_RULES below with the libvirt
(or QEMU) version it was seen with, so it can be checked again when they change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from sigvirt.errors import (
    Conflict,
    HostAccessDenied,
    HostError,
    NoSpace,
    NotFound,
    RegionUnavailable,
    SigvirtError,
)

LIBVIRT_ACCESS_HINT = (
    "lab hosts usually grant it by adding the user to the 'libvirt' group "
    "(usermod -aG libvirt USER, then log in again)"
)

_NOT_FOUND = frozenset(
    {
        libvirt.VIR_ERR_NO_DOMAIN,
        libvirt.VIR_ERR_NO_STORAGE_POOL,
        libvirt.VIR_ERR_NO_STORAGE_VOL,
        libvirt.VIR_ERR_NO_NETWORK,
    }
)
_UNREACHABLE = frozenset(
    {libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_INVALID_CONN}
)
# Where libvirt's client reports its transport's failures (the socket, ssh, the RPC layer).
_TRANSPORT = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})
_AUTH = frozenset(
    {
        libvirt.VIR_ERR_AUTH_FAILED,
        libvirt.VIR_ERR_AUTH_CANCELLED,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
        libvirt.VIR_ERR_ACCESS_DENIED,
    }
)
_EXISTS = frozenset({libvirt.VIR_ERR_DOM_EXIST, libvirt.VIR_ERR_STORAGE_VOL_EXIST})
# A pool that vanished or stopped between listing and reading it.
GONE = frozenset({libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_OPERATION_INVALID})


class PortInUse(Conflict):
    """QEMU could not bind a guest's loopback forward: another process took the port."""


@dataclass(frozen=True)
class MessageRule:
    """A failure libvirt reports only in words: which code it comes with, the words, what
    sigvirt makes of it, and where it was seen."""

    codes: frozenset[int]  # empty: any code
    words: tuple[str, ...]  # all must appear in the message
    make: Callable[[str, str, str], SigvirtError]  # (what, uri, message) -> error
    seen: str


def _denied(what: str, uri: str, msg: str) -> SigvirtError:
    return HostAccessDenied(
        f"{what}: libvirt at {uri or 'the host'} refused access ({msg})", hint=LIBVIRT_ACCESS_HINT
    )


def _unreachable(what: str, uri: str, msg: str) -> SigvirtError:
    return RegionUnavailable(f"{what}: libvirt host {uri} unreachable: {msg}")


MESSAGE_RULES: tuple[MessageRule, ...] = (
    # Without systemd there is no polkit: a user outside the socket's group gets an
    # internal or system error naming the bus instead of an auth code.
    MessageRule(frozenset(), ("system bus",), _denied, "libvirt 9.0.0, no systemd"),
    MessageRule(frozenset(), ("polkit",), _denied, "libvirt 9.0.0, no systemd"),
    MessageRule(
        frozenset({libvirt.VIR_ERR_SYSTEM_ERROR}),
        ("Permission denied", "socket"),
        _denied,
        "libvirt 9.0.0: connecting to a 0770 socket of another group",
    ),
    MessageRule(
        frozenset({libvirt.VIR_ERR_SYSTEM_ERROR}),
        ("connect",),
        _unreachable,
        "libvirt 9.0.0: no daemon behind the socket, ssh connection refused",
    ),
    MessageRule(
        frozenset({libvirt.VIR_ERR_OPERATION_INVALID}),
        ("pool", "not active"),
        lambda what, uri, msg: RegionUnavailable(f"{what}: {msg}"),
        "libvirt 9.0.0: a pool stopped under us",
    ),
    MessageRule(
        frozenset({libvirt.VIR_ERR_SYSTEM_ERROR}),
        ("cannot open directory",),
        lambda what, uri, msg: RegionUnavailable(
            f"{what}: {msg} (the pool's directory is gone: its replicas with it)"
        ),
        "libvirt 9.0.0: refreshing or starting a dir pool whose directory was removed",
    ),
    MessageRule(
        frozenset(),
        ("No space left on device",),
        lambda what, uri, msg: NoSpace(f"{what}: no space left on device"),
        "libvirt 9.0.0: volume create/upload into a full filesystem",
    ),
    MessageRule(
        frozenset({libvirt.VIR_ERR_INTERNAL_ERROR, libvirt.VIR_ERR_OPERATION_FAILED}),
        ("host forwarding",),
        lambda what, uri, msg: PortInUse(f"{what}: {msg}"),
        "QEMU 7.2 via libvirt 9.0.0: -netdev user,hostfwd= on a port already bound",
    ),
)


def translate(err: libvirt.libvirtError, what: str, uri: str = "") -> SigvirtError:
    """The sigvirt error for a libvirt error: by code, then MESSAGE_RULES, else HostError."""
    code = err.get_error_code()
    msg = " ".join((err.get_error_message() or str(err)).split())
    if code in _NOT_FOUND:
        return NotFound(f"{what}: not found")
    for rule in MESSAGE_RULES:
        if (not rule.codes or code in rule.codes) and all(w in msg for w in rule.words):
            return rule.make(what, uri, msg)
    if code in _AUTH:
        return _denied(what, uri, msg)
    if code == libvirt.VIR_ERR_SYSTEM_ERROR and err.get_error_domain() in _TRANSPORT:
        # The connection itself failed (its daemon died, its ssh went away): "Cannot write
        # data: Broken pipe", "End of file while reading data", whatever errno says.
        return _unreachable(what, uri, msg)
    if code in _UNREACHABLE:
        return _unreachable(what, uri, msg)
    if code in _EXISTS:
        return Conflict(f"{what}: already exists")
    return HostError(f"{what}: libvirt at {uri or 'the host'}: {msg}")
