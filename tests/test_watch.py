"""Watch streams against a real etcd."""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import pytest
from helpers.waiting import wait_until

from geventc import Event, EventType
from geventc.errors import Compacted, InvalidArgument
from geventc.testing import EtcdServer
from geventc.testing.plugin import EtcdTestContext


def _collect(stream: Iterator[object], count: int, timeout: float = 20.0) -> list[Event]:
    events: list[Event] = []
    with gevent.Timeout(timeout):
        for response in stream:
            events.extend(response.events)  # type: ignore[attr-defined]
            if len(events) >= count:
                break
    return events


def test_watch_delivers_1000_puts_in_order(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    stream = client.watch(etcd.key("seq/"), prefix=True)
    writer = gevent.spawn(
        lambda: [client.put(etcd.key("seq", f"{i:04d}"), str(i)) for i in range(1000)]
    )
    events = _collect(stream, 1000)
    writer.get()
    stream.cancel()
    assert [e.kv.value_str for e in events] == [str(i) for i in range(1000)]
    revisions = [e.revision for e in events]
    assert revisions == sorted(revisions) and len(set(revisions)) == 1000


def test_watch_from_a_read_revision_has_no_gap(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    client.put(etcd.key("cfg"), "v1")
    read = client.get_prefix(etcd.key("cfg"))
    client.put(etcd.key("cfg"), "v2")  # written between the read and the watch
    stream = client.watch(etcd.key("cfg"), start_revision=read.header.revision + 1)
    (event,) = _collect(stream, 1)
    stream.cancel()
    assert event.kv.value == b"v2"


def test_watch_events_delete_prev_kv_and_filters(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    key = etcd.key("x")
    everything = client.watch(key, prev_kv=True)
    deletes_only = client.watch(key, filters=["NOPUT"])
    client.put(key, "1")
    client.delete(key)
    put, delete = _collect(everything, 2)
    assert put.type is EventType.PUT and put.kv.value == b"1"
    assert delete.type is EventType.DELETE and delete.prev_kv is not None
    assert delete.prev_kv.value == b"1"
    (only,) = _collect(deletes_only, 1)
    assert only.type is EventType.DELETE
    everything.cancel()
    deletes_only.cancel()


def test_cancel_from_another_greenlet_ends_iteration(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    stream = client.watch(etcd.key("quiet"))
    reader = gevent.spawn(lambda: list(stream))
    gevent.idle()  # the reader now waits in the stream
    assert not reader.ready()
    stream.cancel()
    assert reader.get(timeout=2) == []
    assert stream.cancelled


def test_compacted_start_revision_raises_compacted(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    first = client.put(etcd.key("c"), "1").header.revision
    last = client.put(etcd.key("c"), "2").header.revision
    client.compact(last)
    stream = client.watch(etcd.key("c"), start_revision=first)
    with pytest.raises(Compacted) as caught, gevent.Timeout(5):
        next(stream)
    assert caught.value.compact_revision == last
    assert stream.cancelled


def test_watch_rejects_bad_filters(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    with pytest.raises(InvalidArgument, match="NOPUT"):
        client.watch(etcd.key("k"), filters=["NOTHING"])
    with pytest.raises(InvalidArgument):
        client.watch(etcd.key("k"), filters="NOPUT")


def test_watch_resumes_after_server_restart_without_loss(private_server: EtcdServer) -> None:
    from geventc import Client

    client = Client(private_server.endpoints, timeout=10)
    stream = client.watch("/r/", prefix=True)
    for i in range(5):
        client.put(f"/r/{i}", str(i))
    before = _collect(stream, 5)
    private_server.restart(0)
    for i in range(5, 10):
        client.put(f"/r/{i}", str(i))
    after = _collect(stream, 5)
    stream.cancel()
    assert [e.kv.value_str for e in before + after] == [str(i) for i in range(10)]


def test_watch_compacted_while_disconnected_raises(private_server: EtcdServer) -> None:
    from geventc import Client

    client = Client(private_server.endpoints, timeout=10)
    stream = client.watch("/z", prefix=True)
    client.put("/z/1", "1")
    _collect(stream, 1)
    private_server.kill(0)
    private_server.restart(0)
    client.put("/z/2", "2")
    newest = client.put("/z/3", "3").header.revision
    client.compact(newest)
    with pytest.raises(Compacted), gevent.Timeout(10):
        _collect(stream, 2)


def test_leaving_a_shared_watch_opens_no_new_stream(etcd: EtcdTestContext) -> None:
    import geventc

    with geventc.connect(etcd.endpoints, namespace=etcd.prefix.strip("/")) as conn:
        conn.put("/w/a", "1")

        def listener(update: object) -> None:
            pass

        conn.hub.subscribe(b"/w/", listener)  # a read and a stream, once
        conn.hub.unsubscribe(b"/w/", listener)
        gevent.sleep(0.1)
        sent = conn.client.transport.requests
        for _ in range(10):
            watch = conn.hub.subscribe(b"/w/", listener)
            wait_until(lambda w=watch: w.synced, 5, "the watch read the prefix")
            gevent.sleep(0.05)  # its stream is open
            conn.hub.unsubscribe(b"/w/", listener)
        gevent.sleep(0.2)
        assert conn.client.transport.requests - sent == 20  # a read and a stream per cycle


def test_a_shared_watch_hands_out_the_prev_kv_etcd_would(etcd: EtcdTestContext) -> None:
    """The prefix watch asks etcd for no prev_kv (its copy has them): its events carry
    exactly the prev_kv of a watch that asked, puts, overwrites and deletes alike."""
    import geventc
    from geventc.watch import PrefixUpdate

    with geventc.connect(etcd.endpoints, namespace=etcd.prefix.strip("/")) as conn:
        conn.put("/pk/a", "0")
        updates: list[PrefixUpdate] = []
        watch = conn.hub.subscribe(b"/pk/", updates.append)
        wait_until(lambda: watch.synced, 5, "the watch read the prefix")
        asked = conn.watch("/pk/", prefix=True, prev_kv=True)
        conn.put("/pk/a", "1")  # overwrite
        conn.put("/pk/b", "2")  # new key: no prev_kv
        conn.txn([], [geventc.Op.put("/pk/a", "3"), geventc.Op.delete("/pk/b")])  # one revision
        conn.delete("/pk/a")
        expected = _collect(asked, 5)
        asked.cancel()

        def changes() -> list[Event]:
            return [e for u in updates if not u.resynced for e in u.events]

        wait_until(lambda: len(changes()) >= 5, 5, "five events")
        got = changes()
        assert got == expected
        assert [e.prev_kv.value if e.prev_kv else None for e in got] == [
            b"0",
            None,
            b"1",
            b"2",
            b"3",
        ]
