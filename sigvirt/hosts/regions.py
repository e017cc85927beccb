"""The regions configuration: which libvirt hosts and storage pools sigvirt may use.

regions.yaml is read through PyYAML's node API rather than safe_load so that every error
names its exact line, and so that duplicate keys (which safe_load silently collapses to the
last one) are refused instead of half-applied.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, cast, get_args

import yaml

from sigvirt.errors import ConfigError, NotFound
from sigvirt.hosts.memory import merge_doc, parse_merge
from sigvirt.hosts.uri import LibvirtUri, UriProblem
from sigvirt.hosts.yamlwalk import TAG, Walker, compose, describe

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
_REGION_KEYS = (
    "uri", "pools", "accel", "network", "clones_per_replica", "description", "zones",
    "architectures", "memory",
)  # fmt: skip
# A zone is a host of its region: what a host has, the region's settings its default.
_ZONE_KEYS = ("uri", "pools", "accel", "network", "clones_per_replica", "architectures", "memory")
# image-definition --architecture values a host may declare it serves (hosts/arches.py)
ARCHITECTURES = ("x64", "Arm64")
_ZONE_NAME = re.compile(r"[A-Za-z0-9_-]{1,16}")  # Azure's are "1", "2", "3"
ZONE_SEP = "/"  # a location: REGION or REGION/ZONE (neither name may contain it)
_POOL_KEYS = ("name", "path", "storage_type")
# Azure's storage account types: a pool labelled with one takes the replicas of target
# regions asked for with it (`--target-regions east=2=premium_lrs`).
STORAGE_TYPES = ("Standard_LRS", "Standard_ZRS", "Premium_LRS", "PremiumV2_LRS")
_NETWORK_KEYS = ("type", "restrict", "ports", "name")
_REGION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# At most 5 digits: more make no port, and int() refuses more than 4300 with a ValueError.
_PORTS = re.compile(r"\s*(\d{1,5})\s*-\s*(\d{1,5})\s*")
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
    # A zoned region (no uri of its own): its zones, each a host with its own settings.
    zones: tuple[RegionConfig, ...] = ()
    zone: str = ""  # set on a zone's own settings: the zone's name (name is its region's)
    # --architecture values it serves ("architectures: [x64, Arm64]"); () = not declared:
    # whatever the host's libvirt can run
    architectures: tuple[str, ...] = ()
    memory_merge: bool = False  # memory: {merge: true}: KSM may share guests' RAM (hosts/memory.py)

    @cached_property
    def libvirt_uri(self) -> LibvirtUri:
        return LibvirtUri.parse(self.uri)

    @property
    def is_local(self) -> bool:
        """True when the host's files are this machine's files (no transport needed); a zoned
        region is no one host (each zone answers for itself)."""
        return not self.zones and self.libvirt_uri.is_local

    @property
    def location(self) -> str:
        """REGION, or REGION/ZONE for a zone: what connections and replicas are keyed by."""
        return location(self.name, self.zone)

    @property
    def zone_names(self) -> tuple[str, ...]:
        return tuple(z.zone for z in self.zones)


def location(region: str, zone: str = "") -> str:
    return f"{region}{ZONE_SEP}{zone}" if zone else region


def split_location(where: str) -> tuple[str, str]:
    """(region, zone) of a location; zone "" for a region without zones."""
    region, _sep, zone = where.partition(ZONE_SEP)
    return region, zone


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
        """A region's settings, or a zone's for a location REGION/ZONE. A zoned region's own
        settings name no host: connecting needs the zone (hosts/connections.py refuses)."""
        base, zone = split_location(name)
        try:
            found = self.regions[base]
        except KeyError:
            known = ", ".join(self.regions) or "none"
            raise NotFound(f"region {base!r} not found (known: {known})") from None
        if not zone:
            return found
        for z in found.zones:
            if z.zone == zone:
                return z
        have = f"zones {', '.join(found.zone_names)}" if found.zones else "no zones"
        raise NotFound(f"region {base} has no zone {zone!r} (it has {have})")

    def locations(self, region: str | None = None) -> list[str]:
        """Every host's location (a region without zones, or each zone of a zoned one), of
        one region or of all, in file order."""
        chosen = [self.region(region)] if region else list(self.regions.values())
        return [z.location for r in chosen for z in (r.zones or (r,))]


# -- value checks, shared by the parser and with_region ----------------------------------------
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


def parse(text: str, source: str = "regions.yaml") -> RegionsConfig:
    """The regions configuration in `text`; `source` names it in error messages."""
    loader, root = compose(text, source)
    if root is None:
        raise ConfigError(f"{source}:1: {_TOP}: the file is empty (expected a 'regions' mapping)")
    w = Walker(source, loader)
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


def _replication(w: Walker, node: yaml.Node, regions: Mapping[str, object]) -> ReplicationConfig:
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
                if isinstance(cnode, yaml.ScalarNode) and cnode.tag == TAG + "int":
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


def _region(w: Walker, name: str, knode: yaml.Node, node: yaml.Node) -> RegionConfig:
    key = f"regions.{name}"
    m = w.mapping(node, key, _REGION_KEYS)
    if "zones" not in m:
        uri = w.string(w.require(m, "uri", key, knode), f"{key}.uri", _uri_problem)
        own = _pools(w, f"{key}.pools", w.require(m, "pools", key, knode))
        return _host(w, key, m, RegionConfig(name, uri, own))
    if "uri" in m:
        w.fail(m["uri"][0], f"{key}.uri", "a region with zones has no uri of its own "
               "(each zone names its host)")  # fmt: skip
    pools: tuple[PoolConfig, ...] = ()
    if "pools" in m:
        pools = _pools(w, f"{key}.pools", m["pools"][1])
    region = _host(w, key, m, RegionConfig(name, "", pools))
    zkey = f"{key}.zones"
    found = w.mapping(m["zones"][1], zkey, None, "a mapping of zone names to their hosts")
    if not found:
        w.fail(m["zones"][1], zkey, "no zones defined (need at least one)")
    zones = []
    for zone, (zknode, zvnode) in found.items():
        if not _ZONE_NAME.fullmatch(zone):
            w.fail(zknode, zkey, f"invalid zone name {zone!r} (1-16 letters, digits, '-' or '_')")
        zones.append(_zone(w, f"{zkey}.{zone}", zknode, zvnode, replace(region, zone=zone)))
    return replace(region, zones=tuple(zones))


def _zone(
    w: Walker, key: str, knode: yaml.Node, node: yaml.Node, inherited: RegionConfig
) -> RegionConfig:
    """A zone's host: its own uri; pools, accel, network and budget the region's unless it
    names its own."""
    m = w.mapping(node, key, _ZONE_KEYS)
    uri = w.string(w.require(m, "uri", key, knode), f"{key}.uri", _uri_problem)
    pools = inherited.pools
    if "pools" in m:
        pools = _pools(w, f"{key}.pools", m["pools"][1])
    elif not pools:
        w.fail(knode, key, "missing key 'pools' (the region lists no pools for its zones)")
    return _host(w, key, m, replace(inherited, uri=uri, pools=pools))


def _host(
    w: Walker, key: str, m: dict[str, tuple[yaml.Node, yaml.Node]], base: RegionConfig
) -> RegionConfig:
    """`base` with the accel, network, budget and description `m` sets."""
    accel = base.accel
    if "accel" in m:
        accel = cast(AccelSetting, w.choice(m["accel"][1], f"{key}.accel", ACCELS))
    network, port_range = base.network, base.port_range
    if "network" in m:
        network, port_range = _network(w, f"{key}.network", *m["network"])
    budget = base.clones_per_replica
    if "clones_per_replica" in m:
        bkey, bnode = f"{key}.clones_per_replica", m["clones_per_replica"][1]
        budget = cast(int, w.scalar(bnode, bkey, "int", "an integer"))
        if problem := _budget_problem(budget):
            w.fail(bnode, bkey, problem)
    description = base.description
    if "description" in m:
        description = w.string(m["description"][1], f"{key}.description")
    arches = base.architectures
    if "architectures" in m:
        arches = _architectures(w, f"{key}.architectures", m["architectures"][1])
    return replace(
        base, accel=accel, network=network, port_range=port_range,
        clones_per_replica=budget, description=description, architectures=arches,
        memory_merge=parse_merge(w, key, m, base.memory_merge),
    )  # fmt: skip


def _architectures(w: Walker, key: str, node: yaml.Node) -> tuple[str, ...]:
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        w.fail(node, key, f"must be a list of architectures ({', '.join(ARCHITECTURES)})")
    return tuple(dict.fromkeys(w.choice(item, key, ARCHITECTURES) for item in node.value))


def _pools(w: Walker, key: str, node: yaml.Node) -> tuple[PoolConfig, ...]:
    if not isinstance(node, yaml.SequenceNode):
        w.fail(node, key, f"must be a list of pools (got {describe(node)})")
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
        elif isinstance(item, yaml.ScalarNode) and item.tag == TAG + "str":
            name_node = item
            name = w.string(item, ikey, _libvirt_name_problem)
        else:
            what = "a pool name or a mapping with 'name' and 'path'"
            w.fail(item, ikey, f"must be {what} (got {describe(item)})")
        if name in names:
            w.fail(name_node, ikey, f"duplicate pool name {name!r} (first on line {names[name]})")
        names[name] = name_node.start_mark.line + 1
        pools.append(PoolConfig(name=name, path=path, storage_type=storage_type))
    return tuple(pools)


def _network(
    w: Walker, key: str, knode: yaml.Node, node: yaml.Node
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
            w.fail(pnode, pkey, f"must be {what} (got {describe(pnode)})")
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


def _pools_doc(pools: tuple[PoolConfig, ...]) -> list[str | dict[str, str]]:
    out: list[str | dict[str, str]] = []
    for pool in pools:
        entry: str | dict[str, str] = pool.name
        if pool.path is not None or pool.storage_type:
            entry = {"name": pool.name}
            if pool.path is not None:
                entry["path"] = str(pool.path)
            if pool.storage_type:
                entry["storage_type"] = pool.storage_type
        out.append(entry)
    return out


def _network_doc(region: RegionConfig) -> dict[str, Any]:
    net = region.network
    if net.kind == "user-forward":
        low, high = region.port_range
        return {"type": net.kind, "restrict": net.restrict, "ports": f"{low}-{high}"}
    return {"type": net.kind, "name": net.source}


def region_doc(region: RegionConfig) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if not region.zones:
        doc["uri"] = region.uri
    if region.pools or not region.zones:
        doc["pools"] = _pools_doc(region.pools)
    doc["accel"] = region.accel
    doc["network"] = _network_doc(region)
    if region.clones_per_replica:
        doc["clones_per_replica"] = region.clones_per_replica
    if region.description:
        doc["description"] = region.description
    if region.architectures:
        doc["architectures"] = list(region.architectures)
    doc.update(merge_doc(region.memory_merge))
    if region.zones:
        doc["zones"] = {z.zone: _zone_doc(region, z) for z in region.zones}
    return doc


def _zone_doc(region: RegionConfig, zone: RegionConfig) -> dict[str, Any]:
    """A zone's uri and what it sets differently from its region."""
    doc: dict[str, Any] = {"uri": zone.uri}
    if zone.pools != region.pools:
        doc["pools"] = _pools_doc(zone.pools)
    if zone.accel != region.accel:
        doc["accel"] = zone.accel
    if (zone.network, zone.port_range) != (region.network, region.port_range):
        doc["network"] = _network_doc(zone)
    if zone.clones_per_replica != region.clones_per_replica:
        doc["clones_per_replica"] = zone.clones_per_replica
    if zone.architectures != region.architectures:
        doc["architectures"] = list(zone.architectures)
    doc.update(merge_doc(zone.memory_merge, region.memory_merge))
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
