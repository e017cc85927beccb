"""`--os-type Windows`: vm create boots without a seed, waits for the domain to run (not for
SSH) and says how to reach its console. No Windows image can be built here: the tiny image
published into a Windows definition stands in (it won't find its root on SATA, which is
the point: nothing waits for it), so the create path, the absent seed, the running state,
the VNC way in and the Windows domain XML are real."""

from __future__ import annotations

import json
import re
import shutil
import socket
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from sigvirt.cli import main
from sigvirt.hosts.hypervisor import Hypervisor
from tests.support.base import unique

pytestmark = pytest.mark.guest
G = "winGallery"


@pytest.fixture(scope="module")
def lab(scratch: Path, system_hv: Hypervisor, tiny_image: Path) -> Iterator[tuple[Path, str]]:
    root = scratch / "winlab"
    root.mkdir()
    pool = unique("win")
    (root / "regions.yaml").write_text(
        "regions:\n  local:\n    uri: qemu:///system\n    pools:\n"
        f"      - name: {pool}\n        path: {root}/pool\n"
        "    network:\n      type: user-forward\n      ports: 25750-25769\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGVIRT_REGIONS", str(root / "regions.yaml"))
        mp.setenv("SIGVIRT_GALLERY_ROOT", str(root / "galleries"))
        assert main(["sig", "create", "-r", G]) == 0
        assert main(["sig", "image-definition", "create", "-r", G, "-i", "win", "-p", "sv",
                     "-f", "win", "-s", "1", "--os-type", "Windows"]) == 0  # fmt: skip
        assert main(["sig", "image-version", "create", "-r", G, "-i", "win", "-e", "1.0.0",
                     "--source", str(tiny_image)]) == 0  # fmt: skip
        try:
            yield root, pool
        finally:
            main(["vm", "delete", "-n", unique("w")])  # what a failed test left (else: exit 4)
            main(["sig", "image-version", "delete", "-r", G, "-i", "win", "-e", "1.0.0"])
    system_hv.delete_pool(pool)
    shutil.rmtree(root, ignore_errors=True)


def _volumes(hv: Hypervisor, pool: str, name: str) -> list[str]:
    hv.refresh_pool(pool)
    return sorted(v.name for v in hv.volumes(pool) if v.name.startswith(name + "."))


def test_a_windows_vm_boots_seedless_and_reports_its_console(
    lab: tuple[Path, str], system_hv: Hypervisor, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    root, pool = lab
    monkeypatch.setenv("SIGVIRT_REGIONS", str(root / "regions.yaml"))
    monkeypatch.setenv("SIGVIRT_GALLERY_ROOT", str(root / "galleries"))
    name = unique("w")
    # No sshd will ever answer in this guest: a create that waited for SSH would fail here.
    code = main(["vm", "create", "-n", name, "--image", f"{G}/win/1.0.0", "--timeout", "60",
                 "-o", "json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    vm = json.loads(out)
    assert vm["osProfile"] is None
    assert vm["storageProfile"]["osDisk"]["osType"] == "Windows"
    found = re.search(
        rf"^sigvirt: {name}: VNC on 127\.0\.0\.1:(\d+) "
        rf"\(virsh -c qemu:///system domdisplay {name}\)$", err, re.M,
    )  # fmt: skip
    assert found, err
    assert system_hv.domain(name).info().state == "running"
    assert _volumes(system_hv, pool, name) == [f"{name}.console.log", f"{name}.qcow2"]

    live = ET.fromstring(system_hv.domain(name).xml())
    assert live.find("./features/hyperv") is not None
    assert live.find("./clock").get("offset") == "localtime"  # type: ignore[union-attr]
    disks = live.findall("./devices/disk")
    assert [d.find("target").get("bus") for d in disks] == ["sata"]  # type: ignore[union-attr]
    assert "cidata" not in ET.tostring(live, encoding="unicode")
    graphics = live.find("./devices/graphics[@type='vnc']")
    assert graphics is not None and graphics.get("port") == found[1]
    # the way in answers: QEMU's VNC server greets on the loopback with its RFB version
    with socket.create_connection(("127.0.0.1", int(found[1])), timeout=10) as s:
        assert s.recv(12).startswith(b"RFB 003.")

    # `vm wait --created` (after --no-wait) waits for the same: running, not SSH
    assert main(["vm", "wait", "--created", "-n", name, "--timeout", "30"]) == 0
    assert main(["vm", "show", "-n", name, "-o", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["osProfile"] is None and shown["storageProfile"]["osDisk"]["osType"] == "Windows"
    assert shown["sigvirt"]["console"].startswith(f"VNC on 127.0.0.1:{found[1]} (virsh")
    assert main(["vm", "delete", "-n", name]) == 0
    assert _volumes(system_hv, pool, name) == []
