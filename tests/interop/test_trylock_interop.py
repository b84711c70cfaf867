"""Go ``concurrency.Mutex.TryLock`` and geventc ``Lock.acquire(blocking=False)`` on one
path: each refuses while the other kind holds, leaves no key behind, and gets the lock
once the other released it."""

from __future__ import annotations

from gopeer import GoPeers, only

import geventc
from geventc.testing.plugin import EtcdTestContext

TTL = 5


def keys(conn: geventc.Connector, path: str) -> list[str]:
    """The contender keys under the lock's path."""
    return [kv.key.decode() for kv in conn.get_prefix(path + "/").kvs]


def test_trylock_refuses_while_the_other_kind_holds_and_leaves_no_key(
    etcd: EtcdTestContext, conn: geventc.Connector, go_peers: GoPeers
) -> None:
    path = etcd.key("trylock")
    lock = conn.lock(path, ttl=TTL)
    assert lock.acquire(blocking=False)
    held = keys(conn, path)
    lines = go_peers.run("mutex-trylock", endpoints=etcd.endpoints, path=path, ttl=TTL)
    assert only(lines, "busy")["key"] not in held
    assert keys(conn, path) == held  # Go's TryLock deleted the key it tried
    lock.release()

    go = go_peers.start("mutex-trylock", endpoints=etcd.endpoints, path=path, ttl=TTL)
    go_key = go.expect("locked")["key"]
    refused = conn.lock(path, ttl=TTL)
    assert not refused.acquire(blocking=False)
    assert keys(conn, path) == [go_key]  # geventc's refused attempt left nothing either
    go.stop()
    go.expect("unlocked")
    assert refused.acquire(blocking=False)  # free again: geventc gets it at once
    refused.release()
    assert keys(conn, path) == []
