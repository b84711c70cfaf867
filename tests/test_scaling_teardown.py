"""Teardown at scale: closing a connector that holds many objects revokes their lease
once (no deletion per key), stops what holds nothing on the server without a greenlet
each, says once what it could not release, and leaves no bookkeeping behind; guarded
deletions of many keys fit etcd's nested-txn limit, and single ones coalesce."""

from __future__ import annotations

import logging
import re
from collections import Counter

import gevent
import urllib3
from helpers.server import paused
from helpers.waiting import wait_until

import geventc
from geventc.lease import LeaseState
from geventc.recipes.leftover import delete_guarded, gone_with
from geventc.testing import EtcdServer
from geventc.txn import Compare

STARTED = re.compile(r'^grpc_server_started_total\{.*grpc_method="(\w+)".*\} (\S+)$')


def served(server: EtcdServer) -> Counter[str]:
    """The gRPC calls etcd started so far, by method (one per gateway request)."""
    text = urllib3.request("GET", server.endpoint + "/metrics").data.decode()
    calls: Counter[str] = Counter()
    for line in text.splitlines():
        if found := STARTED.match(line):
            calls[found.group(1)] += int(float(found.group(2)))
    return calls


class Warnings(logging.Handler):
    """geventc's records at WARNING and above."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_close_with_many_keys_and_trackers_sends_one_revoke_and_no_deletion(
    private_server: EtcdServer,
) -> None:
    conn = geventc.connect(private_server.endpoints, namespace="/many")
    keys = [conn.ephemeral_key(f"/svc/s{i % 10}/k{i}") for i in range(300)]
    gevent.joinall([gevent.spawn(key.create, "v", ttl=10) for key in keys], raise_error=True)
    trackers = [conn.service_tracker(f"/svc/s{i % 10}") for i in range(300)]
    channels = [tracker.start() for tracker in trackers]
    for channel in channels:  # every tracker has its first snapshot (read, then watched)
        assert channel.get(timeout=10).services
    # and every watch stream is connected: the first snapshot comes from the read, the
    # stream opens after it (counted by etcd only once the gateway has it)
    watches = list(conn.hub._watches.values())
    wait_until(
        lambda: all(w._stream is not None and w._stream.endpoint for w in watches),
        10,
        "the watch streams to connect",
    )
    (lease,) = conn.lease_keeper.leases()
    lease_id = lease.id
    assert lease.holders == 300 and not lease.revoked
    before = served(private_server)
    release = conn.close()
    assert release and release.confirmed, release.detail
    assert served(private_server) - before == Counter({"LeaseRevoke": 1})
    assert lease.revoked and lease.state is LeaseState.CLOSED and lease.revoked_id == lease_id
    assert gone_with(conn, lease) and gone_with(conn, lease, lease_id)
    assert not gone_with(conn, lease, lease_id + 1)  # a key on another id may remain
    assert all(channel.closed for channel in channels)
    assert not any(r.running for r in [*keys, *trackers])
    with geventc.connect(private_server.endpoints) as admin:
        assert admin.get_prefix("/many/", count_only=True).count == 0


def test_close_says_once_what_it_could_not_release(private_server: EtcdServer) -> None:
    conn = geventc.connect(private_server.endpoints, namespace="/once", stop_timeout=0.5)
    locks = [conn.lock(f"/locks/{i}", ttl=5) for i in range(20)]
    for lock in locks:
        assert lock.acquire(timeout=10)
    (lease,) = conn.lease_keeper.leases()
    warnings = Warnings()
    logger = logging.getLogger("geventc")
    private_server.pause(0)  # nothing answers: neither the revocation nor a deletion
    logger.addHandler(warnings)
    try:
        release = conn.close()
    finally:
        logger.removeHandler(warnings)
        private_server.resume(0)
    assert not release and "could not" in release.detail
    assert len(warnings.messages) == 1, warnings.messages  # one for all 20 locks
    assert "closed, but" in warnings.messages[0]
    assert not any(lock.running for lock in locks)
    assert not lease.revoked and not gone_with(conn, lease)  # etcd did not confirm it


def test_objects_stopped_leave_no_bookkeeping_behind(conn: geventc.Connector) -> None:
    for _ in range(2):
        keys = [conn.ephemeral_key(f"/churn/s{i % 5}/k{i}") for i in range(100)]
        gevent.joinall([gevent.spawn(k.create, "v", ttl=10) for k in keys], raise_error=True)
        trackers = [conn.service_tracker(f"/churn/s{i % 5}") for i in range(100)]
        locks = [conn.lock(f"/churn/locks/{i}") for i in range(50)]
        observers = [conn.observer(f"/churn/s{i}", prefix=True) for i in range(5)]
        for recipe in [*trackers, *observers]:
            recipe.start()
        for lock in locks:
            assert lock.acquire(timeout=10)
        recipes = [*keys, *trackers, *locks, *observers]
        gevent.joinall([gevent.spawn(r.stop) for r in recipes], raise_error=True)
        assert all(r.channel.closed for r in recipes)
        assert not conn._recipes  # forgotten: nothing keeps them alive
        assert conn.hub.streams == 0 and conn.hub.shared == {}
        assert conn.lease_keeper.leases() == [] and conn.lease_keeper.unrevoked() is None
        assert conn.get_prefix("/churn/", count_only=True).count == 0


def test_guarded_deletion_of_many_keys_fits_the_nested_txn_limit(
    conn: geventc.Connector,
) -> None:
    # etcd lets a nested txn hold only what the outer txn leaves of --max-txn-ops: 128
    # nested deletions in one txn were refused ("too many operations in txn request")
    created = {}
    for i in range(300):
        key = f"/bulk/k{i:03d}".encode()
        created[key] = conn.put(key, "v").header.revision
    moved = conn.put(b"/bulk/k007", "rewritten").header.revision  # its guard must fail
    guards = {key: Compare.create_revision(key) == rev for key, rev in created.items()}
    guards[b"/bulk/k007"] = Compare.mod_revision(b"/bulk/k007") == moved - 1
    delete_guarded(conn, {})  # nothing to delete: no request
    delete_guarded(conn, guards)
    left = conn.get_prefix("/bulk/").kvs
    assert [kv.key for kv in left] == [b"/bulk/k007"]


def test_concurrent_single_guarded_deletions_share_requests(private_server: EtcdServer) -> None:
    conn = geventc.connect(private_server.endpoints)
    try:
        revisions = {
            f"/one/k{i}".encode(): conn.put(f"/one/k{i}", "v").header.revision for i in range(200)
        }
        before = served(private_server)
        deletions = [
            gevent.spawn(delete_guarded, conn, {key: Compare.create_revision(key) == rev})
            for key, rev in revisions.items()
        ]
        gevent.joinall(deletions, raise_error=True)
        txns = (served(private_server) - before)["Txn"]
        assert conn.get_prefix("/one/", count_only=True).count == 0
        assert txns < 50, f"{txns} requests for 200 deletions"  # each one alone: 200
    finally:
        conn.close()


def test_a_shared_lease_is_revoked_only_with_its_last_holder(conn: geventc.Connector) -> None:
    keys = [conn.ephemeral_key(f"/last/k{i}") for i in range(3)]
    for key in keys:
        key.create("v", ttl=10)
    (lease,) = conn.lease_keeper.leases()
    for key in keys[:-1]:
        assert key.delete()
        assert not lease.revoked and not gone_with(conn, lease)
    assert keys[-1].delete()
    assert lease.revoked and not gone_with(conn, lease)  # revoked, but not by a close


def test_leftovers_of_many_holders_are_deleted_together(private_server: EtcdServer) -> None:
    conn = geventc.connect(private_server.endpoints, timeout=0.5, stop_timeout=0.5)
    try:
        kept = conn.ephemeral_key("/kept")
        kept.create("v", ttl=10)  # keeps the shared lease alive throughout
        keys = [conn.ephemeral_key(f"/left/k{i}") for i in range(60)]
        gevent.joinall([gevent.spawn(k.create, "v", ttl=10) for k in keys], raise_error=True)
        (lease,) = conn.lease_keeper.leases()
        before = served(private_server)
        with paused(private_server):
            stops = [gevent.spawn(key.delete) for key in keys]
            gevent.joinall(stops)
            assert not any(stop.value for stop in stops)  # none confirmed: etcd is paused
            assert lease.holders == 61  # the shares are kept while their keys remain
        wait_until(lambda: not conn.get_prefix("/left/").kvs, 15, "the keys to go")
        wait_until(lambda: lease.holders == 1, 5, "the shares to be given back")
        txns = (served(private_server) - before)["Txn"]
        # every attempt counts, those sent while etcd was paused too: a retry for all
        # the keys at once, where each holder retrying its own would be 60 a round
        assert txns < 30, f"{txns} requests to delete 60 keys"
        assert conn.get("/kept") is not None and lease.id in conn.leases()
    finally:
        conn.close()


def test_deleting_many_keys_at_once_sends_the_first_chunk_while_others_still_stop(
    private_server: EtcdServer,
) -> None:
    """1,000 ephemeral keys deleted at once, one greenlet each: a full chunk of their
    deletions goes to etcd before the last of the stops has run (it did not: every
    stop ran first, so with 20,000 the first request left after their stop timeout),
    every deletion is confirmed, and they share a handful of requests."""
    conn = geventc.connect(private_server.endpoints)
    try:
        keys = [conn.ephemeral_key(f"/bulk/k{i}") for i in range(1000)]
        gevent.joinall([gevent.spawn(k.create, "v", ttl=10) for k in keys], raise_error=True)
        order: list[str] = []
        real = conn.txn

        def txn(*args: object, **kwargs: object) -> object:
            order.append("sent")
            return real(*args, **kwargs)  # type: ignore[arg-type]

        conn.txn = txn  # type: ignore[method-assign]

        def delete(key: geventc.EphemeralKey) -> object:
            order.append("stop")
            return key.delete()

        before = served(private_server)
        releases = [gevent.spawn(delete, key) for key in keys]
        gevent.joinall(releases, raise_error=True)
        assert all(release.value for release in releases)  # every deletion confirmed
        last_stop = len(order) - 1 - order[::-1].index("stop")
        assert "sent" in order[:last_stop], "no deletion left before every stop had run"
        assert conn.get_prefix("/bulk/", count_only=True).count == 0
        assert (served(private_server) - before)["Txn"] <= 12  # 1,000 keys: 8 chunks
    finally:
        conn.close()
