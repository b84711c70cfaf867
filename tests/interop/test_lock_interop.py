"""Go ``concurrency.Mutex`` / recipes ``RWMutex`` and geventc ``Lock`` / ``RWLock`` on
one path exclude each other, in both orders, against the same etcd.

The Go side is etcd's own client (``tests/interop/peer``, pinned in ``go.mod``): a peer
prints ``locked`` once it holds and ``unlocked`` when it let go after SIGTERM. A side
that must wait is watched for a bounded window (``assert_quiet``) while the other holds,
then must take over within a second of the release.
"""

from __future__ import annotations

import time

import gevent
from gopeer import GoPeer, GoPeers

import geventc
from geventc.testing.plugin import EtcdTestContext

TTL = 5
QUIET = 1.5  # seconds a holder that must wait is watched for


def go_holder(go_peers: GoPeers, command: str, endpoints: list[str], path: str) -> GoPeer:
    """A Go peer running ``command`` on ``path`` (not yet necessarily holding)."""
    return go_peers.start(command, endpoints=endpoints, path=path, ttl=TTL)


def test_go_mutex_and_geventc_lock_exclude_each_other_both_orders(
    conn: geventc.Connector, go_peers: GoPeers, etcd: EtcdTestContext
) -> None:
    path = etcd.prefix + "mutex"
    go = go_holder(go_peers, "mutex-key", etcd.endpoints, path)
    locked = go.expect("locked")
    lock = conn.lock(path, ttl=TTL)
    assert lock.acquire(timeout=QUIET) is False, "geventc took a lock Go holds"
    taking = gevent.spawn(lock.acquire, 10)
    gevent.sleep(0.2)
    go.stop()
    assert taking.get(timeout=5) is True
    assert lock.fencing_token > int(locked["rev"])  # a later holder, a larger token
    assert lock.key == f"{path}/{lock.lease.id:x}"  # type: ignore[union-attr]
    # now geventc holds: a Go Mutex waits, and takes over at the release
    second = go_holder(go_peers, "mutex-key", etcd.endpoints, path)
    second.expect("session")
    second.assert_quiet("locked", QUIET, reason=f"Go and geventc both hold {path!r}")
    released = time.monotonic()
    assert lock.release().confirmed
    second.expect("locked", timeout=5)
    assert time.monotonic() - released < 1.0
    lock.stop()


def test_go_rwmutex_and_geventc_rwlock_share_reads_and_exclude_writes(
    conn: geventc.Connector, go_peers: GoPeers, etcd: EtcdTestContext
) -> None:
    path = etcd.prefix + "rw"
    go_reader = go_holder(go_peers, "rwmutex-read", etcd.endpoints, path)
    go_reader.expect("locked")
    reader = conn.rw_lock(path, ttl=TTL)
    assert reader.read.acquire(timeout=5), "readers of Go and geventc share the lock"
    writer = conn.rw_lock(path, ttl=TTL)
    assert writer.write.acquire(timeout=QUIET) is False
    assert reader.read.release().confirmed
    writing = gevent.spawn(writer.write.acquire, 10)
    gevent.sleep(0.2)
    assert not writing.ready(), "geventc wrote while a Go reader held"
    go_reader.stop()
    assert writing.get(timeout=5) is True
    # geventc writes: a Go reader and a Go writer wait, then go in order
    go_late_reader = go_holder(go_peers, "rwmutex-read", etcd.endpoints, path)
    go_late_reader.expect("session")
    go_late_reader.assert_quiet("locked", QUIET, reason="a Go reader read during a write")
    assert writer.write.release().confirmed
    go_late_reader.expect("locked", timeout=5)
    go_writer = go_holder(go_peers, "rwmutex-write", etcd.endpoints, path)
    go_writer.expect("session")
    go_writer.assert_quiet("locked", QUIET, reason="a Go writer wrote during a read")
    go_late_reader.stop()
    go_writer.expect("locked", timeout=5)
    assert reader.read.acquire(timeout=QUIET) is False  # Go writes now
    go_writer.stop()
    assert reader.read.acquire(timeout=5)
    reader.stop()
    writer.stop()
