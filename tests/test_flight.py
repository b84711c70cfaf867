"""Flight: a write whose end others wait for even when its caller was interrupted
(what an ephemeral key's stop needs to send its deletion after the key's write)."""

from __future__ import annotations

import gevent
from helpers.waiting import wait_until

import geventc
from geventc.coalesce import Flight
from geventc.testing import EtcdServer, FaultProxy
from geventc.txn import Compare, Op


def _held_requests(proxy: FaultProxy) -> bool:
    """True when the proxy holds bytes on their way to etcd (the harness's internals)."""
    return any(p.held for link in proxy._links for p in link.pipes if p.direction == "to_server")


def test_a_coalesced_write_whose_caller_was_killed_ends_its_flight_when_etcd_answered(
    private_server: EtcdServer,
) -> None:
    # the writes ride in a batch (one write alone in flight first); their callers are
    # killed once the batch is on its way: the flights end only when etcd answered, the
    # writes are applied, and a deletion sent after join() comes after each write
    with (
        FaultProxy(private_server.endpoint) as proxy,
        geventc.connect([proxy.endpoint], timeout=5) as conn,
        geventc.connect(private_server.endpoints) as direct,
    ):
        proxy.cut("to_server")
        first = gevent.spawn(conn.put, "/f/first", "v")  # alone: the others gather
        gevent.sleep(0)
        flights = [Flight() for _ in range(3)]
        callers = [
            gevent.spawn(
                conn.txn,
                [Compare.create_revision(f"/f/{i}") == 0],
                [Op.put(f"/f/{i}", "v")],
                flight=flight,
            )
            for i, flight in enumerate(flights)
        ]
        coalescer = conn.client.coalescer
        assert coalescer is not None
        wait_until(lambda: coalescer.batches == 1, 5, "the batch sent")
        gevent.killall(callers)
        assert not any(f.ended for f in flights), "a flight ended before etcd answered"
        assert not any(f.join(0.2) for f in flights)
        proxy.heal()
        assert all(f.join(5) for f in flights)
        first.get(timeout=5)
        for i in range(3):
            assert direct.get(f"/f/{i}") is not None  # the write went on
            conn.delete(f"/f/{i}")
            assert direct.get(f"/f/{i}") is None  # and the deletion came after it


def test_a_write_withdrawn_before_it_was_sent_ends_its_flight_at_once(
    private_server: EtcdServer,
) -> None:
    with (
        FaultProxy(private_server.endpoint) as proxy,
        geventc.connect([proxy.endpoint], timeout=5) as conn,
        geventc.connect(private_server.endpoints) as direct,
    ):
        # as many batches in flight as the coalescer allows: the next one waits
        proxy.cut("to_server")
        coalescer = conn.client.coalescer
        assert coalescer is not None
        puts = [gevent.spawn(conn.put, "/w/first", "v")]  # alone: the others gather
        for round in range(coalescer.max_inflight):
            gevent.sleep(0)
            puts += [gevent.spawn(conn.put, f"/w/{round}/{i}", "v") for i in range(4)]
            wait_until(lambda r=round: coalescer.batches == r + 1, 5, "a batch sent")
        flight = Flight()
        late = gevent.spawn(conn.put, "/w/late", "v", flight=flight)
        other = gevent.spawn(conn.put, "/w/other", "v")  # the waiting batch: two
        waiting = coalescer._waiting[True]
        wait_until(lambda: waiting and len(waiting[0].slots) == 2, 5, "the batch to wait")
        assert not late.ready() and not flight.ended
        late.kill()
        assert flight.ended  # never sent: nothing to wait for
        proxy.heal()
        gevent.joinall([*puts, other], timeout=5, raise_error=True)
        assert direct.get("/w/late") is None and direct.get("/w/other") is not None


def test_a_lone_write_whose_caller_was_killed_goes_on_and_ends_its_flight(
    private_server: EtcdServer,
) -> None:
    # nothing else in flight: the write goes alone, from a greenlet of the client, so
    # killing its caller does not cut the request off half-way
    with (
        FaultProxy(private_server.endpoint) as proxy,
        geventc.connect([proxy.endpoint], timeout=5) as conn,
        geventc.connect(private_server.endpoints) as direct,
    ):
        conn.put("/l/warm-up", "v")  # a connection through the proxy, kept alive
        proxy.cut("to_server")
        flight = Flight()
        caller = gevent.spawn(conn.put, "/l/k", "v", flight=flight)
        wait_until(lambda: _held_requests(proxy), 5, "the write held by the proxy")
        caller.kill()
        assert not flight.join(0.2)
        proxy.heal()
        assert flight.join(5)
        assert direct.get("/l/k") is not None
