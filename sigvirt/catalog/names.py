"""Names as Azure has them, and image references in every form a user types."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from sigvirt.errors import InvalidName

_GALLERY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.]{0,78}[A-Za-z0-9])?")
_DEFINITION = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,78}[A-Za-z0-9_-])?")
_IDENTIFIER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,126}[A-Za-z0-9_-])?")
_VM = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})?")
INT32_MAX = 2**31 - 1
# An Azure image id is ~170 characters (subscription GUID, resource group, names): error lines
# show one whole, and cut only what no real id reaches.
REF_LIMIT = 200


def shorten(value: str, limit: int = 100) -> str:
    """`value` quoted as repr() quotes it, cut after `limit` characters with '…': an error line
    shows what was typed (or found in a file) without repeating 10,000 characters of it."""
    return repr(value) if len(value) <= limit else repr(value[:limit] + "…")


def gallery_name(name: str) -> str:
    if len(name) > 80:
        raise InvalidName(f"gallery name {shorten(name)} is longer than 80 characters")
    if not _GALLERY.fullmatch(name):
        raise InvalidName(
            f"gallery name {shorten(name)} is invalid: use letters, digits, '_' and '.', "
            "with '_' and '.' only in the middle (no '-')"
        )
    return name


def definition_name(name: str) -> str:
    if len(name) > 80:
        raise InvalidName(f"image definition name {shorten(name)} is longer than 80 characters")
    if not _DEFINITION.fullmatch(name):
        raise InvalidName(
            f"image definition name {shorten(name)} is invalid: use letters, digits, '-', '_' "
            "and '.', starting with a letter or digit and not ending with '.'"
        )
    return name


def identifier(kind: str, value: str) -> str:
    """publisher / offer / sku."""
    if not _IDENTIFIER.fullmatch(value):
        raise InvalidName(
            f"{kind} {shorten(value)} is invalid: "
            "use letters, digits, '-', '_' and '.' (at most 128)"
        )
    return value


_RESOURCE_GROUP = re.compile(r"[-\w._()]{0,89}[-\w_()]")


def resource_group(name: str) -> str:
    """A resource group's name as Azure allows it (1-90 of letters, digits, -, _, ., (, ),
    not ending in '.'): sigvirt has no groups, but the name goes into resource ids."""
    if not _RESOURCE_GROUP.fullmatch(name):
        raise InvalidName(
            f"resource group {shorten(name)} is invalid: 1-90 letters, digits, '-', '_', '.', "
            "'(' and ')', not ending with '.'"
        )
    return name


def vm_name(name: str) -> str:
    """VM and scale set names double as hostnames and libvirt domain names."""
    if not _VM.fullmatch(name):
        raise InvalidName(
            f"VM name {shorten(name)} is invalid: use letters, digits and '-', "
            "starting with a letter or digit, at most 63 characters"
        )
    return name


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> Version:
        parts = text.split(".")
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
            raise InvalidName(
                f"image version {shorten(text)} is invalid: use Major.Minor.Patch, e.g. 1.0.2"
            )
        if any(len(p) > 1 and p.startswith("0") for p in parts):
            raise InvalidName(f"image version {shorten(text)} is invalid: no leading zeros")
        # Lengths first: int() refuses more than 4300 digits with a ValueError of its own.
        nums = [int(p) if len(p) <= 10 else INT32_MAX + 1 for p in parts]
        if any(n > INT32_MAX for n in nums):
            raise InvalidName(
                f"image version {shorten(text)} is invalid: each part must be at most {INT32_MAX}"
            )
        return cls(*nums)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self.key < other.key


@dataclass(frozen=True)
class ImageRef:
    """gallery/definition[/version]; version None means latest."""

    gallery: str
    definition: str
    version: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.gallery, self.definition, self.version) if p)

    @property
    def definition_ref(self) -> str:
        return f"{self.gallery}/{self.definition}"


def parse_image_ref(text: str) -> ImageRef:
    """`G/D/1.0.2`, `G/D` or `G/D/latest` (= latest), or the Azure resource id
    `/subscriptions/…/providers/Microsoft.Compute/galleries/G/images/D[/versions/V]`."""
    if text.startswith("/"):
        parts = text.strip("/").split("/")
        lower = [p.lower() for p in parts]
        bad_id = InvalidName(
            f"image id {shorten(text, REF_LIMIT)} is invalid: expected "
            "/subscriptions/…/galleries/GALLERY/images/DEFINITION[/versions/VERSION]"
        )
        try:
            g = lower.index("galleries")
            gallery, images_kw, definition = parts[g + 1], lower[g + 2], parts[g + 3]
        except (ValueError, IndexError):
            raise bad_id from None
        rest = lower[g + 4 :]
        if images_kw != "images" or (rest and (len(rest) != 2 or rest[0] != "versions")):
            raise bad_id
        version = parts[g + 5] if rest else None
    else:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidName(
                f"image {shorten(text, REF_LIMIT)} is invalid: use GALLERY/DEFINITION[/VERSION] "
                "or an Azure-style image id"
            )
        gallery, definition = parts[0], parts[1]
        version = parts[2] if len(parts) == 3 else None
    if version is not None and version.lower() == "latest":
        version = None
    gallery_name(gallery)
    definition_name(definition)
    if version is not None:
        Version.parse(version)
    return ImageRef(gallery, definition, version)
