"""Crash means stop: a recipe whose own greenlet dies unexpectedly reports the error,
releases what it holds on the server and closes its channel; its greenlets belong to
the connector's group, so ``close()`` ends them."""

from __future__ import annotations

import time
from typing import Any

import gevent
import pytest
from helpers.waiting import wait_until

import geventc
from geventc import Channel, ElectionEvent, ElectionStatus, EphemeralKey, HealthMonitor, RecipeError
from geventc.errors import ChannelClosed
from geventc.testing.plugin import EtcdTestContext

#: how long releasing after a crash may take (Recipe.stop's bound, with room for a
#: loaded machine)
RELEASE_BOUND = 5.0


def _read_to_the_end(channel: Channel[Any], timeout: float) -> list[Any]:
    """Everything on ``channel`` until it closes; fails if it stays open."""
    deadline = time.monotonic() + timeout
    items = []
    while True:
        try:
            items.append(channel.get(timeout=max(0.01, deadline - time.monotonic())))
        except ChannelClosed:
            return items


def _fatal_crash(items: list[Any]) -> RecipeError:
    fatal = [i for i in items if isinstance(i, RecipeError) and i.fatal]
    assert len(fatal) == 1, items
    assert "crashed" in str(fatal[0].error) and "RuntimeError" in str(fatal[0].error)
    return fatal[0]


def _leads(elector: geventc.LeaderElector, timeout: float = 10.0) -> ElectionEvent:
    deadline = time.monotonic() + timeout
    while True:
        event = elector.channel.get(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(event, ElectionEvent) and event.status is ElectionStatus.LEADER:
            return event


def test_a_crashed_leader_resigns_and_another_candidate_leads(conn: geventc.Connector) -> None:
    leader = conn.leader_elector("/crash", "doomed", ttl=30)
    leader.start()
    _leads(leader)
    assert leader.lease is not None
    lease_id = leader.lease.id

    def broken() -> None:
        raise RuntimeError("a bug in the elector")

    leader._evaluate = broken  # type: ignore[method-assign]
    follower = conn.leader_elector("/crash", "next", ttl=30)
    follower.start()  # its key wakes the leader, whose evaluation crashes
    crashed = time.monotonic()
    assert _leads(follower, timeout=RELEASE_BOUND).leader == "next"
    took = time.monotonic() - crashed
    _fatal_crash(_read_to_the_end(leader.channel, RELEASE_BOUND))
    assert not leader.running
    assert [kv.value for kv in conn.get_prefix("/crash/").kvs] == [b"next"]
    wait_until(lambda: lease_id not in conn.leases(), RELEASE_BOUND, "revoking its lease")
    print(f"the next candidate led {took:.3f}s after the crash")
    follower.stop()


def test_a_crashed_ephemeral_key_releases_its_key_and_lease(
    conn: geventc.Connector, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = conn.ephemeral_key("/crash/k")
    key.create("v", ttl=30)
    (lease,) = conn.lease_keeper.leases()

    def broken(self: EphemeralKey) -> bool:
        raise RuntimeError("a bug in the ephemeral key")

    monkeypatch.setattr(EphemeralKey, "_claim", broken)
    conn.delete("/crash/k")  # the re-creation crashes
    _fatal_crash(_read_to_the_end(key.channel, RELEASE_BOUND))
    assert not key.running
    assert conn.lease_keeper.leases() == []  # its share of the lease dropped
    wait_until(lambda: lease.id not in conn.leases(), RELEASE_BOUND, "revoking the lease")
    assert conn.get("/crash/k") is None


def test_a_crashed_health_monitor_stops(
    conn: geventc.Connector, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: HealthMonitor) -> None:
        raise RuntimeError("a bug in the monitor")

    monkeypatch.setattr(HealthMonitor, "check", broken)
    monitor = conn.health_monitor()
    channel = monitor.start(interval=0.1)
    _fatal_crash(_read_to_the_end(channel, RELEASE_BOUND))
    assert not monitor.running


@pytest.mark.parametrize("end", ["stop", "close"])
def test_member_checks_end_with_the_monitor(
    etcd: EtcdTestContext, monkeypatch: pytest.MonkeyPatch, end: str
) -> None:
    checks: list[gevent.Greenlet[Any, Any]] = []

    def hanging(self: HealthMonitor, name: str, endpoint: str, timeout: float) -> None:
        checks.append(gevent.getcurrent())  # type: ignore[arg-type]
        gevent.sleep(60)  # a member that never answers, and a timeout that never fires

    monkeypatch.setattr(HealthMonitor, "_member", hanging)
    conn = geventc.connect(etcd.endpoints)
    try:
        monitor = conn.health_monitor()
        monitor.start(interval=60)
        wait_until(lambda: bool(checks), 5, "a member check")
        monitor.stop() if end == "stop" else conn.close()
        wait_until(lambda: all(g.dead for g in checks), RELEASE_BOUND, "ending the checks")
    finally:
        conn.close()


def test_a_crashed_shared_watch_restarts_and_later_subscribers_get_its_state(
    conn: geventc.Connector, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a PrefixWatch that met a non-EtcdError exception ended while the hub kept it, so
    # later subscribers of that prefix got nothing
    from geventc.watch import PrefixWatch

    conn.put("/w/a", "1")
    crashes = []
    follow = PrefixWatch._follow

    def crash_once(self: PrefixWatch) -> None:
        if not crashes:
            crashes.append(self)
            raise RuntimeError("a bug in the watch")
        follow(self)

    monkeypatch.setattr(PrefixWatch, "_follow", crash_once)
    reports: list[Any] = []
    conn.hub.subscribe(b"/w/", reports.append)  # sees every update, unlike a snapshot channel
    first = conn.service_tracker("/w")
    first.start()
    wait_until(lambda: bool(crashes), 5, "the crash")
    wait_until(lambda: any(u.error is not None for u in reports), 5, "the crash's report")
    conn.put("/w/b", "2")
    later = conn.service_tracker("/w")
    later.start()
    for tracker in (first, later):
        wait_until(lambda t=tracker: dict(t.services) == {"a": "1", "b": "2"}, 10, "the put")
    assert conn.hub.streams == 1
