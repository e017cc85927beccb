"""One output pipeline for every command, as az has it: the result as JSON → `--query`
(JMESPath) → the format `-o/--output` names, whose default is $SIGVIRT_OUTPUT. Driven through
emit() and through `sigvirt.cli.main` in-process on an offline gallery root."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
import typer
import yaml

from sigvirt import cli
from sigvirt.cli import formats, globalargs, render
from sigvirt.cli.render import Output, emit
from sigvirt.errors import ExitCode, InvalidArgument
from tests.support.catalog import SigEnv

pytestmark = pytest.mark.offline

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(autouse=True)
def _no_default_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's own $SIGVIRT_OUTPUT must not change what these tests see."""
    monkeypatch.delenv(render.ENV_OUTPUT, raising=False)


@pytest.fixture
def galleries(offline_sig: SigEnv) -> SigEnv:
    """Two galleries, aGallery (described) and myGallery, the second with a definition."""
    offline_sig.gallery("aGallery")
    offline_sig.gallery()
    offline_sig.definition()
    ran = offline_sig.cli("sig", "update", "-r", "aGallery", "--description", "the first one")
    assert ran.code == 0, ran.err
    return offline_sig


def emitted(
    capsys: pytest.CaptureFixture[str], data: Any, output: Output, query: str | None = None
) -> str:
    """What emit() prints for `data` with `--query query -o output`."""
    capsys.readouterr()
    compiled = None if query is None else formats.compile_query(query)
    previous = render.use(render.Settings(query=compiled))
    try:
        emit(data, output)
    finally:
        render.use(previous)
    out, err = capsys.readouterr()
    assert err == ""
    return out


# -- --query and tsv --------------------------------------------------------------------------
def test_query_of_one_value_as_tsv_is_the_bare_value(galleries: SigEnv) -> None:
    """`id=$(sigvirt … --query name -o tsv)` gets the name and its newline, nothing else."""
    for query in (["--query", "name"], ["--query=name"]):
        ran = galleries.cli("sig", "show", "-r", "myGallery", *query, "-o", "tsv")
        assert (ran.code, ran.out, ran.err) == (0, "myGallery\n", "")
    ran = galleries.cli("sig", "show", "-r", "aGallery", "-o", "tsv", "--query", "description")
    assert ran.out == "the first one\n"


def test_query_of_a_list_of_values_as_tsv_is_one_per_line(galleries: SigEnv) -> None:
    ran = galleries.cli("sig", "list", "--query", "[].name", "-o", "tsv")
    assert ran.code == 0, ran.err
    assert sorted(ran.out.splitlines()) == ["aGallery", "myGallery"]
    assert ran.out.endswith("\n")


def test_query_goes_before_the_command_too(galleries: SigEnv) -> None:
    """az takes its global arguments anywhere: their values are not taken for the noun."""
    ran = galleries.cli("--query", "name", "sig", "show", "-r", "myGallery", "-o", "tsv")
    assert (ran.code, ran.out) == (0, "myGallery\n"), ran.err


def test_tsv_follows_az(capsys: pytest.CaptureFixture[str]) -> None:
    """knack's _TsvOutput: no header; a record's values in key order; a nested list is its
    length and a nested object an empty field; None is `None`, booleans `True`/`False` in a
    row but `true`/`false` alone; an object the query builds keeps the query's order."""
    row: dict[str, Any] = {"name": "web", "tags": {"env": "x"}, "zones": [1, 2, 3]}
    row |= {"gone": None, "ok": True, "size": 1.5, "count": 0}
    assert emitted(capsys, [row, row], Output.tsv) == "0\tNone\tweb\tTrue\t1.5\t\t3\n" * 2
    assert emitted(capsys, row, Output.tsv) == "0\tNone\tweb\tTrue\t1.5\t\t3\n"
    assert emitted(capsys, [row], Output.tsv, "[].{z: zones, n: name, c: count}") == "3\tweb\t0\n"
    assert emitted(capsys, [row], Output.tsv, "[].[ok, name, gone]") == "True\tweb\tNone\n"
    assert emitted(capsys, row, Output.tsv, "ok") == "true\n"
    assert emitted(capsys, row, Output.tsv, "zones") == "1\n2\n3\n"
    assert emitted(capsys, row, Output.tsv, "count") == "0\n"
    assert emitted(capsys, [], Output.tsv) == ""


def test_tsv_of_a_record_is_its_values_in_key_order(galleries: SigEnv) -> None:
    record = galleries.cli("sig", "show", "-r", "aGallery", "-o", "json").json
    assert record["tags"] == {} and record["description"] == "the first one"

    def field(value: Any) -> str:
        if isinstance(value, list):
            return str(len(value))
        return "" if isinstance(value, dict) else str(value)

    ran = galleries.cli("sig", "show", "-r", "aGallery", "-o", "tsv")
    assert ran.out == "\t".join(field(v) for _, v in sorted(record.items())) + "\n"


def test_a_null_result_prints_nothing(galleries: SigEnv) -> None:
    """az writes nothing at all when the query finds nothing, in every format."""
    for output in Output:
        ran = galleries.cli("sig", "show", "-r", "myGallery", "--query", "nope", "-o", output)
        assert (ran.code, ran.out, ran.err) == (0, "", ""), output


# -- the other formats ------------------------------------------------------------------------
def test_output_none_prints_nothing_and_succeeds(offline_sig: SigEnv) -> None:
    group = ("--owner-group", offline_sig.owner_group)  # the offline tier runs as anyone
    ran = offline_sig.cli("sig", "create", "-r", "quiet", *group, "-o", "none")
    assert (ran.code, ran.out, ran.err) == (0, "", "")
    assert offline_sig.cli("sig", "show", "-r", "quiet", "-o", "json").json["name"] == "quiet"


def test_yaml_yamlc_and_jsonc_parse_back_to_the_json(galleries: SigEnv) -> None:
    """Piped (as here), jsonc and yamlc are plain json and yaml."""
    for argv in (
        ["sig", "show", "-r", "aGallery"],
        ["sig", "image-definition", "list", "-r", "myGallery"],
    ):
        want = galleries.cli(*argv, "-o", "json").json
        for output, load in (
            ("yaml", yaml.safe_load),
            ("yamlc", yaml.safe_load),
            ("jsonc", json.loads),
        ):
            ran = galleries.cli(*argv, "-o", output)
            assert ran.code == 0, ran.err
            assert "\x1b[" not in ran.out, output
            assert load(ran.out) == want, output


def test_coloured_formats_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(formats, "colour", lambda: True)
    data = {"name": "web", "tags": {"env": "lab"}, "count": 2}
    for output, load in ((Output.jsonc, json.loads), (Output.yamlc, yaml.safe_load)):
        out = emitted(capsys, data, output)
        assert "\x1b[" in out, output
        assert load(ANSI.sub("", out)) == data, output
    assert "\x1b[" not in emitted(capsys, data, Output.json)


def test_query_results_in_yaml_keep_the_query_order(capsys: pytest.CaptureFixture[str]) -> None:
    """jmespath builds OrderedDicts, which yaml.safe_dump refuses: written as mappings."""
    out = emitted(capsys, {"a": 1, "b": 2}, Output.yaml, "{z: b, a: a}")
    assert out == "z: 2\na: 1\n"


def test_long_lists_keep_the_fast_json_path_with_a_query(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [{"name": f"v{i}", "n": i} for i in range(render.RICH_ROWS + 10)]
    out = emitted(capsys, rows, Output.json, "[?n > `5`].{name: name}")
    assert out.count("\n") == len(rows) - 6 + 2  # one row a line, between [ and ]
    assert json.loads(out) == [{"name": r["name"]} for r in rows[6:]]


def test_table_of_a_query_is_az_s_table(galleries: SigEnv) -> None:
    ran = galleries.cli("sig", "list", "--query", "[].{name: name, loc: location}", "-o", "table")
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert lines[0].split() == ["Name", "Loc"]
    assert set(lines[1]) == {"-", " "}
    assert sorted(line.split() for line in lines[2:]) == [
        ["aGallery", "local"],
        ["myGallery", "local"],
    ]
    ran = galleries.cli("sig", "list", "--query", "length(@)", "-o", "table")
    assert ran.out == "Result\n------\n2\n"


def test_az_table_rules(capsys: pytest.CaptureFixture[str]) -> None:
    """Plain values only (nested ones, None and az's id/type/etag left out), keys with their
    first letter capitalised, the union of every row's keys; a list's items as ColumnN."""
    rows = [
        {"name": "a", "id": "/x", "tags": {}, "zones": [1], "size": 3, "ok": True},
        {"name": "bb", "extra": None, "more": "m"},
    ]
    out = emitted(capsys, rows, Output.table, "@")
    assert (
        out
        == "Name  Size  Ok    More\n----  ----  ----  ----\na     3     True\nbb                m\n"
    )
    out = emitted(capsys, rows, Output.table, "[].[name, size]")
    assert out == "Column1  Column2\n-------  -------\na        3\nbb\n"


def test_a_table_with_nothing_to_show_is_refused(galleries: SigEnv) -> None:
    line = galleries.refused(
        ExitCode.INVALID_ARGUMENT, "sig", "list", "--query", "[].tags", "-o", "table"
    )
    assert line == (
        "table output unavailable: the result has no plain values to show; "
        "choose them with --query, or use -o json"
    )


def test_table_without_a_query_is_unchanged(galleries: SigEnv) -> None:
    """Titles, the command's own columns, headers from field names: people's tables."""
    ran = galleries.cli("sig", "list")
    assert ran.code == 0, ran.err
    title, head, *rows = ran.out.splitlines()
    assert title.strip() == "galleries"
    assert head.split()[0] == "name"
    assert sorted(row.split()[0] for row in rows) == ["aGallery", "myGallery"]


# -- the default format: $SIGVIRT_OUTPUT ------------------------------------------------------
def test_sigvirt_output_sets_the_default(
    galleries: SigEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(render.ENV_OUTPUT, "json")
    assert galleries.cli("sig", "show", "-r", "myGallery").json["name"] == "myGallery"
    monkeypatch.setenv(render.ENV_OUTPUT, "YAML")  # az lowercases -o too
    assert (
        yaml.safe_load(galleries.cli("sig", "show", "-r", "myGallery").out)["name"] == "myGallery"
    )
    monkeypatch.setenv(render.ENV_OUTPUT, "tsv")
    assert galleries.cli("sig", "show", "-r", "myGallery", "--query", "name").out == "myGallery\n"
    ran = galleries.cli("sig", "show", "-r", "myGallery", "-o", "table")  # -o still wins
    assert ran.code == 0 and not ran.out.startswith("{")
    monkeypatch.setenv(render.ENV_OUTPUT, "")  # empty: unset, as click has it
    assert not galleries.cli("sig", "show", "-r", "myGallery").out.startswith("{")


def test_a_bad_sigvirt_output_is_one_line_and_exit_7(
    offline_sig: SigEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(render.ENV_OUTPUT, "xml")
    line = offline_sig.refused(ExitCode.CONFIG, "sig", "create", "-r", "never")
    assert line == (
        "SIGVIRT_OUTPUT='xml' is not an output format (table, json, jsonc, yaml, yamlc, tsv, none)"
    )


# -- bad queries ------------------------------------------------------------------------------
def test_a_bad_query_is_one_line_and_exit_18_before_anything_runs(offline_sig: SigEnv) -> None:
    """Compiled before the command runs: a create with a bad query creates nothing."""
    cases = {
        "[": "--query: invalid JMESPath expression '[': Incomplete expression",
        "name name": "--query: invalid JMESPath expression 'name name': Unexpected token: "
        'name: Parse error at column 5, token "name" (UNQUOTED_IDENTIFIER)',
        "": "--query: invalid JMESPath expression '': cannot be empty",
    }
    for query, message in cases.items():
        assert (
            offline_sig.refused(
                ExitCode.INVALID_ARGUMENT, "sig", "create", "-r", "never", "--query", query
            )
            == message
        )
    assert offline_sig.refused(
        ExitCode.INVALID_ARGUMENT, "sig", "create", "-r", "never", "--query"
    ) == ("--query: expected one argument")


def test_a_query_that_fails_on_the_result_is_one_line_and_exit_18(galleries: SigEnv) -> None:
    line = galleries.refused(ExitCode.INVALID_ARGUMENT, "sig", "list", "--query", "length(name)")
    assert line.startswith(
        "--query: JMESPath expression 'length(name)' failed: In function length()"
    )
    line = galleries.refused(ExitCode.INVALID_ARGUMENT, "sig", "list", "--query", "nosuch(@)")
    assert line.startswith("--query: JMESPath expression 'nosuch(@)' failed: Unknown function")


def test_settings_do_not_leak_between_runs(galleries: SigEnv) -> None:
    ran = galleries.cli("sig", "list", "--query", "[].name", "-o", "json")
    assert sorted(ran.json) == ["aGallery", "myGallery"]
    assert render.settings().query is None
    assert galleries.cli("sig", "list", "-o", "json").json[0]["location"] == "local"
    galleries.cli("sig", "list", "--query", "[")
    assert render.settings() == render.Settings()


# -- az's other global arguments, and `--` ----------------------------------------------------
def test_az_global_flags_are_accepted(galleries: SigEnv) -> None:
    argv = ["sig", "show", "-r", "myGallery", "--query", "name", "-o", "tsv"]
    ran = galleries.cli(*argv, "--only-show-errors", "--subscription", "0000-1111")
    assert (ran.code, ran.out, ran.err) == (0, "myGallery\n", "")
    ran = galleries.cli(*argv, "--subscription=0000", "--verbose")
    assert (ran.code, ran.out) == (0, "myGallery\n")
    assert ran.err == "sigvirt: --subscription ignored: sigvirt has no subscriptions\n"


def test_global_arguments_are_taken_only_before_the_separator() -> None:
    given = globalargs.take(
        ["vm", "ssh", "--debug", "-n", "web", "--query=a", "--", "grep", "--query", "x", "--debug"]
    )
    assert given.args == ("vm", "ssh", "-n", "web", "--", "grep", "--query", "x", "--debug")
    assert (given.query, given.debug, given.verbose) == ("a", True, False)
    given = globalargs.take(["sig", "list", "--query", "b", "--query", "c", "--verbose"])
    assert (given.args, given.query, given.verbose) == (("sig", "list"), "c", True)
    with pytest.raises(InvalidArgument, match="--query: expected one argument"):
        globalargs.take(["sig", "list", "--query", "--", "x"])
    with pytest.raises(InvalidArgument, match="--subscription: expected one argument"):
        globalargs.take(["sig", "list", "--subscription"])


def test_what_follows_the_separator_reaches_the_command_untouched(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`vm ssh -n web -- grep --query x -o tsv --debug` runs that command in the guest: main()
    hands everything after `--` to the command as it is. A stand-in for `vm ssh` (same extra
    arguments setting) keeps this about main()'s argv handling, not about guests."""
    app = typer.Typer()
    vm = typer.Typer()
    app.add_typer(vm, name="vm")
    seen: list[tuple[list[str], bool]] = []

    @vm.command("ssh", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def ssh(ctx: typer.Context, name: Annotated[str, typer.Option("--name", "-n")]) -> None:
        seen.append((["ssh", name, *ctx.args], render.settings().query is not None))

    monkeypatch.setattr(cli, "build", lambda *_words: app)
    argv = ["vm", "ssh", "-n", "web", "--query", "a", "--", "grep", "--query", "x", "-o", "tsv"]
    assert cli.main([*argv, "--debug", "--verbose"]) == 0
    want = ["ssh", "web", "grep", "--query", "x", "-o", "tsv", "--debug", "--verbose"]
    assert seen == [(want, True)], capsys.readouterr().err


@pytest.fixture
def no_query() -> Iterator[None]:
    previous = render.use(render.Settings())
    yield
    render.use(previous)


def test_for_people_means_today_s_tables(no_query: None) -> None:
    assert render.for_people(Output.table)
    assert not render.for_people(Output.tsv)
    render.use(render.Settings(query=formats.compile_query("name")))
    assert not render.for_people(Output.table)
