"""Libvirt URIs as a value: parsed once, checked against what sigvirt documents.

`regions.yaml` is written by whoever administers the lab host, but a URI is also a way to
make libvirt run a program (`qemu+ext://…?command=`, `?netcat=`, `?command=` on ssh): only
the transports and query parameters below are accepted, everything else is refused with
the reason.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

TRANSPORTS = ("ssh", "tcp", "tls", "unix", "libssh2", "libssh")
SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")
# test: libvirt's in-memory driver, for unit tests
SCHEMES = ("qemu", *(f"qemu+{t}" for t in TRANSPORTS), "test")
# Query parameters of libvirt's remote driver that only select files, sockets or checks.
# Refused: command= and netcat= (name a program libvirt runs), name= (another URI inside).
PARAMS: dict[str, str] = {
    "keyfile": "private key for ssh transports",
    "known_hosts": "known_hosts file for ssh transports",
    "known_hosts_verify": "normal | auto | ignore",
    "no_verify": "1: don't check the server (ssh host key, TLS certificate)",
    "no_tty": "1: ssh never asks on a terminal",
    "sshauth": "agent,privkey,password,keyboard-interactive",
    "socket": "path of libvirtd's socket on the host",
    "mode": "auto | legacy | direct",
    "pkipath": "directory of TLS certificates",
}


class UriProblem(ValueError):
    """Why a string is not a libvirt URI sigvirt accepts (regions.py names file and line)."""


@dataclass(frozen=True)
class LibvirtUri:
    text: str
    driver: str  # qemu | test
    transport: str  # "" for the local socket, else ssh, tcp, tls, ...
    user: str | None
    host: str | None
    port: int | None
    path: str
    params: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> LibvirtUri:
        """The URI `text` names, or UriProblem saying what is wrong with it."""
        if not text or any(c.isspace() for c in text):
            raise UriProblem(f"must be a libvirt URI without spaces (got {text!r})")
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as err:
            raise UriProblem(f"does not parse as a URI: {err} (got {text!r})") from None
        if not parts.scheme or "://" not in text:
            raise UriProblem(f"must be a libvirt URI such as qemu:///system (got {text!r})")
        driver, _, transport = parts.scheme.partition("+")
        if parts.scheme not in SCHEMES:
            if transport == "ext":
                raise UriProblem(
                    "transport 'ext' is refused: it makes libvirt run a command "
                    "(use ssh, tcp or tls)"
                )
            match = difflib.get_close_matches(parts.scheme, SCHEMES, n=1)
            hint = f"did you mean {match[0]!r}?" if match else f"expected {', '.join(SCHEMES)}"
            raise UriProblem(f"unsupported scheme {parts.scheme!r} ({hint})")
        if driver == "qemu" and parts.path not in ("/system", "/session"):
            raise UriProblem(f"path must be /system or /session (got {text!r})")
        if parts.fragment:
            raise UriProblem(f"a libvirt URI has no '#' part (got {text!r})")
        params = tuple(parse_qsl(parts.query, keep_blank_values=True))
        for key, _value in params:
            if key not in PARAMS:
                why = (
                    "it makes libvirt run a program"
                    if key in ("command", "netcat")
                    else f"sigvirt accepts only {', '.join(PARAMS)}"
                )
                raise UriProblem(f"query parameter {key!r} is refused: {why}")
        if len({k for k, _ in params}) != len(params):
            raise UriProblem(f"a query parameter is given twice (got {text!r})")
        return cls(
            text, driver, transport, parts.username, parts.hostname, port, parts.path, params
        )

    def __str__(self) -> str:
        return self.text

    def param(self, key: str) -> str | None:
        return dict(self.params).get(key)

    @property
    def is_local(self) -> bool:
        """This machine's own daemon: its files are our files (no transport needed)."""
        return not self.transport and not self.host

    @property
    def ssh_target(self) -> tuple[str | None, str, int] | None:
        """(user, host, port) of an ssh URI: file chores and guests' forwards go through it."""
        if self.transport not in SSH_TRANSPORTS or not self.host:
            return None
        return self.user, self.host, self.port or 22

    @property
    def keyfile(self) -> Path | None:
        value = self.param("keyfile")
        return Path(value) if value else None

    @property
    def kind(self) -> str:
        """How sigvirt reaches the host: local, or the transport's name."""
        return "local" if self.is_local else self.transport or "tls"  # qemu://HOST/ is TLS

    @property
    def host_key(self) -> str:
        """One name per machine for limits shared by its regions (disk, link): `local` for
        this machine's daemon, else the host and port the URI reaches."""
        if self.is_local:
            return "local"
        return f"{self.host}:{self.port}" if self.port else str(self.host)

    def same_host(self, other: LibvirtUri) -> bool:
        """Two URIs whose files are on one machine."""
        return self.text == other.text or (self.is_local and other.is_local)
