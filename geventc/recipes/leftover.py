"""Leftovers: the keys a holder could not delete in time, and its share of their lease.

A recipe that stops (or gives up an attempt) while etcd does not answer must neither
wait for etcd nor say that its keys are gone: it hands them here. A leftover is a key
with the guard its deletion needs (its lease, create or mod revision), so a deletion
never removes a newer key of the same name. The guarantees:

- :func:`delete_until_confirmed` retries the deletion (with backoff) until etcd
  confirms it, and gives up only when the keys no longer need it (``still_needed()``
  turned false) or the connector closed (which revokes its leases, and the keys on them);
- :func:`let_go` gives back a share of a lease without waiting for etcd. While other
  holders keep the lease alive, the leftovers on it are first deleted in the background,
  until etcd confirms or the lease is replaced or closed (the keys went with it): the
  share (and whatever the holder reserved for its keys, released by ``then``) is kept
  until then, so nothing of this holder is reused while its keys remain. As the lease's
  last holder, its revocation (which takes the keys with it) goes to the background, and
  :meth:`~geventc.lease.LeaseKeeper.unrevoked` counts the lease until etcd confirms.
  A write of the keys still under way (``after``: its answer never came in time) is
  waited for before their deletion is sent, so that the deletion comes after it (a
  deletion sent first could be overtaken by the write, and the key stay for good).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import gevent

from .. import validate
from ..errors import EtcdError
from ..lease import KeptLease, LeaseState
from ..retry import Backoff
from ..txn import Compare, Comparison, Op

if TYPE_CHECKING:
    from ..host import RecipeHost
    from ..lease import LeaseListener

log = logging.getLogger("geventc")

#: Keys to delete, each with the guard under which its deletion may happen.
Leftovers = Mapping[bytes, Comparison]


def created_at(keys: Mapping[bytes, int]) -> dict[bytes, Comparison]:
    """Guards that hold while each key is the one created at its revision."""
    return {key: Compare.create_revision(key) == revision for key, revision in keys.items()}


def delete_guarded(conn: RecipeHost, leftovers: Leftovers) -> None:
    """Delete each key of ``leftovers`` while its guard holds, in as few requests as
    etcd's ``--max-txn-ops`` allows (one nested txn per key, so a key whose guard fails
    does not keep the others); raises the request's error."""
    ops = [Op.txn([guard], [Op.delete(key)]) for key, guard in leftovers.items()]
    for start in range(0, len(ops), validate.MAX_TXN_OPS):
        conn.txn([], ops[start : start + validate.MAX_TXN_OPS])


def _always() -> bool:
    return True


def delete_until_confirmed(
    conn: RecipeHost,
    leftovers: Leftovers,
    *,
    still_needed: Callable[[], bool] = _always,
    owner: object = "",
) -> bool:
    """Delete ``leftovers`` (see :func:`delete_guarded`), retrying with backoff while
    etcd fails: True once etcd confirmed it, False when ``still_needed()`` turned false
    or the connector closed first. ``owner`` names who left them, in the log."""
    backoff = Backoff(first=0.2, cap=2.0)
    while leftovers and not conn.closed and still_needed():
        try:
            delete_guarded(conn, leftovers)
            return True
        except EtcdError as exc:
            log.info("%s: deleting %s failed (%s); retrying", owner, _named(leftovers), exc)
            gevent.sleep(backoff.next())
    return not leftovers


def let_go(
    conn: RecipeHost,
    lease: KeptLease,
    listener: LeaseListener,
    leftovers: Leftovers,
    *,
    then: Callable[[], None] | None = None,
    after: Iterable[gevent.Greenlet[Any, Any]] = (),
    owner: object = "",
) -> float | None:
    """Give back ``listener``'s share of ``lease`` without waiting for etcd, with the
    ``leftovers`` on it that could not be deleted in time (see the module docstring),
    once the writes ``after`` (greenlets of writes of them still under way) ended.
    Returns about how many seconds the leftovers stay (None: until a background
    deletion succeeds). ``then`` runs once nothing more is deleted on the holder's
    behalf (to drop a name it reserved for the keys)."""
    if leftovers and lease.holders > 1:
        conn.group.spawn(
            _delete_then_give_back,
            conn,
            lease,
            lease.id,
            listener,
            dict(leftovers),
            then,
            [*after],
            owner,
        )
        return None
    conn.lease_keeper.release_later(lease, listener)
    if then is not None:
        then()
    return lease.expires_in


def _delete_then_give_back(
    conn: RecipeHost,
    lease: KeptLease,
    lease_id: int,
    listener: LeaseListener,
    leftovers: Leftovers,
    then: Callable[[], None] | None,
    after: list[gevent.Greenlet[Any, Any]],
    owner: object,
) -> None:
    """Once the writes ``after`` ended, and while other holders keep ``lease`` alive
    with ``lease_id`` (the keys' lease), delete ``leftovers``; then give back the share
    (the last holder's revocation takes whatever is left with it)."""

    def still_needed() -> bool:  # else the keys went (or go) with the lease
        held_by_others = lease.holders > 1
        return held_by_others and lease.id == lease_id and lease.state is not LeaseState.CLOSED

    try:
        gevent.joinall(after)  # each ends with its answer or the request's timeout
        delete_until_confirmed(conn, leftovers, still_needed=still_needed, owner=owner)
        conn.lease_keeper.release_later(lease, listener)
    finally:
        if then is not None:
            then()


def _named(leftovers: Leftovers) -> str:
    if len(leftovers) == 1:
        return repr(next(iter(leftovers)))
    return f"{len(leftovers)} keys"


__all__ = [
    "Leftovers",
    "created_at",
    "delete_guarded",
    "delete_until_confirmed",
    "let_go",
]
