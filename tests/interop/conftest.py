"""Fixtures of the Go interop tests: the Go peer binary and the peers a test runs.

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


@pytest.fixture(scope="session")
def go_peer_binary() -> Path:
    """The built Go peer (``tests/interop/bin/peer``)."""
    try:
        return build_peer()
    except GoMissing as exc:
        pytest.skip(f"Go interop tests skipped: {exc}")


@pytest.fixture
def go_peers(go_peer_binary: Path) -> Iterator[GoPeers]:
    """Starts Go peers for one test; every one is ended (SIGTERM, then SIGKILL) after it."""
    peers = GoPeers(go_peer_binary)
    try:
        yield peers
    finally:
        peers.close()
