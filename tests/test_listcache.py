"""The kept text of long listings (cli/listcache.py): `image-version list` replays what it
printed only while every record file, the caller and the code are as they were; the text is
byte-identical to a listing made from the records; a cache anyone else could have written,
one under another key, or one cut short is never believed. Offline: plain files, any user."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sigvirt.catalog import listindex, liveness
from sigvirt.catalog.records import (
    BootTest,
    BootTestState,
    ImageVersion,
    Replica,
    ReplicaState,
    VersionState,
    now,
)
from sigvirt.catalog.store import GalleryStore
from sigvirt.cli import formats, listcache, render
from tests.support.catalog import Ran, SigEnv

pytestmark = pytest.mark.offline

COUNT = 12
LIST = ("sig", "image-version", "list", "-r", "G", "-i", "D")


@pytest.fixture
def sig(offline_sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SigEnv:
    """COUNT versions and their listing index, a listing "long" past 8 rows, and the cache
    in tmp_path."""
    monkeypatch.setattr(formats, "LONG_LIST", 8)
    monkeypatch.setattr(render, "RICH_ROWS", 8)
    monkeypatch.setattr(listindex, "MIN_VERSIONS", 4)
    monkeypatch.delenv(listindex.ENV, raising=False)
    monkeypatch.setenv(listcache.ENV, str(tmp_path / "cache"))
    offline_sig.gallery("G")
    offline_sig.definition("G", "D")
    s = offline_sig.store
    with s.definition_lock("G", "D"):
        for i in range(COUNT):
            s.create_version(_record(f"1.0.{i}", tags={"n": f"värde {i}"}))
    _settle()
    s.list_versions("G", "D")  # writes the listing index (whose stamp is in the key too)
    return offline_sig


def _record(name: str, **kw: object) -> ImageVersion:
    volume = f"G-D-{name}-local-0.qcow2"
    replica = Replica("local", "a", volume, f"/pools/a/{volume}", ReplicaState.COMPLETED, 100)
    return ImageVersion(
        "G", "D", name, state=VersionState.SUCCEEDED, sha256="ab" * 32,
        target_regions={"local": 1}, replicas=(replica,), published=now(), **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def _settle() -> None:
    time.sleep(listindex.RACY_NS / 1e9 + 0.02)


def _kept(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "cache"
    return sorted(folder.iterdir()) if folder.exists() else []


def _made_from_records(sig: SigEnv, monkeypatch: pytest.MonkeyPatch, *argv: str) -> Ran:
    with monkeypatch.context() as m:
        m.setenv(listindex.ENV, "off")  # no index, and so no cache either
        return sig.cli(*argv)


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each listing that reads the records (a cache miss) adds its definition here."""
    calls: list[str] = []
    real = GalleryStore.list_versions

    def counted(self: GalleryStore, g: str, d: str, *args: object, **kw: object) -> object:
        calls.append(d)
        return real(self, g, d, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(GalleryStore, "list_versions", counted)
    return calls


@pytest.mark.parametrize("output", [(), ("-o", "json")], ids=["table", "json"])
def test_a_long_listing_is_replayed_byte_for_byte(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: tuple[str, ...]
) -> None:
    expected = _made_from_records(sig, monkeypatch, *LIST, *output)
    assert expected.code == 0 and "1.0.11" in expected.out and not _kept(tmp_path)
    reads = _reads(monkeypatch)
    first, second, third = (sig.cli(*LIST, *output) for _ in range(3))
    assert first == second == third == expected
    assert reads == ["D"]  # the first listing read the records; the others replayed them
    (kept,) = _kept(tmp_path)
    assert kept.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "cache").stat().st_mode & 0o777 == 0o700


def test_a_changed_record_is_listed_as_it_is_now(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sig.cli(*LIST, "-o", "json")
    sig.cli(*LIST, "-o", "json")
    sig.store.update_version(
        "G", "D", "1.0.3", lambda r: dataclasses.replace(r, tags={"n": "changed"})
    )
    reads = _reads(monkeypatch)
    now_listed = sig.cli(*LIST, "-o", "json")
    assert reads == ["D"]  # the change is seen: what was kept is not replayed
    assert '"changed"' in now_listed.out
    _settle()
    sig.cli(*LIST, "-o", "json")
    read = len(reads)
    assert sig.cli(*LIST, "-o", "json") == now_listed
    assert len(reads) == read  # kept once settled, then replayed
    assert now_listed == _made_from_records(sig, monkeypatch, *LIST, "-o", "json")


def test_a_listing_within_a_clock_tick_of_a_change_is_not_kept(
    sig: SigEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record rewritten in the same tick may keep its stamp: nothing read then is kept."""
    monkeypatch.setattr(listindex, "RACY_NS", 10**10)  # "a tick": 10 s, however slow the host
    sig.store.update_version("G", "D", "1.0.3", lambda r: dataclasses.replace(r, tags={}))
    k = listcache.key(sig.store, "G", "D", render.Output.json)
    assert k is not None and not k.settled
    monkeypatch.setattr(listindex, "RACY_NS", 0)
    k = listcache.key(sig.store, "G", "D", render.Output.json)
    assert k is not None and k.settled


def _forge(kept: Path) -> None:
    """The kept text rewritten under its own key: what only its owner could do."""
    head, _, body = kept.read_bytes().partition(b"\n")
    forged = body.replace(b"1.0.5", b"6.6.6")
    words = head.split(b" ")
    words[-1] = str(len(forged)).encode()
    kept.write_bytes(b" ".join(words) + b"\n" + forged)


def test_a_cache_others_may_write_is_never_believed(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = sig.cli(*LIST)
    (kept,) = _kept(tmp_path)
    _forge(kept)
    assert "6.6.6" in sig.cli(*LIST).out  # its owner's word, believed: the test's premise
    kept.chmod(0o620)
    assert sig.cli(*LIST) == made
    _forge(kept)
    kept.chmod(0o600)
    (tmp_path / "cache").chmod(0o770)
    assert sig.cli(*LIST) == made
    (tmp_path / "cache").chmod(0o700)
    if os.geteuid() == 0:
        _forge(kept)
        os.chown(kept, 65534, -1)
        assert sig.cli(*LIST) == made


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[:-10],  # cut short
        lambda raw: raw.replace(b"sigvirt-list-cache 1 ", b"sigvirt-list-cache 1 0"),  # key
        lambda raw: b"\xff" + raw,
        lambda raw: b"",
    ],
    ids=["cut-short", "another-key", "not-the-header", "empty"],
)
def test_a_damaged_cache_is_ignored_and_written_again(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: object
) -> None:
    made = sig.cli(*LIST, "-o", "json")
    (kept,) = _kept(tmp_path)
    kept.write_bytes(damage(kept.read_bytes()))  # type: ignore[operator]
    reads = _reads(monkeypatch)
    assert sig.cli(*LIST, "-o", "json") == made
    assert sig.cli(*LIST, "-o", "json") == made
    assert reads == ["D"]


def test_queries_other_formats_and_damage_are_never_kept(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argvs = [
        (*LIST, "-o", "json", "--query", "[].name"),
        (*LIST, "--query", "[].{n: name, s: provisioningState}"),
        (*LIST, "-o", "tsv"),
        (*LIST, "-o", "yaml"),
    ]
    for argv in argvs:
        assert sig.cli(*argv) == _made_from_records(sig, monkeypatch, *argv)
    assert not _kept(tmp_path)
    sig.store.version_path("G", "D", "2.0.0").write_text("{")
    _settle()
    for argv in [LIST, (*LIST, "-o", "json")]:
        first = sig.cli(*argv)
        assert "skipped damaged metadata file" in first.err
        assert sig.cli(*argv) == first == _made_from_records(sig, monkeypatch, *argv)
    assert not _kept(tmp_path)


def test_a_listing_with_a_boot_test_running_is_not_kept(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`running` turns `pending` when its runner dies, which changes no record's stamp."""
    running = BootTest(BootTestState.RUNNING, vm="t", runner=liveness.tag())
    sig.store.update_version("G", "D", "1.0.4", lambda r: dataclasses.replace(r, boot_test=running))
    _settle()
    for argv in [LIST, (*LIST, "-o", "json")]:
        assert '"running"' in sig.cli(*argv).out or " running " in sig.cli(*argv).out
    assert not _kept(tmp_path)


def test_off_switches(sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(listcache.ENV, "off")
    sig.cli(*LIST)
    monkeypatch.setenv(listcache.ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(listindex.ENV, "off")
    sig.cli(*LIST)
    assert not _kept(tmp_path)


def test_at_most_keep_listings_are_kept(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listcache, "KEEP", 1)
    sig.cli(*LIST)
    (table,) = _kept(tmp_path)
    os.utime(table, ns=(0, 0))  # the older one
    sig.cli(*LIST, "-o", "json")
    assert _kept(tmp_path) != [table] and len(_kept(tmp_path)) == 1


def test_a_json_listing_never_loads_rich(sig: SigEnv) -> None:
    """rich (a sixth of a long listing's time) is loaded by what prints through it only."""
    script = (
        "import sys; from sigvirt.cli import main; "
        f"code = main({list(LIST)!r} + ['-o', 'json']); "
        "print(code, sorted({m.split('.')[0] for m in sys.modules} & {'rich', 'pygments'}), "
        "file=sys.stderr)"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], env=sig.env, capture_output=True, text=True, check=True
    )
    assert ran.stderr.splitlines()[-1] == "0 []" and '"1.0.11"' in ran.stdout


def test_kept_in_the_callers_own_home_only(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv(listcache.ENV)
    made = sig.cli(*LIST)
    (kept,) = (home / ".cache" / "sigvirt" / "lists").iterdir()
    assert sig.cli(*LIST) == made
    if os.geteuid() == 0:  # sudo with the user's HOME: root's files don't go there
        kept.unlink()
        os.chown(home, 65534, -1)
        assert sig.cli(*LIST) == made
        assert not list(kept.parent.iterdir())
