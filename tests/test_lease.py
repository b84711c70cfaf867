"""Leases against a real etcd."""

from __future__ import annotations

import time

import pytest

from geventc.errors import LeaseNotFound
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
    deadline = time.monotonic() + 10
    while client.get(etcd.key("short")) is not None:
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.1)
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
