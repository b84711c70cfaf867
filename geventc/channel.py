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
  them instead of one per recipe.

``get(timeout=...)`` raises :class:`~geventc.errors.ChannelTimeout` (a
:class:`~geventc.errors.Timeout`, so an ``Exception``) when nothing came in time, and
:class:`~geventc.errors.ChannelClosed` once the channel is closed and drained.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

from gevent import Timeout
from gevent.hub import Waiter, get_hub

from .errors import ChannelClosed, ChannelTimeout, InvalidArgument

T = TypeVar("T")
log = logging.getLogger("geventc")


class Channel(Generic[T]):
    """A closable, never-blocking queue of recipe events; iterate it to consume."""

    __slots__ = (
        "_closed",
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
        #: per-source mode: source -> its newest pending item (None: not that mode)
        self._latest: dict[object, T] | None = {} if latest_per_source else None
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
        return len(self._items) if self._items else 0

    def put(self, item: T, *, source: object = None) -> None:
        """Add an event; never blocks. Ignored once the channel is closed. On a
        ``latest_per_source`` channel it replaces what ``source`` still had pending (an
        item without a source is kept on its own)."""
        if self._closed:
            return
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
        if self._waiters:
            self._wake_one()

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
        for source in sources:
            if source not in latest:
                items.append(source)
            latest[source] = item
        if self._waiters:
            self._wake_one()

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
        while not self._items:
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
        woken = False
        try:
            if timeout is None:
                waiter.get()
            else:
                with Timeout(timeout, ChannelTimeout(f"no event within {timeout}s")):
                    waiter.get()
            woken = True
        finally:
            if waiter in waiters:
                waiters.remove(waiter)  # timed out or killed while waiting
            elif not woken and waiters and (self._items or self._closed):
                self._wake_one()  # its wake-up came, but it leaves: hand it on

    def _pop(self) -> T:
        """The oldest pending event (there is one)."""
        assert self._items is not None
        first = self._items.popleft()
        latest = self._latest
        return first if latest is None else latest.pop(first)

    def get_nowait(self) -> T | None:
        """The next event if one is pending, else None."""
        return self._pop() if self._items else None

    def __iter__(self) -> Iterator[T]:
        while True:
            items = self._items
            if items:  # the fast path: no call, no exception
                first = items.popleft()
                latest = self._latest
                yield first if latest is None else latest.pop(first)
            elif self._closed:
                return
            else:
                self._wait(None)
