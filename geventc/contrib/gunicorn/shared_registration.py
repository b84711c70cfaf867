"""One registration shared by several processes: the workers of one server.

The processes share the key and its lease; each keeps the lease alive through its
connector's lease keeper (:meth:`geventc.lease.LeaseKeeper.adopt`: a lease granted by
whichever process created the key, renewed every ``ttl/3`` by one greenlet of every
process) and watches the key. This module only decides when to (re-)create the key
and which lease to keep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event
from gevent.lock import BoundedSemaphore

# Only modules that load neither urllib3 nor ssl at import time (see the package).
from ... import validate
from ...errors import EtcdError, InvalidArgument, LeaseNotFound
from ...instances import DEFAULT_PREFIX, Instance, check_format, check_prefix, encode
from ...recipes.base import RELEASED, Recipe, RecipeError, Release, unconfirmed
from ...retry import Backoff
from ...txn import Compare, Op
from ...wire import RangeResult

if TYPE_CHECKING:
    from ...host import RecipeHost
    from ...lease import KeptLease, LeaseState
    from ...watch import PrefixUpdate

log = logging.getLogger("geventc")

#: problems the channel keeps for a reader (the oldest are dropped)
PROBLEMS_KEPT = 100


class SharedRegistration(Recipe[RecipeError]):
    """One registration shared by several processes (the workers of one server).

    The key ``{prefix}/{service}/{address}`` is created if absent, on a lease of ``ttl``
    seconds; a process that finds it already on a lease joins that lease instead. Every
    participant renews the lease every ``ttl/3`` and watches the key, re-creating it
    (on the shared lease if still alive, else on a new one) whenever it disappears.
    :meth:`close` leaves the registration to the others, or with ``deregister=True``
    removes it for everyone. While ``hold()`` returns False (say, the server is being
    stopped) the key is not re-created. A recipe like the others: ``start()`` returns
    its channel, on which problems are reported (the newest 100 are kept; they are also
    logged, logger ``geventc``) while it retries; ``stop()`` is ``close()``.
    """

    def __init__(
        self,
        conn: RecipeHost,
        instance: Instance,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: int = 10,
        format: str = "kitex",
        hold: Callable[[], bool] | None = None,
    ) -> None:
        from ...recipes.ephemeral import parent_prefix

        super().__init__(conn)
        if not isinstance(instance, Instance):
            raise InvalidArgument("SharedRegistration needs a geventc.Instance")
        if hold is not None and not callable(hold):
            raise InvalidArgument("hold must be a callable returning a bool, or None")
        self._hold = hold or (lambda: True)
        self.instance = instance.for_registration()
        self.ttl = validate.ttl(ttl)
        self.key = f"{check_prefix(prefix)}/{self.instance.service}/{self.instance.address}"
        self.value = encode(self.instance, check_format(format))
        #: The lease the key is on (0 until it is known).
        self.lease_id = 0
        self._key = conn.namespace.strip(conn.namespace.key(self.key))
        self._watched = parent_prefix(self._key)
        self._kept: KeptLease | None = None  # the lease this process keeps alive
        self._found: tuple[int, bytes] | None = None  # the key seen on another lease
        self._lock = BoundedSemaphore()
        self._wake = Event()
        self._done = Event()  # set when close() finished
        self._released = RELEASED  # what close() gave back
        self._deregistering = False  # what the close in progress does
        self._lost = True  # the key is not known to exist on lease_id
        self._known_at = 0  # the revision of the last state we read ourselves

    def __repr__(self) -> str:
        return f"SharedRegistration({self.key!r}, lease={self.lease_id:x})"

    @property
    def registered(self) -> bool:
        """True while the key is known to exist on the lease this process renews."""
        kept = self._kept
        return self._running and not self._lost and kept is not None and kept.valid

    def _start(self) -> None:
        """Join (or create) the registration in the background and keep it."""
        self._begin(maxsize=PROBLEMS_KEPT)
        self._conn.hub.subscribe(self._watched, self._on_change, key=self._key)
        self._spawn(self._maintain)

    def wait(self, timeout: float) -> bool:
        """Wait until :attr:`registered` (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + validate.positive_number(timeout, "timeout")
        while not self.registered:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._running:
                return self.registered
            gevent.sleep(min(0.02, remaining))
        return True

    def close(self, *, deregister: bool = False) -> Release:
        """Stop renewing and watching (idempotent), within the connector's
        ``stop_timeout``. With ``deregister`` also revoke the lease the key is on,
        removing it for every participant; without, the others keep it (or it expires
        ``ttl`` seconds after the last renewal). A second call while another greenlet
        closes it waits for that close to finish. The
        :class:`~geventc.recipes.base.Release` is true unless a deregistration was not
        confirmed by etcd."""
        if self._stopped or (not self._running and self._done.is_set()):
            self._done.wait(self._conn.stop_timeout + 1.0)
            return self._released
        if not self._running:  # never started: nothing to leave
            self._stopped = True
            self._done.set()
            return RELEASED
        self._deregistering = validate.boolean(deregister, "deregister")
        try:
            self._released = self._shutdown()
        finally:
            self._done.set()
        return self._released

    def stop(self) -> Release:
        """:meth:`close` without deregistering: the other participants keep the key."""
        return self.close()

    def _release(self) -> Release:
        self._conn.hub.unsubscribe(self._watched, self._on_change, key=self._key)
        self._wake.set()
        got_lock = self._lock.acquire(timeout=self._remaining())  # a create in flight ends
        try:
            self._released = self._leave(self._deregistering, self._remaining())
            return self._released
        finally:
            if got_lock:
                self._lock.release()
            self._done.set()

    # --- internals -------------------------------------------------------------------

    def _maintain(self) -> None:
        """Keep this process on the key's lease (the lease keeper renews it)."""
        backoff = Backoff(first=0.1, cap=max(0.5, self.ttl / 3))
        while self._running and not self._conn.closed:
            self._wake.clear()
            try:
                self._step()
                backoff.reset()
                pause = self.ttl / 3  # or sooner: the watch and the lease wake us
            except EtcdError as exc:
                self._lost = True  # whatever was in flight, joining again is safe
                self._report(exc)  # logged too; retried
                pause = backoff.next()
            self._wake.wait(pause)

    def _step(self) -> None:
        """Follow the key to another process's lease, or (re-)create it if it is gone."""
        with self._lock:
            if not self._running:
                return
            found, self._found = self._found, None
            kept = self._kept
            if found is not None:  # another process re-created the key: share its lease
                self._adopt(found)
            elif (self._lost or kept is None or not kept.valid) and self._hold():
                self._join()

    def _join(self) -> None:
        """Put the key on the lease we keep (or on a new one) unless it already is on
        a lease, and keep whichever lease it is on then."""
        kept = self._kept
        if kept is not None and kept.valid:
            try:
                held = self._claim(kept.id)
            except LeaseNotFound:
                kept.invalidate(kept.id)
                log.info("%r: the shared lease expired; granting a new one", self)
            else:
                self._adopt(held)
                return
        fresh = self._conn.grant(self.ttl).id
        try:
            held = self._claim(fresh)
        except EtcdError:
            self._revoke_quietly(fresh)
            raise
        if held[0] != fresh:  # another process created it meanwhile: share its lease
            self._revoke_quietly(fresh)
        self._adopt(held)

    def _claim(self, lease: int) -> tuple[int, bytes]:
        """Create the key on ``lease`` if it is absent (or on no lease); the lease and
        value the key has afterwards."""
        result = self._conn.txn(
            [Compare.lease(self._key) == 0],
            [Op.put(self._key, self.value, lease=lease)],
            [Op.get(self._key)],
        )
        self._known_at = result.header.revision
        if result.succeeded:
            return lease, self.value
        read = result.responses[0]
        assert isinstance(read, RangeResult) and read.kvs  # it is on some lease
        return read.kvs[0].lease, read.kvs[0].value

    def _adopt(self, held: tuple[int, bytes]) -> None:
        """Keep the lease the key is on, with our value."""
        lease, value = held
        if value != self.value:  # e.g. new tags after a reload: the newest worker wins
            self._conn.txn(
                [Compare.lease(self._key) == lease],
                [Op.put(self._key, self.value, lease=lease)],
            )
        previous = self._kept
        if previous is None or previous.id != lease or not previous.valid:
            self._kept = self._conn.lease_keeper.adopt(lease, self.ttl, self._on_lease)
            if previous is not None:
                previous.close(revoke=False)  # the key is not on it (any longer)
        changed = lease != self.lease_id or self._lost
        self.lease_id, self._lost = lease, False
        if changed:
            log.info("%r: registered %s at %s", self, self.instance.service, self.key)

    def _on_lease(self, lease: KeptLease, state: LeaseState) -> None:
        if lease is self._kept and not lease.valid:
            log.info("%r: its lease is %s; joining again", self, state.value)
            self._lost = True
            self._wake.set()

    def _on_change(self, update: PrefixUpdate) -> None:
        if not self._running or update.error is not None or update.revision < self._known_at:
            return  # stopped, a problem the watch retries, or older than what we know
        current = update.state.get(self._key)
        if current is None or not current.lease:  # deleted, or overwritten without a lease
            if not self._lost and self._hold():
                log.warning("%r: the key was deleted or overwritten; re-creating it", self)
            self._lost = True
            self._wake.set()
        elif current.lease != self.lease_id:
            self._found = (current.lease, current.value)
            self._wake.set()

    def _leave(self, deregister: bool, limit: float) -> Release:
        """Stop keeping the lease; with ``deregister`` revoke what the key is on."""
        kept, self._kept = self._kept, None
        expires_in = kept.expires_in if kept is not None else float(self.ttl)
        if kept is not None:
            kept.close(revoke=False)  # revoked below, or left to the others
        if not deregister:
            return RELEASED
        if self._conn.closed:
            return unconfirmed(f"deregister {self.key}", expires_in, "the connector is closed")
        outcome = unconfirmed(f"deregister {self.key}", expires_in, "etcd did not answer")
        with gevent.Timeout(limit, False):  # type: ignore[arg-type]
            outcome = self._deregister(expires_in)
        return outcome

    def _deregister(self, expires_in: float) -> Release:
        leases = {self.lease_id}
        try:
            kv = self._conn.get(self._key)
            read = True
        except EtcdError as exc:
            log.warning("%r: could not read the key to deregister it: %s", self, exc)
            kv, read = None, False
        if kv is not None:
            leases.add(kv.lease)
        revoked = [self._revoke_quietly(lease) for lease in sorted(leases - {0})]
        if not (read and all(revoked)):
            return unconfirmed(f"deregister {self.key}", expires_in)
        log.info("%r: deregistered %s", self, self.key)
        return RELEASED

    def _revoke_quietly(self, lease: int) -> bool:
        """Revoke ``lease``; True unless etcd could not be told."""
        try:
            self._conn.revoke(lease)
        except LeaseNotFound:
            pass  # already gone: revoked by another process, or expired
        except EtcdError as exc:
            log.warning("could not revoke lease %x (%s); it expires by its TTL", lease, exc)
            return False
        return True
