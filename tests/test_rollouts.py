"""Rolling upgrades: the batch planner, the state tables and the records offline; then real
tiny guests moved from 1.0.0 to 1.1.0 batch by batch, a bad version rolled back, a killed
rollout finished by the next start, and an Automatic scale set following a new latest.

1.1.0 is made from a VM of 1.0.0 whose first boot (its custom data) wrote a marker file
and removed /etc/os-release, which the health probe of one scale set checks:
for that scale set 1.1.0 boots but is unhealthy.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import testinfra

from sigvirt.catalog import rollouts as records
from sigvirt.catalog.codec import to_dict
from sigvirt.catalog.fileio import CorruptRecord
from sigvirt.catalog.fleet import FleetStore, changed
from sigvirt.catalog.records import BadTransition
from sigvirt.catalog.rollouts import (
    InstanceProgress,
    InstanceState,
    PolicySnapshot,
    RollingUpgradeStatusCode,
    Rollout,
    RolloutStore,
)
from sigvirt.cli import main
from sigvirt.context import Context
from sigvirt.errors import ExitCode
from sigvirt.guests import guest, scalesets
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import load
from sigvirt.rollouts import automatic, rolling
from sigvirt.rollouts.rolling import Member, batch_size, exceeds, plan
from sigvirt.versions import publish
from tests.support.availability import Sampler, down_spans, most_at_once
from tests.support.base import PREFIX, SshKey, unique
from tests.support.fleetlab import cli, cli_json

G, D = "rollGallery", "tiny"
V1, V2 = f"{G}/{D}/1.0.0", f"{G}/{D}/1.1.0"
PROBE = "test -e /etc/os-release"  # 1.1.0 lacks the file: that scale set's instances fail it
MARKER = "/etc/sigvirt-marker"
# a #cloud-config (the tiny image takes no MIME parts, which a "#!" custom data becomes)
FIRST_BOOT = (
    f"#cloud-config\nwrite_files:\n  - path: {MARKER}\n    content: rolled\n"
    "runcmd:\n  - rm -f /etc/os-release\n"
)
REPO = Path(__file__).resolve().parents[1]
Code = RollingUpgradeStatusCode


# -- offline: the planner ---------------------------------------------------------------------
@pytest.mark.offline
@pytest.mark.parametrize(
    ("total", "percent", "size"),
    [(3, 34, 1), (4, 25, 1), (4, 50, 2), (10, 20, 2), (1, 5, 1), (3, 100, 3), (7, 30, 2),
     (19, 5, 1), (20, 5, 1), (40, 5, 2)],
)  # fmt: skip
def test_batch_size_is_the_percent_of_all_instances_rounded_down_at_least_one(
    total: int, percent: int, size: int
) -> None:
    assert batch_size(total, percent) == size


def members(*versions: str, sick: tuple[int, ...] = ()) -> list[Member]:
    return [Member(f"web-{i}", i, v, i not in sick) for i, v in enumerate(versions)]


@pytest.mark.offline
def test_plan_skips_instances_on_the_target_but_counts_them_for_the_batch_size() -> None:
    ms = members(V1, V2, V1, V1, V2, V1)
    p = plan(ms, PolicySnapshot(max_batch_instance_percent=34), V2)
    assert p.batch_size == 2  # 34 % of 6, not of the 4 left to do
    assert p.batches == (("web-0", "web-2"), ("web-3", "web-5"))
    assert p.skipped == ("web-1", "web-4")


@pytest.mark.offline
def test_plan_goes_by_instance_id_and_puts_unhealthy_first_when_the_policy_says_so() -> None:
    ms = list(reversed(members(V1, V1, V1, V1, sick=(2, 3))))
    policy = PolicySnapshot(max_batch_instance_percent=25)
    assert plan(ms, policy, V2).batches == (("web-0",), ("web-1",), ("web-2",), ("web-3",))
    first = replace(policy, prioritize_unhealthy_instances=True)
    assert plan(ms, first, V2).batches == (("web-2",), ("web-3",), ("web-0",), ("web-1",))
    assert plan(members(V2, V2), policy, V2).batches == ()


@pytest.mark.offline
def test_limits_are_exceeded_only_above_the_percentage() -> None:
    assert not exceeds(1, 5, 20) and exceeds(2, 5, 20)
    assert exceeds(1, 1, 20) and not exceeds(0, 3, 0) and exceeds(1, 3, 0)
    assert not exceeds(0, 0, 20)  # nothing upgraded yet: nothing to exceed


@pytest.mark.offline
def test_a_port_counts_down_from_its_first_failed_probe_to_its_last() -> None:
    """The sampler's measure, from (start, end, answered) probes: a port is surely down from
    the start of its first failing probe to the start of its last (one that timed out may
    have outlived the outage)."""
    probes = [(0, 1, True), (1.2, 4.2, False), (4.4, 7.4, False), (7.6, 9, True),
              (9.2, 9.3, False)]  # fmt: skip
    assert down_spans(probes) == [(1.2, 4.4), (9.2, 9.2)]
    assert most_at_once([(0, 5), (5.1, 6)]) == 1
    assert most_at_once([(0, 5), (4, 6), (4.5, 4.5)]) == 3
    assert most_at_once([]) == 0


# -- offline: state tables and records --------------------------------------------------------
def a_rollout(**kw: Any) -> Rollout:
    base: dict[str, Any] = dict(
        id=1, scale_set="web", target=V2, start_time="2026-01-01T00:00:00+00:00",
        instances=(InstanceProgress("web-0", 0, V1, 0), InstanceProgress("web-1", 1, V1, 1)),
        batches=(("web-0",), ("web-1",)), region="local",
    )  # fmt: skip
    base.update(kw)
    return Rollout(**base)


@pytest.mark.offline
def test_rollout_status_changes_only_as_its_table_says() -> None:
    r = a_rollout()
    done = r.moved(Code.COMPLETED)
    assert done.done and done.end_time and done.last_action_time == done.end_time
    for final in (Code.COMPLETED, Code.CANCELLED, Code.FAULTED):
        with pytest.raises(BadTransition, match="is not allowed"):
            r.moved(final).moved(Code.ROLLING_FORWARD)
    assert records.STATUS_TRANSITIONS[Code.ROLLING_FORWARD] == {
        Code.COMPLETED, Code.CANCELLED, Code.FAULTED,
    }  # fmt: skip


@pytest.mark.offline
def test_instance_states_change_only_as_their_table_says() -> None:
    r = a_rollout()
    with pytest.raises(BadTransition):
        r.with_instance("web-0", InstanceState.SUCCEEDED)  # never started
    r = r.with_instance("web-0", InstanceState.IN_PROGRESS)
    r = r.with_instance("web-0", InstanceState.SUCCEEDED, version=V2)
    r = r.with_instance("web-0", InstanceState.ROLLED_BACK, version=V1, reason="batch")
    assert r.instance("web-0").state == InstanceState.ROLLED_BACK
    assert r.instance("web-1").state == InstanceState.PENDING
    with pytest.raises(BadTransition):
        r.with_instance("web-0", InstanceState.PENDING)
    # a killed step goes back to pending and is done again
    r = r.with_instance("web-1", InstanceState.IN_PROGRESS).with_instance(
        "web-1", InstanceState.PENDING
    )
    assert r.count(InstanceState.PENDING) == 1


def rollouts_dir(root: Path, name: str = "web") -> RolloutStore:
    (root / "scalesets" / name).mkdir(parents=True, exist_ok=True)
    return RolloutStore(root, name)


@pytest.mark.offline
def test_records_round_trip_and_the_latest_is_the_highest_id(tmp_path: Path) -> None:
    store = rolling_store = rollouts_dir(tmp_path)
    assert store.latest() is None and store.ids() == []
    with store.locked():
        store.put(a_rollout())
        store.put(a_rollout(id=store.next_id(), target=V1))
    assert store.ids() == [1, 2]
    latest = rolling_store.latest()
    assert latest is not None and latest.id == 2 and latest.target == V1
    assert store.get(1) == a_rollout()
    moved = store.update(1, lambda r: r.with_instance("web-0", InstanceState.IN_PROGRESS))
    assert store.get(1) == moved


@pytest.mark.offline
@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d.update(id=7), "names rollout 'web'/7, not web/1"),
        (lambda d: d.update(scale_set="other"), "names rollout 'other'/1"),
        (lambda d: d.update(target="G/D"), "target: expected GALLERY/DEFINITION/VERSION"),
        (lambda d: d.update(code="Paused"), "code: 'Paused' is not one of"),
        (lambda d: d.update(batches=[["web-0"], ["web-9"]]), "batch 1 does not hold web-1"),
        (lambda d: d["instances"][0].update(batch=5), "instances[0].batch"),
        (lambda d: d["instances"][1].update(name="web-0"), "listed twice"),
        (lambda d: d["instances"][0].update(name="../../etc"), "instances[0].name"),
        (lambda d: d["instances"][0].update(from_version="G/D/x"), "from_version"),
        (lambda d: d["policy"].update(max_batch_instance_percent=150), "0..100"),
        (lambda d: d["policy"].update(pause_time_between_batches=-1), "pause_time"),
        (lambda d: d.update(current_batch=3), "current_batch"),
        (lambda d: d.update(runner="x; rm -rf /"), "runner"),
        (lambda d: d.update(instances="web-0"), "instances: expected a list"),
    ],
)
def test_a_damaged_or_hostile_record_is_refused_naming_the_field(
    tmp_path: Path, change: Any, problem: str
) -> None:
    store = rollouts_dir(tmp_path)
    data = to_dict(a_rollout())
    change(data)
    (store.dir).mkdir()
    (store.dir / "000001.json").write_text(json.dumps(data))
    with pytest.raises(CorruptRecord) as err:
        store.get(1)
    assert problem in err.value.message
    assert err.value.exit_code == ExitCode.CORRUPT_METADATA


@pytest.mark.offline
def test_a_record_that_is_a_link_or_not_a_file_is_refused(tmp_path: Path) -> None:
    store = rollouts_dir(tmp_path)
    store.dir.mkdir()
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps(to_dict(a_rollout())))
    (store.dir / "000001.json").symlink_to(outside)
    with pytest.raises(CorruptRecord, match="symbolic link"):
        store.get(1)
    os.mkfifo(store.dir / "000002.json")
    with pytest.raises(CorruptRecord, match="fifo"):
        store.get(2)
    # the rollouts directory itself swapped for a link: nothing is written through it
    shutil.rmtree(store.dir)
    (tmp_path / "target").mkdir()
    store.dir.symlink_to(tmp_path / "target")
    with pytest.raises(CorruptRecord), store.locked():
        pass
    assert list((tmp_path / "target").iterdir()) == []


@pytest.mark.offline
def test_a_record_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("planting a file as another user needs root")
    store = rollouts_dir(tmp_path)
    with store.locked():
        store.put(a_rollout())
    os.chown(store.dir / "000001.json", 65534, 65534)
    with pytest.raises(CorruptRecord, match="neither root nor the scale set's owner"):
        store.get(1)


@pytest.mark.offline
def test_pause_is_printed_as_az_does() -> None:
    assert [records.iso_duration(s) for s in (0, 30, 90, 3600, 3661)] == [
        "PT0S", "PT30S", "PT1M30S", "PT1H", "PT1H1M1S",
    ]  # fmt: skip


@pytest.mark.offline
def test_rolling_upgrade_commands_refuse_bad_input_with_one_line(
    offline_sig: Any,
) -> None:
    ran = offline_sig.cli("vmss", "rolling-upgrade", "start", "-n", "web", "--ids",
                          "/subscriptions/0/resourceGroups/g/providers/Microsoft.Compute/"
                          "virtualMachineScaleSets/web")  # fmt: skip
    assert ran.code == ExitCode.INVALID_ARGUMENT
    assert "give the scale set by --name or by --ids, not both" in ran.error
    ran = offline_sig.cli("vmss", "rolling-upgrade", "get-latest", "-n", "bad/name")
    assert ran.code == ExitCode.INVALID_NAME
    ran = offline_sig.cli("vmss", "rolling-upgrade", "cancel")
    assert ran.code == ExitCode.INVALID_ARGUMENT
    assert ran.error == "give the scale set by --name NAME or --ids ID ..."


# -- real guests ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lab:
    root: Path
    pools: tuple[str, str]
    key: SshKey
    env: dict[str, str]

    def context(self) -> Context:
        return Context.from_config(load(self.root / "regions.yaml", env=self.env))


def binary(lab: Lab, *argv: str, fault: str = "") -> subprocess.CompletedProcess[str]:
    """The real sigvirt in its own process (SIGVIRT_FAULT=fault kills it at that step)."""
    env = dict(lab.env)
    env.pop("SIGVIRT_FAULT", None)
    if fault:
        env["SIGVIRT_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "sigvirt", *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.fixture(scope="module")
def lab(scratch: Path, system_hv: Hypervisor, tiny_image: Path, ssh_key: SshKey) -> Iterator[Lab]:
    """A gallery with 1.0.0 (the tiny image, two replicas) and 1.1.0 (a VM of 1.0.0 after
    its first boot: marker written, /etc/os-release removed)."""
    root = scratch / "rolllab"
    root.mkdir()
    pools = (unique("roll-a"), unique("roll-b"))
    (root / "regions.yaml").write_text(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n"
        f"      - name: {pools[0]}\n        path: {root}/pool-a\n"
        f"      - name: {pools[1]}\n        path: {root}/pool-b\n"
        "    network:\n      type: user-forward\n      ports: 23000-23199\n"
    )
    script = root / "first-boot.yaml"
    script.write_text(FIRST_BOOT)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGVIRT_REGIONS", str(root / "regions.yaml"))
        mp.setenv("SIGVIRT_GALLERY_ROOT", str(root / "galleries"))
        env = dict(os.environ)
        marker_vm = unique("rollmark")
        try:
            assert main(["sig", "create", "-r", G]) == 0
            assert main(["sig", "image-definition", "create", "-r", G, "-i", D, "-p", "sv",
                         "-f", "tiny", "-s", "1", "--os-type", "Linux"]) == 0  # fmt: skip
            assert main(["sig", "image-version", "create", "-r", G, "-i", D, "-e", "1.0.0",
                         "--source", str(tiny_image), "--target-regions", "local=2"]) == 0  # fmt: skip
            assert main(["vm", "create", "-n", marker_vm, "--image", V1, "--size", "Lab_Tiny",
                         "--ssh-key-value", f"{ssh_key.private}.pub",
                         "--custom-data", str(script)]) == 0  # fmt: skip
            assert main(["vm", "stop", "-n", marker_vm]) == 0
            assert main(["sig", "image-version", "create", "-r", G, "-i", D, "-e", "1.1.0",
                         "--virtual-machine", marker_vm, "--target-regions", "local=2"]) == 0  # fmt: skip
            assert main(["vm", "delete", "-n", marker_vm, "--yes"]) == 0
            yield Lab(root, pools, ssh_key, env)
        finally:
            for dom in system_hv.domains():
                if dom.name.startswith(f"{PREFIX}-roll"):
                    main(["vm", "delete", "-n", dom.name, "--yes"])
            ctx = Context.from_config(load(root / "regions.yaml", env=env))
            for model in FleetStore(ctx.store.root).list():
                FleetStore(ctx.store.root).delete(model.name)
            for v in ("1.0.0", "1.1.0", "1.2.0"):
                main(["sig", "image-version", "delete", "-r", G, "-i", D, "-e", v, "--yes"])
            ctx.close()
    for pool in pools:
        system_hv.delete_pool(pool)
    shutil.rmtree(root, ignore_errors=True)


def make_scale_set(
    capsys: pytest.CaptureFixture[str], lab: Lab, name: str, count: int, *extra: str,
    image: str = V1,
) -> list[dict[str, Any]]:  # fmt: skip
    made = cli_json(capsys, "vmss", "create", "-n", name, "--image", image, "--instance-count",
                    str(count), "--vm-sku", "Lab_Tiny", "--ssh-key-value",
                    f"{lab.key.private}.pub", *extra)  # fmt: skip
    assert not made["vmss"]["sigvirt"]["failed"]
    rows: list[dict[str, Any]] = cli_json(capsys, "vmss", "list-instances", "-n", name)
    return rows


def point_model_at(lab: Lab, name: str, image: str) -> None:
    """The model's image changed (as `vmss update --image` does, without starting anything)."""
    with lab.context() as ctx:
        FleetStore(ctx.store.root).update(name, lambda m: changed(m, image=image))


def versions_of(lab: Lab, name: str) -> dict[str, str]:
    with lab.context() as ctx:
        return {v.name: v.image for v in scalesets.instances(ctx, name)}


def host(row: dict[str, Any], key: SshKey) -> testinfra.host.Host:
    user = row["osProfile"]["adminUsername"]
    return testinfra.get_host(f"paramiko://{user}@{row['sigvirt']['address']}",
                              ssh_identity_file=str(key.private))  # fmt: skip


def identity(rows: list[dict[str, Any]]) -> list[tuple[str, str, int, str]]:
    return [(r["name"], r["osProfile"]["computerName"], r["sigvirt"]["ssh_port"],
             r["osProfile"]["adminUsername"]) for r in rows]  # fmt: skip


def orphans(hv: Hypervisor, lab: Lab, name: str) -> list[str]:
    """Volumes in the lab's pools named for an instance of `name` that no domain owns."""
    owned: set[str] = set()
    for dom in hv.domains():
        prov = guest.provenance_of(dom)
        if prov is not None and prov.scale_set == name:
            owned |= set(prov.volumes)
            owned |= {v for v in json.dumps(to_dict(prov)).split('"') if v.endswith(".qcow2")}
    return sorted(
        v.name for p in lab.pools for v in hv.volumes(p)
        if v.name.startswith(f"{name}-") and v.name not in owned
    )  # fmt: skip


@pytest.mark.guest
def test_rolling_upgrade_moves_every_instance_one_batch_at_a_time(
    lab: Lab, capsys: pytest.CaptureFixture[str], system_hv: Hypervisor
) -> None:
    """3 instances, max batch 34 %: one at a time, never two down together (sampled), all
    end on 1.1.0 with its marker, names, hostnames, ports and admin user unchanged."""
    name = unique("rollA")
    try:
        before = make_scale_set(capsys, lab, name, 3, "--upgrade-policy-mode", "Rolling",
                                "--max-batch-instance-percent", "34")  # fmt: skip
        point_model_at(lab, name, V2)
        with Sampler(r["sigvirt"]["ssh_port"] for r in before) as sampler:
            status = cli_json(capsys, "vmss", "rolling-upgrade", "start", "-n", name)
        assert status["runningStatus"]["code"] == "Completed", status
        assert status["progress"] == {"successfulInstanceCount": 3, "failedInstanceCount": 0,
                                      "inProgressInstanceCount": 0, "pendingInstanceCount": 0}  # fmt: skip
        assert status["policy"]["maxBatchInstancePercent"] == 34
        assert status["sigvirt"]["batches"] == [[r["name"]] for r in before]
        assert sampler.ever_down() == {r["sigvirt"]["ssh_port"] for r in before}
        assert sampler.most_down() == 1, sampler.timeline()
        after = cli_json(capsys, "vmss", "list-instances", "-n", name)
        assert identity(after) == identity(before)
        assert versions_of(lab, name) == {r["name"]: V2 for r in before}
        for r in after:
            h = host(r, lab.key)
            assert h.file(MARKER).exists and h.check_output("hostname") == r["name"]
        assert orphans(system_hv, lab, name) == []
        again = cli_json(capsys, "vmss", "rolling-upgrade", "get-latest", "-n", name)
        assert again["runningStatus"] == status["runningStatus"]
        assert again["id"].endswith(f"/virtualMachineScaleSets/{name}/rollingUpgrades/latest")
    finally:
        cli(capsys, "vmss", "delete", "-n", name, "--yes")


@pytest.mark.guest
def test_a_version_that_fails_the_health_probe_faults_after_the_first_batch(
    lab: Lab, capsys: pytest.CaptureFixture[str], system_hv: Hypervisor
) -> None:
    """The first instance boots 1.1.0 but fails the probe: it is put back on 1.0.0, the
    rollout stops there (Faulted, with the reason; exit 25) and the others are untouched."""
    name = unique("rollB")
    try:
        before = make_scale_set(capsys, lab, name, 3, "--upgrade-policy-mode", "Rolling",
                                "--max-batch-instance-percent", "34",
                                "--health-probe-command", PROBE)  # fmt: skip
        point_model_at(lab, name, V2)
        code, out, err = cli(capsys, "vmss", "rolling-upgrade", "start", "-n", name, "-o", "json")
        assert code == ExitCode.ROLLOUT_FAULTED, err
        assert err.startswith(f"sigvirt: error: rolling upgrade of {name} faulted: 1 of 1 ")
        status = json.loads(out)
        shown = cli_json(capsys, "vmss", "rolling-upgrade", "get-latest", "-n", name)
        assert shown["runningStatus"] == status["runningStatus"]
        assert shown["runningStatus"]["code"] == "Faulted"
        assert shown["error"]["code"] == "MaxUnhealthyUpgradedInstancePercentExceeded"
        assert f"{before[0]['name']}: " in shown["error"]["message"]
        assert shown["progress"]["failedInstanceCount"] == 1
        assert shown["progress"]["pendingInstanceCount"] == 2
        states = {i["name"]: i["state"] for i in shown["sigvirt"]["instances"]}
        assert states == {before[0]["name"]: "Failed", before[1]["name"]: "Pending",
                          before[2]["name"]: "Pending"}  # fmt: skip
        assert versions_of(lab, name) == {r["name"]: V1 for r in before}
        after = cli_json(capsys, "vmss", "list-instances", "-n", name)
        assert identity(after) == identity(before)
        for r in after:  # back on 1.0.0 and healthy: the probe passes over SSH
            assert host(r, lab.key).run(PROBE).rc == 0
        assert orphans(system_hv, lab, name) == []
    finally:
        cli(capsys, "vmss", "delete", "-n", name, "--yes")


@pytest.mark.guest
def test_cancel_stops_a_background_rollout_after_its_current_batch(
    lab: Lab, capsys: pytest.CaptureFixture[str], system_hv: Hypervisor
) -> None:
    """`start --no-wait` returns with the rollout under way in a background process; a second
    start is refused naming it; get-latest follows it; cancel during the pause after the
    first batch stops it there: Cancelled, the first instance on 1.1.0, the second untouched."""
    name = unique("rollF")
    try:
        before = make_scale_set(capsys, lab, name, 2, "--upgrade-policy-mode", "Rolling",
                                "--max-batch-instance-percent", "50",
                                "--pause-time-between-batches", "PT10M")  # fmt: skip
        point_model_at(lab, name, V2)
        started = cli_json(capsys, "vmss", "rolling-upgrade", "start", "-n", name, "--no-wait")
        assert started["runningStatus"]["code"] == "RollingForward"
        assert started["sigvirt"]["runnerAlive"] is True
        code, _out, err = cli(capsys, "vmss", "rolling-upgrade", "start", "-n", name)
        assert code == ExitCode.CONFLICT, err
        assert f"has a rolling upgrade running (id {started['sigvirt']['rollout']})" in err
        shown, end = started, time.monotonic() + 300
        while shown["sigvirt"]["currentBatch"] < 1 and time.monotonic() < end:
            time.sleep(0.25)
            shown = cli_json(capsys, "vmss", "rolling-upgrade", "get-latest", "-n", name)
        assert shown["progress"]["successfulInstanceCount"] == 1, shown
        assert shown["policy"]["pauseTimeBetweenBatches"] == "PT10M"
        stopped = cli_json(capsys, "vmss", "rolling-upgrade", "cancel", "-n", name)
        assert stopped["runningStatus"]["code"] == "Cancelled"
        assert stopped["runningStatus"]["lastAction"] == "Cancel"
        assert stopped["progress"]["pendingInstanceCount"] == 1
        assert versions_of(lab, name) == {before[0]["name"]: V2, before[1]["name"]: V1}
        assert orphans(system_hv, lab, name) == []
    finally:
        cli(capsys, "vmss", "delete", "-n", name, "--yes")


KILL_AT = "reimage.started"  # the new disk booted, not yet health-checked (A's kill point)


@pytest.mark.guest
def test_a_killed_rollout_is_finished_by_the_next_start(
    lab: Lab, capsys: pytest.CaptureFixture[str], system_hv: Hypervisor
) -> None:
    """sigvirt killed inside the first instance's reimage, then again after the first batch
    was committed: each rerun of `rolling-upgrade start` takes the rollout over; the last one
    finishes it, every instance boots, and no overlay is left without its domain."""
    name = unique("rollC")
    try:
        before = make_scale_set(capsys, lab, name, 2, "--upgrade-policy-mode", "Rolling",
                                "--max-batch-instance-percent", "50")  # fmt: skip
        point_model_at(lab, name, V2)
        start = ("vmss", "rolling-upgrade", "start", "-n", name, "-o", "json")
        ran = binary(lab, *start, fault=KILL_AT)
        assert ran.returncode == -signal.SIGKILL, ran.stderr
        left = cli_json(capsys, "vmss", "rolling-upgrade", "get-latest", "-n", name)
        assert left["runningStatus"]["code"] == "RollingForward"
        assert left["sigvirt"]["runnerAlive"] is False
        assert left["sigvirt"]["instances"][0]["state"] == "InProgress"
        ran = binary(lab, *start, fault="rollout.batch-done")
        assert ran.returncode == -signal.SIGKILL, ran.stderr
        ran = binary(lab, *start)
        assert ran.returncode == 0, ran.stderr
        done = json.loads(ran.stdout)
        assert done["runningStatus"]["code"] == "Completed"
        assert done["sigvirt"]["resumed"] == 2
        assert versions_of(lab, name) == {r["name"]: V2 for r in before}
        after = cli_json(capsys, "vmss", "list-instances", "-n", name)
        assert identity(after) == identity(before)
        for r in after:
            assert host(r, lab.key).file(MARKER).exists
        assert orphans(system_hv, lab, name) == []
    finally:
        cli(capsys, "vmss", "delete", "-n", name, "--yes")


@pytest.mark.guest
def test_an_automatic_scale_set_follows_a_new_latest(
    lab: Lab, capsys: pytest.CaptureFixture[str], tiny_image: Path
) -> None:
    """Automatic mode, image G/D: publishing 1.2.0 and telling on_latest_changed starts a
    background rolling upgrade to it; a pinned scale set is left alone."""
    name, pinned = unique("rollD"), unique("rollE")
    try:
        make_scale_set(capsys, lab, name, 1, "--upgrade-policy-mode", "Automatic",
                       image=f"{G}/{D}")  # fmt: skip
        make_scale_set(capsys, lab, pinned, 1, "--upgrade-policy-mode", "Automatic")
        assert versions_of(lab, name) == {f"{name}-0": V2}  # latest when it was made
        with lab.context() as ctx:
            assert automatic.on_latest_changed(ctx, G, D) == []  # already on latest
            inp = publish.VersionInput(str(tiny_image), None, ["local=1"], None)
            publish.create_version(ctx, G, D, "1.2.0", inp)
            assert automatic.on_latest_changed(ctx, G, D) == [name]
            end = time.monotonic() + 300
            rec = rolling.latest(ctx, name)
            while not rec.done and time.monotonic() < end:
                time.sleep(0.25)
                rec = rolling.latest(ctx, name)
            assert rec.code == Code.COMPLETED, rec
            assert rec.automatic and rec.target == f"{G}/{D}/1.2.0"
            assert automatic.on_latest_changed(ctx, G, D) == []
        assert versions_of(lab, name) == {f"{name}-0": f"{G}/{D}/1.2.0"}
        assert versions_of(lab, pinned) == {f"{pinned}-0": V1}
    finally:
        cli(capsys, "vmss", "delete", "-n", name, "--yes")
        cli(capsys, "vmss", "delete", "-n", pinned, "--yes")


@pytest.mark.guest
def test_vmss_update_moves_a_rolling_scale_set_and_leaves_a_manual_one(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vmss update --image` under Rolling starts a background rolling upgrade to the new
    image (as Azure applies a model change under that policy); under Manual, instances wait
    for update-instances."""
    rolled, manual = unique("rollU"), unique("rollM")
    try:
        make_scale_set(capsys, lab, rolled, 1, "--upgrade-policy-mode", "Rolling")
        make_scale_set(capsys, lab, manual, 1)
        code, _out, err = cli(capsys, "vmss", "update", "-n", manual, "--image", V2, "-o", "none")
        assert code == 0, err
        assert "rolling upgrade" not in err
        code, _out, err = cli(capsys, "vmss", "update", "-n", rolled, "--set",
                              f"virtualMachineProfile.storageProfile.imageReference.id={V2}",
                              "-o", "none")  # fmt: skip
        assert code == 0, err
        assert f"rolling upgrade 1 to {V2} started" in err
        end = time.monotonic() + 300
        while True:
            shown = cli_json(capsys, "vmss", "rolling-upgrade", "get-latest", "-n", rolled)
            status = shown["runningStatus"]["code"]
            if status != "RollingForward" or time.monotonic() > end:
                break
            time.sleep(0.25)
        assert status == "Completed", shown
        assert versions_of(lab, rolled) == {f"{rolled}-0": V2}
        code, _out, _err = cli(capsys, "vmss", "rolling-upgrade", "get-latest", "-n", manual)
        assert code == ExitCode.NOT_FOUND
        assert versions_of(lab, manual) == {f"{manual}-0": V1}
    finally:
        cli(capsys, "vmss", "delete", "-n", rolled, "--yes")
        cli(capsys, "vmss", "delete", "-n", manual, "--yes")
