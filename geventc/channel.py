"""``Channel``: how recipes hand events to the caller.

A channel is a gevent queue with ``close()``: ``for event in channel`` yields every
event put before the close and then ends. Putting never blocks the recipe's greenlet:

- an *event* channel is unbounded by default; with ``maxsize`` it drops its oldest
  event when full, counts it in ``dropped`` and logs a warning;
- a *snapshot* channel (``latest_only=True``) keeps only the newest item, so a slow
  consumer always reads the current state and never a backlog.

``get(timeout=...)`` raises :class:`~geventc.errors.ChannelTimeout` (a
:class:`~geventc.errors.Timeout`, so an ``Exception``) when nothing came in time, and
:class:`~geventc.errors.ChannelClosed` once the channel is closed and drained.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

from gevent.event import Event

from .errors import ChannelClosed, ChannelTimeout, InvalidArgument

T = TypeVar("T")
log = logging.getLogger("geventc")


class Channel(Generic[T]):
    """A closable, never-blocking queue of recipe events; iterate it to consume."""

    __slots__ = ("_closed", "_items", "_latest_only", "_maxsize", "_ready", "dropped")

    def __init__(self, maxsize: int | None = None, *, latest_only: bool = False) -> None:
        if maxsize is not None and (
            isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1
        ):
            raise InvalidArgument("maxsize must be a positive int or None (unbounded)")
        # both made on first use: thousands of recipes keep idle channels cheaply
        self._items: deque[T] | None = None
        self._ready: Event | None = None
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

    def put(self, item: T) -> None:
        """Add an event; never blocks. Ignored once the channel is closed."""
        if self._closed:
            return
        if self._items is None:
            self._items = deque()
        if self._maxsize is not None and len(self._items) >= self._maxsize:
            self._items.popleft()
            if not self._latest_only:
                self.dropped += 1
                log.warning("channel full: dropped its oldest event (%d so far)", self.dropped)
        self._items.append(item)
        if self._ready is not None:
            self._ready.set()

    def close(self) -> None:
        """End the channel: iteration stops once the pending events are read."""
        self._closed = True
        if self._ready is not None:
            self._ready.set()

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
            if self._ready is None:
                self._ready = Event()
            self._ready.clear()
            if not self._ready.wait(timeout):
                raise ChannelTimeout(f"no event within {timeout}s")
        return self._items.popleft()

    def get_nowait(self) -> T | None:
        """The next event if one is pending, else None."""
        return self._items.popleft() if self._items else None

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                yield self.get()
            except ChannelClosed:
                return
