"""Barrier and DoubleBarrier: etcd Go ``experimental/recipes`` barriers, key for key.

Both use exactly Go's keys and algorithms, so Go and geventc processes given the same
path block and release one another:

- :class:`Barrier` is one key, ``path``: ``hold()`` creates it (only if absent, no
  lease, value ``""``: Go's ``newKey`` with ``NoLease``), ``release()`` deletes it and
  ``wait()`` blocks while it exists, until its deletion.
- :class:`DoubleBarrier` of ``count`` participants keeps each participant's key at
  ``path + "/waiters/" + <time.Now().UnixNano()>`` on the participant's lease; the
  ``count``-th to arrive puts ``path + "/ready"`` (no lease), which lets everyone in;
  on the way out the participant whose key was modified first (the *lowest*) waits
  for the others' keys to go and leaves last, deleting ``ready``.

Waits never poll: they follow the connector's shared watch of the prefix (one stream
per prefix per connector, whatever the number of waiters) and act on the deletion or
put they were waiting for, which is only ever taken from etcd's own history.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gevent.event import Event as Signal

from .. import validate
from ..errors import (
    EtcdError,
    InvalidArgument,
    KeyExists,
    LeaseNotFound,
    RecipeStateError,
    TooManyParticipants,
)
from ..host import require_host
from ..lease import KeptLease, LeaseState
from ..txn import Compare, Op
from ..watch import PrefixUpdate
from ..wire import EventType, KeyValue, RangeResult
from .base import Recipe, Release, unconfirmed
from .leftover import delete_until_confirmed, let_go

if TYPE_CHECKING:
    from ..host import RecipeHost

log = logging.getLogger("geventc")


def _barrier_path(conn: RecipeHost, path: object) -> bytes:
    """``path`` as the connector stores it, without the namespace; refuses the root."""
    stored = conn.namespace.strip(conn.namespace.key(path, "path"))
    if not stored.strip(b"/"):
        raise InvalidArgument("path must name a barrier, not the root (got only slashes)")
    return stored


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (None: no deadline), never below zero."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _gone(state: Mapping[bytes, KeyValue], revision: int, kv: KeyValue) -> bool:
    """True when a copy of the keys at ``revision`` shows that ``kv`` was deleted: the
    copy is at or past ``kv``'s last write and no longer holds that key (absent, or a
    later incarnation with another create revision)."""
    if revision < kv.mod_revision:
        return False  # the copy has not reached kv's write yet
    current = state.get(kv.key)
    return current is None or current.create_revision != kv.create_revision


class _Copy:
    """What one listener of the connector's shared prefix watch last saw, and a signal
    that wakes the greenlet waiting on it."""

    __slots__ = ("error", "revision", "signal", "state")

    def __init__(self, signal: Signal | None = None) -> None:
        self.state: Mapping[bytes, KeyValue] = {}
        self.revision = 0
        self.error: EtcdError | None = None
        self.signal = signal if signal is not None else Signal()

    def __call__(self, update: PrefixUpdate) -> None:
        if update.error is not None:
            self.error = update.error  # the watch failed on every endpoint (it retries)
        else:
            self.error = None
            self.state, self.revision = update.state, update.revision
        self.signal.set()

    def wait_for(self, condition: Callable[[], bool], deadline: float | None) -> bool:
        """Wait until ``condition()`` holds (True) or ``deadline`` passes (False);
        raises the watch's error when it failed on every endpoint."""
        while True:
            self.signal.clear()  # cleared before the check: no wake-up is lost
            if self.error is not None:
                raise self.error
            if condition():
                return True
            remaining = _left(deadline)
            if remaining == 0.0 or not self.signal.wait(remaining):
                return condition()


class Barrier:
    """Go's ``recipe.Barrier`` at the key ``path`` (used as given, under the
    connector's namespace): ``hold()`` blocks every ``wait()`` until ``release()``.

    The barrier key has no lease: like Go's, a held barrier stays held until someone
    releases it, whatever happens to the holder's process. A Barrier has no greenlet
    and holds nothing of its own, so it needs no start or stop; ``wait()`` joins the
    connector's shared watch of the key only while it waits."""

    __slots__ = ("_conn", "path")

    def __init__(self, conn: RecipeHost, path: str) -> None:
        self._conn = require_host(conn, "Barrier")
        self.path = _barrier_path(self._conn, path)

    def __repr__(self) -> str:
        return f"Barrier({self.path.decode('utf-8', 'replace')!r})"

    def hold(self) -> None:
        """Create the barrier key (value ``""``, no lease), so that ``wait()`` blocks;
        raises :class:`KeyExists` when the barrier is already held (Go's
        ``ErrKeyExists``), by this or any other process."""
        result = self._conn.txn(
            [Compare.version(self.path) == 0], [Op.put(self.path, b"")], [Op.get(self.path)]
        )
        if not result.succeeded:
            raise KeyExists(f"the barrier {self.path.decode('utf-8', 'replace')!r} is held")

    def release(self) -> bool:
        """Delete the barrier key, releasing every waiter (Go's ``Release``); True when
        etcd deleted it, False when it was not held."""
        result = self._conn.txn([], [Op.delete(self.path)])
        deleted = result.responses[0] if result.responses else None
        return bool(getattr(deleted, "deleted", 0))

    def held(self) -> bool:
        """True when the barrier key exists now (a linearizable read)."""
        return self._conn.get(self.path) is not None

    def wait(self, timeout: float | None = None) -> bool:
        """Block while the barrier is held: True at once when the key does not exist
        (Go's ``Wait`` takes that as released), else True once etcd's history shows the
        key read here deleted; False when ``timeout`` seconds passed first. Raises the
        read's error, or the watch's once it failed on every endpoint (for the client's
        timeout): it never returns True unless the deletion was seen."""
        deadline = _deadline(validate.timeout(timeout))
        found = self._conn.get(self.path)
        if found is None:
            return True
        copy = _Copy()
        self._conn.hub.subscribe(self.path, copy, key=self.path)
        try:
            return copy.wait_for(lambda: _gone(copy.state, copy.revision, found), deadline)
        finally:
            self._conn.hub.unsubscribe(self.path, copy, key=self.path)


class DoubleBarrierStatus(enum.Enum):
    """What happened to a double-barrier participant."""

    ENTERED = "ENTERED"
    LEFT = "LEFT"
    SUSPENDED = "SUSPENDED"
    RESUMED = "RESUMED"
    LOST = "LOST"


@dataclass(frozen=True, slots=True)
class DoubleBarrierEvent:
    """A participant's news: it ``ENTERED`` or ``LEFT`` the barrier, or its lease
    renewals are overdue (``SUSPENDED``), succeed again (``RESUMED``) or it expired
    (``LOST``: its waiter ``key`` is gone from etcd). ``key`` is the waiter key."""

    status: DoubleBarrierStatus
    key: str
    error: EtcdError | None = None


class _Phase(enum.Enum):
    IDLE = "IDLE"
    ENTERED = "ENTERED"


class DoubleBarrier(Recipe[DoubleBarrierEvent]):
    """A participant in Go's ``recipe.DoubleBarrier`` of ``count`` at ``path`` (used as
    given, under the connector's namespace): ``enter()`` returns once ``count``
    participants entered, ``leave()`` once every one of them left.

    Its waiter key lives on the connector's shared lease of ``ttl`` seconds, so a
    participant that dies drops out when its lease ends, and the others go on (Go's
    guarantee). The participant starts (takes its share of the lease and joins the
    shared watch of ``path + "/"``) with ``start()``, ``with``, or implicitly at the first
    ``enter()``; ``stop()`` deletes its waiter key if it has one and gives back its lease
    share. After ``leave()`` it may ``enter()`` again (the next round).

    Failures are never silent: a participant whose lease is lost while it enters gets
    :class:`LeaseNotFound` from ``enter()`` (it is out: enter again); while it is
    inside or leaving, the ``LOST`` event says its key went, and ``leave()`` goes on
    (its key leaving is what ``leave()`` does anyway). The channel carries
    :class:`DoubleBarrierEvent` news and :class:`~geventc.recipes.base.RecipeError`."""

    __slots__ = (
        "_busy",
        "_copy",
        "_key",
        "_key_deleted",
        "_key_lease",
        "_key_lost",
        "_key_revision",
        "_lease",
        "_leftover",
        "_orphaned",
        "_pending",
        "_phase",
        "_ready_put",
        "_suspended",
        "count",
        "path",
        "ttl",
    )

    def __init__(self, conn: RecipeHost, path: str, count: int, ttl: int = 10) -> None:
        super().__init__(conn)
        self.path = _barrier_path(self._conn, path)
        self.count = validate.integer(count, "count", minimum=1)
        self.ttl = validate.ttl(ttl)
        self._lease: KeptLease | None = None
        self._copy = _Copy()
        self._phase = _Phase.IDLE
        self._busy = False
        self._key = b""  # this participant's waiter key, while it has one
        self._key_revision = 0  # its create revision (Go's ek.rev)
        self._key_lease = 0
        self._key_deleted = False  # leave() deleted it (Go's myKey.Delete)
        self._key_lost = False  # its lease was lost: the key is gone
        self._suspended = False
        self._leftover: float | None = None
        self._pending = b""  # a waiter key whose create is under way
        self._orphaned: KeptLease | None = None  # the share stop() left to that create
        self._ready_put = 0  # the newest revision the watch saw ready put at

    def __repr__(self) -> str:
        return f"DoubleBarrier({self.path.decode('utf-8', 'replace')!r}, count={self.count})"

    # --- keys ----------------------------------------------------------------------------

    @property
    def _waiters(self) -> bytes:
        """The prefix Go reads the participants under (``path + "/waiters"``)."""
        return self.path + b"/waiters"

    @property
    def _ready(self) -> bytes:
        return self.path + b"/ready"

    @property
    def key(self) -> str | None:
        """The waiter key this participant wrote, until it is deleted (None before
        ``enter()``, after ``leave()`` or a withdrawal)."""
        return self._key.decode() if self._key and not self._key_deleted else None

    @property
    def entered(self) -> bool:
        """True between a successful ``enter()`` and the end of ``leave()``."""
        return self._phase is _Phase.ENTERED

    # --- life cycle ------------------------------------------------------------------

    def _start(self) -> None:
        """Take a share of the connector's lease of ``ttl`` and follow ``path + "/"``."""
        self._begin()
        try:
            self._lease = self._conn.lease_keeper.acquire(self.ttl, self._on_lease)
            self._conn.hub.subscribe(self.path + b"/", self._on_change)
        except BaseException:
            self.stop()
            raise

    def enter(self, timeout: float | None = None) -> bool:
        """Wait until ``count`` participants entered (Go's ``Enter``): True once in,
        False when ``timeout`` seconds passed first (the key is then withdrawn, unless
        the barrier opened meanwhile: then True). Raises
        :class:`TooManyParticipants` when ``count`` are already in or arrived first
        (Go's ``ErrTooManyClients``; nothing is left behind), :class:`LeaseNotFound`
        when its lease was lost meanwhile, or etcd's error; after an error it is not
        in, and its key is withdrawn (in the background if etcd does not answer)."""
        deadline = _deadline(validate.timeout(timeout))
        if self._phase is _Phase.ENTERED:
            raise RecipeStateError(f"{self!r} already entered; leave() first")
        if self._stopped:
            raise RecipeStateError(f"{self!r} was stopped; make a new one to enter again")
        if not self._running:
            self.start()
        with self._one_call("enter"):
            return self._enter(deadline)

    def leave(self, timeout: float | None = None) -> bool:
        """Wait until every participant left (Go's ``Leave``): True once out, False when
        ``timeout`` seconds passed first; after False or an error the participant is
        still leaving, and ``leave()`` again picks up where it stood (``stop()`` gives
        up instead). A lost lease does not stop it: its key going is part of leaving."""
        deadline = _deadline(validate.timeout(timeout))
        if self._phase is not _Phase.ENTERED or not self._running:
            raise RecipeStateError(f"{self!r} has not entered; enter() first")
        with self._one_call("leave"):
            if not self._leave(deadline):
                return False
        self._emit(DoubleBarrierEvent(DoubleBarrierStatus.LEFT, self._key.decode()))
        self._forget_key()
        self._phase = _Phase.IDLE
        return True

    @contextmanager
    def _one_call(self, what: str) -> Iterator[None]:
        if self._busy:
            raise RecipeStateError(
                f"{self!r}: {what}() while another enter() or leave() is in progress"
            )
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    # --- enter (Go's Enter) ----------------------------------------------------------

    def _enter(self, deadline: float | None) -> bool:
        self._withdraw_leftover()
        if self._participants(count_only=True).count >= self.count:
            raise TooManyParticipants(f"{self!r} already has {self.count} participants")
        self._create_key(deadline)
        try:
            return self._settle(deadline)
        except Exception:  # not in: withdraw (a kill leaves that to stop())
            self._withdraw()
            raise

    def _settle(self, deadline: float | None) -> bool:
        """After the key exists: open the barrier as the ``count``-th, refuse as a
        late extra, or wait for ``ready``."""
        arrived = self._participants(limit=self.count).kvs
        if len(arrived) >= self.count:
            last = arrived[self.count - 1]
            if self._key_revision > last.create_revision:
                raise TooManyParticipants(f"{self!r} was full before this participant came")
            if self._key_revision == last.create_revision:
                self._conn.put(self._ready, b"")
                return self._now_entered()
        if self._copy.wait_for(self._opened, deadline):
            return self._now_entered()
        return self._withdraw_unless_open()

    def _participants(self, **options: object) -> RangeResult:
        """The waiter keys, oldest first (Go's ``enteredClients``)."""
        return self._conn.get_prefix(
            self._waiters, sort_target="CREATE", sort_order="ASCEND", keys_only=True, **options
        )

    def _create_key(self, deadline: float | None) -> None:
        """Go's ``newUniqueEphemeralKey``: ``waiters/<unix nanos>`` on the lease. When
        etcd says the lease is gone (revoked behind our back), the keeper grants a new
        one at once: the key is written on that one."""
        for attempt in (1, 2):
            used = self._live_lease(deadline)
            try:
                self._put_unique_key(used)
                return
            except LeaseNotFound:
                assert self._lease is not None
                self._lease.invalidate(used)
                if attempt == 2:
                    raise

    def _live_lease(self, deadline: float | None) -> int:
        """The lease's id once it is surely alive (after a loss the keeper grants a new
        one at once); waits at most the request timeout (or until ``deadline``)."""
        lease = self._lease
        assert lease is not None
        bound = time.monotonic() + self._conn.request_timeout
        limit = bound if deadline is None else min(bound, deadline)
        if not self._copy.wait_for(lambda: lease.valid, limit):
            raise LeaseNotFound(f"{self!r}: no live lease of {self.ttl}s could be had in time")
        return lease.id

    def _put_unique_key(self, lease_id: int) -> None:
        while True:
            key = self._waiters + b"/" + str(time.time_ns()).encode()
            self._pending = key
            created: bool | None = None  # None: etcd's answer is not known
            try:
                # reading the waiters in the same txn keeps a coalescing client from
                # giving two participants one revision: Go's Leave orders them by it
                result = self._conn.txn(
                    [Compare.version(key) == 0],
                    [
                        Op.put(key, b"", lease=lease_id),
                        Op.get(self._waiters, prefix=True, count_only=True),
                    ],
                )
                created = result.succeeded
            finally:
                self._pending = b""
                if self._orphaned is not None:  # stopped meanwhile: the key is ours to go
                    self._let_go_of_created(key, lease_id, created)
            if created:
                break
        self._key, self._key_revision, self._key_lease = key, result.header.revision, lease_id
        self._key_deleted = self._key_lost = False

    def _let_go_of_created(self, key: bytes, lease_id: int, created: bool | None) -> None:
        """stop() ran while ``key`` was being created and left its lease share to this
        create: give it back with the key (unless etcd said it was not created) deleted
        first, in the background until etcd confirms (:func:`let_go`)."""
        lease, self._orphaned = self._orphaned, None
        assert lease is not None
        doomed = {} if created is False else {key: Compare.lease(key) == lease_id}
        self._leftover = let_go(self._conn, lease, self._on_lease, doomed, owner=self)
        if created is not None:  # stopped before it got in: enter() says so
            raise RecipeStateError(f"{self!r} was stopped while it waited to enter")

    def _still_running(self, what: str) -> None:
        if not self._running:
            raise RecipeStateError(f"{self!r} was stopped while it waited to {what}")

    def _opened(self) -> bool:
        """True once ``ready`` was put after this key was created (Go watches it from
        the key's revision); raises when the key is gone before that."""
        self._still_running("enter")
        ready = self._copy.state.get(self._ready)
        put_at = max(self._ready_put, ready.mod_revision if ready is not None else 0)
        if put_at >= self._key_revision:
            return True
        if self._key_lost:
            raise LeaseNotFound(f"{self!r}: the lease was lost while entering; the key is gone")
        mine = KeyValue(
            self._key, create_revision=self._key_revision, mod_revision=self._key_revision
        )
        if _gone(self._copy.state, self._copy.revision, mine):
            error = EtcdError(
                f"{self!r}: the waiter key {self._key.decode()!r} was deleted while entering "
                "(its lease was revoked or expired, or someone deleted it)"
            )
            self._key_lost = True
            self._emit(DoubleBarrierEvent(DoubleBarrierStatus.LOST, self._key.decode(), error))
            raise error
        return False

    def _now_entered(self) -> bool:
        self._phase = _Phase.ENTERED
        self._emit(DoubleBarrierEvent(DoubleBarrierStatus.ENTERED, self._key.decode()))
        return True

    def _withdraw_unless_open(self) -> bool:
        """Out of time: delete the key unless ``ready`` was put after it (atomically);
        True when the barrier opened after all."""
        result = self._conn.txn(
            [Compare.mod_revision(self._ready) < self._key_revision],
            [Op.delete(self._key)],
        )
        if not result.succeeded:
            return self._now_entered()
        self._forget_key()
        return False

    # --- leave (Go's Leave) ----------------------------------------------------------

    def _leave(self, deadline: float | None) -> bool:
        while True:
            awaited = self._leave_step()
            if awaited is None:
                return True
            if not self._copy.wait_for(self._deleted(awaited), deadline):
                return False

    def _deleted(self, awaited: KeyValue) -> Callable[[], bool]:
        """The condition "``awaited`` was deleted" on the shared copy."""

        def condition() -> bool:
            self._still_running("leave")
            return _gone(self._copy.state, self._copy.revision, awaited)

        return condition

    def _leave_step(self) -> KeyValue | None:
        """One pass of Go's ``Leave``: None when done, else the key whose deletion to
        wait for (the highest for the lowest participant, else the lowest)."""
        kvs = self._conn.get_prefix(self._waiters, keys_only=True).kvs
        if not kvs:
            return None
        lowest = min(kvs, key=lambda kv: kv.mod_revision)
        highest = max(kvs, key=lambda kv: kv.mod_revision)
        is_lowest = lowest.key == self._key
        if len(kvs) == 1 and is_lowest:  # the last one out: finish up
            self._conn.txn([], [Op.delete(self._ready), Op.delete(self._key)])
            self._key_deleted = True
            return None
        if is_lowest:
            return highest
        self._delete_own_key()
        return lowest

    def _delete_own_key(self) -> None:
        if not self._key_deleted:
            self._conn.txn([Compare.lease(self._key) == self._key_lease], [Op.delete(self._key)])
            self._key_deleted = True

    # --- withdrawing -----------------------------------------------------------------

    def _withdraw(self) -> None:
        """Delete this participant's key after a failed enter; if etcd does not answer,
        keep trying in the background (and at the next enter or stop)."""
        if not self._key:
            return
        try:
            self._delete_own_key()
        except EtcdError as exc:
            log.warning("%r: could not withdraw %r (%s); retrying", self, self._key, exc)
            if self._running:  # else stop() deletes it (or it goes with the lease)
                self._spawn(self._withdraw_later, self._key, self._key_lease)
            return
        self._forget_key()

    def _withdraw_later(self, key: bytes, lease_id: int) -> None:
        """Delete ``key`` once etcd answers, unless a new enter() or stop() did."""
        if (
            delete_until_confirmed(
                self._conn,
                {key: Compare.lease(key) == lease_id},
                still_needed=lambda: self._running and self._key == key and not self._key_deleted,
                owner=self,
            )
            and self._key == key
        ):
            self._forget_key()

    def _withdraw_leftover(self) -> None:
        """A key a failed enter could not withdraw goes before a new one is made."""
        if self._key and not self._key_deleted:
            self._delete_own_key()
        self._forget_key()

    def _forget_key(self) -> None:
        self._key, self._key_revision, self._key_lease = b"", 0, 0
        self._key_deleted = self._key_lost = self._suspended = False

    # --- callbacks (from the lease and watch greenlets) ------------------------------

    def _on_change(self, update: PrefixUpdate) -> None:
        for event in update.events:  # a put of ready counts even if deleted in the batch
            if event.kv.key == self._ready and event.type is EventType.PUT:
                self._ready_put = max(self._ready_put, event.kv.mod_revision)
        self._copy(update)

    def _on_lease(self, lease: KeptLease, state: LeaseState) -> None:
        self._copy.signal.set()  # an enter() may wait for a live lease
        if not self._running or not self._key or self._key_deleted or self._key_lost:
            return
        if lease.id != self._key_lease or state is LeaseState.LOST:
            self._key_lost = True
            self._emit(DoubleBarrierEvent(DoubleBarrierStatus.LOST, self._key.decode()))
        elif state is LeaseState.SUSPENDED and not self._suspended:
            self._suspended = True
            self._emit(DoubleBarrierEvent(DoubleBarrierStatus.SUSPENDED, self._key.decode()))
        elif state is LeaseState.ACTIVE and self._suspended:
            self._suspended = False
            self._emit(DoubleBarrierEvent(DoubleBarrierStatus.RESUMED, self._key.decode()))
        self._copy.signal.set()

    # --- stop ------------------------------------------------------------------------

    def _release(self) -> Release | None:
        self._conn.hub.unsubscribe(self.path + b"/", self._on_change)
        self._copy.signal.set()  # a pending enter() or leave() raises: stopped
        lease, self._lease = self._lease, None
        key = self._key if self._key and not self._key_deleted and not self._key_lost else b""
        key_lease = self._key_lease
        self._forget_key()
        self._phase = _Phase.IDLE
        if lease is None:
            return None
        if self._pending and not self._conn.closing:
            # enter()'s create is under way: it lets go of the key and the share once
            # etcd answered (a closing connector revokes the lease: nothing to wait for)
            self._orphaned = lease
            return unconfirmed(
                self._held_text(), None, "its create was under way when the barrier stopped"
            )
        mine = bool(key) and not self._conn.closing  # closing revokes the lease
        doomed = {key: Compare.lease(key) == key_lease} if mine else {}
        try:
            if mine:
                self._conn.txn([doomed[key]], [Op.delete(key)])
        except BaseException:  # no answer, or out of time: let go without waiting
            self._leftover = let_go(self._conn, lease, self._on_lease, doomed, owner=self)
            raise
        revoked = self._conn.lease_keeper.release(lease, self._on_lease, timeout=self._remaining())
        if revoked is False and key and not mine:
            self._leftover = lease.expires_in
            return unconfirmed(self._held_text(), self._leftover, "its lease was not revoked")
        return None

    def _held_text(self) -> str:
        return f"delete the waiter key of {self.path.decode('utf-8', 'replace')}"

    def _expires_in(self) -> float | None:
        return self._leftover


__all__ = ["Barrier", "DoubleBarrier", "DoubleBarrierEvent", "DoubleBarrierStatus"]
