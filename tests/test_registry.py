"""Registry and Resolver against a real etcd: Kitex wire format, losses, retries."""

from __future__ import annotations

import collections
import time
from typing import Any

import gevent
import pytest
from helpers.channels import next_of
from helpers.waiting import wait_until

import geventc
from geventc import (
    EphemeralEvent,
    EphemeralStatus,
    Instance,
    RecipeError,
    Registry,
    Resolver,
    RetryPolicy,
    wire,
)
from geventc.errors import InvalidArgument, NoInstances, RecipeStateError, RetriesExhausted
from geventc.instances import decode, encode
from geventc.testing import ROOT_PASSWORD, EtcdServer, FaultProxy
from geventc.testing.plugin import EtcdTestContext


def _resolves(resolver: Resolver, service: str) -> list[Instance]:
    """The instances ``resolver`` resolves ``service`` to; [] when it knows none."""
    try:
        return resolver.resolve(service)
    except NoInstances:
        return []


# --- the wire format, byte for byte ----------------------------------------------------


def test_kitex_golden_bytes() -> None:
    echo = Instance("echo", "127.0.0.1:8888", weight=66, tags={"hello": "world"})
    assert (
        encode(echo)
        == b'{"network":"tcp","address":"127.0.0.1:8888","weight":66,"tags":{"hello":"world"}}'
    )
    plain = Instance("echo", "[::1]:80")
    assert encode(plain) == b'{"network":"tcp","address":"[::1]:80","weight":10,"tags":{}}'
    tricky = Instance("s", "h:1", tags={"z": "<&>", "a": "é\n\x01", "m": '"\\'})
    # Go sorts map keys, HTML-escapes <, > and &, keeps UTF-8, writes \u0001
    assert encode(tricky) == (
        b'{"network":"tcp","address":"h:1","weight":10,"tags":'
        b'{"a":"\xc3\xa9\\n\\u0001","m":"\\"\\\\","z":"\\u003c\\u0026\\u003e"}}'
    )
    assert decode("s", encode(tricky)) == tricky


def test_etcd_endpoints_golden_bytes() -> None:
    instance = Instance("svc", "10.0.0.1:50051", weight=5, tags={"zone": "a"})
    value = encode(instance, "etcd-endpoints")
    assert value == (
        b'{"Op":0,"Addr":"10.0.0.1:50051","Metadata":{"network":"tcp","weight":5,'
        b'"tags":{"zone":"a"}}}'
    )
    assert decode("svc", value, "etcd-endpoints") == instance
    # what Go's endpoints.Manager writes with no metadata
    minimal = decode("svc", b'{"Op":0,"Addr":"10.0.0.2:50051","Metadata":null}', "etcd-endpoints")
    assert minimal.address == "10.0.0.2:50051" and minimal.weight == 10


@pytest.mark.parametrize(
    ("service", "address", "message"),
    [
        ("", "h:1", "service"),
        ("a/b", "h:1", "service"),
        ("s", "h", "host:port"),
        ("s", "h:0", "host:port"),
        ("s", "h:70000", "host:port"),
        ("s", "::1:80", "brackets"),
        ("s", "[zz]:80", "IPv6"),
        ("s", 80, "address"),
    ],
)
def test_instance_validation(service: str, address: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Instance(service, address)


def test_unspecified_host_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for unspecified in ("0.0.0.0:80", ":80", "[::]:80"):
        host = Instance("s", unspecified).for_registration().host
        assert host not in ("", "0.0.0.0", "::") and not host.startswith("127.")
    monkeypatch.setenv("KITEX_IP_TO_REGISTRY", "10.9.8.7")
    monkeypatch.setenv("KITEX_PORT_TO_REGISTRY", "9999")
    assert Instance("s", "0.0.0.0:80").for_registration().address == "10.9.8.7:9999"


# --- against a real etcd ------------------------------------------------------------------


def test_register_resolve_deregister(conn: geventc.Connector) -> None:
    registry = Registry(conn, ttl=5)
    resolver = Resolver(conn)
    echo = registry.register(Instance("echo", "127.0.0.1:8888", weight=66, tags={"hello": "world"}))
    kv = conn.get("kitex/registry-etcd/echo/127.0.0.1:8888")
    assert kv is not None and kv.value == encode(echo) and kv.lease
    assert conn.time_to_live(kv.lease).granted_ttl == 5
    assert resolver.resolve("echo") == [echo]
    registry.deregister(echo)
    assert conn.get("kitex/registry-etcd/echo/127.0.0.1:8888") is None
    wait_until(lambda: not _resolves(resolver, "echo"), 2, "the resolver to drop its list")
    with pytest.raises(NoInstances):
        resolver.resolve("unknown")
    registry.close()
    resolver.close()


def test_one_registry_many_instances_one_lease(conn: geventc.Connector) -> None:
    with Registry(conn, ttl=7) as registry:
        for service in ("a", "b", "c"):
            for port in range(8000, 8010):
                registry.register(Instance(service, f"127.0.0.1:{port}"))
        assert len(registry.instances()) == 30
        assert [lease.holders for lease in conn.lease_keeper.leases()] == [30]
        resolver = Resolver(conn)
        assert {len(resolver.resolve(s)) for s in ("a", "b", "c")} == {10}
        registry.deregister(Instance("a", "127.0.0.1:8000"))
        assert conn.get("kitex/registry-etcd/b/127.0.0.1:8000") is not None
    assert conn.get_prefix("kitex/registry-etcd/").kvs == ()  # close() deregistered all


def test_resolver_weights_malformed_values_and_watch(conn: geventc.Connector) -> None:
    conn.put("kitex/registry-etcd/w/h:1", encode(Instance("w", "h:1", weight=-1)))
    conn.put("kitex/registry-etcd/w/h:2", b"{not json")
    conn.put("kitex/registry-etcd/w/h:3", encode(Instance("w", "h:3", weight=0)))
    resolver = Resolver(conn, default_weight=25)
    assert [(i.address, i.weight) for i in resolver.resolve("w")] == [("h:1", 25), ("h:3", 25)]
    snapshots = resolver.watch("w")
    assert len(snapshots.get(timeout=2).instances) == 2
    conn.delete_prefix("kitex/registry-etcd/w/")
    assert snapshots.get(timeout=2).instances == ()  # empty, not a stale list
    resolver.close()


def test_change_visible_through_resolve_within_100ms(conn: geventc.Connector) -> None:
    resolver = Resolver(conn)
    with Registry(conn, ttl=5) as registry:
        registry.register(Instance("fast", "127.0.0.1:1"))
        resolver.resolve("fast")
        worst = 0.0
        for port in range(2, 12):
            registry.register(Instance("fast", f"127.0.0.1:{port}"))
            took = wait_until(
                lambda n=port: len(resolver.resolve("fast")) >= n, 1.0, "the change", interval=0.001
            )
            worst = max(worst, took)
    assert worst < 0.1, f"slowest change took {worst * 1000:.1f} ms"


def test_pick_by_smooth_weighted_round_robin_and_random(conn: geventc.Connector) -> None:
    with Registry(conn, ttl=5) as registry:
        registry.register(Instance("p", "h:1", weight=3))
        registry.register(Instance("p", "h:2", weight=1))
        resolver = Resolver(conn)
        picks = [resolver.pick("p").address for _ in range(400)]
        assert collections.Counter(picks) == {"h:1": 300, "h:2": 100}
        assert picks[:4].count("h:2") == 1  # interleaved, not bunched
        chance = Resolver(conn, strategy="random")
        counts = collections.Counter(chance.pick("p").address for _ in range(2000))
        assert 1300 < counts["h:1"] < 1700
    with pytest.raises(InvalidArgument):
        Resolver(conn, strategy="fastest")


def test_registration_restored_after_lease_revoked(conn: geventc.Connector) -> None:
    with Registry(conn, ttl=5) as registry:
        registry.register(Instance("r", "127.0.0.1:1"))
        lease = conn.get("kitex/registry-etcd/r/127.0.0.1:1").lease  # type: ignore[union-attr]
        conn.revoke(lease)
        assert next_of(registry.events(), EphemeralEvent).status is EphemeralStatus.LOST
        assert next_of(registry.events(), EphemeralEvent).status is EphemeralStatus.RESTORED
        kv = conn.get("kitex/registry-etcd/r/127.0.0.1:1")
        assert kv is not None and kv.lease != lease


def test_etcd_endpoints_format_round_trip(conn: geventc.Connector) -> None:
    with Registry(conn, prefix="services", format="etcd-endpoints", ttl=5) as registry:
        registry.register(Instance("grpc-svc", "10.0.0.1:50051", weight=3))
        kv = conn.get("services/grpc-svc/10.0.0.1:50051")
        assert kv is not None and kv.value.startswith(b'{"Op":0,"Addr":"10.0.0.1:50051"')
        conn.put(
            "services/grpc-svc/10.0.0.2:50051", b'{"Addr":"10.0.0.2:50051"}'
        )  # as Go writes it
        resolver = Resolver(conn, prefix="services", format="etcd-endpoints")
        assert [i.address for i in resolver.resolve("grpc-svc")] == [
            "10.0.0.1:50051",
            "10.0.0.2:50051",
        ]


def test_bad_registry_and_resolver_options(conn: geventc.Connector) -> None:
    for bad in (
        lambda: Registry(conn, prefix=""),
        lambda: Registry(conn, format="zk"),
        lambda: Registry(conn, ttl=0),
        lambda: Registry(conn, retry="often"),  # type: ignore[arg-type]
        lambda: RetryPolicy(max_attempts=-1),
        lambda: RetryPolicy(retry_delay=0),
        lambda: Resolver(conn, default_weight=0),
        lambda: Resolver(conn).resolve("a/b"),
        lambda: Registry(conn).register("echo"),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidArgument):
            bad()


def test_ttl_from_the_environment(conn: geventc.Connector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KITEX_ETCD_REGISTRY_LEASE_TTL", "9")
    assert Registry(conn).ttl == 9
    assert Registry(conn, ttl=4).ttl == 4
    monkeypatch.setenv("KITEX_ETCD_REGISTRY_LEASE_TTL", "soon")
    with pytest.raises(InvalidArgument, match="KITEX_ETCD_REGISTRY_LEASE_TTL"):
        Registry(conn)


def test_registration_restored_after_restart_with_empty_data(private_server: EtcdServer) -> None:
    with geventc.connect(private_server.endpoints, timeout=1.0) as conn:
        registry = Registry(conn, ttl=3)
        resolver = Resolver(conn)
        registry.register(Instance("phoenix", "127.0.0.1:7"))
        assert len(resolver.resolve("phoenix")) == 1
        private_server.restart(0, wipe=True)  # a brand-new, empty etcd on the same address
        took = wait_until(
            lambda: conn.get("kitex/registry-etcd/phoenix/127.0.0.1:7") is not None,
            15,
            "the registration to come back",
            interval=0.1,
        )
        # and the resolver's cache converged on the new server's state, in the same 15 s
        wait_until(
            lambda: len(_resolves(resolver, "phoenix")) == 1,
            15 - took,
            "the resolver to converge",
            interval=0.05,
        )
        registry.close()


def test_retry_gives_up_after_max_attempts_and_says_so() -> None:
    with EtcdServer(auth=True, fsync=False) as server:
        server.add_user("svc", "svc-pw", prefix="kitex/")
        with geventc.connect(server.endpoints, username="svc", password="svc-pw") as conn:
            policy = RetryPolicy(max_attempts=3, retry_delay=0.2)
            registry = Registry(conn, ttl=5, retry=policy)
            registry.register(Instance("doomed", "127.0.0.1:1"))
            # take the write permission away, then delete the key behind its back
            server.admin(
                "/v3/auth/role/grant",
                {
                    "name": "role-svc",
                    "perm": {"permType": "READ", "key": "a2l0ZXgv", "range_end": "a2l0ZXgw"},
                },
            )
            server.admin(
                "/v3/kv/deleterange",
                {"key": "a2l0ZXgvcmVnaXN0cnktZXRjZC9kb29tZWQvMTI3LjAuMC4xOjE="},
            )
            events = registry.events()
            assert next_of(events, EphemeralEvent).status is EphemeralStatus.LOST
            failures = []
            while True:
                report = next_of(events, RecipeError, timeout=15)
                failures.append(report)
                if report.fatal:
                    break
            assert isinstance(failures[-1].error, RetriesExhausted)
            assert "3 consecutive failures" in str(failures[-1].error)
            assert len(failures) == 4  # three failed attempts, then the give-up


def test_registry_and_resolver_with_auth_and_tls() -> None:
    with EtcdServer(auth=True, tls=True, fsync=False) as server:
        options = {"username": "root", "password": ROOT_PASSWORD, "tls": server.client_tls()}
        with (
            geventc.connect(server.endpoints, **options) as conn,
            Registry(conn, ttl=5) as registry,
        ):
            echo = registry.register(Instance("secure", "127.0.0.1:443"))
            with geventc.connect(server.endpoints, **options) as other:
                assert Resolver(other).resolve("secure") == [echo]


def test_registering_an_address_again_updates_it_in_place(conn: geventc.Connector) -> None:
    with Registry(conn, ttl=5) as registry:
        registry.register(Instance("u", "127.0.0.1:1", weight=1))
        before = conn.get("kitex/registry-etcd/u/127.0.0.1:1")
        assert before is not None
        registry.register(Instance("u", "127.0.0.1:1", weight=9))
        after = conn.get("kitex/registry-etcd/u/127.0.0.1:1")
        assert after is not None and b'"weight":9' in after.value
        assert after.create_revision == before.create_revision and after.lease == before.lease
        assert [i.weight for i in registry.instances()] == [9]


def test_revoked_registration_returns_on_a_new_lease(
    conn: geventc.Connector, etcd: EtcdTestContext
) -> None:
    """A lease revoked behind the registry's back is replaced by a new one: present again
    within TTL/3 + one round trip, with no give-up (LeaseNotFound is not a failure)."""
    ttl = 30
    key = "kitex/registry-etcd/rv/127.0.0.1:1"
    with Registry(conn, ttl=ttl) as registry:
        registry.register(Instance("rv", "127.0.0.1:1"))
        old = conn.get(key)
        assert old is not None
        etcd.cluster.admin("/v3/lease/revoke", {"ID": str(old.lease)})
        revoked = time.monotonic()
        seen: list[EphemeralEvent | RecipeError] = []
        while not (seen and getattr(seen[-1], "status", None) is EphemeralStatus.RESTORED):
            seen.append(registry.events().get(timeout=ttl))
        took = time.monotonic() - revoked
        print(f"re-registered {took:.3f}s after the revoke; events: {seen}")
        assert seen[0].status is EphemeralStatus.LOST  # type: ignore[union-attr]
        assert not [e for e in seen if isinstance(e, RecipeError) and e.fatal], seen
        assert took < ttl / 3 + 2.0, f"re-registered after {took:.2f}s"
        kv = conn.get(key)
        assert kv is not None and kv.lease not in (0, old.lease)
        assert registry.instances() == [Instance("rv", "127.0.0.1:1").for_registration()]


def test_giving_up_is_final_and_releases_the_instance() -> None:
    with EtcdServer(auth=True, fsync=False) as server:
        server.add_user("svc", "svc-pw", prefix="kitex/")
        with geventc.connect(server.endpoints, username="svc", password="svc-pw") as conn:
            ttl = 3
            registry = Registry(conn, ttl=ttl, retry=RetryPolicy(max_attempts=2, retry_delay=0.2))
            registry.register(Instance("final", "127.0.0.1:1"))
            (lease,) = conn.lease_keeper.leases()
            read_only = {"permType": "READ", "key": "a2l0ZXgv", "range_end": "a2l0ZXgw"}
            server.admin("/v3/auth/role/grant", {"name": "role-svc", "perm": read_only})
            key = "kitex/registry-etcd/final/127.0.0.1:1"
            server.admin("/v3/kv/deleterange", {"key": wire.b64(key.encode())})
            events = registry.events()
            while not (isinstance(report := events.get(timeout=15), RecipeError) and report.fatal):
                pass
            assert isinstance(report.error, RetriesExhausted)
            assert registry.instances() == []  # no longer listed
            assert conn.lease_keeper.leases() == []  # its share of the lease was dropped
            wait_until(lambda: lease.id not in conn.leases(), 5, "revoking the lease")
            # writes are allowed again: still nothing re-creates the key, even after the
            # lease's renewal period
            read_write = {**read_only, "permType": "READWRITE"}
            server.admin("/v3/auth/role/grant", {"name": "role-svc", "perm": read_write})
            since = conn.get_prefix("kitex/").header.revision + 1
            with (
                conn.watch("kitex/registry-etcd/final/", prefix=True, start_revision=since) as w,
                gevent.Timeout(ttl / 3 + 1.0, False),  # type: ignore[arg-type]
            ):
                for response in w:
                    assert not response.events, f"the key came back: {response.events}"
            assert conn.get(key) is None
            registry.close()


@pytest.mark.parametrize("weight", [2**63, -(2**63) - 1, 10**30])
def test_weights_beyond_gos_int_are_refused(weight: int) -> None:
    # stored, then Go Kitex clients failed: "cannot unmarshal number ... of type int"
    with pytest.raises(InvalidArgument, match="Go's int"):
        Instance("svc", "10.0.0.1:80", weight=weight)


def test_weights_at_gos_int_bounds_are_kept() -> None:
    for weight in (2**63 - 1, -(2**63)):
        assert Instance("svc", "10.0.0.1:80", weight=weight).weight == weight


@pytest.mark.parametrize(
    ("make", "wanted"),
    [
        (lambda: Registry("http://127.0.0.1:2379"), "geventc.connect('http://127.0.0.1:2379')"),
        (lambda: Resolver(geventc.Client("http://127.0.0.1:2379")), "geventc.Connector(client)"),
        (lambda: Registry(None), "Registry needs a geventc Connector"),
    ],
    ids=["registry-from-a-url", "resolver-from-a-client", "registry-from-none"],
)
def test_constructors_refuse_what_is_not_a_connector(make: Any, wanted: str) -> None:
    # they failed late with a raw AttributeError
    with pytest.raises(InvalidArgument) as caught:
        make()
    assert wanted in str(caught.value)


def test_registry_and_resolver_are_recipes_made_by_the_connector(conn: geventc.Connector) -> None:
    with conn.registry(ttl=10) as registry, conn.resolver() as resolver:
        registry.register(Instance("fact", "10.0.0.3:80"))
        assert [i.address for i in resolver.resolve("fact")] == ["10.0.0.3:80"]
        assert registry.running and resolver.running
    assert not registry.running and not resolver.running
    assert registry.events().closed
    with pytest.raises(RecipeStateError):
        registry.register(Instance("fact", "10.0.0.4:80"))
    with pytest.raises(RecipeStateError):
        resolver.resolve("fact")
    assert conn.get_prefix("kitex/registry-etcd/fact/").kvs == ()


def test_close_while_a_registration_returns_on_a_new_lease_is_truthful(
    private_server: EtcdServer,
) -> None:
    """close() while a lost registration is being written again on the lease that
    replaced its own (etcd applied the write, its answer is still on the way): the key is
    deleted, and close() is confirmed only once etcd said so; it never says an instance
    is deregistered while its key stays on the lease another holder keeps alive."""
    key = "kitex/registry-etcd/svc/127.0.0.1:1"
    with (
        FaultProxy(private_server.endpoint) as proxy,
        geventc.connect([proxy.endpoint], timeout=5, stop_timeout=0.5) as conn,
        geventc.connect(private_server.endpoints) as direct,
    ):
        keeper = conn.ephemeral_key("/keeper")
        keeper.create("v", ttl=10)  # keeps the shared lease alive throughout
        registry = Registry(conn, ttl=10)
        registry.register(Instance("svc", "127.0.0.1:1"))
        (lease,) = conn.lease_keeper.leases()
        old = lease.id
        proxy.delay(0.3)  # the loss, the new lease and the new write take their time
        direct.revoke(old)

        def on_a_new_lease() -> bool:
            kv = direct.get(key)
            return kv is not None and kv.lease != old

        wait_until(on_a_new_lease, 10, "the registration written on a new lease")
        proxy.cut("to_client")  # etcd applied the write; its answer is held
        closed = registry.close()
        now = direct.get(key)
        assert not closed or now is None, f"{closed} while the key is on {now}"
        assert not closed and "not confirmed deregistered" in closed.detail
        proxy.heal()
        wait_until(lambda: direct.get(key) is None, 10, "the key to go")
        time.sleep(0.5)  # whatever was under way has arrived by now
        assert direct.get(key) is None and direct.get("/keeper") is not None
        assert keeper.delete()
