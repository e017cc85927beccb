"""Rendering results: tables for people, JSON (stable) and YAML for scripts."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

# Piped output keeps each row on one line instead of wrapping at 80 columns.
stdout = Console(width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


class Output(StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


OutputOpt = Annotated[
    Output,
    typer.Option("--output", "-o", help="table for people; json (stable) or yaml for scripts"),
]


_SCALARS = frozenset({str, int, float, bool})


def plain(value: Any) -> Any:
    """Records → JSON-able data (dataclasses, paths, enums, tuples)."""
    if value is None or type(value) in _SCALARS:  # the common case first: lists of 10,000
        return value
    if type(value) is dict:
        return {str(k): plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    return value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return str(value)


def emit(
    data: Any,
    output: Output,
    columns: Sequence[str] | None = None,
    title: str = "",
    *,
    ready: bool = False,
) -> None:
    """Render records (ready: already JSON-able dicts and lists, nothing to convert)."""
    if not ready:
        data = plain(data)
    if output is Output.json:
        if isinstance(data, list) and len(data) > RICH_ROWS:
            # One compact object per line: json's indenting encoder is pure Python and took
            # most of a second for 10,000 versions; this is the C encoder, still valid JSON.
            lines = (json.dumps(row, sort_keys=True, check_circular=False) for row in data)
            sys.stdout.write("[\n" + ",\n".join(lines) + "\n]\n")
            return
        # plain() made a fresh tree: no cycles to look for (and halves the time for long lists)
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, check_circular=False) + "\n")
        return
    if output is Output.yaml:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
        return
    if isinstance(data, dict):
        table = Table(show_header=False, title=title or None, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in data.items():
            if (columns and key not in columns) or value in (None, "", [], {}):
                continue  # people read what is there; scripts use json, which has every key
            table.add_row(key, _cell(value))
        stdout.print(table)
        return
    rows = list(data)
    if not rows:
        stderr.print(f"(no {title or 'items'})")
        return
    cols = list(columns or rows[0].keys())
    if len(rows) > RICH_ROWS:
        _long_table(rows, cols, title)
        return
    table = Table(title=title or None, box=None, header_style="bold", pad_edge=False)
    for col in cols:
        table.add_column(col.replace("_", " "))
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in cols))
    stdout.print(table)


# rich lays a table out in seconds when it has 10,000 rows; past this many, the same columns
# are padded by hand.
RICH_ROWS = 500


def _long_table(rows: list[dict[str, Any]], cols: list[str], title: str) -> None:
    heads = [c.replace("_", " ") for c in cols]
    cells = [[_cell(row.get(c)) for c in cols] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(heads)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    if title:
        stdout.print(title.center(sum(widths) + 2 * len(widths) - 2).rstrip(), soft_wrap=True)
    stdout.print(line(heads), style="bold", soft_wrap=True, markup=False, highlight=False)
    sys.stdout.write("".join(line(r) + "\n" for r in cells))


def note(text: str) -> None:
    """A line for people on stderr, never wrapped (scripts grep it; rich would fold it)."""
    stderr.print(text, highlight=False, soft_wrap=True, markup=False)


def warn(text: str) -> None:
    """`sigvirt: warning: …`, one line on stderr whatever its length (rich would wrap it)."""
    sys.stderr.write(f"sigvirt: warning: {' '.join(text.splitlines())}\n")
