"""ServiceTracker: the instances registered under a path, as snapshots.

The first snapshot is the current state (read, then watched from the read's revision
+ 1: no gap, no duplicate), including every write this connector made before
``start()``; then one snapshot per change of a name or value, and one whenever the
services stop or start again being known to be current (``stale``). The channel
keeps only the newest snapshot, so a slow consumer never reads a backlog. Trackers of
one path in one connector share one watch stream; after a disconnect the watch resumes
from its last revision, and after compaction it re-reads and the tracker emits the
corrected snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from ..errors import EtcdError
from ..watch import PrefixUpdate
from ..wire import EventType
from .base import Recipe

if TYPE_CHECKING:
    from ..host import RecipeHost


@dataclass(frozen=True, slots=True)
class ServiceSnapshot:
    """Every instance under the tracked path: name (key relative to the path) ->
    value, as of ``revision``; ``error`` reports a problem the tracker is riding out
    (the next snapshot without one says it is over). ``stale`` says the services could
    not be confirmed current for longer than the liveness bound (``age`` seconds
    since they last were); a snapshot is sent whenever ``stale`` changes."""

    services: Mapping[str, str]
    revision: int
    error: EtcdError | None = None
    stale: bool = False
    age: float = 0.0


class _LastChange:
    """The services the last tracker computed for an update, so that the other
    trackers of the same path (called one after another with the same update object)
    reuse them: one decode per change, and one shared mapping, however many trackers
    follow the path."""

    update: PrefixUpdate | None = None
    prefix: bytes = b""
    before: Mapping[str, str] | None = None
    after: Mapping[str, str] | None = None


class ServiceTracker(Recipe[ServiceSnapshot]):
    """Follows the instances under ``path``; see the module docstring."""

    __slots__ = ("_last", "_prefix", "_stale", "_troubled", "path")

    def __init__(self, conn: RecipeHost, path: str) -> None:
        super().__init__(conn)
        stored = conn.namespace.key(path, "path")
        self.path = conn.namespace.strip(stored).rstrip(b"/") or b"/"
        self._prefix = self.path if self.path.endswith(b"/") else self.path + b"/"
        self._last: Mapping[str, str] | None = None
        self._troubled = False  # the newest snapshot sent reports an error
        self._stale = False  # the newest snapshot sent says the services are stale

    def __repr__(self) -> str:
        return f"ServiceTracker({self.path.decode()!r})"

    def _start(self) -> None:
        """Start tracking; the channel's first snapshot is the current state."""
        self._begin(latest_only=True)
        self._conn.hub.subscribe(self._prefix, self._on_change, read_your_writes=True)

    @property
    def services(self) -> Mapping[str, str]:
        """The newest snapshot's services (empty before the first)."""
        return self._last if self._last is not None else MappingProxyType({})

    def _on_change(self, update: PrefixUpdate) -> None:
        if not self._running:
            return
        if update.error is not None:
            self._troubled, self._stale = True, update.stale
            self._emit(
                ServiceSnapshot(
                    self.services, update.revision, update.error, update.stale, update.age
                )
            )
            return
        services = self._shared_apply(update)
        if services is not None:
            self._last = services
        elif not self._troubled and update.stale == self._stale:
            return  # no name or value changed, e.g. a re-put of the same value
        self._troubled = False  # a snapshot without error tells the problem is over
        self._stale = update.stale
        self._emit(
            ServiceSnapshot(self.services, update.revision, stale=update.stale, age=update.age)
        )

    def _shared_apply(self, update: PrefixUpdate) -> Mapping[str, str] | None:
        """:meth:`_apply`, computed once for all trackers with the same path and view."""
        memo = _LastChange
        if memo.update is update and memo.prefix == self._prefix and memo.before is self._last:
            return memo.after
        changed = self._apply(update)
        after = MappingProxyType(changed) if changed is not None else None
        memo.update, memo.prefix, memo.before, memo.after = update, self._prefix, self._last, after
        return after

    def _apply(self, update: PrefixUpdate) -> dict[str, str] | None:
        """The services after ``update``, or None when they did not change. Watch
        events are applied to a copy of the last services (the whole state is decoded
        only on a resync), so a change costs each tracker a copy, not a decode of every
        instance."""
        cut = len(self._prefix)
        last = self._last
        if last is None or update.resynced:
            fresh = {
                k[cut:].decode("utf-8", "replace"): kv.value_str for k, kv in update.state.items()
            }
            return None if fresh == last else fresh
        changes = {
            event.kv.key[cut:].decode("utf-8", "replace"): (
                None if event.type is EventType.DELETE else event.kv.value_str
            )
            for event in update.events
        }
        if all(last.get(name) == value for name, value in changes.items()):
            return None
        services = dict(last)
        for name, value in changes.items():
            if value is None:
                services.pop(name, None)
            else:
                services[name] = value
        return services

    def _release(self) -> None:
        self._conn.hub.unsubscribe(self._prefix, self._on_change)
