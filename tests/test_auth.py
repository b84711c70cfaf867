"""Token auth against a real etcd with auth enabled and a short token TTL."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import gevent
import pytest

import geventc
from geventc import Client, Instance, Registry, Resolver
from geventc.errors import AuthenticationFailed, PermissionDenied
from geventc.testing import ROOT_PASSWORD, EtcdServer

TOKEN_TTL = 2
ALICE_PASSWORD = "alice-s3cret-pw"


@pytest.fixture(scope="module")
def auth_server() -> Iterator[EtcdServer]:
    with EtcdServer(auth=True, auth_token_ttl=TOKEN_TTL, fsync=False) as server:
        server.add_user("alice", ALICE_PASSWORD, prefix="/alice/")
        yield server


def _idle_until_token_renewed(client: Client, key: str) -> str | None:
    """Leave the client idle past the token TTL, then read; repeat until the client had
    to fetch a new token (each use resets a simple token's TTL, so the wait must be idle).
    Returns the stale token."""
    stale = client.transport.token
    deadline = time.monotonic() + 6 * TOKEN_TTL + 10
    while client.transport.token == stale:
        assert time.monotonic() < deadline, "the token never expired"
        time.sleep(TOKEN_TTL + 1.5)  # idle on purpose: the token must expire unused
        kv = client.get(key)
        assert kv is not None
    return stale


def test_token_expiry_is_invisible(auth_server: EtcdServer) -> None:
    client = Client(auth_server.endpoints, username="root", password=ROOT_PASSWORD)
    client.put("/root/a", "1")
    stale = _idle_until_token_renewed(client, "/root/a")
    assert stale is not None and client.transport.token not in (None, stale)
    client.close()


def test_auth_store_change_is_invisible(auth_server: EtcdServer) -> None:
    client = Client(auth_server.endpoints, username="root", password=ROOT_PASSWORD)
    client.put("/root/b", "1")
    auth_server.add_user(f"u{time.monotonic_ns()}", "pw")  # bumps the auth revision
    client.put("/root/b", "2")  # a stale-revision token is renewed transparently
    kv = client.get("/root/b")
    assert kv is not None and kv.value == b"2"
    client.close()


def test_watch_after_token_expiry(auth_server: EtcdServer) -> None:
    client = Client(auth_server.endpoints, username="root", password=ROOT_PASSWORD)
    client.put("/root/w", "0")
    stream = client.watch("/root/w")  # established with the first token
    stale = _idle_until_token_renewed(client, "/root/w")
    assert stale is not None
    # a new watch with a fresh token, and the old one still delivers
    fresh = client.watch("/root/w")
    client.put("/root/w", "1")
    with gevent.Timeout(5):
        assert next(stream).events[0].kv.value == b"1"
        assert next(fresh).events[0].kv.value == b"1"
    stream.cancel()
    fresh.cancel()
    client.close()


def test_bad_password(auth_server: EtcdServer) -> None:
    client = Client(auth_server.endpoints, username="root", password="wrong-password-xyz")
    with pytest.raises(AuthenticationFailed) as caught:
        client.get("/a")
    assert "wrong-password-xyz" not in str(caught.value)
    assert "root" in str(caught.value)


def test_no_credentials_on_an_auth_server(auth_server: EtcdServer) -> None:
    with pytest.raises(AuthenticationFailed, match="username= and password="):
        Client(auth_server.endpoints).get("/a")


def test_limited_user_gets_permission_denied_outside_its_prefix(auth_server: EtcdServer) -> None:
    client = Client(auth_server.endpoints, username="alice", password=ALICE_PASSWORD)
    client.put("/alice/k", "mine")
    kv = client.get("/alice/k")
    assert kv is not None and kv.value == b"mine"
    with pytest.raises(PermissionDenied):
        client.put("/bob/k", "theirs")
    with pytest.raises(PermissionDenied):
        client.get("/bob/k")
    with pytest.raises(PermissionDenied):
        client.watch("/bob/", prefix=True)
    client.close()


def test_coalesced_calls_outside_the_prefix_fail_alone(auth_server: EtcdServer) -> None:
    client = Client(auth_server.endpoints, username="alice", password=ALICE_PASSWORD)

    def call(i: int) -> object:
        key = f"/bob/c{i}" if i % 10 == 3 else f"/alice/c{i}"
        try:
            client.put(key, str(i))
            return client.get(key)
        except PermissionDenied as exc:
            return exc

    greenlets = [gevent.spawn(call, i) for i in range(40)]
    gevent.joinall(greenlets, raise_error=True, timeout=20)
    for i, g in enumerate(greenlets):
        if i % 10 == 3:
            assert isinstance(g.value, PermissionDenied)
        else:
            assert g.value is not None and g.value.value == str(i).encode()
    assert client.coalescer is not None and client.coalescer.batches > 0
    client.close()


def test_secrets_never_leak(auth_server: EtcdServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = Client(auth_server.endpoints, username="alice", password=ALICE_PASSWORD)
    client.put("/alice/s", "v")
    token = client.transport.token
    assert token
    texts = [repr(client), str(client.transport), repr(client.transport)]
    try:
        client.put("/bob/s", "v")
    except PermissionDenied as exc:
        texts += [str(exc), repr(exc)]
    bad = Client(auth_server.endpoints, username="alice", password="not-" + ALICE_PASSWORD)
    try:
        bad.get("/alice/s")
    except AuthenticationFailed as exc:
        texts += [str(exc), repr(exc)]
    texts += [record.getMessage() for record in caplog.records]
    assert len(texts) > 5
    for text in texts:
        assert ALICE_PASSWORD not in text
        assert token not in text
    client.close()


def test_recipes_work_inside_a_limited_users_namespace(auth_server: EtcdServer) -> None:
    """alice may only touch /alice/: with the namespace, every recipe works there, and
    the raw client still gets PermissionDenied outside it."""
    options = {"username": "alice", "password": ALICE_PASSWORD}
    with geventc.connect(auth_server.endpoints, "/alice", **options) as conn:
        key = conn.ephemeral_key("/rbac/eph")
        key.create("here", ttl=5)
        elector = conn.leader_elector("/rbac/election", "me", ttl=5)
        events = elector.start()
        first = events.get(timeout=10)
        assert isinstance(first, geventc.ElectionEvent) and first.status.value == "LEADER"
        assert elector.txn([geventc.Op.put("/rbac/log", "fenced")]).succeeded
        tracker = conn.service_tracker("/rbac")
        snapshot = tracker.start().get(timeout=10)
        assert isinstance(snapshot, geventc.ServiceSnapshot) and snapshot.services["eph"] == "here"
        with Registry(conn, prefix="/reg", ttl=5) as registry:
            registry.register(Instance("echo", "127.0.0.1:9000"))
            resolver = Resolver(conn, prefix="/reg")
            assert [i.address for i in resolver.resolve("echo")] == ["127.0.0.1:9000"]
        config = conn.config("/rbac/")
        config.start()
        assert config.get("log") == "fenced"
        with pytest.raises(PermissionDenied):
            conn.client.get("/bob/x")
        for recipe in (key, elector, tracker, config):
            recipe.stop()
    with Client(auth_server.endpoints, username="root", password=ROOT_PASSWORD) as root:
        assert root.get_prefix("/alice/rbac/eph").count == 0  # released on stop


def test_no_secret_reaches_any_log_repr_or_error(auth_server: EtcdServer) -> None:
    """Everything logged at every level by every logger (urllib3 included) during an
    auth run with recipes, a token renewal and failures is searched for the password
    and each token used."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler, root_logger = Keep(logging.DEBUG), logging.getLogger()
    old_level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    texts: list[str] = []
    tokens: set[str] = set()
    try:
        with geventc.connect(
            auth_server.endpoints, "/alice", username="alice", password=ALICE_PASSWORD
        ) as conn:
            key = conn.ephemeral_key("/leak/k")
            key.create("v", ttl=3)
            tracker = conn.service_tracker("/leak")
            tracker.start().get(timeout=10)
            tokens.add(conn.client.transport.token or "")
            # let renewals and the watch run past a token TTL (they keep the token in
            # use, so it need not change: every token seen is searched for below)
            time.sleep(TOKEN_TTL + 1.5)
            conn.put("/leak/after", "1")
            tokens.add(conn.client.transport.token or "")
            texts += [repr(x) for x in (conn, conn.client, conn.client.transport, key, tracker)]
            try:
                conn.client.put("/bob/x", "1")
            except PermissionDenied as exc:
                texts += [str(exc), repr(exc), repr(vars(exc))]
            key.stop()
            tracker.stop()
        wrong = Client(auth_server.endpoints, username="alice", password="x" + ALICE_PASSWORD)
        try:
            wrong.get("/alice/x")
        except AuthenticationFailed as exc:
            texts += [str(exc), repr(exc), repr(vars(exc))]
        wrong.close()
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(old_level)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts += [formatter.format(record) for record in records]
    assert len(records) > 3 and tokens and "" not in tokens
    for text in texts:
        assert ALICE_PASSWORD not in text
        for token in tokens:
            assert token not in text
