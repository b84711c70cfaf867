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
channel and nothing else. Made with ``channel=`` (``conn.service_tracker(path,
channel=shared)``, with ``shared = Channel(latest_per_source=True)``), trackers put
their snapshots into one channel that keeps the newest snapshot of each tracker
(``snapshot.path`` says whose): one greenlet reads them all, instead of one greenlet
woken up per tracker, and a slow reader still reads only the newest snapshot of each.
The trackers of a path put theirs there as one group entry (the same cost for 1 or
1,000 trackers); a tracker that joined on a state of its own is in that group once its
state is the others' (until then it puts its own, so a slow reader may read one
snapshot more of it, never an older one after a newer). A stopped tracker's snapshot
still pending in a shared channel is dropped when its path's next snapshot comes.
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

    __slots__ = (
        "_followers",
        "_last",
        "_prefix",
        "_shared",
        "_stale",
        "_steady",
        "_troubled",
        "path",
    )
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
        # its own state (while not steady): the newest snapshot's services, whether it
        # reports an error and whether it says the services are stale
        self._last: Services | None = None
        self._troubled = False
        self._stale = False
        #: in step with the other trackers of its path: its state is theirs, kept once
        #: by :class:`_Followers` (the three fields above are then unused)
        self._steady = False
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
        followers = self._followers
        last = followers.services if self._steady and followers is not None else self._last
        return last if last is not None else _NO_SERVICES

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


_NO_SERVICES: Services = MappingProxyType({})


class _Followers:
    """The trackers of one prefix on one hub: one listener of the shared watch for all
    of them. The services are decoded once per change; the members in step with each
    other (*steady*: most of them, most of the time) share one state, kept here, and
    are handed one snapshot object per change, put into each shared channel in one
    batch (one wake-up of its reader); no work per tracker beyond the channel's. A
    member whose state differs (it joined on a state of its own) handles the changes
    on its own until its state is the others' again."""

    __slots__ = (
        "alone",
        "apart",
        "cut",
        "hub",
        "members",
        "path",
        "prefix",
        "revision",
        "services",
        "sharing",
        "stale",
        "subscribed",
        "subscribing",
        "troubled",
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
        self.apart: dict[ServiceTracker, None] = {}  # members with a state of their own
        # the steady members: by shared channel, and those with a channel of their own
        self.sharing: dict[Channel[Any], dict[ServiceTracker, None]] = {}
        self.alone: dict[ServiceTracker, Channel[Any]] = {}
        # the steady members' state: their services as of ``revision``, whether the
        # newest snapshot they were sent reports an error, whether it says stale
        self.services: Services | None = None
        self.revision = -1
        self.troubled = False
        self.stale = False
        self.subscribed = False  # its listener is (or is being) on the shared watch
        self.subscribing = False  # a subscribe is waiting for the shared copy

    def join(self, tracker: ServiceTracker) -> None:
        """Add ``tracker``; its first snapshot reflects this connector's writes so far.
        A tracker stopped meanwhile (its stop left before it joined) is not kept."""
        if not self.subscribed:
            self._admit(tracker)  # steady: nothing was handed to it or the others yet
            self._subscribe(tracker)
        else:
            # the first state of its own (which waits until the shared copy reflects
            # this connector's writes), then the changes shared with the others
            self.hub.subscribe(self.prefix, tracker._first_state, read_your_writes=True)
            try:
                self._admit(tracker)
                self._follow_again(tracker)  # if every other tracker left meanwhile
            finally:
                self.hub.unsubscribe(self.prefix, tracker._first_state)
        if not tracker._running:
            self.leave(tracker)

    def _admit(self, tracker: ServiceTracker) -> None:
        """Make ``tracker`` a member: steady when its state is the others'."""
        self.members[tracker] = None
        self.apart[tracker] = None
        self._settle(tracker)

    def _settle(self, tracker: ServiceTracker) -> None:
        """Make the apart member ``tracker`` steady if its state is the others' now."""
        if (
            tracker._last == self.services
            and tracker._troubled == self.troubled
            and tracker._stale == self.stale
        ):
            del self.apart[tracker]
            tracker._steady, tracker._last = True, None
            channel = tracker._channel
            assert channel is not None  # started: its channel was made (or given)
            if tracker._owns_channel:
                self.alone[tracker] = channel
            else:
                self.sharing.setdefault(channel, {})[tracker] = None
                channel.regroup(tracker, self)  # its snapshot pending: now the group's

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
            self.leave(tracker)
            raise
        finally:
            self.subscribing = False
        if not self.members:  # every member left while it waited
            self._unsubscribe()

    def leave(self, tracker: ServiceTracker) -> None:
        """Remove ``tracker`` (it keeps the state it had); the last one leaving leaves
        the shared watch (or, while its subscribe waits, leaves that to it)."""
        self.members.pop(tracker, None)
        if tracker._steady:
            tracker._steady = False
            tracker._last, tracker._troubled = self.services, self.troubled
            tracker._stale = self.stale
            channel = tracker._channel
            if self.alone.pop(tracker, None) is None and channel is not None:
                group = self.sharing.get(channel)
                if group is not None:
                    group.pop(tracker, None)
                    if not group:
                        del self.sharing[channel]
        else:
            self.apart.pop(tracker, None)
        if not self.members and self.subscribed and not self.subscribing:
            self._unsubscribe()

    def _unsubscribe(self) -> None:
        self.subscribed = False
        self.services, self.revision = None, -1
        self.troubled = self.stale = False
        if self.hub.shared.get(("trackers", self.prefix)) is self:
            del self.hub.shared[("trackers", self.prefix)]
        self.hub.unsubscribe(self.prefix, self.on_update)

    def on_update(self, update: PrefixUpdate) -> None:
        """Hand ``update`` to every member: one decode, one snapshot object for the
        steady ones."""
        stale = update.stale
        if update.error is not None:
            self.troubled, self.stale = True, stale
            services = self.services if self.services is not None else _NO_SERVICES
            error = update.error
            self._deliver(
                ServiceSnapshot(services, update.revision, error, stale, update.age, self.path)
            )
        else:
            before = self.services
            changed = _apply(self.cut, before, update)
            now = MappingProxyType(changed) if changed is not None else before
            assert now is not None  # the first update is always decoded
            self.services, self.revision = now, update.revision
            # unchanged (e.g. a re-put of the same value): nothing to tell, unless the
            # newest snapshot reported an error or said otherwise about staleness
            if changed is not None or self.troubled or stale != self.stale:
                self.troubled, self.stale = False, stale
                self._deliver(
                    ServiceSnapshot(now, update.revision, None, stale, update.age, self.path)
                )
        if self.apart:  # not in step: each on its own, then in step again if it can be
            for tracker in list(self.apart):
                if tracker in self.apart:
                    tracker._on_change(update)
                    if update.error is None and tracker._last == self.services:
                        tracker._last = self.services  # the same services: shared
                    self._settle(tracker)

    def _deliver(self, snapshot: ServiceSnapshot) -> None:
        """Hand ``snapshot`` to every steady member: one group entry per shared channel
        (whatever the number of trackers), and the readers of their own channels woken
        a few dozen per loop callback."""
        for channel, trackers in self.sharing.items():
            channel.put_group(snapshot, self, trackers)
        if self.alone:
            Channel.put_each(snapshot, self.alone)


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
