"""GroupMember against a real etcd: membership, capabilities, events, faults."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from helpers.channels import next_of
from helpers.gate import Gate
from helpers.process import next_line, python_process

import geventc
from geventc import Channel, RecipeError
from geventc.errors import EtcdError, InvalidArgument, MemberExists, RecipeStateError
from geventc.recipes.group import GroupEvent, GroupEventKind, GroupMember, RawValue
from geventc.testing import EtcdServer, free_port
from geventc.testing.plugin import EtcdTestContext

JOINED, LEFT, UPDATED = GroupEventKind.JOINED, GroupEventKind.LEFT, GroupEventKind.UPDATED
LOST, REJOINED = GroupEventKind.LOST, GroupEventKind.REJOINED
SUSPENDED = GroupEventKind.SUSPENDED

#: A member in its own process: prints "joined", then waits to be killed.
MEMBER = """
from gevent import monkey; monkey.patch_all()
import sys, geventc
from geventc.recipes.group import GroupMember
endpoints, namespace, path, identity, ttl = sys.argv[1:6]
conn = geventc.connect(endpoints.split(","), namespace=namespace)
GroupMember(conn, path, identity, capabilities={"pid": 1}, ttl=int(ttl)).start()
print("joined", flush=True)
sys.stdin.read()
"""


def next_change(
    channel: Channel[Any], kind: GroupEventKind, identity: str, timeout: float = 5.0
) -> GroupEvent:
    """The next GroupEvent of ``kind`` about ``identity`` (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        event = next_of(channel, GroupEvent, max(0.01, deadline - time.monotonic()))
        if event.kind is kind and event.identity == identity:
            return event


def test_members_capabilities_and_changes_seen_by_another_connector(
    conn: geventc.Connector, etcd: EtcdTestContext, conn_namespace: str
) -> None:
    a = conn.group_member("/g", "a", capabilities={"zone": "z1"}, ttl=5)
    seen = a.start()
    assert a.members() == {"a": {"zone": "z1"}}  # our own join, at once
    assert next_change(seen, JOINED, "a").capabilities == {"zone": "z1"}
    stored = conn.get("/g/a")
    assert stored is not None and stored.value == b'{"zone":"z1"}'
    assert stored.lease == conn.lease_keeper.leases()[0].id  # the shared lease
    with geventc.connect(etcd.endpoints, namespace=conn_namespace) as other:
        watcher = GroupMember(other, "/g", None)
        watched = watcher.start()
        assert watcher.members() == {"a": {"zone": "z1"}}
        assert next_change(watched, JOINED, "a").capabilities == {"zone": "z1"}
        b = other.group_member("/g", "b", capabilities=[1, 2], ttl=5)
        b.start()
        assert other.hub.streams == 1  # the watcher and the member share one stream
        assert other.lease_keeper.leases()[0].holders == 1  # a watcher holds no lease
        assert next_change(seen, JOINED, "b").capabilities == [1, 2]
        assert next_change(watched, JOINED, "b").capabilities == [1, 2]
        assert b.update_capabilities({"cpu": 8}) is True
        assert next_change(seen, UPDATED, "b").capabilities == {"cpu": 8}
        assert next_change(watched, UPDATED, "b").capabilities == {"cpu": 8}
        assert a.members() == {"a": {"zone": "z1"}, "b": {"cpu": 8}}
        assert b.leave()  # etcd confirmed the deletion
        assert next_change(seen, LEFT, "b").capabilities is None
        assert next_change(watched, LEFT, "b").identity == "b"
        assert other.get("/g/b") is None
        assert watcher.stop()
    assert a.members() == {"a": {"zone": "z1"}}
    assert GroupMember(conn, "/g", None).members() == {"a": {"zone": "z1"}}  # a read


def test_duplicate_identity_is_refused_here_and_elsewhere(
    conn: geventc.Connector, etcd: EtcdTestContext, conn_namespace: str
) -> None:
    first = conn.group_member("/dup", "x", ttl=5)
    first.start()
    with pytest.raises(MemberExists, match="'x'"):
        conn.group_member("/dup", "x", ttl=5).start()  # same connector, same lease
    with geventc.connect(etcd.endpoints, namespace=conn_namespace) as other:
        with pytest.raises(MemberExists):
            other.group_member("/dup", "x", ttl=5).start()
        assert other.lease_keeper.leases() == []  # the failed join let go of its lease
        assert first.leave()
        second = other.group_member("/dup", "x", capabilities="v2", ttl=5)
        second.start()  # free again once the first left
        assert GroupMember(conn, "/dup", None).members() == {"x": "v2"}
        second.stop()


def test_raw_values_and_deeper_keys_never_crash(conn: geventc.Connector) -> None:
    conn.put("/raw/legacy", b"\xffnot json")
    conn.put("/raw/sub/deep", "1")  # not a member: deeper than path/<identity>
    watcher = GroupMember(conn, "/raw", None)
    seen = watcher.start()
    legacy = watcher.members()["legacy"]
    assert isinstance(legacy, RawValue) and legacy.endswith("not json")
    assert list(watcher.members()) == ["legacy"]
    assert isinstance(next_change(seen, JOINED, "legacy").capabilities, RawValue)
    conn.put("/raw/legacy", "[1]")
    assert next_change(seen, UPDATED, "legacy").capabilities == [1]
    watcher.stop()


def test_lost_lease_and_deleted_key_rejoin_by_themselves(conn: geventc.Connector) -> None:
    member = conn.group_member("/loss", "m", capabilities={"v": 1}, ttl=5)
    seen = member.start()
    old = conn.get("/loss/m")
    assert old is not None
    conn.revoke(old.lease)  # the server drops the lease and the key
    assert next_of(seen, GroupEvent).kind is JOINED  # the initial state
    assert next_change(seen, LOST, "m").identity == "m"
    assert next_change(seen, REJOINED, "m").capabilities == {"v": 1}
    again = conn.get("/loss/m")
    assert again is not None and again.lease not in (0, old.lease)
    assert again.value == b'{"v":1}' and member.joined
    conn.delete("/loss/m")
    assert "someone else" in next_change(seen, LOST, "m").reason
    next_change(seen, REJOINED, "m")
    assert conn.get("/loss/m") is not None
    assert member.update_capabilities({"v": 2}) is True
    assert next_change(seen, UPDATED, "m").capabilities == {"v": 2}
    assert member.stop()
    assert conn.get("/loss/m") is None


def test_a_dead_member_leaves_within_its_ttl(
    conn: geventc.Connector, etcd: EtcdTestContext, conn_namespace: str
) -> None:
    ttl = 2
    args = [",".join(etcd.endpoints), conn_namespace, "/dead", "doomed", str(ttl)]
    with python_process(MEMBER, *args) as process:
        assert next_line(process, 15) == "joined"
        watcher = GroupMember(conn, "/dead", None)
        seen = watcher.start()
        assert watcher.members() == {"doomed": {"pid": 1}}
        process.kill()
        killed = time.monotonic()
        next_change(seen, LEFT, "doomed", timeout=ttl + 5)
        took = time.monotonic() - killed
        assert took < ttl + 1.0, f"the dead member left after {took:.2f}s (ttl {ttl}s)"
        assert watcher.members() == {}


def test_own_key_left_on_an_old_lease_is_moved_not_refused(private_server: EtcdServer) -> None:
    ttl = 2
    with geventc.connect(private_server.endpoints, timeout=0.5) as conn:
        member = conn.group_member("/restart", "me", capabilities="c", ttl=ttl)
        seen = member.start()
        before = conn.get("/restart/me")
        assert before is not None
        private_server.kill(0)
        next_change(seen, SUSPENDED, "me", timeout=ttl + 5)  # a renewal is overdue
        next_change(seen, LOST, "me", timeout=ttl + 5)  # by the clock: TTL without renewal
        private_server.restart(0)  # the server kept the old lease and the key on it
        next_change(seen, REJOINED, "me", timeout=15)
        after = conn.get("/restart/me")
        assert after is not None and after.value == b'"c"'
        assert after.create_revision == before.create_revision  # moved, not re-created
        assert after.lease != before.lease and member.joined
        assert member.stop()


def test_leaving_while_etcd_is_down_is_not_called_a_success(private_server: EtcdServer) -> None:
    with geventc.connect(private_server.endpoints, timeout=0.5) as conn:
        member = conn.group_member("/down", "me", ttl=3)
        member.start()
        private_server.kill(0)
        started = time.monotonic()
        release = member.leave()
        assert time.monotonic() - started < conn.stop_timeout + 0.5
        assert not release and "delete the member key /down/me" in release.detail
        assert release.expires_in is not None and release.expires_in <= 3


def test_compaction_while_cut_off_reports_the_difference(private_server: EtcdServer) -> None:
    gate = Gate(private_server.endpoint)
    try:
        with (
            geventc.connect(private_server.endpoints, namespace="app") as admin,
            geventc.connect([gate.endpoint], namespace="app", timeout=1.0) as cut,
        ):
            for name, caps in (("keep", 1), ("gone", 2), ("changed", 3)):
                admin.put(f"/grp/{name}", json.dumps(caps))
            watcher = GroupMember(cut, "/grp", None)
            seen = watcher.start()
            assert watcher.members() == {"keep": 1, "gone": 2, "changed": 3}
            first = [next_of(seen, GroupEvent) for _ in range(3)]  # the first state, sorted
            assert [(e.kind, e.identity) for e in first] == [
                (JOINED, "changed"),
                (JOINED, "gone"),
                (JOINED, "keep"),
            ]
            gate.close()  # the watcher is cut off from here on
            assert next_of(seen, RecipeError, timeout=10).error is not None
            admin.delete("/grp/gone")
            admin.put("/grp/new", "4")
            admin.put("/grp/changed", "30")
            admin.put("/grp/flapped", "5")
            admin.delete("/grp/flapped")
            admin.compact(admin.put("/elsewhere", "x").header.revision)
            gate.open()
            changes = [next_of(seen, GroupEvent, timeout=15) for _ in range(3)]
            assert [(e.kind, e.identity, e.capabilities) for e in changes] == [
                (LEFT, "gone", None),  # the difference after the re-read, LEFT first
                (UPDATED, "changed", 30),
                (JOINED, "new", 4),  # "flapped" came and went unseen: nothing to say
            ]
            assert watcher.members() == {"keep": 1, "changed": 30, "new": 4}
            watcher.stop()
    finally:
        gate.close()


def test_a_watcher_that_cannot_read_the_members_does_not_start() -> None:
    with geventc.connect([f"http://127.0.0.1:{free_port()}"], timeout=0.5) as conn:
        watcher = GroupMember(conn, "/g", None)
        started = time.monotonic()
        with pytest.raises(EtcdError):
            watcher.start()
        assert time.monotonic() - started < 3.0
        assert not watcher.running and watcher.channel.closed and conn.hub.streams == 0


def test_life_cycle_and_bad_input(conn: geventc.Connector) -> None:
    with conn.group_member("/cm", "solo", ttl=5) as member:
        assert member.start() is member.channel  # inside ``with``: the same channel
        assert member.members() == {"solo": None} and member.revision > 0
    assert conn.get("/cm/solo") is None and not member.running
    with pytest.raises(RecipeStateError, match="already started"):
        member.join()  # a member that left is not re-joined; make a new one
    with pytest.raises(RecipeStateError, match="started"):
        member.update_capabilities({})
    with pytest.raises(RecipeStateError, match="watcher"):
        GroupMember(conn, "/cm", None).update_capabilities({})
    for identity in ("", "a/b", 5, "x" * 1025):
        with pytest.raises(InvalidArgument, match="identity"):
            conn.group_member("/g", identity)  # type: ignore[arg-type]
    for caps in ({"x": object()}, float("nan"), {1: 2, "a": 3}):
        with pytest.raises(InvalidArgument, match="capabilities"):
            conn.group_member("/g", "a", capabilities=caps)
    with pytest.raises(InvalidArgument, match="watcher"):
        GroupMember(conn, "/g", None, capabilities={"a": 1})
    with pytest.raises(InvalidArgument, match="ttl"):
        conn.group_member("/g", "a", ttl=0)
    for path in ("/", "", "///"):
        with pytest.raises(InvalidArgument, match="path"):
            conn.group_member(path, "a")
    with pytest.raises(InvalidArgument, match="Connector"):
        GroupMember("http://localhost:2379", "/g", "a")  # type: ignore[arg-type]
    live = conn.group_member("/g2", "a", capabilities={"k": [1]})
    live.start()
    with pytest.raises(InvalidArgument, match="capabilities"):
        live.update_capabilities({"bad": {1, 2}})
    assert json.loads(conn.get("/g2/a").value) == {"k": [1]}  # type: ignore[union-attr]
    live.stop()
    assert live.stop()  # idempotent
