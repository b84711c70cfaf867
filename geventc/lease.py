"""Leases kept alive by greenlets, shared by the keys that hold them.

A :class:`KeptLease` is granted once and renewed by one greenlet every TTL/3, counted
from the moment the last renewal that succeeded was *sent* (monotonic clock). Its
holders (ephemeral keys, registry entries, electors) are told of every change of state:

- ``SUSPENDED``: a renewal has not succeeded by the time it should have: it failed, or
  got no answer within the *grace* (``min(1 s, TTL/6)``) after it was sent. So a holder
  hears it at most TTL/3 + grace after the last renewal that succeeded was sent, well
  before ``LOST``, whatever the TTL and the client's request timeout. The lease may
  still be valid, but a leader must stop acting as one until it is ``ACTIVE`` again;
- ``LOST``: the server said the lease is gone, a holder's write found it gone
  (:meth:`KeptLease.invalidate`), or TTL seconds passed since the last renewal that
  succeeded was sent, so it has surely expired;
- ``ACTIVE``: renewals succeed again, or after a loss a new lease was granted (its
  ``id`` changed: holders re-create what they held).

A renewal never waits past the lease's remaining time. After a loss the renewing
greenlet grants a new lease at once (then with backoff while etcd does not answer);
a lease lost only by the clock (the server may have kept it, e.g. across a restart
with its data) is revoked in the background once the new one is granted, so nothing
stays behind on it. :meth:`KeptLease.was_held` recognises the ids held before. A lease
granted elsewhere and adopted (:meth:`KeptLease.adopt`) is renewed the same way, but
not replaced once lost: that is left to whoever adopted it.

:class:`LeaseKeeper` hands out one shared lease per TTL, so N keys with one TTL cost one
keep-alive request per TTL/3, and private leases for recipes that need their own.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import BoundedSemaphore
from gevent.pool import Group

from . import validate, wire
from .client import Client
from .errors import EtcdError, LeaseNotFound
from .retry import Backoff

log = logging.getLogger("geventc")

#: How many ids held before the current one a lease remembers (see ``was_held``).
PREVIOUS_IDS = 8


class LeaseState(enum.Enum):
    """Where a kept lease stands."""

    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    LOST = "LOST"
    CLOSED = "CLOSED"


LeaseListener = Callable[["KeptLease", LeaseState], None]


class KeptLease:
    """A lease renewed every TTL/3 by one greenlet; see the module docstring.

    Listeners are called in the renewing greenlet and must not block."""

    def __init__(self, client: Client, ttl: int, group: Group, *, shared: bool) -> None:
        self.ttl = validate.ttl(ttl)
        self.requested_ttl = self.ttl
        self.shared = shared
        self.id = 0
        self.state = LeaseState.LOST
        self.renewals = 0
        self._client = client
        self._group = group
        self._sent = 0.0  # when the last renewal (or grant) that succeeded was sent
        self._deadline = 0.0  # _sent + TTL: the lease has surely expired after it
        self._retry_at = 0.0  # when to try again after a failed renewal
        self._invalid = 0  # an id a holder found gone (see invalidate)
        self._previous: deque[int] = deque(maxlen=PREVIOUS_IDS)
        self._unsure: list[int] = []  # ids lost by the clock only, revoked once replaced
        self._wake = Event()
        # holder -> times added; a dict so that releasing one of 10,000 holders is O(1)
        self._listeners: dict[LeaseListener, int] = {}
        self._holders = 0  # the sum of the counts above, kept: O(1) per release
        self._greenlet: gevent.Greenlet[[], None] | None = None
        self._adopted = False  # granted elsewhere: not replaced once lost (see adopt)
        self._revoked = False  # once closed: whether etcd confirmed the revocation
        #: the id etcd confirmed revoked when the lease was closed (0: none)
        self.revoked_id = 0

    def __repr__(self) -> str:
        return f"KeptLease(id={self.id:x}, ttl={self.ttl}, state={self.state.value})"

    @property
    def valid(self) -> bool:
        """True while the lease is surely still alive on the server."""
        return self.state is not LeaseState.LOST and time.monotonic() < self._deadline

    @property
    def holders(self) -> int:
        """How many holders share the lease."""
        return self._holders

    @property
    def expires_in(self) -> float:
        """About how many seconds the lease lives on the server without another
        renewal: its TTL from the last renewal that succeeded (0.0 once it surely
        expired, or closed after a confirmed revoke)."""
        return max(0.0, self._deadline - time.monotonic())

    @property
    def revoked(self) -> bool:
        """True once the lease was closed and etcd confirmed its revocation (or it had
        surely expired): no key is left on it (a holder whose keys were on it need not
        delete them)."""
        return self.state is LeaseState.CLOSED and self._revoked

    @property
    def grace(self) -> float:
        """How long a renewal may go unanswered before holders hear ``SUSPENDED``."""
        return min(1.0, self.ttl / 6)

    def was_held(self, lease_id: int) -> bool:
        """True if ``lease_id`` is this lease's id or one of the last ids it had before
        a loss replaced them: a key on such a lease is this process's own."""
        return lease_id != 0 and (lease_id == self.id or lease_id in self._previous)

    def grant(self) -> None:
        """Grant the lease now (in the caller's greenlet) and start renewing it."""
        self._grant_once()
        if self._greenlet is None:
            self._greenlet = self._start_renewing()

    def adopt(self, lease_id: int) -> None:
        """Keep alive ``lease_id``, a lease granted elsewhere (say, by another process
        that shares it), instead of granting one: renewed once now, in the caller's
        greenlet (raising :class:`LeaseNotFound` if etcd no longer has it, or the
        renewal's error), then every TTL/3 like a granted lease. Once it is lost it is not
        replaced: the holders hear ``LOST``, the renewals end, and granting or adopting
        another lease is the caller's decision."""
        sent = time.monotonic()
        outcome = self._keepalive(lease_id, self._client.transport.timeout)
        if isinstance(outcome, EtcdError):
            raise outcome
        self._adopted = True
        self.id, self.ttl = lease_id, outcome
        self._sent, self._deadline = sent, sent + outcome
        self.state = LeaseState.ACTIVE
        if self._greenlet is None:
            self._greenlet = self._start_renewing()

    def invalidate(self, lease_id: int) -> None:
        """Say that etcd no longer knows ``lease_id`` (a write with it failed with
        :class:`LeaseNotFound`). If it is the current id the lease is not ``valid``
        from now on, and its greenlet tells the holders ``LOST`` and grants a new lease
        at once (then ``ACTIVE``). Any other id is ignored, so a late report cannot
        drop a lease granted meanwhile."""
        if lease_id != self.id or self.state in (LeaseState.LOST, LeaseState.CLOSED):
            return  # not its id now, or already being replaced
        self._invalid = lease_id
        self._deadline = 0.0
        self._wake.set()

    def add(self, listener: LeaseListener) -> None:
        """Register a holder."""
        self._listeners[listener] = self._listeners.get(listener, 0) + 1
        self._holders += 1

    def remove(self, listener: LeaseListener) -> None:
        """Unregister a holder."""
        count = self._listeners.pop(listener, 0)
        if count > 1:
            self._listeners[listener] = count - 1
        self._holders -= count > 0

    def close(self, *, revoke: bool = True, timeout: float = 1.0) -> bool:
        """Stop renewing and (by default) revoke the lease, within ``timeout``; True
        when etcd confirmed the revocation (or the lease had surely expired)."""
        if self.state is LeaseState.CLOSED:
            return self._revoked  # closed before (maybe still revoking): that outcome
        started = time.monotonic()
        lease_id = self.id
        self.state = LeaseState.CLOSED
        self._revoked = False
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=timeout / 2)
            self._greenlet = None
        self.id = 0
        if not revoke or not lease_id:
            self._revoked = not lease_id
            return self._revoked
        timer = gevent.Timeout(max(0.001, timeout - (time.monotonic() - started)))
        try:
            with timer:
                self._client.revoke(lease_id)
        except LeaseNotFound:
            pass  # gone already: nothing is left on it
        except (EtcdError, gevent.Timeout) as exc:
            if isinstance(exc, gevent.Timeout) and exc is not timer:
                raise
            log.info(
                "could not revoke lease %x (%s); it expires in about %.0fs",
                lease_id,
                exc,
                self.expires_in,
            )
            return False
        self._deadline = 0.0
        self._revoked = True
        self.revoked_id = lease_id
        return True

    # --- the renewing greenlet ---------------------------------------------------------

    def _start_renewing(self) -> gevent.Greenlet[[], None]:
        """Spawn the renewing greenlet, counted in ``leases_kept`` while it runs."""
        counters = self._client.transport.counters
        counters.leases_kept += 1
        greenlet = self._group.spawn(self._renew_forever)

        def ended(_: object) -> None:
            counters.leases_kept -= 1

        greenlet.rawlink(ended)
        return greenlet

    def _grant_once(self) -> None:
        sent = time.monotonic()
        lease = self._client.grant(self.ttl)
        self._client.transport.counters.lease_grants += 1
        if self.id:
            self._previous.append(self.id)
        self.id, self.ttl = lease.id, lease.ttl
        self._sent, self._deadline = sent, sent + lease.ttl
        self.state = LeaseState.ACTIVE

    def _renew_forever(self) -> None:
        backoff = Backoff(first=0.1)
        while True:
            try:
                if self.state is LeaseState.LOST:
                    if self._adopted:
                        return  # granted elsewhere: replacing it is the caller's decision
                    self._regrant()
                    continue
                due = self._sent + self.ttl / 3
                self._wait_until(due if self.state is LeaseState.ACTIVE else self._retry_at)
                self._renew()
                backoff.reset()
            except Exception:  # a bug here must not end the renewals for good
                log.exception("renewing lease %x failed unexpectedly", self.id)
                gevent.sleep(backoff.next())

    def _wait_until(self, moment: float) -> None:
        """Sleep until ``moment``, or until :meth:`invalidate` wakes the greenlet."""
        while True:
            self._wake.clear()
            remaining = moment - time.monotonic()
            if remaining <= 0 or self._invalidated:
                return
            self._wake.wait(remaining)

    @property
    def _invalidated(self) -> bool:
        return self._invalid != 0 and self._invalid == self.id

    def _gone(self) -> bool:
        """True (and LOST told) when the lease is surely gone."""
        if self._invalidated:
            self._set_state(LeaseState.LOST, "a holder found that etcd no longer has it")
            return True
        if time.monotonic() >= self._deadline:
            # the server may have kept it (a restart keeps leases): revoke it once replaced
            self._unsure.append(self.id)
            self._set_state(LeaseState.LOST, f"no renewal succeeded within the TTL ({self.ttl}s)")
            return True
        return False

    def _renew(self) -> None:
        """One renewal, sent now and waited for until it answers or the lease surely
        expired; SUSPENDED as soon as it has not succeeded within the grace."""
        if self._gone():
            return
        sent = time.monotonic()
        timeout = min(self._client.transport.timeout, self._deadline - sent)
        attempt = self._group.spawn(self._keepalive, self.id, timeout)
        # overdue once the grace after its due time passed (at once if sent late)
        suspend_at = min(sent, self._sent + self.ttl / 3) + self.grace
        wakers: list[Any] = [attempt, self._wake]  # the answer, or invalidate()
        try:
            while not attempt.ready():
                self._wake.clear()
                if self._gone():
                    return
                now = time.monotonic()
                if self.state is LeaseState.ACTIVE and now >= suspend_at:
                    self._set_state(
                        LeaseState.SUSPENDED, f"a renewal got no answer within {self.grace:.2f}s"
                    )
                wake_at = suspend_at if self.state is LeaseState.ACTIVE else self._deadline
                gevent.wait(wakers, timeout=max(0.0, wake_at - now), count=1)
        finally:
            attempt.kill(block=False)
        outcome = attempt.value if attempt.successful() else None
        if isinstance(outcome, int):
            self.renewals += 1
            self._client.transport.counters.lease_renewals += 1
            self._sent, self._deadline = sent, sent + outcome
            self._set_state(LeaseState.ACTIVE, "renewed")
        elif isinstance(outcome, LeaseNotFound):
            self._set_state(LeaseState.LOST, "etcd says the lease expired")
        elif not self._gone():
            why = outcome or EtcdError(f"the renewal crashed: {attempt.exception!r}")
            self._set_state(LeaseState.SUSPENDED, f"renewal failed: {why}")
            self._retry_at = min(time.monotonic() + self.grace, self._deadline)

    def _keepalive(self, lease_id: int, timeout: float) -> int | EtcdError:
        """The lease's TTL after one renewal, or why it failed (LeaseNotFound: gone)."""
        try:
            answer = self._client.transport.call(
                "/v3/lease/keepalive", {"ID": str(lease_id)}, timeout=max(0.001, timeout)
            )
            granted = wire.decode("lease keepalive", wire.lease, answer)
        except EtcdError as exc:
            return exc
        if granted.ttl <= 0:
            return LeaseNotFound(f"lease {lease_id:x} has expired or does not exist")
        return granted.ttl

    def _regrant(self) -> None:
        backoff = Backoff(first=0.1)
        while True:
            try:
                self._grant_once()
            except EtcdError as exc:
                log.warning("granting a new %ds lease failed (%s); retrying", self.ttl, exc)
                gevent.sleep(backoff.next())
                continue
            log.info("lease %x (ttl %ds) replaces the lost one", self.id, self.ttl)
            if self._unsure:
                self._group.spawn(self._revoke_replaced, self._unsure)
                self._unsure = []
            self._notify(LeaseState.ACTIVE)
            return

    def _revoke_replaced(self, lease_ids: list[int]) -> None:
        """Revoke leases lost by the clock (the server may still have them) once a new
        lease replaced them and the holders had a grace to move their keys; best effort:
        a lease not revoked expires by its TTL."""
        gevent.sleep(self.grace)
        for lease_id in lease_ids:
            try:
                self._client.revoke(lease_id)
                log.info("revoked lease %x, lost by the clock and replaced", lease_id)
            except LeaseNotFound:
                pass  # it expired meanwhile
            except EtcdError as exc:
                log.info("could not revoke the replaced lease %x (%s)", lease_id, exc)

    def _set_state(self, state: LeaseState, why: str) -> None:
        if state is self.state:
            return
        if state is LeaseState.LOST:
            self._client.transport.counters.lease_losses += 1
        elif state is LeaseState.SUSPENDED:
            self._client.transport.counters.lease_suspensions += 1
        level = logging.DEBUG if state is LeaseState.ACTIVE else logging.WARNING
        log.log(level, "lease %x (ttl %ds) is %s: %s", self.id, self.ttl, state.value, why)
        self.state = state
        self._notify(state)

    def _notify(self, state: LeaseState) -> None:
        for listener in list(self._listeners):
            try:
                listener(self, state)
            except Exception:  # a holder's bug must not stop the renewals of the others
                log.exception("lease listener %r failed", listener)


class LeaseKeeper:
    """Hands out kept leases: one shared lease per TTL, or private ones."""

    def __init__(self, client: Client, group: Group) -> None:
        self._client = client
        self._group = group
        self._shared: dict[int, KeptLease] = {}
        #: more shared leases of a TTL, for holders that each need a lease of their own
        #: per name (two lock holders of one path in one process: see ``exclusive_of``)
        self._spares: dict[int, list[KeptLease]] = {}
        #: lease -> the names its holders took with ``exclusive_of``
        self._taken: dict[int, set[bytes]] = {}
        self._granting: dict[int, BoundedSemaphore] = {}
        #: leases whose revocation etcd did not confirm, with the time they surely end
        self._unrevoked: dict[int, float] = {}

    def acquire(
        self,
        ttl: int,
        listener: LeaseListener,
        *,
        shared: bool = True,
        exclusive_of: bytes | None = None,
    ) -> KeptLease:
        """A live lease of ``ttl`` seconds with ``listener`` registered as a holder;
        granted now if needed (raises the grant's error).

        With ``exclusive_of`` (a name, e.g. a lock's prefix) the shared lease is one no
        other holder took for that name: keys named after their lease (Go's
        ``prefix/<lease hex>``) then never collide in one process, and N holders of
        distinct names still share one lease; a second holder of the same name gets
        another shared lease of the TTL (granted once, then shared in turn)."""
        ttl = validate.ttl(ttl)
        if not shared:
            lease = KeptLease(self._client, ttl, self._group, shared=False)
            lease.grant()
            lease.add(listener)
            return lease
        kept = self._shared.get(ttl)
        granting = self._granting.get(ttl)
        if (
            kept is not None
            and kept.state is not LeaseState.CLOSED
            and (granting is None or not granting.locked())
            and (exclusive_of is None or exclusive_of not in self._taken.get(id(kept), ()))
        ):  # the usual case, decided without yielding: the shared lease as it is
            if exclusive_of is not None:
                self._taken.setdefault(id(kept), set()).add(exclusive_of)
            kept.add(listener)
            return kept
        # one grant per TTL even when many greenlets ask at once
        with self._granting.setdefault(ttl, BoundedSemaphore()):
            kept = self._shared.get(ttl)
            if kept is None or kept.state is LeaseState.CLOSED:
                kept = KeptLease(self._client, ttl, self._group, shared=True)
                kept.grant()
                self._shared[ttl] = kept
            if exclusive_of is not None and exclusive_of in self._taken.get(id(kept), ()):
                kept = self._spare(ttl, exclusive_of)
            if exclusive_of is not None:
                self._taken.setdefault(id(kept), set()).add(exclusive_of)
            kept.add(listener)
        return kept

    def _spare(self, ttl: int, name: bytes) -> KeptLease:
        """A spare shared lease of ``ttl`` not taken for ``name`` (granted if none)."""
        spares = self._spares.setdefault(ttl, [])
        for spare in spares:
            if spare.state is not LeaseState.CLOSED and name not in self._taken.get(id(spare), ()):
                return spare
        spare = KeptLease(self._client, ttl, self._group, shared=True)
        spare.grant()
        spares.append(spare)
        return spare

    def adopt(self, lease_id: int, ttl: int, listener: LeaseListener) -> KeptLease:
        """A private kept lease renewing ``lease_id`` (of ``ttl`` seconds), granted
        elsewhere, with ``listener`` registered as a holder; see :meth:`KeptLease.adopt`
        (raises its error)."""
        lease = KeptLease(self._client, ttl, self._group, shared=False)
        lease.adopt(lease_id)
        lease.add(listener)
        return lease

    def release(
        self,
        lease: KeptLease,
        listener: LeaseListener,
        *,
        timeout: float = 1.0,
        exclusive_of: bytes | None = None,
    ) -> bool | None:
        """Drop a holder (and the name it took with ``exclusive_of``); the last
        holder's release revokes the lease (within ``timeout``). None while other
        holders keep the lease, else whether etcd confirmed the revocation."""
        lease.remove(listener)
        if exclusive_of is not None:
            self._taken.get(id(lease), set()).discard(exclusive_of)
        if lease.holders:
            return None
        self._taken.pop(id(lease), None)
        if lease.shared and self._shared.get(lease.requested_ttl) is lease:
            del self._shared[lease.requested_ttl]
        spares = self._spares.get(lease.requested_ttl, [])
        if lease in spares:
            spares.remove(lease)
        return self._closed(lease, lease.close(timeout=timeout))

    def release_later(
        self, lease: KeptLease, listener: LeaseListener, *, exclusive_of: bytes | None = None
    ) -> None:
        """:meth:`release` without waiting for etcd (a holder out of time lets go): at
        once while other holders keep the lease (no request), else its revocation goes
        to the background, and :meth:`unrevoked` counts the lease until it is confirmed."""
        if lease.holders > 1:
            self.release(lease, listener, exclusive_of=exclusive_of)
            return
        self._unrevoked[id(lease)] = time.monotonic() + lease.expires_in
        self._group.spawn(self.release, lease, listener, exclusive_of=exclusive_of)

    def _closed(self, lease: KeptLease, revoked: bool) -> bool:
        """Note a lease etcd did not confirm revoked (it lives until its TTL ends)."""
        if revoked:
            self._unrevoked.pop(id(lease), None)
        else:
            self._unrevoked[id(lease)] = time.monotonic() + lease.expires_in
        return revoked

    def unrevoked(self) -> float | None:
        """None when every lease let go of was confirmed revoked (or has surely expired
        since); else about how many seconds the last of the others still lives."""
        now = time.monotonic()
        left = [end - now for end in self._unrevoked.values() if end > now]
        return max(left) if left else None

    def leases(self) -> list[KeptLease]:
        """The shared leases kept now (one per TTL, then the spares)."""
        spares = [lease for listed in self._spares.values() for lease in listed]
        return [*self._shared.values(), *spares]

    def close(self, timeout: float = 1.0) -> bool:
        """Stop renewing every shared lease and revoke them, all at once, within
        ``timeout``; True when etcd confirmed every revocation."""
        leases = self.leases()
        self._shared.clear()
        self._spares.clear()
        self._taken.clear()
        closing = [self._group.spawn(lease.close, timeout=timeout) for lease in leases]
        gevent.joinall(closing, timeout=timeout + 0.1)
        for lease, attempt in zip(leases, closing, strict=True):
            self._closed(lease, attempt.value is True)
        return self.unrevoked() is None
