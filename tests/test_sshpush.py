"""The direct ssh path (hosts/sshpush.py) against real lab hosts' sshds and libvirtds: the
rename rides in the copy's own ssh session and happens only once the caller accepts the
bytes; between two hosts the bytes are relayed through this process, as `scp -3` does."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from sigvirt.errors import CommandFailed, HostError
from sigvirt.hosts import sshpush, streams
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.runner import Runner
from tests.support.hostb import HostB

Remote = tuple[Hypervisor, str, Path]

pytestmark = pytest.mark.hostb


class Refused(Exception):
    pass


@contextlib.contextmanager
def _pool_on(host: HostB) -> Iterator[Remote]:
    name = host.domain_name("sigvirt-test-push")
    path = host.pool(name)
    hv = Hypervisor.open(host.uri)
    try:
        yield hv, name, path
    finally:
        hv.close()
        conn = libvirt.open(host.tcp_uri)
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


@pytest.fixture
def remote(hostb: HostB) -> Iterator[Remote]:
    with _pool_on(hostb) as r:
        yield r


@pytest.fixture
def two_hosts(lab_hosts: list[HostB]) -> Iterator[tuple[Remote, Remote]]:
    with _pool_on(lab_hosts[1]) as a, _pool_on(lab_hosts[2]) as b:
        yield a, b


def _payload(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "payload.qcow2"
    src.write_bytes(os.urandom(5 * sshpush.CHUNK + 777))  # not a multiple of the chunk
    return src, hashlib.sha256(src.read_bytes()).hexdigest()


def test_accepted_bytes_land_under_the_final_name(remote: Remote, tmp_path: Path) -> None:
    hv, pool, path = remote
    src, digest = _payload(tmp_path)
    seen: list[streams.CopyResult] = []
    got = sshpush.push_file(hv, Runner(), src, pool, "v.partial", "v.qcow2", seen.append)
    assert seen == [got]  # accept saw exactly what push_file returns
    assert (got.sha256, got.size, got.bytes_moved) == (digest, src.stat().st_size, got.size)
    assert hashlib.sha256((path / "v.qcow2").read_bytes()).hexdigest() == digest
    assert not (path / "v.partial").exists()
    assert hv.volume_exists(pool, "v.qcow2")  # libvirt sees it: the pool was refreshed


def test_bytes_known_by_their_fingerprint_go_by_sendfile_unhashed(
    remote: Remote, tmp_path: Path
) -> None:
    hv, pool, path = remote
    src, digest = _payload(tmp_path)
    st = src.stat()
    known = ("f" * 64, f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")  # as copies.fingerprint
    got = sshpush.push_file(hv, Runner(), src, pool, "k.partial", "k.qcow2", lambda r: None,
                            known=known)  # fmt: skip
    # not hashed: the result carries the known sha256, the bytes on the host are the file's
    assert (got.sha256, got.size) == (known[0], st.st_size)
    assert hashlib.sha256((path / "k.qcow2").read_bytes()).hexdigest() == digest
    # a file whose fingerprint is not the verified one is hashed as it is sent
    stale = (known[0], f"{st.st_size}:{st.st_mtime_ns + 1}:{st.st_ino}")
    got = sshpush.push_file(hv, Runner(), src, pool, "s.partial", "s.qcow2", lambda r: None,
                            known=stale)  # fmt: skip
    assert got.sha256 == digest


def test_refused_bytes_never_get_the_final_name(remote: Remote, tmp_path: Path) -> None:
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


def test_an_existing_final_name_is_never_replaced(remote: Remote, tmp_path: Path) -> None:
    hv, pool, path = remote
    src, _ = _payload(tmp_path)
    (path / "v.qcow2").write_bytes(b"the replica already there")
    with pytest.raises(HostError, match="did not happen"):
        sshpush.push_file(hv, Runner(), src, pool, "v.partial", "v.qcow2", lambda r: None)
    assert (path / "v.qcow2").read_bytes() == b"the replica already there"


@pytest.mark.multihost
def test_a_file_between_two_hosts_is_relayed_hashed_and_renamed(
    two_hosts: tuple[Remote, Remote], tmp_path: Path
) -> None:
    (src_hv, _, src_dir), (hv, pool, path) = two_hosts
    data, digest = _payload(tmp_path)
    (src_dir / "v.qcow2").write_bytes(data.read_bytes())  # the lab hosts' pools are on this disk
    size = data.stat().st_size
    seen: list[streams.CopyResult] = []
    got = sshpush.relay_file(
        src_hv, src_dir / "v.qcow2", size, hv, Runner(), pool, "v.partial", "v.qcow2", seen.append
    )
    assert seen == [got] and (got.sha256, got.size, got.bytes_moved) == (digest, size, size)
    assert hashlib.sha256((path / "v.qcow2").read_bytes()).hexdigest() == digest
    assert not (path / "v.partial").exists() and hv.volume_exists(pool, "v.qcow2")

    def refuse(result: streams.CopyResult) -> None:
        raise Refused(result.sha256)

    with pytest.raises(Refused):
        sshpush.relay_file(
            src_hv, src_dir / "v.qcow2", size, hv, Runner(), pool, "w.partial", "w.qcow2", refuse
        )
    assert not (path / "w.qcow2").exists()
    # a source that isn't there: one line naming it, nothing renamed
    with pytest.raises(CommandFailed, match=r"reading .*gone\.qcow2"):
        sshpush.relay_file(
            src_hv, src_dir / "gone.qcow2", size, hv, Runner(), pool, "x.partial", "x.qcow2",
            seen.append,
        )  # fmt: skip
    assert not (path / "x.qcow2").exists()


@pytest.mark.offline
@pytest.mark.parametrize(
    ("cpuinfo", "has"),
    [
        ("processor\t: 0\nflags\t\t: fpu vme sse2 aes avx2 sha_ni\n", True),
        ("processor\t: 0\nflags\t\t: fpu vme sse2 avx2 vaes_not\n", False),
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n", True),
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32\n", False),
        ("garbage without colons\n", False),
    ],
)
def test_aes_instructions_are_read_from_cpuinfo(tmp_path: Path, cpuinfo: str, has: bool) -> None:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    assert sshpush.cpu_has_aes(tmp_path / "cpuinfo") is has
    assert sshpush.cpu_has_aes(tmp_path / "missing") is False


@pytest.mark.offline
def test_the_cipher_order_puts_aes_gcm_first_and_keeps_the_rest() -> None:
    # The installed OpenSSH parses the option as sshpush passes it (`-G` prints the result
    # without connecting): AES-GCM first, chacha20 still there for hosts without AES-GCM.
    ran = subprocess.run(
        ["ssh", "-G", "-o", sshpush.PREFER_AES, "host.invalid"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (line,) = [x for x in ran.stdout.splitlines() if x.startswith("ciphers ")]
    order = line.split()[1].split(",")
    assert order[:2] == ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]
    assert "chacha20-poly1305@openssh.com" in order[2:]


@pytest.mark.offline
def test_ciphers_an_ssh_config_chose_are_left_as_chosen(tmp_path: Path) -> None:
    if not sshpush.cpu_has_aes():
        pytest.skip("this CPU has no AES instructions: the order is never changed")
    chosen = tmp_path / "ssh_config"
    chosen.write_text("Host *\n  Ciphers chacha20-poly1305@openssh.com\n")
    runner = Runner()
    assert sshpush.cipher_options(runner, ["ssh", "-F", str(chosen), "--", "h.invalid"]) == []
    stock = ["ssh", "-F", "/dev/null", "--", "h.invalid"]
    assert sshpush.cipher_options(runner, stock) == ["-o", sshpush.PREFER_AES]
