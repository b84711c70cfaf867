"""Partitioner against a real etcd: complete and disjoint shares, re-balancing on join
and on a member's death, lease loss, bad input."""

from __future__ import annotations

import time
from collections.abc import Iterable

import gevent
import pytest
from helpers.channels import next_of
from helpers.process import python_process
from helpers.waiting import wait_until

import geventc
from geventc.errors import InvalidArgument, MemberExists, RecipeStateError
from geventc.recipes.partitioner import Partitioner, PartitionEvent, PartitionState, partition
from geventc.testing import EtcdServer
from geventc.testing.plugin import EtcdTestContext

ITEMS = [f"item-{i:02d}" for i in range(10)]
ACQUIRED, RELEASE = PartitionState.ACQUIRED, PartitionState.RELEASE

#: A partitioner in its own process (auto_release): prints each state, waits to be killed.
MEMBER = """
from gevent import monkey; monkey.patch_all()
import sys, geventc
from geventc.recipes.partitioner import Partitioner, PartitionEvent
endpoints, namespace, path, identity, ttl, items = sys.argv[1:7]
conn = geventc.connect(endpoints.split(","), namespace=namespace)
part = Partitioner(conn, path, items.split(","), identity, ttl=int(ttl), auto_release=True)
for event in part.start():
    if isinstance(event, PartitionEvent):
        print(event.state.value, flush=True)
"""


class Caller:
    """Drives a partitioner as kazoo's callers do: answers RELEASE with release_set()
    and records every state."""

    def __init__(self, part: Partitioner) -> None:
        self.part = part
        self.states: list[PartitionState] = []
        part.start()
        self._greenlet = gevent.spawn(self._follow)

    def _follow(self) -> None:
        for event in self.part.channel:
            if isinstance(event, PartitionEvent):
                self.states.append(event.state)
                if event.state is RELEASE:
                    self.part.release_set()


def settled(parts: Iterable[Partitioner], members: set[str]) -> bool:
    """Every partitioner ACQUIRED its share among exactly ``members``."""
    return all(p.state is ACQUIRED and set(p.members) == members for p in parts)


def owners(conn: geventc.Connector, path: str) -> dict[str, str]:
    """item -> owner identity, as etcd has them."""
    prefix = f"{path}/items/"
    return {kv.key.decode()[len(prefix) :]: kv.value_str for kv in conn.get_prefix(prefix).kvs}


def assert_split(conn: geventc.Connector, path: str, parts: list[Partitioner]) -> None:
    """The parts own disjoint shares covering every item, as the partition function
    deals them, and etcd says the same."""
    members = sorted(parts[0].members)
    shares = [set(p.items) for p in parts]
    assert set().union(*shares) == set(ITEMS)
    assert sum(len(s) for s in shares) == len(ITEMS)  # disjoint
    for p in parts:
        assert p.items == partition(p.identity, members, ITEMS)
    expected = {item: p.identity for p in parts for item in p.items}
    assert owners(conn, path) == expected


def test_three_members_then_a_fourth_rebalance_completely_and_disjointly(
    conn: geventc.Connector, etcd: EtcdTestContext, conn_namespace: str
) -> None:
    callers = [Caller(conn.partitioner("/p", ITEMS, f"m{i}", ttl=5)) for i in range(3)]
    parts = [c.part for c in callers]
    wait_until(lambda: settled(parts, {"m0", "m1", "m2"}), 10, "three members acquire")
    assert_split(conn, "/p", parts)
    assert [len(p.items) for p in parts] == [4, 3, 3]
    with geventc.connect(etcd.endpoints, namespace=conn_namespace) as other:
        fourth = Caller(other.partitioner("/p", ITEMS, "m3", ttl=5))
        everyone = [*parts, fourth.part]
        wait_until(lambda: settled(everyone, {"m0", "m1", "m2", "m3"}), 10, "four acquire")
        assert_split(conn, "/p", everyone)
        for caller in callers:  # each released and re-allocated for the fourth
            assert caller.states[-3:] == [RELEASE, PartitionState.ALLOCATING, ACQUIRED]
        assert fourth.states[-1] is ACQUIRED and RELEASE not in fourth.states
        assert fourth.part.stop()  # etcd confirmed: its items and member key are gone
        wait_until(lambda: settled(parts, {"m0", "m1", "m2"}), 10, "three again")
        assert_split(conn, "/p", parts)
    assert all(p.stop() for p in parts)
    assert conn.get_prefix("/p/").kvs == ()


def test_a_dead_members_items_are_taken_over_within_its_ttl(
    conn: geventc.Connector, etcd: EtcdTestContext, conn_namespace: str
) -> None:
    ttl = 2
    args = [",".join(etcd.endpoints), conn_namespace, "/dead", "doomed", str(ttl), ",".join(ITEMS)]
    with python_process(MEMBER, *args) as process:
        parts = [conn.partitioner("/dead", ITEMS, name, ttl=ttl) for name in ("alive-1", "alive-2")]
        for p in parts:
            Caller(p)
        everyone = {"alive-1", "alive-2", "doomed"}
        wait_until(lambda: settled(parts, everyone), 15, "three members acquire")
        doomed_share = set(partition("doomed", everyone, ITEMS))
        wait_until(
            lambda: {i for i, o in owners(conn, "/dead").items() if o == "doomed"} == doomed_share,
            10,
            "the member in its own process acquires",
        )
        process.kill()
        killed = time.monotonic()
        wait_until(lambda: settled(parts, {"alive-1", "alive-2"}), ttl + 5, "take-over")
        took = time.monotonic() - killed
        assert took < ttl + 1.5, f"its items were taken over after {took:.2f}s (ttl {ttl}s)"
        assert_split(conn, "/dead", parts)
        assert all(p.stop() for p in parts)


def test_an_item_deleted_by_someone_else_means_release(conn: geventc.Connector) -> None:
    part = conn.partitioner("/del", ["a", "b"], "solo", ttl=5)
    seen = part.start()
    wait_until(lambda: part.state is ACQUIRED, 5, "acquired")
    conn.delete("/del/items/a")
    event = next_of(seen, PartitionEvent)
    while event.state is not RELEASE:
        event = next_of(seen, PartitionEvent)
    assert "a" in event.reason and event.items == ("b",)
    part.release_set()
    wait_until(lambda: part.state is ACQUIRED and part.items == ("a", "b"), 5, "again")
    assert owners(conn, "/del") == {"a": "solo", "b": "solo"}
    assert part.stop()


def test_lost_lease_is_failure_and_owns_nothing(conn: geventc.Connector) -> None:
    part = Partitioner(conn, "/f", ["x", "y"], "solo", ttl=5, auto_release=True)
    seen = part.start()
    wait_until(lambda: part.acquired, 5, "acquired")
    assert part.items == ("x", "y")
    conn.revoke(conn.get("/f/items/x").lease)  # type: ignore[union-attr]
    events = [e for e in seen if isinstance(e, PartitionEvent)]  # ends: it stops
    assert events[-1].state is PartitionState.FAILURE and events[-1].items == ()
    assert not part.running and part.items == () and not part.acquired
    assert conn.get_prefix("/f/").kvs == ()


def test_suspended_then_failure_when_etcd_goes_away(private_server: EtcdServer) -> None:
    ttl = 2
    with geventc.connect(private_server.endpoints, timeout=0.5) as conn:
        part = conn.partitioner("/s", ["x"], "solo", ttl=ttl)
        seen = part.start()
        wait_until(lambda: part.acquired, 5, "acquired")
        private_server.kill(0)
        suspended = next_of(seen, PartitionEvent, ttl + 2)
        while not suspended.suspended:
            suspended = next_of(seen, PartitionEvent, ttl + 2)
        assert suspended.state is ACQUIRED and suspended.items == ("x",)
        assert not part.acquired  # a caller checking before each step pauses now
        events = [e for e in seen if isinstance(e, PartitionEvent)]  # ends: it stops
        assert events[-1].state is PartitionState.FAILURE and events[-1].items == ()
        assert not part.running and part.items == ()


def test_automatic_release_and_bad_input(conn: geventc.Connector) -> None:
    a = Partitioner(conn, "/auto", ITEMS, "a", ttl=5, auto_release=True)
    a.start()
    wait_until(lambda: a.state is ACQUIRED and len(a.items) == 10, 5, "a owns everything")
    with pytest.raises(RecipeStateError, match="RELEASE"):
        a.release_set()  # only the answer to RELEASE
    with pytest.raises(MemberExists):
        conn.partitioner("/auto", ITEMS, "a", ttl=5).start()
    with Partitioner(conn, "/auto", ITEMS, "b", ttl=5, auto_release=True) as b:
        wait_until(lambda: settled([a, b], {"a", "b"}), 10, "a and b split")
        assert_split(conn, "/auto", [a, b])
    wait_until(lambda: settled([a], {"a"}), 10, "a alone again")
    assert a.items == tuple(ITEMS)
    a.stop()
    with pytest.raises(RecipeStateError, match="started"):
        a.release_set()
    for items in ("abc", b"ab", 5, [""], ["a/b"], [1], ["x" * 1025]):
        with pytest.raises(InvalidArgument, match="item"):
            conn.partitioner("/b", items, "m")  # type: ignore[arg-type]
    for identity in ("", "a/b", None):
        with pytest.raises(InvalidArgument, match="identity"):
            conn.partitioner("/b", ITEMS, identity)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="ttl"):
        conn.partitioner("/b", ITEMS, "m", ttl=0)
    with pytest.raises(InvalidArgument, match="path"):
        conn.partitioner("/", ITEMS, "m")
    with pytest.raises(InvalidArgument, match="auto_release"):
        Partitioner(conn, "/b", ITEMS, "m", auto_release="yes")  # type: ignore[arg-type]
    assert partition("m", ["m"], []) == () and partition("x", ["m"], ITEMS) == ()
    empty = conn.partitioner("/none", [], "m", ttl=5)
    empty.start()
    wait_until(lambda: empty.state is ACQUIRED, 5, "an empty set is acquired at once")
    assert empty.items == () and empty.stop()
