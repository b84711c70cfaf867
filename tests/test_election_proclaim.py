"""LeaderElector.proclaim: Go's ``Election.Proclaim`` (a new value, no new election)."""

from __future__ import annotations

import pytest
from helpers.channels import next_status, wait_for

import geventc
from geventc import ElectionStatus
from geventc.errors import InvalidArgument, NotLeader


def test_a_leader_proclaims_a_value_its_followers_see_and_keeps_its_token(
    conn: geventc.Connector,
) -> None:
    leader = conn.leader_elector("/p", "a", ttl=5)
    follower = conn.leader_elector("/p", "b", ttl=5)
    try:
        leader.start()
        led = wait_for(leader, ElectionStatus.LEADER)
        follower.start()
        assert next_status(follower).leader == "a"
        before = {kv.value: kv for kv in conn.get_prefix("/p/").kvs}[b"a"]

        leader.proclaim("a-v2")
        event = next_status(follower)
        assert (event.status, event.leader) == (ElectionStatus.FOLLOWER, "a-v2")
        again = next_status(leader)  # the leader's value changed: reported, same token
        assert (again.status, again.leader) == (ElectionStatus.LEADER, "a-v2")
        assert again.fencing_token == led.fencing_token == leader.fencing_token
        (kv,) = (kv for kv in conn.get_prefix("/p/").kvs if kv.key == before.key)
        assert kv.value == b"a-v2" and kv.create_revision == before.create_revision
        assert kv.lease == before.lease and leader.leader() == follower.leader() == "a-v2"
    finally:
        leader.stop()
        follower.stop()


def test_a_waiting_candidate_proclaims_its_own_value_as_go_allows(
    conn: geventc.Connector,
) -> None:
    first = conn.leader_elector("/w", "first", ttl=5)
    second = conn.leader_elector("/w", "second", ttl=5)
    try:
        first.start()
        assert next_status(first).status is ElectionStatus.LEADER
        second.start()
        assert next_status(second).status is ElectionStatus.FOLLOWER
        second.proclaim("second-v2")
        assert first.is_leader and first.leader() == "first"  # the leader is unchanged
        values = sorted(kv.value for kv in conn.get_prefix("/w/").kvs)
        assert values == [b"first", b"second-v2"]
        first.stop()
        event = wait_for(second, ElectionStatus.LEADER)
        assert event.leader == "second-v2"
    finally:
        first.stop()
        second.stop()


def test_proclaim_without_a_key_or_with_a_bad_value_is_refused(conn: geventc.Connector) -> None:
    elector = conn.leader_elector("/r", "me", ttl=5)
    with pytest.raises(NotLeader):
        elector.proclaim("x")  # not started: no key
    elector.start()
    assert next_status(elector).status is ElectionStatus.LEADER
    for bad in ("", None, b"x", 3):
        with pytest.raises(InvalidArgument):
            elector.proclaim(bad)  # type: ignore[arg-type]
    elector.proclaim("me-v2")
    assert [kv.value for kv in conn.get_prefix("/r/").kvs] == [b"me-v2"]
    elector.stop()
    with pytest.raises(NotLeader):
        elector.proclaim("x")  # stopped
