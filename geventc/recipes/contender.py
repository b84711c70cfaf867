"""What locks, semaphores and readers-writer locks share: queue for a hold by putting a
key on a kept lease, hold it while few enough older keys are left, and say so truthfully.

A :class:`Contender` puts one key under its lock's prefix (created only if absent, on
the connector's shared lease of its TTL) and holds the lock once fewer than ``slots``
*blocking* keys created before its own are left: the Go ``concurrency.Mutex`` rule
(``slots`` = 1, every key under the prefix blocks), generalised for semaphores (``slots``
= N) and readers (only writers block). Its status is reported on its channel as a
:class:`LockEvent`:

- ``ACQUIRED`` (with ``fencing_token``: the key's create revision) once etcd showed no
  more than ``slots - 1`` older blocking keys and the lease was renewed in time; again
  after a ``SUSPENDED`` once renewals succeed again (the lease, and so the key, lived on);
- ``SUSPENDED``: a renewal of the lease is overdue (DESIGN §3: at most TTL/3 +
  ``min(1 s, TTL/6)`` after the last renewal that succeeded was sent); the holder must
  stop acting on the lock until ``ACQUIRED`` again or ``LOST``;
- ``LOST``: the lease surely expired, etcd no longer has it, or a guarded write found
  the key gone: the lock is not held; the holder may ``acquire()`` again;
- ``RELEASED``: etcd confirmed the key deleted (``release()``).

An uncontended acquire is one txn (Go's ``tryAcquire``: create the key and read the
oldest keys at once) and a release one more; a contended acquire waits on the shared
watch of the prefix (one stream per prefix per process) and holds the lock as soon as
the watch delivers the deletion ahead of it. A failed, refused or timed-out acquire
deletes its key (in the background until etcd confirms it, if etcd does not answer) and
gives back its lease share: it leaves nothing behind.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import gevent
from gevent.event import Event as Signal

from .. import validate
from ..errors import (
    ConnectionFailed,
    EtcdError,
    IndeterminateWrite,
    InvalidArgument,
    LeaseNotFound,
    NotAcquired,
    NotLockHolder,
    RecipeStateError,
    Timeout,
    TooManyRequests,
    Unavailable,
)
from ..lease import KeptLease, LeaseState
from ..retry import Backoff
from ..txn import Compare, Comparison, Op, TxnOp
from ..watch import PrefixUpdate
from ..wire import KeyValue, RangeResult, TxnResult
from .base import RELEASED, Recipe, Release, unconfirmed
from .leftover import delete_until_confirmed, gone_with

if TYPE_CHECKING:
    from ..host import RecipeHost

log = logging.getLogger("geventc")
C = TypeVar("C", bound="Contender")

#: Errors after which an acquire tries again (with backoff) until its timeout: the
#: server may answer later, and the key, if it was written, is found again.
RETRIED = (
    ConnectionFailed,
    Timeout,
    Unavailable,
    TooManyRequests,
    IndeterminateWrite,
    LeaseNotFound,
)


class LockStatus(enum.Enum):
    """Where a lock holder stands (see the module docstring)."""

    ACQUIRED = "ACQUIRED"
    SUSPENDED = "SUSPENDED"
    LOST = "LOST"
    RELEASED = "RELEASED"


@dataclass(frozen=True, slots=True)
class LockEvent:
    """A change of a holder's status; ``key`` is its key (namespace stripped),
    ``fencing_token`` its create revision while ``ACQUIRED``, ``error`` why it was
    suspended or lost when that is known."""

    status: LockStatus
    fencing_token: int = 0
    key: str = ""
    error: EtcdError | None = None


class Contender(Recipe[LockEvent]):
    """A holder of a lock-like recipe; subclasses name the key, the value, the blocking
    keys and the number of slots (see the module docstring).

    ``acquire()`` starts it if needed; ``with holder:`` acquires (blocking until it
    holds, raising if it cannot) and releases at the end, and stops the recipe too when
    the ``with`` started it. Between a ``release()`` and the next ``acquire()`` a
    started holder keeps its share of the lease, so an uncontended acquire and release
    are one request each; ``stop()`` releases and gives the share back."""

    #: the name of the kind, in messages ("lock", "semaphore", "read lock", ...)
    kind = "lock"
    #: how many holders may hold at once
    slots = 1

    def __init__(self, conn: RecipeHost, path: str, *, ttl: int = 10) -> None:
        super().__init__(conn)
        stored = conn.namespace.key(path, "path")
        self.path = conn.namespace.strip(stored)
        if not self.path.strip(b"/"):
            raise InvalidArgument(f"path must name a {self.kind}, not the root")
        self.ttl = validate.ttl(ttl)
        self._prefix = self.path + b"/"
        self._lease: KeptLease | None = None
        self._key = b""  # our key while we hold or wait (namespace stripped)
        self._revision = 0  # its create revision
        self._lease_of_key = 0  # the lease id it is on
        self._held = False  # etcd showed few enough older keys
        self._suspended = False
        self._lost: EtcdError | None = None  # why the hold was lost (until released)
        self._state: Mapping[bytes, KeyValue] = {}
        self._state_revision = 0
        self._watching = False
        self._wake = Signal()
        self._with_started = False
        self._cleaning: set[gevent.Greenlet[Any, Any]] = set()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path.decode('utf-8', 'replace')!r})"

    # --- what subclasses define -------------------------------------------------------

    @property
    def _exclusive_name(self) -> bytes | None:
        """The name a lease is taken for when the key is named after the lease (one
        holder per lease and prefix); None when keys are unique by themselves."""
        return self._prefix

    def _new_key(self, lease_id: int) -> bytes:
        """The key of an attempt on ``lease_id`` (Go's ``prefix/<lease hex>``)."""
        return self._prefix + f"{lease_id:x}".encode()

    @property
    def _value(self) -> bytes:
        return b""

    @property
    def _blocking_prefix(self) -> bytes:
        """The prefix of the keys that block this holder when older than its own."""
        return self._prefix

    def _check_key(self, kv: KeyValue) -> None:
        """Refuse a blocking key of an incompatible holder (override)."""

    # --- public -----------------------------------------------------------------------

    @property
    def held(self) -> bool:
        """True while etcd showed this holder's turn and its lease is surely alive and
        renewed in time (False from the first overdue renewal: SUSPENDED)."""
        lease = self._lease
        return (
            self._held
            and not self._suspended
            and lease is not None
            and lease.id == self._lease_of_key
            and lease.valid
            and lease.state is LeaseState.ACTIVE
        )

    @property
    def fencing_token(self) -> int:
        """The key's create revision while :attr:`held`, else 0: a revision that grows
        with every new holder, for the resources the lock protects to check."""
        return self._revision if self.held else 0

    @property
    def key(self) -> str | None:
        """This holder's key (without the namespace) while it holds or waits."""
        return self._key.decode("utf-8", "replace") if self._key else None

    @property
    def lease(self) -> KeptLease | None:
        """The lease its key is on (None before the first acquire)."""
        return self._lease

    def _start(self) -> None:
        self._begin()

    def acquire(self, timeout: float | None = None, *, blocking: bool = True) -> bool:
        """Hold the lock: True once held; False when ``blocking`` is false and it is
        held elsewhere, or when ``timeout`` seconds passed first (the caller's timeout:
        waiting ends then, and the attempt's key is deleted before it returns, or by a
        background delete if etcd does not answer within ``stop_timeout``; its lease
        share is given back). While etcd is unreachable it retries until the timeout
        (reporting each error on the channel); an error no retry can fix (e.g.
        PermissionDenied) is raised, after the same clean-up. Not reentrant: acquiring
        a held lock raises :class:`RecipeStateError`."""
        wait = validate.timeout(timeout)
        validate.boolean(blocking, "blocking")
        if self._stopped:
            raise RecipeStateError(f"{self!r} was stopped; make a new one")
        if self._key:
            raise RecipeStateError(f"{self!r} is already held (or acquiring); release it first")
        if not self._running:
            self.start()
        self._lost = None
        timer = gevent.Timeout(wait) if wait is not None else None
        try:
            if timer is not None:
                timer.start()
            held = self._attempt(blocking)
        except gevent.Timeout as exc:
            if exc is not timer:
                self._abandon()
                raise
            held = False
        except BaseException:
            self._abandon()
            raise
        finally:
            if timer is not None:
                timer.close()
        if not held:
            self._abandon()
            return False
        self._emit(LockEvent(LockStatus.ACQUIRED, self._revision, self.key or ""))
        return True

    def release(self) -> Release:
        """Delete this holder's key (the next holder takes over at once) and return a
        :class:`Release` that is true once etcd confirmed it gone, within the
        connector's ``stop_timeout``; otherwise the delete goes on in the background
        and ``detail`` says so. ``RELEASED`` is reported once confirmed. Releasing a
        lock that is neither held nor lost raises :class:`NotLockHolder`."""
        if not self._key and self._lost is None:
            raise NotLockHolder(f"{self!r} is not held; acquire() it first")
        if not self._key and self._cleaning:  # lost: its key is being deleted
            gevent.joinall(list(self._cleaning), timeout=self._conn.stop_timeout)
        if not self._key and self._cleaning:
            self._lost = None
            return unconfirmed(
                f"confirm {self.path.decode('utf-8', 'replace')} released",
                None,
                "the lock was lost and etcd has not confirmed its key deleted yet",
            )
        self._lost = None
        outcome = self._delete_key(time.monotonic() + self._conn.stop_timeout)
        if outcome.confirmed:
            self._emit(LockEvent(LockStatus.RELEASED))
        return outcome

    @contextmanager
    def hold(self: C, timeout: float | None = None) -> Iterator[C]:
        """``with holder.hold(timeout=5):`` runs the block only once the lock is held,
        and raises :class:`NotAcquired` (the block does not run) when it is not held
        within ``timeout`` seconds; releases at the end."""
        if not self.acquire(timeout):
            raise NotAcquired(f"{self!r} was not acquired within {timeout}s")
        try:
            yield self
        finally:
            if self._key or self._lost is not None:
                self.release()

    def guard(self) -> Comparison:
        """The comparison that lets a txn succeed only while this holder's key is the
        one it acquired (Go's ``IsOwner``); raises :class:`NotLockHolder` when it is not
        :attr:`held` now."""
        if not self.held:
            raise NotLockHolder(f"{self!r} is not held now")
        return Compare.create_revision(self._key) == self._revision

    def txn(self, success: Iterable[TxnOp], failure: Iterable[TxnOp] = ()) -> TxnResult:
        """Run ``success`` only while this holder holds the lock (fenced by its key's
        create revision); raises :class:`NotLockHolder` (and reports ``LOST``) when the
        key is gone."""
        result = self._conn.txn([self.guard()], success, failure)
        if not result.succeeded:
            error = NotLockHolder(f"the key of {self!r} is gone: the lock was lost")
            self._lose(error)
            raise error
        return result

    def contenders(self) -> list[str]:
        """The keys queued under this lock's path now, oldest first (a linearizable
        read)."""
        read = self._conn.get_prefix(
            self._prefix, sort_target="CREATE", sort_order="ASCEND", keys_only=True
        )
        return [kv.key.decode("utf-8", "replace") for kv in read.kvs]

    def __enter__(self: C) -> C:
        """Acquire (blocking; starting the recipe if needed); raises whatever prevents
        it, so the block never runs without the lock."""
        started_here = not self._running
        try:
            self.acquire()
        except BaseException:
            if started_here:
                self.stop()
            raise
        self._with_started = started_here
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._key or self._lost is not None:
                self.release()
        finally:
            if self._with_started:
                self._with_started = False
                self.stop()

    # --- acquiring --------------------------------------------------------------------

    def _attempt(self, blocking: bool) -> bool:
        """Queue and wait (until the caller's timer fires) until held."""
        backoff = Backoff(first=0.05)
        while True:
            self._check_running()
            try:
                if self._try():
                    return True
                if not blocking:
                    return False
                if self._wait_turn():
                    return True
                backoff.reset()
            except RETRIED as exc:
                self._report(exc)
                lease = self._lease
                if isinstance(exc, LeaseNotFound) and lease is not None:
                    lease.invalidate(self._lease_of_key or lease.id)
                if lease is None or not lease.valid or lease.id != self._lease_of_key:
                    self._forget_key()  # it went (or goes) with its lease
                gevent.sleep(backoff.next())

    def _take_lease(self) -> KeptLease:
        """Our share of the lease, waiting while a lost one is replaced."""
        lease = self._lease
        if lease is None:
            lease = self._conn.lease_keeper.acquire(
                self.ttl, self._on_lease, exclusive_of=self._exclusive_name
            )
            self._lease = lease
        while not lease.valid:  # its greenlet grants a new one at once; we are woken
            self._wake.clear()
            self._wake.wait(0.5)
        return lease

    def _try(self) -> bool:
        """Create (or find) our key and read the oldest blocking keys in one txn (Go's
        ``tryAcquire``): True when held at once."""
        lease = self._take_lease()
        if self._key and lease.id != self._lease_of_key:
            self._forget_key()
        key = self._key or self._new_key(lease.id)
        oldest = Op.get(
            self._blocking_prefix,
            prefix=True,
            sort_target="CREATE",
            sort_order="ASCEND",
            limit=self.slots + 1,
        )
        result = self._conn.txn(
            [Compare.create_revision(key) == 0],
            [Op.put(key, self._value, lease=lease.id), oldest],
            [Op.get(key), oldest],
        )
        if result.succeeded:
            revision = result.header.revision
        else:  # ours already (same lease: an earlier attempt whose answer was lost)
            mine = _range(result, 0).kvs
            if not mine or mine[0].lease != lease.id:
                if self._exclusive_name is None and not self._key:
                    return self._try()  # a unique name taken by chance: take another
                raise EtcdError(f"{key.decode()!r} is not on the lease of {self!r}")
            revision = mine[0].create_revision
        self._key, self._revision, self._lease_of_key = key, revision, lease.id
        self._check_running()  # stopped while the txn was on its way: the key goes
        ahead = 0
        for kv in _range(result, 1).kvs:
            if kv.key != key:
                self._check_key(kv)
                ahead += kv.create_revision < revision
        if ahead < self.slots and lease.state is LeaseState.ACTIVE:
            self._held = True
            return True
        return False

    def _wait_turn(self) -> bool:
        """Wait on the shared watch of the prefix until the keys ahead are few enough:
        True when held; False when our key vanished (try again). The watch stays
        joined while the recipe runs: the next contended acquire waits on a stream
        that is already current (a new one would start behind the revisions of the
        hand-overs meanwhile, and etcd catches such watches up only every 100 ms),
        and a holder hears at once when its key is deleted."""
        self._watch()
        while True:
            self._wake.clear()
            verdict = self._turn()
            if verdict is not None:
                return verdict
            self._wake.wait()

    def _turn(self) -> bool | None:
        """From the watch's copy: True when held, False when our key is gone (or its
        lease), None while waiting; raises :class:`RecipeStateError` once stopped."""
        self._check_running()
        if self._state_revision < self._revision:
            return None  # the copy does not show our key yet
        mine = self._state.get(self._key)
        lease = self._lease
        if mine is None or mine.create_revision != self._revision:
            self._key, self._revision = b"", 0  # gone: nothing to delete
            return False
        if lease is None or not lease.valid or lease.id != self._lease_of_key:
            self._forget_key()
            return False
        ahead = 0
        for name, kv in self._state.items():
            if name.startswith(self._blocking_prefix) and kv.create_revision < self._revision:
                self._check_key(kv)
                ahead += 1
        if ahead >= self.slots or lease.state is not LeaseState.ACTIVE:
            return None
        self._held = True
        return True

    def _check_running(self) -> None:
        """Raise :class:`RecipeStateError` once the recipe was stopped (an acquire in
        another greenlet then ends, and its clean-up deletes what it wrote)."""
        if not self._running:
            raise RecipeStateError(f"{self!r} was stopped while acquiring")

    def _watch(self) -> None:
        if not self._watching:
            self._conn.hub.subscribe(
                self._prefix,
                self._on_change,
                read_your_writes=True,
                timeout=self._conn.request_timeout,
            )
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self._conn.hub.unsubscribe(self._prefix, self._on_change)

    def _on_change(self, update: PrefixUpdate) -> None:
        if update.error is not None:
            return
        self._state = update.state
        self._state_revision = update.revision
        if self._held and self._key and update.revision >= self._revision:
            mine = update.state.get(self._key)
            if mine is None or mine.create_revision != self._revision:
                self._lose(NotLockHolder(f"the key of {self!r} was deleted"))
        self._wake.set()

    # --- losing and letting go --------------------------------------------------------

    def _on_lease(self, lease: KeptLease, state: LeaseState) -> None:
        self._wake.set()
        if not self._held:
            return
        if state is LeaseState.LOST or lease.id != self._lease_of_key:
            self._lose(LeaseNotFound(f"the lease of {self!r} expired (or etcd lost it)"))
        elif state is LeaseState.SUSPENDED and not self._suspended:
            self._suspended = True
            log.warning("%r: SUSPENDED: a renewal of its lease is overdue", self)
            self._emit(LockEvent(LockStatus.SUSPENDED, 0, self.key or ""))
        elif state is LeaseState.ACTIVE and self._suspended:
            self._suspended = False
            log.info("%r: ACQUIRED again: its lease was renewed in time", self)
            self._emit(LockEvent(LockStatus.ACQUIRED, self._revision, self.key or ""))

    def _lose(self, error: EtcdError) -> None:
        """The hold is gone: say ``LOST`` once, and delete the key if it is still there
        (guarded by the lease it was on: the server may have kept it, e.g. across a
        restart)."""
        if not self._held:
            return
        log.warning("%r: LOST: %s", self, error)
        key, lease_id = self._key, self._lease_of_key
        self._key, self._revision, self._held, self._suspended = b"", 0, False, False
        self._lost = error
        self._emit(LockEvent(LockStatus.LOST, 0, key.decode("utf-8", "replace"), error))
        if key:
            self._clean_later(key, Compare.lease(key) == lease_id)

    def _forget_key(self) -> None:
        """Drop the key of a failed attempt (deleted in the background if it is there)."""
        key, revision = self._key, self._revision
        self._key, self._revision, self._held = b"", 0, False
        if key and revision:
            self._clean_later(key, Compare.create_revision(key) == revision)

    def _abandon(self) -> None:
        """After a failed or timed-out acquire: delete the key and give back the lease
        share, so nothing of the attempt is left."""
        self._unwatch()
        self._held = False
        if self._key:
            self._delete_key(time.monotonic() + self._conn.stop_timeout)
        self._give_back_lease(self._conn.stop_timeout)

    def _delete_key(self, deadline: float) -> Release:
        """Delete our key (guarded by its create revision) by ``deadline``; handed to
        the background when etcd does not confirm it in time."""
        key, revision = self._key, self._revision
        self._key, self._revision, self._held, self._suspended = b"", 0, False, False
        if not key:
            return RELEASED
        if gone_with(self._conn, self._lease, self._lease_of_key):
            return RELEASED  # the connector's close revoked its lease: etcd deleted it
        guard = Compare.create_revision(key) == revision
        timer = gevent.Timeout(max(0.001, deadline - time.monotonic()))
        try:
            with timer:
                self._conn.txn([guard], [Op.delete(key)])
            return RELEASED
        except (EtcdError, gevent.Timeout) as exc:
            if isinstance(exc, gevent.Timeout) and exc is not timer:
                raise
            cause = "etcd did not answer" if isinstance(exc, gevent.Timeout) else exc
            self._clean_later(key, guard)
            return unconfirmed(f"delete {key.decode('utf-8', 'replace')}", None, cause)

    def _clean_later(self, key: bytes, guard: Comparison) -> None:
        """Delete ``key`` under ``guard`` in the background, retrying until etcd
        answers; the lease share is kept until then, so the key cannot outlive it."""
        cleaner: gevent.Greenlet[Any, Any] = self._conn.group.spawn(
            delete_until_confirmed, self._conn, {key: guard}, owner=self
        )
        self._cleaning.add(cleaner)
        cleaner.link(self._cleaning.discard)

    def _give_back_lease(self, timeout: float) -> None:
        """Return the lease share (once the background deletes that need it ended)."""
        lease, self._lease = self._lease, None
        if lease is None:
            return
        name = self._exclusive_name
        cleaners = list(self._cleaning)
        if not cleaners:
            self._conn.lease_keeper.release(
                lease, self._on_lease, timeout=timeout, exclusive_of=name
            )
            return

        def after_cleaning() -> None:
            gevent.joinall(cleaners)
            self._conn.lease_keeper.release_later(lease, self._on_lease, exclusive_of=name)

        self._conn.group.spawn(after_cleaning)

    def _release(self) -> Release | None:
        self._wake.set()  # an acquire waiting in another greenlet ends
        self._unwatch()
        outcome = self._delete_key(self._release_deadline)
        self._lost = None
        self._give_back_lease(self._remaining())
        return outcome

    def _release_is_local(self) -> bool:
        """Nothing to send: the closing connector revoked the lease the key was on."""
        return gone_with(self._conn, self._lease) and not self._cleaning

    def _held_text(self) -> str:
        return f"release {self.path.decode('utf-8', 'replace')}"


def _range(result: TxnResult, index: int) -> RangeResult:
    answer = result.responses[index]
    if not isinstance(answer, RangeResult):
        raise EtcdError(f"unexpected txn answer {answer!r}")
    return answer


__all__ = ["Contender", "LockEvent", "LockStatus"]
