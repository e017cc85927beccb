"""Every command's --help renders: help texts are rich markup, so a stray `[/WORD]` in one
breaks that command's help with a MarkupError."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from sigvirt import cli


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
