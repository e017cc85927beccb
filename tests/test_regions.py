"""regions.yaml: every refusal is one line naming file, line and key; good files read exactly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sigvirt.errors import ConfigError, ExitCode, NotFound
from sigvirt.hosts import regions
from sigvirt.hosts.regions import (
    SHIPPED_REGIONS,
    Network,
    PoolConfig,
    RegionConfig,
    RegionsConfig,
    dump,
    load,
    parse,
    with_region,
)

pytestmark = pytest.mark.offline

DATA = Path(__file__).parent / "data" / "regions"

# Lines 1-4 of most bad inputs below; what follows starts on line 5.
HEAD = "regions:\n  local:\n    uri: qemu:///system\n    pools: [a]\n"

BAD = [
    pytest.param(
        "regions:\n  local:\n    uri: [qemu:///system\n    pools: [a]\n",
        "regions.yaml:4:10: YAML syntax error: expected ',' or ']', but got ':'"
        " (while parsing a flow sequence on line 3)",
        id="yaml-syntax",
    ),
    pytest.param(
        "regions:\n  local:\n\turi: qemu:///system\n",
        "regions.yaml:3:1: YAML syntax error: found character '\\t' that cannot start any token",
        id="yaml-tab",
    ),
    pytest.param(
        HEAD + "---\nregions: {}\n",
        "regions.yaml:5:1: YAML syntax error: only one YAML document is allowed"
        " (a second one starts here)",
        id="yaml-two-documents",
    ),
    pytest.param(
        HEAD + "    description: \x07\n",
        "regions.yaml:5:18: YAML syntax error: special characters are not allowed (U+0007)",
        id="yaml-control-character",
    ),
    pytest.param(
        HEAD + "    uri: qemu:///session\n",
        "regions.yaml:5: regions.local: duplicate key 'uri' (first on line 3)",
        id="duplicate-key",
    ),
    pytest.param(
        HEAD + "  local:\n    uri: qemu:///session\n    pools: [b]\n",
        "regions.yaml:5: regions: duplicate key 'local' (first on line 2)",
        id="duplicate-region",
    ),
    pytest.param(
        "regions:\n  east:\n    uri: qemu:///system\n    pool: [a]\n",
        "regions.yaml:4: regions.east: unknown key 'pool' (did you mean 'pools'?)",
        id="unknown-key-pool",
    ),
    pytest.param(
        HEAD + "    acel: kvm\n",
        "regions.yaml:5: regions.local: unknown key 'acel' (did you mean 'accel'?)",
        id="unknown-key-acel",
    ),
    pytest.param(
        HEAD + "    colour: blue\n",
        "regions.yaml:5: regions.local: unknown key 'colour' (expected one of uri, pools,"
        " accel, network, clones_per_replica, description, zones, architectures, memory)",
        id="unknown-key-no-suggestion",
    ),
    pytest.param(
        "region:\n  local: {}\n",
        "regions.yaml:1: top level: unknown key 'region' (did you mean 'regions'?)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        HEAD + "    <<: {accel: kvm}\n",
        "regions.yaml:5: regions.local: merge keys ('<<') are not supported",
        id="merge-key",
    ),
    pytest.param(
        "",
        "regions.yaml:1: top level: the file is empty (expected a 'regions' mapping)",
        id="empty-file",
    ),
    pytest.param(
        "# nothing but a comment\n",
        "regions.yaml:1: top level: the file is empty (expected a 'regions' mapping)",
        id="comment-only-file",
    ),
    pytest.param(
        "- local\n- east\n",
        "regions.yaml:1: top level: must be a mapping with a 'regions' key (got a list)",
        id="file-is-a-list",
    ),
    pytest.param(
        "# header\ngallery_root: /srv/g\n",
        "regions.yaml:2: top level: missing key 'regions'",
        id="missing-regions",
    ),
    pytest.param(
        "regions:\n",
        "regions.yaml:1: regions: must be a mapping of region names to their settings (got null)",
        id="regions-null",
    ),
    pytest.param(
        "regions: {}\n",
        "regions.yaml:1: regions: no regions defined (need at least one)",
        id="regions-empty",
    ),
    pytest.param(
        "regions:\n  local: qemu:///system\n",
        "regions.yaml:2: regions.local: must be a mapping (got string 'qemu:///system')",
        id="region-not-mapping",
    ),
    pytest.param(
        "regions:\n  lab.east:\n    uri: qemu:///system\n    pools: [a]\n",
        "regions.yaml:2: regions: invalid region name 'lab.east'"
        " (1-64 letters, digits, '-' or '_')",
        id="bad-region-name",
    ),
    pytest.param(
        "regions:\n  " + "x" * 65 + ":\n    uri: qemu:///system\n    pools: [a]\n",
        f"regions.yaml:2: regions: invalid region name '{'x' * 65}'"
        " (1-64 letters, digits, '-' or '_')",
        id="region-name-too-long",
    ),
    pytest.param(
        "regions:\n  local:\n    pools: [a]\n",
        "regions.yaml:2: regions.local: missing key 'uri'",
        id="missing-uri",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu:///system\n",
        "regions.yaml:2: regions.local: missing key 'pools'",
        id="missing-pools",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: 42\n    pools: [a]\n",
        "regions.yaml:3: regions.local.uri: must be a string (got integer 42)",
        id="uri-wrong-type",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: xen:///system\n    pools: [a]\n",
        "regions.yaml:3: regions.local.uri: unsupported scheme 'xen' (expected qemu, qemu+ssh,"
        " qemu+tcp, qemu+tls, qemu+unix, qemu+libssh2, qemu+libssh, test)",
        id="bad-uri-scheme",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu+shh://labhost/system\n    pools: [a]\n",
        "regions.yaml:3: regions.local.uri: unsupported scheme 'qemu+shh'"
        " (did you mean 'qemu+ssh'?)",
        id="misspelt-uri-scheme",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu:///embed\n    pools: [a]\n",
        "regions.yaml:3: regions.local.uri: path must be /system or /session (got 'qemu:///embed')",
        id="bad-uri-path",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: labhost\n    pools: [a]\n",
        "regions.yaml:3: regions.local.uri: must be a libvirt URI such as qemu:///system"
        " (got 'labhost')",
        id="uri-no-scheme",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu+ssh://host:ssh/system\n    pools: [a]\n",
        "regions.yaml:3: regions.local.uri: does not parse as a URI: Port could not be cast to"
        " integer value as 'ssh' (got 'qemu+ssh://host:ssh/system')",
        id="uri-bad-port",
    ),
    # URIs that make libvirt run a program of the URI's choosing
    pytest.param(
        "regions:\n  local:\n    uri: qemu+ext:///system?command=/tmp/evil\n    pools: [a]\n",
        "regions.yaml:3: regions.local.uri: transport 'ext' is refused: it makes libvirt run a"
        " command (use ssh, tcp or tls)",
        id="uri-ext-transport",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu+ssh://h/system?command=/tmp/evil\n    pools: [a]\n",
        "regions.yaml:3: regions.local.uri: query parameter 'command' is refused: it makes"
        " libvirt run a program",
        id="uri-ssh-command",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu+ssh://h/system?netcat=/tmp/nc\n    pools: [a]\n",
        "regions.yaml:3: regions.local.uri: query parameter 'netcat' is refused: it makes"
        " libvirt run a program",
        id="uri-ssh-netcat",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu+ssh://h/system?name=qemu+ext:///x\n    pools: [a]\n",
        "regions.yaml:3: regions.local.uri: query parameter 'name' is refused: sigvirt accepts"
        " only keyfile, known_hosts, known_hosts_verify, no_verify, no_tty, sshauth, socket,"
        " mode, pkipath",
        id="uri-name-param",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu+ssh://h/system?keyfile=/a&keyfile=/b\n    pools: [a]\n",
        "regions.yaml:3: regions.local.uri: a query parameter is given twice"
        " (got 'qemu+ssh://h/system?keyfile=/a&keyfile=/b')",
        id="uri-param-twice",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu:///system\n    pools: default\n",
        "regions.yaml:4: regions.local.pools: must be a list of pools (got string 'default')",
        id="pools-wrong-type",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu:///system\n    pools: []\n",
        "regions.yaml:4: regions.local.pools: must list at least one pool",
        id="empty-pools",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n      - a\n      - name: a\n",
        "regions.yaml:6: regions.local.pools[1]: duplicate pool name 'a' (first on line 5)",
        id="duplicate-pool-name",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n"
        "      - name: a\n        path: pools/a\n",
        "regions.yaml:6: regions.local.pools[0].path: must be an absolute path (got 'pools/a')",
        id="relative-pool-path",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n"
        "      - {name: a, path: /p}\n      - {name: b, path: /p/}\n",
        "regions.yaml:6: regions.local.pools[1].path: same path as pool 'a'",
        id="duplicate-pool-path",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n      - path: /p\n",
        "regions.yaml:5: regions.local.pools[0]: missing key 'name'",
        id="pool-without-name",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n"
        "      - name: a\n        pth: /p\n",
        "regions.yaml:6: regions.local.pools[0]: unknown key 'pth' (did you mean 'path'?)",
        id="pool-unknown-key",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n      - [a]\n",
        "regions.yaml:5: regions.local.pools[0]: must be a pool name or a mapping with 'name'"
        " and 'path' (got a list)",
        id="pool-wrong-type",
    ),
    pytest.param(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n      - my pool\n",
        "regions.yaml:5: regions.local.pools[0]: must be a non-empty name without '/' or blanks"
        " (got 'my pool')",
        id="pool-name-with-blank",
    ),
    pytest.param(
        HEAD + "    accel: kvn\n",
        "regions.yaml:5: regions.local.accel: must be one of auto, kvm, tcg (got 'kvn')",
        id="bad-accel",
    ),
    pytest.param(
        HEAD + "    accel: true\n",
        "regions.yaml:5: regions.local.accel: must be one of auto, kvm, tcg (got boolean true)",
        id="accel-wrong-type",
    ),
    pytest.param(
        HEAD + "    network: user-forward\n",
        "regions.yaml:5: regions.local.network: must be a mapping (got string 'user-forward')",
        id="network-not-mapping",
    ),
    pytest.param(
        HEAD + "    network:\n      type: nat\n",
        "regions.yaml:6: regions.local.network.type: must be one of user-forward, network,"
        " bridge (got 'nat')",
        id="bad-network-type",
    ),
    pytest.param(
        HEAD + "    network:\n      type: bridge\n",
        "regions.yaml:5: regions.local.network: type bridge needs 'name'"
        " (the host bridge to attach to)",
        id="bridge-without-name",
    ),
    pytest.param(
        HEAD + "    network:\n      type: network\n      restrict: true\n      name: default\n",
        "regions.yaml:7: regions.local.network.restrict: only for type user-forward, not network",
        id="restrict-on-network",
    ),
    pytest.param(
        HEAD + "    network:\n      type: bridge\n      name: br0\n      ports: 22200-22300\n",
        "regions.yaml:8: regions.local.network.ports: only for type user-forward, not bridge",
        id="ports-on-bridge",
    ),
    pytest.param(
        HEAD + "    network:\n      name: br0\n",
        "regions.yaml:6: regions.local.network.name: only for type network or bridge,"
        " not user-forward",
        id="name-on-user-forward",
    ),
    pytest.param(
        HEAD + "    network:\n      restrict: maybe\n",
        "regions.yaml:6: regions.local.network.restrict: must be true or false"
        " (got string 'maybe')",
        id="restrict-wrong-type",
    ),
    pytest.param(
        HEAD + "    network:\n      ports: 23199-22200\n",
        "regions.yaml:6: regions.local.network.ports: range is inverted: 23199 is above 22200"
        " (write LOW-HIGH)",
        id="inverted-port-range",
    ),
    pytest.param(
        HEAD + "    network:\n      ports: 80-1100\n",
        "regions.yaml:6: regions.local.network.ports: must lie within 1024-65535 (got 80-1100)",
        id="port-range-privileged",
    ),
    pytest.param(
        HEAD + "    network:\n      ports: 60000-70000\n",
        "regions.yaml:6: regions.local.network.ports: must lie within 1024-65535 (got 60000-70000)",
        id="port-range-too-high",
    ),
    pytest.param(
        HEAD + "    network:\n      ports: 22200\n",
        "regions.yaml:6: regions.local.network.ports: must be a port range LOW-HIGH such as"
        " 22200-23199 (got integer 22200)",
        id="port-range-single-number",
    ),
    pytest.param(
        HEAD + "    clones_per_replica: -1\n",
        "regions.yaml:5: regions.local.clones_per_replica: must be 0 (unlimited) or more (got -1)",
        id="negative-budget",
    ),
    pytest.param(
        HEAD + "    clones_per_replica: '4'\n",
        "regions.yaml:5: regions.local.clones_per_replica: must be an integer (got string '4')",
        id="budget-wrong-type",
    ),
    pytest.param(
        HEAD + "    clones_per_replica: 2.5\n",
        "regions.yaml:5: regions.local.clones_per_replica: must be an integer (got number 2.5)",
        id="budget-float",
    ),
    pytest.param(
        HEAD + "    description:\n",
        "regions.yaml:5: regions.local.description: must be a string (got null)",
        id="description-null",
    ),
    pytest.param(
        "gallery_root: srv/galleries\n" + HEAD,
        "regions.yaml:1: gallery_root: must be an absolute path (got 'srv/galleries')",
        id="relative-gallery-root",
    ),
    pytest.param(
        HEAD + "    ? [a, b]\n    : 1\n",
        "regions.yaml:5: regions.local: keys must be names (got a list)",
        id="non-scalar-key",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD)
def test_bad_input_is_one_exact_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert info.value.message == expected
    assert "\n" not in info.value.message
    assert info.value.exit_code == ExitCode.CONFIG


def test_source_names_the_file_in_errors() -> None:
    path = DATA / "bad-accel.yaml"
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert (
        info.value.message
        == f"{path}:6: regions.local.accel: must be one of auto, kvm, tcg (got 'kvn')"
    )


def test_duplicate_region_in_sample_file() -> None:
    path = DATA / "bad-duplicate-region.yaml"
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert info.value.message == f"{path}:8: regions: duplicate key 'local' (first on line 2)"


# -- files ----------------------------------------------------------------------------------
def test_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load(missing, env={})
    assert info.value.message == f"{missing}: no such file"


def test_env_file_not_found_says_where_the_name_came_from(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load(env={"SIGVIRT_REGIONS": str(missing)})
    assert info.value.message == f"{missing}: no such file (named by SIGVIRT_REGIONS)"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, env={})
    assert info.value.message == f"{tmp_path}: is a directory, not a regions file"


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root, where chmod 000 does not stop a read; simulate the kernel's answer.
    path = tmp_path / "regions.yaml"
    path.write_text(HEAD)

    def refuse(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert info.value.message == f"{path}: cannot read: permission denied"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "regions.yaml"
    path.write_bytes(HEAD.encode() + b"    description: caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert info.value.message == f"{path}:5: not valid UTF-8 (invalid continuation byte)"


# -- good input -----------------------------------------------------------------------------
def test_default_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(regions, "SYSTEM_REGIONS", tmp_path / "absent.yaml")
    config = load(env={})
    assert config.path == SHIPPED_REGIONS
    assert config.gallery_root == Path("/var/lib/sigvirt/galleries")
    assert list(config.regions) == ["local"]
    local = config.region("local")
    assert local == RegionConfig(
        name="local",
        uri="qemu:///system",
        pools=(
            PoolConfig("sigvirt-local-a", Path("/var/lib/sigvirt/pools/local-a")),
            PoolConfig("sigvirt-local-b", Path("/var/lib/sigvirt/pools/local-b")),
        ),
        description="this machine",
    )
    assert local.accel == "auto"
    assert local.network == Network(kind="user-forward", restrict=True)
    assert local.port_range == (22200, 23199)
    assert local.clones_per_replica == 0
    assert local.is_local
    assert parse(SHIPPED_REGIONS.read_text()).regions == config.regions


def test_multi_region_sample() -> None:
    path = DATA / "multi.yaml"
    config = load(path, env={})
    assert config.path == path
    assert config.gallery_root == Path("/srv/sigvirt/galleries")
    assert list(config.regions) == ["local", "east", "lab_west-2"]

    east = config.region("east")
    assert east.uri == "qemu+ssh://root@labhost2/system?keyfile=/root/.ssh/id_ed25519"
    assert east.pools == (PoolConfig("default", None), PoolConfig("fast", Path("/nvme/sigvirt")))
    assert east.accel == "kvm"
    assert east.network == Network(kind="user-forward", restrict=False)
    assert east.port_range == (30000, 30999)
    assert east.clones_per_replica == 8
    assert east.description == ""
    assert not east.is_local

    west = config.region("lab_west-2")
    assert west.uri == "qemu+tcp://10.0.0.7:16509/session"
    assert west.pools == (PoolConfig("images"),)
    assert west.accel == "tcg"
    assert west.network == Network(kind="bridge", source="br0")
    assert west.description == "bridged: guests get addresses from the lab's DHCP"
    assert not west.is_local


@pytest.mark.parametrize(
    ("uri", "local"),
    [
        ("qemu:///system", True),
        ("qemu:///session", True),
        ("test:///default", True),
        ("qemu+unix:///system", False),
        ("qemu+ssh://root@labhost2/system", False),
        ("qemu://labhost2/system", False),
    ],
)
def test_is_local(uri: str, local: bool) -> None:
    assert RegionConfig("r", uri, (PoolConfig("p"),)).is_local is local


def test_test_driver_uri_takes_any_path() -> None:
    config = parse("regions:\n  unit:\n    uri: test:///tmp/host.xml\n    pools: [p]\n")
    assert config.region("unit").uri == "test:///tmp/host.xml"


def test_unknown_region_lists_known_ones() -> None:
    config = load(DATA / "multi.yaml", env={})
    with pytest.raises(NotFound) as info:
        config.region("west")
    assert info.value.message == "region 'west' not found (known: local, east, lab_west-2)"


# -- dump and with_region -------------------------------------------------------------------
@pytest.mark.parametrize("text", [SHIPPED_REGIONS.read_text(), (DATA / "multi.yaml").read_text()])
def test_dump_round_trips(text: str) -> None:
    config = parse(text)
    assert parse(dump(config)) == config


def test_dump_round_trips_awkward_values() -> None:
    awkward = RegionConfig(
        name="123",  # a YAML integer when unquoted
        uri="qemu+ssh://u@h:2222/system?keyfile=/k&no_verify=1",
        pools=(PoolConfig("yes"), PoolConfig("null", Path("/p/#not a comment"))),
        network=Network(kind="network", source="default"),
        clones_per_replica=3,
        description="two\nlines: with 'quotes' and a trailing space ",
    )
    config = with_region(parse(SHIPPED_REGIONS.read_text()), awkward)
    assert parse(dump(config)) == config


def test_dump_is_readable() -> None:
    text = dump(parse(SHIPPED_REGIONS.read_text()))
    assert "    pools:\n      - name: sigvirt-local-a\n" in text
    assert "      ports: 22200-23199\n" in text


def test_with_region_adds_at_end_and_replaces_in_place() -> None:
    config = load(DATA / "multi.yaml", env={})
    extra = RegionConfig("north", "qemu+tls://n1/system", (PoolConfig("default"),))
    added = with_region(config, extra)
    assert list(added.regions) == ["local", "east", "lab_west-2", "north"]
    assert list(config.regions) == ["local", "east", "lab_west-2"]  # the original is untouched

    changed = replace(config.region("local"), accel="kvm")
    replaced = with_region(added, changed)
    assert list(replaced.regions) == ["local", "east", "lab_west-2", "north"]
    assert replaced.region("local").accel == "kvm"


@pytest.mark.parametrize(
    ("region", "expected"),
    [
        (
            RegionConfig("bad name", "qemu:///system", (PoolConfig("p"),)),
            "regions: invalid region name 'bad name' (1-64 letters, digits, '-' or '_')",
        ),
        (
            RegionConfig("r", "qemu:///system", ()),
            "regions.r.pools: must list at least one pool",
        ),
        (
            RegionConfig("r", "qemu:///system", (PoolConfig("p", Path("rel")),)),
            "regions.r.pools[0].path: must be an absolute path (got 'rel')",
        ),
        (
            RegionConfig("r", "qemu:///system", (PoolConfig("p"),), port_range=(2000, 1999)),
            "regions.r.network.ports: range is inverted: 2000 is above 1999 (write LOW-HIGH)",
        ),
        (
            RegionConfig("r", "qemu:///system", (PoolConfig("p"),), network=Network("bridge")),
            "regions.r.network.name: must be a non-empty name without '/' or blanks (got '')",
        ),
        (
            RegionConfig(
                "r", "qemu:///system", (PoolConfig("p"),), network=Network(host_port=2222)
            ),
            "regions.r: settings that regions.yaml cannot express",
        ),
    ],
)
def test_with_region_refuses_what_parse_would(region: RegionConfig, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        with_region(parse(SHIPPED_REGIONS.read_text()), region)
    assert info.value.message == expected


# -- where the file and the gallery root come from ------------------------------------------
@pytest.fixture
def system_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "etc-regions.yaml"
    path.write_text("gallery_root: /from/system\n" + HEAD.replace("local", "system"))
    monkeypatch.setattr(regions, "SYSTEM_REGIONS", path)
    return path


def test_explicit_path_beats_env_and_system_file(system_file: Path) -> None:
    config = load(DATA / "multi.yaml", env={"SIGVIRT_REGIONS": str(DATA / "bad-accel.yaml")})
    assert config.path == DATA / "multi.yaml"


def test_env_path_beats_system_file(system_file: Path) -> None:
    config = load(env={"SIGVIRT_REGIONS": str(DATA / "multi.yaml")})
    assert config.path == DATA / "multi.yaml"


def test_system_file_beats_builtin_default(system_file: Path) -> None:
    config = load(env={"SIGVIRT_REGIONS": ""})  # empty counts as unset
    assert config.path == system_file
    assert list(config.regions) == ["system"]


def test_gallery_root_env_beats_file(system_file: Path) -> None:
    config = load(env={"SIGVIRT_GALLERY_ROOT": "/from/env"})
    assert config.gallery_root == Path("/from/env")


def test_gallery_root_file_beats_default(system_file: Path) -> None:
    assert load(env={}).gallery_root == Path("/from/system")


def test_gallery_root_default(tmp_path: Path) -> None:
    path = tmp_path / "regions.yaml"
    path.write_text(HEAD)
    assert load(path, env={}).gallery_root == Path("/var/lib/sigvirt/galleries")


def test_gallery_root_env_must_be_absolute(system_file: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(env={"SIGVIRT_GALLERY_ROOT": "galleries"})
    assert info.value.message == "SIGVIRT_GALLERY_ROOT: must be an absolute path (got 'galleries')"


def test_regions_mapping_is_a_private_copy() -> None:
    source = {"r": RegionConfig("r", "qemu:///system", (PoolConfig("p"),))}
    config = RegionsConfig(path=None, gallery_root=Path("/g"), regions=source)
    source.clear()
    assert list(config.regions) == ["r"]
