"""`sig image-version retire`: a dry run prints the plan and changes nothing (files, records,
domains); the real run does exactly what it listed — the scale set moved to the newer
version by a rolling upgrade, the standalone VM flattened, the replicas and the version
deleted — and a version with a scale set on it and nothing newer is refused."""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
import testinfra

from sigvirt.catalog.fleet import FleetStore
from sigvirt.cli import main
from sigvirt.context import Context
from sigvirt.errors import ExitCode
from sigvirt.guests import domxml, scalesets
from sigvirt.guests.domxml import Provenance
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import load
from sigvirt.runner import Runner
from tests.support.base import PREFIX, SshKey, unique
from tests.support.catalog import tree
from tests.support.fleetlab import cli, cli_json

pytestmark = pytest.mark.guest
G, D = "retGallery", "tiny"
V1, V2 = f"{G}/{D}/1.0.0", f"{G}/{D}/1.1.0"


@pytest.fixture(scope="module")
def lab(scratch: Path, system_hv: Hypervisor, tiny_image: Path) -> Iterator[Path]:
    """A gallery with 1.0.0 and 1.1.0 (both the tiny image, two replicas each)."""
    root = scratch / "retirelab"
    root.mkdir()
    pools = (unique("ret-a"), unique("ret-b"))
    (root / "regions.yaml").write_text(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n"
        f"      - name: {pools[0]}\n        path: {root}/pool-a\n"
        f"      - name: {pools[1]}\n        path: {root}/pool-b\n"
        "    network:\n      type: user-forward\n      ports: 23200-23399\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGVIRT_REGIONS", str(root / "regions.yaml"))
        mp.setenv("SIGVIRT_GALLERY_ROOT", str(root / "galleries"))
        try:
            assert main(["sig", "create", "-r", G]) == 0
            assert main(["sig", "image-definition", "create", "-r", G, "-i", D, "-p", "sv",
                         "-f", "tiny", "-s", "1", "--os-type", "Linux"]) == 0  # fmt: skip
            for v in ("1.0.0", "1.1.0"):
                assert main(["sig", "image-version", "create", "-r", G, "-i", D, "-e", v,
                             "--source", str(tiny_image), "--target-regions", "local=2"]) == 0  # fmt: skip
            yield root
        finally:
            for dom in system_hv.domains():
                if dom.name.startswith(f"{PREFIX}-ret"):
                    main(["vm", "delete", "-n", dom.name, "--yes"])
            with Context.from_config(load(root / "regions.yaml")) as ctx:
                for model in FleetStore(ctx.store.root).list():
                    FleetStore(ctx.store.root).delete(model.name)
            for v in ("1.0.0", "1.1.0"):
                main(["sig", "image-version", "delete", "-r", G, "-i", D, "-e", v, "--yes"])
    for pool in pools:
        system_hv.delete_pool(pool)
    shutil.rmtree(root, ignore_errors=True)


def pool_files(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every file in the lab's pools; a replica's (size, mtime_ns) too (a running guest
    writes its own overlay and console log: those are only named)."""
    out: dict[str, tuple[int, int] | None] = {}
    for pool in ("pool-a", "pool-b"):
        for p in (root / pool).iterdir():
            st = p.stat()
            guests = p.name.startswith(PREFIX)
            out[f"{pool}/{p.name}"] = None if guests else (st.st_size, st.st_mtime_ns)
    return out


def domains(hv: Hypervisor) -> dict[str, str]:
    return {
        d.name: d.xml(inactive=True) for d in hv.domains() if d.name.startswith(f"{PREFIX}-ret")
    }


def test_retire_dry_run_changes_nothing_and_lists_what_the_real_run_does(
    lab: Path, capsys: pytest.CaptureFixture[str], system_hv: Hypervisor, ssh_key: SshKey
) -> None:
    ss, vm = unique("retS"), unique("retV")
    pub = f"{ssh_key.private}.pub"
    made = cli_json(capsys, "vmss", "create", "-n", ss, "--image", V1, "--instance-count", "2",
                    "--vm-sku", "Lab_Tiny", "--ssh-key-value", pub)  # fmt: skip
    assert not made["vmss"]["sigvirt"]["failed"]
    cli_json(capsys, "vm", "create", "-n", vm, "--image", V1, "--size", "Lab_Tiny",
             "--ssh-key-value", pub)  # fmt: skip
    retire = ("sig", "image-version", "retire", "-r", G, "-i", D, "-e", "1.0.0")
    shown = cli_json(capsys, "sig", "image-version", "show", "-r", G, "-i", D, "-e", "1.0.0")
    replicas = shown["sigvirt"]["replicas"]

    before = (tree(lab / "galleries"), pool_files(lab), domains(system_hv))
    plan = cli_json(capsys, *retire, "--dry-run")
    assert (tree(lab / "galleries"), pool_files(lab), domains(system_hv)) == before

    assert plan["dryRun"] is True and plan["done"] is None and plan["version"] == V1
    assert plan["scaleSets"] == [{"name": ss, "location": "local", "toVersion": V2,
                                  "instances": [f"{ss}-0", f"{ss}-1"], "repointModel": True}]  # fmt: skip
    assert plan["flatten"] == [{"name": vm, "location": "local"}]
    on_disk = {r["volume"]: os.stat(r["path"]).st_blocks * 512 for r in replicas}
    assert {r["volume"]: r["bytes"] for r in plan["replicas"]} == on_disk
    assert plan["bytesFreed"] == sum(on_disk.values()) > 0
    assert plan["actions"] == [
        f"move scale set {ss} to {V2}",
        f"flatten VM {vm}",
        *(f"delete replica {r['location']}/{r['pool']}/{r['volume']}" for r in plan["replicas"]),
        f"delete image version {V1}",
    ]

    done = cli_json(capsys, *retire)
    assert done["dryRun"] is False
    assert done["done"] == plan["actions"] == done["actions"]
    code, _out, err = cli(capsys, "sig", "image-version", "show", "-r", G, "-i", D, "-e", "1.0.0")
    assert code == ExitCode.NOT_FOUND, err
    assert [r["path"] for r in replicas if os.path.exists(r["path"])] == []
    ctx = Context.from_config(load(lab / "regions.yaml"))
    with ctx:
        assert {v.name: v.image for v in scalesets.instances(ctx, ss)} == {
            f"{ss}-0": V2, f"{ss}-1": V2,
        }  # fmt: skip
        assert FleetStore(ctx.store.root).get(ss).image == V2
        dom = ctx.hv("local").domain(vm)
        # the persistent definition (lifecycle.flatten of a running VM redefines it; the live
        # metadata keeps the old provenance until the next boot: reported to its owner)
        meta = ET.fromstring(dom.xml(inactive=True)).find(f"./metadata/{{{domxml.XMLNS}}}guest")
        assert meta is not None
        prov = Provenance.from_xml(ET.tostring(meta, encoding="unicode"))
        assert prov.flattened and prov.image == V1
        overlay = ctx.hv("local").volume_path(prov.overlay_pool, prov.overlay)
    info = json.loads(Runner().run(["qemu-img", "info", "-U", "-f", "qcow2", "--output=json",
                                    str(overlay)]).stdout)  # fmt: skip
    assert "backing-filename" not in info
    row = cli_json(capsys, "vm", "show", "-n", vm)
    h = testinfra.get_host(f"paramiko://{row['osProfile']['adminUsername']}@"
                           f"{row['sigvirt']['address']}", ssh_identity_file=str(ssh_key.private))  # fmt: skip
    assert h.check_output("hostname") == vm

    # 1.1.0 now has the scale set and nothing above it: refused, one line, nothing changed
    before = (tree(lab / "galleries"), pool_files(lab), domains(system_hv))
    code, out, err = cli(capsys, "sig", "image-version", "retire", "-r", G, "-i", D, "-e", "1.1.0")
    assert code == ExitCode.HAS_DEPENDENTS
    assert err.splitlines()[0] == f"sigvirt: error: no newer version to move scale set {ss} to"
    assert out == ""
    assert (tree(lab / "galleries"), pool_files(lab), domains(system_hv)) == before
    cli(capsys, "vmss", "delete", "-n", ss, "--yes")
    cli(capsys, "vm", "delete", "-n", vm, "--yes")
