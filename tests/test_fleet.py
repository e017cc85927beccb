"""Scale-set model records and their store (catalog/fleet.py): round trips, Azure's policy
rules, az's durations, and records that are hostile until parsed: damaged fields, links,
and records another user planted in the world-writable scalesets/ directory."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sigvirt.catalog import fleet
from sigvirt.catalog.fileio import CorruptRecord
from sigvirt.catalog.fleet import (
    FleetStore,
    HealthProbe,
    RollingPolicy,
    ScaleSetModel,
    UpgradeMode,
    changed,
    format_duration,
    parse_duration,
    rolling_policy,
    upgrade_mode,
)
from sigvirt.errors import Conflict, InvalidArgument, NotFound

pytestmark = pytest.mark.offline
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxq3Q9v2mC8pF0eX3YkWm1y1C1sQ5lqG6iZ0Xj5bH8P x"
SPEC = "def test_up(host):\n    assert host.run('true').rc == 0\n"
REPO = Path(__file__).resolve().parents[1]
NOBODY = pwd.getpwnam("nobody")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="plants records as another user")


@pytest.fixture
def root() -> Iterator[Path]:
    """A gallery root another user can reach (tmp_path's parents are 0700)."""
    where = Path(tempfile.mkdtemp(prefix="sigvirt-fleet-", dir="/var/tmp"))
    os.chmod(where, 0o755)
    yield where / "galleries"
    shutil.rmtree(where, ignore_errors=True)


def model(name: str = "web", **changes: Any) -> ScaleSetModel:
    base = ScaleSetModel(
        name=name, region="local", image="g/d", size="Lab_Tiny", vcpus=1, memory_mib=128,
        admin_user="azureuser", ssh_public_keys=(KEY,), data_disk_gb=(1, 2),
        tags={"team": "a"}, health=HealthProbe(command="systemctl is-active ssh"),
    )  # fmt: skip
    return dataclasses.replace(base, **changes)


def test_a_model_round_trips_and_its_generation_follows_the_profile(root: Path) -> None:
    store = FleetStore(root)
    assert store.list() == []
    made = store.create(model())
    assert made.created and made.owner_uid == os.geteuid()
    assert store.get("web") == made and store.list() == [made]
    base = root / "scalesets"
    assert stat.S_IMODE(base.stat().st_mode) == 0o1777
    assert stat.S_IMODE((base / "web").stat().st_mode) == 0o755
    assert stat.S_IMODE((base / "web" / "model.json").stat().st_mode) == 0o644
    with pytest.raises(Conflict, match="scale set web already exists"):
        store.create(model())

    policy = store.update("web", lambda m: changed(m, upgrade_mode=UpgradeMode.ROLLING))
    assert (policy.generation, policy.upgrade_mode) == (1, UpgradeMode.ROLLING)
    image = store.update("web", lambda m: changed(m, image="g/d/1.1.0"))
    assert image.generation == 2 and store.get("web") == image
    with pytest.raises(InvalidArgument, match="its name and owner don't change"):
        store.update("web", lambda m: dataclasses.replace(m, owner_uid=m.owner_uid + 1))
    with pytest.raises(InvalidArgument, match=r"rolling\.max_batch"):
        store.update(
            "web", lambda m: changed(m, rolling=RollingPolicy(max_batch_instance_percent=1))
        )
    assert store.get("web") == image  # a refused change wrote nothing
    with store.lock("web"):
        pass
    store.delete("web")
    assert not (base / "web").exists()
    with pytest.raises(NotFound):
        store.get("web")
    with pytest.raises(NotFound):
        store.delete("web")


def test_policy_flags_follow_azures_rules() -> None:
    p = rolling_policy(RollingPolicy(), max_batch=10, max_unhealthy=10, pause="PT1M30S")
    assert (p.max_batch_instance_percent, p.pause_time_between_batches) == (10, 90.0)
    assert rolling_policy(p, max_unhealthy_upgraded=0).max_unhealthy_upgraded_instance_percent == 0
    assert rolling_policy(p, prioritize_unhealthy=True).prioritize_unhealthy_instances
    for bad in ({"max_batch": 4}, {"max_batch": 101}, {"max_unhealthy": 4},
                {"max_unhealthy_upgraded": 101}, {"max_batch": 30, "max_unhealthy": 20}):  # fmt: skip
        with pytest.raises(InvalidArgument):
            rolling_policy(RollingPolicy(), **bad)  # type: ignore[arg-type]
    assert upgrade_mode("rolling") is UpgradeMode.ROLLING
    with pytest.raises(InvalidArgument):
        upgrade_mode("Roll")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("PT30S", 30.0), ("pt1m30s", 90.0), ("PT1H", 3600.0), ("P1D", 86400.0), ("45", 45.0),
     ("PT0.5S", 0.5), ("PT0S", 0.0), ("P0DT2M", 120.0)],
)  # fmt: skip
def test_durations_are_iso_8601_or_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "P", "PT", "P1Y", "P1M", "PT1H2", "30s", "-5", "PT-1S",
                                  "P2D", "1e3", "PT1S1M"])  # fmt: skip
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_duration(text)


def test_format_duration_is_azures() -> None:
    assert [format_duration(s) for s in (0, 30, 90, 7200, 3661, 1.5)] == [
        "PT0S",
        "PT30S",
        "PT1M30S",
        "PT2H",
        "PT1H1M1S",
        "PT1.5S",
    ]


# -- damaged and hostile records --------------------------------------------------------------
BAD_FIELDS: list[tuple[str, Any]] = [
    ("name", "other"), ("name", "bad_name"), ("region", "a/b"), ("region", 3),
    ("image", "../../etc"), ("image", ""), ("generation", 0), ("generation", "2"),
    ("generation", True), ("upgrade_mode", "Sometimes"), ("size", "a b"), ("vcpus", 0),
    ("memory_mib", 1), ("admin_user", "root"), ("admin_user", "Bad User"),
    ("ssh_public_keys", ["not a key"]), ("ssh_public_keys", "ssh-ed25519 AAAA x"),
    ("key_path", "relative/key"), ("custom_data", "%%%"), ("os_disk_gb", 4096),
    ("data_disk_gb", [0]), ("data_disk_gb", [1] * 17), ("tags", {"bad<name": "v"}),
    ("tags", []), ("owner_uid", -1), ("resource_group", "bad rg!"),
    ("rolling", {"max_batch_instance_percent": 0}),
    ("rolling", {"max_unhealthy_upgraded_instance_percent": 101}),
    ("rolling", {"pause_time_between_batches": -1}),
    ("rolling", {"pause_time_between_batches": 1e9}),
    ("rolling", {"prioritize_unhealthy_instances": "yes"}),
    ("health", {"command": "x" * 5000}), ("health", {"spec": "print('no tests')"}),
    ("health", {"timeout": 0}), ("health", {"owner": "../x"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("key", "value"), BAD_FIELDS, ids=[f"{k}={v!r}"[:40] for k, v in BAD_FIELDS]
)
def test_a_damaged_record_is_refused_not_believed(root: Path, key: str, value: Any) -> None:
    store = FleetStore(root)
    store.create(model())
    path = root / "scalesets" / "web" / "model.json"
    record = json.loads(path.read_text())
    if isinstance(value, dict) and key in ("rolling", "health"):
        record[key] = {**record[key], **value}
    else:
        record[key] = value
    path.write_text(json.dumps(record))
    with pytest.raises(CorruptRecord):
        store.get("web")
    damaged: list[tuple[str, CorruptRecord]] = []
    assert store.list(damaged) == [] and [n for n, _e in damaged] == ["web"]


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b"null", b"\xff\xfe", b"{}" + b" " * (2 << 20)])
def test_garbage_is_a_corrupt_record(root: Path, raw: bytes) -> None:
    store = FleetStore(root)
    store.create(model())
    (root / "scalesets" / "web" / "model.json").write_bytes(raw)
    with pytest.raises(CorruptRecord):
        store.get("web")


def test_links_are_not_followed(root: Path) -> None:
    store = FleetStore(root)
    store.create(model())
    elsewhere = root.parent / "elsewhere.json"
    path = root / "scalesets" / "web" / "model.json"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    with pytest.raises(CorruptRecord, match="symbolic link"):
        store.get("web")
    (root / "scalesets" / "alias").symlink_to(root / "scalesets" / "web")
    with pytest.raises(CorruptRecord, match="not a directory"):
        store.get("alias")
    with pytest.raises(CorruptRecord, match="not a directory"):
        store.delete("alias")  # nor followed to remove what it points at
    assert elsewhere.exists() and (root / "scalesets" / "web").is_dir()


def _plant(root: Path, name: str, record: ScaleSetModel, uid: int) -> Path:
    """A record written by user `uid` in its own NAME/ (the sticky directory allows it)."""
    where = root / "scalesets" / name
    where.mkdir()
    path = where / "model.json"
    path.write_text(json.dumps(fleet.to_dict(record)))
    for p in (where, path):
        os.chown(p, uid, -1)
    return path


@as_root
def test_a_record_planted_by_another_user_is_refused(root: Path) -> None:
    store = FleetStore(root)
    store.create(model())  # makes scalesets/
    # nobody writes a model that says root made it: root would trust it
    _plant(root, "evil", model("evil", owner_uid=0), NOBODY.pw_uid)
    with pytest.raises(CorruptRecord, match="belongs to user nobody"):
        store.get("evil")
    # nobody's own model is nobody's: readable, but its spec runs as nobody, never as a user
    # the record names
    own = _plant(root, "theirs", model("theirs", owner_uid=NOBODY.pw_uid), NOBODY.pw_uid)
    assert store.get("theirs").owner_uid == NOBODY.pw_uid
    claims = model("theirs", owner_uid=NOBODY.pw_uid, health=HealthProbe(spec=SPEC, owner="root"))
    own.write_text(json.dumps(fleet.to_dict(claims)))
    with pytest.raises(CorruptRecord, match=r"health\.owner 'root' is not nobody"):
        store.get("theirs")
    # root's file in a directory nobody owns: nobody could swap it at any moment
    mine = root / "scalesets" / "web"
    os.chown(mine, NOBODY.pw_uid, -1)
    with pytest.raises(CorruptRecord, match="its directory belongs to user nobody"):
        store.get("web")
    damaged: list[tuple[str, CorruptRecord]] = []
    assert [m.name for m in store.list(damaged)] == []
    assert sorted(n for n, _e in damaged) == ["evil", "theirs", "web"]
    store.delete("evil")  # root may clear what was planted
    assert not (root / "scalesets" / "evil").exists()


def _as_nobody(root: Path, code: str) -> subprocess.CompletedProcess[str]:
    script = f"from pathlib import Path\nfrom sigvirt.catalog.fleet import *\nstore = FleetStore(Path({str(root)!r}))\n{code}"
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", sys.executable, "-c", script],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip


@as_root
def test_only_the_owner_or_root_may_change_a_model(root: Path) -> None:
    store = FleetStore(root)
    store.create(model())
    for code in ("store.update('web', lambda m: changed(m, image='g/d/9.9.9'))",
                 "store.delete('web')"):  # fmt: skip
        ran = _as_nobody(root, code)
        assert ran.returncode != 0 and "PermissionRefused" in ran.stderr, ran.stderr
    assert store.get("web").image == "g/d"
    # nobody may make their own (scalesets/ is like /tmp), and root may read and change it
    ran = _as_nobody(
        root, "store.create(ScaleSetModel(name='theirs', region='local', image='g/d'))"
    )
    assert ran.returncode == 0, ran.stderr
    theirs = store.get("theirs")
    assert theirs.owner_uid == NOBODY.pw_uid
    assert (root / "scalesets" / "theirs").stat().st_uid == NOBODY.pw_uid
    assert store.update("theirs", lambda m: changed(m, image="g/d/1.0.0")).generation == 2
    # nobody can't take root's name from under it, nor remove root's directory
    ran = _as_nobody(root, "store.create(ScaleSetModel(name='web', region='local', image='g/d'))")
    assert ran.returncode != 0 and "PermissionRefused" in ran.stderr, ran.stderr
    assert store.get("web").image == "g/d"
    store.delete("theirs")
    assert store.list() == [store.get("web")]
