"""Dates as az takes them (end of life), and whether one has passed."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sigvirt.catalog.names import shorten
from sigvirt.errors import InvalidArgument


def parse_date(text: str | None, what: str = "--end-of-life-date") -> str | None:
    """ISO date or datetime (as az accepts); stored as given, normalized to ISO."""
    if text is None or text == "":
        return None
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
        return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
    except ValueError:
        raise InvalidArgument(f"{what} {shorten(text)} is not a date (use YYYY-MM-DD)") from None


def past_end_of_life(eol: str | None, today: datetime | None = None) -> bool:
    if not eol:
        return False
    moment = datetime.fromisoformat(eol if "T" in eol else eol + "T00:00:00+00:00")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment <= (today or datetime.now(UTC))


def stored_date_problem(text: str) -> str | None:
    """Why an end of life read from a record cannot be compared with today (None: it can)."""
    try:
        past_end_of_life(text)
    except ValueError:
        return f"expected an ISO date, found {shorten(text, 40)}"
    return None
