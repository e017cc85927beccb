"""The fan-out scheduler (versions/fanout.py): who copies a region's first replica from whom,
within per-host stream limits; and regions.yaml's `replication:` section that sets them."""

from __future__ import annotations

import math
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sigvirt.errors import ConfigError
from sigvirt.hosts import regions as regions_mod
from sigvirt.versions.fanout import Fanout, FanoutGate, FanoutPolicy

pytestmark = pytest.mark.offline


def rounds(fan: Fanout, fail: frozenset[str] = frozenset()) -> list[list[tuple[str, str]]]:
    """Play the fan-out in lockstep rounds (every copy takes one unit): the copies of each."""
    out: list[list[tuple[str, str]]] = []
    while True:
        started = fan.assign()
        if not started:
            assert not fan.flying
            return out
        out.append([(a.src, a.dst) for a in started])
        for a in started:
            fan.finished(a.dst, ok=a.dst not in fail)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 99])
def test_one_stream_per_host_fills_like_a_binary_tree(n: int) -> None:
    fan = Fanout(["src"], FanoutPolicy(max_out=1, max_in=1))
    for i in range(n):
        fan.want(f"r{i}")
    played = rounds(fan)
    assert len(played) == math.ceil(math.log2(n + 1))  # sources double every round
    assert sorted(fan.sources) == sorted(["src", *(f"r{i}" for i in range(n))])
    assert sum(len(r) for r in played) == n  # each region got exactly one first copy


def test_all_from_the_source_is_what_wide_limits_give() -> None:
    fan = Fanout(["src"], FanoutPolicy(max_out=10, max_in=10))
    for i in range(5):
        fan.want(f"r{i}")
    assert rounds(fan) == [[("src", f"r{i}") for i in range(5)]]


def test_limits_count_per_host_not_per_region() -> None:
    """Two source regions on one host share its out slot; two destinations on one host
    share its in slot."""
    hosts = {"a1": "A", "a2": "A", "b1": "B", "b2": "B", "c": "C"}
    fan = Fanout(["a1", "a2"], FanoutPolicy(max_out=1, max_in=1), hosts)
    for r in ("b1", "b2", "c"):
        fan.want(r)
    first = fan.assign()
    assert [(x.src, x.dst) for x in first] == [("a1", "b1")]  # A sends one; B receives one
    assert fan.streams("A") == (1, 0) and fan.streams("B") == (0, 1)
    fan.finished("b1", ok=True)
    second = {(x.src, x.dst) for x in fan.assign()}
    # b2 is on b1's host: copied from there at once, outside the limits; c from A or B.
    assert ("b1", "b2") in second and len(second) == 2
    assert {d for _s, d in second} == {"b2", "c"}


def test_the_nearest_source_wins_then_the_least_busy() -> None:
    costs = {("far", "x"): 5.0, ("near", "x"): 1.0}
    fan = Fanout(["far", "near"], FanoutPolicy(max_out=4, max_in=4, costs=costs))
    fan.want("x")
    fan.want("y")
    got = {a.dst: a.src for a in fan.assign()}
    assert got["x"] == "near"
    assert got["y"] == "far"  # equal cost: near already sends one stream


def test_a_failed_copy_makes_no_source_and_may_be_asked_again() -> None:
    fan = Fanout(["src"], FanoutPolicy(max_out=1, max_in=1))
    fan.want("x")
    fan.assign()
    fan.finished("x", ok=False)
    assert fan.sources == ["src"] and not fan.waiting
    fan.want("x")
    assert [(b.src, b.dst) for b in fan.assign()] == [("src", "x")]


def test_no_source_at_all_is_stuck_not_a_hang() -> None:
    fan = Fanout([], FanoutPolicy())
    fan.want("x")
    assert fan.assign() == [] and fan.stuck
    assert FanoutGate(Fanout([], FanoutPolicy())).acquire("x") is None


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 30),
    out=st.integers(1, 4),
    inn=st.integers(1, 4),
    hosts=st.integers(1, 6),
    fails=st.sets(st.integers(0, 29), max_size=5),
)
def test_limits_hold_and_every_region_is_served_once_per_ask(
    n: int, out: int, inn: int, hosts: int, fails: set[int]
) -> None:
    names = [f"r{i}" for i in range(n)]
    host_of = {"src": "h0", **{r: f"h{i % hosts}" for i, r in enumerate(names)}}
    fan = Fanout(["src"], FanoutPolicy(max_out=out, max_in=inn), host_of)
    for r in names:
        fan.want(r)
    failing = {f"r{i}" for i in fails}
    while True:
        started = fan.assign()
        for h in set(host_of.values()):
            sends, receives = fan.streams(h)
            assert sends <= out and receives <= inn
        if not started:
            break
        for a in started:
            assert a.src in fan.sources and a.dst not in fan.sources
            fan.finished(a.dst, ok=a.dst not in failing)
        failing -= {a.dst for a in started}  # each fails once, then its retry succeeds
        for a in started:
            if a.dst not in fan.sources:
                fan.want(a.dst)
    assert sorted(fan.sources) == sorted(["src", *names])


def test_the_gate_serves_threads_within_the_limits() -> None:
    """Region workers as replication.run has them: one thread per region, each blocking
    until it is given a source; never more streams per host than the policy allows."""
    fan = Fanout(["src"], FanoutPolicy(max_out=2, max_in=1))
    gate = FanoutGate(fan)
    seen: list[tuple[int, int]] = []
    given: dict[str, str | None] = {}
    lock = threading.Lock()

    def worker(region: str) -> None:
        src = gate.acquire(region)
        given[region] = src
        with lock:
            seen.append(max((fan.streams(fan.host(s)) for s in [*fan.sources, region]),
                            key=lambda t: t[0]))  # fmt: skip
        time.sleep(0.02)
        gate.release(region, ok=True)

    threads = [threading.Thread(target=worker, args=(f"r{i}",)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    assert all(given[f"r{i}"] is not None for i in range(12))
    assert max(s[0] for s in seen) <= 2
    assert len(fan.sources) == 13 and not fan.flying


HEAD = """\
regions:
  a: {uri: "qemu:///system", pools: [pa]}
  b: {uri: "qemu+ssh://root@hostb/system", pools: [pb]}
"""


def test_replication_section_is_read_and_written_back() -> None:
    text = HEAD + (
        "replication:\n  max_streams_out: 3\n  max_streams_in: 1\n  direct_ssh: false\n"
        "  costs:\n    a: {b: 2.5}\n    b: {a: 4}\n"
    )
    config = regions_mod.parse(text)
    rep = config.replication
    assert (rep.max_streams_out, rep.max_streams_in, rep.direct_ssh) == (3, 1, False)
    assert dict(rep.costs) == {("a", "b"): 2.5, ("b", "a"): 4.0}
    assert regions_mod.parse(regions_mod.dump(config)).replication == rep
    assert regions_mod.parse(HEAD).replication == regions_mod.ReplicationConfig()
    assert regions_mod.ReplicationConfig().direct_ssh is True


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("replication: {max_streams_out: 0}", "replication.max_streams_out: must be 1..64"),
        ("replication: {max_streams_in: many}", "replication.max_streams_in: must be an integer"),
        ("replication: {costs: {a: {zz: 1}}}", "replication.costs.a: no region 'zz'"),
        ("replication: {costs: {zz: {a: 1}}}", "replication.costs: no region 'zz'"),
        ("replication: {costs: {a: {b: -1}}}", "replication.costs.a.b: must be 0..1000000"),
        ("replication: {costs: {a: {b: fast}}}", "replication.costs.a.b: must be a number"),
        ("replication: {streams: 2}", "unknown key 'streams'"),
        ("replication: {direct_ssh: maybe}", "replication.direct_ssh: must be true or false"),
    ],
)
def test_replication_section_errors_name_the_key(section: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        regions_mod.parse(HEAD + section + "\n")
    assert problem in err.value.message


def test_host_key_groups_regions_by_machine() -> None:
    config = regions_mod.parse(
        HEAD + '  c: {uri: "qemu+ssh://root@hostb:2222/system", pools: [pc]}\n'
        '  d: {uri: "qemu:///system", pools: [pd]}\n'
    )
    keys = {n: r.libvirt_uri.host_key for n, r in config.regions.items()}
    assert keys == {"a": "local", "b": "hostb", "c": "hostb:2222", "d": "local"}
