"""The namespaced Connector and prepare_endpoint_list against a real etcd."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest

import geventc
from geventc import (
    Compare,
    Connector,
    DeleteResult,
    Event,
    EventType,
    Op,
    PutResult,
    RangeResult,
    RecipeError,
    TxnResult,
    WatchResponse,
    WatchStream,
)
from geventc.errors import ClientClosed, InvalidArgument
from geventc.testing.plugin import EtcdTestContext
from geventc.testing.server import free_port

Connect = Callable[..., Connector]


@pytest.fixture
def connect(etcd: EtcdTestContext) -> Iterator[Connect]:
    """Connectors to the test server, with namespaces under the test's prefix by default;
    every one is closed after the test."""
    made: list[Connector] = []

    def make(name: str | None = "a", **options: Any) -> Connector:
        namespace = None if name is None else etcd.prefix + name
        conn = geventc.connect(etcd.endpoints, namespace=namespace, **options)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


def _root(etcd: EtcdTestContext, name: str) -> str:
    """Where etcd stores the keys of the namespace ``etcd.prefix + name``."""
    return etcd.prefix + name


def _first_events(stream: WatchStream, count: int, timeout: float = 10.0) -> list[Event]:
    events: list[Event] = []
    with gevent.Timeout(timeout):
        for response in stream:
            assert isinstance(response, WatchResponse)
            events.extend(response.events)
            if len(events) >= count:
                break
    return events


def _keys(result: RangeResult) -> list[bytes]:
    return [kv.key for kv in result.kvs]


# --- prepare_endpoint_list ---------------------------------------------------------------


def test_prepare_endpoint_list_gives_one_url_per_host() -> None:
    hosts = ["10.0.0.1", "etcd-2.example.com", " padded ", "::1", "[fe80::1]"]
    endpoints = geventc.prepare_endpoint_list(hosts, 2379)
    assert endpoints == [
        "http://10.0.0.1:2379",
        "http://etcd-2.example.com:2379",
        "http://padded:2379",
        "http://[::1]:2379",
        "http://[fe80::1]:2379",
    ]
    assert len(endpoints) == len(hosts) and all(endpoints)  # no empty entries
    assert geventc.prepare_endpoint_list(("a", "b"), 1, scheme="https") == [
        "https://a:1",
        "https://b:1",
    ]
    assert geventc.prepare_endpoint_list(iter(["h"]), 65535, "HTTPS") == ["https://h:65535"]


def test_prepare_endpoint_list_reaches_the_real_server(etcd: EtcdTestContext) -> None:
    port = int(etcd.endpoint.rsplit(":", 1)[1])
    endpoints = geventc.prepare_endpoint_list(["127.0.0.1"], port)
    assert endpoints == [etcd.endpoint]
    conn = geventc.connect(endpoints, namespace=etcd.prefix + "p")
    with conn:
        conn.put("/k", "v")
        kv = conn.get("/k")
        assert kv is not None and kv.value == b"v"


@pytest.mark.parametrize(
    "hosts",
    [
        [],
        "etcd1",
        None,
        42,
        [""],
        ["   "],
        [None],
        [2379],
        [b"etcd1"],
        ["etcd1", ""],
        ["etcd/1"],
        ["http://etcd1"],
        ["etcd1:2379"],
        ["[::1"],
        ["etcd 1"],
    ],
    ids=repr,
)
def test_prepare_endpoint_list_rejects_bad_hosts(hosts: Any) -> None:
    with pytest.raises(InvalidArgument):
        geventc.prepare_endpoint_list(hosts, 2379)


@pytest.mark.parametrize("port", [0, -1, 65536, "2379", 2379.0, True, None], ids=repr)
def test_prepare_endpoint_list_rejects_bad_ports(port: Any) -> None:
    with pytest.raises(InvalidArgument, match="port"):
        geventc.prepare_endpoint_list(["etcd1"], port)


@pytest.mark.parametrize("scheme", ["ftp", "", "http://", "unix", None, 1], ids=repr)
def test_prepare_endpoint_list_rejects_bad_schemes(scheme: Any) -> None:
    with pytest.raises(InvalidArgument, match="scheme"):
        geventc.prepare_endpoint_list(["etcd1"], 2379, scheme)


# --- connect and namespaces ----------------------------------------------------------


def test_connect_passes_client_options(etcd: EtcdTestContext, connect: Connect) -> None:
    conn = connect("opts", timeout=2.5, connect_timeout=0.5)
    assert isinstance(conn, Connector) and isinstance(conn.client, geventc.Client)
    assert conn.client.transport.timeout == 2.5
    assert conn.client.transport.connect_timeout == 0.5
    assert conn.client.endpoints == etcd.endpoints
    assert conn.namespace.name == _root(etcd, "opts").rstrip("/")
    assert not conn.closed
    with pytest.raises(InvalidArgument):
        geventc.connect(etcd.endpoints, namespace="x", timeout=0)
    with pytest.raises(InvalidArgument):
        geventc.connect([], namespace="x")
    with pytest.raises(TypeError):
        geventc.connect(etcd.endpoints, namespace="x", no_such_option=1)


@pytest.mark.parametrize("namespace", ["", "/", "//", "a//b", 1, b"ns", ["ns"], True], ids=repr)
def test_bad_namespaces_are_refused(etcd: EtcdTestContext, namespace: Any) -> None:
    with pytest.raises(InvalidArgument, match="namespace"):
        geventc.connect(etcd.endpoints, namespace=namespace)


def test_namespace_spellings_name_the_same_root(etcd: EtcdTestContext) -> None:
    base = etcd.prefix.strip("/")
    spellings = [f"{base}/same", f"/{base}/same", f"{base}/same/", f"/{base}/same/"]
    conns = [geventc.connect(etcd.endpoints, namespace=s) for s in spellings]
    try:
        conns[0].put("/k", "v")
        for conn in conns:
            kv = conn.get("/k")
            assert kv is not None and kv.key == b"/k" and kv.value == b"v"
    finally:
        for conn in conns:
            conn.close()


def test_without_a_namespace_keys_pass_through(etcd: EtcdTestContext, connect: Connect) -> None:
    conn = connect(None)
    assert conn.namespace.name is None
    conn.put(etcd.key("plain"), "v")
    raw = conn.client.get(etcd.key("plain"))
    assert raw is not None and raw.key == etcd.key("plain").encode()
    kv = conn.get(etcd.key("plain"))
    assert kv is not None and kv.key == etcd.key("plain").encode()
    assert _keys(conn.get_prefix(etcd.prefix)) == [etcd.key("plain").encode()]


def test_keys_are_stored_under_the_namespace_and_returned_stripped(
    etcd: EtcdTestContext, connect: Connect
) -> None:
    conn = connect("a")
    root = _root(etcd, "a")
    first = conn.put("/x", "1")
    assert isinstance(first, PutResult) and first.prev_kv is None
    kv = conn.get("/x")
    assert kv is not None and kv.key == b"/x" and kv.key_str == "/x" and kv.value == b"1"
    stored = conn.client.get(f"{root}/x")
    assert stored is not None and stored.key == f"{root}/x".encode() and stored.value == b"1"
    second = conn.put("/x", "2", prev_kv=True)
    assert second.prev_kv is not None
    assert second.prev_kv.key == b"/x" and second.prev_kv.value == b"1"
    conn.put("/dir/y", "3")
    everything = conn.get_prefix("")
    assert _keys(everything) == [b"/dir/y", b"/x"] and everything.count == 2
    assert _keys(conn.get_prefix("/")) == [b"/dir/y", b"/x"]
    assert _keys(conn.get_prefix("/dir/")) == [b"/dir/y"]
    assert _keys(conn.client.get_prefix(root + "/")) == [
        f"{root}/dir/y".encode(),
        f"{root}/x".encode(),
    ]
    deleted = conn.delete("/x", prev_kv=True)
    assert isinstance(deleted, DeleteResult) and deleted.deleted == 1
    assert [kv.key for kv in deleted.prev_kvs] == [b"/x"]
    gone = conn.delete_prefix("/dir/", prev_kv=True)
    assert gone.deleted == 1 and [kv.key for kv in gone.prev_kvs] == [b"/dir/y"]
    assert conn.client.get_prefix(root + "/").count == 0


def test_relative_and_absolute_keys_are_the_same_key(
    etcd: EtcdTestContext, connect: Connect
) -> None:
    conn = connect("a")
    conn.put("x", "1")
    kv = conn.get("/x")
    assert kv is not None and kv.key == b"/x" and kv.value == b"1"
    conn.put("/x", "2")
    kv = conn.get("x")
    assert kv is not None and kv.key == b"/x" and kv.value == b"2" and kv.version == 2
    assert conn.get(b"x") == conn.get(b"/x")
    assert _keys(conn.get_prefix("")) == [b"/x"]
    assert conn.txn([Compare.value("x") == "2"], [Op.put("/x", "3")]).succeeded
    assert conn.txn([Compare.value("/x") == "3"], [Op.delete("x")]).succeeded
    assert conn.get("/x") is None
    assert conn.delete("x").deleted == 0
    assert conn.client.get_prefix(_root(etcd, "a") + "/").count == 0


def test_two_namespaces_cannot_see_each_other(etcd: EtcdTestContext, connect: Connect) -> None:
    a, b = connect("a"), connect("b")
    sibling = connect("ab")  # a namespace whose name merely starts with "a"
    a.put("/x", "from-a")
    a.put("/only-a", "1")
    b.put("/x", "from-b")
    b.put("/only-b", "1")
    sibling.put("/x", "from-ab")
    kv_a, kv_b = a.get("/x"), b.get("/x")
    assert kv_a is not None and kv_a.value == b"from-a"
    assert kv_b is not None and kv_b.value == b"from-b"
    assert a.get("/only-b") is None and b.get("/only-a") is None
    assert _keys(a.get_prefix("")) == [b"/only-a", b"/x"]
    assert _keys(b.get_prefix("/")) == [b"/only-b", b"/x"]
    assert a.get_prefix("", count_only=True).count == 2
    assert a.delete("/only-b").deleted == 0
    assert b.delete_prefix("/").deleted == 2
    assert b.get_prefix("").count == 0
    assert _keys(a.get_prefix("")) == [b"/only-a", b"/x"]
    assert a.delete_prefix("/").deleted == 2
    sibling_kv = sibling.get("/x")
    assert sibling_kv is not None and sibling_kv.value == b"from-ab"


def test_delete_prefix_refuses_the_empty_prefix(connect: Connect) -> None:
    conn = connect("a")
    conn.put("/keep", "1")
    with pytest.raises(InvalidArgument):
        conn.delete_prefix("")
    assert conn.get("/keep") is not None


def test_watch_under_a_namespace_sees_only_its_keys_stripped(connect: Connect) -> None:
    a, b = connect("a"), connect("b")
    whole = a.watch("", prefix=True, prev_kv=True)
    one = a.watch("/k", prev_kv=True)
    b.put("/k", "b1")  # committed first: it would be the first event if a could see it
    b.put("/other", "b2")
    a.put("/k", "a1")
    a.put("k", "a2")
    a.delete("/k")
    try:
        events = _first_events(whole, 3)
        assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
            (EventType.PUT, b"/k", b"a1"),
            (EventType.PUT, b"/k", b"a2"),
            (EventType.DELETE, b"/k", b""),
        ]
        assert events[1].prev_kv is not None and events[1].prev_kv.key == b"/k"
        assert events[2].prev_kv is not None and events[2].prev_kv.value == b"a2"
        single = _first_events(one, 3)
        assert [(e.kv.key, e.kv.value) for e in single] == [
            (b"/k", b"a1"),
            (b"/k", b"a2"),
            (b"/k", b""),
        ]
        assert [e.revision for e in single] == [e.revision for e in events]
    finally:
        whole.cancel()
        one.cancel()


def test_watch_prefix_under_a_namespace(connect: Connect) -> None:
    a, b = connect("a"), connect("b")
    stream = a.watch("/svc/", prefix=True)
    b.put("/svc/1", "b")
    a.put("/svcx", "not under /svc/")
    a.put("/svc/1", "a")
    a.put("/svc/deep/2", "a")
    try:
        events = _first_events(stream, 2)
        assert [e.kv.key for e in events] == [b"/svc/1", b"/svc/deep/2"]
        assert all(e.kv.value == b"a" for e in events)
    finally:
        stream.cancel()


def test_txn_compares_and_ops_stay_in_the_namespace(
    etcd: EtcdTestContext, connect: Connect
) -> None:
    a, b = connect("a"), connect("b")
    a.put("/cfg/1", "a1")
    a.put("/cfg/2", "a2")
    b.put("/cfg/1", "b1")
    b.put("/only-b/x", "1")
    # b's comparisons see only b's keys: /cfg/2 is absent for b
    result = b.txn(
        compare=[Compare.value("/cfg/1") == "b1", Compare.version("/cfg/2") == 0],
        success=[Op.get("/cfg/", prefix=True), Op.put("/cfg/3", "b3", prev_kv=True)],
        failure=[Op.put("/failed", "1")],
    )
    assert isinstance(result, TxnResult) and result.succeeded
    listed, put = result.responses
    assert isinstance(listed, RangeResult) and _keys(listed) == [b"/cfg/1"]
    assert isinstance(put, PutResult) and put.prev_kv is None
    # a prefix comparison over a range that holds only another namespace's keys fails
    result = a.txn(
        compare=[Compare.version("/only-b/", prefix=True) > 0],
        success=[Op.put("/wrong", "1")],
        failure=[Op.get("", prefix=True)],
    )
    assert not result.succeeded
    (everything,) = result.responses
    assert isinstance(everything, RangeResult)
    assert _keys(everything) == [b"/cfg/1", b"/cfg/2"]
    assert a.get("/wrong") is None
    # a prefix comparison over a's own keys holds; a prefix delete removes only a's keys
    result = a.txn(
        compare=[Compare.create_revision("/cfg/", prefix=True) > 0],
        success=[Op.delete("/cfg/", prefix=True, prev_kv=True)],
    )
    assert result.succeeded
    (deleted,) = result.responses
    assert isinstance(deleted, DeleteResult) and deleted.deleted == 2
    assert sorted(kv.key for kv in deleted.prev_kvs) == [b"/cfg/1", b"/cfg/2"]
    assert a.get_prefix("/cfg/").count == 0
    assert _keys(b.get_prefix("/cfg/")) == [b"/cfg/1", b"/cfg/3"]
    assert etcd.client().get(f"{_root(etcd, 'b')}/cfg/3") is not None


def test_nested_txn_under_a_namespace(etcd: EtcdTestContext, connect: Connect) -> None:
    a, b = connect("a"), connect("b")
    a.put("/n", "1")
    b.put("/n", "other")
    result = a.txn(
        compare=[Compare.value("n") == "1"],
        success=[
            Op.txn(
                compare=[Compare.value("/n") == "1", Compare.version("/absent") == 0],
                success=[Op.put("/n", "2"), Op.get("/n"), Op.get("", prefix=True)],
                failure=[Op.put("/inner-failed", "1")],
            ),
            Op.txn(
                compare=[Compare.value("/n") == "other"],  # b's value: not visible here
                success=[Op.put("/leak", "1")],
                failure=[Op.delete("/n", prev_kv=True)],
            ),
        ],
    )
    assert result.succeeded
    first, second = result.responses
    assert isinstance(first, TxnResult) and first.succeeded
    _, got, everything = first.responses
    assert isinstance(got, RangeResult) and isinstance(everything, RangeResult)
    assert [(kv.key, kv.value) for kv in got.kvs] == [(b"/n", b"2")]
    assert _keys(everything) == [b"/n"]
    assert isinstance(second, TxnResult) and not second.succeeded
    (deleted,) = second.responses
    assert isinstance(deleted, DeleteResult) and deleted.deleted == 1
    assert [(kv.key, kv.value) for kv in deleted.prev_kvs] == [(b"/n", b"2")]
    assert a.get_prefix("").count == 0
    untouched = b.get("/n")
    assert untouched is not None and untouched.value == b"other"
    stored = etcd.client().get_prefix(etcd.prefix, keys_only=True)
    assert _keys(stored) == [f"{_root(etcd, 'b')}/n".encode()]  # no /inner-failed, /leak


def test_txn_accepts_any_iterable_of_compares_and_ops(connect: Connect) -> None:
    conn = connect("a")
    conn.put("/g", "current")
    result = conn.txn(
        compare=(c for c in [Compare.value("/g") == "something else"]),
        success=iter([Op.put("/g", "wrong branch")]),
        failure=(op for op in [Op.put("/g", "failure branch"), Op.get("/g")]),
    )
    assert not result.succeeded and len(result.responses) == 2
    kv = conn.get("/g")
    assert kv is not None and kv.value == b"failure branch"


def test_lease_keys_come_back_stripped(connect: Connect) -> None:
    conn = connect("a")
    lease = conn.grant(30)
    conn.put("/leased", "v", lease=lease)
    ttl = conn.time_to_live(lease, keys=True)
    assert ttl.keys == (b"/leased",) and ttl.granted_ttl == 30
    conn.revoke(lease)
    assert conn.get("/leased") is None


# --- paths ----------------------------------------------------------------------------


def test_construct_path(connect: Connect) -> None:
    conn = connect("a")
    assert conn.construct_path("services/svc", "inst1") == "/services/svc/inst1"
    assert conn.construct_path("/services/", "/svc/", "inst1/") == "/services/svc/inst1"
    assert conn.construct_path("one") == "/one"
    path = conn.construct_path("services", "svc", "inst1")
    conn.put(path, "addr")
    kv = conn.get(path)
    assert kv is not None and kv.key_str == "/services/svc/inst1"


@pytest.mark.parametrize(
    "parts",
    [(), ("",), ("/",), ("a", ""), ("a", "/"), ("a//b",), ("a", "b//c"), ("a", None), (b"a",)],
    ids=repr,
)
def test_construct_path_refuses_empty_parts(connect: Connect, parts: tuple[Any, ...]) -> None:
    conn = connect("a")
    with pytest.raises(InvalidArgument):
        conn.construct_path(*parts)


# --- closing -------------------------------------------------------------------------


def _drain_until_closed(channel: Any, timeout: float = 5.0) -> list[Any]:
    """Everything left on ``channel``; fails if it does not end within ``timeout``."""
    reader = gevent.spawn(list, channel)
    items = reader.get(timeout=timeout)
    assert isinstance(items, list)
    return items


def test_close_stops_recipes_and_later_calls_raise(connect: Connect) -> None:
    conn = connect("a")
    observer = conn.observer("/watched")
    events = observer.start()
    monitor = conn.health_monitor()
    health = monitor.start(interval=0.2)
    assert not isinstance(health.get(timeout=5), RecipeError)
    conn.put("/watched", "1")
    first = events.get(timeout=5)
    assert not isinstance(first, RecipeError) and first.value == b"1"
    started = time.monotonic()
    conn.close()
    assert time.monotonic() - started < 5
    assert conn.closed and not observer.running and not monitor.running
    for item in _drain_until_closed(events) + _drain_until_closed(health):
        assert not (isinstance(item, RecipeError) and item.fatal)
    assert events.closed and health.closed
    conn.close()  # idempotent
    with pytest.raises(ClientClosed):
        conn.get("/watched")
    with pytest.raises(ClientClosed):
        conn.put("/watched", "2")
    with pytest.raises(ClientClosed):
        conn.get_prefix("")
    with pytest.raises(ClientClosed):
        conn.txn([], [Op.put("/t", "1")])
    with pytest.raises(ClientClosed):
        conn.watch("/watched")
    with pytest.raises(ClientClosed):
        conn.observer("/watched").start()
    with pytest.raises(ClientClosed):
        conn.health_monitor().start(once=True)


def test_close_is_bounded_when_etcd_is_unreachable() -> None:
    conn = geventc.connect([f"http://127.0.0.1:{free_port()}"], namespace="gone", timeout=30.0)
    observer = conn.observer("/k")
    events = observer.start(start_revision=1)  # a past revision: start() does not wait
    health = conn.health_monitor().start(interval=0.1)
    started = time.monotonic()
    conn.close()
    assert time.monotonic() - started < 5
    _drain_until_closed(events)
    _drain_until_closed(health)
    assert not observer.running


def test_connector_as_context_manager(etcd: EtcdTestContext) -> None:
    with geventc.connect(etcd.endpoints, namespace=etcd.prefix + "cm") as conn:
        assert isinstance(conn, Connector) and not conn.closed
        conn.put("/k", "v")
        observer = conn.observer("/k")
        channel = observer.start()
    assert conn.closed and not observer.running
    assert _drain_until_closed(channel) == []
    with pytest.raises(ClientClosed):
        conn.get("/k")
    stored = etcd.client().get(etcd.prefix + "cm/k")
    assert stored is not None and stored.value == b"v"
