"""LeaderElector against a real etcd: campaign, hand-over, fencing, faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import gevent
import pytest
from helpers.channels import next_status, wait_for
from helpers.waiting import wait_until

import geventc
from geventc import ElectionStatus, Op
from geventc.errors import InvalidArgument, NotLeader, RecipeStateError
from geventc.testing import EtcdServer
from geventc.testing.plugin import EtcdTestContext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_single_candidate_leads_with_a_fencing_token(conn: geventc.Connector) -> None:
    elector = conn.leader_elector("/election", "alpha", ttl=5)
    elector.start()
    event = next_status(elector)
    assert event.status is ElectionStatus.LEADER and event.leader == "alpha"
    (kv,) = conn.get_prefix("/election/").kvs
    assert event.fencing_token == kv.create_revision and kv.value == b"alpha"
    assert kv.key == b"/election/" + f"{kv.lease:x}".encode()
    assert conn.time_to_live(kv.lease).granted_ttl == 5  # the TTL asked for is honoured
    assert elector.leader() == "alpha" and elector.is_leader
    elector.stop()
    assert conn.get_prefix("/election/").kvs == ()
    assert list(elector.channel) == []


def test_follower_takes_over_at_once_on_resign(conn: geventc.Connector) -> None:
    first = conn.leader_elector("/e", "first")
    first.start()
    assert next_status(first).status is ElectionStatus.LEADER
    second = conn.leader_elector("/e", "second")
    second.start()
    event = next_status(second)
    assert event.status is ElectionStatus.FOLLOWER and event.leader == "first"
    assert second.leader() == "first"
    started = time.monotonic()
    first.stop()
    event = wait_for(second, ElectionStatus.LEADER, timeout=5)
    handover = time.monotonic() - started
    assert event.leader == "second" and handover < 1.0, f"hand-over took {handover:.3f}s"
    second.stop()


def test_candidates_started_together_in_one_process_get_distinct_revisions(
    conn: geventc.Connector,
) -> None:
    # their claims are sent at the same moment: a coalescing client must still give each
    # its own revision (one shared revision would make both the first)
    electors = [conn.leader_elector("/together", f"c{i}", ttl=5) for i in range(6)]
    for elector in electors:
        elector.start()
    statuses = [next_status(elector).status for elector in electors]
    assert statuses.count(ElectionStatus.LEADER) == 1
    kvs = conn.get_prefix("/together/").kvs
    assert len({kv.create_revision for kv in kvs}) == 6
    for elector in electors:
        elector.stop()


def test_three_candidates_queue_in_order(conn: geventc.Connector) -> None:
    electors = [conn.leader_elector("/q", f"c{i}") for i in range(3)]
    for elector in electors:
        elector.start()
        next_status(elector)
    assert [e.status for e in electors] == [ElectionStatus.LEADER] + [ElectionStatus.FOLLOWER] * 2
    electors[0].stop()
    assert wait_for(electors[1], ElectionStatus.LEADER).leader == "c1"
    assert wait_for(electors[2], ElectionStatus.FOLLOWER).leader == "c1"
    electors[1].stop()
    assert wait_for(electors[2], ElectionStatus.LEADER).leader == "c2"
    electors[2].stop()


def test_guarded_writes_fence_a_stale_leader(conn: geventc.Connector) -> None:
    leader = conn.leader_elector("/g", "l1")
    leader.start()
    token = wait_for(leader, ElectionStatus.LEADER).fencing_token
    leader.txn([Op.put("/resource", "written by l1")])
    stale_guard = leader.guard()
    follower = conn.leader_elector("/g", "l2")
    follower.start()
    wait_for(follower, ElectionStatus.FOLLOWER)
    with pytest.raises(NotLeader):
        follower.guard()
    with pytest.raises(NotLeader):
        follower.txn([Op.put("/resource", "written by l2 as follower")])
    leader.stop()
    new_token = wait_for(follower, ElectionStatus.LEADER).fencing_token
    assert new_token > token
    # the old leader's guard no longer holds: a fenced write by it is refused
    assert not conn.txn([stale_guard], [Op.put("/resource", "stale")]).succeeded
    assert conn.txn([conn.txn_guard(follower)], [Op.put("/resource", "via txn_guard")]).succeeded
    follower.txn([Op.put("/resource", "written by l2")])
    kv = conn.get("/resource")
    assert kv is not None and kv.value == b"written by l2"
    follower.stop()


def test_deleted_key_suspends_the_leader_then_it_campaigns_again(conn: geventc.Connector) -> None:
    elector = conn.leader_elector("/del", "victim")
    elector.start()
    first = wait_for(elector, ElectionStatus.LEADER)
    conn.delete_prefix("/del/")  # someone deletes the leader key behind its back
    suspended = next_status(elector)
    assert suspended.status is ElectionStatus.SUSPENDED and isinstance(suspended.error, NotLeader)
    again = wait_for(elector, ElectionStatus.LEADER)
    assert again.fencing_token > first.fencing_token and elector.is_leader
    elector.stop()


def test_life_cycle_and_bad_input(conn: geventc.Connector) -> None:
    with conn.leader_elector("/life", "x") as elector:
        assert next_status(elector).status is ElectionStatus.LEADER
        assert elector.start() is elector.channel  # inside its with block: the same one
    elector.stop()  # idempotent
    with pytest.raises(RecipeStateError):
        elector.start()  # a stopped elector is not restarted; make a new one
    for bad in (lambda: conn.leader_elector("/e", ""), lambda: conn.leader_elector("/e", 5)):  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="identity"):
            bad()
    with pytest.raises(InvalidArgument, match="ttl"):
        conn.leader_elector("/e", "x", ttl=0)
    with pytest.raises(InvalidArgument):
        conn.leader_elector("", "x")
    with pytest.raises(InvalidArgument, match="root"):
        conn.leader_elector("/", "x")


def _participant(endpoints: list[str], path: str, identity: str, ttl: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.helpers.participant",
            ",".join(endpoints),
            path,
            identity,
            str(ttl),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def _read_event(process: subprocess.Popen[str], timeout: float = 15.0) -> dict[str, object]:
    assert process.stdout is not None
    with gevent.Timeout(timeout):
        line = process.stdout.readline()
    assert line, "the participant exited"
    return json.loads(line)  # type: ignore[no-any-return]


def test_crashed_leader_is_replaced_within_ttl(etcd: EtcdTestContext) -> None:
    ttl = 3
    path = etcd.key("crash")
    other = _participant(etcd.endpoints, path, "doomed", ttl)
    try:
        assert _read_event(other)["status"] == "LEADER"
        with geventc.connect(etcd.endpoints) as conn:
            elector = conn.leader_elector(path, "survivor", ttl=ttl)
            elector.start()
            assert wait_for(elector, ElectionStatus.FOLLOWER).leader == "doomed"
            other.kill()
            killed = time.monotonic()
            wait_for(elector, ElectionStatus.LEADER, timeout=ttl + 5)
            took = time.monotonic() - killed
            assert took < ttl + 1.0, f"replacement took {took:.2f}s for ttl {ttl}s"
    finally:
        other.kill()
        other.wait()


def test_paused_leader_reports_lost_first_when_resumed(etcd: EtcdTestContext) -> None:
    ttl = 3
    path = etcd.key("pause")
    paused = _participant(etcd.endpoints, path, "sleeper", ttl)
    try:
        assert _read_event(paused)["status"] == "LEADER"
        with geventc.connect(etcd.endpoints) as conn:
            elector = conn.leader_elector(path, "awake", ttl=ttl)
            elector.start()
            assert wait_for(elector, ElectionStatus.FOLLOWER).leader == "sleeper"
            paused.send_signal(signal.SIGSTOP)
            assert wait_for(elector, ElectionStatus.LEADER, timeout=ttl + 5).leader == "awake"
            paused.send_signal(signal.SIGCONT)
            first = _read_event(paused)
            assert first["status"] == "LOST", first
            after = _read_event(paused)
            assert after["status"] == "FOLLOWER" and after["leader"] == "awake", after
            elector.stop()
    finally:
        paused.kill()
        paused.wait()


def test_server_restart_suspends_then_leads_again(private_server: EtcdServer) -> None:
    with geventc.connect(private_server.endpoints, timeout=1.0) as conn:
        elector = conn.leader_elector("/restart", "only", ttl=4)
        elector.start()
        wait_for(elector, ElectionStatus.LEADER)
        private_server.kill(0)
        assert (
            wait_for(elector, ElectionStatus.SUSPENDED, timeout=10).status
            is ElectionStatus.SUSPENDED
        )
        with pytest.raises(NotLeader):
            elector.guard()  # a suspended leader must not act as leader
        private_server.restart(0)
        event = wait_for(elector, ElectionStatus.LEADER, timeout=20)
        assert event.leader == "only" and event.fencing_token > 0
        # if the outage outlived the lease, the elector re-campaigned with a new lease
        # and may report more changes; it must end up leading
        deadline = time.monotonic() + 15
        while not elector.is_leader:
            assert time.monotonic() < deadline, f"not leading: {elector.status}"
            next_status(elector, timeout=max(0.01, deadline - time.monotonic()))
        elector.stop()


@pytest.mark.parametrize(
    ("ttl", "timeout", "fault"),
    [
        (5, 5.0, "kill"),
        pytest.param(15, 5.0, "kill", marks=pytest.mark.long),  # 20 s each
        (5, 5.0, "pause"),
        pytest.param(15, 5.0, "pause", marks=pytest.mark.long),
        (5, 30.0, "pause"),
    ],
)
def test_leader_is_suspended_on_time_when_etcd_fails(
    private_server: EtcdServer, ttl: int, timeout: float, fault: str
) -> None:
    """SUSPENDED at most TTL/3 + min(1 s, TTL/6) after the last renewal that succeeded
    was sent, whatever the request timeout, whether etcd refuses connections (killed) or
    holds them silently (paused); LOST once TTL seconds passed since then."""
    with geventc.connect(private_server.endpoints, timeout=timeout) as conn:
        elector = conn.leader_elector("/on-time", "holder", ttl=ttl)
        elector.start()
        wait_for(elector, ElectionStatus.LEADER)
        lease = elector.lease
        assert lease is not None
        renewals = lease.renewals
        wait_until(lambda: lease.renewals > renewals, ttl, "a renewal")
        # just after a renewal: the next one is due in TTL/3
        (private_server.kill if fault == "kill" else private_server.pause)(0)
        failed = time.monotonic()
        try:
            suspended = next_status(elector, timeout=ttl + 5)
            suspended_after = time.monotonic() - failed
            assert suspended.status is ElectionStatus.SUSPENDED, (suspended, suspended_after)
            assert not elector.is_leader
            lost = next_status(elector, timeout=ttl + 5)
            while lost.status is ElectionStatus.SUSPENDED:  # more failures, reported
                lost = next_status(elector, timeout=ttl + 5)
            lost_after = time.monotonic() - failed
        finally:
            private_server.resume(0)
        assert lost.status is ElectionStatus.LOST, lost
        print(
            f"ttl {ttl}, timeout {timeout}, {fault}: SUSPENDED after {suspended_after:.2f}s, "
            f"LOST after {lost_after:.2f}s"
        )
        promised = ttl / 3 + min(1.0, ttl / 6)
        assert suspended_after < promised + 1.0, f"SUSPENDED after {suspended_after:.2f}s"
        assert ttl - 0.5 < lost_after < ttl + 1.5, f"LOST after {lost_after:.2f}s"


@pytest.mark.parametrize("path", ["/x", "/x/"])
def test_the_path_is_used_as_given_like_go(conn: geventc.Connector, path: str) -> None:
    """As Go's concurrency.NewElection: key = path + "/" + lowercase hex lease id, so a
    trailing slash is part of the name ("/x/" keys "/x//<lease>")."""
    elector = conn.leader_elector(path, "go-like", ttl=5)
    elector.start()
    wait_for(elector, ElectionStatus.LEADER)
    (kv,) = conn.get_prefix(path + "/").kvs
    assert kv.key == (path + "/" + f"{kv.lease:x}").encode()
    assert elector.path == path.encode()
    if path == "/x/":
        assert conn.get_prefix("/x/").kvs == (kv,)  # nothing at /x/<lease>
        # as in Go, "/x//<lease>" also lies under "/x/": a "/x" candidate waits behind it
        with conn.leader_elector("/x", "plain", ttl=5) as plain:
            assert wait_for(plain, ElectionStatus.FOLLOWER).leader == "go-like"
    elector.stop()
    assert conn.get_prefix(path + "/").kvs == ()


@pytest.mark.long  # 8-10 s: in .ci/run's "-m long" step and the release matrix
def test_restart_with_data_kept_does_not_follow_its_own_old_key(
    private_server: EtcdServer,
) -> None:
    ttl = 6
    with geventc.connect(private_server.endpoints, timeout=1.0) as conn:
        elector = conn.leader_elector("/own", "only", ttl=ttl)
        elector.start()
        wait_for(elector, ElectionStatus.LEADER)
        assert elector.lease is not None
        old_lease = elector.lease.id
        private_server.kill(0)
        wait_for(elector, ElectionStatus.LOST, timeout=ttl + 5)
        private_server.restart(0)  # the server kept the old lease (and its key) alive
        restarted = time.monotonic()
        while True:
            event = next_status(elector, timeout=ttl + 5)
            if event.status is not ElectionStatus.SUSPENDED:
                break
        took = time.monotonic() - restarted
        assert event.status is ElectionStatus.LEADER, f"{event} (it followed its own old key)"
        # within the re-grant's backoff after the outage, not a TTL behind its old key
        assert took < ttl, f"leading again took {took:.2f}s"
        keys = [kv.key for kv in conn.get_prefix("/own/").kvs]
        assert keys == [b"/own/" + f"{elector.lease.id:x}".encode()]
        wait_until(lambda: old_lease not in conn.leases(), 5, "revoking the old lease")
        elector.stop()
