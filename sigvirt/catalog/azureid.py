"""Azure resource ids for sigvirt's resources, written as az prints them and read back.

sigvirt has no subscriptions; ids carry a fixed placeholder subscription and the resource
group a gallery or VM was created with (`-g`, "sigvirt" when none was given), so that a
script's `id=$(az … --query id -o tsv)` then `az … --ids $id` works unchanged. Parsing
accepts any subscription and group: they are names only.
"""

from __future__ import annotations

from dataclasses import dataclass

from sigvirt.catalog import names
from sigvirt.errors import InvalidName

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
DEFAULT_GROUP = "sigvirt"
PROVIDER = "Microsoft.Compute"

GALLERY_TYPE = "Microsoft.Compute/galleries"
DEFINITION_TYPE = "Microsoft.Compute/galleries/images"
VERSION_TYPE = "Microsoft.Compute/galleries/images/versions"
VM_TYPE = "Microsoft.Compute/virtualMachines"
VMSS_TYPE = "Microsoft.Compute/virtualMachineScaleSets"
INSTANCE_TYPE = "Microsoft.Compute/virtualMachineScaleSets/virtualMachines"


def _base(group: str) -> str:
    group = group or DEFAULT_GROUP
    return f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{group}/providers/{PROVIDER}"


def gallery_id(group: str, gallery: str) -> str:
    return f"{_base(group)}/galleries/{gallery}"


def definition_id(group: str, gallery: str, definition: str) -> str:
    return f"{gallery_id(group, gallery)}/images/{definition}"


def version_id(group: str, gallery: str, definition: str, version: str) -> str:
    return f"{definition_id(group, gallery, definition)}/versions/{version}"


def vm_id(group: str, name: str) -> str:
    return f"{_base(group)}/virtualMachines/{name}"


def vmss_id(group: str, name: str) -> str:
    return f"{_base(group)}/virtualMachineScaleSets/{name}"


def instance_id(group: str, scale_set: str, index: int) -> str:
    return f"{vmss_id(group, scale_set)}/virtualMachines/{index}"


@dataclass(frozen=True)
class ResourceId:
    """What an id names: its type (one of the *_TYPE constants) and the names in it."""

    type: str
    group: str
    gallery: str = ""
    definition: str = ""
    version: str = ""
    name: str = ""  # a VM or scale set
    instance: str = ""  # a scale set instance's index


_KINDS = {
    ("galleries",): GALLERY_TYPE,
    ("galleries", "images"): DEFINITION_TYPE,
    ("galleries", "images", "versions"): VERSION_TYPE,
    ("virtualmachines",): VM_TYPE,
    ("virtualmachinescalesets",): VMSS_TYPE,
    ("virtualmachinescalesets", "virtualmachines"): INSTANCE_TYPE,
}


def parse(text: str) -> ResourceId:
    """The resource an Azure-style id names; InvalidName with the expected form otherwise."""
    shown = names.shorten(text, 200)
    bad = InvalidName(
        f"resource id {shown} is invalid: expected /subscriptions/SUB/resourceGroups/GROUP/"
        "providers/Microsoft.Compute/galleries/G[/images/D[/versions/V]] or …/virtualMachines/"
        "NAME or …/virtualMachineScaleSets/NAME[/virtualMachines/N]"
    )
    parts = text.strip("/").split("/")
    if len(parts) < 8 or len(parts) % 2:
        raise bad
    lower = [p.lower() for p in parts]
    if lower[0] != "subscriptions" or lower[2] != "resourcegroups" or lower[4] != "providers":
        raise bad
    if lower[5] != PROVIDER.lower():
        raise bad
    group = parts[3]
    keys = tuple(lower[6::2])
    values = parts[7::2]
    kind = _KINDS.get(keys)
    if kind is None or not all(values):
        raise bad
    if kind in (GALLERY_TYPE, DEFINITION_TYPE, VERSION_TYPE):
        gallery = names.gallery_name(values[0])
        definition = names.definition_name(values[1]) if len(values) > 1 else ""
        version = values[2] if len(values) > 2 else ""
        if version and version.lower() != "latest":
            version = str(names.Version.parse(version))
        return ResourceId(kind, group, gallery, definition, version)
    name = names.vm_name(values[0])
    instance = values[1] if len(values) > 1 else ""
    if instance and not instance.isdigit():
        raise bad
    return ResourceId(kind, group, name=name, instance=instance)
