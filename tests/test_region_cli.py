"""`sigvirt region list|show|init|check`: exact output shapes, exact error lines, exit codes."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from sigvirt import cli
from sigvirt.errors import ExitCode, RegionUnavailable
from sigvirt.hosts import regioncheck, regions
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.xmlbuild import dir_pool_xml
from tests.support.replication import Lab

TWO_REGIONS = """\
gallery_root: /var/tmp/nowhere
regions:
  local:
    uri: qemu:///system
    pools:
      - name: pa
        path: /var/tmp/pa
      - pb
    description: this machine
  westcentralus:
    uri: qemu+ssh://root@10.0.0.2/system
    pools: [p1]
    accel: tcg
    network: {type: bridge, name: br0}
    clones_per_replica: 50
    memory: {merge: true}
"""


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def regions_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "regions.yaml"
    path.write_text(TWO_REGIONS)
    monkeypatch.setenv(regions.ENV_REGIONS, str(path))
    return path


# -- list / show ------------------------------------------------------------------------------
def test_list_shows_every_region_in_file_order(
    regions_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["region", "list", "--output", "json"], capsys)
    assert code == 0
    assert json.loads(out) == [
        {
            "name": "local",
            "uri": "qemu:///system",
            "transport": "local",
            "pools": ["pa at /var/tmp/pa", "pb"],
            "accel": "auto",
            "network": "user-forward, ports 22200-23199, restricted",
            "clones_per_replica": 0,
            "description": "this machine",
            "source": str(regions_file),
            "memory_merge": False,
        },
        {
            "name": "westcentralus",
            "uri": "qemu+ssh://root@10.0.0.2/system",
            "transport": "ssh",
            "pools": ["p1"],
            "accel": "tcg",
            "network": "bridge br0",
            "clones_per_replica": 50,
            "description": "",
            "source": str(regions_file),
            "memory_merge": True,
        },
    ]
    code, out, _ = run(["region", "list"], capsys)
    assert code == 0
    assert "westcentralus" in out and "pa at /var/tmp/pa, pb" in out


def test_show_accepts_azure_display_names(
    regions_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["region", "show", "West Central US", "-o", "yaml"], capsys)
    assert code == 0
    assert out.startswith("name: westcentralus\nuri: qemu+ssh://root@10.0.0.2/system\n")


def test_show_unknown_region_names_the_known_ones(
    regions_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["region", "show", "mars"], capsys)
    assert (code, out) == (ExitCode.NOT_FOUND, "")
    assert err == "sigvirt: error: region 'mars' not found (known: local, westcentralus)\n"


@pytest.mark.parametrize("command", [["list"], ["show", "local"], ["check"]])
def test_a_bad_regions_file_is_one_line_naming_file_line_and_key(
    regions_file: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    regions_file.write_text(
        TWO_REGIONS.replace("    pools: [p1]\n", "    pools: [p1]\n    uri: x\n")
    )
    code, out, err = run(["region", *command], capsys)
    assert (code, out) == (ExitCode.CONFIG, "")
    assert err == (
        f"sigvirt: error: {regions_file}:13: regions.westcentralus: "
        "duplicate key 'uri' (first on line 11)\n"
    )


def test_a_typo_in_a_key_is_named_with_a_suggestion(
    regions_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    regions_file.write_text(TWO_REGIONS.replace("    accel: tcg", "    acel: tcg"))
    code, _, err = run(["region", "list"], capsys)
    assert code == ExitCode.CONFIG
    assert err == (
        f"sigvirt: error: {regions_file}:13: regions.westcentralus: "
        "unknown key 'acel' (did you mean 'accel'?)\n"
    )


# -- init -------------------------------------------------------------------------------------
def test_init_writes_the_local_region_and_never_overwrites_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "etc" / "sigvirt" / "regions.yaml"
    argv = ["region", "init", str(path), "--pools-dir", "/srv/pools", "--gallery-root", "/srv/g"]
    code, out, _ = run([*argv, "-o", "json"], capsys)
    assert code == 0
    assert json.loads(out) == {"written": str(path), "regions": ["local"], "gallery_root": "/srv/g"}
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    cfg = regions.load(path, env={})
    assert cfg.gallery_root == Path("/srv/g")
    local = cfg.region("local")
    assert local.uri == "qemu:///system"
    assert [(p.name, p.path) for p in local.pools] == [
        ("sigvirt-local-a", Path("/srv/pools/local-a")),
        ("sigvirt-local-b", Path("/srv/pools/local-b")),
    ]
    written = path.read_text()

    code, out, err = run(["region", "init", str(path), "--uri", "qemu:///session"], capsys)
    assert (code, out) == (ExitCode.CONFLICT, "")
    assert err == f"sigvirt: error: {path} exists already; add --force to replace it\n"
    assert path.read_text() == written

    code, _, _ = run(["region", "init", str(path), "--uri", "qemu:///session", "--force"], capsys)
    assert code == 0
    assert regions.load(path, env={}).region("local").uri == "qemu:///session"
    assert [p.name for p in tmp_path.joinpath("etc", "sigvirt").iterdir()] == ["regions.yaml"]


def test_the_shipped_regions_yaml_is_what_init_writes_on_a_fresh_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The repository's regions.yaml is the one default: it parses, holds region `local` on
    qemu:///system with its two dir pools, and `region init` writes exactly it."""
    shipped = Path(__file__).resolve().parents[1] / "regions.yaml"
    cfg = regions.load(shipped, env={})
    local = cfg.region("local")
    assert (local.uri, local.accel, local.network.kind) == (
        "qemu:///system",
        "auto",
        "user-forward",
    )
    assert [p.path for p in local.pools] == [
        Path("/var/lib/sigvirt/pools/local-a"),
        Path("/var/lib/sigvirt/pools/local-b"),
    ]
    path = tmp_path / "regions.yaml"
    code, _, err = run(["region", "init", str(path)], capsys)
    assert code == 0, err
    assert path.read_bytes() == shipped.read_bytes()
    assert regions.load(path, env={}).regions == cfg.regions


def test_init_defaults_to_the_system_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["region", "init", "--help"], capsys)
    assert code == 0
    assert "/etc/sigvirt/regions.yaml" in out


def test_init_refuses_a_bad_uri(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "regions.yaml"
    code, _, err = run(["region", "init", str(path), "--uri", "qemu:///sytem"], capsys)
    assert code == ExitCode.CONFIG
    assert err == (
        "sigvirt: error: regions.local.uri: path must be /system or /session "
        "(got 'qemu:///sytem')\n"
    )
    assert not path.exists()


@pytest.mark.parametrize("command", ["list", "show", "init", "check"])
def test_every_region_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["region", command, "--help"], capsys)
    assert code == 0
    assert "--output" in out


# -- check ------------------------------------------------------------------------------------
@pytest.mark.hostb
def test_check_reports_every_region_and_fails_for_an_unreachable_one(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(regions.ENV_REGIONS, str(lab.regions_path))
    code, out, _ = run(["region", "check", "-o", "json"], capsys)
    assert code == ExitCode.REGION_UNAVAILABLE
    rows = {r["region"]: r for r in json.loads(out)}
    assert list(rows) == ["local", "east", "west"]
    for name, pools in (("local", lab.local), ("east", lab.east)):
        row = rows[name]
        assert row["reachable"] is True
        assert row["libvirt"] == "9.0.0"
        assert row["hypervisor"].startswith("QEMU ")
        assert row["accel"] in ("kvm", "tcg")
        assert [(p["name"], p["active"], p["path"]) for p in row["pool_checks"]] == [
            (p.name, True, str(p.path)) for p in pools
        ]
        assert all(p["available"] > 0 for p in row["pool_checks"])
        assert row["status"] in ("ok", "warn")  # warn only for a nearly full disk
    west = rows["west"]
    assert (west["status"], west["reachable"], west["pool_checks"]) == ("fail", False, [])
    assert west["detail"].startswith(
        "region west: connect: libvirt host qemu+tcp://127.0.0.1:1/system unreachable"
    ) or west["detail"].startswith(
        "connect: libvirt host qemu+tcp://127.0.0.1:1/system unreachable"
    )
    assert "Connection refused" in west["detail"]

    code, out, _ = run(["region", "check", "local", "east"], capsys)
    assert code == 0
    assert "west" not in out


@pytest.fixture
def odd_pools(
    system_hv: Hypervisor, scratch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """A regions.yaml whose local region has an inactive pool, an undefined one, and one
    that sigvirt would create (check creates nothing: none of these directories appear)."""
    from tests.support.base import unique

    tag = uuid.uuid4().hex[:6]
    names = {k: unique(f"chk{tag}-{k}") for k in ("inactive", "missing", "creatable")}
    where = {k: scratch / name for k, name in names.items()}
    conn = libvirt.open(system_hv.uri)  # a pool defined and never started: raw libvirt
    pool = conn.storagePoolDefineXML(dir_pool_xml(names["inactive"], where["inactive"]), 0)
    path = tmp_path / "regions.yaml"
    path.write_text(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n"
        f"      - {names['inactive']}\n      - {names['missing']}\n"
        f"      - name: {names['creatable']}\n        path: {where['creatable']}\n"
    )
    monkeypatch.setenv(regions.ENV_REGIONS, str(path))
    try:
        yield {**names, "creatable_path": str(where["creatable"])}
        assert not any(p.exists() for p in where.values())
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            pool.undefine()
        conn.close()


def test_check_names_inactive_and_missing_pools(
    odd_pools: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["region", "check", "-o", "json"], capsys)
    assert code == ExitCode.REGION_UNAVAILABLE
    (row,) = json.loads(out)
    assert row["reachable"] is True
    assert row["status"] == "fail"
    got = [(p["name"], p["status"], p["detail"]) for p in row["pool_checks"]]
    inactive, missing, creatable = (
        odd_pools["inactive"],
        odd_pools["missing"],
        odd_pools["creatable"],
    )
    assert got == [
        (inactive, "fail",
         f"pool {inactive} is not active (virsh -c qemu:///system pool-start {inactive})"),
        (missing, "fail",
         f"pool {missing} is not defined on qemu:///system "
         "(define it, or give a path for it in regions.yaml)"),
        (creatable, "warn",
         f"not defined yet: sigvirt creates it at {odd_pools['creatable_path']} on first use"),
    ]  # fmt: skip
    assert row["detail"].startswith(f"{inactive}: pool {inactive} is not active")


def test_check_gives_up_on_a_host_that_does_not_answer() -> None:
    config = regions.parse(TWO_REGIONS)

    def slow(uri: str) -> Hypervisor:
        time.sleep(5)
        raise RegionUnavailable("too late")

    start = time.monotonic()
    rows = regioncheck.check(config, ["westcentralus"], opener=slow, timeout=0.3)
    assert time.monotonic() - start < 2
    assert [(r.region, r.status, r.reachable) for r in rows] == [("westcentralus", "fail", False)]
    assert rows[0].detail == "qemu+ssh://root@10.0.0.2/system: no answer within 0s"
    assert regioncheck.unavailable(rows) == ["westcentralus"]
