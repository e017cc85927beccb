"""Host-level commands: `doctor` and the guest image recipes (`image build|box|list`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sigvirt.cli.common import ResourceGroupOpt
from sigvirt.cli.render import Output, OutputOpt, emit, note
from sigvirt.errors import ExitCode
from sigvirt.hosts import doctor as doctor_lib
from sigvirt.hosts import recipes
from sigvirt.runner import Runner

image_app = typer.Typer(
    help="Guest image recipes built from Debian packages (images/).", no_args_is_help=True
)

UriOpt = Annotated[str, typer.Option("--uri", help="libvirt URI to check")]


def doctor(
    uri: UriOpt = "qemu:///system",
    path: Annotated[
        list[Path] | None, typer.Option("--path", help="also check free space here (repeatable)")
    ] = None,
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Check libvirtd, virtlogd, KVM or TCG, /dev/kvm, qemu-img, image cache and free disk."""
    paths = [Path("/var/lib/sigvirt"), recipes.DEFAULT_CACHE, *(path or [])]
    checks = doctor_lib.run_checks(uri, Runner(), paths)
    checks += _vagrant_leftovers()
    emit(checks, output, ["status", "name", "detail", "fix"])
    failed = [c for c in checks if c.status == "fail"]
    if failed and output is Output.table:
        note(f"{len(failed)} check(s) failed; run the commands in the 'fix' column.")
    if failed:
        raise typer.Exit(ExitCode.HOST_NOT_READY)


@image_app.command("build")
def image_build(
    name: Annotated[str, typer.Argument(help="recipe: a directory under images/ (tiny, debian)")],
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Build a guest image from its recipe (cached by a hash of the recipe) and print its path."""
    r = recipes.recipe(name)
    path = recipes.ensure_built(r, Runner())
    emit({"recipe": name, "digest": r.digest(), "path": path}, output)


@image_app.command("box")
def image_box(
    name: Annotated[str, typer.Argument(help="recipe whose image has user vagrant (labhost)")],
    file: Annotated[Path, typer.Option("--file", help="the box to write (never overwritten)")],
    resource_group: ResourceGroupOpt = None,
    output: OutputOpt = Output.table,
) -> None:
    """Build a recipe's image (cached) and write it as a vagrant-libvirt box; print its sha256
    (`vagrant box add --checksum-type sha256 --checksum ...`)."""
    from dataclasses import asdict

    from sigvirt.hosts.qemuimg import QemuImg
    from sigvirt.vagrant import imagebox

    r = recipes.recipe(name)
    imagebox.check(r, file)
    path = recipes.ensure_built(r, Runner())
    emit(asdict(imagebox.write(r, path, file, QemuImg(Runner()))), output)


@image_app.command("list")
def image_list(resource_group: ResourceGroupOpt = None, output: OutputOpt = Output.table) -> None:
    """List the recipes and whether the current version of each is built."""
    rows = []
    for script in sorted(recipes.recipes_dir().glob("*/build.sh")):
        r = recipes.recipe(script.parent.name)
        path = recipes.cached_path(r)
        rows.append({"recipe": r.name, "digest": r.digest(), "built": path.exists(), "path": path})
    emit(rows, output, title="image recipes")


def _vagrant_leftovers() -> list[doctor_lib.Check]:
    """Box volumes `vagrant box remove` left in the pools of this machine's regions, that
    nothing uses (a warning: they only take space); none when regions.yaml can't be read."""
    from sigvirt.cli.common import context
    from sigvirt.errors import SigvirtError
    from sigvirt.vagrant import leftovers

    try:
        with context() as ctx:
            found = leftovers.box_volumes(ctx)
    except SigvirtError:
        return []
    return [
        doctor_lib.Check(
            f"vagrant box volume {b.pool}/{b.name}", "warn",
            f"{b.bytes >> 20} MiB that no machine uses (left by `vagrant box remove`)",
            b.remove_command,
        )
        for b in found
        if not b.used_by
    ]  # fmt: skip
