"""Queue and PriorityQueue: etcd's Go ``recipes.Queue`` and ``recipes.PriorityQueue``,
plus an at-least-once claim/ack mode.

Items are stored exactly as Go stores them, so Go and geventc producers and consumers
share one queue:

- ``Queue`` at ``path``: each item is the key ``path/<unix nanoseconds>`` (Go's
  ``newUniqueKV``), created only if absent (``version == 0``; a collision retries with
  a new timestamp), on no lease. Items are served by mod revision: first in, first out.
- ``PriorityQueue`` at ``path``: each item is ``path/<priority %05d>/<sequence %016d>``
  (Go's ``newSequentialKV``): the next sequence number after the last key of its
  priority, written in one txn with the bookkeeping key ``__path/<priority %05d>``
  whose mod revision guards it, as Go does (geventc also checks that the item key is
  new). Priorities are 0..65535 (Go's ``uint16``); the lexically first key is served
  first, so a *lower* number is served *earlier*.

:meth:`take` is Go's ``Dequeue``, at most once: it deletes the first item with a txn
guarded by the item's mod revision and returns it; when the queue is empty it waits
for a PUT under the prefix. It never polls: every ``Queue``/``PriorityQueue`` object of
one path in a connector shares the connector's watches of the prefix (one stream for
the items, one for the claims), and waiting consumers in this process never race
each other for one item. A consumer that keeps losing races to other processes takes
one of the first few (at most 8) items at random until it wins one, so competing
consumers spread out instead of all trying the first item (the order among concurrent
consumers is not defined anyway; one consumer alone is strictly first in, first out).

:meth:`claim` is at least once: the item stays in the queue, and a *claim marker* is
created next to it in one txn that checks that the item is unchanged and that no live
claim exists, so no two live consumers ever hold one item. The marker lives on the
connector's shared lease of ``ttl`` seconds: when the claimer dies (its lease expires or
is revoked, its connector closes) the item can be claimed again. :meth:`ClaimedItem.ack`
deletes the item and the marker in one txn guarded by the marker being this claim's
(:class:`~geventc.errors.ClaimLost` otherwise, saying what happened);
:meth:`ClaimedItem.release` gives the item back at once (it keeps its place, so it is
served next). :meth:`take` and :meth:`claim` skip claimed items.

Claim markers: the marker of the item ``path/<rest>`` is ``__claims`` + ``path/<rest>``
(e.g. ``__claims/jobs/1700000000000000000`` for ``/jobs/1700000000000000000``; under a
namespace ``/<ns>/__claims/jobs/...``), its value the item's create revision in decimal
(a marker naming another create revision is left from an earlier item of the same key,
and does not count). The markers lie outside the prefix Go's ``Dequeue`` reads
(``path`` for a Queue, ``path/`` for a PriorityQueue), so Go never takes one; a path
whose markers would fall inside it (such as ``_`` for a Queue) is refused. Go's
``Dequeue`` does not know claims: it may take an item a geventc consumer claimed, whose
``ack()`` then raises ``ClaimLost``.

Namespaces: keys live under the connector's namespace like every key, the bookkeeping
key too (``/<ns>/__/jobs/00005``). A Go client writing the full path (``/<ns>/jobs``)
without a namespace uses ``__/<ns>/jobs/00005`` instead, so Go and geventc *producers*
of one priority queue share Go's sequence only when they agree on that key: use a
connector without a namespace (the same path strings as Go) for mixed producers.
Consumers, and FIFO queues, mix freely either way.

Life cycle: :meth:`put` needs no start. :meth:`take` and :meth:`claim` start the queue
if it is not started (subscribing to the shared watches; :meth:`claim` also takes a
share of the lease, on first use); it stays started until :meth:`stop` (or the
connector's ``close()``), which gives back every claim not acked yet (deleting its
marker), releases the share of the lease and leaves the watches. A stopped queue cannot
take or claim again (make a new one); a ``take()`` waiting when it stops raises
:class:`~geventc.errors.RecipeStateError`. On a timeout :meth:`take` and :meth:`claim`
return None.

Read-your-writes: a take or claim first lets its view catch up with this process's own
puts and releases on the queue (at most the request timeout), so ``put(); take(0)``
takes the item.

The channel carries a :class:`ClaimEvent` when a claim is suspended (its lease's
renewal is late), held again, or lost (its lease expired or its marker was deleted),
a :class:`~geventc.staleness.Staleness` when the queue's view goes stale or is current
again (a take may then wait for items that exist), and a
:class:`~geventc.recipes.base.RecipeError` for the first problem of each outage of its
watches (which keep retrying).
"""

from __future__ import annotations

import bisect
import enum
import itertools
import logging
import random
import re
import time
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event as Signal

from .. import validate
from ..channel import Channel
from ..errors import (
    ClaimLost,
    ClientClosed,
    EtcdError,
    InvalidArgument,
    LeaseNotFound,
    RecipeStateError,
    RetriesExhausted,
)
from ..lease import KeptLease, LeaseState
from ..retry import Backoff
from ..staleness import Staleness
from ..txn import Compare, Comparison, Op, TxnOp
from ..watch import PrefixUpdate, PrefixWatch
from ..wire import EventType, KeyValue, KeyValueText, RangeResult
from .base import Recipe, RecipeError, Release
from .leftover import delete_until_confirmed, let_go

if TYPE_CHECKING:
    from ..host import RecipeHost

log = logging.getLogger("geventc")

#: What a claim marker's key starts with: ``__claims`` + the item's key.
CLAIMS_ROOT = b"__claims"
#: The highest priority number (Go's ``uint16``); 0 is served first.
MAX_PRIORITY = 65535
#: How often a put retries a lost race (a key taken, a sequence number allocated).
PUT_ATTEMPTS = 100
#: Among how many of the first items a consumer that keeps losing races picks.
MAX_SPREAD = 8

# the highest revision of this process's writes that offer items (puts, releases) per
# connector and prefix: a take or claim first waits for its view to show them
# (read-your-writes; a take, claim or ack only removes items, which the view's skip
# list already knows)
_WRITES: weakref.WeakKeyDictionary[Any, dict[bytes, int]] = weakref.WeakKeyDictionary()


class ClaimStatus(enum.Enum):
    """Where a claim stands."""

    HELD = "HELD"
    SUSPENDED = "SUSPENDED"
    LOST = "LOST"
    ACKED = "ACKED"
    RELEASED = "RELEASED"


@dataclass(frozen=True, slots=True)
class QueueItem(KeyValueText):
    """An item of a queue: its key (without the connector's namespace), its value, its
    mod revision and, in a priority queue, its priority."""

    key: bytes
    value: bytes
    revision: int
    priority: int | None = None


@dataclass(frozen=True, slots=True)
class ClaimEvent:
    """A claim of this queue was suspended (its lease's renewal is late: the item may
    soon be claimed by another consumer), is held again, or was lost."""

    status: ClaimStatus
    key: str
    reason: str = ""


class ClaimedItem:
    """An item claimed from a queue: it stays in the queue, held by this consumer, until
    :meth:`ack` deletes it or :meth:`release` gives it back; a claimer that dies lets
    it go (its lease ends). As a context manager it acks when the block ends normally
    and releases when it raises."""

    def __init__(
        self,
        queue: _QueueBase,
        item: QueueItem,
        marker: bytes,
        claim_revision: int,
        lease_id: int,
    ) -> None:
        self.item = item
        #: the mod revision of the claim marker: this claim's fencing token
        self.claim_revision = claim_revision
        self.lease_id = lease_id
        self.reason = ""
        self._queue = queue
        self._marker = marker
        self._status = ClaimStatus.HELD
        self._settling = False  # an ack or release is in flight

    def __repr__(self) -> str:
        return f"ClaimedItem({self.item.key_str!r}, {self._status.value})"

    @property
    def key(self) -> bytes:
        """The item's key."""
        return self.item.key

    @property
    def value(self) -> bytes:
        """The item's value."""
        return self.item.value

    @property
    def value_str(self) -> str:
        """The item's value decoded as UTF-8."""
        return self.item.value_str

    @property
    def priority(self) -> int | None:
        """The item's priority (None in a FIFO queue)."""
        return self.item.priority

    @property
    def marker(self) -> bytes:
        """The key of the claim marker (without the connector's namespace)."""
        return self._marker

    @property
    def status(self) -> ClaimStatus:
        """The claim's status as this process knows it."""
        return self._status

    @property
    def held(self) -> bool:
        """True while the claim is held and its lease renewed on time (False once
        suspended, lost, acked or released)."""
        return self._status is ClaimStatus.HELD

    def ack(self) -> None:
        """Delete the item (and the claim marker) in one txn guarded by the marker
        being this claim's: done, for good. Raises :class:`ClaimLost`, saying what
        happened, when the claim is no longer held on the server (its lease ended,
        it was released, the item was taken or changed by someone else); acking
        twice is a no-op."""
        self._queue._ack(self)

    def release(self) -> bool:
        """Give the item back to the queue now (delete the claim marker): it keeps its
        place and is served next. True when etcd confirmed it; False when the claim
        was no longer held (lost, acked or released before)."""
        return self._queue._release_claim(self)

    nack = release

    def __enter__(self) -> ClaimedItem:
        return self

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        if self._status in (ClaimStatus.ACKED, ClaimStatus.RELEASED):
            return
        if kind is None:
            self.ack()
            return
        try:
            self.release()
        except EtcdError as exc:  # the block's own error goes on; the claim expires
            log.warning("could not release %r after an error (%s); its lease ends it", self, exc)

    # --- state, changed by the queue ----------------------------------------------------

    @property
    def _active(self) -> bool:
        return self._status in (ClaimStatus.HELD, ClaimStatus.SUSPENDED)

    def _set(self, status: ClaimStatus, reason: str = "") -> bool:
        """Change the status; True when it changed."""
        if status is self._status:
            return False
        self._status = status
        self.reason = reason
        return True


def _overlap(one: bytes, other: bytes) -> bool:
    return one.startswith(other) or other.startswith(one)


class _QueueBase(Recipe[ClaimEvent | Staleness]):
    """What Queue and PriorityQueue share: the view, take, claim and stop."""

    #: the prefix Go's Dequeue reads, relative to the path (Queue: path itself)
    _go_suffix = b""

    def __init__(self, conn: RecipeHost, path: str, ttl: int = 10) -> None:
        super().__init__(conn)
        stored = conn.namespace.key(path, "path")
        self.path = conn.namespace.strip(stored)
        if not self.path.strip(b"/"):
            raise InvalidArgument("path must name a queue, not the root")
        self.ttl = validate.ttl(ttl)
        self._items_prefix = self.path + b"/"
        # as the namespace gives keys back (under one, with a leading "/")
        self._claims_prefix = conn.namespace.strip(
            conn.namespace.key(CLAIMS_ROOT + self._items_prefix)
        )
        self._check_layout()
        self._items: PrefixWatch | None = None
        self._claims_watch: PrefixWatch | None = None
        self._synced: set[str] = set()
        self._stale: set[str] = set()
        self._failing: set[str] = set()  # the watches whose outage was reported
        # the items in serving order: (order, key), with each key's entry
        self._order: list[tuple[Any, bytes]] = []
        self._entry: dict[bytes, tuple[Any, bytes]] = {}
        # key -> (item mod revision, marker mod revision) an attempt failed or succeeded
        # on: skipped until the view of that key changes
        self._skip: dict[bytes, tuple[int, int]] = {}
        self._inflight: set[bytes] = set()  # attempted now by a greenlet of this queue
        self._losses = 0  # races lost in a row (see _candidate)
        self._changed = Signal()
        self._lease: KeptLease | None = None
        self._claims: dict[bytes, ClaimedItem] = {}  # marker key -> claim
        self._implicit = False  # started by take() or claim()
        self._leftover: float | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path.decode('utf-8', 'replace')!r})"

    def _check_layout(self) -> None:
        """Refuse a path whose claim markers would lie where Go's Dequeue or this
        queue's own watch of the items reads."""
        go_read = self.path + self._go_suffix
        if _overlap(self._claims_prefix, go_read) or _overlap(
            self._claims_prefix, self._items_prefix
        ):
            raise InvalidArgument(
                f"path {self.path.decode('utf-8', 'replace')!r} cannot be a queue: its "
                f"claim markers ({self._claims_prefix.decode('utf-8', 'replace')}...) "
                "would lie among its items; use an absolute path such as '/jobs'"
            )

    # --- public ------------------------------------------------------------------------

    def start(self) -> Channel[ClaimEvent | Staleness | RecipeError]:
        """Start following the queue (take and claim do it when needed) and return the
        channel; after an implicit start by take or claim this returns the same
        channel."""
        if self._running and self._implicit:
            return self.channel
        return super().start()

    def _start(self) -> None:
        self._begin()
        try:
            wait = self._conn.request_timeout
            self._items = self._conn.hub.subscribe(
                self._items_prefix, self._on_items, read_your_writes=True, timeout=wait
            )
            self._claims_watch = self._conn.hub.subscribe(
                self._claims_prefix, self._on_claims, read_your_writes=True, timeout=wait
            )
        except BaseException:
            self.stop()
            raise

    def take(self, timeout: float | None = None) -> QueueItem | None:
        """Remove the first unclaimed item and return it (at most once: Go's
        ``Dequeue``), waiting up to ``timeout`` seconds (None: forever; 0: only what
        is there now) for one; None when none came in time. The first call starts the
        queue. An etcd error is raised as is (after an ``IndeterminateWrite`` the item
        may have been removed)."""
        wait = validate.timeout(timeout)
        found = self._next(wait, None)
        assert found is None or isinstance(found, QueueItem)
        return found

    def claim(self, timeout: float | None = None) -> ClaimedItem | None:
        """Claim the first unclaimed item (at least once): it stays in the queue, held
        by this consumer on the connector's shared lease of ``ttl`` seconds, until
        :meth:`ClaimedItem.ack` or :meth:`ClaimedItem.release`; waits up to
        ``timeout`` seconds (None: forever) for one; None when none came in time."""
        wait = validate.timeout(timeout)
        self._ensure_started()
        lease = self._claim_lease()
        found = self._next(wait, lease)
        assert found is None or isinstance(found, ClaimedItem)
        return found

    @property
    def claims(self) -> list[ClaimedItem]:
        """The claims of this queue not acked or released yet."""
        return [c for c in self._claims.values() if c._active]

    def items(self) -> list[QueueItem]:
        """Every item in the queue now, in serving order, claimed ones included (a
        linearizable read)."""
        read = self._conn.get_prefix(self._items_prefix)
        kvs = sorted(read.kvs, key=self._order_of)
        return [self._item(kv) for kv in kvs]

    # --- taking and claiming -----------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._running:
            return
        if self._stopped:
            raise RecipeStateError(f"{self!r} was stopped; make a new one to take again")
        self.start()
        self._implicit = True

    def _check_running(self) -> None:
        if self._running:
            return
        if self._conn.closed:
            raise ClientClosed(f"the connector of {self!r} was closed")
        raise RecipeStateError(f"{self!r} was stopped")

    def _claim_lease(self) -> KeptLease:
        if self._lease is None:
            self._lease = self._conn.lease_keeper.acquire(self.ttl, self._on_lease)
        return self._lease

    def _next(self, wait: float | None, lease: KeptLease | None) -> QueueItem | ClaimedItem | None:
        """Take (``lease`` None) or claim the first unclaimed item, waiting up to
        ``wait`` seconds. The view first catches up with this process's own puts and
        releases (waiting at most the request timeout for them)."""
        self._ensure_started()
        deadline = None if wait is None else time.monotonic() + wait
        if not self._await_synced(deadline):
            return None
        self._catch_up()
        while True:
            self._check_running()
            changed = self._changed
            if lease is None or lease.valid:
                candidate = self._candidate()
                if candidate is not None:
                    found = self._attempt(*candidate, lease)
                    if found is not None:
                        return found
                    continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            changed.wait(remaining)

    def _await_synced(self, deadline: float | None) -> bool:
        """Wait until both watches gave their first state (at least the request
        timeout, even for a take that does not wait for items)."""
        if len(self._synced) == 2:
            return True
        bound = None
        if deadline is not None:
            bound = max(deadline, time.monotonic() + self._conn.request_timeout)
        while len(self._synced) < 2:
            self._check_running()
            changed = self._changed
            remaining = None if bound is None else bound - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            changed.wait(remaining)
        return True

    def _catch_up(self) -> None:
        """Wait (at most the request timeout) until the view shows the last put and
        release this process made to the queue: a take or claim never misses them."""
        written = _WRITES.get(self._conn, {})
        bound = time.monotonic() + self._conn.request_timeout
        for watch in (self._items, self._claims_watch):
            while watch is not None and watch.revision < written.get(watch.prefix, 0):
                self._check_running()
                changed = self._changed
                remaining = bound - time.monotonic()
                if remaining <= 0:
                    return
                changed.wait(remaining)

    def _candidate(self) -> tuple[KeyValue, KeyValue | None] | None:
        """The first item in serving order not claimed, not being tried by another
        greenlet of this queue and not already tried in the state seen now; with its
        (stale) marker if any. While this queue keeps losing races to other processes
        it picks one of the first few such items at random instead, so competing
        consumers spread out rather than all trying the same first item."""
        spread = min(self._losses, MAX_SPREAD) + 1
        if spread == 1:
            return next(self._available(), None)
        found = list(itertools.islice(self._available(), spread))
        return random.choice(found) if found else None

    def _available(self) -> Iterator[tuple[KeyValue, KeyValue | None]]:
        """The items :meth:`_candidate` may try, in serving order."""
        assert self._items is not None and self._claims_watch is not None
        items, markers = self._items.state, self._claims_watch.state
        for _, key in self._order:
            if key in self._inflight:
                continue
            kv = items.get(key)
            if kv is None:
                continue
            marker = markers.get(self._marker_of(key))
            if marker is not None and _is_claim_of(marker, kv):
                continue
            if self._skip.get(key) == (kv.mod_revision, marker.mod_revision if marker else 0):
                continue
            yield kv, marker

    def _guards(self, kv: KeyValue, marker: KeyValue | None) -> list[Comparison]:
        """The item is as seen, and no live claim holds it (no marker, or the stale
        one seen)."""
        marker_key = self._marker_of(kv.key)
        unclaimed = (
            Compare.create_revision(marker_key) == 0
            if marker is None
            else Compare.mod_revision(marker_key) == marker.mod_revision
        )
        return [Compare.mod_revision(kv.key) == kv.mod_revision, unclaimed]

    def _attempt(
        self, kv: KeyValue, marker: KeyValue | None, lease: KeptLease | None
    ) -> QueueItem | ClaimedItem | None:
        """One txn taking or claiming ``kv``; None when it lost the race. The key is
        skipped from now until the view of it changes (an event of the item or its
        marker, even one that comes while the txn is in flight, ends the skip)."""
        key = kv.key
        marker_key = self._marker_of(key)
        guards = self._guards(kv, marker)
        lease_id = 0 if lease is None else lease.id
        ops: list[TxnOp]
        if lease is None:
            ops = [Op.delete(key)] + ([Op.delete(marker_key)] if marker else [])
        else:
            ops = [Op.put(marker_key, str(kv.create_revision), lease=lease_id)]
        self._skip[key] = (kv.mod_revision, marker.mod_revision if marker else 0)
        self._inflight.add(key)
        try:
            result = self._conn.txn(guards, ops)
        except LeaseNotFound:
            if lease is None:
                raise
            lease.invalidate(lease_id)  # a new lease is granted at once; claim on it
            return None
        except BaseException:
            self._skip.pop(key, None)  # no answer: the next attempt may try it again
            self._wake()  # the greenlets that left it to this one may try it now
            if lease is not None:  # the claim may have been applied: nobody would know it
                self._conn.group.spawn(self._drop_orphan, marker_key, lease_id, kv)
            raise
        finally:
            self._inflight.discard(key)
        if not result.succeeded:
            self._losses += 1
            return None
        self._losses = 0
        if lease is None:
            return self._item(kv)
        return self._held(kv, marker_key, result.header.revision, lease_id)

    def _drop_orphan(self, marker_key: bytes, lease_id: int, kv: KeyValue) -> None:
        """After a claim whose answer was lost: if etcd applied it, its marker (on our
        lease, for this item) is held by no caller, so the item would be stuck until
        the lease ends; delete that marker (guarded by its mod revision, so a newer
        claim is never touched) once etcd answers, and the item is served again."""
        backoff = Backoff(first=0.2, cap=2.0)
        looked_again = False
        while not self._conn.closed:
            try:
                found = self._conn.get(marker_key)
                if found is None and not looked_again:  # a request late in transit
                    looked_again = True  # is applied or dropped within the timeout
                    gevent.sleep(self._conn.request_timeout)
                    continue
                if (
                    found is None
                    or found.lease != lease_id
                    or not _is_claim_of(found, kv)
                    or marker_key in self._claims
                ):
                    return  # not applied, or not an orphan of ours
                log.info(
                    "%r: giving back %r, claimed by a request whose answer was lost",
                    self,
                    kv.key_str,
                )
                guard = Compare.mod_revision(marker_key) == found.mod_revision
                delete_until_confirmed(self._conn, {marker_key: guard}, owner=self)
                return
            except EtcdError as exc:
                log.info("%r: checking the claim of %r failed (%s); retrying", self, kv.key, exc)
                gevent.sleep(backoff.next())

    def _held(self, kv: KeyValue, marker_key: bytes, revision: int, lease_id: int) -> ClaimedItem:
        claim = ClaimedItem(self, self._item(kv), marker_key, revision, lease_id)
        if not self._running:  # stopped while the claim was on its way: give it back
            self._give_back(claim)
            self._check_running()
        self._claims[marker_key] = claim
        lease = self._lease
        if lease is not None and lease.id != lease_id:
            self._lose(claim, "its lease was replaced while it was claimed")
        elif lease is not None and lease.state is LeaseState.SUSPENDED:
            self._change(claim, ClaimStatus.SUSPENDED, "its lease's renewal is late")
        else:
            self._check_marker(claim)
        return claim

    # --- ack and release ---------------------------------------------------------------

    def _ack(self, claim: ClaimedItem) -> None:
        if claim.status is ClaimStatus.ACKED:
            return
        if claim.status is ClaimStatus.RELEASED:
            raise ClaimLost(f"{claim.item.key_str} cannot be acked: {claim.reason or 'released'}")
        item, marker = claim.item, claim.marker
        claim._settling = True
        try:
            result = self._conn.txn(
                [
                    Compare.mod_revision(marker) == claim.claim_revision,
                    Compare.mod_revision(item.key) == item.revision,
                ],
                [Op.delete(item.key), Op.delete(marker)],
                [Op.get(marker), Op.get(item.key)],
            )
        finally:
            claim._settling = False
        if result.succeeded:
            claim._set(ClaimStatus.ACKED)
            self._claims.pop(marker, None)
            return
        reason = self._why_lost(claim, _first(result.responses[0]), _first(result.responses[1]))
        self._claims.pop(marker, None)
        claim._set(ClaimStatus.LOST, reason)
        raise ClaimLost(f"{item.key_str} cannot be acked: {reason}")

    def _why_lost(self, claim: ClaimedItem, marker: KeyValue | None, item: KeyValue | None) -> str:
        """Why an ack failed, from the marker and the item read in its txn; deletes the
        marker if it is still this claim's."""
        if marker is not None and marker.mod_revision == claim.claim_revision:
            deleted = self._conn.txn(
                [Compare.mod_revision(claim.marker) == claim.claim_revision],
                [Op.delete(claim.marker)],
            )
            self._wrote(deleted.header.revision, claims=deleted.succeeded)
            change = "deleted" if item is None else "changed"
            return (
                f"the item was {change} while it was claimed, by a consumer that does not "
                "honour claims (such as Go's Dequeue) or by hand; it may be processed twice"
            )
        ended = claim.reason or "the claim ended first (its lease expired or was revoked)"
        if marker is not None:
            return f"{ended}; another consumer claimed the item since"
        if item is None:
            return f"{ended}; the item was taken or acked by another consumer since"
        return f"{ended}; the item is back in the queue for another consumer"

    def _release_claim(self, claim: ClaimedItem) -> bool:
        if claim.status in (ClaimStatus.ACKED, ClaimStatus.RELEASED):
            return False
        claim._settling = True
        try:
            result = self._conn.txn(
                [Compare.mod_revision(claim.marker) == claim.claim_revision],
                [Op.delete(claim.marker)],
            )
        finally:
            claim._settling = False
        self._claims.pop(claim.marker, None)
        if result.succeeded:
            self._wrote(result.header.revision, claims=True)
            claim._set(ClaimStatus.RELEASED, "released")
            return True
        claim._set(ClaimStatus.LOST, claim.reason or "the claim had ended before the release")
        return False

    # --- the view (called by the watches' greenlets) -----------------------------------

    def _on_items(self, update: PrefixUpdate) -> None:
        self._watch_news("items", update)
        if update.error is not None:
            return
        if update.resynced:
            self._rebuild(update.state)
            self._synced.add("items")
        for event in update.events:
            self._skip.pop(event.kv.key, None)
            if not update.resynced:
                self._apply(event.kv, event.type is EventType.DELETE)
        self._wake()

    def _on_claims(self, update: PrefixUpdate) -> None:
        self._watch_news("claims", update)
        if update.error is not None:
            return
        if update.resynced:
            self._skip.clear()
            self._synced.add("claims")
            for held in list(self._claims.values()):
                self._check_marker(held)
        for event in update.events:
            self._skip.pop(self._item_of(event.kv.key), None)
            claim = self._claims.get(event.kv.key)
            if claim is not None and not update.resynced:
                self._check_marker(claim, event.kv if event.type is EventType.PUT else None)
        self._wake()

    def _watch_news(self, which: str, update: PrefixUpdate) -> None:
        """Report a watch's problem (the first of each outage: the watch logs every
        retry), and a change of the view's staleness."""
        if update.error is None:
            self._failing.discard(which)
        elif which not in self._failing and self._running:
            self._failing.add(which)
            self._report(update.error)
        was = bool(self._stale)
        if update.stale:
            self._stale.add(which)
        else:
            self._stale.discard(which)
        if was != bool(self._stale) and self._running:
            self._emit(Staleness(bool(self._stale), update.age, update.revision))

    def _rebuild(self, state: Mapping[bytes, KeyValue]) -> None:
        self._order = sorted((self._order_of(kv), kv.key) for kv in state.values())
        self._entry = {key: (order, key) for order, key in self._order}
        self._skip.clear()

    def _apply(self, kv: KeyValue, deleted: bool) -> None:
        old = self._entry.pop(kv.key, None)
        if old is not None:
            at = bisect.bisect_left(self._order, old)
            if at < len(self._order) and self._order[at] == old:
                del self._order[at]
        if not deleted:
            entry = (self._order_of(kv), kv.key)
            bisect.insort(self._order, entry)
            self._entry[kv.key] = entry

    def _wake(self) -> None:
        changed, self._changed = self._changed, Signal()
        changed.set()

    def _check_marker(self, claim: ClaimedItem, seen: KeyValue | None = None) -> None:
        """Lose ``claim`` when the view shows its marker gone or replaced (not while an
        ack or release of it is in flight)."""
        watch = self._claims_watch
        if claim._settling or not claim._active or watch is None:
            return
        if watch.revision < claim.claim_revision:
            return  # the view does not show the claim yet
        current = seen if seen is not None else watch.state.get(claim.marker)
        if current is None:
            self._lose(claim, "its marker was deleted (its lease expired or was revoked)")
        elif current.mod_revision != claim.claim_revision:
            self._lose(claim, "its marker was replaced by another consumer's claim")

    # --- the lease (called by its renewing greenlet) -----------------------------------

    def _on_lease(self, lease: KeptLease, state: LeaseState) -> None:
        for claim in list(self._claims.values()):
            if not claim._active:
                continue
            if claim.lease_id != lease.id or state is LeaseState.LOST:
                self._lose(claim, "its lease was lost (it expired or was revoked)")
            elif state is LeaseState.SUSPENDED:
                self._change(claim, ClaimStatus.SUSPENDED, "its lease's renewal is late")
            elif state is LeaseState.ACTIVE:
                self._change(claim, ClaimStatus.HELD, "its lease was renewed")
        self._wake()

    def _lose(self, claim: ClaimedItem, reason: str) -> None:
        self._claims.pop(claim.marker, None)
        self._change(claim, ClaimStatus.LOST, reason)

    def _change(self, claim: ClaimedItem, status: ClaimStatus, reason: str) -> None:
        if claim._set(status, reason) and self._running:
            if status is not ClaimStatus.HELD:
                log.warning(
                    "%r: claim of %s is %s: %s", self, claim.item.key_str, status.value, reason
                )
            self._emit(ClaimEvent(status, claim.item.key_str, reason))

    # --- stop --------------------------------------------------------------------------

    def _release(self) -> Release | None:
        if self._items is not None:
            self._conn.hub.unsubscribe(self._items_prefix, self._on_items)
        if self._claims_watch is not None:
            self._conn.hub.unsubscribe(self._claims_prefix, self._on_claims)
        self._wake()  # waiting takes and claims see the stop
        lease, self._lease = self._lease, None
        claims = [c for c in self._claims.values() if c._active]
        self._claims.clear()
        if lease is None:
            return None
        if self._conn.closing:  # the connector revokes the lease, and the markers with it
            for claim in claims:
                claim._set(ClaimStatus.LOST, "the connector closed (its lease is revoked)")
            self._conn.lease_keeper.release(lease, self._on_lease, timeout=self._remaining())
            return None
        pending = list(claims)
        try:
            while pending:
                self._give_back(pending[0])
                pending.pop(0)
        except BaseException:  # no answer, or out of time: let go without waiting
            self._let_go_later(lease, pending)
            raise
        self._conn.lease_keeper.release(lease, self._on_lease, timeout=self._remaining())
        return None

    def _give_back(self, claim: ClaimedItem) -> None:
        """Delete a claim's marker at stop (the item is served again at once)."""
        result = self._conn.txn(
            [Compare.mod_revision(claim.marker) == claim.claim_revision], [Op.delete(claim.marker)]
        )
        if result.succeeded:
            claim._set(ClaimStatus.RELEASED, "the queue was stopped and gave the item back")
        else:
            claim._set(ClaimStatus.LOST, claim.reason or "the claim had ended before the stop")

    def _let_go_later(self, lease: KeptLease, pending: list[ClaimedItem]) -> None:
        """Drop the share of ``lease`` without waiting for etcd; the markers left are
        deleted in the background while other holders keep the lease, else they go
        with it."""
        for claim in pending:
            claim._set(ClaimStatus.LOST, "the queue was stopped; the claim is being given back")
        markers = {c.marker: Compare.mod_revision(c.marker) == c.claim_revision for c in pending}
        self._leftover = let_go(self._conn, lease, self._on_lease, markers, owner=self)

    def _held_text(self) -> str:
        return f"give back the claims of {self.path.decode('utf-8', 'replace')}"

    def _expires_in(self) -> float | None:
        return self._leftover

    # --- layout ------------------------------------------------------------------------

    def _marker_of(self, key: bytes) -> bytes:
        return self._claims_prefix + key[len(self._items_prefix) :]

    def _item_of(self, marker: bytes) -> bytes:
        return self._items_prefix + marker[len(self._claims_prefix) :]

    def _order_of(self, kv: KeyValue) -> tuple[Any, bytes]:
        """Where ``kv`` stands in serving order (override)."""
        raise NotImplementedError

    def _item(self, kv: KeyValue) -> QueueItem:
        return QueueItem(kv.key, kv.value, kv.mod_revision)

    def _wrote(self, revision: int, *, items: bool = False, claims: bool = False) -> None:
        """Note a put or release of this process (see ``_WRITES``)."""
        written = _WRITES.setdefault(self._conn, {})
        for prefix, touched in ((self._items_prefix, items), (self._claims_prefix, claims)):
            if touched:
                written[prefix] = max(written.get(prefix, 0), revision)


def _is_claim_of(marker: KeyValue, item: KeyValue) -> bool:
    """True when ``marker`` is a claim of this very item (not of an earlier item that
    had the same key)."""
    return marker.value == str(item.create_revision).encode()


def _first(response: object) -> KeyValue | None:
    if isinstance(response, RangeResult) and response.kvs:
        return response.kvs[0]
    return None


class Queue(_QueueBase):
    """A FIFO queue at ``path`` shared with Go's ``recipes.Queue``; see the module
    docstring. ``ttl`` is the lease of this queue's claims. ``path`` is used as given
    (``/jobs`` keeps its items at ``/jobs/<nanoseconds>``).

    Go's ``Dequeue`` reads the prefix ``path`` itself, so it also takes the items of a
    queue whose path merely starts with this one's (``/jobs2`` for ``/jobs``); geventc
    reads only ``path/``."""

    _go_suffix = b""

    def put(self, value: str | bytes) -> QueueItem:
        """Append ``value`` (Go's ``Enqueue``): the key ``path/<unix nanoseconds>``,
        created only if absent; returns the item once etcd stored it. Needs no start."""
        data = validate.value(value)
        for _ in range(PUT_ATTEMPTS):
            key = self._items_prefix + str(_unique_nanos()).encode()
            result = self._conn.txn([Compare.version(key) == 0], [Op.put(key, data)])
            if result.succeeded:
                self._wrote(result.header.revision, items=True)
                return QueueItem(key, data, result.header.revision)
        raise RetriesExhausted(f"{self!r}: {PUT_ATTEMPTS} keys in a row existed already")

    def _order_of(self, kv: KeyValue) -> tuple[Any, bytes]:
        return (kv.mod_revision, kv.key)


class PriorityQueue(_QueueBase):
    """A priority queue at ``path`` shared with Go's ``recipes.PriorityQueue``; see the
    module docstring. Priority 0 is served first, 65535 last; items of one priority
    first in, first out."""

    _go_suffix = b"/"

    def put(self, value: str | bytes, priority: int) -> QueueItem:
        """Add ``value`` with ``priority`` (0..65535, lower is served first; Go's
        ``Enqueue``): the sequence number after the last key under
        ``path/<priority>/``, written with Go's bookkeeping key in one guarded txn
        (retried when another producer won the race); returns the item once etcd
        stored it. Needs no start."""
        data = validate.value(value)
        rank = validate.integer(priority, "priority", minimum=0, maximum=MAX_PRIORITY)
        prefix = self._items_prefix + b"%05d" % rank
        bookkeeping = b"__" + prefix
        for _ in range(PUT_ATTEMPTS):
            last = self._conn.get_prefix(
                prefix + b"/", sort_target="KEY", sort_order="DESCEND", limit=1
            )
            key = prefix + b"/%016d" % _next_sequence(last)
            result = self._conn.txn(
                [
                    Compare.mod_revision(bookkeeping) < last.header.revision + 1,
                    Compare.create_revision(key) == 0,
                ],
                [Op.put(bookkeeping, b""), Op.put(key, data)],
            )
            if result.succeeded:
                self._wrote(result.header.revision, items=True)
                return QueueItem(key, data, result.header.revision, rank)
        raise RetriesExhausted(f"{self!r}: {PUT_ATTEMPTS} puts in a row lost a race")

    def _order_of(self, kv: KeyValue) -> tuple[Any, bytes]:
        return (kv.key, kv.key)

    def _item(self, kv: KeyValue) -> QueueItem:
        head = kv.key[len(self._items_prefix) :].split(b"/", 1)[0]
        rank = int(head) if len(head) == 5 and head.isdigit() else None
        return QueueItem(kv.key, kv.value, kv.mod_revision, rank)


_last_nanos = 0
_LEADING_INT = re.compile(rb"[+-]?\d+")


def _unique_nanos() -> int:
    """Unix time in nanoseconds, never the same twice in this process."""
    global _last_nanos
    _last_nanos = max(time.time_ns(), _last_nanos + 1)
    return _last_nanos


def _next_sequence(last: RangeResult) -> int:
    """The sequence number after the last key of a priority (0 when it has none), read
    as Go's ``fmt.Sscanf("%d")`` reads the key's last segment."""
    if not last.kvs:
        return 0
    tail = last.kvs[0].key.rsplit(b"/", 1)[-1]
    number = _LEADING_INT.match(tail)
    if number is None:
        raise EtcdError(f"the queue key {last.kvs[0].key_str!r} has no sequence number")
    return int(number.group()) + 1


__all__ = [
    "ClaimEvent",
    "ClaimStatus",
    "ClaimedItem",
    "PriorityQueue",
    "Queue",
    "QueueItem",
]
