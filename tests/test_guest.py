"""Real guests under qemu:///system booted from linked clones, checked with testinfra."""

from __future__ import annotations

import hashlib
import re
import socket
import stat
from pathlib import Path

import pytest
import testinfra

from sigvirt.errors import GuestFailed
from sigvirt.guests import guest
from sigvirt.guests.guest import GuestSpec, PortAllocator
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.runner import Runner
from tests.support.base import LabPool, SshKey, place_base, unique

pytestmark = pytest.mark.guest


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def acl(path: Path) -> str:
    return Runner().run(["getfacl", "-cp", str(path)]).stdout


def host_for(g: guest.Guest) -> testinfra.host.Host:
    assert g.endpoint is not None
    ep = g.endpoint
    return testinfra.get_host(
        f"paramiko://{ep.user}@{ep.host}:{ep.port}", ssh_identity_file=str(ep.key_path)
    )


def _leftovers(hv: Hypervisor, pool: str, name: str) -> list[str]:
    found = [name] if hv.domain_exists(name) else []
    hv.refresh_pool(pool)
    for vol in hv.volumes(pool):
        if vol.name.startswith(name + "."):
            found.append(vol.name)
    return found


@pytest.fixture(scope="module")
def tiny_base(system_hv: Hypervisor, lab_pool: LabPool, tiny_image: Path) -> Path:
    return place_base(system_hv, lab_pool, tiny_image, unique("tiny-base.qcow2"))


def tiny_spec(name: str, lab_pool: LabPool, tiny_base: Path, key: str) -> GuestSpec:
    """A 128 MiB guest of the tiny base whose admin, labuser, is seeded with `key`."""
    return GuestSpec(
        name=name, pool=lab_pool.name, base=tiny_base, admin_user="labuser",
        ssh_public_keys=(key,), memory_mib=128,
    )  # fmt: skip


def test_linked_clone_boots_with_seeded_hostname_and_key(
    system_hv: Hypervisor, lab_pool: LabPool, tiny_base: Path, ssh_key: SshKey
) -> None:
    base_sha = sha256(tiny_base)
    base_stat = tiny_base.stat()
    base_acl = acl(tiny_base)
    name = unique("clone")
    spec = tiny_spec(name, lab_pool, tiny_base, ssh_key.public)
    try:
        g = guest.create(system_hv, spec, ssh_key.private, ports=PortAllocator(), timeout=120)
        host = host_for(g)
        assert host.check_output("hostname") == name
        assert host.user().name == "labuser"
        assert host.file("/home/labuser/.ssh/authorized_keys").contains(ssh_key.public.split()[1])
        # The overlay's backing file is the base, with its format stated.
        info = Runner().run(["qemu-img", "info", "-U", "-f", "qcow2", str(g.overlay)]).stdout
        assert f"backing file: {tiny_base}" in info
        assert "backing file format: qcow2" in info
        # Under TCG the devices sit on pcie.0: libvirt added no root ports and no USB.
        live = system_hv.domain(name).xml()
        if "type='qemu'" in live.split(">", 1)[0]:
            assert "pcie-root-port" not in live
            assert "<controller type='usb' index='0' model='none'" in live

        before = g.overlay.stat().st_size
        host.run_test("dd if=/dev/urandom of=/home/labuser/blob bs=1M count=16 && sync")
        after = g.overlay.stat().st_size
        assert after - before >= 16 << 20, (before, after)
        assert sha256(tiny_base) == base_sha
    finally:
        removed = guest.delete(system_hv, name)
    assert f"domain {name}" in removed
    assert _leftovers(system_hv, lab_pool.name, name) == []
    # libvirt must not have relabelled the shared base while the guest ran or after.
    after_stat = tiny_base.stat()
    assert (after_stat.st_uid, after_stat.st_gid) == (base_stat.st_uid, base_stat.st_gid)
    assert stat.S_IMODE(after_stat.st_mode) == stat.S_IMODE(base_stat.st_mode) == 0o640
    assert acl(tiny_base) == base_acl
    assert "user:libvirt-qemu:r--" in base_acl


def test_a_port_taken_between_the_check_and_the_start_moves_the_guest_to_another(
    system_hv: Hypervisor, lab_pool: LabPool, tiny_base: Path, ssh_key: SshKey
) -> None:
    """Another process binds the guest's loopback port after sigvirt chose it and before QEMU
    starts: the start fails on the port, and the same domain (its UUID kept: libvirt refuses a
    new one under the same name) is defined again on another port, and boots."""
    name = unique("portrace")
    spec = tiny_spec(name, lab_pool, tiny_base, ssh_key.public)
    squatter = socket.socket()
    taken: list[tuple[int, str]] = []

    def take_the_port() -> None:
        dom = system_hv.domain(name)
        found = re.search(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-", dom.xml())
        assert found is not None
        squatter.bind(("127.0.0.1", int(found.group(1))))
        squatter.listen()
        taken.append((int(found.group(1)), dom.uuid()))

    try:
        g = guest.create(
            system_hv, spec, ssh_key.private, ports=PortAllocator(), timeout=120,
            before_start=take_the_port,
        )  # fmt: skip
        assert g.endpoint is not None and taken
        port, uuid = taken[0]
        assert g.endpoint.port != port
        assert system_hv.domain(name).uuid() == uuid
        assert host_for(g).check_output("hostname") == name
    finally:
        squatter.close()
        guest.delete(system_hv, name)
    assert _leftovers(system_hv, lab_pool.name, name) == []


def test_guest_that_never_answers_fails_with_console_and_leaves_nothing(
    system_hv: Hypervisor, lab_pool: LabPool, tiny_base: Path, ssh_key: SshKey, scratch: Path
) -> None:
    # The guest boots, but the seed carries a key we don't hold: SSH never lets us in.
    name = unique("nokey")
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxq3Q9v2mC8pF0eX3YkWm1y1C1sQ5lqG6iZ0Xj5bH8P x"
    spec = tiny_spec(name, lab_pool, tiny_base, other)
    with pytest.raises(GuestFailed) as failed:
        guest.create(system_hv, spec, ssh_key.private, ports=PortAllocator(), timeout=25)
    assert "no SSH answer within 25s" in failed.value.message
    assert "SIGVIRT-GUEST-READY" in failed.value.console_tail
    assert _leftovers(system_hv, lab_pool.name, name) == []
