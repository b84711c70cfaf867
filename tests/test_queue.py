"""Queue and PriorityQueue against a real etcd: Go's key layout, FIFO and priority
order, many consumers taking each item once, waiting on the watch, claims that survive
nothing but their claimer, and bad input."""

from __future__ import annotations

import re
import time
from collections import Counter

import gevent
import pytest
from helpers.channels import next_of
from helpers.process import next_line, python_process
from helpers.server import paused
from helpers.waiting import wait_until

import geventc
from geventc.errors import (
    ClaimLost,
    IndeterminateWrite,
    InvalidArgument,
    RecipeStateError,
)
from geventc.recipes.queue import (
    ClaimedItem,
    ClaimEvent,
    ClaimStatus,
    PriorityQueue,
    Queue,
)
from geventc.testing import EtcdServer
from geventc.testing.faults import FaultProxy
from geventc.testing.plugin import EtcdTestContext

TTL = 2  # the claims' lease where expiry is tested


def values(items: list[object]) -> list[bytes]:
    return [item.value for item in items]  # type: ignore[attr-defined]


def claimed(queue: Queue | PriorityQueue, timeout: float = 5.0) -> ClaimedItem:
    item = queue.claim(timeout=timeout)
    assert item is not None, f"{queue!r}: nothing claimed within {timeout}s"
    return item


# --- layout and order ------------------------------------------------------------------


def test_queue_keys_are_gos_and_served_first_in_first_out(conn: geventc.Connector) -> None:
    queue = conn.queue("/jobs")
    put = [queue.put(v) for v in ("a", b"b", "c")]  # no start needed to put
    kvs = conn.get_prefix("/jobs/").kvs
    assert [kv.value for kv in kvs] == [b"a", b"b", b"c"]
    for kv, item in zip(kvs, put, strict=True):
        assert re.fullmatch(rb"/jobs/\d{19}", kv.key) and kv.lease == 0
        assert (item.key, item.revision) == (kv.key, kv.mod_revision)
    assert conn.client.get_prefix(conn.namespace.root + b"/jobs/").count == 3  # namespaced
    assert values(queue.items()) == [b"a", b"b", b"c"]
    assert [queue.take(timeout=0).value for _ in range(3)] == [b"a", b"b", b"c"]  # type: ignore[union-attr]
    assert queue.take(timeout=0) is None
    assert conn.get_prefix("/jobs/").kvs == ()
    assert queue.stop()


def test_fifo_follows_mod_revision_not_key(conn: geventc.Connector) -> None:
    # Go's Dequeue serves by mod revision: a key written later with a smaller name
    conn.put("/fifo/9999999999999999999", "first")
    conn.put("/fifo/0000000000000000001", "second")
    with conn.queue("/fifo") as queue:
        assert [queue.take(0).value, queue.take(0).value] == [b"first", b"second"]  # type: ignore[union-attr]


def test_priority_queue_keys_and_order(conn: geventc.Connector) -> None:
    queue = conn.priority_queue("/pq")
    for value, priority in (("low", 9), ("high", 1), ("high-2", 1), ("top", 0), ("max", 65535)):
        item = queue.put(value, priority)
        assert item.priority == priority
    keys = [kv.key for kv in conn.get_prefix("/pq/").kvs]
    assert keys == [
        b"/pq/00000/0000000000000000",
        b"/pq/00001/0000000000000000",
        b"/pq/00001/0000000000000001",
        b"/pq/00009/0000000000000000",
        b"/pq/65535/0000000000000000",
    ]
    # Go's bookkeeping keys "__" + path/priority, rewritten by every put of the priority
    books = {kv.key: kv.version for kv in conn.get_prefix("/__/pq/").kvs}
    assert books == {b"/__/pq/00000": 1, b"/__/pq/00001": 2, b"/__/pq/00009": 1, b"/__/pq/65535": 1}
    taken = [queue.take(0) for _ in range(5)]
    assert [(t.value, t.priority) for t in taken] == [  # type: ignore[union-attr]
        (b"top", 0),
        (b"high", 1),
        (b"high-2", 1),
        (b"low", 9),
        (b"max", 65535),
    ]
    queue.put("again", 1)  # the sequence goes on after the last key left: none here
    assert [kv.key for kv in conn.get_prefix("/pq/").kvs] == [b"/pq/00001/0000000000000000"]
    queue.stop()


# --- waiting ---------------------------------------------------------------------------


def test_take_waits_for_a_put_and_times_out(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    queue = conn.queue("/wait")
    started = time.monotonic()
    assert queue.take(timeout=0.3) is None
    assert 0.3 <= time.monotonic() - started < 1.5
    waiting = gevent.spawn(queue.take)
    gevent.sleep(0.3)
    assert not waiting.ready()  # blocked on the watch, not failing or polling
    put_at = time.monotonic()
    other.queue("/wait").put("late")  # another process's put: seen through the watch
    item = waiting.get(timeout=5)
    assert item is not None and item.value == b"late"
    assert time.monotonic() - put_at < 0.5  # one watch event, no polling interval
    queue.stop()


def test_consumers_take_each_item_exactly_once(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    count = 60
    producer = conn.queue("/many")
    consumers = [conn.queue("/many"), conn.queue("/many"), other.queue("/many")]
    taken: list[bytes] = []

    def consume(queue: Queue) -> None:
        while (item := queue.take(timeout=0.5)) is not None:
            taken.append(item.value)

    workers = [gevent.spawn(consume, q) for q in consumers for _ in range(3)]
    gevent.sleep(0.1)
    for i in range(count):
        producer.put(f"item-{i}")
    gevent.joinall(workers, timeout=15, raise_error=True)
    assert Counter(taken) == Counter(f"item-{i}".encode() for i in range(count))
    assert conn.hub.streams == 2  # two Queues of one path share the items and claims watches
    for queue in consumers:
        assert queue.stop()
    assert conn.hub.streams == 0 and other.hub.streams == 0


def test_priority_consumers_take_each_item_exactly_once(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    producer = conn.priority_queue("/pmany")
    for i in range(30):
        producer.put(f"item-{i}", i % 3)
    taken: list[tuple[int, bytes]] = []

    def consume(queue: PriorityQueue) -> None:
        while (item := queue.take(timeout=0)) is not None:
            assert item.priority is not None
            taken.append((item.priority, item.value))

    queues = [conn.priority_queue("/pmany"), other.priority_queue("/pmany")]
    gevent.joinall([gevent.spawn(consume, q) for q in queues for _ in range(3)], raise_error=True)
    assert sorted(taken) == sorted((i % 3, f"item-{i}".encode()) for i in range(30))
    for queue in queues:
        queue.stop()


# --- claims ----------------------------------------------------------------------------


def test_claim_holds_the_item_until_ack(conn: geventc.Connector, other: geventc.Connector) -> None:
    queue = conn.queue("/c", ttl=5)
    first, second = queue.put("one"), queue.put("two")
    item = claimed(queue)
    assert (item.key, item.value, item.status) == (first.key, b"one", ClaimStatus.HELD)
    assert item.marker == b"/__claims/c/" + first.key.rsplit(b"/", 1)[1]
    marker = conn.get(item.marker)
    assert (
        marker is not None
        and marker.lease == item.lease_id
        and marker.value
        == str(
            conn.get(first.key).create_revision  # type: ignore[union-attr]
        ).encode()
    )
    assert conn.time_to_live(item.lease_id).granted_ttl == 5
    assert conn.get(first.key) is not None  # still in the queue
    assert other.queue("/c").take(timeout=0).value == b"two"  # type: ignore[union-attr]
    assert other.queue("/c").claim(timeout=0) is None  # the claimed one is skipped
    assert queue.take(timeout=0) is None
    assert queue.claims == [item]
    item.ack()
    assert item.status is ClaimStatus.ACKED and not item.held
    assert conn.get(first.key) is None and conn.get(item.marker) is None
    item.ack()  # twice: nothing more to do
    assert queue.claims == [] and second.key != first.key
    assert queue.stop()


def test_release_serves_the_item_again_first(conn: geventc.Connector) -> None:
    queue = conn.queue("/rel")
    for v in ("a", "b"):
        queue.put(v)
    item = claimed(queue)
    assert item.release() is True and item.status is ClaimStatus.RELEASED
    assert item.release() is False
    with pytest.raises(ClaimLost, match="released"):
        item.ack()
    again = claimed(queue, timeout=0)  # reflects its own release at once
    assert again.value == b"a"
    with again:  # acks at the end of the block
        pass
    assert again.status is ClaimStatus.ACKED
    with pytest.raises(ZeroDivisionError), claimed(queue) as failing:
        _ = 1 / 0
    assert failing.status is ClaimStatus.RELEASED and conn.get(failing.key) is not None
    queue.stop()


def test_waiting_claim_gets_an_item_released_elsewhere(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    conn.queue("/wr").put("only")
    holder = other.queue("/wr")
    held = claimed(holder)
    waiting = gevent.spawn(conn.queue("/wr").claim, 5)
    gevent.sleep(0.2)
    assert not waiting.ready()
    held.release()
    got = waiting.get(timeout=5)
    assert got is not None and got.value == b"only"
    got.ack()
    holder.stop()


def test_revoked_claim_is_claimable_again_and_its_ack_fails(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    mine = other.queue("/rv", ttl=TTL)
    mine.put("job")
    item = claimed(mine)
    theirs = conn.queue("/rv", ttl=TTL)
    waiting = gevent.spawn(theirs.claim, 5)
    gevent.sleep(0.2)
    assert not waiting.ready()
    other.revoke(item.lease_id)  # as when the claimer's lease expires
    got = waiting.get(timeout=5)
    assert got is not None and got.value == b"job" and got.key == item.key
    lost = next_of(mine.channel, ClaimEvent, 5)
    assert lost.status is ClaimStatus.LOST and lost.key == item.item.key_str
    with pytest.raises(ClaimLost, match="another consumer claimed the item"):
        item.ack()
    got.ack()
    assert conn.get(item.key) is None
    mine.stop()
    theirs.stop()


CLAIMER = """
from gevent import monkey; monkey.patch_all()
import sys, geventc
with geventc.connect(sys.argv[1].split(","), namespace=sys.argv[2]) as conn:
    item = conn.queue("/dead", ttl=int(sys.argv[3])).claim(timeout=10)
    print(item.key.decode(), item.lease_id, flush=True)
    sys.stdin.read()
"""


def test_a_claimer_that_dies_lets_the_item_be_claimed_within_the_ttl(
    conn: geventc.Connector, etcd: EtcdTestContext, conn_namespace: str
) -> None:
    queue = conn.queue("/dead", ttl=TTL)
    put = queue.put("work")
    args = [",".join(etcd.endpoints), conn_namespace, str(TTL)]
    with python_process(CLAIMER, *args) as process:
        key, lease = next_line(process, 10).split()
        assert key.encode() == put.key
        assert queue.claim(timeout=0) is None  # held by the live claimer
        process.kill()  # dies: nothing revokes its lease, which expires by its TTL
        process.wait()
        died = time.monotonic()
        item = claimed(queue, timeout=TTL + 3)
        assert item.key == put.key and time.monotonic() - died <= TTL + 1.5
        assert int(lease) not in conn.leases()
        item.ack()
    queue.stop()


def test_ack_of_an_item_taken_by_a_consumer_ignoring_claims(conn: geventc.Connector) -> None:
    queue = conn.queue("/ign")
    queue.put("x")
    item = claimed(queue)
    conn.delete(item.key)  # as Go's Dequeue does: it does not know claims
    with pytest.raises(ClaimLost, match="does not honour claims"):
        item.ack()
    assert conn.get(item.marker) is None  # the marker left behind was deleted
    queue.stop()


def test_a_marker_of_an_earlier_item_with_the_same_key_does_not_block(
    conn: geventc.Connector,
) -> None:
    queue = conn.priority_queue("/reuse")
    first = queue.put("first", 3)
    held = claimed(queue)
    conn.delete(first.key)  # taken by someone ignoring claims; the marker stays
    again = queue.put("second", 3)
    assert again.key == first.key  # Go's sequence restarts after the last key
    item = queue.take(timeout=1)
    assert item is not None and item.value == b"second"
    assert conn.get(held.marker) is None  # the stale marker went with the take
    with pytest.raises(ClaimLost):
        held.ack()
    queue.stop()


def test_suspended_claim_is_reported_and_held_again(private_server: EtcdServer) -> None:
    with geventc.connect(private_server.endpoints, timeout=1.0) as conn:
        queue = conn.queue("/s", ttl=3)
        queue.put("v")
        item = claimed(queue)
        with paused(private_server):
            suspended = next_of(queue.channel, ClaimEvent, 5)
        assert suspended.status is ClaimStatus.SUSPENDED and not item.held
        assert next_of(queue.channel, ClaimEvent, 5).status is ClaimStatus.HELD
        assert item.held
        item.ack()
        assert queue.stop()


def test_stop_without_an_answer_says_what_is_left(private_server: EtcdServer) -> None:
    with geventc.connect(private_server.endpoints, timeout=1.0) as conn:
        queue = conn.queue("/gone", ttl=3)
        queue.put("v")
        item = claimed(queue)
        with paused(private_server):
            started = time.monotonic()
            release = queue.stop()
            assert time.monotonic() - started < conn.stop_timeout + 0.5
        assert not release and release.expires_in is not None and release.expires_in <= 3
        assert "could not give back the claims of /gone" in release.detail
        assert item.status is ClaimStatus.LOST  # never reported released
        wait_until(lambda: not conn.get_prefix("/__claims/").kvs, 5, "the marker to go")
        assert conn.get(item.key) is not None  # the item itself stays queued


def test_a_server_restart_keeps_items_claims_and_waiting_takes(private_server: EtcdServer) -> None:
    with geventc.connect(private_server.endpoints, timeout=1.0) as conn:
        queue = conn.queue("/restart", ttl=5)
        queue.put("held")
        item = claimed(queue)
        waiting = gevent.spawn(queue.take)
        gevent.sleep(0.1)
        private_server.kill(0)
        private_server.restart(0)  # with its data: items, markers and the lease survive
        with geventc.connect(private_server.endpoints) as other:
            other.queue("/restart").put("after")
        got = waiting.get(timeout=10)  # the watch resumed from where it was
        assert got is not None and got.value == b"after"
        item.ack()  # the claim outlived the restart
        assert item.status is ClaimStatus.ACKED and conn.get_prefix("/restart/").kvs == ()
        assert queue.stop()


# --- life cycle ------------------------------------------------------------------------


def test_stop_gives_back_claims_and_leaves_nothing(conn: geventc.Connector) -> None:
    queue = conn.queue("/stop", ttl=5)
    for v in ("a", "b"):
        queue.put(v)
    held = [claimed(queue), claimed(queue)]
    lease_id = held[0].lease_id
    waiting = gevent.spawn(queue.take)
    gevent.sleep(0.1)
    release = queue.stop()
    assert release and release.confirmed
    assert all(c.status is ClaimStatus.RELEASED for c in held)
    assert conn.get_prefix("/__claims/").kvs == ()
    assert len(conn.get_prefix("/stop/").kvs) == 2  # given back, not deleted
    assert lease_id not in conn.leases()  # its last holder revoked the shared lease
    assert conn.hub.streams == 0 and conn.lease_keeper.leases() == []
    with pytest.raises(RecipeStateError):
        waiting.get(timeout=2)
    with pytest.raises(RecipeStateError, match="stopped"):
        queue.take(timeout=0)
    with pytest.raises(ClaimLost, match="stopped"):
        held[0].ack()
    assert queue.put("still") is not None  # putting needs no start
    assert queue.stop() is not None  # idempotent


def test_claims_share_the_connectors_lease(conn: geventc.Connector) -> None:
    ephemeral = conn.ephemeral_key("/other")
    ephemeral.create("x", ttl=5)
    queue = conn.queue("/share", ttl=5)
    queue.put("a")
    item = claimed(queue)
    assert item.lease_id == conn.get("/other").lease  # type: ignore[union-attr]
    assert queue.stop()
    assert conn.get(item.marker) is None and item.lease_id in conn.leases()
    ephemeral.delete()


def test_start_channel_and_context_manager(conn: geventc.Connector) -> None:
    queue = conn.queue("/cm")
    queue.put("a")
    assert queue.take(0) is not None  # starts it
    assert queue.start() is queue.channel  # the implicit start's channel
    queue.stop()
    with conn.queue("/cm") as again:
        again.put("b")
        assert again.take(0).value == b"b"  # type: ignore[union-attr]
        assert again.start() is again.channel  # inside its with block
    assert conn.hub.streams == 0
    explicit = conn.queue("/cm")
    explicit.start()
    with pytest.raises(RecipeStateError):
        explicit.start()
    explicit.stop()


def test_closing_the_connector_releases_claims(etcd: EtcdTestContext, conn_namespace: str) -> None:
    with geventc.connect(etcd.endpoints, namespace=conn_namespace) as conn:
        queue = conn.queue("/close", ttl=5)
        queue.put("a")
        item = claimed(queue)
        assert conn.close()
    assert item.status in (ClaimStatus.LOST, ClaimStatus.RELEASED)
    with geventc.connect(etcd.endpoints, namespace=conn_namespace) as check:
        assert check.get(item.marker) is None and check.get(item.key) is not None


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["", "/", "//"])
def test_bad_paths(conn: geventc.Connector, path: str) -> None:
    with pytest.raises(InvalidArgument, match="path"):
        conn.queue(path)


def test_bad_input(etcd: EtcdTestContext) -> None:
    with geventc.connect(etcd.endpoints) as conn:  # no namespace: relative paths stay so
        with pytest.raises(InvalidArgument, match="claim markers"):
            conn.queue("__claims")
        with pytest.raises(InvalidArgument, match="claim markers"):
            conn.queue("_")  # Go would read its markers "__claims_/..." under "_"
        conn.priority_queue("_")  # Go reads "_/" there: no marker lies under it
    with geventc.connect(etcd.endpoints, namespace=etcd.prefix.strip("/")) as conn:
        queue, pq = conn.queue("/b"), conn.priority_queue("/b")
        with pytest.raises(InvalidArgument, match="path"):
            conn.queue(None)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="ttl"):
            conn.queue("/b", ttl=0)
        with pytest.raises(InvalidArgument, match="value"):
            queue.put(None)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="value"):
            queue.put(3)  # type: ignore[arg-type]
        for priority in (-1, 65536, True, 1.0, "1"):
            with pytest.raises(InvalidArgument, match="priority"):
                pq.put("v", priority)  # type: ignore[arg-type]
        for timeout in (-1, float("nan"), float("inf"), True, "1"):
            with pytest.raises(InvalidArgument, match="timeout"):
                queue.take(timeout)  # type: ignore[arg-type]
            with pytest.raises(InvalidArgument, match="timeout"):
                queue.claim(timeout)  # type: ignore[arg-type]
        assert conn.get_prefix("/").kvs == ()  # nothing was written
        assert not queue.running  # refused before starting


def test_binary_values_round_trip(conn: geventc.Connector) -> None:
    queue = conn.queue("/bytes")
    queue.put(b"\xff\x00raw")
    item = queue.take(0)
    assert item is not None and item.value == b"\xff\x00raw"
    assert item.value_str == "\ufffd\x00raw"
    queue.stop()


def test_a_claim_whose_answer_was_lost_is_not_stuck() -> None:
    """A claim applied by etcd whose answer was lost leaves a marker no caller holds:
    the queue gives it back, so the item is served again well before the claim lease's
    TTL (found by the chaos run)."""
    with EtcdServer() as server, FaultProxy(server.endpoints[0]) as proxy:
        conn = geventc.connect([proxy.endpoint], timeout=1.0)
        other = geventc.connect(server.endpoints)
        try:
            queue = conn.queue("/jobs", ttl=30)
            queue.put("warm-up")
            queue.claim(timeout=5).ack()  # both watches have synced
            queue.put("a")
            view = queue._items  # the queue's own watch: it must show "a" before the cut
            wait_until(lambda: view is not None and len(view.state) == 1, 5, "a is seen")
            proxy.cut("to_client")  # requests reach etcd, answers are held
            outcome = gevent.spawn(queue.claim, 5)
            wait_until(lambda: other.get_prefix("__claims/jobs/").kvs, 5, "claim applied")
            with pytest.raises(IndeterminateWrite):
                outcome.get(timeout=5)
            proxy.heal()
            (marker,) = other.get_prefix("__claims/jobs/").kvs
            assert marker.lease == queue._lease.id  # type: ignore[union-attr]
            got = other.queue("/jobs").claim(timeout=5)  # far less than the TTL of 30 s
            assert got is not None and got.value_str == "a"
            got.ack()
        finally:
            conn.close()
            other.close()
