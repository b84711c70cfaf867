"""ServiceTracker: the instances registered under a path, as snapshots.

The first snapshot is the current state (read, then watched from the read's revision
+ 1: no gap, no duplicate); then one snapshot per change of a name or value. The channel
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

from ..channel import Channel
from ..errors import EtcdError
from ..watch import PrefixUpdate
from .base import Recipe, RecipeError

if TYPE_CHECKING:
    from ..connector import Connector


@dataclass(frozen=True, slots=True)
class ServiceSnapshot:
    """Every instance under the tracked path: name (key relative to the path) ->
    value, as of ``revision``; ``error`` reports a problem the tracker is riding out."""

    services: Mapping[str, str]
    revision: int
    error: EtcdError | None = None


class ServiceTracker(Recipe[ServiceSnapshot]):
    """Follows the instances under ``path``; see the module docstring."""

    def __init__(self, conn: Connector, path: str) -> None:
        super().__init__(conn)
        stored = conn.namespace.key(path, "path")
        self.path = conn.namespace.strip(stored).rstrip(b"/") or b"/"
        self._prefix = self.path if self.path.endswith(b"/") else self.path + b"/"
        self._last: Mapping[str, str] | None = None

    def __repr__(self) -> str:
        return f"ServiceTracker({self.path.decode()!r})"

    def start(self) -> Channel[ServiceSnapshot | RecipeError]:
        """Start tracking; the channel's first snapshot is the current state."""
        self._begin(latest_only=True)
        self._conn.hub.subscribe(self._prefix, self._on_change)
        return self.channel

    @property
    def services(self) -> Mapping[str, str]:
        """The newest snapshot's services (empty before the first)."""
        return self._last if self._last is not None else MappingProxyType({})

    def _on_change(self, update: PrefixUpdate) -> None:
        if not self._running:
            return
        cut = len(self._prefix)
        services = {
            k[cut:].decode("utf-8", "replace"): kv.value_str for k, kv in update.state.items()
        }
        if update.error is not None:
            self._emit(ServiceSnapshot(self.services, update.revision, update.error))
            return
        if self._last is not None and services == self._last:
            return  # e.g. a re-put of the same value
        self._last = MappingProxyType(services)
        self._emit(ServiceSnapshot(self._last, update.revision))

    def _release(self) -> None:
        self._conn.hub.unsubscribe(self._prefix, self._on_change)
