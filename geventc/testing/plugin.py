"""pytest plugin: real etcd fixtures (registered through the ``pytest11`` entry point).

- ``etcd``: one etcd server shared by the whole session; each test gets an
  :class:`EtcdTestContext` with a fresh key prefix that is deleted afterwards.
- ``etcd_cluster``: a 3-member cluster shared by the session; each test gets a context
  too, and members it killed or paused are brought back afterwards.
- ``etcd_fault_cluster``: a 3-member cluster with ``netns=True`` and ``proxied=True``
  (each member in its own network namespace, clients through a
  :class:`~geventc.testing.faults.FaultProxy` per member), for ``isolate``,
  ``partition``, ``blackhole`` and ``replace``; healed before and after each test. It
  is skipped, with the reason, where namespaces cannot be made (not root, no iproute2).

Run the tests under ``pytest-gevent`` (or patch gevent before pytest starts)::

    def test_put(etcd):
        client = etcd.client()
        client.put(etcd.key("a"), "1")
        assert client.get(etcd.key("a")).value == b"1"
"""

from __future__ import annotations

import base64
import itertools
import re
from collections.abc import Iterator
from typing import Any

import pytest

from ..wire import prefix_range_end
from .faults import FaultHarnessUnavailable
from .server import EtcdCluster, EtcdServer

_counter = itertools.count(1)


class EtcdTestContext:
    """A test's view of a real etcd: its endpoints, a private key prefix and clients
    that are closed when the test ends."""

    def __init__(self, cluster: EtcdCluster, prefix: str) -> None:
        self.cluster = cluster
        self.prefix = prefix
        self._clients: list[Any] = []

    @property
    def endpoints(self) -> list[str]:
        """The client endpoints of every member (through the fault proxies when the
        cluster is ``proxied``)."""
        return self.cluster.endpoints

    @property
    def endpoint(self) -> str:
        """The first member's client endpoint."""
        return self.cluster.endpoint

    def key(self, *parts: str) -> str:
        """A key under this test's prefix."""
        return self.prefix + "/".join(parts)

    def client(self, endpoints: Any = None, **options: Any) -> Any:
        """A :class:`geventc.Client` for this cluster, closed after the test."""
        from ..client import Client

        settings = {**self.cluster.client_options(), **options}
        client = Client(endpoints or self.endpoints, **settings)
        self._clients.append(client)
        return client

    def cleanup(self) -> None:
        """Close the clients and delete the test's keys."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        key = self.prefix.encode()
        self.cluster.admin(
            "/v3/kv/deleterange",
            {
                "key": base64.b64encode(key).decode(),
                "range_end": base64.b64encode(prefix_range_end(key)).decode(),
            },
        )


def pytest_report_header(config: pytest.Config) -> str:
    """The etcd release the fixtures run (``ETCD_VERSION`` / ``ETCD_BIN`` choose it)."""
    from .releases import EtcdNotFound, binary_release, find_etcd_binary

    try:
        binary = find_etcd_binary()
    except (EtcdNotFound, ValueError) as exc:
        return f"etcd: {exc}"
    release = binary_release(binary)
    return f"etcd: {release.name if release else 'unknown release'} ({binary})"


def _prefix_for(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:60]
    return f"/geventc-test/{next(_counter)}-{name}/"


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """The session's single etcd server."""
    with EtcdServer(fsync=False) as server:
        yield server


@pytest.fixture
def etcd(etcd_server: EtcdServer, request: pytest.FixtureRequest) -> Iterator[EtcdTestContext]:
    """A fresh key prefix on the session's etcd server."""
    context = EtcdTestContext(etcd_server, _prefix_for(request))
    yield context
    context.cleanup()


@pytest.fixture(scope="session")
def etcd_cluster_server() -> Iterator[EtcdCluster]:
    """The session's 3-member etcd cluster."""
    with EtcdCluster(3, fsync=False) as cluster:
        yield cluster


@pytest.fixture
def etcd_cluster(
    etcd_cluster_server: EtcdCluster, request: pytest.FixtureRequest
) -> Iterator[EtcdTestContext]:
    """A fresh key prefix on the session's 3-member cluster, healed after the test."""
    etcd_cluster_server.heal()
    context = EtcdTestContext(etcd_cluster_server, _prefix_for(request))
    yield context
    etcd_cluster_server.heal()
    context.cleanup()


@pytest.fixture(scope="session")
def etcd_fault_cluster_server() -> Iterator[EtcdCluster]:
    """The session's 3-member cluster in network namespaces, behind fault proxies."""
    try:
        cluster = EtcdCluster(3, fsync=False, netns=True, proxied=True).start()
    except FaultHarnessUnavailable as exc:
        pytest.skip(f"etcd_fault_cluster is unavailable here: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def etcd_fault_cluster(
    etcd_fault_cluster_server: EtcdCluster, request: pytest.FixtureRequest
) -> Iterator[EtcdTestContext]:
    """A fresh key prefix on the session's fault cluster (``netns`` and ``proxied``):
    every fault (isolation, partition, frozen proxy, dead or paused member) is healed
    before and after the test."""
    etcd_fault_cluster_server.heal()
    context = EtcdTestContext(etcd_fault_cluster_server, _prefix_for(request))
    yield context
    etcd_fault_cluster_server.heal()
    context.cleanup()
