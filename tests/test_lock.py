"""Lock, Semaphore and RWLock against a real etcd: Go's layouts, the caller's timeout,
nothing left behind, SUSPENDED before LOST, hand-over, fencing, shared leases."""

from __future__ import annotations

import time

import gevent
import pytest
from helpers.channels import next_of
from helpers.process import next_line, python_process
from helpers.server import paused
from helpers.waiting import wait_until

import geventc
from geventc import Op
from geventc.errors import (
    InvalidArgument,
    NotAcquired,
    NotLockHolder,
    RecipeStateError,
)
from geventc.recipes.contender import Contender, LockEvent, LockStatus
from geventc.testing import EtcdServer
from geventc.testing.plugin import EtcdTestContext


def next_status(holder: Contender, timeout: float = 10.0) -> LockStatus:
    """The status of the holder's next LockEvent."""
    return next_of(holder.channel, LockEvent, timeout).status


def test_uncontended_acquire_and_release_use_gos_key_and_one_request_each(
    conn: geventc.Connector,
) -> None:
    lock = conn.lock("/locks/job", ttl=5)
    lock.start()
    assert lock.acquire() is True
    assert lock.held and next_status(lock) is LockStatus.ACQUIRED
    lease = lock.lease
    assert lease is not None
    kv = conn.get(f"/locks/job/{lease.id:x}")  # concurrency.Mutex: pfx/<lease hex>, ""
    assert kv is not None and kv.value == b"" and kv.lease == lease.id
    assert lock.fencing_token == kv.create_revision
    assert lock.release().confirmed and not lock.held
    assert next_status(lock) is LockStatus.RELEASED
    assert conn.get_prefix("/locks/job/").kvs == ()
    sent = conn.client.transport.requests
    assert lock.acquire() and lock.release()
    assert conn.client.transport.requests - sent == 2
    lock.stop()
    assert conn.lease_keeper.leases() == []


def test_a_second_holder_waits_and_takes_over_at_the_release(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    first, second = conn.lock("/locks/a"), other.lock("/locks/a")
    assert first.acquire()
    waiter = gevent.spawn(second.acquire)
    gevent.sleep(0.3)
    assert not waiter.ready() and not second.held
    released = time.monotonic()
    first.release()
    assert waiter.get(timeout=5) is True
    assert time.monotonic() - released < 0.5  # one watch event, no polling
    assert second.held and second.fencing_token > 0
    keys = conn.get_prefix("/locks/a/").kvs
    assert [kv.key for kv in keys] == [f"/locks/a/{second.lease.id:x}".encode()]  # type: ignore[union-attr]
    second.stop()
    first.stop()


def test_the_callers_timeout_is_honoured_and_nothing_is_left(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    holder = other.lock("/locks/t")
    assert holder.acquire()
    lock = conn.lock("/locks/t")
    started = time.monotonic()
    assert lock.acquire(timeout=0.5) is False
    took = time.monotonic() - started
    assert 0.5 <= took < 1.0, took
    assert not lock.held and lock.key is None
    keys = conn.get_prefix("/locks/t/").kvs
    assert len(keys) == 1 and keys[0].lease == holder.lease.id  # type: ignore[union-attr]
    assert conn.lease_keeper.leases() == []  # its lease share was given back (revoked)
    assert lock.acquire(blocking=False) is False
    assert conn.lease_keeper.leases() == [] and len(conn.get_prefix("/locks/t/").kvs) == 1
    with pytest.raises(NotAcquired), lock.hold(timeout=0.2):
        raise AssertionError("the block ran without the lock")
    holder.release()
    with lock.hold(timeout=2) as held:
        assert held.held
    holder.stop()
    lock.stop()


def test_with_acquires_releases_and_stops_what_it_started(conn: geventc.Connector) -> None:
    lock = conn.lock("/locks/w")
    with lock as held:
        assert held is lock and lock.held
        assert len(conn.get_prefix("/locks/w/").kvs) == 1
    assert not lock.running and conn.get_prefix("/locks/w/").kvs == ()
    assert conn.lease_keeper.leases() == []


def test_two_holders_of_one_path_in_one_process_exclude_each_other(
    conn: geventc.Connector,
) -> None:
    others = [conn.lock(f"/locks/many/{i}") for i in range(50)]
    for lock in others:
        assert lock.acquire()
    assert len(conn.lease_keeper.leases()) == 1  # 50 distinct paths: one lease
    first, second = conn.lock("/locks/same"), conn.lock("/locks/same")
    assert first.acquire()
    assert second.acquire(timeout=0.3) is False
    waiter = gevent.spawn(second.acquire, 5)
    gevent.sleep(0.1)
    first.release()
    assert waiter.get(timeout=5) is True
    assert first.lease is not second.lease
    for lock in [*others, first, second]:
        lock.stop()
    assert conn.lease_keeper.leases() == []


def test_misuse_is_refused(conn: geventc.Connector) -> None:
    lock = conn.lock("/locks/m")
    with pytest.raises(NotLockHolder):
        lock.release()
    with pytest.raises(NotLockHolder):
        lock.guard()
    assert lock.acquire()
    with pytest.raises(RecipeStateError, match="already held"):
        lock.acquire()
    for bad in (-1, "1", float("nan")):
        with pytest.raises(InvalidArgument, match="timeout"):
            conn.lock("/locks/m2").acquire(timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        conn.lock("/")
    with pytest.raises(InvalidArgument):
        conn.lock("/locks/x", ttl=0)
    with pytest.raises(InvalidArgument):
        conn.semaphore("/sem", 0)
    lock.stop()
    with pytest.raises(RecipeStateError, match="stopped"):
        lock.acquire()


def test_fenced_writes_fail_once_the_key_is_gone_and_say_lost(conn: geventc.Connector) -> None:
    lock = conn.lock("/locks/f")
    assert lock.acquire()
    next_status(lock)
    lock.txn([Op.put("/protected", "1")])
    conn.delete(lock.key or "")  # an operator deletes the key
    with pytest.raises(NotLockHolder):
        lock.txn([Op.put("/protected", "2")])
    assert next_status(lock) is LockStatus.LOST and not lock.held
    kv = conn.get("/protected")
    assert kv is not None and kv.value == b"1"
    assert lock.release().confirmed  # nothing left: confirmed
    lock.stop()


def test_suspended_comes_before_lost_when_the_server_goes_away(
    private_server: EtcdServer,
) -> None:
    with geventc.connect(private_server.endpoints) as conn:
        lock = conn.lock("/locks/s", ttl=2)
        assert lock.acquire()
        assert next_status(lock) is LockStatus.ACQUIRED
        with paused(private_server):
            assert next_status(lock, 3) is LockStatus.SUSPENDED
            assert not lock.held and lock.fencing_token == 0
            with pytest.raises(NotLockHolder):
                lock.guard()
            assert next_status(lock, 4) is LockStatus.LOST
        assert lock.acquire(timeout=5)  # on the lease granted after the loss
        assert lock.held
        lock.stop()


HOLDER = """
from gevent import monkey; monkey.patch_all()
import sys, geventc
conn = geventc.connect(sys.argv[1].split(","), namespace=sys.argv[2])
lock = conn.lock(sys.argv[3], ttl=int(sys.argv[4]))
assert lock.acquire(timeout=10)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_killed_holders_lock_passes_on_within_ttl_plus_a_second(
    conn: geventc.Connector, etcd: EtcdTestContext, conn_namespace: str
) -> None:
    ttl = 2
    args = [",".join(etcd.endpoints), conn_namespace, "/locks/killed", str(ttl)]
    with python_process(HOLDER, *args) as process:
        assert next_line(process, 15) == "held"
        waiting = conn.lock("/locks/killed")
        waiter = gevent.spawn(waiting.acquire, ttl + 5)
        gevent.sleep(0.3)
        assert not waiter.ready()
        process.kill()  # SIGKILL: no release, no revoke; the lease runs out
        killed = time.monotonic()
        assert waiter.get(timeout=ttl + 5) is True
        took = time.monotonic() - killed
        assert took < ttl + 1.0, f"the lock passed on {took:.2f}s after the kill (ttl {ttl}s)"
    waiting.stop()


def test_a_dead_holders_lock_passes_on_within_its_ttl(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    dead = other.lock("/locks/d", ttl=2)
    assert dead.acquire()
    lease = dead.lease
    assert lease is not None
    lease.close(revoke=False)  # the process died: no more renewals, no revoke
    waiting = conn.lock("/locks/d")
    started = time.monotonic()
    assert waiting.acquire(timeout=5)
    assert time.monotonic() - started < 2 + 1
    waiting.stop()


def test_a_semaphore_lets_n_hold_in_order(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    holders = [conn.semaphore("/sem/db", 2), other.semaphore("/sem/db", 2)]
    assert all(holder.acquire(timeout=2) for holder in holders)
    third = conn.semaphore("/sem/db", 2)
    fourth = other.semaphore("/sem/db", 2)
    assert third.acquire(timeout=0.3) is False
    waiting = [gevent.spawn(third.acquire, 5)]
    gevent.sleep(0.1)
    waiting.append(gevent.spawn(fourth.acquire, 5))
    gevent.sleep(0.2)
    holders[0].release()
    assert waiting[0].get(timeout=5) is True  # first come, first served
    gevent.sleep(0.2)
    assert not waiting[1].ready()
    holders[1].release()
    assert waiting[1].get(timeout=5) is True
    assert third.holders() == 2
    with pytest.raises(InvalidArgument, match="max_holders"):
        conn.semaphore("/sem/db", 3).acquire(timeout=1)
    for holder in [*holders, third, fourth]:
        holder.stop()
    assert conn.get_prefix("/sem/db/").kvs == ()


def test_readers_share_and_a_writer_is_alone_and_not_starved(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    readers = [conn.rw_lock("/rw/cfg"), other.rw_lock("/rw/cfg")]
    for reader in readers:
        assert reader.read.acquire(timeout=2)
    keys = [kv.key.decode() for kv in conn.get_prefix("/rw/cfg/").kvs]
    assert len(keys) == 2 and all(key.startswith("/rw/cfg/read/") for key in keys)
    writer = conn.rw_lock("/rw/cfg")
    assert writer.write.acquire(timeout=0.3) is False
    writing = gevent.spawn(writer.write.acquire, 5)
    gevent.sleep(0.2)
    late_reader = other.rw_lock("/rw/cfg")
    reading = gevent.spawn(late_reader.read.acquire, 5)
    gevent.sleep(0.2)
    assert not reading.ready()  # queued behind the waiting writer
    for reader in readers:
        reader.read.release()
    assert writing.get(timeout=5) is True
    (key,) = [kv.key.decode() for kv in conn.get_prefix("/rw/cfg/write/").kvs]
    assert key.startswith("/rw/cfg/write/") and key.rsplit("/", 1)[1].isdigit()
    gevent.sleep(0.2)
    assert not reading.ready()
    writer.write.release()
    assert reading.get(timeout=5) is True
    for rw in [*readers, writer, late_reader]:
        assert rw.stop().confirmed
    assert conn.get_prefix("/rw/cfg/").kvs == ()


def test_an_acquire_while_etcd_is_down_returns_at_its_timeout_and_reports(
    private_server: EtcdServer,
) -> None:
    with geventc.connect(private_server.endpoints, timeout=0.5) as conn:
        lock = conn.lock("/locks/down")
        lock.start()
        private_server.kill(0)
        started = time.monotonic()
        assert lock.acquire(timeout=1.5) is False
        assert time.monotonic() - started < 1.5 + 1.2  # + at most stop_timeout clean-up
        assert any(isinstance(event, geventc.RecipeError) for event in _drain(lock)), (
            "the errors were reported on the channel"
        )
        private_server.restart(0)
        wait_until(lambda: _answers(conn), 10, "etcd is back")
        assert lock.acquire(timeout=5)
        lock.stop()


def _drain(holder: Contender) -> list[object]:
    events = []
    while True:
        try:
            events.append(holder.channel.get(timeout=0.05))
        except geventc.errors.ChannelTimeout:
            return events


def _answers(conn: geventc.Connector) -> bool:
    try:
        conn.get("/x")
        return True
    except geventc.EtcdError:
        return False


def test_stop_ends_an_acquire_waiting_in_another_greenlet(
    conn: geventc.Connector, other: geventc.Connector
) -> None:
    holder = other.lock("/locks/stop")
    assert holder.acquire()
    lock = conn.lock("/locks/stop")
    waiting = gevent.spawn(lock.acquire)
    wait_until(lambda: len(conn.get_prefix("/locks/stop/").kvs) == 2, 5, "queued")
    assert lock.stop().confirmed
    with pytest.raises(RecipeStateError, match="stopped while acquiring"):
        waiting.get(timeout=5)
    assert len(conn.get_prefix("/locks/stop/").kvs) == 1  # only the holder's key
    assert conn.lease_keeper.leases() == []
    holder.stop()


def test_a_stop_while_the_claim_is_on_its_way_leaves_no_key(etcd: EtcdTestContext) -> None:
    from geventc.testing.faults import FaultProxy

    with (
        FaultProxy(etcd.endpoints[0]) as proxy,
        geventc.connect([proxy.endpoint], namespace=etcd.prefix.strip("/"), timeout=5.0) as conn,
    ):
        conn.ephemeral_key("/locks/other-holder").create("x", ttl=10)  # keeps the lease
        lock = conn.lock("/locks/inflight", ttl=10)
        lock.start()
        proxy.cut("to_client")  # the claim reaches etcd, its answer is held
        acquiring = gevent.spawn(lock.acquire)
        wait_until(lambda: len(etcd.client().get_prefix(etcd.key("locks/inflight/")).kvs), 5,
                   "the claim is applied")  # fmt: skip
        assert lock.stop().confirmed  # nothing it knew of was held
        proxy.heal()
        with pytest.raises(RecipeStateError, match="stopped"):
            acquiring.get(timeout=5)
        wait_until(lambda: not etcd.client().get_prefix(etcd.key("locks/inflight/")).kvs, 5,
                   "the stopped lock's key is deleted")  # fmt: skip
