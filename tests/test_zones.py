"""Availability zones: a region of zones, each a libvirt host of its own (the homelab case).

Offline: the regions.yaml syntax and its refusals, the replication plan spreading a region's
replicas over its zones, a scale set's instances spread over zones, a zoned region never
resolving to one of its hosts by its name alone. With three extra hosts (`lab_hosts`): a
version replicated to a region of three zones, a scale set with one instance in each, a zone
whose daemon is down skipped by `vmss scale`, and `vm create --zone`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest
import testinfra

from sigvirt.catalog.fleet import ScaleSetModel
from sigvirt.catalog.records import ImageVersion, Replica, ReplicaState
from sigvirt.catalog.store import GalleryStore
from sigvirt.cli import main, spread_variadic
from sigvirt.context import Context
from sigvirt.errors import ConfigError, ExitCode, InvalidArgument, NotFound, Unsupported
from sigvirt.guests import zonal
from sigvirt.guests.inventory import Vm
from sigvirt.hosts import regions
from sigvirt.hosts.connections import Connections
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.versions import targets
from tests.support.base import SshKey, unique
from tests.support.hostb import HostB
from tests.support.replication import sha256

HOMELAB = """\
regions:
  local:
    uri: qemu:///system
    pools: [sigvirt-a]
  homelab:
    pools: [{name: sigvirt, path: /var/lib/sigvirt/pool}]
    zones:
      "1": {uri: "qemu+ssh://root@h1/system"}
      "2": {uri: "qemu+ssh://root@h2/system", pools: [{name: fast, path: /srv/fast}]}
      3: {uri: "qemu+ssh://root@h3/system", accel: tcg, clones_per_replica: 4}
"""


# -- regions.yaml -----------------------------------------------------------------------------
@pytest.mark.offline
def test_a_zoned_region_lists_its_zones_each_a_host_with_the_regions_defaults() -> None:
    config = regions.parse(HOMELAB)
    homelab = config.region("homelab")
    assert homelab.zone_names == ("1", "2", "3") and homelab.uri == ""
    assert config.locations() == ["local", "homelab/1", "homelab/2", "homelab/3"]
    assert config.locations("homelab") == ["homelab/1", "homelab/2", "homelab/3"]
    one, two, three = (config.region(f"homelab/{z}") for z in "123")
    assert (one.zone, one.uri, one.pools) == ("1", "qemu+ssh://root@h1/system", homelab.pools)
    assert [p.name for p in two.pools] == ["fast"]
    assert (three.accel, three.clones_per_replica, one.accel) == ("tcg", 4, "auto")
    assert not homelab.is_local and one.location == "homelab/1"
    assert regions.parse(regions.dump(config)) == config


@pytest.mark.offline
@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "  homelab:\n",
            "  homelab:\n    uri: qemu:///system\n",
            "regions.yaml:6: regions.homelab.uri: a region with zones has no uri of its own "
            "(each zone names its host)",
        ),
        (
            '"2": {uri',
            '"z 2": {uri',
            "regions.yaml:9: regions.homelab.zones: invalid zone name 'z 2' "
            "(1-16 letters, digits, '-' or '_')",
        ),
        (
            "accel: tcg",
            "acel: tcg",
            "regions.yaml:10: regions.homelab.zones.3: unknown key 'acel' (did you mean 'accel'?)",
        ),
        (
            "    pools: [{name: sigvirt, path: /var/lib/sigvirt/pool}]\n",
            "",
            "regions.yaml:7: regions.homelab.zones.1: missing key 'pools' "
            "(the region lists no pools for its zones)",
        ),
        (
            '"1": {uri: "qemu+ssh://root@h1/system"}',
            '"1": {pools: [x]}',
            "regions.yaml:8: regions.homelab.zones.1: missing key 'uri'",
        ),
        (
            '"1": {uri: "qemu+ssh://root@h1/system"}',
            '"1": {uri: "qemu+ssh://root@h1/system", description: x}',
            "regions.yaml:8: regions.homelab.zones.1: unknown key 'description' "
            "(expected one of uri, pools, accel, network, clones_per_replica, architectures, "
            "memory)",
        ),
        (
            "      3: {uri",
            '      "1": {uri',
            "regions.yaml:10: regions.homelab.zones: duplicate key '1' (first on line 8)",
        ),
    ],
    ids=[
        "uri-and-zones",
        "zone-name",
        "zone-key-typo",
        "no-pools",
        "no-uri",
        "zone-key",
        "duplicate-zone",
    ],
)
def test_zone_syntax_refusals_name_their_line(old: str, new: str, expected: str) -> None:
    assert old in HOMELAB
    with pytest.raises(ConfigError) as err:
        regions.parse(HOMELAB.replace(old, new, 1))
    assert str(err.value.message) == expected


@pytest.mark.offline
def test_a_zone_the_region_lacks_is_not_found_and_a_zoned_name_alone_opens_no_host() -> None:
    config = regions.parse(HOMELAB)
    with pytest.raises(NotFound, match=r"region homelab has no zone '4' \(it has zones 1, 2, 3\)"):
        config.region("homelab/4")
    with pytest.raises(NotFound, match=r"region local has no zone '1' \(it has no zones\)"):
        config.region("local/1")

    def never(uri: str) -> Hypervisor:
        raise AssertionError(f"opened {uri}")

    conns = Connections(config, opener=never)
    for ask in (conns.hv, conns.host, conns.ports):
        with pytest.raises(Unsupported, match=r"region homelab has zones \(1, 2, 3\)"):
            ask("homelab")


@pytest.mark.offline
def test_region_add_takes_zones_and_remove_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = regions.shipped_text()
    path = tmp_path / "regions.yaml"
    path.write_text(shipped)
    monkeypatch.setenv(regions.ENV_REGIONS, str(path))
    monkeypatch.setenv(regions.ENV_GALLERY_ROOT, str(tmp_path / "galleries"))
    add = ("region", "add", "homelab", "--zone", "1=test:///default", "--zone", "2=test:///default",
           "--pool", "p=/srv/p", "--accel", "tcg")  # fmt: skip
    assert main([*add, "--uri", "test:///default"]) == ExitCode.CONFIG
    assert "a region with zones has no uri of its own" in capsys.readouterr().err
    assert main(["region", "add", "x", "--pool", "p"]) == ExitCode.INVALID_ARGUMENT
    assert "--uri URI, or its zones: --zone 1=URI" in capsys.readouterr().err
    assert main(list(add)) == 0, capsys.readouterr().err
    homelab = regions.load(path).region("homelab")
    assert homelab.zone_names == ("1", "2")
    assert all((z.accel, [p.name for p in z.pools]) == ("tcg", ["p"]) for z in homelab.zones)
    assert path.read_text().startswith(shipped)
    assert main(["region", "remove", "homelab"]) == 0, capsys.readouterr().err
    assert path.read_text() == shipped


# -- plans (pure) -----------------------------------------------------------------------------
def _version(*replicas: Replica) -> ImageVersion:
    return ImageVersion(gallery="g", definition="d", name="1.0.0", replicas=replicas,
                        source_region="local", target_regions={"local": 1})  # fmt: skip


def _lookup(where: str, pool: str) -> Path:
    return Path("/pools") / where / pool


@pytest.mark.offline
def test_replicas_spread_over_zones_one_each_then_round_robin() -> None:
    config = regions.parse(HOMELAB)
    first = Replica("local", "sigvirt-a", "g-d-1.0.0-local-0.qcow2", "/x",
                    ReplicaState.COMPLETED)  # fmt: skip
    rec = _version(first)
    p = targets.plan(rec, {"local": 1, "homelab": 3}, config, {}, _lookup)
    assert [(r.zone, r.pool, r.path) for r in p.add] == [
        ("1", "sigvirt", "/pools/homelab/1/sigvirt/g-d-1.0.0-homelab-0.qcow2"),
        ("2", "fast", "/pools/homelab/2/fast/g-d-1.0.0-homelab-1.qcow2"),
        ("3", "sigvirt", "/pools/homelab/3/sigvirt/g-d-1.0.0-homelab-2.qcow2"),
    ]
    assert [a.region for a in targets.replication_actions(rec, p)] == [
        "homelab/1", "homelab/2", "homelab/3"
    ]  # fmt: skip
    # Two more: the least loaded zones first (all hold one: zones 1 and 2).
    grown = _version(first, *p.add)
    more = targets.plan(grown, {"local": 1, "homelab": 5}, config, {}, _lookup)
    assert [r.zone for r in more.add] == ["1", "2"]
    # Fewer replicas than zones: the first zones.
    two = targets.plan(rec, {"local": 1, "homelab": 2}, config, {}, _lookup)
    assert [r.zone for r in two.add] == ["1", "2"]


@pytest.mark.offline
def test_a_scale_set_spreads_balanced_and_refills_only_the_zones_that_answer() -> None:
    assert zonal.spread(("1", "2", "3"), {}, [0, 1, 2, 3]) == {0: "1", 1: "2", 2: "3", 3: "1"}
    assert zonal.spread(("1", "2", "3"), {"1": 2, "2": 1}, [7, 8]) == {7: "3", 8: "2"}
    model = ScaleSetModel(name="s", region="homelab", image="g/d", zones=("1", "2", "3"),
                          instance_zones={"0": "1", "1": "2", "2": "3"})  # fmt: skip
    found = [
        Vm(f"s-{i}", "homelab", "running", "g/d/1.0.0", "", "", "", "", 1, 128, "s", i, zone=z)
        for i, z in ((0, "1"), (1, "2"))
    ]
    # Zone 3 is down: its instance 2 still counts; the two new ones go to zones 1 and 2.
    out = zonal.scale_out(model, found, 5, ["1", "2"], {"3": "libvirt does not answer"})
    assert out == ([3, 4], {3: "1", 4: "2"})
    assert zonal.scale_out(model, found, 3, ["1", "2"], {"3": "down"}) is None


@pytest.mark.offline
def test_zones_asked_of_a_scale_set_are_checked_against_its_region(tmp_path: Path) -> None:
    config = regions.parse(HOMELAB)
    ctx = Context(store=GalleryStore(tmp_path), regions=config)
    assert zonal.check(ctx, "homelab", None) == ("1", "2", "3")  # all, by default
    assert zonal.check(ctx, "homelab", ["3", "1"]) == ("3", "1")
    assert zonal.check(ctx, "local", []) == ()
    for region, zones, line in (
        ("local", ["1"], "--zones '1': region local has no zones"),
        ("homelab", ["1", "4"], "--zones '4': region homelab has zones 1, 2, 3"),
        ("homelab", ["2", "2"], "--zones 2 2: a zone is given twice"),
    ):
        with pytest.raises(InvalidArgument) as err:
            zonal.check(ctx, region, zones)
        assert err.value.message == line
    only_one = _version(Replica("homelab", "sigvirt", "v", "/p", ReplicaState.COMPLETED, zone="1"))
    with pytest.raises(NotFound, match="no completed replica in zone 2 of region homelab"):
        zonal.check(ctx, "homelab", ["1", "2"], only_one)


@pytest.mark.offline
def test_short_zones_flag_takes_several_values_as_az_does() -> None:
    # az: `vmss create -z 1 2 3`; `vm create -z 2` stays one value
    assert spread_variadic(["vmss", "create", "-z", "1", "2", "3", "-n", "x"]) == [
        "vmss", "create", "-z", "1", "-z", "2", "-z", "3", "-n", "x",
    ]  # fmt: skip
    assert spread_variadic(["vm", "create", "-z", "2", "-n", "x"]) == [
        "vm", "create", "-z", "2", "-n", "x",
    ]  # fmt: skip


# -- three zones, three hosts -------------------------------------------------------------------
GD = ("-r", "zonal", "-i", "img")


@dataclass(frozen=True)
class Lab:
    zones: dict[str, HostB]
    pools: dict[str, tuple[str, Path]]  # zone → (pool, path)
    env: dict[str, str]
    root: Path
    key: SshKey
    image: Path

    def sigvirt(self, *argv: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sigvirt", *argv],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def json(self, *argv: str) -> Any:
        ran = self.sigvirt(*argv, "-o", "json")
        assert ran.returncode == 0, ran.stderr
        return json.loads(ran.stdout)

    def domains(self, zone: str) -> set[str]:
        conn = libvirt.open(self.zones[zone].tcp_uri)
        try:
            return {d.name() for d in conn.listAllDomains(0)}
        finally:
            conn.close()


def _sweep(hb: HostB, prefix: str, pool: str) -> None:
    """Every domain named `prefix`… and the pool (with its volumes) gone from the host."""
    with contextlib.suppress(libvirt.libvirtError):
        conn = libvirt.open(hb.tcp_uri)
        try:
            for dom in conn.listAllDomains(0):
                if dom.name().startswith(prefix):
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.destroy()
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            p = conn.storagePoolLookupByName(pool)
            if p.isActive():
                p.refresh(0)
                for vol in p.listAllVolumes(0):
                    vol.delete(0)
                p.destroy()
            p.undefine()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def lab(
    scratch: Path, system_hv: Hypervisor, lab_hosts: list[HostB], tiny_image: Path,
    ssh_key: SshKey,
) -> Iterator[Lab]:  # fmt: skip
    tag = uuid.uuid4().hex[:6]
    root = scratch / f"zones-{tag}"
    root.mkdir(mode=0o755)
    zones = dict(zip("123", lab_hosts[:3], strict=True))
    local_pool = unique(f"zl{tag}")
    pools: dict[str, tuple[str, Path]] = {}
    try:
        system_hv.ensure_dir_pool(local_pool, root / "local")
        for z, hb in zones.items():
            name = unique(f"z{z}{tag}")
            pools[z] = (name, hb.pool(name))
        text = (
            f"gallery_root: {root / 'galleries'}\nregions:\n"
            f"  local:\n    uri: qemu:///system\n"
            f"    pools: [{{name: {local_pool}, path: {root / 'local'}}}]\n"
            "    network: {type: user-forward, ports: 25000-25099}\n"
            "  lab:\n    zones:\n"
        )
        for i, (z, hb) in enumerate(zones.items()):
            low = 25100 + 100 * i  # one machine's loopback: each host its own forward range
            text += (
                f'      "{z}":\n        uri: "{hb.uri}"\n        pools: [{pools[z][0]}]\n'
                f"        network: {{type: user-forward, ports: {low}-{low + 99}}}\n"
            )
        path = root / "regions.yaml"
        path.write_text(text)
        env = {**os.environ, regions.ENV_REGIONS: str(path)}
        env.pop(regions.ENV_GALLERY_ROOT, None)
        lab = Lab(zones, pools, env, root, ssh_key, tiny_image)
        assert lab.sigvirt("sig", "create", "-r", "zonal").returncode == 0
        made = lab.sigvirt("sig", "image-definition", "create", *GD, "-p", "p", "-f", "o",
                           "-s", "s", "--os-type", "Linux")  # fmt: skip
        assert made.returncode == 0, made.stderr
        yield lab
    finally:
        for z, hb in zones.items():
            if z in pools:
                _sweep(hb, "zn", pools[z][0])
                shutil.rmtree(pools[z][1], ignore_errors=True)
        for dom in system_hv.domains():
            if dom.name.startswith("zn"):
                with contextlib.suppress(Exception):
                    system_hv.domain(dom.name).destroy()
        system_hv.delete_pool(local_pool)
        shutil.rmtree(root, ignore_errors=True)


def _guest(lab: Lab, zone: str, instance: dict[str, Any]) -> testinfra.host.Host:
    """The instance over SSH, tunnelled through its zone's sshd (its forward listens on that
    host's loopback)."""
    hb = lab.zones[zone]
    port = instance["sigvirt"]["address"].rsplit(":", 1)[1]
    config = lab.root / f"ssh-{instance['name']}.config"
    config.write_text(
        f"Host guest\n  HostName 127.0.0.1\n  Port {port}\n"
        f"  User {instance['osProfile']['adminUsername']}\n"
        f"  IdentityFile {lab.key.private}\n  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        f"  ProxyCommand ssh -i {hb.key_path} -p {hb.ssh_port} -o StrictHostKeyChecking=no"
        " -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -W %h:%p root@127.0.0.1\n"
    )
    return testinfra.get_host("ssh://guest", ssh_config=str(config))


@pytest.mark.multihost
@pytest.mark.guest
def test_zones_hold_a_replica_each_and_a_scale_set_spreads_over_them(lab: Lab) -> None:
    """--target-regions lab=3: one replica per zone, byte for byte on each host; a scale set
    --zones 1 2 3 of 3: one instance per zone, each on its zone's host, SSH reaching each;
    zone 3's daemon down: `vmss scale --new-capacity 5` puts the 2 new instances in zones 1
    and 2 and says it skipped zone 3, a new scale set over zones 1 and 3 fails zone 3's
    instance alone, `region check` fails zone 3 alone; `vm create --zone 2` lands on zone 2's
    host. `sig space` and `sig gc` read each zone's host."""
    made = lab.json("sig", "image-version", "create", *GD, "-e", "1.0.0", "--source",
                    str(lab.image), "--target-regions", "lab=3")  # fmt: skip
    assert made["replicationStatus"]["aggregatedState"] == "Completed"
    counts = {
        t["name"]: t["regionalReplicaCount"] for t in made["publishingProfile"]["targetRegions"]
    }
    assert counts["lab"] == 3
    zoned = sorted((r["zone"], r) for r in made["sigvirt"]["replicas"] if r["region"] == "lab")
    assert [z for z, _r in zoned] == ["1", "2", "3"]
    for z, r in zoned:
        assert (r["state"], r["pool"]) == ("completed", lab.pools[z][0])
        assert lab.zones[z].sha256sum(r["path"]) == made["sigvirt"]["sha256"], z
    (home,) = [r for r in made["sigvirt"]["replicas"] if r["region"] == "local"]
    assert "zone" not in home and sha256(home["path"]) == made["sigvirt"]["sha256"]
    space = lab.json("sig", "space", "--location", "lab")  # each zone's host read
    assert {v["region"]: [x["present"] for x in v["replicas"]] for v in space["versions"]} == {
        "lab/1": [True], "lab/2": [True], "lab/3": [True]
    }  # fmt: skip
    orphan = lab.pools["2"][1] / "zonal-img-9.9.9-lab-7.qcow2"  # no record names it
    orphan.write_bytes(b"\0" * 65536)
    swept = lab.json("sig", "gc", "--location", "lab", "--grace", "0", "--yes")
    assert swept["unreachable"] == [] and not orphan.exists()
    assert [(i["kind"], i["region"], i["outcome"]) for i in swept["items"]] == [
        ("orphan-replica", "lab/2", "removed")
    ]

    key = str(lab.key.private) + ".pub"
    image = ("--image", "zonal/img", "--ssh-key-value", key)
    for argv, line in (
        (("vm", "create", "-n", "znx", "--region", "lab", "--zone", "4"),
         "--zone '4': region lab has zones 1, 2, 3"),
        (("vm", "create", "-n", "znx", "--region", "local", "--zone", "1"),
         "--zone '1': region local has no zones"),
        (("vmss", "create", "-n", "znx", "--region", "lab", "--zones", "1", "4"),
         "--zones '4': region lab has zones 1, 2, 3"),
    ):  # fmt: skip
        ran = lab.sigvirt(*argv, *image)
        assert ran.returncode == ExitCode.INVALID_ARGUMENT, ran.stderr
        assert line in ran.stderr

    name = f"zn{uuid.uuid4().hex[:6]}"
    try:
        made = lab.json("vmss", "create", "-n", name, *image, "--region", "lab", "--zones", "1",
                        "2", "3", "--instance-count", "3", "--vm-sku", "Lab_Tiny")  # fmt: skip
        assert made["vmss"]["zones"] == ["1", "2", "3"]
        found = lab.json("vmss", "list-instances", "-n", name)
        by_zone = {i["zones"][0]: i for i in found}
        assert len(found) == 3 and sorted(by_zone) == ["1", "2", "3"]
        for z, i in by_zone.items():
            assert [o for o in "123" if i["name"] in lab.domains(o)] == [z]
            assert _guest(lab, z, i).check_output("hostname") == i["name"]
        table = lab.sigvirt("vmss", "list-instances", "-n", name)
        assert "zone" in table.stdout.splitlines()[1], table.stdout

        with lab.zones["3"].daemon_stopped():
            ran = lab.sigvirt("vmss", "scale", "-n", name, "--new-capacity", "5", "--no-wait",
                              "-o", "json")  # fmt: skip
            assert ran.returncode == 0, ran.stderr
            assert "sigvirt: skipped zone 3: " in ran.stderr
            assert json.loads(ran.stdout)["sigvirt"]["skipped_zones"][0].startswith("zone 3: ")
            listed = lab.sigvirt("vmss", "list-instances", "-n", name, "-o", "json")
            assert "zone 3 of region lab did not answer" in listed.stderr
            assert "its 1 instance(s) are not listed" in listed.stderr
            after = json.loads(listed.stdout)
            new = {i["instanceId"]: i["zones"][0] for i in after if i["instanceId"] in "34"}
            assert new == {"3": "1", "4": "2"}
            assert f"{name}-3" in lab.domains("1") and f"{name}-4" in lab.domains("2")
            # A new scale set over zones 1 and 3: zone 3's instance fails alone.
            ran = lab.sigvirt("vmss", "create", "-n", f"{name}b", *image, "--region", "lab",
                              "--zones", "1", "3", "--instance-count", "2", "--vm-sku",
                              "Lab_Tiny", "--no-wait", "-o", "json")  # fmt: skip
            assert ran.returncode == ExitCode.GUEST_FAILED, ran.stderr
            report = json.loads(ran.stdout)["vmss"]["sigvirt"]
            assert report["created"] == [f"{name}b-0"] and f"{name}b-0" in lab.domains("1")
            assert [f.split(":")[0] for f in report["failed"]] == [f"{name}b-1"]
            assert "region lab/3: " in report["failed"][0]
            checked = lab.sigvirt("region", "check", "lab", "-o", "json")
            assert checked.returncode == ExitCode.REGION_UNAVAILABLE, checked.stderr
            rows = {r["region"]: r["status"] for r in json.loads(checked.stdout)}
            assert sorted(rows) == ["lab/1", "lab/2", "lab/3"]  # one row per zone
            assert (rows["lab/1"] != "fail", rows["lab/2"] != "fail", rows["lab/3"]) == (
                True, True, "fail"
            )  # fmt: skip

        vm = lab.json("vm", "create", "-n", f"{name}v", *image, "--region", "lab", "--zone",
                      "2", "--size", "Lab_Tiny", "--no-wait")  # fmt: skip
        assert vm["zones"] == ["2"] and f"{name}v" in lab.domains("2")
        assert f"{name}v" not in lab.domains("1") | lab.domains("3")
        # No --zone: the zone running the fewest guests (zone 3 runs one, the others three).
        vm = lab.json("vm", "create", "-n", f"{name}w", *image, "--region", "lab", "--size",
                      "Lab_Tiny", "--no-wait")  # fmt: skip
        assert vm["zones"] == ["3"] and f"{name}w" in lab.domains("3")
    finally:
        for vm_name in (f"{name}v", f"{name}w"):
            lab.sigvirt("vm", "delete", "-n", vm_name, "--yes")
        lab.sigvirt("vmss", "delete", "-n", f"{name}b")
        gone = lab.sigvirt("vmss", "delete", "-n", name)
    assert gone.returncode == 0, gone.stderr
    assert not any(d.startswith(name) for z in "123" for d in lab.domains(z))
