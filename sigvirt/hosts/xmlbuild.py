"""Libvirt XML for storage (pools, volumes) from pure functions, and the element helpers
the domain XML is built with too. Nothing here talks to libvirt; tests compare with files."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def render(root: ET.Element) -> str:
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="unicode") + "\n"


def dir_pool_xml(name: str, path: Path) -> str:
    pool = ET.Element("pool", type="dir")
    sub(pool, "name", name)
    target = sub(pool, "target")
    sub(target, "path", str(path))
    return render(pool)


def _permissions(target: ET.Element, mode: int, owner: int | None, group: int | None) -> None:
    perms = sub(target, "permissions")
    sub(perms, "mode", f"{mode:04o}")
    if owner is not None:
        sub(perms, "owner", str(owner))
    if group is not None:
        sub(perms, "group", str(group))


def overlay_volume_xml(
    name: str, capacity: int, backing: Path, backing_fmt: str = "qcow2", mode: int = 0o600
) -> str:
    """A qcow2 linked clone: the backing format is stated, so nothing is ever probed."""
    vol = ET.Element("volume")
    sub(vol, "name", name)
    sub(vol, "capacity", str(capacity), unit="bytes")
    target = sub(vol, "target")
    sub(target, "format", type="qcow2")
    _permissions(target, mode, None, None)
    sub(target, "compat", "1.1")
    bs = sub(vol, "backingStore")
    sub(bs, "path", str(backing))
    sub(bs, "format", type=backing_fmt)
    return render(vol)


def data_disk_volume_xml(name: str, capacity: int, mode: int = 0o600) -> str:
    """An empty qcow2 data disk: no backing store, nothing allocated until the guest writes."""
    vol = ET.Element("volume")
    sub(vol, "name", name)
    sub(vol, "capacity", str(capacity), unit="bytes")
    sub(vol, "allocation", "0", unit="bytes")
    target = sub(vol, "target")
    sub(target, "format", type="qcow2")
    _permissions(target, mode, None, None)
    sub(target, "compat", "1.1")
    return render(vol)


def raw_volume_xml(name: str, capacity: int, mode: int = 0o600) -> str:
    vol = ET.Element("volume")
    sub(vol, "name", name)
    sub(vol, "capacity", str(capacity), unit="bytes")
    sub(vol, "allocation", "0", unit="bytes")
    target = sub(vol, "target")
    sub(target, "format", type="raw")
    _permissions(target, mode, None, None)
    return render(vol)
