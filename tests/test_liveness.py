"""No silent staleness: watches leave a member that stopped answering, recipes say when
they cannot be current, and a recipe started after this connector's writes shows them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from helpers.waiting import wait_until

import geventc
from geventc import (
    Connector,
    Instance,
    Registry,
    Resolver,
    ServiceSnapshot,
    Staleness,
    WatchEvent,
)
from geventc.testing.plugin import EtcdTestContext

#: The documented bound: keepalive_time + keepalive_timeout (4 s) to leave a silent
#: member, stale_after (5 s) to say so; generous margin for a loaded 2-core machine.
BOUND = 5.0
MARGIN = 4.0


def _connector_on(ctx: EtcdTestContext, first: str, **options: Any) -> Connector:
    """A connector whose current endpoint is ``first``."""
    others = [e for e in ctx.endpoints if e != first]
    options = {**ctx.cluster.client_options(), **options}
    return geventc.connect([first, *others], namespace=ctx.prefix, **options)


@pytest.mark.cluster
def test_a_paused_member_is_left_and_recipes_see_writes_made_elsewhere(
    etcd_cluster: EtcdTestContext,
) -> None:
    cluster = etcd_cluster.cluster
    used = cluster.followers()[0]
    other = next(m for m in cluster.members if m is not used)
    with (
        _connector_on(etcd_cluster, used.client_url) as conn,
        geventc.connect([other.client_url], namespace=etcd_cluster.prefix) as writer,
    ):
        conn.put("/svc/a", "1")
        tracker, events, config = _recipes(conn, "/svc")
        assert dict(tracker.services) == {"a": "1"}
        cluster.pause(used)
        writer.put("/svc/b", "2")
        took = _all_see(tracker, events, config, "/svc", "b", "2")  # once, nothing older
        assert took < BOUND + MARGIN
        assert conn.client.liveness.stalls >= 1
        assert conn.client.transport.current_endpoint != used.client_url


def _drain_until(channel: Any, key: str, timeout: float) -> Iterator[WatchEvent]:
    deadline = time.monotonic() + timeout
    while True:
        item = channel.get(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(item, WatchEvent):
            yield item
            if item.key == key:
                return


@pytest.mark.cluster
def test_a_member_without_a_leader_makes_recipes_say_they_are_stale(
    etcd_cluster: EtcdTestContext,
) -> None:
    # 2 of 3 members killed: the one left has no leader; nothing can be current. Go's
    # clientv3 WithRequireLeader watch ends about 4 s after the second kill.
    cluster = etcd_cluster.cluster
    kept = cluster.followers()[0]
    with (
        _connector_on(etcd_cluster, kept.client_url) as conn,
        geventc.connect(etcd_cluster.endpoints, namespace=etcd_cluster.prefix) as other,
    ):
        conn.put("/s/a", "1")
        tracker = conn.service_tracker("/s")
        snapshots = tracker.start()
        observer = conn.observer("/s", prefix=True)
        events = observer.start()
        config = conn.config("/s")
        changes = config.start()
        leader = other.leader_elector("/e", "them", ttl=30)
        assert leader.start().get(timeout=10).status.name == "LEADER"  # type: ignore[union-attr]
        follower = conn.leader_elector("/e", "us", ttl=30)
        assert follower.start().get(timeout=10).leader == "them"  # type: ignore[union-attr]
        registry = Registry(conn, ttl=30)
        registry.register(Instance("svc", "10.0.0.1:80"))
        resolver = Resolver(conn)
        resolved = resolver.watch("svc")
        assert snapshots.get(timeout=10).services == {"a": "1"}  # type: ignore[union-attr]
        for member in cluster.members:
            if member is not kept:
                cluster.kill(member)
        started = time.monotonic()
        stale = _next(snapshots, lambda s: isinstance(s, ServiceSnapshot) and s.stale, 15)
        took = time.monotonic() - started
        assert stale.services == {"a": "1"}  # what it last knew, said to be stale
        assert _next(events, lambda e: isinstance(e, Staleness) and e.stale, 5)
        assert _next(changes, lambda e: isinstance(e, Staleness) and e.stale, 5)
        assert config.stale and config.age > 0
        said = _next(follower.channel, lambda e: getattr(e, "stale", False), 5)
        assert said.status.name == "FOLLOWER" and said.leader == "them"
        assert _next(registry.events(), lambda e: isinstance(e, Staleness) and e.stale, 5)
        assert _next(resolved, lambda e: e.stale, 5).instances
        assert resolver.stale("svc") and resolver.age("svc") > 0
        assert took < BOUND + MARGIN, f"stale only after {took:.1f}s"
        cluster.heal()
        current = _next(snapshots, lambda s: isinstance(s, ServiceSnapshot) and not s.stale, 20)
        assert current.services == {"a": "1"}
        assert _next(events, lambda e: isinstance(e, Staleness) and not e.stale, 20)
        wait_until(lambda: not config.stale, 20, "config current again")
        _next(follower.channel, lambda e: hasattr(e, "status") and not e.stale, 20)
        _next(resolved, lambda e: not e.stale, 20)
        registry.close()
        resolver.close()


def _next(channel: Any, matches: Callable[[Any], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        item = channel.get(timeout=max(0.01, deadline - time.monotonic()))
        if matches(item):
            return item


def test_a_tracker_started_after_own_writes_shows_them(etcd: EtcdTestContext) -> None:
    # three ephemeral keys, then a tracker on their parent: its first snapshot held only
    # the first key (it joined the keys' shared watch before that had caught up)
    with geventc.connect(etcd.endpoints, namespace=etcd.prefix) as conn:
        for attempt in range(10):
            parent = f"/fleet{attempt}"
            keys = [conn.ephemeral_key(f"{parent}/k{i}") for i in range(3)]
            for key in keys:
                key.create("up", ttl=30)
            first = conn.service_tracker(parent).start().get(timeout=10)
            assert isinstance(first, ServiceSnapshot)
            assert dict(first.services) == {"k0": "up", "k1": "up", "k2": "up"}
            config = conn.config(parent)
            config.start()
            assert dict(config) == {"k0": "up", "k1": "up", "k2": "up"}
            config.stop()


def test_a_resolver_after_two_registrations_resolves_both(etcd: EtcdTestContext) -> None:
    with geventc.connect(etcd.endpoints, namespace=etcd.prefix) as conn:
        registry = Registry(conn, ttl=30)
        for attempt in range(30):
            service = f"svc{attempt}"
            registry.register(Instance(service, "10.0.0.1:80"))
            registry.register(Instance(service, "10.0.0.2:80"))
            resolver = Resolver(conn)
            found = {i.address for i in resolver.resolve(service)}
            assert found == {"10.0.0.1:80", "10.0.0.2:80"}, f"attempt {attempt}"
            resolver.close()
        registry.close()


def test_liveness_costs_a_probe_per_endpoint_not_per_watch(etcd: EtcdTestContext) -> None:
    with geventc.connect(etcd.endpoints, namespace=etcd.prefix) as conn:
        trackers = [conn.service_tracker(f"/p{i % 50}").start() for i in range(1000)]
        for channel in trackers[:50]:
            channel.get(timeout=10)
        liveness = conn.client.liveness
        assert conn.hub.streams == 50
        window = 3 * liveness.keepalive_time
        before, probes = conn.client.transport.requests, liveness.probes
        gevent.sleep(window)
        sent = conn.client.transport.requests - before
        # one endpoint in use: one probe per keepalive_time, whatever the watches
        assert liveness.probes - probes <= window / liveness.keepalive_time + 1
        assert sent == liveness.probes - probes
        assert liveness.stalls == 0


def test_bad_keepalive_settings_are_refused(etcd: EtcdTestContext) -> None:
    for name in ("keepalive_time", "keepalive_timeout"):
        for bad in (0, -1, "2", None):
            with pytest.raises(geventc.InvalidArgument, match=name):
                geventc.Client(etcd.endpoints, **{name: bad})


def _recipes(conn: Connector, path: str) -> tuple[Any, Any, Any]:
    """A tracker, an observer (prefix) and a config watcher on ``path``, started."""
    tracker = conn.service_tracker(path)
    tracker.start().get(timeout=10)
    observer = conn.observer(path, prefix=True)
    events = observer.start()
    config = conn.config(path)
    config.start()
    return tracker, events, config


def _all_see(tracker: Any, events: Any, config: Any, path: str, name: str, value: str) -> float:
    """How long until the tracker, the observer and the config all show the write."""
    started = time.monotonic()
    limit = BOUND + MARGIN
    wait_until(lambda: tracker.services.get(name) == value, limit, "the tracker update")
    wait_until(lambda: config.get(name) == value, limit, "the config update")
    seen = list(_drain_until(events, f"{path}/{name}", limit))
    assert [(e.key, e.value_str) for e in seen] == [(f"{path}/{name}", value)]
    return time.monotonic() - started


@pytest.mark.cluster
def test_a_blackholed_member_is_left_and_recipes_see_writes_made_elsewhere(
    etcd_fault_cluster: EtcdTestContext,
) -> None:
    # the member in use goes silent behind its proxy (connections held open, no byte
    # moves) while the cluster stays healthy
    cluster = etcd_fault_cluster.cluster
    used = cluster.followers()[0]
    other = next(m for m in cluster.members if m is not used)
    with (
        _connector_on(etcd_fault_cluster, cluster.proxy(used).endpoint) as conn,
        geventc.connect([other.client_url], namespace=etcd_fault_cluster.prefix) as writer,
    ):
        conn.put("/bh/a", "1")
        tracker, events, config = _recipes(conn, "/bh")
        cluster.blackhole(used)
        writer.put("/bh/b", "2")
        took = _all_see(tracker, events, config, "/bh", "b", "2")
        assert took < BOUND + MARGIN
        assert conn.client.liveness.stalls >= 1
        assert conn.get("/bh/b") is not None  # requests moved too


@pytest.mark.cluster
@pytest.mark.parametrize("role", ["follower", "leader"])
def test_an_isolated_member_is_left_and_reads_stay_linearizable(
    etcd_fault_cluster: EtcdTestContext, role: str
) -> None:
    # the member in use is cut off from its peers but still reachable: its watches must
    # move to a member with a leader, and reads must not answer from the cut-off member
    cluster = etcd_fault_cluster.cluster
    used = cluster.leader() if role == "leader" else cluster.followers()[0]
    with _connector_on(etcd_fault_cluster, used.client_url, timeout=10) as conn:
        conn.put("/iso/a", "1")
        tracker, events, config = _recipes(conn, "/iso")
        cluster.isolate(used)
        others = [m for m in cluster.members if m is not used]
        wait_until(lambda: _leads(cluster, others), 20, "a leader among the others", interval=0.02)
        urls = [m.client_url for m in others]
        with geventc.connect(urls, namespace=etcd_fault_cluster.prefix, timeout=10) as writer:
            writer.put("/iso/b", "2")
            took = _all_see(tracker, events, config, "/iso", "b", "2")
            assert took < BOUND + MARGIN + 2  # + a new election when the leader was cut
            latest = writer.put("/iso/c", "3").header.revision
        kv = conn.get("/iso/c")  # linearizable: never the cut-off member's old state
        assert kv is not None and kv.mod_revision == latest


def _leads(cluster: Any, members: list[Any]) -> bool:
    """True when one of ``members`` is the raft leader of the others."""
    for member in members:
        try:
            status = cluster.admin("/v3/maintenance/status", {}, endpoint=member.client_url)
        except Exception:
            continue
        if status.get("leader") == status["header"]["member_id"]:
            return True
    return False
