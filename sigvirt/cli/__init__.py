"""The sigvirt command line: one Typer per noun; errors translated here, once."""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from types import FrameType

import typer

from sigvirt.errors import ExitCode, SigvirtError

HELP = "Azure Shared Image Gallery on libvirt/QEMU: galleries, image versions, replicas, VMs."
NOUNS = ("sig", "vm", "vmss", "region", "image", "doctor", "feature", "provider", "group")
GLOBAL_ARGS = """Every command also takes az's global arguments (before any `--`):

--query JMESPATH: filter the result (jmespath.org), then format it as -o/--output says
-o/--output json|jsonc|yaml|yamlc|table|tsv|none: the default is $SIGVIRT_OUTPUT, else table
--debug: tracebacks with errors; --verbose, --only-show-errors, --subscription: accepted"""


def build(noun: str | None = None, sub: str | None = None) -> typer.Typer:
    """The app, with only the noun being run imported (libvirt, paramiko and pycdlib cost
    a third of a second that `sig image-version list` doesn't need); all of them for help."""
    app = typer.Typer(
        name="sigvirt",
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        epilog=GLOBAL_ARGS,
    )
    app.callback()(_root)
    every = noun not in NOUNS
    if every or noun in ("doctor", "image"):
        from sigvirt.cli import host

        app.command("doctor")(host.doctor)
        app.add_typer(host.image_app, name="image")
    if every or noun == "sig":
        from sigvirt.cli import sig

        app.add_typer(sig.assemble(None if every else sub), name="sig")
    if every or noun in ("vm", "vmss"):
        from sigvirt.cli import rolling, vm

        rolling.register(vm.vmss_app)
        app.add_typer(vm.app, name="vm")
        app.add_typer(vm.vmss_app, name="vmss")
    if every or noun == "region":
        from sigvirt.cli import region

        app.add_typer(region.app, name="region")
    if every or noun in ("feature", "provider", "group"):
        from sigvirt.cli import az

        app.add_typer(az.feature_app, name="feature")
        app.add_typer(az.provider_app, name="provider")
        app.add_typer(az.group_app, name="group")
    return app


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            mine = version("sigvirt")
        except PackageNotFoundError:
            mine = "unknown"
        typer.echo(f"sigvirt {mine}")
        raise typer.Exit()


def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print sigvirt's version"
    ),
) -> None:
    """Azure Shared Image Gallery on libvirt/QEMU: galleries, image versions, replicas, VMs."""


# Options that take several values after one flag, as `az` spells them:
# `--target-regions local east=2 west=1`. Click wants the flag repeated, so it is.
VARIADIC = frozenset(
    {
        "--target-regions",
        "--ids",
        "--tags",
        "--set",
        "--remove",
        "--instance-ids",
        "--data-disk-sizes-gb",
        "--zones",
        "-z",  # az's short --zones (vm create's single --zone -z spreads to itself)
        "--target-region-exclude-from-latest",
        "--features",
    }
)


def spread_variadic(args: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        out.append(arg)
        i += 1
        if arg == "--":
            out.extend(args[i:])
            break
        if arg in VARIADIC:
            first = True
            while i < len(args) and not args[i].startswith("-"):
                if not first:
                    out.append(arg)
                out.append(args[i])
                first = False
                i += 1
    return out


def _interrupt(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
    raise KeyboardInterrupt


def _interrupted(err: BaseException) -> bool:
    """Whether a KeyboardInterrupt (Ctrl-C, or SIGTERM: see main) is behind `err`."""
    seen: BaseException | None = err
    for _ in range(8):  # a short chain: Typer's Exit from the interrupt, SystemExit from it
        if seen is None:
            return False
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, translate sigvirt errors to one line and their exit code."""
    from sigvirt.cli import formats, globalargs, render

    if argv is None and threading.current_thread() is threading.main_thread():
        # SIGTERM (kill, a CI job's timeout, a service stopping) ends a command as Ctrl-C
        # does, through its undo paths: a VM not up yet is removed, a partial copy deleted.
        signal.signal(signal.SIGTERM, _interrupt)
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in globalargs.before_separator(args)  # before take() can refuse
    previous = render.settings()
    try:
        # az's global arguments come out first: no command declares them, and their values
        # must not be taken for the noun in `words`.
        given = globalargs.take(args)
        debug = given.debug
        render.check_output_env()
        query = None if given.query is None else formats.compile_query(given.query)
        render.use(render.Settings(query=query))
        if given.verbose and given.subscription is not None:
            render.note("sigvirt: --subscription ignored: sigvirt has no subscriptions")
        args = spread_variadic(list(given.args))
        # standalone: Typer itself reports usage errors (exit 2) and honours typer.Exit.
        words = [a for a in args if not a.startswith("-")][:2]
        build(*words)(args=args, prog_name="sigvirt")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        if _interrupted(exit_):  # Typer turns Ctrl-C into a silent exit 130: say it
            print("sigvirt: interrupted", file=sys.stderr)
            code = ExitCode.INTERRUPTED
    except SigvirtError as err:
        if debug:
            traceback.print_exc()
        print(f"sigvirt: error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"sigvirt: hint: {err.hint}", file=sys.stderr)
        console = getattr(err, "console_tail", "")
        if console:
            print("sigvirt: last lines of the guest's serial console:", file=sys.stderr)
            for line in console.splitlines():
                print(f"  | {line}", file=sys.stderr)
        code = err.exit_code
    except KeyboardInterrupt:
        print("sigvirt: interrupted", file=sys.stderr)
        code = ExitCode.INTERRUPTED
    except Exception as err:  # a bug: one line, or the whole story with --debug
        if debug:
            traceback.print_exc()
        else:
            print(f"sigvirt: internal error: {err!r} (rerun with --debug)", file=sys.stderr)
        code = ExitCode.GENERIC
    finally:
        render.use(previous)  # the next in-process run starts from its own arguments
    if argv is None:
        sys.exit(code)
    return code
