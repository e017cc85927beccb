"""NoCloud seeds: meta-data and user-data as real cloud-init reads them, packed as an ISO9660
volume labelled `cidata` (pycdlib, no external tools)."""

from __future__ import annotations

import email.mime.multipart
import email.mime.text
import io
from dataclasses import dataclass
from pathlib import Path

import pycdlib
import yaml

from sigvirt.catalog.records import Definition
from sigvirt.errors import HostAccessDenied, InvalidArgument, NotFound, Unsupported

# Azure refuses custom data over 64 KB (before base64); so does sigvirt, before reading more.
MAX_CUSTOM_DATA = 64 * 1024


class BadCustomData(InvalidArgument):
    template = "custom data: {detail}"


def load_custom_data(path: Path) -> bytes:
    """`--custom-data FILE`: at most 64 KB, and no more than that is read (a device such as
    /dev/zero would never end)."""
    shown = str(path) if len(str(path)) <= 100 else str(path)[:97] + "..."
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CUSTOM_DATA + 1)
    except FileNotFoundError:
        raise NotFound(f"--custom-data {shown}: no such file") from None
    except IsADirectoryError:
        raise InvalidArgument(f"--custom-data {shown}: is a directory") from None
    except PermissionError:
        raise HostAccessDenied(f"--custom-data {shown}: permission denied") from None
    except OSError as err:
        raise InvalidArgument(f"--custom-data {shown}: {err.strerror or err}") from None
    if len(data) > MAX_CUSTOM_DATA:
        raise BadCustomData(f"{shown} is larger than 64 KB (Azure's limit too)")
    return data


@dataclass(frozen=True)
class SeedSpec:
    instance_id: str
    hostname: str
    admin_user: str
    ssh_public_keys: tuple[str, ...]
    custom_data: bytes | None = None  # user's own user-data (`--custom-data FILE`)


def meta_data(spec: SeedSpec) -> str:
    return yaml.safe_dump(
        {"instance-id": spec.instance_id, "local-hostname": spec.hostname}, sort_keys=False
    )


def _base_config(spec: SeedSpec) -> dict[str, object]:
    # The same shape as the users module documents, so stock cloud images accept it.
    return {
        "hostname": spec.hostname,
        "users": [
            {
                "name": spec.admin_user,
                "ssh_authorized_keys": list(spec.ssh_public_keys),
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": True,
            }
        ],
        "ssh_pwauth": False,
    }


# First-boot work a stock cloud image would otherwise do, spared by the seed; the user's own
# #cloud-config overrides each of these (unlike the admin user and ssh_pwauth). cloud-init's
# default host keys are rsa, ecdsa and ed25519: RSA-3072 generation costs seconds under TCG, and
# every client since OpenSSH 6.5, paramiko and PuTTY 0.68 takes an ed25519 host key.
BOOT_DEFAULTS: dict[str, object] = {"ssh_genkeytypes": ["ed25519"]}


def _with_defaults(doc: dict[str, object]) -> dict[str, object]:
    return {**doc, **{k: v for k, v in BOOT_DEFAULTS.items() if k not in doc}}


def _cloud_config(doc: dict[str, object]) -> str:
    # No folding (PyYAML breaks a plain scalar at the first space past column 80): the tiny
    # image's reader takes no multi-line scalars and lost what followed, e.g. an SSH key's comment.
    return "#cloud-config\n" + yaml.safe_dump(
        doc, sort_keys=False, default_flow_style=False, width=1 << 20
    )


def user_data(spec: SeedSpec) -> str:
    """The admin user and key, merged with the user's custom data the way Azure does it:
    a #cloud-config is merged (our user first), anything else travels as a MIME part."""
    base = _base_config(spec)
    if spec.custom_data is None:
        return _cloud_config(_with_defaults(base))
    try:
        text = spec.custom_data.decode()
    except UnicodeDecodeError:
        raise BadCustomData("not UTF-8 text") from None
    if text.startswith("#cloud-config"):
        try:
            theirs = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise BadCustomData(f"not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(theirs, dict):
            raise BadCustomData("#cloud-config must be a mapping")
        merged = {**theirs, **{k: v for k, v in base.items() if k != "users"}}
        merged["hostname"] = theirs.get("hostname", spec.hostname)
        merged["users"] = base["users"] + list(theirs.get("users") or [])  # type: ignore[operator]
        return _cloud_config(_with_defaults(merged))
    msg = email.mime.multipart.MIMEMultipart()
    msg.attach(email.mime.text.MIMEText(_cloud_config(_with_defaults(base)), "cloud-config"))
    subtype = "x-shellscript" if text.startswith("#!") else "x-include-url"
    if not text.startswith(("#!", "#include")):
        raise BadCustomData("must start with #cloud-config, #! or #include")
    msg.attach(email.mime.text.MIMEText(text, subtype))
    return msg.as_string()


def seed_iso(spec: SeedSpec) -> bytes:
    """ISO9660 with Rock Ridge and Joliet, volume id `cidata`, as cloud-init's NoCloud expects.

    No network-config: without one, NoCloud renders its fallback (DHCP on the first NIC) from
    sysfs with no probing (ephemeral DHCP is for metadata-service datasources), and in the
    Debian recipe networkd's DHCP on slirp took 0.2 s of the path to SSH (issue 18); a
    config of ours would have to name the NIC in every renderer's terms (ifupdown takes no
    name patterns) for no time saved."""
    files = {"meta-data": meta_data(spec).encode(), "user-data": user_data(spec).encode()}
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name, data in files.items():
        iso_name = "/" + name.upper().replace("-", "_") + ".;1"
        iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name, joliet_path="/" + name)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


# -- who gets a seed --------------------------------------------------------------------------
def seeded(d: Definition) -> bool:
    """Whether VMs of the definition get a NoCloud identity seed (hostname, admin user,
    keys, custom data): generalized Linux images do. A specialized image keeps the identity
    it was captured with, and Windows reads its own (unattend, not cloud-init): in Azure
    neither takes an osProfile."""
    return d.os_type == "Linux" and d.os_state == "Generalized"


class IdentityRefused(InvalidArgument):
    """An identity flag (admin user, password, keys, custom data, computer name) for a VM
    that boots without a seed."""

    template = "{flags}: {reason}"


def check_identity(d: Definition, flags: list[str], vm: str) -> None:
    """Refuse, before anything is made, the identity flags (as typed) a VM named `vm` of
    definition `d` could not honour."""
    if seeded(d):
        if "--admin-password" in flags:
            raise Unsupported(
                "--admin-password: sigvirt's Linux guests take SSH keys only "
                "(cloud-init is told ssh_pwauth: false); use --ssh-key-value"
            )
        return
    if not flags:
        return
    where = f"image definition {d.gallery}/{d.name}"
    if d.os_type == "Windows":
        reason = (
            f"{where} is --os-type Windows: sigvirt boots Windows without a seed and can't "
            "set its account, password or computer name (Azure does that through its "
            "provisioning agent); set them in the image (unattend.xml, sysprep) instead"
        )
    else:
        reason = (
            f"{where} is --os-state Specialized: its VMs keep the image's own hostname, "
            "users and keys (no osProfile, as in Azure); reach one with "
            f"`sigvirt vm ssh -n {vm} --local-user USER --private-key-file KEY`"
        )
    raise IdentityRefused(flags=" ".join(flags), reason=reason)


def require_seed(d: Definition, what: str) -> None:
    """Refuse what must log in to a guest with a key sigvirt seeded (box export) for a
    definition whose VMs boot without a seed."""
    if not seeded(d):
        kind = "--os-type Windows" if d.os_type == "Windows" else "--os-state Specialized"
        raise Unsupported(
            f"{what}: image definition {d.gallery}/{d.name} is {kind}: its VMs boot without a "
            "seed, so sigvirt has no key to log in to them with"
        )
