"""Property-based hostile input: every public call, given arbitrary arguments, returns or
raises an :class:`EtcdError` (mostly :class:`InvalidArgument`), and never ``TypeError``,
``KeyError``, ``OverflowError``, ``UnicodeError``, a json or a urllib3 error, nor hangs.

Arguments mix valid-ish values with wild ones (None, bools, huge and negative ints, nan
and infinities, bytes with NUL or invalid UTF-8, lone surrogates, long strings, lists,
dicts, arbitrary objects). Calls run against the real test etcd; everything they could
write stays under the test's key prefix (or, through a connector, its namespace), every
lease they grant is revoked and every stream cancelled. A client-side ``InvalidArgument``
must come before any request is sent.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import gevent
import pytest
from helpers.fake_gateway import greenlets_end
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import geventc
from geventc import (
    Channel,
    Client,
    Compare,
    Connector,
    Instance,
    Lease,
    Op,
    Registry,
    Resolver,
    RetryPolicy,
    TLSConfig,
    WatchStream,
    prepare_endpoint_list,
)
from geventc.endpoints import parse_endpoint
from geventc.errors import EtcdError, InvalidArgument, ProtocolError
from geventc.instances import decode, encode
from geventc.recipes.base import Recipe
from geventc.testing import EtcdServer
from geventc.testing.plugin import EtcdTestContext

T = TypeVar("T")
Strategy = st.SearchStrategy[Any]  # values of any type: the calls must cope

FUZZ = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,  # the same examples on every run
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
FEWER = settings(FUZZ, max_examples=25)  # for calls that start recipes or touch leases

CALL_LIMIT = 8.0  # no call may take longer, whatever its arguments
REFUSED = "http://127.0.0.1:9"  # nothing listens on the discard port of this machine


@pytest.fixture(autouse=True)
def no_greenlet_left(etcd_server: EtcdServer) -> Iterator[None]:
    """Every greenlet an example started has ended after the test."""
    with greenlets_end():
        yield


# --- strategies -----------------------------------------------------------------------------


class Opaque:
    """An object no call expects."""

    def __repr__(self) -> str:
        return "Opaque()"


class Named:
    """An object with a ``value``, like an enum member."""

    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Named({self.value!r})"


EDGE_INTS = [0, 1, -1, 2**31, 2**63 - 1, 2**63, -(2**63), 2**64, 10**30, 10**400]
EDGE_FLOATS = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-300, 1e300, 0.5]
EDGE_TEXTS = ["", " ", "\0", "a\0b", "\ud800", "x\udfff", "²", "٣", "\n", "é" * 3]
EDGE_BYTES = [b"", b"\0", b"\xff\xfe", b"\x80abc", b"a\0b", b"\xc3"]
# long values are built, not listed, so that failure reports stay readable
LONG_TEXTS: Strategy = st.sampled_from([10_000, 100_000, 2_000_000]).map(lambda n: "é" * n)
LONG_BYTES: Strategy = st.sampled_from([10_000, 100_000, 2_000_000]).map(lambda n: b"\xff" * n)

NUMBERS: Strategy = st.one_of(
    st.integers(), st.sampled_from(EDGE_INTS), st.floats(), st.sampled_from(EDGE_FLOATS)
)
TEXTS: Strategy = st.one_of(st.text(max_size=20), st.sampled_from(EDGE_TEXTS), LONG_TEXTS)
BYTES: Strategy = st.one_of(st.binary(max_size=20), st.sampled_from(EDGE_BYTES), LONG_BYTES)
OBJECTS: Strategy = st.one_of(
    st.builds(Opaque),
    st.builds(Named, st.one_of(TEXTS, NUMBERS)),
    st.lists(st.integers(), max_size=3),
    st.lists(st.text(max_size=3), max_size=3).map(tuple),
    st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), st.integers(), max_size=3),
    st.frozensets(st.integers(), max_size=3),
    st.builds(bytearray, st.binary(max_size=5)),
    st.builds(Lease, id=st.one_of(st.integers(), st.none(), TEXTS), ttl=st.integers()),
    st.just(object),
    st.just(repr),
)
NON_TEXT: Strategy = st.one_of(st.none(), st.booleans(), NUMBERS, OBJECTS)
WILD: Strategy = st.one_of(NON_TEXT, TEXTS, BYTES)
#: the values most likely to break a check, drawn often on their own
EDGES: Strategy = st.sampled_from(
    [None, True, *EDGE_INTS, *EDGE_FLOATS, *EDGE_TEXTS, *EDGE_BYTES, Opaque(), Named("KEY")]
)
FLAGS: Strategy = st.one_of(st.booleans(), EDGES, WILD)


def mixed(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid values a third of the time, edge values or wild ones otherwise."""
    return st.one_of(valid, EDGES, WILD)


REVISIONS: Strategy = mixed(st.one_of(st.none(), st.integers(0, 2**63 - 1), st.integers(0, 50)))
TTLS: Strategy = mixed(st.integers(1, 9_000_000_000))


def keys(prefix: str) -> st.SearchStrategy[Any]:
    """Keys under ``prefix`` (as str or bytes, of any content), or no key at all."""
    raw = prefix.encode()
    return st.one_of(
        TEXTS.map(lambda s: prefix + s),
        BYTES.map(lambda b: raw + b),
        st.sampled_from(["", b"", bytearray(raw + b"k"), memoryview(raw + b"m")]),
        NON_TEXT,
    )


def any_keys(prefix: str) -> st.SearchStrategy[Any]:
    """Keys to read: under ``prefix``, anywhere, or no key at all."""
    return st.one_of(keys(prefix), TEXTS, BYTES)


def local_only(text: str) -> str:
    """``text`` unless it names a host to look up (no DNS in tests): then a refused
    local endpoint."""
    try:
        endpoint = parse_endpoint(text)
    except EtcdError:
        return text
    host = endpoint.split("://", 1)[1].rsplit(":", 1)[0]
    return text if host in ("127.0.0.1", "[::1]", "localhost") else REFUSED


ODD_ENDPOINTS = [
    "",
    " ",
    ",",
    "http://",
    "http://:1",
    "http://127.0.0.1:0",
    "http://127.0.0.1:65536",
    "http://127.0.0.1:-1",
    "http://127.0.0.1:" + "9" * 50,
    "http://127.0.0.1:١٢",
    "http://[::1",
    "http://[::1]:9",
    "https://127.0.0.1:9",
    "ftp://127.0.0.1:9",
    "unix:///tmp/etcd.sock",
    "127.0.0.1",
    "localhost:9",
    "http://127.0.0.1:9/v3",
    "http://user@127.0.0.1:9",
    "http://127.0.0.1:9?x=1",
    "http://127.0.0.1:9#x",
    "http://\0:9",
    "http://127.0.0.1\0:9",
    "http://127.0.0.1 :9",
    "http://\ud800:9",
    "http://" + "a" * 300 + ":9",
    "http://a..b:9",
    REFUSED,
]


def endpoint_texts(real: str) -> st.SearchStrategy[Any]:
    """One endpoint: the real one, odd ones, arbitrary text (kept local) or wild values."""
    return st.one_of(
        st.just(real),
        st.sampled_from(ODD_ENDPOINTS),
        st.text(max_size=30).map(local_only),
        NON_TEXT,
    )


def endpoint_lists(real: list[str]) -> st.SearchStrategy[Any]:
    """Endpoint arguments: the real ones, lists or comma-joined strings of odd ones."""
    one = endpoint_texts(real[0])
    return st.one_of(
        st.just(list(real)),
        st.just(",".join(real)),
        st.lists(one, max_size=4),
        st.lists(one, min_size=1, max_size=3).map(tuple),
        st.lists(st.sampled_from(ODD_ENDPOINTS), max_size=3).map(",".join),
        one,
    )


# --- checking ---------------------------------------------------------------------------------


def attempt(call: Callable[[], T], client: Client | None = None) -> T | EtcdError:
    """Run ``call``: it returns, or raises an EtcdError (returned here); anything else,
    or taking longer than CALL_LIMIT, fails the test. A client-side InvalidArgument (no
    gRPC code) must leave ``client`` without a request sent."""
    sent = client.transport.requests if client is not None else 0
    with gevent.Timeout(CALL_LIMIT, AssertionError(f"a call took more than {CALL_LIMIT}s")):
        try:
            return call()
        except EtcdError as exc:
            if isinstance(exc, InvalidArgument) and exc.code is None and client is not None:
                assert client.transport.requests == sent, f"{exc} came after a request"
            return exc


def draw_options(data: st.DataObject, strategies: dict[str, st.SearchStrategy[Any]]) -> Any:
    """Some of the keyword arguments in ``strategies``, drawn."""
    return {
        name: data.draw(strategy, label=name)
        for name, strategy in strategies.items()
        if data.draw(st.booleans(), label=f"pass {name}")
    }


@contextlib.contextmanager
def leases_revoked(client: Client) -> Iterator[None]:
    """Revoke every lease granted in the block."""
    before = set(client.leases())
    try:
        yield
    finally:
        for lease in set(client.leases()) - before:
            with contextlib.suppress(EtcdError):
                client.revoke(lease)


@contextlib.contextmanager
def confined(etcd: EtcdTestContext) -> Iterator[None]:
    """Fail if the block wrote a key outside the test's prefix."""
    client = etcd.client()
    since = client.get_prefix(etcd.prefix, count_only=True).header.revision + 1
    yield
    written = client.get_prefix(b"", min_mod_revision=since, keys_only=True)
    outside = [kv.key for kv in written.kvs if not kv.key.startswith(etcd.prefix.encode())]
    assert not outside, f"keys written outside {etcd.prefix}: {outside[:5]}"


def namespaced(etcd: EtcdTestContext, **options: Any) -> Connector:
    """A connector confined to the test's prefix."""
    return geventc.connect(etcd.endpoints, namespace=etcd.prefix.strip("/"), **options)


# --- client construction ------------------------------------------------------------------


def tls_configs() -> st.SearchStrategy[Any]:
    files = st.sampled_from([None, __file__, "/nonexistent", "", "\0", b"/etc/hosts", 5])
    built = st.builds(
        lambda *a: attempt(lambda: TLSConfig(*a)), files, files, files, mixed(st.none())
    )
    return st.one_of(st.none(), built, WILD)


CLIENT_OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "timeout": mixed(st.floats(0.05, 5)),
    "connect_timeout": mixed(st.floats(0.05, 5)),
    "username": mixed(st.sampled_from(["root", "u\0", "é"])),
    "password": mixed(st.sampled_from(["pw", "", "\ud800"])),
    "tls": tls_configs(),
    "pool_size": mixed(st.integers(1, 10_000)),
    "max_request_bytes": mixed(st.integers(1, 2**40)),
    "coalesce": FLAGS,
    "max_txn_ops": mixed(st.integers(1, 100_000)),
}


@FUZZ
@given(data=st.data())
def test_client_options(etcd: EtcdTestContext, data: st.DataObject) -> None:
    endpoints = data.draw(endpoint_lists(etcd.endpoints), label="endpoints")
    options = draw_options(data, CLIENT_OPTIONS)
    client = attempt(lambda: Client(endpoints, **options))
    if not isinstance(client, Client):
        return
    with client:
        if client.endpoints == etcd.endpoints:  # it may send: read the test's prefix
            attempt(lambda: client.get(etcd.key("probe")), client)


@FUZZ
@given(data=st.data())
def test_connect_options(etcd: EtcdTestContext, data: st.DataObject) -> None:
    endpoints = data.draw(endpoint_lists(etcd.endpoints), label="endpoints")
    namespace = data.draw(mixed(st.sampled_from([etcd.prefix, "a/b", "/", "//", "a//b"])))
    options = draw_options(data, CLIENT_OPTIONS)
    conn = attempt(lambda: geventc.connect(endpoints, namespace, **options))
    if isinstance(conn, Connector):
        conn.close()
    not_a_client = data.draw(WILD, label="client")
    attempt(lambda: Connector(not_a_client, namespace))


@FUZZ
@given(hosts=mixed(st.lists(TEXTS, max_size=3)), port=mixed(st.integers(1, 65535)), scheme=WILD)
def test_prepare_endpoint_list(hosts: Any, port: Any, scheme: Any) -> None:
    choices: tuple[Any, ...] = (scheme, "http", Named("https"))
    for chosen in choices:
        endpoints = attempt(lambda: prepare_endpoint_list(hosts, port, chosen))  # noqa: B023
        if isinstance(endpoints, list):
            assert all(e.startswith(("http://", "https://")) for e in endpoints)


@FUZZ
@given(files=st.lists(st.sampled_from([None, __file__, "/", "/nonexistent", "\0", 7]), min_size=4))
def test_tls_config(files: list[Any]) -> None:
    ca, cert, key, name = files[:4]
    config = attempt(lambda: TLSConfig(ca, cert, key, server_hostname=name))
    if isinstance(config, TLSConfig):
        assert config.pool_options()["cert_reqs"] == "CERT_REQUIRED"
    path: Any = pathlib.Path(str(ca))
    attempt(lambda: TLSConfig(ca_file=path))


# --- KV ------------------------------------------------------------------------------------


SORT_TARGETS: Strategy = mixed(
    st.sampled_from(["KEY", "version", "Create", "MOD", "value", Named("KEY")])
)
SORT_ORDERS: Strategy = mixed(st.sampled_from(["NONE", "ascend", "DESCEND", Named("DESCEND")]))


def range_options() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "limit": mixed(st.integers(0, 10)),
        "sort_target": SORT_TARGETS,
        "sort_order": SORT_ORDERS,
        "keys_only": FLAGS,
        "count_only": FLAGS,
        "revision": REVISIONS,
        "serializable": FLAGS,
        "min_create_revision": REVISIONS,
        "max_create_revision": REVISIONS,
        "min_mod_revision": REVISIONS,
        "max_mod_revision": REVISIONS,
    }


@FUZZ
@given(data=st.data())
def test_reads(etcd: EtcdTestContext, data: st.DataObject) -> None:
    client = etcd.client(timeout=3.0)
    key = data.draw(any_keys(etcd.prefix), label="key")
    revision, serializable = data.draw(REVISIONS), data.draw(FLAGS)
    attempt(lambda: client.get(key, revision=revision, serializable=serializable), client)
    options = draw_options(data, range_options())
    prefix = data.draw(st.one_of(keys(etcd.prefix), st.just(etcd.prefix)), label="prefix")
    attempt(lambda: client.get_prefix(prefix, **options), client)


@FUZZ
@given(data=st.data())
def test_writes(etcd: EtcdTestContext, data: st.DataObject) -> None:
    client = etcd.client(timeout=3.0)
    key = data.draw(keys(etcd.prefix), label="key")
    value = data.draw(WILD, label="value")
    with confined(etcd), leases_revoked(client):
        lease = data.draw(mixed(st.sampled_from([None, 0, "granted", "lease object"])))
        if lease in ("granted", "lease object"):
            granted = client.grant(60)
            lease = granted if lease == "lease object" else granted.id
        prev_kv = data.draw(FLAGS, label="prev_kv")
        put = attempt(lambda: client.put(key, value, lease=lease, prev_kv=prev_kv), client)
        if isinstance(lease, Lease) and (type(lease.id) is not int or lease.id < 0):
            assert isinstance(put, EtcdError), "a put with a bogus Lease dropped the lease"
        attempt(lambda: client.delete(key, prev_kv=prev_kv), client)
        prefix, flag = data.draw(keys(etcd.prefix), label="prefix"), data.draw(FLAGS)
        attempt(lambda: client.delete_prefix(prefix, prev_kv=flag), client)


def compares(prefix: str) -> st.SearchStrategy[Any]:
    targets = st.sampled_from(
        [
            Compare.version,
            Compare.create_revision,
            Compare.mod_revision,
            Compare.value,
            Compare.lease,
        ]
    )
    operators = st.sampled_from(["==", "!=", "<", ">"])

    def build(target: Any, key: Any, prefix_flag: Any, operator: str, operand: Any) -> Any:
        def compare() -> Any:
            side = target(key, prefix=prefix_flag)
            return {
                "==": side.__eq__,
                "!=": side.__ne__,
                "<": side.__lt__,
                ">": side.__gt__,
            }[operator](operand)

        return attempt(compare)

    operand = st.one_of(st.integers(0, 5), TEXTS, BYTES, WILD)
    return st.builds(build, targets, any_keys(prefix), FLAGS, operators, operand)


def ops(prefix: str, depth: int = 1) -> st.SearchStrategy[Any]:
    write_keys = keys(prefix)
    puts = st.builds(
        lambda k, v, lease, prev: attempt(lambda: Op.put(k, v, lease=lease, prev_kv=prev)),
        write_keys,
        WILD,
        mixed(st.none()),
        FLAGS,
    )
    gets = st.builds(
        lambda k, opts: attempt(lambda: Op.get(k, **opts)),
        any_keys(prefix),
        st.fixed_dictionaries({}, optional=range_options()),
    )
    deletes = st.builds(
        lambda k, p, prev: attempt(lambda: Op.delete(k, prefix=p, prev_kv=prev)),
        write_keys,
        FLAGS,
        FLAGS,
    )
    choices = [puts, gets, deletes, WILD]
    if depth:
        inner = st.lists(ops(prefix, depth - 1), max_size=3)
        nested = st.builds(
            lambda c, s, f: attempt(lambda: Op.txn(c, s, f)),
            st.lists(compares(prefix), max_size=2),
            inner,
            inner,
        )
        choices.append(nested)
    return st.one_of(*choices)


def txn_branches(prefix: str) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(ops(prefix), max_size=4), WILD, st.just(iter([])))


@FUZZ
@given(data=st.data())
def test_txn(etcd: EtcdTestContext, data: st.DataObject) -> None:
    client = etcd.client(timeout=3.0)
    compare = data.draw(st.one_of(st.lists(compares(etcd.prefix), max_size=4), WILD))
    success = data.draw(txn_branches(etcd.prefix), label="success")
    failure = data.draw(txn_branches(etcd.prefix), label="failure")
    with confined(etcd):
        attempt(lambda: client.txn(compare, success, failure), client)
        attempt(lambda: client.txn(compare=compare), client)


# --- leases, watches, maintenance -------------------------------------------------------------


@FEWER
@given(data=st.data())
def test_leases(etcd: EtcdTestContext, data: st.DataObject) -> None:
    client = etcd.client(timeout=3.0)
    with leases_revoked(client):
        lease_id = data.draw(mixed(st.integers(0, 2**63 - 1)), label="lease_id")
        granted = attempt(lambda: client.grant(data.draw(TTLS, label="ttl"), lease_id), client)
        lease = data.draw(
            mixed(st.sampled_from(["granted", "its id", 0, 7, 2**63 - 1])), label="lease"
        )
        if lease in ("granted", "its id"):
            lease = granted if not isinstance(granted, Lease) or lease == "granted" else granted.id
        keys_flag = data.draw(FLAGS, label="keys")
        attempt(lambda: client.keepalive_once(lease), client)
        attempt(lambda: client.time_to_live(lease, keys=keys_flag), client)
        attempt(lambda: client.revoke(lease), client)
        attempt(client.leases, client)


@FUZZ
@given(data=st.data())
def test_watch(etcd: EtcdTestContext, data: st.DataObject) -> None:
    client = etcd.client(timeout=3.0)
    key = data.draw(any_keys(etcd.prefix), label="key")
    options = draw_options(
        data,
        {
            "prefix": FLAGS,
            "start_revision": REVISIONS,
            "prev_kv": FLAGS,
            "filters": mixed(st.lists(st.sampled_from(["NOPUT", "nodelete", "x"]), max_size=2)),
            "progress_notify": FLAGS,
        },
    )
    stream = attempt(lambda: client.watch(key, **options), client)
    if isinstance(stream, WatchStream):
        stream.cancel()
        assert list(stream) == []


@FUZZ
@given(data=st.data())
def test_maintenance(etcd: EtcdTestContext, data: st.DataObject) -> None:
    client = etcd.client(timeout=1.0)
    endpoint = data.draw(st.one_of(st.none(), endpoint_texts(etcd.endpoint)), label="endpoint")
    for call in (client.status, client.health, client.version):
        attempt(lambda: call(endpoint), client)  # noqa: B023
    attempt(client.members, client)
    # never a revision etcd could compact to: the server is shared by the whole session
    revision = data.draw(mixed(st.integers(2**40, 2**63 - 1)), label="revision")
    if type(revision) is int and 0 < revision < 2**40:
        revision += 2**40
    attempt(lambda: client.compact(revision, physical=data.draw(FLAGS)), client)


# --- the connector and its recipes ----------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_connector_calls(etcd: EtcdTestContext, data: st.DataObject) -> None:
    """Through a namespace any key is confined: the keys are arbitrary text here."""
    with confined(etcd), namespaced(etcd, timeout=3.0) as conn:
        key = data.draw(st.one_of(TEXTS, BYTES, NON_TEXT), label="key")
        value = data.draw(WILD, label="value")
        flag = data.draw(FLAGS, label="flag")
        attempt(lambda: conn.put(key, value, prev_kv=flag), conn.client)
        attempt(lambda: conn.get(key, revision=data.draw(REVISIONS)), conn.client)
        options = draw_options(data, range_options())
        attempt(lambda: conn.get_prefix(key, **options), conn.client)
        success = data.draw(txn_branches(""), label="success")
        attempt(lambda: conn.txn(data.draw(st.lists(compares(""), max_size=2)), success))
        stream = attempt(lambda: conn.watch(key, prefix=flag), conn.client)
        if isinstance(stream, WatchStream):
            stream.cancel()
        attempt(lambda: conn.delete(key, prev_kv=flag), conn.client)
        attempt(lambda: conn.delete_prefix(key, prev_kv=flag), conn.client)
        attempt(lambda: conn.txn_guard(data.draw(WILD)))
        parts = data.draw(st.lists(st.one_of(TEXTS, NON_TEXT), max_size=4), label="parts")
        path = attempt(lambda: conn.construct_path(*parts))
        if isinstance(path, str):
            assert path.startswith("/") and "//" not in path


PATHS: Strategy = st.one_of(TEXTS, st.sampled_from(["/a", "a/b/", "/", "//", "x" * 1000]), NON_TEXT)


def start_recipe(conn: Connector, data: st.DataObject) -> Any:
    """Make one recipe with drawn arguments and start it (with drawn arguments)."""
    kind = data.draw(st.sampled_from(["ephemeral", "elector", "tracker", "observer", "health"]))
    path = data.draw(PATHS, label="path")
    recipe: Any
    if kind == "ephemeral":
        recipe = key = attempt(lambda: conn.ephemeral_key(path))
        if isinstance(key, EtcdError):
            return key
        channels: Strategy = st.one_of(st.none(), st.builds(Channel), WILD)
        channel = data.draw(channels, label="channel")
        value, ttl = data.draw(WILD, label="value"), data.draw(TTLS, label="ttl")
        started = attempt(lambda: key.create(value, ttl, channel=channel))
        if isinstance(started, Channel):
            attempt(lambda: key.update(data.draw(WILD, label="new value")))
        return key
    if kind == "elector":
        identity, ttl = data.draw(mixed(st.just("me")), label="identity"), data.draw(TTLS)
        recipe = attempt(lambda: conn.leader_elector(path, identity, ttl))
        if not isinstance(recipe, EtcdError):
            attempt(recipe.start)
            attempt(recipe.leader)
            attempt(lambda: recipe.txn(data.draw(txn_branches(""))))
        return recipe
    if kind == "tracker":
        recipe = attempt(lambda: conn.service_tracker(path))
        if not isinstance(recipe, EtcdError):
            attempt(recipe.start)
        return recipe
    if kind == "observer":
        recipe = attempt(lambda: conn.observer(path))
        if not isinstance(recipe, EtcdError):
            revision, recursive = data.draw(REVISIONS), data.draw(FLAGS)
            maxsize = data.draw(mixed(st.none()), label="maxsize")
            attempt(lambda: recipe.start(revision, recursive, maxsize=maxsize))
        return recipe
    monitor = conn.health_monitor()
    once, interval = data.draw(FLAGS), data.draw(mixed(st.floats(0.01, 5)), label="interval")
    attempt(lambda: monitor.start(once, interval))
    return monitor


@FEWER
@given(data=st.data())
def test_recipes(etcd: EtcdTestContext, data: st.DataObject) -> None:
    with confined(etcd), namespaced(etcd, timeout=2.0) as conn:
        recipe = start_recipe(conn, data)
        if isinstance(recipe, Recipe):
            gevent.sleep(0)
            attempt(recipe.stop)
            attempt(recipe.stop)  # idempotent


@FEWER
@given(data=st.data())
def test_config_watcher(etcd: EtcdTestContext, data: st.DataObject) -> None:
    with namespaced(etcd, timeout=2.0) as conn:
        stored = st.one_of(st.text(max_size=20), st.sampled_from(EDGE_TEXTS)).map(_to_value)
        conn.put("/cfg/a", data.draw(st.one_of(stored, st.binary(max_size=20)), label="stored"))
        prefix = data.draw(st.one_of(st.just("/cfg"), PATHS), label="prefix")
        decoders: Strategy = st.sampled_from([None, bytes.decode, int, len, object, 5, "x"])
        decoder = data.draw(decoders, label="decode")
        watcher = attempt(lambda: conn.config(prefix, decode=decoder))
        if isinstance(watcher, EtcdError):
            return
        callback = data.draw(st.one_of(st.just(repr), WILD), label="callback")
        attempt(lambda: watcher.on_change(callback))
        maxsize = data.draw(mixed(st.none()), label="maxsize")
        if isinstance(attempt(lambda: watcher.start(maxsize=maxsize)), Channel):
            name = data.draw(mixed(st.just("a")), label="name")
            check = data.draw(st.one_of(st.just(lambda value: True), WILD), label="predicate")
            limit = data.draw(mixed(st.floats(0.01, 1)), label="timeout")
            attempt(lambda: watcher.wait_for(name, check, limit))
            dict(watcher)
        watcher.stop()


def _to_value(value: str | bytes) -> bytes:
    """A storable value: lone surrogates cannot be encoded, so they are replaced."""
    return value.encode("utf-8", "replace") if isinstance(value, str) else value


# --- registry, resolver and instances ---------------------------------------------------------

ADDRESSES: Strategy = st.one_of(
    st.sampled_from(
        ["10.0.0.1:80", "[::1]:8080", "h:1", "h:65535", "h:0", "h:65536", "h:²", "h:٣", ":80"]
    ),
    st.sampled_from(["[::1:80", "::1:80", "h:80 ", "a/b:1", "0.0.0.0:9", "h:" + "0" * 5000]),
    TEXTS,
    NON_TEXT,
)
TAGS: Strategy = st.one_of(
    st.dictionaries(TEXTS, TEXTS, max_size=3),
    st.dictionaries(st.one_of(TEXTS, st.integers(), st.none()), WILD, max_size=2),
    WILD,
)
INSTANCE_ARGS = {
    "network": mixed(st.sampled_from(["tcp", "udp", "é<>&\u2028"])),
    "weight": mixed(st.integers(-5, 100)),
    "tags": TAGS,
}
SERVICES: Strategy = mixed(st.sampled_from(["api", "svc\0", "<svc>", "a/b", ""]))
FORMATS: Strategy = mixed(st.sampled_from(["kitex", "etcd-endpoints", "KITEX"]))


@FUZZ
@given(data=st.data())
def test_instances_and_their_encoding(data: st.DataObject) -> None:
    service, address = data.draw(SERVICES, label="service"), data.draw(ADDRESSES, label="address")
    options = draw_options(data, INSTANCE_ARGS)
    instance = attempt(lambda: Instance(service, address, **options))
    fmt = data.draw(FORMATS, label="format")
    weight = data.draw(mixed(st.integers(1, 100)), label="default_weight")
    if isinstance(instance, Instance):
        hash(instance)
        attempt(lambda: (instance.host, instance.port))
        with env(data):
            attempt(instance.for_registration)
        value = attempt(lambda: encode(instance, fmt))
        if isinstance(value, bytes):
            back = attempt(lambda: decode(instance.service, value, fmt, weight))
            if instance.weight > 0 and type(weight) is int and weight > 0:  # a round trip
                assert back == instance, value
    attempt(lambda: encode(data.draw(WILD, label="not an instance"), fmt))
    stored = data.draw(st.one_of(BYTES, TEXTS, NON_TEXT, st.sampled_from(INSTANCE_VALUES)))
    attempt(lambda: decode(data.draw(SERVICES), stored, fmt, weight))


INSTANCE_VALUES = [
    b'{"address":"h:1"}',
    b'{"address":"h:1","weight":true}',
    b'{"address":"h:1","weight":1e400}',
    b'{"address":"h:1","tags":[]}',
    b'{"address":5}',
    b'{"Addr":"h:1","Metadata":[]}',
    b'{"Addr":"h:1","Metadata":{"weight":-3}}',
    b"[" * 50_000,
    b'{"address":"h:1","weight":' + b"9" * 5000 + b"}",
    b"null",
]


@contextlib.contextmanager
def env(data: st.DataObject) -> Iterator[None]:
    """Kitex's environment variables set to drawn values (or unset) in the block."""
    names = ("KITEX_IP_TO_REGISTRY", "KITEX_PORT_TO_REGISTRY", "KITEX_ETCD_REGISTRY_LEASE_TTL")
    saved = {name: os.environ.get(name) for name in names}
    values = st.one_of(
        st.none(), st.sampled_from(["", "10.1.1.1", "8080", "²", "٣", "-1", "0", "9" * 5000])
    )
    try:
        for name in names:
            value = data.draw(values, label=name)
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@FEWER
@given(data=st.data())
def test_registry_and_resolver(etcd: EtcdTestContext, data: st.DataObject) -> None:
    with confined(etcd), namespaced(etcd, timeout=2.0) as conn:
        prefix = data.draw(mixed(st.sampled_from(["kitex/registry-etcd", "/p/", "/"])))
        fmt = data.draw(FORMATS, label="format")
        service, address = data.draw(SERVICES, label="service"), data.draw(ADDRESSES)
        instance = attempt(lambda: Instance(service, address))
        given_instance: Any = data.draw(st.one_of(st.just(instance), WILD), label="instance")
        with env(data):
            retry = data.draw(st.one_of(st.none(), st.builds(RetryPolicy), WILD), label="retry")
            ttl = data.draw(st.one_of(st.none(), TTLS), label="ttl")
            registry = attempt(
                lambda: Registry(conn, prefix=prefix, ttl=ttl, retry=retry, format=fmt)
            )
            if isinstance(registry, Registry):
                with registry:
                    attempt(lambda: registry.register(given_instance))
                    attempt(registry.instances)
                    attempt(lambda: registry.deregister(given_instance))
        strategy = data.draw(mixed(st.sampled_from(["round_robin", "random"])), label="strategy")
        weight = data.draw(mixed(st.integers(1, 100)), label="default_weight")
        resolver = attempt(
            lambda: Resolver(
                conn, prefix=prefix, default_weight=weight, format=fmt, strategy=strategy
            )
        )
        if isinstance(resolver, Resolver):
            with resolver:
                for call in (resolver.resolve, resolver.pick, resolver.watch):
                    attempt(lambda: call(service))  # noqa: B023


# --- small public types ---------------------------------------------------------------------


@FUZZ
@given(
    attempts=mixed(st.integers(0, 10)),
    observe=mixed(st.floats(0.001, 100)),
    delay=mixed(st.floats(0.001, 100)),
)
def test_retry_policy(attempts: Any, observe: Any, delay: Any) -> None:
    policy = attempt(lambda: RetryPolicy(attempts, observe, delay))
    if isinstance(policy, RetryPolicy):
        backoff = policy.backoff()
        pauses = [backoff.next() for _ in range(20)]
        assert all(0 < p <= policy.retry_delay for p in pauses)
        assert policy.gives_up_after(policy.max_attempts) is (policy.max_attempts != 0)


@FUZZ
@given(
    maxsize=mixed(st.none() | st.integers(1, 3)),
    latest_only=FLAGS,
    items=st.lists(WILD, max_size=5),
    timeout=st.one_of(st.none(), NUMBERS, WILD),
)
def test_channel(maxsize: Any, latest_only: Any, items: list[Any], timeout: Any) -> None:
    channel: Channel[Any] | EtcdError = attempt(lambda: Channel(maxsize, latest_only=latest_only))
    if not isinstance(channel, Channel):
        return
    for item in items:
        channel.put(item)
    if items:
        attempt(lambda: channel.get(timeout))  # an item is there: no wait
    channel.close()
    assert len(list(channel)) <= len(items)
    attempt(lambda: channel.get(timeout))  # closed and drained: ChannelClosed at once
    short = 0.01 if timeout is None else timeout
    if isinstance(short, int | float) and not isinstance(short, bool) and short > 0.01:
        short = 0.01
    with contextlib.suppress(gevent.Timeout):  # the documented way to say "nothing came"
        attempt(lambda: Channel().get(short))


# --- what the fuzzing found, pinned -------------------------------------------------------


def with_env(name: str, value: str, call: Callable[[], object]) -> object:
    """``call()`` with the environment variable ``name`` set to ``value``."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        return call()
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


def wait_for_ever(watcher: Any) -> object:
    """``wait_for`` with a timeout no float can hold."""
    watcher.start()
    return watcher.wait_for("a", lambda value: True, 10**400)


Found = Callable[[EtcdTestContext, Connector], object]

#: calls that once escaped as TypeError, ValueError, OverflowError, UnicodeEncodeError,
#: AttributeError or RecursionError, hung the event loop, or silently dropped an argument
FOUND: list[tuple[str, Found]] = [
    ("timeout beyond floats", lambda e, c: Client(e.endpoints, timeout=10**400)),
    ("retry delay beyond floats", lambda e, c: RetryPolicy(retry_delay=10**400)),
    ("interval beyond floats", lambda e, c: c.health_monitor().start(interval=10**400)),
    ("wait_for timeout beyond floats", lambda e, c: wait_for_ever(c.config("/cfg"))),
    ("key with a lone surrogate", lambda e, c: e.client().get(e.key("\ud800"))),
    ("namespace with a lone surrogate", lambda e, c: geventc.connect(e.endpoints, "\ud800")),
    ("instance with a lone surrogate", lambda e, c: Instance("s\ud800", "h:1")),
    ("watch filters not iterable", lambda e, c: e.client().watch(e.key("w"), filters=5)),
    ("Lease with a str id", lambda e, c: e.client().put(e.key("k"), "v", lease=Lease("x", 1))),  # type: ignore[arg-type]
    ("Lease without id", lambda e, c: e.client().put(e.key("k"), "v", lease=Lease(None, 1))),  # type: ignore[arg-type]
    ("port in superscript digits", lambda e, c: Instance("s", "h:²")),
    ("port of 5000 digits", lambda e, c: Instance("s", "h:" + "1" * 5000)),
    ("deeply nested instance", lambda e, c: decode("s", b"[" * 100_000)),
    ("instance value not bytes", lambda e, c: decode("s", 5)),  # type: ignore[arg-type]
    ("encode a non-instance", lambda e, c: encode(5)),  # type: ignore[arg-type]
    ("scheme as an enum", lambda e, c: prepare_endpoint_list(["h"], 1, Named("http"))),  # type: ignore[arg-type]
    ("channel wait of nan", lambda e, c: Channel().get(float("nan"))),
    ("recipe channel of wrong type", lambda e, c: c.ephemeral_key("/k").create("v", channel=5)),  # type: ignore[arg-type]
    ("txn_guard of a non-elector", lambda e, c: c.txn_guard(5)),  # type: ignore[arg-type]
    (
        "registry TTL in superscript",
        lambda e, c: with_env("KITEX_ETCD_REGISTRY_LEASE_TTL", "²", lambda: Registry(c)),
    ),
    (
        "registered port in superscript",
        lambda e, c: with_env(
            "KITEX_PORT_TO_REGISTRY", "²", Instance("s", "10.0.0.1:1").for_registration
        ),
    ),
]


@pytest.mark.parametrize(("label", "call"), FOUND, ids=[f[0] for f in FOUND])
def test_found_by_fuzzing(etcd: EtcdTestContext, label: str, call: Found) -> None:
    with confined(etcd), namespaced(etcd, timeout=2.0) as conn:
        outcome = attempt(lambda: call(etcd, conn))
    expected = {"deeply nested instance": ProtocolError, "scheme as an enum": list}
    assert isinstance(outcome, expected.get(label, InvalidArgument)), outcome
