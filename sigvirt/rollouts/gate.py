"""The boot-test gate: a version whose definition carries a test spec is not eligible for
`latest` until a linked clone of it boots in its source region and the spec passes against
it over SSH (pytest-testinfra, through guests/specrun.py).

One run, in named steps (kill points `gate.<step>`):

  locked    the version's gate lock (`versions/.V.gate`) is held: one run at a time
  cleaned   a test VM a killed run left (its name is a function of the version) is gone
  running   the record says `running`, naming the VM and this process
  booted    the test VM (`gate-<sha8>`, a throwaway SSH key) answers SSH
  tested    the spec ran
  deleted   the test VM is gone (also when booting or the spec failed)
  recorded  the record says `passed` or `failed`, with the failing assertions

A run killed anywhere leaves `running` with a dead runner, which counts as `pending`: the
next run (`image-version test`, or `replicate`) removes the VM it left and starts again. A
clone that does not boot fails the test; a host that can't make one (no room, no region)
leaves the version `pending` and the error is the command's.

A spec is code: when root runs the gate, the spec runs as the user who stored it (with a
copy of the throwaway key that user can read), never as root unless root stored it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sigvirt import faults
from sigvirt.catalog import specs
from sigvirt.catalog.fileio import file_lock
from sigvirt.catalog.latest import boot_test_now
from sigvirt.catalog.liveness import pid_alive
from sigvirt.catalog.names import ImageRef
from sigvirt.catalog.records import BootTest, BootTestState, ImageVersion, now
from sigvirt.context import Context
from sigvirt.errors import Conflict, GuestFailed, NotFound, Unsupported
from sigvirt.guests import guest, inventory, lifecycle, seed, specrun, sshkeys, vms
from sigvirt.guests.specrun import SpecResult

ADMIN_USER = "azureuser"  # the test VM's admin user, whom the spec logs in as
BOOT_TIMEOUT = 300.0  # seconds for the clone to answer SSH
SPEC_TIMEOUT = 600.0  # seconds for the spec's run
HANDOVER_TIMEOUT = 30.0  # seconds `--no-wait` waits for its background run to begin
WORK_PREFIX = "sigvirt-gate-"  # + pid: the scratch directory of a run (its throwaway key)


def vm_name(ctx: Context, rec: ImageVersion) -> str:
    """The test VM's name: a function of the installation and the version, so a rerun finds
    what a killed run left."""
    mine = inventory.installation(ctx)
    return "gate-" + hashlib.sha256(f"{mine}:{rec.ref}".encode()).hexdigest()[:8]


def lock_path(ctx: Context, rec: ImageVersion) -> Path:
    return ctx.store.versions_dir(rec.gallery, rec.definition) / f".{rec.name}.gate"


def due(ctx: Context, rec: ImageVersion) -> bool:
    """Whether the gate should run for this version now: it is published and waiting, or
    `running` with nobody running it (its runner is gone, or its pid was reused by another
    process: the gate lock, which a run holds throughout, is free)."""
    if not rec.published_ok:
        return False
    state = boot_test_now(rec.boot_test).state
    if state == BootTestState.RUNNING:
        try:
            with file_lock(lock_path(ctx, rec), blocking=False):
                return True
        except Conflict:
            return False
    return state == BootTestState.PENDING


def settle(ctx: Context, rec: ImageVersion) -> ImageVersion:
    """After a version's replicas are done (create, replicate): run its boot test if it is
    waiting for one; the record as it is afterwards."""
    if not due(ctx, rec):
        return rec
    return run(ctx, ImageRef(rec.gallery, rec.definition, rec.name))


def start(ctx: Context, ref: ImageRef) -> ImageVersion:
    """`image-version test --no-wait`: the same checks as run(), then the run itself in a
    detached process (`image-version show` follows it); the record once that process has
    marked it `running` (or has ended, or HANDOVER_TIMEOUT passed)."""
    rec, _spec = _prepare(ctx, ref)
    pid = _start_background(ctx, rec)
    end = time.monotonic() + HANDOVER_TIMEOUT
    while time.monotonic() < end:
        rec = ctx.store.get_version(rec.gallery, rec.definition, rec.name)
        test = rec.boot_test
        if test.state == BootTestState.RUNNING and test.runner.endswith(f":{pid}"):
            break
        if _ended(pid):
            return ctx.store.get_version(rec.gallery, rec.definition, rec.name)
        time.sleep(0.1)
    return rec


def _ended(pid: int) -> bool:
    """Whether our child `pid` has exited (it is reaped here)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return True


def _start_background(ctx: Context, rec: ImageVersion) -> int:
    argv = [
        sys.executable, "-m", "sigvirt", "sig", "image-version", "test",
        "--gallery-name", rec.gallery, "--gallery-image-definition", rec.definition,
        "--gallery-image-version", rec.name, "-o", "none",
    ]  # fmt: skip
    log = ctx.store.versions_dir(rec.gallery, rec.definition) / f".{rec.name}.test.log"
    return ctx.runner.spawn_detached(argv, log)


def run(ctx: Context, ref: ImageRef) -> ImageVersion:
    """Boot a linked clone of the version in its source region, run its definition's spec
    against it, delete the clone, record passed or failed. Conflict while another run holds
    the version; NotFound when the definition has no spec; SpecMismatch (exit 17) when the
    stored spec is not the one its record names."""
    rec, spec = _prepare(ctx, ref)
    name = vm_name(ctx, rec)
    with _locked(ctx, rec):
        faults.point("gate.locked")
        _remove_vm(ctx, rec, name)
        faults.point("gate.cleaned")
        before = boot_test_now(rec.boot_test)
        rec = _update(ctx, rec, BootTestState.RUNNING, spec_sha256=spec.sha256, failures=(),
                      tests=0, started=now(), finished="", seconds=0.0, vm=name,
                      runner=guest.creator_id())  # fmt: skip
        faults.point("gate.running")
        start = time.monotonic()
        try:
            result = _boot_and_test(ctx, rec, spec, name)
        except BaseException:
            # The gate could not judge (no room, region down, interrupted): the result it
            # had stands, or it is still waiting for one.
            with contextlib.suppress(Exception):
                _restore(ctx, rec, before)
            raise
        state = BootTestState.PASSED if result.passed else BootTestState.FAILED
        rec = _update(ctx, rec, state, failures=result.failures, tests=result.tests,
                      seconds=round(time.monotonic() - start, 1), finished=now(), vm="",
                      runner="")  # fmt: skip
        faults.point("gate.recorded")
    return rec


def _prepare(ctx: Context, ref: ImageRef) -> tuple[ImageVersion, specs.SpecFile]:
    """What a run needs, checked before anything happens: the version, published, with a
    completed replica in its source region, and its definition's spec as stored."""
    assert ref.version is not None
    store = ctx.store
    rec = store.get_version(ref.gallery, ref.definition, ref.version)
    store.require(rec.gallery, "contributor", f"{rec.definition}/{rec.name}", "test")
    if not rec.published_ok:
        raise Conflict(f"image version {rec.ref} is {rec.state}: only published versions boot")
    spec = specs.read(store, store.get_definition(rec.gallery, rec.definition))
    if not rec.completed_replicas(rec.source_region):
        raise NotFound(
            f"image version {rec.ref} has no completed replica in its source region "
            f"{rec.source_region} to boot"
        )
    return rec, spec


@contextlib.contextmanager
def _locked(ctx: Context, rec: ImageVersion) -> Iterator[None]:
    try:
        with file_lock(lock_path(ctx, rec), blocking=False):
            yield
    except Conflict:
        raise Conflict(
            f"image version {rec.ref}: its boot test is running in another process"
        ) from None


def _update(
    ctx: Context, rec: ImageVersion, state: BootTestState, **fields: object
) -> ImageVersion:
    def change(cur: ImageVersion) -> ImageVersion:
        return dataclasses.replace(cur, boot_test=cur.boot_test.moved(state, **fields))

    return ctx.store.update_version(rec.gallery, rec.definition, rec.name, change)


def _restore(ctx: Context, rec: ImageVersion, before: BootTest) -> None:
    def change(cur: ImageVersion) -> ImageVersion:
        fields = {f.name: getattr(before, f.name) for f in dataclasses.fields(before)}
        del fields["state"]
        return dataclasses.replace(cur, boot_test=cur.boot_test.moved(before.state, **fields))

    ctx.store.update_version(rec.gallery, rec.definition, rec.name, change)


def _remove_vm(ctx: Context, rec: ImageVersion, name: str) -> None:
    """The test VM of this version, with its volumes, whatever state a killed run left it
    in; a VM of that name made from anything else is not touched (Conflict)."""
    region = rec.source_region
    with contextlib.suppress(NotFound):
        _hv, _region, dom = inventory.find(ctx, name, region)
        prov = guest.provenance_of(dom)
        if prov is None or prov.image != rec.ref:
            raise Conflict(
                f"a VM named {name} exists in region {region} and is not the boot-test VM of "
                f"{rec.ref}: remove or rename it"
            )
    with contextlib.suppress(NotFound):
        lifecycle.delete(ctx, name, region)


def _boot_and_test(ctx: Context, rec: ImageVersion, spec: specs.SpecFile, name: str) -> SpecResult:
    try:  # a specialized or Windows image gets no key of ours: the spec could never log in
        seed.require_seed(ctx.store.get_definition(rec.gallery, rec.definition), "boot test")
    except Unsupported as err:
        return SpecResult(False, 0, (err.message,))
    _sweep_work(ctx.tmpdir)
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=ctx.tmpdir))
    try:
        key = sshkeys.generate(work / "key" / "id_ed25519", comment=f"sigvirt-gate-{name}")
        run_as = spec.owner if os.geteuid() == 0 and spec.uid != 0 else None
        if run_as is not None:  # the spec's owner reads this copy of the key, nothing else
            for path in (work, key.parent, key, key.with_suffix(".pub")):
                os.chown(path, spec.uid, -1)
        req = vms.VmRequest(
            name=name, image=rec.ref, region=rec.source_region, admin_user=ADMIN_USER,
            ssh_key_value=str(key.with_suffix(".pub")), timeout=BOOT_TIMEOUT,
        )  # fmt: skip
        try:
            try:
                vm = vms.create(ctx, req)
            except GuestFailed as err:  # the image does not boot: that is its test's result
                return SpecResult(False, 0, (f"boot: {err.message}",))
            faults.point("gate.booted")
            hv, _region, dom = inventory.find(ctx, vm.name, rec.source_region)
            prov = guest.provenance_of(dom)
            endpoint = inventory.endpoint_of(hv, prov) if prov is not None else None
            if endpoint is None:
                return SpecResult(False, 0, (f"boot: VM {name} has no SSH endpoint",))
            result = specrun.run_spec(
                ctx.runner, spec.source, endpoint, key=key, run_as=run_as, timeout=SPEC_TIMEOUT
            )
            faults.point("gate.tested")
            return result
        finally:
            _remove_vm(ctx, rec, name)
            faults.point("gate.deleted")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sweep_work(tmpdir: Path) -> None:
    """Scratch directories (throwaway keys) of runs that were killed."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(tmpdir):
            pid = entry.name.removeprefix(WORK_PREFIX).partition("-")[0]
            if entry.name.startswith(WORK_PREFIX) and pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)
