"""What a listing tells about the records it skipped (Damaged), and the check that a record
lies where its fields say it belongs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sigvirt.catalog import names
from sigvirt.catalog.fileio import CorruptRecord
from sigvirt.errors import InvalidName

# Where a record lies, as (field, what the field names, the value its path gives it).
Place = tuple[tuple[str, str, str], ...]


@dataclass(frozen=True)
class Damaged:
    """A record a listing skipped: the name its file or directory gives it, and the error
    reading it raised (what anyone asking for it by name gets, exit 17)."""

    name: str
    error: CorruptRecord

    @property
    def path(self) -> str:
        return str(self.error.fields["path"])

    @property
    def reason(self) -> str:
        return str(self.error.fields["detail"])


def keep(damaged: list[Damaged] | None, name: str, err: CorruptRecord) -> None:
    if damaged is not None:
        damaged.append(Damaged(name, err))


def misplaced(rec: Any, place: Place) -> str | None:
    """Why `rec` does not belong where it lies (None: it does)."""
    for attr, label, expected in place:
        actual = getattr(rec, attr)
        if actual != expected:
            where = "is the file of" if attr == "name" else "lies in"
            return f"says {label} {names.shorten(actual)} but {where} {label} {expected!r}"
    return None


def is_name(check: Callable[[str], str], name: str) -> bool:
    try:
        check(name)
    except InvalidName:
        return False
    return True
