"""Fixtures shared by the tests: a connector on the test's private prefix (and a second
one, as another process would have), and a private etcd server (the ``etcd*`` fixtures
come from geventc's pytest plugin)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers.cli import Running

import geventc
from geventc import http as geventc_http
from geventc.testing import EtcdServer
from geventc.testing.plugin import EtcdTestContext

#: etcd releases built by ``tests/etcd/build.py``, offered to ``ETCD_VERSION=…``
ETCD_BUILDS = Path(__file__).resolve().parent / "etcd" / "bin"
os.environ["GEVENTC_ETCD_PATH"] = os.pathsep.join(
    filter(None, (os.environ.get("GEVENTC_ETCD_PATH"), str(ETCD_BUILDS)))
)


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


@pytest.fixture(params=["httptools", "urllib3"])
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The answer parser of the pools and clients a test makes: httptools (skipped when
    it is not installed) or urllib3's own responses (geventc's fallback)."""
    if request.param == "httptools" and geventc_http.ANSWER_PARSER is None:
        pytest.skip("httptools is not installed")
    if request.param == "urllib3":
        monkeypatch.setattr(geventc_http, "ANSWER_PARSER", None)
    return str(request.param)


@pytest.fixture
def spawn() -> Iterator[Callable[..., Running]]:
    """Start long-running ``geventc`` commands; any still running are killed after the
    test."""
    started: list[Running] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Running:
        command = Running(args, env)
        started.append(command)
        return command

    yield start
    for command in started:
        command.kill()
