"""Leftovers: the keys a holder could not delete in time, and its share of their lease.

A recipe that stops (or gives up an attempt) while etcd does not answer must neither
wait for etcd nor say that its keys are gone: it hands them here. A leftover is a key
with the guard its deletion needs (its lease, create or mod revision), so a deletion
never removes a newer key of the same name. The guarantees:

- :func:`delete_until_confirmed` retries the deletion (with backoff) until etcd
  confirms it, and gives up only when the keys no longer need it (``still_needed()``
  turned false) or the connector closed (which revokes its leases, and the keys on them);
- :func:`let_go` gives back a share of a lease without waiting for etcd. While other
  holders keep the lease alive, the leftovers on it are first deleted in the background,
  until etcd confirms or the lease is replaced or closed (the keys went with it): the
  share (and whatever the holder reserved for its keys, released by ``then``) is kept
  until then, so nothing of this holder is reused while its keys remain. As the lease's
  last holder, its revocation (which takes the keys with it) goes to the background, and
  :meth:`~geventc.lease.LeaseKeeper.unrevoked` counts the lease until etcd confirms.
  A write of the keys still under way (``after``: its answer never came in time) is
  waited for before their deletion is sent, so that the deletion comes after it (a
  deletion sent first could be overtaken by the write, and the key stay for good).
"""

from __future__ import annotations

import copy
import logging
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import gevent
from gevent.hub import Waiter

from .. import validate
from ..coalesce import Flight, resume_soon
from ..errors import ClientClosed, EtcdError
from ..lease import KeptLease, LeaseState
from ..retry import Backoff
from ..txn import Compare, Comparison, Op, TxnOp
from ..wire import JSON, b64

if TYPE_CHECKING:
    from ..host import RecipeHost
    from ..lease import LeaseListener

log = logging.getLogger("geventc")

#: How many requests of one bulk deletion are on their way at once.
BULK_INFLIGHT = 4

#: Keys to delete, each with the guard under which its deletion may happen.
Leftovers = Mapping[bytes, Comparison]


class Joinable(Protocol):
    """A write under way that can be waited for: a greenlet or a
    :class:`~geventc.coalesce.Flight`."""

    def join(self, timeout: float | None = None) -> Any:
        """Wait until it ended."""


def created_at(keys: Mapping[bytes, int]) -> dict[bytes, Comparison]:
    """Guards that hold while each key is the one created at its revision."""
    return {key: Compare.create_revision(key) == revision for key, revision in keys.items()}


def delete_guarded(conn: RecipeHost, leftovers: Leftovers) -> None:
    """Delete each key of ``leftovers`` while its guard holds, in as few requests as
    etcd's ``--max-txn-ops`` allows (one nested txn per key, so a key whose guard fails
    does not keep the others; up to :data:`BULK_INFLIGHT` of them on their way at
    once); raises the first request's error. One key is deleted by a txn
    of its guard and its deletion, which the client's coalescing may send together with
    other callers' (10,000 keys released at once cost ~80 requests, not 10,000)."""
    if not leftovers:
        return
    if len(leftovers) == 1:
        ((key, guard),) = leftovers.items()
        conn.txn([guard], [Op.delete(key)])
        return
    ops = [Op.txn([guard], [Op.delete(key)]) for key, guard in leftovers.items()]
    # etcd lets a nested txn hold as many operations as the outer one leaves of its
    # --max-txn-ops: each nested txn here holds one, so at most MAX_TXN_OPS - 1 of them
    step = validate.MAX_TXN_OPS - 1
    chunks = iter([ops[start : start + step] for start in range(0, len(ops), step)])
    if len(ops) <= step:
        conn.txn([], next(chunks))
        return

    def send() -> None:
        for chunk in chunks:
            conn.txn([], chunk)

    # up to BULK_INFLIGHT requests on their way at once (20,000 keys: 157 requests)
    senders = [conn.group.spawn(send) for _ in range(min(BULK_INFLIGHT, -(-len(ops) // step)))]
    try:
        gevent.joinall(senders, raise_error=True)
    finally:
        for sender in senders:
            sender.kill(block=False)


class _Chunk:
    """Up to ``MAX_TXN_OPS - 1`` guarded deletions sent as one txn; its flight ends
    once etcd answered (``error`` set when it failed). Each caller waits in a waiter of
    its own, all resumed at once (:func:`~geventc.coalesce.resume_soon`)."""

    __slots__ = ("done", "entries", "error", "flight", "sent", "waiters")

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.waiters: list[Waiter[Any]] = []
        self.flight = Flight()
        self.error: EtcdError | None = None
        self.sent = False
        self.done = False


class _Entry:
    """One caller's deletion: its key and its guard."""

    __slots__ = ("guard", "key", "withdrawn")

    def __init__(self, key: bytes, guard: Comparison) -> None:
        self.key = key
        self.guard = guard
        self.withdrawn = False


class _Bulk:
    """The bulk deletions of one connector: the chunk being filled during this loop
    turn, the full chunks waiting for a sender, and how many are on their way."""

    __slots__ = ("conn", "filling", "flushing", "inflight", "waiting")

    def __init__(self, conn: RecipeHost) -> None:
        self.conn = conn
        self.filling: _Chunk | None = None
        self.flushing = False  # the end-of-turn callback is scheduled
        self.waiting: deque[_Chunk] = deque()
        self.inflight = 0

    def add(self, entry: _Entry) -> _Chunk:
        """Put ``entry`` into the chunk being filled; a chunk that is full goes at once
        (etcd works while the other callers of this turn still run), the rest at the
        end of the turn."""
        chunk = self.filling
        if chunk is None:
            chunk = self.filling = _Chunk()
        chunk.entries.append(entry)
        if len(chunk.entries) >= validate.MAX_TXN_OPS - 1:
            self.filling = None
            self.dispatch(chunk)
        elif not self.flushing:
            self.flushing = True
            gevent.get_hub().loop.run_callback(self.flush)
        return chunk

    def flush(self) -> None:
        """End of the loop turn: what was gathered goes."""
        self.flushing = False
        chunk, self.filling = self.filling, None
        if chunk is not None:
            self.dispatch(chunk)

    def dispatch(self, chunk: _Chunk) -> None:
        """Send ``chunk`` now, or after one of the :data:`BULK_INFLIGHT` chunks on their
        way; a sender starts at the loop's next turn (a timer), ahead of the greenlets
        merely ready to run."""
        if self.inflight >= BULK_INFLIGHT:
            self.waiting.append(chunk)
            return
        self.inflight += 1
        sender: gevent.Greenlet[..., Any] = gevent.Greenlet(self.send, chunk)
        self.conn.group.add(sender)
        sender.start_later(0)

    def send(self, chunk: _Chunk) -> None:
        """Send ``chunk``, then every chunk still waiting, one after the other."""
        try:
            while True:
                _send_chunk(self.conn, chunk)
                if not self.waiting:
                    return
                chunk = self.waiting.popleft()
        finally:
            self.inflight -= 1
            idle = not self.inflight and not self.waiting and self.filling is None
            if idle and _BULKS.get(id(self.conn)) is self:
                del _BULKS[id(self.conn)]


def _send_chunk(conn: RecipeHost, chunk: _Chunk) -> None:
    chunk.sent = True
    try:
        ops = [
            TxnOp(
                "request_txn",
                {"compare": [e.guard.body()], "success": [_deletion(e.key)]},
                len(e.key),
            )
            for e in chunk.entries
            if not e.withdrawn
        ]
        if ops:
            conn.txn([], ops)
    except EtcdError as exc:
        chunk.error = exc
    except BaseException:
        chunk.error = ClientClosed("the deletion was interrupted (closing)")
        raise
    finally:
        chunk.done = True
        chunk.flight.end()
        resume_soon(chunk.waiters)


#: the bulk deletions under way, per connector (by id: removed once idle)
_BULKS: dict[int, _Bulk] = {}


def delete_together(
    conn: RecipeHost, key: bytes, guard: Comparison, *, in_flight: list[Joinable]
) -> None:
    """Delete ``key`` while ``guard`` holds, together with every other key whose
    deletion is asked for meanwhile (one request per ``MAX_TXN_OPS - 1`` keys, sent as
    soon as it is full or at the end of the loop turn, up to :data:`BULK_INFLIGHT` on
    their way at once, each key in a nested txn of its own, as :func:`delete_guarded`
    does): 20,000 keys stopped at once cost 158 requests, not 20,000 calls, and the
    first goes while the others are still being stopped. Returns once etcd confirmed
    the request that carried it; raises that request's error. A caller interrupted
    before its deletion was sent withdraws it (never sent); interrupted after, it finds
    the request's :class:`Flight` in ``in_flight`` (a deletion sent after it ended comes
    after this one)."""
    bulk = _BULKS.get(id(conn))
    if bulk is None or bulk.conn is not conn:
        bulk = _BULKS[id(conn)] = _Bulk(conn)
    entry = _Entry(key, guard)
    chunk = bulk.add(entry)
    try:
        if not chunk.done:
            waiter: Waiter[Any] = Waiter()
            chunk.waiters.append(waiter)
            waiter.get()
    except BaseException:
        if not chunk.sent:
            entry.withdrawn = True  # never sent
        elif not chunk.done:
            in_flight.append(chunk.flight)
        raise
    if chunk.error is not None:
        raise copy.copy(chunk.error)


def _deletion(key: bytes) -> JSON:
    return {"request_delete_range": {"key": b64(key)}}


def gone_with(conn: RecipeHost, lease: KeptLease | None, lease_id: int | None = None) -> bool:
    """True when the keys on ``lease`` (with ``lease_id``, when given: the id the keys
    were written with) are surely gone because the connector is closing and etcd
    confirmed the lease's revocation: a holder need not delete them one by one (and may
    say they are deleted)."""
    if lease is None or not conn.closing or not lease.revoked:
        return False
    return lease_id is None or lease_id == lease.revoked_id


def _always() -> bool:
    return True


def delete_until_confirmed(
    conn: RecipeHost,
    leftovers: Leftovers,
    *,
    still_needed: Callable[[], bool] = _always,
    owner: object = "",
) -> bool:
    """Delete ``leftovers`` (see :func:`delete_guarded`), retrying with backoff while
    etcd fails: True once etcd confirmed it, False when ``still_needed()`` turned false
    or the connector closed first. ``owner`` names who left them, in the log."""
    backoff = Backoff(first=0.2, cap=2.0)
    while leftovers and not conn.closed and still_needed():
        try:
            delete_guarded(conn, leftovers)
            return True
        except EtcdError as exc:
            log.info("%s: deleting %s failed (%s); retrying", owner, _named(leftovers), exc)
            gevent.sleep(backoff.next())
    return not leftovers


def let_go(
    conn: RecipeHost,
    lease: KeptLease,
    listener: LeaseListener,
    leftovers: Leftovers,
    *,
    then: Callable[[], None] | None = None,
    after: Iterable[Joinable] = (),
    owner: object = "",
) -> float | None:
    """Give back ``listener``'s share of ``lease`` without waiting for etcd, with the
    ``leftovers`` on it that could not be deleted in time (see the module docstring),
    once the writes ``after`` (writes of them still under way: their greenlets or
    :class:`~geventc.coalesce.Flight`) ended.
    Returns about how many seconds the leftovers stay (None: until a background
    deletion succeeds). ``then`` runs once nothing more is deleted on the holder's
    behalf (to drop a name it reserved for the keys). The leftovers of every holder of
    the lease letting go meanwhile are deleted together (one request per 127 keys, one
    greenlet for all: 20,000 keys let go at once do not become 20,000 retries)."""
    if leftovers and lease.holders > 1:
        sweeper = _SWEEPERS.get(lease)
        if sweeper is None or sweeper.lease_id != lease.id or sweeper.done:
            sweeper = _SWEEPERS[lease] = _Sweeper(conn, lease)
        sweeper.add(_Share(listener, dict(leftovers), then, [*after], owner))
        return None
    conn.lease_keeper.release_later(lease, listener)
    if then is not None:
        then()
    return lease.expires_in


@dataclass
class _Share:
    """A holder's share of a lease, given back once its leftovers are gone."""

    listener: LeaseListener
    leftovers: dict[bytes, Comparison]
    then: Callable[[], None] | None
    after: list[Joinable]
    owner: object


class _Sweeper:
    """The leftovers of the holders of one lease (with its id now) letting go: once the
    writes they wait for ended, and while other holders keep the lease alive with that
    id (the keys' lease), they are deleted together; then every share is given back (the
    last holder's revocation takes whatever is left with it)."""

    def __init__(self, conn: RecipeHost, lease: KeptLease) -> None:
        self.conn = conn
        self.lease = lease
        self.lease_id = lease.id
        self.pending: list[_Share] = []
        self.done = False
        conn.group.spawn(self._run)

    def add(self, share: _Share) -> None:
        """Delete ``share``'s leftovers with the others', then give it back."""
        self.pending.append(share)

    def _still_needed(self, leaving: int) -> bool:
        """True while holders other than the ``leaving`` ones keep the lease alive with
        the keys' id (else the keys went, or go, with it)."""
        lease = self.lease
        others = lease.holders > leaving
        return others and lease.id == self.lease_id and lease.state is not LeaseState.CLOSED

    def _run(self) -> None:
        taken: list[_Share] = []
        try:
            while self.pending:
                gevent.sleep(0)  # every holder letting go now joins this round
                taken, self.pending = self.pending, []
                for share in taken:
                    for write in share.after:
                        write.join()
                leftovers = {k: v for share in taken for k, v in share.leftovers.items()}
                owner = taken[0].owner if len(taken) == 1 else f"{len(taken)} holders"

                def still_needed(count: int = len(taken)) -> bool:
                    return self._still_needed(count + len(self.pending))

                delete_until_confirmed(self.conn, leftovers, still_needed=still_needed, owner=owner)
                for share in taken:
                    self.conn.lease_keeper.release_later(self.lease, share.listener)
                taken = self._then(taken)
        finally:
            self.done = True
            if _SWEEPERS.get(self.lease) is self:
                del _SWEEPERS[self.lease]
            self._then([*taken, *self.pending])  # stopped (the connector closes): still ends

    @staticmethod
    def _then(shares: list[_Share]) -> list[_Share]:
        for share in shares:
            if share.then is not None:
                try:
                    share.then()
                except Exception:  # one holder's bug must not keep the others' names
                    log.exception("releasing what %s reserved failed", share.owner)
        return []


#: the sweeper of each lease with leftovers being deleted
_SWEEPERS: weakref.WeakKeyDictionary[KeptLease, _Sweeper] = weakref.WeakKeyDictionary()


def _named(leftovers: Leftovers) -> str:
    if len(leftovers) == 1:
        return repr(next(iter(leftovers)))
    return f"{len(leftovers)} keys"


__all__ = [
    "Leftovers",
    "created_at",
    "delete_guarded",
    "delete_until_confirmed",
    "gone_with",
    "let_go",
]
