"""EphemeralKey against a real etcd: shared leases, loss and re-establishment."""

from __future__ import annotations

import time

import gevent
import pytest
from helpers.channels import next_of
from helpers.waiting import wait_until

import geventc
from geventc import EphemeralEvent, EphemeralKey, EphemeralStatus, RecipeError, wire
from geventc.errors import InvalidArgument, KeyExists, PermissionDenied, RecipeStateError
from geventc.testing import EtcdServer, FaultProxy
from geventc.testing.plugin import EtcdTestContext
from geventc.wire import EventType


def next_event(key: EphemeralKey, timeout: float = 10.0) -> EphemeralEvent:
    """The key's next EphemeralEvent (skipping RecipeError reports)."""
    return next_of(key.channel, EphemeralEvent, timeout)


def test_create_attaches_the_key_to_a_shared_lease(conn: geventc.Connector) -> None:
    keys = [conn.ephemeral_key(f"/svc/api/i{i}") for i in range(3)]
    for key in keys:
        key.create("addr", ttl=5)
    kvs = conn.get_prefix("/svc/api/").kvs
    assert len(kvs) == 3 and len({kv.lease for kv in kvs}) == 1 and kvs[0].lease
    assert [lease.holders for lease in conn.lease_keeper.leases()] == [3]
    assert conn.time_to_live(kvs[0].lease).granted_ttl == 5
    other_ttl = conn.ephemeral_key("/svc/api/other")
    other_ttl.create("x", ttl=7)
    assert len(conn.lease_keeper.leases()) == 2


def test_key_exists_elsewhere(conn: geventc.Connector, etcd: EtcdTestContext) -> None:
    conn.ephemeral_key("/taken").create("mine", ttl=5)
    with geventc.connect(etcd.endpoints, namespace=etcd.prefix.strip("/")) as other:
        with pytest.raises(KeyExists):
            other.ephemeral_key("/taken").create("theirs", ttl=5)
        assert other.lease_keeper.leases() == []  # the failed create released its lease
    kv = conn.get("/taken")
    assert kv is not None and kv.value == b"mine"


def test_update_and_delete(conn: geventc.Connector) -> None:
    key = conn.ephemeral_key("/u/k")
    with pytest.raises(RecipeStateError, match="create"):
        key.update("early")
    key.create("v1", ttl=5)
    key.update("v2")
    kv = conn.get("/u/k")
    assert kv is not None and kv.value == b"v2"
    sibling = conn.ephemeral_key("/u/sibling")
    sibling.create("s", ttl=5)
    key.delete()
    assert conn.get("/u/k") is None  # removed at once, not after the TTL
    assert conn.get("/u/sibling") is not None  # the shared lease lives on
    with pytest.raises(RecipeStateError):
        key.update("late")
    lease_id = conn.get("/u/sibling").lease  # type: ignore[union-attr]
    sibling.delete()
    assert lease_id not in conn.leases()  # the last holder revoked the lease


def test_deleted_by_someone_else_is_reported_and_restored(conn: geventc.Connector) -> None:
    key = conn.ephemeral_key("/d/k")
    key.create("value", ttl=5)
    conn.delete("/d/k")
    lost = next_event(key)
    assert lost.status is EphemeralStatus.LOST and lost.key == "/d/k"
    restored = next_event(key)
    assert restored.status is EphemeralStatus.RESTORED
    kv = conn.get("/d/k")
    assert kv is not None and kv.value == b"value"


def test_lease_expiry_is_reported_and_restored_with_a_new_lease(conn: geventc.Connector) -> None:
    key = conn.ephemeral_key("/x/k")
    key.create("value", ttl=5)
    old_lease = conn.get("/x/k").lease  # type: ignore[union-attr]
    conn.revoke(old_lease)  # the server drops the lease and its keys
    assert next_event(key).status is EphemeralStatus.LOST
    assert next_event(key).status is EphemeralStatus.RESTORED
    kv = conn.get("/x/k")
    assert kv is not None and kv.lease not in (0, old_lease)


def test_context_manager_and_bad_input(conn: geventc.Connector) -> None:
    with conn.ephemeral_key("/cm") as key:
        key.create("v", ttl=5)
        assert conn.get("/cm") is not None
    assert conn.get("/cm") is None
    with pytest.raises(InvalidArgument, match="ttl"):
        conn.ephemeral_key("/b").create("v", ttl=0)
    with pytest.raises(InvalidArgument, match="value"):
        conn.ephemeral_key("/b").create(None, ttl=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="path"):
        conn.ephemeral_key("")
    with pytest.raises(RecipeStateError):
        conn.ephemeral_key("/b").start()


@pytest.mark.long  # 8-10 s: in .ci/run's "-m long" step and the release matrix
def test_keys_survive_a_server_restart(private_server: EtcdServer) -> None:
    ttl = 3
    with geventc.connect(private_server.endpoints, timeout=1.0) as conn:
        key = conn.ephemeral_key("/r/k")
        key.create("v", ttl=ttl)
        private_server.kill(0)
        private_server.restart(0)
        # kept alive (or re-created) after the restart, and still there after the TTL
        deadline = time.monotonic() + 3 * ttl
        while time.monotonic() < deadline:
            kv = conn.get("/r/k")
            assert kv is not None or key.channel.get_nowait() is not None
            time.sleep(0.2)
        kv = conn.get("/r/k")
        assert kv is not None and kv.value == b"v"
        key.delete()
        assert conn.get("/r/k") is None


@pytest.mark.long  # 8-10 s: in .ci/run's "-m long" step and the release matrix
def test_own_key_is_taken_over_after_a_restart_with_data_kept(
    private_server: EtcdServer,
) -> None:
    """The outage outlives the client's lease while the server keeps the old lease (and
    the key on it) alive: the key is recognised as this process's own and moved onto the
    new lease, never reported as taken by someone else."""
    ttl = 6
    with geventc.connect(private_server.endpoints, timeout=1.0) as conn:
        key = conn.ephemeral_key("/own/k")
        key.create("v", ttl=ttl)
        (lease,) = conn.lease_keeper.leases()
        old_lease = lease.id
        private_server.kill(0)
        assert next_event(key, timeout=ttl + 5).status is EphemeralStatus.LOST
        private_server.restart(0)
        restarted = time.monotonic()
        seen: list[EphemeralEvent | RecipeError] = []
        while not (seen and isinstance(seen[-1], EphemeralEvent)):
            seen.append(key.channel.get(timeout=ttl + 5))
        took = time.monotonic() - restarted
        assert not [e for e in seen if isinstance(e, RecipeError)], seen
        assert seen[-1].status is EphemeralStatus.RESTORED, seen
        assert took < ttl / 2, f"restored after {took:.2f}s"
        kv = conn.get("/own/k")
        assert kv is not None and kv.value == b"v" and kv.lease == lease.id != old_lease
        wait_until(lambda: old_lease not in conn.leases(), 5, "revoking the old lease")
        kv = conn.get("/own/k")
        assert kv is not None and kv.lease == lease.id
        key.delete()


def test_default_retry_keeps_restoring_after_a_failed_attempt() -> None:
    """With ``retry=None`` a failed re-creation is retried (with backoff) until it works."""
    with EtcdServer(auth=True, fsync=False) as server:
        server.add_user("app", "app-pw", prefix="/app/")
        with geventc.connect(server.endpoints, username="app", password="app-pw") as conn:
            key = conn.ephemeral_key("/app/k")
            key.create("v", ttl=5)
            read_only = {"permType": "READ", "key": wire.b64(b"/app/"), "range_end": "L2FwcDA="}
            server.admin("/v3/auth/role/grant", {"name": "role-app", "perm": read_only})
            server.admin("/v3/kv/deleterange", {"key": wire.b64(b"/app/k")})
            assert next_event(key).status is EphemeralStatus.LOST
            failed = next_of(key.channel, RecipeError)
            assert isinstance(failed.error, PermissionDenied) and not failed.fatal
            read_write = {**read_only, "permType": "READWRITE"}
            server.admin("/v3/auth/role/grant", {"name": "role-app", "perm": read_write})
            assert next_event(key, timeout=15).status is EphemeralStatus.RESTORED
            kv = conn.get("/app/k")
            assert kv is not None and kv.value == b"v"
            key.delete()


def test_a_revoked_lease_is_replaced_not_retried(conn: geventc.Connector) -> None:
    ttl = 30
    key = EphemeralKey(conn, "/rv/k", retry=geventc.RetryPolicy(max_attempts=1))
    key.create("v", ttl=ttl)
    old = conn.get("/rv/k")
    assert old is not None
    conn.revoke(old.lease)
    revoked = time.monotonic()
    seen: list[EphemeralEvent | RecipeError] = []
    while not (seen and getattr(seen[-1], "status", None) is EphemeralStatus.RESTORED):
        seen.append(key.channel.get(timeout=ttl))
    took = time.monotonic() - revoked
    assert [type(e) for e in seen] == [EphemeralEvent, EphemeralEvent], seen  # LOST, RESTORED
    assert took < ttl / 3 + 2.0, f"restored after {took:.2f}s"
    kv = conn.get("/rv/k")
    assert kv is not None and kv.lease not in (0, old.lease)
    key.delete()


@pytest.mark.parametrize("overwrite", [False, True], ids=["create", "overwrite"])
def test_a_key_stopped_while_its_re_creation_is_under_way_is_deleted(
    private_server: EtcdServer, overwrite: bool
) -> None:
    """stop() kills a re-creation whose write etcd already applied (its answer is still
    on the way): the key is on the shared lease that another holder keeps alive, so the
    stop deletes it (in the background while etcd does not answer) and says so; it never
    says the key is gone while it is not, and nothing re-creates it afterwards."""
    with (
        FaultProxy(private_server.endpoint) as proxy,
        geventc.connect([proxy.endpoint], namespace="/t", timeout=5, stop_timeout=0.5) as conn,
        geventc.connect(private_server.endpoints, namespace="/t") as direct,
    ):
        keeper = conn.ephemeral_key("/keep")
        keeper.create("v", ttl=10)  # keeps the shared lease alive throughout
        key = EphemeralKey(conn, "/eph", overwrite=overwrite)
        key.create("v", ttl=10)
        (lease,) = conn.lease_keeper.leases()
        proxy.delay(0.3)  # the deletion, then the re-creation, take their time
        assert direct.delete("/eph")
        wait_until(lambda: direct.get("/eph") is not None, 5, "the key re-created")
        proxy.cut("to_client")  # etcd applied the write; its answer is held
        release = key.delete()
        now = direct.get("/eph")
        assert not release or now is None, f"{release} while the key is on {now}"
        assert not release and "retried in the background" in release.detail
        proxy.heal()
        wait_until(lambda: direct.get("/eph") is None, 10, "the key to go")
        wait_until(lambda: lease.holders == 1, 5, "the share to be given back")
        time.sleep(0.5)  # whatever was under way has arrived by now
        assert direct.get("/eph") is None and direct.get("/keep") is not None
        assert keeper.delete()


def _held_requests(proxy: FaultProxy) -> bool:
    """True when the proxy holds bytes on their way to etcd (the harness's internals)."""
    return any(p.held for link in proxy._links for p in link.pipes if p.direction == "to_server")


def test_the_deletion_of_a_stopped_key_comes_after_its_write_under_way(
    private_server: EtcdServer,
) -> None:
    """A stop that cuts a re-creation short leaves its write to finish and sends the
    deletion only after the write's answer (in the background when it does not come in
    time): a deletion sent first could be applied first and the key stay for good on the
    lease another holder keeps alive."""
    with (
        FaultProxy(private_server.endpoint) as proxy,
        geventc.connect([proxy.endpoint], namespace="/t", timeout=3, stop_timeout=0.5) as conn,
        geventc.connect(private_server.endpoints, namespace="/t") as direct,
    ):
        keeper = conn.ephemeral_key("/keep")
        keeper.create("v", ttl=10)  # keeps the shared lease alive throughout
        key = EphemeralKey(conn, "/eph", overwrite=True)  # a registry's way
        key.create("v", ttl=10)
        (lease,) = conn.lease_keeper.leases()
        direct.delete("/eph")  # once with nothing held: the watch is seen to be live
        assert next_event(key).status is EphemeralStatus.LOST
        assert next_event(key).status is EphemeralStatus.RESTORED
        proxy.cut("to_server")  # the next re-creation is held on its way to etcd
        deleted = direct.delete("/eph").header.revision
        assert next_event(key).status is EphemeralStatus.LOST
        wait_until(lambda: _held_requests(proxy), 5, "the re-creation held by the proxy")
        release = key.delete()
        assert not release and "retried in the background" in release.detail
        proxy.heal()  # the write arrives and is answered; then the deletion is sent
        stream = direct.watch("/eph", start_revision=deleted + 1)
        events = []
        with gevent.Timeout(10):
            for response in stream:
                events.extend(response.events)
                if len(events) >= 2:
                    break
        stream.cancel()
        assert [(e.type, e.kv.lease) for e in events] == [
            (EventType.PUT, lease.id),
            (EventType.DELETE, 0),
        ], events
        wait_until(lambda: lease.holders == 1, 5, "the share to be given back")
        assert direct.get("/eph") is None and direct.get("/keep") is not None
        assert keeper.delete()
