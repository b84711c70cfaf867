"""A real Go gRPC client finds services through etcd's ``naming/resolver``.

A Go gRPC server (``grpc.health.v1.Health``) listens on a free port; geventc registers
its address in the ``etcd-endpoints`` format; a Go gRPC client dials
``etcd:///<target>`` with ``go.etcd.io/etcd/client/v3/naming/resolver`` (the
``grpc-dial`` peer reports every resolver update and every change of the RPC's
outcome). The call reaches the server while geventc keeps the registration, and fails
once geventc deregisters or its lease is revoked. The reverse: a Go server registered
by Go's ``endpoints.Manager`` on its lease is resolved and watched by geventc.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gopeer import GoPeer, GoPeers
from helpers.waiting import wait_until

import geventc
from geventc import Instance, Registry, Resolver
from geventc.testing.plugin import EtcdTestContext

SERVICE = "health"


@pytest.fixture
def server(go_peers: GoPeers) -> str:
    """The address of a running Go gRPC health server."""
    return go_peers.start("grpc-serve").expect("serving")["addr"]


@pytest.fixture
def prefix(etcd: EtcdTestContext) -> str:
    """The registry prefix: the gRPC target is ``prefix + "/" + SERVICE``."""
    return etcd.key("grpc")


@pytest.fixture
def registry_conn(etcd: EtcdTestContext) -> Iterator[geventc.Connector]:
    """A connector of its own for the registry (closing it revokes its lease)."""
    with geventc.connect(etcd.endpoints) as connector:
        yield connector


def dial(go_peers: GoPeers, etcd: EtcdTestContext, prefix: str) -> GoPeer:
    """A Go gRPC client of ``etcd:///prefix/SERVICE``."""
    return go_peers.start("grpc-dial", endpoints=etcd.endpoints, path=f"{prefix}/{SERVICE}")


def resolves(client: GoPeer, *addresses: str) -> None:
    """Go's resolver hands gRPC exactly ``addresses`` next (after any other updates)."""
    wanted = sorted(addresses)
    seen = []
    while True:
        found = client.expect("resolved")["addresses"]
        seen.append(found)
        if found == wanted:
            return
        assert len(seen) < 5, f"Go's resolver never resolved {wanted}: {seen}"


def answers(client: GoPeer, address: str) -> None:
    """The Go client's Health.Check reaches the server at ``address``, SERVING."""
    line = client.expect("answered")
    assert (line["addr"], line["status"]) == (address, "SERVING"), line


def reaches_now(client: GoPeer, address: str) -> None:
    """The Go client's latest outcome is a call answered by ``address`` (it may have
    failed for a moment before, while the resolver had no address)."""

    def answering() -> bool:
        outcomes = [line for line in client.lines if line["event"] in ("answered", "failed")]
        return bool(outcomes) and outcomes[-1].get("addr") == address

    wait_until(answering, 10, f"the Go gRPC client reaching {address}")


def test_go_grpc_client_dials_what_geventc_registered_until_it_deregisters(
    etcd: EtcdTestContext,
    go_peers: GoPeers,
    server: str,
    prefix: str,
    registry_conn: geventc.Connector,
) -> None:
    registry = Registry(registry_conn, prefix=prefix, format="etcd-endpoints", ttl=5)
    instance = registry.register(Instance(SERVICE, server))
    client = dial(go_peers, etcd, prefix)
    resolves(client, server)
    answers(client, server)

    registry.deregister(instance)
    resolves(client)  # no address left
    assert "Unavailable" in client.expect("failed")["error"]

    registry.register(Instance(SERVICE, server))  # back: the same client reaches it again
    resolves(client, server)
    answers(client, server)

    registry_conn.close()  # revokes the registry's lease: Go drops the address
    resolves(client)
    assert "Unavailable" in client.expect("failed")["error"]


def test_a_revoked_lease_is_re_registered_and_go_dials_it_again(
    etcd: EtcdTestContext,
    conn: geventc.Connector,
    go_peers: GoPeers,
    server: str,
    prefix: str,
    registry_conn: geventc.Connector,
) -> None:
    """geventc's registry re-registers at once when its lease is revoked behind its
    back (Kitex's retry behaviour); Go's resolver then lists the address again on the
    new lease and the RPC reaches the server."""
    registry = Registry(registry_conn, prefix=prefix, format="etcd-endpoints", ttl=3)
    registry.register(Instance(SERVICE, server))
    key = f"{prefix}/{SERVICE}/{server}"
    client = dial(go_peers, etcd, prefix)
    resolves(client, server)
    answers(client, server)
    before = conn.get(key)
    assert before is not None and before.lease

    conn.revoke(before.lease)
    # the deletion and the new put may come in one watch response: then Go's resolver
    # never hands gRPC an empty list; either way it ends at the address
    resolves(client, server)
    after = conn.get(key)
    assert after is not None and after.lease not in (0, before.lease)
    assert after.value == before.value
    reaches_now(client, server)


def test_geventc_resolves_and_watches_what_go_endpoints_manager_registered(
    etcd: EtcdTestContext, conn: geventc.Connector, go_peers: GoPeers, server: str, prefix: str
) -> None:
    target = f"{prefix}/{SERVICE}"
    resolver = Resolver(conn, prefix=prefix, format="etcd-endpoints")
    try:
        updates = resolver.watch(SERVICE)
        holder = go_peers.start(
            "endpoints-hold",
            endpoints=etcd.endpoints,
            path=target,
            key=f"{target}/{server}",
            identity=server,
            weight=4,
            ttl=5,
        )
        added = holder.expect("added")
        assert wait_for_instances(updates, {(server, 4)})
        client = dial(go_peers, etcd, prefix)  # the Go client agrees
        answers(client, server)

        holder.stop()
        holder.expect("deleted")
        assert wait_for_instances(updates, set())

        second = go_peers.start(
            "endpoints-hold",
            endpoints=etcd.endpoints,
            path=target,
            key=f"{target}/{server}",
            identity=server,
            weight=2,
            ttl=5,
        )
        lease = int(second.expect("added")["lease"], 16)
        assert lease != int(added["lease"], 16)
        assert wait_for_instances(updates, {(server, 2)})
        conn.revoke(lease)  # Go's session lease goes: geventc drops it
        assert wait_for_instances(updates, set())
    finally:
        resolver.close()


def wait_for_instances(updates: geventc.Channel, wanted: set[tuple[str, int]]) -> bool:
    """Read the resolver's snapshots until one holds exactly ``wanted`` (address,
    weight) pairs; fails after 10 s or 5 snapshots."""
    seen = []
    for _ in range(5):
        snapshot = updates.get(timeout=10)
        found = {(i.address, i.weight) for i in snapshot.instances}
        seen.append(found)
        if found == wanted:
            return True
    raise AssertionError(f"geventc's resolver never held {wanted}: {seen}")
