"""The boot-test gate: a definition's testinfra spec, run against a linked clone of each new
version before it may be `latest` (real tiny guests; the spec runs as the user who stored
it), reruns, background runs and kills at each step. The offline tier (specs, records,
latest) is tests/test_gatespec.py."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sigvirt.catalog import latest, specs
from sigvirt.catalog.names import ImageRef
from sigvirt.catalog.records import BootTestState, ImageVersion
from sigvirt.catalog.store import GalleryStore
from sigvirt.cli import main
from sigvirt.context import Context
from sigvirt.errors import ExitCode
from sigvirt.guests import guest
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.hosts.regions import load
from sigvirt.rollouts import gate
from tests.support.base import PREFIX, RUN_ID, SCRATCH, SshKey, unique
from tests.support.catalog import Ran

G = "gateGallery"
OWNER = "nobody"  # who "stored" the specs of the guest tests: they must run as nobody
MARKER = "/etc/sigvirt-marker"
SPEC = f"""
import os
import pwd


def test_runs_as_the_user_who_stored_it(host):
    assert pwd.getpwuid(os.geteuid()).pw_name == "{OWNER}"


def test_marker(host):
    assert host.file("{MARKER}").exists, "the marker is missing"
"""
FAILURE = "test_marker: AssertionError: the marker is missing"
PASSING = "def test_boots(host):\n    assert host.file('/bin/busybox').exists\n"
MARK_IT = f"#cloud-config\nwrite_files:\n  - path: {MARKER}\n    content: fixed\n"


# -- the lab: real guests ----------------------------------------------------------------------
@dataclass
class Lab:
    root: Path
    pool: str
    key: SshKey
    hv: Hypervisor
    capsys: pytest.CaptureFixture[str]

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SIGVIRT_REGIONS": str(self.root / "regions.yaml"),
            "SIGVIRT_GALLERY_ROOT": str(self.root / "galleries"),
        }

    @property
    def store(self) -> GalleryStore:
        return GalleryStore(self.root / "galleries")

    def cli(self, *argv: str) -> Ran:
        """In-process, as the console script runs it."""
        self.capsys.readouterr()
        code = main(list(argv))
        out, err = self.capsys.readouterr()
        return Ran(code, out, err)

    def real(self, *argv: str, fault: str = "") -> subprocess.CompletedProcess[str]:
        """The real binary, in its own process (SIGVIRT_FAULT kills it at a step)."""
        env = {**self.env, "SIGVIRT_FAULT": fault} if fault else self.env
        return subprocess.run(
            [sys.executable, "-m", "sigvirt", *argv], env=env, capture_output=True, text=True,
            timeout=300, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def leftovers(self, name: str) -> list[str]:
        found = [f"domain {name}"] if self.hv.domain_exists(name) else []
        self.hv.refresh_pool(self.pool)
        return found + [v.name for v in self.hv.volumes(self.pool) if v.name.startswith(name)]

    def gate_vm(self, d: str, v: str) -> str:
        ctx = Context.from_config(load(self.root / "regions.yaml", env=self.env))
        try:
            return gate.vm_name(ctx, ctx.store.get_version(G, d, v))
        finally:
            ctx.close()


def version_args(d: str, v: str) -> list[str]:
    return ["--gallery-name", G, "--gallery-image-definition", d, "--gallery-image-version", v]


@pytest.fixture(scope="module")
def lab_root(
    scratch: Path, system_hv: Hypervisor, tiny_image: Path, ssh_key: SshKey
) -> Iterator[tuple[Path, str]]:
    root = scratch / "gatelab"
    _reap_killed_gate_vms(system_hv)
    root.mkdir()
    os.chmod(root, 0o755)
    pool = unique("gate")
    (root / "regions.yaml").write_text(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n"
        f"      - name: {pool}\n        path: {root}/pool\n"
        "    network:\n      type: user-forward\n      ports: 22700-22799\n"
    )
    (root / "galleries").mkdir()
    yield root, pool
    store = GalleryStore(root / "galleries")
    ctx = Context.from_config(
        load(root / "regions.yaml", env={"SIGVIRT_GALLERY_ROOT": str(root / "galleries")})
    )
    try:
        for dom in system_hv.domains():
            if dom.name.startswith(PREFIX):
                system_hv.destroy_and_undefine(dom.name)
        for d in store.list_definitions(G) if (root / "galleries" / G).exists() else []:
            for v in store.list_versions(G, d.name):
                name = gate.vm_name(ctx, v)
                if system_hv.domain_exists(name):
                    system_hv.destroy_and_undefine(name)
    finally:
        ctx.close()
        system_hv.delete_pool(pool)
        shutil.rmtree(root, ignore_errors=True)


def _reap_killed_gate_vms(hv: Hypervisor) -> None:
    """Test VMs (gate-*, named after their version, not the run) of a test run that was
    killed before its finalizers ran: their pool is named after that run (svtXXXXXX-gate),
    whose scratch directory names its pid."""
    for dom in hv.domains():
        prov = guest.provenance_of(dom) if re.fullmatch(r"gate-[0-9a-f]{8}", dom.name) else None
        found = re.fullmatch(r"svt([0-9a-f]{6})-gate", prov.replica_pool) if prov else None
        if found is None or found[1] == RUN_ID:
            continue
        try:
            pid = int((SCRATCH.parent / f"sigvirt-test-{found[1]}" / "pid").read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):  # that run is gone
            hv.destroy_and_undefine(dom.name)


@pytest.fixture
def lab(
    lab_root: tuple[Path, str],
    system_hv: Hypervisor,
    ssh_key: SshKey,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Lab:
    root, pool = lab_root
    monkeypatch.setenv("SIGVIRT_REGIONS", str(root / "regions.yaml"))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(root / "galleries"))
    monkeypatch.delenv("SIGVIRT_FAULT", raising=False)
    lab = Lab(root, pool, ssh_key, system_hv, capsys)
    if not (root / "galleries" / G).exists():
        assert lab.cli("sig", "create", "-r", G).code == 0
    return lab


def defined(lab: Lab, tiny_image: Path, d: str, spec: str) -> ImageVersion:
    """Definition `d` with version 1.0.0 published before it had a spec (so: no test), then
    the spec, stored and handed to OWNER as if OWNER had stored it."""
    ran = lab.cli(
        "sig", "image-definition", "create", "-r", G, "-i", d, "--publisher", "sv",
        "--offer", "gate", "--sku", d, "--minimum-memory", "128", "--maximum-memory", "256",
    )  # fmt: skip
    assert ran.code == 0, ran.err
    ran = lab.cli("sig", "image-version", "create", *version_args(d, "1.0.0"),
                  "--source", str(tiny_image), "-o", "json")  # fmt: skip
    assert ran.code == 0, ran.err
    assert ran.json["sigvirt"]["test"]["state"] == "none"
    spec_file = lab.root / f"{d}-spec.py"
    spec_file.write_text(spec)
    ran = lab.cli("sig", "image-definition", "update", "-r", G, "-i", d, "--test-spec",
                  str(spec_file), "-o", "json")  # fmt: skip
    stored = ran.json["sigvirt"]["testSpec"]
    assert (stored["owner"], stored["size"]) == ("root", len(spec.encode()))
    hand_to(lab.store, d, OWNER)
    return lab.store.get_version(G, d, "1.0.0")


def hand_to(store: GalleryStore, d: str, user: str) -> None:
    """As if `user` (a contributor) had stored the definition's spec: theirs, on disk too."""
    spec = store.get_definition(G, d).test_spec
    assert spec is not None
    os.chown(specs.path_of(store, G, d, spec), pwd.getpwnam(user).pw_uid, -1)
    theirs = dataclasses.replace(spec, owner=user)
    store.update_definition(G, d, lambda cur: dataclasses.replace(cur, test_spec=theirs))


def explained(lab: Lab, d: str) -> dict[str, str]:
    ran = lab.cli("sig", "image-version", "show-latest", "-r", G, "-i", d, "--explain", "-o",
                  "json")  # fmt: skip
    return {row["version"]: row["why"] for row in ran.json}


def latest_name(lab: Lab, d: str) -> str:
    ran = lab.cli("sig", "image-version", "show-latest", "-r", G, "-i", d, "-o", "json")
    return str(ran.json["name"])


def wait_tested(
    lab: Lab, d: str, v: str, timeout: float = 240, log: str = "replicate"
) -> dict[str, Any]:
    """The version's boot test once it has a result (a background process runs it)."""
    deadline = time.monotonic() + timeout
    while True:
        shown = lab.cli("sig", "image-version", "show", *version_args(d, v), "-o", "json").json
        test: dict[str, Any] = shown["sigvirt"]["test"]
        if test["state"] in ("passed", "failed"):
            return test
        if time.monotonic() > deadline:
            text = (lab.store.versions_dir(G, d) / f".{v}.{log}.log").read_text()
            pytest.fail(f"still {test['state']} after {timeout} s; log:\n{text}")
        time.sleep(0.5)


@pytest.mark.guest
def test_a_failing_spec_keeps_the_version_out_of_latest_until_a_fixed_version_passes(
    lab: Lab, tiny_image: Path
) -> None:
    d = "fixme"
    base = defined(lab, tiny_image, d, SPEC)
    assert base.boot_test.state == BootTestState.NONE  # published without a spec: ungated
    # An Automatic scale set following the definition's latest: only a version that passed
    # its boot test may move it, and the publishing command itself starts that.
    fleet = unique("auto")
    ran = lab.cli("vmss", "create", "-n", fleet, "--image", f"{G}/{d}", "--instance-count", "1",
                  "--vm-sku", "Lab_Tiny", "--ssh-key-value", f"{lab.key.private}.pub",
                  "--upgrade-policy-mode", "Automatic", "-o", "json")  # fmt: skip
    assert ran.code == 0, ran.err
    try:
        _failing_then_fixed(lab, tiny_image, d, fleet)
    finally:
        lab.cli("vmss", "delete", "-n", fleet, "--yes")


def fleet_versions(lab: Lab, fleet: str) -> list[str]:
    ran = lab.cli("vmss", "list-instances", "-n", fleet, "-o", "json")
    assert ran.code == 0, ran.err
    return [row["sigvirt"]["image"].rsplit("/", 1)[-1] for row in ran.json]


def _failing_then_fixed(lab: Lab, tiny_image: Path, d: str, fleet: str) -> None:
    assert fleet_versions(lab, fleet) == ["1.0.0"]

    # 1.1.0: the spec runs (as nobody) against a clone of it, and the marker is missing.
    ran = lab.cli("sig", "image-version", "create", *version_args(d, "1.1.0"),
                  "--source", str(tiny_image), "-o", "json")  # fmt: skip
    assert ran.code == ExitCode.BOOT_TEST_FAILED, ran.err
    assert ran.error == f"image version {G}/{d}/1.1.0 failed its boot test: {FAILURE}"
    test = json.loads(ran.out)["sigvirt"]["test"]
    assert (test["state"], test["failures"], test["tests"]) == ("failed", [FAILURE], 2)
    assert lab.leftovers(lab.gate_vm(d, "1.1.0")) == []

    assert latest_name(lab, d) == "1.0.0"
    assert explained(lab, d) == {
        "1.1.0": f"boot test failed: {FAILURE}",
        "1.0.0": "highest published version not excluded from latest",
    }
    shown = lab.cli("sig", "image-version", "show", *version_args(d, "1.1.0"))
    assert shown.code == 0
    rows = dict(line.split(None, 1) for line in shown.out.splitlines() if line.strip())
    assert (rows["test"].strip(), rows["test_failures"].strip()) == ("failed", FAILURE)
    # Named, it still resolves (as a version excluded from latest does).
    named = latest.resolve(lab.store, ImageRef(G, d, "1.1.0"))
    assert (named.name, named.boot_test.state) == ("1.1.0", BootTestState.FAILED)
    # The failed version moved nothing: no rolling upgrade was even started.
    ran = lab.cli("vmss", "rolling-upgrade", "get-latest", "-n", fleet)
    assert ran.code == ExitCode.NOT_FOUND, (ran.out, ran.err)
    assert fleet_versions(lab, fleet) == ["1.0.0"]

    # 1.2.0, made from a VM of 1.0.0 that has the marker, published with --no-wait: the
    # background process replicates it, then tests it; it passes and becomes latest.
    vm = unique("marker")
    user_data = lab.root / "mark-it.yaml"
    user_data.write_text(MARK_IT)
    ran = lab.cli("vm", "create", "-n", vm, "--image", f"{G}/{d}/1.0.0", "--size", "Lab_Tiny",
                  "--ssh-key-value", f"{lab.key.private}.pub", "--custom-data", str(user_data),
                  "-o", "json")  # fmt: skip
    assert ran.code == 0, ran.err
    assert lab.cli("vm", "stop", "-n", vm).code == 0
    ran = lab.cli("sig", "image-version", "create", *version_args(d, "1.2.0"),
                  "--virtual-machine", vm, "--no-wait", "-o", "json")  # fmt: skip
    assert ran.code == 0, ran.err
    assert lab.cli("vm", "delete", "-n", vm, "--yes").code == 0
    test = wait_tested(lab, d, "1.2.0")
    assert (test["state"], test["failures"], test["tests"]) == ("passed", [], 2), test
    assert test["seconds"] > 0 and test["finished"] and test["vm"] is None
    assert latest_name(lab, d) == "1.2.0"
    assert lab.leftovers(lab.gate_vm(d, "1.2.0")) == []
    # The background process that tested 1.2.0 started the scale set's upgrade to it.
    deadline = time.monotonic() + 300
    while True:
        ran = lab.cli("vmss", "rolling-upgrade", "get-latest", "-n", fleet, "-o", "json")
        code = ran.json["runningStatus"]["code"] if ran.code == 0 else None
        if code not in (None, "RollingForward") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == "Completed", (ran.out, ran.err)
    assert fleet_versions(lab, fleet) == ["1.2.0"]


@pytest.mark.guest
def test_a_rerun_fails_with_its_own_code_and_a_hand_edited_spec_is_refused(
    lab: Lab, tiny_image: Path
) -> None:
    d = "rerun"
    defined(lab, tiny_image, d, SPEC)
    # Tested explicitly, a version published without a spec gets a result that counts.
    ran = lab.cli("sig", "image-version", "test", *version_args(d, "1.0.0"))
    assert ran.code == ExitCode.BOOT_TEST_FAILED
    assert ran.error == f"image version {G}/{d}/1.0.0 failed its boot test: {FAILURE}"
    ran = lab.cli("sig", "image-version", "show-latest", "-r", G, "-i", d)
    assert ran.code == ExitCode.NOT_FOUND
    assert ran.err.splitlines()[0] == (
        f"sigvirt: error: image definition {G}/{d} has no published version that is not "
        f"excluded from latest and not held by its boot test (version 1.0.0: boot test "
        f"failed: {FAILURE})"
    )

    rec = lab.store.get_definition(G, d)
    assert rec.test_spec is not None
    path = specs.path_of(lab.store, G, d, rec.test_spec)
    with path.open("a") as f:
        f.write("\ndef test_more(host):\n    pass\n")
    before = lab.store.get_version(G, d, "1.0.0")
    ran = lab.cli("sig", "image-version", "test", *version_args(d, "1.0.0"))
    assert ran.code == ExitCode.CORRUPT_METADATA
    assert ran.error == (
        f"test spec {path} does not match its record (sha256 {rec.test_spec.spec_sha256[:16]}…, "
        f"{rec.test_spec.size} bytes): changed by hand? store it again with image-definition "
        "update --test-spec"
    )
    assert lab.store.get_version(G, d, "1.0.0") == before
    assert lab.leftovers(lab.gate_vm(d, "1.0.0")) == []


@pytest.mark.guest
def test_a_background_test_is_running_when_the_command_returns(lab: Lab, tiny_image: Path) -> None:
    d = "background"
    defined(lab, tiny_image, d, PASSING)
    ran = lab.cli("sig", "image-version", "test", *version_args(d, "1.0.0"), "--no-wait",
                  "-o", "json")  # fmt: skip
    test = ran.json["sigvirt"]["test"]
    assert (test["state"], test["vm"]) == ("running", lab.gate_vm(d, "1.0.0"))
    assert explained(lab, d) == {"1.0.0": f"boot test running (VM {test['vm']})"}
    test = wait_tested(lab, d, "1.0.0", log="test")
    assert (test["state"], test["tests"]) == ("passed", 1)
    assert lab.leftovers(lab.gate_vm(d, "1.0.0")) == []


# Where a kill leaves the record `running`: before the VM, with it up, after the spec ran,
# after it was deleted.
KILL_STEPS = ["gate.running", "gate.booted", "gate.tested", "gate.deleted"]


@pytest.mark.guest
@pytest.mark.parametrize("step", KILL_STEPS)
def test_a_killed_gate_leaves_nothing_after_the_rerun(
    lab: Lab, tiny_image: Path, step: str
) -> None:
    d = "killed-" + step.split(".")[1]
    defined(lab, tiny_image, d, PASSING)
    args = ["sig", "image-version", "test", *version_args(d, "1.0.0")]
    ran = lab.real(*args, fault=step)
    assert ran.returncode == -signal.SIGKILL, ran.stderr
    assert lab.store.get_version(G, d, "1.0.0").boot_test.state == BootTestState.RUNNING
    # Its runner is gone: it counts as pending, and keeps the version out of latest.
    shown = lab.cli("sig", "image-version", "show", *version_args(d, "1.0.0"), "-o", "json")
    assert shown.json["sigvirt"]["test"]["state"] == "pending"
    assert explained(lab, d) == {"1.0.0": "boot test pending"}
    if step in ("gate.booted", "gate.tested"):
        assert lab.leftovers(lab.gate_vm(d, "1.0.0")) != []  # the kill left the VM

    ran = lab.real(*args, "-o", "json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["sigvirt"]["test"]["state"] == "passed"
    assert lab.leftovers(lab.gate_vm(d, "1.0.0")) == []
    assert latest_name(lab, d) == "1.0.0"


@pytest.mark.guest
def test_a_kill_before_the_run_changes_nothing_and_after_it_keeps_the_result(
    lab: Lab, tiny_image: Path
) -> None:
    d = "killed-edges"
    defined(lab, tiny_image, d, PASSING)
    args = ["sig", "image-version", "test", *version_args(d, "1.0.0")]
    before = lab.store.get_version(G, d, "1.0.0")
    for step in ("gate.locked", "gate.cleaned"):
        ran = lab.real(*args, fault=step)
        assert ran.returncode == -signal.SIGKILL, ran.stderr
        assert lab.store.get_version(G, d, "1.0.0") == before
    ran = lab.real(*args, fault="gate.recorded")
    assert ran.returncode == -signal.SIGKILL, ran.stderr
    test = lab.store.get_version(G, d, "1.0.0").boot_test
    assert (test.state, test.tests, test.vm, test.runner) == (BootTestState.PASSED, 1, "", "")
    assert lab.leftovers(lab.gate_vm(d, "1.0.0")) == []
