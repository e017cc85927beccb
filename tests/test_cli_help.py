"""Every command's --help renders: help texts are rich markup, so a stray `[/WORD]` in one
breaks that command's help with a MarkupError."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from sigvirt import cli
from sigvirt.errors import ExitCode

pytestmark = pytest.mark.offline


def _paths() -> list[list[str]]:
    root = typer.main.get_command(cli.build())
    found: list[list[str]] = []

    def walk(cmd: Any, path: list[str]) -> None:
        found.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(root, [])
    return found


PATHS = _paths()


def test_the_tree_has_the_az_shaped_commands() -> None:
    words = {" ".join(p) for p in PATHS}
    for expected in (
        "sig create",
        "sig image-definition create",
        "sig image-version create",
        "sig image-version show-latest",
        "sig share add",
        "sig check-access",
        "vm create",
        "vm ssh",
        "vm flatten",
        "vmss scale",
        "region check",
        "doctor",
    ):
        assert expected in words


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "sigvirt")
def test_help_renders(path: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main([*path, "--help"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Usage:" in out
    assert "internal error" not in err


def test_readme_lists_every_exit_code() -> None:
    """The README's exit-code list is what scripts rely on: it must match errors.ExitCode."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    para = text[text.index("Bad input gets one line") :].split("\n\n")[0]
    listed = {int(n) for n in re.findall(r"\b(\d+) [a-z(`]", para)}
    expected = {int(c) for c in ExitCode if c not in (ExitCode.OK, ExitCode.USAGE)}
    assert listed == expected
