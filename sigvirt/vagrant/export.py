"""`image-version export-box`: a gallery version as a vagrant-libvirt box.

No loop mounts: the box is made by booting the version. Plan (read-only checks), then the
steps, each a fault point:

  box.booted       a linked clone of a completed replica boots with a NoCloud seed that
                   creates user `vagrant` (Vagrant's insecure key + this export's own key,
                   passwordless sudo) and runs guestprep's preparation once
  box.prepared     the preparation's marker is there (cloud-init's runcmd comes after SSH)
  box.generalized  cloud-init clean, empty machine-id, no SSH host keys, no export key
  box.stopped      powered off through ACPI (the guest flushes and unmounts itself)
  box.converted    the clone flattened and compressed: `qemu-img convert -c` into a
                   standalone qcow2 (no backing file), gated like an import
  box.written      metadata.json + Vagrantfile + info.json + box.img in a tar under a
                   `.partial` name, hashed as written, then linked to its name (never
                   replacing a file)
  box.recorded     the version's exported-boxes index (ROOT/.boxes) names it

The clone, its seed and console, the work directory and the partial go in every case. A
killed export leaves a domain whose tags name its process: the next export of that version
removes it (and the partials and work directories of dead processes beside the box).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sigvirt import faults
from sigvirt.catalog import latest, names
from sigvirt.catalog.liveness import pid_alive
from sigvirt.catalog.records import Definition, ImageVersion, Replica
from sigvirt.context import Context
from sigvirt.errors import Conflict, GuestFailed, InvalidArgument, NotFound, Unsupported
from sigvirt.guests import domxml, guest, inventory, seed, sshkeys, vms
from sigvirt.guests.domxml import Provenance
from sigvirt.hosts import ssh
from sigvirt.hosts.regions import Accel, Network
from sigvirt.vagrant import box, guestprep, index
from sigvirt.versions import imagecheck

EXPORT_TAG = "sigvirt-box-export"  # the domain's tag naming the exporting process
DEFAULT_MEMORY_MIB = 512
Step = Callable[[str], None]


@dataclass(frozen=True)
class ExportPlan:
    version: ImageVersion
    definition: Definition
    region: str
    replica: Replica
    dest: Path
    domain: str
    memory_mib: int
    vcpus: int
    network: Network
    accel: Accel | None  # None: what the host offers
    box_name: str = ""  # the name a catalog gives the box (export-boxes)


@dataclass(frozen=True)
class Exported:
    file: Path
    sha256: str
    size: int
    version: str  # G/D/V
    region: str
    seconds: dict[str, float] = field(default_factory=dict)  # per step, and "total"
    warnings: tuple[str, ...] = ()


def domain_name(installation: str, ref: str) -> str:
    """One export of a version at a time: the clone's name comes from the version (and the
    gallery root's id: two installations on one host may have a G/D/V each)."""
    return "svbox-" + hashlib.sha256(f"{installation}:{ref}".encode()).hexdigest()[:12]


def _size(d: Definition) -> tuple[int, int]:
    memory = max(DEFAULT_MEMORY_MIB, d.min_memory_mib or 0)
    if d.max_memory_mib:
        memory = min(memory, d.max_memory_mib)
    return memory, max(1, d.min_vcpus or 1)


def plan_export(
    ctx: Context,
    gallery: str,
    definition: str,
    version: str,
    dest: Path,
    region: str | None = None,
    *,
    box_name: str = "",
) -> ExportPlan:
    """Check everything read-only: the version (published, Linux x64 generalized), a
    completed replica in a local region with loopback networking, the box file's place."""
    ref = names.parse_image_ref(f"{gallery}/{definition}/{version}")
    rec = latest.resolve(ctx.store, ref)
    if not rec.published_ok:
        raise Conflict(f"image version {rec.ref} is {rec.state}, not published")
    d = ctx.store.get_definition(rec.gallery, rec.definition)
    vms.check_definition(d)
    seed.require_seed(d, "export-box")  # it logs in as vagrant, with the key it seeds
    if d.architecture != "x64":  # the clone would boot as x86_64 and the box claim nothing else
        raise Unsupported(
            f"export-box: image definition {d.gallery}/{d.name} is --architecture "
            f"{d.architecture}: sigvirt exports x64 images as boxes only"
        )
    where = vms.pick_region(ctx, rec, region)
    cfg = ctx.regions.region(where)
    if not cfg.is_local:
        raise Unsupported(
            f"region {where} is on another host: export-box flattens the clone with qemu-img "
            "here, so it needs a region on this machine (-l)"
        )
    if cfg.network.kind != "user-forward":
        raise Unsupported(
            f"region {where} gives guests a {cfg.network.kind} network: export-box reaches the "
            "guest through a loopback port forward (network type user-forward)"
        )
    replica = rec.completed_replicas(where)[0]
    memory, vcpus = _size(d)
    accel = None if cfg.accel == "auto" else cfg.accel
    return ExportPlan(
        rec, d, where, replica, box.destination(dest),
        domain_name(inventory.installation(ctx), rec.ref), memory, vcpus, cfg.network,
        accel, box_name,
    )  # fmt: skip


# -- leftovers of killed exports ----------------------------------------------------------------
def _reap(ctx: Context, plan: ExportPlan) -> None:
    if not reap(ctx, plan.version.ref, plan.region):
        raise Conflict(f"image version {plan.version.ref} is being exported already")


def reap(ctx: Context, ref: str, region: str) -> bool:
    """Remove the clone a killed export of `ref` left in `region`; False when an export of
    it is running. A domain of that name that is not an export is a Conflict."""
    hv = ctx.hv(region)
    name = domain_name(inventory.installation(ctx), ref)
    try:
        dom = hv.domain(name)
    except NotFound:
        return True
    prov = guest.provenance_of(dom)
    exporter = prov.tag_map.get(EXPORT_TAG, "") if prov else ""
    if prov is None or prov.kind != "box-export" or not exporter:
        raise Conflict(f"a domain named {name} exists on {hv.uri} and is not an export")
    if guest.creator_alive(exporter):
        return False
    guest.delete(hv, name)
    return True


def _sweep_stale(dest: Path) -> None:
    """The work directory and partial box of an export of `dest` whose process is gone."""
    pattern = re.compile(re.escape(f".{dest.name}.") + r"(?:work|partial)-(\d+)")
    for entry in os.scandir(dest.parent):
        found = pattern.fullmatch(entry.name)
        if found and not pid_alive(int(found[1])):
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


# -- the steps ----------------------------------------------------------------------------------
def _wait_prepared(ep: ssh.Endpoint, deadline: float) -> None:
    last = f"{guestprep.MARKER} missing"
    while time.monotonic() < deadline:
        try:
            res = ssh.run(ep, f"test -f {guestprep.MARKER}", timeout=30)
            if res.returncode == 0:
                return
        except Exception as err:
            last = f"{type(err).__name__}: {err}"
        time.sleep(1.0)
    raise GuestFailed(
        f"the guest did not finish preparing for Vagrant ({names.shorten(last, 200)})"
    )


def _as_root(ep: ssh.Endpoint, script: str, what: str) -> str:
    res = ssh.run(ep, "sudo -n sh -c " + shlex.quote(script), timeout=300)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[-1]
        raise GuestFailed(f"{what} failed in the guest: {names.shorten(last, 200)}")
    return res.stdout


def _power_off(ctx: Context, plan: ExportPlan, timeout: float) -> None:
    hv = ctx.hv(plan.region)
    hv.domain(plan.domain).shutdown()
    if not guest.wait_until_stopped(hv, plan.domain, timeout):
        raise GuestFailed(f"{plan.domain} did not power off within {timeout:.0f}s (ACPI)")


def _guest_spec(ctx: Context, plan: ExportPlan, public_key: str) -> guest.GuestSpec:
    rec = plan.version
    prov = Provenance(
        kind="box-export",
        region=plan.region,
        image=rec.ref,
        replica_pool=plan.replica.pool,
        replica_path=plan.replica.path,
        installation=inventory.installation(ctx),
        tags=domxml.encode_tags({EXPORT_TAG: guest.creator_id()}),
    )
    return guest.GuestSpec(
        name=plan.domain,
        pool=plan.replica.pool,
        base=Path(plan.replica.path),
        admin_user=guestprep.USER,
        ssh_public_keys=(guestprep.INSECURE_PUBLIC_KEY, public_key),
        memory_mib=plan.memory_mib,
        vcpus=plan.vcpus,
        firmware=plan.definition.firmware,
        network=plan.network,
        hostname=guestprep.USER,
        custom_data=guestprep.seed_user_data(),
        provenance=prov,
    )


def _box_spec(plan: ExportPlan, virtual_size: int, facts: str) -> box.BoxSpec:
    found = guestprep.parse_facts(facts)
    rec, d = plan.version, plan.definition
    info = {
        "Author": "sigvirt export-box",
        "Image version": rec.ref,
        "Image sha256": rec.sha256,
        "Publisher/offer/sku": f"{d.publisher}/{d.offer}/{d.sku}",
        "Guest OS": found.os_name,
    }
    return box.BoxSpec(
        name=rec.ref,
        virtual_size=virtual_size,
        memory_mib=plan.memory_mib,
        vcpus=plan.vcpus,
        firmware=d.firmware,
        shell="" if "bash" in found.have else "sh",
        guest="" if found.vagrant_knows else "linux",
        info=info,
    )


def export_box(
    ctx: Context, plan: ExportPlan, *, timeout: float = 900.0, on_step: Step | None = None
) -> Exported:
    """Make the box the plan describes (see the module's docstring for the steps)."""
    step = on_step or (lambda _s: None)
    start = time.monotonic()
    deadline = start + timeout
    times: dict[str, float] = {}
    last = start

    def done(name: str) -> None:
        nonlocal last
        faults.point(name)
        now = time.monotonic()
        times[name.removeprefix("box.")] = round(now - last, 2)
        last = now

    hv = ctx.hv(plan.region)
    _reap(ctx, plan)
    directory = plan.dest.parent
    _sweep_stale(plan.dest)
    pid = os.getpid()
    workdir = directory / f".{plan.dest.name}.work-{pid}"
    partial = directory / f".{plan.dest.name}.partial-{pid}"
    workdir.mkdir(mode=0o700)
    try:
        tag = f"{guestprep.KEY_TAG}-{secrets.token_hex(4)}"
        key = sshkeys.generate(workdir / "id_ed25519", comment=tag)
        public = key.with_suffix(".pub").read_text().strip()
        step(f"booting a clone of {plan.version.ref} in region {plan.region}")
        g = guest.create(
            hv, _guest_spec(ctx, plan, public), key, ports=ctx.conns.ports(plan.region),  # type: ignore[union-attr]
            accel=plan.accel, wait=True, timeout=max(60.0, deadline - time.monotonic()),
        )  # fmt: skip
        assert g.endpoint is not None
        done("box.booted")
        _wait_prepared(g.endpoint, deadline)
        facts = ssh.run(g.endpoint, guestprep.FACTS, timeout=60).stdout
        done("box.prepared")
        step("generalizing (cloud-init clean, machine-id, host keys, export key)")
        _as_root(g.endpoint, guestprep.generalize_script(), "generalizing")
        done("box.generalized")
        _power_off(ctx, plan, min(300.0, max(60.0, deadline - time.monotonic())))
        done("box.stopped")
        step("flattening and compressing the disk (qemu-img convert -c)")
        image = workdir / "box.img"
        ctx.qemu_img.convert(g.overlay, "qcow2", image, "qcow2", compress=True)
        verified = imagecheck.inspect(image, "qcow2", ctx.qemu_img)
        done("box.converted")
        step(f"writing {plan.dest}")
        sha = box.write_box(partial, image, _box_spec(plan, verified.virtual_size, facts))
        try:
            os.link(partial, plan.dest)  # never replaces a file that appeared meanwhile
        except FileExistsError:
            raise Conflict(f"{plan.dest} appeared while the box was being made") from None
        partial.unlink()
        done("box.written")
        warnings = _record(ctx, plan, sha)
        done("box.recorded")
    finally:
        with contextlib.suppress(Exception):
            guest.delete(hv, plan.domain)
        shutil.rmtree(workdir, ignore_errors=True)
        partial.unlink(missing_ok=True)
    times["total"] = round(time.monotonic() - start, 2)
    size = plan.dest.stat().st_size
    return Exported(plan.dest, sha, size, plan.version.ref, plan.region, times, warnings)


def _record(ctx: Context, plan: ExportPlan, sha: str) -> tuple[str, ...]:
    rec = plan.version
    entry = index.new_entry(plan.dest, sha, rec.sha256, plan.region, plan.box_name)
    try:
        index.record(ctx.store.root, rec.gallery, rec.definition, rec.name, entry)
    except (OSError, InvalidArgument) as err:
        return (f"the box is made, but {ctx.store.root}/{index.DIR} could not list it: {err}",)
    return ()
