"""Contention: many processes queue for one thing by each putting a key on its lease.

The counterpart of Go's ``client/v3/concurrency`` ``key.go`` and the shared steps of its
``Election`` and ``Mutex``, so that Go and geventc contenders on the same prefix queue
in one line:

- a contender's key is ``prefix + lowercase-hex(lease id)`` (:func:`key_for`);
- :func:`claim` creates it if absent (``create_revision == 0`` then put), or finds it
  (the same lease already holds it, e.g. after a lost answer), and makes its value
  ours with a guarded put; the key's create revision is the contender's place;
- the contender with the lowest create revision is first (:func:`first`); a contender
  may act only once no key created before its own is left (:func:`older`: the query of
  Go's ``waitDeletes``, linearizable);
- its writes are guarded by :func:`owns` (``create_revision(key) == revision``, Go's
  ``IsOwner``), and :func:`resign` deletes the key under that guard.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import EtcdError
from .txn import Compare, Comparison, Op
from .wire import KeyValue, RangeResult

if TYPE_CHECKING:
    from .host import RecipeHost


@dataclass(frozen=True, slots=True)
class Claim:
    """A contender's key and its place in the queue (the key's create revision)."""

    key: bytes
    revision: int


def key_for(prefix: bytes, lease_id: int) -> bytes:
    """The contender key of ``lease_id`` under ``prefix`` (which ends with its ``/``)."""
    return prefix + f"{lease_id:x}".encode()


def claim(host: RecipeHost, prefix: bytes, lease_id: int, value: str | bytes) -> Claim:
    """Create (or find) this lease's key under ``prefix`` with ``value``; raises
    :class:`~geventc.errors.LeaseNotFound` when the lease is gone."""
    key = key_for(prefix, lease_id)
    # the count of the prefix is not used: reading the prefix in the same txn keeps a
    # coalescing client from applying two claims of one election at one revision (their
    # order by create revision is who leads)
    contenders = Op.get(prefix, prefix=True, count_only=True)
    result = host.txn(
        [Compare.create_revision(key) == 0],
        [Op.put(key, value, lease=lease_id), contenders],
        [Op.get(key), contenders],
    )
    if result.succeeded:
        return Claim(key, result.header.revision)
    read = result.responses[0]
    if not (isinstance(read, RangeResult) and read.kvs):
        raise EtcdError(f"the contender key {key.decode()!r} vanished; claim it again")
    found = read.kvs[0]
    wanted = value.encode() if isinstance(value, str) else value
    if found.value != wanted:  # ours by lease, not yet by value: proclaim it
        host.txn([owns(key, found.create_revision)], [Op.put(key, value, lease=lease_id)])
    return Claim(key, found.create_revision)


def owns(key: bytes, revision: int) -> Comparison:
    """The guard of a write that must happen only while ``key`` is the one created at
    ``revision`` (a fencing token)."""
    return Compare.create_revision(key) == revision


def first(keys: Mapping[bytes, KeyValue]) -> KeyValue | None:
    """The contender created first among ``keys`` (None when there is none)."""
    return min(keys.values(), key=lambda kv: kv.create_revision, default=None)


def older(host: RecipeHost, prefix: bytes, revision: int) -> KeyValue | None:
    """The newest key under ``prefix`` created before ``revision``, or None when no
    contender is ahead of the one at ``revision`` (a linearizable read; etcd's
    ``count`` ignores the revision filters, so the keys themselves are asked for)."""
    ahead = host.get_prefix(
        prefix,
        max_create_revision=revision - 1,
        sort_target="CREATE",
        sort_order="DESCEND",
        limit=1,
        keys_only=True,
    )
    return ahead.kvs[0] if ahead.kvs else None


def resign(host: RecipeHost, held: Claim) -> bool:
    """Delete the key of ``held`` if it is still the one it claimed; True if deleted."""
    result = host.txn([owns(held.key, held.revision)], [Op.delete(held.key)])
    return result.succeeded


__all__ = ["Claim", "claim", "first", "key_for", "older", "owns", "resign"]
