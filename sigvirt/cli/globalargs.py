"""az's global arguments, which every command takes without declaring them: main() takes them
out of argv before typer parses it. Only before `--`: what follows is the guest's
(`vm ssh -n web -- grep --query x`)."""

from __future__ import annotations

from dataclasses import dataclass

from sigvirt.errors import InvalidArgument

FLAGS = frozenset({"--debug", "--verbose", "--only-show-errors"})
VALUED = frozenset({"--query", "--subscription"})


@dataclass(frozen=True)
class GlobalArgs:
    args: tuple[str, ...]  # the command line without them, for typer
    query: str | None = None  # the JMESPath text; compiled by render
    subscription: str | None = None  # accepted, and ignored: sigvirt has no subscriptions
    debug: bool = False  # tracebacks for errors
    verbose: bool = False
    only_show_errors: bool = False  # accepted; sigvirt's warnings are few and one line each


def before_separator(args: list[str]) -> list[str]:
    return args[: args.index("--")] if "--" in args else args


def take(args: list[str]) -> GlobalArgs:
    """The global arguments out of `args` (`--query X` or `--query=X`; a flag given twice
    counts once, a value given twice is the last one, as argparse has it)."""
    rest: list[str] = []
    flags: set[str] = set()
    values: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            rest.extend(args[i - 1 :])
            break
        name, eq, value = arg.partition("=")
        if arg in FLAGS:
            flags.add(arg)
        elif name in VALUED and eq:
            values[name] = value
        elif arg in VALUED:
            if i >= len(args) or args[i] == "--":
                raise InvalidArgument(f"{arg}: expected one argument")
            values[arg] = args[i]
            i += 1
        else:
            rest.append(arg)
    return GlobalArgs(
        args=tuple(rest),
        query=values.get("--query"),
        subscription=values.get("--subscription"),
        debug="--debug" in flags,
        verbose="--verbose" in flags,
        only_show_errors="--only-show-errors" in flags,
    )
