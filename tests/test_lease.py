"""Leases against a real etcd."""

from __future__ import annotations

import time

import pytest
from gevent.event import Event
from helpers.waiting import wait_until

import geventc
from geventc.errors import LeaseNotFound
from geventc.lease import KeptLease, LeaseState
from geventc.testing import EtcdServer
from geventc.testing.plugin import EtcdTestContext


def test_grant_keepalive_time_to_live_revoke(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    lease = client.grant(30)
    assert lease.ttl == 30 and lease.id > 0
    client.put(etcd.key("leased"), "v", lease=lease)
    assert client.keepalive_once(lease.id) == 30
    info = client.time_to_live(lease, keys=True)
    assert info.granted_ttl == 30 and 0 < info.ttl <= 30
    assert info.keys == (etcd.key("leased").encode(),)
    assert lease.id in client.leases()
    kv = client.get(etcd.key("leased"))
    assert kv is not None and kv.lease == lease.id
    client.revoke(lease)
    assert client.get(etcd.key("leased")) is None
    assert lease.id not in client.leases()


def test_chosen_lease_id(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    wanted = 0x1234_5678_9ABC_DEF0 + (time.monotonic_ns() % 1000)
    lease = client.grant(10, lease_id=wanted)
    assert lease.id == wanted
    client.revoke(wanted)


def test_expired_lease_raises_lease_not_found(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    lease = client.grant(2)
    client.put(etcd.key("short"), "v", lease=lease.id)
    wait_until(
        lambda: client.get(etcd.key("short")) is None, 10, "the lease to expire", interval=0.1
    )
    with pytest.raises(LeaseNotFound):
        client.keepalive_once(lease.id)
    with pytest.raises(LeaseNotFound):
        client.time_to_live(lease.id)
    with pytest.raises(LeaseNotFound):
        client.revoke(lease.id)
    with pytest.raises(LeaseNotFound):
        client.put(etcd.key("late"), "v", lease=lease.id)


def test_unknown_lease(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    with pytest.raises(LeaseNotFound):
        client.keepalive_once(0x7EEDBEEF)


def test_invalidate_replaces_the_lease_at_once(etcd: EtcdTestContext) -> None:
    """A holder that learns the lease is gone (LeaseNotFound on a write) invalidates it:
    holders hear LOST, then ACTIVE with a new lease, without waiting for a renewal."""
    with geventc.connect(etcd.endpoints) as conn:
        heard: list[tuple[LeaseState, int]] = []
        changed = Event()

        def listener(lease: KeptLease, state: LeaseState) -> None:
            heard.append((state, lease.id))
            changed.set()

        lease = conn.lease_keeper.acquire(60, listener)
        old = lease.id
        lease.invalidate(old + 1)  # not its id: ignored
        assert lease.valid and lease.id == old and heard == []
        conn.revoke(old)
        started = time.monotonic()
        lease.invalidate(old)
        assert not lease.valid  # at once
        deadline = started + 5
        while len(heard) < 2:
            assert changed.wait(max(0.01, deadline - time.monotonic())), heard
            changed.clear()
        assert heard == [(LeaseState.LOST, old), (LeaseState.ACTIVE, lease.id)]
        assert lease.id != old and lease.valid and lease.was_held(old)
        assert time.monotonic() - started < 2.0  # not a renewal period (20 s) later
        assert conn.time_to_live(lease.id).granted_ttl == 60
        renewed = lease.id
        conn.lease_keeper.release(lease, listener)  # the last holder: revoked
        assert lease.state is LeaseState.CLOSED and renewed not in conn.leases()


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_holders_hear_suspended_on_time_then_lost(private_server: EtcdServer, fault: str) -> None:
    """SUSPENDED at most TTL/3 + grace after the last renewal that succeeded was sent,
    even with a request timeout longer than the TTL; LOST TTL seconds after it."""
    ttl = 5
    heard: list[tuple[LeaseState, float]] = []
    changed = Event()

    def listener(lease: KeptLease, state: LeaseState) -> None:
        heard.append((state, time.monotonic()))
        changed.set()

    with geventc.connect(private_server.endpoints, timeout=30.0) as conn:
        lease = conn.lease_keeper.acquire(ttl, listener)
        renewals = lease.renewals
        wait_until(lambda: lease.renewals != renewals, ttl, "a renewal", interval=0.005)
        (private_server.kill if fault == "kill" else private_server.pause)(0)
        failed = time.monotonic()
        try:
            while LeaseState.LOST not in [state for state, _ in heard]:
                assert changed.wait(max(0.01, failed + ttl + 5 - time.monotonic())), heard
                changed.clear()
        finally:
            private_server.resume(0)
        (suspended, at), (lost, lost_at) = heard[:2]
        assert (suspended, lost) == (LeaseState.SUSPENDED, LeaseState.LOST), heard
        print(f"{fault}: SUSPENDED after {at - failed:.2f}s, LOST after {lost_at - failed:.2f}s")
        assert at - failed < ttl / 3 + lease.grace + 1.0
        assert ttl - 0.5 < lost_at - failed < ttl + 1.0
        assert not lease.valid
