"""The HealthMonitor recipe against real etcd servers and clusters."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from helpers.waiting import wait_until

import geventc
from geventc import (
    Channel,
    ClusterHealth,
    ClusterStatus,
    Connector,
    HealthMonitor,
    MemberHealth,
    RecipeError,
)
from geventc.errors import (
    ChannelClosed,
    ChannelTimeout,
    ClientClosed,
    InvalidArgument,
    RecipeStateError,
)
from geventc.testing import EtcdCluster
from geventc.testing.plugin import EtcdTestContext
from geventc.testing.server import free_port

Feed = Channel[ClusterHealth | RecipeError]
Signature = tuple[ClusterStatus, tuple[tuple[str, str, bool, bool], ...]]

#: Recipe.stop() is bounded by stop_timeout (1 s); room for a slow machine.
STOP_BOUND = 4.5


@pytest.fixture
def connectors() -> Iterator[Callable[..., Connector]]:
    """Makes connectors and closes them after the test."""
    made: list[Connector] = []

    def make(endpoints: Any, **options: Any) -> Connector:
        conn = geventc.connect(endpoints, **options)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


def _signature(health: ClusterHealth) -> Signature:
    return (
        health.status,
        tuple((m.name, m.endpoint, m.healthy, m.leader) for m in health.members),
    )


def _wait_for(
    channel: Feed,
    wanted: Callable[[ClusterHealth], bool],
    seen: list[ClusterHealth],
    timeout: float = 15.0,
) -> ClusterHealth:
    """Read results into ``seen`` until one is ``wanted``; fails on a RecipeError, a
    closed channel or the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise ChannelTimeout(f"nothing wanted within {timeout}s")
            item = channel.get(timeout=remaining)
        except (ChannelTimeout, ChannelClosed) as exc:
            pytest.fail(f"no wanted result ({exc!r}); got {[h.status.name for h in seen]}")
        assert isinstance(item, ClusterHealth), f"the monitor reported {item!r}"
        seen.append(item)
        if wanted(item):
            return item


def _count_checks(monitor: HealthMonitor) -> list[float]:
    """When each of ``monitor``'s checks from now on started."""
    started: list[float] = []
    check = monitor.check

    def counted() -> ClusterHealth:
        started.append(time.monotonic())
        return check()

    monitor.check = counted  # type: ignore[method-assign]
    return started


def _is(status: ClusterStatus) -> Callable[[ClusterHealth], bool]:
    return lambda health: health.status is status


def _assert_only_changes(seen: list[ClusterHealth]) -> None:
    signatures = [_signature(h) for h in seen]
    for before, after in itertools.pairwise(signatures):
        assert before != after, f"the same result was emitted twice: {after}"


def _by_endpoint(health: ClusterHealth) -> dict[str, MemberHealth]:
    return {m.endpoint: m for m in health.members}


def _assert_stops_quickly(monitor: HealthMonitor, channel: Feed) -> None:
    started = time.monotonic()
    monitor.stop()
    assert time.monotonic() - started < STOP_BOUND
    assert not monitor.running and channel.closed
    reader = gevent.spawn(list, channel)
    assert isinstance(reader.get(timeout=1), list)  # iteration ends


# --- one server --------------------------------------------------------------------------


def test_once_emits_one_result_then_closes(
    etcd: EtcdTestContext, connectors: Callable[..., Connector]
) -> None:
    conn = connectors(etcd.endpoints)
    monitor = conn.health_monitor()
    assert isinstance(monitor, HealthMonitor)
    channel = monitor.start(once=True)
    result = channel.get(timeout=10)
    assert isinstance(result, ClusterHealth) and result.status is ClusterStatus.HEALTHY
    (member,) = result.members
    assert member == MemberHealth(member.name, etcd.endpoint, True, True, "")
    with pytest.raises(ChannelClosed):
        channel.get(timeout=5)  # closed after the one result, not merely quiet
    assert list(channel) == [] and not monitor.running
    started = time.monotonic()
    monitor.stop()
    monitor.stop()
    assert time.monotonic() - started < 1.0


def test_context_manager_starts_and_stops(
    etcd: EtcdTestContext, connectors: Callable[..., Connector]
) -> None:
    conn = connectors(etcd.endpoints)
    with conn.health_monitor() as monitor:
        assert monitor.running
        result = monitor.channel.get(timeout=10)
        assert isinstance(result, ClusterHealth) and result.status is ClusterStatus.HEALTHY
    assert not monitor.running
    assert list(monitor.channel) == []


def test_a_second_start_raises(etcd: EtcdTestContext, connectors: Callable[..., Connector]) -> None:
    conn = connectors(etcd.endpoints)
    monitor = conn.health_monitor()
    channel = monitor.start(interval=0.2)
    with pytest.raises(RecipeStateError):
        monitor.start()
    with pytest.raises(RecipeStateError):
        monitor.start(once=True, interval=1)
    assert monitor.channel is channel
    assert isinstance(channel.get(timeout=10), ClusterHealth)
    _assert_stops_quickly(monitor, channel)
    with pytest.raises(RecipeStateError):
        monitor.start()


@pytest.mark.parametrize(
    "options",
    [
        {"interval": 0},
        {"interval": -1},
        {"interval": 0.0},
        {"interval": True},
        {"interval": False},
        {"interval": "1"},
        {"interval": None},
        {"interval": float("nan")},
        {"interval": float("inf")},
        {"once": 1},
        {"once": "yes"},
        {"once": None},
    ],
    ids=repr,
)
def test_bad_arguments_raise_before_starting(
    etcd: EtcdTestContext, connectors: Callable[..., Connector], options: dict[str, Any]
) -> None:
    conn = connectors(etcd.endpoints)
    with pytest.raises(InvalidArgument):  # where the settings live now
        conn.health_monitor(**options)
    monitor = conn.health_monitor(once=True)
    if None not in options.values():  # the deprecated way; None means "not given"
        with pytest.warns(DeprecationWarning), pytest.raises(InvalidArgument):
            monitor.start(**options)
    assert not monitor.running
    channel = monitor.start()  # nothing was started: a good start works
    assert isinstance(channel.get(timeout=10), ClusterHealth)


# --- nothing reachable -------------------------------------------------------------------


def _dead_endpoints(count: int = 2) -> list[str]:
    return [f"http://127.0.0.1:{free_port()}" for _ in range(count)]


def test_unreachable_cluster_is_unhealthy_and_stop_is_bounded(
    connectors: Callable[..., Connector],
) -> None:
    dead = _dead_endpoints()
    conn = connectors(dead, timeout=1.0, connect_timeout=0.5)
    monitor = conn.health_monitor()
    channel = monitor.start(interval=0.2)
    seen: list[ClusterHealth] = []
    result = _wait_for(channel, lambda h: True, seen, timeout=10)
    assert result.status is ClusterStatus.UNHEALTHY
    assert result.members
    assert all(not m.healthy and not m.leader and m.error for m in result.members)
    assert {m.endpoint for m in result.members} <= set(dead)
    _assert_stops_quickly(monitor, channel)


def test_stop_is_bounded_while_a_check_waits_on_dead_endpoints(
    connectors: Callable[..., Connector],
) -> None:
    conn = connectors(_dead_endpoints(), timeout=30.0)  # a check may retry for 30 s
    monitor = conn.health_monitor()
    channel = monitor.start(once=True)
    gevent.idle()  # the check is under way
    assert channel.get_nowait() is None
    _assert_stops_quickly(monitor, channel)


def test_check_of_a_closed_connector_raises(
    etcd: EtcdTestContext, connectors: Callable[..., Connector]
) -> None:
    conn = connectors(etcd.endpoints)
    monitor = conn.health_monitor()
    conn.close()
    with pytest.raises(ClientClosed):
        monitor.start(once=True)


# --- the 3-member cluster ----------------------------------------------------------------


@pytest.mark.cluster
def test_healthy_cluster_has_every_member_and_one_leader(
    etcd_cluster: EtcdTestContext, connectors: Callable[..., Connector]
) -> None:
    cluster = etcd_cluster.cluster
    conn = connectors(etcd_cluster.endpoints)
    result = conn.health_monitor().start(once=True).get(timeout=10)
    assert isinstance(result, ClusterHealth)
    assert result.status is ClusterStatus.HEALTHY
    assert {m.endpoint for m in result.members} == set(etcd_cluster.endpoints)
    assert {m.name for m in result.members} == {m.name for m in cluster.members}
    assert all(m.healthy and m.error == "" for m in result.members)
    (leader,) = [m for m in result.members if m.leader]
    assert leader.endpoint == cluster.leader().client_url


@pytest.mark.cluster
def test_one_endpoint_is_enough_to_check_every_member(
    etcd_cluster: EtcdTestContext, connectors: Callable[..., Connector]
) -> None:
    cluster = etcd_cluster.cluster
    given = cluster.followers()[0]
    conn = connectors([given.client_url], timeout=2.0)
    monitor = conn.health_monitor()
    channel = monitor.start(interval=0.1)
    seen: list[ClusterHealth] = []
    first = _wait_for(channel, _is(ClusterStatus.HEALTHY), seen)
    assert {m.endpoint for m in first.members} == set(etcd_cluster.endpoints)
    # the given endpoint dies: the members it listed are still checked
    cluster.kill(given)
    degraded = _wait_for(channel, _is(ClusterStatus.DEGRADED), seen)
    members = _by_endpoint(degraded)
    assert set(members) == set(etcd_cluster.endpoints)
    assert not members[given.client_url].healthy and members[given.client_url].error
    assert sum(m.healthy for m in degraded.members) == 2
    assert [s.status for s in seen] == [ClusterStatus.HEALTHY, ClusterStatus.DEGRADED]
    _assert_stops_quickly(monitor, channel)


@pytest.mark.cluster
def test_killed_member_degrades_then_heals(
    etcd_cluster: EtcdTestContext, connectors: Callable[..., Connector]
) -> None:
    cluster = etcd_cluster.cluster
    conn = connectors(etcd_cluster.endpoints)
    monitor = conn.health_monitor()
    channel = monitor.start(interval=0.1)
    seen: list[ClusterHealth] = []
    _wait_for(channel, _is(ClusterStatus.HEALTHY), seen)
    victim = cluster.followers()[0]
    cluster.kill(victim)
    degraded = _wait_for(channel, _is(ClusterStatus.DEGRADED), seen)
    members = _by_endpoint(degraded)
    assert not members[victim.client_url].healthy and members[victim.client_url].error
    assert not members[victim.client_url].leader
    assert sum(m.healthy for m in degraded.members) == 2
    assert sum(m.leader for m in degraded.members) == 1
    cluster.restart(victim)
    healed = _wait_for(channel, _is(ClusterStatus.HEALTHY), seen)
    assert all(m.healthy for m in healed.members)
    assert sum(m.leader for m in healed.members) == 1
    # a steady cluster emits nothing more: only changes are sent
    checks = _count_checks(monitor)
    wait_until(lambda: len(checks) > 10, 15, "ten more checks")  # the tenth was handled
    extra = channel.get_nowait()
    assert extra is None, f"an unchanged result was emitted again: {extra}"
    _assert_only_changes(seen)
    assert ClusterStatus.UNHEALTHY not in {h.status for h in seen}
    _assert_stops_quickly(monitor, channel)


@pytest.mark.cluster
def test_two_killed_members_make_the_cluster_unhealthy(
    etcd_cluster: EtcdTestContext, connectors: Callable[..., Connector]
) -> None:
    cluster = etcd_cluster.cluster
    conn = connectors(etcd_cluster.endpoints, timeout=2.0)
    monitor = conn.health_monitor()
    channel = monitor.start(interval=0.1)
    seen: list[ClusterHealth] = []
    _wait_for(channel, _is(ClusterStatus.HEALTHY), seen)
    killed = cluster.followers()
    for member in killed:
        cluster.kill(member)
    unhealthy = _wait_for(channel, _is(ClusterStatus.UNHEALTHY), seen)
    members = _by_endpoint(unhealthy)
    assert set(members) == set(etcd_cluster.endpoints)
    assert all(not members[m.client_url].healthy for m in killed)
    assert sum(m.healthy for m in unhealthy.members) <= 1
    _assert_only_changes(seen)
    _assert_stops_quickly(monitor, channel)


# --- a member that was added but has not started ---------------------------------------


@pytest.fixture
def private_cluster() -> Iterator[EtcdCluster]:
    """A 3-member cluster of this test alone (it changes the membership)."""
    cluster = EtcdCluster(3, fsync=False, extra_args=["--strict-reconfig-check=false"])
    with cluster:
        yield cluster
        for member in cluster.members:  # thrown away: no need for a graceful shutdown
            cluster.kill(member)


def test_added_member_that_has_not_started_degrades_the_cluster(
    private_cluster: EtcdCluster, connectors: Callable[..., Connector]
) -> None:
    conn = connectors(private_cluster.endpoints)
    before = conn.health_monitor().start(once=True).get(timeout=10)
    assert isinstance(before, ClusterHealth) and before.status is ClusterStatus.HEALTHY
    peer = f"http://127.0.0.1:{free_port()}"
    added = private_cluster.admin("/v3/cluster/member/add", {"peerURLs": [peer]})
    try:
        after = conn.health_monitor().start(once=True).get(timeout=10)
        assert isinstance(after, ClusterHealth)
        assert after.status is ClusterStatus.DEGRADED  # 3 of 4 members: a bare quorum
        assert len(after.members) == 4
        (waiting,) = [m for m in after.members if m.endpoint not in private_cluster.endpoints]
        assert not waiting.healthy and waiting.error
    finally:
        private_cluster.admin("/v3/cluster/member/remove", {"ID": added["member"]["ID"]})
