"""az's image-version flags that change where replicas go and which version is latest, run
against real pools: storage types (pools labelled in regions.yaml), --replication-mode Shallow,
latest per region (--target-region-exclude-from-latest, show-latest -l), and `wait`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sigvirt.errors import ExitCode
from sigvirt.guests import vms
from tests.support import imagefactory as f
from tests.support.catalog import SigEnv, SigPools, version_create

G = ("--gallery-name", "myGallery")
D = ("--gallery-image-definition", "myDef")


def with_regions(sig: SigEnv, tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> SigEnv:
    """The same gallery root and pools, another regions.yaml (pool names a and b stand for the
    session's two replica pools)."""
    a, b = sig.pools.replicas
    for key, pool in (("A", a), ("B", b)):
        text = text.replace(f"<{key}>", f"{{name: {pool.name}, path: {pool.path}}}")
        text = text.replace(f"<{key.lower()}>", pool.name).replace(
            f"<{key.lower()}p>", str(pool.path)
        )
    regions_file = tmp_path / "regions.yaml"
    regions_file.write_text(text)
    monkeypatch.setenv("SIGVIRT_REGIONS", str(regions_file))
    env = {**sig.env, "SIGVIRT_REGIONS": str(regions_file)}
    pools = SigPools(regions_file, sig.pools.replicas, sig.pools.source)
    out = dataclasses.replace(sig, pools=pools, env=env)
    out.gallery()
    out.definition()
    return out


def pools_of(made: dict[str, object], sig: SigEnv) -> list[str]:
    """Which of the session pools (a, b) each replica landed in."""
    names = {p.name: key for key, p in zip("ab", sig.pools.replicas, strict=True)}
    replicas = made["sigvirt"]["replicas"]  # type: ignore[index]
    return sorted(names[r["pool"]] for r in replicas)


STORAGE = """\
regions:
  local:
    uri: qemu:///system
    pools:
      - <A>
      - {name: <b>, path: <bp>, storage_type: Premium_LRS}
"""


def test_storage_types_choose_the_pools(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sig = with_regions(sig, tmp_path, STORAGE, monkeypatch)
    image = f.qcow2_v3_with_data(tmp_path)

    premium = sig.cli(*version_create("1.0.0", image), "--target-regions", "local=2=premium_lrs")
    made = premium.json
    assert pools_of(made, sig) == ["b", "b"]
    (target,) = made["publishingProfile"]["targetRegions"]
    assert (target["name"], target["regionalReplicaCount"], target["storageAccountType"]) == (
        "local", 2, "Premium_LRS",
    )  # fmt: skip

    # --storage-account-type is the type of every region given without one (the source here).
    typed = sig.cli(*version_create("1.1.0", image), "--storage-account-type", "Premium_LRS").json
    assert pools_of(typed, sig) == ["b"]

    # az's default is Standard_LRS: an unlabelled pool is one, the Premium pool is not.
    plain = sig.cli(*version_create("1.2.0", image), "--replica-count", "2").json
    assert pools_of(plain, sig) == ["a", "a"]
    assert plain["publishingProfile"]["targetRegions"][0]["storageAccountType"] == "Standard_LRS"

    # Growing keeps the region's type; a type no pool has is one line and writes nothing.
    grown = sig.cli(
        "sig", "image-version", "update", *G, *D, "--gallery-image-version", "1.0.0",
        "--target-regions", "local=3", "-o", "json",
    ).json  # fmt: skip
    assert pools_of(grown, sig) == ["b", "b", "b"]
    line = sig.refused(
        ExitCode.INVALID_ARGUMENT, *version_create("1.3.0", image),
        "--target-regions", "local=1=Standard_ZRS",
    )  # fmt: skip
    assert line == (
        "--target-regions 'local=1=Standard_ZRS': region local has no pool of storage type "
        "Standard_ZRS (its pools' types: Premium_LRS, Standard_LRS; label one with "
        "storage_type in regions.yaml)"
    )


def test_shallow_replication_keeps_one_copy_in_the_source_region(
    sig: SigEnv, tmp_path: Path
) -> None:
    sig.gallery()
    sig.definition()
    image = f.qcow2_v3_with_data(tmp_path)
    made = sig.cli(*version_create("1.0.0", image), "--replication-mode", "shallow").json
    assert made["publishingProfile"]["replicationMode"] == "Shallow"
    assert len(made["sigvirt"]["replicas"]) == 1
    line = sig.refused(
        ExitCode.INVALID_ARGUMENT, *version_create("1.1.0", image),
        "--replication-mode", "Shallow", "--replica-count", "2",
    )  # fmt: skip
    assert line.startswith("--replication-mode Shallow keeps one replica in the source region")
    line = sig.refused(
        ExitCode.INVALID_ARGUMENT, "sig", "image-version", "update", *G, *D,
        "--gallery-image-version", "1.0.0", "--replica-count", "2",
    )  # fmt: skip
    assert line.startswith("--replication-mode Shallow keeps one replica")
    line = sig.refused(
        ExitCode.INVALID_ARGUMENT, *version_create("1.1.0", image), "--replication-mode", "deep"
    )
    assert line == "--replication-mode must be Full or Shallow (got 'deep')"


TWO_REGIONS = """\
regions:
  local:
    uri: qemu:///system
    pools: [<A>]
  east:
    uri: qemu:///system
    pools: [<B>]
"""


def test_latest_is_per_region(sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sig = with_regions(sig, tmp_path, TWO_REGIONS, monkeypatch)
    image = f.qcow2_v3_with_data(tmp_path)
    sig.version("1.0.0", image, "--target-regions", "local", "east")
    newer = sig.cli(
        *version_create("1.1.0", image), "--target-regions", "local", "east",
        "--target-region-exclude-from-latest", "east",
    ).json  # fmt: skip
    flags = {t["name"]: t["excludeFromLatest"] for t in newer["publishingProfile"]["targetRegions"]}
    assert flags == {"local": False, "east": True}

    def latest(*where: str) -> str:
        ran = sig.cli("sig", "image-version", "show-latest", *G, *D, *where, "-o", "json")
        return str(ran.json["name"])

    assert (latest(), latest("-l", "local"), latest("-l", "east")) == ("1.1.0", "1.1.0", "1.0.0")
    why = sig.cli("sig", "image-version", "show-latest", *G, *D, "-l", "east", "--explain",
                  "-o", "json").json  # fmt: skip
    assert {c["version"]: c["why"] for c in why} == {
        "1.0.0": "highest published version not excluded from latest in region east",
        "1.1.0": "excluded from latest in region east",
    }

    # A VM asked for in a region boots that region's latest (prepare only reads).
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxq3Q9v2mC8pF0eX3YkWm1y1C1sQ5lqG6iZ0Xj5bH8P x"
    for region, expected in (("local", "1.1.0"), ("east", "1.0.0")):
        request = vms.VmRequest("v", "myGallery/myDef", region=region, ssh_key_value=key)
        assert vms.prepare(sig.context(), request).version.name == expected

    # Update moves the exclusion; dropping a region drops its exclusion with it.
    sig.cli("sig", "image-version", "update", *G, *D, "--gallery-image-version", "1.1.0",
            "--target-region-exclude-from-latest", "local")  # fmt: skip
    assert (latest("-l", "local"), latest("-l", "east")) == ("1.0.0", "1.1.0")
    line = sig.refused(
        ExitCode.INVALID_ARGUMENT, "sig", "image-version", "update", *G, *D,
        "--gallery-image-version", "1.0.0", "--target-regions", "local",
        "--target-region-exclude-from-latest", "east",
    )  # fmt: skip
    assert "east" in line


UNREACHABLE = """\
regions:
  local:
    uri: qemu:///system
    pools: [<A>]
  gone:
    uri: qemu+tcp://127.0.0.1:1/system
    pools: [nowhere]
"""


def test_wait_ends_with_the_replications_exit_code_or_times_out(
    sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sig = with_regions(sig, tmp_path, UNREACHABLE, monkeypatch)
    image = f.qcow2_v3_with_data(tmp_path)
    made = sig.cli(*version_create("1.0.0", image), "--target-regions", "local", "gone")
    # The failure's own code: the region's host did not answer.
    assert made.code == ExitCode.REGION_UNAVAILABLE
    assert json.loads(made.out)["replicationStatus"]["aggregatedState"] == "Failed"
    v = ("--gallery-image-version", "1.0.0")
    for condition in (["--created"], [], ["--custom", "provisioningState=='Succeeded'"]):
        ran = sig.cli("sig", "image-version", "wait", *G, *D, *v, *condition, "--interval", "0.1")
        assert ran.code == ExitCode.REGION_UNAVAILABLE, (condition, ran.err)
    ran = sig.cli("sig", "image-version", "wait", *G, *D, *v, "--exists")
    assert (ran.code, ran.out) == (0, "")
    ran = sig.cli("sig", "image-version", "wait", *G, *D, "--gallery-image-version", "9.9.9",
                  "--exists", "--timeout", "0.3", "--interval", "0.1")  # fmt: skip
    assert ran.code == ExitCode.TIMED_OUT
    assert ran.error == "wait: the condition did not hold within 0.3s"
