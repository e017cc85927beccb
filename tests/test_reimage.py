"""Scale sets move to new versions: the model changes (`vmss update`), instances follow
(`update-instances`, `reimage`), a version that fails the health probe is rolled back, and a
reimage can keep the previous disk for a revert. Real tiny guests, checked over SSH."""

from __future__ import annotations

import dataclasses
import pwd
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sigvirt.catalog import azureid
from sigvirt.catalog.fleet import FleetStore, HealthProbe
from sigvirt.cli import main
from sigvirt.errors import Conflict
from sigvirt.guests import inventory, scalesets
from sigvirt.hosts import ssh as sshlib
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.rollouts import health, reimage
from tests.support.base import SshKey, unique
from tests.support.fleetlab import D, FleetLab, G, open_lab

pytestmark = pytest.mark.guest
V100, V110 = f"{G}/{D}/1.0.0", f"{G}/{D}/1.1.0"
MARKER = "marker-of-1.1.0"
NO_MARKER = "test ! -e ~/marker"  # a probe that 1.1.0 fails: its image has the marker


@pytest.fixture(scope="module")
def lab(
    scratch: Path, system_hv: Hypervisor, tiny_image: Path, ssh_key: SshKey
) -> Iterator[FleetLab]:
    with open_lab(scratch, system_hv, tiny_image, ssh_key, "reimage", "25100-25299") as lab:
        yield lab


@pytest.fixture(scope="module")
def v110(lab: FleetLab) -> str:
    """1.1.0, published from a VM of 1.0.0 whose admin user wrote ~/marker."""
    name = unique("src")
    pub = f"{lab.key.private}.pub"
    assert main(["vm", "create", "-n", name, "--image", V100, "--size", "Lab_Tiny",
                 "--ssh-key-value", pub, "--admin-username", "labuser", "-o", "none"]) == 0  # fmt: skip
    ep = lab.endpoint(name)
    assert sshlib.run(ep, f"echo {MARKER} > ~/marker && sync").returncode == 0
    assert main(["vm", "stop", "-n", name, "-o", "none"]) == 0
    assert main(["sig", "image-version", "create", "-r", G, "-i", D, "-e", "1.1.0",
                 "--virtual-machine", name, "--target-regions", "local=2", "-o", "none"]) == 0  # fmt: skip
    assert main(["vm", "delete", "-n", name, "--yes", "-o", "none"]) == 0
    return V110


def create(lab: FleetLab, name: str, count: int, *extra: str) -> None:
    pub = f"{lab.key.private}.pub"
    code = main(["vmss", "create", "-n", name, "--image", V100, "--instance-count", str(count),
                 "--vm-sku", "Lab_Tiny", "--ssh-key-value", pub, "--admin-username", "labuser",
                 *extra, "-o", "none"])  # fmt: skip
    assert code == 0


def version_of(row: dict[str, Any]) -> str:
    return str(row["storageProfile"]["imageReference"]["exactVersion"])


def test_update_then_update_instances_moves_every_instance(
    lab: FleetLab, v110: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name = unique("up")
    create(lab, name, 2)
    before = lab.json(capsys, "vmss", "list-instances", "-n", name)
    assert [version_of(r) for r in before] == ["1.0.0", "1.0.0"]
    assert all(r["latestModelApplied"] for r in before)
    old_overlays = {r["name"]: r["sigvirt"]["volumes"][0] for r in before}

    shown = lab.json(capsys, "vmss", "update", "-n", name, "--image", v110)
    image = azureid.parse(shown["virtualMachineProfile"]["storageProfile"]["imageReference"]["id"])
    assert (image.gallery, image.definition, image.version) == (G, D, "1.1.0")
    assert shown["upgradePolicy"]["mode"] == "Manual"
    assert shown["upgradePolicy"]["rollingUpgradePolicy"]["maxBatchInstancePercent"] == 20
    assert shown["sigvirt"]["model_generation"] == 2
    pending = lab.json(capsys, "vmss", "list-instances", "-n", name)
    assert [(version_of(r), r["latestModelApplied"]) for r in pending] == [("1.0.0", False)] * 2
    code, table, err = lab.cli(capsys, "vmss", "list-instances", "-n", name)
    assert code == 0 and "version" in table and "1.0.0" in table, err

    code, _out, err = lab.cli(capsys, "vmss", "update-instances", "-n", name, "--instance-ids",
                             "*", "-o", "json")  # fmt: skip
    assert code == 0, err
    after = lab.json(capsys, "vmss", "list-instances", "-n", name)
    assert [(version_of(r), r["latestModelApplied"]) for r in after] == [("1.1.0", True)] * 2
    for old, new in zip(before, after, strict=True):
        # the same instance: name, port, admin user; hostname and key from the kept seed
        assert new["name"] == old["name"]
        assert new["sigvirt"]["ssh_port"] == old["sigvirt"]["ssh_port"]
        assert new["osProfile"]["adminUsername"] == "labuser"
        assert lab.ssh(new, "hostname") == new["name"]
        assert lab.ssh(new, "cat ~/marker") == MARKER
        # the old overlay is gone; what the pools hold of it is what its domain names
        assert new["sigvirt"]["volumes"][0] != old_overlays[new["name"]]
        assert old_overlays[new["name"]] not in lab.volumes(new["name"] + ".")
        assert lab.volumes(new["name"] + ".") == lab.owned(new["name"])

    # Applying the model again changes nothing: every instance has it.
    assert main(["vmss", "update-instances", "-n", name, "--instance-ids", "0", "1",
                 "-o", "none"]) == 0  # fmt: skip
    again = lab.json(capsys, "vmss", "list-instances", "-n", name)
    assert [r["sigvirt"]["volumes"][0] for r in again] == [
        r["sigvirt"]["volumes"][0] for r in after
    ]

    # A new instance is made from the model as it is now.
    lab.json(capsys, "vmss", "scale", "-n", name, "--new-capacity", "3")
    rows = lab.json(capsys, "vmss", "list-instances", "-n", name)
    assert [(version_of(r), r["latestModelApplied"]) for r in rows] == [("1.1.0", True)] * 3

    # A scale set made before models: its model is read back from its instances, and stored.
    FleetStore(lab.root / "galleries").delete(name)
    shown = lab.json(capsys, "vmss", "show", "-n", name)
    assert shown["sigvirt"]["model_generation"] == 2 and shown["sku"]["capacity"] == 3
    assert FleetStore(lab.root / "galleries").get(name).admin_user == "labuser"

    gone = lab.json(capsys, "vmss", "delete", "-n", name, "--yes")
    assert sorted(gone["deleted"]) == [f"{name}-{i}" for i in range(3)]
    assert lab.volumes(name + "-") == []
    code, _out, err = lab.cli(capsys, "vmss", "show", "-n", name)
    assert (code, err.strip()) == (4, f"sigvirt: error: scale set {name} not found")


def test_a_version_that_fails_the_probe_is_rolled_back(
    lab: FleetLab, v110: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name = unique("bad")
    create(lab, name, 1, "--health-probe-command", NO_MARKER, "--upgrade-policy-mode", "manual",
           "--max-batch-instance-percent", "50", "--max-unhealthy-instance-percent", "60",
           "--pause-time-between-batches", "PT1M30S", "--prioritize-unhealthy-instances",
           "true")  # fmt: skip
    first = lab.json(capsys, "vmss", "list-instances", "-n", name)[0]
    # az's way: --set the image id (and a policy property) on the az-shaped scale set
    version_id = azureid.version_id("rg1", G, D, "1.1.0")
    shown = lab.json(capsys, "vmss", "update", "-n", name, "--set",
                     f"virtualMachineProfile.storageProfile.imageReference.id={version_id}",
                     "--set", "upgradePolicy.rollingUpgradePolicy.maxBatchInstancePercent=40")  # fmt: skip
    assert shown["upgradePolicy"] == {
        "mode": "Manual",
        "rollingUpgradePolicy": {
            "maxBatchInstancePercent": 40, "maxUnhealthyInstancePercent": 60,
            "maxUnhealthyUpgradedInstancePercent": 20, "pauseTimeBetweenBatches": "PT1M30S",
            "prioritizeUnhealthyInstances": True,
        },
    }  # fmt: skip
    image = azureid.parse(shown["virtualMachineProfile"]["storageProfile"]["imageReference"]["id"])
    assert image.version == "1.1.0" and shown["sigvirt"]["model_generation"] == 2

    code, _out, err = lab.cli(capsys, "vmss", "reimage", "-n", name, "-o", "json")
    assert code == 26, err
    assert err.splitlines() == [
        f"sigvirt: error: {name}-0: health probe command exited 1; back on {V100}"
    ]
    row = lab.json(capsys, "vmss", "list-instances", "-n", name)[0]
    assert (version_of(row), row["latestModelApplied"]) == ("1.0.0", False)
    assert row["sigvirt"]["state"] == "running" and row["sigvirt"]["reimage"] is None
    assert row["sigvirt"]["volumes"] == first["sigvirt"]["volumes"]  # the new overlay is gone
    assert (
        lab.volumes(f"{name}-0.") == lab.owned(f"{name}-0") == sorted(first["sigvirt"]["volumes"])
    )
    assert lab.ssh(row, "hostname") == f"{name}-0"

    view = lab.json(capsys, "vmss", "get-instance-view", "-n", name, "--instance-id", "0")
    assert view["vmHealth"]["status"]["code"] == "HealthState/healthy"
    lab.json(capsys, "vmss", "update", "-n", name, "--health-probe-command", "exit 3")
    view = lab.json(capsys, "vmss", "get-instance-view", "-n", name, "--instance-id", "0")
    assert view["vmHealth"]["status"] == {
        "code": "HealthState/unhealthy", "level": "Warning",
        "displayStatus": "The VM is reporting itself as unhealthy",
        "message": "health probe command exited 3",
    }  # fmt: skip
    whole = lab.json(capsys, "vmss", "get-instance-view", "-n", name)
    assert whole["sigvirt"]["instances"][0]["vmHealth"]["status"]["code"] == (
        "HealthState/unhealthy"
    )
    # a testinfra spec as the probe (the command removed): it runs against the instance
    spec = lab.root / "probe_spec.py"
    spec.write_text(
        "def test_no_marker(host):\n    assert not host.file('/home/labuser/marker').exists\n"
        "def test_hostname(host):\n    assert host.check_output('hostname').endswith('-0')\n"
    )
    lab.json(capsys, "vmss", "update", "-n", name, "--health-probe-command", "",
             "--health-probe-spec", str(spec))  # fmt: skip
    view = lab.json(capsys, "vmss", "get-instance-view", "-n", name, "--instance-id", "0")
    assert view["vmHealth"]["status"]["code"] == "HealthState/healthy", view["vmHealth"]
    spec.write_text("def test_marker(host):\n    assert host.file('/home/labuser/marker').exists\n")
    lab.json(capsys, "vmss", "update", "-n", name, "--health-probe-spec", str(spec))
    view = lab.json(capsys, "vmss", "get-instance-view", "-n", name, "--instance-id", "0")
    assert view["vmHealth"]["status"]["code"] == "HealthState/unhealthy"
    assert view["vmHealth"]["status"]["message"].startswith("health probe spec failed"), view
    # a spec another user stored runs as that user when root checks health (with a copy of
    # the instance's key they can read, gone afterwards)
    nobody = pwd.getpwnam("nobody").pw_uid
    as_nobody = HealthProbe(spec=(
        "import os\n"
        f"def test_runs_as_its_owner(host):\n    assert os.geteuid() == {nobody}\n"
        "    assert host.check_output('hostname').endswith('-0')\n"
    ), owner="nobody")  # fmt: skip
    with lab.context() as ctx:
        vm = scalesets.members(ctx, name)[0]
        assert health.check(ctx, vm, as_nobody) == health.Health(True)
        wrong = dataclasses.replace(as_nobody, owner="root")
        assert not health.check(ctx, vm, wrong).healthy
    assert not list(Path(tempfile.gettempdir()).glob("sigvirt-probe-key-*"))
    assert main(["vmss", "delete", "-n", name, "--yes", "-o", "none"]) == 0


def test_keep_previous_then_revert_or_commit(
    lab: FleetLab, v110: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name = unique("keep")
    create(lab, name, 1)
    with lab.context() as ctx:
        target = ctx.store.get_version(G, D, "1.1.0")
        vm = scalesets.members(ctx, name)[0]
        original = vm.volumes[0]
        kept = reimage.reimage(ctx, vm, target, HealthProbe(), generation=5, keep_previous=True)
        assert (kept.ok, kept.version, kept.previous) == (True, V110, V100)
        vm = scalesets.members(ctx, name)[0]
        assert (vm.image, vm.reimage_step, vm.previous_image) == (V110, "kept", V100)
        assert vm.model_generation == 5 and original in vm.volumes
        assert lab.volumes(f"{name}-0.") == lab.owned(f"{name}-0")
        with pytest.raises(Conflict):  # one kept disk at a time
            reimage.reimage(ctx, vm, target, HealthProbe())
        assert reimage.resume(ctx, vm).reimage_step == "kept"  # a kept disk is no accident

        back = reimage.revert(ctx, vm, HealthProbe())
        assert (back.ok, back.version, back.previous) == (True, V100, V110)
        vm = scalesets.members(ctx, name)[0]
        assert (vm.image, vm.reimage_step, vm.model_generation) == (V100, "", 1)
        assert vm.volumes[0] == original
        assert lab.volumes(f"{name}-0.") == lab.owned(f"{name}-0")
        with pytest.raises(Conflict):
            reimage.revert(ctx, vm, HealthProbe())

        reimage.reimage(ctx, vm, target, HealthProbe(), keep_previous=True)
        reimage.commit(ctx, scalesets.members(ctx, name)[0])
        vm = scalesets.members(ctx, name)[0]
        assert (vm.image, vm.reimage_step) == (V110, "")
        assert original not in lab.volumes(f"{name}-0.")
        assert lab.volumes(f"{name}-0.") == lab.owned(f"{name}-0")
        reimage.commit(ctx, vm)  # nothing kept: nothing to do
        hv, _r, _dom = inventory.find(ctx, vm.name)
        ep = inventory.endpoint_of(hv, inventory.guest.provenance_of(hv.domain(vm.name)))  # type: ignore[arg-type]
        assert ep is not None and sshlib.run(ep, "cat ~/marker").stdout.strip() == MARKER

        # --no-wait: a detached sigvirt does the reimage; the command returns at once
        disk = vm.volumes[0]
        code, out, err = lab.cli(capsys, "vmss", "reimage", "-n", name, "--no-wait")
        assert (code, out) == (0, "") and "in the background" in err, err
        deadline = time.monotonic() + 240
        while True:
            vm = scalesets.members(ctx, name)[0]
            if vm.volumes[0] != disk and not vm.reimage_step:
                break
            assert time.monotonic() < deadline, f"no reimage in the background: {err}"
            time.sleep(0.25)
        # onto the model's version (the library calls above left the model on 1.0.0)
        assert (vm.image, vm.model_generation) == (V100, 1)
        assert disk not in lab.volumes(f"{name}-0.")
        assert lab.volumes(f"{name}-0.") == lab.owned(f"{name}-0")
    assert main(["vmss", "delete", "-n", name, "--yes", "-o", "none"]) == 0
