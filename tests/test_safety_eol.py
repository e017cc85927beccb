"""A version's safety profile (dropping a region that holds replicas, deleting before the end
of life) and the end-of-life policy (deny: no new VM or instance of an expired version, never
latest; warn: today's warning). The rules as pure functions, then real pools under
qemu:///system, and one scale set of one tiny guest for `vmss scale`/`reimage`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from sigvirt.catalog import eol, latest
from sigvirt.catalog.records import (
    Definition,
    Gallery,
    ImageVersion,
    Replica,
    ReplicaState,
    VersionState,
)
from sigvirt.cli import main
from sigvirt.errors import ExitCode, InvalidArgument, SafetyProfileRefused
from sigvirt.guests import vms
from sigvirt.hosts.hypervisor import Hypervisor
from sigvirt.versions import safety
from tests.support import imagefactory as f
from tests.support.base import SshKey, unique
from tests.support.catalog import SigEnv, SigPools, tree, version_create
from tests.support.fleetlab import D as FD
from tests.support.fleetlab import FleetLab, open_lab
from tests.support.fleetlab import G as FG

G = ("--gallery-name", "myGallery")
D = ("--gallery-image-definition", "myDef")
PAST, FUTURE = "2020-01-01", "2099-01-01"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxq3Q9v2mC8pF0eX3YkWm1y1C1sQ5lqG6iZ0Xj5bH8P x"


# -- the rules, pure --------------------------------------------------------------------------
def _gallery(policy: str = "") -> Gallery:
    return Gallery("G", eol_policy=policy)


def _definition(policy: str = "", end_of_life: str | None = None) -> Definition:
    return Definition("G", "D", "p", "o", "s", eol_policy=policy, end_of_life=end_of_life)


def _version(name: str = "1.0.0", end_of_life: str | None = None, **kw: object) -> ImageVersion:
    return ImageVersion("G", "D", name, VersionState.SUCCEEDED, end_of_life=end_of_life, **kw)  # type: ignore[arg-type]


@pytest.mark.offline
@pytest.mark.parametrize(
    ("gallery", "definition", "policy", "origin"),
    [
        ("", "", "warn", "default"),
        ("deny", "", "deny", "gallery G"),
        ("deny", "warn", "warn", "image definition G/D"),
        ("warn", "deny", "deny", "image definition G/D"),
        ("", "deny", "deny", "image definition G/D"),
    ],
)
def test_the_definitions_policy_wins_then_the_galleries_then_warn(
    gallery: str, definition: str, policy: str, origin: str
) -> None:
    g, d = _gallery(gallery), _definition(definition)
    assert eol.effective_policy(g, d) == policy
    assert eol.policy_of(g, d).origin == origin


@pytest.mark.offline
def test_deny_refuses_from_the_end_of_life_date_on_and_warn_never() -> None:
    g, d = _gallery("deny"), _definition()
    v = _version(end_of_life="2030-06-01")
    assert eol.refusal(v, d, g, today=date(2030, 5, 31)) is None
    line = eol.refusal(v, d, g, today=date(2030, 6, 1))
    assert line == (
        "image version G/D/1.0.0 is past its end of life (2030-06-01) and the eol policy of "
        "gallery G is deny"
    )
    assert eol.refusal(v, d, g, today=datetime(2030, 5, 31, 23, 59, tzinfo=UTC)) is None
    assert eol.refusal(v, d, _gallery("warn"), today=date(2031, 1, 1)) is None
    assert eol.refusal(v, d, _gallery(), today=date(2031, 1, 1)) is None
    assert eol.refusal(_version(), d, g, today=date(2999, 1, 1)) is None  # no date: no end


@pytest.mark.offline
def test_a_version_without_a_date_has_its_definitions() -> None:
    d = _definition("deny", end_of_life="2030-06-01")
    line = eol.refusal(_version(), d, _gallery(), today=date(2030, 7, 1))
    assert line == (
        "image version G/D/1.0.0 is past its end of life (2030-06-01, its definition's) and "
        "the eol policy of image definition G/D is deny"
    )
    # its own date wins over the definition's
    assert (
        eol.refusal(_version(end_of_life="2031-01-01"), d, _gallery(), today=date(2030, 7, 1))
        is None
    )


@pytest.mark.offline
def test_eol_policy_values_are_checked() -> None:
    assert eol.parse_policy("DENY") == "deny"
    with pytest.raises(InvalidArgument, match=r"--eol-policy must be warn or deny \(got 'block'\)"):
        eol.parse_policy("block")


@pytest.mark.offline
def test_under_deny_an_expired_version_is_never_latest() -> None:
    old, expired = _version("1.0.0"), _version("1.1.0", end_of_life=PAST)
    deny = eol.policy_of(_gallery("deny"), _definition())
    rows = {c.version: c for c in latest.explain_latest([old, expired], policy=deny)}
    assert rows["1.0.0"].chosen and not rows["1.1.0"].chosen
    assert rows["1.1.0"].why == f"past its end of life {PAST} (eol policy deny, set on gallery G)"
    assert (rows["1.1.0"].end_of_life, rows["1.1.0"].eol_policy) == (PAST, "deny (gallery G)")
    warn = eol.policy_of(_gallery(), _definition())
    rows = {c.version: c for c in latest.explain_latest([old, expired], policy=warn)}
    assert rows["1.1.0"].chosen
    assert rows["1.1.0"].why.endswith(f"(past end of life {PAST})")


def _replica(region: str, n: int, state: ReplicaState = ReplicaState.COMPLETED) -> Replica:
    vol = f"G-D-1.0.0-{region}-{n}.qcow2"
    return Replica(region, "pool", vol, f"/p/{vol}", state)


@pytest.mark.offline
def test_dropping_a_region_names_the_replicas_it_would_delete() -> None:
    reps = (_replica("local", 0), _replica("east", 0), _replica("east", 1),
            _replica("west", 0, ReplicaState.FAILED))  # fmt: skip
    v = _version(target_regions={"local": 1, "east": 2, "west": 1}, replicas=reps)
    with pytest.raises(SafetyProfileRefused) as err:
        safety.check_dropped_regions(v, {"local": 1})
    assert err.value.message == (
        "image version G/D/1.0.0: dropping region east would delete replicas "
        "G-D-1.0.0-east-0.qcow2, G-D-1.0.0-east-1.qcow2; its safety profile does not allow "
        "replicated location deletion (--allow-replicated-location-deletion true allows it)"
    )
    safety.check_dropped_regions(v, {"local": 1, "east": 1})  # a count, not a region
    safety.check_dropped_regions(v, {"local": 1, "east": 2})  # west's replica never completed
    allowed = dataclasses.replace(v, allow_replicated_location_deletion=True)
    safety.check_dropped_regions(allowed, {"local": 1})


@pytest.mark.offline
def test_deletion_is_blocked_until_the_end_of_life() -> None:
    v = _version(end_of_life="2030-06-01", block_deletion_before_end_of_life=True)
    with pytest.raises(SafetyProfileRefused, match="before its end of life 2030-06-01"):
        safety.check_delete(v, today=date(2030, 5, 31))
    safety.check_delete(v, today=date(2030, 6, 1))
    safety.check_delete(dataclasses.replace(v, block_deletion_before_end_of_life=False),
                        today=date(2000, 1, 1))  # fmt: skip
    # a version that never published goes whatever its profile says
    safety.check_delete(dataclasses.replace(v, state=VersionState.FAILED), today=date(2000, 1, 1))
    with pytest.raises(InvalidArgument, match="needs an --end-of-life-date"):
        safety.settings(_version(), block_deletion_before_end_of_life=True)


# -- the flags, refused before anything is written ------------------------------------------
@pytest.mark.offline
def test_bad_flag_values_are_one_line(offline_sig: SigEnv, tmp_path: Path) -> None:
    sig = offline_sig
    line = sig.refused(ExitCode.INVALID_ARGUMENT, "sig", "create", *G, "--eol-policy", "never")
    assert line == "--eol-policy must be warn or deny (got 'never')"
    sig.gallery()
    sig.definition()
    line = sig.refused(ExitCode.INVALID_ARGUMENT, "sig", "image-definition", "update", *G, *D,
                       "--eol-policy", "maybe")  # fmt: skip
    assert line == "--eol-policy must be warn or deny (got 'maybe')"
    source = tmp_path / "nothing.qcow2"
    line = sig.refused(ExitCode.INVALID_ARGUMENT, *version_create("1.0.0", source),
                       "--allow-replicated-location-deletion", "sometimes")  # fmt: skip
    assert line == "--allow-replicated-location-deletion 'sometimes': expected true or false"
    line = sig.refused(ExitCode.INVALID_ARGUMENT, *version_create("1.0.0", source),
                       "--block-deletion-before-end-of-life", "true")  # fmt: skip
    assert line == (
        "--block-deletion-before-end-of-life true needs an --end-of-life-date to block until"
    )


@pytest.mark.offline
def test_show_says_which_policy_rules_and_where_it_is_set(offline_sig: SigEnv) -> None:
    sig = offline_sig
    group = ("--owner-group", sig.owner_group) if sig.owner_group else ()  # the tier's caller
    made = sig.cli("sig", "create", *G, *group, "--eol-policy", "Deny", "-o", "json")
    assert made.json["sigvirt"]["eolPolicy"] == "deny"
    sig.definition()
    shown = sig.cli("sig", "image-definition", "show", *G, *D, "-o", "json").json["sigvirt"]
    assert (shown["eolPolicy"], shown["effectiveEolPolicy"], shown["eolPolicyOrigin"]) == (
        None, "deny", "gallery myGallery")  # fmt: skip
    sig.cli("sig", "image-definition", "update", *G, *D, "--eol-policy", "warn")
    shown = sig.cli("sig", "image-definition", "show", *G, *D, "-o", "json").json["sigvirt"]
    assert (shown["eolPolicy"], shown["effectiveEolPolicy"], shown["eolPolicyOrigin"]) == (
        "warn", "warn", "image definition myGallery/myDef")  # fmt: skip
    sig.cli("sig", "update", *G, "--eol-policy", "warn")
    assert sig.store.get_gallery("myGallery").eol_policy == "warn"


# -- real pools -------------------------------------------------------------------------------
TWO_REGIONS = """\
regions:
  local:
    uri: qemu:///system
    pools: [{{name: {a}, path: {ap}}}]
  east:
    uri: qemu:///system
    pools: [{{name: {b}, path: {bp}}}]
"""


@pytest.fixture
def two(sig: SigEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SigEnv:
    """`sig` with regions local and east (one pool each, on this host's libvirt), a gallery
    and a definition."""
    a, b = sig.pools.replicas
    regions_file = tmp_path / "regions.yaml"
    regions_file.write_text(TWO_REGIONS.format(a=a.name, ap=a.path, b=b.name, bp=b.path))
    monkeypatch.setenv("SIGVIRT_REGIONS", str(regions_file))
    pools = SigPools(regions_file, sig.pools.replicas, sig.pools.source)
    out = dataclasses.replace(
        sig, pools=pools, env={**sig.env, "SIGVIRT_REGIONS": str(regions_file)}
    )
    out.gallery()
    out.definition()
    return out


def test_dropping_a_region_is_refused_without_the_flag_and_done_with_it(
    two: SigEnv, tmp_path: Path
) -> None:
    image = f.qcow2_v3_with_data(tmp_path)
    made = two.cli(*version_create("1.0.0", image), "--target-regions", "local", "east").json
    assert made["safetyProfile"] == {
        "allowDeletionOfReplicatedLocations": False, "blockDeletionBeforeEndOfLife": False,
        "reportedForPolicyViolation": False, "policyViolations": [],
    }  # fmt: skip
    east = [Path(r["path"]) for r in made["sigvirt"]["replicas"] if r["region"] == "east"]
    assert len(east) == 1 and east[0].exists()
    before = {p: p.read_bytes() for p in two.version_files("1.0.0")}
    update = ["sig", "image-version", "update", *G, *D, "--gallery-image-version", "1.0.0"]

    line = two.refused(ExitCode.SAFETY_PROFILE, *update, "--target-regions", "local")
    assert line == (
        f"image version myGallery/myDef/1.0.0: dropping region east would delete replica "
        f"{east[0].name}; its safety profile does not allow replicated location deletion "
        "(--allow-replicated-location-deletion true allows it)"
    )
    assert {p: p.read_bytes() for p in two.version_files("1.0.0")} == before  # files untouched

    # the flag in the same update counts (az's update sends both)
    done = two.cli(*update, "--target-regions", "local", "--allow-replicated-location-deletion",
                   "true", "-o", "json").json  # fmt: skip
    assert [t["name"] for t in done["publishingProfile"]["targetRegions"]] == ["local"]
    assert done["safetyProfile"]["allowDeletionOfReplicatedLocations"] is True
    assert not east[0].exists()
    assert two.store.get_version("myGallery", "myDef", "1.0.0").allow_replicated_location_deletion

    # az's --set path takes it back; a region added then dropped again is refused again
    two.cli(*update, "--target-regions", "local", "east",
            "--set", "safetyProfile.allowDeletionOfReplicatedLocations=false")  # fmt: skip
    rec = two.store.get_version("myGallery", "myDef", "1.0.0")
    assert not rec.allow_replicated_location_deletion and len(rec.completed_replicas("east")) == 1
    two.refused(ExitCode.SAFETY_PROFILE, *update, "--target-regions", "local")


def test_delete_before_the_end_of_life_is_refused_with_the_block_flag(
    two: SigEnv, tmp_path: Path
) -> None:
    image = f.qcow2_v3_with_data(tmp_path)
    made = two.cli(*version_create("1.0.0", image), "--end-of-life-date", FUTURE,
                   "--block-deletion-before-end-of-life", "true").json  # fmt: skip
    assert made["safetyProfile"]["blockDeletionBeforeEndOfLife"] is True
    delete = ["sig", "image-version", "delete", *G, *D, "--gallery-image-version", "1.0.0"]
    line = two.refused(ExitCode.SAFETY_PROFILE, *delete, "--yes")
    assert line == (
        f"image version myGallery/myDef/1.0.0 blocks deletion before its end of life {FUTURE} "
        "(update it with --block-deletion-before-end-of-life false to delete it sooner)"
    )
    assert len(two.version_files("1.0.0")) == 1
    # retire ends with the delete: refused before it moves anything
    retire = ["sig", "image-version", "retire", *G, *D, "--gallery-image-version", "1.0.0"]
    assert two.refused(ExitCode.SAFETY_PROFILE, *retire) == line

    # a version whose end of life has come goes, flag or not
    expired = two.cli(*version_create("1.1.0", image), "--end-of-life-date", PAST,
                      "--block-deletion-before-end-of-life", "true").json  # fmt: skip
    assert expired["safetyProfile"]["blockDeletionBeforeEndOfLife"] is True
    assert two.cli("sig", "image-version", "delete", *G, *D, "--gallery-image-version", "1.1.0",
                   "--yes").code == 0  # fmt: skip
    assert two.version_files("1.1.0") == []

    two.cli("sig", "image-version", "update", *G, *D, "--gallery-image-version", "1.0.0",
            "--block-deletion-before-end-of-life", "false")  # fmt: skip
    ran = two.cli(*delete, "--yes")
    assert ran.code == 0, ran.err
    assert two.version_files("1.0.0") == []


def test_deny_refuses_vm_create_on_an_expired_version_and_latest_skips_it(
    sig: SigEnv, tmp_path: Path, system_hv: Hypervisor
) -> None:
    sig.cli("sig", "create", *G, "--eol-policy", "deny")
    sig.definition()
    image = f.qcow2_v3_with_data(tmp_path)
    sig.version("1.0.0", image)
    sig.version("1.1.0", image, "--end-of-life-date", PAST)

    name = unique("eol")
    before = tree(sig.root)
    ran = sig.cli("vm", "create", "-n", name, "--image", "myGallery/myDef/1.1.0",
                  "--ssh-key-value", KEY)  # fmt: skip
    assert ran.code == ExitCode.END_OF_LIFE, ran.err
    assert ran.error == (
        f"image version myGallery/myDef/1.1.0 is past its end of life ({PAST}) and the eol "
        "policy of gallery myGallery is deny"
    )
    assert not system_hv.domain_exists(name)
    assert tree(sig.root) == before

    def show_latest(*extra: str) -> object:
        return sig.cli("sig", "image-version", "show-latest", *G, *D, *extra, "-o", "json").json

    assert show_latest()["name"] == "1.0.0"  # type: ignore[index]
    why = {c["version"]: c for c in show_latest("--explain")}  # type: ignore[attr-defined]
    assert why["1.1.0"]["why"] == (
        f"past its end of life {PAST} (eol policy deny, set on gallery myGallery)"
    )
    assert (why["1.1.0"]["end_of_life"], why["1.1.0"]["eol_policy"]) == (
        PAST, "deny (gallery myGallery)")  # fmt: skip
    assert why["1.0.0"]["chosen"] and why["1.0.0"]["end_of_life"] is None
    # `latest` is 1.0.0 for a VM too (prepare only reads)
    request = vms.VmRequest("v", "myGallery/myDef", ssh_key_value=KEY)
    assert vms.prepare(sig.context(), request).version.name == "1.0.0"

    # the definition's own policy wins: warn lets 1.1.0 be latest and deploy, with a warning
    sig.cli("sig", "image-definition", "update", *G, *D, "--eol-policy", "warn")
    assert show_latest()["name"] == "1.1.0"  # type: ignore[index]
    prepared = vms.prepare(sig.context(), request)
    assert prepared.version.name == "1.1.0"
    assert prepared.warnings == (
        f"image version myGallery/myDef/1.1.0 is past its end of life ({PAST})",
    )

    # every version expired under deny: nothing is latest, and end of life says why
    sig.cli("sig", "image-definition", "update", *G, *D, "--eol-policy", "deny",
            "--end-of-life-date", PAST)  # fmt: skip
    ran = sig.cli("vm", "create", "-n", name, "--image", "myGallery/myDef", "--ssh-key-value", KEY)
    assert ran.code == ExitCode.END_OF_LIFE, ran.err
    assert ran.error == (
        "image definition myGallery/myDef has no version before its end of life: 1.1.0 ended "
        f"{PAST} and the eol policy of image definition myGallery/myDef is deny"
    )
    assert not system_hv.domain_exists(name)


# -- a scale set (one tiny guest) -------------------------------------------------------------
@pytest.fixture(scope="module")
def fleet(
    scratch: Path, system_hv: Hypervisor, tiny_image: Path, ssh_key: SshKey
) -> Iterator[FleetLab]:
    with open_lab(scratch, system_hv, tiny_image, ssh_key, "eolfleet", "25460-25479") as lab:
        yield lab


@pytest.mark.guest
def test_deny_refuses_new_instances_and_reimage_of_an_expired_version(
    fleet: FleetLab, capsys: pytest.CaptureFixture[str]
) -> None:
    name = unique("eolss")
    pub = f"{fleet.key.private}.pub"
    assert main(["vmss", "create", "-n", name, "--image", f"{FG}/{FD}/1.0.0",
                 "--instance-count", "1", "--vm-sku", "Lab_Tiny", "--ssh-key-value", pub,
                 "-o", "none"]) == 0  # fmt: skip
    assert main(["sig", "image-version", "update", "-r", FG, "-i", FD, "-e", "1.0.0",
                 "--end-of-life-date", PAST, "-o", "none"]) == 0  # fmt: skip
    assert main(["sig", "update", "-r", FG, "--eol-policy", "deny", "-o", "none"]) == 0
    domains = sorted(d.name for d in fleet.hv.domains() if d.name.startswith(name))
    assert len(domains) == 1
    refusal = (
        f"sigvirt: error: image version {FG}/{FD}/1.0.0 is past its end of life ({PAST}) and "
        f"the eol policy of gallery {FG} is deny"
    )
    for argv in (
        ["vmss", "scale", "-n", name, "--new-capacity", "2"],
        ["vmss", "reimage", "-n", name],
        ["vmss", "update-instances", "-n", name, "--instance-ids", "*"],
    ):
        code, _out, err = fleet.cli(capsys, *argv)
        assert code == ExitCode.END_OF_LIFE, (argv, err)
        assert err.strip() == refusal, argv
    assert sorted(d.name for d in fleet.hv.domains() if d.name.startswith(name)) == domains
    # what is there stays manageable: scaling in and deleting are no new deployment
    assert main(["vmss", "delete", "-n", name, "--yes", "-o", "none"]) == 0
    assert [d for d in fleet.hv.domains() if d.name.startswith(name)] == []
