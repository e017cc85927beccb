"""Exit codes: every error a user can cause has its own; 1 is left for bugs."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import sigvirt
from sigvirt.cli import main
from sigvirt.errors import ExitCode, InternalError, SigvirtError

pytestmark = pytest.mark.offline


def _every_error_class() -> set[type[SigvirtError]]:
    for info in pkgutil.walk_packages(sigvirt.__path__, "sigvirt."):
        if not info.name.endswith("__main__"):  # importing it would run the CLI
            importlib.import_module(info.name)
    found: set[type[SigvirtError]] = set()
    todo: list[type[SigvirtError]] = [SigvirtError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_no_user_facing_error_exits_1() -> None:
    classes = _every_error_class()
    assert len(classes) > 20  # the walk found the package's errors
    bugs_only = {c.__qualname__ for c in classes if issubclass(c, InternalError)}
    exit_1 = {
        f"{c.__module__}.{c.__qualname__}"
        for c in classes
        if c.exit_code == ExitCode.GENERIC and not issubclass(c, InternalError)
    }
    assert exit_1 == set(), "give these errors their own exit code (1 is for bugs)"
    assert "BadTransition" in bugs_only  # a transition outside the table is a bug


def test_every_exit_code_is_one_of_the_documented_ones() -> None:
    for cls in _every_error_class():
        assert isinstance(cls.exit_code, ExitCode), cls


def test_a_missing_regions_file_named_by_the_environment_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv("SIGVIRT_REGIONS", str(missing))
    assert main(["sig", "list"]) == ExitCode.CONFIG
    assert capsys.readouterr().err == (
        f"sigvirt: error: {missing}: no such file (named by SIGVIRT_REGIONS)\n"
    )
