"""Reading records back: every field's JSON type checked against its annotation, with a short
reason naming the field; and error lines that quote at most ~100 characters of bad input."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import pytest

from sigvirt.catalog import dates, names
from sigvirt.catalog.codec import MAX_INT, from_dict, loads, to_dict
from sigvirt.catalog.records import (
    BootTest,
    BootTestState,
    Definition,
    Gallery,
    ImageVersion,
    Replica,
    ReplicaState,
    StoredSpec,
    VersionState,
)
from sigvirt.errors import InvalidArgument, InvalidName

pytestmark = pytest.mark.offline


class Color(StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Part:
    size: int
    label: str = ""


@dataclass(frozen=True)
class Every:
    """One field of each kind a record may have."""

    text: str
    count: int
    flag: bool
    ratio: float
    maybe: int | None
    choice: Literal["a", "b"]
    color: Color
    part: Part
    parts: tuple[Part, ...]
    words: tuple[str, ...]
    counts: dict[str, int]
    colors: tuple[Color, ...] = ()
    note: str | None = None
    extra: dict[str, int] = field(default_factory=dict)


GOOD: dict[str, Any] = {
    "text": "t", "count": 3, "flag": True, "ratio": 0.5, "maybe": None, "choice": "b",
    "color": "red", "part": {"size": 1}, "parts": [{"size": 2, "label": "x"}],
    "words": ["w"], "counts": {"local": 2}, "colors": ["blue"],
}  # fmt: skip


def test_every_kind_of_field_reads_back() -> None:
    assert from_dict(Every, GOOD) == Every(
        "t", 3, True, 0.5, None, "b", Color.RED, Part(1), (Part(2, "x"),), ("w",),
        {"local": 2}, (Color.BLUE,),
    )  # fmt: skip
    assert from_dict(Every, {**GOOD, "ratio": 2, "maybe": 7, "note": "n"}).ratio == 2
    assert to_dict(from_dict(Every, GOOD)) == {**GOOD, "note": None, "extra": {}, "part": {
        "size": 1, "label": ""}}  # fmt: skip


BIG = 2**63
CASES = [
    ("text", 1, "text: expected a string, found integer 1"),
    ("text", None, "text: expected a string, found null"),
    ("text", ["x"], "text: expected a string, found a list"),
    ("count", "3", "count: expected an integer, found string '3'"),
    ("count", True, "count: expected an integer, found true"),  # bool is no int in a record
    ("count", 3.0, "count: expected an integer, found number 3.0"),
    ("count", -1, f"count: expected an integer from 0 to {MAX_INT}, found integer -1"),
    ("count", BIG, f"count: expected an integer from 0 to {MAX_INT}, found integer {BIG}"),
    ("count", 10**50, f"count: expected an integer from 0 to {MAX_INT}, found a very large integer"),
    ("flag", 1, "flag: expected true or false, found integer 1"),
    ("flag", "true", "flag: expected true or false, found string 'true'"),
    ("ratio", "0.5", "ratio: expected a number, found string '0.5'"),
    ("ratio", False, "ratio: expected a number, found false"),
    ("maybe", "x", "maybe: expected an integer or null, found string 'x'"),
    ("maybe", -5, f"maybe: expected an integer from 0 to {MAX_INT}, found integer -5"),
    ("choice", "c", "choice: expected one of a, b, found string 'c'"),
    ("choice", 1, "choice: expected one of a, b, found integer 1"),
    ("color", "green", "color: 'green' is not one of red, blue"),
    ("color", 3, "color: expected one of red, blue, found integer 3"),
    ("color", {}, "color: expected one of red, blue, found an object"),
    ("part", [], "part: expected a JSON object, found a list"),
    ("part", {}, "part: Part record has no size"),
    ("part", {"size": "1"}, "part.size: expected an integer, found string '1'"),
    ("parts", {}, "parts: expected a list, found an object"),
    ("parts", [1], "parts[0]: expected a JSON object, found integer 1"),
    ("parts", [{"size": 1}, {"size": -1}],
     f"parts[1].size: expected an integer from 0 to {MAX_INT}, found integer -1"),
    ("words", "w", "words: expected a list, found string 'w'"),
    ("words", ["a", 2], "words[1]: expected a string, found integer 2"),
    ("counts", [1], "counts: expected an object, found a list"),
    ("counts", {"local": "2"}, "counts['local']: expected an integer, found string '2'"),
    ("counts", {"local": -2},
     f"counts['local']: expected an integer from 0 to {MAX_INT}, found integer -2"),
    ("colors", ["red", "pink"], "colors[1]: 'pink' is not one of red, blue"),
    ("note", 5, "note: expected a string or null, found integer 5"),
    ("text", "x" * 500, None),  # long strings are fine; error lines shorten them
]  # fmt: skip


@pytest.mark.parametrize(("key", "value", "reason"), CASES)
@pytest.mark.parametrize("complete", [True, False], ids=["every-field", "some-absent"])
def test_a_field_that_does_not_fit_is_named_with_why(
    key: str, value: Any, reason: str | None, complete: bool
) -> None:
    """Both ways through from_dict: every field present (checked at once, in C) and some
    left to their defaults (checked field by field)."""
    data = {**GOOD, **({"note": None, "extra": {}} if complete else {}), key: value}
    if reason is None:
        assert getattr(from_dict(Every, data), key) == value
        return
    with pytest.raises(ValueError) as caught:
        from_dict(Every, data)
    assert str(caught.value) == reason
    assert isinstance(caught.value, TypeError)  # from_dict's errors were TypeErrors: still are


def test_error_lines_show_at_most_forty_characters_of_a_bad_value() -> None:
    with pytest.raises(ValueError) as caught:
        from_dict(Every, {**GOOD, "count": "9" * 10_000})
    assert str(caught.value) == f"count: expected an integer, found string '{'9' * 40}…'"


def test_missing_required_fields_and_unknown_keys() -> None:
    with pytest.raises(TypeError, match=r"^Every record has no count, text$"):
        from_dict(Every, {k: v for k, v in GOOD.items() if k not in ("text", "count")})
    newer = {**GOOD, "from_the_future": [1, {"x": None}], "part": {"size": 1, "new": 2}}
    assert from_dict(Every, newer) == from_dict(Every, GOOD)
    with pytest.raises(TypeError, match=r"^expected a JSON object, found list$"):
        from_dict(Every, [])  # type: ignore[arg-type]


def test_the_real_records_read_back_what_they_wrote() -> None:
    version = ImageVersion(
        "G", "D", "1.0.2", state=VersionState.SUCCEEDED, target_regions={"local": 2},
        replica_count=2, virtual_size=10 << 30, end_of_life="2030-01-01T00:00:00+00:00",
        replicas=(Replica("local", "p", "v", "/p/v", ReplicaState.CORRUPT, 100, "bad", "", 9),),
        warnings=("w",),
        boot_test=BootTest(BootTestState.FAILED, "c" * 64, ("test_x: no",), 2, "a", "b", 1.5),
    )  # fmt: skip
    definition = Definition(
        "G", "D", "P", "O", "S", min_vcpus=2, max_memory_mib=4096,
        test_spec=StoredSpec("c" * 64, "alice", 120, "2030-01-01T00:00:00+00:00"),
    )  # fmt: skip
    for rec in (version, definition, Gallery("G", "d"), ImageVersion("G", "D", "1.0.0")):
        assert from_dict(type(rec), json.loads(json.dumps(to_dict(rec)))) == rec


def test_a_nested_record_of_defaults_is_shared_and_any_other_is_read() -> None:
    """A version's boot test is all defaults in most versions: read as one shared record."""
    plain = json.dumps(to_dict(ImageVersion("G", "D", "1.0.0"))).encode()
    assert loads(ImageVersion, plain).boot_test is loads(ImageVersion, plain).boot_test
    assert loads(ImageVersion, plain).boot_test == BootTest()
    data = to_dict(ImageVersion("G", "D", "1.0.0"))
    data["boot_test"] = {**data["boot_test"], "state": "passed", "seconds": 3}
    read = from_dict(ImageVersion, json.loads(json.dumps(data)))
    assert (read.boot_test.state, read.boot_test.seconds) == (BootTestState.PASSED, 3)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[" * 100_000, "JSON nested too deeply"),
        (b'{"name": "a\\u0000b"}', "name: holds a NUL character"),
        (b'{"x": {"y": ["\\ud800"]}}', "x.y[0]: holds a lone surrogate (not Unicode text)"),
        (b'{"\\udc00": 1}', "'\\udc00': holds a lone surrogate (not Unicode text)"),
        (b"\xed\xa0\x80", "'utf-8' codec can't decode byte 0xed in position 0: invalid "
         "continuation byte"),
        (b'{"a": 1} x', "Extra data: line 1 column 10 (char 9)"),
        (b'{"name": NaN}', "name: expected a string, found number nan"),  # json reads NaN
        (b'{"name": "G", "description": -Infinity}',
         "description: expected a string, found number -inf"),
    ],
)  # fmt: skip
def test_loads_refuses_what_json_lets_through(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        loads(Gallery, raw)
    assert str(caught.value) == reason


def test_loads_takes_surrogate_pairs_and_the_last_of_duplicate_keys() -> None:
    # json.dumps writes an emoji as an escaped surrogate pair: that is real text.
    assert loads(Gallery, json.dumps({"name": "G", "description": "🙂"}).encode()).description
    # Duplicate keys: json keeps the last, as sigvirt does (a record is then checked as
    # read, against its place too: a duplicated "gallery" cannot name two galleries).
    assert loads(Gallery, b'{"name": "X", "name": "G"}').name == "G"
    assert loads(Gallery, b'  {"name": "G"}\n\n').name == "G"  # blanks around it are fine


@pytest.mark.parametrize(
    ("eol", "reason"),
    [
        ("soon", "end_of_life: expected an ISO date, found 'soon'"),
        ("2020-02-30", "end_of_life: expected an ISO date, found '2020-02-30'"),
        ("2030-01-01T25:00", "end_of_life: expected an ISO date, found '2030-01-01T25:00'"),
        ("0001-01-01T00:00:00+01:00", None),
        ("2030-01-01", None),
        ("2030-01-01T10:00:00+02:00", None),
        ("", None),
    ],
)  # fmt: skip
def test_end_of_life_must_be_a_date_latest_can_compare(eol: str, reason: str | None) -> None:
    data = {**to_dict(ImageVersion("G", "D", "1.0.0")), "end_of_life": eol}
    if reason is None:
        assert from_dict(ImageVersion, data).end_of_life == eol
        return
    with pytest.raises(ValueError) as caught:
        from_dict(ImageVersion, data)
    assert str(caught.value) == reason


# -- error lines quote at most ~100 characters of a bad input ---------------------------------
def test_shorten_quotes_as_repr_and_cuts_long_values() -> None:
    assert names.shorten("abc") == "'abc'"
    assert names.shorten("it's") == '"it\'s"'
    assert names.shorten("a\nb") == "'a\\nb'"
    assert names.shorten("x" * 100) == repr("x" * 100)
    assert names.shorten("x" * 101) == f"'{'x' * 100}…'"
    assert names.shorten("x" * 10, 4) == "'xxxx…'"


HUGE = "g" * 10_000


@pytest.mark.parametrize(
    ("check", "message"),
    [
        (lambda: names.gallery_name(HUGE),
         f"gallery name '{'g' * 100}…' is longer than 80 characters"),
        (lambda: names.gallery_name("-" + HUGE[:50]),
         f"gallery name '-{'g' * 50}' is invalid: use letters, digits, '_' and '.', "
         "with '_' and '.' only in the middle (no '-')"),
        (lambda: names.definition_name(HUGE),
         f"image definition name '{'g' * 100}…' is longer than 80 characters"),
        (lambda: names.identifier("publisher", HUGE),
         f"publisher '{'g' * 100}…' is invalid: use letters, digits, '-', '_' and '.' "
         "(at most 128)"),
        (lambda: names.vm_name(HUGE), f"VM name '{'g' * 100}…' is invalid: use letters, "
         "digits and '-', starting with a letter or digit, at most 63 characters"),
        (lambda: names.Version.parse("1." + "9" * 10_000 + ".0"),
         f"image version '1.{'9' * 98}…' is invalid: each part must be at most 2147483647"),
        (lambda: names.Version.parse(HUGE),
         f"image version '{'g' * 100}…' is invalid: use Major.Minor.Patch, e.g. 1.0.2"),
        (lambda: names.parse_image_ref(HUGE),
         f"image '{'g' * 200}…' is invalid: use GALLERY/DEFINITION[/VERSION] or an Azure-style "
         "image id"),
        (lambda: names.parse_image_ref("/" + HUGE), f"image id '/{'g' * 199}…' is invalid: "
         "expected /subscriptions/…/galleries/GALLERY/images/DEFINITION[/versions/VERSION]"),
        (lambda: dates.parse_date(HUGE),
         f"--end-of-life-date '{'g' * 100}…' is not a date (use YYYY-MM-DD)"),
    ],
)  # fmt: skip
def test_a_huge_bad_input_gives_a_short_error_line(check: Any, message: str) -> None:
    with pytest.raises((InvalidName, InvalidArgument)) as caught:
        check()
    assert caught.value.message == message
    assert len(caught.value.message) < 320  # an image id may show 200 characters
