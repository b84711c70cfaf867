"""LeaderElector: etcd ``concurrency.Election`` semantics on a gevent channel.

Each candidate writes ``path/<lease-id-hex>`` = identity under its own lease; the
candidate whose key has the lowest create revision leads. Candidates follow the
election through one shared watch of ``path/`` and act only when the key ahead of them
goes away, so a change costs no herd of requests. The channel carries an
:class:`ElectionEvent` on every change of status or leader:

- ``LEADER`` (with ``fencing_token``: the leader key's create revision) after a
  linearizable check that no older candidate remains;
- ``FOLLOWER`` with the current leader's identity;
- ``SUSPENDED``: keep-alive is failing; a leader must stop acting as leader now;
- ``LOST``: the lease has surely expired (TTL since the last renewal that succeeded
  was sent). The elector then campaigns again with a new lease.

A process that was paused past its TTL reports ``LOST`` before anything else. Writes
that must only happen under leadership use :meth:`LeaderElector.guard` (or
:meth:`LeaderElector.txn`), which fail with :class:`NotLeader` for a stale leader.
``stop()`` resigns: the next candidate takes over at once.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event as Signal

from .. import validate
from ..channel import Channel
from ..errors import EtcdError, InvalidArgument, NotLeader
from ..lease import KeptLease, LeaseState
from ..retry import Backoff
from ..txn import Compare, Comparison, Op, TxnOp
from ..watch import PrefixUpdate
from ..wire import KeyValue, RangeResult, TxnResult
from .base import Recipe, RecipeError

if TYPE_CHECKING:
    from ..connector import Connector


class ElectionStatus(enum.Enum):
    """A candidate's standing in the election."""

    LEADER = "LEADER"
    FOLLOWER = "FOLLOWER"
    SUSPENDED = "SUSPENDED"
    LOST = "LOST"


@dataclass(frozen=True, slots=True)
class ElectionEvent:
    """A change of this candidate's status or of the leader it knows."""

    status: ElectionStatus
    leader: str | None = None
    fencing_token: int = 0
    error: EtcdError | None = None


class LeaderElector(Recipe[ElectionEvent]):
    """A candidate in the election at ``path``; see the module docstring."""

    def __init__(self, conn: Connector, path: str, identity: str, ttl: int = 10) -> None:
        super().__init__(conn)
        if not isinstance(identity, str) or not identity:
            raise InvalidArgument("identity must be a non-empty str")
        stored = conn.namespace.key(path, "path")
        self.path = conn.namespace.strip(stored).rstrip(b"/")
        if not self.path:
            raise InvalidArgument("path must name an election, not the root")
        self.identity = identity
        self.ttl = validate.ttl(ttl)
        self._prefix = self.path + b"/"
        self._lease: KeptLease | None = None
        self._key = b""
        self._lease_of_key = 0
        self._revision = 0
        self._state: dict[bytes, KeyValue] = {}
        self._state_revision = 0
        self._wake = Signal()
        self._last: ElectionEvent | None = None

    def __repr__(self) -> str:
        return f"LeaderElector({self.path.decode()!r}, {self.identity!r})"

    # --- public ------------------------------------------------------------------------

    def start(self) -> Channel[ElectionEvent | RecipeError]:
        """Campaign; the channel reports every change of status or leader."""
        self._begin()
        self._conn.hub.subscribe(self._prefix, self._on_change)
        self._spawn(self._campaign_forever)
        return self.channel

    @property
    def status(self) -> ElectionStatus | None:
        """The status last reported (None before the first)."""
        return self._last.status if self._last else None

    @property
    def is_leader(self) -> bool:
        """True while this candidate leads and its lease is surely alive."""
        return (
            self._last is not None
            and self._last.status is ElectionStatus.LEADER
            and self._lease is not None
            and self._lease.valid
        )

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
        return Compare.create_revision(self._key) == self._revision

    def txn(self, success: Iterable[TxnOp], failure: Iterable[TxnOp] = ()) -> TxnResult:
        """Run ``success`` only while this candidate leads (fenced by its key's create
        revision); raises :class:`NotLeader` when the guard fails."""
        result = self._conn.txn([self.guard()], success, failure)
        if not result.succeeded:
            raise NotLeader(f"{self.identity!r} lost the leadership of {self.path.decode()!r}")
        return result

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
                    self._key = b""
                if not self._key and self._lease.valid:
                    self._campaign()
                self._evaluate()
                backoff.reset()
                self._wake.wait()
                self._wake.clear()
            except EtcdError as exc:
                self._report_status(ElectionStatus.SUSPENDED, exc)
                gevent.sleep(backoff.next())

    def _campaign(self) -> None:
        lease = self._lease
        assert lease is not None
        key = self._prefix + f"{lease.id:x}".encode()
        result = self._conn.txn(
            [Compare.create_revision(key) == 0],
            [Op.put(key, self.identity, lease=lease.id)],
            [Op.get(key)],
        )
        if result.succeeded:
            revision = result.header.revision
        else:
            read = result.responses[0]
            assert isinstance(read, RangeResult) and read.kvs
            revision = read.kvs[0].create_revision
            if read.kvs[0].value_str != self.identity:  # proclaim our identity
                self._conn.txn(
                    [Compare.create_revision(key) == revision],
                    [Op.put(key, self.identity, lease=lease.id)],
                )
        self._key, self._revision, self._lease_of_key = key, revision, lease.id

    def _evaluate(self) -> None:
        lease = self._lease
        if lease is None:
            return
        if not lease.valid:
            self._report_status(ElectionStatus.LOST)
            self._key = b""
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
            if self._no_older_candidate():
                self._report_status(ElectionStatus.LEADER, leader=self.identity)
        else:
            self._report_status(ElectionStatus.FOLLOWER, leader=first.value_str)

    def _no_older_candidate(self) -> bool:
        # as concurrency.waitDeletes: the newest key older than ours, if any (etcd's
        # ``count`` ignores the revision filters, so look at the keys themselves)
        older = self._conn.get_prefix(
            self._prefix,
            max_create_revision=self._revision - 1,
            sort_target="CREATE",
            sort_order="DESCEND",
            limit=1,
            keys_only=True,
        )
        return not older.kvs

    def _first(self) -> KeyValue | None:
        if not self._state:
            return None
        return min(self._state.values(), key=lambda kv: kv.create_revision)

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
        event = ElectionEvent(status, leader, token, error)
        if (
            self._last is not None
            and (event.status, event.leader, event.fencing_token)
            == (self._last.status, self._last.leader, self._last.fencing_token)
            and error is None
        ):
            return
        self._last = event
        self._emit(event)

    # --- callbacks (from the lease and watch greenlets) --------------------------------

    def _on_lease(self, lease: KeptLease, state: LeaseState) -> None:
        self._wake.set()

    def _on_change(self, update: PrefixUpdate) -> None:
        if update.error is not None:
            return
        self._state = dict(update.state)
        self._state_revision = update.revision
        self._wake.set()

    # --- stop --------------------------------------------------------------------------

    def _release(self) -> None:
        self._conn.hub.unsubscribe(self._prefix, self._on_change)
        lease, self._lease = self._lease, None
        key, self._key = self._key, b""
        if lease is None:
            return
        try:
            if key:  # resign: the next candidate takes over at once
                self._conn.txn([Compare.create_revision(key) == self._revision], [Op.delete(key)])
        finally:
            self._conn.lease_keeper.release(lease, self._on_lease)
