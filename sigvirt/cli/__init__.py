"""The sigvirt command line: one Typer per noun; errors translated here, once."""

from __future__ import annotations

import sys
import traceback

import typer

from sigvirt.errors import ExitCode, SigvirtError

HELP = "Azure Shared Image Gallery on libvirt/QEMU: galleries, image versions, replicas, VMs."
NOUNS = ("sig", "vm", "vmss", "region", "image", "doctor")


def build(noun: str | None = None, sub: str | None = None) -> typer.Typer:
    """The app, with only the noun being run imported (libvirt, paramiko and pycdlib cost
    a third of a second that `sig image-version list` doesn't need); all of them for help."""
    app = typer.Typer(
        name="sigvirt",
        help=HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    every = noun not in NOUNS
    if every or noun in ("doctor", "image"):
        from sigvirt.cli import host

        app.command("doctor")(host.doctor)
        app.add_typer(host.image_app, name="image")
    if every or noun == "sig":
        from sigvirt.cli import sig

        app.add_typer(sig.assemble(None if every else sub), name="sig")
    if every or noun in ("vm", "vmss"):
        from sigvirt.cli import vm

        app.add_typer(vm.app, name="vm")
        app.add_typer(vm.vmss_app, name="vmss")
    if every or noun == "region":
        from sigvirt.cli import region

        app.add_typer(region.app, name="region")
    return app


# Options that take several values after one flag, as `az` spells them:
# `--target-regions local east=2 west=1`. Click wants the flag repeated, so it is.
VARIADIC = frozenset({"--target-regions"})


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


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, translate sigvirt errors to one line and their exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    if debug:
        args.remove("--debug")
    args = spread_variadic(args)
    try:
        # standalone: Typer itself reports usage errors (exit 2) and honours typer.Exit.
        words = [a for a in args if not a.startswith("-")][:2]
        build(*words)(args=args, prog_name="sigvirt")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
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
    if argv is None:
        sys.exit(code)
    return code
