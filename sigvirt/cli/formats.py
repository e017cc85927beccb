"""The formats `-o/--output` chooses and `--query`, as az writes them (knack's output.py and
query.py): text in, text out, nothing printed here. render.emit() picks one and prints it."""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Protocol

from sigvirt.errors import InvalidArgument

# Past this many rows, lists are written one compact object per line: json's indenting
# encoder is pure Python and took most of a second for 10,000 versions; this is the C
# encoder, still valid JSON.
LONG_LIST = 500


class Query(Protocol):
    """A compiled JMESPath expression (jmespath.parser.ParsedResult)."""

    expression: str

    def search(self, value: Any, options: Any = None) -> Any: ...


def compile_query(text: str) -> Query:
    """`--query TEXT` compiled, or InvalidArgument with jmespath's reason on one line.
    jmespath is imported here only: commands without --query never load it."""
    import jmespath
    from jmespath.exceptions import JMESPathError

    try:
        query: Query = jmespath.compile(text)
    except (JMESPathError, KeyError, ValueError) as err:
        # KeyError: some malformed expressions escape jmespath's own errors (knack says so)
        raise InvalidArgument(
            f"--query: invalid JMESPath expression {text!r}: {_reason(err)}"
        ) from err
    return query


def search(query: Query, data: Any) -> Any:
    """The query applied as az applies it: objects it builds keep the order they name their
    keys in (OrderedDict), which tsv then keeps; a runtime error (a function given the wrong
    type) is the query's fault, one line."""
    from jmespath import Options
    from jmespath.exceptions import JMESPathError

    try:
        return query.search(data, Options(dict_cls=OrderedDict))
    except JMESPathError as err:
        raise InvalidArgument(
            f"--query: JMESPath expression {query.expression!r} failed: {_reason(err)}"
        ) from err


def _reason(err: Exception) -> str:
    """jmespath's message on one line: without the expression it echoes on further lines, or
    the "invalid expression" its messages start with (ours says so already)."""
    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    first = re.sub(r"^(invalid|bad) jmespath expression: ", "", first, flags=re.IGNORECASE)
    return first.removesuffix(":").removesuffix(", for expression").rstrip(".").strip()


# -- json and yaml ----------------------------------------------------------------------------
# One row of a long list, as json_text writes it (ASCII: non-ASCII characters are escaped). One
# encoder for every row: json.dumps with options builds a new one per call.
long_row = json.JSONEncoder(sort_keys=True, check_circular=False).encode


def json_text(data: Any) -> str:
    if isinstance(data, list) and len(data) > LONG_LIST:
        return "[\n" + ",\n".join(map(long_row, data)) + "\n]\n"
    # plain() and jmespath made a fresh tree: no cycles to look for (halves long lists' time)
    return json.dumps(data, indent=2, sort_keys=True, check_circular=False) + "\n"


@functools.cache
def _dumper() -> Any:
    """safe_dump, plus the OrderedDicts a query builds (as plain mappings, in their order).
    yaml is imported here only: json and tables never load it."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(OrderedDict, Dumper.represent_dict)
    return Dumper


def yaml_text(data: Any) -> str:
    import yaml

    text: str = yaml.dump(data, Dumper=_dumper(), sort_keys=False, allow_unicode=True)
    return text


def colour() -> bool:
    """jsonc and yamlc are coloured on a terminal only (az: plain when piped)."""
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def coloured(text: str, language: str) -> str:
    """ANSI colours by pygments' terminal formatter, as az's jsonc and yamlc have them."""
    from pygments import highlight
    from pygments.formatters import TerminalFormatter
    from pygments.lexers import JsonLexer, YamlLexer

    lexer = JsonLexer() if language == "json" else YamlLexer()
    out: str = highlight(text, lexer, TerminalFormatter())
    return out


# -- tsv (knack's _TsvOutput) -----------------------------------------------------------------
def tsv_text(data: Any) -> str:
    """No header; a list is one line per item, anything else one line. An object's line is
    its values, in key order for a record and in the query's order for an object the query
    built; a nested list is written as its length and a nested object as an empty field (so
    every line has as many fields), None as `None`, booleans as `True`/`False` (a bare
    boolean as `true`/`false`, which shell tests read)."""
    rows = data if isinstance(data, list) else [data]
    return "".join(_tsv_row(row) + "\n" for row in rows)


def _tsv_row(row: Any) -> str:
    if isinstance(row, dict):
        values: Iterable[Any] = (
            row.values() if isinstance(row, OrderedDict) else (v for _, v in sorted(row.items()))
        )
        return "\t".join(_tsv_field(v) for v in values)
    if isinstance(row, list):
        return "\t".join(_tsv_field(v) for v in row)
    if isinstance(row, bool):
        return str(row).lower()
    return _tsv_field(row)


def _tsv_field(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return str(len(value))
    if isinstance(value, dict):
        return ""
    return str(value)


# -- az's table, for query results (knack's _TableOutput, tabulate's "simple" format) --------
# az leaves these out of tables: ids are long and the other two say nothing to people.
SKIP_KEYS = frozenset({"id", "type", "etag"})


class TableUnavailable(InvalidArgument):
    template = (
        "table output unavailable: the result has no plain values to show; "
        "choose them with --query, or use -o json"
    )


def az_table_text(data: Any) -> str:
    """A query's result as az tables it: an object's plain values (nested ones and ids left
    out) under its keys with the first letter capitalised, a list's items as `ColumnN`, a
    scalar under `Result`; a list of them one row each."""
    items = data if isinstance(data, list) else [data]
    if not items:
        return ""
    rows = [_table_row(item) for item in items]
    heads: dict[str, None] = {}  # every row's keys, first seen first (tabulate's "keys")
    for row in rows:
        heads.update(dict.fromkeys(row))
    if not heads:
        raise TableUnavailable()
    cells = [[row.get(h, "") for h in heads] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(heads)]

    def line(values: Iterable[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    out = [line(heads), line("-" * w for w in widths), *(line(r) for r in cells)]
    return "\n".join(out) + "\n"


def _table_row(item: Any) -> dict[str, str]:
    if isinstance(item, dict):
        return {
            key[:1].upper() + key[1:]: str(value)
            for key, value in item.items()
            if key not in SKIP_KEYS
            and value is not None
            and not isinstance(value, list | dict | set)
        }
    if isinstance(item, list):
        return {f"Column{n}": "" if v is None else str(v) for n, v in enumerate(item, 1)}
    return {"Result": str(item)}
