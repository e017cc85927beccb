"""A file pushed straight into a qemu+ssh host's pool over one `ssh` process: the direct path
for cross-host replication (regions.yaml `replication: {direct_ssh: true}`, the default).
A local file is read here (`push_file`); another qemu+ssh host's file is read over a second
`ssh` into `cat` and relayed through this process (`relay_file`), as `scp -3` does.

libvirt's upload relays each 256 KiB piece as a remote-protocol message through libvirtd on
both ends; here the bytes go as scp sends them, one ssh channel into the host's shell. This
process reads the file and hashes the bytes it sends, as the libvirt path does, unless the
caller knows them already: a replica whose fingerprint (size, mtime, inode) is the one it
had when it last hashed to the version's sha256, and still is once every byte is sent, was
sent as it was verified (ssh's MAC covers the way), so hashing it again would only slow the
copy (measured here: 1 GiB in 2.3 s, 3.2 s hashing inline).

The rename to the final name travels in the same session: the host reads exactly the file's
size, then one line, and renames only when that line is `commit`, which this process sends
after the caller has accepted the bytes (their sha256). A second ssh for the `mv` cost 0.2 s
a copy, a tenth of a GiB's transfer. A refusal or a kill closes the channel without it: the
partial stays under its temporary name. The shell's noclobber refuses a file that is already
there, and the volume appears to libvirt only when its pool is refreshed. The same host,
user, port, key and host-key rule as the URI's (libvirt's ssh transport runs the same `ssh`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from sigvirt import faults
from sigvirt.errors import CommandFailed, HostError, NoSpace, RegionUnavailable
from sigvirt.hosts import streams
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.runner import FileRange, Result, Runner

CHUNK = 1 << 20
# AES-GCM first, where the CPU has AES instructions: OpenSSH puts chacha20-poly1305 first
# (constant-time without them), but with AES-NI its AES-GCM moves a GiB 1.3-1.6x faster
# (measured here: 1 GiB to a loopback host's /dev/null 1.13-1.20 s against 1.80-1.96 s),
# and ssh's crypto is what bounds a copy between two cores. `^` only reorders OpenSSH's
# default list: a host that disallows AES-GCM still gets chacha20 or whatever both ends
# allow. Only where no ssh_config chose the ciphers (see cipher_options).
PREFER_AES = "Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com"
_orders: dict[tuple[str, ...], list[str]] = {}
SSH_UNREACHABLE = 255  # ssh's own exit status: it could not connect or authenticate
COMMIT = b"commit\n"
# The host side's own exit statuses, each a step that did not happen.
_WRITE_FAILED, _NO_COMMIT, _NOT_RENAMED = 2, 3, 4


def ssh_argv(hv: Hypervisor, runner: Runner) -> list[str]:
    """ssh to the host of `hv`'s qemu+ssh URI, non-interactive, as libvirt's transport goes
    (and with AES-GCM first where that is faster: cipher_options)."""
    target = hv.ssh_target
    if target is None:
        raise HostError(f"{hv.uri} is not a qemu+ssh host")
    user, host, port = target
    argv = ["ssh", "-p", str(port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=20"]
    if hv.uri_keyfile is not None:
        argv += ["-i", str(hv.uri_keyfile), "-o", "IdentitiesOnly=yes"]
    if hv.parsed.param("no_verify") == "1":  # what libvirt's ssh transport does with it
        argv += ["-o", "StrictHostKeyChecking=no"]
    dest = f"{user}@{host}" if user else host
    return [*argv, *cipher_options(runner, [*argv, "--", dest]), "--", dest]


def cipher_options(runner: Runner, argv: list[str]) -> list[str]:
    """`-o PREFER_AES` when this CPU has AES instructions and the ciphers ssh would offer for
    `argv` are OpenSSH's own defaults: a user's or the system's ssh_config that chose
    ciphers (a compliance list, say) is left as it is, since `-o` would override it. Asked
    of `ssh -G` (it prints the settings without connecting) once per destination."""
    if not cpu_has_aes():
        return []
    key = tuple(argv)
    if key not in _orders:
        configured = _ciphers(runner, [argv[0], "-G", *argv[1:]])
        stock = _ciphers(runner, [argv[0], "-F", "/dev/null", "-G", "localhost"])
        _orders[key] = ["-o", PREFER_AES] if configured and configured == stock else []
    return _orders[key]


def _ciphers(runner: Runner, argv: list[str]) -> str | None:
    try:
        ran = runner.run(argv, check=False, timeout=10)
    except CommandFailed:
        return None
    found = [ln for ln in ran.stdout.splitlines() if ln.startswith("ciphers ")]
    return found[0] if ran.ok and found else None


def push_file(
    hv: Hypervisor,
    runner: Runner,
    src: Path,
    pool: str,
    name: str,
    final: str,
    accept: Callable[[streams.CopyResult], object],
    progress: streams.Progress | None = None,
    known: tuple[str, str] | None = None,
) -> streams.CopyResult:
    """Copy the local file `src` as volume `name` of `pool` on `hv`'s host and, once
    `accept` has returned for what was sent (it raises to refuse it), rename it to `final`;
    its sha256 (of the bytes sent), size, and bytes moved. `known`: (sha256, fingerprint) of
    the file as it was verified; while the file keeps that fingerprint its bytes aren't
    hashed again."""
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        size = os.fstat(fd).st_size
        hashing = known is None or _fingerprint(fd) != known[1]
        counted = _Counted(size, progress, hashing)

        def sent_as() -> streams.CopyResult:
            if not hashing and known is not None and _fingerprint(fd) != known[1]:
                raise HostError(f"{src} changed while it was sent; the copy is not trusted")
            return counted.result(src, None if hashing or known is None else known[0])

        # Piece by piece through this process, so progress is reported and a kill can land
        # mid-copy; with nothing to hash the pieces go by sendfile, as ssh reading the file
        # itself would (the read-and-write copy here cost 0.2 s per GiB).
        pieces: Iterator[bytes | FileRange] = (
            iter(lambda: os.read(fd, CHUNK), b"")
            if hashing
            else (FileRange(fd, at, min(CHUNK, size - at)) for at in range(0, size, CHUNK))
        )
        return _send(hv, runner, pool, name, final, size, counted.through(pieces), sent_as, accept)
    finally:
        os.close(fd)


def relay_file(
    src_hv: Hypervisor,
    src: Path,
    size: int,
    hv: Hypervisor,
    runner: Runner,
    pool: str,
    name: str,
    final: str,
    accept: Callable[[streams.CopyResult], object],
    progress: streams.Progress | None = None,
) -> streams.CopyResult:
    """Copy `src_hv`'s file `src` (`size` bytes) to `hv`'s host as push_file does, read over
    a second ssh into `cat` there and relayed through this process, which hashes it: two
    ssh channels and no libvirtd in the way (libvirt's stream relay makes each 256 KiB a
    remote-protocol message through both hosts' libvirtds)."""
    counted = _Counted(size, progress, hashing=True)
    with runner.reading([*ssh_argv(src_hv, runner), f"exec cat -- {shlex.quote(str(src))}"]) as rd:

        def sent_as() -> streams.CopyResult:
            ran = rd.result()
            if ran.returncode != 0:
                _refuse(ran, src_hv, f"reading {src}")
            return counted.result(src, None)

        pieces = counted.through(rd.chunks(CHUNK))
        return _send(hv, runner, pool, name, final, size, pieces, sent_as, accept)


class _Counted:
    """The bytes on their way: counted, hashed (unless known), progress reported, and a
    kill point per piece."""

    def __init__(self, size: int, progress: streams.Progress | None, hashing: bool) -> None:
        self.size, self.progress, self.hashing = size, progress, hashing
        self.sent = 0
        self.h = hashlib.sha256()

    def through(self, pieces: Iterator[bytes | FileRange]) -> Iterator[bytes | FileRange]:
        for chunk in pieces:
            if isinstance(chunk, FileRange):  # not hashed: its bytes are known (push_file)
                self.sent += chunk.count
            else:
                if self.hashing:
                    self.h.update(chunk)
                self.sent += len(chunk)
            if self.progress:
                self.progress(self.sent, self.size)
            faults.point("stream.chunk")
            yield chunk

    def result(self, src: Path, known_sha256: str | None) -> streams.CopyResult:
        if self.sent != self.size:
            raise HostError(
                f"{src} changed size while it was sent ({self.size} → {self.sent} bytes)"
            )
        digest = self.h.hexdigest() if known_sha256 is None else known_sha256
        return streams.CopyResult(digest, self.size, self.sent)


def _send(
    hv: Hypervisor,
    runner: Runner,
    pool: str,
    name: str,
    final: str,
    size: int,
    data: Iterator[bytes | FileRange],
    sent_as: Callable[[], streams.CopyResult],
    accept: Callable[[streams.CopyResult], object],
) -> streams.CopyResult:
    """Feed `data` (`size` bytes) into `pool`/`name` on `hv`'s host; once it is all sent,
    `sent_as()` says what was sent and `accept` takes it (or raises), and only then does the
    commit line go and the host rename the file to `final`."""
    directory = hv.pool_path(pool)
    partial, dst = shlex.quote(str(directory / name)), shlex.quote(str(directory / final))
    # `set -C`: the shell refuses to write over a file that is there (O_EXCL). The writer
    # takes exactly the file's bytes and leaves the verdict line for `read`: GNU dd in 64 KiB
    # blocks (fullblock, count in bytes) where the host's dd has those flags, else `head -c`,
    # which copies through an 8 KiB buffer (measured: 0.61 s of CPU per GiB against dd's
    # 0.28 s, on the host's cores that also run sshd; 1 MiB blocks were slower again). Not
    # `conv=sparse` (its zero-block check made the copy 2x slower than scp): a replica is a
    # compact qcow2, its file is its allocation. `mv -n` and the test after it: a file
    # already under the final name is never replaced.
    dd = "dd bs=64K iflag=fullblock,count_bytes status=none"
    remote = "\n".join((
        f"set -C && umask 022 || exit {_WRITE_FAILED}",
        f"if {dd} count=0 </dev/null 2>/dev/null; then write='{dd} count={size}'",
        f"else write='head -c {size}'; fi",
        f"$write > {partial} || exit {_WRITE_FAILED}",
        f'IFS= read -r verdict && [ "$verdict" = commit ] || exit {_NO_COMMIT}',
        f"mv -T -n -- {partial} {dst} && [ ! -e {partial} ] || exit {_NOT_RENAMED}",
    ))  # fmt: skip
    taken: list[streams.CopyResult] = []

    def stream() -> Iterator[bytes | FileRange]:
        yield from data
        result = sent_as()
        accept(result)  # raises: no commit line goes
        taken.append(result)
        yield COMMIT

    ran = runner.feed([*ssh_argv(hv, runner), remote], stream())
    if ran.returncode != 0:
        if ran.returncode == _NOT_RENAMED:
            raise HostError(f"rename {pool}/{name} → {final} on {hv.uri} did not happen")
        _refuse(ran, hv, f"writing {directory / name}")
    if not taken:  # the host can't have renamed without the commit line
        raise HostError(f"{pool}/{name} on {hv.uri}: the copy ended before it was sent")
    hv.refresh_pool(pool)
    if not hv.volume_exists(pool, final):
        raise HostError(f"{pool}/{final} on {hv.uri} is not there after its copy")
    return taken[0]


def _refuse(ran: Result, hv: Hypervisor, doing: str) -> NoReturn:
    why = ran.stderr.strip().splitlines()[-1:] or [f"exit status {ran.returncode}"]
    if ran.returncode == SSH_UNREACHABLE:
        raise RegionUnavailable(f"ssh to {hv.uri} failed: {why[0]}")
    if "No space left" in ran.stderr:
        raise NoSpace(f"{doing} on {hv.uri}: no space left on device")
    raise CommandFailed(f"{doing} on {hv.uri} failed: {why[0]}")


@functools.cache
def cpu_has_aes(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this machine's CPU has AES instructions (x86 `aes`, arm64 `aes` in Features):
    the other end is a virtualization host of the same era, so its sshd gains alike."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return any(
        "aes" in line.split(":", 1)[1].split()
        for line in text.splitlines()
        if line.startswith(("flags", "Features")) and ":" in line
    )


def _fingerprint(fd: int) -> str:
    """size:mtime_ns:inode, as versions/copies.py records a verified replica's."""
    st = os.fstat(fd)
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
