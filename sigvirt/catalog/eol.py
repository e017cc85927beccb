"""The end-of-life policy: what a version past its end of life may still do.

A gallery and a definition may each say `warn` (the default: a version past its end of life
deploys, with a warning) or `deny` (nothing new is deployed from it and it is never latest).
The definition's own policy wins, then the gallery's, else warn. A version's end of life is
its own date, or its definition's when it has none. Pure functions: the callers pass the
records (and, in tests, the clock).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from sigvirt.catalog.dates import past_end_of_life
from sigvirt.catalog.names import shorten
from sigvirt.catalog.records import Definition, Gallery, ImageVersion
from sigvirt.errors import InvalidArgument

WARN = "warn"
DENY = "deny"
POLICIES = (WARN, DENY)


def parse_policy(text: str, flag: str = "--eol-policy") -> str:
    """`--eol-policy` as given (any case): warn or deny."""
    value = text.strip().lower()
    if value not in POLICIES:
        raise InvalidArgument(f"{flag} must be warn or deny (got {shorten(text)})")
    return value


def moment(today: date | datetime | None) -> datetime | None:
    """A clock reading for the date rules: a date means its first second (UTC); a naive
    datetime is UTC; None is now."""
    if today is None:
        return None
    if isinstance(today, datetime):
        return today if today.tzinfo else today.replace(tzinfo=UTC)
    return datetime.combine(today, time(), UTC)


def past(eol: str | None, today: date | datetime | None = None) -> bool:
    """Whether an end-of-life date (ISO date or datetime) has come."""
    return past_end_of_life(eol, moment(today))


@dataclass(frozen=True)
class Policy:
    """The eol policy that rules a definition's versions, and where it is set."""

    policy: str  # warn | deny
    origin: str  # "image definition G/D", "gallery G", or "default"
    definition_eol: str | None = None  # what a version without a date of its own inherits

    @property
    def denies(self) -> bool:
        return self.policy == DENY

    def end_of_life(self, version: ImageVersion) -> str | None:
        """The version's end of life: its own date, else its definition's."""
        return version.end_of_life or self.definition_eol

    def date_text(self, version: ImageVersion) -> str:
        """The date as messages show it: "2020-01-01", "2020-01-01, its definition's"."""
        eol = self.end_of_life(version)
        if eol is None:
            return "none"
        return eol if version.end_of_life else f"{eol}, its definition's"

    def described(self) -> str:
        """As people read it: "deny (gallery G)", "warn (default)"."""
        return f"{self.policy} ({self.origin})"

    def expired(self, version: ImageVersion, today: date | datetime | None = None) -> bool:
        """Whether deny keeps `version` from new deployments and from latest."""
        return self.denies and past(self.end_of_life(version), today)

    def unfit(self, version: ImageVersion, today: date | datetime | None = None) -> str | None:
        """Why latest skips `version` (None: the policy doesn't)."""
        if not self.expired(version, today):
            return None
        return (
            f"past its end of life {self.date_text(version)} "
            f"(eol policy deny, set on {self.origin})"
        )

    def refusal(self, version: ImageVersion, today: date | datetime | None = None) -> str | None:
        """The one line refusing a new deployment of `version` (None: it may be deployed)."""
        if not self.expired(version, today):
            return None
        return (
            f"image version {version.ref} is past its end of life ({self.date_text(version)}) "
            f"and the eol policy of {self.origin} is deny"
        )


def policy_of(gallery: Gallery, definition: Definition) -> Policy:
    """The definition's policy if it has one, else the gallery's, else warn."""
    eol = definition.end_of_life
    if definition.eol_policy:
        where = f"image definition {definition.gallery}/{definition.name}"
        return Policy(definition.eol_policy, where, eol)
    if gallery.eol_policy:
        return Policy(gallery.eol_policy, f"gallery {gallery.name}", eol)
    return Policy(WARN, "default", eol)


def effective_policy(gallery: Gallery, definition: Definition) -> str:
    """warn or deny: the definition's, then the gallery's, else warn."""
    return policy_of(gallery, definition).policy


def refusal(
    version: ImageVersion,
    definition: Definition,
    gallery: Gallery,
    today: date | datetime | None = None,
) -> str | None:
    """Why `version` can't be deployed now (None: it can): past its end of life under deny."""
    return policy_of(gallery, definition).refusal(version, today)
