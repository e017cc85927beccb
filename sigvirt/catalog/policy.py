"""Who may do what: roles reader < contributor < owner granted to Unix groups on a gallery,
a definition or a version. Pure: the store asks, the CLI reports."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

from sigvirt.errors import PermissionRefused

Role = Literal["reader", "contributor", "owner"]
ROLES: tuple[Role, ...] = ("reader", "contributor", "owner")


@dataclass(frozen=True)
class Grant:
    group: str
    role: Role
    scope: str = ""  # "" the gallery, "D" a definition, "D/1.0.0" a version


@dataclass(frozen=True)
class Policy:
    gallery: str
    owner_group: str = ""
    grants: tuple[Grant, ...] = ()


@dataclass(frozen=True)
class Caller:
    uid: int
    user: str
    groups: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    @staticmethod
    @cache
    def current() -> Caller:
        uid = os.geteuid()
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
        groups = set()
        for gid in {os.getegid(), *os.getgroups()}:
            with contextlib.suppress(KeyError):
                groups.add(grp.getgrgid(gid).gr_name)
        return Caller(uid, user, frozenset(groups))


def scope_of(definition: str | None = None, version: str | None = None) -> str:
    if definition is None:
        return ""
    return definition if version is None else f"{definition}/{version}"


def covers(grant_scope: str, scope: str) -> bool:
    """A grant covers its resource and everything below it."""
    return grant_scope == "" or scope == grant_scope or scope.startswith(grant_scope + "/")


def role_of(policy: Policy, caller: Caller, scope: str = "") -> Role | None:
    if caller.is_root or (policy.owner_group and policy.owner_group in caller.groups):
        return "owner"
    held = [g.role for g in policy.grants if g.group in caller.groups and covers(g.scope, scope)]
    return max(held, key=ROLES.index, default=None)


def can_see(policy: Policy, caller: Caller, scope: str = "") -> bool:
    """May look at this resource: a role on it, or a grant somewhere below it (one needs
    the way to a version one was given)."""
    if role_of(policy, caller, scope) is not None:
        return True
    return any(g.group in caller.groups and covers(scope, g.scope) for g in policy.grants)


def require(policy: Policy, caller: Caller, needed: Role, scope: str, action: str) -> None:
    have = role_of(policy, caller, scope)
    if have is not None and ROLES.index(have) >= ROLES.index(needed):
        return
    what = f"{policy.gallery}/{scope}" if scope else f"gallery {policy.gallery}"
    groups = ", ".join(sorted(caller.groups)) or "none"
    raise PermissionRefused(
        f"permission denied: {caller.user} (groups: {groups}) may not {action} {what}: "
        f"needs {needed}, has {have or 'no access'}"
    )
