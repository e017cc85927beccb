"""Image definitions: create and update, every field checked the way az checks it; the
boot-test spec a definition carries (`--test-spec`)."""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass
from typing import Any

from sigvirt.catalog import eol, features, latest, names, specs
from sigvirt.catalog.dates import parse_date
from sigvirt.catalog.records import BootTestState, Definition, ImageVersion, now
from sigvirt.catalog.store import GalleryStore
from sigvirt.errors import InvalidArgument, NotFound


@dataclass(frozen=True)
class DefinitionInput:
    publisher: str
    offer: str
    sku: str
    os_type: str = "Linux"
    os_state: str = "Generalized"
    hyper_v_generation: str = "V1"
    architecture: str = "x64"
    min_vcpus: int | None = None
    max_vcpus: int | None = None
    min_memory_mib: int | None = None
    max_memory_mib: int | None = None
    end_of_life: str | None = None
    eula: str = ""
    release_note_uri: str = ""
    description: str = ""
    privacy_statement_uri: str = ""
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    eol_policy: str = ""  # warn | deny; "" = the gallery's
    features: dict[str, str] = dataclasses.field(default_factory=dict)  # features.parse's


_CHOICES = {
    "os_type": ("Linux", "Windows"),
    "os_state": ("Generalized", "Specialized"),
    "hyper_v_generation": ("V1", "V2"),
    "architecture": ("x64", "Arm64"),
}


def _validated(fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    for key, allowed in _CHOICES.items():
        if key in out:
            match = [a for a in allowed if a.lower() == str(out[key]).lower()]
            if not match:
                flag = "--" + key.replace("_", "-")
                raise InvalidArgument(
                    f"{flag} must be one of {', '.join(allowed)} (got {out[key]!r})"
                )
            out[key] = match[0]
    for kind in ("publisher", "offer", "sku"):
        if kind in out:
            names.identifier(kind, out[kind])
    for lo, hi, flag in (
        ("min_vcpus", "max_vcpus", "cpu-core"),
        ("min_memory_mib", "max_memory_mib", "memory"),
    ):
        a, b = out.get(lo), out.get(hi)
        for v, which in ((a, "minimum"), (b, "maximum")):
            if v is not None and v <= 0:
                raise InvalidArgument(f"--{which}-{flag} must be a positive number (got {v})")
        if a is not None and b is not None and a > b:
            raise InvalidArgument(f"--minimum-{flag} {a} is greater than --maximum-{flag} {b}")
    if "end_of_life" in out:
        out["end_of_life"] = parse_date(out["end_of_life"])
    if out.get("eol_policy"):
        out["eol_policy"] = eol.parse_policy(out["eol_policy"])
    if "features" in out:
        out["features"] = features.checked(out["features"])
    return out


def create_definition(
    store: GalleryStore,
    gallery: str,
    name: str,
    spec: DefinitionInput,
    test_spec: str | None = None,
) -> Definition:
    names.gallery_name(gallery)
    names.definition_name(name)
    fields = _validated(dataclasses.asdict(spec))
    data = read_spec(test_spec) if test_spec is not None else b""  # refused before any write
    rec = store.create_definition(Definition(gallery=gallery, name=name, created=now(), **fields))
    return set_test_spec(store, gallery, name, data) if data else rec


def update_definition(
    store: GalleryStore, gallery: str, name: str, allow_update_image: bool = False, **changes: Any
) -> Definition:
    """Change the mutable properties (publisher/offer/sku and OS facts are fixed, as in Azure).
    Features change only with `allow_update_image` (Azure's allowUpdateImage): VMs made before
    keep the devices they were defined with."""
    if changes.get("features") is not None and not allow_update_image:
        raise InvalidArgument(
            "--features can change only with --allow-update-image true, as in Azure "
            "(existing VMs keep their devices; new ones follow the new features)"
        )
    fixed = {
        "publisher",
        "offer",
        "sku",
        "os_type",
        "os_state",
        "hyper_v_generation",
        "architecture",
    }
    if fixed & changes.keys():
        raise InvalidArgument(
            f"{', '.join(sorted(fixed & changes.keys()))} can't change after creation"
        )
    given = {k: v for k, v in changes.items() if v is not None}

    def change(d: Definition) -> Definition:
        merged = _validated({**dataclasses.asdict(d), **given})
        return Definition(**merged)

    return store.update_definition(gallery, name, change)


# -- the boot-test spec ------------------------------------------------------------------------
def read_spec(path: str) -> bytes:
    """`--test-spec FILE`, read (bounded) and checked: UTF-8 Python that compiles and has test
    functions. An empty path ("") means no spec: b"" is returned."""
    # specrun brings paramiko (a tenth of a second): only the commands storing a spec pay it
    from sigvirt.guests import specrun

    if path == "":
        return b""
    flag = f"--test-spec {names.shorten(path, 200)}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{flag}: no such file") from None
    except OSError as err:
        raise InvalidArgument(f"{flag}: {err.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidArgument(f"{flag}: not a regular file")
        data = os.read(fd, specrun.MAX_SPEC_BYTES + 1)
    finally:
        os.close(fd)
    specrun.check_spec(data, "--test-spec")
    return data


def set_test_spec(store: GalleryStore, gallery: str, name: str, data: bytes) -> Definition:
    """Store `data` (checked by read_spec) as the definition's boot-test spec, owned by the
    caller; b"" removes it. Versions published from now on start `pending` while it has one.
    Removing it lets versions still waiting for their first test go (they become `none`, as
    does one whose run was killed); results already recorded stay."""
    store.get_definition(gallery, name)
    store.require(gallery, "contributor", name, "update")
    stored = specs.write(store, gallery, name, data) if data else None
    rec = store.update_definition(
        gallery, name, lambda cur: dataclasses.replace(cur, test_spec=stored)
    )
    specs.prune(store, gallery, name, keep=stored)
    if stored is None:
        for v in store.list_versions(gallery, name):
            if latest.boot_test_now(v.boot_test).state == BootTestState.PENDING:
                store.update_version(gallery, name, v.name, _released)
    return rec


def _released(cur: ImageVersion) -> ImageVersion:
    if latest.boot_test_now(cur.boot_test).state != BootTestState.PENDING:
        return cur  # tested meanwhile, or a live run has it
    test = cur.boot_test.moved(BootTestState.NONE, vm="", runner="")
    return dataclasses.replace(cur, boot_test=test)
