"""What every recipe shares: start once, stop idempotently within a bound, report
every problem on its channel and in the log, stop when it crashes, and work as a
context manager.

A recipe's greenlets belong both to the recipe (``stop()`` kills them) and to its
connector's group (``Connector.close()`` kills them). When one of them dies of an
unexpected exception, or of an :class:`EtcdError` it let escape (fatal by definition),
the recipe reports a fatal :class:`RecipeError` on its channel and in the log, then
stops as :meth:`Recipe.stop` does: it releases what it holds on the server and closes
its channel, so ``for event in channel`` ends. It never keeps running half-dead.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import gevent
from gevent.pool import Group

from ..channel import Channel
from ..errors import EtcdError, InvalidArgument, RecipeStateError
from ..host import require_host

if TYPE_CHECKING:
    from ..host import RecipeHost

E = TypeVar("E")
R = TypeVar("R", bound="Recipe[Any]")
log = logging.getLogger("geventc")

#: How long ``stop()`` may take by default, even when etcd is unreachable
#: (``connect(..., stop_timeout=)`` sets it per connector).
STOP_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class Release:
    """What :meth:`Recipe.stop` could give back. True (``confirmed``) when etcd
    confirmed every release (or the recipe held nothing); otherwise ``detail`` says
    what is left and ``expires_in`` about how many seconds it stays (its lease's
    remaining TTL; None when it stays until a background retry succeeds)."""

    confirmed: bool
    detail: str = ""
    expires_in: float | None = None

    def __bool__(self) -> bool:
        return self.confirmed


#: Nothing was held, or all of it was released and etcd confirmed it.
RELEASED = Release(True)


def unconfirmed(what: str, expires_in: float | None, cause: object = "") -> Release:
    """A :class:`Release` saying ``what`` could not be released (``cause``), and when it
    goes by itself."""
    why = f" ({cause})" if cause else ""
    if expires_in is None:
        return Release(False, f"could not {what}{why}; it is retried in the background")
    return Release(
        False, f"could not {what}{why}; it expires in about {expires_in:.0f}s", expires_in
    )


@dataclass(frozen=True, slots=True)
class RecipeError:
    """A problem a recipe hit; ``fatal`` means the recipe stopped because of it."""

    error: EtcdError
    fatal: bool = False


class _RecipeGroup(Group):
    """A recipe's greenlets; each also joins the connector's group."""

    def __init__(self, connector_group: Group) -> None:
        super().__init__()
        self._connector_group = connector_group

    def add(self, greenlet: Any) -> None:
        super().add(greenlet)
        self._connector_group.add(greenlet)


class Recipe(Generic[E]):
    """Base of the recipes: a channel, a group of greenlets and a life cycle."""

    #: True for a recipe whose :meth:`_release` only drops its subscriptions to the
    #: connector's watches (it holds nothing on the server): once those watches are
    #: closed and none of its greenlets is alive, it stops at once in the caller's
    #: greenlet (see :meth:`stops_at_once`)
    _RELEASES_LOCALLY: ClassVar[bool] = False

    __slots__ = (
        "__weakref__",
        "_channel",
        "_conn",
        "_entered",
        "_group",
        "_owns_channel",
        "_release_deadline",
        "_running",
        "_stopped",
    )

    def __init__(self, conn: RecipeHost) -> None:
        self._conn = require_host(conn, type(self).__name__)
        self._channel: Channel[E | RecipeError] | None = None
        self._group: Group | None = None  # made when the recipe first spawns
        self._running = False
        self._stopped = False
        self._owns_channel = True
        self._release_deadline = 0.0
        self._entered = False  # started by ``with``

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

    def stop(self) -> Release:
        """Stop the greenlets, release what the recipe holds on the server and close
        the channel (idempotent). Returns within the connector's ``stop_timeout``
        (1 s by default) even when etcd refuses or does not answer, with a
        :class:`Release` that is true only when etcd confirmed the release."""
        return self._shutdown()

    def _shutdown(
        self, fatal: EtcdError | None = None, *, deadline: float | None = None
    ) -> Release:
        """:meth:`stop` by ``deadline`` (default: ``stop_timeout`` from now); a
        ``fatal`` error is reported once the hold is released, just before the channel
        closes, so whoever reads it knows the recipe let go."""
        if not self._running:
            return RELEASED
        self._running = False
        self._stopped = True
        if deadline is None:
            deadline = time.monotonic() + self._conn.stop_timeout
        group = self._group
        if group:
            current = gevent.getcurrent()
            if isinstance(current, gevent.Greenlet) and current in group:
                group.discard(current)  # stopped from its own greenlet: finish the call
            group.kill(block=True, timeout=max(0.0, deadline - time.monotonic()) / 3)
        outcome = self._release_by(deadline)
        if not outcome.confirmed:
            # a closing connector says it once for all of its recipes
            level = logging.INFO if self._conn.closing else logging.WARNING
            log.log(level, "%r: %s", self, outcome.detail)
        if fatal is not None:
            self._report(fatal, fatal=True)
        if self._channel is not None and self._owns_channel:
            self._channel.close()
        self._conn.unregister(self)
        return outcome

    def stops_at_once(self) -> bool:
        """True when :meth:`stop` needs no request and no greenlet switch now: what the
        recipe would release is local (:meth:`_release_is_local`), the connector's
        watches are closed already and none of its greenlets is alive (a closing
        connector then stops it in its own greenlet, without spawning one)."""
        return not self._group and self._conn.hub.closed and self._release_is_local()

    def _release_is_local(self) -> bool:
        """True when :meth:`_release` would neither send a request nor wait now (say,
        its keys went with a lease the closing connector revoked, see
        :func:`~geventc.recipes.leftover.gone_with`); by default
        :attr:`_RELEASES_LOCALLY`. Override it only with a check that is sure."""
        return self._RELEASES_LOCALLY

    def _release_by(self, deadline: float) -> Release:
        """:meth:`_release`, cut off at ``deadline``."""
        self._release_deadline = deadline
        if self._conn.hub.closed and self._release_is_local():  # cannot wait: no timer
            outcome = self._release()
            return RELEASED if outcome is None else outcome
        timer = gevent.Timeout(max(0.001, deadline - time.monotonic()))
        try:
            with timer:
                outcome = self._release()
            return RELEASED if outcome is None else outcome
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            return unconfirmed(self._held_text(), self._expires_in(), "etcd did not answer")
        except EtcdError as exc:
            return unconfirmed(self._held_text(), self._expires_in(), exc.message)

    def _release(self) -> Release | None:
        """Give back what the recipe holds on the server (override); None or
        :data:`RELEASED` when all of it was confirmed."""
        return None

    def _remaining(self) -> float:
        """Seconds left for :meth:`_release` (at least a millisecond)."""
        return max(0.001, self._release_deadline - time.monotonic())

    def _held_text(self) -> str:
        """What :meth:`_release` gives back, for messages ("delete /a/b")."""
        return f"release what {self!r} holds"

    def _expires_in(self) -> float | None:
        """About how long what the recipe holds stays if not released (override)."""
        return None

    @property
    def _greenlets(self) -> Group:
        """The recipe's greenlets (killed by :meth:`stop`; each also belongs to the
        connector's group, killed by ``Connector.close()``)."""
        if self._group is None:
            self._group = _RecipeGroup(self._conn.group)
        return self._group

    def _finish(self) -> None:
        """End the recipe from one of its own greenlets (after a fatal error)."""
        self._running = False
        self._stopped = True
        if self._channel is not None and self._owns_channel:
            self._channel.close()
        self._conn.unregister(self)

    def __enter__(self: R) -> R:
        """Start the recipe (if not started yet) and return it; a ``start()`` inside
        the block then returns the same channel."""
        if not self._running:
            self.start()
            self._entered = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Channel[E | RecipeError]:
        """Start the recipe and return its channel. Every setting is given when the
        recipe is made, so this takes no arguments. A second ``start()`` raises
        :class:`RecipeStateError`, except inside the ``with`` block that started it,
        where it returns the same channel."""
        if self._running and self._entered:
            return self.channel
        self._start()
        return self.channel

    def _start(self) -> None:
        """Begin (``_begin``) and spawn the recipe's greenlets (override)."""
        raise NotImplementedError

    def _legacy_start(self, factory: str, **given: object) -> dict[str, object]:
        """The settings an old caller still passed to ``start()``, with a
        :class:`DeprecationWarning` saying where they go now (``factory``)."""
        passed = {name: value for name, value in given.items() if value is not None}
        if passed:
            names = ", ".join(f"{name}=" for name in passed)
            warnings.warn(
                f"{type(self).__name__}.start({names}) is deprecated: pass {names} to "
                f"{factory} instead; start() takes no arguments",
                DeprecationWarning,
                stacklevel=3,
            )
        return passed

    def _emit(self, event: E | RecipeError) -> None:
        if self._channel is not None:
            # on a channel shared by many recipes, each one's newest item is kept
            self._channel.put(event, source=self)

    def _report(self, error: EtcdError, *, fatal: bool = False) -> None:
        log.warning("%r: %s", self, error)
        self._emit(RecipeError(error, fatal))

    def _spawn(self, function: Callable[..., None], *args: Any) -> None:
        """Run ``function`` in a greenlet of this recipe. If it raises (anything but
        ``GreenletExit``) the error is reported as fatal on the channel and in the log,
        and the recipe stops: it releases what it holds and closes its channel."""

        def guarded() -> None:
            try:
                function(*args)
            except gevent.GreenletExit:
                raise
            except EtcdError as exc:
                self._crashed(exc)
            except Exception as exc:
                log.exception("%r crashed", self)
                self._crashed(EtcdError(f"{type(self).__name__} crashed: {exc!r}"))

        self._greenlets.spawn(guarded)

    def _crashed(self, error: EtcdError) -> None:
        """Stop, releasing what the recipe holds, and report ``error`` as fatal (called
        in the recipe's own greenlet)."""
        if not self._running:  # already stopping: the error is the stop's echo
            log.info("%r: %s (while stopping)", self, error)
            return
        log.warning("%r stops: %s", self, error)
        self._shutdown(error)
