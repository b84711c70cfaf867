"""EphemeralKey: a key that lives while this process keeps its lease alive.

``create(value, ttl)`` writes the key attached to the connector's shared lease for
that TTL (one keep-alive request per TTL/3 for all keys with the TTL), failing with
:class:`KeyExists` when someone else holds the key. Its channel reports when the key is
lost (lease expired, key deleted by someone else) and when it is re-established; a
watch on the key's parent path notices a deletion at once. ``delete()`` removes the key
and releases its share of the lease without touching the other keys on it (if etcd
does not answer then, the deletion goes on in the background until it is done or the
shared lease ends).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gevent

from .. import validate
from ..channel import Channel
from ..errors import EtcdError, InvalidArgument, KeyExists, RecipeStateError, RetriesExhausted
from ..lease import KeptLease, LeaseState
from ..retry import Backoff, RetryPolicy
from ..txn import Compare, Op
from ..watch import PrefixUpdate
from ..wire import RangeResult
from .base import Recipe, RecipeError

if TYPE_CHECKING:
    from ..connector import Connector

log = logging.getLogger("geventc")


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


class EphemeralKey(Recipe[EphemeralEvent]):
    """A key kept alive by a shared lease; see the module docstring."""

    # slots: a process may hold tens of thousands of these
    __slots__ = (
        "_claimed_at",
        "_held",
        "_lease",
        "_reclaiming",
        "_value",
        "key",
        "overwrite",
        "retry",
    )

    def __init__(
        self,
        conn: Connector,
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
        self.retry = retry
        self._value = b""
        self._lease: KeptLease | None = None
        self._held = False
        self._claimed_at = 0  # the revision at which we last (re)created the key
        self._reclaiming = False

    def __repr__(self) -> str:
        return f"EphemeralKey({self.key!r})"

    @property
    def _watched(self) -> bytes:
        """The prefix whose watch tells this key's deletion."""
        return parent_prefix(self.key)

    def __enter__(self) -> EphemeralKey:
        return self

    def start(self) -> Channel[EphemeralEvent | RecipeError]:
        """Ephemeral keys start with :meth:`create`."""
        raise RecipeStateError("an EphemeralKey starts with create(value, ttl)")

    def create(
        self,
        value: str | bytes,
        ttl: int = 10,
        *,
        channel: Channel[EphemeralEvent | RecipeError] | None = None,
    ) -> Channel[EphemeralEvent | RecipeError]:
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
            if not self._claim():
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
        result = self._conn.txn(
            [Compare.lease(self.key) == lease.id], [Op.put(self.key, data, lease=lease.id)]
        )
        if not result.succeeded:
            self._lost("the key was gone when it was updated")

    def delete(self) -> None:
        """Delete the key now and release its share of the lease."""
        self.stop()

    # --- internals -------------------------------------------------------------------

    def _claim(self) -> bool:
        """Create the key if absent (or already ours); True when we hold it."""
        lease = self._lease
        assert lease is not None
        if self.overwrite:
            put = self._conn.put(self.key, self._value, lease=lease.id)
            self._claimed_at, self._held = put.header.revision, True
            return True
        result = self._conn.txn(
            [Compare.create_revision(self.key) == 0],
            [Op.put(self.key, self._value, lease=lease.id)],
            [Op.get(self.key)],
        )
        self._claimed_at = result.header.revision
        if result.succeeded:
            self._held = True
            return True
        read = result.responses[0]
        ours = isinstance(read, RangeResult) and bool(read.kvs) and read.kvs[0].lease == lease.id
        self._held = ours
        return ours

    def _reclaim(self, why: str) -> None:
        if self._reclaiming or self._held:
            return
        self._reclaiming = True
        failures = 0
        backoff = self.retry.backoff() if self.retry else None
        try:
            while self._running and not self._held:
                try:
                    if self._claim():
                        self._emit(EphemeralEvent(EphemeralStatus.RESTORED, self.key.decode(), why))
                    else:
                        self._report(KeyExists(f"{self.key.decode()!r} was taken by someone else"))
                    return
                except EtcdError as exc:
                    failures += 1
                    self._report(exc)
                    if backoff is None or self.retry is None:
                        return
                    if self.retry.gives_up_after(failures):
                        self._report(
                            RetriesExhausted(
                                f"gave up restoring {self.key.decode()!r} after {failures} "
                                f"consecutive failures: {exc.message}"
                            ),
                            fatal=True,
                        )
                        return
                    gevent.sleep(backoff.next())
        finally:
            self._reclaiming = False

    def _lost(self, why: str) -> None:
        if self._held:
            self._held = False
            self._emit(EphemeralEvent(EphemeralStatus.LOST, self.key.decode(), why))

    def _on_lease(self, lease: KeptLease, state: LeaseState) -> None:
        if not self._running:
            return
        if state is LeaseState.LOST:
            self._lost("the lease expired")
        elif state is LeaseState.ACTIVE and not self._held:
            self._greenlets.spawn(self._reclaim, "a new lease was granted")

    def _on_change(self, update: PrefixUpdate) -> None:
        lease = self._lease
        if not self._running or lease is None or update.error or update.revision < self._claimed_at:
            return  # stopped, or a view older than our last write
        current = update.state.get(self.key)
        mine = current is not None and current.lease == lease.id
        if self._held and not mine:
            self._lost("the key was deleted by someone else")
        if not self._held and current is None and lease.valid:
            self._greenlets.spawn(self._reclaim, "re-created after it was deleted")

    def _release(self) -> None:
        self._conn.hub.unsubscribe(self._watched, self._on_change, key=self.key)
        lease, self._lease = self._lease, None
        if lease is None:
            return
        deleted = not (self._held and not self._conn.closing)  # closing revokes the lease
        try:
            if not deleted:
                self._conn.txn([Compare.lease(self.key) == lease.id], [Op.delete(self.key)])
                deleted = True
        finally:
            if not deleted and lease.holders > 1:
                # the other holders keep the shared lease (and so this key) alive: keep
                # trying in the background, or the stopped key would stay for good
                self._conn.group.spawn(_delete_later, self._conn, self.key, lease, lease.id)
            self._held = False
            self._conn.lease_keeper.release(lease, self._on_lease)


def _delete_later(conn: Connector, key: bytes, lease: KeptLease, lease_id: int) -> None:
    """Delete a stopped key that still sits on a shared lease, once etcd answers; give up
    when the lease is gone (and the key with it) or the connector closes."""
    backoff = Backoff(first=0.2, cap=2.0)
    while not conn.closed and lease.id == lease_id and lease.state is not LeaseState.CLOSED:
        try:
            conn.txn([Compare.lease(key) == lease_id], [Op.delete(key)])
            return
        except EtcdError as exc:
            log.info("deleting stopped key %r failed (%s); retrying", key, exc)
            gevent.sleep(backoff.next())
