"""``conn.stats()`` / ``client.stats()``: counters and gauges moved by real operations
and real faults against a real etcd (a refused endpoint, a blackholed member, a revoked
lease, a compaction)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import gevent
import pytest
from helpers.waiting import wait_until

import geventc
from geventc.errors import Compacted, LeaseNotFound
from geventc.lease import KeptLease, LeaseState
from geventc.stats import BATCH_BUCKETS, Stats
from geventc.testing import EtcdServer, FaultProxy, free_port
from geventc.testing.plugin import EtcdTestContext


def test_requests_errors_and_coalesced_batches_are_counted(conn: geventc.Connector) -> None:
    before = conn.stats()
    assert isinstance(before, Stats)
    for i in range(3):
        conn.put(f"k{i}", "v")  # one after the other: each its own request
    assert conn.get("k0") is not None
    with pytest.raises(LeaseNotFound):
        conn.revoke(0x5EED)  # etcd refuses it
    gevent.joinall([gevent.spawn(conn.put, f"many/{i}", "v") for i in range(40)], raise_error=True)

    after = conn.stats()
    moved = {p: n - before.requests_by_path.get(p, 0) for p, n in after.requests_by_path.items()}
    assert moved["/v3/kv/put"] >= 3
    assert moved["/v3/kv/range"] == 1
    assert moved["/v3/lease/revoke"] == 1
    assert after.requests == before.requests + sum(moved.values())
    assert after.errors == {"LeaseNotFound": 1}
    assert after.error_count == 1
    # 40 concurrent puts: all but the first (sent alone) go in coalesced txns
    assert after.batches >= 1 and 2 * after.batches <= after.batched_ops <= 39
    assert moved["/v3/kv/txn"] == after.batches
    assert sum(count for _, count in after.batch_sizes) == after.batches
    assert [bound for bound, _ in after.batch_sizes] == [*BATCH_BUCKETS, float("inf")]
    assert after.batch_sizes[0][1] == 0  # a batch of one is sent as the plain request
    assert after.failovers == after.retries == 0
    assert after.endpoint == conn.endpoints[0]
    # a snapshot: frozen, read-only, unchanged by later work
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.requests = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        after.errors["Timeout"] = 1  # type: ignore[index]
    conn.put("k0", "w")
    assert conn.stats().requests == after.requests + 1
    assert conn.client.stats().requests == after.requests + 1
    assert after.requests_by_path == {p: n for p, n in after.requests_by_path.items()}


def test_recipes_watches_and_leases_are_gauged_until_close(etcd: EtcdTestContext) -> None:
    conn = geventc.connect(etcd.endpoints, namespace=etcd.prefix.strip("/"))
    first = conn.ephemeral_key("/svc/a")
    first.create("a", ttl=5)
    second = conn.ephemeral_key("/svc/b")
    second.create("b", ttl=5)
    tracker = conn.service_tracker("/svc")
    tracker.start()
    observer = conn.observer("/cfg", prefix=True)
    observer.start()
    wait_until(lambda: conn.stats().watch_streams_open == 2, 5, "both watches confirmed")

    live = conn.stats()
    assert live.recipes == {"EphemeralKey": 2, "ServiceTracker": 1, "Observer": 1}
    assert live.leases_kept == 1 and live.lease_grants == 1  # one shared lease per TTL
    assert live.prefix_watches == 1 and live.stale_watches == 0
    assert live.watch_streams_opened == 2 and live.watch_restarts == 0
    assert conn.client.stats().recipes == {}  # a bare client has no recipes

    second.delete()
    observer.stop()
    after_stops = conn.stats()
    assert after_stops.recipes == {"EphemeralKey": 1, "ServiceTracker": 1}
    assert after_stops.watch_streams_open == 1

    assert conn.close()
    closed = conn.stats()
    assert closed.recipes == {}
    assert closed.leases_kept == closed.watch_streams_open == closed.prefix_watches == 0
    assert closed.watch_streams_opened == 2


def test_a_revoked_lease_counts_its_renewals_its_loss_and_its_replacement(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    states: list[LeaseState] = []

    def holder(_: KeptLease, state: LeaseState) -> None:
        states.append(state)

    lease = conn.lease_keeper.acquire(2, holder)
    wait_until(lambda: conn.stats().lease_renewals >= 1, 5, "a renewal")
    lost = lease.id
    other.revoke(lost)
    wait_until(lambda: LeaseState.ACTIVE in states, 5, "a new lease replaces the revoked one")

    stats = conn.stats()
    assert states[0] is LeaseState.LOST and lease.id != lost
    assert stats.lease_losses == 1
    assert stats.lease_grants == 2  # the first one and its replacement
    assert stats.leases_kept == 1
    assert stats.lease_suspensions == 0
    assert stats.errors == {}  # the renewal was answered: etcd said "no TTL"
    conn.lease_keeper.release(lease, holder)


def test_a_refused_endpoint_counts_a_failover_and_a_retry(etcd: EtcdTestContext) -> None:
    closed_port = f"http://127.0.0.1:{free_port()}"
    with geventc.Client([closed_port, *etcd.endpoints]) as client:
        client.put(etcd.key("failover"), "v")
        stats = client.stats()
    assert stats.failovers == 1 and stats.retries == 1
    assert stats.endpoint == etcd.endpoints[0]
    assert stats.requests_by_path == {"/v3/kv/put": 2}  # the refused attempt, the answered one
    assert stats.errors == {}  # the call succeeded


@pytest.fixture
def blackholable(etcd: EtcdTestContext) -> Iterator[tuple[FaultProxy, geventc.Connector]]:
    """A connector whose first endpoint is a fault proxy in front of etcd, its second
    etcd itself; stalls are looked for every 0.3 s."""
    with FaultProxy(etcd.endpoints[0]) as proxy:
        conn = geventc.connect(
            [proxy.endpoint, *etcd.endpoints],
            namespace=etcd.prefix.strip("/"),
            keepalive_time=0.3,
            keepalive_timeout=0.3,
        )
        with conn:
            yield proxy, conn


def test_a_blackholed_member_counts_a_stall_a_failover_and_a_watch_restart(
    blackholable: tuple[FaultProxy, geventc.Connector],
) -> None:
    proxy, conn = blackholable
    stream = conn.watch("watched")
    seen: list[bytes] = []

    def read() -> None:
        for response in stream:
            seen.extend(event.kv.value for event in response.events)

    reader = gevent.spawn(read)
    try:
        wait_until(lambda: conn.stats().probes >= 1, 5, "a liveness probe")
        proxy.freeze()
        wait_until(lambda: conn.stats().watch_restarts == 1, 10, "the watch resumed elsewhere")
        conn.put("watched", "after")
        wait_until(lambda: seen == [b"after"], 5, "the event after the failover")
        stats = conn.stats()
    finally:
        stream.cancel()
        reader.kill()
    assert stats.stalls >= 1
    assert stats.failovers >= 1
    assert stats.endpoint == conn.endpoints[1]
    assert stats.watch_streams_opened == 2 and stats.watch_streams_open == 1
    assert stats.requests_by_path["/health?serializable=true"] == stats.probes
    assert conn.stats().watch_streams_open == 0  # cancelled


def test_a_compacted_watch_is_counted(private_server: EtcdServer) -> None:
    with geventc.Client(private_server.endpoints) as client:
        first = client.put("k", "1").header.revision
        client.put("k", "2")
        client.compact(first + 1)
        stream = client.watch("k", start_revision=first)
        assert client.stats().watch_streams_open == 1
        with pytest.raises(Compacted), gevent.Timeout(5):
            next(stream)
        stats = client.stats()
    assert stats.watch_compactions == 1
    assert stats.watch_streams_opened == 1 and stats.watch_streams_open == 0
