"""Observer: every change of a key (or of every key under it), in order, exactly once.

Events start at ``start_revision``; 0 means from now: every change committed after
``start()`` returns (``start()`` waits, at most the client's timeout, until the watch is
established; a failure to establish it is reported on the channel). The observer
survives endpoint failover and server restarts by resuming at the revision after the
last event it delivered. When the history it needs was compacted it sends a fatal
:class:`RecipeError` carrying :class:`Compacted` and stops: it never skips silently.

When its watch cannot be confirmed current (no member answers for longer than the
liveness bound, 5 s by default, or the watch failed on every member) it sends a
:class:`~geventc.staleness.Staleness` event with ``stale=True`` and the age of what it
knows, and one with ``stale=False`` once its watch is established again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event

from .. import validate
from ..channel import Channel
from ..errors import Compacted, EtcdError
from ..retry import Backoff
from ..staleness import Staleness
from ..watchstream import WatchStream
from ..wire import EventType
from .base import Recipe, RecipeError

if TYPE_CHECKING:
    from ..host import RecipeHost


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change: PUT or DELETE of ``key`` at ``revision``."""

    type: EventType
    key: str
    value: bytes
    prev_value: bytes | None
    revision: int

    @property
    def value_str(self) -> str:
        """The value decoded as UTF-8."""
        return self.value.decode("utf-8", "replace")


class Observer(Recipe[WatchEvent | Staleness]):
    """Delivers every change under ``path``; see the module docstring."""

    _RELEASES_LOCALLY = True  # it holds nothing on the server

    def __init__(
        self,
        conn: RecipeHost,
        path: str,
        *,
        prefix: bool = False,
        start_revision: int = 0,
        maxsize: int | None = None,
    ) -> None:
        super().__init__(conn)
        self.path = conn.namespace.strip(conn.namespace.key(path, "path"))
        #: with ``prefix``, every key under ``path + "/"`` (not ``path`` itself, nor a
        #: sibling such as ``path2``)
        self.prefix = validate.boolean(prefix, "prefix")
        self.start_revision = validate.revision(start_revision, "start_revision")
        self.maxsize = _maxsize(maxsize)
        self.next_revision = 0
        #: True while the watch could not be confirmed current within the bound
        self.stale = False
        self._established = Event()  # set after the first watch attempt, good or bad
        self._stream: WatchStream | None = None
        self._confirmed_at = 0.0

    def __repr__(self) -> str:
        return f"Observer({self.path.decode()!r})"

    def start(
        self,
        start_revision: int | None = None,
        recursive: bool | None = None,
        *,
        maxsize: int | None = None,
        prefix: bool | None = None,
    ) -> Channel[WatchEvent | Staleness | RecipeError]:
        """Start delivering changes from ``start_revision`` (0: from now) of the path,
        or with ``prefix`` of every key under it, as set when the observer was made
        (``conn.observer(path, prefix=, start_revision=, maxsize=)``); passing them here
        (or the old ``recursive=``) still works but is deprecated."""
        legacy = self._legacy_start(
            "conn.observer(path, ...)",
            start_revision=start_revision,
            recursive=recursive,
            maxsize=maxsize,
            prefix=prefix,
        )
        if legacy and not self._running:
            if "start_revision" in legacy:
                self.start_revision = validate.revision(start_revision, "start_revision")
            for name in ("recursive", "prefix"):
                if name in legacy:
                    self.prefix = validate.boolean(legacy[name], name)
            if "maxsize" in legacy:
                self.maxsize = _maxsize(maxsize)
        return super().start()

    def _start(self) -> None:
        self._begin(maxsize=self.maxsize)  # a second start() raises here, changing nothing
        self.next_revision = self.start_revision
        self._confirmed_at = time.monotonic()
        self._conn.liveness.follow(self)
        self._spawn(self._observe)
        if not self.next_revision:  # "now" is when the watch exists: no change is missed
            self._established.wait(self._conn.request_timeout)

    def _observe(self) -> None:
        try:
            self._follow()
        finally:
            self._established.set()

    def _follow(self) -> None:
        backoff = Backoff(first=0.05)
        watched = self.path.rstrip(b"/") + b"/" if self.prefix else self.path
        while self._running:
            try:
                stream = self._conn.watch(
                    watched,
                    prefix=self.prefix,
                    start_revision=self.next_revision or None,
                    prev_kv=True,
                )
                self.next_revision = stream.start_revision
                self._stream = stream
                self._established.set()
                self._freshness(False)
                try:
                    for response in stream:
                        self._freshness(False)
                        for event in response.events:
                            self._deliver(
                                event.type,
                                event.kv.key,
                                event.kv.value,
                                event.prev_kv.value if event.prev_kv else None,
                                event.kv.mod_revision,
                            )
                        self.next_revision = stream.start_revision
                        backoff.reset()
                finally:
                    self._age()  # keep the stream's last confirmation
                    self._stream = None
                    stream.cancel()
            except Compacted as exc:
                self._report(exc, fatal=True)
                self._finish()
                return
            except EtcdError as exc:
                self._report(exc)
                self._established.set()
                self._freshness(True)  # no member could serve the watch just now
                gevent.sleep(backoff.next())

    # --- freshness (liveness calls check_freshness every second) -------------------------

    def check_freshness(self, now: float) -> None:
        """Send :class:`Staleness` when the watch goes stale or is current again."""
        if not self._running:
            self._conn.liveness.unfollow(self)
            return
        connected = self._stream is not None and bool(self._stream.endpoint)
        stale_after = self._conn.liveness.stale_after
        age = self._age(now)
        if age > stale_after or (self.stale and connected):
            self._freshness(age > stale_after)

    def _age(self, now: float | None = None) -> float:
        if self._stream is not None:
            self._confirmed_at = max(self._confirmed_at, self._stream.confirmed_at)
        return max(0.0, (now or time.monotonic()) - self._confirmed_at)

    def _freshness(self, stale: bool) -> None:
        if stale == self.stale:
            return
        self.stale = stale
        self._emit(Staleness(stale, self._age(), max(0, self.next_revision - 1)))

    def _deliver(
        self, kind: EventType, key: bytes, value: bytes, prev: bytes | None, revision: int
    ) -> None:
        self._emit(WatchEvent(kind, key.decode("utf-8", "replace"), value, prev, revision))


def _maxsize(maxsize: object) -> int | None:
    """A channel bound: a positive int, or None (unbounded)."""
    if maxsize is None:
        return None
    return validate.integer(maxsize, "maxsize", minimum=1)
