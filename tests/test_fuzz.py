"""Fuzzing the parsers that read what users (or damage) put on disk, with hypothesis.

Three properties, each on a budget CI affords (SIGVIRT_FUZZ_EXAMPLES raises it for a long
local run; nothing is written to a hypothesis database in the checkout):

- the image gate (`imagecheck.sniff`) on byte-level mutations of real qcow2 v2/v3, raw, vmdk,
  qed and iso headers refuses with ImageRejected or accepts; what it accepts as qcow2 passes
  `verify` (qemu-img info and check) or is refused by it, and qemu-img itself shows no backing
  file and no external data file for it;
- the store's record reader, on arbitrary JSON and on mutations of a valid version record,
  returns a record or raises CorruptRecord; a record it returns renders as the CLI shows it;
- `regions.parse`, on arbitrary text and mutations of tests/data/regions/*.yaml, returns a
  config (which dump() writes back to the same config) or a one-line ConfigError.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, configuration, event, example, given, settings
from hypothesis import strategies as st

from sigvirt.catalog import latest
from sigvirt.catalog.records import (
    HIDDEN,
    Definition,
    ImageVersion,
    Replica,
    ReplicaState,
    VersionState,
    aggregate,
    to_dict,
)
from sigvirt.catalog.store import CorruptRecord, Damaged, GalleryStore
from sigvirt.cli import azshape, versions
from sigvirt.cli.render import plain
from sigvirt.errors import CommandFailed, ConfigError, ImageRejected, NotFound
from sigvirt.galleries import definitions, galleries
from sigvirt.hosts import regions
from sigvirt.hosts.qemuimg import QemuImg
from sigvirt.runner import Runner
from sigvirt.versions.imagecheck import sniff, verify
from tests.support import imagefactory as f

pytestmark = pytest.mark.offline

# Hypothesis keeps caches in ./.hypothesis even without a database: not in the checkout (which
# the offline tier's `nobody` can't write anyway), but in a directory of this run's own.
_HOME = tempfile.mkdtemp(prefix="sigvirt-hypothesis-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
configuration.set_hypothesis_home_dir(_HOME)
EXAMPLES = int(os.environ.get("SIGVIRT_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DATA = Path(__file__).parent / "data"


# -- the image gate ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    fields: tuple[tuple[int, int], ...]  # (offset, width) of the header's integer fields


# qcow2 header fields (docs/interop/qcow2.txt): magic, version, backing offset/size, cluster
# bits, size, crypt method, L1 size/offset, refcount table offset/clusters, snapshots, then
# (v3) feature bitmaps, refcount order, header length, compression type.
QCOW2_FIELDS = (
    (0, 4), (4, 4), (8, 8), (16, 4), (20, 4), (24, 8), (32, 4), (36, 4), (40, 8), (48, 8),
    (56, 4), (60, 4), (64, 8), (72, 8), (80, 8), (88, 8), (96, 4), (100, 4), (104, 1),
)  # fmt: skip
QED_FIELDS = ((0, 4), (4, 4), (8, 4), (12, 4), (16, 8), (24, 8), (32, 8), (40, 8), (48, 8))
VMDK_FIELDS = ((0, 4), (4, 4), (8, 4), (12, 8), (20, 8), (28, 8), (36, 8), (44, 4), (56, 8))
INTERESTING = (
    0, 1, 2, 3, 8, 9, 16, 21, 22, 72, 104, 512, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000,
    0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 40, 1 << 46, 1 << 47, 2**63 - 1, 2**63,
    2**64 - 1, 0x44415441, 0x0537BE77, 0x6803F857,
)  # fmt: skip


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Seed, ...]:
    d = tmp_path_factory.mktemp("seeds")
    iso = bytearray(0x9000)
    iso[0x8000:0x8007] = b"\x01CD001\x01"
    raw = bytearray(64 << 10)
    raw[510:512] = b"\x55\xaa"
    made = [
        Seed("qcow2-v3", f.qcow2_v3_with_data(d).read_bytes(), QCOW2_FIELDS),
        Seed("qcow2-v2", f.qcow2_v2(d).read_bytes(), QCOW2_FIELDS),
        Seed("raw", bytes(raw), ()),
        Seed("vmdk", f.foreign(d, "vmdk").read_bytes(), VMDK_FIELDS),
        Seed("qed", f.foreign(d, "qed").read_bytes(), QED_FIELDS),
        Seed("iso", bytes(iso), ()),
    ]
    return tuple(made)


Mutation = tuple[str, int, int, int]  # (kind, offset, width or length, value)
MUTATION = st.tuples(
    st.sampled_from(["flip", "field", "set", "truncate", "extension"]),
    st.integers(0, 1 << 20),
    st.sampled_from([1, 2, 4, 8]),
    st.one_of(st.sampled_from(INTERESTING), st.integers(0, 2**64 - 1)),
)


def mutate(seed: Seed, mutations: list[Mutation]) -> bytes:
    data = bytearray(seed.data)
    for kind, offset, width, value in mutations:
        if kind == "truncate":
            del data[offset % (len(data) + 1) :]
            continue
        if not data:
            continue
        if kind == "flip":  # mostly in the header, sometimes anywhere
            at = offset % (512 if offset % 3 else len(data))
            data[at % len(data)] ^= (value % 255) + 1
        elif kind == "field" and seed.fields:  # an interesting value in a header field
            at, size = seed.fields[offset % len(seed.fields)]
            raw = (value % (1 << (8 * size))).to_bytes(size, "big")
            data[at : at + size] = raw
        elif kind in ("set", "field"):
            at = offset % len(data)
            data[at : at + width] = (value % (1 << (8 * width))).to_bytes(width, "big")
        elif kind == "extension":  # a qcow2 header extension where the header ends
            at = int.from_bytes(data[100:104], "big") if len(data) >= 104 else 72
            ext_type = INTERESTING[offset % len(INTERESTING)] & 0xFFFFFFFF
            name = b"data.raw"[: value % 9]
            data[at : at + 8 + len(name)] = struct.pack(">II", ext_type, len(name)) + name
    return bytes(data)


def qemu_says(path: Path) -> dict[str, Any] | None:
    try:
        return QemuImg(Runner()).info(path, "qcow2")
    except CommandFailed:
        return None  # qemu-img refuses it too: it shows nothing to follow


@FUZZ
@given(
    pick=st.integers(0, 5),
    declared=st.sampled_from([None, "qcow2", "raw"]),
    mutations=st.lists(MUTATION, min_size=1, max_size=4),
)
def test_image_gate_refuses_cleanly_and_what_it_accepts_reaches_outside_nothing(
    seeds: tuple[Seed, ...],
    tmp_path_factory: pytest.TempPathFactory,
    pick: int,
    declared: str | None,
    mutations: list[Mutation],
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzzed.img"
    path.unlink(missing_ok=True)
    path.write_bytes(mutate(seeds[pick], mutations))
    try:
        facts = sniff(path, declared)
    except ImageRejected as err:
        assert "\n" not in err.message
        event(f"{seeds[pick].name}: refused")
        return
    event(f"{seeds[pick].name}: accepted as {facts.format}")
    if facts.format != "qcow2":
        return
    info = qemu_says(path)
    if info is not None:
        data = (info.get("format-specific") or {}).get("data") or {}
        assert "backing-filename" not in info and "full-backing-filename" not in info, info
        assert "data-file" not in data and not data.get("data-file-raw"), info
    try:
        verify(path, facts, QemuImg(Runner()))
        event("qcow2 verified by qemu-img")
    except ImageRejected as err:
        assert "\n" not in err.message


# -- the record reader ------------------------------------------------------------------------
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["G", "D", "1.0.0", "succeeded", "completed", "local", "2020-01-01"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
GOOD_VERSION = to_dict(
    ImageVersion(
        "G", "D", "1.0.0", state=VersionState.SUCCEEDED, target_regions={"local": 1},
        replicas=(Replica("local", "p", "v.qcow2", "/p/v.qcow2", ReplicaState.COMPLETED, 100),),
        warnings=("w",), end_of_life="2030-01-01",
    )
)  # fmt: skip
GOOD_DEFINITION = to_dict(
    Definition("G", "D", "P", "O", "S", min_vcpus=1, end_of_life="2031-01-01")
)


@st.composite
def record_documents(draw: st.DrawFn) -> tuple[str, bytes]:
    """A version or definition record's file: arbitrary JSON, or a valid record's dict with a
    few fields given other values, removed or added, or its serialized bytes cut or flipped."""
    kind = draw(st.sampled_from(["version", "definition"]))
    if draw(st.integers(0, 4)) == 0:
        return kind, json.dumps(draw(JSON)).encode()
    doc = json.loads(json.dumps(GOOD_VERSION if kind == "version" else GOOD_DEFINITION))
    for _ in range(draw(st.integers(1, 3))):
        target = doc
        replicas = doc.get("replicas")
        if isinstance(replicas, list) and replicas and isinstance(replicas[0], dict):
            target = replicas[0] if draw(st.booleans()) else doc
        keys = sorted(target) or ["x"]
        key = draw(st.sampled_from(keys) | st.text(max_size=6))
        action = draw(st.sampled_from(["replace", "remove", "replace", "add"]))
        if action == "remove":
            target.pop(key, None)
        else:
            target[key] = draw(JSON)
    text = json.dumps(doc, indent=2, sort_keys=True).encode()
    if draw(st.integers(0, 4)) == 0:  # damage to the bytes themselves
        at = draw(st.integers(0, len(text)))
        text = text[:at] if draw(st.booleans()) else text[:at] + bytes([draw(st.integers(0, 255))])
    return kind, text


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory: pytest.TempPathFactory) -> GalleryStore:
    store = GalleryStore(tmp_path_factory.mktemp("fuzz-store") / "galleries")
    galleries.create_gallery(store, "G")
    definitions.create_definition(store, "G", "D", definitions.DefinitionInput("P", "O", "S"))
    with store.definition_lock("G", "D"):
        store.create_version(ImageVersion("G", "D", "1.0.0"))
    return store


def _renders(rec: ImageVersion | Definition) -> None:
    """What the commands do with a record the store accepted."""
    if isinstance(rec, ImageVersion):
        aggregate(rec)
        latest.explain_latest([rec])
        json.dumps(plain(versions.row(rec))).encode()
        json.dumps(azshape.version(rec, "rg")).encode()
    json.dumps(plain(rec), ensure_ascii=False).encode()  # every string is real Unicode


@FUZZ
@given(document=record_documents())
# What the tester found (each was an exit 1, or a record believed that should not have been).
@example(document=("version", b"[" * 100_000))
@example(document=("version", json.dumps({**GOOD_VERSION, "replicas": {}}).encode()))
@example(document=("version", json.dumps({**GOOD_VERSION, "target_regions": [1]}).encode()))
@example(document=("version", json.dumps({**GOOD_VERSION, "gallery": "victim"}).encode()))
@example(document=("definition", json.dumps({**GOOD_DEFINITION, "end_of_life": "x"}).encode()))
@example(document=("definition", json.dumps({**GOOD_DEFINITION, "soft_deleted": "0"}).encode()))
def test_record_reader_gives_a_record_or_corrupt_record(
    fuzz_store: GalleryStore, document: tuple[str, bytes]
) -> None:
    kind, raw = document
    store = fuzz_store
    definition = store.definition_dir("G", "D") / "definition.json"
    definition.write_text(json.dumps({**GOOD_DEFINITION, "gallery": "G", "name": "D"}))
    (definition if kind == "definition" else store.version_path("G", "D", "1.0.0")).write_bytes(raw)

    def read(hidden: bool = False) -> ImageVersion | Definition:
        if kind == "version":
            return store.get_version("G", "D", "1.0.0", hidden=hidden)
        return store.get_definition("G", "D", hidden=hidden)

    try:
        rec = read()
    except CorruptRecord as err:
        assert "\n" not in err.message
        event(f"{kind}: refused")
    except NotFound:
        # A well-formed record the store hides from users (soft-deleted, pending deletion)
        # is "not found" by design; read as the recycle bin does, it is whole and hidden.
        rec = read(hidden=True)
        assert (rec.gallery, rec.name) == ("G", "1.0.0" if kind == "version" else "D")
        if isinstance(rec, ImageVersion):
            assert rec.state in HIDDEN, rec.state
        else:
            assert rec.soft_deleted
        event(f"{kind}: hidden")
    else:
        assert (rec.gallery, rec.name) == ("G", "1.0.0" if kind == "version" else "D")
        _renders(rec)
        event(f"{kind}: read")
    if kind == "version":  # a listing hands the damaged record over, and nothing else
        damaged: list[Damaged] = []
        listed = store.list_versions("G", "D", damaged)
        assert len(listed) + len(damaged) == 1


# -- regions.yaml -----------------------------------------------------------------------------
SAMPLES = tuple(p.read_text() for p in sorted((DATA / "regions").glob("*.yaml")))
TOKENS = st.sampled_from(
    [
        "&a ", "*a", "<<: *a", "!!int ", "!!bool ", "!!str ", "!!float ", "!!binary ",
        "!!python/object:os.system ", "? ", "- ", "{", "}", "[", "]", ": ", "\t", "---\n",
        "...\n", "%YAML 1.1\n", '"\\0"', "'", '"', "#", "|\n", ">\n", "~", "null", "é",
        "\u2028", "\ufeff", "uri: ", "pools: ", "ports: ", "accel: ",
    ]
)  # fmt: skip
# What a scalar's value may be replaced with: what PyYAML's resolver calls an int, a bool or
# a float but its constructor can't build, numbers Python won't parse, nesting it won't compose.
VALUES = st.sampled_from(
    [
        "!!int abc", "!!bool maybe", "!!float x", "0b_", "0x_", "0o_", "1" * 5000,
        "9" * 5000 + "-1", "1-" + "9" * 5000, "-1", "65536-70000", "1023-1024", "1e999",
        ".nan", "yes", "~", "''", "[]", "{}", "[" * 2000, "{a: " * 2000, "*x", "&x 1",
        "!!timestamp 2001-13-45", "qemu:///system", "qemu+ssh://u@h/system?keyfile=a&x=1",
        "/abs/path", "relative", "user-forward", "bridge", "auto",
    ]
)  # fmt: skip


@st.composite
def regions_texts(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(max_size=200))
    lines = draw(st.sampled_from(SAMPLES)).splitlines(keepends=True)
    for _ in range(draw(st.integers(1, 3))):
        if not lines:
            lines = [""]
        at = draw(st.integers(0, len(lines) - 1))
        action = draw(
            st.sampled_from(["value", "value", "value", "drop", "copy", "swap", "insert"])
        )
        if action == "value" and (keyed := [i for i, x in enumerate(lines) if ": " in x]):
            at = draw(st.sampled_from(keyed))  # another value for a key, the rest intact
            key = lines[at][: lines[at].index(": ") + 2]
            lines[at] = key + draw(VALUES | VALUES | TOKENS | st.text(max_size=8)) + "\n"
            continue
        line = lines[at]
        if action == "drop":
            del lines[at]
        elif action == "copy":
            lines.insert(at, line)
        elif action == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], line
        else:
            col = draw(st.integers(0, len(line)))
            lines[at] = line[:col] + draw(TOKENS | VALUES | st.text(max_size=8)) + line[col:]
    return "".join(lines)


MULTI = (DATA / "regions" / "multi.yaml").read_text()


@FUZZ
@given(text=regions_texts())
# What fuzzing found in regions.parse (each was an exit 1): PyYAML's recursive composer, its
# int and bool constructors failing on what its resolver let through, and int() refusing
# numbers of more than 4300 digits.
@example(text="regions: " + "[" * 2000)
@example(text=MULTI.replace("clones_per_replica: 8", "clones_per_replica: 0b_"))
@example(text=MULTI.replace("clones_per_replica: 8", "clones_per_replica: !!int abc"))
@example(text=MULTI.replace("clones_per_replica: 8", "clones_per_replica: " + "1" * 5000))
@example(text=MULTI.replace("restrict: false", "restrict: !!bool maybe"))
@example(text=MULTI.replace("ports: 30000-30999", "ports: " + "9" * 5000 + "-1"))
def test_regions_parse_gives_a_config_or_one_config_error_line(text: str) -> None:
    try:
        config = regions.parse(text)
    except ConfigError as err:
        assert "\n" not in err.message and err.message.startswith("regions.yaml:"), err.message
        event("refused")
        return
    event("parsed")
    assert regions.parse(regions.dump(config)).regions == config.regions
