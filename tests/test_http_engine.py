"""The two engines of unary requests (httptools when installed, else urllib3's
``getresponse()``): the same answers and errors, kept-alive connections reused, a
request's head and body in one write, and request heads that cannot be forged.

``tests/test_malformed_gateway.py`` runs every hostile answer with the engine in use;
here each engine gets the same answers, so the one not in use stays proven too.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from helpers.fake_gateway import FakeGateway, Reply, greenlets_end, http, json_reply
from test_malformed_gateway import GARBLED, GARBLED_IDS, SLOW, SLOW_IDS

from geventc import http as geventc_http
from geventc.auth import TokenAuth
from geventc.errors import ConnectionFailed, IndeterminateWrite, InvalidArgument, ProtocolError
from geventc.testing.plugin import EtcdTestContext

RANGE, PUT = "/v3/kv/range", "/v3/kv/put"
HEADER = {"cluster_id": "1", "member_id": "2", "revision": "7", "raft_term": "3"}
FOUND = {"header": HEADER, "kvs": [{"key": "L2s=", "value": "dg==", "mod_revision": "7"}]}


class CountingGateway(FakeGateway):
    """A fake gateway that counts the connections made to it."""

    connections = 0

    def _serve(self, sock: socket.socket, address: object) -> None:
        self.connections += 1
        super()._serve(sock, address)


@pytest.fixture
def fake() -> Iterator[CountingGateway]:
    with greenlets_end(), CountingGateway() as gateway:
        yield gateway


def test_the_engine_chosen_is_the_one_used(etcd: EtcdTestContext, engine: str) -> None:
    client = etcd.client()
    expected = None if engine == "urllib3" else geventc_http.ANSWER_PARSER
    assert client.transport._http.parser is expected


def test_sequential_requests_share_one_kept_alive_connection(
    etcd: EtcdTestContext, fake: CountingGateway, engine: str
) -> None:
    fake.routes[RANGE] = json_reply(FOUND)
    client = etcd.client([fake.endpoint], coalesce=False)
    for _ in range(20):
        kv = client.get("/k")
        assert kv is not None and kv.value == b"v" and kv.mod_revision == 7
    assert len(fake.requests) == 20
    assert fake.connections == 1


def test_a_connection_the_server_closes_is_not_reused(
    etcd: EtcdTestContext, fake: CountingGateway, engine: str
) -> None:
    # each answer says keep-alive, then the server closes the connection: a write on the
    # dead connection would be lost (IndeterminateWrite); each put must go on a new one
    fake.routes[PUT] = Reply(http(200, b'{"header":{"revision":"5"}}'), after="close")
    client = etcd.client([fake.endpoint], coalesce=False)
    for i in range(5):
        assert client.put(f"/k{i}", "v").header.revision == 5
    assert fake.connections == 5


def test_a_kept_connection_closed_after_many_answers_is_not_reused(
    etcd: EtcdTestContext, fake: CountingGateway, engine: str
) -> None:
    # the drop check keeps one poll object per socket: it must still see the close that
    # comes after several answers on the same connection
    ok = http(200, b'{"header":{"revision":"5"}}')
    fake.routes[PUT] = [Reply(ok), Reply(ok), Reply(ok), Reply(ok, after="close"), Reply(ok)]
    client = etcd.client([fake.endpoint], coalesce=False)
    for i in range(7):
        assert client.put(f"/k{i}", "v").header.revision == 5
    assert fake.connections == 2


def test_connection_close_answers_take_a_new_connection_each(
    etcd: EtcdTestContext, fake: CountingGateway, engine: str
) -> None:
    body = b'{"header":{"revision":"5"},"count":"0"}'
    fake.routes[RANGE] = Reply(http(200, body, headers={"Connection": "close"}), after="close")
    client = etcd.client([fake.endpoint], coalesce=False)
    for _ in range(3):
        assert client.get("/k") is None
    assert fake.connections == 3


def test_requests_carry_the_gateway_headers_and_their_body(
    etcd: EtcdTestContext, fake: CountingGateway, engine: str
) -> None:
    fake.routes[PUT] = json_reply({"header": HEADER})
    client = etcd.client([fake.endpoint], coalesce=False)
    client.put("/k", "v")
    (request,) = fake.requests
    assert request.method == "POST" and request.path == PUT
    assert request.json() == {"key": "L2s=", "value": "dg=="}
    assert request.headers["content-type"] == "application/json"
    assert request.headers["grpc-metadata-hasleader"] == "true"
    assert request.headers["content-length"] == str(len(request.body))
    assert request.headers["host"] == fake.endpoint.partition("://")[2]
    assert "user-agent" not in request.headers


@pytest.mark.parametrize(("label", "reply"), GARBLED, ids=GARBLED_IDS)
def test_garbled_answers_fail_over_alike(
    etcd: EtcdTestContext, fake: CountingGateway, engine: str, label: str, reply: Reply
) -> None:
    etcd.client().put(etcd.key("k"), "real")
    fake.routes.update({RANGE: reply, PUT: reply})
    client = etcd.client([fake.endpoint, *etcd.endpoints], timeout=2.0, connect_timeout=0.2)
    kv = client.get(etcd.key("k"))
    assert kv is not None and kv.value == b"real"
    hostile = etcd.client([fake.endpoint, *etcd.endpoints], timeout=2.0, connect_timeout=0.2)
    with pytest.raises(IndeterminateWrite):
        hostile.put(etcd.key("k"), "v")


@pytest.mark.parametrize(("label", "reply"), SLOW, ids=SLOW_IDS)
def test_slow_answers_end_in_time_alike(
    etcd: EtcdTestContext, fake: CountingGateway, engine: str, label: str, reply: Reply
) -> None:
    etcd.client().put(etcd.key("k"), "real")
    fake.routes.update({RANGE: reply, PUT: reply})
    client = etcd.client([fake.endpoint, *etcd.endpoints], timeout=1.0, connect_timeout=0.2)
    kv = client.get(etcd.key("k"))
    assert kv is not None and kv.value == b"real"
    hostile = etcd.client([fake.endpoint, *etcd.endpoints], timeout=0.5, connect_timeout=0.2)
    with pytest.raises(IndeterminateWrite):
        hostile.put(etcd.key("k"), "v")


def test_an_informational_answer_before_the_answer_is_skipped(
    etcd: EtcdTestContext, fake: CountingGateway, engine: str
) -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + http(
        200, json_reply(FOUND).data.split(b"\r\n\r\n", 1)[1]
    )
    fake.routes[RANGE] = Reply(answer)
    client = etcd.client([fake.endpoint], coalesce=False)
    for _ in range(3):  # and the connection stays in step with its answers
        kv = client.get("/k")
        assert kv is not None and kv.value == b"v"
    assert fake.connections == 1


def test_an_answer_over_the_limit_is_refused_alike(
    etcd: EtcdTestContext, fake: CountingGateway, engine: str
) -> None:
    fake.routes[RANGE] = Reply(http(200, b"[" + b"0," * 600_000 + b"0]"))
    client = etcd.client([fake.endpoint], timeout=5.0)
    client.transport.max_response_bytes = 1024 * 1024
    with pytest.raises(ProtocolError, match="larger than 1048576 bytes"):
        client.get("/k")


def test_an_endless_answer_head_is_refused(
    etcd: EtcdTestContext, fake: CountingGateway, engine: str
) -> None:
    headers = {f"X-Filler-{i}": "x" * 100 for i in range(2000)}
    fake.routes[RANGE] = Reply(http(200, b"{}", headers=headers))
    client = etcd.client([fake.endpoint], timeout=5.0)
    with pytest.raises((ProtocolError, ConnectionFailed)):  # as http.client says, or httptools
        client.get("/k")


def test_the_head_and_body_of_a_request_go_out_in_one_write() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def sendall(self, data: Any) -> None:
            self.writes.append(bytes(data))

        def settimeout(self, _timeout: Any) -> None:
            pass

    def writes(method: str, body: bytes | None) -> list[bytes]:
        conn = geventc_http._Connection("127.0.0.1", 2379)
        recorder = Recorder()
        conn.sock = recorder  # type: ignore[assignment]
        conn.request(method, PUT, body=body, headers={"Content-Type": "application/json"})
        return recorder.writes

    (write,) = writes("POST", b'{"key":"a2V5"}')
    assert write.startswith(b"POST /v3/kv/put HTTP/1.1\r\n")
    assert b"\r\nContent-Length: 14\r\n" in write
    assert write.endswith(b'\r\n\r\n{"key":"a2V5"}')
    (head,) = writes("GET", None)  # no body: the head alone, once
    assert head.startswith(b"GET ") and head.endswith(b"\r\n\r\n")


def test_a_header_with_a_line_break_is_never_sent() -> None:
    for value in ("a\r\nX-Forged: 1", "a\nb", "a\rb", "caf\u00e9"):
        with pytest.raises(InvalidArgument):
            geventc_http._head("POST", PUT, "http://127.0.0.1:2379", {"Authorization": value})


@pytest.mark.parametrize("token", ["t\r\nX-Forged: 1", "t\n", "t\u00e9", "t\x00"])
def test_a_token_that_is_no_header_value_is_refused(token: str) -> None:
    auth = TokenAuth("user", "pw", lambda _body, _deadline: {"token": token})
    with pytest.raises(ProtocolError, match="malformed token"):
        auth.send(lambda used: used, deadline=0.0)
