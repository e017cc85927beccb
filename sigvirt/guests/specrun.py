"""Testinfra specs run against a guest over SSH: the boot-test gate and scale-set health
probes share this one runner.

A spec is a pytest file of testinfra tests (`def test_x(host): assert host.file(...).exists`).
It runs in a child pytest (the paramiko backend, an ssh_config written for the guest) in a
scratch directory of its own, so neither sigvirt's nor the spec's pytest configuration leaks
into the other; the result is read from the JUnit XML the run writes, not from its output.

A spec is code. It runs as `run_as` when one is given (a spec a contributor stored is run as
that contributor, never as root): the caller chooses, and passes a key that user can read.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from sigvirt.errors import CommandFailed, InvalidArgument
from sigvirt.hosts import ssh
from sigvirt.runner import Runner

MAX_SPEC_BYTES = 256 * 1024
MAX_FAILURES = 20  # a spec with hundreds of failing tests is summarized, not dumped
ALIAS = "guest"


@dataclass(frozen=True)
class SpecResult:
    passed: bool
    tests: int  # how many ran
    failures: tuple[str, ...]  # "test_name: first line of its assertion", in file order
    seconds: float = 0.0

    @property
    def summary(self) -> str:
        if self.passed:
            return f"{self.tests} passed"
        return "; ".join(self.failures) or "the spec did not run"


def check_spec(text: bytes, what: str = "--test-spec") -> str:
    """A spec as stored: UTF-8 Python source of bounded size that compiles (not run here)."""
    if len(text) > MAX_SPEC_BYTES:
        raise InvalidArgument(f"{what}: larger than {MAX_SPEC_BYTES // 1024} KiB")
    try:
        source = text.decode("utf-8")
        compile(source, what, "exec", dont_inherit=True)
    except (UnicodeDecodeError, SyntaxError, ValueError) as err:
        raise InvalidArgument(f"{what}: not a Python test file ({err})") from None
    if "def test" not in source:
        raise InvalidArgument(f"{what}: has no test functions (def test_...(host))")
    return source


def ssh_config(endpoint: ssh.Endpoint, key: Path) -> str:
    """An ssh_config naming the guest ALIAS: what testinfra's paramiko backend reads."""
    lines = [
        f"Host {ALIAS}",
        f"  HostName {endpoint.host}",
        f"  Port {endpoint.port}",
        f"  User {endpoint.user}",
        f"  IdentityFile {key}",
        "  StrictHostKeyChecking no",
        "  UserKnownHostsFile /dev/null",
    ]
    if endpoint.jump is not None:
        j = endpoint.jump
        hop = ["ssh", "-o", "BatchMode=yes", "-p", str(j.port)]
        if j.key_path is not None:
            hop += ["-i", str(j.key_path)]
        hop += ["-W", "%h:%p", f"{j.user + '@' if j.user else ''}{j.host}"]
        lines.append(f"  ProxyCommand {' '.join(hop)}")
    return "\n".join(lines) + "\n"


def _reason(bad: ET.Element, tag: str) -> str:
    """The line that says what went wrong: the assertion's message, or for an error (a spec
    that doesn't import) the last `E   ` line pytest printed."""
    message = (bad.get("message") or "").strip()
    errors = [ln[1:].strip() for ln in (bad.text or "").splitlines() if ln.startswith("E ")]
    if errors and (not message or message == "collection failure" or tag == "error"):
        message = errors[-1]
    first = message.splitlines()[0] if message else tag
    return first[:300]


def _failures(junit: Path) -> tuple[int, list[str]]:
    tree = ET.parse(junit)
    tests, failures = 0, []
    for case in tree.iter("testcase"):
        # testinfra parametrizes each test by host: test_x[paramiko://guest] is test_x here
        name = case.get("name", "?").split("[", 1)[0]
        if case.find("skipped") is None:
            tests += 1
        for tag in ("failure", "error"):
            bad = case.find(tag)
            if bad is not None:
                failures.append(f"{name}: {_reason(bad, tag)}")
    return tests, failures


def run_spec(
    runner: Runner,
    spec: str,
    endpoint: ssh.Endpoint,
    *,
    key: Path | None = None,
    run_as: str | None = None,
    timeout: float = 600,
) -> SpecResult:
    """Run the spec's tests against the guest; passed only if at least one test ran and
    none failed. `key` defaults to the endpoint's (it must be readable by `run_as`)."""
    start = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sigvirt-spec-"))
    try:
        (work / "test_spec.py").write_text(spec)
        (work / "pytest.ini").write_text("[pytest]\n")
        (work / "ssh_config").write_text(ssh_config(endpoint, key or endpoint.key_path))
        argv: list[str] = [
            sys.executable, "-m", "pytest", "test_spec.py", "-q", "-p", "no:cacheprovider",
            "-c", "pytest.ini", "--rootdir", ".", f"--hosts=paramiko://{ALIAS}",
            "--ssh-config=ssh_config", "--junitxml=result.xml", "-o", "junit_family=xunit1",
        ]  # fmt: skip
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"}
        if run_as is not None:
            user = pwd.getpwnam(run_as)
            for path in [work, *work.iterdir()]:
                os.chown(path, user.pw_uid, user.pw_gid)
            env["HOME"] = user.pw_dir
            argv = ["runuser", "-u", run_as, "--", *argv]
        else:
            env["HOME"] = os.environ.get("HOME", "/")
        try:
            done = runner.run(argv, check=False, timeout=timeout, env=env, cwd=work)
        except CommandFailed as err:
            return SpecResult(False, 0, (f"the spec did not finish: {err.message}",))
        seconds = time.monotonic() - start
        junit = work / "result.xml"
        if not junit.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return SpecResult(False, 0, (f"the spec did not run: {tail[0][:300]}",), seconds)
        tests, failures = _failures(junit)
        if len(failures) > MAX_FAILURES:
            failures = [*failures[:MAX_FAILURES], f"... and {len(failures) - MAX_FAILURES} more"]
        if tests == 0 and not failures:
            failures = ["the spec ran no tests"]
        return SpecResult(done.ok and not failures, tests, tuple(failures), seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
