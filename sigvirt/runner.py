"""The one place subprocesses run: argv lists only, typed results, optional resource limits."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import resource
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sigvirt.errors import CommandFailed, NoSpace


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """A killed sigvirt must not leave a qemu-img converting behind it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class Limits:
    """rlimits applied in the child before exec (hostile input must not eat the host)."""

    cpu_seconds: int | None = None
    address_space_bytes: int | None = None
    umask: int | None = None  # files the child creates (e.g. a .partial image) start private

    def preexec(self) -> Callable[[], None]:
        def apply() -> None:
            _die_with_parent()
            if self.umask is not None:
                os.umask(self.umask)
            if self.cpu_seconds is not None:
                resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds))
            if self.address_space_bytes is not None:
                lim = self.address_space_bytes
                resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

        return apply


@dataclass(frozen=True)
class FileRange:
    """`count` bytes of the open file `fd` from `offset`, for `Runner.feed` to hand to the
    kernel (sendfile into the pipe) rather than read into this process and write out again."""

    fd: int
    offset: int
    count: int


@dataclass(frozen=True)
class Reading:
    """A running process whose stdout is read in pieces (`Runner.reading`)."""

    argv: tuple[str, ...]
    proc: subprocess.Popen[bytes]
    err: IO[bytes]

    def chunks(self, size: int) -> Iterator[bytes]:
        """Its stdout, at most `size` bytes at a time, until it closes."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, size):
            yield chunk

    def result(self, timeout: float | None = None) -> Result:
        """Its exit status and stderr, once it has exited (stdout was read by `chunks`)."""
        rc = self.proc.wait(timeout=timeout)
        self.err.seek(0)
        return Result(self.argv, rc, "", self.err.read().decode(errors="replace"))


class Runner:
    """Runs argv lists. Tests pass the same class; nothing here is mocked."""

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float | None = None,
        limits: Limits | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Result:
        args = tuple(os.fspath(a) for a in argv)
        try:
            proc = subprocess.run(
                args,
                cwd=cwd,
                input=input,
                capture_output=True,
                text=True,
                timeout=timeout,
                preexec_fn=(limits or Limits()).preexec(),
                env=env,
                check=False,
            )
        except FileNotFoundError:
            raise CommandFailed(f"{args[0]}: command not found") from None
        except subprocess.TimeoutExpired:
            raise CommandFailed(f"{Path(args[0]).name} timed out after {timeout:.0f}s") from None
        result = Result(args, proc.returncode, proc.stdout, proc.stderr)
        if check and not result.ok:
            raise command_error(result)
        return result

    def feed(
        self,
        argv: Sequence[str | os.PathLike[str]],
        chunks: Iterable[bytes | FileRange],
        *,
        timeout: float | None = None,
    ) -> Result:
        """Run argv with `chunks` written to its stdin in order (more bytes than `input`
        should hold: a replica pushed over ssh); its result once it exits. Its stderr goes to
        a file, so a chatty program can't block on a full pipe while we write. A FileRange
        goes by sendfile: the bytes pass from the page cache to the pipe without a copy here
        (CommandFailed if the file ends before it)."""
        args = tuple(os.fspath(a) for a in argv)
        with tempfile.TemporaryFile() as err:
            proc = _start(args, err, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
            try:
                try:
                    for chunk in chunks:
                        assert proc.stdin is not None
                        if isinstance(chunk, FileRange):
                            proc.stdin.flush()
                            _sendfile(proc.stdin.fileno(), chunk)
                        else:
                            proc.stdin.write(chunk)
                except BrokenPipeError:
                    pass  # it exited early: its status and stderr say why
                finally:
                    if proc.stdin is not None:
                        with contextlib.suppress(BrokenPipeError):
                            proc.stdin.close()
                rc = proc.wait(timeout=timeout)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            err.seek(0)
            text = err.read().decode(errors="replace")
        return Result(args, rc, "", text)

    @contextlib.contextmanager
    def reading(self, argv: Sequence[str | os.PathLike[str]]) -> Iterator[Reading]:
        """Run argv and read its stdout as it comes, in pieces (a replica read over ssh, to be
        fed to another process); the process is killed if the block ends before it exits."""
        args = tuple(os.fspath(a) for a in argv)
        with tempfile.TemporaryFile() as err:
            proc = _start(args, err, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            try:
                yield Reading(args, proc, err)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()

    def spawn_detached(self, argv: Sequence[str | os.PathLike[str]], log: Path) -> int:
        """Start a process that outlives this one (its own session, output appended to
        `log`); its pid. For work a command hands to the background (--no-wait)."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [os.fspath(a) for a in argv],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return proc.pid


def _start(
    args: tuple[str, ...], err: IO[bytes], *, stdin: int, stdout: int
) -> subprocess.Popen[bytes]:
    """A streaming child (feed, reading): its stderr into the file `err`, so a chatty
    program can't block on a full pipe while the other end is busy."""
    try:
        return subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=err)
    except FileNotFoundError:
        raise CommandFailed(f"{args[0]}: command not found") from None


def _sendfile(out: int, piece: FileRange) -> None:
    offset, left = piece.offset, piece.count
    while left:
        sent = os.sendfile(out, piece.fd, offset, left)
        if sent == 0:
            raise CommandFailed(f"the file ended {left} bytes before the range given to send")
        offset, left = offset + sent, left - sent


def command_error(result: Result) -> CommandFailed | NoSpace:
    """One line naming the program, its exit status and the last line it wrote."""
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else f"exit status {result.returncode}"
    prog = Path(result.argv[0]).name
    if "No space left on device" in result.stderr or f"errno {errno.ENOSPC}" in result.stderr:
        return NoSpace(f"{prog}: no space left on device")
    if result.returncode < 0:
        last = f"killed by signal {-result.returncode} ({last})"
    return CommandFailed(f"{prog} failed: {last}")
