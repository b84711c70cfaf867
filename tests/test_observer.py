"""The Observer recipe against a real etcd: order, exactly-once, history, faults."""

from __future__ import annotations

import time
from typing import Any

import gevent
import pytest
from gevent.event import Event
from helpers.waiting import wait_until

import geventc
from geventc import (
    Channel,
    Connector,
    EventType,
    Observer,
    RecipeError,
    Staleness,
    WatchEvent,
)
from geventc.errors import (
    ChannelClosed,
    ChannelTimeout,
    Compacted,
    EtcdError,
    InvalidArgument,
    RecipeStateError,
)
from geventc.testing import EtcdServer
from geventc.testing.plugin import EtcdTestContext
from geventc.testing.server import free_port

Feed = Channel[WatchEvent | RecipeError]


@pytest.fixture
def conn_namespace(etcd: EtcdTestContext) -> str:
    """``conn``'s namespace: ``ns`` under the test's private prefix."""
    return etcd.prefix + "ns"


def _events(
    channel: Feed, count: int, timeout: float = 15.0
) -> tuple[list[WatchEvent], list[RecipeError]]:
    """The next ``count`` events and the non-fatal errors seen meanwhile (staleness
    reports, which an outage brings, are skipped); fails on a fatal error, a closed
    channel or the deadline."""
    deadline = time.monotonic() + timeout
    events: list[WatchEvent] = []
    problems: list[RecipeError] = []
    while len(events) < count:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise gevent.Timeout(timeout)
            item = channel.get(timeout=remaining)
        except (gevent.Timeout, ChannelTimeout, ChannelClosed) as exc:
            pytest.fail(f"got {len(events)} of {count} events ({exc!r}); errors: {problems}")
        if isinstance(item, RecipeError):
            assert not item.fatal, f"fatal error from the observer: {item.error!r}"
            problems.append(item)
        elif isinstance(item, Staleness):
            continue
        else:
            assert isinstance(item, WatchEvent)
            events.append(item)
    return events, problems


def _next_event(channel: Feed) -> WatchEvent:
    (event,), _ = _events(channel, 1)
    return event


def _assert_ends(channel: Feed, timeout: float = 5.0) -> list[WatchEvent | RecipeError]:
    """Read ``channel`` to its end; fails if it does not end within ``timeout``."""
    reader = gevent.spawn(list, channel)
    rest = reader.get(timeout=timeout)
    assert isinstance(rest, list) and channel.closed
    return rest


# --- delivery ---------------------------------------------------------------------------


def test_every_change_of_one_key_in_order_exactly_once(conn: Connector) -> None:
    observer = conn.observer("/k")
    channel = observer.start()
    revisions = []
    for i in range(30):
        revisions.append(conn.put("/k", f"v{i}").header.revision)
        if i % 10 == 0:
            conn.put("/k2", "a sibling key")  # not the observed key
            conn.put("/k/child", "a key under it: not observed without recursive")
    revisions.append(conn.delete("/k").header.revision)
    revisions.append(conn.put("k", "again").header.revision)  # "k" is "/k"
    events, problems = _events(channel, len(revisions))
    assert problems == []
    assert [e.revision for e in events] == revisions
    assert all(e.key == "/k" for e in events)
    assert [e.type for e in events] == [EventType.PUT] * 30 + [EventType.DELETE, EventType.PUT]
    assert [e.value for e in events] == [f"v{i}".encode() for i in range(30)] + [b"", b"again"]
    assert events[0].value_str == "v0"
    last = conn.put("/k", "sentinel").header.revision
    sentinel = _next_event(channel)  # nothing repeated or extra came before it
    assert (sentinel.value, sentinel.revision) == (b"sentinel", last)
    observer.stop()


def test_events_carry_the_previous_value(conn: Connector) -> None:
    observer = conn.observer("/d")
    channel = observer.start()
    conn.put("/d", "first")
    conn.put("/d", "second")
    deleted_at = conn.delete("/d").header.revision
    created, updated, deleted = _events(channel, 3)[0]
    assert (created.type, created.value, created.prev_value) == (EventType.PUT, b"first", None)
    assert (updated.type, updated.value, updated.prev_value) == (
        EventType.PUT,
        b"second",
        b"first",
    )
    assert (deleted.type, deleted.key, deleted.value, deleted.prev_value) == (
        EventType.DELETE,
        "/d",
        b"",
        b"second",
    )
    assert deleted.revision == deleted_at
    observer.stop()


def test_recursive_delivers_every_key_under_the_prefix(conn: Connector) -> None:
    observer = conn.observer("/svc/", prefix=True)
    channel = observer.start()
    expected = [
        (EventType.PUT, "/svc/a", conn.put("/svc/a", "1").header.revision),
        (EventType.PUT, "/svc/b/c", conn.put("svc/b/c", "2").header.revision),
    ]
    conn.put("/other/x", "outside")
    conn.put("/svcx", "outside: a sibling of the prefix")
    expected.append((EventType.DELETE, "/svc/a", conn.delete("/svc/a").header.revision))
    result = conn.delete_prefix("/svc/")
    expected.append((EventType.DELETE, "/svc/b/c", result.header.revision))
    events, _ = _events(channel, len(expected))
    assert [(e.type, e.key, e.revision) for e in events] == expected
    conn.put("/svc/z", "sentinel")
    assert _next_event(channel).key == "/svc/z"
    observer.stop()


def test_not_recursive_ignores_keys_under_the_path(conn: Connector) -> None:
    observer = conn.observer("/tree", prefix=False)
    channel = observer.start()
    conn.put("/tree/leaf", "not observed")
    conn.put("/tree", "observed")
    event = _next_event(channel)
    assert (event.key, event.value) == ("/tree", b"observed")
    observer.stop()


def test_past_start_revision_replays_history(conn: Connector) -> None:
    revisions = [conn.put("/h", f"v{i}").header.revision for i in range(1, 4)]
    observer = conn.observer("/h", start_revision=revisions[1])
    channel = observer.start()
    replayed, _ = _events(channel, 2)
    assert [(e.value, e.revision) for e in replayed] == [
        (b"v2", revisions[1]),
        (b"v3", revisions[2]),
    ]
    assert replayed[0].prev_value == b"v1"
    live = conn.put("/h", "v4").header.revision
    event = _next_event(channel)
    assert (event.value, event.revision) == (b"v4", live)
    observer.stop()


def test_start_from_now_misses_nothing_written_after_start(conn: Connector) -> None:
    for i in range(20):  # start() returns once the watch exists: the first put is seen
        observer = conn.observer(f"/now/{i}")
        channel = observer.start()
        revision = conn.put(f"/now/{i}", "v").header.revision
        assert _next_event(channel).revision == revision
        observer.stop()


def test_recursive_history_replay_under_a_namespace(etcd: EtcdTestContext, conn: Connector) -> None:
    other = geventc.connect(etcd.endpoints, namespace=etcd.prefix + "other")
    with other:
        first = conn.put("/p/1", "a").header.revision
        other.put("/p/1", "not in this namespace")
        conn.put("/p/2", "b")
        observer = conn.observer("/p/", start_revision=first, prefix=True)
        channel = observer.start()
        events, _ = _events(channel, 2)
        assert [(e.key, e.value) for e in events] == [("/p/1", b"a"), ("/p/2", b"b")]
        observer.stop()


# --- life cycle ---------------------------------------------------------------------------


def test_a_second_start_raises_and_changes_nothing(conn: Connector) -> None:
    observer = conn.observer("/twice")
    channel = observer.start()
    with pytest.raises(RecipeStateError):
        observer.start()
    with pytest.raises(RecipeStateError), pytest.warns(DeprecationWarning):
        observer.start(start_revision=1, recursive=True)
    assert observer.running and observer.channel is channel
    conn.put("/twice/child", "not observed: the first start was not recursive")
    revision = conn.put("/twice", "v").header.revision
    assert _next_event(channel).revision == revision
    observer.stop()
    with pytest.raises(RecipeStateError):
        observer.start()


def test_stop_ends_iteration_and_is_idempotent(conn: Connector) -> None:
    observer = conn.observer("/stop")
    observer.stop()  # before start: nothing to do
    channel = observer.start()
    conn.put("/stop", "1")
    assert _next_event(channel).value == b"1"
    reader = gevent.spawn(list, channel)
    gevent.idle()  # the reader now waits in the channel
    assert not reader.ready()
    started = time.monotonic()
    observer.stop()
    assert time.monotonic() - started < 3
    assert reader.get(timeout=5) == []
    assert not observer.running and channel.closed
    observer.stop()
    observer.stop()
    conn.put("/stop", "2")  # after stop: never delivered
    with pytest.raises(ChannelClosed):
        channel.get(timeout=1)


def test_context_manager_starts_with_defaults_and_stops(conn: Connector) -> None:
    with conn.observer("/cm") as observer:
        assert isinstance(observer, Observer) and observer.running
        conn.put("/cm/child", "not observed: not recursive")
        revision = conn.put("/cm", "v").header.revision
        event = _next_event(observer.channel)
        assert (event.key, event.value, event.revision) == ("/cm", b"v", revision)
    assert not observer.running
    assert _assert_ends(observer.channel) == []


def test_channel_before_start_raises(conn: Connector) -> None:
    with pytest.raises(RecipeStateError):
        conn.observer("/early").channel  # noqa: B018 - the property raises


@pytest.mark.parametrize(
    "options",
    [
        {"start_revision": -1},
        {"start_revision": "5"},
        {"start_revision": 1.5},
        {"start_revision": None},
        {"start_revision": True},
        {"recursive": 1},
        {"recursive": "yes"},
        {"recursive": None},
        {"maxsize": 0},
        {"maxsize": True},
    ],
    ids=repr,
)
def test_bad_start_arguments_raise_before_starting(
    conn: Connector, options: dict[str, Any]
) -> None:
    # given to the factory (where settings live), refused there; given to start() the
    # old way (deprecated), refused there before anything starts
    name = "prefix" if "recursive" in options else next(iter(options))
    factory_options = {name: next(iter(options.values()))}
    with pytest.raises(InvalidArgument):
        conn.observer("/bad", **factory_options)
    observer = conn.observer("/bad")
    if None not in options.values():  # None given to start() means "not given"
        with pytest.warns(DeprecationWarning), pytest.raises(InvalidArgument):
            observer.start(**options)
    assert not observer.running
    observer.start()  # nothing was started: a good start still works
    revision = conn.put("/bad", "v").header.revision
    assert _next_event(observer.channel).revision == revision
    observer.stop()


@pytest.mark.parametrize("path", ["", b"", None, 5, ["/k"]], ids=repr)
def test_bad_paths_raise(conn: Connector, path: Any) -> None:
    with pytest.raises(InvalidArgument):
        conn.observer(path)


# --- compaction and faults ---------------------------------------------------------------


def test_unreachable_etcd_is_reported_and_stop_is_bounded() -> None:
    dead = [f"http://127.0.0.1:{free_port()}"]
    with geventc.connect(dead, namespace="nowhere", timeout=1.0) as conn:
        observer = conn.observer("/k")
        started = time.monotonic()
        channel = observer.start()  # waits for the watch at most the client's timeout
        assert time.monotonic() - started < 3
        problem = channel.get(timeout=5)
        assert isinstance(problem, RecipeError) and not problem.fatal
        assert isinstance(problem.error, EtcdError) and observer.running
        started = time.monotonic()
        observer.stop()
        assert time.monotonic() - started < 3.5
        rest = _assert_ends(channel)
        # what it reports meanwhile: the failures, and that it cannot be current
        assert all(
            (isinstance(item, RecipeError) and not item.fatal)
            or (isinstance(item, Staleness) and item.stale)
            for item in rest
        )


def test_compacted_start_revision_is_a_fatal_error(etcd: EtcdTestContext, conn: Connector) -> None:
    first = conn.put("/old", "1").header.revision
    last = conn.put("/old", "2").header.revision
    conn.compact(last)
    observer = conn.observer("/old", start_revision=first)
    channel = observer.start()
    item = channel.get(timeout=10)
    assert isinstance(item, RecipeError) and item.fatal
    assert isinstance(item.error, Compacted) and item.error.compact_revision == last
    assert _assert_ends(channel) == []
    assert not observer.running
    observer.stop()


def test_observer_survives_a_server_restart_exactly_once(private_server: EtcdServer) -> None:
    key = "/restart/k"
    conn = geventc.connect(private_server.endpoints, namespace="restart", timeout=2.0)
    writer = geventc.Client(private_server.endpoints, timeout=1.0)
    confirmed: list[int] = []
    stop_writing = Event()

    def write() -> None:
        number = 0
        while not stop_writing.is_set():
            try:
                writer.put(key, str(number))
                confirmed.append(number)
            except EtcdError:  # down, or indeterminate: history tells what was committed
                pass
            number += 1

    with conn, writer:
        observer = conn.observer("/k")
        channel = observer.start()
        first = writer.put(key, "start").header.revision
        writing = gevent.spawn(write)
        wait_until(lambda: len(confirmed) >= 20, 10, "writes before the kill")
        private_server.kill(0)
        down_at = len(confirmed)
        private_server.restart(0)
        wait_until(lambda: len(confirmed) >= down_at + 20, 20, "writes after the restart")
        stop_writing.set()
        writing.get(timeout=5)
        last = writer.get(key)
        assert last is not None
        committed = []  # every revision since ``first`` is a write of this key
        for revision in range(first, last.mod_revision + 1):
            kv = writer.get(key, revision=revision)
            assert kv is not None and kv.mod_revision == revision
            committed.append((revision, kv.value))
        events, _ = _events(channel, len(committed), timeout=20)
        assert [(e.revision, e.value) for e in events] == committed
        delivered = [int(e.value) for e in events[1:]]
        assert len(set(delivered)) == len(delivered)  # no repeats
        # every acknowledged write, in the order it was acknowledged (a write that failed
        # indeterminately may be committed later than a newer one: revisions tell)
        acknowledged = set(confirmed)
        assert [n for n in delivered if n in acknowledged] == confirmed
        sentinel = writer.put(key, "sentinel").header.revision
        assert _next_event(channel).revision == sentinel
        observer.stop()


def test_compaction_while_the_server_is_down_is_fatal(private_server: EtcdServer) -> None:
    member = private_server.members[0]
    conn = geventc.connect(private_server.endpoints, namespace="c", timeout=1.0)
    with conn:
        observer = conn.observer("/k")
        channel = observer.start()
        seen = conn.put("/k", "seen").header.revision
        assert _next_event(channel).revision == seen
        # Bring the server back at an address the observer does not know, write past its
        # position and compact there, then restore the server at its own address.
        private_server.kill(0)
        usual_port = member.client_port
        member.client_port = free_port()
        try:
            private_server.restart(0)
            with geventc.Client([member.client_url]) as elsewhere:
                elsewhere.put("/c/k", "missed-1")
                newest = elsewhere.put("/c/k", "missed-2").header.revision
                elsewhere.compact(newest, physical=True)
        finally:
            private_server.kill(0)
            member.client_port = usual_port
        private_server.restart(0)
        deadline = time.monotonic() + 20
        while True:
            item = channel.get(timeout=max(0.01, deadline - time.monotonic()))
            assert not isinstance(item, WatchEvent), f"delivered {item} past a compaction"
            if isinstance(item, RecipeError) and item.fatal:
                break
        assert isinstance(item.error, Compacted) and item.error.compact_revision == newest
        assert _assert_ends(channel) == []
        assert not observer.running


@pytest.mark.cluster
def test_killing_the_member_the_observer_uses_loses_no_event(
    etcd_cluster: EtcdTestContext,
) -> None:
    cluster = etcd_cluster.cluster
    used = cluster.leader()  # the hardest member to lose: writes wait for an election
    others = [m.client_url for m in cluster.members if m is not used]
    namespace = etcd_cluster.prefix + "ns"
    conn = geventc.connect([used.client_url, *others], namespace=namespace, timeout=5.0)
    writer = geventc.connect(others, namespace=namespace, timeout=2.0)
    confirmed: list[str] = []
    stop_writing = Event()

    def write() -> None:
        number = 0
        while not stop_writing.is_set():
            key = f"/w/{number:05d}"
            try:
                writer.put(key, key)
                confirmed.append(key)
            except EtcdError:  # an election, or indeterminate: the keys tell
                pass
            number += 1

    with conn, writer:
        observer = conn.observer("/w/", prefix=True)
        channel = observer.start()
        assert conn.client.transport.current_endpoint == used.client_url
        writing = gevent.spawn(write)
        wait_until(lambda: len(confirmed) >= 20, 10, "writes before the kill")
        cluster.kill(used)
        down_at = len(confirmed)
        wait_until(lambda: len(confirmed) >= down_at + 20, 20, "writes after the kill")
        stop_writing.set()
        writing.get(timeout=5)
        stored = writer.get_prefix("/w/", sort_target="MOD", sort_order="ASCEND")
        committed = [(kv.key_str, kv.mod_revision) for kv in stored.kvs]
        assert set(confirmed) <= {k for k, _ in committed}
        events, _ = _events(channel, len(committed), timeout=20)
        assert [(e.key, e.revision) for e in events] == committed
        assert all(e.type is EventType.PUT and e.value_str == e.key for e in events)
        sentinel = writer.put("/w/sentinel", "end").header.revision
        assert _next_event(channel).revision == sentinel
        assert conn.client.transport.current_endpoint != used.client_url
        observer.stop()


def test_prefix_means_under_the_path_not_its_siblings(conn: Connector) -> None:
    # observer("/services/api", prefix) also delivered /services/api2/i9, while a tracker
    # of the same path did not: "under a path" is under path + "/"
    observer = conn.observer("/services/api", prefix=True)
    channel = observer.start()
    conn.put("/services/api2/i9", "sibling")
    conn.put("/services/api", "the path itself")
    revision = conn.put("/services/api/i1", "child").header.revision
    event = _next_event(channel)
    assert (event.key, event.revision) == ("/services/api/i1", revision)
    observer.stop()


def test_with_starts_it_and_start_inside_returns_the_same_channel(conn: Connector) -> None:
    # `with conn.service_tracker(p) as t: t.start()` raised "already started"
    with conn.observer("/cm2", prefix=True) as observer:
        channel = observer.start()
        assert channel is observer.channel
        revision = conn.put("/cm2/x", "v").header.revision
        assert _next_event(channel).revision == revision
    assert not observer.running
    with conn.service_tracker("/cm3") as tracker:
        assert tracker.start() is tracker.channel


def test_the_old_start_keywords_still_work_and_warn(conn: Connector) -> None:
    observer = conn.observer("/legacy")
    with pytest.warns(DeprecationWarning, match="conn.observer"):
        channel = observer.start(recursive=True)
    revision = conn.put("/legacy/x", "v").header.revision
    assert _next_event(channel).revision == revision
    observer.stop()
