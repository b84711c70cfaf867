"""``Channel``: how recipes hand events to the caller.

A channel is a gevent queue with ``close()``: ``for event in channel`` yields every
event put before the close and then ends. Putting never blocks the recipe's greenlet:

- an *event* channel is unbounded by default; with ``maxsize`` it drops its oldest
  event when full, counts it in ``dropped`` and logs a warning;
- a *snapshot* channel (``latest_only=True``) keeps only the newest item, so a slow
  consumer always reads the current state and never a backlog;
- a *shared snapshot* channel (``latest_per_source=True``) is one channel for many
  recipes (say, 10,000 service trackers read by one greenlet): it keeps the newest item
  of each source (``put(item, source=...)``; a recipe puts with itself as the source),
  in the order the sources first had something pending. A slow consumer reads each
  source's current state once, never a backlog, and one greenlet wakes up for all of
  them instead of one per recipe. Recipes that always hand out the same item together
  (the trackers of one path) put it as a *group* (:meth:`Channel.put_group`): one entry
  for all of them, so a change costs the channel the same whether 1 or 1,000 recipes
  share it.

``get(timeout=...)`` raises :class:`~geventc.errors.ChannelTimeout` (a
:class:`~geventc.errors.Timeout`, so an ``Exception``) when nothing came in time, and
:class:`~geventc.errors.ChannelClosed` once the channel is closed and drained.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from gevent import Timeout
from gevent.hub import Waiter, get_hub

from .errors import ChannelClosed, ChannelTimeout, InvalidArgument

T = TypeVar("T")
log = logging.getLogger("geventc")

#: readers woken by one loop callback in :meth:`Channel.put_each`: few enough that the
#: loop still polls its sockets and timers every few dozen readers' turns
_WAKE_BATCH = 32


_TAKEN_OVER = object()  # see Channel.regroup


class _Group:
    """The item pending for the members of one group, and for how many of them."""

    __slots__ = ("count", "item")

    def __init__(self, item: Any, count: int) -> None:
        self.item = item
        self.count = count


def _switch_each(waiters: list[Waiter[Any]]) -> None:
    """Wake ``waiters`` one after the other (a loop callback: each runs until it waits
    again, then the next)."""
    for waiter in waiters:
        waiter.switch(None)


class Channel(Generic[T]):
    """A closable, never-blocking queue of recipe events; iterate it to consume."""

    __slots__ = (
        "_closed",
        "_grouped",
        "_items",
        "_latest",
        "_latest_only",
        "_maxsize",
        "_waiters",
        "dropped",
    )

    def __init__(
        self,
        maxsize: int | None = None,
        *,
        latest_only: bool = False,
        latest_per_source: bool = False,
    ) -> None:
        if maxsize is not None and (
            isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1
        ):
            raise InvalidArgument("maxsize must be a positive int or None (unbounded)")
        if latest_per_source and (latest_only or maxsize is not None):
            raise InvalidArgument(
                "latest_per_source keeps the newest item of each source: "
                "it takes neither latest_only nor maxsize"
            )
        # both made on first use: thousands of recipes keep idle channels cheaply
        self._items: deque[Any] | None = None  # items, or sources in per-source mode
        #: the readers waiting for an item; a put wakes the first (a greenlet switch,
        #: no Event: 10,000 channels wake their readers twice as fast)
        self._waiters: deque[Waiter[Any]] | None = None
        #: per-source mode: source -> its newest pending item, or group key -> its
        #: :class:`_Group` (None: not that mode)
        self._latest: dict[object, Any] | None = {} if latest_per_source else None
        #: per-source mode: the pending items minus the places in ``_items`` (a group
        #: holds one place for all its items; a place whose item a group took over,
        #: see :meth:`regroup`, holds none until the reader passes it)
        self._grouped = 0
        self._maxsize = 1 if latest_only else maxsize
        self._latest_only = latest_only
        self._closed = False
        self.dropped = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Channel({state}, pending={len(self)}, dropped={self.dropped})"

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (pending events can still be read)."""
        return self._closed

    def __len__(self) -> int:
        return len(self._items) + self._grouped if self._items else 0

    def put(self, item: T, *, source: object = None) -> None:
        """Add an event; never blocks. Ignored once the channel is closed. On a
        ``latest_per_source`` channel it replaces what ``source`` still had pending (an
        item without a source is kept on its own)."""
        if self._add(item, source) and self._waiters:
            self._wake_one()

    @staticmethod
    def put_each(item: T, channels: Mapping[Any, Channel[T]]) -> None:
        """:meth:`put` of ``item`` into each of ``channels`` (source -> its channel):
        many recipes with a channel each handing out the same snapshot. Their waiting
        readers are woken in the same order as by one put each, but a few dozen by one
        loop callback instead of a callback each."""
        if not isinstance(channels, Mapping):
            raise InvalidArgument(
                f"channels must map sources to channels, not {type(channels).__name__}"
            )
        woken: list[Waiter[Any]] = []
        for source, channel in channels.items():
            if channel._add(item, source) and channel._waiters:
                woken.append(channel._waiters.popleft())
                if len(woken) >= _WAKE_BATCH:
                    get_hub().loop.run_callback(_switch_each, woken)
                    woken = []
        if woken:
            get_hub().loop.run_callback(_switch_each, woken)

    def _add(self, item: T, source: object) -> bool:
        """Add ``item`` (see :meth:`put`) without waking a reader; False when closed."""
        if self._closed:
            return False
        items = self._items
        if items is None:
            items = self._items = deque()
        latest = self._latest
        if latest is not None:
            if source is None:
                source = object()
            if source not in latest:
                items.append(source)
            latest[source] = item
        else:
            if self._maxsize is not None and len(items) >= self._maxsize:
                items.popleft()
                if not self._latest_only:
                    self.dropped += 1
                    log.warning("channel full: dropped its oldest event (%d so far)", self.dropped)
            items.append(item)
        return True

    def put_many(self, item: T, sources: Iterable[object]) -> None:
        """:meth:`put` of ``item`` once for each of ``sources``, with one wake-up of the
        reader (many recipes handing the same snapshot to one shared channel)."""
        latest = self._latest
        if latest is None:
            for source in sources:
                self.put(item, source=source)
            return
        if self._closed:
            return
        items = self._items
        if items is None:
            items = self._items = deque()
        fresh = dict.fromkeys(sources, item)  # in order, each source once
        if not latest or latest.keys().isdisjoint(fresh):
            # none of them pending (a reader keeping up): in bulk, no loop per source
            items.extend(fresh)
            latest.update(fresh)
        else:
            for source in fresh:
                if source not in latest:
                    items.append(source)
                latest[source] = item
        if self._waiters:
            self._wake_one()

    def put_group(self, item: T, group: object, members: Collection[object]) -> None:
        """:meth:`put` of ``item`` for each of ``members``, recipes that always hand out
        the same item together, known as ``group`` (a key of the caller's: the same
        object for the same recipes). On a ``latest_per_source`` channel it costs the
        same for any number of members: the group's pending items (one per member,
        all the same) are replaced, keeping the group's place, so each member's newest
        item is pending once. Members that changed since the group's last put: the
        count is that of ``members`` now. One wake-up of the reader. On another kind
        of channel it is one put for each member."""
        if not isinstance(members, Collection) or isinstance(members, str | bytes):
            raise InvalidArgument(
                f"members must be a collection of sources, not {type(members).__name__}"
            )
        latest = self._latest
        if latest is None:
            for member in members:
                self.put(item, source=member)
            return
        size = len(members)
        if self._closed or not size:
            return
        pending = latest.get(group)
        if pending is None:
            items = self._items
            if items is None:
                items = self._items = deque()
            items.append(group)
            latest[group] = _Group(item, size)
            self._grouped += size - 1
        elif type(pending) is _Group:
            self._grouped += size - pending.count
            pending.item, pending.count = item, size
        else:
            raise InvalidArgument("a group's key must not also be put as a source")
        if self._waiters:
            self._wake_one()

    def regroup(self, source: object, group: object) -> None:
        """``source`` now hands out its items with ``group`` (:meth:`put_group`), whose
        item is at least as new as its own (it joins once its state is the group's).
        If both have an item pending, the group's stands for the source's too: the
        source's newest item stays pending once, at the group's place, and no older
        item of it is read after a newer one."""
        latest = self._latest
        if latest is None:
            return
        entry = latest.get(group)
        if type(entry) is _Group and type(latest.get(source, entry)) is not _Group:
            del latest[source]  # its place in _items holds nothing now
            entry.count += 1

    def _wake_one(self) -> None:
        """Wake the first waiting reader (it runs once this greenlet yields)."""
        assert self._waiters
        waiter = self._waiters.popleft()
        get_hub().loop.run_callback(waiter.switch, None)

    def close(self) -> None:
        """End the channel: iteration stops once the pending events are read."""
        self._closed = True
        while self._waiters:
            self._wake_one()

    def get(self, timeout: float | None = None) -> T:
        """The next event; raises :class:`ChannelClosed` when closed and drained, or
        :class:`ChannelTimeout` (a geventc :class:`~geventc.errors.Timeout`) when no
        event came within ``timeout`` seconds (None: wait for ever)."""
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout != timeout
        ):
            raise InvalidArgument(f"timeout must be a number of seconds or None, not {timeout!r}")
        while not (self._items and self._front()):
            if self._closed:
                raise ChannelClosed("the channel is closed")
            self._wait(timeout)
        return self._pop()

    def _wait(self, timeout: float | None) -> None:
        """Wait until a put or close wakes this reader; :class:`ChannelTimeout` after
        ``timeout`` seconds."""
        if timeout is not None and timeout <= 0:
            raise ChannelTimeout(f"no event within {timeout}s")
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = deque()
        waiter: Waiter[Any] = Waiter()
        waiters.append(waiter)
        try:
            if timeout is None:
                waiter.get()
            else:
                with Timeout(timeout, ChannelTimeout(f"no event within {timeout}s")):
                    waiter.get()
        except BaseException:
            self._leave(waiter)
            raise

    def _leave(self, waiter: Waiter[Any]) -> None:
        """A reader leaves without having been woken (timed out or killed while it
        waited): forget its ``waiter``, or, if its wake-up was already on its way, hand
        that on to the next reader."""
        waiters = self._waiters
        assert waiters is not None
        if waiter in waiters:
            waiters.remove(waiter)
        elif waiters and (self._items or self._closed):
            self._wake_one()

    def _front(self) -> bool:
        """Pass the places at the front whose item a group took over; True when an
        item is pending (``_items`` is not empty)."""
        items = self._items
        latest = self._latest
        assert items is not None
        while latest is not None and items and items[0] not in latest:
            items.popleft()
            self._grouped += 1
        return bool(items)

    def _pop(self) -> T:
        """The oldest pending event (there is one, at the front: see :meth:`_front`)."""
        items = self._items
        assert items is not None
        latest = self._latest
        if latest is None:
            return items.popleft()  # type: ignore[no-any-return]
        first = items[0]
        pending = latest[first]
        if type(pending) is not _Group:
            items.popleft()
            return latest.pop(first)  # type: ignore[no-any-return]
        if pending.count > 1:  # one more of the group's members has read its item
            pending.count -= 1
            self._grouped -= 1
        else:
            items.popleft()
            del latest[first]
        return pending.item  # type: ignore[no-any-return]

    def get_nowait(self) -> T | None:
        """The next event if one is pending, else None."""
        return self._pop() if self._items and self._front() else None

    def __iter__(self) -> Iterator[T]:
        while True:
            items = self._items
            if items:
                latest = self._latest
                if latest is None:  # the fast path: no call, no exception
                    yield items.popleft()
                    continue
                first = items[0]
                pending = latest.get(first, _TAKEN_OVER)
                if pending is _TAKEN_OVER:  # its group took its item over: pass it
                    items.popleft()
                    self._grouped += 1
                elif type(pending) is not _Group:
                    items.popleft()
                    del latest[first]
                    yield pending
                elif pending.count > 1:
                    # the group's members read it, one each (a put_group meanwhile
                    # renews the same entry: item and count are read again each time)
                    while pending.count > 1:
                        pending.count -= 1
                        self._grouped -= 1
                        yield pending.item
                else:
                    items.popleft()
                    del latest[first]
                    yield pending.item
            elif self._closed:
                return
            else:  # _wait(None), inline: 10,000 readers of a channel each wait here
                waiters = self._waiters
                if waiters is None:
                    waiters = self._waiters = deque()
                waiter: Waiter[Any] = Waiter()
                waiters.append(waiter)
                try:
                    waiter.get()
                except BaseException:
                    self._leave(waiter)
                    raise
