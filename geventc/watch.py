"""Shared prefix watches: one HTTP watch stream per prefix per connector.

A :class:`PrefixWatch` keeps a local copy of every key under a prefix: it reads the
prefix, then watches from the read's revision + 1 (no gap, no duplicate). Listeners get
a :class:`PrefixUpdate` for each change, in revision order. After a disconnect it
resumes from the last revision it applied; when that history was compacted it re-reads
the prefix and hands listeners the difference as synthetic events (``resynced=True``),
so their copy is exact again. Problems are reported to listeners (``error``) while it
keeps trying; an unexpected exception restarts it from a fresh read. :class:`WatchHub`
shares one PrefixWatch between all listeners of a prefix.

Freshness: the watch knows when its copy was last confirmed current (its stream was
(re)established, delivered a message, or its member answered a liveness probe). When
that is longer ago than the liveness bound (``Liveness.stale_after``, 5 s by default),
or its stream failed on every member, it hands listeners an update with
``stale=True`` and the copy's ``age``; once current again, one with ``stale=False``.

Read-your-writes: a listener that joins after this client's own writes (their highest
revision is ``written_revision``) is handed its first state only once the shared copy
reflects them (a linearizable read tells what that state is).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import gevent
from gevent.event import Event as Signal
from gevent.pool import Group

from .errors import ClientClosed, Compacted, EtcdError
from .liveness import Liveness
from .retry import Backoff
from .watchstream import WatchStream
from .wire import Event, EventType, KeyValue, RangeResult

log = logging.getLogger("geventc")


class PrefixSource(Protocol):
    """What a PrefixWatch needs: a range read and a watch (Client or Connector)."""

    @property
    def written_revision(self) -> int:
        """The highest revision the source's own writes produced."""
        ...

    def get_prefix(self, prefix: bytes) -> RangeResult: ...

    def watch(
        self,
        key: bytes,
        *,
        prefix: bool = ...,
        start_revision: int | None = ...,
        prev_kv: bool = ...,
    ) -> WatchStream: ...


@dataclass(frozen=True, slots=True)
class PrefixUpdate:
    """A change under a watched prefix: the events, the state after them, its revision.

    ``resynced`` marks the first state and every re-read after compaction; ``error``
    reports a problem while the watch keeps retrying (events and state are then empty
    and unchanged); ``stale`` says the state could not be confirmed current for
    longer than the liveness bound, ``age`` how many seconds ago it last was (an
    update without events is sent whenever ``stale`` changes)."""

    events: tuple[Event, ...]
    state: Mapping[bytes, KeyValue]
    revision: int
    resynced: bool = False
    error: EtcdError | None = None
    stale: bool = False
    age: float = 0.0


Listener = Callable[[PrefixUpdate], None]


class PrefixWatch:
    """One watch greenlet and stream for a prefix, with the prefix's current keys."""

    def __init__(
        self,
        source: PrefixSource,
        prefix: bytes,
        group: Group,
        liveness: Liveness | None = None,
    ) -> None:
        self.prefix = prefix
        self.revision = 0
        self.synced = False
        #: True while the copy could not be confirmed current within the bound
        self.stale = False
        self._failing = False
        self._confirmed_at = time.monotonic()
        self._liveness = liveness
        self._moved = Signal()  # set (and replaced) whenever the copy changes
        self._confirming = False  # a greenlet checks that the copy is current again
        self._group = group
        self._source = source
        self._state: dict[bytes, KeyValue] = {}
        # listener -> times added; a dict so that removing one of 10,000 is O(1)
        self._listeners: dict[Listener, int] = {}
        # per key: a tuple (small; replaced on change) as thousands of keys may listen
        self._by_key: dict[bytes, tuple[Listener, ...]] = {}
        self._count = 0  # listeners of both kinds (kept, not summed: O(1) per removal)
        self._stream: WatchStream | None = None
        self._view: PrefixUpdate | None = None
        self._closed = False  # once closed, no listener is called again
        self._greenlet = group.spawn(self._run)
        if liveness is not None:
            liveness.follow(self)

    def __repr__(self) -> str:
        return f"PrefixWatch({self.prefix!r}, revision={self.revision}, keys={len(self._state)})"

    @property
    def state(self) -> Mapping[bytes, KeyValue]:
        """A read-only view of the keys under the prefix now."""
        return MappingProxyType(self._state)

    @property
    def listeners(self) -> int:
        """How many listeners share this watch."""
        return self._count

    @property
    def age(self) -> float:
        """Seconds since the copy was last confirmed current."""
        return max(0.0, time.monotonic() - self._last_confirmed())

    def add(
        self,
        listener: Listener,
        key: bytes | None = None,
        *,
        fresh_after: int = 0,
        timeout: float = 5.0,
    ) -> None:
        """Add a listener of the whole prefix, or (with ``key``) of one key's events
        only; once synced it is handed the current state at once. With
        ``fresh_after`` (a revision of the caller's own writes) that first state
        reflects every change up to it: the call waits (at most ``timeout``) until the
        shared copy has caught up with a linearizable read of the prefix."""
        if fresh_after and self.revision < fresh_after:
            self._catch_up(fresh_after, timeout)
        if key is None:
            self._listeners[listener] = self._listeners.get(listener, 0) + 1
        else:
            self._by_key[key] = (*self._by_key.get(key, ()), listener)
        self._count += 1
        if self.synced:
            self._call(listener, self._current_view())

    def _current_view(self) -> PrefixUpdate:
        """The state now as a resync update; one object per revision, so listeners
        added at the same revision can share what they derive from it."""
        view = self._view
        if view is None or view.revision != self.revision or view.stale != self.stale:
            view = self._view = PrefixUpdate(
                (), self.state, self.revision, resynced=True, stale=self.stale
            )
        return view

    def remove(self, listener: Listener, key: bytes | None = None) -> None:
        """Remove a listener."""
        if key is None:
            count = self._listeners.pop(listener, 0)
            if count > 1:
                self._listeners[listener] = count - 1
            self._count -= count > 0
            return
        listeners = list(self._by_key.get(key, ()))
        if listener in listeners:
            listeners.remove(listener)
            self._count -= 1
        if listeners:
            self._by_key[key] = tuple(listeners)
        else:
            self._by_key.pop(key, None)

    def _catch_up(self, fresh_after: int, timeout: float) -> None:
        """Wait until the copy reflects a linearizable read made now (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while not self.synced:  # its first read may have been sent before the write
            if self._failing or not self._moved.wait(max(0.0, deadline - time.monotonic())):
                return  # failing: the listener is told of it, and of the state once read
        if self.revision >= fresh_after:
            return
        if not self._reflects(self._source.get_prefix(self.prefix), deadline):
            log.info("watch on %r did not catch up in %.1fs", self.prefix, timeout)

    def _reflects(self, read: RangeResult, deadline: float) -> bool:
        """Wait (until ``deadline``) for the copy to reflect ``read``, a linearizable
        read of the prefix; True once it does."""
        target = {kv.key: kv.mod_revision for kv in read.kvs}
        while self.revision < read.header.revision:
            if {k: kv.mod_revision for k, kv in self._state.items()} == target:
                # whatever the stream still holds up to the read nets out to no change
                self.revision = read.header.revision
                return True
            if not self._moved.wait(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def _current_again(self) -> None:
        """The stream is back: say "current" only once the copy has caught up with a
        read made now (the events missed meanwhile arrive after the watch is re-made),
        in a greenlet of its own, as the watch's greenlet delivers those events."""
        if self.stale and not self._confirming:
            self._confirming = True
            self._group.spawn(self._confirm_current)

    def _confirm_current(self) -> None:
        try:
            sent = time.monotonic()
            read = self._source.get_prefix(self.prefix)
            if read.header.revision < self.revision:
                return  # a member behind what was delivered: not current (check again)
            timeout = self._liveness.stale_after if self._liveness is not None else 5.0
            if self._reflects(read, sent + timeout) and self.stale:
                self._confirmed_at = max(self._confirmed_at, sent)
                self._set_stale(False, self.age)
        except EtcdError as exc:
            log.info("watch on %r: could not confirm it is current (%s)", self.prefix, exc)
        finally:
            self._confirming = False

    def check_freshness(self, now: float) -> None:
        """Tell listeners when the copy goes stale (not confirmed for longer than the
        liveness bound) or is current again (liveness calls this every second)."""
        if self._liveness is None or not self.synced:
            return
        age = max(0.0, now - self._last_confirmed())
        connected = self._stream is not None and bool(self._stream.endpoint)
        if not self.stale and age > self._liveness.stale_after:
            self._set_stale(True, age)
        elif self.stale and connected:
            self._current_again()

    def _last_confirmed(self) -> float:
        if self._stream is not None:
            self._confirmed_at = max(self._confirmed_at, self._stream.confirmed_at)
        return self._confirmed_at

    def _set_stale(self, stale: bool, age: float) -> None:
        if stale == self.stale:
            return
        self.stale = stale
        if stale:
            log.warning(
                "watch on %r is stale: not confirmed current for %.1fs (revision %d)",
                self.prefix,
                age,
                self.revision,
            )
        else:
            log.info("watch on %r is current again (revision %d)", self.prefix, self.revision)
        self._publish(PrefixUpdate((), self.state, self.revision, stale=stale, age=age))

    def close(self, *, block: bool = True) -> None:
        """Stop the greenlet and the stream (``block``: wait, at most a second, until
        the greenlet has ended); no listener is called after this."""
        self._closed = True
        if self._liveness is not None:
            self._liveness.unfollow(self)
        # the greenlet first: a stream cancelled under it would end its loop's turn and
        # open another stream before the kill arrived
        self._greenlet.kill(block=block, timeout=1.0)
        if self._stream is not None:
            self._stream.cancel()

    # --- the watching greenlet ---------------------------------------------------------

    def _run(self) -> None:
        backoff = Backoff(first=0.05)
        need_read = True
        while not self._closed:  # closed: its kill may not have arrived yet
            try:
                if need_read:
                    self._resync()
                    need_read = False
                self._follow()
                backoff.reset()
            except Compacted as exc:
                log.info("watch on %r compacted (%s); re-reading the prefix", self.prefix, exc)
                need_read = True
            except EtcdError as exc:
                log.warning("watch on %r failed (%s); retrying", self.prefix, exc)
                self._trouble(exc)
                gevent.sleep(backoff.next())
            except Exception as exc:  # a bug must not end a watch its listeners rely on
                log.exception("watch on %r crashed; restarting it from a fresh read", self.prefix)
                self._trouble(EtcdError(f"the watch of {self.prefix!r} crashed: {exc!r}"))
                need_read = True
                gevent.sleep(backoff.next())
            finally:
                if self._stream is not None:
                    self._stream.cancel()
                    self._stream = None

    def _trouble(self, error: EtcdError) -> None:
        """Tell listeners of ``error``; the copy cannot be current until it is over."""
        self._failing = True
        self._set_stale(True, self.age)  # also before the first state: never current yet
        self._publish(  # after: the newest snapshot a listener keeps carries the error
            PrefixUpdate((), self.state, self.revision, error=error, stale=True, age=self.age)
        )
        self._changed()

    def _resync(self) -> None:
        sent = time.monotonic()
        result = self._source.get_prefix(self.prefix)
        if result.header.revision < self.revision:
            # a member whose data is behind what was already delivered (etcd lost or
            # replaced it): never go back; stay stale and read again later
            raise EtcdError(
                f"the re-read of {self.prefix!r} is at revision {result.header.revision}, "
                f"behind the {self.revision} already delivered; keeping the newer state"
            )
        self._confirmed_at = max(self._confirmed_at, sent)
        fresh = {kv.key: kv for kv in result.kvs}
        events = [
            Event(EventType.DELETE, KeyValue(key=k, mod_revision=result.header.revision), old)
            for k, old in self._state.items()
            if k not in fresh
        ]
        events += [
            Event(EventType.PUT, kv, self._state.get(k))
            for k, kv in fresh.items()
            if self._state.get(k) != kv
        ]
        self._state = fresh
        self.revision = result.header.revision
        self.synced = True
        self._failing = False
        self._publish(self._update(tuple(events), resynced=True))
        self._changed()

    def _follow(self) -> None:
        if self._closed:
            return
        # without prev_kv: the copy has each key's previous value (see _apply)
        self._stream = self._source.watch(
            self.prefix, prefix=True, start_revision=self.revision + 1
        )
        if self._failing:  # tell listeners the problem they were told of is over
            self._failing = False
            self._publish(self._update(()))
        self._current_again()
        for response in self._stream:
            events = response.events
            if events and events[0].kv.mod_revision <= self.revision:
                # already in the copy: a catch-up read found it equal to a newer state
                # (``_reflects``); handed out now they would be labelled that revision
                events = tuple(e for e in events if e.kv.mod_revision > self.revision)
            events = self._apply(events) if events else ()
            self.revision = max(self.revision, self._stream.start_revision - 1)
            self._current_again()
            if events:
                self._publish(self._update(events))
            self._changed()

    def _apply(self, events: tuple[Event, ...]) -> tuple[Event, ...]:
        """Apply ``events`` to the copy; the events, each with its key's value before it
        as ``prev_kv``. That is taken from the copy, which is exactly the prefix's state
        at the revision before (no gap, no duplicate), so etcd need not send it: half
        the bytes of each event to transfer and decode."""
        state = self._state
        applied = []
        for event in events:
            kv = event.kv
            before = state.get(kv.key)
            if event.type is EventType.DELETE:
                state.pop(kv.key, None)
            else:
                state[kv.key] = kv
            if before is not None and event.prev_kv is None:
                event = Event(event.type, kv, before)
            applied.append(event)
        return tuple(applied)

    def _update(self, events: tuple[Event, ...], *, resynced: bool = False) -> PrefixUpdate:
        """An update of the copy now, saying whether it is stale (every update does, so
        a listener never takes news for "current again")."""
        stale = self.stale
        return PrefixUpdate(
            events, self.state, self.revision, resynced, stale=stale, age=self.age if stale else 0.0
        )

    def _changed(self) -> None:
        """Wake the callers waiting for the copy to catch up."""
        moved, self._moved = self._moved, Signal()
        moved.set()

    def _publish(self, update: PrefixUpdate) -> None:
        if self._closed:
            return
        for listener in list(self._listeners):
            self._call(listener, update)
        if not self._by_key:
            return
        if update.resynced or update.error or not update.events:  # every key listener re-checks
            by_key: dict[bytes, list[Event]] = {}
            for event in update.events:
                by_key.setdefault(event.kv.key, []).append(event)
            # one update object per key with events of its own, one for all the others
            bare = dataclasses.replace(update, events=()) if update.events else update
            for key, listeners in list(self._by_key.items()):
                mine = by_key.get(key)
                view = bare if mine is None else dataclasses.replace(update, events=tuple(mine))
                for listener in listeners:
                    self._call(listener, view)
            return
        if len(update.events) == 1:
            of_key = self._by_key.get(update.events[0].kv.key)
            for listener in of_key or ():
                self._call(listener, update)
            return
        # a response of many revisions (a resumed watch catching up): each key's
        # listeners get that key's events together, with the state after all of them
        mine_of: dict[bytes, list[Event]] = {}
        for event in update.events:
            if event.kv.key in self._by_key:
                mine_of.setdefault(event.kv.key, []).append(event)
        for key, mine in mine_of.items():
            view = dataclasses.replace(update, events=tuple(mine))
            for listener in self._by_key.get(key, ()):
                self._call(listener, view)

    @staticmethod
    def _call(listener: Listener, update: PrefixUpdate) -> None:
        try:
            listener(update)
        except Exception:  # one listener's bug must not starve the others
            log.exception("prefix watch listener %r failed", listener)


class WatchHub:
    """Shares one :class:`PrefixWatch` between every listener of a prefix."""

    def __init__(
        self, source: PrefixSource, group: Group, liveness: Liveness | None = None
    ) -> None:
        self._source = source
        self._group = group
        self._liveness = liveness
        self._watches: dict[bytes, PrefixWatch] = {}
        #: what the subscribers of one prefix share beyond the watch (the trackers of a
        #: prefix are one listener: see ``recipes/tracker.py``), by a key of their own
        self.shared: dict[object, Any] = {}
        self._closed = False

    @property
    def streams(self) -> int:
        """How many prefix watches (HTTP watch streams) are open."""
        return len(self._watches)

    @property
    def stale(self) -> int:
        """How many prefix watches have a copy not confirmed current now (see
        :mod:`geventc.staleness`)."""
        return sum(1 for watch in self._watches.values() if watch.stale)

    def subscribe(
        self,
        prefix: bytes,
        listener: Listener,
        key: bytes | None = None,
        *,
        read_your_writes: bool = False,
        timeout: float = 5.0,
    ) -> PrefixWatch:
        """Start (or join) the watch of ``prefix`` with ``listener`` (of one ``key``'s
        events only, if given). With ``read_your_writes`` the listener's first state
        reflects every write the source made before this call (waiting at most
        ``timeout`` for a shared watch to catch up). Raises :class:`ClientClosed` once
        the hub was closed (its connector closes)."""
        if self._closed:
            raise ClientClosed("the connector is closed: its watches are stopped")
        watch = self._watches.get(prefix)
        if watch is None:
            watch = PrefixWatch(self._source, prefix, self._group, self._liveness)
            self._watches[prefix] = watch
        fresh_after = self._source.written_revision if read_your_writes else 0
        watch.add(listener, key, fresh_after=fresh_after, timeout=timeout)
        return watch

    def unsubscribe(self, prefix: bytes, listener: Listener, key: bytes | None = None) -> None:
        """Leave the watch of ``prefix``; the last listener's leaving stops it."""
        watch = self._watches.get(prefix)
        if watch is None:
            return
        watch.remove(listener, key)
        if not watch.listeners:
            del self._watches[prefix]
            watch.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Stop every watch (their greenlets end as soon as they are scheduled); no
        listener is called after this, and a later :meth:`subscribe` raises."""
        self._closed = True
        watches = list(self._watches.values())
        self._watches.clear()
        self.shared.clear()
        for watch in watches:
            watch.close(block=False)
