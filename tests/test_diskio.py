"""QEMU's I/O engine for guest disks (hosts/diskio.py): io_uring unless the local kernel says up
front it refuses it to QEMU, and the thread pool from the first define or start that failed on
it. The real refusal (kernel.io_uring_disabled, a guest that still boots) is in test_vms.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from sigvirt.guests.guest import without_io_uring
from sigvirt.hosts.diskio import DiskIo

pytestmark = pytest.mark.offline

XML = Path(__file__).parent / "data" / "xml"

LIBVIRT_REFUSAL = "unsupported configuration: io uring is not supported by this QEMU binary"
QEMU_REFUSAL = (
    "internal error: process exited while connecting to monitor: qemu-system-x86_64: -blockdev "
    '{"driver":"file","aio":"io_uring"}: Unable to use io_uring: failed to init linux io_uring '
    "ring: Operation not permitted"
)


@pytest.mark.parametrize(
    ("knob", "local", "engine"),
    [
        ("0\n", True, "io_uring"),
        ("1\n", True, ""),  # unprivileged processes (QEMU) refused
        ("2\n", True, ""),  # refused to everyone
        ("2\n", False, "io_uring"),  # this machine's kernel says nothing of a remote host's
        (None, True, "io_uring"),  # before Linux 6.6: no knob, nothing refused up front
    ],
)
def test_engine_follows_the_local_kernels_io_uring_knob(
    tmp_path: Path, knob: str | None, local: bool, engine: str
) -> None:
    path = tmp_path / "io_uring_disabled"
    if knob is not None:
        path.write_text(knob)
    assert DiskIo(local, knob=path).engine == engine


@pytest.mark.parametrize("message", [LIBVIRT_REFUSAL, QEMU_REFUSAL])
def test_a_refusal_of_io_uring_turns_the_host_to_the_thread_pool(
    tmp_path: Path, message: str
) -> None:
    io = DiskIo(True, knob=tmp_path / "absent")
    assert io.engine == "io_uring"
    assert io.refused(message)
    assert io.engine == ""
    assert io.refused(message)  # a second guest that was defined before the first failed


def test_other_failures_are_not_taken_for_a_refusal(tmp_path: Path) -> None:
    io = DiskIo(True, knob=tmp_path / "absent")
    for message in (
        "Cannot access storage file '/var/lib/sigvirt/pools/a/web-0.qcow2': Permission denied",
        "internal error: qemu unexpectedly closed the monitor: Could not set up host forwarding",
        "",
    ):
        assert not io.refused(message)
    assert io.engine == "io_uring"


def test_a_domain_moves_off_io_uring_with_nothing_else_changed() -> None:
    """A guest made on io_uring, started on a host that now refuses it (guest.start_domain):
    every disk's driver loses io="io_uring" and nothing else changes."""
    on = (XML / "domain-tcg-io-uring.xml").read_text()
    assert on.count('io="io_uring"') == 3  # the OS disk, the seed, a data disk
    assert without_io_uring(on) == on.replace(' io="io_uring"', "")
    assert without_io_uring(on.replace(' io="io_uring"', "")) is None  # nothing to move
