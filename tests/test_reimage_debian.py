"""A Debian instance (real cloud-init) takes its name, admin user and key from the seed; a
reimage's fresh disk runs first boot again from the NoCloud seed the domain kept, and ends
with the same hostname, admin user and key. The one Debian boot of guest creation in the
suite (test_guest's tiny guests prove the rest of guest.create)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sigvirt.cli import main
from sigvirt.hosts.hypervisor import Hypervisor
from tests.support.base import SshKey, unique
from tests.support.fleetlab import D, FleetLab, G, open_lab

pytestmark = pytest.mark.guest


@pytest.fixture(scope="module")
def lab(
    scratch: Path, system_hv: Hypervisor, debian_image: Path, ssh_key: SshKey
) -> Iterator[FleetLab]:
    with open_lab(scratch, system_hv, debian_image, ssh_key, "reimaged", "25400-25449") as lab:
        yield lab


def test_cloud_init_gives_a_reimaged_instance_its_name_and_key_again(
    lab: FleetLab, capsys: pytest.CaptureFixture[str]
) -> None:
    name = unique("deb")
    instance = f"{name}-0"
    code, _out, err = lab.cli(capsys, "vmss", "create", "-n", name, "--image", f"{G}/{D}/1.0.0",
                              "--instance-count", "1", "--vm-sku", "Standard_B1ls",
                              "--ssh-key-value", f"{lab.key.private}.pub",
                              "--admin-username", "labuser", "-o", "none")  # fmt: skip
    assert code == 0, err
    try:
        before = lab.json(capsys, "vmss", "list-instances", "-n", name)[0]
        # First boot: the image bakes in no user and no key; the real cloud-init took the
        # name, the admin user (with passwordless sudo) and the key from the seed.
        assert lab.ssh(before, "hostname; id -un; dpkg-query -W -f '${Status}\\n' cloud-init;"
                       " systemctl is-active ssh; sudo -n true && echo sudo").splitlines() == [
            instance, "labuser", "install ok installed", "active", "sudo",
        ]  # fmt: skip
        assert lab.key.public.split()[1] in lab.ssh(before, "cat ~/.ssh/authorized_keys")
        first_id = lab.ssh(before, "cat /var/lib/cloud/data/instance-id")
        lab.ssh(before, "touch ~/written-before && sync")

        code, _out, err = lab.cli(capsys, "vmss", "reimage", "-n", name, "-o", "none")
        assert code == 0, err
        after = lab.json(capsys, "vmss", "list-instances", "-n", name)[0]
        assert after["sigvirt"]["volumes"][0] != before["sigvirt"]["volumes"][0]
        assert after["sigvirt"]["address"] == before["sigvirt"]["address"]
        # a fresh disk: what was written is gone, and cloud-init ran first boot again
        assert lab.ssh(after, "test -e ~/written-before || echo fresh") == "fresh"
        assert lab.ssh(after, "cloud-init status --wait >/dev/null; cloud-init status").endswith(
            "done"
        )
        assert lab.ssh(after, "cat /var/lib/cloud/data/instance-id") == first_id
        assert lab.ssh(after, "hostname") == instance
        assert lab.ssh(after, "id -un") == "labuser"
        keys = lab.ssh(after, "cat ~/.ssh/authorized_keys")
        assert lab.key.public.split()[1] in keys
        assert lab.volumes(instance + ".") == lab.owned(instance)
    finally:
        assert main(["vmss", "delete", "-n", name, "--yes", "-o", "none"]) == 0
    assert lab.volumes(instance) == []
