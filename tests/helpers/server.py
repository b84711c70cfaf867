"""Faults of a test's own etcd server, for the length of a block."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from geventc.testing import EtcdServer


@contextmanager
def paused(server: EtcdServer, member: int = 0) -> Iterator[None]:
    """``member`` of ``server`` stops answering (SIGSTOP: connections stay open, nothing
    replies) for the block, and answers again after it, whatever the block raised."""
    server.pause(member)
    try:
        yield
    finally:
        server.resume(member)
