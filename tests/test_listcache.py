"""The kept text of long listings (cli/listcache.py): `image-version list` replays what it
printed only while every record file, the caller and the code are as they were; the text is
byte-identical to a listing made from the records; a cache anyone else could have written,
one under another key, or one cut short is never believed. Offline: plain files, any user."""

from __future__ import annotations

import array
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable
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
from sigvirt.cli.versions import COLUMNS
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
    monkeypatch.setattr(listcache, "LAZY", 0)  # kept again after any change
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


def _loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each record file a listing reads on its own, to splice its row in, is added here."""
    calls: list[str] = []
    real = listcache.read_record

    def counted(dfd: int, name: str, where: Path) -> bytes:
        calls.append(name)
        return real(dfd, name, where)

    monkeypatch.setattr(listcache, "read_record", counted)
    return calls


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
    reads, loads = _reads(monkeypatch), _loads(monkeypatch)
    now_listed = sig.cli(*LIST, "-o", "json")
    assert '"changed"' in now_listed.out  # the change is seen: its kept row is not replayed
    assert reads == [] and loads == ["1.0.3.json"]  # the others' rows are
    _settle()
    sig.cli(*LIST, "-o", "json")  # read again: it changed within a tick of the last listing
    assert loads == ["1.0.3.json"] * 2
    assert sig.cli(*LIST, "-o", "json") == now_listed
    assert loads == ["1.0.3.json"] * 2 and reads == []  # kept once settled, then replayed
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


def _parts(raw: bytes) -> tuple[bytes, bytes, array.array[int], bytes]:
    """A kept file's header line, names, integers and rows' text."""
    head, _, rest = raw.partition(b"\n")
    rows, cols, names, _body = map(int, head.split(b" ")[4:])
    numbers = array.array("q")
    ints = 8 * (rows * (5 + cols) + cols)
    numbers.frombytes(rest[names : names + ints])
    return head + b"\n", rest[:names], numbers, rest[names + ints :]


def _forge(kept: Path, stamp: bool = False) -> None:
    """The kept text rewritten: what only its owner could do. With `stamp`, the forged row's
    stamp too (1.0.5 is the sixth row: every row has 5 + columns integers)."""
    head, names, numbers, body = _parts(kept.read_bytes())
    if stamp:
        cols = int(head.split(b" ")[5])
        numbers[5 * (5 + cols) + 2] += 1  # its mtime_ns
    kept.write_bytes(head + names + numbers.tobytes() + body.replace(b"1.0.5", b"6.6.6"))


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
        lambda raw: raw.replace(b"json ", b"json 0").replace(b"table ", b"table 0"),  # key
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


@pytest.mark.parametrize("output", [(), ("-o", "json")], ids=["table", "json"])
def test_a_row_with_a_boot_test_running_is_never_kept(
    sig: SigEnv, monkeypatch: pytest.MonkeyPatch, output: tuple[str, ...]
) -> None:
    """`running` turns `pending` when its runner dies, which changes no record's stamp: that
    row is made again by every listing, the others are kept."""
    runner = subprocess.Popen(["sleep", "60"])
    tag = liveness.tag().rsplit(":", 1)[0] + f":{runner.pid}"
    running = BootTest(BootTestState.RUNNING, vm="t", runner=tag)
    sig.store.update_version("G", "D", "1.0.4", lambda r: dataclasses.replace(r, boot_test=running))
    _settle()
    try:
        first = sig.cli(*LIST, *output)
        assert "running" in first.out and sig.cli(*LIST, *output) == first
    finally:
        runner.kill()
        runner.wait()
    loads = _loads(monkeypatch)
    now = sig.cli(*LIST, *output)
    assert "running" not in now.out and "pending" in now.out and loads == ["1.0.4.json"]
    assert now == _made_from_records(sig, monkeypatch, *LIST, *output)


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


def _steps(s: GalleryStore) -> list[tuple[str, Callable[[], object]]]:
    """Changes a listing must see, one after another: each a name and what it does."""

    def update(v: str, **kw: object) -> Callable[[], object]:
        change = lambda r: dataclasses.replace(r, **kw)  # noqa: E731
        return lambda: s.update_version("G", "D", v, change, hidden=True)

    def create(v: str) -> Callable[[], object]:
        def run() -> None:
            with s.definition_lock("G", "D"):
                s.create_version(_record(v, tags={"n": "ny"}))

        return run

    state = VersionState.SOFT_DELETED
    wide = "a-region-far-wider-than-any-other"
    replica = Replica(wide, "a", "v.qcow2", "/pools/a/v.qcow2", ReplicaState.COPYING, 37)
    return [
        ("one changed", update("1.0.3", tags={"n": "changed"})),
        ("several changed", lambda: [update(f"1.0.{i}", tags={})() for i in (0, 7, 11)]),
        ("a column wider", update("1.0.2", target_regions={wide: 1}, replicas=(replica,))),
        (
            "and narrower again",
            update(
                "1.0.2", **{"target_regions": {"local": 1}, "replicas": _record("1.0.2").replicas}
            ),
        ),
        (
            "added first, between and last",
            lambda: [create(v)() for v in ("0.9.0", "1.0.20", "2.0.0")],
        ),
        ("removed", lambda: s.version_path("G", "D", "1.0.6").unlink()),
        ("soft-deleted", update("1.0.8", state=state)),
        ("restored", update("1.0.8", state=VersionState.SUCCEEDED)),
    ]


@pytest.mark.parametrize("output", [(), ("-o", "json")], ids=["table", "json"])
def test_changed_added_and_removed_records_are_spliced_in_byte_for_byte(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: tuple[str, ...]
) -> None:
    """After each change, the listing is the one made from the records: only the records
    whose stamps moved are read (never every record), the others' rows come from the file."""
    sig.cli(*LIST, *output)
    reads, loads = _reads(monkeypatch), _loads(monkeypatch)
    for step, change in _steps(sig.store):
        change()
        _settle()
        del loads[:], reads[:]
        listed = sig.cli(*LIST, *output)
        assert reads == [] and len(loads) <= 3, step
        del loads[:]
        assert sig.cli(*LIST, *output) == listed and loads == [] and reads == [], step  # kept
        assert listed == _made_from_records(sig, monkeypatch, *LIST, *output), step
    assert "far-wider" not in listed.out and "0.9.0" in listed.out and "1.0.6" not in listed.out
    assert len(_kept(tmp_path)) == 1


def test_a_row_whose_stamp_does_not_match_is_made_again(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row is believed under its own record's stamp only: forged with another, it is read
    again from the record; a record changed since is too."""
    made = sig.cli(*LIST)
    (kept,) = _kept(tmp_path)
    _forge(kept, stamp=True)
    loads = _loads(monkeypatch)
    assert sig.cli(*LIST) == made and loads == ["1.0.5.json"]
    _forge(kept)
    sig.store.update_version("G", "D", "1.0.5", lambda r: dataclasses.replace(r, tags={}))
    assert sig.cli(*LIST) == _made_from_records(sig, monkeypatch, *LIST)


@pytest.mark.parametrize("output", [(), ("-o", "json")], ids=["table", "json"])
def test_a_kept_file_is_the_listing_and_a_little_per_row(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: tuple[str, ...]
) -> None:
    """Its size: the rows' text as printed, plus per row its name and 5 integers (+ one per
    column for tables), plus the header: one file per definition and format, whatever
    changed."""
    for i in range(3):
        sig.store.update_version("G", "D", f"1.0.{i}", lambda r: dataclasses.replace(r, tags={}))
        _settle()
        listed = sig.cli(*LIST, *output)
    (kept,) = _kept(tmp_path)
    head, names, numbers, body = _parts(kept.read_bytes())
    cols = len(COLUMNS) if not output else 0
    assert len(numbers) == COUNT * (5 + cols) + cols and len(names) < COUNT * 8
    text = listed.out.encode()
    if output:  # json: the rows as printed between `[` and `]`, each with its comma
        assert body == text[2:-3] + b",\n"
    else:  # table: the lines under the title and header
        assert body == b"".join(text.splitlines(keepends=True)[2:])
    assert kept.stat().st_size == len(head) + len(names) + len(numbers) * 8 + len(body)
    assert kept.stat().st_size <= len(text) + COUNT * (16 + 8 * (5 + cols)) + 256


def test_a_long_tables_title_and_header_are_what_rich_prints(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Written without loading rich where rich would print them as they are (not a
    terminal); through rich where it reads them (markup) or is told stdout is a terminal."""
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    title, header = "image versions".center(40).rstrip(), "name   state  end of life"
    for top in [(title, header), ("", header), ("[bold]x[/bold] :smile:", "a\tb")]:
        render.print_long_table(*top, "rows\n")
        ours = capsys.readouterr().out
        with monkeypatch.context() as m:
            m.setattr(render, "_plain", lambda text: False)
            render.print_long_table(*top, "rows\n")
        assert ours == capsys.readouterr().out
    assert render._plain(title + header)
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert not render._plain(title + header)


def test_a_few_moved_rows_are_read_again_rather_than_kept_again(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to LAZY changed rows, the kept file stays as it was (the next listings read those
    records again); past it, the listing is kept again."""
    monkeypatch.setattr(listcache, "LAZY", 2)
    made = sig.cli(*LIST, "-o", "json")
    (kept,) = _kept(tmp_path)
    was = kept.read_bytes()
    loads = _loads(monkeypatch)
    for i in range(3):
        sig.store.update_version("G", "D", f"1.0.{i}", lambda r: dataclasses.replace(r, tags={}))
        _settle()
        del loads[:]
        listed = sig.cli(*LIST, "-o", "json")
        assert len(loads) == i + 1 and listed != made
        assert (kept.read_bytes() == was) == (i < 2)  # three moved: kept again
    del loads[:]
    assert sig.cli(*LIST, "-o", "json") == listed and loads == []
    assert listed == _made_from_records(sig, monkeypatch, *LIST, "-o", "json")
