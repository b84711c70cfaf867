"""Every bad argument raises InvalidArgument (a ValueError) naming it, before any request.

The client points at the real test server, so a call that slipped through validation
would reach etcd and fail differently (or succeed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from geventc import Client, Compare, Op
from geventc.coalesce import Flight
from geventc.errors import InvalidArgument, RequestTooLarge
from geventc.testing.plugin import EtcdTestContext

Call = Callable[[Client], Any]

BAD_CALLS: list[tuple[str, Call, str]] = [
    ("empty key", lambda c: c.get(""), "key must not be empty"),
    ("empty bytes key", lambda c: c.put(b"", "v"), "key must not be empty"),
    ("None key", lambda c: c.get(None), "key must be str or bytes, not NoneType"),
    ("int key", lambda c: c.put(5, "v"), "key must be str or bytes, not int"),
    ("None value", lambda c: c.put("/k", None), "value must be str or bytes"),
    ("float value", lambda c: c.put("/k", 1.5), "value must be str or bytes"),
    ("dict value", lambda c: c.put("/k", {"a": 1}), "value must be str or bytes"),
    ("zero ttl", lambda c: c.grant(0), "ttl must be between 1 and"),
    ("negative ttl", lambda c: c.grant(-5), "ttl must be between 1 and"),
    ("bool ttl", lambda c: c.grant(True), "ttl must be an int, not bool"),
    ("float ttl", lambda c: c.grant(1.5), "ttl must be an int, not float"),
    ("str ttl", lambda c: c.grant("10"), "ttl must be an int, not str"),
    ("huge ttl", lambda c: c.grant(9_000_000_001), "ttl must be between 1 and 9000000000"),
    ("negative revision", lambda c: c.get("/k", revision=-1), "revision must be between 0"),
    ("bool revision", lambda c: c.get("/k", revision=True), "revision must be an int"),
    (
        "negative start revision",
        lambda c: c.watch("/k", start_revision=-3),
        "start_revision must be between 0",
    ),
    ("negative limit", lambda c: c.get_prefix("/p", limit=-1), "limit must be between 0"),
    ("bad sort order", lambda c: c.get_prefix("/p", sort_order="UP"), "sort_order must be one of"),
    ("bad sort target", lambda c: c.get_prefix("/p", sort_target="x"), "sort_target must be one"),
    ("empty delete prefix", lambda c: c.delete_prefix(""), "prefix must not be empty"),
    ("negative lease", lambda c: c.put("/k", "v", lease=-1), "lease must be between 0"),
    ("zero lease revoke", lambda c: c.revoke(0), "lease must be between 1"),
    ("str lease", lambda c: c.keepalive_once("abc"), "lease must be an int"),
    ("prefix flag not bool", lambda c: c.watch("/k", prefix="yes"), "prefix must be True or False"),
    ("zero compact", lambda c: c.compact(0), "revision must be between 1"),
    (
        "too many txn ops",
        lambda c: c.txn(success=[Op.put(f"/k{i}", "v") for i in range(129)]),
        "success has 129 entries; etcd allows at most 128",
    ),
    (
        "too many compares",
        lambda c: c.txn(compare=[Compare.version(f"/k{i}") == 0 for i in range(129)]),
        "compare has 129 entries",
    ),
    ("txn op of wrong type", lambda c: c.txn(success=["put /k v"]), "success must hold only TxnOp"),
    ("txn compare of bool", lambda c: c.txn(compare=[True]), "compare must hold only Comparison"),
    ("txn ops not a list", lambda c: c.txn(success="abc"), "success must be a list"),
    (
        "bad compare operand",
        lambda c: Compare.version("/k") == "x",
        "compared version must be an int",
    ),
    (
        "bad compare value",
        lambda c: Compare.value("/k") == 3,
        "compared value must be str or bytes",
    ),
    ("bad status endpoint", lambda c: c.status("ftp://x:1"), "allowed are http and https"),
    ("put flight of str", lambda c: c.put("/k", "v", flight="f"), "flight must be a Flight"),
    ("txn flight of int", lambda c: c.txn(flight=1), "flight must be a Flight or None, not int"),
    ("flight join timeout", lambda c: Flight().join(timeout=-1), "timeout must be None or"),
]


@pytest.mark.parametrize(("label", "call", "message"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_argument(etcd: EtcdTestContext, label: str, call: Call, message: str) -> None:
    client = etcd.client()
    with pytest.raises(InvalidArgument) as caught:
        call(client)
    assert message in str(caught.value), str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_oversize_value_is_refused_before_sending(etcd: EtcdTestContext) -> None:
    client = etcd.client()
    with pytest.raises(RequestTooLarge, match="1572864"):
        client.put(etcd.key("big"), b"x" * (1572864 + 1))
    with pytest.raises(RequestTooLarge):
        client.txn(
            success=[Op.put(etcd.key("a"), b"x" * 900_000), Op.put(etcd.key("b"), b"y" * 900_000)]
        )
    assert client.get(etcd.key("big")) is None


def test_server_request_limit_maps_to_request_too_large(etcd: EtcdTestContext) -> None:
    client = etcd.client(max_request_bytes=4 * 1024 * 1024)  # let it reach the server
    with pytest.raises(RequestTooLarge, match="request is too large"):
        client.put(etcd.key("big"), b"x" * (1600 * 1024))
    with pytest.raises(RequestTooLarge, match="larger than max"):
        client.put(etcd.key("big"), b"x" * (2 * 1024 * 1024))


BAD_CLIENTS: list[tuple[str, dict[str, Any], str]] = [
    ("empty list", {"endpoints": []}, "at least one"),
    ("empty string", {"endpoints": ""}, "at least one"),
    ("unknown scheme", {"endpoints": ["unix://x:1"]}, "allowed are http and https"),
    ("bad port", {"endpoints": ["http://h:70000"]}, "bad port"),
    ("non-numeric port", {"endpoints": ["h:abc"]}, "bad port"),
    ("mixed schemes", {"endpoints": ["http://a:1", "https://b:2"]}, "mix http and https"),
    ("endpoint of wrong type", {"endpoints": [("h", 1)]}, "must be a str URL"),
    ("endpoints of wrong type", {"endpoints": 2379}, "endpoints must be a list"),
    ("zero timeout", {"endpoints": ["h:1"], "timeout": 0}, "timeout must be a positive"),
    ("bool timeout", {"endpoints": ["h:1"], "timeout": True}, "timeout must be a positive number"),
    ("user without password", {"endpoints": ["h:1"], "username": "u"}, "given together"),
    ("empty user", {"endpoints": ["h:1"], "username": "", "password": "p"}, "non-empty"),
    ("tls of wrong type", {"endpoints": ["https://h:1"], "tls": {"ca": 1}}, "TLSConfig"),
]


@pytest.mark.parametrize(
    ("label", "options", "message"), BAD_CLIENTS, ids=[b[0] for b in BAD_CLIENTS]
)
def test_bad_client_options(label: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        Client(**options)
    assert message in str(caught.value), str(caught.value)


def test_bare_host_port_means_http() -> None:
    assert Client("127.0.0.1:2379").endpoints == ["http://127.0.0.1:2379"]


def _not_patched(prelude: str) -> str:
    """What ``Client(...)`` says in a fresh process after ``prelude`` (the imports and
    patching a program did first)."""
    script = textwrap.dedent(prelude) + textwrap.dedent(
        """
        from geventc import Client
        from geventc.errors import NotPatched
        try:
            Client(["http://127.0.0.1:2379"])
        except NotPatched as exc:
            print("NotPatched:", exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, check=True
    )
    assert "NotPatched:" in out.stdout, out.stderr
    return out.stdout


def test_unpatched_process_gets_not_patched() -> None:
    assert "gevent.monkey.patch_all()" in _not_patched("")


def test_a_geventc_name_imported_before_patching_is_named_in_not_patched() -> None:
    # the message said "urllib3 was imported before patching ... importing geventc itself
    # is fine" to a user whose only import was `from geventc import Client`
    said = _not_patched(
        """
        from geventc import Client
        from gevent import monkey
        monkey.patch_all()
        """
    )
    assert "`from geventc import Client`" in said
    assert "before importing names from geventc" in said


def test_import_geventc_loads_no_network_module() -> None:
    script = "import sys, geventc; print('urllib3' in sys.modules, 'ssl' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_urllib3_imported_before_patching_gets_not_patched() -> None:
    said = _not_patched(
        """
        import urllib3
        from gevent import monkey
        monkey.patch_all()
        """
    )
    assert "before importing urllib3" in said
