"""`region add|update|remove`: regions.yaml edited in place (comments and layout kept), checked
before it is written, and refused while a replica or a clone lives in what would go."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sigvirt.cli import main
from sigvirt.errors import ExitCode
from sigvirt.hosts import regionfile, regions
from tests.support import imagefactory as f
from tests.support.catalog import SigEnv

SHIPPED = regions.shipped_text()


@pytest.fixture
def regions_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The commented regions.yaml sigvirt ships, as a user's own file."""
    path = tmp_path / "regions.yaml"
    path.write_text(SHIPPED)
    monkeypatch.setenv("SIGVIRT_REGIONS", str(path))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(tmp_path / "galleries"))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.offline
def test_add_then_remove_leaves_the_file_byte_identical(
    regions_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run(
        capsys, "region", "add", "lab2", "--uri", "test:///default",
        "--pool", "lab2-a=/var/lib/sigvirt/pools/lab2-a", "--pool", "lab2-b=/srv/b=Premium_LRS",
        "--accel", "tcg", "--ports", "23000-23099", "--description", "the second box",
    )  # fmt: skip
    assert code == 0, err
    text = regions_file.read_text()
    assert text.startswith(SHIPPED)  # the old text, comments and all, untouched
    lab2 = regions.load(regions_file).region("lab2")
    assert (lab2.uri, lab2.accel, lab2.port_range) == ("test:///default", "tcg", (23000, 23099))
    assert [(p.name, str(p.path), p.storage_type) for p in lab2.pools] == [
        ("lab2-a", "/var/lib/sigvirt/pools/lab2-a", ""), ("lab2-b", "/srv/b", "Premium_LRS"),
    ]  # fmt: skip
    # New entries are indented as the file indents its own.
    assert "\n  lab2:\n    uri: test:///default\n    pools:\n      - name: lab2-a\n" in text
    code, _out, err = run(capsys, "region", "remove", "lab2")
    assert code == 0, err
    assert regions_file.read_text() == SHIPPED


@pytest.mark.offline
def test_update_touches_only_what_changes(
    regions_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = run(capsys, "region", "update", "local", "--clones-per-replica", "8",
                          "--description", "this machine, busy")  # fmt: skip
    assert code == 0, err
    text = regions_file.read_text()
    # Every comment is still there; only the changed lines differ.
    assert [ln for ln in SHIPPED.splitlines() if "#" in ln] == [
        ln for ln in text.splitlines() if "#" in ln
    ]
    changed = set(text.splitlines()) - set(SHIPPED.splitlines())
    assert changed == {"    description: this machine, busy", "    clones_per_replica: 8"}
    assert regions.load(regions_file).region("local").clones_per_replica == 8


@pytest.mark.offline
def test_memory_merge_is_set_and_unset_from_the_cli(
    regions_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "region", "update", "local", "--memory-merge", "-o", "json")
    assert code == 0, err
    assert "+    memory:\n+      merge: true\n" in json.loads(out)["diff"]
    assert regions.load(regions_file).region("local").memory_merge is True
    assert "merge: true" in regions_file.read_text()
    code, _out, err = run(capsys, "region", "add", "spare", "--uri", "test:///default",
                          "--pool", "spare-a", "--memory-merge")  # fmt: skip
    assert code == 0, err
    assert regions.load(regions_file).region("spare").memory_merge is True
    code, _out, err = run(capsys, "region", "update", "local", "--no-memory-merge")
    assert code == 0, err
    assert regions.load(regions_file).region("local").memory_merge is False
    code, out, err = run(capsys, "region", "show", "spare", "-o", "json")
    assert code == 0 and json.loads(out)["memory_merge"] is True, err


@pytest.mark.offline
def test_dry_run_prints_the_diff_and_writes_nothing(
    regions_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "region", "add", "lab3", "--uri", "test:///default",
                         "--pool", "p3", "--dry-run")  # fmt: skip
    assert code == 0, err
    assert "+  lab3:\n" in out and "+    uri: test:///default\n" in out
    assert regions_file.read_text() == SHIPPED
    code, out, err = run(capsys, "region", "add", "lab3", "--uri", "test:///default",
                         "--pool", "p3", "--dry-run", "-o", "json")  # fmt: skip
    assert code == 0 and '"dryRun": true' in out
    assert regions_file.read_text() == SHIPPED


@pytest.mark.offline
@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["add", "local", "--uri", "test:///default", "--pool", "x"], ExitCode.CONFIG,
         "region local exists already"),
        (["add", "bad name", "--uri", "test:///default", "--pool", "x"], ExitCode.CONFIG,
         "invalid region name 'bad name'"),
        (["add", "lab4", "--uri", "qemu+ext:///system?command=/bin/sh", "--pool", "x"],
         ExitCode.CONFIG, "regions.lab4.uri"),
        (["add", "lab4", "--uri", "test:///default", "--pool", "x=relative/path"],
         ExitCode.CONFIG, "must be an absolute path"),
        (["add", "lab4", "--uri", "test:///default", "--pool", "x", "--ports", "9-1"],
         ExitCode.CONFIG, "range is inverted"),
        (["add", "lab4", "--uri", "test:///default", "--pool", "a=/x=/y=z"],
         ExitCode.INVALID_ARGUMENT, "--pool 'a=/x=/y=z': expected NAME"),
        (["update", "nowhere", "--accel", "tcg"], ExitCode.NOT_FOUND, "region 'nowhere' not found"),
        (["update", "local", "--remove-pool", "nosuch"], ExitCode.INVALID_ARGUMENT,
         "--remove-pool nosuch: region local has no such pool"),
    ],
)  # fmt: skip
def test_bad_edits_are_one_line_and_write_nothing(
    regions_file: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: ExitCode,
    message: str,
) -> None:
    got, out, err = run(capsys, "region", *argv)
    assert (got, out) == (code, ""), err
    assert len(err.strip().splitlines()) <= 2 and message in err  # the line (and its hint)
    assert regions_file.read_text() == SHIPPED


@pytest.mark.offline
def test_the_shipped_default_is_not_edited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIGVIRT_REGIONS", str(regions.SHIPPED_REGIONS))
    before = regions.SHIPPED_REGIONS.read_text()
    got, _out, err = run(capsys, "region", "add", "x", "--uri", "test:///default", "--pool", "p")
    assert got == ExitCode.CONFIG and "no regions.yaml of this host to edit" in err
    assert regions.SHIPPED_REGIONS.read_text() == before


@pytest.mark.offline
def test_a_file_changed_meanwhile_is_not_overwritten(regions_file: Path) -> None:
    config = regions.load(regions_file)
    from sigvirt import regionadmin

    change = regionadmin.add(config, "lab5", {"uri": "test:///default", "pools": ["p"]})
    regions_file.write_text(SHIPPED + "# edited by hand meanwhile\n")
    from sigvirt.errors import Conflict

    with pytest.raises(Conflict):
        regionfile.apply(change.edit)
    assert regions_file.read_text().endswith("# edited by hand meanwhile\n")


def test_remove_is_refused_while_replicas_live_there(
    sig: SigEnv,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real pool under qemu:///system: the version's replica keeps the region (and its
    pool) in the file; once the version is gone, the region goes."""
    mine = tmp_path / "regions.yaml"
    text = sig.pools.regions_file.read_text()
    mine.write_text(text)
    monkeypatch.setenv("SIGVIRT_REGIONS", str(mine))
    sig.gallery()
    sig.definition()
    sig.version("1.0.0", f.qcow2_v3_with_data(tmp_path))
    pool = sig.pools.replicas[0].name
    got, out, err = run(capsys, "region", "remove", "local")
    assert (got, out) == (ExitCode.HAS_DEPENDENTS, "")
    assert "region local still holds: replica myGallery/myDef/1.0.0" in err
    got, out, err = run(capsys, "region", "update", "local", "--remove-pool", pool)
    assert got == ExitCode.HAS_DEPENDENTS and f"pool(s) {pool} of region local" in err
    assert mine.read_text() == text
    assert sig.cli("sig", "image-version", "delete", "--gallery-name", "myGallery",
                   "--gallery-image-definition", "myDef", "--gallery-image-version", "1.0.0",
                   ).code == 0  # fmt: skip
    # The last region can't go (a regions.yaml needs one): add another, then remove local.
    got, _out, err = run(capsys, "region", "add", "spare", "--uri", "test:///default",
                         "--pool", "spare-a")  # fmt: skip
    assert got == 0, err
    got, _out, err = run(capsys, "region", "remove", "local")
    assert got == 0, err
    assert list(regions.load(mine).regions) == ["spare"]
