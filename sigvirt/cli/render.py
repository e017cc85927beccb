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


def plain(value: Any) -> Any:
    """Records → JSON-able data (dataclasses, paths, enums, tuples)."""
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


def emit(data: Any, output: Output, columns: Sequence[str] | None = None, title: str = "") -> None:
    data = plain(data)
    if output is Output.json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return
    if output is Output.yaml:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
        return
    if isinstance(data, dict):
        table = Table(show_header=False, title=title or None, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in data.items():
            if columns and key not in columns:
                continue
            table.add_row(key, _cell(value))
        stdout.print(table)
        return
    rows = list(data)
    if not rows:
        stderr.print(f"(no {title or 'items'})")
        return
    cols = list(columns or rows[0].keys())
    table = Table(title=title or None, box=None, header_style="bold", pad_edge=False)
    for col in cols:
        table.add_column(col.replace("_", " "))
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in cols))
    stdout.print(table)


def note(text: str) -> None:
    stderr.print(text, highlight=False)
