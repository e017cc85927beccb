"""VMs and scale sets from a published version: real guests on linked clones, testinfra."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra

from sigvirt.cli import main
from sigvirt.context import Context
from sigvirt.guests import guest, vms
from sigvirt.hosts import ssh as sshlib
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import load
from sigvirt.runner import Runner
from tests.support.base import PREFIX, SshKey, unique
from tests.support.hostb import HostB

pytestmark = pytest.mark.guest
G, D = "vmGallery", "tiny"


@dataclass(frozen=True)
class Lab:
    root: Path
    pools: tuple[str, str]
    key: SshKey


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    code, out, err = cli(capsys, *argv, "-o", "json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def lab(scratch: Path, system_hv: Hypervisor, tiny_image: Path, ssh_key: SshKey) -> Iterator[Lab]:
    root = scratch / "vmlab"
    root.mkdir()
    pools = (unique("vm-a"), unique("vm-b"))
    (root / "regions.yaml").write_text(
        "regions:\n"
        "  local:\n"
        "    uri: qemu:///system\n"
        "    pools:\n"
        f"      - name: {pools[0]}\n        path: {root}/pool-a\n"
        f"      - name: {pools[1]}\n        path: {root}/pool-b\n"
        "    network:\n      type: user-forward\n      ports: 22400-22599\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGVIRT_REGIONS", str(root / "regions.yaml"))
        mp.setenv("SIGVIRT_GALLERY_ROOT", str(root / "galleries"))
        assert main(["sig", "create", "-r", G]) == 0
        assert main(["sig", "image-definition", "create", "-r", G, "-i", D, "--publisher", "sv",
                     "--offer", "tiny", "--sku", "1", "--minimum-memory", "128",
                     "--maximum-memory", "1024", "--maximum-cpu-core", "2"]) == 0  # fmt: skip
        code = main(["sig", "image-version", "create", "-r", G, "-i", D, "-e", "1.0.0",
                     "--source", str(tiny_image), "--target-regions", "local=2"])  # fmt: skip
        assert code == 0
        yield Lab(root, pools, ssh_key)
        for dom in system_hv.domains():
            if dom.name.startswith(PREFIX):
                main(["vm", "delete", "-n", dom.name])
        main(["sig", "image-version", "delete", "-r", G, "-i", D, "-e", "1.0.0"])
    for pool in pools:
        system_hv.delete_pool(pool)
    shutil.rmtree(root, ignore_errors=True)


def backing_of(overlay: str) -> str:
    info = Runner().run(["qemu-img", "info", "-U", "-f", "qcow2", "--output=json", overlay]).stdout
    return str(json.loads(info)["backing-filename"])


def host(vm: dict[str, object], key: SshKey) -> testinfra.host.Host:
    hostport = str(vm["address"])
    return testinfra.get_host(
        f"paramiko://{vm['admin_user']}@{hostport}", ssh_identity_file=str(key.private)
    )


def overlay_of(hv: Hypervisor, name: str) -> str:
    from sigvirt.guests import guest

    prov = guest.provenance_of(hv.domain(name))
    assert prov is not None
    return str(hv.volume_path(prov.overlay_pool, prov.overlay))


def test_scale_set_spreads_over_replicas_and_scales(
    lab: Lab,
    capsys: pytest.CaptureFixture[str],
    system_hv: Hypervisor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIGVIRT_REGIONS", str(lab.root / "regions.yaml"))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(lab.root / "galleries"))
    name = unique("web")
    pub = str(lab.key.private) + ".pub"
    result = cli_json(capsys, "vmss", "create", "-n", name, "--image", f"{G}/{D}",
                      "--instance-count", "4", "--memory", "128", "--ssh-key-value", pub,
                      "--admin-username", "labuser")  # fmt: skip
    assert isinstance(result, dict) and len(result["created"]) == 4 and not result["failed"]
    rows = cli_json(capsys, "vmss", "list-instances", "-n", name)
    assert isinstance(rows, list) and [r["instance"] for r in rows] == [0, 1, 2, 3]
    # Spread read from the real backing files, not from sigvirt's own bookkeeping.
    spread = Counter(backing_of(overlay_of(system_hv, r["name"])) for r in rows)
    assert sorted(spread.values()) == [2, 2], spread
    for r in rows:
        h = host(r, lab.key)
        assert h.check_output("hostname") == r["name"]

    cli_json(capsys, "vmss", "scale", "-n", name, "--new-capacity", "6")
    rows = cli_json(capsys, "vmss", "list-instances", "-n", name)
    assert isinstance(rows, list) and [r["instance"] for r in rows] == [0, 1, 2, 3, 4, 5]
    spread = Counter(backing_of(overlay_of(system_hv, r["name"])) for r in rows)
    assert sorted(spread.values()) == [3, 3], spread
    assert host(rows[5], lab.key).check_output("hostname") == rows[5]["name"]

    result = cli_json(capsys, "vmss", "scale", "-n", name, "--new-capacity", "2")
    assert isinstance(result, dict)
    assert sorted(result["deleted"]) == sorted(f"{name}-{i}" for i in (2, 3, 4, 5))
    rows = cli_json(capsys, "vmss", "list-instances", "-n", name)
    assert isinstance(rows, list) and [r["instance"] for r in rows] == [0, 1]

    # The version can't go while clones depend on it; the refusal names them.
    code, _out, err = cli(capsys, "sig", "image-version", "delete", "-r", G, "-i", D, "-e", "1.0.0")
    assert code == 6
    assert f"domain {name}-0" in err and f"domain {name}-1" in err

    # Flatten one (live), delete the other: then the version has no dependents.
    cli_json(capsys, "vm", "flatten", "-n", f"{name}-0")
    overlay = overlay_of(system_hv, f"{name}-0")
    info = json.loads(
        Runner().run(["qemu-img", "info", "-U", "-f", "qcow2", "--output=json", overlay]).stdout
    )
    assert "backing-filename" not in info
    assert host(rows[0], lab.key).check_output("hostname") == f"{name}-0"
    deps = cli_json(capsys, "sig", "image-version", "dependents", "-r", G, "-i", D, "-e", "1.0.0")
    assert isinstance(deps, list)
    # The running domain and its overlay volume (whose backingStore is the replica).
    assert [d["name"] for d in deps if d["kind"] == "domain"] == [f"{name}-1"]
    assert [d["name"].split("/")[1] for d in deps if d["kind"] == "volume"] == [f"{name}-1.qcow2"]
    cli_json(capsys, "vmss", "delete", "-n", name)
    deps = cli_json(capsys, "sig", "image-version", "dependents", "-r", G, "-i", D, "-e", "1.0.0")
    assert deps == []


def test_vm_lifecycle_and_ssh_command(
    lab: Lab, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIGVIRT_REGIONS", str(lab.root / "regions.yaml"))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(lab.root / "galleries"))
    name = unique("vm1")
    pub = str(lab.key.private) + ".pub"
    vm = cli_json(capsys, "vm", "create", "-n", name, "--image", f"{G}/{D}/1.0.0",
                  "--memory", "128", "--ssh-key-value", pub)  # fmt: skip
    assert isinstance(vm, dict) and vm["state"] == "running"
    assert vm["admin_user"] == "azureuser"  # root's default, as in az
    assert vm["ssh"].startswith(f"ssh -i {lab.key.private} -p ")
    shown = cli_json(capsys, "vm", "show", "-n", name)
    assert isinstance(shown, dict) and shown["ssh"] == vm["ssh"]
    code, out, _err = cli(capsys, "vm", "ssh", "-n", name, "--print", "--", "hostname")
    assert code == 0 and out.strip().endswith("hostname")
    assert host(vm, lab.key).check_output("hostname") == name
    stopped = cli_json(capsys, "vm", "stop", "-n", name, "--force")
    assert isinstance(stopped, dict) and stopped["state"] == "stopped"
    started = cli_json(capsys, "vm", "start", "-n", name)
    assert isinstance(started, dict) and started["state"] == "running"
    listed = cli_json(capsys, "vm", "list")
    assert isinstance(listed, list) and name in [v["name"] for v in listed]
    cli_json(capsys, "vm", "delete", "-n", name)
    code, _out, err = cli(capsys, "vm", "show", "-n", name)
    assert code == 4 and err.strip() == f"sigvirt: error: VM {name} not found"


@pytest.mark.parametrize(
    ("args", "code", "line"),
    [
        (["--image", "noGallery/tiny"], 4, "sigvirt: error: gallery noGallery not found"),
        (["--image", "bad-gallery/x"], 3, "sigvirt: error: gallery name 'bad-gallery' is invalid"),
        (
            ["--image", f"{G}/{D}", "--region", "mars"],
            4,
            "sigvirt: error: region 'mars' not found (known: local)",
        ),
        (
            ["--image", f"{G}/{D}", "--memory", "4096"],
            15,
            "sigvirt: error: 4096 MiB of memory is outside",
        ),
        (["--image", f"{G}/{D}", "--vcpus", "4"], 15, "sigvirt: error: 4 vCPUs is outside"),
        (
            ["--image", f"{G}/{D}/9.9.9"],
            4,
            f"sigvirt: error: image version {G}/{D}/9.9.9 not found",
        ),
    ],
)
def test_vm_create_refuses_bad_input_with_one_line(
    lab: Lab, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    args: list[str], code: int, line: str, system_hv: Hypervisor,
) -> None:  # fmt: skip
    monkeypatch.setenv("SIGVIRT_REGIONS", str(lab.root / "regions.yaml"))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(lab.root / "galleries"))
    name = unique("bad")
    got, _out, err = cli(capsys, "vm", "create", "-n", name, "--ssh-key-value",
                         str(lab.key.private) + ".pub", *args)  # fmt: skip
    assert got == code, err
    assert err.splitlines()[0].startswith(line), err
    assert len(err.strip().splitlines()) == 1
    assert not system_hv.domain_exists(name)


def test_region_without_completed_replica_is_refused(
    lab: Lab, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    regions = lab.root / "regions-two.yaml"
    text = (lab.root / "regions.yaml").read_text()
    regions.write_text(
        text + f"  west:\n    uri: qemu:///system\n    pools:\n      - name: {lab.pools[1]}\n"
    )
    monkeypatch.setenv("SIGVIRT_REGIONS", str(regions))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(lab.root / "galleries"))
    key = str(lab.key.private) + ".pub"
    got, _out, err = cli(capsys, "vm", "create", "-n", unique("west"), "--image", f"{G}/{D}",
                         "--region", "west", "--ssh-key-value", key)  # fmt: skip
    assert got == 4
    # The hint keeps the other regions' replicas: --target-regions replaces the whole list.
    assert err.splitlines() == [
        f"sigvirt: error: image version {G}/{D}/1.0.0 has no completed replica in region west",
        f"sigvirt: hint: sigvirt sig image-version update --gallery-name {G} "
        f"--gallery-image-definition {D} --gallery-image-version 1.0.0 "
        "--target-regions local=2 west=1",
    ]


@pytest.mark.hostb
def test_vm_on_the_second_host_is_created_reached_and_deleted(
    lab: Lab, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, hostb: HostB
) -> None:
    pool = hostb.domain_name("vm-east")
    path = hostb.pool(pool)
    regions = lab.root / "regions-east.yaml"
    regions.write_text(
        (lab.root / "regions.yaml").read_text()
        + f"  east:\n    uri: {hostb.uri}\n    pools:\n      - name: {pool}\n        path: {path}\n"
        "    network:\n      type: user-forward\n      ports: 23400-23499\n"
    )
    monkeypatch.setenv("SIGVIRT_REGIONS", str(regions))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(lab.root / "galleries"))
    cli_json(capsys, "sig", "image-version", "update", "-r", G, "-i", D, "-e", "1.0.0",
             "--target-regions", "local=2", "east=1")  # fmt: skip
    name = hostb.domain_name("east1")
    key = str(lab.key.private) + ".pub"
    try:
        vm = cli_json(capsys, "vm", "create", "-n", name, "--image", f"{G}/{D}", "--region", "east",
                      "--memory", "128", "--ssh-key-value", key)  # fmt: skip
        assert isinstance(vm, dict) and vm["region"] == "east" and vm["state"] == "running"
        # Its port forward listens on hostB's loopback; sigvirt reaches it through hostB's sshd.
        assert f"-J root@127.0.0.1:{hostb.ssh_port}" in vm["ssh"]
        code, out, err = cli(capsys, "vm", "list", "--region", "east", "-o", "json")
        assert code == 0 and name in [v["name"] for v in json.loads(out)], err
        with Context.from_config(load(regions)) as ctx:
            hv, _r, dom = vms.find(ctx, name, "east")
            prov = guest.provenance_of(dom)
            assert prov is not None
            ep = vms.endpoint_of(hv, prov)
            assert ep is not None
            assert sshlib.run(ep, "hostname").stdout.strip() == name
    finally:
        cli(capsys, "vm", "delete", "-n", name, "--region", "east")
    code, _o, err = cli(capsys, "vm", "show", "-n", name, "--region", "east")
    assert code == 4, err
    cli_json(capsys, "sig", "image-version", "update", "-r", G, "-i", D, "-e", "1.0.0",
             "--target-regions", "local=2")  # fmt: skip
