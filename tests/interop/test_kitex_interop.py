"""geventc's Registry and Resolver against the real Kitex ``registry-etcd``.

The Kitex peer (``tests/interop/kitex``, :mod:`kitexpeer`) runs Kitex's own registry
(``NewEtcdRegistryWithRetry`` + ``Register``/``Deregister``, as a Kitex server calls
them) and resolver (``NewEtcdResolver`` + ``Resolve``, as a Kitex client's discovery
does) on the same etcd as geventc, under the test's own prefix (Kitex's
``WithEtcdServicePrefix``). Each side must find the other's instances with their
weight and tags, see the other's deregistrations and lease losses, and write the same
bytes for the same instance. Where the two differ (``0.0.0.0``, IPv6 addresses, nil
tags, polling against watching for a lost registration), the tests state what each side
does.
"""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from gopeer import GoPeer, GoPeers, only
from helpers.channels import next_of
from helpers.waiting import wait_until

import geventc
from geventc import (
    EphemeralEvent,
    EphemeralStatus,
    Instance,
    Registry,
    Resolver,
    RetryPolicy,
    ServiceInstances,
)
from geventc.errors import NoInstances
from geventc.instances import encode
from geventc.testing import FaultProxy
from geventc.testing.plugin import EtcdTestContext
from geventc.wire import Event, EventType

TAGS = {"hello": "world", "zone": "a"}


def kitex_prefix(etcd: EtcdTestContext) -> str:
    """Kitex's default prefix, under the test's own prefix."""
    return etcd.key("kitex/registry-etcd")


def tag_flag(tags: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in tags.items())


def kitex_register(
    kitex: GoPeers,
    etcd: EtcdTestContext,
    service: str,
    addr: str,
    prefix: str | None = None,
    **flags: Any,
) -> GoPeer:
    """A running Kitex registry that has registered ``addr`` for ``service``."""
    peer = kitex.start(
        "register",
        endpoints=etcd.endpoints,
        prefix=prefix or kitex_prefix(etcd),
        service=service,
        addr=addr,
        **flags,
    )
    peer.expect("registered")
    return peer


def kitex_resolve(kitex: GoPeers, etcd: EtcdTestContext, service: str) -> dict[str, Any]:
    """What Kitex's resolver ``Resolve`` returns for ``service`` (its ``resolved`` line)."""
    lines = kitex.run(
        "resolve", endpoints=etcd.endpoints, prefix=kitex_prefix(etcd), service=service
    )
    return only(lines, "resolved")


def resolved(resolver: Resolver, service: str) -> list[Instance]:
    """The instances geventc resolves ``service`` to ([] for none)."""
    try:
        return resolver.resolve(service)
    except NoInstances:
        return []


def klog_lines(peer: GoPeer) -> list[str]:
    """Kitex's log lines the peer printed so far."""
    return [line["text"] for line in peer.lines if line.get("event") == "klog"]


# --- 1, 2: each side resolves the other's registrations ---------------------------------


def test_kitex_registers_and_geventc_resolves_weight_and_tags(
    etcd: EtcdTestContext, conn: geventc.Connector, kitex: GoPeers
) -> None:
    kitex_register(kitex, etcd, "echo", "127.0.0.1:8888", weight=66, tags=tag_flag(TAGS))
    # weight 0 in registry.Info: stored as 0, both resolvers give the default weight
    kitex_register(kitex, etcd, "echo", "127.0.0.1:8889", weight=0, tags="")
    with Resolver(conn, prefix=kitex_prefix(etcd)) as resolver:
        assert resolver.resolve("echo") == [
            Instance("echo", "127.0.0.1:8888", weight=66, tags=TAGS),
            Instance("echo", "127.0.0.1:8889", weight=10),
        ]
    kitex_view = kitex_resolve(kitex, etcd, "echo")["instances"]
    assert [i["weight"] for i in kitex_view] == [66, 10]


def test_geventc_registers_and_kitex_resolves_weight_and_tags(
    etcd: EtcdTestContext, conn: geventc.Connector, kitex: GoPeers
) -> None:
    with Registry(conn, prefix=kitex_prefix(etcd), ttl=10) as registry:
        registry.register(Instance("echo", "127.0.0.1:9999", weight=7, tags=TAGS))
        registry.register(Instance("echo", "127.0.0.1:9998"))
        answer = kitex_resolve(kitex, etcd, "echo")
    assert "resolve_error" not in answer
    assert answer["cacheable"] is True and answer["cache_key"] == "echo"
    assert answer["instances"] == [
        {"network": "tcp", "address": "127.0.0.1:9998", "weight": 10, "tags": {}},
        {"network": "tcp", "address": "127.0.0.1:9999", "weight": 7, "tags": TAGS},
    ]


# --- 3: deregistration ------------------------------------------------------------------


def test_kitex_deregistration_is_seen_by_geventc(
    etcd: EtcdTestContext, conn: geventc.Connector, kitex: GoPeers
) -> None:
    peer = kitex_register(kitex, etcd, "echo", "127.0.0.1:8888", weight=5, ttl=10)
    key = f"{kitex_prefix(etcd)}/echo/127.0.0.1:8888"
    lease = conn.get(key).lease  # type: ignore[union-attr]
    with Resolver(conn, prefix=kitex_prefix(etcd)) as resolver:
        changes = resolver.watch("echo")
        assert [i.address for i in next_of(changes, ServiceInstances).instances] == [
            "127.0.0.1:8888"
        ]
        assert peer.stop() == 0  # SIGTERM: Kitex's Deregister
        assert only(peer.lines, "deregistered")
        assert next_of(changes, ServiceInstances).instances == ()
        assert resolved(resolver, "echo") == []
    assert conn.get(key) is None
    # a difference: Kitex's Deregister deletes the key and stops renewing, but leaves
    # its lease to expire (geventc releases its share of the connector's lease)
    assert conn.time_to_live(lease).ttl > 0


def test_geventc_deregistration_is_seen_by_kitex(
    etcd: EtcdTestContext, conn: geventc.Connector, kitex: GoPeers
) -> None:
    with Registry(conn, prefix=kitex_prefix(etcd), ttl=10) as registry:
        echo = registry.register(Instance("echo", "127.0.0.1:9999", weight=7, tags=TAGS))
        assert [i["address"] for i in kitex_resolve(kitex, etcd, "echo")["instances"]] == [
            "127.0.0.1:9999"
        ]
        assert registry.deregister(echo).confirmed
        answer = kitex_resolve(kitex, etcd, "echo")
    assert answer["instances"] == []
    assert answer["resolve_error"] == "no instance remains for echo"


# --- 4: lease loss --------------------------------------------------------------------


def test_kitex_lease_revoked_geventc_sees_it_gone_and_kitex_polls_it_back(
    etcd: EtcdTestContext, conn: geventc.Connector, kitex: GoPeers
) -> None:
    """Kitex notices a lost registration only by polling: every ``ObserveDelay`` its
    ``keepRegister`` loop reads the key and, when it is gone, grants a new lease and puts
    the same value again (a revocation is not a failure: ``MaxAttemptTimes`` counts
    only failed etcd calls, so this repeats forever). geventc's resolver sees the key go
    and come back through its watch."""
    peer = kitex_register(
        kitex,
        etcd,
        "echo",
        "127.0.0.1:8888",
        weight=66,
        tags=tag_flag(TAGS),
        ttl=10,
        observe_delay="300ms",
        retry_delay="200ms",
        max_attempts=1,
    )
    key = f"{kitex_prefix(etcd)}/echo/127.0.0.1:8888"
    first = conn.get(key)
    assert first is not None
    expected = Instance("echo", "127.0.0.1:8888", weight=66, tags=TAGS)
    with Resolver(conn, prefix=kitex_prefix(etcd)) as resolver:
        changes = resolver.watch("echo")
        assert next_of(changes, ServiceInstances).instances == (expected,)
        leases = [first.lease]
        for _ in range(2):  # twice: re-registering is not a one-off
            conn.revoke(leases[-1])
            assert next_of(changes, ServiceInstances).instances == ()
            assert next_of(changes, ServiceInstances).instances == (expected,)
            back = conn.get(key)
            assert back is not None and back.value == first.value
            assert back.lease not in leases and conn.time_to_live(back.lease).ttl > 0
            leases.append(back.lease)
    logged = klog_lines(peer)
    assert sum(f"keep register service {key}" in text for text in logged) == 2
    for lease in leases[1:]:
        assert any(f"start keepalive lease {lease:x}" in text for text in logged), logged


def test_geventc_lease_revoked_kitex_sees_it_gone_and_geventc_restores_it_at_once(
    etcd: EtcdTestContext, conn: geventc.Connector, kitex: GoPeers
) -> None:
    """The same fault on geventc's side: geventc notices the deletion through its watch
    and writes the registration again on a new lease at once (no polling delay), so a
    Kitex ``Resolve`` can only see the gap while geventc cannot reach etcd: its proxy is
    frozen during the revocation, and Kitex's resolver finds nothing until it thaws."""
    key = f"{kitex_prefix(etcd)}/echo/127.0.0.1:9999"
    with (
        FaultProxy(etcd.endpoint) as proxy,
        geventc.connect([proxy.endpoint]) as through_proxy,
        Registry(
            through_proxy, prefix=kitex_prefix(etcd), ttl=10, retry=RetryPolicy(max_attempts=1)
        ) as registry,
    ):
        registry.register(Instance("echo", "127.0.0.1:9999", weight=7, tags=TAGS))
        first = conn.get(key)
        assert first is not None
        events = registry.events()
        proxy.freeze()
        conn.revoke(first.lease)
        gone = kitex_resolve(kitex, etcd, "echo")
        assert gone["instances"] == [] and gone["resolve_error"] == "no instance remains for echo"
        proxy.heal()
        assert next_of(events, EphemeralEvent).status is EphemeralStatus.LOST
        assert next_of(events, EphemeralEvent).status is EphemeralStatus.RESTORED
        back = conn.get(key)
        assert back is not None and back.value == first.value and back.lease != first.lease
        assert kitex_resolve(kitex, etcd, "echo")["instances"] == [
            {"network": "tcp", "address": "127.0.0.1:9999", "weight": 7, "tags": TAGS}
        ]
        # every watcher saw the loss: a deletion, then the same value on the new lease
        seen: list[Event] = []
        with conn.watch(key, start_revision=first.mod_revision + 1) as watch:
            for response in watch:
                seen += response.events
                if len(seen) >= 2:
                    break
        assert [(e.type, e.kv.lease) for e in seen[:2]] == [
            (EventType.DELETE, 0),
            (EventType.PUT, back.lease),
        ]


# --- 5: the same bytes ------------------------------------------------------------------


def _written(conn: geventc.Connector, prefix: str) -> dict[str, bytes]:
    """Every key under ``prefix`` (relative to it) and its value, raw from etcd."""
    return {kv.key_str.removeprefix(prefix): kv.value for kv in conn.get_prefix(prefix + "/").kvs}


@pytest.mark.parametrize(
    ("addr", "weight", "tags"),
    [
        ("127.0.0.1:8888", 66, {"hello": "world"}),
        # Go's encoding/json: sorted keys, HTML-safe escapes, UTF-8 kept, \u0001
        ("10.1.2.3:1", -3, {"z": "<&>", "a": "é\n\x01", "m": '"\\', "tab": "\t"}),
        (":8888", 10, {}),  # unspecified host: the first non-loopback IPv4 on both sides
    ],
    ids=["plain", "escapes", "unspecified-host"],
)
def test_kitex_and_geventc_write_the_same_key_and_value_bytes(
    etcd: EtcdTestContext,
    conn: geventc.Connector,
    kitex: GoPeers,
    addr: str,
    weight: int,
    tags: dict[str, str],
) -> None:
    kitex_at, geventc_at = etcd.key("kitex-wrote"), etcd.key("geventc-wrote")
    kitex_register(kitex, etcd, "echo", addr, prefix=kitex_at, weight=weight, tags=tag_flag(tags))
    with Registry(conn, prefix=geventc_at, ttl=10) as registry:
        registry.register(Instance("echo", addr, weight=weight, tags=tags))
        theirs, ours = _written(conn, kitex_at), _written(conn, geventc_at)
    assert len(theirs) == 1 and ours == theirs


def test_where_kitex_writes_other_bytes_than_geventc(
    etcd: EtcdTestContext, conn: geventc.Connector, kitex: GoPeers
) -> None:
    """The differences, each deliberate on geventc's side (its golden-bytes and unit
    tests pin them): Kitex writes ``"tags":null`` for a server without tags (a nil map;
    geventc's instances always have a mapping, ``{}``, which Kitex reads the same way);
    it registers ``0.0.0.0`` as given (it replaces only an empty host and ``::``; geventc
    replaces ``0.0.0.0`` too); and it writes an IPv6 address without brackets, which
    no Go client can dial (geventc keeps the brackets; Kitex's resolver returns them)."""
    at = etcd.key("kitex-wrote")
    kitex_register(kitex, etcd, "nil-tags", "10.0.0.1:80", prefix=at, no_tags="true")
    kitex_register(kitex, etcd, "any", "0.0.0.0:80", prefix=at)
    kitex_register(kitex, etcd, "six", "[::1]:80", prefix=at)
    assert _written(conn, at) == {
        "/nil-tags/10.0.0.1:80": (
            b'{"network":"tcp","address":"10.0.0.1:80","weight":10,"tags":null}'
        ),
        "/any/0.0.0.0:80": b'{"network":"tcp","address":"0.0.0.0:80","weight":10,"tags":{}}',
        "/six/::1:80": b'{"network":"tcp","address":"::1:80","weight":10,"tags":{}}',
    }
    assert encode(Instance("nil-tags", "10.0.0.1:80")).endswith(b'"tags":{}}')
    assert Instance("any", "0.0.0.0:80").for_registration().host != "0.0.0.0"
    with Registry(conn, prefix=kitex_prefix(etcd), ttl=10) as registry:
        registry.register(Instance("six", "[::1]:80"))
        answer = kitex_resolve(kitex, etcd, "six")
    assert [i["address"] for i in answer["instances"]] == ["[::1]:80"]
    with Resolver(conn, prefix=at) as resolver:
        assert resolver.resolve("nil-tags") == [Instance("nil-tags", "10.0.0.1:80")]
        # Kitex's unbracketed IPv6 address resolves as the dialable, bracketed one
        # (it was skipped: "an IPv6 host must be in brackets")
        assert resolver.resolve("six") == [Instance("six", "[::1]:80")]


def test_after_max_attempts_failed_checks_kitex_stops_keeping_its_registration(
    etcd: EtcdTestContext, conn: geventc.Connector, kitex: GoPeers
) -> None:
    """Kitex's ``MaxAttemptTimes`` counts failed *checks* (each a ``Get`` with a 3 s
    timeout, then ``RetryDelay``): a partition that fails that many in a row ends its
    ``keepRegister`` loop for good, although nothing was lost, and a registration lost
    afterwards never comes back. geventc's ``RetryPolicy.max_attempts`` counts failed
    *restorations*: the same partition consumes nothing, and the same loss afterwards
    is restored at once."""
    kitex_key = f"{kitex_prefix(etcd)}/kx/127.0.0.1:8888"
    ours_key = f"{kitex_prefix(etcd)}/gx/127.0.0.1:9999"
    with (
        FaultProxy(etcd.endpoint) as proxy,
        geventc.connect([proxy.endpoint]) as through_proxy,
        Registry(
            through_proxy, prefix=kitex_prefix(etcd), ttl=10, retry=RetryPolicy(max_attempts=1)
        ) as registry,
    ):
        peer = kitex.start(
            "register",
            endpoints=[proxy.endpoint],
            prefix=kitex_prefix(etcd),
            service="kx",
            addr="127.0.0.1:8888",
            ttl=10,
            observe_delay="100ms",
            retry_delay="100ms",
            max_attempts=1,
        )
        peer.expect("registered")
        registry.register(Instance("gx", "127.0.0.1:9999"))
        events = registry.events()
        kitex_lease = conn.get(kitex_key).lease  # type: ignore[union-attr]
        ours_lease = conn.get(ours_key).lease  # type: ignore[union-attr]
        proxy.freeze()
        wait_until(
            lambda: any("failed times:1" in text for text in klog_lines(peer)),
            10,
            "Kitex's keepRegister to give up",
            interval=0.05,
        )
        proxy.heal()
        wait_until(
            lambda: through_proxy.get(ours_key) is not None, 10, "geventc to reach etcd again"
        )
        assert conn.get(kitex_key).lease == kitex_lease  # type: ignore[union-attr]
        conn.revoke(kitex_lease)
        conn.revoke(ours_lease)
        assert next_of(events, EphemeralEvent).status is EphemeralStatus.LOST
        assert next_of(events, EphemeralEvent).status is EphemeralStatus.RESTORED
        assert conn.get(ours_key) is not None
        # ten observe delays: Kitex's loop has ended, nothing looks at the key any more
        logged = len(klog_lines(peer))
        gevent.sleep(1.0)
        assert klog_lines(peer)[logged:] == [], "Kitex's keepRegister ran again after giving up"
        assert conn.get(kitex_key) is None
