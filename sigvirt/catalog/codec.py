"""Records to JSON and back: to_dict writes a frozen dataclass as plain JSON-able data;
from_dict (and loads, from a file's bytes) reads one back, checking every field's JSON type
against its annotation and naming the field that does not fit.

A record on disk may be damaged (by hand, a bug, a full disk) or hostile (sharing/plan.py turns
records into ACLs), so nothing that does not fit its dataclass gets through. Keys from a newer
sigvirt are ignored. Supported annotations: str, int (never a bool, 0..MAX_INT), bool, float,
`X | None`, Literal choices, enums, nested dataclasses, tuple[X, ...] and dict[str, X].
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import operator
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal, TypeVar

from sigvirt.catalog.dates import stored_date_problem
from sigvirt.catalog.names import shorten
from sigvirt.errors import InternalError

T = TypeVar("T")


def to_dict(record: Any) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    result: dict[str, Any] = conv(record)
    return result


# -- reading records back -----------------------------------------------------------------------
#
# from_dict runs 10,000 times for one long listing: each class's checks are compiled once
# (`_shape`), and a record with every field present, which is what sigvirt writes, is checked
# in a few C-level calls (the tuple of its values' types must be one the annotations allow, its
# integers within range). Only a record that fails that, or lacks fields, is walked field by
# field, to say which field is wrong and why.

MAX_INT = 2**63 - 1  # record integers are sizes, counts, percentages, exit codes: 0..int64
_MAX_COMBINATIONS = 4096  # of field types per class; past that, checks go field by field
NoneType = type(None)
Decoder = Callable[[Any], Any]
_JSON = json.JSONDecoder()


class RecordError(TypeError, ValueError):
    """What in a record's JSON does not fit its dataclass, and where (a field path such as
    `replicas[0].state`). Both a TypeError and a ValueError, as from_dict always raised."""

    def __init__(self, problem: str, where: str = "") -> None:
        self.problem, self.where = problem, where
        super().__init__(f"{where}: {problem}" if where else problem)

    def within(self, outer: str) -> RecordError:
        """The same error, seen from the record that holds this one at `outer`."""
        if not outer:
            return self
        inner = self.where if not self.where or self.where.startswith("[") else f".{self.where}"
        return RecordError(self.problem, outer + inner)


def loads(cls: type[T], raw: bytes) -> T:
    """The record in a file's bytes; ValueError (RecordError, or the JSON decoder's) if the
    bytes are not one."""
    text = raw.decode()  # strict UTF-8: json.loads(bytes) lets encoded surrogates through
    try:
        # raw_decode skips json.loads' checks of what surrounds the document (a fifth of its
        # cost); anything but what sigvirt writes goes through json.loads, for its own error.
        try:
            data, end = _JSON.raw_decode(text)
            tidy = end == len(text) or text[end:] == "\n"
        except ValueError:
            tidy = False
        if not tidy:
            data = json.loads(text)
    except RecursionError:
        raise RecordError("JSON nested too deeply") from None
    # json lets no raw control character into a string, only escapes. A NUL would reach a
    # system call later and a lone surrogate the terminal, both failing far from here, so
    # strings are searched for them, but only when the text holds such an escape at all
    # (json.dumps writes an emoji as a surrogate pair: that one is fine).
    if "\\u" in text and ("\\u0000" in text or "\\ud" in text or "\\uD" in text):
        _check_strings(data)
    return from_dict(cls, data)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """The record `data` describes; RecordError says which field does not fit and why."""
    if not isinstance(data, dict):
        raise RecordError(f"expected a JSON object, found {type(data).__name__}")
    shape = _SHAPES.get(cls) or _shape(cls)
    values = dict(data)
    if len(values) < shape.count:
        # A record written before a field was added: its absent defaulted fields first, so
        # it takes the fast path too (not the field-by-field one, 3x slower per replica).
        values = {**shape.filled, **values}
    try:  # as many keys as fields, and every field found: no key is missing or unknown
        fits = (
            len(values) == shape.count and tuple(map(type, shape.getter(values))) in shape.accepted
        )
    except KeyError:
        fits = False
    if fits and (ints := shape.ints(values)):  # min and max compare in C, allocating nothing
        fits = min(ints) >= 0 and max(ints) <= MAX_INT
    name = ""
    try:
        if fits:
            for name, decode in shape.decoders:
                values[name] = decode(values[name])
        else:
            values = _fitted(cls, shape, values)  # raises unless only absent fields failed
            for name, decode in shape.decoders:
                if name in values:
                    values[name] = decode(values[name])
            values = {**shape.defaults, **values}
            for name, factory in shape.factories:
                if name not in values:
                    values[name] = factory()
    except RecordError as err:
        raise err.within(name) from None
    if not shape.plain:
        return cls(**values)
    # A frozen dataclass's __init__ sets each field through object.__setattr__, which made
    # it most of the cost of listing 10,000 versions; with every field present and no
    # __post_init__, filling __dict__ builds the same record.
    record: T = object.__new__(cls)
    record.__dict__.update(values)
    return record


def _fitted(cls: type[Any], shape: _Shape, values: dict[str, Any]) -> dict[str, Any]:
    """The values of the fields present (keys from a newer sigvirt are ignored), each
    checked; RecordError for a required field missing or the first field that misfits."""
    values = {k: v for k, v in values.items() if k in shape.names}
    if missing := shape.required - values.keys():
        raise RecordError(f"{cls.__name__} record has no {', '.join(sorted(missing))}")
    for f in shape.fields:
        if f.name in values:
            try:
                _fits(f, values[f.name])
            except RecordError as err:
                raise err.within(f.name) from None
    return values


@dataclass(frozen=True)
class _Field:
    name: str
    types: tuple[type, ...]  # the JSON types its value may have
    expected: str  # those, in words
    decode: Decoder | None  # converts (and checks) the value further; None: kept as it is
    integer: bool = False  # an int: within 0..MAX_INT


def _fits(f: _Field, value: Any) -> None:
    if type(value) not in f.types:
        raise RecordError(f"expected {f.expected}, found {_found(value)}")
    if f.integer and value is not None and not 0 <= value <= MAX_INT:
        raise RecordError(f"expected an integer from 0 to {MAX_INT}, found {_found(value)}")


def _found(value: Any) -> str:
    """A JSON value as an error line may show it: short, on one line."""
    if value is None or type(value) is bool:
        return json.dumps(value)
    if type(value) is int:
        return f"integer {value}" if value.bit_length() <= 128 else "a very large integer"
    if type(value) is float:
        return f"number {value!r}"
    if type(value) is str:
        return f"string {shorten(value, 40)}"
    if type(value) is list:
        return "a list"
    return "an object" if type(value) is dict else type(value).__name__


def _key(key: str) -> str:
    return key if key.isidentifier() and len(key) <= 40 else shorten(key, 40)


def _check_strings(data: Any) -> None:
    """Refuse a NUL or a lone surrogate in any string or key (a loop: data may nest deep)."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, dict):
            for k, v in value.items():
                inner = f"{where}.{_key(k)}" if where else _key(k)
                stack += [(inner, k), (inner, v)]
        elif isinstance(value, list):
            stack += [(f"{where}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, str):
            if "\x00" in value:
                raise RecordError("holds a NUL character", where)
            try:
                value.encode()
            except UnicodeEncodeError:
                raise RecordError("holds a lone surrogate (not Unicode text)", where) from None


@dataclass(frozen=True)
class _Shape:
    names: frozenset[str]
    count: int  # of fields
    required: frozenset[str]
    defaults: dict[str, Any]
    factories: tuple[tuple[str, Callable[[], Any]], ...]
    fields: tuple[_Field, ...]
    getter: Callable[[dict[str, Any]], tuple[Any, ...]]  # every field's value, in order
    accepted: frozenset[tuple[type, ...]]  # every allowed tuple of those values' types
    ints: Callable[[dict[str, Any]], tuple[Any, ...]]  # the int fields' values, but nulls
    decoders: tuple[tuple[str, Decoder], ...]  # fields whose JSON value needs converting
    plain: bool  # no __post_init__ or __slots__: __dict__ may be filled directly
    filled: dict[str, Any]  # the defaults, as JSON would hold them (a record's absent fields)


_SHAPES: dict[type[Any], _Shape] = {}  # a plain dict: a lookup costs less than @cache's


def _shape(cls: Any) -> _Shape:
    # Resolved once per class: get_type_hints per record made listing 10,000 versions slow.
    hints = typing.get_type_hints(cls)
    dfields = dataclasses.fields(cls)
    fields = tuple(_compile(hints[f.name], f.name) for f in dfields)
    combinations = 1
    for f in fields:
        combinations *= len(f.types)
    accepted = frozenset(
        itertools.product(*(f.types for f in fields)) if combinations <= _MAX_COMBINATIONS else ()
    )
    _SHAPES[cls] = _Shape(
        names=frozenset(f.name for f in dfields),
        count=len(dfields),
        required=frozenset(
            f.name
            for f in dfields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ),
        defaults={f.name: f.default for f in dfields if f.default is not dataclasses.MISSING},
        factories=tuple(
            (f.name, f.default_factory)
            for f in dfields
            if f.default_factory is not dataclasses.MISSING
        ),
        fields=fields,
        getter=_getter([f.name for f in fields]),
        accepted=accepted,
        ints=_ints([f for f in fields if f.integer]),
        decoders=tuple((f.name, f.decode) for f in fields if f.decode is not None),
        plain=not hasattr(cls, "__post_init__") and "__slots__" not in vars(cls),
        filled={
            f.name: f.default for f in dfields if type(f.default) in (str, int, bool, NoneType)
        },
    )
    return _SHAPES[cls]


def _ints(fields: list[_Field]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """The values of the int fields (those not null: `int | None` fields may be)."""
    values = _getter([f.name for f in fields])
    if any(NoneType in f.types for f in fields):
        return lambda record: tuple(v for v in values(record) if v is not None)
    return values


def _getter(names: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """itemgetter that always returns a tuple (it returns the bare value for one name)."""
    if len(names) == 1:
        only = names[0]
        return lambda values: (values[only],)
    if not names:
        return lambda values: ()
    return operator.itemgetter(*names)


def _date_problem(value: Any) -> Any:
    if problem := stored_date_problem(value):
        raise RecordError(problem)
    return value


_SHA256 = re.compile(r"[0-9a-f]{64}")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?")


def _sha256(value: Any) -> Any:
    if value and not _SHA256.fullmatch(value):
        raise RecordError(f"expected a sha256 (64 hex digits), found {_found(value)}")
    return value


def _user(value: Any) -> Any:
    # A spec runs as this user (runuser -u): only what a user name can be gets through.
    if value and not _USER.fullmatch(value):
        raise RecordError(f"expected a user name, found {_found(value)}")
    return value


# Strings with a format of their own, by field name: end_of_life is compared with today, and
# soft_deleted with the retention (any other non-empty text would hide a record for good); a
# boot-test spec's sha256 names its file and an owner is who the spec runs as.
_FORMATS: dict[str, Decoder] = {
    "end_of_life": _date_problem,
    "soft_deleted": _date_problem,
    "spec_sha256": _sha256,
    "owner": _user,
}


def _compile(hint: Any, name: str) -> _Field:
    """How a field of this annotation is checked and decoded."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union) and len(args) == 2 and NoneType in args:
        inner = _compile(args[0] if args[1] is NoneType else args[1], name)
        decode = inner.decode
        return _Field(
            name,
            (*inner.types, NoneType),
            f"{inner.expected} or null",
            None if decode is None else lambda v: None if v is None else decode(v),
            inner.integer,
        )
    simple = {str: "a string", int: "an integer", bool: "true or false"}
    if hint in simple:
        return _Field(name, (hint,), simple[hint], _FORMATS.get(name), hint is int)
    if hint is float:
        return _Field(name, (int, float), "a number", None)
    if origin is Literal:
        return _choice(name, args)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return _enum(name, hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _Field(name, (dict,), "a JSON object", _nested(hint))
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _Field(name, (list,), "a list", _tuple_of(_compile(args[0], "")))
    if origin is dict and args[0] is str:
        return _Field(name, (dict,), "an object", _dict_of(_compile(args[1], "")))
    raise TypeError(f"a record field cannot be {hint!r} ({name})")


def _nested(cls: type[Any]) -> Decoder:
    """A record inside a record. One that is all defaults (a version's boot test, in a
    definition without a spec) is the same frozen record every time: a dict comparison
    instead of a from_dict per version in a long listing."""
    decode = functools.partial(from_dict, cls)
    try:
        default = cls()
    except TypeError:  # it has required fields
        return decode
    as_json = json.loads(json.dumps(to_dict(default)))

    def decoded(value: Any) -> Any:
        return default if value == as_json else decode(value)

    return decoded


def _choice(name: str, choices: tuple[Any, ...]) -> _Field:
    allowed = frozenset(choices)
    expected = f"one of {', '.join(map(str, choices))}"

    def one_of(value: Any) -> Any:
        if value not in allowed:
            raise RecordError(f"expected {expected}, found {_found(value)}")
        return value

    return _Field(name, tuple({type(c) for c in choices}), expected, one_of)


def _enum(name: str, enum: type[Enum]) -> _Field:
    members = enum._value2member_map_  # a dict lookup: 40,000 of these in a long listing
    allowed = ", ".join(map(str, members))

    def to_member(value: Any) -> Any:
        try:
            return members[value]
        except KeyError:
            raise RecordError(f"{shorten(str(value), 40)} is not one of {allowed}") from None

    # JSON holds the value; a dict made in Python (to_dict's) may hold the member itself.
    kinds = (*{type(v) for v in members}, enum)
    return _Field(name, kinds, f"one of {allowed}", to_member)


# Containers hold one or two items (a replica, a region): a plain loop over them is what costs
# least; the same loop, item by item, says which one is wrong.


def _tuple_of(item: _Field) -> Decoder:
    kinds, integer, decode = item.types, item.integer, item.decode

    def to_tuple(value: list[Any]) -> tuple[Any, ...]:
        for v in value:
            if type(v) not in kinds or (integer and v is not None and not 0 <= v <= MAX_INT):
                break
        else:
            try:
                return tuple(value) if decode is None else tuple(map(decode, value))
            except RecordError:
                pass  # raised again below, with its index
        for i, v in enumerate(value):
            try:
                _fits(item, v)
                if decode is not None:
                    decode(v)
            except RecordError as err:
                raise err.within(f"[{i}]") from None
        raise InternalError("unreachable: an item failed above")

    return to_tuple


def _dict_of(item: _Field) -> Decoder:
    kinds, integer, decode = item.types, item.integer, item.decode

    def checked(value: dict[Any, Any]) -> dict[str, Any]:
        for k, v in value.items():
            if (
                type(k) is not str
                or type(v) not in kinds
                or (integer and v is not None and not 0 <= v <= MAX_INT)
            ):
                break
        else:
            if decode is None:
                return value
            try:
                return {k: decode(v) for k, v in value.items()}
            except RecordError:
                pass  # raised again below, with its key
        for k, v in value.items():
            try:
                if type(k) is not str:
                    raise RecordError(f"expected a string key, found {_found(k)}")
                _fits(item, v)
                if decode is not None:
                    decode(v)
            except RecordError as err:
                raise err.within(f"[{shorten(str(k), 40)}]") from None
        raise InternalError("unreachable: an item failed above")

    return checked
