"""Rendering results as az does: the result as JSON-able data → `--query` (JMESPath) → the
format `-o/--output` names (formats.py). Tables for people, JSON (stable) and YAML for
scripts, tsv for shells."""

from __future__ import annotations

import builtins
import dataclasses
import functools
import os
import sys
from collections.abc import Mapping, Sequence
from enum import Enum, StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from sigvirt.cli import formats
from sigvirt.cli.formats import Query
from sigvirt.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console


@functools.cache
def console(err: bool = False) -> Console:
    """rich's console on stdout (stderr: `err`), made on first use: rich costs a sixth of
    the time of listing 10,000 versions that don't need it (json, a long table's rows).
    Piped output keeps each row on one line instead of wrapping at 80 columns."""
    from rich.console import Console

    stream = sys.stderr if err else sys.stdout
    return Console(stderr=err, width=None if stream.isatty() else 200)


def __getattr__(name: str) -> Any:
    """`render.stdout` and `render.stderr`, the consoles, as before they were made lazily."""
    if name in ("stdout", "stderr"):
        return console(name == "stderr")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Output(StrEnum):
    table = "table"
    json = "json"
    jsonc = "jsonc"
    yaml = "yaml"
    yamlc = "yamlc"
    tsv = "tsv"
    none = "none"


# The default format, as az's `core.output` setting is (click reads it for every command).
ENV_OUTPUT = "SIGVIRT_OUTPUT"

OutputOpt = Annotated[
    Output,
    typer.Option(
        "--output",
        "-o",
        envvar=ENV_OUTPUT,
        show_envvar=True,
        case_sensitive=False,
        help="table for people, tsv for shells, json (stable) or yaml for scripts; jsonc and "
        "yamlc are coloured; none prints nothing",
    ),
]


def check_output_env(environ: Mapping[str, str] = os.environ) -> Output | None:
    """$SIGVIRT_OUTPUT, checked before parsing: click would refuse a bad value with a usage
    box and exit 2, but it is configuration, so one line and exit 7."""
    value = environ.get(ENV_OUTPUT, "")
    if not value:
        return None  # click ignores an empty variable too
    try:
        return Output(value.lower())
    except ValueError:
        known = ", ".join(o.value for o in Output)
        raise ConfigError(f"{ENV_OUTPUT}={value!r} is not an output format ({known})") from None


@dataclasses.dataclass(frozen=True)
class Settings:
    """What holds for every emit() of one run: the global arguments main() takes out of argv
    before typer parses it, so no command declares them."""

    query: Query | None = None


# Set once per run by main() through use(), which hands back the previous settings for it to
# restore: in-process runs (the tests) don't leak into each other. A plain module global, not
# a contextvar, so threads a command starts see the same settings.
_settings = Settings()


def settings() -> Settings:
    return _settings


def use(new: Settings) -> Settings:
    """Make `new` the settings of this run; returns the ones it replaces."""
    global _settings
    previous, _settings = _settings, new
    return previous


def for_people(output: Output) -> bool:
    """Today's tables (several per command, progress bars): table output with no --query.
    With a query, a table is az's table of the query's result."""
    return output is Output.table and _settings.query is None


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
    """Render records (ready: already JSON-able dicts and lists, nothing to convert): the
    query, if any, then the format. Columns and title are for today's tables only."""
    if output is Output.none:
        return
    if not ready:
        data = plain(data)
    query = _settings.query
    if query is not None:
        data = formats.search(query, data)
        if data is None:
            return  # az prints nothing at all for a null result (`--query missingKey`)
    if output is Output.table:
        if query is None:
            _table(data, columns, title)
        else:
            sys.stdout.write(formats.az_table_text(data))
        return
    if output is Output.tsv:
        sys.stdout.write(formats.tsv_text(data))
        return
    if output in (Output.json, Output.jsonc):
        text, language = formats.json_text(data), "json"
    else:
        text, language = formats.yaml_text(data), "yaml"
    if output in (Output.jsonc, Output.yamlc) and formats.colour():
        text = formats.coloured(text, language)
    sys.stdout.write(text)


def _table(data: Any, columns: Sequence[str] | None, title: str) -> None:
    from rich.table import Table

    if isinstance(data, dict):
        table = Table(show_header=False, title=title or None, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in data.items():
            if (columns and key not in columns) or value in (None, "", [], {}):
                continue  # people read what is there; scripts use json, which has every key
            table.add_row(key, _cell(value))
        console().print(table)
        return
    rows = list(data)
    if not rows:
        console(True).print(f"(no {title or 'items'})")
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
    console().print(table)


# rich lays a table out in seconds when it has 10,000 rows; past this many, the same columns
# are padded by hand.
RICH_ROWS = formats.LONG_LIST


def _long_table(rows: list[dict[str, Any]], cols: list[str], title: str) -> None:
    print_long_table(*long_table(rows, cols, title))


def long_table(rows: list[dict[str, Any]], cols: list[str], title: str) -> tuple[str, str, str]:
    """A long table's title line ("" for none), header line and rows (each line ended)."""
    cells = [long_cells(row, cols) for row in rows]
    heads = long_heads(cols)
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(heads)]
    centred, header = long_top(heads, widths, title)
    return centred, header, "".join(long_line(r, widths) + "\n" for r in cells)


def long_heads(cols: list[str]) -> list[str]:
    return [c.replace("_", " ") for c in cols]


def long_cells(row: dict[str, Any], cols: list[str]) -> list[str]:
    """One row's cells: a plain string is its own cell (80,000 times for 10,000 versions)."""
    return [v if type(v) is str else _cell(v) for v in map(row.get, cols)]


def long_line(values: list[str], widths: list[int]) -> str:
    """One line of a long table: its cells padded to the columns' widths (no line end)."""
    return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()


def long_top(heads: list[str], widths: list[int], title: str) -> tuple[str, str]:
    """The title line ("" for none) and the header line over columns this wide."""
    centred = title.center(sum(widths) + 2 * len(widths) - 2).rstrip() if title else ""
    return centred, long_line(heads, widths)


def print_long_table(title: str, header: str, body: str) -> None:
    if _plain(title + header):  # what rich would print, without loading it (a tenth of a
        sys.stdout.write(f"{title}\n{header}\n" if title else f"{header}\n")  # listing)
    else:
        if title:
            console().print(title, soft_wrap=True)
        console().print(header, style="bold", soft_wrap=True, markup=False, highlight=False)
    sys.stdout.write(body)


# Printable ASCII but for what rich reads in text: `[` (markup) and `:` (emoji codes).
_PLAIN = frozenset(map(chr, range(32, 127))) - {"[", ":"}


def _plain(text: str) -> bool:
    """Whether rich would print `text` as it is: stdout is no terminal and nothing says to
    treat it as one (rich's own rules), and the text has nothing rich reads (markup, emoji
    codes, tabs, anything past ASCII)."""
    if os.environ.get("TTY_COMPATIBLE") or os.environ.get("FORCE_COLOR") is not None:
        return False
    try:
        if sys.stdout.isatty() or "idlelib" in getattr(sys.stdin, "__module__", ""):
            return False
    except ValueError:
        return False
    return _PLAIN.issuperset(text) and not hasattr(builtins, "get_ipython")  # (Jupyter)


def note(text: str) -> None:
    """A line for people on stderr, never wrapped (scripts grep it; rich would fold it)."""
    console(True).print(text, highlight=False, soft_wrap=True, markup=False)


def warn(text: str) -> None:
    """`sigvirt: warning: …`, one line on stderr whatever its length (rich would wrap it)."""
    sys.stderr.write(f"sigvirt: warning: {' '.join(text.splitlines())}\n")
