"""Go ``recipe.Barrier``/``recipe.DoubleBarrier`` and geventc's on the same keys.

Real Go peers (etcd's own ``client/v3/experimental/recipes``, pinned in ``go.mod``) and
geventc share one etcd and one path, and check that:

- a barrier held by either side blocks the other side's waiters until a release from
  either side, and a second hold fails on both sides (Go's ``ErrKeyExists``);
- a double barrier of Go and geventc participants lets nobody in before all ``count``
  arrived and nobody out before all left, with Go's keys (``path/waiters/<nanos>``
  on each participant's lease, ``path/ready``); a Go participant that comes when it is
  full gets ``ErrTooManyClients``, and one that dies lets the others leave.
"""

from __future__ import annotations

import time

import gevent
import pytest
from gopeer import GoPeer, GoPeers

import geventc
from geventc.errors import KeyExists, TooManyParticipants
from geventc.recipes.barrier import DoubleBarrier
from geventc.testing.plugin import EtcdTestContext

TTL = 2
QUIET = 1.0  # seconds a call that must block is watched for


def results(greenlets: list[gevent.Greenlet], timeout: float = 10.0) -> list[object]:
    gevent.joinall(greenlets, timeout=timeout)
    assert all(g.ready() for g in greenlets), f"a geventc call did not return in {timeout}s"
    for g in greenlets:
        if g.exception is not None:
            raise g.exception
    return [g.value for g in greenlets]


def assert_blocked(greenlets: list[gevent.Greenlet], seconds: float = QUIET) -> None:
    gevent.joinall(greenlets, timeout=seconds)
    assert not any(g.ready() for g in greenlets), "a geventc call returned while it must block"


def test_go_holds_geventc_waits_go_releases(
    etcd: EtcdTestContext, conn: geventc.Connector, go_peers: GoPeers
) -> None:
    path = etcd.key("barrier")
    assert go_peers.run("barrier-hold", endpoints=etcd.endpoints, path=path)[-1]["event"] == "held"
    kv = conn.get(path)
    assert kv is not None and (kv.value, kv.lease) == (b"", 0)
    with pytest.raises(KeyExists):  # held by Go: geventc's hold fails as Go's would
        conn.barrier(path).hold()
    waiters = [gevent.spawn(conn.barrier(path).wait) for _ in range(2)]
    assert_blocked(waiters)
    go_peers.run("barrier-release", endpoints=etcd.endpoints, path=path)
    assert results(waiters, timeout=3) == [True, True]


def test_geventc_holds_go_waits_geventc_releases(
    etcd: EtcdTestContext, conn: geventc.Connector, go_peers: GoPeers
) -> None:
    path = etcd.key("barrier")
    barrier = conn.barrier(path)
    barrier.hold()
    lines = go_peers.run("barrier-hold", endpoints=etcd.endpoints, path=path)
    assert lines[-1]["event"] == "exists"  # Go's ErrKeyExists on geventc's key
    waiter = go_peers.start("barrier-wait", endpoints=etcd.endpoints, path=path)
    waiter.expect("waiting")
    waiter.assert_quiet("passed", QUIET, reason="Go's Wait passed a held geventc barrier")
    assert barrier.release() is True
    waiter.expect("passed", timeout=3)


def go_participant(
    go_peers: GoPeers, etcd: EtcdTestContext, path: str, count: int, command: str
) -> GoPeer:
    peer = go_peers.start(command, endpoints=etcd.endpoints, path=path, count=count, ttl=TTL)
    peer.expect("session")
    return peer


def assert_go_layout(conn: geventc.Connector, path: str, leases: set[int]) -> None:
    """Every waiter key is path/waiters/<unix nanos> on a lease of the participants."""
    waiters = conn.get_prefix(path + "/waiters/").kvs
    for kv in waiters:
        name = kv.key.decode()[len(path + "/waiters/") :]
        assert name.isdigit() and abs(int(name) - time.time_ns()) < 60e9, kv.key
        assert kv.value == b"" and kv.lease in leases, kv
    ready = conn.get(path + "/ready")
    assert ready is not None and (ready.value, ready.lease) == (b"", 0)


def test_mixed_double_barrier_enters_and_leaves_together(
    etcd: EtcdTestContext, conn: geventc.Connector, go_peers: GoPeers
) -> None:
    """count=4: two Go participants and two geventc ones; nobody is in before the
    fourth arrives and nobody out before the last leaves."""
    path = etcd.key("double")
    go = [go_participant(go_peers, etcd, path, 4, "double-barrier") for _ in range(2)]
    first = conn.double_barrier(path, 4, ttl=TTL)
    entering = [gevent.spawn(first.enter)]
    assert_blocked(entering, 0.3)
    for peer in go:
        peer.assert_quiet("entered", 0.3, reason="Go entered with 3 of 4 participants")
    second = conn.double_barrier(path, 4, ttl=TTL)
    entering.append(gevent.spawn(second.enter))
    assert results(entering) == [True, True]
    for peer in go:
        peer.expect("entered", timeout=5)
    leases = {int(line["lease"], 16) for p in go for line in p.lines if "lease" in line}
    assert_go_layout(conn, path, leases | {first._lease.id, second._lease.id})  # type: ignore[union-attr]
    # the Go peers leave at once; they must wait for the geventc participants
    go[0].assert_quiet("left", QUIET, reason="Go left while geventc participants were in")
    leaving = [gevent.spawn(first.leave)]
    go[1].assert_quiet("left", 0.3, reason="Go left while a geventc participant was in")
    assert_blocked(leaving, 0.1)
    leaving.append(gevent.spawn(second.leave))
    assert results(leaving) == [True, True]
    for peer in go:
        peer.expect("left", timeout=5)
    assert conn.get_prefix(path + "/").kvs == ()
    first.stop()
    second.stop()


def test_go_gets_too_many_clients_from_a_full_geventc_barrier(
    etcd: EtcdTestContext, conn: geventc.Connector, go_peers: GoPeers
) -> None:
    path = etcd.key("full")
    barriers = [conn.double_barrier(path, 2, ttl=TTL) for _ in range(2)]
    assert results([gevent.spawn(b.enter) for b in barriers]) == [True, True]
    late = go_participant(go_peers, etcd, path, 2, "double-barrier")
    late.expect("too-many", timeout=5)
    assert len(conn.get_prefix(path + "/waiters/").kvs) == 2  # Go left nothing behind
    assert results([gevent.spawn(b.leave) for b in barriers]) == [True, True]
    for barrier in barriers:
        barrier.stop()


def test_geventc_gets_too_many_participants_from_a_full_go_barrier_and_a_dead_go_one_goes(
    etcd: EtcdTestContext, conn: geventc.Connector, go_peers: GoPeers
) -> None:
    """Two Go participants fill a count=2 barrier: geventc's enter is refused. Then in a
    count=2 round of one Go and one geventc participant, the Go one is SIGKILLed while
    inside: its lease expires and geventc leaves (Go's guarantee)."""
    full = etcd.key("gofull")
    holders = [go_participant(go_peers, etcd, full, 2, "double-barrier-enter") for _ in range(2)]
    for peer in holders:
        peer.expect("entered", timeout=5)
    with pytest.raises(TooManyParticipants):
        conn.double_barrier(full, 2, ttl=TTL).enter()
    for peer in holders:
        assert peer.process.stdin is not None
        peer.process.stdin.write(b"leave\n")
        peer.process.stdin.flush()
    for peer in holders:
        peer.expect("left", timeout=5)

    path = etcd.key("dies")
    doomed = go_participant(go_peers, etcd, path, 2, "double-barrier-enter")
    mine: DoubleBarrier = conn.double_barrier(path, 2, ttl=TTL)
    assert mine.enter(timeout=5) is True
    doomed.expect("entered", timeout=5)
    leaving = gevent.spawn(mine.leave)
    assert_blocked([leaving], 0.3)
    doomed.kill()  # SIGKILL: no Leave, no revoke; its lease expires after TTL
    assert results([leaving], timeout=TTL + 4) == [True]
    assert conn.get_prefix(path + "/waiters/").kvs == ()
    mine.stop()
