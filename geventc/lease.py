"""Leases kept alive by greenlets, shared by the keys that hold them.

A :class:`KeptLease` is granted once and renewed by one greenlet every TTL/3. Its
holders (ephemeral keys, registry entries, electors) are told of every change of state:

- ``SUSPENDED``: a renewal failed; the lease may still be valid, but a leader must stop
  acting as one until it is ``ACTIVE`` again;
- ``LOST``: the server said the lease is gone, or TTL seconds passed since the last
  renewal that succeeded was *sent* (monotonic clock), so it has surely expired;
- ``ACTIVE``: renewals succeed again, or after a loss a new lease was granted (its
  ``id`` changed: holders re-create what they held).

:class:`LeaseKeeper` hands out one shared lease per TTL, so N keys with one TTL cost one
keep-alive request per TTL/3, and private leases for recipes that need their own.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

import gevent
from gevent.lock import BoundedSemaphore
from gevent.pool import Group

from . import validate
from .client import Client
from .errors import EtcdError, LeaseNotFound
from .retry import Backoff

log = logging.getLogger("geventc")


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
        self._deadline = 0.0
        # holder -> times added; a dict so that releasing one of 10,000 holders is O(1)
        self._listeners: dict[LeaseListener, int] = {}
        self._greenlet: gevent.Greenlet[[], None] | None = None

    def __repr__(self) -> str:
        return f"KeptLease(id={self.id:x}, ttl={self.ttl}, state={self.state.value})"

    @property
    def valid(self) -> bool:
        """True while the lease is surely still alive on the server."""
        return self.state is not LeaseState.LOST and time.monotonic() < self._deadline

    @property
    def holders(self) -> int:
        """How many holders share the lease."""
        return sum(self._listeners.values())

    def grant(self) -> None:
        """Grant the lease now (in the caller's greenlet) and start renewing it."""
        self._grant_once()
        if self._greenlet is None:
            self._greenlet = self._group.spawn(self._renew_forever)

    def add(self, listener: LeaseListener) -> None:
        """Register a holder."""
        self._listeners[listener] = self._listeners.get(listener, 0) + 1

    def remove(self, listener: LeaseListener) -> None:
        """Unregister a holder."""
        count = self._listeners.pop(listener, 0)
        if count > 1:
            self._listeners[listener] = count - 1

    def close(self, *, revoke: bool = True, timeout: float = 2.0) -> None:
        """Stop renewing and (by default) revoke the lease, within ``timeout``."""
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=timeout)
            self._greenlet = None
        lease_id, self.id = self.id, 0
        self.state = LeaseState.CLOSED
        if revoke and lease_id:
            try:
                with gevent.Timeout(timeout):
                    self._client.revoke(lease_id)
            except (EtcdError, gevent.Timeout) as exc:
                log.info("could not revoke lease %x (%s); it expires by its TTL", lease_id, exc)

    # --- the renewing greenlet ---------------------------------------------------------

    def _grant_once(self) -> None:
        sent = time.monotonic()
        lease = self._client.grant(self.ttl)
        self.id, self.ttl = lease.id, lease.ttl
        self._deadline = sent + lease.ttl
        self.state = LeaseState.ACTIVE

    def _renew_forever(self) -> None:
        while True:
            if self.state is LeaseState.LOST:
                self._regrant()
                continue
            pause = self.ttl / 3 if self.state is LeaseState.ACTIVE else min(1.0, self.ttl / 6)
            gevent.sleep(pause)
            self._renew()

    def _renew(self) -> None:
        sent = time.monotonic()
        if sent >= self._deadline:
            self._set_state(LeaseState.LOST, "no renewal succeeded within the TTL")
            return
        try:
            ttl = self._client.keepalive_once(self.id)
        except LeaseNotFound:
            self._set_state(LeaseState.LOST, "etcd says the lease expired")
            return
        except EtcdError as exc:
            if time.monotonic() >= self._deadline:
                self._set_state(LeaseState.LOST, f"renewal failed past the TTL: {exc}")
            else:
                self._set_state(LeaseState.SUSPENDED, f"renewal failed: {exc}")
            return
        self.renewals += 1
        self._deadline = sent + ttl
        self._set_state(LeaseState.ACTIVE, "renewed")

    def _regrant(self) -> None:
        backoff = Backoff(first=0.1)
        while True:
            try:
                self._grant_once()
            except EtcdError as exc:
                log.warning("granting a new %ds lease failed (%s); retrying", self.ttl, exc)
                gevent.sleep(backoff.next())
                continue
            self._notify(LeaseState.ACTIVE)
            return

    def _set_state(self, state: LeaseState, why: str) -> None:
        if state is self.state:
            return
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
        self._granting: dict[int, BoundedSemaphore] = {}

    def acquire(self, ttl: int, listener: LeaseListener, *, shared: bool = True) -> KeptLease:
        """A live lease of ``ttl`` seconds with ``listener`` registered as a holder;
        granted now if needed (raises the grant's error)."""
        ttl = validate.ttl(ttl)
        if not shared:
            lease = KeptLease(self._client, ttl, self._group, shared=False)
            lease.grant()
            lease.add(listener)
            return lease
        # one grant per TTL even when many greenlets ask at once
        with self._granting.setdefault(ttl, BoundedSemaphore()):
            kept = self._shared.get(ttl)
            if kept is None or kept.state is LeaseState.CLOSED:
                kept = KeptLease(self._client, ttl, self._group, shared=True)
                kept.grant()
                self._shared[ttl] = kept
            kept.add(listener)
        return kept

    def release(self, lease: KeptLease, listener: LeaseListener) -> None:
        """Drop a holder; the last holder's release revokes the lease."""
        lease.remove(listener)
        if lease.holders:
            return
        if lease.shared and self._shared.get(lease.requested_ttl) is lease:
            del self._shared[lease.requested_ttl]
        lease.close()

    def leases(self) -> list[KeptLease]:
        """The shared leases kept now."""
        return list(self._shared.values())

    def close(self) -> None:
        """Stop renewing every shared lease and revoke them."""
        for lease in list(self._shared.values()):
            lease.close()
        self._shared.clear()
