"""Typed reads from composed YAML nodes (PyYAML's node API): every failure names the file,
the line and the key path, and duplicate or unknown keys are refused. regions.yaml's parser
(regions.py) is written with it."""

from __future__ import annotations

import difflib
from typing import Any, NoReturn, cast

import yaml

from sigvirt.errors import ConfigError

TAG = "tag:yaml.org,2002:"
PLAIN_KINDS = {"int": "integer", "bool": "boolean", "float": "number"}


def closest(word: str, choices: tuple[str, ...]) -> str:
    match = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


# -- the walker ------------------------------------------------------------------------
def describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = node.tag.removeprefix(TAG)
    if kind == "null":
        return "null"
    value = node.value if len(node.value) <= 60 else node.value[:57] + "..."
    if kind in PLAIN_KINDS:  # numbers and booleans read best unquoted, as written
        return f"{PLAIN_KINDS[kind]} {value}"
    return f"{'string' if kind == 'str' else kind} {value!r}"


class Walker:
    """Typed reads from composed YAML nodes; every failure names source, line and key path."""

    def __init__(self, source: str, loader: yaml.SafeLoader) -> None:
        self.source = source
        self.loader = loader

    def fail(self, at: yaml.Node | yaml.Mark, key: str, problem: str) -> NoReturn:
        mark = at if isinstance(at, yaml.Mark) else at.start_mark
        line = mark.line + 1
        where = f"{self.source}:{line}"
        raise ConfigError(f"{where}: {key}: {problem}", line=line, key=key, problem=problem)

    def mapping(
        self, node: yaml.Node, key: str, allowed: tuple[str, ...] | None, what: str = "a mapping"
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Keys to (key node, value node), in file order; allowed=None takes any key."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, key, f"must be {what} (got {describe(node)})")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            if knode.tag == TAG + "merge":
                self.fail(knode, key, "merge keys ('<<') are not supported")
            if not isinstance(knode, yaml.ScalarNode) or knode.tag == TAG + "null":
                self.fail(knode, key, f"keys must be names (got {describe(knode)})")
            name = knode.value
            if allowed is not None and name not in allowed:
                hint = closest(name, allowed) or f" (expected one of {', '.join(allowed)})"
                self.fail(knode, key, f"unknown key {name!r}{hint}")
            if name in out:
                first = out[name][0].start_mark.line + 1
                self.fail(knode, key, f"duplicate key {name!r} (first on line {first})")
            out[name] = (knode, vnode)
        return out

    def require(
        self, m: dict[str, tuple[yaml.Node, yaml.Node]], name: str, key: str, at: yaml.Node
    ) -> yaml.Node:
        if name not in m:
            self.fail(at, key, f"missing key {name!r}")
        return m[name][1]

    def scalar(self, node: yaml.Node, key: str, kind: str, what: str) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag != TAG + kind:
            self.fail(node, key, f"must be {what} (got {describe(node)})")
        try:
            return self.loader.construct_object(node)
        except (ValueError, KeyError):
            # PyYAML's own constructors fail on what its resolver let through: `!!int abc`,
            # `0b_`, `!!bool maybe`, an integer of more than 4300 digits.
            self.fail(node, key, f"must be {what} (got {describe(node)}, which does not parse)")

    def string(self, node: yaml.Node, key: str, check: Any = None) -> str:
        value = cast(str, self.scalar(node, key, "str", "a string"))
        if check is not None and (problem := check(value)):
            self.fail(node, key, problem)
        return value

    def choice(self, node: yaml.Node, key: str, choices: tuple[str, ...]) -> str:
        one_of = f"one of {', '.join(choices)}"
        value = self.scalar(node, key, "str", one_of)
        if value not in choices:
            self.fail(node, key, f"must be {one_of} (got {value!r})")
        return cast(str, value)


def compose(text: str, source: str) -> tuple[yaml.SafeLoader, yaml.Node | None]:
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # the reader checks every character here already
        return loader, loader.get_single_node()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else f"{source}:1"
        if err.context == "expected a single document in the stream":
            problem = "only one YAML document is allowed (a second one starts here)"
        else:
            problem = str(err.problem)
            if err.context and err.context_mark and err.context_mark is not mark:
                problem += f" ({err.context} on line {err.context_mark.line + 1})"
        one_line = " ".join(problem.split())  # the promise is one line per error
        raise ConfigError(f"{where}: YAML syntax error: {one_line}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        mark = loader.get_mark() if loader is not None else None
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else f"{source}:1"
        raise ConfigError(f"{where}: YAML syntax error: collections nested too deeply") from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        raise ConfigError(
            f"{source}:{line}:{column}: YAML syntax error: {err.reason} (U+{err.character:04X})"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
