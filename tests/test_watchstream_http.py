"""Watch streams read by both engines (httptools when installed, else urllib3's
response): the same lines, ends and errors for the same bytes on the wire.

:class:`geventc.http.HTTPStream` is opened on a scripted server (each test's handler
writes raw HTTP after reading the request), so chunk boundaries, cuts, resets and hangs
are exactly as written; the last tests run watches over real etcd (plain and TLS).
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event
from gevent.server import StreamServer
from helpers.fake_gateway import chunk, greenlets_end, http

from geventc import Client
from geventc import http as geventc_http
from geventc.errors import ProtocolError
from geventc.testing import EtcdServer
from geventc.testing.plugin import EtcdTestContext

WATCH = "/v3/watch"
HEADERS = {**geventc_http.BASE_HEADERS, "Content-Type": "application/json"}
LIMIT = 4096
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
)

Handler = Callable[[socket.socket], None]


def _read_request(sock: socket.socket) -> str:
    """Read one request (a head and a body within one read or a few); its path."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(4096)
        if not more:
            return ""
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(4096)
    return head.split(b" ")[1].decode()


@contextlib.contextmanager
def scripted(handler: Handler) -> Iterator[str]:
    """A server on localhost answering each watch with ``handler(sock)`` (any other
    request, such as a liveness probe, with a bare header); its endpoint. Every
    connection is ended on the way out."""
    done = Event()
    sockets: list[socket.socket] = []

    def serve(sock: socket.socket, _address: object) -> None:
        sockets.append(sock)
        with contextlib.suppress(OSError):
            while path := _read_request(sock):
                if path == WATCH:
                    handler(sock)
                    done.wait()  # the client ends the connection (or the test does)
                    return
                sock.sendall(http(200, b'{"header":{"revision":"9"}}'))

    server = StreamServer(("127.0.0.1", 0), serve)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        done.set()
        server.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        gevent.sleep(0.01)


def pieces(*parts: bytes, pause: float = 0.002) -> Handler:
    """A handler sending each of ``parts`` as a write of its own, a pause apart."""

    def handler(sock: socket.socket) -> None:
        for part in parts:
            sock.sendall(part)
            gevent.sleep(pause)

    return handler


def open_stream(endpoint: str) -> geventc_http.HTTPStream:
    pools = geventc_http.HTTPPools(tls=None, pool_size=2, connect_timeout=1.0, keepalive_time=30)
    opened = pools.open_stream(
        endpoint, WATCH, body=b"{}", headers=HEADERS, timeout=2.0, limit=LIMIT
    )
    assert isinstance(opened, geventc_http.HTTPStream), opened
    return opened


def lines(stream: geventc_http.HTTPStream) -> list[bytes]:
    """Every line until the end of the stream."""
    found = []
    while line := stream.read_line(LIMIT):
        found.append(line)
    return found


def test_the_engine_is_the_one_used(engine: str) -> None:
    with scripted(pieces(STREAM_HEAD + chunk(b""))) as endpoint:
        stream = open_stream(endpoint)
        assert (stream._parsed is None) == (engine == "urllib3")
        stream.close()


def test_lines_split_across_chunks_and_reads_come_whole(engine: str) -> None:
    body = (
        chunk(b'{"a":1}\n{"b"')
        + chunk(b":2}")
        + chunk(b"\n\n  \n")
        + chunk(b'{"c":3}\n{"d":4}\n')
        + chunk(b"x" * 300)
        + chunk(b"y\n")
        + chunk(b"")
    )
    # every three bytes a write of its own: chunk-size lines and CRLFs are cut too
    parts = [body[i : i + 3] for i in range(0, len(body), 3)]
    with greenlets_end(), scripted(pieces(STREAM_HEAD[:20], STREAM_HEAD[20:], *parts)) as ep:
        stream = open_stream(ep)
        assert lines(stream) == [b'{"a":1}', b'{"b":2}', b'{"c":3}', b'{"d":4}', b"x" * 300 + b"y"]
        assert stream.read_line(LIMIT) == b""  # and it stays ended
        assert stream.read_chunk() == b""
        stream.close()


def test_body_bytes_sent_with_the_head_are_kept(engine: str) -> None:
    with scripted(pieces(STREAM_HEAD + chunk(b'{"a":1}\n') + chunk(b'{"b":2}\n'))) as endpoint:
        stream = open_stream(endpoint)
        assert stream.read_line(LIMIT) == b'{"a":1}'
        assert stream.read_line(LIMIT) == b'{"b":2}'
        stream.close()


def test_read_chunk_gives_the_body_as_it_comes(engine: str) -> None:
    with scripted(pieces(STREAM_HEAD, chunk(b"abc"), chunk(b"def\n"), chunk(b""))) as endpoint:
        stream = open_stream(endpoint)
        data = b""
        while part := stream.read_chunk():
            data += part
        assert data == b"abcdef\n"
        stream.close()


def test_a_stream_the_server_cuts_mid_body_is_broken(engine: str) -> None:
    def handler(sock: socket.socket) -> None:
        sock.sendall(STREAM_HEAD + chunk(b'{"a":1}\n') + b"40\r\n{")
        gevent.sleep(0.01)
        sock.shutdown(socket.SHUT_RDWR)

    with scripted(handler) as endpoint:
        stream = open_stream(endpoint)
        assert stream.read_line(LIMIT) == b'{"a":1}'
        with pytest.raises(geventc_http.StreamBroken):
            stream.read_line(LIMIT)
        stream.close()


def test_a_connection_reset_mid_stream_is_broken(engine: str) -> None:
    def handler(sock: socket.socket) -> None:
        sock.sendall(STREAM_HEAD + chunk(b'{"a":1}\n'))
        gevent.sleep(0.05)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # an RST, not a FIN

    with scripted(handler) as endpoint:
        stream = open_stream(endpoint)
        assert stream.read_line(LIMIT) == b'{"a":1}'
        with pytest.raises(geventc_http.StreamBroken):
            stream.read_line(LIMIT)
        stream.close()


def test_a_garbled_chunk_size_is_broken(engine: str) -> None:
    with scripted(pieces(STREAM_HEAD + chunk(b'{"a":1}\n') + b"zz\r\nabc\r\n")) as endpoint:
        stream = open_stream(endpoint)
        assert stream.read_line(LIMIT) == b'{"a":1}'
        with pytest.raises(geventc_http.StreamBroken):
            stream.read_line(LIMIT)
        stream.close()


def test_an_oversized_line_is_refused(engine: str) -> None:
    big = chunk(b"x" * 3000) + chunk(b"x" * 3000) + chunk(b"\n")
    with scripted(pieces(STREAM_HEAD + chunk(b"ok\n"), big)) as endpoint:
        stream = open_stream(endpoint)
        assert stream.read_line(LIMIT) == b"ok"
        with pytest.raises(ProtocolError, match="larger than 4096 bytes"):
            stream.read_line(LIMIT)
        stream.close()


def test_an_answer_that_is_not_200_comes_whole(engine: str) -> None:
    body = b'{"code":14,"message":"etcdserver: no leader"}'
    reply = http(503, body, reason="Service Unavailable")
    with scripted(pieces(reply[:30], reply[30:])) as endpoint:
        pools = geventc_http.HTTPPools(tls=None, pool_size=2, connect_timeout=1, keepalive_time=30)
        answer = pools.open_stream(
            endpoint, WATCH, body=b"{}", headers=HEADERS, timeout=2.0, limit=LIMIT
        )
        assert answer == geventc_http.Answer(503, body)


def test_an_informational_answer_before_the_stream_is_skipped(engine: str) -> None:
    informational = b"HTTP/1.1 100 Continue\r\n\r\n"
    with scripted(pieces(informational, STREAM_HEAD + chunk(b"a\n") + chunk(b""))) as endpoint:
        stream = open_stream(endpoint)
        assert lines(stream) == [b"a"]
        stream.close()


@pytest.mark.parametrize("how", ["interrupt", "close"])
def test_a_read_waiting_for_data_ends_when_another_greenlet_stops_it(engine: str, how: str) -> None:
    with greenlets_end(), scripted(pieces(STREAM_HEAD + chunk(b'{"a":1}\n'))) as endpoint:
        stream = open_stream(endpoint)
        assert stream.read_line(LIMIT) == b'{"a":1}'
        reading = gevent.spawn(stream.read_line, LIMIT)
        gevent.sleep(0.05)
        assert not reading.ready()  # waiting for more
        getattr(stream, how)()
        if engine == "httptools":
            assert reading.get(timeout=5) == b""  # as the end of the stream
        else:  # urllib3's response may also say it broke
            with contextlib.suppress(geventc_http.StreamBroken):
                assert reading.get(timeout=5) == b""
        assert stream.read_line(LIMIT) == b""
        stream.close()
        assert repr(stream).endswith("closed)")


def test_an_interrupt_before_a_read_ends_it_at_once(engine: str) -> None:
    with scripted(pieces(STREAM_HEAD + chunk(b'{"a":1}\n'))) as endpoint:
        stream = open_stream(endpoint)
        assert stream.read_line(LIMIT) == b'{"a":1}'
        stream.interrupt()
        with contextlib.suppress(geventc_http.StreamBroken):  # urllib3 may say it broke
            assert stream.read_line(LIMIT) == b""
        stream.close()
        stream.close()  # idempotent


# --- whole watches --------------------------------------------------------------------


def _message(revision: int, result: dict[str, Any]) -> bytes:
    header = {"cluster_id": "1", "member_id": "2", "revision": str(revision), "raft_term": "3"}
    return json.dumps({"result": {"header": header, **result}}).encode()


def test_a_watch_reads_messages_however_they_are_cut(engine: str) -> None:
    event = {"kv": {"key": "L2s=", "value": "dg==", "mod_revision": "9", "create_revision": "9"}}
    created = _message(8, {"created": True, "watch_id": "0"})
    events = _message(9, {"events": [event]})
    body = chunk(b"  " + created[:10]) + chunk(created[10:] + b" \n" + events[:-5])
    body += chunk(events[-5:] + b"\r\n")
    with greenlets_end(), scripted(pieces(STREAM_HEAD, body)) as endpoint:
        client = Client([endpoint], timeout=2.0)
        stream = client.watch("/k")
        with gevent.Timeout(10):
            response = next(stream)
        assert [(e.kv.key, e.kv.value, e.kv.mod_revision) for e in response.events] == [
            (b"/k", b"v", 9)
        ]
        stream.cancel()
        client.close()


def test_a_watch_on_etcd_cancelled_while_reading_ends(etcd: EtcdTestContext, engine: str) -> None:
    client = etcd.client()
    key = etcd.key("w")
    with greenlets_end():
        stream = client.watch(key)
        client.put(key, "1")
        assert next(stream).events[0].kv.value == b"1"
        reading = gevent.spawn(lambda: list(stream))
        gevent.sleep(0.05)
        stream.cancel()
        assert reading.get(timeout=5) == []
    client.close()


@pytest.fixture(scope="module")
def tls_server() -> Iterator[EtcdServer]:
    with EtcdServer(tls=True, fsync=False) as server:
        yield server


def test_tls_watches_deliver_and_cancel_alike(tls_server: EtcdServer, engine: str) -> None:
    client = Client(tls_server.endpoints, tls=tls_server.client_tls())
    key = f"/tls/{engine}"
    with greenlets_end():
        stream = client.watch(key)
        for value in ("1", "2", "x" * 40_000):  # the last spans several TLS records
            client.put(key, value)
            assert next(stream).events[0].kv.value == value.encode()
        reading = gevent.spawn(lambda: list(stream))
        gevent.sleep(0.05)
        stream.cancel()
        assert reading.get(timeout=5) == []
    client.close()
