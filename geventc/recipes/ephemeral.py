"""EphemeralKey: a key that lives while this process keeps its lease alive.

``create(value, ttl)`` writes the key attached to the connector's shared lease for
that TTL (one keep-alive request per TTL/3 for all keys with the TTL), failing with
:class:`KeyExists` when someone else holds the key. Its channel reports when the key is
lost (lease expired or revoked, key deleted by someone else) and when it is
re-established; a watch on the key's parent path notices a deletion at once.

Re-creation always uses a live lease: when etcd says the lease is gone
(``LeaseNotFound``) the shared lease is replaced at once and the key re-created on the
new one, which is never counted as a failed attempt. A key found on a lease this
process held before (the server kept the old lease, e.g. across a restart with its
data) is recognised as this process's own and moved onto the current lease, never
reported as taken. Failed attempts are retried under the key's :class:`RetryPolicy`
(by default forever, with jittered backoff up to 5 s); when a policy gives up, that is
final: a fatal :class:`RetriesExhausted` is reported and the key stops, releasing its
share of the lease, and nothing re-creates it later.

``delete()`` removes the key and releases its share of the lease without touching the
other keys on it (if etcd does not answer then, the deletion goes on in the background
until it is done or the shared lease ends). That includes a key whose re-creation the
stop cut short: a write of the key under way is left to finish (its answer says whether
etcd applied it), the deletion is sent only after it, and a key that may sit on the live
lease is deleted whether or not this process knew it held it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import gevent

from .. import validate
from ..channel import Channel
from ..coalesce import Flight
from ..errors import (
    EtcdError,
    InvalidArgument,
    KeyExists,
    LeaseNotFound,
    RecipeStateError,
    RetriesExhausted,
)
from ..lease import KeptLease, LeaseState
from ..retry import RetryPolicy
from ..staleness import Staleness
from ..txn import Compare, Op
from ..watch import PrefixUpdate
from ..wire import PutResult, RangeResult, TxnResult
from .base import Recipe, RecipeError, Release, unconfirmed
from .leftover import Joinable, delete_together, let_go

if TYPE_CHECKING:
    from ..host import RecipeHost

W = TypeVar("W", PutResult, TxnResult)

#: The retry policy of keys made with ``retry=None``: retry forever, backoff up to 5 s.
RETRY_FOREVER = RetryPolicy(max_attempts=0, retry_delay=5.0)

#: How often a claim re-reads a key that changes under it before it counts as failed.
CLAIM_ROUNDS = 3


class EphemeralStatus(enum.Enum):
    """What happened to an ephemeral key."""

    LOST = "LOST"
    RESTORED = "RESTORED"


@dataclass(frozen=True, slots=True)
class EphemeralEvent:
    """The key was lost (``reason`` says how) or re-established."""

    status: EphemeralStatus
    key: str
    reason: str = ""


def parent_prefix(key: bytes) -> bytes:
    """The directory a key lives in, with its trailing ``/`` (watched for deletions)."""
    cut = key.rstrip(b"/").rfind(b"/")
    return key[: cut + 1] if cut >= 0 else b""


class EphemeralKey(Recipe[EphemeralEvent | Staleness]):
    """A key kept alive by a shared lease; see the module docstring.

    ``overwrite=True`` writes the key whoever holds it; ``retry`` says how failed
    re-creations are retried (None: forever, see :data:`RETRY_FOREVER`)."""

    # slots: a process may hold tens of thousands of these
    __slots__ = (
        "_claimed_at",
        "_held",
        "_lease",
        "_leftover",
        "_reclaiming",
        "_stale",
        "_value",
        "_writing",
        "_written_on",
        "key",
        "overwrite",
        "retry",
    )

    def __init__(
        self,
        conn: RecipeHost,
        path: str,
        *,
        overwrite: bool = False,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(conn)
        self.key = conn.namespace.strip(conn.namespace.key(path, "path"))
        self.overwrite = validate.boolean(overwrite, "overwrite")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidArgument("retry must be a geventc.RetryPolicy or None")
        self.retry = retry if retry is not None else RETRY_FOREVER
        self._value = b""
        self._lease: KeptLease | None = None
        self._held = False
        self._claimed_at = 0  # the revision at which we last (re)created the key
        self._reclaiming = False
        self._leftover: float | None = None  # after a failed delete: when it expires
        self._stale = False  # the watch that tells the key's deletion is stale
        #: the lease id of the last write of the key that etcd may have applied (sent,
        #: or found ours): the key may sit on it even when no answer said so
        self._written_on = 0
        #: the write of a claim under way (left running by a stop that kills the claim)
        self._writing: Flight | None = None

    def __repr__(self) -> str:
        return f"EphemeralKey({self.key!r})"

    @property
    def _watched(self) -> bytes:
        """The prefix whose watch tells this key's deletion."""
        return parent_prefix(self.key)

    def __enter__(self) -> EphemeralKey:
        return self

    def start(self) -> Channel[EphemeralEvent | Staleness | RecipeError]:
        """Ephemeral keys start with :meth:`create`."""
        raise RecipeStateError("an EphemeralKey starts with create(value, ttl)")

    def create(
        self,
        value: str | bytes,
        ttl: int = 10,
        *,
        channel: Channel[EphemeralEvent | Staleness | RecipeError] | None = None,
    ) -> Channel[EphemeralEvent | Staleness | RecipeError]:
        """Create the key with ``value`` under a lease of ``ttl`` seconds; when this
        returns the key exists. Raises :class:`KeyExists` if another holder has it
        (unless the key was made with ``overwrite=True``). Events go to ``channel``
        when given (shared by several keys, left open by this key's stop)."""
        data = validate.value(value)
        ttl = validate.ttl(ttl)
        self._begin(channel=channel)
        try:
            self._lease = self._conn.lease_keeper.acquire(ttl, self._on_lease)
            self._value = data
            used = self._lease.id
            try:
                claimed = self._claim()
            except LeaseNotFound:  # revoked behind our back: the next create gets a new one
                self._lease.invalidate(used)
                raise
            if not claimed:
                raise KeyExists(f"key {self.key.decode()!r} is held by someone else")
        except BaseException:
            self.stop()
            raise
        self._conn.hub.subscribe(self._watched, self._on_change, key=self.key)
        return self.channel

    def update(self, value: str | bytes) -> None:
        """Replace the key's value (kept for re-creation after a loss)."""
        data = validate.value(value)
        if not self._running or self._lease is None:
            raise RecipeStateError("update() needs a created key (call create() first)")
        self._value = data
        lease = self._lease
        used = lease.id
        try:
            result = self._conn.txn(
                [Compare.lease(self.key) == used], [Op.put(self.key, data, lease=used)]
            )
        except LeaseNotFound:  # re-created with the new value on a new lease
            lease.invalidate(used)
            self._lost("the lease was gone when the key was updated")
            return
        if not result.succeeded:
            self._lost("the key was gone when it was updated")

    def delete(self) -> Release:
        """Delete the key now and release its share of the lease, within the
        connector's ``stop_timeout``; the :class:`Release` is true only when etcd
        confirmed the deletion (else it says when the key expires)."""
        return self.stop()

    # --- internals -------------------------------------------------------------------

    def _claim(self) -> bool:
        """Create the key if absent (or already ours); True when we hold it. A key on a
        lease this process held before is moved onto the current one."""
        lease = self._lease
        assert lease is not None
        if self.overwrite:
            put = self._write(lease.id, self._conn.put, self.key, self._value, lease=lease.id)
            self._claimed_at, self._held = put.header.revision, True
            return True
        for _ in range(CLAIM_ROUNDS):
            result = self._write(
                lease.id,
                self._conn.txn,
                [Compare.create_revision(self.key) == 0],
                [Op.put(self.key, self._value, lease=lease.id)],
                [Op.get(self.key)],
            )
            self._claimed_at = result.header.revision
            if result.succeeded:
                self._held = True
                return True
            read = result.responses[0]
            if not (isinstance(read, RangeResult) and read.kvs):
                continue  # deleted since: create it
            current = read.kvs[0]
            if current.lease == lease.id:
                self._held = True
                return True
            if not lease.was_held(current.lease):  # someone else's: nothing of ours
                self._held, self._written_on = False, 0
                return False
            # our own key, left on a lease we lost: move it over unless it changed since
            moved = self._write(
                lease.id,
                self._conn.txn,
                [Compare.mod_revision(self.key) == current.mod_revision],
                [Op.put(self.key, self._value, lease=lease.id)],
            )
            self._claimed_at = moved.header.revision
            if moved.succeeded:
                self._held = True
                return True
        raise EtcdError(f"key {self.key.decode()!r} kept changing while it was claimed")

    def _write(self, lease_id: int, send: Callable[..., W], *args: Any, **kwargs: Any) -> W:
        """``send(*args, **kwargs)``, a write of the key on ``lease_id``, and its answer
        (or its error). A stop that kills the claim waiting here leaves the write to
        finish (its :class:`Flight` ends once etcd answered it), so that its deletion
        comes after the write."""
        self._written_on = lease_id  # from the moment it is sent, the key may be there
        writing = Flight()
        self._writing = writing
        try:
            outcome = send(*args, flight=writing, **kwargs)
        except EtcdError:
            self._writing = None
            raise
        # interrupted (by a stop): the write may go on; the stop joins its flight
        self._writing = None
        return outcome

    def _reclaim(self, why: str) -> None:
        """Re-create the lost key on the live lease, retrying under the policy."""
        if self._reclaiming or self._held:
            return
        self._reclaiming = True
        failures = 0
        backoff = self.retry.backoff()
        try:
            while self._running and not self._held:
                lease = self._lease
                if lease is None or not lease.valid:
                    return  # the lease's next ACTIVE (a new lease) starts again
                used = lease.id
                try:
                    claimed = self._claim()
                except LeaseNotFound:  # gone on the server: replace it, not a failure
                    lease.invalidate(used)
                    continue
                except EtcdError as exc:
                    failures += 1
                    self._report(exc)
                    if self.retry.gives_up_after(failures):
                        self._give_up(failures, exc)
                        return
                    gevent.sleep(backoff.next())
                    continue
                if claimed and lease.id != used:  # written on a lease lost meanwhile
                    self._held = False
                    continue
                if claimed:
                    self._emit(EphemeralEvent(EphemeralStatus.RESTORED, self.key.decode(), why))
                else:
                    self._report(KeyExists(f"{self.key.decode()!r} was taken by someone else"))
                return
        finally:
            self._reclaiming = False

    def _give_up(self, failures: int, error: EtcdError) -> None:
        """The policy's last attempt failed: stop for good (releasing the share of the
        lease), then say so, once."""
        self._shutdown(
            RetriesExhausted(
                f"gave up restoring {self.key.decode()!r} after {failures} consecutive "
                f"failures: {error.message}"
            )
        )

    def _lost(self, why: str) -> None:
        if self._held:
            self._held = False
            self._emit(EphemeralEvent(EphemeralStatus.LOST, self.key.decode(), why))

    def _on_lease(self, lease: KeptLease, state: LeaseState) -> None:
        if not self._running:
            return
        if state is LeaseState.LOST:
            self._lost("the lease expired or was revoked")
        elif state is LeaseState.ACTIVE and not self._held:
            self._spawn(self._reclaim, "a new lease was granted")

    def _on_change(self, update: PrefixUpdate) -> None:
        if self._conn.closing:
            return  # the connector revoked the lease: the deletion is its own
        if update.stale != self._stale and self._running:
            # a deletion of the key could go unseen meanwhile: say so, and when it is over
            self._stale = update.stale
            self._emit(Staleness(update.stale, update.age, update.revision))
        lease = self._lease
        if not self._running or lease is None or update.error or update.revision < self._claimed_at:
            return  # stopped, or a view older than our last write
        current = update.state.get(self.key)
        mine = current is not None and current.lease == lease.id
        if self._held and not mine:
            self._lost("the key was deleted by someone else")
        left_behind = current is not None and not mine and lease.was_held(current.lease)
        if not self._held and lease.valid:
            if current is None:
                self._spawn(self._reclaim, "re-created after it was deleted")
            elif left_behind:
                self._spawn(self._reclaim, "moved from a lost lease onto the new one")

    def _release(self) -> Release | None:
        self._conn.hub.unsubscribe(self._watched, self._on_change, key=self.key)
        lease, self._lease = self._lease, None
        if lease is None:
            return None
        mine = self._may_be_on(lease) and not self._conn.closing  # closing revokes it
        writing, self._writing = self._writing, None
        self._held, self._written_on = False, 0
        doomed = {self.key: Compare.lease(self.key) == lease.id} if mine else {}
        in_flight: list[Joinable] = []
        try:
            if writing is not None and mine:
                writing.join()  # a write under way first (its deletion must follow it)
            if mine:  # with every key stopped now (20,000 at once: 158 requests)
                delete_together(self._conn, self.key, doomed[self.key], in_flight=in_flight)
        except BaseException:  # no answer, or out of time: let go without waiting
            after: list[Joinable] = [writing] if writing is not None and mine else []
            after += in_flight  # the deletion under way first
            self._leftover = let_go(
                self._conn, lease, self._on_lease, doomed, after=after, owner=self
            )
            raise
        revoked = self._conn.lease_keeper.release(lease, self._on_lease, timeout=self._remaining())
        if revoked is False and not mine:  # the key was to go with the lease
            self._leftover = lease.expires_in
            return unconfirmed(self._held_text(), self._leftover, "its lease was not revoked")
        return None

    def _may_be_on(self, lease: KeptLease) -> bool:
        """True when the key may sit on ``lease`` as it is now: held, or written on it
        by a claim whose answer never came (the stop killed it), while the lease lives
        (a lost lease takes the key with it, as when the key was lost with it)."""
        written = self._written_on
        alive = lease.state not in (LeaseState.LOST, LeaseState.CLOSED)
        return self._held or (written != 0 and written == lease.id and alive)

    def _held_text(self) -> str:
        return f"delete {self.key.decode('utf-8', 'replace')}"

    def _expires_in(self) -> float | None:
        return self._leftover
