"""Readers-writer lock: many readers or one writer, etcd's Go recipes ``RWMutex`` layout.

A reader puts ``path/read/<unix nanoseconds>`` and a writer ``path/write/<unix
nanoseconds>`` (created only if absent, on the connector's shared lease of the TTL,
empty values), exactly as Go's ``recipe.NewRWMutex(session, path)`` does, so Go and
Python readers and writers of one path exclude each other. A reader holds once no
writer's key created before its own is left; a writer holds once no key at all created
before its own is left. Readers that come after a waiting writer queue behind it, so
writers are not starved. Events, fencing and clean-up are those of
:mod:`geventc.recipes.contender`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .base import Release, unconfirmed
from .contender import Contender, LockEvent, LockStatus

if TYPE_CHECKING:
    from ..host import RecipeHost


class _SideLock(Contender):
    """One side of a readers-writer lock; keys are unique by their time of creation."""

    side = b""

    @property
    def _exclusive_name(self) -> bytes | None:
        return None  # unique keys: any number of holders share one lease

    def _new_key(self, lease_id: int) -> bytes:
        return self._prefix + self.side + b"/" + str(time.time_ns()).encode()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path.decode('utf-8', 'replace')!r})"


class ReadLock(_SideLock):
    """The reading side: held together with other readers, never with a writer."""

    kind = "read lock"
    side = b"read"

    @property
    def _blocking_prefix(self) -> bytes:
        return self._prefix + b"write/"


class WriteLock(_SideLock):
    """The writing side: held alone."""

    kind = "write lock"
    side = b"write"


class RWLock:
    """A readers-writer lock at ``path`` with a lease of ``ttl`` seconds: ``read`` and
    ``write`` are its two locks, each with the API of :class:`~geventc.recipes.lock.Lock`
    (``with rw.read:``, ``rw.write.acquire(timeout=5)``, ``fencing_token``, ``guard()``,
    events). One RWLock is one reader *or* one writer of this process; make another for
    each concurrent holder."""

    def __init__(self, conn: RecipeHost, path: str, *, ttl: int = 10) -> None:
        self.read = ReadLock(conn, path, ttl=ttl)
        self.write = WriteLock(conn, path, ttl=ttl)
        self.path = self.read.path

    def __repr__(self) -> str:
        return f"RWLock({self.path.decode('utf-8', 'replace')!r})"

    def stop(self) -> Release:
        """Stop both sides (releasing what they hold); true when etcd confirmed it."""
        outcomes = [self.read.stop(), self.write.stop()]
        failed = [outcome for outcome in outcomes if not outcome.confirmed]
        if not failed:
            return outcomes[0]
        return unconfirmed(
            f"release {self.path.decode('utf-8', 'replace')}",
            failed[0].expires_in,
            "; ".join(outcome.detail for outcome in failed),
        )


__all__ = ["LockEvent", "LockStatus", "RWLock", "ReadLock", "WriteLock"]
