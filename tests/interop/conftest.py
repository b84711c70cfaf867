"""Fixtures of the Go interop tests: the Go peer binary, the peers a test runs, and a
connector that sees the same key strings as Go.

The peer is built once per session from the pinned ``go.mod``/``go.sum`` (or taken from
``tests/interop/bin/peer`` when that is newer than its sources, as ``.ci/run`` leaves
it). The tests are skipped only when it must be built and the ``go`` command is absent;
a failing build is an error, never a skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gopeer import GoMissing, GoPeers, build_peer
from kitexpeer import build_kitex_peer

import geventc
from geventc.testing.plugin import EtcdTestContext


@pytest.fixture(scope="session")
def go_peer_binary() -> Path:
    """The built Go peer (``tests/interop/bin/peer``)."""
    try:
        return build_peer()
    except GoMissing as exc:
        pytest.skip(f"Go interop tests skipped: {exc}")


@pytest.fixture(scope="session")
def kitex_peer_binary() -> Path:
    """The built Kitex peer (``tests/interop/bin/kitexpeer``); skipped only when it must
    be built and ``go`` is absent (a failed build is an error)."""
    try:
        return build_kitex_peer()
    except GoMissing as exc:
        pytest.skip(f"Kitex interop tests skipped: {exc}")


def _peers(binary: Path) -> Iterator[GoPeers]:
    peers = GoPeers(binary)
    try:
        yield peers
    finally:
        peers.close()


@pytest.fixture
def go_peers(go_peer_binary: Path) -> Iterator[GoPeers]:
    """Starts Go peers for one test; every one is ended (SIGTERM, then SIGKILL) after it."""
    yield from _peers(go_peer_binary)


@pytest.fixture
def kitex(kitex_peer_binary: Path) -> Iterator[GoPeers]:
    """Starts Kitex peers for one test; every one is ended (SIGTERM, then SIGKILL)."""
    yield from _peers(kitex_peer_binary)


@pytest.fixture
def conn(etcd: EtcdTestContext) -> Iterator[geventc.Connector]:
    """A connector without a namespace: paths and keys are the same strings Go uses
    (each test keeps them under its own prefix, ``etcd.prefix``)."""
    with geventc.connect(etcd.endpoints) as connector:
        yield connector
