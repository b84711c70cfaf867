"""ServiceTracker: the instances registered under a path, as snapshots.

The first snapshot is the current state (read, then watched from the read's revision
+ 1: no gap, no duplicate), including every write this connector made before
``start()``; then one snapshot per change of a name or value, and one whenever the
services stop or start again being known to be current (``stale``). The channel
keeps only the newest snapshot, so a slow consumer never reads a backlog. Trackers of
one path in one connector share one watch stream; after a disconnect the watch resumes
from its last revision, and after compaction it re-reads and the tracker emits the
corrected snapshot.

Fan-out: the trackers of one path in one connector are one listener of the shared
watch. Each change is decoded once, and every tracker of the path is handed the same
(frozen) :class:`ServiceSnapshot` object, so a change costs each tracker a put into its
channel. Made with ``channel=`` (``conn.service_tracker(path, channel=shared)``, with
``shared = Channel(latest_per_source=True)``), trackers put their snapshots into one
channel that keeps the newest snapshot of each tracker (``snapshot.path`` says whose):
one greenlet reads them all, instead of one greenlet woken up per tracker, and a slow
reader still reads only the newest snapshot of each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..channel import Channel
from ..errors import EtcdError
from ..watch import PrefixUpdate
from ..wire import EventType
from .base import Recipe, RecipeError

if TYPE_CHECKING:
    from ..host import RecipeHost
    from ..watch import WatchHub

Services = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ServiceSnapshot:
    """Every instance under the tracked path: name (key relative to the path) ->
    value, as of ``revision``; ``error`` reports a problem the tracker is riding out
    (the next snapshot without one says it is over). ``stale`` says the services could
    not be confirmed current for longer than the liveness bound (``age`` seconds
    since they last were); a snapshot is sent whenever ``stale`` changes. ``path`` is
    the tracked path (which tracker it is from, on a channel shared by many)."""

    services: Services
    revision: int
    error: EtcdError | None = None
    stale: bool = False
    age: float = 0.0
    path: str = ""


class ServiceTracker(Recipe[ServiceSnapshot]):
    """Follows the instances under ``path``; see the module docstring. With
    ``channel`` (a ``Channel(latest_per_source=True)`` shared by many trackers, left
    open by their stops) the snapshots go there instead of a channel of its own."""

    __slots__ = ("_followers", "_last", "_prefix", "_shared", "_stale", "_troubled", "path")
    _RELEASES_LOCALLY = True  # it only leaves the shared watch

    def __init__(
        self,
        conn: RecipeHost,
        path: str,
        *,
        channel: Channel[ServiceSnapshot | RecipeError] | None = None,
    ) -> None:
        super().__init__(conn)
        stored = conn.namespace.key(path, "path")
        self.path = conn.namespace.strip(stored).rstrip(b"/") or b"/"
        self._prefix = self.path if self.path.endswith(b"/") else self.path + b"/"
        self._shared = channel
        self._last: Services | None = None
        self._troubled = False  # the newest snapshot sent reports an error
        self._stale = False  # the newest snapshot sent says the services are stale
        self._followers: _Followers | None = None

    def __repr__(self) -> str:
        return f"ServiceTracker({self.path.decode()!r})"

    def _start(self) -> None:
        """Start tracking; the channel's first snapshot is the current state."""
        self._begin(latest_only=True, channel=self._shared)
        followers = _Followers.of(self._conn.hub, self._prefix, self.path)
        self._followers = followers
        followers.join(self)

    @property
    def services(self) -> Services:
        """The newest snapshot's services (empty before the first)."""
        return self._last if self._last is not None else MappingProxyType({})

    def _snapshot(self, update: PrefixUpdate, error: EtcdError | None = None) -> ServiceSnapshot:
        age = update.age
        path = self.path.decode("utf-8", "replace")
        return ServiceSnapshot(self.services, update.revision, error, update.stale, age, path)

    def _on_change(self, update: PrefixUpdate) -> None:
        """This tracker's own handling of ``update`` (the first state, or a tracker not
        in step with the others of its path); see :meth:`_Followers.on_update`."""
        if not self._running:
            return
        if update.error is not None:
            self._troubled, self._stale = True, update.stale
            self._emit(self._snapshot(update, update.error))
            return
        services = _apply(len(self._prefix), self._last, update)
        if services is not None:
            self._last = MappingProxyType(services)
        elif not self._troubled and update.stale == self._stale:
            return  # no name or value changed, e.g. a re-put of the same value
        self._troubled = False  # a snapshot without error tells the problem is over
        self._stale = update.stale
        self._emit(self._snapshot(update))

    def _first_state(self, update: PrefixUpdate) -> None:
        """The first state of a tracker joining trackers that already follow the path:
        their services when it is the state they hold (shared, not decoded again)."""
        followers = self._followers
        shared = followers.services if followers is not None else None
        same = followers is not None and followers.revision == update.revision
        if shared is not None and same and update.error is None:
            self._last, self._stale = shared, update.stale
            if self._running:
                self._emit(self._snapshot(update))
            return
        self._on_change(update)
        if shared is not None and self._last == shared:
            self._last = shared  # the same services: in step with the others from now on

    def _release(self) -> None:
        followers, self._followers = self._followers, None
        if followers is not None:
            followers.leave(self)


class _Followers:
    """The trackers of one prefix on one hub: one listener of the shared watch for all
    of them; the services are decoded once per change and every tracker in step (whose
    services are the ones this holds) is handed the same snapshot object."""

    __slots__ = (
        "cut",
        "hub",
        "members",
        "path",
        "prefix",
        "revision",
        "services",
        "subscribed",
        "subscribing",
    )

    @classmethod
    def of(cls, hub: WatchHub, prefix: bytes, path: bytes) -> _Followers:
        """The followers of ``prefix`` on ``hub`` (made if none)."""
        key = ("trackers", prefix)
        followers: _Followers | None = hub.shared.get(key)
        if followers is None:
            followers = hub.shared[key] = cls(hub, prefix, path)
        return followers

    def __init__(self, hub: WatchHub, prefix: bytes, path: bytes) -> None:
        self.hub = hub
        self.prefix = prefix
        self.path = path.decode("utf-8", "replace")
        self.cut = len(prefix)
        # dicts (insertion-ordered, O(1) removal) used as sets
        self.members: dict[ServiceTracker, None] = {}
        self.services: Services | None = None  # as of ``revision``, shared by the members
        self.revision = -1
        self.subscribed = False  # its listener is (or is being) on the shared watch
        self.subscribing = False  # a subscribe is waiting for the shared copy

    def join(self, tracker: ServiceTracker) -> None:
        """Add ``tracker``; its first snapshot reflects this connector's writes so far.
        A tracker stopped meanwhile (its stop left before it joined) is not kept."""
        if not self.subscribed:
            self.members[tracker] = None
            self._subscribe(tracker)
        else:
            # the first state of its own (which waits until the shared copy reflects
            # this connector's writes), then the changes shared with the others
            self.hub.subscribe(self.prefix, tracker._first_state, read_your_writes=True)
            try:
                self.members[tracker] = None
                self._follow_again(tracker)  # if every other tracker left meanwhile
            finally:
                self.hub.unsubscribe(self.prefix, tracker._first_state)
        if not tracker._running:
            self.leave(tracker)

    def _follow_again(self, tracker: ServiceTracker) -> None:
        if not self.subscribed:
            self._subscribe(tracker)

    def _subscribe(self, tracker: ServiceTracker) -> None:
        self.subscribed = self.subscribing = True
        if self.hub.shared.get(("trackers", self.prefix)) is not self:
            self.hub.shared[("trackers", self.prefix)] = self  # left, then joined again
        try:
            self.hub.subscribe(self.prefix, self.on_update, read_your_writes=True)
        except BaseException:
            self.subscribed = False
            self.members.pop(tracker, None)
            raise
        finally:
            self.subscribing = False
        if not self.members:  # every member left while it waited
            self._unsubscribe()

    def leave(self, tracker: ServiceTracker) -> None:
        """Remove ``tracker``; the last one leaving leaves the shared watch (or, while
        its subscribe waits, leaves that to it)."""
        self.members.pop(tracker, None)
        if not self.members and self.subscribed and not self.subscribing:
            self._unsubscribe()

    def _unsubscribe(self) -> None:
        self.subscribed = False
        self.services, self.revision = None, -1
        if self.hub.shared.get(("trackers", self.prefix)) is self:
            del self.hub.shared[("trackers", self.prefix)]
        self.hub.unsubscribe(self.prefix, self.on_update)

    def on_update(self, update: PrefixUpdate) -> None:
        """Hand ``update`` to every member: one decode, one snapshot object."""
        if update.error is not None:
            for tracker in list(self.members):
                tracker._on_change(update)
            return
        before = self.services
        changed = _apply(self.cut, before, update)
        now = MappingProxyType(changed) if changed is not None else before
        assert now is not None  # the first update is always decoded
        self.services, self.revision = now, update.revision
        stale = update.stale
        snapshot = ServiceSnapshot(now, update.revision, None, stale, update.age, self.path)
        batches: dict[int, tuple[Channel[Any], list[ServiceTracker]]] = {}
        for tracker in list(self.members):
            if not tracker._running:
                continue
            if tracker._last is not before:  # not in step (it joined on its own state)
                tracker._on_change(update)
                if tracker._last == now:
                    tracker._last = now  # the same services: in step from now on
                continue
            if changed is None and not tracker._troubled and stale == tracker._stale:
                continue  # no name or value changed, e.g. a re-put of the same value
            tracker._last, tracker._troubled, tracker._stale = now, False, stale
            channel = tracker._channel
            if tracker._shared is None or channel is None:  # a channel of its own
                if channel is not None:
                    channel.put(snapshot, source=tracker)
                continue
            batch = batches.get(id(channel))
            if batch is None:
                batch = batches[id(channel)] = (channel, [])
            batch[1].append(tracker)
        for channel, trackers in batches.values():  # one wake-up per shared channel
            channel.put_many(snapshot, trackers)


def _apply(cut: int, last: Services | None, update: PrefixUpdate) -> dict[str, str] | None:
    """The services after ``update`` (keys cut to names at ``cut``), or None when they
    did not change. Watch events are applied to a copy of ``last`` (the whole state is
    decoded only on a resync), so a change costs a copy, not a decode of every
    instance."""
    if last is None or update.resynced:
        fresh = {k[cut:].decode("utf-8", "replace"): kv.value_str for k, kv in update.state.items()}
        return None if fresh == last else fresh
    changes: dict[str, Any] = {
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
