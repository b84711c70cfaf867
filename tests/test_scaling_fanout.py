"""Fan-out at scale: the trackers of one path share one decode and one snapshot object
per change; trackers made with a shared channel put their snapshots into one
``Channel(latest_per_source=True)`` that keeps the newest snapshot of each tracker."""

from __future__ import annotations

import time
from collections import Counter

import gevent
import pytest
from helpers.server import paused

import geventc
from geventc import Channel, RecipeError, ServiceSnapshot
from geventc.errors import ChannelTimeout, ClientClosed, InvalidArgument
from geventc.testing import EtcdServer
from geventc.testing.plugin import EtcdTestContext

Items = Channel[ServiceSnapshot | RecipeError]


def snapshot_with(
    channel: Items, services: dict[str, str], timeout: float = 10.0
) -> ServiceSnapshot:
    """The first snapshot read from ``channel`` with exactly ``services``."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no snapshot with {services} in {timeout}s")
        item = channel.get(timeout=remaining)
        if isinstance(item, ServiceSnapshot) and dict(item.services) == services:
            return item


def drain(channel: Items, count: int, timeout: float = 10.0) -> list[ServiceSnapshot]:
    """``count`` snapshots read from ``channel``."""
    deadline = time.monotonic() + timeout
    read: list[ServiceSnapshot] = []
    while len(read) < count:
        item = channel.get(timeout=max(0.01, deadline - time.monotonic()))
        assert isinstance(item, ServiceSnapshot), item
        read.append(item)
    return read


def test_trackers_of_one_path_all_receive_each_snapshot_as_one_shared_object(
    conn: geventc.Connector,
) -> None:
    conn.put("/fan/svc/i0", "0")
    trackers = [conn.service_tracker("/fan/svc") for _ in range(30)]
    channels = [tracker.start() for tracker in trackers]
    for channel in channels:
        assert snapshot_with(channel, {"i0": "0"}).path == "/fan/svc"
    assert conn.hub.streams == 1
    revision = conn.put("/fan/svc/i1", "1").header.revision
    received = [snapshot_with(channel, {"i0": "0", "i1": "1"}) for channel in channels]
    assert {s.revision for s in received} == {revision}
    assert all(s is received[0] for s in received)  # decoded once, handed to all
    assert all(t.services is received[0].services for t in trackers)
    conn.delete("/fan/svc/i0")
    received = [snapshot_with(channel, {"i1": "1"}) for channel in channels]
    assert all(s is received[0] for s in received)
    for tracker in trackers:
        tracker.stop()
    assert conn.hub.streams == 0 and not conn.hub.shared


def test_a_tracker_joining_later_reflects_earlier_writes_then_shares_the_others_snapshots(
    conn: geventc.Connector,
) -> None:
    first = [conn.service_tracker("/late/svc") for _ in range(5)]
    channels = [tracker.start() for tracker in first]
    for channel in channels:
        snapshot_with(channel, {})
    conn.put("/late/svc/a", "1")
    conn.put("/elsewhere/x", "1")  # this connector's newest write is outside the path
    late = conn.service_tracker("/late/svc")
    late_channel = late.start()
    assert dict(snapshot_with(late_channel, {"a": "1"}, timeout=5).services) == {"a": "1"}
    conn.put("/late/svc/b", "2")
    expected = {"a": "1", "b": "2"}
    others = [snapshot_with(channel, expected) for channel in channels]
    mine = snapshot_with(late_channel, expected)
    assert all(s is mine for s in others)  # in step with the others: the same object
    for tracker in [*first, late]:
        tracker.stop()
    assert conn.hub.streams == 0


def test_a_shared_channel_keeps_the_newest_snapshot_of_each_tracker(
    conn: geventc.Connector,
) -> None:
    shared: Items = Channel(latest_per_source=True)
    paths = [f"/shared/s{i}" for i in range(3)]
    for path in paths:
        conn.put(f"{path}/i0", "0")
    trackers = [conn.service_tracker(path, channel=shared) for path in paths for _ in range(4)]
    for tracker in trackers:
        assert tracker.start() is shared
    first = drain(shared, len(trackers))
    assert Counter(s.path for s in first) == {path: 4 for path in paths}
    assert all(dict(s.services) == {"i0": "0"} for s in first)
    # a slow reader: five changes to one path, nothing read meanwhile
    for n in range(1, 6):
        last = conn.put(f"{paths[0]}/i{n}", str(n)).header.revision
    newest = {f"i{n}": str(n) for n in range(6)}
    deadline = time.monotonic() + 10
    while any(t.services != newest for t in trackers[:4]):
        assert time.monotonic() < deadline, "the trackers did not see the five changes"
        gevent.sleep(0.01)
    assert len(shared) == 4  # one pending snapshot per tracker of that path, no backlog
    pending = drain(shared, 4)
    assert all(s.path == paths[0] and s.revision == last for s in pending)
    assert all(dict(s.services) == newest for s in pending)
    with pytest.raises(ChannelTimeout):
        shared.get(timeout=0.05)
    for tracker in trackers:
        tracker.stop()
    assert not shared.closed  # not the trackers' to close


def test_a_closed_hub_refuses_new_subscribers(etcd: EtcdTestContext) -> None:
    conn = geventc.connect(etcd.endpoints, namespace=etcd.prefix.strip("/"))
    tracker = conn.service_tracker("/closed/svc")
    channel = tracker.start()
    conn.close()
    assert channel.closed and conn.hub.closed and conn.hub.streams == 0
    with pytest.raises(ClientClosed):
        conn.hub.subscribe(b"/closed/", lambda update: None)


# --- the channel on its own -------------------------------------------------------------------


def test_latest_per_source_channel() -> None:
    channel: Channel[str] = Channel(latest_per_source=True)
    a, b = object(), object()
    channel.put("a1", source=a)
    channel.put("b1", source=b)
    channel.put("a2", source=a)  # replaces a1, keeps a's place in the order
    channel.put("alone")  # no source: kept on its own
    channel.put_many("many", [a, b, object()])
    assert len(channel) == 4
    assert [channel.get_nowait() for _ in range(4)] == ["many", "many", "alone", "many"]
    assert channel.get_nowait() is None
    channel.put("a3", source=a)
    channel.close()
    channel.put("ignored", source=b)
    assert list(channel) == ["a3"]
    for bad in ({"latest_only": True}, {"maxsize": 3}):
        with pytest.raises(InvalidArgument, match="latest_per_source"):
            Channel(latest_per_source=True, **bad)  # type: ignore[arg-type]


def test_put_many_wakes_a_waiting_reader_once_for_all() -> None:
    channel: Channel[int] = Channel(latest_per_source=True)
    sources = [object() for _ in range(100)]
    reader = gevent.spawn(lambda: [channel.get(timeout=5) for _ in range(100)])
    gevent.idle()  # the reader now waits
    channel.put_many(7, sources)
    assert reader.get(timeout=5) == [7] * 100
    plain: Channel[int] = Channel()
    plain.put_many(1, sources[:3])  # an event channel: one event per source
    assert [plain.get_nowait() for _ in range(3)] == [1, 1, 1]


def test_a_tracker_stopped_while_its_start_waits_leaves_nothing_behind(
    private_server: EtcdServer,
) -> None:
    conn = geventc.connect(private_server.endpoints, timeout=1.0)
    try:
        conn.put("/wait/svc/i0", "0")  # its first state must reflect this write
        for _ in range(2):  # the first tracker of the path, then one joining another
            other = conn.service_tracker("/wait/svc") if _ else None
            if other is not None:
                snapshot_with(other.start(), {"i0": "0"})
                conn.put("/elsewhere", "x")  # newer than what the shared copy holds
            tracker = conn.service_tracker("/wait/svc")
            with paused(private_server):
                starting = gevent.spawn(tracker.start)
                gevent.idle()  # the start runs until it waits for the shared copy
                assert not starting.ready()
                tracker.stop()
            starting.join(timeout=10)
            assert tracker.channel.closed and not tracker.running
            if other is not None:
                conn.put("/wait/svc/i1", "1")
                snapshot_with(other.channel, {"i0": "0", "i1": "1"})
                other.stop()
            deadline = time.monotonic() + 10
            while conn.hub.streams or conn.hub.shared:
                assert time.monotonic() < deadline, (conn.hub.streams, conn.hub.shared)
                gevent.sleep(0.02)
    finally:
        conn.close()


def test_a_tracker_out_of_step_handles_changes_alone_until_in_step_again(
    conn: geventc.Connector,
) -> None:
    """Trackers of a path in step share one state and one snapshot per change; one
    whose state differs (it joined while the others' newest snapshot reported an
    error) is handed the changes on its own until its state is theirs, then shares it."""
    from geventc.errors import EtcdError
    from geventc.watch import PrefixUpdate

    conn.put("/step/svc/i0", "0")
    first = [conn.service_tracker("/step/svc") for _ in range(3)]
    channels = [tracker.start() for tracker in first]
    for channel in channels:
        snapshot_with(channel, {"i0": "0"})
    followers = conn.hub.shared[("trackers", b"/step/svc/")]
    watch = conn.hub._watches[b"/step/svc/"]
    trouble = EtcdError("injected")
    followers.on_update(PrefixUpdate((), watch.state, watch.revision, error=trouble))
    told = [channel.get(timeout=5) for channel in channels]
    assert all(isinstance(s, ServiceSnapshot) and s.error is trouble for s in told)
    assert all(s is told[0] for s in told)  # one snapshot object for the three
    late = conn.service_tracker("/step/svc")
    late_channel = late.start()  # its first state reports no error: not in step
    assert snapshot_with(late_channel, {"i0": "0"}).error is None
    followers.on_update(PrefixUpdate((), watch.state, watch.revision))  # the trouble is over
    over = [channel.get(timeout=5) for channel in channels]
    assert all(isinstance(s, ServiceSnapshot) and s.error is None for s in over)
    with pytest.raises(ChannelTimeout):
        late_channel.get(timeout=0.05)  # nothing changed for it: no snapshot
    conn.put("/step/svc/i1", "1")
    expected = {"i0": "0", "i1": "1"}
    received = [snapshot_with(c, expected) for c in [*channels, late_channel]]
    assert all(s is received[0] for s in received)  # in step again: the same object
    assert all(t.services is received[0].services for t in [*first, late])
    for tracker in [*first, late]:
        tracker.stop()
        assert dict(tracker.services) == expected  # a stopped tracker keeps its state
    assert conn.hub.streams == 0 and not conn.hub.shared


def test_on_a_shared_channel_a_tracker_back_in_step_is_never_read_older_after_newer(
    conn: geventc.Connector,
) -> None:
    """A tracker joining on a state of its own puts its snapshot into the shared
    channel itself; once in step, the group's newer snapshot stands for it: nothing of
    it pending is older than what the reader already read of its path."""
    from geventc.errors import EtcdError
    from geventc.watch import PrefixUpdate

    shared: Items = Channel(latest_per_source=True)
    conn.put("/order/svc/i0", "0")
    first = [conn.service_tracker("/order/svc", channel=shared) for _ in range(3)]
    for tracker in first:
        tracker.start()
    drain(shared, 3)
    followers = conn.hub.shared[("trackers", b"/order/svc/")]
    watch = conn.hub._watches[b"/order/svc/"]
    followers.on_update(PrefixUpdate((), watch.state, watch.revision, error=EtcdError("x")))
    late = conn.service_tracker("/order/svc", channel=shared)
    late.start()  # its own first state (no error), pending after the group's error
    newer = watch.revision + 1  # say, a re-put of a value: no change, a newer revision
    followers.on_update(PrefixUpdate((), watch.state, newer))  # the trouble is over
    assert len(shared) == 4  # one pending snapshot per tracker, the late one's included
    pending = drain(shared, 4)
    assert all(s.error is None and s.revision == newer for s in pending)
    with pytest.raises(ChannelTimeout):
        shared.get(timeout=0.05)
    revision = conn.put("/order/svc/i1", "1").header.revision
    received = drain(shared, 4)
    assert all(s is received[0] and s.revision == revision for s in received)
    for tracker in [*first, late]:
        tracker.stop()
