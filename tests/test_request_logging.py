"""The request log (``geventc.request`` at DEBUG) against a real etcd: one line per
request with its method, path, endpoint, outcome and duration, the batch size of a
coalesced txn, watch streams opened, restarted and closed; never a secret or a key or
value of a request; nothing formatted when DEBUG is off; ``geventc -vv`` shows it."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import gevent
import pytest
from helpers.cli import run
from helpers.waiting import wait_until

import geventc
from geventc import stats, transport
from geventc.errors import PermissionDenied
from geventc.testing import EtcdServer, FaultProxy, free_port
from geventc.testing.plugin import EtcdTestContext

PASSWORD = "hunter2-pa55word"
SECRET_KEY = "/alice/credit-card-number"
SECRET_VALUE = "4111-1111-1111-1111"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.search(pattern, line)]


@pytest.fixture
def request_log() -> Iterator[_Lines]:
    """Every line of the request log, with the logger at DEBUG during the test."""
    logger = logging.getLogger("geventc.request")
    handler = _Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture(scope="module")
def auth_server() -> Iterator[EtcdServer]:
    with EtcdServer(auth=True, fsync=False) as server:
        server.add_user("alice", PASSWORD, prefix="/alice/")
        yield server


def test_every_request_is_logged_without_a_secret(
    auth_server: EtcdServer, request_log: _Lines
) -> None:
    with geventc.Client(auth_server.endpoints, username="alice", password=PASSWORD) as client:
        endpoint = re.escape(client.endpoints[0])
        client.put(SECRET_KEY, SECRET_VALUE)
        assert client.get(SECRET_KEY) is not None
        gevent.joinall(
            [gevent.spawn(client.put, f"{SECRET_KEY}/{i}", SECRET_VALUE) for i in range(20)],
            raise_error=True,
        )
        with pytest.raises(PermissionDenied):
            client.get("/bob/outside")
        stream = client.watch("/alice/watched", prefix=True)
        stream.cancel()
        token = client.transport.token
        batches = client.stats().batches

    assert token
    ok = r" ok in \d+\.\d\dms"
    assert request_log.matching(f"^POST /v3/auth/authenticate endpoint={endpoint}{ok}")
    assert request_log.matching(f"^POST /v3/kv/put endpoint={endpoint}{ok} sent=\\d+B received")
    assert request_log.matching(f"^POST /v3/kv/range endpoint={endpoint}{ok}")
    sizes = request_log.matching(f"^POST /v3/kv/txn endpoint={endpoint}{ok} batch=\\d+ ")
    assert len(sizes) == batches >= 1
    assert request_log.matching(
        f"^POST /v3/kv/range endpoint={endpoint} error=PermissionDenied code=7 "
    )
    assert request_log.matching(f"^POST /v3/watch endpoint={endpoint}{ok}")
    assert request_log.matching(rf"^WatchStream\(key=b'/alice/watched'.* open on {endpoint} ")
    assert request_log.matching(r"^WatchStream\(key=b'/alice/watched'.*\) closed$")
    for line in request_log.lines:  # never a password, a token, a key or value of a request
        for secret in (PASSWORD, token, SECRET_KEY, SECRET_VALUE, "credit-card", "Authorization"):
            assert secret not in line, line


def test_nothing_is_formatted_when_debug_is_off(
    conn: geventc.Connector, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = logging.getLogger("geventc.request")
    level = logger.level
    logger.setLevel(logging.INFO)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a request line was built with DEBUG off")

    monkeypatch.setattr(transport, "log_request", refuse)
    monkeypatch.setattr(stats.REQUEST_LOG, "debug", refuse)
    try:
        conn.put("quiet", "v")
        assert conn.get("quiet") is not None
        gevent.joinall(
            [gevent.spawn(conn.put, f"quiet/{i}", "v") for i in range(10)], raise_error=True
        )
        conn.watch("quiet").cancel()
    finally:
        logger.setLevel(level)
    assert conn.stats().batches >= 1


def test_failed_attempts_and_watch_restarts_are_logged(
    etcd: EtcdTestContext, request_log: _Lines
) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    with (
        FaultProxy(etcd.endpoints[0]) as proxy,
        geventc.Client([refused, proxy.endpoint, *etcd.endpoints]) as client,
    ):
        client.put(etcd.key("w"), "1")  # refused, then through the proxy
        stream = client.watch(etcd.key("w"))
        proxy.reset()  # the stream breaks: it resumes on the next endpoint
        reader = gevent.spawn(next, stream)
        wait_until(lambda: client.stats().watch_restarts == 1, 5, "the watch restarted")
        client.put(etcd.key("w"), "2")
        assert reader.get(timeout=5).events[0].kv.value == b"2"
        stream.cancel()
    assert request_log.matching(
        f"^POST /v3/kv/put endpoint={re.escape(refused)} attempt failed \\(ConnectionFailed: "
    )
    assert request_log.matching(f"^POST /v3/kv/put endpoint={re.escape(proxy.endpoint)} ok ")
    direct = re.escape(etcd.endpoints[0])
    assert request_log.matching(rf"^WatchStream\(key=.*\) restarted on {direct} at revision \d+$")


def test_cli_vv_shows_the_request_lines(etcd: EtcdTestContext) -> None:
    key = etcd.key("cli-secret-name")
    put = run("-vv", "--endpoints", etcd.endpoints[0], "put", key, "cli-secret-value")
    assert put.code == 0, put.stderr
    got = run("-vv", "--endpoints", etcd.endpoints[0], "get", key)
    assert got.code == 0 and got.stdout.strip() == "cli-secret-value", got.stderr
    where = re.escape(etcd.endpoints[0])
    assert re.search(f"debug: POST /v3/kv/put endpoint={where} ok in ", put.stderr), put.stderr
    assert re.search(f"debug: POST /v3/kv/range endpoint={where} ok in ", got.stderr), got.stderr
    for line in (put.stderr + got.stderr).splitlines():
        if "endpoint=" in line:
            assert "cli-secret" not in line, line
