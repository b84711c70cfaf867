"""Go ``concurrency.Election`` and geventc ``LeaderElector`` candidates in one election.

Each test runs real Go candidates (etcd's own ``client/v3/concurrency``, pinned in
``go.mod``) and geventc candidates on the same path against the same etcd, in both
orders (Go first, geventc first), and checks that:

- exactly one candidate leads at a time: a candidate of the other kind that joins
  waits, and takes over as soon as the leader resigns;
- Go's ``Election.Leader`` names geventc's candidate when it leads, with its key and
  create revision (geventc's fencing token);
- every candidate's key is Go's layout, ``path + "/" + lowercase hex lease id``.

The path is used as given, as Go does; with a trailing slash (``/x/``) the keys are
``/x//<lease>`` (issue 11).
"""

from __future__ import annotations

import time

import pytest
from gopeer import GoPeer, GoPeers, only

import geventc
from geventc import ElectionEvent, ElectionStatus, LeaderElector
from geventc.errors import ChannelTimeout
from geventc.testing.plugin import EtcdTestContext

TTL = 5
QUIET = 1.5  # seconds a candidate that must not lead is watched for


def next_status(elector: LeaderElector, timeout: float = 10.0) -> ElectionEvent:
    """The elector's next ElectionEvent (RecipeError reports skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            event = elector.channel.get(timeout=max(0.01, deadline - time.monotonic()))
        except ChannelTimeout:
            raise AssertionError(
                f"no ElectionEvent from {elector!r} within {timeout:.1f} s"
            ) from None
        if isinstance(event, ElectionEvent):
            return event


def wait_status(
    elector: LeaderElector, status: ElectionStatus, timeout: float = 10.0
) -> ElectionEvent:
    """The elector's next event with ``status``; any LEADER before it fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        event = next_status(elector, deadline - time.monotonic())
        if event.status is status:
            return event
        assert event.status is not ElectionStatus.LEADER, (
            f"{elector!r} reported LEADER while waiting for {status.name}: {event}"
        )


class Election:
    """The candidates of one election path, Go and geventc."""

    def __init__(
        self, conn: geventc.Connector, go_peers: GoPeers, endpoints: list[str], path: str
    ) -> None:
        self.conn = conn
        self.go_peers = go_peers
        self.endpoints = endpoints
        self.path = path
        self.electors: list[LeaderElector] = []

    def go_candidate(self, identity: str) -> GoPeer:
        """A Go candidate whose key exists (it printed ``campaigning``)."""
        peer = self.go_peers.start(
            "campaign", endpoints=self.endpoints, path=self.path, identity=identity, ttl=TTL
        )
        session = peer.expect("session")
        campaigning = peer.expect("campaigning")
        assert campaigning["key"] == f"{self.path}/{session['lease']}"
        return peer

    def py_candidate(self, identity: str) -> LeaderElector:
        """A started geventc candidate."""
        elector = self.conn.leader_elector(self.path, identity, ttl=TTL)
        self.electors.append(elector)
        elector.start()
        return elector

    def go_leader(self) -> dict[str, object]:
        """What Go's ``Election.Leader`` reports now."""
        lines = self.go_peers.run("leader", endpoints=self.endpoints, path=self.path)
        return only(lines, "leader")

    def assert_go_key_layout(self, *identities: str) -> None:
        """Each candidate's key (found by its value anywhere under the path string) is
        exactly ``path + "/" + hex lease``, as Go's concurrency package writes it."""
        kvs = {kv.value_str: kv for kv in self.conn.get_prefix(self.path).kvs}
        for identity in identities:
            assert identity in kvs, f"no key holds {identity!r}: {sorted(kvs)}"
            kv = kvs[identity]
            assert kv.key.decode() == f"{self.path}/{kv.lease:x}", (
                f"{identity!r} keyed {kv.key.decode()!r}; Go's layout is "
                f"{self.path!r} + '/' + hex lease = {self.path}/{kv.lease:x}"
            )

    def assert_go_waits(self, peer: GoPeer, leader: LeaderElector) -> None:
        """The Go candidate does not lead while the geventc candidate does."""
        peer.assert_quiet(
            "leader",
            QUIET,
            reason=f"Go and geventc both lead {self.path!r}",
        )
        assert leader.is_leader, f"{leader!r} stopped leading: {leader.status}"

    def py_key(self, identity: str) -> tuple[str, int]:
        """The key and create revision of a geventc candidate."""
        (kv,) = (kv for kv in self.conn.get_prefix(self.path).kvs if kv.value_str == identity)
        return kv.key.decode(), kv.create_revision

    def stop(self) -> None:
        """Stop every geventc candidate still running."""
        for elector in self.electors:
            elector.stop()


def go_first(election: Election) -> None:
    """Go leads, geventc follows, takes over on resign, and a later Go candidate waits."""
    go1 = election.go_candidate("go-1")
    lead = go1.expect("leader")
    assert lead["key"] == f"{election.path}/{lead['lease']}"

    py = election.py_candidate("py-1")
    event = next_status(py)
    assert event.status is ElectionStatus.FOLLOWER, (
        f"geventc must follow the Go leader {lead['key']!r}; it reported {event}"
    )
    assert event.leader == "go-1" and py.leader() == "go-1"
    assert election.go_leader()["value"] == "go-1"

    go1.stop()
    assert go1.expect("resigned")
    event = wait_status(py, ElectionStatus.LEADER)
    assert event.leader == "py-1"
    key, revision = election.py_key("py-1")
    assert event.fencing_token == revision

    go2 = election.go_candidate("go-2")
    election.assert_go_waits(go2, py)
    reported = election.go_leader()
    assert (reported["value"], reported["key"], reported["rev"]) == ("py-1", key, revision)
    election.assert_go_key_layout("py-1", "go-2")

    py.stop()
    go2.expect("leader")
    assert election.go_leader()["value"] == "go-2"


def geventc_first(election: Election) -> None:
    """geventc leads, a Go candidate waits and takes over on stop, geventc follows it."""
    py1 = election.py_candidate("py-1")
    event = wait_status(py1, ElectionStatus.LEADER)
    key, revision = election.py_key("py-1")
    assert event.fencing_token == revision

    go1 = election.go_candidate("go-1")
    election.assert_go_waits(go1, py1)
    reported = election.go_leader()
    assert (reported["value"], reported["key"], reported["rev"]) == ("py-1", key, revision)
    election.assert_go_key_layout("py-1", "go-1")

    py1.stop()
    lead = go1.expect("leader")
    assert election.go_leader()["value"] == "go-1"

    py2 = election.py_candidate("py-2")
    event = next_status(py2)
    assert event.status is ElectionStatus.FOLLOWER, (
        f"geventc must follow the Go leader {lead['key']!r}; it reported {event}"
    )
    assert event.leader == "go-1"
    election.assert_go_key_layout("go-1", "py-2")

    go1.stop()
    event = wait_status(py2, ElectionStatus.LEADER)
    assert election.go_leader()["value"] == "py-2"


FLOWS = {"go-first": go_first, "geventc-first": geventc_first}


@pytest.mark.parametrize("order", sorted(FLOWS))
def test_go_and_geventc_share_one_election(
    etcd: EtcdTestContext, conn: geventc.Connector, go_peers: GoPeers, order: str
) -> None:
    """A plain path (no trailing slash): one leader at a time across Go and geventc,
    hand-over both ways, Go's key layout for geventc's key."""
    election = Election(conn, go_peers, etcd.endpoints, etcd.key("election"))
    try:
        FLOWS[order](election)
    finally:
        election.stop()


@pytest.mark.parametrize("order", sorted(FLOWS))
def test_trailing_slash_path_is_one_election_with_go(
    etcd: EtcdTestContext, conn: geventc.Connector, go_peers: GoPeers, order: str
) -> None:
    """Issue 11: a path ending in "/" is used as given, as Go does (keys ``path + "/" +
    hex lease``, i.e. ``/x//<lease>``), so Go and geventc never both lead."""
    election = Election(conn, go_peers, etcd.endpoints, etcd.key("slash") + "/")
    try:
        FLOWS[order](election)
    finally:
        election.stop()


# --- Observe and Proclaim ---------------------------------------------------------------


class Proclaiming(Election):
    """An election with a Go observer (``Election.Observe``) and Go candidates that
    proclaim on command (``campaign-proclaim``)."""

    def go_observer(self) -> GoPeer:
        """A running Go ``Election.Observe`` of the path."""
        peer = self.go_peers.start("observe", endpoints=self.endpoints, path=self.path)
        peer.expect("observing")
        return peer

    def go_candidate(self, identity: str) -> GoPeer:
        """A Go candidate whose key exists; ``send("proclaim V")`` proclaims V."""
        peer = self.go_peers.start(
            "campaign-proclaim",
            endpoints=self.endpoints,
            path=self.path,
            identity=identity,
            ttl=TTL,
        )
        session = peer.expect("session")
        assert peer.expect("campaigning")["key"] == f"{self.path}/{session['lease']}"
        return peer

    def go_proclaims(self, peer: GoPeer, value: str) -> None:
        """The Go candidate's ``Proclaim(value)`` succeeded."""
        peer.send(f"proclaim {value}")
        assert peer.expect("proclaimed")["value"] == value

    def py_candidate_key(self, elector: LeaderElector) -> tuple[str, int]:
        """The key and create revision of a geventc candidate, by its lease."""
        assert elector.lease is not None
        key = f"{self.path}/{elector.lease.id:x}"
        kv = self.conn.get(key)
        assert kv is not None, f"{elector!r} has no key {key!r}"
        return key, kv.create_revision


def observed(observer: GoPeer, key: str, value: str, rev: int) -> None:
    """Go's Observe printed the leader ``key`` (created at ``rev``) with ``value`` next."""
    line = observer.expect("observed")
    assert (line["key"], line["value"], line["rev"]) == (key, value, rev), (
        f"Go's Observe saw {line}; expected {key!r} = {value!r} (created at {rev})"
    )


def follows(elector: LeaderElector, value: str) -> None:
    """The geventc candidate's next event: FOLLOWER of a leader whose value is ``value``."""
    event = next_status(elector)
    assert (event.status, event.leader) == (ElectionStatus.FOLLOWER, value), event


def observe_geventc_first(election: Proclaiming) -> None:
    """Go's Observe, started before anyone campaigns, sees geventc's leader and each of
    its proclaims in order, then the Go candidate that takes over (with the value it
    proclaimed while waiting), whose proclaims a geventc follower sees too, then the
    geventc candidate the Go leader hands over to on resign."""
    observer = election.go_observer()
    py1 = election.py_candidate("py-1")
    led = wait_status(py1, ElectionStatus.LEADER)
    key, rev = election.py_candidate_key(py1)
    assert led.fencing_token == rev
    observed(observer, key, "py-1", rev)
    for value in ("py-1/v2", "py-1/v3"):
        py1.proclaim(value)
        observed(observer, key, value, rev)
    assert election.go_leader()["value"] == "py-1/v3"

    go1 = election.go_candidate("go-1")
    election.go_proclaims(go1, "go-1/waiting")  # Go may proclaim while it waits
    py1.stop()
    lead = go1.expect("leader")
    observed(observer, lead["key"], "go-1/waiting", lead["rev"])

    py2 = election.py_candidate("py-2")
    follows(py2, "go-1/waiting")
    election.go_proclaims(go1, "go-1/v2")
    follows(py2, "go-1/v2")
    observed(observer, lead["key"], "go-1/v2", lead["rev"])

    go1.stop()
    go1.expect("resigned")
    assert wait_status(py2, ElectionStatus.LEADER).leader == "py-2"
    key, rev = election.py_candidate_key(py2)
    observed(observer, key, "py-2", rev)


def observe_go_first(election: Proclaiming) -> None:
    """A Go leader's proclaims reach a geventc follower and Go's Observe (started while
    Go leads); the geventc candidate's proclaim while it waits is the value it leads
    with after the hand-over, and its proclaims as leader reach Go's Observe and
    ``Election.Leader``, with its key and create revision unchanged."""
    go1 = election.go_candidate("go-1")
    lead = go1.expect("leader")
    observer = election.go_observer()
    observed(observer, lead["key"], "go-1", lead["rev"])

    py1 = election.py_candidate("py-1")
    follows(py1, "go-1")
    election.go_proclaims(go1, "go-1/v2")
    follows(py1, "go-1/v2")
    observed(observer, lead["key"], "go-1/v2", lead["rev"])
    # an elector that does not campaign reads the leader's value as Go's Leader does
    assert election.conn.leader_elector(election.path, "reader").leader() == "go-1/v2"

    py1.proclaim("py-1/waiting")  # as Go allows: the waiting candidate's own value
    assert election.go_leader()["value"] == "go-1/v2"
    go1.stop()
    go1.expect("resigned")
    assert wait_status(py1, ElectionStatus.LEADER).leader == "py-1/waiting"
    key, rev = election.py_candidate_key(py1)
    observed(observer, key, "py-1/waiting", rev)

    py1.proclaim("py-1/v2")
    observed(observer, key, "py-1/v2", rev)
    reported = election.go_leader()
    assert (reported["value"], reported["key"], reported["rev"]) == ("py-1/v2", key, rev)
    assert py1.fencing_token == rev


OBSERVE_FLOWS = {"go-first": observe_go_first, "geventc-first": observe_geventc_first}


@pytest.mark.parametrize("order", sorted(OBSERVE_FLOWS))
def test_observe_and_proclaim_across_go_and_geventc(
    etcd: EtcdTestContext, conn: geventc.Connector, go_peers: GoPeers, order: str
) -> None:
    """Go's ``Election.Observe`` sees every leader and every proclaimed value in order,
    whichever kind leads; geventc followers see Go's ``Proclaim``; geventc's
    ``proclaim`` is Go's (same key, create revision and lease)."""
    election = Proclaiming(conn, go_peers, etcd.endpoints, etcd.key("observed"))
    try:
        OBSERVE_FLOWS[order](election)
    finally:
        election.stop()
