"""An image definition's features (az `--features Name=Value ...`, Azure's GalleryImageFeature
list): parsed, checked and spelled the way Azure spells them, and what each one means here.

Azure keeps them as `[{"name": ..., "value": ...}]`; a definition stores them as an ordered
name → value mapping, values canonical (`SCSI,NVMe`, `True`). What they change on QEMU is the
guests' business (guests/devices.py); this module only knows the names and values.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from sigvirt.errors import InvalidArgument

SECURITY_TYPE = "SecurityType"
DISK_CONTROLLER_TYPES = "DiskControllerTypes"
ACCELERATED_NETWORKING = "IsAcceleratedNetworkSupported"
HIBERNATE = "IsHibernateSupported"

BOOLEAN = ("True", "False")
SECURITY_TYPES = (
    "TrustedLaunch",
    "TrustedLaunchSupported",
    "ConfidentialVM",
    "ConfidentialVmSupported",
    "TrustedLaunchAndConfidentialVmSupported",
)
CONTROLLERS = ("SCSI", "NVMe")
# Security types a VM must launch with (the others only say the image also boots that way).
# TrustedLaunch is Secure Boot + a vTPM (guests/devices.py); confidential guests (SEV-SNP,
# TDX) sigvirt can't give: vm create refuses them.
REQUIRED_SECURITY = frozenset({"TrustedLaunch", "ConfidentialVM"})
TRUSTED_LAUNCH = "TrustedLaunch"
UNSUPPORTED_SECURITY = frozenset({"ConfidentialVM"})

# name → the values it takes (a list value is a comma-separated subset of CONTROLLERS)
KNOWN: dict[str, tuple[str, ...]] = {
    SECURITY_TYPE: SECURITY_TYPES,
    DISK_CONTROLLER_TYPES: CONTROLLERS,
    ACCELERATED_NETWORKING: BOOLEAN,
    HIBERNATE: BOOLEAN,
    "IsSecureBootSupported": BOOLEAN,
    "IsMeasuredBootSupported": BOOLEAN,
}
LISTS = frozenset({DISK_CONTROLLER_TYPES})

FLAG = "--features"


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> str:
    match = next((a for a in allowed if a.lower() == value.strip().lower()), None)
    if match is None:
        raise InvalidArgument(
            f"{FLAG} {name}={value}: the value must be one of {', '.join(allowed)}"
        )
    return match


def canonical_name(name: str) -> str:
    """Azure's spelling of a feature name (names are case-insensitive there too)."""
    match = next((k for k in KNOWN if k.lower() == name.lower()), None)
    if match is not None:
        return match
    near = difflib.get_close_matches(name.lower(), [k.lower() for k in KNOWN], n=1, cutoff=0.6)
    hint = next((f" (did you mean {k}?)" for k in KNOWN if near and k.lower() == near[0]), "")
    raise InvalidArgument(f"{FLAG}: unknown feature {name!r}{hint}; known: {', '.join(KNOWN)}")


def canonical_value(name: str, value: str) -> str:
    allowed = KNOWN[name]
    if name not in LISTS:
        return _one_of(name, value, allowed)
    items = [v for v in value.split(",") if v.strip()]
    if not items:
        raise InvalidArgument(f"{FLAG} {name}=: give one or more of {', '.join(allowed)}")
    return ",".join(dict.fromkeys(_one_of(name, v, allowed) for v in items))


def parse(items: Iterable[str]) -> dict[str, str]:
    """az's `--features`: `Name=Value` pairs, space-separated within one argument or given as
    several arguments. Unknown names and bad values are refused (InvalidArgument), a name
    given twice too."""
    out: dict[str, str] = {}
    for item in (word for arg in items for word in arg.split()):
        name, eq, value = item.partition("=")
        if not eq or not name or not value:
            raise InvalidArgument(
                f"{FLAG} {item!r}: expected Name=Value, e.g. {DISK_CONTROLLER_TYPES}=SCSI,NVMe"
            )
        key = canonical_name(name)
        if key in out:
            raise InvalidArgument(f"{FLAG}: {key} is given twice")
        out[key] = canonical_value(key, value)
    return out


def checked(features: Mapping[str, str]) -> dict[str, str]:
    """A stored mapping read back (or built by a caller), checked like parsed input."""
    return parse(f"{k}={v}" for k, v in features.items())


def to_azure(features: Mapping[str, str]) -> list[dict[str, str]] | None:
    """Azure's shape: a list of {name, value}; None when there are none (as az shows it)."""
    return [{"name": k, "value": v} for k, v in features.items()] or None


def controllers(features: Mapping[str, str]) -> tuple[str, ...]:
    """The disk controller types the image boots from, besides sigvirt's virtio-blk."""
    value = features.get(DISK_CONTROLLER_TYPES, "")
    return tuple(v for v in value.split(",") if v)


def is_true(features: Mapping[str, str], name: str) -> bool:
    return features.get(name) == "True"


def required_security(features: Mapping[str, str]) -> str:
    """The security type a VM of this image must launch with ("" when there is none)."""
    value = features.get(SECURITY_TYPE, "")
    return value if value in REQUIRED_SECURITY else ""


def unsupported_security(features: Mapping[str, str]) -> str:
    """The security type a VM of this image must launch with that sigvirt can't give it ("")."""
    value = required_security(features)
    return value if value in UNSUPPORTED_SECURITY else ""


def notes(features: Mapping[str, str]) -> list[str]:
    """What a stored feature does not do here (yet): one line each, for warnings."""
    out = []
    security = unsupported_security(features)
    if security:
        out.append(
            f"{SECURITY_TYPE}={security} is stored, but sigvirt can't launch such VMs "
            "(no confidential guests): vm create will refuse its versions"
        )
    if is_true(features, HIBERNATE):
        out.append(f"{HIBERNATE}=True is stored; sigvirt has no hibernation (deallocate)")
    return out
