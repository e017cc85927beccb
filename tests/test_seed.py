"""The NoCloud seed sigvirt writes, read back from the ISO as cloud-init reads it: meta-data and
user-data parse as YAML and say what was meant, the boot defaults that spare a stock image
first-boot work, the user's custom data merged over them, and the tiny image's stand-in reading
the same user-data as PyYAML does."""

from __future__ import annotations

import email
import io
import shutil
import subprocess
import sys
from pathlib import Path

import pycdlib
import pytest
import yaml

from sigvirt.guests.seed import SeedSpec, seed_iso, user_data

pytestmark = pytest.mark.offline

ROOT = Path(__file__).resolve().parent.parent
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBy3vQ8m0mYpKjJ7l2mQv0dYV4oY1bQe9m1d1mZpJx8Q t@x"


def spec(custom_data: bytes | None = None) -> SeedSpec:
    return SeedSpec("web1-0123456789ab", "web1", "azureuser", (KEY,), custom_data)


def iso_files(data: bytes) -> dict[str, bytes]:
    """The files of a seed ISO by their Rock Ridge names (what Linux mounts), and its label."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        files = {"(label)": iso.pvd.volume_identifier.rstrip(b" ")}
        for path, _dirs, names in iso.walk(rr_path="/"):
            for name in names:
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path=f"{path.rstrip('/')}/{name}")
                files[name] = out.getvalue()
        return files
    finally:
        iso.close()


def test_seed_iso_carries_meta_data_and_user_data_as_cloud_init_reads_them() -> None:
    files = iso_files(seed_iso(spec()))
    assert files.pop("(label)") == b"cidata"
    assert sorted(files) == ["meta-data", "user-data"]  # no network-config: see seed.py
    assert yaml.safe_load(files["meta-data"]) == {
        "instance-id": "web1-0123456789ab",
        "local-hostname": "web1",
    }
    assert files["user-data"].startswith(b"#cloud-config\n")
    doc = yaml.safe_load(files["user-data"])
    (user,) = doc["users"]
    assert user["name"] == "azureuser" and user["ssh_authorized_keys"] == [KEY]
    assert user["lock_passwd"] is True and doc["ssh_pwauth"] is False
    assert doc["hostname"] == "web1"
    # cloud-init's default would also make RSA-3072 and ECDSA host keys at first boot
    assert doc["ssh_genkeytypes"] == ["ed25519"]


def test_custom_cloud_config_overrides_boot_defaults_but_not_the_admin_user() -> None:
    theirs = (
        b"#cloud-config\nssh_genkeytypes: [rsa, ed25519]\nssh_pwauth: true\n"
        b"users: [{name: deploy}]\nruncmd: [[touch, /tmp/x]]\n"
    )
    doc = yaml.safe_load(user_data(spec(theirs)))
    assert doc["ssh_genkeytypes"] == ["rsa", "ed25519"]  # theirs: a default, not a rule
    assert doc["ssh_pwauth"] is False  # ours: sigvirt's guests take keys only
    assert [u["name"] for u in doc["users"]] == ["azureuser", "deploy"]
    assert doc["runcmd"] == [["touch", "/tmp/x"]]
    plain = yaml.safe_load(user_data(spec(b"#cloud-config\nruncmd: [[true]]\n")))
    assert plain["ssh_genkeytypes"] == ["ed25519"]


def test_script_custom_data_travels_as_a_mime_part_beside_the_defaults() -> None:
    msg = email.message_from_string(user_data(spec(b"#!/bin/sh\necho hi\n")))
    parts = [p for p in msg.walk() if not p.is_multipart()]
    assert [p.get_content_type() for p in parts] == ["text/cloud-config", "text/x-shellscript"]
    ours = yaml.safe_load(str(parts[0].get_payload()))
    assert ours["ssh_genkeytypes"] == ["ed25519"] and ours["users"][0]["name"] == "azureuser"
    assert parts[1].get_payload(decode=True) == b"#!/bin/sh\necho hi\n"


@pytest.mark.skipif(shutil.which("awk") is None, reason="no awk")
def test_tiny_stand_in_reads_the_user_data_as_pyyaml_does(tmp_path: Path) -> None:
    """images/tiny's cloud-init stand-in parses user-data with files/yaml.awk: whatever the
    seed gains must read the same there (unknown keys are then ignored by its planner)."""
    seed = tmp_path / "user-data"
    seed.write_text(user_data(spec(b"#cloud-config\nwrite_files: [{path: /a, content: b}]\n")))
    tiny = ROOT / "images/tiny"
    ref = subprocess.run(
        [sys.executable, str(tiny / "tests/flatten.py"), str(seed)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    got = subprocess.run(
        ["awk", "-f", str(tiny / "files/yaml.awk"), str(seed)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    norm = [
        line.replace("\tTrue", "\ttrue").replace("\tFalse", "\tfalse") for line in got.splitlines()
    ]
    assert norm == ref.splitlines()
    assert "ssh_genkeytypes.0\ted25519" in ref.splitlines()
