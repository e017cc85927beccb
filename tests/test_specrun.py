"""Testinfra specs against a real guest (the runner the boot-test gate and health probes use)."""

from __future__ import annotations

import os
import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sigvirt.errors import InvalidArgument
from sigvirt.guests import guest, specrun
from sigvirt.guests.guest import GuestSpec, PortAllocator
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.runner import Runner
from tests.support.base import LabPool, SshKey, place_base, unique

PASSING = """
def test_hostname(host):
    assert host.check_output("hostname").startswith("svt")

def test_admin(host):
    assert host.user().name == "labuser"
"""
FAILING = """
def test_fine(host):
    assert host.file("/etc").is_directory

def test_marker(host):
    assert host.file("/etc/no-such-marker").exists, "the marker is missing"

def test_other(host):
    assert host.run("false").rc == 0
"""


@pytest.fixture(scope="module")
def booted(
    system_hv: Hypervisor, lab_pool: LabPool, tiny_image: Path, ssh_key: SshKey
) -> Iterator[guest.Guest]:
    base = place_base(system_hv, lab_pool, tiny_image, unique("spec-base.qcow2"))
    spec = GuestSpec(
        name=unique("spec"), pool=lab_pool.name, base=base, admin_user="labuser",
        ssh_public_keys=(ssh_key.public,), memory_mib=128,
    )  # fmt: skip
    g = guest.create(system_hv, spec, ssh_key.private, ports=PortAllocator(), timeout=120)
    try:
        yield g
    finally:
        guest.delete(system_hv, g.name)


@pytest.mark.guest
def test_a_passing_spec_passes(booted: guest.Guest) -> None:
    assert booted.endpoint is not None
    result = specrun.run_spec(Runner(), PASSING, booted.endpoint)
    assert (result.passed, result.tests, result.failures) == (True, 2, ())
    assert result.summary == "2 passed"


@pytest.mark.guest
def test_a_failing_spec_names_its_failures(booted: guest.Guest) -> None:
    assert booted.endpoint is not None
    result = specrun.run_spec(Runner(), FAILING, booted.endpoint)
    assert not result.passed and result.tests == 3
    assert [f.split(":")[0] for f in result.failures] == ["test_marker", "test_other"]
    assert "the marker is missing" in result.failures[0]


@pytest.mark.guest
def test_a_spec_that_cannot_run_fails(booted: guest.Guest) -> None:
    assert booted.endpoint is not None
    broken = "import no_such_module_here\n\ndef test_x(host):\n    pass\n"
    result = specrun.run_spec(Runner(), broken, booted.endpoint)
    assert not result.passed
    assert "no_such_module_here" in result.summary


@pytest.mark.guest
def test_a_spec_runs_as_the_user_it_is_given(booted: guest.Guest, tmp_path: Path) -> None:
    """Run as nobody: the spec sees nobody's uid, and nobody can read only the key it is
    handed (a copy), not the caller's."""
    assert booted.endpoint is not None
    nobody = pwd.getpwnam("nobody")
    keydir = tmp_path / "key"
    keydir.mkdir()
    key = keydir / "id"
    shutil.copy(booted.endpoint.key_path, key)
    for path in (tmp_path, keydir, key):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    os.chmod(tmp_path, 0o755)
    who = f"import os\n\ndef test_me(host):\n    assert os.getuid() == {nobody.pw_uid}\n"
    result = specrun.run_spec(Runner(), who, booted.endpoint, key=key, run_as="nobody")
    assert result.passed, result.failures


@pytest.mark.offline
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"def test_x(host):\n  assert (\n", "--test-spec: not a Python test file"),
        (b"\xff\xfe", "--test-spec: not a Python test file"),
        (b"x = 1\n", "--test-spec: has no test functions"),
        (b"#" * (specrun.MAX_SPEC_BYTES + 1), "--test-spec: larger than 256 KiB"),
    ],
)
def test_bad_specs_are_refused_before_they_are_stored(text: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        specrun.check_spec(text)
    assert err.value.message.startswith(message)
