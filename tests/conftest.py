"""Fixtures shared by the tests: a connector on the test's private prefix (and a second
one, as another process would have), and a private etcd server (the ``etcd*`` fixtures
come from geventc's pytest plugin)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import geventc
from geventc.testing import EtcdServer
from geventc.testing.plugin import EtcdTestContext


@pytest.fixture
def conn_namespace(etcd: EtcdTestContext) -> str:
    """The namespace of ``conn``: the test's private prefix. A module that wants another
    one overrides this fixture."""
    return etcd.prefix.strip("/")


@pytest.fixture
def conn(etcd: EtcdTestContext, conn_namespace: str) -> Iterator[geventc.Connector]:
    """A connector on the session's etcd, in ``conn_namespace``."""
    with geventc.connect(etcd.endpoints, namespace=conn_namespace) as connector:
        yield connector


@pytest.fixture
def other(etcd: EtcdTestContext, conn_namespace: str) -> Iterator[geventc.Connector]:
    """A second connector in ``conn``'s namespace, with its own client, connections and
    leases: another process, as far as etcd can tell."""
    with geventc.connect(etcd.endpoints, namespace=conn_namespace) as connector:
        yield connector


@pytest.fixture
def private_server() -> Iterator[EtcdServer]:
    """An etcd server of this test alone, to kill, pause, restart and compact (and whose
    metrics count only this test's work)."""
    with EtcdServer(fsync=False) as server:
        yield server
