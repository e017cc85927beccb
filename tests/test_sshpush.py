"""The direct ssh path (hosts/sshpush.py) against hostB's real sshd and libvirtd: the rename
rides in the copy's own ssh session and happens only once the caller accepts the bytes."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from sigvirt.errors import HostError
from sigvirt.hosts import sshpush, streams
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.runner import Runner
from tests.support.hostb import HostB

pytestmark = pytest.mark.hostb


class Refused(Exception):
    pass


@pytest.fixture
def remote(hostb: HostB) -> Iterator[tuple[Hypervisor, str, Path]]:
    name = hostb.domain_name("sigvirt-test-push")
    path = hostb.pool(name)
    hv = Hypervisor.open(hostb.uri)
    try:
        yield hv, name, path
    finally:
        hv.close()
        conn = libvirt.open(hostb.tcp_uri)
        try:
            pool = conn.storagePoolLookupByName(name)
            pool.refresh(0)
            for vol in pool.listAllVolumes(0):
                vol.delete(0)
            with contextlib.suppress(libvirt.libvirtError):
                pool.destroy()
            pool.undefine()
        finally:
            conn.close()


def _payload(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "payload.qcow2"
    src.write_bytes(os.urandom(5 * sshpush.CHUNK + 777))  # not a multiple of the chunk
    return src, hashlib.sha256(src.read_bytes()).hexdigest()


def test_accepted_bytes_land_under_the_final_name(
    remote: tuple[Hypervisor, str, Path], tmp_path: Path
) -> None:
    hv, pool, path = remote
    src, digest = _payload(tmp_path)
    seen: list[streams.CopyResult] = []
    got = sshpush.push_file(hv, Runner(), src, pool, "v.partial", "v.qcow2", seen.append)
    assert seen == [got]  # accept saw exactly what push_file returns
    assert (got.sha256, got.size, got.bytes_moved) == (digest, src.stat().st_size, got.size)
    assert hashlib.sha256((path / "v.qcow2").read_bytes()).hexdigest() == digest
    assert not (path / "v.partial").exists()
    assert hv.volume_exists(pool, "v.qcow2")  # libvirt sees it: the pool was refreshed


def test_refused_bytes_never_get_the_final_name(
    remote: tuple[Hypervisor, str, Path], tmp_path: Path
) -> None:
    hv, pool, path = remote
    src, _ = _payload(tmp_path)

    def refuse(result: streams.CopyResult) -> None:
        raise Refused(result.sha256)

    with pytest.raises(Refused):
        sshpush.push_file(hv, Runner(), src, pool, "v.partial", "v.qcow2", refuse)
    # The refusal kills the ssh at once: what arrived (if anything did) stays under the
    # temporary name, for the caller to remove; the final name never appears.
    assert not (path / "v.qcow2").exists()
    assert [p.name for p in path.iterdir()] in ([], ["v.partial"])


def test_an_existing_final_name_is_never_replaced(
    remote: tuple[Hypervisor, str, Path], tmp_path: Path
) -> None:
    hv, pool, path = remote
    src, _ = _payload(tmp_path)
    (path / "v.qcow2").write_bytes(b"the replica already there")
    with pytest.raises(HostError, match="did not happen"):
        sshpush.push_file(hv, Runner(), src, pool, "v.partial", "v.qcow2", lambda r: None)
    assert (path / "v.qcow2").read_bytes() == b"the replica already there"
