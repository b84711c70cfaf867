"""Cluster calls and failover on a real 3-member cluster."""

from __future__ import annotations

import time

import gevent
import pytest
from helpers.waiting import wait_until

from geventc import Client, PutResult
from geventc.errors import ConnectionFailed, IndeterminateWrite
from geventc.testing.plugin import EtcdTestContext

pytestmark = pytest.mark.cluster


def _client_on(etcd_cluster: EtcdTestContext, first: str, **options: object) -> Client:
    """A client whose first (current) endpoint is ``first``."""
    others = [e for e in etcd_cluster.endpoints if e != first]
    return etcd_cluster.client([first, *others], **options)  # type: ignore[no-any-return]


def test_members_status_health_version(etcd_cluster: EtcdTestContext) -> None:
    client = etcd_cluster.client()
    members = client.members()
    assert len(members) == 3
    assert {u for m in members for u in m.client_urls} == set(etcd_cluster.endpoints)
    leaders = {client.status(e).leader for e in etcd_cluster.endpoints}
    assert len(leaders) == 1 and leaders.pop() in {m.id for m in members}
    assert sum(client.status(e).is_leader for e in etcd_cluster.endpoints) == 1
    status = client.status()
    assert status.version.startswith("3.") and status.db_size > 0 and status.raft_index > 0
    for endpoint in etcd_cluster.endpoints:
        health = client.health(endpoint)
        assert health.healthy and health.endpoint == endpoint
    assert client.version().server == status.version


def test_reads_and_keepalives_survive_killing_the_used_member(
    etcd_cluster: EtcdTestContext,
) -> None:
    cluster = etcd_cluster.cluster
    used = cluster.followers()[0]
    client = _client_on(etcd_cluster, used.client_url)
    client.put(etcd_cluster.key("k"), "v")
    lease = client.grant(30)
    cluster.kill(used)
    started = time.monotonic()
    kv = client.get(etcd_cluster.key("k"))
    assert client.keepalive_once(lease) == 30
    elapsed = time.monotonic() - started
    assert kv is not None and kv.value == b"v"
    assert elapsed < 2.0, f"failover took {elapsed:.2f}s"
    assert client.transport.current_endpoint != used.client_url


def test_requests_survive_killing_the_leader(etcd_cluster: EtcdTestContext) -> None:
    cluster = etcd_cluster.cluster
    leader = cluster.leader()
    client = _client_on(etcd_cluster, leader.client_url, timeout=10)
    lease = client.grant(30)
    cluster.kill(leader)
    started = time.monotonic()
    assert client.keepalive_once(lease) == 30  # waits out the election, then renews
    client.put(etcd_cluster.key("after"), "elected")
    kv = client.get(etcd_cluster.key("after"))
    assert kv is not None and kv.value == b"elected"
    assert time.monotonic() - started < 10


def test_write_in_flight_when_member_dies_is_ok_or_indeterminate(
    etcd_cluster: EtcdTestContext,
) -> None:
    cluster = etcd_cluster.cluster
    used = cluster.followers()[0]
    client = _client_on(etcd_cluster, used.client_url, timeout=10)
    client.put(etcd_cluster.key("warm"), "connection")  # pool a connection to the member
    cluster.pause(used)  # the member accepts the request but cannot answer it
    sent = client.transport.requests
    writer = gevent.spawn(client.put, etcd_cluster.key("inflight"), "v")
    wait_until(lambda: client.transport.requests > sent, 5, "the put to be sent")
    assert not writer.ready()
    cluster.kill(used)
    writer.join(timeout=10)
    assert writer.ready()
    if writer.successful():
        assert isinstance(writer.value, PutResult)
    else:
        assert isinstance(writer.exception, IndeterminateWrite), writer.exception
    # the client moved on: a read and a new write go to a live member
    client.put(etcd_cluster.key("next"), "v")


def test_watch_survives_killing_its_member(etcd_cluster: EtcdTestContext) -> None:
    cluster = etcd_cluster.cluster
    used = cluster.followers()[0]
    client = _client_on(etcd_cluster, used.client_url, timeout=10)
    writer = etcd_cluster.client([cluster.leader().client_url])
    stream = client.watch(etcd_cluster.key("w/"), prefix=True)
    writer.put(etcd_cluster.key("w/1"), "1")
    seen = [e.kv.value for e in next(stream).events]
    cluster.kill(used)
    for i in range(2, 6):
        writer.put(etcd_cluster.key(f"w/{i}"), str(i))
    with gevent.Timeout(10):
        while len(seen) < 5:
            seen.extend(e.kv.value for e in next(stream).events)
    stream.cancel()
    assert seen == [b"1", b"2", b"3", b"4", b"5"]


def test_all_members_down_raises_connection_failed(etcd_cluster: EtcdTestContext) -> None:
    cluster = etcd_cluster.cluster
    client = etcd_cluster.client(timeout=1.0)
    for member in cluster.members:
        cluster.kill(member)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as caught:
        client.get(etcd_cluster.key("k"))
    assert time.monotonic() - started < 2.0
    assert caught.value.endpoint in etcd_cluster.endpoints
