"""Sharing through Unix groups, with real users: the CLI refuses, and so does the kernel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.runner import Runner
from tests.support.base import PREFIX, unique

pytestmark = [pytest.mark.guest, pytest.mark.skipif(os.geteuid() != 0, reason="needs root")]
G, D = "shareGallery", "tiny"
PY = sys.executable


@dataclass(frozen=True)
class World:
    root: Path
    env: dict[str, str]
    groups: dict[str, str]  # role → group name
    users: dict[str, str]  # role → user name
    homes: dict[str, Path]
    image: Path


def run_as(world: World, who: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """The sigvirt CLI run by one of the test's users (their own groups, their own HOME)."""
    user = world.users[who]
    env = {**world.env, "HOME": str(world.homes[who]), "USER": user}
    cmd = [
        "runuser",
        "-u",
        user,
        "--",
        "env",
        *(f"{k}={v}" for k, v in env.items()),
        PY,
        "-m",
        "sigvirt",
        *argv,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def cat_as(world: World, who: str, path: Path) -> subprocess.CompletedProcess[str]:
    """Read the first bytes of a file as that user; stderr tells why it failed."""
    return subprocess.run(
        [
            "runuser",
            "-u",
            world.users[who],
            "--",
            "sh",
            "-c",
            'head -c 16 "$1" >/dev/null',
            "-",
            str(path),
        ],
        capture_output=True,
        text=True,
    )


def root_cli(world: World, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "sigvirt", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **world.env},
        timeout=300,
    )


def acl_of(path: Path) -> str:
    return Runner().run(["getfacl", "-cp", str(path)]).stdout


def _pkg_copy(scratch: Path) -> Path:
    # The checkout may sit under a directory other users can't enter (/root is 0700):
    # they import a world-readable copy of the package instead.
    dest = scratch / "pkg"
    shutil.copytree(Path(__file__).resolve().parent.parent / "sigvirt", dest / "sigvirt")
    subprocess.run(["chmod", "-R", "a+rX", str(dest)], check=True)
    return dest


@pytest.fixture(scope="module")
def world(scratch: Path, tiny_image: Path, system_hv: Hypervisor) -> Iterator[World]:
    tag = PREFIX[-6:]
    roles = ("reader", "contrib", "owner", "outsider", "nolibvirt", "extra", "attacker")
    groups = {r: f"sv{tag}{r[:3]}" for r in ("reader", "contrib", "owner", "extra", "attacker")}
    users = {r: f"sv{tag}u{r[:5]}" for r in roles}
    root = scratch / "share"
    root.mkdir(mode=0o755)
    homes = {r: root / "home" / r for r in roles}
    created_users: list[str] = []
    created_groups: list[str] = []
    try:
        for g in groups.values():
            subprocess.run(["groupadd", g], check=True)
            created_groups.append(g)
        member = {
            "reader": [groups["reader"], "libvirt"],
            "contrib": [groups["contrib"], "libvirt"],
            "owner": [groups["owner"], "libvirt"],
            "outsider": ["libvirt"],
            "nolibvirt": [groups["reader"]],
            "extra": [groups["extra"], "libvirt"],
            # a contributor of its own gallery only, and not in the libvirt group
            "attacker": [groups["attacker"]],
        }
        for role, user in users.items():
            homes[role].mkdir(parents=True)
            subprocess.run(["useradd", "-M", "-N", "-d", str(homes[role]), "-s", "/bin/sh",
                            "-G", ",".join(member[role]), user], check=True)  # fmt: skip
            created_users.append(user)
            shutil.chown(homes[role], user)
        (root / "home").chmod(0o755)
        pools = (unique("sh-a"),)
        (root / "regions.yaml").write_text(
            "regions:\n  local:\n    uri: qemu:///system\n    pools:\n"
            f"      - name: {pools[0]}\n        path: {root}/pool-a\n"
            "    network:\n      type: user-forward\n      ports: 22700-22799\n"
        )
        env = {
            "SIGVIRT_REGIONS": str(root / "regions.yaml"),
            "SIGVIRT_GALLERY_ROOT": str(root / "galleries"),
            "PYTHONPATH": str(_pkg_copy(root)),
            "PATH": f"{Path(PY).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
        }
        image = root / "tiny.qcow2"
        shutil.copyfile(tiny_image, image)
        image.chmod(0o644)
        w = World(root, env, groups, users, homes, image)
        for argv in (
            ["sig", "create", "-r", G, "--owner-group", groups["owner"]],
            ["sig", "image-definition", "create", "-r", G, "-i", D, "--publisher", "sv", "--offer", "tiny", "--sku", "1"],
            ["sig", "image-version", "create", "-r", G, "-i", D, "-e", "1.0.0", "--source", str(image)],
            ["sig", "share", "add", "-r", G, "--group", groups["reader"], "--role", "reader"],
            ["sig", "share", "add", "-r", G, "--group", groups["contrib"], "--role", "contributor"],
        ):  # fmt: skip
            res = root_cli(w, *argv)
            assert res.returncode == 0, (argv, res.stderr)
        yield w
        for dom in system_hv.domains():
            if dom.name.startswith(PREFIX + "-sh"):
                system_hv.destroy_and_undefine(dom.name)
        for v in ("1.0.1", "1.0.0"):
            root_cli(w, "sig", "image-version", "delete", "-r", G, "-i", D, "-e", v)
        system_hv.delete_pool(pools[0])
    finally:
        for user in created_users:
            subprocess.run(["userdel", user], check=False)
        for g in created_groups:
            subprocess.run(["groupdel", g], check=False)
        shutil.rmtree(root, ignore_errors=True)


def paths(world: World, version: str = "1.0.0") -> tuple[Path, Path]:
    gdir = world.root / "galleries" / G
    record = gdir / "images" / D / "versions" / f"{version}.json"
    rec = json.loads(record.read_text())
    return record, Path(rec["replicas"][0]["path"])


def test_reader_deploys_but_cannot_publish(world: World) -> None:
    name = unique("sh-reader")
    res = run_as(world, "reader", "vm", "create", "-n", name, "--image", f"{G}/{D}/1.0.0",
                 "--memory", "128", "--generate-ssh-keys", "-o", "json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    vm = json.loads(res.stdout)
    assert vm["powerState"] == "VM running"
    assert vm["osProfile"]["adminUsername"] == world.users["reader"]
    res = run_as(world, "reader", "vm", "ssh", "-n", name, "--print")
    assert res.returncode == 0 and res.stdout.startswith("ssh -i ")
    assert run_as(world, "reader", "vm", "delete", "-n", name).returncode == 0

    res = run_as(world, "reader", "sig", "image-version", "create", "-r", G, "-i", D,
                 "-e", "2.0.0", "--source", str(world.image))  # fmt: skip
    assert res.returncode == 10
    assert res.stderr.strip().startswith(
        f"sigvirt: error: permission denied: {world.users['reader']} (groups: "
    )
    assert f"may not publish versions of {G}/{D}: needs contributor, has reader" in res.stderr
    # ... and the kernel agrees: a reader can't write into the versions directory.
    versions = world.root / "galleries" / G / "images" / D / "versions"
    probe = subprocess.run(["runuser", "-u", world.users["reader"], "--", "touch", str(versions / "2.0.0.json")],
                           capture_output=True, text=True)  # fmt: skip
    assert probe.returncode != 0 and "Permission denied" in probe.stderr
    # A reader can read the record and the replica directly.
    record, replica = paths(world)
    assert cat_as(world, "reader", record).returncode == 0
    assert cat_as(world, "reader", replica).returncode == 0


def test_outsider_is_refused_by_cli_and_kernel(world: World) -> None:
    res = run_as(world, "outsider", "sig", "image-version", "show", "-r", G, "-i", D, "-e", "1.0.0")
    assert res.returncode == 10
    assert (
        res.stderr.strip()
        == f"sigvirt: error: permission denied: you have no access to gallery {G}"
    )
    res = run_as(world, "outsider", "sig", "list", "-o", "json")
    assert res.returncode == 0 and json.loads(res.stdout) == []
    record, replica = paths(world)
    for path in (record, replica, world.root / "galleries" / G / "gallery.json"):
        got = cat_as(world, "outsider", path)
        assert got.returncode != 0 and "Permission denied" in got.stderr, path


def test_definition_lists_follow_what_each_caller_may_see(world: World) -> None:
    """An outsider is refused (exit 10, not an internal error); a group shared on one
    definition lists that definition only."""
    res = run_as(world, "outsider", "sig", "image-definition", "list", "-r", G, "-o", "json")
    assert res.returncode == 10, res.stderr
    assert res.stderr.strip() == (
        f"sigvirt: error: permission denied: you have no access to gallery {G}"
    )
    other = "otherDef"
    assert root_cli(world, "sig", "image-definition", "create", "-r", G, "-i", other,
                    "--publisher", "sv", "--offer", "other", "--sku", "2").returncode == 0  # fmt: skip
    extra = world.groups["extra"]
    try:
        res = root_cli(world, "sig", "share", "add", "-r", G, "-i", D, "--group", extra,
                       "--role", "reader")  # fmt: skip
        assert res.returncode == 0, res.stderr
        res = run_as(world, "extra", "sig", "image-definition", "list", "-r", G, "-o", "json")
        assert res.returncode == 0, res.stderr
        assert [d["name"] for d in json.loads(res.stdout)] == [D]
        shared = run_as(world, "extra", "sig", "list-shared", "-o", "json")
        assert json.loads(shared.stdout) == [
            {"gallery": G, "role": "reader", "groups": [extra], "scopes": [D]}
        ]
    finally:
        root_cli(world, "sig", "share", "remove", "-r", G, "-i", D, "--group", extra)
        root_cli(world, "sig", "image-definition", "delete", "-r", G, "-i", other)


def test_reader_without_libvirt_access_is_told_so(world: World) -> None:
    res = run_as(world, "nolibvirt", "vm", "create", "-n", unique("sh-nolv"), "--image",
                 f"{G}/{D}", "--generate-ssh-keys")  # fmt: skip
    assert res.returncode == 11, res.stderr
    first = res.stderr.splitlines()[0]
    assert first.startswith("sigvirt: error: connect: libvirt at qemu:///system refused access")
    assert (
        "sigvirt: hint: lab hosts usually grant it by adding the user to the 'libvirt' group"
        in res.stderr
    )


def test_contributor_publishes_and_the_new_replica_is_shared(world: World) -> None:
    src = world.homes["contrib"] / "tiny.qcow2"
    shutil.copyfile(world.image, src)
    shutil.chown(src, world.users["contrib"])
    res = run_as(world, "contrib", "sig", "image-version", "create", "-r", G, "-i", D,
                 "-e", "1.0.1", "--source", str(src), "-o", "json")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["provisioningState"] == "Succeeded"
    _record, replica = paths(world, "1.0.1")
    acl = acl_of(replica)
    assert f"group:{world.groups['reader']}:r--" in acl
    assert f"group:{world.groups['contrib']}:r--" in acl
    assert "user:libvirt-qemu:r--" in acl
    assert cat_as(world, "reader", replica).returncode == 0
    assert cat_as(world, "outsider", replica).returncode != 0
    # The contributor can't delete it: that takes an owner.
    res = run_as(
        world, "contrib", "sig", "image-version", "delete", "-r", G, "-i", D, "-e", "1.0.1"
    )
    assert res.returncode == 10 and "needs owner, has contributor" in res.stderr


def test_owner_shares_and_unshares_and_files_follow_at_once(world: World) -> None:
    record, replica = paths(world)
    gallery_json = world.root / "galleries" / G / "gallery.json"
    extra = world.groups["extra"]
    assert cat_as(world, "extra", replica).returncode != 0
    res = run_as(world, "owner", "sig", "share", "add", "-r", G, "-i", D, "-e", "1.0.0",
                 "--group", extra, "--role", "reader")  # fmt: skip
    assert res.returncode == 0, res.stderr
    for path in (record, replica):
        assert f"group:{extra}:r--" in acl_of(path), path
    assert f"group:{extra}:r--" in acl_of(gallery_json)  # the way to the version
    assert cat_as(world, "extra", replica).returncode == 0
    # The share covers only that version: the other version stays closed to them.
    _rec101, replica101 = paths(world, "1.0.1")
    assert f"group:{extra}" not in acl_of(replica101)
    res = run_as(world, "extra", "sig", "image-version", "show", "-r", G, "-i", D, "-e", "1.0.1")
    assert res.returncode == 10

    res = run_as(
        world, "owner", "sig", "share", "remove", "-r", G, "-i", D, "-e", "1.0.0", "--group", extra
    )
    assert res.returncode == 0, res.stderr
    for path in (record, replica, gallery_json):
        assert f"group:{extra}" not in acl_of(path), path
    assert cat_as(world, "extra", replica).returncode != 0
    # Sharing is the owners' business only.
    res = run_as(
        world, "contrib", "sig", "share", "add", "-r", G, "--group", extra, "--role", "owner"
    )
    assert res.returncode == 10 and "needs owner, has contributor" in res.stderr


def test_replica_permissions_survive_a_guest_start_and_stop(world: World) -> None:
    _record, replica = paths(world)
    before = (replica.stat().st_uid, replica.stat().st_gid, replica.stat().st_mode, acl_of(replica))
    name = unique("sh-root")
    key = world.root / "rootkey"
    Runner().run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    res = root_cli(world, "vm", "create", "-n", name, "--image", f"{G}/{D}/1.0.0", "--memory", "128",
                   "--ssh-key-value", f"{key}.pub")  # fmt: skip
    assert res.returncode == 0, res.stderr
    during = (replica.stat().st_uid, replica.stat().st_gid, replica.stat().st_mode, acl_of(replica))
    assert root_cli(world, "vm", "stop", "-n", name, "--force").returncode == 0
    assert root_cli(world, "vm", "delete", "-n", name).returncode == 0
    after = (replica.stat().st_uid, replica.stat().st_gid, replica.stat().st_mode, acl_of(replica))
    assert before == during == after
    res = root_cli(world, "sig", "check-access", "-r", G, "-i", D, "-e", "1.0.0", "-o", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = json.loads(res.stdout)
    assert {r["principal"] for r in rows} >= {
        "user libvirt-qemu",
        f"group {world.groups['reader']}",
    }
    assert all(r["can_read"] for r in rows)


def test_a_contributor_rewriting_a_record_gets_no_access_to_another_gallery(
    world: World,
) -> None:
    """The attack that worked once: a contributor of gallery `atk` rewrites a version record
    of atk (the ACL lets contributors write records) to name the victim's replica, or to
    claim it belongs to the victim's gallery, then runs the root helper every user may run
    through sudo. The helper refuses those records, naming them, and the victim's replica
    stays unreadable."""
    atk, attacker = "atkGallery", world.groups["attacker"]
    for argv in (
        ["sig", "create", "-r", atk],
        ["sig", "image-definition", "create", "-r", atk, "-i", D, "--publisher", "a",
         "--offer", "a", "--sku", "a"],
        ["sig", "image-version", "create", "-r", atk, "-i", D, "-e", "1.0.0",
         "--source", str(world.image)],
        ["sig", "share", "add", "-r", atk, "--group", attacker, "--role", "contributor"],
    ):  # fmt: skip
        res = root_cli(world, *argv)
        assert res.returncode == 0, (argv, res.stderr)
    _victim_record, victim_replica = paths(world)
    assert cat_as(world, "attacker", victim_replica).returncode != 0
    record = world.root / "galleries" / atk / "images" / D / "versions" / "1.0.0.json"
    original = record.read_text()
    helper = str(Path(PY).parent / "sigvirt-access-sync")
    regions_file = world.env["SIGVIRT_REGIONS"]
    try:
        for forged in ({"path": str(victim_replica)}, {"gallery": G, "path": str(victim_replica)}):
            rec = json.loads(original)
            rec["replicas"][0]["path"] = forged["path"]
            if "gallery" in forged:
                rec["gallery"] = forged["gallery"]
            write = subprocess.run(
                ["runuser", "-u", world.users["attacker"], "--", "sh", "-c", 'cat > "$1"', "-",
                 str(record)], input=json.dumps(rec), text=True, capture_output=True,
            )  # fmt: skip
            assert write.returncode == 0, write.stderr  # contributors may write records
            res = subprocess.run(
                ["runuser", "-u", world.users["attacker"], "--", "sudo", "-n", helper,
                 "--gallery-root", str(world.root / "galleries"), "--regions", regions_file,
                 atk], capture_output=True, text=True,
            )  # fmt: skip
            said = res.stdout + res.stderr
            assert str(record) in said, said  # the refused record is named
            assert cat_as(world, "attacker", victim_replica).returncode != 0, forged
            assert f"group:{attacker}" not in acl_of(victim_replica)
    finally:
        record.write_text(original)
        root_cli(world, "sig", "image-version", "delete", "-r", atk, "-i", D, "-e", "1.0.0")
        root_cli(world, "sig", "image-definition", "delete", "-r", atk, "-i", D)
        root_cli(world, "sig", "delete", "-r", atk)


def test_the_root_helper_refuses_a_regions_file_a_user_could_write(world: World) -> None:
    mine = world.homes["attacker"] / "regions.yaml"
    mine.write_text(Path(world.env["SIGVIRT_REGIONS"]).read_text())
    shutil.chown(mine, world.users["attacker"])
    helper = str(Path(PY).parent / "sigvirt-access-sync")
    res = subprocess.run(
        ["runuser", "-u", world.users["attacker"], "--", "sudo", "-n", helper,
         "--gallery-root", str(world.root / "galleries"), "--regions", str(mine), G],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 10, res.stderr
    assert "refused" in res.stderr and "not owned by root" in res.stderr
