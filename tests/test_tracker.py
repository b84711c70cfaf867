"""ServiceTracker against a real etcd: snapshots, sharing, life cycle and faults."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import gevent
import pytest
from gevent.event import Event
from helpers.gate import Gate

import geventc
from geventc import Channel, Client, RecipeError, ServiceSnapshot, ServiceTracker
from geventc.errors import ChannelTimeout, EtcdError, RecipeStateError
from geventc.testing import EtcdServer
from geventc.testing.plugin import EtcdTestContext
from geventc.watch import PrefixUpdate

Snapshots = Channel[ServiceSnapshot | RecipeError]


def next_snapshot(channel: Snapshots, timeout: float = 10.0) -> ServiceSnapshot:
    """The channel's next ServiceSnapshot (skipping RecipeError reports)."""
    deadline = time.monotonic() + timeout
    while True:
        item = channel.get(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(item, ServiceSnapshot):
            return item


def wait_for_services(
    channel: Snapshots, expected: Mapping[str, str], timeout: float = 10.0
) -> ServiceSnapshot:
    """Read snapshots until one without error has exactly ``expected`` services."""
    deadline = time.monotonic() + timeout
    seen: ServiceSnapshot | None = None
    try:
        while True:
            seen = next_snapshot(channel, max(0.01, deadline - time.monotonic()))
            if seen.error is None and dict(seen.services) == dict(expected):
                return seen
    except ChannelTimeout:
        raise AssertionError(
            f"no snapshot with {dict(expected)} in {timeout}s; last: {seen}"
        ) from None


def wait_for_error(channel: Snapshots, timeout: float = 15.0) -> ServiceSnapshot:
    """Read snapshots until one reports an error."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot = next_snapshot(channel, max(0.01, deadline - time.monotonic()))
        if snapshot.error is not None:
            return snapshot


class Witness:
    """A plain listener of the connector's shared watch of ``prefix``.

    Every listener of a shared watch is called in the same greenlet for each update, so
    once the witness has seen revision R every tracker of the prefix has handled R too."""

    def __init__(self, conn: geventc.Connector, prefix: str) -> None:
        self.revision = 0
        self._conn = conn
        self._prefix = prefix.encode()
        self._changed = Event()
        conn.hub.subscribe(self._prefix, self)

    def __call__(self, update: PrefixUpdate) -> None:
        self.revision = max(self.revision, update.revision)
        self._changed.set()

    def wait(self, revision: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.revision < revision:
            self._changed.clear()
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"the watch did not reach revision {revision}"
            self._changed.wait(remaining)

    def leave(self) -> None:
        self._conn.hub.unsubscribe(self._prefix, self)


# --- snapshots ---------------------------------------------------------------------------


def test_first_snapshot_is_the_current_state(conn: geventc.Connector) -> None:
    conn.put("/svc/api/i1", "10.0.0.1:80")
    conn.put("/svc/api/zone-b/i2", "10.0.0.2:80")
    written = conn.put("/svc/api/i3", "10.0.0.3:80").header.revision
    tracker = conn.service_tracker("/svc/api")
    channel = tracker.start()
    first = next_snapshot(channel)
    expected = {"i1": "10.0.0.1:80", "zone-b/i2": "10.0.0.2:80", "i3": "10.0.0.3:80"}
    assert dict(first.services) == expected and first.error is None
    assert first.revision >= written
    assert tracker.services == expected
    with pytest.raises(TypeError):
        first.services["i4"] = "x"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.revision = 0  # type: ignore[misc]
    tracker.stop()


def test_empty_path_first_snapshot_is_empty(conn: geventc.Connector) -> None:
    with conn.service_tracker("/svc/none") as tracker:
        first = next_snapshot(tracker.channel)
        assert dict(first.services) == {} and first.error is None and first.revision > 0


def test_one_snapshot_per_change(conn: geventc.Connector) -> None:
    tracker = conn.service_tracker("/svc/api")
    channel = tracker.start()
    assert dict(next_snapshot(channel).services) == {}
    witness = Witness(conn, "/svc/api/")

    added = conn.put("/svc/api/i1", "a").header.revision
    snapshot = next_snapshot(channel)
    assert (dict(snapshot.services), snapshot.revision) == ({"i1": "a"}, added)

    changed = conn.put("/svc/api/i1", "b").header.revision
    snapshot = next_snapshot(channel)
    assert (dict(snapshot.services), snapshot.revision) == ({"i1": "b"}, changed)

    second = conn.put("/svc/api/i2", "c").header.revision
    snapshot = next_snapshot(channel)
    assert (dict(snapshot.services), snapshot.revision) == ({"i1": "b", "i2": "c"}, second)

    deleted = conn.delete("/svc/api/i1").header.revision
    snapshot = next_snapshot(channel)
    assert (dict(snapshot.services), snapshot.revision) == ({"i2": "c"}, deleted)

    # each change was handled once: nothing else is pending
    witness.wait(deleted)
    assert channel.get_nowait() is None

    # a re-put of the same value changes nothing a consumer can see: no snapshot
    same = conn.put("/svc/api/i2", "c").header.revision
    witness.wait(same)
    assert channel.get_nowait() is None
    assert conn.delete("/svc/api/absent").deleted == 0  # deleting nothing: no event either
    marker = conn.put("/svc/api/i3", "d").header.revision
    snapshot = next_snapshot(channel)
    assert (dict(snapshot.services), snapshot.revision) == ({"i2": "c", "i3": "d"}, marker)
    witness.leave()
    tracker.stop()


def test_slow_consumer_reads_only_the_newest_snapshot(conn: geventc.Connector) -> None:
    tracker = conn.service_tracker("/svc/busy")
    channel = tracker.start()
    next_snapshot(channel)
    witness = Witness(conn, "/svc/busy/")
    last = 0
    for i in range(30):
        last = conn.put(f"/svc/busy/i{i % 10}", str(i)).header.revision
    witness.wait(last)  # the tracker has handled all 30 changes; nobody read them
    assert len(channel) == 1
    newest = next_snapshot(channel, timeout=0.1)
    assert newest.revision == last
    assert dict(newest.services) == {f"i{i}": str(20 + i) for i in range(10)}
    assert channel.get_nowait() is None
    witness.leave()
    tracker.stop()


def test_keys_outside_the_path_are_not_included(
    conn: geventc.Connector, etcd: EtcdTestContext
) -> None:
    conn.put("/svc/a", "the path itself")
    conn.put("/svc/ab/x", "a sibling with a longer name")
    conn.put("/svc/b/y", "another service")
    conn.put("/svc/a/x", "mine")
    tracker = conn.service_tracker("/svc/a")
    channel = tracker.start()
    assert dict(next_snapshot(channel).services) == {"x": "mine"}
    # neither the neighbours, nor another namespace, nor the bare key space reach it
    conn.put("/svc/ab/x", "changed")
    conn.delete("/svc/a")
    other_ns = etcd.prefix.strip("/") + "-other"
    with geventc.connect(etcd.endpoints, namespace=other_ns) as other:
        other.put("/svc/a/intruder", "other namespace")
        other.delete("/svc/a/intruder")
    client = etcd.client()
    client.put("/svc/a/intruder", "no namespace")
    client.delete("/svc/a/intruder")
    marker = conn.put("/svc/a/y", "mine too").header.revision
    snapshot = next_snapshot(channel)
    assert dict(snapshot.services) == {"x": "mine", "y": "mine too"}
    assert snapshot.revision == marker
    tracker.stop()


# --- sharing and life cycle --------------------------------------------------------------


def test_fifty_trackers_share_one_watch_stream_and_converge(conn: geventc.Connector) -> None:
    conn.put("/svc/shared/i0", "0")
    trackers = [conn.service_tracker("/svc/shared") for _ in range(50)]
    channels = [t.start() for t in trackers]
    assert conn.hub.streams == 1
    for channel in channels:
        assert dict(next_snapshot(channel).services) == {"i0": "0"}
    conn.put("/svc/shared/i1", "1")
    conn.delete("/svc/shared/i0")
    last = conn.put("/svc/shared/i2", "2").header.revision
    for channel in channels:
        snapshot = wait_for_services(channel, {"i1": "1", "i2": "2"})
        assert snapshot.revision == last
    assert conn.hub.streams == 1
    other = conn.service_tracker("/svc/other")
    other.start()
    assert conn.hub.streams == 2
    other.stop()
    assert conn.hub.streams == 1
    for tracker in trackers[:-1]:
        tracker.stop()
    assert conn.hub.streams == 1  # the last tracker still follows the path
    final = conn.put("/svc/shared/i3", "3").header.revision
    assert wait_for_services(channels[-1], {"i1": "1", "i2": "2", "i3": "3"}).revision == final
    trackers[-1].stop()
    assert conn.hub.streams == 0


def test_stop_ends_iteration_is_idempotent_and_unsubscribes(conn: geventc.Connector) -> None:
    tracker = conn.service_tracker("/svc/stop")
    channel = tracker.start()
    next_snapshot(channel)
    assert tracker.running and conn.hub.streams == 1
    consumer = gevent.spawn(lambda: list(channel))
    conn.put("/svc/stop/i1", "1")
    started = time.monotonic()
    tracker.stop()
    assert time.monotonic() - started < 3.0
    received = consumer.get(timeout=5)
    assert all(isinstance(item, ServiceSnapshot) for item in received)
    assert channel.closed and not tracker.running
    assert conn.hub.streams == 0
    tracker.stop()  # a second stop does nothing
    assert channel.closed and conn.hub.streams == 0
    conn.put("/svc/stop/i2", "2")  # nothing reaches a stopped tracker
    assert list(channel) == []
    with pytest.raises(RecipeStateError):
        tracker.start()


def test_second_start_raises(conn: geventc.Connector) -> None:
    tracker = conn.service_tracker("/svc/twice")
    channel = tracker.start()
    with pytest.raises(RecipeStateError, match="already started"):
        tracker.start()
    assert tracker.channel is channel and tracker.running
    assert next_snapshot(channel).error is None
    tracker.stop()


def test_context_manager_starts_and_stops(conn: geventc.Connector) -> None:
    conn.put("/svc/ctx/i1", "1")
    with conn.service_tracker("/svc/ctx") as tracker:
        assert isinstance(tracker, ServiceTracker) and tracker.running
        assert dict(next_snapshot(tracker.channel).services) == {"i1": "1"}
        assert conn.hub.streams == 1
    assert not tracker.running and tracker.channel.closed
    assert list(tracker.channel) == []
    assert conn.hub.streams == 0


def test_connector_close_stops_its_trackers(etcd: EtcdTestContext) -> None:
    conn = geventc.connect(etcd.endpoints, namespace=etcd.prefix.strip("/"))
    channels = [conn.service_tracker(f"/svc/s{i}").start() for i in range(3)]
    for channel in channels:
        next_snapshot(channel)
    readers = [gevent.spawn(lambda c=c: list(c)) for c in channels]
    conn.close()
    assert [r.get(timeout=5) for r in readers] == [[], [], []]
    assert conn.hub.streams == 0


# --- faults ------------------------------------------------------------------------------


def test_tracker_rides_out_a_server_restart_without_losing_a_change(
    private_server: EtcdServer,
) -> None:
    with geventc.connect(private_server.endpoints, namespace="app", timeout=2.0) as conn:
        conn.put("/svc/api/first", "1")
        tracker = conn.service_tracker("/svc/api")
        channel = tracker.start()
        assert dict(next_snapshot(channel).services) == {"first": "1"}
        conn.put("/svc/api/first", "live")  # seen only once the watch is up
        assert dict(next_snapshot(channel).services) == {"first": "live"}
        conn.put("/svc/api/just-before", "2")  # written as the server dies: maybe unseen
        private_server.kill(0)
        outage = wait_for_error(channel)  # the outage is reported, the last state kept
        assert isinstance(outage.error, EtcdError)
        assert set(outage.services) <= {"first", "just-before"}
        private_server.restart(0)
        expected = {"first": "live", "just-before": "2"}
        last = 0
        for i in range(10):
            last = conn.put(f"/svc/api/after{i}", str(i)).header.revision
            expected[f"after{i}"] = str(i)
        conn.delete("/svc/api/first")
        del expected["first"]
        last = conn.put("/svc/api/after0", "changed").header.revision
        expected["after0"] = "changed"
        snapshot = wait_for_services(channel, expected, timeout=20)
        assert snapshot.revision == last and snapshot.error is None
        tracker.stop()


def test_an_outage_without_changes_ends_with_an_error_free_snapshot(
    private_server: EtcdServer,
) -> None:
    with geventc.connect(private_server.endpoints, namespace="app", timeout=2.0) as conn:
        conn.put("/svc/api/i1", "1")
        tracker = conn.service_tracker("/svc/api")
        channel = tracker.start()
        next_snapshot(channel)
        written = conn.put("/svc/api/i1", "live").header.revision  # the watch is up
        assert next_snapshot(channel).revision == written
        private_server.kill(0)
        assert wait_for_error(channel).services == {"i1": "live"}
        private_server.restart(0)
        # nothing changed while etcd was away, but the consumer must learn that the
        # problem is over: the newest snapshot may not keep reporting the outage
        recovered = wait_for_services(channel, {"i1": "live"}, timeout=10)
        assert recovered.error is None and recovered.revision == written
        tracker.stop()


def test_compaction_while_disconnected_re_reads_the_exact_state(
    private_server: EtcdServer,
) -> None:
    gate = Gate(private_server.endpoint)
    admin = Client(private_server.endpoints, timeout=10)
    try:
        with geventc.connect([gate.endpoint], namespace="app", timeout=2.0) as conn:
            for name, value in [("keep", "k"), ("gone", "g"), ("changed", "old")]:
                admin.put(f"/app/svc/api/{name}", value)
            tracker = conn.service_tracker("/svc/api")
            channel = tracker.start()
            first = wait_for_services(channel, {"keep": "k", "gone": "g", "changed": "old"})
            gate.close()  # the tracker is cut off from here on
            private_server.kill(0)
            assert wait_for_error(channel).error is not None
            private_server.restart(0)
            admin.delete("/app/svc/api/gone")
            admin.put("/app/svc/api/new", "n")
            admin.put("/app/svc/api/changed", "new")
            admin.put("/app/svc/api/flapped", "briefly")
            admin.delete("/app/svc/api/flapped")
            newest = admin.put("/app/svc/other/x", "outside").header.revision
            admin.compact(newest)  # the tracker's next revision is history now
            assert first.revision + 1 < newest
            gate.open()
            expected = {"keep": "k", "changed": "new", "new": "n"}
            snapshot = wait_for_services(channel, expected, timeout=20)
            assert snapshot.revision == newest
            assert {kv.key_str: kv.value_str for kv in conn.get_prefix("/svc/api/").kvs} == {
                f"/svc/api/{k}": v for k, v in expected.items()
            }
            # and it follows live changes again
            again = admin.put("/app/svc/api/later", "l").header.revision
            snapshot = wait_for_services(channel, {**expected, "later": "l"})
            assert snapshot.revision == again
            tracker.stop()
    finally:
        admin.close()
        gate.close()


@pytest.mark.cluster
def test_tracker_survives_killing_its_member(etcd_cluster: EtcdTestContext) -> None:
    cluster = etcd_cluster.cluster
    used = cluster.followers()[0]
    endpoints = [used.client_url, *(e for e in etcd_cluster.endpoints if e != used.client_url)]
    writer = etcd_cluster.client([cluster.leader().client_url])
    namespace = etcd_cluster.prefix.strip("/")
    with geventc.connect(endpoints, namespace=namespace, timeout=10) as conn:
        writer.put(etcd_cluster.key("svc/i1"), "1")
        tracker = conn.service_tracker("/svc")
        channel = tracker.start()
        assert dict(next_snapshot(channel).services) == {"i1": "1"}
        writer.put(etcd_cluster.key("svc/i1"), "live")  # seen only once the watch is up
        assert dict(next_snapshot(channel).services) == {"i1": "live"}
        assert conn.client.transport.current_endpoint == used.client_url
        cluster.kill(used)
        expected = {"i1": "live"}
        last = 0
        for i in range(2, 7):
            last = writer.put(etcd_cluster.key(f"svc/i{i}"), str(i)).header.revision
            expected[f"i{i}"] = str(i)
        snapshot = wait_for_services(channel, expected, timeout=15)
        assert snapshot.revision == last
        assert conn.client.transport.current_endpoint != used.client_url
        tracker.stop()
