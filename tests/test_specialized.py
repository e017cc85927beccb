"""Specialized images: a VM captured with its identity (`--source vm:NAME`), published into an
`--os-state Specialized` definition, boots without a seed and keeps the image's hostname,
users and keys; identity flags are refused before anything is made (az: no osProfile)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra

from sigvirt.catalog.records import ImageVersion, Replica, ReplicaState, VersionState
from sigvirt.cli import main
from sigvirt.errors import ExitCode
from sigvirt.hosts import ssh as sshlib
from sigvirt.hosts.hypervisor import Hypervisor
from tests.support.base import SshKey, unique
from tests.support.catalog import SigEnv

G = "specGallery"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxq3Q9v2mC8pF0eX3YkWm1y1C1sQ5lqG6iZ0Xj5bH8P x"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- refusals, before anything is made (offline) -----------------------------------------------
def _define(sig: SigEnv, name: str, *extra: str) -> None:
    ran = sig.cli("sig", "image-definition", "create", "--gallery-name", "myGallery",
                  "--gallery-image-definition", name, "--publisher", "p", "--offer", name,
                  "--sku", name, *extra)  # fmt: skip
    assert ran.code == 0, ran.err


def _version(sig: SigEnv, definition: str) -> None:
    """A published version record whose replica is a plain file (nothing boots here)."""
    volume = f"myGallery-{definition}-1.0.0-local-0.qcow2"
    path = sig.pools.replicas[0].path / volume
    path.write_bytes(b"")
    replica = Replica("local", sig.pools.replicas[0].name, volume, str(path),
                      state=ReplicaState.COMPLETED)  # fmt: skip
    rec = ImageVersion("myGallery", definition, "1.0.0", state=VersionState.SUCCEEDED,
                       target_regions={"local": 1}, sha256="0" * 64, virtual_size=600 << 20,
                       replicas=(replica,))  # fmt: skip
    with sig.store.definition_lock("myGallery", definition):
        sig.store.create_version(rec)


@pytest.fixture
def seedless(offline_sig: SigEnv) -> SigEnv:
    offline_sig.gallery()
    _define(offline_sig, "spec", "--os-state", "Specialized")
    _define(offline_sig, "win", "--os-type", "Windows")
    _define(offline_sig, "linux")
    _define(offline_sig, "arm", "--architecture", "Arm64")
    for d in ("spec", "win", "linux", "arm"):
        _version(offline_sig, d)
    return offline_sig


SPECIALIZED = (
    "image definition myGallery/spec is --os-state Specialized: its VMs keep the image's own "
    "hostname, users and keys (no osProfile, as in Azure); reach one with "
    "`sigvirt vm ssh -n x --local-user USER --private-key-file KEY`"
)
WINDOWS = (
    "image definition myGallery/win is --os-type Windows: sigvirt boots Windows without a seed "
    "and can't set its account, password or computer name (Azure does that through its "
    "provisioning agent); set them in the image (unattend.xml, sysprep) instead"
)
FLAGS = [
    (["--admin-username", "bob"], "--admin-username"),
    (["--admin-password", "Secret123!"], "--admin-password"),
    (["--ssh-key-value", KEY], "--ssh-key-value"),
    (["--generate-ssh-keys"], "--generate-ssh-keys"),
    (["--computer-name", "host1"], "--computer-name"),
    (["--admin-username", "bob", "--ssh-key-value", KEY], "--admin-username --ssh-key-value"),
]


@pytest.mark.offline
@pytest.mark.parametrize(("definition", "reason"), [("spec", SPECIALIZED), ("win", WINDOWS)])
@pytest.mark.parametrize(("args", "flags"), FLAGS, ids=[" ".join(f[0][:1]) for f in FLAGS])
def test_identity_flags_are_refused_for_seedless_images(
    seedless: SigEnv, definition: str, reason: str, args: list[str], flags: str
) -> None:
    got = seedless.refused(ExitCode.INVALID_ARGUMENT, "vm", "create", "-n", "x", "--image",
                           f"myGallery/{definition}/1.0.0", *args)  # fmt: skip
    assert got == f"{flags}: {reason}"  # and `refused` checked that nothing was made


@pytest.mark.offline
def test_custom_data_and_scale_sets_are_refused_too(seedless: SigEnv, tmp_path: Path) -> None:
    data = tmp_path / "cloud.yaml"
    data.write_text("#cloud-config\nruncmd: [true]\n")
    got = seedless.refused(ExitCode.INVALID_ARGUMENT, "vm", "create", "-n", "x", "--image",
                           "myGallery/spec/1.0.0", "--custom-data", str(data))  # fmt: skip
    assert got == f"--custom-data: {SPECIALIZED}"
    got = seedless.refused(ExitCode.INVALID_ARGUMENT, "vmss", "create", "-n", "x", "--image",
                           "myGallery/win/1.0.0", "--ssh-key-value", KEY)  # fmt: skip
    assert got.startswith("--ssh-key-value: image definition myGallery/win is --os-type Windows")
    assert not seedless.root.joinpath("scalesets", "x").exists()  # no model was recorded


@pytest.mark.offline
def test_a_password_is_refused_for_generalized_linux(seedless: SigEnv) -> None:
    got = seedless.refused(ExitCode.UNSUPPORTED, "vm", "create", "-n", "x", "--image",
                           "myGallery/linux/1.0.0", "--ssh-key-value", KEY,
                           "--admin-password", "Secret123!")  # fmt: skip
    assert got == (
        "--admin-password: sigvirt's Linux guests take SSH keys only "
        "(cloud-init is told ssh_pwauth: false); use --ssh-key-value"
    )


# -- a real capture and a real specialized VM ------------------------------------------------------
@dataclass(frozen=True)
class Lab:
    root: Path
    pool: str


@pytest.fixture(scope="module")
def lab(scratch: Path, system_hv: Hypervisor, tiny_image: Path) -> Iterator[Lab]:
    root = scratch / "speclab"
    root.mkdir()
    pool = unique("spec")
    (root / "regions.yaml").write_text(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n"
        f"      - name: {pool}\n        path: {root}/pool\n"
        "    network:\n      type: user-forward\n      ports: 25700-25749\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGVIRT_REGIONS", str(root / "regions.yaml"))
        mp.setenv("SIGVIRT_GALLERY_ROOT", str(root / "galleries"))
        assert main(["sig", "create", "-r", G]) == 0
        for d, state in (("gen", "Generalized"), ("spec", "Specialized")):
            assert main(["sig", "image-definition", "create", "-r", G, "-i", d, "-p", "sv",
                         "-f", d, "-s", "1", "--os-state", state]) == 0  # fmt: skip
        assert main(["sig", "image-version", "create", "-r", G, "-i", "gen", "-e", "1.0.0",
                     "--source", str(tiny_image)]) == 0  # fmt: skip
        try:
            yield Lab(root, pool)
        finally:
            for name in (unique("src"), unique("copy")):
                main(["vm", "delete", "-n", name])  # what a failed test left (else: exit 4)
            for d, v in (("spec", "1.0.0"), ("gen", "1.0.0")):
                main(["sig", "image-version", "delete", "-r", G, "-i", d, "-e", v])
    system_hv.delete_pool(pool)
    shutil.rmtree(root, ignore_errors=True)


def _volumes(hv: Hypervisor, pool: str, name: str) -> list[str]:
    hv.refresh_pool(pool)
    return sorted(v.name for v in hv.volumes(pool) if v.name.startswith(name + "."))


@pytest.mark.guest
def test_a_captured_vm_published_as_specialized_keeps_its_identity(
    lab: Lab, system_hv: Hypervisor, ssh_key: SshKey, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("SIGVIRT_REGIONS", str(lab.root / "regions.yaml"))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(lab.root / "galleries"))
    src, new, image_host = unique("src"), unique("copy"), unique("host")
    pub = str(ssh_key.private.with_suffix(".pub"))  # with its private key: create logs in
    # the source: a generalized VM whose seed sets a hostname and an admin user with our key
    code, out, err = cli(capsys, "vm", "create", "-n", src, "--image", f"{G}/gen/1.0.0",
                         "--admin-username", "owner", "--ssh-key-value", pub,
                         "--computer-name", image_host, "-o", "json")  # fmt: skip
    assert code == 0, err
    created = json.loads(out)
    assert created["osProfile"]["computerName"] == image_host
    ep = created["sigvirt"]["address"]
    inside = testinfra.get_host(f"paramiko://owner@{ep}", ssh_identity_file=str(ssh_key.private))
    assert inside.check_output("hostname") == image_host
    inside.run_expect([0], "echo captured-$((6*7)) > ~/marker && sync")

    # a generalized definition takes a VM's disk only once it is stopped (as before) ...
    code, _out, err = cli(capsys, "sig", "image-version", "create", "-r", G, "-i", "gen",
                          "-e", "2.0.0", "--source", f"vm:{src}")  # fmt: skip
    assert code == ExitCode.CONFLICT and f"vm:{src} is running; stop it first" in err, err
    # ... a specialized one while it runs: libvirt's backup job copies the running disk
    code, _out, err = cli(capsys, "sig", "image-version", "create", "-r", G, "-i", "spec",
                          "-e", "1.0.0", "--source", f"vm:{src}")  # fmt: skip
    assert code == 0, err
    assert system_hv.domain(src).info().state == "running"
    assert main(["vm", "delete", "-n", src]) == 0
    capsys.readouterr()

    # identity flags are refused for it, before anything is made
    code, _out, err = cli(capsys, "vm", "create", "-n", new, "--image", f"{G}/spec/1.0.0",
                          "--ssh-key-value", ssh_key.public)  # fmt: skip
    assert code == ExitCode.INVALID_ARGUMENT
    assert err.strip().startswith("sigvirt: error: --ssh-key-value: image definition "), err
    assert _volumes(system_hv, lab.pool, new) == []

    # without them it boots seedless: create returns once its sshd answers
    code, out, err = cli(capsys, "vm", "create", "-n", new, "--image", f"{G}/spec/1.0.0",
                         "-o", "json")  # fmt: skip
    assert code == 0, err
    vm = json.loads(out)
    assert vm["osProfile"] is None
    assert vm["storageProfile"]["osDisk"]["osType"] == "Linux"
    assert _volumes(system_hv, lab.pool, new) == [f"{new}.console.log", f"{new}.qcow2"]
    assert "cidata" not in system_hv.domain(new).xml()

    # reached with the image's own user and key; its hostname is the image's, not the VM's
    code, out, err = cli(capsys, "vm", "ssh", "-n", new, "--print", "--local-user", "owner",
                         "--private-key-file", str(ssh_key.private))  # fmt: skip
    assert code == 0, err
    assert f"-i {ssh_key.private} " in out and out.strip().endswith("owner@127.0.0.1")
    code, out, err = cli(capsys, "vm", "ssh", "-n", new, "--print")
    assert code == 0 and out.strip().endswith(" 127.0.0.1"), err  # no user: ssh's default
    address = vm["sigvirt"]["address"]
    # sigvirt waited for sshd's banner only (it holds no key of the image): log in once first
    port = int(address.rpartition(":")[2])
    sshlib.wait_ready(sshlib.Endpoint("127.0.0.1", port, "owner", ssh_key.private), 120)
    copy = testinfra.get_host(f"paramiko://owner@{address}", ssh_identity_file=str(ssh_key.private))
    assert copy.file("/home/owner/marker").content_string == "captured-42\n"
    assert copy.file("/etc/hostname").content_string.strip() == image_host
    assert copy.check_output("hostname") == image_host  # not the VM's name: no seed said so
    assert main(["vm", "delete", "-n", new]) == 0
    assert _volumes(system_hv, lab.pool, new) == []


@pytest.mark.offline
@pytest.mark.parametrize(
    ("definition", "reason"),
    [
        ("spec", "is --os-state Specialized: its VMs boot without a seed, so sigvirt has no "
                 "key to log in to them with"),
        ("arm", "is --architecture Arm64: sigvirt exports x64 images as boxes only"),
    ],
)  # fmt: skip
def test_box_export_of_a_seedless_or_arm64_image_is_refused(
    seedless: SigEnv, tmp_path: Path, definition: str, reason: str
) -> None:
    got = seedless.refused(ExitCode.UNSUPPORTED, "sig", "image-version", "export-box", "-r",
                           "myGallery", "-i", definition, "-e", "1.0.0", "--file",
                           str(tmp_path / "x.box"))  # fmt: skip
    assert got == f"export-box: image definition myGallery/{definition} {reason}"
    assert not (tmp_path / "x.box").exists()


@pytest.mark.guest
def test_a_boot_test_of_a_specialized_image_fails_without_booting(
    lab: Lab, tiny_image: Path, system_hv: Hypervisor, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("SIGVIRT_REGIONS", str(lab.root / "regions.yaml"))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(lab.root / "galleries"))
    spec = tmp_path / "spec.py"
    spec.write_text("def test_up(host):\n    assert host.file('/etc/hostname').exists\n")
    assert main(["sig", "image-definition", "create", "-r", G, "-i", "gated", "-p", "sv", "-f",
                 "gated", "-s", "1", "--os-state", "Specialized", "--test-spec", str(spec)]) == 0  # fmt: skip
    try:
        code, _out, err = cli(capsys, "sig", "image-version", "create", "-r", G, "-i", "gated",
                              "-e", "1.0.0", "--source", str(tiny_image))  # fmt: skip
        assert code == ExitCode.BOOT_TEST_FAILED, err
        assert "boot test: image definition specGallery/gated is --os-state Specialized: its " \
               "VMs boot without a seed, so sigvirt has no key to log in to them with" in err  # fmt: skip
        assert not [d.name for d in system_hv.domains() if d.name.startswith("gate-")
                    and "gated" in d.xml()]  # fmt: skip
    finally:
        main(["sig", "image-version", "delete", "-r", G, "-i", "gated", "-e", "1.0.0"])


@pytest.mark.offline
def test_a_bad_computer_name_is_refused(seedless: SigEnv) -> None:
    got = seedless.refused(ExitCode.INVALID_NAME, "vm", "create", "-n", "x", "--image",
                           "myGallery/linux/1.0.0", "--ssh-key-value", KEY,
                           "--computer-name", "no_underscores")  # fmt: skip
    assert got == (
        "--computer-name 'no_underscores' is invalid: use letters, digits and '-', starting "
        "with a letter or digit, at most 63 characters"
    )
