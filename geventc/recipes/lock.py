"""Lock: mutual exclusion at a path, etcd ``concurrency.Mutex``'s layout and rule.

A holder's key is ``path + "/" + <lease id in lowercase hex>`` with an empty value, on
the connector's shared lease of the lock's TTL (a second holder of the same path in
this process gets another shared lease, so their keys differ); the key with the lowest
create revision holds the lock, the others wait, first come first served, for the
deletion of the keys created before theirs. Go and Python holders of one path exclude
each other. See :mod:`geventc.recipes.contender` for the events, the fencing token and
the guarantees on timeouts, faults and clean-up.
"""

from __future__ import annotations

from .contender import Contender, LockEvent, LockStatus


class Lock(Contender):
    """A mutual-exclusion lock at ``path`` held on a lease of ``ttl`` seconds.

    ``lock.acquire(timeout=None, blocking=True) -> bool``, ``lock.release()``,
    ``with lock:`` (never runs the block unlocked), ``with lock.hold(timeout=5):``
    (raises :class:`~geventc.errors.NotAcquired`), ``lock.fencing_token``,
    ``lock.guard()`` / ``lock.txn(...)`` for writes that must happen only while held;
    the channel (``lock.channel`` once started) reports ACQUIRED, SUSPENDED, LOST and
    RELEASED."""

    kind = "lock"
    slots = 1


__all__ = ["Lock", "LockEvent", "LockStatus"]
