"""The regions configuration: which libvirt hosts and storage pools sigvirt may use.

regions.yaml is read through PyYAML's node API rather than safe_load so that every error
names its exact line, and so that duplicate keys (which safe_load silently collapses to the
last one) are refused instead of half-applied.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, NoReturn, cast, get_args

import yaml

from sigvirt.errors import ConfigError, NotFound
from sigvirt.hosts.uri import LibvirtUri, UriProblem

Accel = Literal["kvm", "tcg"]  # what a guest runs under
AccelSetting = Literal["auto", "kvm", "tcg"]  # what a region asks for (auto: KVM if usable)
ACCELS: tuple[str, ...] = get_args(AccelSetting)
NetworkKind = Literal["user-forward", "network", "bridge"]
NETWORK_KINDS: tuple[str, ...] = get_args(NetworkKind)

ENV_REGIONS = "SIGVIRT_REGIONS"
ENV_GALLERY_ROOT = "SIGVIRT_GALLERY_ROOT"
SYSTEM_REGIONS = Path("/etc/sigvirt/regions.yaml")
DEFAULT_GALLERY_ROOT = Path("/var/lib/sigvirt/galleries")
DEFAULT_PORT_RANGE = (22200, 23199)
PORT_MIN, PORT_MAX = 1024, 65535  # forwards bind as an unprivileged QEMU: no ports below 1024

# The default regions.yaml sigvirt ships sits at the top of the checkout: the one copy.
SHIPPED_REGIONS = Path(__file__).resolve().parents[2] / "regions.yaml"

_TOP_KEYS = ("gallery_root", "regions", "replication")
_REPLICATION_KEYS = ("max_streams_out", "max_streams_in", "costs", "direct_ssh")
MAX_STREAMS = 64
_REGION_KEYS = ("uri", "pools", "accel", "network", "clones_per_replica", "description")
_POOL_KEYS = ("name", "path", "storage_type")
# Azure's storage account types: a pool labelled with one takes the replicas of target
# regions asked for with it (`--target-regions east=2=premium_lrs`).
STORAGE_TYPES = ("Standard_LRS", "Standard_ZRS", "Premium_LRS", "PremiumV2_LRS")
_NETWORK_KEYS = ("type", "restrict", "ports", "name")
_REGION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# At most 5 digits: more make no port, and int() refuses more than 4300 with a ValueError.
_PORTS = re.compile(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*")
_TAG = "tag:yaml.org,2002:"
_PLAIN_KINDS = {"int": "integer", "bool": "boolean", "float": "number"}
_TOP = "top level"  # the key path of the document itself
_REGIONS_WHAT = "a mapping of region names to their settings"


@dataclass(frozen=True)
class Network:
    """How the guest's NIC reaches the outside.

    user-forward: QEMU user networking with a port forward bound on the host's 127.0.0.1
    (no bridge, no NAT network; the only option on sandboxed hosts). network/bridge: a
    libvirt network or host bridge for real labs; the address comes from DHCP leases or
    the guest agent.
    """

    kind: NetworkKind = "user-forward"
    source: str = ""  # network or bridge name
    host_port: int = 0  # user-forward only
    restrict: bool = True  # user-forward: no guest-initiated traffic


@dataclass(frozen=True)
class PoolConfig:
    name: str
    path: Path | None = None  # None: the pool must already exist; sigvirt never creates it
    storage_type: str = ""  # one of STORAGE_TYPES, or unlabelled


@dataclass(frozen=True)
class RegionConfig:
    name: str
    uri: str
    pools: tuple[PoolConfig, ...]
    accel: AccelSetting = "auto"
    network: Network = field(default_factory=Network)
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE  # user-forward SSH forwards only
    clones_per_replica: int = 0  # 0: unlimited
    description: str = ""

    @cached_property
    def libvirt_uri(self) -> LibvirtUri:
        return LibvirtUri.parse(self.uri)

    @property
    def is_local(self) -> bool:
        """True when the host's files are this machine's files (no transport needed)."""
        return self.libvirt_uri.is_local


@dataclass(frozen=True)
class ReplicationConfig:
    """How a version fans out to many regions (`versions/fanout.py`): streams one host sends
    and receives at once, and the cost of copying from one region to another (lower is
    nearer; a pair not listed costs 1)."""

    max_streams_out: int = 2
    max_streams_in: int = 2
    costs: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (src, dst) → cost
    # This machine's replicas go to a qemu+ssh host over one ssh into `cat` (hosts/sshpush.py),
    # as fast as scp, rather than through libvirt's stream relay.
    direct_ssh: bool = True


@dataclass(frozen=True)
class RegionsConfig:
    path: Path | None  # the file read (None: parsed from text)
    gallery_root: Path
    regions: Mapping[str, RegionConfig] = field(default_factory=dict)  # in file order
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)

    def __post_init__(self) -> None:
        # A private copy, so the caller's dict cannot change a frozen config afterwards.
        object.__setattr__(self, "regions", dict(self.regions))
        for key, region in self.regions.items():
            if key != region.name:
                raise ValueError(f"region {region.name!r} filed under {key!r}")

    def region(self, name: str) -> RegionConfig:
        try:
            return self.regions[name]
        except KeyError:
            known = ", ".join(self.regions) or "none"
            raise NotFound(f"region {name!r} not found (known: {known})") from None


# -- value checks, shared by the parser and with_region ----------------------------------------
def _closest(word: str, choices: tuple[str, ...]) -> str:
    match = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _region_name_problem(name: str) -> str | None:
    if _REGION_NAME.fullmatch(name):
        return None
    return f"invalid region name {name!r} (1-64 letters, digits, '-' or '_')"


def _uri_problem(uri: str) -> str | None:
    try:
        LibvirtUri.parse(uri)
    except UriProblem as err:
        return str(err)
    return None


def _libvirt_name_problem(name: str) -> str | None:
    # libvirt refuses '/' in pool and network names; blanks are always a copy-paste slip.
    if not name or "/" in name or any(c.isspace() or not c.isprintable() for c in name):
        return f"must be a non-empty name without '/' or blanks (got {name!r})"
    return None


def _path_problem(path: str) -> str | None:
    if "\0" in path:
        return f"must not contain a NUL byte (got {path[:100]!r})"
    return None if path.startswith("/") else f"must be an absolute path (got {path[:100]!r})"


def _ports_problem(low: int, high: int) -> str | None:
    if low > high:
        return f"range is inverted: {low} is above {high} (write LOW-HIGH)"
    if low < PORT_MIN or high > PORT_MAX:
        return f"must lie within {PORT_MIN}-{PORT_MAX} (got {low}-{high})"
    return None


def _budget_problem(budget: int) -> str | None:
    return None if budget >= 0 else f"must be 0 (unlimited) or more (got {budget})"


# -- the YAML walker ------------------------------------------------------------------------
def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = node.tag.removeprefix(_TAG)
    if kind == "null":
        return "null"
    value = node.value if len(node.value) <= 60 else node.value[:57] + "..."
    if kind in _PLAIN_KINDS:  # numbers and booleans read best unquoted, as written
        return f"{_PLAIN_KINDS[kind]} {value}"
    return f"{'string' if kind == 'str' else kind} {value!r}"


class _Walker:
    """Typed reads from composed YAML nodes; every failure names source, line and key path."""

    def __init__(self, source: str, loader: yaml.SafeLoader) -> None:
        self.source = source
        self.loader = loader

    def fail(self, at: yaml.Node | yaml.Mark, key: str, problem: str) -> NoReturn:
        mark = at if isinstance(at, yaml.Mark) else at.start_mark
        line = mark.line + 1
        where = f"{self.source}:{line}"
        raise ConfigError(f"{where}: {key}: {problem}", line=line, key=key, problem=problem)

    def mapping(
        self, node: yaml.Node, key: str, allowed: tuple[str, ...] | None, what: str = "a mapping"
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Keys to (key node, value node), in file order; allowed=None takes any key."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, key, f"must be {what} (got {_describe(node)})")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            if knode.tag == _TAG + "merge":
                self.fail(knode, key, "merge keys ('<<') are not supported")
            if not isinstance(knode, yaml.ScalarNode) or knode.tag == _TAG + "null":
                self.fail(knode, key, f"keys must be names (got {_describe(knode)})")
            name = knode.value
            if allowed is not None and name not in allowed:
                hint = _closest(name, allowed) or f" (expected one of {', '.join(allowed)})"
                self.fail(knode, key, f"unknown key {name!r}{hint}")
            if name in out:
                first = out[name][0].start_mark.line + 1
                self.fail(knode, key, f"duplicate key {name!r} (first on line {first})")
            out[name] = (knode, vnode)
        return out

    def require(
        self, m: dict[str, tuple[yaml.Node, yaml.Node]], name: str, key: str, at: yaml.Node
    ) -> yaml.Node:
        if name not in m:
            self.fail(at, key, f"missing key {name!r}")
        return m[name][1]

    def scalar(self, node: yaml.Node, key: str, kind: str, what: str) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _TAG + kind:
            self.fail(node, key, f"must be {what} (got {_describe(node)})")
        try:
            return self.loader.construct_object(node)
        except (ValueError, KeyError):
            # PyYAML's own constructors fail on what its resolver let through: `!!int abc`,
            # `0b_`, `!!bool maybe`, an integer of more than 4300 digits.
            self.fail(node, key, f"must be {what} (got {_describe(node)}, which does not parse)")

    def string(self, node: yaml.Node, key: str, check: Any = None) -> str:
        value = cast(str, self.scalar(node, key, "str", "a string"))
        if check is not None and (problem := check(value)):
            self.fail(node, key, problem)
        return value

    def choice(self, node: yaml.Node, key: str, choices: tuple[str, ...]) -> str:
        one_of = f"one of {', '.join(choices)}"
        value = self.scalar(node, key, "str", one_of)
        if value not in choices:
            self.fail(node, key, f"must be {one_of} (got {value!r})")
        return cast(str, value)


def _compose(text: str, source: str) -> tuple[yaml.SafeLoader, yaml.Node | None]:
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # the reader checks every character here already
        return loader, loader.get_single_node()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else f"{source}:1"
        if err.context == "expected a single document in the stream":
            problem = "only one YAML document is allowed (a second one starts here)"
        else:
            problem = str(err.problem)
            if err.context and err.context_mark and err.context_mark is not mark:
                problem += f" ({err.context} on line {err.context_mark.line + 1})"
        one_line = " ".join(problem.split())  # the promise is one line per error
        raise ConfigError(f"{where}: YAML syntax error: {one_line}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        mark = loader.get_mark() if loader is not None else None
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else f"{source}:1"
        raise ConfigError(f"{where}: YAML syntax error: collections nested too deeply") from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        raise ConfigError(
            f"{source}:{line}:{column}: YAML syntax error: {err.reason} (U+{err.character:04X})"
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def parse(text: str, source: str = "regions.yaml") -> RegionsConfig:
    """The regions configuration in `text`; `source` names it in error messages."""
    loader, root = _compose(text, source)
    if root is None:
        raise ConfigError(f"{source}:1: {_TOP}: the file is empty (expected a 'regions' mapping)")
    w = _Walker(source, loader)
    top = w.mapping(root, _TOP, _TOP_KEYS, "a mapping with a 'regions' key")
    gallery_root = DEFAULT_GALLERY_ROOT
    if "gallery_root" in top:
        gallery_root = Path(w.string(top["gallery_root"][1], "gallery_root", _path_problem))
    regions_node = w.require(top, "regions", _TOP, root)
    regions = {}
    for name, (knode, vnode) in w.mapping(regions_node, "regions", None, _REGIONS_WHAT).items():
        if problem := _region_name_problem(name):
            w.fail(knode, "regions", problem)
        regions[name] = _region(w, name, knode, vnode)
    if not regions:
        w.fail(regions_node, "regions", "no regions defined (need at least one)")
    replication = ReplicationConfig()
    if "replication" in top:
        replication = _replication(w, top["replication"][1], regions)
    return RegionsConfig(None, gallery_root, regions, replication)


def _replication(w: _Walker, node: yaml.Node, regions: Mapping[str, object]) -> ReplicationConfig:
    m = w.mapping(node, "replication", _REPLICATION_KEYS)
    limits = {}
    for name in ("max_streams_out", "max_streams_in"):
        if name in m:
            vnode = m[name][1]
            value = cast(int, w.scalar(vnode, f"replication.{name}", "int", "an integer"))
            if not 1 <= value <= MAX_STREAMS:
                w.fail(vnode, f"replication.{name}", f"must be 1..{MAX_STREAMS} (got {value})")
            limits[name] = value
    costs: dict[tuple[str, str], float] = {}
    if "costs" in m:
        what = "a mapping of source regions to {destination region: cost}"
        by_source = w.mapping(m["costs"][1], "replication.costs", None, what)
        for src, (knode, vnode) in by_source.items():
            if src not in regions:
                w.fail(knode, "replication.costs", f"no region {src!r} in regions")
            key = f"replication.costs.{src}"
            for dst, (dknode, cnode) in w.mapping(vnode, key, None).items():
                if dst not in regions:
                    w.fail(dknode, key, f"no region {dst!r} in regions")
                if isinstance(cnode, yaml.ScalarNode) and cnode.tag == _TAG + "int":
                    cost = float(w.scalar(cnode, f"{key}.{dst}", "int", "a number"))
                else:
                    cost = float(w.scalar(cnode, f"{key}.{dst}", "float", "a number"))
                if not 0 <= cost <= 1e6:
                    w.fail(cnode, f"{key}.{dst}", f"must be 0..1000000 (got {cost:g})")
                costs[(src, dst)] = cost
    direct = True
    if "direct_ssh" in m:
        direct = bool(
            w.scalar(m["direct_ssh"][1], "replication.direct_ssh", "bool", "true or false")
        )
    return ReplicationConfig(**limits, costs=costs, direct_ssh=direct)


def _region(w: _Walker, name: str, knode: yaml.Node, node: yaml.Node) -> RegionConfig:
    key = f"regions.{name}"
    m = w.mapping(node, key, _REGION_KEYS)
    uri = w.string(w.require(m, "uri", key, knode), f"{key}.uri", _uri_problem)
    pools = _pools(w, f"{key}.pools", w.require(m, "pools", key, knode))
    accel = "auto"
    if "accel" in m:
        accel = w.choice(m["accel"][1], f"{key}.accel", ACCELS)
    network, port_range = Network(), DEFAULT_PORT_RANGE
    if "network" in m:
        network, port_range = _network(w, f"{key}.network", *m["network"])
    budget = 0
    if "clones_per_replica" in m:
        bkey, bnode = f"{key}.clones_per_replica", m["clones_per_replica"][1]
        budget = cast(int, w.scalar(bnode, bkey, "int", "an integer"))
        if problem := _budget_problem(budget):
            w.fail(bnode, bkey, problem)
    description = ""
    if "description" in m:
        description = w.string(m["description"][1], f"{key}.description")
    accel_ = cast(AccelSetting, accel)
    return RegionConfig(name, uri, pools, accel_, network, port_range, budget, description)


def _pools(w: _Walker, key: str, node: yaml.Node) -> tuple[PoolConfig, ...]:
    if not isinstance(node, yaml.SequenceNode):
        w.fail(node, key, f"must be a list of pools (got {_describe(node)})")
    if not node.value:
        w.fail(node, key, "must list at least one pool")
    pools: list[PoolConfig] = []
    names: dict[str, int] = {}
    paths: dict[Path, str] = {}
    for i, item in enumerate(node.value):
        ikey = f"{key}[{i}]"
        path: Path | None = None
        storage_type = ""
        if isinstance(item, yaml.MappingNode):
            m = w.mapping(item, ikey, _POOL_KEYS)
            name_node = w.require(m, "name", ikey, item)
            name = w.string(name_node, f"{ikey}.name", _libvirt_name_problem)
            if "path" in m:
                path = Path(w.string(m["path"][1], f"{ikey}.path", _path_problem))
                if path in paths:
                    w.fail(m["path"][1], f"{ikey}.path", f"same path as pool {paths[path]!r}")
                paths[path] = name
            if "storage_type" in m:
                skey, snode = f"{ikey}.storage_type", m["storage_type"][1]
                storage_type = w.string(snode, skey)
                match = [t for t in STORAGE_TYPES if t.lower() == storage_type.lower()]
                if not match:
                    w.fail(snode, skey, f"must be one of {', '.join(STORAGE_TYPES)}")
                storage_type = match[0]
        elif isinstance(item, yaml.ScalarNode) and item.tag == _TAG + "str":
            name_node = item
            name = w.string(item, ikey, _libvirt_name_problem)
        else:
            what = "a pool name or a mapping with 'name' and 'path'"
            w.fail(item, ikey, f"must be {what} (got {_describe(item)})")
        if name in names:
            w.fail(name_node, ikey, f"duplicate pool name {name!r} (first on line {names[name]})")
        names[name] = name_node.start_mark.line + 1
        pools.append(PoolConfig(name=name, path=path, storage_type=storage_type))
    return tuple(pools)


def _network(
    w: _Walker, key: str, knode: yaml.Node, node: yaml.Node
) -> tuple[Network, tuple[int, int]]:
    m = w.mapping(node, key, _NETWORK_KEYS)
    kind = "user-forward"
    if "type" in m:
        kind = w.choice(m["type"][1], f"{key}.type", NETWORK_KINDS)
    if kind != "user-forward":
        for extra in ("restrict", "ports"):
            if extra in m:
                w.fail(m[extra][0], f"{key}.{extra}", f"only for type user-forward, not {kind}")
        if "name" not in m:
            what = "libvirt network" if kind == "network" else "host bridge"
            w.fail(knode, key, f"type {kind} needs 'name' (the {what} to attach to)")
        source = w.string(m["name"][1], f"{key}.name", _libvirt_name_problem)
        return Network(kind=cast(NetworkKind, kind), source=source), DEFAULT_PORT_RANGE
    if "name" in m:
        w.fail(m["name"][0], f"{key}.name", "only for type network or bridge, not user-forward")
    restrict = True
    if "restrict" in m:
        restrict = bool(w.scalar(m["restrict"][1], f"{key}.restrict", "bool", "true or false"))
    port_range = DEFAULT_PORT_RANGE
    if "ports" in m:
        pkey, pnode = f"{key}.ports", m["ports"][1]
        what = f"a port range LOW-HIGH such as {DEFAULT_PORT_RANGE[0]}-{DEFAULT_PORT_RANGE[1]}"
        match = _PORTS.fullmatch(w.scalar(pnode, pkey, "str", what))
        if match is None:
            w.fail(pnode, pkey, f"must be {what} (got {_describe(pnode)})")
        port_range = (int(match[1]), int(match[2]))
        if problem := _ports_problem(*port_range):
            w.fail(pnode, pkey, problem)
    return Network(restrict=restrict), port_range


# -- files ----------------------------------------------------------------------------------
def _read(path: Path, origin: str) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file{origin}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a regions file{origin}") from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot read: permission denied{origin}") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}{origin}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 ({err.reason})") from None


def shipped_text() -> str:
    """The default regions.yaml sigvirt ships, as written (comments and all)."""
    return _read(SHIPPED_REGIONS, "")


def _system_file_present() -> bool:
    # An unreadable /etc/sigvirt must not silently fall back to the shipped default.
    try:
        SYSTEM_REGIONS.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        pass  # e.g. EACCES: that file is meant to be used; reading it will say why it can't
    return True


def load(path: Path | None = None, *, env: Mapping[str, str] = os.environ) -> RegionsConfig:
    """Explicit path, else $SIGVIRT_REGIONS, else /etc/sigvirt/regions.yaml, else the
    default shipped beside the package (the checkout's regions.yaml)."""
    origin = ""
    if path is None and env.get(ENV_REGIONS):
        path, origin = Path(env[ENV_REGIONS]), f" (named by {ENV_REGIONS})"
    elif path is None and _system_file_present():
        path = SYSTEM_REGIONS
    elif path is None:
        path, origin = SHIPPED_REGIONS, f" (no {SYSTEM_REGIONS}: run sigvirt region init)"
    config = replace(parse(_read(path, origin), source=str(path)), path=path)
    root = env.get(ENV_GALLERY_ROOT)
    if root:
        if problem := _path_problem(root):
            raise ConfigError(f"{ENV_GALLERY_ROOT}: {problem}")
        config = replace(config, gallery_root=Path(root))
    return config


class _Dumper(yaml.SafeDumper):
    # Lists indented under their key, the way the documentation and people write them.
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def region_doc(region: RegionConfig) -> dict[str, Any]:
    doc: dict[str, Any] = {"uri": region.uri, "pools": []}
    for pool in region.pools:
        entry: str | dict[str, str] = pool.name
        if pool.path is not None or pool.storage_type:
            entry = {"name": pool.name}
            if pool.path is not None:
                entry["path"] = str(pool.path)
            if pool.storage_type:
                entry["storage_type"] = pool.storage_type
        doc["pools"].append(entry)
    doc["accel"] = region.accel
    net = region.network
    if net.kind == "user-forward":
        low, high = region.port_range
        doc["network"] = {"type": net.kind, "restrict": net.restrict, "ports": f"{low}-{high}"}
    else:
        doc["network"] = {"type": net.kind, "name": net.source}
    if region.clones_per_replica:
        doc["clones_per_replica"] = region.clones_per_replica
    if region.description:
        doc["description"] = region.description
    return doc


def dump(config: RegionsConfig) -> str:
    """YAML text that parse() reads back into an equal config (path aside)."""
    doc: dict[str, object] = {
        "gallery_root": str(config.gallery_root),
        "regions": {name: region_doc(r) for name, r in config.regions.items()},
    }
    rep = config.replication
    if rep != ReplicationConfig():
        costs: dict[str, dict[str, float]] = {}
        for (src, dst), cost in rep.costs.items():
            costs.setdefault(src, {})[dst] = cost
        doc["replication"] = {
            "max_streams_out": rep.max_streams_out,
            "max_streams_in": rep.max_streams_in,
            **({"costs": costs} if costs else {}),
            **({} if rep.direct_ssh else {"direct_ssh": False}),
        }
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    return "# sigvirt regions: each region is a libvirt host and its storage pools.\n" + body


def with_region(config: RegionsConfig, region: RegionConfig) -> RegionsConfig:
    """`config` with `region` added at the end, or replacing the region of that name in place.

    The region is checked by writing it out and reading it back, so nothing reaches a file
    that parse() would refuse or read differently.
    """
    alone = RegionsConfig(None, config.gallery_root, {region.name: region})
    try:
        back = parse(dump(alone), source=f"region {region.name!r}")
    except ConfigError as err:
        key, problem = err.fields.get("key"), err.fields.get("problem")
        raise ConfigError(f"{key}: {problem}" if key else err.message) from None
    if back.regions.get(region.name) != region:
        # Only values a file cannot express get here (restrict or ports on a bridge, host_port).
        raise ConfigError(f"regions.{region.name}: settings that regions.yaml cannot express")
    regions = dict(config.regions)
    regions[region.name] = region  # an existing key keeps its position
    return replace(config, regions=regions)
