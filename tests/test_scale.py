"""One connector at scale: 2,000 ephemeral keys and 1,000 service trackers.

The keys share one lease (one TTL), so keep-alive traffic is one request per TTL/3, not
one per key; trackers and the keys' deletion watches share one watch stream per
service directory. Checked on the client and in the server's own metrics."""

from __future__ import annotations

import time
from collections.abc import Mapping

import urllib3
from gevent.pool import Pool

import geventc
from geventc import Channel, Client, EphemeralKey, RecipeError, ServiceSnapshot, ServiceTracker
from geventc.testing import EtcdServer

SERVICES = 20
INSTANCES = 100  # per service: 2,000 keys
TRACKERS = 50  # per service: 1,000 trackers
TTL = 3


def address(service: int, instance: int) -> str:
    return f"10.{service}.{instance // 256}.{instance % 256}:8080"


def instances(service: int, without: int | None = None) -> dict[str, str]:
    return {f"inst{j}": address(service, j) for j in range(INSTANCES) if j != without}


def wait_for_services(
    channel: Channel[ServiceSnapshot | RecipeError], expected: Mapping[str, str], timeout: float
) -> ServiceSnapshot:
    """Read snapshots until one without error has exactly ``expected`` services."""
    deadline = time.monotonic() + timeout
    while True:
        item = channel.get(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(item, ServiceSnapshot) and not item.error and item.services == expected:
            return item


def metric(server: EtcdServer, name: str) -> float:
    """A counter or gauge from the server's Prometheus ``/metrics``."""
    text = urllib3.request("GET", server.endpoint + "/metrics").data.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"etcd exports no metric {name}")


def wait_for_metric(server: EtcdServer, name: str, expected: float, timeout: float = 10.0) -> float:
    """The metric once it reached ``expected`` (or its value at the deadline)."""
    deadline = time.monotonic() + timeout
    while (value := metric(server, name)) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def test_2000_ephemeral_keys_and_1000_trackers_in_one_connector(private_server: EtcdServer) -> None:
    timings: dict[str, float] = {}
    started = last = time.monotonic()

    def lap(name: str) -> None:
        nonlocal last
        now = time.monotonic()
        timings[name] = now - last
        last = now

    conn = geventc.connect(private_server.endpoints, namespace="scale")
    try:
        trackers: dict[int, list[ServiceTracker]] = {
            i: [conn.service_tracker(f"/scale/svc{i}") for _ in range(TRACKERS)]
            for i in range(SERVICES)
        }
        for group in trackers.values():
            for tracker in group:
                tracker.start()
        lap("start 1,000 trackers")

        keys: dict[tuple[int, int], EphemeralKey] = {
            (i, j): conn.ephemeral_key(f"/scale/svc{i}/inst{j}")
            for i in range(SERVICES)
            for j in range(INSTANCES)
        }
        Pool(32).map(lambda ij: keys[ij].create(address(*ij), ttl=TTL), list(keys))
        lap("create 2,000 keys (32 at a time)")

        # the server holds every key, all on one lease; one watch per service directory
        stored = conn.get_prefix("/scale/")
        assert stored.count == SERVICES * INSTANCES
        (lease,) = conn.lease_keeper.leases()
        assert {kv.lease for kv in stored.kvs} == {lease.id}
        assert lease.holders == SERVICES * INSTANCES
        assert conn.hub.streams == SERVICES
        assert (
            wait_for_metric(private_server, "etcd_debugging_mvcc_watcher_total", SERVICES)
            == SERVICES
        )
        assert metric(private_server, "etcd_debugging_lease_granted_total") == 1

        for i, group in trackers.items():
            for tracker in group:
                wait_for_services(tracker.channel, instances(i), timeout=30)
        lap("1,000 trackers see 100 instances each")

        # keep-alive traffic is per TTL, not per key: one renewal per TTL/3
        client_before = lease.renewals
        server_before = metric(private_server, "etcd_debugging_lease_renewed_total")
        window = 4.0  # longer than the TTL: the keys outlive it only through renewals
        time.sleep(window)
        renewals = lease.renewals - client_before
        server_renewals = (
            metric(private_server, "etcd_debugging_lease_renewed_total") - server_before
        )
        expected = window / (lease.ttl / 3)
        assert expected - 2 <= renewals <= expected + 2, renewals
        assert renewals - 1 <= server_renewals <= renewals + 1, (renewals, server_renewals)
        assert conn.get_prefix("/scale/", count_only=True).count == SERVICES * INSTANCES
        lap(f"{window:.0f} s keep-alive window")

        # deleting one key removes only that key; its service's trackers see 99
        keys[(7, 42)].delete()
        assert conn.get("/scale/svc7/inst42") is None
        for tracker in trackers[7]:
            wait_for_services(tracker.channel, instances(7, without=42), timeout=10)
        assert conn.get_prefix("/scale/", count_only=True).count == SERVICES * INSTANCES - 1
        assert conn.lease_keeper.leases() == [lease] and lease.holders == SERVICES * INSTANCES - 1
        assert all(k.running for ij, k in keys.items() if ij != (7, 42))
        assert all(k.channel.get_nowait() is None for ij, k in keys.items() if ij != (7, 42))
        for i, group in trackers.items():
            for tracker in group:
                assert tracker.services == instances(i, without=42 if i == 7 else None)
                assert tracker.channel.get_nowait() is None  # no stray snapshot anywhere
        assert conn.hub.streams == SERVICES
        lap("delete one key, 50 trackers see 99")
    finally:
        conn.close()
    lap("close the connector (3,000 recipes)")

    with Client(private_server.endpoints) as admin:  # closing deleted the keys and the lease
        assert admin.get_prefix("/scale/", count_only=True).count == 0
        assert admin.leases() == []
    total = time.monotonic() - started
    print("\nscale timings: " + ", ".join(f"{k}: {v:.2f}s" for k, v in timings.items()))
    assert total < 60, f"the scale test took {total:.1f}s"
