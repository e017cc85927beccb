"""qemu-img behind one handle: every call names its formats (-f, -F, -O); never probing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sigvirt.runner import Limits, Result, Runner

# qemu-img parsing a hostile header must not take the host down with it.
HOSTILE_LIMITS = Limits(cpu_seconds=30, address_space_bytes=1 << 30)
# What qemu-img writes stays private (0600) until sigvirt sets the replica's permissions.
PRIVATE = Limits(umask=0o077)


class QemuImg:
    def __init__(self, runner: Runner, binary: str = "qemu-img") -> None:
        self.runner = runner
        self.binary = binary

    def _run(self, *args: str | os.PathLike[str], **kw: Any) -> Result:
        return self.runner.run([self.binary, *args], **kw)

    def info(
        self, path: Path, fmt: str, *, limits: Limits | None = HOSTILE_LIMITS
    ) -> dict[str, Any]:
        """`qemu-img info` of one image (no backing chain walk), as parsed JSON."""
        res = self._run("info", "-f", fmt, "--output=json", "-U", path, limits=limits, timeout=60)
        data: dict[str, Any] = json.loads(res.stdout)
        return data

    def check(self, path: Path, fmt: str, *, limits: Limits | None = HOSTILE_LIMITS) -> Result:
        """`qemu-img check`: exit 0 clean, 2 corruptions, 3 leaks only (the caller decides)."""
        return self._run(
            "check", "-f", fmt, "--output=json", path, limits=limits, check=False, timeout=600
        )

    def convert(
        self,
        src: Path,
        src_fmt: str,
        dst: Path,
        dst_fmt: str = "qcow2",
        *,
        options: str = "compat=1.1",
        limits: Limits | None = PRIVATE,
        compress: bool = False,
    ) -> None:
        """Write a standalone copy (no backing file) of src into dst; compress: zlib clusters
        (qcow2 only; QEMU reads them transparently, writes land uncompressed)."""
        args: list[str | os.PathLike[str]] = ["convert", "-f", src_fmt, "-O", dst_fmt]
        if compress:
            args.append("-c")
        if options and dst_fmt == "qcow2":
            args += ["-o", options]
        self._run(*args, src, dst, limits=limits)

    def rebase_flatten(self, path: Path) -> None:
        """Pull every backing cluster into path and drop the backing file (offline flatten)."""
        self._run("rebase", "-f", "qcow2", "-b", "", path, timeout=None)
