"""``Staleness``: the event a recipe sends when its data stops (or starts again) being
known to be current.

A watch-driven recipe is current while its watch is established on a member that
answers (see :mod:`geventc.liveness`). When its data could not be confirmed current for
longer than ``Liveness.stale_after`` (5 s by default: keepalive time + keepalive timeout
+ 1 s), or its watch failed on every member, it sends ``Staleness(stale=True, age=…)``
on its channel and logs a warning; once it has caught up it sends
``Staleness(stale=False, …)``. Between the two its data is the last it knew, ``age``
seconds old at the time of the event.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Staleness:
    """The recipe's data is stale (``stale=True``) or current again (``stale=False``);
    ``age`` is how many seconds ago it was last confirmed current, ``revision`` the
    revision the data reflects."""

    stale: bool
    age: float
    revision: int
