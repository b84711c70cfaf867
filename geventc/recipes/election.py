"""LeaderElector: etcd ``concurrency.Election`` semantics on a gevent channel.

Each candidate writes ``path + "/" + <lease-id-hex>`` = identity under its own lease;
the candidate whose key has the lowest create revision leads. Candidates follow the
election through one shared watch of ``path/`` and act only when the key ahead of them
goes away, so a change costs no herd of requests. The channel carries an
:class:`ElectionEvent` on every change of status or leader:

- ``LEADER`` (with ``fencing_token``: the leader key's create revision) after a
  linearizable check that no older candidate remains;
- ``FOLLOWER`` with the current leader's identity;
- ``SUSPENDED``: keep-alive is failing: a renewal has not succeeded by the time it
  should have (at most TTL/3 + ``min(1 s, TTL/6)`` after the last renewal that
  succeeded was sent, always before ``LOST``, whatever the request timeout); a leader
  must stop acting as leader now;
- ``LOST``: the lease has surely expired (TTL since the last renewal that succeeded
  was sent) or etcd no longer has it. The elector then campaigns again with a new
  lease, after deleting its own key left on the old one (the old lease is revoked
  too), so it never waits behind itself.

A process that was paused past its TTL reports ``LOST`` before anything else. Writes
that must only happen under leadership use :meth:`LeaderElector.guard` (or
:meth:`LeaderElector.txn`), which fail with :class:`NotLeader` for a stale leader.
``stop()`` resigns: the next candidate takes over at once.
:meth:`LeaderElector.proclaim` changes the candidate's value without another election,
as Go's ``Proclaim``. An elector that crashes (an unexpected exception in its greenlet)
reports it, resigns and revokes its lease: it stops, and never blocks the election.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event as Signal

from .. import contention, validate
from ..errors import EtcdError, InvalidArgument, LeaseNotFound, NotLeader
from ..lease import KeptLease, LeaseState
from ..retry import Backoff
from ..txn import Compare, Comparison, Op, TxnOp
from ..watch import PrefixUpdate
from ..wire import KeyValue, TxnResult
from .base import Recipe, Release
from .leftover import let_go

if TYPE_CHECKING:
    from ..host import RecipeHost


class ElectionStatus(enum.Enum):
    """A candidate's standing in the election."""

    LEADER = "LEADER"
    FOLLOWER = "FOLLOWER"
    SUSPENDED = "SUSPENDED"
    LOST = "LOST"


@dataclass(frozen=True, slots=True)
class ElectionEvent:
    """A change of this candidate's status or of the leader it knows. ``stale`` (for a
    ``FOLLOWER``) says the leader it knows could not be confirmed current for longer
    than the liveness bound: the election may have moved on meanwhile; a ``FOLLOWER``
    event with ``stale=False`` follows once it is current again."""

    status: ElectionStatus
    leader: str | None = None
    fencing_token: int = 0
    error: EtcdError | None = None
    stale: bool = False


class LeaderElector(Recipe[ElectionEvent]):
    """A candidate in the election at ``path``; see the module docstring.

    ``path`` is used exactly as given, as Go's ``concurrency.NewElection`` uses it: the
    candidates' keys are ``path + "/" + <lease id in lowercase hex>``, so Go and Python
    candidates given the same string share one election. A trailing slash is part of
    the name: ``"/x/"`` is the election of the keys ``/x//<id>``, not the same as
    ``"/x"`` (keys ``/x/<id>``). As in Go, the keys ``/x//<id>`` also lie under the
    prefix ``/x/``, so candidates of ``"/x"`` wait behind a ``"/x/"`` candidate that
    campaigned first, while candidates of ``"/x/"`` never see those of ``"/x"``: give
    an election one spelling, preferably without a trailing slash. A path that is
    empty or only slashes is refused with :class:`InvalidArgument`."""

    def __init__(self, conn: RecipeHost, path: str, identity: str, ttl: int = 10) -> None:
        super().__init__(conn)
        if not isinstance(identity, str) or not identity:
            raise InvalidArgument("identity must be a non-empty str")
        stored = conn.namespace.key(path, "path")
        self.path = conn.namespace.strip(stored)
        if not self.path.strip(b"/"):
            raise InvalidArgument("path must name an election, not the root")
        self.identity = identity
        self._value = identity  # what the key holds: the identity, or the last proclaimed
        self.ttl = validate.ttl(ttl)
        self._prefix = self.path + b"/"
        self._lease: KeptLease | None = None
        self._key = b""
        self._left: dict[bytes, int] = {}  # own keys left on lost leases -> their lease
        self._leftover: float | None = None  # after a failed resign: when the key expires
        self._stale = False  # the watch of the election could not be confirmed current
        self._lease_of_key = 0
        self._revision = 0
        self._state: dict[bytes, KeyValue] = {}
        self._state_revision = 0
        self._wake = Signal()
        self._last: ElectionEvent | None = None

    def __repr__(self) -> str:
        return f"LeaderElector({self.path.decode()!r}, {self.identity!r})"

    # --- public ------------------------------------------------------------------------

    def _start(self) -> None:
        """Campaign; the channel reports every change of status or leader."""
        self._begin()
        self._conn.hub.subscribe(self._prefix, self._on_change)
        self._spawn(self._campaign_forever)

    @property
    def status(self) -> ElectionStatus | None:
        """The status last reported (None before the first)."""
        return self._last.status if self._last else None

    @property
    def is_leader(self) -> bool:
        """True while this candidate leads and its lease is surely alive and renewed
        (False from the moment a renewal is overdue: SUSPENDED)."""
        return (
            self._last is not None
            and self._last.status is ElectionStatus.LEADER
            and self._lease is not None
            and self._lease.valid
            and self._lease.state is LeaseState.ACTIVE
        )

    @property
    def lease(self) -> KeptLease | None:
        """The lease this candidate's key is attached to (None before the first grant);
        its ``id`` changes when a lost lease is replaced."""
        return self._lease

    @property
    def fencing_token(self) -> int:
        """This candidate's key create revision while it leads, else 0."""
        return self._revision if self.is_leader else 0

    def leader(self) -> str | None:
        """The current leader's identity, or None when nobody campaigns."""
        if self._running and self._state_revision:
            first = self._first()
            return first.value_str if first else None
        result = self._conn.get_prefix(
            self._prefix, sort_target="CREATE", sort_order="ASCEND", limit=1
        )
        return result.kvs[0].value_str if result.kvs else None

    def guard(self) -> Comparison:
        """The comparison that lets a txn succeed only while this candidate leads;
        raises :class:`NotLeader` when it does not lead now."""
        if not self.is_leader:
            raise NotLeader(f"{self.identity!r} is not the leader of {self.path.decode()!r}")
        return contention.owns(self._key, self._revision)

    def txn(self, success: Iterable[TxnOp], failure: Iterable[TxnOp] = ()) -> TxnResult:
        """Run ``success`` only while this candidate leads (fenced by its key's create
        revision); raises :class:`NotLeader` when the guard fails."""
        result = self._conn.txn([self.guard()], success, failure)
        if not result.succeeded:
            raise NotLeader(f"{self.identity!r} lost the leadership of {self.path.decode()!r}")
        return result

    def proclaim(self, value: str) -> None:
        """Make ``value`` this candidate's value without another election, as Go's
        ``Election.Proclaim``: a put of its key guarded by the key's create revision, so
        followers (their ``FOLLOWER`` event's ``leader``), :meth:`leader` and Go's
        ``Observe``/``Leader`` see the new value, and the fencing token stays. As in Go,
        it works once the candidate's key exists (while it leads, or waits its turn);
        raises :class:`NotLeader` when the candidate holds no key (not started, stopped,
        between a lost lease and its next key) or its key is no longer the one it
        created. A campaign after a lost lease uses the last value proclaimed."""
        if not isinstance(value, str) or not value:
            raise InvalidArgument("value must be a non-empty str")
        key, revision, lease_id = self._key, self._revision, self._lease_of_key
        if not (self._running and key):
            raise NotLeader(f"{self.identity!r} holds no key in {self.path.decode()!r}")
        result = self._conn.txn(
            [contention.owns(key, revision)], [Op.put(key, value, lease=lease_id)]
        )
        if not result.succeeded:
            raise NotLeader(f"the election key of {self.identity!r} is gone")
        self._value = value

    # --- campaign ----------------------------------------------------------------------

    def _campaign_forever(self) -> None:
        backoff = Backoff(first=0.1)
        while self._running:
            try:
                if self._lease is None:
                    self._lease = self._conn.lease_keeper.acquire(
                        self.ttl, self._on_lease, shared=False
                    )
                if self._key and self._lease.id != self._lease_of_key:
                    self._report_status(ElectionStatus.LOST)  # the old lease expired
                    self._leave_key()
                if not self._key and self._lease.valid:
                    self._delete_left_keys()
                    self._campaign()
                self._evaluate()
                backoff.reset()
                self._wake.wait()
                self._wake.clear()
            except EtcdError as exc:
                self._report_status(ElectionStatus.SUSPENDED, exc)
                gevent.sleep(backoff.next())

    def _leave_key(self) -> None:
        """Forget the key of a lost lease, to be deleted before the next campaign."""
        if self._key:
            self._left[self._key] = self._lease_of_key
            self._key = b""

    def _delete_left_keys(self) -> None:
        """Delete this candidate's keys left on lost leases (the server may have kept
        them, e.g. across a restart), so it never waits behind its own old key."""
        for key, lease_id in list(self._left.items()):
            self._conn.txn([Compare.lease(key) == lease_id], [Op.delete(key)])
            del self._left[key]

    def _campaign(self) -> None:
        lease = self._lease
        assert lease is not None
        used = lease.id
        try:
            self._key, self._revision = self._put_key(used)
            self._lease_of_key = used
        except LeaseNotFound:  # revoked behind our back: campaign again on a new lease
            lease.invalidate(used)

    def _put_key(self, lease_id: int) -> tuple[bytes, int]:
        """Write (or find) this candidate's key on ``lease_id``; its create revision."""
        held = contention.claim(self._conn, self._prefix, lease_id, self._value)
        return held.key, held.revision

    def _evaluate(self) -> None:
        lease = self._lease
        if lease is None:
            return
        if not lease.valid:
            self._report_status(ElectionStatus.LOST)
            self._leave_key()
            return
        if lease.state is LeaseState.SUSPENDED:
            self._report_status(ElectionStatus.SUSPENDED)
            return
        if self._state_revision < self._revision:
            return  # the watch has not seen our key yet
        if self._key not in self._state:  # deleted under us: stop leading, campaign again
            if self._last is not None and self._last.status is ElectionStatus.LEADER:
                self._report_status(
                    ElectionStatus.SUSPENDED,
                    NotLeader(f"the election key of {self.identity!r} was deleted"),
                )
            self._key = b""
            self._wake.set()
            return
        first = self._first()
        assert first is not None
        if first.key == self._key:
            # the lease may have been suspended while etcd was asked: then not a leader
            if self._no_older_candidate() and lease.state is LeaseState.ACTIVE and lease.valid:
                self._report_status(ElectionStatus.LEADER, leader=first.value_str)
        else:
            self._report_status(ElectionStatus.FOLLOWER, leader=first.value_str)

    def _no_older_candidate(self) -> bool:
        # as concurrency.waitDeletes: no key created before ours is left
        return contention.older(self._conn, self._prefix, self._revision) is None

    def _first(self) -> KeyValue | None:
        return contention.first(self._state)

    def _report_status(
        self,
        status: ElectionStatus,
        error: EtcdError | None = None,
        *,
        leader: str | None = None,
    ) -> None:
        if status in (ElectionStatus.SUSPENDED, ElectionStatus.LOST) and self._last:
            leader = self._last.leader
        token = self._revision if status is ElectionStatus.LEADER else 0
        stale = self._stale and status is ElectionStatus.FOLLOWER
        event = ElectionEvent(status, leader, token, error, stale)
        if (
            self._last is not None
            and (event.status, event.leader, event.fencing_token, event.stale)
            == (self._last.status, self._last.leader, self._last.fencing_token, self._last.stale)
            and error is None
        ):
            return
        self._last = event
        self._emit(event)

    # --- callbacks (from the lease and watch greenlets) --------------------------------

    def _on_lease(self, lease: KeptLease, state: LeaseState) -> None:
        # told at once, even while the campaign greenlet waits for etcd
        if self._running and self._key and lease.id == self._lease_of_key:
            if state is LeaseState.SUSPENDED:
                self._report_status(ElectionStatus.SUSPENDED)
            elif state is LeaseState.LOST:
                self._report_status(ElectionStatus.LOST)
        self._wake.set()

    def _on_change(self, update: PrefixUpdate) -> None:
        if update.stale != self._stale:
            self._stale = update.stale
            last = self._last
            if self._running and last is not None and last.status is ElectionStatus.FOLLOWER:
                self._report_status(ElectionStatus.FOLLOWER, leader=last.leader)
        if update.error is not None:
            return
        self._state = dict(update.state)
        self._state_revision = update.revision
        self._wake.set()

    # --- stop --------------------------------------------------------------------------

    def _release(self) -> Release | None:
        self._conn.hub.unsubscribe(self._prefix, self._on_change)
        lease, self._lease = self._lease, None
        key, self._key = self._key, b""
        if lease is None:
            return None
        try:
            if key:  # resign: the next candidate takes over at once
                contention.resign(self._conn, contention.Claim(key, self._revision))
            self._delete_left_keys()
        except BaseException:  # no answer, or out of time: the key goes with the lease
            self._leftover = let_go(self._conn, lease, self._on_lease, {}, owner=self)
            raise
        self._conn.lease_keeper.release(lease, self._on_lease, timeout=self._remaining())
        return None

    def _held_text(self) -> str:
        return f"resign from {self.path.decode('utf-8', 'replace')}"

    def _expires_in(self) -> float | None:
        return self._leftover
