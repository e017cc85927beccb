"""The guest image recipes: the tiny image's cloud-init stand-in against PyYAML and a
scratch root (no VM), and the recipe cache key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sigvirt.errors import NotFound
from sigvirt.hosts import recipes

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_cloud_init_stand_in_parses_and_applies_seeds() -> None:
    res = subprocess.run(
        ["bash", str(ROOT / "images/tiny/tests/run.sh")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert ", 0 failed" in res.stdout


def test_recipe_digest_changes_with_any_file(tmp_path: Path) -> None:
    recipe = tmp_path / "mini"
    (recipe / "files").mkdir(parents=True)
    (recipe / "build.sh").write_text("echo build\n")
    (recipe / "files" / "a").write_text("one")
    r = recipes.recipe("mini", tmp_path)
    first = r.digest()
    assert recipes.cached_path(r, tmp_path / "cache").name == f"mini-{first}.qcow2"
    (recipe / "files" / "a").write_text("two")
    assert r.digest() != first
    (recipe / "files" / "a").write_text("one")
    assert r.digest() == first


def test_recipe_digest_covers_the_shared_lib(tmp_path: Path) -> None:
    for name in ("mini", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "build.sh").write_text(f". ../lib/common.sh # {name}\n")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "common.sh").write_text("f() { :; }\n")
    mini, other = recipes.recipe("mini", tmp_path), recipes.recipe("other", tmp_path)
    assert mini.lib == lib
    first = {r.name: r.digest() for r in (mini, other)}
    (lib / "common.sh").write_text("f() { true; }\n")
    changed = {r.name: r.digest() for r in (mini, other)}
    assert all(changed[n] != first[n] for n in first), "a lib change rebuilds every recipe"
    (lib / "extra.sh").write_text("")
    assert mini.digest() not in (first["mini"], changed["mini"]), "a new lib file counts too"
    (lib / "extra.sh").unlink()
    (lib / "common.sh").write_text("f() { :; }\n")
    assert {r.name: r.digest() for r in (mini, other)} == first
    # The name is part of the key: the same bytes under another name in lib/ differ.
    (lib / "common.sh").rename(lib / "shared.sh")
    assert mini.digest() != first["mini"]


def test_unknown_recipe_names_the_known_ones() -> None:
    with pytest.raises(NotFound) as caught:
        recipes.recipe("nope")
    assert caught.value.message == (
        "image recipe 'nope' not found (available: debian, debian-sb, labhost, tiny, tiny-arm64)"
    )
