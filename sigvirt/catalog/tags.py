"""Tags as az takes them: `--tags key[=value] …`, `--set tags.KEY=VALUE`, `--remove tags.KEY`.

Azure's limits apply (50 tags, names up to 512 characters, values up to 256), so a tag a
script sets here would also be accepted there.
"""

from __future__ import annotations

from sigvirt.catalog.names import shorten
from sigvirt.errors import InvalidArgument

MAX_TAGS = 50
MAX_NAME = 512
MAX_VALUE = 256
_FORBIDDEN = set("<>%&\\?/")  # characters Azure refuses in tag names


def parse(items: list[str] | None) -> dict[str, str] | None:
    """`--tags` values: None when not given, {} for `--tags ""` (clear), else name → value."""
    if items is None:
        return None
    out: dict[str, str] = {}
    for item in items:
        if item == "":
            continue
        name, _, value = item.partition("=")
        out[check_name(name)] = check_value(name, value)
    if len(out) > MAX_TAGS:
        raise InvalidArgument(f"--tags: at most {MAX_TAGS} tags (got {len(out)})")
    return out


def check_name(name: str) -> str:
    if not name or len(name) > MAX_NAME or _FORBIDDEN & set(name) or not name.isprintable():
        raise InvalidArgument(
            f"tag name {shorten(name)} is invalid: 1-{MAX_NAME} printable characters, "
            "none of < > % & \\ ? /"
        )
    return name


def check_value(name: str, value: str) -> str:
    if len(value) > MAX_VALUE or not value.isprintable():
        raise InvalidArgument(
            f"tag {shorten(name)}: value {shorten(value)} is invalid (at most {MAX_VALUE} "
            "printable characters)"
        )
    return value


def merged(current: dict[str, str], replace_all: dict[str, str] | None) -> dict[str, str]:
    """`--tags` on an update replaces the whole set, as az does."""
    return dict(current) if replace_all is None else dict(replace_all)
