"""A hostile or broken gateway: truncated, garbled, HTML, huge, trickled and cut answers.

The client is given ``[fake, real]`` endpoints: every answer the fake sends is wrong in
one way. A read raises nothing and is served by the real etcd in the same call; a write
that reached the fake raises :class:`IndeterminateWrite` (it was sent) and the next call
goes to the real etcd; every failure is typed and comes within the call's timeout. After
each test no greenlet is left behind, and nothing spins while idle.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from helpers.channels import next_of
from helpers.fake_gateway import FakeGateway, Reply, chunk, greenlets_end, http, json_reply

import geventc
from geventc import Client, ClusterHealth, ClusterStatus, RecipeError, ServiceSnapshot
from geventc.errors import (
    ConnectionFailed,
    EtcdError,
    IndeterminateWrite,
    ProtocolError,
    Timeout,
)
from geventc.recipes.observer import WatchEvent
from geventc.testing import EtcdServer
from geventc.testing.plugin import EtcdTestContext

RANGE, PUT, TXN, WATCH = "/v3/kv/range", "/v3/kv/put", "/v3/kv/txn", "/v3/watch"
TIMEOUT = 2.0  # of the hostile clients: a read tries each endpoint for at most half of it
SLOW_TIMEOUT = 1.0  # of hostile clients facing slow answers: 0.5s for the fake, then the real
SHORT = 0.3  # of the clients that only know the fake
SLACK = 1.0  # scheduling slack on top of a timeout (a busy machine); the bugs were hangs

HTML = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"

#: answers no gateway should give, each paired with what it is
GARBLED: list[tuple[str, Reply]] = [
    ("truncated JSON", Reply(http(200, b'{"header":{"revision":"3"'))),
    ("HTML page with 200", Reply(http(200, HTML, content_type="text/html"))),
    ("HTML page with 502", Reply(http(502, HTML, reason="Bad Gateway", content_type="text/html"))),
    ("plain 404", Reply(http(404, b"404 page not found\n", reason="Not Found"))),
    ("plain 500", Reply(http(500, b"oops", reason="Internal Server Error"))),
    ("JSON list", json_reply([1, 2, 3])),
    ("JSON string", json_reply("ok")),
    ("header of wrong type", json_reply({"header": "x"})),
    ("result of wrong type", json_reply({"result": 5})),
    ("deeply nested JSON", Reply(http(200, b"[" * 100_000))),
    ("invalid UTF-8", Reply(http(200, b'{"header":{},"kvs":"\xff\xfe"}'))),
    ("NUL bytes", Reply(http(200, b"\0" * 64))),
    ("length lie, then close", Reply(http(200, b'{"header":{}', length=4096), after="close")),
    ("chunk cut mid-way", Reply(http(200, b"40\r\n" + b"{" * 20, chunked=True), after="close")),
    ("close without answer", Reply(b"", after="close")),
    ("garbage status line", Reply(b"SPDY/9 what\r\n\r\n", after="close")),
    ("bad chunk size", Reply(http(200, b"zz\r\nabc\r\n", chunked=True), after="close")),
]
GARBLED_IDS = [g[0] for g in GARBLED]


@pytest.fixture(autouse=True)
def no_greenlet_left(etcd_server: EtcdServer) -> Iterator[None]:
    """Every greenlet a test (and its clients and fakes) started has ended after it."""
    with greenlets_end():
        yield


@pytest.fixture
def fake() -> Iterator[FakeGateway]:
    """A fake gateway, scripted by the test through ``fake.routes``."""
    with FakeGateway() as gateway:
        yield gateway


def hostile_client(etcd: EtcdTestContext, fake: FakeGateway, **options: Any) -> Client:
    """A client whose first endpoint is the fake and second the real etcd."""
    settings: dict[str, Any] = {"timeout": TIMEOUT, "connect_timeout": 0.2, **options}
    client: Client = etcd.client([fake.endpoint, *etcd.endpoints], **settings)
    assert client.transport.current_endpoint == fake.endpoint
    return client


def revision_of(etcd: EtcdTestContext) -> int:
    """The real etcd's current revision."""
    return int(etcd.client().get_prefix(etcd.key(), count_only=True).header.revision)


# --- unary calls ----------------------------------------------------------------------------


@pytest.mark.parametrize(("label", "reply"), GARBLED, ids=GARBLED_IDS)
def test_garbled_read_is_served_by_the_next_endpoint(
    etcd: EtcdTestContext, fake: FakeGateway, label: str, reply: Reply
) -> None:
    etcd.client().put(etcd.key("k"), "real")
    fake.routes.update({RANGE: reply, TXN: reply})
    client = hostile_client(etcd, fake)
    started = time.monotonic()
    kv = client.get(etcd.key("k"))
    assert kv is not None and kv.value == b"real"
    assert time.monotonic() - started < TIMEOUT
    assert fake.paths() == [RANGE]
    assert client.transport.current_endpoint == etcd.endpoint
    assert client.get_prefix(etcd.key()).count == 1  # straight to the real etcd
    assert fake.paths() == [RANGE]


@pytest.mark.parametrize(("label", "reply"), GARBLED, ids=GARBLED_IDS)
def test_garbled_write_is_indeterminate_and_the_next_goes_elsewhere(
    etcd: EtcdTestContext, fake: FakeGateway, label: str, reply: Reply
) -> None:
    fake.routes.update({PUT: reply, TXN: reply})
    client = hostile_client(etcd, fake)
    started = time.monotonic()
    with pytest.raises(IndeterminateWrite) as caught:
        client.put(etcd.key("k"), "v1")
    assert time.monotonic() - started < TIMEOUT
    assert caught.value.endpoint == fake.endpoint
    assert client.put(etcd.key("k"), "v2").header.revision > 0
    assert fake.paths() == [PUT]
    kv = etcd.client().get(etcd.key("k"))
    assert kv is not None and kv.value == b"v2"


def test_garbled_answer_with_one_endpoint_is_a_protocol_error(
    etcd: EtcdTestContext, fake: FakeGateway
) -> None:
    fake.routes[RANGE] = Reply(http(200, b"<html>"))
    client = etcd.client([fake.endpoint], timeout=TIMEOUT)
    started = time.monotonic()
    with pytest.raises(ProtocolError, match="malformed JSON"):
        client.get("/k")
    assert time.monotonic() - started < TIMEOUT / 2  # no waiting: nobody else to ask
    assert fake.paths() == [RANGE]


def test_wrong_types_inside_the_answer_are_a_protocol_error(
    etcd: EtcdTestContext, fake: FakeGateway
) -> None:
    """Garbled fields below the header reach the client's decoder: a typed error."""
    fake.routes.update(
        {
            RANGE: json_reply({"header": {"revision": "x"}, "kvs": "abc"}),
            "/v3/lease/grant": json_reply({"header": {}, "ID": {"a": 1}, "TTL": "10"}),
            "/v3/cluster/member/list": json_reply({"header": {}, "members": [{"ID": []}]}),
            "/v3/maintenance/status": json_reply({"header": {}, "version": 3}),
            "/v3/lease/timetolive": json_reply({"header": {}, "TTL": "1", "keys": ["!!"]}),
            "/version": json_reply({"etcdserver": ["3.5"]}),
            "/health": Reply(http(200, HTML, content_type="text/html")),
        }
    )
    client = etcd.client([fake.endpoint], timeout=TIMEOUT, coalesce=False)
    calls = [
        lambda: client.get("/k"),
        lambda: client.grant(10),
        client.members,
        client.status,
        lambda: client.time_to_live(5),
        client.version,
        client.health,
    ]
    for call in calls:
        with pytest.raises(ProtocolError):
            call()


def test_coalesced_reads_fail_over_together(etcd: EtcdTestContext, fake: FakeGateway) -> None:
    for i in range(10):
        etcd.client().put(etcd.key(f"k{i}"), str(i))
    fake.routes.update({RANGE: json_reply(["no"]), TXN: json_reply(["no"])})
    client = hostile_client(etcd, fake)
    readers = [gevent.spawn(client.get, etcd.key(f"k{i}")) for i in range(10)]
    gevent.joinall(readers, timeout=TIMEOUT + SLACK, raise_error=True)
    values = [r.value.value if r.value is not None else None for r in readers]
    assert values == [str(i).encode() for i in range(10)]
    # the first reader found nothing on its way and sent its own range; the rest one txn
    assert set(fake.paths()) <= {RANGE, TXN} and len(fake.paths()) <= 2


# --- slow answers -------------------------------------------------------------------------

TRICKLED = Reply(http(200, b'{"header":{}' + b" " * 10_000 + b"}"), trickle=0.05, piece=1)
STALLED = Reply(http(200, b'{"header":', length=100), after="hang")
SILENT = Reply(b"", after="hang")
SLOW: list[tuple[str, Reply]] = [
    ("trickled body", TRICKLED),
    ("trickled status line", Reply(http(200, b"{}"), trickle=0.2, piece=1)),
    ("stalled body", STALLED),
    ("no answer at all", SILENT),
]
SLOW_IDS = [s[0] for s in SLOW]


@pytest.mark.parametrize(("label", "reply"), SLOW, ids=SLOW_IDS)
def test_slow_read_gives_up_on_the_endpoint_in_time(
    etcd: EtcdTestContext, fake: FakeGateway, label: str, reply: Reply
) -> None:
    etcd.client().put(etcd.key("k"), "real")
    fake.routes.update({RANGE: reply})
    client = hostile_client(etcd, fake, timeout=SLOW_TIMEOUT)
    started = time.monotonic()
    kv = client.get(etcd.key("k"))
    assert kv is not None and kv.value == b"real"
    assert time.monotonic() - started < SLOW_TIMEOUT + SLACK


@pytest.mark.parametrize(("label", "reply"), SLOW, ids=SLOW_IDS)
def test_slow_write_is_indeterminate_in_time(
    etcd: EtcdTestContext, fake: FakeGateway, label: str, reply: Reply
) -> None:
    fake.routes.update({PUT: reply})
    client = hostile_client(etcd, fake, timeout=SLOW_TIMEOUT / 2)
    started = time.monotonic()
    with pytest.raises(IndeterminateWrite):
        client.put(etcd.key("k"), "v")
    assert time.monotonic() - started < SLOW_TIMEOUT / 2 + SLACK
    client.put(etcd.key("k"), "v2")  # the next write goes to the real etcd


def test_slow_only_endpoint_times_out(etcd: EtcdTestContext, fake: FakeGateway) -> None:
    fake.routes.update({RANGE: TRICKLED, "/health": TRICKLED, "/version": STALLED})
    client = etcd.client([fake.endpoint], timeout=SHORT)
    for call in (lambda: client.get("/k"), client.health, client.version):
        started = time.monotonic()
        with pytest.raises(Timeout):
            call()
        assert time.monotonic() - started < SHORT + SLACK


# --- huge answers -------------------------------------------------------------------------

FIFTY_MB = 50 * 1024 * 1024


def test_fifty_megabytes_of_garbage_fail_over(etcd: EtcdTestContext, fake: FakeGateway) -> None:
    """Under the default size limit the whole answer is read, found garbled, and the
    read goes to the next endpoint."""
    etcd.client().put(etcd.key("k"), "real")
    body = b'{"header":{},"kvs":["' + b"A" * FIFTY_MB  # never closed
    fake.routes[RANGE] = Reply(http(200, body))
    client = hostile_client(etcd, fake, timeout=10.0)
    started = time.monotonic()
    kv = client.get(etcd.key("k"))
    assert kv is not None and kv.value == b"real"
    assert time.monotonic() - started < 10.0


@pytest.mark.parametrize("chunked", [False, True], ids=["with length", "chunked"])
def test_answer_over_the_size_limit_is_refused_unread(
    etcd: EtcdTestContext, fake: FakeGateway, chunked: bool
) -> None:
    piece = b"[" + b"0," * (512 * 1024)
    body = chunk(piece) * (FIFTY_MB // len(piece)) + chunk(b"") if chunked else piece * 50
    fake.routes[RANGE] = Reply(http(200, body, chunked=chunked))
    alone = etcd.client([fake.endpoint], timeout=5.0)
    alone.transport.max_response_bytes = 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="larger than 1048576 bytes"):
            alone.get("/k")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"{peak} bytes held for a refused answer"
    etcd.client().put(etcd.key("k"), "real")
    client = hostile_client(etcd, fake)
    client.transport.max_response_bytes = 1024 * 1024
    kv = client.get(etcd.key("k"))
    assert kv is not None and kv.value == b"real"


# --- watch streams --------------------------------------------------------------------------


def message(result: dict[str, Any]) -> bytes:
    """One watch stream message."""
    return json.dumps({"result": result}).encode() + b"\n"


def created(revision: int) -> bytes:
    """The message that confirms a watch."""
    return message({"header": {"revision": str(revision)}, "created": True})


def stream(*parts: bytes, end: bytes = b"") -> Reply:
    """A chunked watch stream of ``parts`` (each one chunk), then ``end`` raw, then close."""
    return Reply(http(200, b"".join(chunk(p) for p in parts) + end, chunked=True), after="close")


def watch_replies(revision: int) -> list[tuple[str, Reply]]:
    return [
        ("created, then half a chunk", stream(created(revision), end=b'200\r\n{"res')),
        ("created, then garbage", stream(created(revision), b"{not json}\n")),
        ("created, then a wrong type", stream(created(revision), message({"events": 5}))),
        ("created, then huge nesting", stream(created(revision), b"[" * 100_000 + b"\n")),
        ("created, then close", stream(created(revision))),
        ("garbage instead of created", stream(b"<html>\n")),
        ("header of wrong type", stream(message({"header": "x", "created": True}))),
        ("HTML 502", Reply(http(502, HTML, reason="Bad Gateway", content_type="text/html"))),
        ("JSON 200 that is no stream", json_reply({"header": {}})),
        ("close at once", Reply(b"", after="close")),
    ]


WATCH_IDS = [w[0] for w in watch_replies(1)]


@pytest.mark.parametrize("which", range(len(WATCH_IDS)), ids=WATCH_IDS)
def test_broken_watch_stream_resumes_on_the_next_endpoint(
    etcd: EtcdTestContext, fake: FakeGateway, which: int
) -> None:
    revision = revision_of(etcd)
    fake.routes[WATCH] = watch_replies(revision)[which][1]
    client = hostile_client(etcd, fake)
    started = time.monotonic()
    with client.watch(etcd.key("w")) as watch:
        etcd.client().put(etcd.key("w"), "after")
        batch = next(watch)
    assert [e.kv.value for e in batch.events] == [b"after"]
    assert time.monotonic() - started < TIMEOUT + SLACK
    assert fake.paths() == [WATCH]


@pytest.mark.parametrize("which", range(len(WATCH_IDS)), ids=WATCH_IDS)
def test_broken_only_watch_endpoint_gives_a_typed_error_in_time(
    etcd: EtcdTestContext, fake: FakeGateway, which: int
) -> None:
    fake.routes[WATCH] = watch_replies(revision_of(etcd))[which][1]
    client = etcd.client([fake.endpoint], timeout=SHORT)
    started = time.monotonic()
    with pytest.raises((ConnectionFailed, ProtocolError)), client.watch(etcd.key("w")) as watch:
        next(watch)
    assert time.monotonic() - started < 2 * SHORT + SLACK  # establishing, then resuming


def test_watch_that_is_never_confirmed_times_out(etcd: EtcdTestContext, fake: FakeGateway) -> None:
    fake.routes[WATCH] = Reply(http(200, b"", chunked=True), after="hang")
    # 1 s, not SHORT: the fake's 200 must arrive within half of it (else the attempt
    # moves to the real etcd and succeeds), which a machine running the release matrix
    # side by side did not always give in 0.15 s
    client = hostile_client(etcd, fake, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(Timeout, match="did not confirm the watch"):
        client.watch(etcd.key("w"))
    assert time.monotonic() - started < 1.0 + SLACK
    with client.watch(etcd.key("w")) as watch:  # the next one goes to the real etcd
        etcd.client().put(etcd.key("w"), "v")
        assert next(watch).events[0].kv.value == b"v"


def test_endless_watch_message_is_refused(etcd: EtcdTestContext, fake: FakeGateway) -> None:
    endless = stream(created(revision_of(etcd)), b'{"result":{"events":["' + b"x" * 4_000_000)
    fake.routes[WATCH] = endless
    client = hostile_client(etcd, fake)
    client.transport.max_response_bytes = 1024 * 1024
    with client.watch(etcd.key("w")) as watch:
        etcd.client().put(etcd.key("w"), "v")
        assert next(watch).events[0].kv.value == b"v"


# --- recipes ----------------------------------------------------------------------------


def test_observer_behind_a_garbled_endpoint_delivers(
    etcd: EtcdTestContext, fake: FakeGateway
) -> None:
    fake.routes.update({WATCH: json_reply({"header": "x"}), RANGE: json_reply(["x"])})
    conn = geventc.connect(
        [fake.endpoint, *etcd.endpoints], namespace=etcd.prefix.strip("/"), timeout=TIMEOUT
    )
    with conn:
        events = conn.observer("/o").start()
        conn.put("/o", "v")
        assert next_of(events, WatchEvent, timeout=2.0).value == b"v"


def test_nothing_spins_while_recipes_face_garbage(etcd: EtcdTestContext, fake: FakeGateway) -> None:
    """Recipes whose only endpoint answers garbage report it and back off: an idle second
    costs (almost) no CPU, and closing ends every greenlet."""
    fake.routes.update(
        {
            WATCH: stream(b"<html>\n"),
            RANGE: Reply(http(200, HTML)),
            TXN: Reply(http(200, HTML)),
            "/v3/cluster/member/list": json_reply({"members": "x"}),
        }
    )
    conn = geventc.connect([fake.endpoint], namespace="hostile", timeout=SHORT)
    with conn:
        observed = conn.observer("/o").start()
        tracked = conn.service_tracker("/services").start()
        health = conn.health_monitor().start(interval=0.5)
        report = observed.get(timeout=1.0)
        assert isinstance(report, RecipeError) and isinstance(report.error, ProtocolError)
        snapshot = tracked.get(timeout=1.0)
        assert isinstance(snapshot, ServiceSnapshot) and snapshot.error is not None
        cluster = health.get(timeout=1.0)
        assert isinstance(cluster, ClusterHealth) and cluster.status is ClusterStatus.UNHEALTHY
        cpu = time.process_time()
        gevent.sleep(1.0)
        spent = time.process_time() - cpu
        assert spent < 0.1, f"{spent:.3f}s of CPU in an idle second"


def test_errors_are_always_typed(etcd: EtcdTestContext, fake: FakeGateway) -> None:
    """Every public call against an endpoint answering garbage raises an EtcdError."""
    paths = [RANGE, PUT, TXN, WATCH, "/v3/kv/deleterange", "/v3/kv/compaction", "/health"]
    paths += [f"/v3/lease/{name}" for name in ("grant", "revoke", "keepalive", "timetolive")]
    paths += ["/v3/lease/leases", "/v3/cluster/member/list", "/v3/maintenance/status", "/version"]
    fake.routes.update(dict.fromkeys(paths, Reply(http(200, b"\xff<html>"))))
    client = etcd.client([fake.endpoint], timeout=SHORT)
    calls = [
        lambda: client.get("/k"),
        lambda: client.get_prefix("/k"),
        lambda: client.put("/k", "v"),
        lambda: client.delete("/k"),
        lambda: client.delete_prefix("/k"),
        lambda: client.txn(success=[geventc.Op.put("/k", "v")]),
        lambda: client.grant(5),
        lambda: client.revoke(5),
        lambda: client.keepalive_once(5),
        lambda: client.time_to_live(5),
        client.leases,
        lambda: client.watch("/k"),
        client.members,
        client.status,
        client.health,
        client.version,
        lambda: client.compact(5),
    ]
    for call in calls:
        with pytest.raises(EtcdError):
            call()
