"""Go ``recipes.Queue``/``recipes.PriorityQueue`` and geventc's Queue/PriorityQueue on
one queue path.

Each test runs etcd's own Go recipes (``experimental/recipes``, pinned in ``go.mod``)
through the peer's ``queue-*``/``pqueue-*`` subcommands next to geventc on the same
etcd, and checks that:

- what Go puts geventc takes, in Go's order, and what geventc puts Go takes, in order
  (FIFO by mod revision; priority by key, lower numbers first);
- Go and geventc producers at one priority share Go's sequence and bookkeeping key, so
  no item overwrites another;
- Go and geventc consumers on one queue take every item exactly once;
- a geventc claim marker lies outside what Go's ``Dequeue`` reads: Go never takes one
  (it does take the claimed *item*, as it does not know claims; geventc's ``ack`` then
  raises ``ClaimLost``).

The connector has no namespace, so both sides use the same path strings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import gevent
import pytest
from gopeer import GoPeer, GoPeers

import geventc
from geventc.errors import ClaimLost
from geventc.recipes.queue import PriorityQueue, Queue
from geventc.testing.plugin import EtcdTestContext

QUIET = 1.0  # seconds a Go consumer that must not take anything is watched for


@pytest.fixture(autouse=True)
def outside_the_prefix(conn: geventc.Connector, etcd: EtcdTestContext) -> Iterator[None]:
    """The bookkeeping keys (``__`` + path) and claim markers (``__claims`` + path) lie
    outside the test's prefix: deleted after each test."""
    yield
    for root in ("__", "__claims"):
        conn.delete_prefix(root + etcd.prefix)


def new_queue(conn: geventc.Connector, kind: str, path: str) -> Queue | PriorityQueue:
    """A ``Queue`` (``kind`` "queue") or a ``PriorityQueue`` (``kind`` "pqueue")."""
    return conn.queue(path) if kind == "queue" else conn.priority_queue(path)


def put(queue: Queue | PriorityQueue, value: str, priority: int) -> None:
    """Put ``value`` (at ``priority`` in a priority queue)."""
    if isinstance(queue, PriorityQueue):
        queue.put(value, priority)
    else:
        queue.put(value)


def taken_values(peer: GoPeer, count: int, timeout: float = 10.0) -> list[str]:
    """The values a Go take printed, in order (``count`` of them), then its ``done``."""
    values = [str(peer.expect("taken", timeout)["value"]) for _ in range(count)]
    peer.expect("done", timeout)
    return values


def take_all(queue: Queue | PriorityQueue, count: int) -> list[str]:
    values = []
    for _ in range(count):
        item = queue.take(timeout=5)
        assert item is not None, f"{queue!r}: only {values} within 5 s each"
        values.append(item.value_str)
    return values


def test_fifo_both_ways(conn: geventc.Connector, etcd: EtcdTestContext, go_peers: GoPeers) -> None:
    path = etcd.key("q")
    go_peers.run("queue-put", endpoints=etcd.endpoints, path=path, items="g1,g2,g3")
    keys = [kv.key.decode() for kv in conn.get_prefix(path + "/").kvs]
    assert all(key.rsplit("/", 1)[1].isdigit() for key in keys) and len(keys) == 3
    queue = conn.queue(path)
    assert take_all(queue, 3) == ["g1", "g2", "g3"]
    for value in ("p1", "p2", "p3"):
        queue.put(value)
    go = go_peers.start("queue-take", endpoints=etcd.endpoints, path=path, n=3)
    assert taken_values(go, 3) == ["p1", "p2", "p3"]
    assert conn.get_prefix(path).kvs == ()
    queue.stop()


def test_priority_both_ways(
    conn: geventc.Connector, etcd: EtcdTestContext, go_peers: GoPeers
) -> None:
    path = etcd.key("pq")
    for priority, items in ((7, "g7a,g7b"), (2, "g2"), (65535, "gmax")):
        go_peers.run(
            "pqueue-put", endpoints=etcd.endpoints, path=path, priority=priority, items=items
        )
    queue = conn.priority_queue(path)
    assert take_all(queue, 4) == ["g2", "g7a", "g7b", "gmax"]
    for value, priority in (("p9", 9), ("p0", 0), ("p9b", 9), ("p3", 3)):
        queue.put(value, priority)
    go = go_peers.start("pqueue-take", endpoints=etcd.endpoints, path=path, n=4)
    assert taken_values(go, 4) == ["p0", "p3", "p9", "p9b"]
    queue.stop()


def test_producers_share_gos_sequence_at_one_priority(
    conn: geventc.Connector, etcd: EtcdTestContext, go_peers: GoPeers
) -> None:
    path = etcd.key("seq")
    queue = conn.priority_queue(path)
    go = go_peers.start(
        "pqueue-put", endpoints=etcd.endpoints, path=path, priority=5, n=60, value="go"
    )
    go.expect("put")  # racing from now on: three geventc producers against Go's

    def produce(name: str) -> None:
        for i in range(20):
            queue.put(f"{name}-{i}", 5)

    gevent.joinall([gevent.spawn(produce, f"py{n}") for n in range(3)], raise_error=True)
    go.expect("done")
    kvs = conn.get_prefix(path + "/").kvs
    expected = [f"go-{i}" for i in range(60)]
    expected += [f"py{n}-{i}" for n in range(3) for i in range(20)]
    assert Counter(kv.value_str for kv in kvs) == Counter(expected), (
        "an item was overwritten: the producers did not share Go's bookkeeping key"
    )
    assert [kv.key.decode() for kv in kvs] == [f"{path}/00005/{i:016d}" for i in range(120)]
    book = conn.get("__" + path + "/00005")
    assert book is not None and book.version == 120
    queue.stop()


@pytest.mark.parametrize("kind", ["queue", "pqueue"])
def test_go_and_geventc_consumers_take_every_item_once(
    conn: geventc.Connector, etcd: EtcdTestContext, go_peers: GoPeers, kind: str
) -> None:
    path = etcd.key(kind)
    each = 10  # per consumer: a Go one, two geventc greenlets, and a second Go one
    go_takers = [
        go_peers.start(f"{kind}-take", endpoints=etcd.endpoints, path=path, n=each)
        for _ in range(2)
    ]

    consumers = [new_queue(conn, kind, path), new_queue(conn, kind, path)]
    py_takes = [gevent.spawn(take_all, q, each) for q in consumers]
    gevent.sleep(0.3)  # every consumer waits on an empty queue
    # half the items from Go, half from geventc, interleaved
    flags = {"priority": 1} if kind == "pqueue" else {}
    go_put = go_peers.start(
        f"{kind}-put", endpoints=etcd.endpoints, path=path, n=20, value="go", **flags
    )
    producer = new_queue(conn, kind, path)
    for i in range(20):
        put(producer, f"py-{i}", 1)
        gevent.sleep(0.005)
    go_put.expect("done")
    taken = [v for g in py_takes for v in g.get(timeout=15)]
    for peer in go_takers:
        taken += taken_values(peer, each, timeout=15)
    expected = [f"go-{i}" for i in range(20)] + [f"py-{i}" for i in range(20)]
    assert Counter(taken) == Counter(expected), "an item was taken twice or not at all"
    assert conn.get_prefix(path + "/").kvs == ()
    for queue in (*consumers, producer):
        queue.stop()


@pytest.mark.parametrize("kind", ["queue", "pqueue"])
def test_go_never_takes_a_claim_marker(
    conn: geventc.Connector, etcd: EtcdTestContext, go_peers: GoPeers, kind: str
) -> None:
    path = etcd.key(kind)
    queue = new_queue(conn, kind, path)
    put(queue, "claimed", 4)
    item = queue.claim(timeout=5)
    assert item is not None and conn.get(item.marker) is not None
    assert item.marker.decode().startswith("__claims" + path + "/")
    go = go_peers.start(f"{kind}-take", endpoints=etcd.endpoints, path=path, n=2)
    # Go does not know claims: it takes the claimed item itself...
    assert go.expect("taken")["value"] == "claimed"
    # ...but never the marker, which is not under the prefix its Dequeue reads
    go.assert_quiet("taken", QUIET, reason="Go's Dequeue took a geventc claim marker")
    assert conn.get(item.marker) is not None
    with pytest.raises(ClaimLost, match="does not honour claims"):
        item.ack()
    assert conn.get(item.marker) is None
    queue.stop()
