"""What every recipe shares: start once, stop idempotently within a bound, report
every problem on its channel and in the log, and work as a context manager."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import gevent
from gevent.pool import Group

from ..channel import Channel
from ..errors import EtcdError, InvalidArgument, RecipeStateError

if TYPE_CHECKING:
    from ..connector import Connector

E = TypeVar("E")
R = TypeVar("R", bound="Recipe[Any]")
log = logging.getLogger("geventc")

#: How long ``stop()`` may take, even when etcd is unreachable.
STOP_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class RecipeError:
    """A problem a recipe hit; ``fatal`` means the recipe stopped because of it."""

    error: EtcdError
    fatal: bool = False


class Recipe(Generic[E]):
    """Base of the recipes: a channel, a group of greenlets and a life cycle."""

    __slots__ = (
        "__weakref__",
        "_channel",
        "_conn",
        "_group",
        "_owns_channel",
        "_running",
        "_stopped",
    )

    def __init__(self, conn: Connector) -> None:
        self._conn = conn
        self._channel: Channel[E | RecipeError] | None = None
        self._group: Group | None = None  # made when the recipe first spawns
        self._running = False
        self._stopped = False
        self._owns_channel = True

    @property
    def running(self) -> bool:
        """True between start and stop."""
        return self._running

    @property
    def channel(self) -> Channel[E | RecipeError]:
        """The channel :meth:`start` returned."""
        if self._channel is None:
            raise RecipeStateError(f"{type(self).__name__} was not started")
        return self._channel

    def _begin(
        self,
        *,
        latest_only: bool = False,
        maxsize: int | None = None,
        channel: Channel[Any] | None = None,
    ) -> None:
        """Mark the recipe started with a new channel (or a shared one it does not
        own and will not close)."""
        if self._running or self._stopped:
            raise RecipeStateError(
                f"{type(self).__name__} was already started; make a new one to start again"
            )
        if channel is not None and not isinstance(channel, Channel):
            raise InvalidArgument("channel must be a geventc.Channel or None")
        self._owns_channel = channel is None
        own: Channel[E | RecipeError] = (
            channel if channel is not None else Channel(maxsize, latest_only=latest_only)
        )
        self._conn.register(self)
        self._channel = own
        self._running = True

    def stop(self) -> None:
        """Stop the greenlets, release what the recipe holds on the server and close
        the channel; returns within a bounded time even when etcd is unreachable."""
        if not self._running:
            return
        self._running = False
        self._stopped = True
        current = gevent.getcurrent()
        group = self._group
        if group is not None:
            if isinstance(current, gevent.Greenlet) and current in group:
                group.discard(current)  # stopped from its own greenlet: finish the call
            group.kill(block=True, timeout=STOP_TIMEOUT / 3)
        with gevent.Timeout(STOP_TIMEOUT, False):  # type: ignore[arg-type]
            try:
                self._release()
            except EtcdError as exc:
                log.warning("%r could not release its hold on etcd: %s", self, exc)
        if self._channel is not None and self._owns_channel:
            self._channel.close()
        self._conn.unregister(self)

    def _release(self) -> None:
        """Give back what the recipe holds on the server (override)."""

    @property
    def _greenlets(self) -> Group:
        """The recipe's greenlets (killed by :meth:`stop`)."""
        if self._group is None:
            self._group = Group()
        return self._group

    def _finish(self) -> None:
        """End the recipe from one of its own greenlets (after a fatal error)."""
        self._running = False
        self._stopped = True
        if self._channel is not None and self._owns_channel:
            self._channel.close()
        self._conn.unregister(self)

    def __enter__(self: R) -> R:
        """Start (with default arguments, if not started yet) and return the recipe."""
        if not self._running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Channel[E | RecipeError]:
        """Start the recipe (subclasses define it with their own arguments)."""
        raise NotImplementedError

    def _emit(self, event: E | RecipeError) -> None:
        if self._channel is not None:
            self._channel.put(event)

    def _report(self, error: EtcdError, *, fatal: bool = False) -> None:
        log.warning("%r: %s", self, error)
        self._emit(RecipeError(error, fatal))

    def _spawn(self, function: Callable[..., None], *args: Any) -> None:
        """Run ``function`` in a greenlet of this recipe; an unexpected exception is
        reported on the channel and in the log, never lost."""

        def guarded() -> None:
            try:
                function(*args)
            except gevent.GreenletExit:
                raise
            except EtcdError as exc:
                self._report(exc, fatal=True)
            except Exception as exc:
                log.exception("%r crashed", self)
                self._report(EtcdError(f"{type(self).__name__} crashed: {exc!r}"), fatal=True)

        self._greenlets.spawn(guarded)
