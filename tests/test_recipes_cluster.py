"""Every recipe running while one member of a 3-member cluster is killed."""

from __future__ import annotations

import time

import pytest
from helpers.channels import next_of

import geventc
from geventc import (
    ClusterHealth,
    ClusterStatus,
    ElectionEvent,
    ElectionStatus,
    ServiceSnapshot,
    WatchEvent,
)
from geventc.testing.plugin import EtcdTestContext

pytestmark = pytest.mark.cluster


def test_all_recipes_ride_out_a_member_kill(etcd_cluster: EtcdTestContext) -> None:
    cluster = etcd_cluster.cluster
    used = cluster.followers()[0]
    endpoints = [used.client_url] + [e for e in etcd_cluster.endpoints if e != used.client_url]
    namespace = etcd_cluster.prefix.strip("/")
    with geventc.connect(endpoints, namespace=namespace, timeout=5) as conn:
        key = conn.ephemeral_key("/svc/api/i1")
        key.create("10.0.0.1:80", ttl=5)
        elector = conn.leader_elector("/leader", "me", ttl=5)
        elected = elector.start()
        assert next_of(elected, ElectionEvent).status is ElectionStatus.LEADER
        tracker = conn.service_tracker("/svc/api")
        snapshots = tracker.start()
        assert dict(next_of(snapshots, ServiceSnapshot).services) == {"i1": "10.0.0.1:80"}
        observer = conn.observer("/config")
        changes = observer.start()
        monitor = conn.health_monitor()
        health = monitor.start(interval=0.5)
        assert next_of(health, ClusterHealth).status is ClusterStatus.HEALTHY

        cluster.kill(used)

        conn.put("/config", "after-kill")
        event = next_of(changes, WatchEvent)
        assert event.value == b"after-kill"
        conn.ephemeral_key("/svc/api/i2").create("10.0.0.2:80", ttl=5)
        deadline = time.monotonic() + 10
        while True:
            snapshot = next_of(snapshots, ServiceSnapshot)
            if len(snapshot.services) == 2:
                break
            assert time.monotonic() < deadline
        assert next_of(health, ClusterHealth, timeout=15).status is ClusterStatus.DEGRADED
        assert conn.get("/svc/api/i1") is not None
        assert elector.leader() == "me"  # the follower's death does not move leadership
        assert elector.is_leader
