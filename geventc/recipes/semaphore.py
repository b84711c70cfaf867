"""Semaphore: at most ``max_holders`` holders of a path at once, first come first served.

Layout (no Go recipe defines one; this is ``concurrency.Mutex``'s, generalised): each
holder puts ``path + "/" + <lease id in lowercase hex>`` on its lease, with the decimal
``max_holders`` as its value; a holder holds a slot while fewer than ``max_holders``
keys created before its own are left, so holders are served in the order they queued
and, since a newer key never gets ahead of an older one, no more than ``max_holders``
keys with live leases ever hold at once. Every holder of a path must agree on
``max_holders``: a key saying another number is refused with
:class:`~geventc.errors.InvalidArgument`. Events, fencing and clean-up are those of
:mod:`geventc.recipes.contender`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import validate
from ..errors import InvalidArgument
from ..wire import KeyValue
from .contender import Contender, LockEvent, LockStatus

if TYPE_CHECKING:
    from ..host import RecipeHost

#: The most holders a semaphore may have (one txn reads the oldest max_holders + 1).
MAX_HOLDERS = 10_000


class Semaphore(Contender):
    """At most ``max_holders`` holders of ``path`` at once, each on a lease of ``ttl``
    seconds: ``acquire(timeout=None, blocking=True) -> bool``, ``release()``, ``with``,
    ``hold(timeout=)``, ``fencing_token``, ``guard()``/``txn()`` and the channel of a
    :class:`~geventc.recipes.lock.Lock`."""

    kind = "semaphore"

    def __init__(self, conn: RecipeHost, path: str, max_holders: int, *, ttl: int = 10) -> None:
        super().__init__(conn, path, ttl=ttl)
        self.max_holders = validate.integer(
            max_holders, "max_holders", minimum=1, maximum=MAX_HOLDERS
        )
        self.slots = self.max_holders

    def __repr__(self) -> str:
        return f"Semaphore({self.path.decode('utf-8', 'replace')!r}, {self.max_holders})"

    @property
    def _value(self) -> bytes:
        return str(self.max_holders).encode()

    def _check_key(self, kv: KeyValue) -> None:
        if kv.value != self._value:
            raise InvalidArgument(
                f"the semaphore {self.path.decode('utf-8', 'replace')!r} has a holder with "
                f"max_holders={kv.value.decode('utf-8', 'replace')!r}; this one says "
                f"{self.max_holders}: every holder of a path must use the same max_holders"
            )

    def holders(self) -> int:
        """How many keys hold or wait for a slot now (a linearizable read)."""
        return len(self.contenders())


__all__ = ["LockEvent", "LockStatus", "Semaphore"]
