"""Replication as data: `--target-regions` parsing and plan() (pure, no libvirt)."""

from __future__ import annotations

import dataclasses
import shlex
import time
from pathlib import Path

import pytest

from sigvirt.catalog.records import (
    ImageVersion,
    Replica,
    ReplicaState,
    VersionState,
    aggregate,
)
from sigvirt.catalog.store import GalleryStore
from sigvirt.context import Context
from sigvirt.errors import ExitCode, InvalidArgument, NotFound
from sigvirt.hosts.regions import PoolConfig, RegionConfig, RegionsConfig
from sigvirt.versions import replication, targets
from sigvirt.versions.dependents import Dependent
from sigvirt.versions.targets import Plan, parse_targets, plan

pytestmark = pytest.mark.offline


def _region(name: str, *pools: str) -> RegionConfig:
    return RegionConfig(name, "test:///default", tuple(PoolConfig(p) for p in pools))


CONFIG = RegionsConfig(
    None,
    Path("/nonexistent"),
    {
        "local": _region("local", "la", "lb"),
        "east": _region("east", "ea", "eb", "ec"),
        "westcentralus": _region("westcentralus", "wa"),
    },
)


# -- parse_targets ----------------------------------------------------------------------------
def test_targets_take_counts_and_the_default_replica_count() -> None:
    got = parse_targets(["local", "east=3"], 2, "local", CONFIG)
    assert got == {"local": 2, "east": 3}


def test_targets_default_count_is_one() -> None:
    assert parse_targets(["east"], None, "local", CONFIG) == {"east": 1, "local": 1}


def test_source_region_is_always_a_target() -> None:
    assert parse_targets(["east=2"], None, "local", CONFIG) == {"east": 2, "local": 1}
    assert parse_targets(None, None, "local", CONFIG) == {"local": 1}
    assert parse_targets(["east=2"], 3, "local", CONFIG) == {"east": 2, "local": 3}


@pytest.mark.parametrize(
    "written", ["West Central US", "westcentralus", "WestCentralUS", "west central us"]
)
def test_azure_display_names_find_the_region(written: str) -> None:
    got = parse_targets([f"{written}=2"], None, "local", CONFIG)
    assert got == {"westcentralus": 2, "local": 1}


def test_source_region_display_name_is_normalized_too() -> None:
    got = parse_targets(["East"], None, "West Central US", CONFIG)
    assert got == {"east": 1, "westcentralus": 1}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("east=0", "--target-regions 'east=0': replica count must be 1..100"),
        ("east=101", "--target-regions 'east=101': replica count must be 1..100"),
        ("east=x", "--target-regions 'east=x': the count after '=' must be a number"),
        ("east=", "--target-regions 'east=': the count after '=' must be a number"),
        ("east=-1", "--target-regions 'east=-1': the count after '=' must be a number"),
        ("east=1.5", "--target-regions 'east=1.5': the count after '=' must be a number"),
    ],
)
def test_bad_counts_are_refused(item: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_targets([item], None, "local", CONFIG)
    assert err.value.message == message
    assert err.value.exit_code == ExitCode.INVALID_ARGUMENT


@pytest.mark.parametrize("count", [0, -1, 101])
def test_bad_replica_count_is_refused(count: int) -> None:
    with pytest.raises(InvalidArgument, match=r"--replica-count must be 1\.\.100"):
        parse_targets(["east"], count, "local", CONFIG)


def test_unknown_region_names_the_known_ones() -> None:
    with pytest.raises(NotFound) as err:
        parse_targets(["mars=2"], None, "local", CONFIG)
    assert err.value.message == "region 'mars' not found (known: local, east, westcentralus)"


def test_update_without_regions_keeps_current_targets() -> None:
    current = {"local": 2, "east": 3}
    assert parse_targets(None, None, "local", CONFIG, current) == current
    # --replica-count alone sets every current region's count, as az does
    assert parse_targets(None, 1, "local", CONFIG, current) == {"local": 1, "east": 1}


def test_update_with_regions_replaces_the_list() -> None:
    got = parse_targets(["east=2"], None, "local", CONFIG, {"local": 2, "east": 3})
    assert got == {"east": 2, "local": 1}


# -- plan -------------------------------------------------------------------------------------
def _version(*replicas: tuple[str, int, ReplicaState]) -> ImageVersion:
    """A version with replicas given as (region, index, state)."""
    rec = ImageVersion("g", "d", "1.0.0", state=VersionState.SUCCEEDED, source_region="local")
    reps = []
    for region, index, state in replicas:
        vol = targets.volume_name(rec, region, index)
        pools = CONFIG.region(region).pools
        pool = pools[index % len(pools)].name
        reps.append(Replica(region, pool, vol, f"/{region}/{pool}/{vol}", state=state))
    return dataclasses.replace(rec, replicas=tuple(reps))


def _paths(region: str, pool: str) -> Path:
    return Path(f"/{region}/{pool}")


def _summary(p: Plan) -> tuple[list[tuple[str, str, str]], list[str]]:
    return (
        [(r.region, r.pool, r.volume) for r in p.add],
        [r.volume for r in p.remove],
    )


def test_plan_adds_round_robin_over_the_pools() -> None:
    rec = _version(("local", 0, ReplicaState.COMPLETED))
    p = plan(rec, {"local": 2, "east": 4}, CONFIG, {}, _paths)
    added, removed = _summary(p)
    assert added == [
        ("local", "lb", "g-d-1.0.0-local-1.qcow2"),
        ("east", "ea", "g-d-1.0.0-east-0.qcow2"),
        ("east", "eb", "g-d-1.0.0-east-1.qcow2"),
        ("east", "ec", "g-d-1.0.0-east-2.qcow2"),
        ("east", "ea", "g-d-1.0.0-east-3.qcow2"),
    ]
    assert removed == []
    assert p.add[0].path == "/local/lb/g-d-1.0.0-local-1.qcow2"
    assert all(r.state == ReplicaState.PENDING for r in p.add)
    assert p.targets == {"local": 2, "east": 4}


def test_plan_fills_the_lowest_free_index() -> None:
    rec = _version(("local", 0, ReplicaState.COMPLETED), ("local", 2, ReplicaState.COMPLETED))
    added, _ = _summary(plan(rec, {"local": 4}, CONFIG, {}, _paths))
    assert [v for _r, _p, v in added] == ["g-d-1.0.0-local-1.qcow2", "g-d-1.0.0-local-3.qcow2"]


def test_plan_keeps_the_index_of_a_replica_being_deleted() -> None:
    rec = _version(("local", 0, ReplicaState.COMPLETED), ("local", 1, ReplicaState.DELETING))
    added, removed = _summary(plan(rec, {"local": 2}, CONFIG, {}, _paths))
    assert [v for _r, _p, v in added] == ["g-d-1.0.0-local-2.qcow2"]
    assert removed == []


def test_plan_without_a_reachable_pool_records_no_path() -> None:
    p = plan(
        _version(("local", 0, ReplicaState.COMPLETED)), {"local": 1, "east": 1}, CONFIG, {}, None
    )
    assert p.add[0].path == ""
    p = plan(
        _version(("local", 0, ReplicaState.COMPLETED)),
        {"local": 1, "east": 1},
        CONFIG,
        {},
        lambda r, q: None,
    )
    assert p.add[0].path == ""


def test_plan_removes_unfinished_replicas_first_then_the_highest_index() -> None:
    rec = _version(
        ("east", 0, ReplicaState.COMPLETED),
        ("east", 1, ReplicaState.COMPLETED),
        ("east", 2, ReplicaState.FAILED),
        ("east", 3, ReplicaState.COMPLETED),
    )
    _, removed = _summary(plan(rec, {"local": 0, "east": 2}, CONFIG, {}, _paths))
    assert removed == ["g-d-1.0.0-east-2.qcow2", "g-d-1.0.0-east-3.qcow2"]


def test_plan_removes_a_region_no_longer_targeted() -> None:
    rec = _version(
        ("local", 0, ReplicaState.COMPLETED),
        ("east", 0, ReplicaState.COMPLETED),
        ("east", 1, ReplicaState.PENDING),
    )
    p = plan(rec, {"local": 1}, CONFIG, {}, _paths)
    assert _summary(p) == ([], ["g-d-1.0.0-east-1.qcow2", "g-d-1.0.0-east-0.qcow2"])
    assert p.blocked == ()


def test_plan_never_removes_a_replica_with_dependents() -> None:
    rec = _version(
        ("east", 0, ReplicaState.COMPLETED),
        ("east", 1, ReplicaState.COMPLETED),
        ("east", 2, ReplicaState.COMPLETED),
    )
    on_2 = Dependent("volume", "ea/clone.qcow2", rec.replicas[2].path)
    p = plan(rec, {"local": 0, "east": 2}, CONFIG, {on_2.replica: [on_2]}, _paths)
    assert _summary(p) == ([], ["g-d-1.0.0-east-1.qcow2"])
    assert p.blocked == ()


def test_plan_lists_what_blocks_a_reduction_below_the_depended_on_replicas() -> None:
    rec = _version(
        ("east", 0, ReplicaState.COMPLETED),
        ("east", 1, ReplicaState.COMPLETED),
        ("east", 2, ReplicaState.COMPLETED),
    )
    on_0 = Dependent("domain", "vm1", rec.replicas[0].path)
    on_2 = Dependent("volume", "eb/clone.qcow2", rec.replicas[2].path)
    deps = {on_0.replica: [on_0], on_2.replica: [on_2]}
    p = plan(rec, {"east": 1}, CONFIG, deps, _paths)
    assert p.blocked == (on_0, on_2)
    err = replication.blocked_error(rec, p.blocked)
    assert err.exit_code == ExitCode.HAS_DEPENDENTS
    assert err.message == (
        "image version g/d/1.0.0: can't remove replicas that clones depend on: "
        "domain vm1 (on g-d-1.0.0-east-0.qcow2), volume eb/clone.qcow2 (on g-d-1.0.0-east-2.qcow2)"
    )


def test_plan_is_empty_when_counts_match() -> None:
    rec = _version(("local", 0, ReplicaState.COMPLETED), ("east", 0, ReplicaState.FAILED))
    p = plan(rec, {"local": 1, "east": 1}, CONFIG, {}, _paths)
    assert p.empty


def test_retired_replicas_reach_deleting_from_any_state() -> None:
    for state in (ReplicaState.PENDING, ReplicaState.FAILED, ReplicaState.COMPLETED):
        r = _version(("local", 0, state)).replicas[0]
        assert replication.retire(r).state == ReplicaState.DELETING
    copying = _version(("local", 0, ReplicaState.PENDING)).replicas[0].moved(ReplicaState.COPYING)
    assert replication.retire(copying).state == ReplicaState.DELETING


def test_aggregate_states() -> None:
    rec = _version(
        ("local", 0, ReplicaState.COMPLETED),
        ("east", 0, ReplicaState.COMPLETED),
        ("east", 1, ReplicaState.FAILED),
    )
    rec = dataclasses.replace(rec, target_regions={"local": 1, "east": 2})
    rec = dataclasses.replace(
        rec,
        replicas=tuple(
            dataclasses.replace(r, reason="boom") if r.state == ReplicaState.FAILED else r
            for r in rec.replicas
        ),
    )
    agg, rows = aggregate(rec)
    assert agg == "Failed"
    assert [(r.region, r.state, r.completed, r.wanted) for r in rows] == [
        ("local", "Completed", 1, 1),
        ("east", "Failed", 1, 2),
    ]
    assert rows[1].details == "g-d-1.0.0-east-1.qcow2: boom"


def test_wait_gives_up_when_no_replicator_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = GalleryStore(tmp_path)
    rec = _version(("local", 0, ReplicaState.COMPLETED), ("local", 1, ReplicaState.PENDING))
    (store.versions_dir("g", "d")).mkdir(parents=True)
    store.put_version(rec)
    monkeypatch.setattr(replication, "REPLICATOR_GONE_AFTER", 0.3)
    ctx = Context(store=store, regions=CONFIG)
    start = time.monotonic()
    with pytest.raises(replication.StillReplicating) as err:
        replication.wait(ctx, rec, timeout=60, poll=0.1)
    assert time.monotonic() - start < 5
    assert err.value.exit_code == ExitCode.CONFLICT
    assert "no replicator is running" in err.value.message
    assert err.value.message.startswith("image version g/d/1.0.0: 1 replica(s) unfinished")


def test_wait_returns_when_nothing_is_left(tmp_path: Path) -> None:
    store = GalleryStore(tmp_path)
    rec = _version(("local", 0, ReplicaState.COMPLETED), ("east", 0, ReplicaState.FAILED))
    store.versions_dir("g", "d").mkdir(parents=True)
    store.put_version(rec)
    ctx = Context(store=store, regions=CONFIG)
    assert replication.wait(ctx, rec, timeout=1) == rec


def test_the_update_hint_keeps_every_other_region() -> None:
    """A hint is a command a user pastes: `--target-regions` replaces the whole list, so the
    hint must name every region the version has, or pasting it deletes replicas."""
    rec = dataclasses.replace(_version(), target_regions={"local": 2, "east": 3})
    hint = targets.update_command(rec, "westcentralus", 1)
    argv = shlex.split(hint)
    assert argv[:4] == ["sigvirt", "sig", "image-version", "update"]
    listed = argv[argv.index("--target-regions") + 1 :]
    assert parse_targets(listed, None, "local", CONFIG) == {
        "local": 2,
        "east": 3,
        "westcentralus": 1,
    }
