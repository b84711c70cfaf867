"""Barrier and DoubleBarrier against a real etcd: Go's keys, blocking and release,
too many participants, participants that die, and bad input."""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent
import pytest
from helpers.channels import next_of
from helpers.server import paused
from helpers.waiting import wait_until

import geventc
from geventc.errors import (
    EtcdError,
    InvalidArgument,
    KeyExists,
    LeaseNotFound,
    RecipeStateError,
    TooManyParticipants,
)
from geventc.recipes.barrier import (
    Barrier,
    DoubleBarrier,
    DoubleBarrierEvent,
    DoubleBarrierStatus,
)
from geventc.testing import EtcdServer
from geventc.testing.plugin import EtcdTestContext

QUIET = 0.5  # seconds a call that must block is watched for
TTL = 2  # etcd's smallest lease TTL: a dead participant's key goes within it


def blocked(greenlets: list[gevent.Greenlet], seconds: float = QUIET) -> None:
    """Every greenlet is still running after ``seconds``."""
    gevent.joinall(greenlets, timeout=seconds)
    done = [g for g in greenlets if g.ready()]
    assert not done, (
        f"{len(done)} call(s) returned while they must block: {[g.value for g in done]}"
    )


def results(greenlets: list[gevent.Greenlet], timeout: float = 5.0) -> list[object]:
    """The values of the greenlets, which must all end within ``timeout``."""
    gevent.joinall(greenlets, timeout=timeout)
    pending = [g for g in greenlets if not g.ready()]
    assert not pending, f"{len(pending)} call(s) did not return within {timeout}s"
    for g in greenlets:
        if g.exception is not None:
            raise g.exception
    return [g.value for g in greenlets]


# --- Barrier ---------------------------------------------------------------------------


def test_barrier_key_is_gos_and_releases_every_waiter(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    """hold() writes Go's key (the path itself, value "", no lease); greenlet waiters and
    a waiter of another connector block until a release from either side."""
    barrier = conn.barrier("/gate")
    assert not barrier.held()
    barrier.hold()
    kv = conn.get("/gate")
    assert kv is not None and (kv.value, kv.lease) == (b"", 0)
    assert barrier.held() and other.barrier("/gate").held()
    waiters = [gevent.spawn(conn.barrier("/gate").wait) for _ in range(3)]
    waiters.append(gevent.spawn(other.barrier("/gate").wait))
    blocked(waiters)
    assert conn.hub.streams == 1  # the three local waiters share one watch
    assert other.barrier("/gate").release() is True
    assert results(waiters, timeout=2.0) == [True] * 4
    assert conn.get("/gate") is None
    # ... and the other way round: held over there, released here
    other.barrier("/gate").hold()
    waiter = gevent.spawn(other.barrier("/gate").wait)
    blocked([waiter])
    assert barrier.release() is True
    assert results([waiter], timeout=2.0) == [True]


def test_wait_on_an_absent_key_returns_at_once(conn: geventc.Connector) -> None:
    barrier = conn.barrier("/never-held")
    started = time.monotonic()
    assert barrier.wait() is True
    assert barrier.wait(timeout=0) is True
    assert time.monotonic() - started < 0.5
    assert conn.hub.streams == 0  # nothing to watch: no stream was opened


def test_wait_times_out_with_false_while_held(conn: geventc.Connector) -> None:
    barrier = conn.barrier("/held")
    barrier.hold()
    started = time.monotonic()
    assert barrier.wait(timeout=0.3) is False
    assert 0.3 <= time.monotonic() - started < 2.0
    assert barrier.wait(timeout=0) is False
    assert barrier.held() and conn.hub.streams == 0  # the watch was left
    assert barrier.release() is True


def test_hold_on_a_held_barrier_raises_key_exists_as_go(conn: geventc.Connector) -> None:
    barrier = conn.barrier("/twice")
    barrier.hold()
    with pytest.raises(KeyExists):
        barrier.hold()
    assert barrier.release() is True
    assert barrier.release() is False  # nothing was held any more
    barrier.hold()  # free again
    assert barrier.release() is True


def test_release_then_hold_again_still_releases_the_waiter(conn: geventc.Connector) -> None:
    """A waiter whose key was deleted and at once held anew was released (the deletion
    is in etcd's history) even if it only sees the new key."""
    barrier = conn.barrier("/flip")
    barrier.hold()
    waiter = gevent.spawn(conn.barrier("/flip").wait)
    blocked([waiter], 0.2)
    conn.txn([], [geventc.Op.delete("/flip")])
    conn.txn([], [geventc.Op.put("/flip", "")])  # held again at once
    assert results([waiter], timeout=2.0) == [True]
    assert conn.barrier("/flip").wait(timeout=0.2) is False  # the new hold blocks
    barrier.release()


def test_wait_raises_when_etcd_is_unreachable() -> None:
    """A wait never returns True without seeing the deletion: when etcd goes away while
    it waits it raises, and so does a wait started while etcd is down."""
    with EtcdServer(fsync=False) as server, geventc.connect(server.endpoints, timeout=1.0) as conn:
        barrier = conn.barrier("/down")
        barrier.hold()
        waiter = gevent.spawn(barrier.wait)
        blocked([waiter], 0.2)
        server.kill(0)
        gevent.joinall([waiter], timeout=5.0)
        assert waiter.ready(), "the wait kept blocking after etcd went away"
        assert isinstance(waiter.exception, EtcdError), waiter.value
        with pytest.raises(EtcdError):
            barrier.wait(timeout=0.5)


# --- DoubleBarrier ---------------------------------------------------------------------


def participants(
    conn: geventc.Connector, count: int, n: int, path: str = "/db", ttl: int = 10
) -> list[DoubleBarrier]:
    return [conn.double_barrier(path, count, ttl=ttl) for _ in range(n)]


def spawn_each(barriers: list[DoubleBarrier], call: Callable[[DoubleBarrier], object]) -> list:
    return [gevent.spawn(call, b) for b in barriers]


def events(barrier: DoubleBarrier) -> list[DoubleBarrierStatus]:
    """The statuses on the channel so far (without waiting)."""
    seen = []
    while len(barrier.channel):
        event = barrier.channel.get(timeout=0.01)
        if isinstance(event, DoubleBarrierEvent):
            seen.append(event.status)
    return seen


def next_status(barrier: DoubleBarrier, timeout: float) -> DoubleBarrierStatus:
    return next_of(barrier.channel, DoubleBarrierEvent, timeout).status


def wait_status(barrier: DoubleBarrier, status: DoubleBarrierStatus, timeout: float) -> None:
    """Read the channel until ``status`` (other news skipped) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while next_status(barrier, max(0.01, deadline - time.monotonic())) is not status:
        pass


def test_double_barrier_keys_are_gos(conn: geventc.Connector) -> None:
    """Waiter keys are path/waiters/<unix nanos> on the participant's lease; the last
    one in puts path/ready (value "", no lease); the last one out deletes it all."""
    a, b = participants(conn, 2, 2)
    before = time.time_ns()
    entering = gevent.spawn(a.enter)
    blocked([entering], 0.2)
    (waiter,) = conn.get_prefix("/db/").kvs
    name = waiter.key.decode()
    assert name.startswith("/db/waiters/") and name == a.key
    nanos = int(name.rsplit("/", 1)[1])
    assert before <= nanos <= time.time_ns() and waiter.value == b"" and waiter.lease
    assert conn.time_to_live(waiter.lease).granted_ttl == 10
    assert b.enter(timeout=5) is True
    assert results([entering]) == [True]
    ready = conn.get("/db/ready")
    assert ready is not None and (ready.value, ready.lease) == (b"", 0)
    assert a.entered and b.entered
    assert results(spawn_each([a, b], DoubleBarrier.leave)) == [True, True]
    assert conn.get_prefix("/db/").kvs == ()
    assert events(a) == [DoubleBarrierStatus.ENTERED, DoubleBarrierStatus.LEFT]
    assert a.stop() and b.stop()


ORDERS = {
    "lowest-leaves-first": (0, 1, 2),
    "highest-leaves-first": (2, 1, 0),
    "middle-first": (1, 2, 0),
}


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_three_enter_together_and_leave_together(
    conn: geventc.Connector, other: geventc.Connector, order: str
) -> None:
    """count=3: nobody is in before the third arrives, nobody is out before the last
    leaves, whatever the order of leaving (one participant on another connector)."""
    barriers = participants(conn, 3, 2) + participants(other, 3, 1)
    entering = spawn_each(barriers[:2], DoubleBarrier.enter)
    blocked(entering)
    entering += spawn_each(barriers[2:], DoubleBarrier.enter)
    assert results(entering) == [True] * 3
    first, second, last = (barriers[i] for i in ORDERS[order])
    leaving = spawn_each([first, second], DoubleBarrier.leave)
    blocked(leaving)
    leaving.append(gevent.spawn(last.leave))
    assert results(leaving) == [True] * 3
    assert conn.get_prefix("/db/").kvs == ()
    for barrier in barriers:
        assert barrier.stop()


def test_a_late_extra_participant_gets_too_many_participants(conn: geventc.Connector) -> None:
    barriers = participants(conn, 3, 4)
    assert results(spawn_each(barriers[:3], DoubleBarrier.enter)) == [True] * 3
    with pytest.raises(TooManyParticipants):
        barriers[3].enter()
    assert len(conn.get_prefix("/db/waiters/").kvs) == 3  # it left nothing behind
    assert not barriers[3].entered and barriers[3].key is None
    assert results(spawn_each(barriers[:3], DoubleBarrier.leave)) == [True] * 3
    assert barriers[3].enter(timeout=0.2) is False  # the next round: waits again
    assert conn.get_prefix("/db/").kvs == ()
    for barrier in barriers:
        barrier.stop()


def test_rounds_repeat_and_count_one_does_not_wait(conn: geventc.Connector) -> None:
    alone = conn.double_barrier("/solo", 1)
    for _ in range(2):
        assert alone.enter(timeout=2) is True and alone.leave(timeout=2) is True
    assert conn.get_prefix("/solo/").kvs == ()
    a, b = participants(conn, 2, 2)
    for _ in range(2):
        assert results(spawn_each([a, b], DoubleBarrier.enter)) == [True, True]
        assert results(spawn_each([a, b], DoubleBarrier.leave)) == [True, True]
    assert conn.get_prefix("/db/").kvs == ()
    assert alone.stop() and a.stop() and b.stop()


def test_enter_timeout_withdraws_the_key(conn: geventc.Connector) -> None:
    barrier = conn.double_barrier("/db", 2)
    started = time.monotonic()
    assert barrier.enter(timeout=0.3) is False
    assert 0.3 <= time.monotonic() - started < 2.0
    assert conn.get_prefix("/db/").kvs == () and not barrier.entered
    assert barrier.stop()


def test_leave_timeout_can_be_resumed(conn: geventc.Connector) -> None:
    a, b = participants(conn, 2, 2)
    assert results(spawn_each([a, b], DoubleBarrier.enter)) == [True, True]
    assert a.leave(timeout=0.2) is False  # b is still in
    assert a.entered
    leaving = [gevent.spawn(a.leave), gevent.spawn(b.leave)]
    assert results(leaving) == [True, True]
    assert conn.get_prefix("/db/").kvs == ()


@pytest.mark.parametrize("how", ["connector-closed", "lease-expired"])
def test_a_dead_participant_does_not_keep_the_others_inside(
    conn: geventc.Connector, etcd: EtcdTestContext, conn_namespace: str, how: str
) -> None:
    """A participant that dies without leave(), its connector closed (the lease is
    revoked) or its renewals stopped (the lease expires after its TTL), drops out: the
    others leave (Go's guarantee through the lease)."""
    doomed_conn = geventc.connect(etcd.endpoints, namespace=conn_namespace)
    try:
        barriers = participants(conn, 3, 2, ttl=TTL) + participants(doomed_conn, 3, 1, ttl=TTL)
        assert results(spawn_each(barriers, DoubleBarrier.enter)) == [True] * 3
        leaving = spawn_each(barriers[:2], DoubleBarrier.leave)
        blocked(leaving, 0.3)
        started = time.monotonic()
        if how == "connector-closed":
            doomed_conn.close()
        else:
            for lease in doomed_conn.lease_keeper.leases():
                lease.close(revoke=False)  # as if the process froze: nothing renews it
        assert results(leaving, timeout=TTL + 3) == [True, True]
        if how == "lease-expired":
            assert time.monotonic() - started >= TTL - 1.5  # not before the lease ended
        # as in Go, ready stays behind when the dead one was the last to go (harmless:
        # a round only counts a ready put after its own keys)
        assert conn.get_prefix("/db/waiters/").kvs == ()
    finally:
        doomed_conn.close()


def test_a_lease_lost_while_entering_is_raised_and_reported(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    barrier = conn.double_barrier("/db", 2, ttl=TTL)
    entering = gevent.spawn(barrier.enter)
    wait_until(lambda: barrier.key is not None, 2.0, "the waiter key is written")
    (kv,) = conn.get_prefix("/db/waiters/").kvs
    other.revoke(kv.lease)  # behind its back, as an operator or a partition would
    gevent.joinall([entering], timeout=TTL + 3)
    assert entering.ready(), "enter() kept waiting after its key was gone"
    assert isinstance(entering.exception, EtcdError)
    assert not barrier.entered
    wait_until(lambda: DoubleBarrierStatus.LOST in events(barrier), TTL + 3, "LOST on the channel")
    # it may enter again, on the lease granted in place of the lost one
    partner = other.double_barrier("/db", 2, ttl=TTL)
    assert results([gevent.spawn(barrier.enter), gevent.spawn(partner.enter)]) == [True, True]
    assert results([gevent.spawn(barrier.leave), gevent.spawn(partner.leave)]) == [True, True]
    barrier.stop()
    partner.stop()


def test_lost_lease_error_type_when_known_first(conn: geventc.Connector) -> None:
    """When the keeper learns of the loss first, enter() raises LeaseNotFound."""
    barrier = conn.double_barrier("/db", 2, ttl=TTL)
    entering = gevent.spawn(barrier.enter)
    wait_until(lambda: barrier.key is not None, 2.0, "the waiter key is written")
    lease = barrier._lease
    assert lease is not None
    lease.invalidate(lease.id)  # the keeper hears "gone" before the watch shows it
    gevent.joinall([entering], timeout=3)
    assert isinstance(entering.exception, LeaseNotFound), entering.exception
    barrier.stop()


def test_stop_withdraws_the_key_and_wakes_a_pending_enter(conn: geventc.Connector) -> None:
    barrier = conn.double_barrier("/db", 2)
    entering = gevent.spawn(barrier.enter)
    wait_until(lambda: barrier.key is not None, 2.0, "the waiter key is written")
    released = barrier.stop()
    assert released, released.detail
    gevent.joinall([entering], timeout=2)
    assert isinstance(entering.exception, RecipeStateError)
    assert conn.get_prefix("/db/").kvs == ()
    assert conn.lease_keeper.leases() == []  # its lease share was given back (revoked)
    assert barrier.stop()  # idempotent


def test_with_block_starts_and_stops(conn: geventc.Connector) -> None:
    with conn.double_barrier("/db", 1) as barrier:
        assert barrier.running and barrier.enter() is True
        assert conn.get_prefix("/db/waiters/").kvs
    assert not barrier.running and conn.get_prefix("/db/waiters/").kvs == ()


def test_bad_input_is_refused(conn: geventc.Connector) -> None:
    for count in (0, -1, True, "3", 1.5, None):
        with pytest.raises(InvalidArgument):
            conn.double_barrier("/db", count)  # type: ignore[arg-type]
    for ttl in (0, -5, "10", None):
        with pytest.raises(InvalidArgument):
            conn.double_barrier("/db", 2, ttl=ttl)  # type: ignore[arg-type]
    for path in ("", "/", "//", None, 5):
        with pytest.raises(InvalidArgument):
            conn.double_barrier(path, 2)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            conn.barrier(path)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        Barrier("http://127.0.0.1:2379", "/b")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        DoubleBarrier(conn.client, "/b", 2)  # type: ignore[arg-type]
    barrier = conn.barrier("/b")
    for timeout in (-1, "1", float("nan"), float("inf"), True):
        with pytest.raises(InvalidArgument):
            barrier.wait(timeout=timeout)  # type: ignore[arg-type]
    double = conn.double_barrier("/db", 1)
    with pytest.raises(InvalidArgument):
        double.enter(timeout=-1)
    with pytest.raises(RecipeStateError):
        double.leave()  # not entered
    assert double.enter() is True
    with pytest.raises(RecipeStateError):
        double.enter()  # already in
    assert double.leave() is True
    double.stop()
    with pytest.raises(RecipeStateError):
        double.enter()  # stopped: make a new one


def test_a_suspended_lease_is_reported_and_entering_goes_on(private_server: EtcdServer) -> None:
    """While keep-alive fails the participant hears SUSPENDED, then RESUMED once it
    succeeds again within the TTL; its pending enter() goes on and gets in (the
    client's timeout outlasts the pause, so a read in flight is answered after it)."""
    with geventc.connect(private_server.endpoints, timeout=5.0) as conn:
        waiting = conn.double_barrier("/db", 2, ttl=3)
        entering = gevent.spawn(waiting.enter)
        wait_until(lambda: waiting.key is not None, 2.0, "the waiter key is written")
        with paused(private_server):
            assert next_status(waiting, timeout=3.0) is DoubleBarrierStatus.SUSPENDED
        assert next_status(waiting, timeout=3.0) is DoubleBarrierStatus.RESUMED
        assert not entering.ready()
        partner = conn.double_barrier("/db", 2, ttl=3)
        assert results([entering, gevent.spawn(partner.enter)]) == [True, True]
        assert results([gevent.spawn(waiting.leave), gevent.spawn(partner.leave)]) == [True] * 2


def test_enter_raises_when_etcd_goes_away_and_withdraws_its_key_later(
    private_server: EtcdServer,
) -> None:
    """An enter() whose watch fails on every endpoint raises (it is not in) and never
    leaves its key counted: the key is withdrawn as soon as etcd answers again."""
    with geventc.connect(private_server.endpoints, timeout=1.0) as conn:
        barrier = conn.double_barrier("/db", 2, ttl=30)
        entering = gevent.spawn(barrier.enter)
        wait_until(lambda: barrier.key is not None, 2.0, "the waiter key is written")
        private_server.kill(0)
        gevent.joinall([entering], timeout=5.0)
        assert entering.ready(), "enter() kept waiting after etcd went away"
        assert isinstance(entering.exception, EtcdError) and not barrier.entered
        private_server.restart(0)  # with its data: the lease (30 s) and the key are back
        wait_until(
            lambda: barrier.key is None and not conn.get_prefix("/db/waiters/").kvs,
            5.0,
            "the key is withdrawn",
        )
        assert barrier.stop()


def test_a_lease_lost_inside_is_reported_and_leave_goes_on(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    """Inside the barrier a lost lease is a LOST event; leave() still completes (its
    key going is part of leaving) and so does the other participant's."""
    inside = other.double_barrier("/db", 2, ttl=TTL)
    partner = conn.double_barrier("/db", 2, ttl=TTL)
    assert results([gevent.spawn(inside.enter), gevent.spawn(partner.enter)]) == [True, True]
    lease = inside._lease
    assert lease is not None
    conn.revoke(lease.id)  # behind its back
    wait_status(inside, DoubleBarrierStatus.LOST, timeout=TTL + 2)
    assert results([gevent.spawn(inside.leave), gevent.spawn(partner.leave)]) == [True, True]
    assert conn.get_prefix("/db/waiters/").kvs == ()
    inside.stop()
    partner.stop()


def test_a_stop_while_the_waiter_key_is_being_created_never_reports_it_deleted(
    conn: geventc.Connector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() while enter()'s create of the waiter key is under way (etcd applied it, its
    answer is not back yet), on a lease another recipe keeps alive: the key must not stay
    behind a confirmed release. Found reading ``_release``: it saw no key yet, gave the
    lease share back and said confirmed; the key then lived as long as the lease."""
    kept = conn.ephemeral_key("/keep")
    kept.create("v", ttl=10)  # keeps the shared lease alive: the key would never expire
    barrier = DoubleBarrier(conn, "/barrier", 2, ttl=10)
    created, answer = gevent.event.Event(), gevent.event.Event()
    real = conn.txn

    def txn(compare: object = (), success: object = (), failure: object = ()) -> object:
        result = real(compare, success, failure)  # type: ignore[arg-type]
        puts = [op for op in success if op.kind == "request_put"]  # type: ignore[attr-defined]
        if puts and not created.is_set():  # the waiter key's create: hold its answer back
            created.set()
            answer.wait(10)
        return result

    monkeypatch.setattr(conn, "txn", txn)
    entering = gevent.spawn(barrier.enter)
    assert created.wait(5) and conn.get_prefix("/barrier/waiters/").kvs
    release = barrier.stop()
    if release:  # said deleted: then nothing may be left
        assert not conn.get_prefix("/barrier/").kvs, f"{release!r} with the key still there"
    else:
        assert "under way" in release.detail and release.expires_in is None
    answer.set()
    with pytest.raises(RecipeStateError, match="stopped"):
        entering.get(timeout=5)
    wait_until(lambda: not conn.get_prefix("/barrier/").kvs, 5, "the waiter key to go")
    wait_until(lambda: conn.lease_keeper.leases()[0].holders == 1, 5, "the share given back")
    assert conn.get("/keep") is not None
